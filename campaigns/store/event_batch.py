"""Shop events in batches: one transaction, set-based statements for the common events.

This is SQLite's batch, and the reference PostgreSQL's is tested against: on PostgreSQL
``campaigns.store.event_batch_pg`` does the same in two statements (``PostgresStore._apply_batch``).

``apply_events`` must leave exactly the state, and answer exactly the outcomes, that ``apply_event``
on each event in turn would (a hypothesis test in tests/campaigns checks it on both engines). Per
event that is 6 to 10 statements; in a batch the common events share a handful:

1. Ids: the first occurrence of an id in the batch is claimed with one
   ``INSERT INTO processed_events ... SELECT <the ids> ON CONFLICT DO NOTHING RETURNING event_id``
   (the ids bound as one array parameter); the others are ``duplicate``.
2. *New orders* (an ``order`` event whose order id is neither stored, nor waiting as an early
   fulfilment, nor named by another event of the batch, and that completes no checkout) and *activities*
   (``activity``, ``custom``) take the set-based path: their subscribers are read with one statement
   (and the new ones created with one more), the rows inserted with ``executemany`` (SQLite) or
   ``COPY`` (PostgreSQL), and the aggregates of every subscriber they touched updated by one upsert
   of the batch's rows grouped by subscriber that writes the scores too (``aggregate_sql``: the
   arithmetic of ``campaigns.core.aggregates``, which stays the definition). A new order is always ``applied``:
   there is no newer state it could be stale to.
3. Every other event (customers, checkouts, fulfilments, updates of stored orders) then goes through
   the per-event code, in arrival order, in the same transaction.

Doing 2 before 3 gives what arrival order would: the per-event code is order-independent by design
(aggregates are recomputed from the rows, instants are minima or maxima), and what could tell the
difference (an order id named by two events of the batch) is left to step 3, in arrival order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from campaigns.core import aggregates
from campaigns.core.events import ActivityEvent, CustomEvent, FulfillmentEvent, OrderEvent, ShopEvent
from campaigns.core.segments import new_order_changes
from campaigns.store import rollups
from campaigns.store.base import Applied

if TYPE_CHECKING:
    from campaigns.store.sql import Tx

_ACTIVITY_STAT = {"clicked": "last_click_at", "message_sent": "last_message_at", "replied": "last_reply_at"}
_ORDER_COLS = ("tenant", "order_id", "subscriber_id", "total", "currency", "payment_status", "fulfillment_status",
               "discount_code", "created_at", "checkout_id", "updated_at", "fulfillment_at")  # fmt: skip
_ITEM_COLS = ("tenant", "order_id", "product", "category", "price", "quantity")
_ACTIVITY_COLS = ("tenant", "subscriber_id", "kind", "at", "properties")
_json = msgspec.json.Encoder()


class EventBatch:
    """Mixed into ``SqlStore``: ``_apply_batch`` (what ``apply_events`` runs in its transaction)."""

    def _apply_new(self, tx: Tx, tenant: str, event: ShopEvent, phone: str | None, now: float) -> Applied:
        raise NotImplementedError  # pragma: no cover - SqlStore's

    def _apply_batch(self, tx: Tx, tenant: str, events: Sequence[tuple[ShopEvent, str | None]],
                     now: float) -> tuple[list[Applied], bool]:  # fmt: skip
        """The outcomes, and False: the flow inputs are left to the caller (``SqlStore._apply_events``).
        PostgreSQL overrides it (``event_batch_pg``: two statements); this stays its reference."""
        return self._apply_batch_steps(tx, tenant, events, now), False

    def _apply_batch_steps(self, tx: Tx, tenant: str, events: Sequence[tuple[ShopEvent, str | None]],
                           now: float) -> list[Applied]:  # fmt: skip
        out, first = first_by_id(events)
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
            rollups.upkeep(tx, tenant, added=[(events[i][0], out_sid[i]) for i in orders])  # type: ignore[misc]
            for i in orders:
                e = events[i][0]
                changed = new_order_changes((it.category for it in e.items), checkout=e.checkout_id is not None)  # type: ignore[union-attr]
                out[i] = Applied(outcome="applied", subscriber_id=out_sid[i], changed=changed)
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
        """Each phone's subscriber id, created (consent ``none``, an empty aggregates row) if new.
        Read first, then only the phones not found are inserted: most of a batch's phones are known,
        and an ``INSERT ... ON CONFLICT DO NOTHING`` of a known one costs a conflicting probe on top
        of the read that follows it. A phone another transaction created in between (PostgreSQL) is
        not returned by the insert and is read again."""
        sids = self._phone_ids(tx, tenant, phones)
        missing = sorted(phones - sids.keys())
        if missing:
            made = {r[1]: int(r[0]) for r in tx.rows(
                f"INSERT INTO subscribers (tenant, phone, created_at) SELECT ?, value, ? FROM {tx.each()} "
                "WHERE true ON CONFLICT (tenant, phone) DO NOTHING RETURNING id, phone",
                (tenant, now, tx.array(missing)))}  # fmt: skip
            if made:
                tx.run(f"INSERT INTO subscriber_stats (tenant, subscriber_id) SELECT ?, value FROM {tx.each('bigint')} "
                       "WHERE true ON CONFLICT DO NOTHING", (tenant, tx.array(sorted(made.values()))))  # fmt: skip
            sids.update(made)
            if len(made) < len(missing):
                sids.update(self._phone_ids(tx, tenant, set(missing) - made.keys()))
        return sids

    @staticmethod
    def _phone_ids(tx: Tx, tenant: str, phones: set[str]) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in tx.rows(
            f"SELECT phone, id FROM subscribers WHERE tenant = ? AND phone IN {tx.values()}",
            (tenant, tx.array(sorted(phones))))}  # fmt: skip

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
        """The aggregates of every subscriber touched, in one upsert of the batch's rows grouped by
        subscriber, scores included (``aggregate_sql``). A new order was counted nowhere (its id was not stored), so it
        adds to the stored order figures exactly as ``aggregates.order_stats`` would count it; the
        latest order's status is the batch's latest order's where its key (``created_at``, ``order_id``)
        is greater than the stored ``latest_order_at`` / ``latest_order_id`` (the new order may be older
        than one stored); activity instants: the later of stored and new."""
        rows = [(sid, "order", e.total, e.payment_status, e.created_at if e.created_at is not None else e.at, e.order_id)
                for e, sid in orders]  # fmt: skip
        for e, sid in acts:
            kind = e.kind if isinstance(e, ActivityEvent) else e.name
            if kind in _ACTIVITY_STAT:
                rows.append((sid, kind, 0, "", e.at, ""))
        if rows:
            for sql, params, many in aggregate_sql(tx, tenant, rows, now):
                if many:
                    tx.many(sql, params)
                else:
                    tx.run(sql, params)


# ---- the batch's aggregates in SQL -------------------------------------------------------------
# ``campaigns.core.aggregates`` is the definition (the per-event path and ``refresh_scores`` use it);
# this is the same arithmetic as SQL over the batch's rows, so a batch costs one statement, not a
# read, a Python pass and a write per subscriber. The agreement is tested on both engines
# (tests/campaigns/test_event_batch.py: a batch, in any order and with re-sent events, leaves the
# state of its events applied one by one; RFM and engagement over two years of instants).
_ROW_KINDS = (("sid", "bigint"), ("kind", "text"), ("total", "bigint"), ("status", "text"), ("at", "float8"),
              ("oid", "text"), ("top", "bigint"))
_DOUBLE = "DOUBLE PRECISION"  # REAL affinity on SQLite, float8 on PostgreSQL


def first_by_id(events: Sequence[tuple[ShopEvent, str | None]]) -> tuple[list[Applied | None], dict[str, int]]:
    """A batch's outcomes so far (a repeat of an id earlier in the batch: ``duplicate``) and each id's
    first index, in the batch's order (both engines' batch paths start here)."""
    out: list[Applied | None] = [None] * len(events)
    first: dict[str, int] = {}
    for i, (e, _) in enumerate(events):
        if e.id in first:
            out[i] = Applied(outcome="duplicate")
        else:
            first[e.id] = i
    return out, first


def _lit(x: float) -> str:
    """A float as an exact SQL literal (repr round-trips), typed double on both engines."""
    return f"CAST({float(x)!r} AS {_DOUBLE})"


def _greatest(tx: Tx, a: str, b: str) -> str:
    """The later of two nullable instants (``aggregates.latest``): MAX/GREATEST, NULL-tolerant on both engines."""
    fn = "GREATEST" if tx.pg else "MAX"
    return f"COALESCE({fn}({a}, {b}), {a}, {b})"


def _least(tx: Tx, a: str, b: str) -> str:
    fn = "LEAST" if tx.pg else "MIN"
    return f"COALESCE({fn}({a}, {b}), {a}, {b})"


def _at_most(value: str, bounds: Sequence[float]) -> str:
    whens = " ".join(f"WHEN {value} <= {_lit(b)} THEN {5 - i}" for i, b in enumerate(bounds))
    return f"CASE {whens} ELSE 1 END"


def _at_least(value: str, bounds: Sequence[float]) -> str:
    whens = " ".join(f"WHEN {value} >= {b!r} THEN {5 - i}" for i, b in enumerate(bounds))
    return f"CASE {whens} ELSE 1 END"


def _days_since(tx: Tx, at: str, now: float) -> str:
    """``max(0.0, now - at) / DAY`` with Python's float arithmetic (IEEE doubles on both engines)."""
    return f"(CASE WHEN {_lit(now)} - {at} > 0 THEN {_lit(now)} - {at} ELSE {_lit(0.0)} END) / {_lit(aggregates.DAY)}"


