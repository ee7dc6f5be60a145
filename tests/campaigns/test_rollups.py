"""The order rollups (campaigns/store/rollups.py) stay exact on every path that changes an order.

Random histories of order events on a few order ids and a few phones: new orders, updates of a
stored order (total, payment status: refunds, items replaced, created_at given or not), an owner
change (the same order id from another phone), stale events (older than the order's state), on the
batch path (``apply_events``) and the per-event path (``apply_event``) mixed, on both engines.
After each history the stored rollups must be exactly those computed in Python from the orders
the store holds (``view``), and ``rebuild`` (SQL, from scratch) must give the same rows. Instants
are drawn on and beside the buckets' edges.
"""

from __future__ import annotations

import math
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.events import Item, OrderEvent
from campaigns.store import open_store, rollups

NOW = 1_800_000_000.0
PHONES = ["+33611000001", "+33611000002", "+33611000003"]
EDGE = math.ceil((NOW - 365 * 86400) / rollups.BUCKET_S) * rollups.BUCKET_S
INSTANTS = [EDGE, math.nextafter(EDGE, -math.inf), EDGE - rollups.BUCKET_S, EDGE + 1.5, NOW - 10, 0.0]

items = st.lists(st.builds(Item, product=st.sampled_from(["p1", "p2"]), category=st.sampled_from([None, "shoes", "bags", ""]),
                           price=st.sampled_from([0, 999, 5000]), quantity=st.integers(1, 3)), max_size=2)  # fmt: skip
events = st.lists(st.tuples(
    st.sampled_from(["o1", "o2", "o3", "o4"]), st.sampled_from(PHONES), st.sampled_from([0, 999, 5000, 10001]),
    st.sampled_from(["paid", "pending", "refunded"]), st.one_of(st.none(), st.sampled_from(INSTANTS)),
    st.sampled_from(INSTANTS[:-1]), items), min_size=1, max_size=14)  # fmt: skip


def _rollup_rows(store, tenant: str) -> list[tuple]:
    with store._tx() as tx:
        return sorted(tuple(r) for r in tx.rows(
            "SELECT key, bucket, subscriber_id, n, amount, quantity FROM order_rollups WHERE tenant = ?", (tenant,)))


def _expected(store, tenant: str) -> list[tuple]:
    """The rollups of the orders the store holds, computed in Python from each subscriber's view."""
    with store._tx() as tx:
        sids = [int(r[0]) for r in tx.rows("SELECT id FROM subscribers WHERE tenant = ?", (tenant,))]
    orders = [(sid, o.created_at, o.total, [(i.category, i.price, i.quantity) for i in o.items])
              for sid in sids for o in store.view(tenant, sid).orders]  # fmt: skip
    return sorted(r[1:] for r in rollups._rows(tenant, orders))


def _check(store, history, batches) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    evs = [OrderEvent(id=f"e{k}", at=at + k, order_id=oid, phone=phone, total=total, currency="USD", payment_status=status,
                      created_at=created, items=tuple(its))
           for k, (oid, phone, total, status, created, at, its) in enumerate(history)]  # fmt: skip
    k = 0
    for size, batch in batches:
        chunk, k = evs[k : k + size], k + size
        if batch:
            store.apply_events(tenant, [(e, e.phone) for e in chunk], now=NOW)
        else:
            for e in chunk:
                store.apply_event(tenant, e, phone=e.phone, now=NOW)
    if k < len(evs):
        store.apply_events(tenant, [(e, e.phone) for e in evs[k:]], now=NOW)
    want = _expected(store, tenant)
    assert _rollup_rows(store, tenant) == want
    with store._tx() as tx:
        rollups.rebuild(tx, tenant)
    assert _rollup_rows(store, tenant) == want


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=events, batches=st.lists(st.tuples(st.integers(1, 5), st.booleans()), max_size=6))
def test_rollups_stay_exact_on_every_order_path(store_url, history, batches):
    store = open_store(store_url)
    try:
        _check(store, history, batches)
    finally:
        store.close()


