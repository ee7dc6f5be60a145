"""A batch of shop events on PostgreSQL in two statements (``PostgresStore``'s ``_apply_batch``).

On PostgreSQL every statement is a round trip, a parse/bind in the server and a turn of psycopg's
wait loop, and every table written once more is index maintenance paid again. The stepwise batch
(``event_batch.EventBatch._apply_batch_steps``, kept as the reference and for SQLite) costs 14
statements for 1,000 new orders, three of them writing rows the batch had just written (the
aggregates' upsert, then their scoring ``UPDATE``; the rollups through a staging table). Here:

1. ``CLAIM``: one ``WITH`` over the batch's first occurrences bound as arrays (``unnest``): the ids
   claimed in ``processed_events`` (``ON CONFLICT DO NOTHING RETURNING``); the subscribers of the
   claimed set-based candidates created (consent ``none``, an empty aggregates row); and, read in the
   same snapshot, every candidate phone's subscriber id, the candidate order and checkout ids already
   stored (or waiting as an early fulfilment), and whether the shop has flows.
2. Python splits the claimed events as the stepwise path does (``_split``), with two more set-based
   kinds: a *new checkout* (a checkout id neither stored nor named by another event of the batch, no
   consent box ticked), and a new order that *completes a checkout* named by no other event of the
   batch (the checkout completed as ``SqlStore._complete_checkout`` does).
3. ``WRITE``: one ``WITH`` of data-modifying parts over the set-based events bound as arrays: the
   orders, their items, the activities, the new checkouts, the checkouts the orders complete, the rollups (added per bucket) and the
   aggregates with their scores in ONE upsert (``campaigns.core.aggregates``' arithmetic as SQL:
   ``event_batch.aggregate_sql``'s merge, and ``event_batch._scores`` written over the merged
   values, so each aggregates row gets one new version, not two) and, when the shop has flows and no
   event is left to the per-event code, the flow inputs in arrival order.
4. The other events go through the per-event code, in arrival order, in the same transaction; then
   (flows only) their flow inputs with every other event's, in arrival order, as one ``INSERT``.

Every column is bound as the text of an array written by msgspec in one call (``pg_array``), not as
a list psycopg dumps element by element in Python (half of this process's CPU for the batch).

The statements' texts are constant (``now`` and the tenant are parameters): psycopg prepares them,
the server plans them once. tests/campaigns/test_event_batch_pg.py compares this path with the
stepwise one and with the events one by one on random batches (re-sent ids, any order, cuts).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from campaigns.core.events import ActivityEvent, CheckoutEvent, CustomEvent, FulfillmentEvent, OrderEvent, ShopEvent
from campaigns.store import rollups
from campaigns.store.base import Applied
from campaigns.core.segments import new_order_changes
from campaigns.store.event_batch import _ACTIVITY_STAT, _greatest, _least, _scores, first_by_id

if TYPE_CHECKING:
    from campaigns.store.sql import Tx

_json = msgspec.json.Encoder()


def pg_array(values: Sequence[Any], *, numeric: bool = False) -> str | list[Any]:
    """``values`` (strings, or numbers when ``numeric``; ``None`` is ``NULL``) as the text of a
    PostgreSQL array, for a ``%(x)s::text[]`` (``bigint[]``, ``float8[]``) parameter.

    A list bound as it is costs psycopg a Python loop over its elements (a dump, a regular expression
    for the quoting and an append each: ~1-4 µs an element, 20-25 columns of 1,000 a batch); msgspec
    writes the same text as a JSON array in one call (docs/BENCHMARKS.md, "pgevents4"). A JSON array
    whose strings needed no escape is an array literal once its brackets are braces: each element a
    double-quoted string with no ``"`` or ``\\`` inside, a number, or ``null`` (``NULL`` to
    ``array_in``, in any case). A str parameter is sent as ``unknown``: the statement's cast types it,
    the server parses it as it parsed psycopg's text, and a statement planned at each execution sees
    the array and its length as before. Else (an escape, a number JSON cannot write: the list as it is)."""
    text = _json.encode(values)
    if b"\\" in text or (numeric and b"null" in text and None not in values):
        return list(values)
    return "{" + text[1:-1].decode() + "}"

_NOW = 1_234_567_890.0625  # ``now`` as ``_scores`` writes it, replaced by the parameter
_SCORED = ("avg_order_value", "rfm_r", "rfm_f", "rfm_m", "engagement")
_READ = re.compile(r"\b(last_click_at|last_reply_at|last_order_at|orders_count|total_spent)\b")
_CHECKOUT_CHANGED = frozenset({"checkouts", "subscriber_stats"})


class _Pg:
    pg = True


def _score_sets(column: dict[str, str]) -> dict[str, str]:
    """``_scores``' expressions (score column -> SQL), the stored columns they read replaced by
    ``column``'s expressions and ``now`` the parameter ``%(now)s``."""
    text = _READ.sub(lambda m: f"({column[m.group(1)]})", _scores(_Pg(), _NOW))  # type: ignore[arg-type]
    text = text.replace(f"CAST({_NOW!r} AS DOUBLE PRECISION)", "%(now)s::float8")
    parts = re.split(r"(?:^|, )(" + "|".join(_SCORED) + r") = ", text)[1:]
    return dict(zip(parts[0::2], parts[1::2], strict=True))


