"""Inbound senders in the carrier's numbering context, opt-outs by any reasonable means, YES only
as an answer, redeliveries stored once (also across a restart of the store), and MOs no tenant
owns (COMPLIANCE.md: "One canonical number per person", "Opt-out by any reasonable means",
"State that survives a restart"). In-process, through the dispatcher's event stream, on both
anyio backends; every wait is on a condition, never a sleep."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from carriers.base import ConnectorEvent, Inbound
from carriers.testing import MockConnector
from gateway.api import schemas
from gateway.config import loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.dispatcher import Dispatcher
from gateway.runtime.inbound import InboundPipeline
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

CONFIG = """
[core.quiet_hours]
start = "00:00"
end = "24:00"
[[core.carriers]]
name = "alpha"
default_region = "US"
[[core.carriers]]
name = "intl"
[[core.routes]]
prefix = ""
carriers = ["alpha"]

[[api.tenants]]
name = "acme"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
senders = ["12345"]
[api.tenants.keywords]
opt_out_uncertain = "ask"

[[api.tenants]]
name = "beta"
key_sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
senders = ["BETA"]

[[api.tenants]]
name = "gamma"
key_sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
senders = ["GAMMA"]
operator = true
"""
US = "+12125550191"


class Rig:
    def __init__(self, tg, cfg, store=None) -> None:
        self.cfg = cfg
        self.store = store or MemoryStore()
        self.core = Scheduler(cfg.core, 1.0)
        self.gw = Gateway(self.core, self.store)
        send, receive = anyio.create_memory_object_stream[ConnectorEvent](1000)
        self.events = send
        self.alpha = MockConnector("alpha", send.clone())
        self.acked: list[tuple[str, tuple[int, ...]]] = []
        self.inbound = InboundPipeline(self.gw, cfg.api.tenants, clock=anyio.current_time,
                                       reply_category=cfg.inbound.reply_category, settings=cfg.inbound,
                                       regions={c.name: c.default_region for c in cfg.core.carriers
                                                if c.default_region},
                                       acknowledge=lambda c, acks: self.acked.append((c, tuple(acks))))  # fmt: skip
        self.dispatcher = Dispatcher(self.core, {"alpha": self.alpha}, receive, self.store, clock=anyio.current_time,
                                     on_inbound=self.inbound.feed)  # fmt: skip
        self.gw.on_admitted = self.dispatcher.poke
        tg.start_soon(self.dispatcher.run)
        tg.start_soon(self.inbound.run)

    async def mo(self, text: str, sender: str = US, *, to: str = "12345", carrier: str = "alpha",
                 ton: int | None = None, carrier_id: str | None = None, acks: tuple[int, ...] = ()) -> None:
        before = self.inbound.statistics().received
        await self.events.send(Inbound(carrier=carrier, sender=sender, recipient=to, text=text, at=0.0, acks=acks,
                                       sender_ton=ton, carrier_id=carrier_id))  # fmt: skip
        with anyio.fail_after(10):
            while self.inbound.statistics().received == before:
                await anyio.lowlevel.checkpoint()
            await self.inbound.wait_idle()

    def suppressed(self, tenant: str = "acme") -> list[str]:
        return [s.number for _, s in self.store.suppressions(tenant)]

    def replies(self) -> list[tuple[str, str]]:
        return [(d.recipient, d.body) for d in self.alpha.dispatched]

    async def wait_replies(self, n: int) -> None:
        with anyio.fail_after(10):
            while len(self.alpha.dispatched) < n:
                await anyio.sleep(0)  # a checkpoint: the dispatcher runs (no time passes)


@pytest.mark.parametrize(("sender", "carrier", "ton", "canonical"), [
    ("2125550191", "alpha", None, US),  # HTTP carrier, national form: read in its default_region
    ("+1 (212) 555-0191", "alpha", None, US),
    ("(212) 555-0191", "alpha", None, US),
    ("+1 1 212 555 0191", "alpha", None, US),  # trunk digit after the country code
    ("12125550191", "alpha", None, US),
    ("2125550191", "alpha", 2, US),  # SMPP TON national
    ("12125550191", "intl", 1, US),  # SMPP TON international, no '+'
    ("12125550191", "intl", 0, US),  # unknown: international when there is no region
    ("+12125550191", "intl", None, US),
    ("447911123456", "alpha", 0, "+447911123456"),  # unknown: not a US number, an international one
    ("+٤٤٧٩١١١٢٣٤٥٦", "alpha", None, "+447911123456"),
])  # fmt: skip
async def test_a_stop_from_any_spelling_suppresses_the_canonical_number(sender, carrier, ton, canonical) -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        await rig.mo("STOP", sender, carrier=carrier, ton=ton)
        assert rig.suppressed() == [canonical]
        [rec] = (await rig.gw.inbound_page("acme", 0, 10, None)).inbound
        assert (rec.sender, rec.kind, rec.sender_canonical) == (canonical, "opt_out", True)
        await rig.wait_replies(1)
        assert rig.replies()[0][0] == canonical
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(("sender", "carrier", "ton"), [
    ("2125550191", "intl", None),  # national, and the carrier has no numbering context
    ("2125550191", "intl", 2),
    ("SHOPINFO", "alpha", 5),  # alphanumeric
    ("12", "alpha", None),
])  # fmt: skip
async def test_an_opt_out_from_a_sender_not_canonical_is_kept_flagged_and_listed(sender, carrier, ton) -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        await rig.mo("Please stop texting me", sender, carrier=carrier, ton=ton, acks=(3,))
        [rec] = (await rig.gw.inbound_page("acme", 0, 10, "opt_out")).inbound
        assert (rec.sender, rec.kind, rec.sender_canonical) == (sender, "opt_out", False)
        assert rig.acked == [(carrier, (3,))]  # stored, so answered: never dropped, never lost
        assert rig.suppressed() == [] and rig.inbound.statistics().not_canonical == 1
        tg.cancel_scope.cancel()


async def test_the_same_mo_twice_is_stored_and_answered_once() -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        await rig.mo("STOP", carrier_id="SM1", acks=(1,))
        await rig.mo("STOP", carrier_id="SM1", acks=(2,))  # HTTP carrier retried its callback
        await rig.mo("stop please", acks=(3,))  # SMPP: no id; the same sender, address and text twice
        await rig.mo("stop please", acks=(4,))
        await rig.mo("stop please", sender="+12125550192", acks=(5,))  # someone else
        listed = (await rig.gw.inbound_page("acme", 0, 10, None)).inbound
        assert [(r.sender, r.text) for r in listed] == [(US, "STOP"), (US, "stop please"),
                                                        ("+12125550192", "stop please")]  # fmt: skip
        assert [a for _, a in rig.acked] == [(1,), (2,), (3,), (4,), (5,)]  # every delivery answered
        assert rig.inbound.statistics().duplicates == 2
        assert rig.inbound.statistics().replies == 3  # submitted as each MO was handled: one each
        tg.cancel_scope.cancel()


async def test_yes_re_subscribes_only_as_the_answer_to_a_question() -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        await rig.mo("STOP")
        await rig.mo("YES")  # no question pending: a message, still opted out
        assert rig.suppressed() == [US]
        await rig.mo("leave me alone", sender="+12125550192")  # unsure, acme asks: suppressed meanwhile
        assert rig.suppressed() == [US, "+12125550192"]
        assert rig.inbound.statistics().questions == 1
        await rig.mo("Yes", sender="+12125550192")  # answers the question: subscribed again
        assert rig.suppressed() == [US]
        await rig.mo("leave me alone", sender="+12125550193")
        await rig.mo("STOP", sender="+12125550193")  # settles it the other way
        await rig.mo("yes", sender="+12125550193")  # nothing pending any more
        assert rig.suppressed() == [US, "+12125550193"]
        kinds = [(r.sender[-1], r.kind, r.certain) for r in (await rig.gw.inbound_page("acme", 0, 20, None)).inbound]
        assert kinds == [("1", "opt_out", True), ("1", "message", True), ("2", "opt_out", False),
                         ("2", "opt_in", True), ("3", "opt_out", False), ("3", "opt_out", True),
                         ("3", "message", True)]  # fmt: skip
        await rig.wait_replies(5)
        question = rig.cfg.api.tenants[0].keywords.default.question_reply
        assert rig.replies().count(("+12125550192", question)) == 1
        tg.cancel_scope.cancel()


async def test_an_unsure_opt_out_is_an_opt_out_by_default() -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        await rig.mo("wrong number", to="BETA")  # beta keeps the default: opt_out
        assert rig.suppressed("beta") == [US] and rig.inbound.statistics().questions == 0
        await rig.mo("don't stop the deals", sender="+12125550192", to="BETA")
        assert rig.suppressed("beta") == [US]
        tg.cancel_scope.cancel()


async def test_an_unrouted_stop_suppresses_for_every_tenant_that_messaged_the_number() -> None:
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, loads(CONFIG))
        now = anyio.current_time()
        for tenant in ("acme", "beta"):
            body = schemas.MessageIn(to="+1 212 555 0191", body="Sale", sender="S", category="marketing")
            await rig.gw.submit_message(tenant, body, now)
        await rig.mo("Unsubscribe me", "2125550191", to="55555", acks=(9,))  # no tenant lists 55555
        assert rig.suppressed("acme") == [US] and rig.suppressed("beta") == [US]
        assert rig.suppressed("gamma") == []  # never messaged that number
        assert rig.acked == [("alpha", (9,))]
        assert (await rig.gw.inbound_page("acme", 0, 10, None)).inbound == []
        [rec] = (await rig.gw.inbound_page("", 0, 10, None)).inbound  # what operators list
        assert (rec.sender, rec.recipient, rec.kind) == (US, "55555", "opt_out")
        await rig.mo("hello?", "2125550199", to="55555")  # not an opt-out: kept and listed too
        assert len((await rig.gw.inbound_page("", 0, 10, None)).inbound) == 2
        tg.cancel_scope.cancel()


async def test_dedupe_state_and_questions_survive_a_restart(tmp_path) -> None:
    """The store is reopened without being closed (as after kill -9): a redelivered MO is still
    a duplicate, and the pending question still takes its YES."""
    path = str(tmp_path / "sluice.db")
    cfg = loads(CONFIG)
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, cfg, SqliteStore(path))
        await rig.mo("STOP", carrier_id="SM7")
        await rig.mo("leave me alone", sender="+12125550192")
        await rig.mo("stop please", sender="+12125550193")
        tg.cancel_scope.cancel()
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, cfg, SqliteStore(path))
        await rig.gw.recover(anyio.current_time())
        await rig.mo("STOP", carrier_id="SM7")
        await rig.mo("stop please", sender="+12125550193")
        assert rig.inbound.statistics().duplicates == 2
        assert len((await rig.gw.inbound_page("acme", 0, 10, None)).inbound) == 3
        await rig.mo("YES", sender="+12125550192")
        assert rig.suppressed() == [US, "+12125550193"]
        assert rig.inbound.statistics().opt_ins == 1
        tg.cancel_scope.cancel()


async def test_an_mo_to_a_long_number_written_nationally_is_routed() -> None:
    cfg = loads(CONFIG.replace('senders = ["GAMMA"]', 'senders = ["+1 212 555 0100"]'))
    async with anyio.create_task_group() as tg:
        rig = Rig(tg, cfg)
        await rig.mo("STOP", to="2125550100")  # alpha's numbering context: US
        await rig.mo("STOP", "+12125550192", to="12125550100", carrier="intl", ton=1)
        assert rig.suppressed("gamma") == [US, "+12125550192"]
        assert rig.inbound.statistics().unroutable == 0
        tg.cancel_scope.cancel()
