"""The inbound pipeline in-process, on both anyio backends: MOs arrive as connector events (as
the SMPP connector and the HTTP callbacks emit them), through the dispatcher's ``on_inbound``.
Every wait is on an event (a change recorded, the pipeline idle), never a sleep."""

from __future__ import annotations

import math

import anyio
import httpx
import pytest

from carriers.base import ConnectorEvent, Inbound
from carriers.testing import MockConnector
from gateway.api import schemas
from gateway.config import loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.dispatcher import Dispatcher
from gateway.runtime.inbound import InboundPipeline, InboundSender
from gateway.runtime.service import Gateway
from gateway.store.base import FINAL, Change
from gateway.store.memory import MemoryStore
from gateway.webhook_signature import HEADER, verify

pytestmark = pytest.mark.anyio

CONFIG = """
[core]
shards = 1  # one FIFO lane: the test knows which messages go first
[core.quiet_hours]
start = "00:00"
end = "24:00"
[[core.carriers]]
name = "alpha"
rate = 0.001  # only the first burst goes until the test opens the bucket
burst = 10
[[core.routes]]
prefix = ""
carriers = ["alpha"]

[[api.tenants]]
name = "acme"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
senders = ["12345"]
inbound_url = "https://acme.example/inbound"
[api.tenants.keywords.default]
help_reply = "ACME: reply STOP to stop. Help: acme.example"
[api.tenants.keywords.locales.86]
opt_out = ["退订", "TD"]
opt_out_reply = "退订成功"

[[api.tenants]]
name = "beta"
key_sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
senders = ["BETA"]
"""

X = "+447911100001"


class Changes:
    def __init__(self) -> None:
        self.state: dict[int, str] = {}
        self._event = anyio.Event()
        self._want = math.inf

    def __call__(self, changes: list[Change]) -> None:
        for c in changes:
            if c.state in FINAL:
                self.state[c.message_id] = c.state
        if len(self.state) >= self._want:
            self._event.set()

    async def wait(self, n: int) -> None:
        self._want, self._event = n, anyio.Event()
        if len(self.state) < n:
            with anyio.fail_after(10):
                await self._event.wait()


class Rig:
    def __init__(self, tg, cfg) -> None:
        self.cfg = cfg
        self.store = MemoryStore()
        self.core = Scheduler(cfg.core, 1.0)
        self.changes = Changes()
        self.gw = Gateway(self.core, self.store, on_changes=self.changes)
        send, receive = anyio.create_memory_object_stream[ConnectorEvent](1000)
        self.events = send
        self.alpha = MockConnector("alpha", send.clone())
        self.answered: list[tuple[str, tuple[int, ...], int]] = []  # (carrier, acks, records stored then)
        self.inbound = InboundPipeline(self.gw, cfg.api.tenants, clock=anyio.current_time,
                                       reply_category=cfg.inbound.reply_category,
                                       acknowledge=self._acknowledged)  # fmt: skip
        self.dispatcher = Dispatcher(self.core, {"alpha": self.alpha}, receive, self.store, clock=anyio.current_time,
                                     on_changes=self.changes, on_inbound=self.inbound.feed)  # fmt: skip
        self.gw.on_admitted = self.dispatcher.poke
        tg.start_soon(self.dispatcher.run)
        tg.start_soon(self.inbound.run)

    def _acknowledged(self, carrier: str, acks) -> None:
        stored = len(self.store.inbound("acme", after=0, limit=1000, kind=None).items)
        self.answered.append((carrier, tuple(acks), stored))

    async def mo(self, text: str, sender: str = X, to: str = "12345", carrier: str = "alpha",
                 acks: tuple[int, ...] = ()) -> None:  # fmt: skip
        """One MO through the dispatcher's event stream; returns once the pipeline handled it."""
        before = self.inbound.statistics().received
        await self.events.send(Inbound(carrier=carrier, sender=sender.lstrip("+"), recipient=to, text=text, at=0.0,
                                       acks=acks))  # fmt: skip
        with anyio.fail_after(10):
            while self.inbound.statistics().received == before:
                await anyio.lowlevel.checkpoint()
            await self.inbound.wait_idle()

    def sent_to(self, number: str) -> list:
        return [d for d in self.alpha.dispatched if d.recipient == number]