@functools.cache
def claim_sql() -> str:
    """Statement 1. Rows ``(what, text, id)``: 0 a claimed event id; 1 a phone and its subscriber;
    2 a stored (or early-fulfilled) order id; 3 a stored checkout id and its subscriber (5: one already
    completed); 4 the shop has flows."""
    return (
        "WITH e AS (SELECT * FROM unnest(%(ids)s::text[], %(phones)s::text[], %(oids)s::text[], %(cids)s::text[]) "
        "AS e (id, phone, oid, cid)), "
        "c AS (INSERT INTO processed_events (tenant, event_id) SELECT %(t)s, id FROM e ON CONFLICT DO NOTHING "
        "RETURNING event_id), "
        "k AS (SELECT phone, id FROM subscribers WHERE tenant = %(t)s AND phone IN (SELECT phone FROM e WHERE phone <> '')), "
        # only the phones without a subscriber in this snapshot: a stored one costs no speculative insert
        "n AS (INSERT INTO subscribers (tenant, phone, created_at) SELECT DISTINCT %(t)s::text, e.phone, %(now)s::float8 "
        "FROM e JOIN c ON c.event_id = e.id WHERE e.phone <> '' AND NOT EXISTS (SELECT 1 FROM k WHERE k.phone = e.phone) "
        "ORDER BY 2 ON CONFLICT (tenant, phone) DO NOTHING RETURNING id, phone), "
        "s AS (INSERT INTO subscriber_stats (tenant, subscriber_id) SELECT %(t)s, id FROM n ON CONFLICT DO NOTHING) "
        "SELECT 0, event_id, NULL::bigint FROM c "
        "UNION ALL SELECT 1, phone, id FROM n "
        "UNION ALL SELECT 1, phone, id FROM k "
        "UNION ALL SELECT 2, order_id, NULL FROM orders WHERE tenant = %(t)s AND order_id IN "
        "(SELECT oid FROM e WHERE oid <> '') "
        "UNION ALL SELECT 2, order_id, NULL FROM early_fulfillments WHERE tenant = %(t)s AND order_id IN "
        "(SELECT oid FROM e WHERE oid <> '') "
        "UNION ALL SELECT CASE WHEN completed_at IS NULL THEN 3 ELSE 5 END, checkout_id, subscriber_id FROM checkouts "
        "WHERE tenant = %(t)s AND checkout_id IN "
        "(SELECT cid FROM e WHERE cid <> '') "
        "UNION ALL SELECT 4, NULL, NULL WHERE EXISTS (SELECT 1 FROM flow_heads WHERE tenant = %(t)s)"
    )  # fmt: skip


_ORDERS = ("%(o_id)s::text[], %(o_sid)s::bigint[], %(o_total)s::bigint[], %(o_cur)s::text[], %(o_pay)s::text[], "
           "%(o_fs)s::text[], %(o_disc)s::text[], %(o_created)s::float8[], %(o_at)s::float8[], %(o_cid)s::text[]")  # fmt: skip
_ITEMS = "%(i_oid)s::text[], %(i_product)s::text[], %(i_category)s::text[], %(i_price)s::bigint[], %(i_qty)s::bigint[]"
# properties as one JSON array, split by json_array_elements (``_FLOW_ROWS``' reason: no text[] quoting)
_ACTS = ("unnest(%(a_sid)s::bigint[]), unnest(%(a_kind)s::text[]), unnest(%(a_at)s::float8[]), "
         "json_array_elements(%(a_props)s::json)")  # fmt: skip
