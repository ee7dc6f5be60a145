"""The inbox through its seams: the gateway's signed inbound webhook in (and the ``GET /v1/inbound``
catch-up the link runs for the opt-outs the gateway keeps), the campaigns API for people, and the
gateway's public API out (tests/campaigns/fake_gateway.py: Idempotency-Keys kept as the gateway
keeps them, answers that can be lost on the way back). Time is virtual (a clock the test moves)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from campaigns.config import loads
from campaigns.core.events import Profile
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.gateway_client import GatewayClient, Inbound
from campaigns.service.inbox import Inbox, NoRunWaits
from campaigns.service.link import GatewayLink
from campaigns.service.signature import HEADER, sign
from campaigns.store import open_store
from tests.campaigns.fake_gateway import FakeGateway

pytestmark = pytest.mark.anyio

T0 = 1_760_000_000.0
P = ["+447911123401", "+447911123402", "+447911123403"]
CONF = """
[campaigns]
gateway_url = "http://gw"
[[campaigns.tenants]]
name = "acme"
key_env = "CK"
gateway_key_env = "GK"
webhook_secret_env = "WH"
[campaigns.tenants.signup]
shop_name = "Acme"
sender = "12345"
[[campaigns.tenants]]
name = "beta"
key_env = "CK2"
gateway_key_env = "GK"
webhook_secret_env = "WH"
"""
ACME = {"authorization": "Bearer acme-key"}
BETA = {"authorization": "Bearer beta-key"}


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


#: The two tests of the main path also run on trio (the shell is anyio; the rest on asyncio, for time).
both_backends = pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio"),
                                                          pytest.param(("trio", {}), id="trio")])  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Router:
    """A flow runtime stand-in: takes the replies in ``takes``, and records every offer."""

    def __init__(self, takes: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.takes, self.offers = set(takes), []  # type: ignore[var-annotated]

    async def offer_reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool:
        self.offers.append((tenant, subscriber_id, message_id, text))
        return text in self.takes


class World:
    def __init__(self, store_url: str = "sqlite:///:memory:") -> None:
        settings = loads(CONF)
        assert settings is not None
        self.clock, self.gw = Clock(), FakeGateway()
        self.store = open_store(store_url)
        self.audience = Audience(self.store, settings, self.clock)
        clients = {t: GatewayClient("http://gw", "gk", transport=self.gw.transport()) for t in ("acme", "beta")}
        self.inbox = Inbox(self.store, clients, settings, self.clock)
        self.link = GatewayLink(self.audience, clients, inbox=self.inbox)
        self.app = create_app(self.audience, tenant_keys(settings, {"CK": "acme-key", "CK2": "beta-key"}),
                              link=self.link, secrets={"acme": "whsec", "beta": "whsec"}, inbox=self.inbox)  # fmt: skip
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")
        self.mo_id = 0

    def subscribe(self, tenant: str, phone: str) -> int:
        return self.store.put_subscriber(tenant, Profile(phone=phone), phone=phone, at=T0, now=T0)[0].id

    def mo(self, sender: str, text: str, kind: str = "message", mo_id: int | None = None) -> bytes:
        if mo_id is None:
            self.mo_id += 1
            mo_id = self.mo_id
        return json.dumps({"inbound": [{"id": mo_id, "from": sender, "to": "12345", "text": text, "at": self.clock(),
                                        "carrier": "beta", "kind": kind, "keyword": None}]}).encode()  # fmt: skip

    async def webhook(self, body: bytes, tenant: str = "acme") -> httpx.Response:
        return await self.http.post(f"/v1/gateway/{tenant}/inbound", content=body,
                                    headers={HEADER: sign("whsec", body, int(self.clock()))})  # fmt: skip

    async def queue(self, headers: dict[str, str] = ACME) -> list[dict]:
        r = await self.http.get("/v1/inbox/conversations", params={"status": "needs_reply"}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()["items"]

    async def answer(self, cid: int, text: str, key: str | None, agent: str = "ann") -> httpx.Response:
        headers = {**ACME, **({"idempotency-key": key} if key else {})}
        return await self.http.post(f"/v1/inbox/conversations/{cid}/answers", json={"text": text, "agent": agent},
                                    headers=headers)  # fmt: skip

    async def history(self, cid: int) -> list[dict]:
        r = await self.http.get(f"/v1/inbox/conversations/{cid}", headers=ACME)
        assert r.status_code == 200, r.text
        return r.json()["messages"]["items"]


@both_backends
async def test_a_question_is_answered_once_and_its_state_comes_back() -> None:
    w = World()
    sub = w.subscribe("acme", P[0])
    w.inbox.state.reply_router = router = Router()
    body = w.mo(P[0], "Do you have the linen shirt in M?")
    for _ in range(2):  # the gateway redelivers the webhook: stored once
        assert (await w.webhook(body)).status_code == 204
    assert router.offers == [("acme", sub, "1", "Do you have the linen shirt in M?")]  # offered once
    [conv] = await w.queue()
    assert conv["subscriber_id"] == sub and conv["status"] == "needs_reply" and conv["waiting_since"] == T0
    assert [(m["kind"], m["route"]) for m in await w.history(conv["id"])] == [("reply", "inbox")]

    w.clock.now += 125
    r = await w.answer(conv["id"], "Yes, M is in stock!", "k-1")
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["message"]["state"] == "queued" and out["message"]["response_s"] == 125.0 and not out["replayed"]
    assert out["conversation"]["status"] == "open" and out["conversation"]["assignee"] == "ann"
    [(gid, sent)] = w.gw.messages.items()  # the gateway got one transactional reply to that number
    assert sent["request"] == {"to": P[0], "body": "Yes, M is in stock!", "from": "12345", "category": "transactional",
                               "reference": f"answer:{conv['id']}:k-1"}  # fmt: skip
    retry = await w.answer(conv["id"], "Yes, M is in stock!", "k-1")  # the agent's client retries
    assert retry.status_code == 200 and retry.json()["replayed"] and len(w.gw.messages) == 1
    other = await w.answer(conv["id"], "Something else", "k-1")
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    assert await w.queue() == []

    w.gw.set_state(gid, "delivered")
    w.clock.now += 5
    assert await w.inbox.settle("acme") == 1 and await w.inbox.settle("acme") == 0  # final: not asked again
    hist = await w.history(conv["id"])
    assert [(m["kind"], m["direction"], m["state"], m["gateway_id"]) for m in hist] == [
        ("reply", "in", None, None), ("answer", "out", "delivered", gid)]
    figures = (await w.http.get("/v1/inbox/figures", headers=ACME)).json()
    assert figures["answered"] == 1 and figures["first_response_p50_s"] == 125.0 and figures["first_response_p90_s"] == 125.0
    assert (figures["open"], figures["needs_reply"], figures["closed"]) == (1, 0, 0)


@both_backends
async def test_opt_outs_and_keywords_never_reach_a_flow_or_the_queue() -> None:
    w = World()
    sub = w.subscribe("acme", P[0])
    w.inbox.state.reply_router = router = Router(takes={"2"})
    # "stop please": the gateway classified it (it keeps it; the link reads it with GET /v1/inbound).
    await w.link.handle("acme", Inbound(id=50, sender=P[0], recipient="12345", text="stop please", at=T0, kind="opt_out"))
    assert w.store.subscriber("acme", sub).consent == "revoked"  # type: ignore[union-attr]  # the ledger, as before
    assert router.offers == [] and await w.queue() == []
    conv = w.store.conversation_by_phone("acme", P[0])
    assert conv is not None and conv.opted_out
    assert [(m["kind"], m["route"]) for m in await w.history(conv.id)] == [("opt_out", "opt_out")]
    r = await w.answer(conv.id, "Sorry to see you go", "k")
    assert r.status_code == 422 and r.json()["code"] == "conversation.opted_out" and w.gw.messages == {}
    # A sign-up keyword is the link's: answered by the sign-up flow, in the history, nobody's question.
    assert (await w.webhook(w.mo(P[1], "JOIN"))).status_code == 204
    assert router.offers == [] and await w.queue() == []
    joined = w.store.conversation_by_phone("acme", P[1])
    assert joined is not None
    assert [(m["kind"], m["direction"]) for m in await w.history(joined.id)] == [("keyword", "in"), ("system", "out")]
    # A reply a waiting run takes goes to the flow, not the queue; another one goes to the queue.
    other = w.subscribe("acme", P[2])
    await w.webhook(w.mo(P[2], "2"))
    await w.webhook(w.mo(P[2], "what about returns?"))
    assert [o[2:] for o in router.offers] == [("2", "2"), ("3", "what about returns?")]
    [queued] = await w.queue()
    assert queued["subscriber_id"] == other
    assert [m["route"] for m in await w.history(queued["id"])] == ["flow", "inbox"]


async def test_unknown_senders_get_a_conversation_and_no_flow_is_asked() -> None:
    w = World()
    w.inbox.state.reply_router = router = Router(takes={"hi"})
    await w.webhook(w.mo(P[1], "hi"))
    [conv] = await w.queue()
    assert conv["subscriber_id"] is None and conv["phone"] == P[1] and router.offers == []
    assert (await w.answer(conv["id"], "Hello! Who's this?", "a")).status_code == 202
    assert [m["request"]["to"] for m in w.gw.messages.values()] == [P[1]]


async def test_without_a_flow_runtime_every_reply_is_the_inbox_s() -> None:
    w = World()
    assert isinstance(w.app.state.reply_router, NoRunWaits)
    w.subscribe("acme", P[0])
    await w.webhook(w.mo(P[0], "1"))
    assert len(await w.queue()) == 1


async def test_an_answer_the_gateway_did_not_take_is_sent_later_and_once() -> None:
    w = World()
    w.subscribe("acme", P[0])
    await w.webhook(w.mo(P[0], "Where is my order?"))
    [conv] = await w.queue()
    w.gw.down = True
    r = await w.answer(conv["id"], "Shipped today", "k")
    assert r.status_code == 202 and r.json()["message"]["state"] == "sending"  # stored, not yet sent
    assert await w.queue() == []  # answered: out of the queue already
    w.gw.down = False
    w.gw.lose_message_answers = 1  # the gateway stores it, the answer is lost on the way back
    assert await w.inbox.settle("acme") == 1
    assert [m["state"] for m in await w.history(conv["id"])] == [None, "sending"]
    assert await w.inbox.settle("acme") == 1  # the same bytes, the same key: the gateway's stored answer
    assert len(w.gw.messages) == 1
    [answer] = [m for m in await w.history(conv["id"]) if m["kind"] == "answer"]
    assert answer["state"] == "queued" and answer["gateway_id"] == next(iter(w.gw.messages))


async def test_an_answer_the_gateway_refuses_is_marked_refused() -> None:
    w = World()
    w.subscribe("acme", P[0])
    await w.webhook(w.mo(P[0], "hello?"))
    [conv] = await w.queue()
    w.gw.refuse_messages = {"code": "invalid_field", "field": "to"}
    r = await w.answer(conv["id"], "Hi", "k")
    assert r.status_code == 202 and (r.json()["message"]["state"], r.json()["message"]["error"]) == ("refused", "invalid_field")
    assert await w.inbox.settle("acme") == 0  # never retried


async def test_people_s_actions_assign_close_reopen_and_filters() -> None:
    w = World()
    for p in P:
        w.subscribe("acme", p)
        await w.webhook(w.mo(p, f"question from {p}"))
        w.clock.now += 10
    convs = await w.queue()
    assert [c["phone"] for c in convs] == P  # the longest wait first
    r = await w.http.post(f"/v1/inbox/conversations/{convs[1]['id']}/assign", json={"agent": "bob"}, headers=ACME)
    assert r.status_code == 200 and r.json()["assignee"] == "bob"
    mine = await w.http.get("/v1/inbox/conversations", params={"assignee": "bob", "needs_reply": "true"}, headers=ACME)
    assert [c["id"] for c in mine.json()["items"]] == [convs[1]["id"]]
    r = await w.http.post(f"/v1/inbox/conversations/{convs[1]['id']}/assign", json={"agent": None}, headers=ACME)
    assert r.json()["assignee"] is None
    r = await w.http.post(f"/v1/inbox/conversations/{convs[0]['id']}/close", headers=ACME)
    assert r.json()["status"] == "closed"
    closed = await w.http.get("/v1/inbox/conversations", params={"status": "closed"}, headers=ACME)
    assert [c["id"] for c in closed.json()["items"]] == [convs[0]["id"]]
    r = await w.http.post(f"/v1/inbox/conversations/{convs[0]['id']}/reopen", headers=ACME)
    assert r.json()["status"] == "open"
    # Cursor pagination of the queue: two pages, nothing missed or repeated.
    page = (await w.http.get("/v1/inbox/conversations", params={"status": "needs_reply", "limit": 1}, headers=ACME)).json()
    rest = (await w.http.get("/v1/inbox/conversations", params={"status": "needs_reply", "after": page["next"]},
                             headers=ACME)).json()  # fmt: skip
    assert [c["id"] for c in page["items"] + rest["items"]] == [convs[1]["id"], convs[2]["id"]] and rest["next"] is None
    others = (await w.http.get("/v1/inbox/conversations", params={"needs_reply": "false"}, headers=ACME)).json()
    assert [c["id"] for c in others["items"]] == [convs[0]["id"]]
    figures = (await w.http.get("/v1/inbox/figures", headers=ACME)).json()
    assert (figures["open"], figures["needs_reply"], figures["closed"], figures["answered"]) == (1, 2, 0, 0)
    assert figures["oldest_wait_s"] == 20.0 and figures["first_response_p50_s"] is None


async def test_tenants_are_isolated() -> None:
    w = World()
    w.subscribe("acme", P[0])
    await w.webhook(w.mo(P[0], "acme question"))
    [conv] = await w.queue()
    assert await w.queue(BETA) == []
    for method, path, body in [("GET", "", None), ("GET", "/messages", None), ("POST", "/close", None),
                               ("POST", "/assign", {"agent": "eve"}), ("POST", "/answers", {"text": "x", "agent": "eve"})]:
        r = await w.http.request(method, f"/v1/inbox/conversations/{conv['id']}{path}", json=body, headers=BETA)
        assert r.status_code == 404 and r.json()["code"] == "conversation_not_found", (path, r.text)
    assert w.gw.messages == {} and (await w.queue())[0]["assignee"] is None
    figures = (await w.http.get("/v1/inbox/figures", headers=BETA)).json()
    assert figures["needs_reply"] == 0
    # The same MO id at another shop is another message.
    assert (await w.webhook(w.mo(P[0], "beta question", mo_id=1), tenant="beta")).status_code == 204
    assert len(await w.queue(BETA)) == 1 and len(await w.queue()) == 1


async def test_bad_input_is_refused_with_a_code_and_nothing_is_stored() -> None:
    w = World()
    w.subscribe("acme", P[0])
    await w.webhook(w.mo(P[0], "hello"))
    [conv] = await w.queue()
    cid = conv["id"]
    cases = [
        ("POST", f"/v1/inbox/conversations/{cid}/answers", {"text": "", "agent": "ann"}, {}, 422, "invalid_field"),
        ("POST", f"/v1/inbox/conversations/{cid}/answers", {"text": "   ", "agent": "ann"}, {}, 422, "conversation.empty_answer"),
        ("POST", f"/v1/inbox/conversations/{cid}/answers", {"text": "x" * 1601, "agent": "ann"}, {}, 422, "invalid_field"),
        ("POST", f"/v1/inbox/conversations/{cid}/answers", {"text": "hi"}, {}, 422, "invalid_field"),
        ("POST", f"/v1/inbox/conversations/{cid}/answers", {"text": "hi", "agent": "ann", "x": 1}, {}, 422, "invalid_field"),
        ("POST", f"/v1/inbox/conversations/{cid}/answers", {"text": "hi", "agent": "ann"}, {"idempotency-key": "k" * 101}, 422, "invalid_field"),
        ("POST", f"/v1/inbox/conversations/{cid}/assign", {"agent": "a" * 101}, {}, 422, "invalid_field"),
        ("POST", "/v1/inbox/conversations/999/answers", {"text": "hi", "agent": "ann"}, {}, 404, "conversation_not_found"),
        ("GET", "/v1/inbox/conversations?status=pending", None, {}, 422, "invalid_field"),
        ("GET", "/v1/inbox/conversations?after=bm9wZQ", None, {}, 422, "invalid_cursor"),
        ("GET", "/v1/inbox/conversations?status=needs_reply&after=WzFd", None, {}, 422, "invalid_cursor"),
        ("GET", f"/v1/inbox/conversations/{cid}/messages?after=zz", None, {}, 422, "invalid_cursor"),
        ("GET", "/v1/inbox/conversations?needs_reply=true&status=closed", None, {}, 422, "invalid_field"),
        ("GET", "/v1/inbox/conversations/0", None, {}, 422, "invalid_field"),
        ("GET", "/v1/inbox/figures?since_s=-1", None, {}, 422, "invalid_field"),
    ]
    for method, path, body, headers, status, code in cases:
        r = await w.http.request(method, path, json=body, headers={**ACME, **headers})
        assert (r.status_code, r.json()["code"]) == (status, code), (path, body, r.text)
    bad = await w.http.post(f"/v1/inbox/conversations/{cid}/answers", content=b"{not json", headers=ACME)
    assert bad.status_code == 400 and bad.json()["code"]  # the app's malformed-body answer
    assert (await w.http.get("/v1/inbox/conversations", headers={"authorization": "Bearer nope"})).status_code == 401
    assert w.gw.messages == {} and [m["kind"] for m in await w.history(cid)] == ["reply"]
    assert (await w.queue())[0]["status"] == "needs_reply"  # nothing half-stored
    schema = (await w.http.get("/schema/openapi.json")).json()
    assert {"/v1/inbox/conversations", "/v1/inbox/conversations/{conversation_id}/answers", "/v1/inbox/figures"} <= set(schema["paths"])


@hsettings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["mo", "redeliver", "answer", "retry", "down", "up", "lose", "settle"]),
                                st.integers(0, 2)), max_size=25))  # fmt: skip
async def test_any_mix_of_redeliveries_retries_and_failures_sends_each_answer_once(steps) -> None:  # type: ignore[no-untyped-def]
    """Whatever the order of redelivered MOs, retried answers, a gateway down or losing its answers:
    each MO is in the history once, each answer key reaches the gateway as one message, and once the
    gateway is up and settled every answer has its gateway id."""
    w = World()
    for p in P:
        w.subscribe("acme", p)
    bodies: list[bytes] = []
    keys: dict[str, int] = {}  # answer key -> conversation
    for op, i in steps:
        if op == "mo":
            bodies.append(w.mo(P[i], f"q{len(bodies)}"))
            await w.webhook(bodies[-1])
        elif op == "redeliver" and bodies:
            await w.webhook(bodies[i % len(bodies)])
        elif op in ("answer", "retry"):
            conv = w.store.conversation_by_phone("acme", P[i])
            if conv is None:
                continue
            key = f"k{len(keys)}" if op == "answer" or not keys else sorted(keys)[i % len(keys)]
            cid = keys.setdefault(key, conv.id)
            r = await w.answer(cid, f"answer {key}", key)
            assert r.status_code in (200, 202), r.text
        elif op == "down":
            w.gw.down = True
        elif op == "up":
            w.gw.down = False
        elif op == "lose":
            w.gw.lose_message_answers += 1
        else:
            await w.inbox.settle("acme")
        w.clock.now += 1
    w.gw.down, w.gw.lose_message_answers = False, 0
    await w.inbox.settle("acme")
    sent = sorted(m["key"] for m in w.gw.messages.values())
    assert len(sent) == len(set(sent)) == len(keys)
    history = [m for c in w.store.conversations("acme") for _, m in w.store.conversation_history("acme", c.id)]
    ids = [m.message_id for m in history]
    assert len(ids) == len(set(ids)) and sum(m.direction == "in" for m in history) == len(set(bodies))
    assert all(m.gateway_id is not None and m.state == "queued" for m in history if m.kind == "answer")


def test_cli_lists_the_queue_and_the_figures(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from campaigns.cli import campaigns as cli
    from campaigns.core import conversations as C

    db = tmp_path / "c.db"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[campaigns]\nstore_url = "sqlite:///{db.as_posix()}"\n[[campaigns.tenants]]\nname = "acme"\n'
                   f'key_sha256 = "{"0" * 64}"\n')  # fmt: skip
    store = open_store(f"sqlite:///{db.as_posix()}")
    for i, p in enumerate(P):
        store.conversation_apply("acme", p, lambda c, i=i: (C.receive(c, f"mo:{i}", "?", T0 - 10 * i, C.ToInbox()), []),
                                 now=T0, message_id=f"mo:{i}")  # fmt: skip
    store.close()
    out = CliRunner().invoke(cli, ["inbox", "--config", str(cfg), "--tenant", "acme"])
    assert out.exit_code == 0, out.output
    assert [json.loads(line)["phone"] for line in out.output.splitlines()] == list(reversed(P))
    out = CliRunner().invoke(cli, ["inbox-figures", "--config", str(cfg), "--tenant", "acme"])
    assert out.exit_code == 0 and json.loads(out.output)["needs_reply"] == 3


async def test_a_message_delivered_twice_at_once_is_offered_once() -> None:
    import anyio
    import anyio.lowlevel

    w = World()
    w.subscribe("acme", P[0])

    class Slow(Router):
        async def offer_reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool:
            for _ in range(20):  # the other delivery runs meanwhile
                await anyio.lowlevel.checkpoint()
            return await super().offer_reply(tenant, subscriber_id, message_id, text, now)

    w.inbox.state.reply_router = router = Slow()
    body = w.mo(P[0], "is it in stock?")
    statuses: list[int] = []

    async def deliver() -> None:
        statuses.append((await w.webhook(body)).status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(deliver)
        tg.start_soon(deliver)
    assert statuses == [204, 204] and len(router.offers) == 1 and len(await w.queue()) == 1


async def test_an_answer_the_gateway_does_not_know_is_no_longer_asked_about() -> None:
    w = World()
    w.subscribe("acme", P[0])
    await w.webhook(w.mo(P[0], "hello?"))
    [conv] = await w.queue()
    assert (await w.answer(conv["id"], "Hi", "k")).status_code == 202
    w.gw.messages.clear()  # e.g. the gateway's store was replaced
    assert await w.inbox.settle("acme") == 1 and await w.inbox.settle("acme") == 0
    [answer] = [m for m in await w.history(conv["id"]) if m["kind"] == "answer"]
    assert (answer["state"], answer["error"]) == ("unknown", "not_found")


async def test_flow_sends_recorded_once_in_the_history_and_answer_nobody() -> None:
    w = World()
    w.subscribe("acme", P[0])
    for _ in range(2):  # the flow runtime's at-least-once send path records it again after a crash
        await w.inbox.record_sent("acme", P[0], "flow-7-1", "Your cart misses you", T0, "flow:abandoned_cart")
    conv = w.store.conversation_by_phone("acme", P[0])
    assert conv is not None and conv.status == "open"
    assert [(m["kind"], m["by"]) for m in await w.history(conv.id)] == [("flow", "flow:abandoned_cart")]
    assert await w.queue() == []
