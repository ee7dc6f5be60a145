"""The flow runtime through the store seam (both engines), on virtual time, against the fake gateway
that keeps Idempotency-Keys like the real one: triggers and exits from real inputs (events, consent,
abandoned checkouts, segment entries, clicks, scans), due timers claimed in batches, the outbox of
sends (rendered once, posted with ``flow-{run}-{visit}``), replies, opt-outs, versions."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from campaigns.core import flow_library
from campaigns.core.events import CheckoutEvent, CustomEvent, FulfillmentEvent, OrderEvent, Profile
from campaigns.service.flow_api import FlowService, InstallIn
from campaigns.service.flow_runtime import FlowRuntime, TenantFlows
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import TenantLinks
from campaigns.store import Store, open_store
from campaigns.store.base import NewConsent
from campaigns.store.campaign_rows import HitIn
from fake_gateway import FakeGateway

pytestmark = pytest.mark.anyio
T0 = 1_767_000_000.0
HOUR, DAY = 3600.0, 86_400.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def subscriber(store: Store, i: int, *, consent: str = "confirmed", tenant: str = "acme", name: str = "Ana") -> int:
    phone = f"+4479111{i:05d}"
    sub, _ = store.put_subscriber(tenant, Profile(phone=phone, first_name=name), phone=phone, at=T0 - 1000, now=T0 - 1000)
    for k, action in enumerate({"none": [], "confirmed": ["opt_in", "confirm"]}[consent]):
        store.record_consent(tenant, NewConsent(phone=phone, action=action, source="api", at=T0 - 900 + k), now=T0 - 900)  # type: ignore[arg-type]
    return sub.id


def phone(i: int) -> str:
    return f"+4479111{i:05d}"


def runtime(store: Store, gw: FakeGateway, clock: Clock, links: TenantLinks | None = None) -> FlowRuntime:
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    return FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME", shop_name="Acme", links=links)},
                       clock, batch=50)  # fmt: skip


async def install(store: Store, clock: Clock, flow: str, **overrides: object) -> None:
    svc = FlowService(store, clock)
    await svc.install("acme", InstallIn(flow=flow, overrides=dict(overrides)))
    await svc.enable("acme", flow, True)


def checkout(cid: str, i: int, value: int, status: str = "abandoned", at: float = T0) -> CheckoutEvent:
    return CheckoutEvent(id=f"ev-{cid}-{status}", at=at, checkout_id=cid, phone=phone(i), status=status,  # type: ignore[arg-type]
                         value=value, url=f"https://shop.example/c/{cid}")  # fmt: skip


async def test_abandoned_cart_value_branch_exit_on_order_and_one_send_each(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock)
    await install(store, clock, "abandoned_cart")
    big, small, buyer, unconsented = (subscriber(store, 1), subscriber(store, 2), subscriber(store, 3),
                                      subscriber(store, 4, consent="none"))  # fmt: skip
    for cid, i, value in [("c1", 1, 25_000), ("c2", 2, 4_000), ("c3", 3, 9_000), ("c4", 4, 9_000)]:
        store.apply_event("acme", checkout(cid, i, value), phone=phone(i), now=T0)
    store.apply_event("acme", checkout("c1", 1, 25_000), phone=phone(1), now=T0)  # a redelivery: nothing new
    await rt.round()
    runs = {r.subscriber_id: r for r in store.flow_run_rows("acme", flow_id="abandoned_cart")}
    assert set(runs) == {big, small, buyer}  # not the subscriber without consent
    assert all(r.node == "wait1h" and r.due == T0 + HOUR for r in runs.values())
    # An order 1 ms before the reminder is due ends that run: it is never sent.
    clock.now = T0 + HOUR - 0.001
    store.apply_event("acme", OrderEvent(id="o3", at=clock.now, order_id="o3", phone=phone(3), total=9000, currency="USD",
                                         payment_status="paid", checkout_id="c3"), phone=phone(3), now=clock.now)  # fmt: skip
    await rt.round()
    assert gw.sent_messages() == []  # nothing is due yet: timers never fire early
    clock.now = T0 + HOUR
    await rt.round()
    by_to = {m["to"]: m for m in gw.sent_messages()}
    assert set(by_to) == {phone(1), phone(2)}
    assert "media" in by_to[phone(1)] and "SAVE20" in by_to[phone(1)]["body"] and "shop.example/c/c1" in by_to[phone(1)]["body"]
    assert "media" not in by_to[phone(2)] and "SAVE10" in by_to[phone(2)]["body"]
    assert all(m["category"] == "marketing" and m["from"] == "ACME" for m in gw.sent_messages())
    rows = {r.subscriber_id: r for r in store.flow_run_rows("acme", flow_id="abandoned_cart")}
    assert rows[buyer].state == "ended" and rows[buyer].ended == "exit:order_placed"
    assert {m["key"] for m in gw.sent_messages()} == {f"flow-{rows[big].id}-3", f"flow-{rows[small].id}-3"}
    # Not clicked in a day: the last call; then the runs complete.
    clock.now = T0 + HOUR + DAY
    await rt.round()
    assert Counter(m["to"] for m in gw.sent_messages()) == {phone(1): 2, phone(2): 2}
    assert {r.state for r in store.flow_run_rows("acme", flow_id="abandoned_cart")} == {"ended"}
    counts = {(c.node): c for c in store.flow_node_counts("acme", "abandoned_cart")}
    assert counts["big"].sent == 1 and counts["small"].sent == 1 and counts["last"].sent == 2
    msgs = store.flow_messages("acme", flow_id="abandoned_cart")
    assert all(m.state == "sent" and m.message_id for m in msgs) and {m.step for m in msgs} == {"big", "small", "last"}


@pytest.mark.parametrize("batched", [False, True])
async def test_a_cart_paid_under_another_phone_or_completed_by_the_shop_is_never_reminded(store: Store,
                                                                                       batched: bool) -> None:  # fmt: skip
    """The abandoned-cart run of a checkout ends (``exit:checkout_completed``) when the checkout is
    paid by an order under another phone (the shopper switched numbers) or the shop reports it
    completed with no order; another checkout's completion leaves a run going; a paid checkout
    reported abandoned late starts no run. One by one and in one batch (both engines)."""
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock)
    await install(store, clock, "abandoned_cart")
    switched, payer, shop_done, other, late = (subscriber(store, i) for i in range(1, 6))

    def send(*evs: CheckoutEvent | OrderEvent) -> None:
        if batched:
            store.apply_events("acme", [(e, e.phone) for e in evs], now=clock.now)
        else:
            for e in evs:
                store.apply_event("acme", e, phone=e.phone, now=clock.now)

    def order(oid: str, i: int, cid: str, at: float) -> OrderEvent:
        return OrderEvent(id=oid, at=at, order_id=oid, phone=phone(i), total=9000, currency="USD", payment_status="paid",
                          checkout_id=cid)  # fmt: skip

    send(order("o6", 5, "k6", T0 - 10),  # paid first; the shop's "abandoned" report of it arrives after
         checkout("k1", 1, 4_000), checkout("k3", 3, 25_000), checkout("k4", 4, 4_000), checkout("k6", 5, 4_000))
    await rt.round()
    runs = {r.subscriber_id: r for r in store.flow_run_rows("acme", flow_id="abandoned_cart")}
    assert set(runs) == {switched, shop_done, other}  # not the paid checkout reported abandoned
    # 1 ms before the reminders are due: k1 paid under the payer's phone, k3 completed by the shop
    # (no order), and another checkout of ``other`` completed (its k4 stays abandoned)
    clock.now = T0 + HOUR - 0.001
    send(order("o1", 2, "k1", clock.now), checkout("k3", 3, 25_000, "completed", clock.now),
         checkout("k5", 4, 100, "completed", clock.now))
    await rt.round()
    clock.now = T0 + HOUR
    await rt.round()
    assert [m["to"] for m in gw.sent_messages()] == [phone(4)]
    rows = {r.subscriber_id: r for r in store.flow_run_rows("acme", flow_id="abandoned_cart")}
    assert (rows[switched].state, rows[switched].ended) == ("ended", "exit:checkout_completed")
    assert (rows[shop_done].state, rows[shop_done].ended) == ("ended", "exit:checkout_completed")
    assert rows[other].state != "ended" and payer not in rows and late not in rows
    # the order's own completion of k3 later, re-sent events: nothing more is sent
    send(order("o3", 3, "k3", clock.now), order("o1", 2, "k1", clock.now))
    clock.now = T0 + HOUR + DAY
    await rt.round()
    assert Counter(m["to"] for m in gw.sent_messages()) == {phone(4): 2}


async def test_a_send_recorded_but_not_answered_is_posted_again_with_the_same_key_and_bytes(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    await install(store, clock, "shipping_notice")
    subscriber(store, 1, consent="none")  # transactional: no marketing consent needed
    store.apply_event("acme", OrderEvent(id="o1", at=T0, order_id="o1", phone=phone(1), total=100, currency="USD",
                                         payment_status="paid"), phone=phone(1), now=T0)  # fmt: skip
    store.apply_event("acme", FulfillmentEvent(id="f1", at=T0 + 5, order_id="o1", status="shipped",
                                               tracking_url="https://track.example/1"), phone=None, now=T0 + 5)  # fmt: skip
    gw.fail_messages = 1
    rt = runtime(store, gw, clock)
    await rt.round()  # the gateway is away: the send stays pending
    assert gw.sent_messages() == [] and [m.state for m in store.flow_messages("acme")] == ["pending"]
    await rt.round()
    assert len(gw.sent_messages()) == 1 and gw.sent_messages()[0]["category"] == "transactional"
    assert "track.example/1" in gw.sent_messages()[0]["body"] and "o1" in gw.sent_messages()[0]["body"]
    # The answer was lost after the gateway stored it: the same key and bytes again -> its stored answer.
    store.flow_messages_done([], now=T0)
    with store.flow_tx("acme") as ftx:
        ftx.tx.run("UPDATE flow_outbox SET state = 'pending'")
    await runtime(store, gw, clock).round()
    assert len(gw.sent_messages()) == 1 and gw.message_posts == 3
    assert [m.state for m in store.flow_messages("acme")] == ["sent"]


async def test_survey_reply_goes_to_the_waiting_run_and_opt_out_ends_every_run(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock)
    await install(store, clock, "post_delivery_survey")
    await install(store, clock, "win_back")
    sid = subscriber(store, 1)
    store.apply_event("acme", OrderEvent(id="o1", at=T0, order_id="o1", phone=phone(1), total=100, currency="USD",
                                         payment_status="paid", fulfillment_status="delivered"), phone=phone(1), now=T0)  # fmt: skip
    await rt.round()
    for clock.now in (T0 + DAY, T0 + 2 * DAY):  # a day, then noon (the subscriber's zone: UTC)
        await rt.round()
    assert [m["body"] for m in gw.sent_messages()] == [flow_library.STARTER_TEXTS["survey_q1_score"].replace("{shop_name}", "Acme")
                                                + " Reply STOP to opt out"]  # fmt: skip
    assert not await rt.offer_reply("acme", sid, "mo-0", "what is this?", clock.now)  # not an answer: the inbox's
    assert await rt.offer_reply("acme", sid, "mo-1", "😍😍", clock.now)
    assert await rt.offer_reply("acme", sid, "mo-1", "😍😍", clock.now)  # a redelivery: still taken, once
    await rt.round()
    assert len(gw.sent_messages()) == 2  # q1, then q2
    assert store.subscriber("acme", sid).attributes["survey_score"] == "5"  # type: ignore[union-attr]
    # A win-back run too (90 days without an order), found by the periodic scan.
    clock.now = T0 + 91 * DAY
    await rt.scan(clock.now)
    assert {r.flow_id for r in store.flow_run_rows("acme", subscriber_id=sid) if r.state == "active"} >= {"win_back"}
    # The opt-out recorded from the gateway's STOP ends every run of the subscriber at once.
    store.record_consent("acme", NewConsent(phone=phone(1), action="opt_out", source="gateway", at=clock.now), now=clock.now)
    before = len(gw.sent_messages())
    await rt.round()
    rows = store.flow_run_rows("acme", subscriber_id=sid)
    assert rows and all(r.state == "ended" for r in rows)
    assert {r.ended for r in rows if r.flow_id in ("post_delivery_survey",)} <= {"opted_out", "completed"}
    assert any(r.ended == "opted_out" for r in rows)
    assert len(gw.sent_messages()) == before  # nothing after the opt-out
    assert not await rt.offer_reply("acme", sid, "mo-9", "2", clock.now)


async def test_custom_event_segment_and_keyword_triggers_and_tenant_isolation(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock)
    svc = FlowService(store, clock)
    await svc.put_template("acme", "hello", "Hi {first_name|there} from {shop_name}")
    flow = {"id": "vip", "version": 1, "name": "VIP", "trigger": {"type": "custom", "name": "became_vip"},
            "entry": "s", "nodes": {"s": {"type": "send", "template": "hello", "next": "t"},
                                    "t": {"type": "update", "add_tags": ["vip_welcomed"]}}}  # fmt: skip
    await svc.publish("acme", flow, new=True)
    await svc.enable("acme", "vip", True)
    await install(store, clock, "sms_quiz")
    sid = subscriber(store, 1)
    other = subscriber(store, 1, tenant="beta")
    store.apply_event("acme", CustomEvent(id="x1", at=T0, phone=phone(1), name="became_vip"), phone=phone(1), now=T0)
    await rt.round()
    assert [m["body"] for m in gw.sent_messages()] == ["Hi Ana from Acme Reply STOP to opt out"]
    assert "vip_welcomed" in store.tags("acme", sid)
    assert await rt.offer_reply("acme", sid, "mo-q", "quiz", clock.now)  # a keyword flow starts
    await rt.round()
    assert any(m["body"].startswith("Quiz") for m in gw.sent_messages())
    assert store.flow_run_rows("beta") == [] and store.flow_head("beta", "vip") is None
    assert not await rt.offer_reply("beta", other, "mo-b", "quiz", clock.now)


@settings(max_examples=10, deadline=None)
@given(early=st.floats(min_value=0.001, max_value=3599), drained=st.booleans(), fire_late=st.floats(min_value=0, max_value=600))
def test_an_exit_that_arrives_before_the_timer_is_acted_on_prevents_the_send(early: float, drained: bool,
                                                                         fire_late: float) -> None:  # fmt: skip
    """Whether or not the worker drained the queue in between, and however late it fires the timer."""
    import anyio

    store = open_store("sqlite:///:memory:")
    try:
        clock, gw = Clock(), FakeGateway()
        rt = runtime(store, gw, clock)
        anyio.run(lambda: install(store, clock, "abandoned_cart"))
        subscriber(store, 1)
        store.apply_event("acme", checkout("c1", 1, 5000), phone=phone(1), now=T0)
        rt.worker.drain("acme", T0)
        due = T0 + HOUR
        at = due - early  # the order comes before the reminder is due (from 1 ms to 2 h before)
        store.apply_event("acme", OrderEvent(id="o1", at=at, order_id="o1", phone=phone(1), total=1, currency="USD",
                                             payment_status="paid"), phone=phone(1), now=at)  # fmt: skip
        if drained:
            rt.worker.drain("acme", at)
        assert rt.worker.fire("acme", due + fire_late) == ([] if drained else [due])
        assert store.flow_messages("acme") == []
        [run] = store.flow_run_rows("acme")
        assert run.ended == "exit:order_placed" and run.due is None
    finally:
        store.close()


async def test_webhook_nodes_post_once_with_their_key_and_never_to_our_own_network(store: Store) -> None:
    import httpx

    clock, gw = Clock(), FakeGateway()
    hits: list[tuple[str, str]] = []

    def hook(request: httpx.Request) -> httpx.Response:
        hits.append((str(request.url), request.headers["idempotency-key"]))
        return httpx.Response(200 if len(hits) > 1 else 503)

    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    rt = FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME")}, clock,
                     webhook_transport=httpx.MockTransport(hook))  # fmt: skip
    svc = FlowService(store, clock)
    for fid, url in (("public", "https://93.184.215.14/hook"), ("private", "http://127.0.0.1:9/hook"),
                     ("metadata", "http://169.254.169.254/latest")):  # fmt: skip
        flow = {"id": fid, "name": fid, "trigger": {"type": "custom", "name": "go"}, "entry": "w",
                "nodes": {"w": {"type": "webhook", "url": url}}}  # fmt: skip
        await svc.publish("acme", flow, new=True)
        await svc.enable("acme", fid, True)
    subscriber(store, 1)
    store.apply_event("acme", CustomEvent(id="g", at=T0, phone=phone(1), name="go"), phone=phone(1), now=T0)
    await rt.round()  # the public hook answers 503: kept pending, tried again 30 s later
    clock.now = T0 + 30
    await rt.round()
    states = {m.flow_id: (m.state, m.detail or "") for m in store.flow_messages("acme")}
    assert states["public"] == ("sent", "")
    assert states["private"][0] == states["metadata"][0] == "failed" and states["private"][1].startswith("unsafe_target")
    assert [h[0] for h in hits] == ["https://93.184.215.14/hook"] * 2 and hits[0][1] == hits[1][1]
    await rt.aclose()


async def test_a_new_version_leaves_waiting_runs_on_theirs_and_new_runs_start_on_it(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock)
    svc = FlowService(store, clock)
    for tid, text in (("a", "version one"), ("b", "version two")):
        await svc.put_template("acme", tid, text)
    flow = {"id": "v", "name": "V", "trigger": {"type": "custom", "name": "go"}, "entry": "w", "reentry": {"rule": "always"},
            "nodes": {"w": {"type": "wait", "seconds": 60, "next": "s"}, "s": {"type": "send", "template": "a"}}}  # fmt: skip
    await svc.publish("acme", flow, new=True)
    await svc.enable("acme", "v", True)
    subscriber(store, 1)
    store.apply_event("acme", CustomEvent(id="g1", at=T0, phone=phone(1), name="go"), phone=phone(1), now=T0)
    await rt.round()
    # v2 renames the wait node and sends another template: the waiting v1 run must not read it
    flow2 = {**flow, "entry": "pause", "nodes": {"pause": {"type": "wait", "seconds": 10, "next": "s2"},
                                                 "s2": {"type": "send", "template": "b"}}}  # fmt: skip
    assert (await svc.publish("acme", flow2, new=False, flow_id="v")).version == 2
    store.apply_event("acme", CustomEvent(id="g2", at=T0, phone=phone(1), name="go"), phone=phone(1), now=T0)
    await rt.round()
    clock.now = T0 + 60
    await rt.round()
    assert sorted(m["body"].split(" Reply")[0] for m in gw.sent_messages()) == ["version one", "version two"]
    assert sorted((r.version, r.ended) for r in store.flow_run_rows("acme", flow_id="v")) == [(1, "completed"), (2, "completed")]


async def test_subscribed_by_source_and_segment_entered_triggers(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock)
    await install(store, clock, "welcome", trigger={"type": "subscribed", "source": "keyword"})
    svc = FlowService(store, clock)
    await svc.put_template("acme", "seg", "You are in!")
    seg = store.put_segment("acme", "vips", {"field": "country", "op": "eq", "value": "FR"}, now=T0)
    flow = {"id": "segflow", "name": "S", "trigger": {"type": "segment_entered", "segment": str(seg.id)}, "entry": "s",
            "nodes": {"s": {"type": "send", "template": "seg"}}}  # fmt: skip
    await svc.publish("acme", flow, new=True)
    await svc.enable("acme", "segflow", True)
    kw, form = phone(1), phone(2)
    for p, source in ((kw, "keyword"), (form, "form")):
        store.put_subscriber("acme", Profile(phone=p), phone=p, at=T0, now=T0)
        store.record_consent("acme", NewConsent(phone=p, action="opt_in", source=source, at=T0,  # type: ignore[arg-type]
                                                disclosure_text="Reply Y to confirm"), now=T0)  # fmt: skip
    await rt.round()
    assert gw.sent_messages() == []  # pending: nobody is subscribed before their Y
    for p in (kw, form):  # the Y comes by SMS: the ledger's source is "reply", the sign-up's is kept
        store.record_consent("acme", NewConsent(phone=p, action="confirm", source="reply", at=T0 + 1), now=T0 + 1)
    await rt.round()
    assert [m["to"] for m in gw.sent_messages()] == [kw]  # the welcome of keyword sign-ups only
    sid = store.subscriber_by_phone("acme", kw).id  # type: ignore[union-attr]
    assert store.set_member("acme", seg.id, sid, True, now=T0 + 2)
    assert not store.set_member("acme", seg.id, sid, True, now=T0 + 3)  # already in: not entered again
    await rt.round()
    assert [m["body"].split(" Reply")[0] for m in gw.sent_messages() if m["to"] == kw][-1] == "You are in!"
    assert len(gw.sent_messages()) == 2


def test_postgres_workers_claim_disjoint_timer_batches_and_own_input_shares(pg_url: str) -> None:
    """Two connections (workers): while one holds its claimed batch, the other skips it (SKIP LOCKED)
    and takes the next due runs; each drains only its share of the subscribers' inputs."""
    import threading

    from campaigns.core import flows as F

    a, b = open_store(pg_url), open_store(pg_url)
    try:
        a.put_flow_version("acme", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
        with a.flow_tx("acme") as ftx:
            for i in range(6):
                ftx.insert_run(F.Run(id=f"f:{i}:e", flow_id="f", version=1, subscriber_id=i, started_at=T0, node="w",
                                     visit=1, timer_due=T0 + i), T0)  # fmt: skip
                ftx.queue(i, [F.ShopEvent(id=f"x{i}", kind="custom", name="x")])
        held, release, seen = threading.Event(), threading.Event(), {}

        def first() -> None:
            with a.flow_tx("acme") as ftx:
                seen["a"] = [r.subscriber_id for _, r in ftx.claim_due(T0 + 100, 3)]
                seen["a_in"] = sorted(s for _, s, _ in ftx.take_inputs(10, part=0, parts=2))
                held.set()
                release.wait(10)

        t = threading.Thread(target=first)
        t.start()
        assert held.wait(10)
        with b.flow_tx("acme") as ftx:
            seen["b"] = [r.subscriber_id for _, r in ftx.claim_due(T0 + 100, 10)]
            seen["b_in"] = sorted(s for _, s, _ in ftx.take_inputs(10, part=1, parts=2))
        release.set()
        t.join(10)
        assert (seen["a"], seen["b"]) == ([0, 1, 2], [3, 4, 5])
        assert (seen["a_in"], seen["b_in"]) == ([0, 2, 4], [1, 3, 5])
    finally:
        a.close()
        b.close()


async def test_flow_sends_enter_the_conversation_history_once(store: Store) -> None:
    from campaigns.config import CampaignSettings
    from campaigns.service.inbox import Inbox

    clock, gw = Clock(), FakeGateway()
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    inbox = Inbox(store, {"acme": client}, CampaignSettings(), clock)
    rt = FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME", shop_name="Acme")}, clock, inbox=inbox)
    await install(store, clock, "shipping_notice")
    subscriber(store, 1)
    store.apply_event("acme", OrderEvent(id="o1", at=T0, order_id="o1", phone=phone(1), total=100, currency="USD",
                                         payment_status="paid", fulfillment_status="shipped"), phone=phone(1), now=T0)  # fmt: skip
    await rt.round()
    [sent] = gw.sent_messages()
    await inbox.record_sent("acme", phone(1), sent["key"], sent["body"], T0, "flow:shipping_notice")  # a re-record: once
    conv = store.conversation_by_phone("acme", phone(1))
    assert conv is not None
    items = [h for _, h in store.conversation_history("acme", conv.id)]
    assert [(h.message_id, h.kind, h.direction) for h in items] == [(sent["key"], "flow", "out")]
    assert items[0].text == sent["body"] and items[0].by == "flow:shipping_notice"


async def test_a_sent_flow_message_becomes_a_report_source_once(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock, links=TenantLinks(domain="sl.ui", key=b"k" * 32))
    await install(store, clock, "abandoned_cart")
    subscriber(store, 1)
    store.apply_event("acme", checkout("c1", 1, 25_000), phone=phone(1), now=T0)
    await rt.round()
    clock.now = T0 + HOUR
    await rt.round()
    [sent] = gw.sent_messages()
    assert "https://sl.ui/" in sent["body"] and "shop.example" not in sent["body"]  # the cart URL shortened
    with store.flow_tx("acme") as ftx:
        rows = ftx.tx.rows("SELECT id, flow_id, step, message_id FROM flow_messages WHERE tenant = ?", ("acme",))
        links = ftx.tx.rows("SELECT flow_message FROM flow_links WHERE tenant = ?", ("acme",))
    assert [(r[0], r[1], r[2]) for r in rows] == [(sent["key"], "abandoned_cart", "big")] and rows[0][3]
    assert [r[0] for r in links] == [sent["key"]]


@pytest.mark.parametrize("via", ["record_click", "record_link_hits"])
async def test_a_click_on_a_flow_link_takes_the_clicked_branch(store: Store, via: str) -> None:
    clock, gw = Clock(), FakeGateway()
    rt = runtime(store, gw, clock, links=TenantLinks(domain="sl.ui", key=b"k" * 32))
    await install(store, clock, "abandoned_cart")
    subscriber(store, 1)
    subscriber(store, 2)
    for cid, i in (("c1", 1), ("c2", 2)):
        store.apply_event("acme", checkout(cid, i, 25_000), phone=phone(i), now=T0)
    await rt.round()
    clock.now = T0 + HOUR
    await rt.round()
    first = next(m for m in gw.sent_messages() if m["to"] == phone(1))
    code = first["body"].split("https://sl.ui/")[1].split()[0].rstrip(".")
    if via == "record_click":
        assert store.record_click(code, at=clock.now + 60, user_agent="Mozilla/5.0", verdict="click")
    else:  # the redirect's flush: the hit with the link it resolved to
        link = store.link(code)
        assert link is not None
        hit = HitIn(code=code, at=clock.now + 60, user_agent="Mozilla/5.0", verdict="click", tenant="acme",
                    campaign_id=link.campaign_id, subscriber_id=link.subscriber_id, phone=link.phone,
                    target=link.target, created_at=link.created_at, expires_at=link.expires_at)  # fmt: skip
        assert store.record_link_hits([hit, msgspec.structs.replace(hit, at=clock.now + 70)], now=clock.now + 70) == 1
        with store.flow_tx("acme") as ftx:
            events = [r[0] for r in ftx.tx.rows("SELECT event FROM flow_inputs WHERE tenant = ?", ("acme",))]
        assert sum('"type":"click"' in e for e in events) == 1
    await rt.round()
    clock.now = T0 + HOUR + 86_400
    await rt.round()
    sent = Counter(m["to"] for m in gw.sent_messages())
    assert sent == {phone(1): 1, phone(2): 2}  # the clicker gets no last call
    ended = {r.subscriber_id: r.ended for r in store.flow_run_rows("acme")}
    assert set(ended.values()) == {"completed"}


_ACT = st.one_of(
    st.tuples(st.just("checkout"), st.integers(1, 3), st.integers(1, 2), st.sampled_from([4_000, 25_000])),
    st.tuples(st.just("order"), st.integers(1, 3), st.integers(1, 2), st.booleans()),
    st.tuples(st.just("fulfil"), st.integers(1, 3), st.integers(1, 2), st.just(0)),
    st.tuples(st.just("custom"), st.integers(1, 3), st.integers(1, 2), st.just(0)),
    st.tuples(st.just("opt_out"), st.integers(1, 3), st.just(0), st.just(0)),
    st.tuples(st.just("again"), st.integers(0, 30), st.just(0), st.just(0)),  # redeliver an earlier event
)


def _flows_world(acts: list[tuple[str, int, int, object]], url: str = "sqlite:///:memory:") -> Store:
    """A store with three library flows and the inputs ``acts`` queued (one second apart)."""
    import anyio

    store = open_store(url)
    clock = Clock()
    for name in ("abandoned_cart", "post_purchase_upsell", "shipping_notice"):
        anyio.run(lambda n=name: install(store, clock, n))  # type: ignore[misc]
    for i in (1, 2, 3):
        subscriber(store, i)
    done: list[tuple[object, str]] = []
    for k, (kind, i, n, extra) in enumerate(acts):
        at = T0 + k
        event: object
        match kind:
            case "checkout":
                event = checkout(f"c{i}{n}", i, int(extra), at=at)  # type: ignore[call-overload]
            case "order":
                event = OrderEvent(id=f"o{i}{n}", at=at, order_id=f"o{i}{n}", phone=phone(i), total=100, currency="USD",
                                   payment_status="paid" if extra else "pending", checkout_id=f"c{i}{n}")  # fmt: skip
            case "fulfil":
                event = FulfillmentEvent(id=f"f{i}{n}", at=at, order_id=f"o{i}{n}", status="shipped")
            case "custom":
                event = CustomEvent(id=f"x{k}", at=at, phone=phone(i), name=f"go{n}")
            case "opt_out":
                store.record_consent("acme", NewConsent(phone=phone(i), action="opt_out", source="api", at=at), now=at)
                continue
            case _:
                if not done:
                    continue
                event, _p = done[i % len(done)]
        to = getattr(event, "phone", None) or phone(int(str(getattr(event, "order_id", "o1"))[1]))
        store.apply_event("acme", event, phone=to, now=at)  # type: ignore[arg-type]
        done.append((event, to))
    return store


def _outcome(store: Store) -> tuple[list[object], list[object]]:
    return store.flow_run_rows("acme", limit=1000), store.flow_messages("acme", limit=1000)


@settings(max_examples=25, deadline=None)
@given(acts=st.lists(_ACT, min_size=1, max_size=30), batch=st.integers(2, 40))
@example(acts=[("order", 1, 1, True), ("checkout", 1, 2, 25_000), ("order", 1, 2, True), ("opt_out", 2, 0, 0),
               ("checkout", 2, 1, 4_000), ("again", 1, 0, 0)], batch=40)
def test_a_batch_of_inputs_ends_as_the_same_inputs_applied_one_at_a_time(acts: list[tuple[str, int, int, object]],
                                                                        batch: int) -> None:  # fmt: skip
    """The batch path (ids marked, runs and subscribers read once, run updates written at the end)
    leaves the runs, timers and outbox exactly as applying each input alone does: per-subscriber
    order, redeliveries inside one batch, exits and opt-outs after a start in the same batch, re-entry
    rules that read runs started earlier in the batch; then the timers fire the same way."""
    _batch_as_one_at_a_time(acts, batch, _flows_world(acts), _flows_world(acts), planned=False)


@settings(max_examples=8, deadline=None)
@given(acts=st.lists(_ACT, min_size=1, max_size=30), batch=st.integers(2, 40))
@example(acts=[("order", 1, 1, True), ("checkout", 1, 2, 25_000), ("order", 1, 2, True), ("opt_out", 2, 0, 0),
               ("checkout", 2, 1, 4_000), ("again", 1, 0, 0)], batch=40)
def test_a_planned_batch_ends_as_the_same_inputs_applied_one_at_a_time(acts: list[tuple[str, int, int, object]],
                                                                      batch: int) -> None:  # fmt: skip
    """The same, the batches planned in a read snapshot and written after their checks (SQLite on a
    file, ``flow_plan``), against inputs applied one at a time in the single transaction."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sluice-batch-") as tmp:
        _batch_as_one_at_a_time(acts, batch, _flows_world(acts), _flows_world(acts, f"sqlite:///{tmp}/many.db"),
                                planned=True)  # fmt: skip


def _batch_as_one_at_a_time(acts: list[tuple[str, int, int, object]], batch: int, one: Store, many: Store, *,
                            planned: bool) -> None:  # fmt: skip
    try:
        rt1, rtn = runtime(one, FakeGateway(), Clock()), runtime(many, FakeGateway(), Clock())
        now = T0 + 100
        while rt1.worker.drain("acme", now, limit=1):
            pass
        while rtn.worker.drain("acme", now, limit=batch):
            pass
        assert rtn.worker.stats.redone == 0  # one worker: nothing changes under a planned batch
        assert (rtn.worker.stats.planned > 0) == (planned and rt1.worker.stats.inputs > 0)
        assert rt1.worker.stats == msgspec.structs.replace(rtn.worker.stats, planned=0, write_wait_s=0.0, write_hold_s=0.0,
                                                           write_cpu_s=0.0)  # fmt: skip
        assert _outcome(one) == _outcome(many)
        for later in (T0 + HOUR, T0 + DAY, T0 + 40 * DAY):
            rt1.worker.fire("acme", later, limit=1000)
            rtn.worker.fire("acme", later, limit=batch)
            while rtn.worker.fire("acme", later, limit=batch):
                pass
            assert _outcome(one) == _outcome(many)
    finally:
        one.close()
        many.close()


def test_a_batch_whose_run_was_started_meanwhile_stores_nothing_and_can_be_redone(store: Store) -> None:
    """A run held for the batch's insert whose key another transaction wrote meanwhile (a race only
    PostgreSQL allows): the commit is refused with a retryable StorageError and nothing of the batch
    is stored (the run, the update, the input ids); the batch redone sees the run and takes it."""
    from campaigns.core import flows as F
    from campaigns.errors import StorageError

    store.put_flow_version("acme", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
    run = F.Run(id="f:1:e", flow_id="f", version=1, subscriber_id=1, started_at=T0, node="w", visit=1, timer_due=T0)
    with store.flow_tx("acme") as ftx:
        ftx.insert_run(msgspec.structs.replace(run, id="f:1:old"), T0)
    with pytest.raises(StorageError):
        with store.flow_tx("acme") as ftx:
            assert ftx.first_times(["1:e"]) == {"1:e"}
            ftx.prefetch([1])
            [(old_id, old)] = ftx.active_runs(1)
            ftx.save_run(old_id, msgspec.structs.replace(old, node=None, timer_due=None, ended="completed"), T0 + 1)
            ftx.tx.run("INSERT INTO flow_runs (tenant, run_key, flow_id, version, subscriber_id, node, visit, state, "
                       "started_at, updated_at, run) VALUES ('acme', 'f:1:e', 'f', 1, 1, 'w', 1, 'active', ?, ?, '{}')",
                       (T0, T0))  # the other transaction's run, unseen by the cache  # fmt: skip
            assert ftx.insert_run(run, T0) is not None
    rows = store.flow_run_rows("acme")
    assert [(r.run_key, r.state) for r in rows] == [("f:1:old", "active")]
    with store.flow_tx("acme") as ftx:
        assert ftx.first_times(["1:e"]) == {"1:e"}  # not marked by the refused batch
        ftx.prefetch([1])
        assert ftx.insert_run(run, T0) is not None
    assert [r.run_key for r in store.flow_run_rows("acme")] == ["f:1:old", "f:1:e"]


# ---- sends in batches (POST /v1/messages/batch) ---------------------------------------------------
async def _shipped(store: Store, clock: Clock, n: int) -> None:
    """``n`` subscribers whose order ships: one transactional send each."""
    await install(store, clock, "shipping_notice")
    for i in range(1, n + 1):
        subscriber(store, i)
        store.apply_event("acme", OrderEvent(id=f"o{i}", at=T0, order_id=f"o{i}", phone=phone(i), total=100, currency="USD",
                                             payment_status="paid", fulfillment_status="shipped"), phone=phone(i), now=T0)  # fmt: skip


def _batched(store: Store, gw: FakeGateway, clock: Clock, send_batch: int) -> FlowRuntime:
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    return FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME", shop_name="Acme")}, clock,
                       batch=50, send_batch=send_batch)  # fmt: skip


@pytest.mark.parametrize(("n", "send_batch"), [(7, 3), (12, 500)])
async def test_sends_go_in_batches_each_with_its_own_key(store: Store, n: int, send_batch: int) -> None:
    clock, gw = Clock(), FakeGateway()
    await _shipped(store, clock, n)
    await _batched(store, gw, clock, send_batch).round()
    assert gw.batch_posts == -(-n // send_batch) and gw.message_posts == n
    rows = {m.key: m for m in store.flow_messages("acme")}
    assert len(rows) == n and all(m.state == "sent" for m in rows.values())
    assert {m["key"] for m in gw.sent_messages()} == set(rows)
    ids = {m["key"]: mid for mid, m in zip(gw.messages, gw.sent_messages())}
    assert all(rows[k].message_id == ids[k] for k in rows)  # each row has its own message's id


async def test_a_batch_answered_but_not_marked_is_sent_again_with_the_same_keys_and_gets_the_same_ids(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    await _shipped(store, clock, 5)
    gw.lose_message_answers = 1  # stored by the gateway, the answer lost (as a kill -9 before the mark)
    await _batched(store, gw, clock, 2).round()
    first = {m.key: m for m in store.flow_messages("acme")}
    assert len(gw.sent_messages()) == 5 and 0 < sum(m.state == "pending" for m in first.values()) <= 2
    await _batched(store, gw, clock, 2).round()  # a new worker: the pending rows again, same keys and bytes
    rows = {m.key: m for m in store.flow_messages("acme")}
    assert len(gw.sent_messages()) == 5 and all(m.state == "sent" for m in rows.values())
    ids = {m["key"]: mid for mid, m in zip(gw.messages, gw.sent_messages())}
    assert {k: m.message_id for k, m in rows.items()} == ids  # the ids of the first post


async def test_a_send_posted_alone_before_is_answered_with_its_id_in_a_batch(store: Store) -> None:
    """A row posted by ``POST /v1/messages`` (a worker of the version before batches) and still
    pending: the batch carries the very same bytes under its key, so the gateway answers that id."""
    clock, gw = Clock(), FakeGateway()
    await _shipped(store, clock, 3)
    rt = _batched(store, gw, clock, 10)
    assert rt.worker.drain("acme", clock(), 50) > 0  # the sends recorded, not posted
    pending = store.pending_flow_messages(10)
    m = pending[0]
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    alone = await client.send(to=m.recipient, body=m.body, sender=m.sender, key=m.key, category=m.category)
    await rt.round()
    rows = {r.key: r for r in store.flow_messages("acme")}
    assert rows[m.key].message_id == alone and len(gw.sent_messages()) == 3


async def test_a_gateway_without_batches_gets_the_sends_one_by_one(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    gw.no_batch = True
    await _shipped(store, clock, 4)
    await _batched(store, gw, clock, 10).round()
    assert gw.batch_posts == 0 and len(gw.sent_messages()) == 4
    assert all(m.state == "sent" and m.message_id for m in store.flow_messages("acme"))


async def test_a_message_the_gateway_refuses_in_a_batch_fails_alone(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    await _shipped(store, clock, 3)
    gw.refuse_messages = {"code": "invalid_field", "error": "invalid number", "field": "message.to"}
    await _batched(store, gw, clock, 10).round()
    rows = store.flow_messages("acme")
    assert [m.state for m in rows] == ["failed"] * 3 and all("invalid_field" in (m.detail or "") for m in rows)


_SHARE_FLOW = {"id": "two", "name": "Two sends a minute apart, exit on order", "trigger": {"type": "custom", "name": "go"},
               "entry": "one", "nodes": {"one": {"type": "send", "template": "one", "next": "wait"},
                                         "wait": {"type": "wait", "seconds": 60, "next": "two"},
                                         "two": {"type": "send", "template": "two"}},
               "exits": [{"event": "order_placed"}]}  # fmt: skip


def _share_outcome(store_url: str, parts: int, order: list[int]) -> tuple[dict[int, tuple], list[tuple]]:
    """Six subscribers through ``_SHARE_FLOW`` with ``parts`` workers, run in the order ``order``
    (worker indexes, each turn a drain then a fire); an order arrives for the even ones after the
    first send, and for subscriber 3 *before* its timer's due time but after it, unfired, fell due."""
    from campaigns.core import flows as F
    from campaigns.service.flow_runtime import FlowWorker

    s = open_store(store_url)
    try:
        s.put_flow_template("acme", "one", "one", now=T0)
        s.put_flow_template("acme", "two", "two", now=T0)
        s.put_flow_version("acme", "two", "Two", _SHARE_FLOW, now=T0, new=True)
        s.set_flow_enabled("acme", "two", True, now=T0)
        sids = [subscriber(s, i) for i in range(1, 7)]
        workers = [FlowWorker(s, {"acme": TenantFlows(sender="ACME")}, part=p, parts=parts) for p in range(parts)]

        def turns(now: float) -> None:
            for w in order:
                workers[w % parts].drain("acme", now, 2)  # small batches: the turns interleave
                workers[w % parts].fire("acme", now, 2)
            for w in workers:
                while w.drain("acme", now, 2) or w.fire("acme", now, 2):
                    pass

        def queue(sid: int, event: F.Event) -> None:
            with s.flow_tx("acme") as ftx:
                ftx.queue(sid, [event])

        for sid in sids:
            queue(sid, F.ShopEvent(id=f"go:{sid}", kind="custom", name="go"))
        turns(T0)
        for sid in sids[1::2]:
            queue(sid, F.ShopEvent(id=f"order_placed:o{sid}", kind="order_placed", object_id=f"o{sid}"))
        turns(T0 + 30)
        queue(sids[2], F.ShopEvent(id="order_placed:late", kind="order_placed", object_id="late"))  # queued, then due
        turns(T0 + 61)
        runs = {r.subscriber_id - sids[0]: (r.state, r.ended, r.node) for r in s.flow_run_rows("acme", limit=100)}
        sent = sorted((m.subscriber_id - sids[0], m.step, m.state) for m in s.flow_messages("acme"))
        return runs, sent
    finally:
        s.close()