_CHECKOUTS = ("%(c_id)s::text[], %(c_sid)s::bigint[], %(c_url)s::text[], %(c_value)s::bigint[], %(c_at)s::float8[], "
              "%(c_status)s::text[]")  # fmt: skip


def _stats_part() -> str:
    """The aggregates of every subscriber the batch touched: one upsert, scores included."""
    kept = "b.kind = 'order' AND b.status <> 'refunded'"
    last_of = ", ".join(f"MAX(CASE WHEN b.kind = '{k}' THEN b.at END) AS {f}" for k, f in _ACTIVITY_STAT.items())
    grouped = (f"SELECT b.sid, SUM(CASE WHEN {kept} THEN 1 ELSE 0 END)::bigint AS n, "
               f"SUM(CASE WHEN {kept} THEN b.total ELSE 0 END)::bigint AS spent, MIN(CASE WHEN {kept} THEN b.at END) "
               f"AS first, MAX(CASE WHEN {kept} THEN b.at END) AS last, {last_of}, "
               f"MAX(CASE WHEN b.kind = 'checkout' THEN b.at END) AS abandoned FROM b GROUP BY b.sid")  # fmt: skip
    fresh = {"orders_count": "g.n", "total_spent": "g.spent", "first_order_at": "g.first", "last_order_at": "g.last",
             "last_order_payment_status": "t.status", "latest_order_at": "t.at", "latest_order_id": "t.oid",
             **{f: f"g.{f}" for f in _ACTIVITY_STAT.values()},
             "last_abandoned_checkout_at": _greatest(_Pg(), "g.abandoned", "k.abandoned")}  # type: ignore[arg-type] # fmt: skip
    newer = ("excluded.latest_order_at IS NOT NULL AND (x.latest_order_at IS NULL OR excluded.latest_order_at > "
             "x.latest_order_at OR (excluded.latest_order_at = x.latest_order_at AND "
             'excluded.latest_order_id COLLATE "C" > x.latest_order_id COLLATE "C"))')  # fmt: skip
    pg: Any = _Pg()
    merged = {"orders_count": "x.orders_count + excluded.orders_count",
              "total_spent": "x.total_spent + excluded.total_spent",
              "first_order_at": _least(pg, "x.first_order_at", "excluded.first_order_at"),
              "last_order_at": _greatest(pg, "x.last_order_at", "excluded.last_order_at"),
              **{c: f"CASE WHEN {newer} THEN excluded.{c} ELSE x.{c} END"
                 for c in ("last_order_payment_status", "latest_order_at", "latest_order_id")},
              **{f: _greatest(pg, f"x.{f}", f"excluded.{f}") for f in _ACTIVITY_STAT.values()},
              # recomputed from the stored rows and the new ones, for the subscribers with a new checkout
              "last_abandoned_checkout_at": "CASE WHEN x.subscriber_id = ANY(%(r_sid)s::bigint[]) THEN "
                                            "excluded.last_abandoned_checkout_at ELSE x.last_abandoned_checkout_at END"}  # fmt: skip
    fresh_scores = _score_sets(fresh)
    merged_scores = _score_sets(merged)
    cols = [*fresh, *_SCORED]
    values = [*fresh.values(), *(fresh_scores[c] for c in _SCORED)]
    sets = [*(f"{c} = {merged[c]}" for c in fresh), *(f"{c} = {merged_scores[c]}" for c in _SCORED)]
    return (f"INSERT INTO subscriber_stats AS x (tenant, subscriber_id, {', '.join(cols)}) "
            f"SELECT %(t)s, g.sid, {', '.join(values)} FROM ({grouped}) AS g "
            "LEFT JOIN (SELECT DISTINCT ON (sid) sid, at, oid, status FROM b WHERE kind = 'order' "
            'ORDER BY sid, at DESC, oid COLLATE "C" DESC) AS t ON t.sid = g.sid '
            "LEFT JOIN (SELECT subscriber_id AS sid, MAX(abandoned_at) AS abandoned FROM checkouts WHERE tenant = %(t)s "
            "AND subscriber_id = ANY(%(r_sid)s::bigint[]) AND completed_at IS NULL AND checkout_id <> ALL(%(done)s::text[]) "
            "GROUP BY subscriber_id) AS k "
            f"ON k.sid = g.sid ON CONFLICT (subscriber_id) DO UPDATE SET {', '.join(sets)}")  # fmt: skip


