"""Live segment membership through the service, on both engines and virtual time: an event re-evaluates
the segments that depend on what it changed, for that subscriber, at once; a new segment is filled from
its SQL; time windows move people out on time (timers from ``next_change``), with no event."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from campaigns.config import loads
from campaigns.core.events import ActivityEvent, OrderEvent
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
