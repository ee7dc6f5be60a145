"""The work of an event is the work of its subscribers, not of the shop: a group flush of mixed events
(new orders, updates of stored orders, checkouts with and without consent, fulfilments, clicks, custom
events, customer profiles) and its membership pass over the bench's 23 segments cost the same number
of SQLite VM steps in a shop of 600 subscribers as in one of 4,800. A statement whose plan reads the
tenant's rows (an index on ``tenant`` alone, a window ranged by time over the whole shop) grows with
the shop and fails this, whichever statement it is (as the gateway's test that counts SQLite steps).

Both ways a store meets its data: statistics from ``ANALYZE`` after a bulk load (the tables still
empty then, such as the memberships, have none), and no statistics at all (a store that grew from
nothing: SQLite's default guesses)."""

from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

import anyio
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


def _shop(tmp_path, n: int) -> tuple[str, Audience]:
    """A shop of ``n`` subscribers (3n orders), analysed after its bulk load, with the bench's 23 segments."""
    path = str(tmp_path / f"shop-{n}.db")
    store = open_store(f"sqlite:///{path}")
    _load_sqlite(path, Shop(n, 3 * n, seed=3))
    store.analyze()
    service = _service(store)
    for name, tree in MIX:
        anyio.run(service.put_segment, TENANT, name, tree)
    return path, service


def _service(store: Any) -> Audience:
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "{TENANT}"\nkey_env = "K"\n')
    assert settings is not None
    return Audience(store, settings, lambda: NOW)


def _without_statistics(path: str, service: Audience) -> Audience:
    """The same shop as a store that grew without ANALYZE sees it: no statistics but the store's own."""
    service.store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM sqlite_stat1")
    return _service(open_store(f"sqlite:///{path}"))


def _steps(service: Audience, n: int, tag: str) -> tuple[int, int]:
    """SQLite VM steps (in hundreds) of (64 concurrent single events: their group flush and membership
    pass; a bulk body of 90 events and its membership pass), in a shop of ``n`` subscribers."""
    r = random.Random(7)
    singles, bulk = mixed_events(r, n, 3 * n, 64, f"s{tag}"), mixed_events(r, n, 3 * n, 90, f"b{tag}")
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

    conn = service.store._conn  # type: ignore[attr-defined]
    out = []
    for run in (single, many):
        count[0] = 0
        conn.set_progress_handler(step, 100)
        anyio.run(run)
        conn.set_progress_handler(None, 0)
        out.append(count[0])
    assert service._groups[TENANT].flushes <= 2  # the 64 went as one group (or two)
    return out[0], out[1]


def test_an_events_work_does_not_grow_with_the_shop(tmp_path):
    shops = {n: _shop(tmp_path, n) for n in (600, 4_800)}
    for statistics in ("analyzed", "no statistics"):
        if statistics == "no statistics":
            shops = {n: (path, _without_statistics(path, service)) for n, (path, service) in shops.items()}
        (small, large) = (_steps(service, n, statistics[0]) for n, (_, service) in sorted(shops.items()))
        for what, s, g in zip(("single events", "bulk"), small, large, strict=True):
            assert g <= 1.5 * s + 200, f"{statistics}, {what}: {s} hundred steps at 600 subscribers, {g} at 4,800"
    for _, service in shops.values():
        service.store.close()