@functools.cache
def write_sql(flows: bool) -> str:
    """Statement 2 (``flows``: the flow inputs too, ``%(f_sid)s`` / ``%(f_event)s`` in arrival order)."""
    bucket = "floor({} / CAST({!r} AS DOUBLE PRECISION))::bigint"
    ob = ib = bucket.format("o.created", rollups.BUCKET_S)  # ``rollups.bucket``: exact, a power of two
    adds = "n = r.n + excluded.n, amount = r.amount + excluded.amount, quantity = r.quantity + excluded.quantity"
    stat_kinds = ", ".join(f"'{k}'" for k in _ACTIVITY_STAT)
    parts = [
        f"o AS (SELECT * FROM unnest({_ORDERS}) AS o (order_id, sid, total, currency, pay, fs, disc, created, at, cid))",
        f"i AS (SELECT * FROM unnest({_ITEMS}) AS i (order_id, product, category, price, quantity))",
        f"a AS (SELECT sid, kind, at, props::text AS props FROM ROWS FROM ({_ACTS}) AS a (sid, kind, at, props))",
        f"k AS (SELECT * FROM unnest({_CHECKOUTS}) AS k (checkout_id, sid, url, value, at, status))",
        "io AS (INSERT INTO orders (tenant, order_id, subscriber_id, total, currency, payment_status, fulfillment_status, "
        "discount_code, created_at, checkout_id, updated_at, fulfillment_at) SELECT %(t)s, order_id, sid, total, currency, "
        "pay, fs, disc, created, cid, at, CASE WHEN fs IS NOT NULL THEN at ELSE 0 END FROM o)",
        # an order completes its checkout (``SqlStore._complete_checkout``: final, instants are minima)
        "ic AS (INSERT INTO checkouts AS c (tenant, checkout_id, subscriber_id, started_at, completed_at, updated_at) "
        "SELECT %(t)s, cid, sid, created, created, 0.0 FROM o WHERE cid IS NOT NULL ON CONFLICT (tenant, checkout_id) "
        "DO UPDATE SET completed_at = LEAST(COALESCE(c.completed_at, excluded.completed_at), excluded.completed_at), "
        "started_at = LEAST(c.started_at, excluded.started_at))",
        "ii AS (INSERT INTO order_items (tenant, order_id, product, category, price, quantity) SELECT %(t)s, order_id, "
        "product, category, price, quantity FROM i)",
        "ia AS (INSERT INTO activities (tenant, subscriber_id, kind, at, properties) SELECT %(t)s, sid, kind, at, props FROM a)",
        "ik AS (INSERT INTO checkouts (tenant, checkout_id, subscriber_id, url, url_at, value, started_at, completed_at, "
        "abandoned_at, updated_at) SELECT %(t)s, checkout_id, sid, url, CASE WHEN url IS NOT NULL THEN at END, value, at, "
        "CASE WHEN status = 'completed' THEN at END, "
        "CASE WHEN status = 'abandoned' THEN at END, at FROM k)",
        f"ir AS (INSERT INTO order_rollups AS r (tenant, key, bucket, subscriber_id, n, amount, quantity) SELECT %(t)s, key, "
        f"bucket, sid, COUNT(*), SUM(amount), SUM(qty) FROM (SELECT '{rollups.ORDER_KEY}' AS key, {ob} AS bucket, o.sid, "
        f"o.total AS amount, 0 AS qty FROM o UNION ALL SELECT CASE WHEN i.category IS NULL THEN 'i' ELSE 'i:' || "
        f"i.category END, {ib}, o.sid, i.price * i.quantity, i.quantity FROM i JOIN o ON o.order_id = i.order_id) AS x "
        f"GROUP BY key, bucket, sid ON CONFLICT (tenant, key, bucket, subscriber_id) DO UPDATE SET {adds})",
        # the aggregates' rows: an order, an activity kind that has an instant, a new checkout (abandoned, not completed)
        f"b AS (SELECT sid, 'order' AS kind, total, pay AS status, created AS at, order_id AS oid FROM o UNION ALL "
        f"SELECT sid, kind, 0, '', at, '' FROM a WHERE kind IN ({stat_kinds}) UNION ALL "
        f"SELECT sid, 'checkout', 0, '', CASE WHEN status = 'abandoned' THEN at END, '' FROM k)",
    ]
    if flows:
        parts.append("fi AS (INSERT INTO flow_inputs (tenant, subscriber_id, event) SELECT %(t)s, sid, event FROM "
                     f"{_FLOW_ROWS})")  # fmt: skip
    return "WITH " + ", ".join(parts) + " " + _stats_part()