def _scores(tx: Tx, now: float, scale: aggregates.RfmScale = aggregates.DEFAULT_SCALE) -> str:
    """``aggregates.add_orders``' average and ``aggregates.scores`` as the SET list of an UPDATE of
    ``subscriber_stats`` (over its stored columns, as of ``now``)."""
    ordered = "orders_count > 0 AND last_order_at IS NOT NULL"
    touch = _greatest(tx, _greatest(tx, "last_click_at", "last_reply_at"), "last_order_at")
    return (f"avg_order_value = CASE WHEN orders_count > 0 THEN total_spent / orders_count ELSE 0 END, "
            f"rfm_r = CASE WHEN {ordered} THEN {_at_most(_days_since(tx, 'last_order_at', now), scale.recency_days)} END, "
            f"rfm_f = CASE WHEN {ordered} THEN {_at_least('orders_count', scale.frequency)} END, "
            f"rfm_m = CASE WHEN {ordered} THEN {_at_least('total_spent', scale.monetary)} END, "
            f"engagement = CASE WHEN {touch} IS NOT NULL THEN {_at_most(_days_since(tx, touch, now), scale.engagement_days)} END")  # fmt: skip


def _rowset(tx: Tx, rows: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """The batch's rows as a table ``b`` bound as one parameter per column (PostgreSQL: ``unnest`` of
    arrays) or one in all (SQLite: a JSON array of arrays read by ``json_each``)."""
    names = ", ".join(n for n, _ in _ROW_KINDS)
    # SQLite reads back the numbers msgspec writes (shortest round-trip) as the same doubles: checked
    # over 800,000 random doubles, and by the hypothesis tests through the per-event path's binds.
    if tx.pg:
        cols = ", ".join(f"?::{k}[]" for _, k in _ROW_KINDS)
        return f"unnest({cols}) AS b ({names})", [list(c) for c in zip(*rows, strict=True)]
    cols = ", ".join(f"value ->> {i} AS {n}" for i, (n, _) in enumerate(_ROW_KINDS))
    return f"(SELECT {cols} FROM json_each(?)) AS b", [_json.encode(rows).decode()]


def _latest_in_batch(rows: Sequence[tuple[int, str, int, str, float, str]]) -> list[tuple[Any, ...]]:
    """``rows`` with a last column ``top``: 1 on each subscriber's latest order of the batch (greatest
    ``(created_at, order_id)``, as ``aggregates.order_stats`` picks it), else 0."""
    top: dict[int, int] = {}
    for i, (sid, kind, _, _, at, oid) in enumerate(rows):
        if kind == "order":
            j = top.get(sid)
            if j is None or (at, oid) > (rows[j][4], rows[j][5]):
                top[sid] = i
    chosen = set(top.values())
    return [(*r, 1 if i in chosen else 0) for i, r in enumerate(rows)]


_SCORED = ("avg_order_value", "rfm_r", "rfm_f", "rfm_m", "engagement")
_READ = re.compile(r"\b(last_click_at|last_reply_at|last_order_at|orders_count|total_spent)\b")


def scores_over(tx: Any, now: float, column: dict[str, str]) -> dict[str, str]:
    """``_scores``' expressions (score column -> SQL) with each stored column they read replaced by
    ``column``'s expression of it: the scores of a row as it will be, written in the statement that
    writes the row (no second ``UPDATE`` of the same rows)."""
    text = _READ.sub(lambda m: f"({column[m.group(1)]})", _scores(tx, now))
    parts = re.split(r"(?:^|, )(" + "|".join(_SCORED) + r") = ", text)[1:]
    return dict(zip(parts[0::2], parts[1::2], strict=True))


_GROUPED = ("sid", "n", "spent", "first", "last", "top_at", "top_id", "top_status", *_ACTIVITY_STAT.values())


def grouped_in_python(rows: Sequence[tuple[int, str, int, str, float, str]]) -> list[tuple[Any, ...]]:
    """The batch's rows grouped by subscriber as ``aggregate_sql``'s grouped ``SELECT`` groups them
    (``_GROUPED``: orders counted and summed except refunded ones, their first and last instants, the
    latest order's instant, id and status whatever its status, each activity kind's latest instant;
    None where the batch has none), one tuple a subscriber in subscriber order."""
    acc: dict[int, list[Any]] = {}
    kinds = {k: 8 + i for i, k in enumerate(_ACTIVITY_STAT)}
    for sid, kind, total, status, at, oid in rows:
        g = acc.get(sid)
        if g is None:
            g = acc[sid] = [sid, 0, 0, None, None, None, None, None, *(None for _ in _ACTIVITY_STAT)]
        if kind == "order":
            if status != "refunded":
                g[1] += 1
                g[2] += total
                g[3] = at if g[3] is None or at < g[3] else g[3]
                g[4] = at if g[4] is None or at > g[4] else g[4]
            if g[5] is None or (at, oid) > (g[5], g[6]):
                g[5], g[6], g[7] = at, oid, status
        else:
            j = kinds[kind]
            g[j] = at if g[j] is None or at > g[j] else g[j]
    return [tuple(acc[sid]) for sid in sorted(acc)]


def _grouped_sql(tx: Tx, table: str) -> str:
    """``grouped_in_python`` in SQL, over the rows bound as ``table`` (``_rowset``)."""
    kept = "b.kind = 'order' AND b.status <> 'refunded'"
    last_of = {f: f"MAX(CASE WHEN b.kind = '{k}' THEN b.at END)" for k, f in _ACTIVITY_STAT.items()}
    return (f"SELECT b.sid AS sid, CAST(SUM(CASE WHEN {kept} THEN 1 ELSE 0 END) AS BIGINT) AS n, "
            f"CAST(SUM(CASE WHEN {kept} THEN b.total ELSE 0 END) AS BIGINT) AS spent, "
            f"MIN(CASE WHEN {kept} THEN b.at END) AS first, MAX(CASE WHEN {kept} THEN b.at END) AS last, "
            f"MAX(CASE WHEN b.top = 1 THEN b.at END) AS top_at, MAX(CASE WHEN b.top = 1 THEN b.oid END) AS top_id, "
            f"MAX(CASE WHEN b.top = 1 THEN b.status END) AS top_status, "
            f"{', '.join(f'{e} AS {f}' for f, e in last_of.items())} FROM {table} GROUP BY b.sid")  # fmt: skip


def aggregate_sql(tx: Tx, tenant: str, rows: Sequence[tuple[int, str, int, str, float, str]],
                  now: float) -> list[tuple[str, Any, bool]]:  # fmt: skip
    """The batch's new orders and activity instants (``rows``: subscriber, kind ``order`` or an
    activity kind, total, payment status, instant, order id) added to ``subscriber_stats``, grouped
    by subscriber, with the scores as of ``now`` written over the merged values (``scores_over``) by
    the same statement: each aggregates row is written once (it was an upsert, then a scoring
    ``UPDATE`` of the same rows: two b-tree writes of each). The latest order's status needs no read
    of the orders: the batch's latest order of a subscriber replaces the stored one when its key is
    greater than the stored ``latest_order_at`` / ``latest_order_id`` (kept by both paths;
    schema.ADDED_COLUMNS). Steps ``(sql, parameters, many)``: ``many``, one parameter row a subscriber.

    PostgreSQL: one upsert grouping in SQL over the rows bound as arrays. SQLite has no arrays: the
    rows bound as a JSON text read by ``json_each`` cost more than the writes (each ``value ->> i``
    parses the row's JSON again: a grouped ``SELECT`` of them alone cost 15 ms for 1,000 orders, the
    whole grouped upsert 23 and its scoring ``UPDATE`` 7), so the rows are grouped in Python (``grouped_in_python``, the same arithmetic), the
    missing aggregates rows created (one statement), and each subscriber's row updated in place by
    an ``UPDATE`` bound to its group (``executemany``; measured 19 ms for 1,000 orders against 24 for
    the same groups through an upsert, whose fresh-row scores are computed even when it conflicts)."""
    collate = ' COLLATE "C"' if tx.pg else ""  # order ids by code point, as Python compares them
    # the new values: PostgreSQL's upsert reads them from ``excluded``; SQLite's UPDATE from its
    # parameters (numbered: each is read several times), its columns unqualified
    g = {c: f"?{i + 1}" for i, c in enumerate(_GROUPED)}
    x = "x." if tx.pg else ""
    upd = {"orders_count": g["n"], "total_spent": g["spent"], "first_order_at": g["first"], "last_order_at": g["last"],
           "last_order_payment_status": g["top_status"], "latest_order_at": g["top_at"], "latest_order_id": g["top_id"],
           **{f: g[f] for f in _ACTIVITY_STAT.values()}}  # fmt: skip
    if tx.pg:
        upd = {c: f"excluded.{c}" for c in upd}
    newer = (f"{upd['latest_order_at']} IS NOT NULL AND ({x}latest_order_at IS NULL OR {upd['latest_order_at']} > "
             f"{x}latest_order_at OR ({upd['latest_order_at']} = {x}latest_order_at AND "
             f"{upd['latest_order_id']}{collate} > {x}latest_order_id{collate}))")  # fmt: skip
    merged = {"orders_count": f"{x}orders_count + {upd['orders_count']}",
              "total_spent": f"{x}total_spent + {upd['total_spent']}",
              "first_order_at": _least(tx, f"{x}first_order_at", upd["first_order_at"]),
              "last_order_at": _greatest(tx, f"{x}last_order_at", upd["last_order_at"]),
              **{c: f"CASE WHEN {newer} THEN {upd[c]} ELSE {x}{c} END"
                 for c in ("last_order_payment_status", "latest_order_at", "latest_order_id")},
              **{f: _greatest(tx, f"{x}{f}", upd[f]) for f in _ACTIVITY_STAT.values()}}  # fmt: skip
    merged_scores = scores_over(tx, now, merged)
    sets = [*(f"{c} = {merged[c]}" for c in merged), *(f"{c} = {merged_scores[c]}" for c in _SCORED)]
    if not tx.pg:
        groups = grouped_in_python(rows)
        return [(f"INSERT INTO subscriber_stats (tenant, subscriber_id) SELECT ?, value FROM {tx.each('bigint')} "
                 "WHERE true ON CONFLICT DO NOTHING", [tenant, tx.array([r[0] for r in groups])], False),
                (f"UPDATE subscriber_stats SET {', '.join(sets)} WHERE subscriber_id = ?1", groups, True)]  # fmt: skip
    fresh = {"orders_count": "g.n", "total_spent": "g.spent", "first_order_at": "g.first", "last_order_at": "g.last",
             "last_order_payment_status": "g.top_status", "latest_order_at": "g.top_at", "latest_order_id": "g.top_id",
             **{f: f"g.{f}" for f in _ACTIVITY_STAT.values()}}  # fmt: skip
    fresh_scores = scores_over(tx, now, fresh)
    cols = [*fresh, *_SCORED]
    values = [*fresh.values(), *(fresh_scores[c] for c in _SCORED)]
    table, params = _rowset(tx, _latest_in_batch(rows))
    upsert = (f"INSERT INTO subscriber_stats AS x (tenant, subscriber_id, {', '.join(cols)}) "
              f"SELECT ?, g.sid, {', '.join(values)} FROM ({_grouped_sql(tx, table)}) AS g WHERE true "
              f"ON CONFLICT (subscriber_id) DO UPDATE SET {', '.join(sets)}")  # fmt: skip
    # placeholders in text order: the SELECT's tenant, then the rows
    return [(upsert, [tenant, *params], False)]
