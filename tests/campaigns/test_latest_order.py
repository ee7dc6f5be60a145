"""The latest order's key in ``subscriber_stats`` (``latest_order_at``, ``latest_order_id``): the batch
path's aggregate upsert compares its own latest order with it instead of seeking the orders, so the
key must always name the order ``aggregates.order_stats`` calls the latest (greatest ``(created_at,
order_id)``, ids by code point), whichever path stored the orders, in whatever order, with ties on
the instant, and in a store made before the columns (filled when they are added)."""

from __future__ import annotations

import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.events import Item, OrderEvent, ShopEvent
from campaigns.store import Store, open_store

PHONES = ("+33612345678", "+33612345679")
T0 = 1_760_000_000.0
NOW = T0 + 10 * 86_400.0
# ids whose code-point order differs from a case-folding or locale order ("B" < "a" < "b" < "é")
IDS = ("a", "b", "B", "é", "a1", "Z")

_n = iter(range(10**9))


@st.composite
def orders(draw: st.DrawFn) -> list[ShopEvent]:
    """Orders of two subscribers on two instants (ties are common), ids from a small pool (an id
    seen again is an update of the stored order: the per-event path, its status or instant changed)."""
    out: list[ShopEvent] = []
    for i in range(draw(st.integers(2, 14))):
        out.append(OrderEvent(
            id=f"e{i}", at=T0 + i, order_id=draw(st.sampled_from(IDS)), phone=draw(st.sampled_from(PHONES)),
            total=100, currency="EUR", payment_status=draw(st.sampled_from(["paid", "pending", "refunded"])),
            created_at=T0 + draw(st.integers(0, 1)), items=(Item(product="p", category="shoes", price=100),)))  # fmt: skip
    return out


def _latest(store: Store, tenant: str) -> dict[str, tuple]:
    """Per phone: (status in the aggregates, the stored key, the key computed from the stored orders)."""
    out = {}
    for phone in PHONES:
        sub = store.subscriber_by_phone(tenant, phone)
        if sub is None:
            continue
        view = store.view(tenant, sub.id)
        assert view is not None
        with store._tx() as tx:  # type: ignore[attr-defined]
            key = tx.one("SELECT latest_order_at, latest_order_id FROM subscriber_stats WHERE tenant = ? AND "
                         "subscriber_id = ?", (tenant, sub.id))  # fmt: skip
        latest = max(((o.created_at, o.order_id) for o in view.orders), default=(None, None))
        out[phone] = (view.stats.last_order_payment_status, tuple(key) if key else (None, None), latest)
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(evs=orders(), data=st.data())
def test_the_latest_orders_key_and_status_whatever_the_path_and_order(store: Store, evs: list[ShopEvent],
                                                                       data: st.DataObject) -> None:  # fmt: skip
    k = next(_n)
    one, many = f"one{k}", f"many{k}"
    for e in evs:
        store.apply_event(one, e, phone=e.phone, now=NOW)  # type: ignore[union-attr]
    cuts = data.draw(st.lists(st.integers(0, len(evs)), max_size=4))
    bounds = sorted({0, len(evs), *cuts})
    for a, b in zip(bounds, bounds[1:]):
        store.apply_events(many, [(e, e.phone) for e in evs[a:b]], now=NOW)  # type: ignore[union-attr]
    got, want = _latest(store, many), _latest(store, one)
    assert got == want
    for status, key, latest in got.values():
        assert key == latest  # the stored key is the latest stored order's


def test_a_store_made_before_the_key_gets_it_filled_at_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "old.db"
    store = open_store(f"sqlite:///{path}")
    order = lambda i, oid, created, status: OrderEvent(  # noqa: E731
        id=f"e{i}", at=T0 + i, order_id=oid, phone=PHONES[0], total=100, currency="EUR", payment_status=status,
        created_at=created, items=())  # fmt: skip
    store.apply_events("acme", [(order(1, "a", T0 + 5, "pending"), PHONES[0])], now=NOW)
    store.close()
    conn = sqlite3.connect(path)  # what a store of before the columns looks like
    conn.execute("ALTER TABLE subscriber_stats DROP COLUMN latest_order_at")
    conn.execute("ALTER TABLE subscriber_stats DROP COLUMN latest_order_id")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        assert _latest(store, "acme")[PHONES[0]] == ("pending", (T0 + 5, "a"), (T0 + 5, "a"))
        # an older order in a batch leaves the stored latest order's status
        store.apply_events("acme", [(order(2, "b", T0 + 1, "paid"), PHONES[0])], now=NOW)
        assert _latest(store, "acme")[PHONES[0]] == ("pending", (T0 + 5, "a"), (T0 + 5, "a"))
    finally:
        store.close()


def test_ties_on_the_instant_go_by_the_ids_code_points(store: Store) -> None:
    order = lambda i, oid, status: OrderEvent(  # noqa: E731
        id=f"t{i}", at=T0 + i, order_id=oid, phone=PHONES[0], total=100, currency="EUR", payment_status=status,
        created_at=T0, items=())  # fmt: skip
    for i, (oid, status, latest) in enumerate([("a", "pending", "a"), ("B", "paid", "a"), ("b", "refunded", "b"),
                                               ("é", "paid", "é"), ("Z", "pending", "é")]):  # fmt: skip
        store.apply_events("acme", [(order(i, oid, status), PHONES[0])], now=NOW)  # a batch of one each
        want = {"a": "pending", "b": "refunded", "é": "paid"}[latest]
        assert _latest(store, "acme")[PHONES[0]] == (want, (T0, latest), (T0, latest))