# The events come as ONE JSON array (``%(f_event)s``, msgspec-encoded in one call), split by
# ``json_array_elements``: a ``json`` (not ``jsonb``) element is its input text, so each row is
# byte for byte what ``enqueue_inputs`` writes. As a ``text[]`` psycopg quoted every element in
# Python (a regex substitution per quote of every event: 3/4 of an order's CPU with flows on).
_FLOW_ROWS = ("(SELECT f.sid, f.event::text AS event, f.ord FROM ROWS FROM (unnest(%(f_sid)s::bigint[]), "
              "json_array_elements(%(f_event)s::json)) WITH ORDINALITY AS f (sid, event, ord)) AS f ORDER BY f.ord")


def flow_inputs_sql() -> str:
    return f"INSERT INTO flow_inputs (tenant, subscriber_id, event) SELECT %(t)s, sid, event FROM {_FLOW_ROWS}"


def _candidate_phone(e: ShopEvent, phone: str | None) -> str:
    """The phone whose subscriber statement 1 makes (the set-based kinds'; the rest make their own)."""
    if phone is None:
        return ""
    if isinstance(e, (ActivityEvent, CustomEvent, OrderEvent)):
        return phone
    if isinstance(e, CheckoutEvent) and (e.consent is None or not e.consent.accepted):
        return phone
    return ""


# ``_CLAIM_UNPREPARED``: statement 1 is planned at each execution. psycopg prepares a statement run
# five times, and the server then keeps one generic plan for the connection's life; a plan made while
# ``orders`` (or ``checkouts``, ``subscribers``) was empty or small reads that table as free, and its
# stored-ids lookup, ``order_id IN (SELECT oid FROM e)``, became a nested loop of the whole table
# against the batch: the flows bench's 2,000 orders completing checkouts, after 20,000 checkouts (no
# order stored yet), cost 1.08 s of the server's CPU in that one node (4,000,000 rows compared), 535 ms
# a batch; planned with its arrays, that lookup is a hash join of ~17 ms. A custom plan sees the
# arrays' lengths and the tables' current sizes; planning it costs the server ~0.5-0.7 ms an
# execution (docs/BENCHMARKS.md). (A new install's first batches meet the same hazard in production,
# until autovacuum's ANALYZE invalidates the plan.)


