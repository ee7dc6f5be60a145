"""Per-subscriber rollups of orders and their items, kept exact with the aggregates.

``order_rollups`` holds, per tenant, subscriber and time bucket, one row per *key*: ``o`` for the
subscriber's orders in the bucket (``n`` orders, ``amount`` the sum of their totals), ``i:<category>``
for their items of one category (``n`` items, ``amount`` the sum of price x quantity, ``quantity``)
and ``i`` for items without a category. A bucket is ``BUCKET_S`` seconds (2^22 s, about 48.5 days)
from the epoch: a power of two, so ``t / BUCKET_S`` is exact in floating point and ``bucket(t) >= b``
holds exactly when ``t >= b * BUCKET_S``, in Python and in both engines. That is what keeps a window's
edge exact: ``campaigns.store.segment_sql`` reads the buckets wholly inside a window from here and
the part of a window in the bucket that straddles its edge from the orders themselves.

Every row has ``n >= 1`` (a subscriber without orders in a bucket has no row there), so "has a
row" is "has an order (or such an item)", as the segment conditions read it.

``upkeep`` is the one function that keeps them: the batch path gives it the new orders it inserted
(added to the buckets), the per-event path the subscribers whose orders it changed in any way (an
update of the total, a refund, an owner change, replaced items, an earlier ``created_at``): their
rollups are computed again from their stored orders. ``rebuild`` computes a tenant's (or every
tenant's) from scratch in SQL: after a bulk load, and once for a store made before the rollups
(``ensure``). tests/campaigns/test_rollups.py checks that upkeep always leaves what ``rebuild``
computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from campaigns.core.events import OrderEvent
    from campaigns.store.sql import Tx

__all__ = ["BUCKET_S", "bucket", "ensure", "item_key", "missing", "rebuild", "upkeep"]

BUCKET_S = float(2**22)
ORDER_KEY = "o"
_COLS = ("tenant", "key", "bucket", "subscriber_id", "n", "amount", "quantity")


def bucket(t: float) -> int:
    """The bucket of instant ``t`` (exact: ``BUCKET_S`` is a power of two)."""
    return math.floor(t / BUCKET_S)


def item_key(category: str | None) -> str:
    return "i" if category is None else f"i:{category}"


def _rows(tenant: str, orders: Iterable[tuple[int, float, int, Sequence[tuple[str | None, int, int]]]]) -> list[tuple]:
    """Rollup rows of ``(subscriber, created_at, total, items as (category, price, quantity))``."""
    acc: dict[tuple[str, int, int], list[int]] = {}
    for sid, at, total, items in orders:
        b = bucket(at)
        o = acc.setdefault((ORDER_KEY, b, sid), [0, 0, 0])
        o[0] += 1
        o[1] += total
        for category, price, quantity in items:
            r = acc.setdefault((item_key(category), b, sid), [0, 0, 0])
            r[0] += 1
            r[1] += price * quantity
            r[2] += quantity
    return [(tenant, k, b, sid, n, amount, qty) for (k, b, sid), (n, amount, qty) in sorted(acc.items())]


def upkeep(tx: Tx, tenant: str, *, added: Sequence[tuple[OrderEvent, int]] = (), recompute: Iterable[int] = ()) -> None:
    """Keep the rollups exact in the transaction that changed the orders.

    ``added``: ``(order, subscriber)`` of orders just inserted that were stored nowhere before (the
    batch path's new orders): added to their buckets. ``recompute``: subscribers whose orders changed
    otherwise (per-event path): their rollups are replaced by those of their stored orders and items."""
    if added:
        rows = _rows(tenant, ((sid, e.created_at if e.created_at is not None else e.at, e.total,
                               [(it.category, it.price, it.quantity) for it in e.items]) for e, sid in added))  # fmt: skip
        adds = "n = order_rollups.n + excluded.n, amount = order_rollups.amount + excluded.amount, " \
               "quantity = order_rollups.quantity + excluded.quantity"  # fmt: skip
        tx._insert_on_conflict("order_rollups", _COLS, rows, f"ON CONFLICT (tenant, key, bucket, subscriber_id) DO UPDATE SET {adds}")
    sids = sorted(set(recompute))
    if not sids:
        return
    arr = tx.array(sids)
    tx.run(f"DELETE FROM order_rollups WHERE tenant = ? AND subscriber_id IN {tx.values('bigint')}", (tenant, arr))
    orders: dict[str, list[Any]] = {}
    for oid, sid, at, total in tx.rows(
            f"SELECT order_id, subscriber_id, created_at, total FROM orders WHERE tenant = ? AND subscriber_id IN "
            f"{tx.values('bigint')}", (tenant, arr)):  # fmt: skip
        orders[oid] = [int(sid), at, total, []]
    if orders:
        for oid, category, price, quantity in tx.rows(
                f"SELECT order_id, category, price, quantity FROM order_items WHERE tenant = ? AND order_id IN {tx.values()}",
                (tenant, tx.array(sorted(orders)))):  # fmt: skip
            orders[oid][3].append((category, price, quantity))
    tx.insert_many("order_rollups", _COLS, _rows(tenant, (tuple(o) for o in orders.values())))  # type: ignore[misc]


def _floor_bucket(tx: Tx, expr: str) -> str:
    """SQL for ``bucket(expr)``: floor division by a power of two, exact on both engines."""
    if tx.pg:
        return f"CAST(floor({expr} / CAST({BUCKET_S!r} AS DOUBLE PRECISION)) AS BIGINT)"
    q = f"({expr} / {BUCKET_S!r})"
    return f"(CAST({q} AS INTEGER) - ({q} < CAST({q} AS INTEGER)))"  # floor: CAST truncates toward zero


def rebuild(tx: Tx, tenant: str | None = None) -> None:
    """A tenant's rollups (every tenant's when ``tenant`` is None) computed from scratch, in SQL."""
    where, params = ("WHERE o.tenant = ?", (tenant,)) if tenant is not None else ("", ())
    tx.run("DELETE FROM order_rollups" + (" WHERE tenant = ?" if tenant is not None else ""), params)
    b = _floor_bucket(tx, "o.created_at")
    cat = "CASE WHEN i.category IS NULL THEN 'i' ELSE 'i:' || i.category END"
    tx.run(f"INSERT INTO order_rollups ({', '.join(_COLS)}) SELECT o.tenant, '{ORDER_KEY}', {b}, o.subscriber_id, "
           f"COUNT(*), SUM(o.total), 0 FROM orders o {where} GROUP BY o.tenant, {b}, o.subscriber_id", params)  # fmt: skip
    tx.run(f"INSERT INTO order_rollups ({', '.join(_COLS)}) SELECT o.tenant, {cat}, {b}, o.subscriber_id, COUNT(*), "
           f"SUM(i.price * i.quantity), SUM(i.quantity) FROM order_items i JOIN orders o ON o.tenant = i.tenant "
           f"AND o.order_id = i.order_id {where} GROUP BY o.tenant, {cat}, {b}, o.subscriber_id", params)  # fmt: skip


def missing(one: Callable[[str], Any]) -> bool:
    """Whether the store has orders but no rollups (every order has an ``o`` row, so that means they
    were never built: a store made before them). ``one(sql)``: the first row of a query, or None."""
    return one("SELECT 1 FROM order_rollups LIMIT 1") is None and one("SELECT 1 FROM orders LIMIT 1") is not None


def ensure(tx: Tx) -> None:
    """A store whose orders predate the rollups gets them once (checked again in the transaction:
    two processes opening the store at once build them once)."""
    if missing(tx.one):
        rebuild(tx)
