"""The work of an event is the work of its subscribers, not of the shop: a group flush of mixed events
(new orders, updates of stored orders, checkouts with and without consent, fulfilments, clicks, custom
events, customer profiles) and its membership pass over the bench's 23 segments cost the same number
of SQLite VM steps in a shop of 800 subscribers as in one of 6,400. A statement whose plan reads the
tenant's rows (an index on ``tenant`` alone, a window ranged by time over the whole shop) grows with
the shop and fails this, whichever statement it is (as the gateway's test that counts SQLite steps).

Both ways a store meets its data: statistics from ``ANALYZE`` after a bulk load (the tables still
empty then, such as the memberships, have none), and no statistics at all (a store that grew from
nothing: SQLite's default guesses)."""

from __future__ import annotations

import json
import random
import sqlite3

import anyio
import pytest

from bench.audience import MIX, NOW, TENANT, Audience as Shop, _load_sqlite, _phone
from campaigns.config import loads
from campaigns.core.events import ShopEvent, decode_event
from campaigns.service.audience import Audience
from campaigns.store import open_store


def mixed_events(r: random.Random, n: int, m: int, count: int, tag: str) -> list[ShopEvent]:
    """Every kind of event, on random subscribers, orders and checkouts the shop has (and new ones)."""
    out = []
    for k in range(count):
        phone, at, oid = _phone(r.randint(1, n)), NOW - r.random() * 3600, f"o{r.randrange(m)}"
        order = {"type": "order", "phone": phone, "currency": "USD"}
        body: dict = [
            {**order, "order_id": f"{tag}o{k}", "total": 1200, "payment_status": "paid",
             "items": [{"product": "p1", "category": "shoes", "price": 1200}]},
            {**order, "order_id": oid, "total": 900, "payment_status": "refunded"},
            {"type": "checkout", "checkout_id": f"c{r.randrange(n // 4)}", "phone": phone, "status": "abandoned", "value": 3000},
            {"type": "checkout", "checkout_id": f"{tag}c{k}", "phone": phone, "value": 3000,
             "consent": {"accepted": True, "disclosure_text": "Yes, send me texts"}},
            {"type": "fulfillment", "order_id": oid, "status": "shipped"},
            {"type": "activity", "phone": phone, "kind": r.choice(["clicked", "replied"])},
            {"type": "custom", "phone": phone, "name": "viewed_product", "properties": {"p": 1}},
            {"type": "customer", "profile": {"phone": phone, "city": "Paris", "tags": ["vip"], "attributes": {"plan": "gold"}}},
            {**order, "order_id": f"{tag}o{k}", "total": 5000, "payment_status": "pending",
             "checkout_id": f"c{r.randrange(n // 4)}"},
        ][k % 9]  # fmt: skip
        out.append(decode_event(json.dumps({"id": f"{tag}{k}", "at": at, **body}).encode()))
    return out


def _steps(tmp_path, n: int, statistics: bool) -> tuple[int, int]:
    """SQLite VM steps (in hundreds) of (64 concurrent single events: their group flush and membership
    pass, a bulk body of 90 events and its membership pass), in a shop of ``n`` subscribers."""
    path = tmp_path / f"shop-{n}-{statistics}.db"
    store = open_store(f"sqlite:///{path}")
    _load_sqlite(str(path), Shop(n, 3 * n, seed=3))
    if statistics:
        store.analyze()
    else:  # a store that grew without ANALYZE: no statistics but the store's own
        store.close()
        with sqlite3.connect(path) as conn:
            if conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone():
                conn.execute("DELETE FROM sqlite_stat1")
        store = open_store(f"sqlite:///{path}")
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "{TENANT}"\nkey_env = "K"\n')
    assert settings is not None
    service = Audience(store, settings, lambda: NOW)
    for name, tree in MIX:
        anyio.run(service.put_segment, TENANT, name, tree)
    r = random.Random(7)
    singles, bulk = mixed_events(r, n, 3 * n, 64, "s"), mixed_events(r, n, 3 * n, 90, "b")
    count = [0]

    def step() -> int:
        count[0] += 1
        return 0

    async def single() -> None:
        async with anyio.create_task_group() as tg:
            for e in singles:
                tg.start_soon(service.post_event, TENANT, e)

    async def many() -> None:
        await service.apply_many(TENANT, [(e, service.check_event(TENANT, e)) for e in bulk])

    out = []
    try:
        for run in (single, many):
            count[0] = 0
            store._conn.set_progress_handler(step, 100)
            anyio.run(run)
            store._conn.set_progress_handler(None, 0)
            out.append(count[0])
        assert service._groups[TENANT].flushes <= 2  # the 64 went as one group (or two)
    finally:
        store.close()
    return out[0], out[1]


@pytest.mark.parametrize("statistics", [True, False], ids=["analyzed", "no-statistics"])
def test_an_events_work_does_not_grow_with_the_shop(tmp_path, statistics):
    small, large = _steps(tmp_path, 800, statistics), _steps(tmp_path, 6_400, statistics)
    for what, s, g in zip(("single events", "bulk"), small, large, strict=True):
        assert g <= 1.5 * s + 200, f"{what}: {s} hundred steps at 800 subscribers, {g} at 6,400"