class PgEventBatch:
    """Mixed into ``PostgresStore``: ``_apply_batch`` in two statements (plus the per-event rest)."""

    if TYPE_CHECKING:
        def _apply_new(self, tx: Tx, tenant: str, event: ShopEvent, phone: str | None, now: float) -> Applied: ...

    def _apply_batch(self, tx: Tx, tenant: str, events: Sequence[tuple[ShopEvent, str | None]],
                     now: float) -> tuple[list[Applied], bool]:  # fmt: skip
        """The outcomes, and True: the flow inputs are queued here (``SqlStore._apply_events``)."""
        out, first = first_by_id(events)
        idx = list(first.values())
        phones = [_candidate_phone(*events[i]) for i in idx]
        oids = [e.order_id if isinstance(e := events[i][0], OrderEvent) and phones[k] else "" for k, i in enumerate(idx)]
        cids = [(e.checkout_id or "") if isinstance(e := events[i][0], (CheckoutEvent, OrderEvent)) and phones[k] else ""
                for k, i in enumerate(idx)]  # fmt: skip
        claimed: set[str] = set()
        sid_of: dict[str, int] = {}
        known_orders: set[str] = set()
        known_checkouts: dict[str, int] = {}  # stored checkout -> its subscriber
        done: set[str] = set()  # stored checkouts already completed
        flows = False
        # Planned at each execution, never prepared (``_CLAIM_UNPREPARED``).
        claim = {"ids": pg_array(list(first)), "phones": pg_array(phones), "oids": pg_array(oids), "cids": pg_array(cids),
                 "t": tenant, "now": now}  # fmt: skip
        for what, text, sid in tx.named_rows(claim_sql(), claim, prepare=False):
            if what == 0:
                claimed.add(text)
            elif what == 1:
                sid_of[text] = int(sid)
            elif what == 2:
                known_orders.add(text)
            elif what in (3, 5):
                known_checkouts[text] = int(sid)
                if what == 5:
                    done.add(text)
            else:
                flows = True
        fresh = sorted(i for i in idx if events[i][0].id in claimed)
        for eid, i in first.items():
            if eid not in claimed:
                out[i] = Applied(outcome="duplicate")
        orders, acts, checkouts, slow = _split(events, fresh, known_orders, known_checkouts, sid_of)
        missing = {events[i][1] for i in orders + acts + checkouts} - sid_of.keys()
        if missing:  # made by another transaction that committed while statement 1 ran (not in its snapshot)
            sid_of.update((p, int(s)) for p, s in tx.rows(
                "SELECT phone, id FROM subscribers WHERE tenant = ? AND phone = ANY(?::text[])", (tenant, sorted(missing))))  # type: ignore[arg-type] # fmt: skip
        inline_flows = flows and not slow
        if orders or acts or checkouts:
            _fast_outcomes(out, events, orders, acts, checkouts, sid_of, done)
            params = _write_params(events, orders, acts, checkouts, sid_of, tenant, now)
            if inline_flows:
                params.update(_flow_params(events, fresh, out))
            tx.named_run(write_sql(inline_flows), params, prepare=False)  # as statement 1: _CLAIM_UNPREPARED
        for i in slow:
            e, phone = events[i]
            out[i] = self._apply_new(tx, tenant, e, phone, now)
        if flows and not (inline_flows and (orders or acts or checkouts)):
            fparams = _flow_params(events, fresh, out)
            if fparams["f_sid"]:
                tx.named_run(flow_inputs_sql(), {"t": tenant, **fparams})
        return out, True  # type: ignore[return-value]


def _split(events: Sequence[tuple[ShopEvent, str | None]], fresh: list[int], known_orders: set[str],
           known_checkouts: dict[str, int], sid_of: dict[str, int]) -> tuple[list[int], list[int], list[int], list[int]]:  # fmt: skip
    """(new orders, activities, new checkouts, the rest) among the claimed events, each in arrival order:
    ``EventBatch._split``'s rule, and a checkout whose id is neither stored nor named by another event.
    An order completing a stored checkout of another subscriber is left to the per-event code (which
    recomputes that subscriber's aggregates and names them in ``Applied.others``)."""
    named = Counter(events[i][0].order_id for i in fresh if isinstance(events[i][0], (OrderEvent, FulfillmentEvent)))  # type: ignore[union-attr]
    carts = Counter(c for i in fresh if (c := getattr(events[i][0], "checkout_id", None)) is not None)
    orders, acts, checkouts, slow = [], [], [], []
    for i in fresh:
        e, phone = events[i]
        cart, sid = getattr(e, "checkout_id", None), sid_of.get(phone or "")
        own_cart = cart is None or (carts[cart] == 1 and known_checkouts.get(cart, sid) == sid)
        if phone is None:
            slow.append(i)
        elif isinstance(e, OrderEvent) and named[e.order_id] == 1 and e.order_id not in known_orders and own_cart:
            orders.append(i)
        elif isinstance(e, (ActivityEvent, CustomEvent)):
            acts.append(i)
        elif (isinstance(e, CheckoutEvent) and (e.consent is None or not e.consent.accepted) and carts[e.checkout_id] == 1
              and e.checkout_id not in known_checkouts):  # fmt: skip
            checkouts.append(i)
        else:
            slow.append(i)
    return orders, acts, checkouts, slow


