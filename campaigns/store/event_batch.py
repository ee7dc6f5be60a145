"""Shop events in batches: one transaction, set-based statements for the common events.

``apply_events`` must leave exactly the state, and answer exactly the outcomes, that ``apply_event``
on each event in turn would (a hypothesis test in tests/campaigns checks it on both engines). Per
event that is 6 to 10 statements; in a batch the common events share a handful:

1. Ids: the first occurrence of an id in the batch is claimed with one
   ``INSERT INTO processed_events ... SELECT <the ids> ON CONFLICT DO NOTHING RETURNING event_id``
   (the ids bound as one array parameter); the others are ``duplicate``.
2. *New orders* (an ``order`` event whose order id is neither stored, nor waiting as an early
   fulfilment, nor named by another event of the batch, and that completes no checkout) and *activities*
   (``activity``, ``custom``) take the set-based path: their subscribers are found or created with two
   statements, the rows inserted with ``executemany`` (SQLite) or ``COPY`` (PostgreSQL), and the
   aggregates of every subscriber they touched read once, updated by the pure functions of
   ``campaigns.core.aggregates`` and written back in one statement (``executemany`` on SQLite, ``COPY``
   into a staging table then one ``INSERT ... ON CONFLICT DO UPDATE`` on PostgreSQL). A new order is
   always ``applied``: there is no newer state it could be stale to.
3. Every other event (customers, checkouts, fulfilments, updates of stored orders) then goes through
   the per-event code, in arrival order, in the same transaction.

Doing 2 before 3 gives what arrival order would: the per-event code is order-independent by design
(aggregates are recomputed from the rows, instants are minima or maxima), and what could tell the
difference (an order id named by two events of the batch) is left to step 3, in arrival order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from campaigns.core import aggregates
from campaigns.core.events import ActivityEvent, CustomEvent, FulfillmentEvent, OrderEvent, ShopEvent
from campaigns.core.model import Stats
from campaigns.store.base import Applied

if TYPE_CHECKING:
    from campaigns.store.sql import Tx

_STATS = tuple(Stats.__struct_fields__)
_ACTIVITY_STAT = {"clicked": "last_click_at", "message_sent": "last_message_at", "replied": "last_reply_at"}
_ORDER_COLS = ("tenant", "order_id", "subscriber_id", "total", "currency", "payment_status", "fulfillment_status",
               "discount_code", "created_at", "checkout_id", "updated_at", "fulfillment_at")  # fmt: skip
_ITEM_COLS = ("tenant", "order_id", "product", "category", "price", "quantity")
_ACTIVITY_COLS = ("tenant", "subscriber_id", "kind", "at", "properties")
_ORDER_CHANGED = frozenset({"orders", "order_items", "subscriber_stats"})
_json = msgspec.json.Encoder()


class EventBatch:
    """Mixed into ``SqlStore``: ``_apply_batch`` (what ``apply_events`` runs in its transaction)."""

    def _apply_new(self, tx: Tx, tenant: str, event: ShopEvent, phone: str | None, now: float) -> Applied:
        raise NotImplementedError  # pragma: no cover - SqlStore's

    def _apply_batch(self, tx: Tx, tenant: str, events: Sequence[tuple[ShopEvent, str | None]], now: float) -> list[Applied]:
        out: list[Applied | None] = [None] * len(events)
        first: dict[str, int] = {}
        for i, (e, _) in enumerate(events):
            if e.id in first:
                out[i] = Applied(outcome="duplicate")
            else:
                first[e.id] = i
        claimed = self._claim(tx, tenant, list(first))
        fresh = []
        for eid, i in first.items():
            if eid in claimed:
                fresh.append(i)
            else:
                out[i] = Applied(outcome="duplicate")
        fresh.sort()
        orders, acts, slow = self._split(tx, tenant, events, fresh)
        if orders or acts:
            sids = self._ensure_many(tx, tenant, {events[i][1] for i in orders + acts}, now)  # type: ignore[misc]
            out_sid = {i: sids[events[i][1]] for i in orders + acts}  # type: ignore[index]
            self._insert_orders(tx, tenant, [(events[i][0], out_sid[i]) for i in orders])  # type: ignore[misc]
            self._insert_activities(tx, tenant, [(events[i][0], out_sid[i]) for i in acts])  # type: ignore[misc]
            self._restat_many(tx, tenant, [(events[i][0], out_sid[i]) for i in orders], [(events[i][0], out_sid[i]) for i in acts], now)  # type: ignore[misc]
            for i in orders:
                out[i] = Applied(outcome="applied", subscriber_id=out_sid[i], changed=_ORDER_CHANGED)
            for i in acts:
                e = events[i][0]
                kind = e.kind if isinstance(e, ActivityEvent) else e.name  # type: ignore[union-attr]
                changed = frozenset({"activities", "subscriber_stats"} if kind in _ACTIVITY_STAT else {"activities"})
                out[i] = Applied(outcome="applied", subscriber_id=out_sid[i], changed=changed)
        for i in slow:
            e, phone = events[i]
            out[i] = self._apply_new(tx, tenant, e, phone, now)
        return out  # type: ignore[return-value]

    def _claim(self, tx: Tx, tenant: str, ids: list[str]) -> set[str]:
        """The ids among ``ids`` not seen before, now recorded as seen (one statement)."""
        if not ids:
            return set()
        rows = tx.rows(f"INSERT INTO processed_events (tenant, event_id) SELECT ?, value FROM {tx.each()} "
                       "WHERE true ON CONFLICT DO NOTHING RETURNING event_id", (tenant, tx.array(ids)))  # fmt: skip
        return {r[0] for r in rows}

    def _split(self, tx: Tx, tenant: str, events: Sequence[tuple[ShopEvent, str | None]],
               fresh: list[int]) -> tuple[list[int], list[int], list[int]]:  # fmt: skip
        """(new orders, activities, the rest) among the claimed events, each in arrival order."""
        # An order id named twice (two updates, or a fulfilment too) keeps arrival order: per event.
        named = Counter(events[i][0].order_id for i in fresh if isinstance(events[i][0], (OrderEvent, FulfillmentEvent)))  # type: ignore[union-attr]
        candidates = [i for i in fresh if isinstance(e := events[i][0], OrderEvent) and e.checkout_id is None
                      and named[e.order_id] == 1 and events[i][1] is not None]  # fmt: skip
        known: set[str] = set()
        if candidates:
            oids = tx.array([events[i][0].order_id for i in candidates])  # type: ignore[union-attr]
            known = {r[0] for r in tx.rows(
                f"SELECT order_id FROM orders WHERE tenant = ? AND order_id IN {tx.values()} UNION "
                f"SELECT order_id FROM early_fulfillments WHERE tenant = ? AND order_id IN {tx.values()}",
                (tenant, oids, tenant, oids))}  # fmt: skip
        orders = [i for i in candidates if events[i][0].order_id not in known]  # type: ignore[union-attr]
        acts = [i for i in fresh if isinstance(events[i][0], (ActivityEvent, CustomEvent)) and events[i][1] is not None]
        fast = set(orders) | set(acts)
        return orders, acts, [i for i in fresh if i not in fast]

    def _ensure_many(self, tx: Tx, tenant: str, phones: set[str], now: float) -> dict[str, int]:
        """Each phone's subscriber id, created (consent ``none``, an empty aggregates row) if new."""
        arr = tx.array(sorted(phones))
        new = [r[0] for r in tx.rows(
            f"INSERT INTO subscribers (tenant, phone, created_at) SELECT ?, value, ? FROM {tx.each()} "
            "WHERE true ON CONFLICT (tenant, phone) DO NOTHING RETURNING id", (tenant, now, arr))]  # fmt: skip
        if new:
            tx.run(f"INSERT INTO subscriber_stats (tenant, subscriber_id) SELECT ?, value FROM {tx.each('bigint')} "
                   "WHERE true ON CONFLICT DO NOTHING", (tenant, tx.array(new)))  # fmt: skip
        return {r[0]: int(r[1]) for r in tx.rows(
            f"SELECT phone, id FROM subscribers WHERE tenant = ? AND phone IN {tx.values()}", (tenant, arr))}

    @staticmethod
    def _insert_orders(tx: Tx, tenant: str, orders: list[tuple[OrderEvent, int]]) -> None:
        tx.insert_many("orders", _ORDER_COLS, [
            (tenant, e.order_id, sid, e.total, e.currency, e.payment_status, e.fulfillment_status, e.discount_code,
             e.created_at if e.created_at is not None else e.at, None, e.at,
             e.at if e.fulfillment_status is not None else 0.0) for e, sid in orders])  # fmt: skip
        tx.insert_many("order_items", _ITEM_COLS, [(tenant, e.order_id, it.product, it.category, it.price, it.quantity)
                                                   for e, _ in orders for it in e.items])  # fmt: skip

    @staticmethod
    def _insert_activities(tx: Tx, tenant: str, acts: list[tuple[ActivityEvent | CustomEvent, int]]) -> None:
        tx.insert_many("activities", _ACTIVITY_COLS, [
            (tenant, sid, e.kind if isinstance(e, ActivityEvent) else e.name, e.at, _json.encode(e.properties).decode())
            for e, sid in acts])  # fmt: skip

    def _restat_many(self, tx: Tx, tenant: str, orders: list[tuple[OrderEvent, int]], acts: list[tuple[Any, int]],
                     now: float) -> None:  # fmt: skip
        """The aggregates of every subscriber touched. A new order was counted nowhere (its id was not
        stored), so it adds to the stored order figures exactly as ``aggregates.order_stats`` would
        count it; the latest order's status is read back with one index seek per subscriber (the new
        order may be older than one stored). Activity instants: the later of stored and new."""
        added: dict[int, list[tuple[str, int, str, float]]] = {}
        for e, sid in orders:
            added.setdefault(sid, []).append((e.order_id, e.total, e.payment_status,
                                              e.created_at if e.created_at is not None else e.at))  # fmt: skip
        latest: dict[int, dict[str, float]] = {}
        for e, sid in acts:
            kind = e.kind if isinstance(e, ActivityEvent) else e.name
            if kind in _ACTIVITY_STAT:
                field = _ACTIVITY_STAT[kind]
                mine = latest.setdefault(sid, {})
                mine[field] = max(mine.get(field, e.at), e.at)
        sids = sorted(set(added) | set(latest))
        if not sids:
            return
        stored = {int(r[0]): dict(zip(_STATS, r[1:], strict=True)) for r in tx.rows(
            f"SELECT subscriber_id, {', '.join(_STATS)} FROM subscriber_stats WHERE tenant = ? AND subscriber_id IN "
            f"{tx.values('bigint')}", (tenant, tx.array(sids)))}  # fmt: skip
        status = {int(r[0]): r[1] for r in tx.rows(
            f"SELECT value, (SELECT l.payment_status FROM orders l WHERE l.tenant = ? AND l.subscriber_id = value "
            f"ORDER BY l.created_at DESC, l.order_id DESC LIMIT 1) FROM {tx.each('bigint')}",
            (tenant, tx.array(sorted(added))))} if added else {}  # fmt: skip
        rows = []
        for sid in sids:
            fields: dict[str, Any] = stored.get(sid) or msgspec.structs.asdict(Stats())
            if sid in added:
                fields.update(aggregates.add_orders(Stats(**fields), added[sid], status[sid]))
            for field, at in latest.get(sid, {}).items():
                fields[field] = aggregates.latest(fields[field], at)
            stats = aggregates.scores(Stats(**fields), now)
            rows.append((tenant, sid, *msgspec.structs.astuple(stats)))  # in _STATS order
        tx.upsert_many("subscriber_stats", ("tenant", "subscriber_id", *_STATS), ("subscriber_id",), rows)