def test_an_owner_change_moves_the_rollups(store_url):
    store = open_store(store_url)
    try:
        t = "shop"
        first = OrderEvent(id="a", at=NOW - 100, order_id="o1", phone=PHONES[0], total=5000, currency="USD",
                           payment_status="paid", items=(Item(product="p", category="shoes", price=5000),))  # fmt: skip
        store.apply_events(t, [(first, first.phone)], now=NOW)
        moved = OrderEvent(id="b", at=NOW - 50, order_id="o1", phone=PHONES[1], total=7000, currency="USD",
                           payment_status="refunded", items=(Item(product="p", category="bags", price=3500, quantity=2),))  # fmt: skip
        store.apply_event(t, moved, phone=moved.phone, now=NOW)
        rows = _rollup_rows(store, t)
        b = rollups.bucket(NOW - 100)
        with store._tx() as tx:
            new_owner = int(tx.one("SELECT id FROM subscribers WHERE tenant = ? AND phone = ?", (t, PHONES[1]))[0])
        assert rows == [("i:bags", b, new_owner, 1, 7000, 2), ("o", b, new_owner, 1, 7000, 0)]
    finally:
        store.close()


def test_a_store_made_before_the_rollups_gets_them_at_open(sqlite_url):
    store = open_store(sqlite_url)
    e = OrderEvent(id="a", at=NOW, order_id="o1", phone=PHONES[0], total=5000, currency="USD", payment_status="paid")
    store.apply_event("shop", e, phone=e.phone, now=NOW)
    with store._tx() as tx:
        tx.run("DELETE FROM order_rollups")
    store.close()
    store = open_store(sqlite_url)
    try:
        assert [r[0] for r in _rollup_rows(store, "shop")] == ["o"]
    finally:
        store.close()


def test_window_edges_are_exact_around_the_buckets(store_url):
    """One order per subscriber, placed on and beside the window's cutoff and the first whole bucket's
    start: each windowed order/item condition counts in SQL (rollups + straddling orders) what
    ``evaluate`` finds."""
    from campaigns.core.segments import evaluate, parse_segment
    from campaigns.store.segment_sql import compile_segment

    store = open_store(store_url)
    try:
        t = "edges"
        instants = []
        for days in (365, 30, 0.5):
            cutoff = NOW - days * 86400
            edge = math.ceil(cutoff / rollups.BUCKET_S) * rollups.BUCKET_S
            instants += [cutoff, math.nextafter(cutoff, -math.inf), math.nextafter(cutoff, math.inf), edge,
                         math.nextafter(edge, -math.inf), edge - rollups.BUCKET_S]  # fmt: skip
        evs = [OrderEvent(id=f"e{k}", at=NOW, order_id=f"o{k}", phone=f"+336110{k:05d}", total=1000, currency="USD",
                          payment_status="paid", created_at=at, items=(Item(product="p", category="shoes", price=1000),))
               for k, at in enumerate(instants)]  # fmt: skip
        store.apply_events(t, [(e, e.phone) for e in evs], now=NOW)
        with store._tx() as tx:
            sids = [int(r[0]) for r in tx.rows("SELECT id FROM subscribers WHERE tenant = ?", (t,))]
        views = [store.view(t, sid) for sid in sids]
        for days in (365, 30, 0.5):
            for tree in ({"event": "order", "within_days": days, "measure": "sum", "op": "gte", "value": 1000},
                         {"event": "order", "within_days": days},
                         {"not": {"event": "order", "within_days": days}},
                         {"event": "item", "within_days": days, "where": {"category": ["shoes"]}, "measure": "quantity",
                          "op": "eq", "value": 1}):  # fmt: skip
                seg = parse_segment(tree)
                where, params = compile_segment(seg, store.engine, t, NOW)
                want = sum(evaluate(seg, v, NOW) for v in views)
                assert 0 < want < len(views) or "not" in tree
                assert store.count_where(t, where, params) == want, tree
    finally:
        store.close()