def _write_params(events: Sequence[tuple[ShopEvent, str | None]], orders: list[int], acts: list[int], checkouts: list[int],
                  sid_of: dict[str, int], tenant: str, now: float) -> dict[str, Any]:  # fmt: skip
    os_: list[Any] = [events[i][0] for i in orders]
    items = [(e.order_id, it) for e in os_ for it in e.items]
    a_ev: list[Any] = [events[i][0] for i in acts]
    k_ev: list[Any] = [events[i][0] for i in checkouts]
    a, n = pg_array, functools.partial(pg_array, numeric=True)
    return {
        "t": tenant, "now": now,
        "o_id": a([e.order_id for e in os_]), "o_sid": n([sid_of[events[i][1]] for i in orders]),  # type: ignore[index]
        "o_total": n([e.total for e in os_]), "o_cur": a([e.currency for e in os_]),
        "o_pay": a([e.payment_status for e in os_]), "o_fs": a([e.fulfillment_status for e in os_]),
        "o_disc": a([e.discount_code for e in os_]),
        "o_created": n([e.created_at if e.created_at is not None else e.at for e in os_]), "o_at": n([e.at for e in os_]),
        "o_cid": a([e.checkout_id for e in os_]),
        # last_abandoned_checkout_at recomputed: a new checkout's subscriber, an order's that completes one
        "r_sid": sorted({sid_of[events[i][1]] for i in checkouts}  # type: ignore[index]
                        | {sid_of[events[i][1]] for i in orders if events[i][0].checkout_id is not None}),  # type: ignore[index,union-attr]
        "done": [e.checkout_id for e in os_ if e.checkout_id is not None],
        "i_oid": a([o for o, _ in items]), "i_product": a([it.product for _, it in items]),
        "i_category": a([it.category for _, it in items]), "i_price": n([it.price for _, it in items]),
        "i_qty": n([it.quantity for _, it in items]),
        "a_sid": n([sid_of[events[i][1]] for i in acts]),  # type: ignore[index]
        "a_kind": a([e.kind if isinstance(e, ActivityEvent) else e.name for e in a_ev]),
        "a_at": n([e.at for e in a_ev]), "a_props": _json.encode([e.properties for e in a_ev]).decode(),
        "c_id": a([e.checkout_id for e in k_ev]), "c_sid": n([sid_of[events[i][1]] for i in checkouts]),  # type: ignore[index]
        "c_url": a([e.url for e in k_ev]), "c_value": n([e.value for e in k_ev]), "c_at": n([e.at for e in k_ev]),
        "c_status": a([e.status for e in k_ev]),
    }  # fmt: skip


def _flow_params(events: Sequence[tuple[ShopEvent, str | None]], fresh: list[int],
                 out: Sequence[Applied | None]) -> dict[str, Any]:  # fmt: skip
    """Every claimed event's flow inputs, in arrival order (``flow_sql.applied_inputs``' rows, as the
    per-event path queues them: a checkout's end goes to the checkout's own subscriber)."""
    from campaigns.store.flow_sql import _event_encoder, applied_inputs

    f_sid: list[int] = []
    f_event: list[Any] = []
    for i in fresh:
        applied = out[i]
        assert applied is not None
        for sid, fe in applied_inputs(events[i][0], applied):
            f_sid.append(sid)
            f_event.append(fe)
    return {"f_sid": f_sid, "f_event": _event_encoder.encode(f_event).decode()}


def _fast_outcomes(out: list[Applied | None], events: Sequence[tuple[ShopEvent, str | None]], orders: list[int],
                   acts: list[int], checkouts: list[int], sid_of: dict[str, int], done: set[str]) -> None:  # fmt: skip
    """The set-based events' outcomes (``done``: the stored checkouts already completed). A set-based
    order's checkout is its own subscriber's or new (``_split``), so its first completion is heard
    by the order's subscriber; a new checkout is its event's subscriber's."""
    for i in orders:
        e: Any = events[i][0]
        cid, sid = e.checkout_id, sid_of[events[i][1]]  # type: ignore[index]
        changed = new_order_changes((it.category for it in e.items), checkout=cid is not None)
        end = None if cid is None or cid in done else ("completed", sid)
        out[i] = Applied(outcome="applied", subscriber_id=sid, changed=changed, checkout_end=end)  # type: ignore[arg-type]
    for i in acts:
        e = events[i][0]
        kind = e.kind if isinstance(e, ActivityEvent) else e.name
        changed = frozenset({"activities", "subscriber_stats"} if kind in _ACTIVITY_STAT else {"activities"})
        out[i] = Applied(outcome="applied", subscriber_id=sid_of[events[i][1]], changed=changed)  # type: ignore[index]
    for i in checkouts:  # new checkouts: neither stored nor named by another event of the batch
        status, sid = events[i][0].status, sid_of[events[i][1]]  # type: ignore[union-attr,index]
        end = (status, sid) if status in ("abandoned", "completed") else None
        out[i] = Applied(outcome="applied", subscriber_id=sid, changed=_CHECKOUT_CHANGED, checkout_end=end)  # type: ignore[arg-type]
