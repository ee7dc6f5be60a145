"""Live segment membership through the service, on both engines and virtual time: an event re-evaluates
the segments that depend on what it changed, for that subscriber, at once; a new segment is filled from
its SQL; time windows move people out on time (timers from ``next_change``), with no event."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from campaigns.config import loads
from campaigns.core.events import ActivityEvent, CheckoutEvent, OrderEvent
from campaigns.service.audience import Audience
from campaigns.store import open_store

T0 = 1_760_000_000.0
DAY = 86_400.0
A = "+33612345678"


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def audience(store_url: str) -> Iterator[tuple[Audience, Clock]]:
    settings = loads('[campaigns]\nsegment_rebuild_s = 1e9\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "K"\n')
    assert settings is not None
    clock = Clock()
    a = Audience(open_store(store_url), settings, clock)
    yield a, clock
    a.store.close()


def order(eid: str, oid: str, total: int, at: float, status: str = "paid") -> OrderEvent:
    return OrderEvent(id=eid, at=at, order_id=oid, phone=A, total=total, currency="EUR", payment_status=status)  # type: ignore[arg-type]


def test_membership_follows_events_and_time(audience: tuple[Audience, Clock]) -> None:
    a, clock = audience

    async def main() -> None:
        big = await a.put_segment("acme", "big", {"field": "total_spent", "op": "gt", "value": 10000})
        clicked = await a.put_segment("acme", "clicked 1d", {"event": "activity", "kind": "clicked", "within_days": 1})
        first = await a.apply("acme", order("e1", "o1", 5000, T0 - 10), A)
        sid = first.subscriber_id
        assert sid is not None

        async def segs() -> set[int]:
            return {i for i, _ in await a.member_segments("acme", sid)}

        assert await segs() == set()
        await a.apply("acme", order("e2", "o2", 7000, T0 - 5), A)
        assert await segs() == {big.id}  # at once, no tick
        clock.now += 100
        await a.apply("acme", ActivityEvent(id="c1", at=clock.now, phone=A, kind="clicked"), A)
        assert await segs() == {big.id, clicked.id}
        clock.now += DAY - 1
        await a.tick()
        assert await segs() == {big.id, clicked.id}  # not yet
        clock.now += 2
        await a.tick()
        assert await segs() == {big.id}  # the window passed: out, with no event
        await a.apply("acme", order("e3", "o2", 7000, clock.now, "refunded"), A)
        assert await segs() == set()
        # A segment created later is filled from what is stored.
        vip = await a.put_segment("acme", "spent", {"field": "orders_count", "op": "gte", "value": 1})
        assert await segs() == {vip.id}
        assert await a.member_segments("acme", sid) == [(vip.id, clock.now)]
        await a.delete_segment("acme", vip.id)
        assert await segs() == set()

    anyio.run(main)


def test_an_event_under_another_phone_re_evaluates_the_subscriber_it_changed(audience: tuple[Audience, Clock]) -> None:
    """A's abandoned checkout paid under B's phone takes A out of "abandoned checkout" at once; an order
    moved from B to A takes B out of "has ordered": both through the event's ``Applied.others``, on both
    the single-event path and the batch path."""
    a, clock = audience
    B = "+33612345679"

    async def main() -> None:
        lost = await a.put_segment("acme", "lost cart", {"event": "checkout", "state": "abandoned", "within_days": 7})
        buyer = await a.put_segment("acme", "buyer", {"field": "orders_count", "op": "gte", "value": 1})

        async def segs(phone: str) -> set[int]:
            sub = await a._run(a.store.subscriber_by_phone, "acme", phone)
            assert sub is not None
            return {i for i, _ in await a.member_segments("acme", sub.id)}

        for k, many in enumerate((False, True)):
            cart, oid = f"k{k}", f"o{k}"

            async def send(e: object, phone: str) -> None:
                if many:
                    await a.apply_many("acme", [(e, phone)])  # type: ignore[list-item]
                else:
                    await a.apply("acme", e, phone)  # type: ignore[arg-type]

            await send(CheckoutEvent(id=f"c{k}", at=clock.now, checkout_id=cart, phone=A, status="abandoned"), A)
            assert lost.id in await segs(A)
            await send(OrderEvent(id=f"p{k}", at=clock.now + 1, order_id=oid, phone=B, total=10, currency="EUR",
                                  payment_status="paid", checkout_id=cart), B)  # fmt: skip
            assert lost.id not in await segs(A) and buyer.id in await segs(B)
            # the shop corrects the order's phone: B bought nothing after all
            await send(OrderEvent(id=f"q{k}", at=clock.now + 2, order_id=oid, phone=A, total=10, currency="EUR",
                                  payment_status="paid"), A)  # fmt: skip
            assert buyer.id in await segs(A) and buyer.id not in await segs(B)
            clock.now += 10

    anyio.run(main)


def test_a_new_subscriber_is_evaluated_against_every_segment(audience: tuple[Audience, Clock]) -> None:
    """A subscriber made through the API is at once in the segments over aggregates it meets ("no
    orders yet"), not only in those over its profile: no event may come to fill them."""
    a, _ = audience

    async def main() -> None:
        from campaigns.core.events import Profile
        from campaigns.service.audience import SubscriberIn

        never = await a.put_segment("acme", "never ordered", {"field": "orders_count", "op": "eq", "value": 0})
        small = await a.put_segment("acme", "not big", {"not": {"field": "total_spent", "op": "gt", "value": 10000}})
        out, created = await a.put_subscriber("acme", SubscriberIn(profile=Profile(phone=A)))
        assert created
        assert {i for i, _ in await a.member_segments("acme", out.subscriber.id)} == {never.id, small.id}
    anyio.run(main)


@pytest.mark.parametrize("many", [False, True])
def test_an_event_that_moves_a_subscriber_into_a_segment_starts_its_segment_entered_flow(
        audience: tuple[Audience, Clock], many: bool) -> None:  # fmt: skip
    """Every way into a segment queues the flows' ``segment_entered`` input, the live pass after an event
    too (it wrote the membership and queued nothing: a flow on "entered a segment" never started when an
    order, rather than ``set_member`` or a rebuild, put the subscriber in), on both the single-event and
    the batch path; an event that keeps the subscriber in queues nothing more."""
    from campaigns.service.flow_api import FlowService
    from campaigns.service.flow_runtime import FlowRuntime, TenantFlows
    from campaigns.service.gateway_client import GatewayClient
    from campaigns.store.base import NewConsent
    from fake_gateway import FakeGateway

    a, clock = audience
    gw = FakeGateway()
    rt = FlowRuntime(a.store, {"acme": GatewayClient("http://gateway.test", "key", transport=gw.transport())},
                     {"acme": TenantFlows(sender="ACME", shop_name="Acme")}, clock, batch=50)  # fmt: skip

    async def send(e: OrderEvent) -> None:
        if many:
            await a.apply_many("acme", [(e, A)])
        else:
            await a.apply("acme", e, A)

    async def main() -> None:
        buyer = await a.put_segment("acme", "buyer", {"field": "orders_count", "op": "gte", "value": 1})
        svc = FlowService(a.store, clock)
        await svc.put_template("acme", "thanks", "Welcome to our buyers!")
        await svc.publish("acme", {"id": "buyers", "name": "B", "entry": "s", "trigger": {"type": "segment_entered",
                          "segment": str(buyer.id)}, "nodes": {"s": {"type": "send", "template": "thanks"}}}, new=True)  # fmt: skip
        await svc.enable("acme", "buyers", True)
        for k, action in enumerate(("opt_in", "confirm")):
            a.store.record_consent("acme", NewConsent(phone=A, action=action, source="api", at=T0 - 900 + k), now=T0 - 900)  # type: ignore[arg-type]
        await rt.round()
        assert gw.sent_messages() == []  # a subscriber, in no segment yet
        await send(order("e1", "o1", 5000, T0 - 10))
        sub = a.store.subscriber_by_phone("acme", A)
        assert sub is not None and buyer.id in {i for i, _ in await a.member_segments("acme", sub.id)}
        await rt.round()
        assert [m["body"].split(" Reply")[0] for m in gw.sent_messages()] == ["Welcome to our buyers!"]
        await send(order("e2", "o2", 7000, T0 - 5))  # still a buyer: not entered again
        clock.now += 3600
        await rt.round()
        assert len(gw.sent_messages()) == 1
        assert [r.ended for r in a.store.flow_run_rows("acme", flow_id="buyers")] == ["completed"]

    anyio.run(main)


def test_a_new_order_re_evaluates_the_item_segments_of_its_categories_alone(audience: tuple[Audience, Clock]) -> None:
    """A bulk batch's pass asks an item condition by category only about the subscribers whose new
    orders have an item of one of its categories (``new_order_changes``); a stored order changed
    (a refund) re-evaluates it whatever the items; the answers stay exact."""
    from campaigns.core.events import Item

    a, clock = audience
    asked: dict[int, list[list[int]]] = {}
    real = a.store.refresh_members

    def spy(tenant: str, plans: list, *, now: float) -> int:
        for p in plans:
            asked.setdefault(p.segment_id, []).append(list(p.ids))
        return real(tenant, plans, now=now)

    a.store.refresh_members = spy  # type: ignore[method-assign]
    B = "+33612345679"

    def bought(eid: str, oid: str, phone: str, category: str, status: str = "paid") -> OrderEvent:
        return OrderEvent(id=eid, at=clock.now, order_id=oid, phone=phone, total=100, currency="EUR",
                          payment_status=status, items=(Item(product="x", category=category, price=100, quantity=1),))  # type: ignore[arg-type] # fmt: skip

    async def main() -> None:
        shoes = await a.put_segment("acme", "shoes", {"event": "item", "where": {"category": ["shoes"]}})
        spent = await a.put_segment("acme", "spent", {"event": "order", "measure": "sum", "op": "gt", "value": 150})
        got = await a.apply_many("acme", [(bought("e1", "o1", A, "hats"), A), (bought("e2", "o2", B, "shoes"), B)])
        sid_a, sid_b = got[0].subscriber_id, got[1].subscriber_id
        assert asked[shoes.id] == [[sid_b]]  # A's hats cannot change "shoes"
        assert sorted(asked[spent.id][0]) == sorted([sid_a, sid_b])  # every order condition hears both
        assert [i for i, _ in await a.member_segments("acme", sid_b)] == [shoes.id]
        assert await a.member_segments("acme", sid_a) == []
        await a.apply_many("acme", [(bought("e3", "o3", A, "hats"), A)])
        assert len(asked[shoes.id]) == 1  # not asked again
        assert [i for i, _ in await a.member_segments("acme", sid_a)] == [spent.id]
        # B's shoes order refunded (a stored order: every item condition is asked again)
        await a.apply_many("acme", [(bought("e4", "o2", B, "shoes", "refunded"), B)])
        assert asked[shoes.id][-1] == [sid_b]

    anyio.run(main)