async def test_stop_mid_job_ends_the_rest_to_that_number_and_confirms_once() -> None:
    cfg = loads(CONFIG)
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, cfg)
        others = [f"+4479111{i:05d}" for i in range(10, 37)]
        people = [X, *others[:14], X, *others[14:], X]  # X first, 16th and last
        job = schemas.JobIn(sender="ACME", template="Sale now on", category="marketing",
                            recipients=[schemas.RecipientIn(to=p) for p in people])  # fmt: skip
        await rig.gw.submit_job("acme", job, anyio.current_time())
        await rig.changes.wait(10)  # the first burst of 10 went, X's first message among them
        assert len(rig.sent_to(X)) == 1

        await rig.mo("Stop.")
        stats = rig.inbound.statistics()
        assert (stats.opt_outs, stats.replies, stats.failed) == (1, 1, 0)
        [(tenant, s)] = await anyio.to_thread.run_sync(rig.store.suppressions, "acme")
        assert (tenant, s.number, s.source) == ("acme", X, "keyword:STOP")
        [audit] = (await rig.gw.inbound_messages("acme", 0, 10, "opt_out")).items
        assert (audit.keyword, audit.carrier, audit.text, audit.sender) == ("STOP", "alpha", "Stop.", X)

        rig.core.bucket("alpha").reconfigure(1e6, 5000, anyio.current_time())
        rig.dispatcher.poke()
        await rig.changes.wait(len(people) + 1)  # the job and the confirmation
        to_x = rig.sent_to(X)
        assert [d.category for d in to_x] == ["marketing", "transactional"]
        assert to_x[1].body == cfg.api.tenants[0].keywords.default.opt_out_reply and to_x[1].sender == "12345"
        assert sorted(rig.changes.state.values()).count("suppressed") == 2
        assert list(rig.changes.state.values()).count("delivered") == len(people) - 2 + 1
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("text", ["Stop.", " stop ", "STOP ALL", "退订", "opt-out!", "ＳＴＯＰ"])
async def test_keyword_variants_opt_out(text: str) -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        await rig.mo(text)
        assert rig.inbound.statistics().opt_outs == 1
        assert [s.number for _, s in rig.store.suppressions("acme")] == [X]
        tg.cancel_scope.cancel()


async def test_start_help_locale_and_tenants() -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        await rig.mo("STOP")
        await rig.mo("start!")
        assert rig.store.suppressions("acme") == []
        await rig.mo("help")
        await rig.mo("退订", sender="+8613800138000")  # the Chinese set and reply
        # Not a keyword of that locale, but a conclusive word whatever the language (FCC 2024):
        # an opt-out, answered with the locale's reply.
        await rig.mo("STOP", sender="+8613800138001")
        await rig.mo("STOP", to="BETA")  # beta's number, not acme's
        await rig.mo("hello", to="99999")  # nobody's: unroutable
        stats = rig.inbound.statistics()
        assert (stats.opt_outs, stats.opt_ins, stats.help, stats.messages, stats.unroutable) == (4, 1, 1, 0, 1)
        await rig.changes.wait(6)  # STOP, START, HELP, 退订, STOP (+86) and beta's STOP confirmations
        replies = {(d.tenant, d.recipient, d.body) for d in rig.alpha.dispatched}
        assert ("acme", X, "ACME: reply STOP to stop. Help: acme.example") in replies
        assert ("acme", "+8613800138000", "退订成功") in replies
        assert [s.number for _, s in rig.store.suppressions("beta")] == [X]
        assert [s.number for _, s in rig.store.suppressions("acme")] == ["+8613800138000", "+8613800138001"]
        listed = (await rig.gw.inbound_messages("acme", 0, 100, None)).items
        assert [r.kind for r in listed] == ["opt_out", "opt_in", "help", "opt_out", "opt_out"]
        assert ("acme", "+8613800138001", "退订成功") in {(d.tenant, d.recipient, d.body) for d in rig.alpha.dispatched}
        tg.cancel_scope.cancel()


async def test_other_messages_are_forwarded_signed_and_retried() -> None:
    cfg = loads(CONFIG)
    posts: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(503 if len(posts) == 1 else 200)

    now = [1000.0]
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, cfg)
        async with InboundSender(rig.store, cfg.webhooks, {"acme": "s3cret"}, clock=lambda: now[0],
                                 transport=httpx.MockTransport(receiver), jitter=lambda: 0.0) as sender:  # fmt: skip
            await rig.mo("Where is my order?")
            await rig.mo("STOP")  # a keyword: kept, not forwarded
            assert await sender.run_once() == 1  # 503: retried later
            assert await sender.run_once() == 0
            now[0] += 3600
            assert await sender.run_once() == 1
            assert await sender.run_once() == 0
        assert len(posts) == 2 and posts[0].content == posts[1].content
        assert str(posts[1].url) == "https://acme.example/inbound"
        assert verify(b"s3cret", posts[1].headers[HEADER], posts[1].content, now=now[0])
        body = httpx.Response(200, content=posts[1].content).json()
        [m] = body["inbound"]
        assert (m["from"], m["to"], m["text"], m["kind"], m["carrier"]) == (X, "12345", "Where is my order?",
                                                                            "message", "alpha")  # fmt: skip
        tg.cancel_scope.cancel()


async def test_an_mo_is_answered_to_its_carrier_only_once_stored() -> None:
    """A crash between an MO's answer and its record would lose it (an opt-out!): the pipeline
    acknowledges ``Inbound.acks`` after the record is stored; an unroutable MO at once."""
    cfg = loads(CONFIG)
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, cfg)
        await rig.mo("STOP", acks=(7,))
        await rig.mo("hello there", acks=(8,))
        assert rig.answered == [("alpha", (7,), 1), ("alpha", (8,), 2)]  # each after its own record
        await rig.mo("hi", to="99999", acks=(9,))  # not a sender of any tenant (two are configured)
        assert rig.answered[-1] == ("alpha", (9,), 2) and rig.inbound.statistics().unroutable == 1
        tg.cancel_scope.cancel()