@settings(max_examples=4, deadline=None)
@given(order=st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_workers_each_with_their_share_end_every_run_as_one_worker_does(order: list[int]) -> None:
    """Inputs and timers are split by subscriber (``id % parts``): whatever order two or three workers
    take turns in, every run ends as with one worker, each send is recorded once, and an exit queued
    before a timer is fired (even after its due time) ends the run before the second send. (SQLite,
    a store per example; PostgreSQL's concurrent workers: the two-worker crash tests.)"""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sluice-share-") as tmp:
        one = _share_outcome(f"sqlite:///{tmp}/one.db", 1, [0])
        # 0 and 4 complete (both sends); the others end on their order, 2 on the one queued before
        # its timer fired: one send each
        assert one[0] == {0: ("ended", "completed", "wait"), 1: ("ended", "exit:order_placed", "wait"),
                          2: ("ended", "exit:order_placed", "wait"), 3: ("ended", "exit:order_placed", "wait"),
                          4: ("ended", "completed", "wait"), 5: ("ended", "exit:order_placed", "wait")}, one
        assert one[1] == sorted([(i, "one", "pending") for i in range(6)] + [(0, "two", "pending"), (4, "two", "pending")])
        parts = 2 + len(order) % 2  # two or three workers
        assert _share_outcome(f"sqlite:///{tmp}/{parts}.db", parts, order) == one


# ---- planned batches (SQLite: decided in a read snapshot, written under the lock) ------------------
_ASK_FLOW = {"id": "ask", "name": "Ask, thank a yes, exit on order", "trigger": {"type": "custom", "name": "go"},
             "entry": "q", "nodes": {"q": {"type": "send", "template": "q", "next": "a"},
                                     "a": {"type": "reply", "timeout_seconds": 3600,
                                           "choices": [{"keywords": ["yes"], "next": "thanks"}]},
                                     "thanks": {"type": "send", "template": "thanks"}},
             "exits": [{"event": "order_placed"}]}  # fmt: skip
_JOIN_FLOW = {"id": "join", "name": "Keyword JOIN", "trigger": {"type": "keyword", "keywords": ["JOIN"]},
              "entry": "hi", "nodes": {"hi": {"type": "send", "template": "q"}}}  # fmt: skip


def _planned_world(url: str, interfere: str) -> tuple[list[tuple], list[tuple], tuple[int, int]]:
    """Subscribers 1-3 in ``ask`` (waiting for a reply); then their orders (exits) and ``go`` for 4-6
    are queued, and worker A (part 0) drains them in one planned batch while, between its snapshot and
    its write, another writer does ``interfere`` (``-first``: the same, serially, before A's drain: the
    reference). Returns the runs and sends (by run key, ids left out) and A's (planned, redone)."""
    from campaigns.core import flows as F
    from campaigns.service.flow_runtime import FlowWorker

    kind, first = interfere.removesuffix("-first"), interfere.endswith("-first")
    parts = 2 if kind == "other_part" else 1
    s, other = open_store(url), open_store(url)  # two connections, as two processes
    try:
        for tid in ("q", "thanks"):
            s.put_flow_template("acme", tid, tid, now=T0)
        for flow in (_ASK_FLOW, _JOIN_FLOW):
            s.put_flow_version("acme", flow["id"], flow["id"], flow, now=T0, new=True)  # type: ignore[arg-type]
            s.set_flow_enabled("acme", flow["id"], True, now=T0)
        sids = [subscriber(s, i) for i in range(1, 10)]
        tenants = {"acme": TenantFlows(sender="ACME")}

        def queue(sid: int, event: F.Event) -> None:
            with s.flow_tx("acme") as ftx:
                ftx.queue(sid, [event])

        def go(sid: int) -> F.Event:
            return F.ShopEvent(id=f"go:{sid}", kind="custom", name="go")

        for sid in sids[:3] + sids[6:]:
            queue(sid, go(sid))
        while FlowWorker(s, tenants).drain("acme", T0, 100):
            pass
        for sid in sids[:3]:
            queue(sid, F.ShopEvent(id=f"order_placed:o{sid}", kind="order_placed", object_id=f"o{sid}"))
        for sid in sids[3:6]:
            queue(sid, go(sid))
        b = FlowWorker(other, tenants, part=1 if kind == "other_part" else 0, parts=parts)

        def act() -> None:
            match kind:
                case "other_part":  # the other share (subscribers 7-9 get an order too): disjoint, no conflict
                    for sid in sids[6:]:
                        with other.flow_tx("acme") as ftx:
                            ftx.queue(sid, [F.ShopEvent(id=f"order_placed:o{sid}", kind="order_placed", object_id=f"o{sid}")])
                    while b.drain("acme", T0 + 10, 100):
                        pass
                case "reply":  # subscriber 1's run answered (and moved on) after A read it
                    assert b.reply("acme", sids[0], "m1", "yes", T0 + 10)
                case "keyword":  # a run started elsewhere takes the next id A planned to give out
                    assert b.reply("acme", sids[8], "m9", "JOIN", T0 + 10)
                case "same_part":  # a second worker of the same share drains A's inputs
                    while b.drain("acme", T0 + 10, 100):
                        pass

        class Interleaved(FlowWorker):
            def _inputs(self, ftx, inputs, now):  # type: ignore[no-untyped-def]
                super()._inputs(ftx, inputs, now)
                if ftx.planned and not first and self.stats.planned + self.stats.redone == 0:
                    act()  # between A's snapshot and its write

        a = Interleaved(s, tenants, part=0, parts=parts)
        if first:
            act()
        while a.drain("acme", T0 + 20, 100):
            pass
        while FlowWorker(s, tenants).drain("acme", T0 + 20, 100):  # whatever is left (the other share)
            pass
        rows = s.flow_run_rows("acme", limit=100)
        key = {r.id: r.run_key for r in rows}
        runs = sorted((r.run_key, r.state, r.ended, r.node, r.visit, r.due) for r in rows)
        sends = sorted((key[m.run_id], m.visit, m.step, m.state, m.body) for m in s.flow_messages("acme"))
        return runs, sends, (a.stats.planned, a.stats.redone)
    finally:
        other.close()
        s.close()


@pytest.mark.parametrize(("interfere", "redone"), [("other_part", 0), ("reply", 1), ("keyword", 1), ("same_part", 1)])
def test_a_planned_batch_writes_as_planned_or_is_redone_under_the_lock(tmp_path: object, interfere: str,
                                                                       redone: int) -> None:  # fmt: skip
    """A batch decided in a read snapshot (``flow_plan``) is written only if what it read is unchanged
    at the write: another share's worker writing meanwhile does not disturb it (disjoint runs, run ids
    of its own class), while a reply that moved one of its runs, a run started elsewhere on the id it
    planned to give out, or a second worker that took its inputs makes it stale: nothing of it is
    stored and it is redone under the lock. Either way the outcome is that of the other writer's
    work done first and the batch after it: every run and send the same, each send once."""
    got = _planned_world(f"sqlite:///{tmp_path}/a.db", interfere)
    want = _planned_world(f"sqlite:///{tmp_path}/b.db", f"{interfere}-first")
    assert got[:2] == want[:2]
    assert got[2][1] == redone and want[2][1] == 0
    sends = [s[:2] for s in got[1]]
    assert len(sends) == len(set(sends))  # a node visit sends once
    if interfere == "reply":  # subscriber 1 answered before the order: thanked, then nothing to exit
        assert ("ask:" in got[1][0][0]) and any(s[2] == "thanks" for s in got[1])


# ---- a batch's memory: freed by reference counting, the cyclic collector paused per batch ----------
@pytest.mark.parametrize("planned", [True, False])
def test_a_drained_batch_is_freed_without_the_cyclic_collector_and_gc_is_resumed(planned: bool, monkeypatch) -> None:
    """A batch's ``FlowTx`` (its runs, subscribers and rows) is freed when the drain returns, by
    reference counting alone: a planned batch's log of closures held it in a cycle, kept alive until
    the cyclic collector walked it. The drain pauses the collector for the batch and resumes it
    after (and leaves it off if it was off)."""
    import gc
    import tempfile
    import weakref

    from campaigns.store import flow_sql

    made: list[weakref.ref] = []
    init = flow_sql.FlowTx.__init__

    def spy(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(flow_sql.FlowTx, "__init__", spy)
    acts = [("checkout", 1, 1, 25_000), ("checkout", 2, 1, 4_000), ("order", 1, 1, True), ("opt_out", 3, 0, 0),
            ("custom", 2, 1, 0), ("checkout", 3, 2, 30_000)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sluice-gc-") as tmp:
        store = _flows_world(acts, f"sqlite:///{tmp}/f.db" if planned else "sqlite:///:memory:")
        try:
            rt = runtime(store, FakeGateway(), Clock())
            assert gc.isenabled()
            gc.disable()
            try:
                made.clear()
                assert rt.worker.drain("acme", T0 + 100, limit=100) > 0
                assert not gc.isenabled()  # it was off: left off
                assert made and all(r() is None for r in made), "a batch's FlowTx outlived its drain"
                assert (rt.worker.stats.planned == 1) == planned
            finally:
                gc.enable()
            store.apply_event("acme", checkout("c9", 1, 50_000, at=T0 + 200), phone=phone(1), now=T0 + 200)
            gc_seen: list[bool] = []
            monkeypatch.setattr(flow_sql.FlowTx, "flush", lambda self, f=flow_sql.FlowTx.flush: (gc_seen.append(gc.isenabled()), f(self))[1])
            assert rt.worker.drain("acme", T0 + 300, limit=100) == 1
            assert gc_seen and not any(gc_seen)  # paused during the batch
            assert gc.isenabled()  # and resumed after it
            assert rt.worker.fire("acme", T0 + 40 * DAY, limit=100)
            assert gc.isenabled()
        finally:
            store.close()


async def test_each_worker_s_scan_starts_the_runs_of_its_own_share_only(store: Store) -> None:
    """With several workers (serve's ``flow_workers``), each runs the periodic scans: each applies
    the birthday and win-back triggers of its own subscribers (``id % parts == part``) only, so one
    subscriber's inputs are still applied by one worker."""
    clock, gw = Clock(), FakeGateway()
    await install(store, clock, "win_back")
    sids = [subscriber(store, i) for i in range(1, 7)]
    for i, sid in enumerate(sids, 1):
        store.apply_event("acme", OrderEvent(id=f"o{i}", at=T0, order_id=f"o{i}", phone=phone(i), total=100,
                                             currency="USD", payment_status="paid"), phone=phone(i), now=T0)  # fmt: skip
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    workers = [FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME")}, clock, part=p, parts=2)
               for p in (0, 1)]  # fmt: skip
    clock.now = T0 + 91 * DAY

    def won_back() -> set[int]:
        return {r.subscriber_id for sid in sids for r in store.flow_run_rows("acme", subscriber_id=sid)
                if r.flow_id == "win_back"}  # fmt: skip

    while await workers[0].round():  # the inputs of the orders (this share's), then nothing
        pass
    await workers[0].scan(clock.now)
    assert won_back() == {s for s in sids if s % 2 == 0}
    await workers[1].scan(clock.now)
    assert won_back() == set(sids)
