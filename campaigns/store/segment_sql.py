"""A segment tree -> a SQL ``WHERE`` clause over ``subscribers s``, for SQLite and PostgreSQL.

``compile_segment(seg, dialect, tenant, now)`` returns ``(where, params)``: ``where`` already
includes ``s.tenant = ?``; ``params`` is a list bound by position in the engine's own style
(``?`` on SQLite, ``%s`` on PostgreSQL/psycopg). Every value of the tree is a bound parameter; the only text
spliced into the SQL comes from this module's own tables (column names, operators).

Agreement with ``campaigns.core.segments.evaluate`` is the contract (tests/campaigns/
test_segment_agreement.py checks it on random data and random trees, on both engines):

- Every leaf compiles to a two-valued expression (``COALESCE(..., FALSE)`` or ``s.id [NOT] IN
  (subquery)`` over non-null ids), so ``NOT`` and ``OR`` behave as in Python, never as SQL's
  three-valued logic.
- Aggregates and event conditions are *uncorrelated* ``IN`` subqueries: each runs once per
  count (SQLite builds an ephemeral index, PostgreSQL a hashed subplan), not once per subscriber.
  When the condition holds for a subscriber with no row at all (``orders_count < 3``, "no click in
  30 days" as ``count eq 0``), it compiles to ``NOT IN`` (the rows for which it fails), because
  a missing aggregates row reads as ``Stats()`` and a missing event as a count/sum of 0.
- Numbers are compared as doubles (PostgreSQL ``DOUBLE PRECISION``, as Python's ``float``), text
  by code point (``COLLATE "C"`` on PostgreSQL; SQLite's BINARY), ``contains`` is case-sensitive
  (``instr`` / ``strpos``; ``LIKE`` would fold ASCII case on SQLite only).
- Time windows: the cutoff ``now - days * 86400`` is computed here in Python once and bound,
  exactly as ``evaluate`` computes it.
- Order conditions without a filter and item conditions filtered by category at most, over a
  whole audience (not ``only``), read ``order_rollups`` (campaigns/store/rollups.py) for the
  buckets wholly inside the window and the orders for the part straddling its edge: the same rows,
  summed ahead (buckets are a power of two of seconds, so the edge is exact).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

import msgspec

from campaigns.store import rollups
from campaigns.core.segments import (
    FIELD_DEFAULTS,
    FIELDS,
    NEGATED,
    AllOf,
    AnyOf,
    Attribute,
    Event,
    Field,
    Not,
    RfmTier,
    Segment,
    Tag,
    aggregate_holds,
    birthday_keys,
    DAY,
    EDGE,
    expand_rfm,
    field_op_holds,
    walk,
)

__all__ = ["Dialect", "compile_edges", "compile_segment", "members_from", "order_edges", "order_shifts"]

Dialect = Literal["sqlite", "postgres"]

_CMP = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_EVENT_FROM = {
    "order": ("orders o", "o"),
    # CROSS JOIN: SQLite keeps the order written (see `event`); left to itself it may walk every
    # order, or every item, to avoid a sort.
    "item": ("order_items i CROSS JOIN orders o", "i"),
    "checkout": ("checkouts c", "c"),
    "activity": ("activities a", "a"),
}
_ITEM_COLUMNS = frozenset({"product", "category"})
_SHORT_LIST = 32  # longer `in` lists are one JSON (SQLite) or array (PostgreSQL) parameter


class _Compiler:
    def __init__(self, dialect: Dialect, tenant: str, now: float, only: list[int] | None = None) -> None:
        if dialect not in ("sqlite", "postgres"):
            raise ValueError(f"unknown SQL dialect {dialect!r}")
        self.pg = dialect == "postgres"
        self.now = now
        self.params: dict[str, Any] = {}
        self.tenant = self.p(tenant)
        self.only = only
        self._only_json: str | None = None

    def within(self, sub: str) -> str:
        """`` AND <sub> IN (the subscribers of only)`` when the compile is restricted, else nothing."""
        if self.only is None:
            return ""
        if self.pg:  # a join on the ids (an index probe each); `= ANY(array)` would scan the table
            return f" AND {sub} IN (SELECT unnest({self.p(self.only)}::bigint[]))"
        # encoded once per compile: a segment restricts many subqueries
        return f" AND {sub} IN (SELECT value FROM {self.only_table()})"

    def only_table(self) -> str:
        """SQLite: the subscribers of ``only`` as a table (``value``), to drive a join from."""
        if self._only_json is None:
            self._only_json = msgspec.json.encode(self.only).decode()
        return f"json_each({self.p(self._only_json)})"

    def p(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"%({name})s" if self.pg else f":{name}"

    def num(self, value: Any) -> str:
        return self.p(float(value))

    def text_list(self, values: Any) -> str:
        values = [str(v) for v in values]
        return f"{self.p(values)}::text[]" if self.pg else f"(SELECT value FROM json_each({self.p(json.dumps(values))}))"

    def num_list(self, values: Any) -> str:
        values = [float(v) for v in values]
        return f"{self.p(values)}::float8[]" if self.pg else f"(SELECT value FROM json_each({self.p(json.dumps(values))}))"

    def in_list(self, expr: str, values: Any, numeric: bool) -> str:
        if not self.pg and len(values) <= _SHORT_LIST:  # SQLite: faster than json_each
            return f"{expr} IN ({', '.join(self.num(v) if numeric else self.p(str(v)) for v in values)})"
        lst = self.num_list(values) if numeric else self.text_list(values)
        return f"{expr} = ANY({lst})" if self.pg else f"{expr} IN {lst}"

    def contains(self, expr: str, value: str) -> str:
        return f"strpos({expr}, {self.p(value)}) > 0" if self.pg else f"instr({expr}, {self.p(value)}) > 0"

    # ---- nodes ----

    def node(self, seg: Segment) -> str:
        match seg:
            case AllOf(items=items):
                return "(" + " AND ".join(self.siblings(items, " AND ")) + ")" if items else "(1 = 1)"
            case AnyOf(items=items):
                return "(" + " OR ".join(self.siblings(items, " OR ")) + ")" if items else "(1 = 0)"
            case Not(item=item):
                return f"(NOT {self.node(item)})"
            case Field():
                return self.field(seg)
            case Attribute():
                return self.attribute(seg)
            case Tag(tag=tag):
                return self.semi(f"subscriber_tags tg WHERE tg.tenant = {self.tenant} AND tg.tag = {self.p(tag)}",
                                 "tg.subscriber_id")  # fmt: skip
            case RfmTier(tier=tier):
                return self.node(expand_rfm(tier))
            case Event():
                return self.event(seg)
        raise TypeError(f"not a segment node: {seg!r}")

    def semi(self, from_where: str, sub: str, *, negate: bool = False, restricted: bool = False) -> str:
        """Whether ``s`` has a row in ``FROM <from_where>`` (``sub``: its never-NULL subscriber id).
        SQLite: an uncorrelated ``IN``, run once into an ephemeral index. PostgreSQL: ``EXISTS``,
        which it turns into a hash semi/anti join at the top of the WHERE and otherwise into a
        hashed subplan *or* an index probe per subscriber; ``NOT IN``/``IN`` there only has the
        hashed subplan, and without enough ``work_mem`` falls back to a rescan per subscriber.
        ``restricted``: ``from_where`` already holds ``within(sub)`` (SQLite: a second copy parsed
        the ids' JSON and built an index of them again)."""
        if self.pg:
            return f"({'NOT ' if negate else ''}EXISTS (SELECT 1 FROM {from_where} AND {sub} = s.id))"
        return f"s.id {'NOT ' if negate else ''}IN (SELECT {sub} FROM {from_where}{'' if restricted else self.within(sub)})"

    def siblings(self, items: tuple[Segment, ...], joiner: str) -> list[str]:
        """The children of one all/any. Aggregate conditions that a subscriber without a value
        fails are merged into one subquery over ``subscriber_stats`` (one row per subscriber, so
        "a row where p and a row where q" is "a row where p and q"): one scan instead of one each,
        which is what RFM tiers and "orders > 2 and spent > $100" are made of."""
        flat: list[Segment] = []
        for item in items:  # an RFM tier inside an `all` is more of the same `all`
            flat.extend(expand_rfm(item.tier).items if isinstance(item, RfmTier) and joiner == " AND " else (item,))
        stats = [i for i in flat if isinstance(i, Field) and FIELDS[i.field].table == "subscriber_stats"
                 and not field_op_holds(i.op, FIELD_DEFAULTS.get(i.field), i.value, self.now)]  # fmt: skip
        if len(stats) < 2 or self.only is not None:  # restricted: each is a test on the joined row
            return [self.node(i) for i in flat]
        parts = [self.node(i) for i in flat if not any(i is f for f in stats)]
        preds = [f"(st.{f.field} IS NOT NULL AND {self.field_pred(f, f'st.{f.field}', FIELDS[f.field].kind)})"
                 for f in stats]  # fmt: skip
        parts.append(self.semi(f"subscriber_stats st WHERE st.tenant = {self.tenant} AND ({joiner.join(preds)})",
                               "st.subscriber_id"))  # fmt: skip
        return parts

    def field(self, seg: Field) -> str:
        spec = FIELDS[seg.field]
        default = FIELD_DEFAULTS.get(seg.field)
        if spec.table == "subscribers":
            expr = f"s.{seg.field}" if default is None else f"COALESCE(s.{seg.field}, {self.p(default)})"
            return f"COALESCE({self.field_pred(seg, expr, spec.kind)}, FALSE)"
        # An aggregate: a subscriber without a stats row (or with NULL there) reads the default, so
        # only rows with a value can differ from it. The predicate sees a non-NULL column: it is
        # two-valued, and stays a plain comparison the engines can run off an index.
        col = f"st.{seg.field}"
        pred = self.field_pred(seg, col, spec.kind)
        holds = field_op_holds(seg.op, default, seg.value, self.now)  # so does everyone without a value
        if self.only is not None:
            # Restricted to a few subscribers: their own aggregates row, joined once by the pass's
            # statement (``members_from``), is the whole answer; a subquery here was a hashed subplan
            # that read every row of ``subscriber_stats`` per tree (PostgreSQL) or probed it per id
            # per tree (SQLite). The same two-valued rule as the subqueries': a row with a value
            # decides, no row or NULL reads the default.
            if holds:
                return f"(NOT COALESCE({col} IS NOT NULL AND NOT ({pred}), FALSE))"
            return f"COALESCE({col} IS NOT NULL AND {pred}, FALSE)"
        rows = f"subscriber_stats st WHERE st.tenant = {self.tenant} AND {col} IS NOT NULL"
        if holds:
            return self.semi(f"{rows} AND NOT ({pred})", "st.subscriber_id", negate=True)
        return self.semi(f"{rows} AND {pred}", "st.subscriber_id")

    def field_pred(self, seg: Field, expr: str, kind: str) -> str:
        op, value = seg.op, seg.value
        base = NEGATED.get(op, op)
        if base != op:
            return f"NOT COALESCE({self.field_pred(Field(field=seg.field, op=base, value=value), expr, kind)}, FALSE)"
        numeric = kind in ("number", "time")
        match op:
            case "exists":
                return f"{expr} IS NOT NULL"
            case "in":
                return self.in_list(expr, value, numeric)
            case "contains":
                return self.contains(expr, value)
            case "within_days":
                return f"{expr} >= {self.num(self.now - value * DAY)}"
            case "before_days":
                return f"{expr} < {self.num(self.now - value * DAY)}"
            case "in_next_days":
                return self.in_list(f"substr({expr}, 6, 5)", sorted(birthday_keys(self.now, value)), False)
        if numeric:
            return f"{expr} {_CMP[op]} {self.num(value)}"
        collate = ' COLLATE "C"' if self.pg and op != "eq" else ""  # ordering by code point, as Python
        return f"{expr}{collate} {_CMP[op]} {self.p(value)}"

    def attribute(self, seg: Attribute) -> str:
        base = NEGATED.get(seg.op, seg.op)
        if base != seg.op:
            return f"(NOT {self.attribute(Attribute(name=seg.name, op=base, value=seg.value))})"
        return f"COALESCE({self.attribute_pred(seg)}, FALSE)"

    def attribute_pred(self, seg: Attribute) -> str:
        if self.pg:
            key = self.p(seg.name)
            typ, val = f"jsonb_typeof(s.attributes::jsonb -> {key}::text)", f"(s.attributes::jsonb ->> {key}::text)"
            string, number = "'string'", "'number'"
        else:
            path = self.p(f"$.{seg.name}")
            typ, val = f"json_type(s.attributes, {path})", f"json_extract(s.attributes, {path})"
            string, number = "'text'", "'integer', 'real'"
        as_number = f"CAST({val} AS {'DOUBLE PRECISION' if self.pg else 'REAL'})"

        def eq(v: Any) -> str:
            if isinstance(v, bool):
                lit = "'true'" if v else "'false'"
                return f"({typ} = 'boolean' AND {val} = {lit})" if self.pg else f"({typ} = {lit})"
            if isinstance(v, str):
                return f"(CASE WHEN {typ} = {string} THEN {val} = {self.p(v)} ELSE FALSE END)"
            return f"(CASE WHEN {typ} IN ({number}) THEN {as_number} = {self.num(v)} ELSE FALSE END)"

        match seg.op:
            case "exists":
                return f"({typ} IS NOT NULL AND {typ} <> 'null')"
            case "eq":
                return eq(seg.value)
            case "in":
                return "(" + " OR ".join(eq(v) for v in seg.value) + ")"
            case "contains":
                return f"(CASE WHEN {typ} = {string} THEN {self.contains(val, seg.value)} ELSE FALSE END)"
        return f"(CASE WHEN {typ} IN ({number}) THEN {as_number} {_CMP[seg.op]} {self.num(seg.value)} ELSE FALSE END)"

    def event(self, seg: Event) -> str:
        if _rolled_up(seg) and (self.only is None or seg.source == "item"):
            # Restricted to a few subscribers, an item condition reads their category's buckets (one
            # seek each) instead of every order of theirs and its items; an order condition reads
            # their orders through a covering index already (as few rows as buckets, at a few orders
            # a bucket).
            return self.rolled_up(seg)
        table, a = _EVENT_FROM[seg.source]
        if seg.source == "item" and (self.only is not None or not any(col in _ITEM_COLUMNS for col, _ in seg.where)):
            # no product/category, or a few subscribers: their orders first, then those orders' items
            table = "orders o CROSS JOIN order_items i"
        conds = [f"{a}.tenant = {self.tenant}"]
        if seg.source == "item":
            conds.append("o.tenant = i.tenant AND o.order_id = i.order_id")
        sub = "o.subscriber_id" if seg.source == "item" else f"{a}.subscriber_id"
        # Restricted on SQLite, orders and activities are read driven by the ids (CROSS JOIN keeps that
        # order): one seek each to (subscriber, [kind,] the window's start) in the per-subscriber index
        # (`orders_segment_spend`, `activities_subscriber`), so a window reads its own rows only; with
        # `subscriber_id IN (ids)` SQLite read every row of each subscriber and tested the time after.
        driven = self.only is not None and not self.pg and seg.source in ("order", "activity")
        if driven:
            table = f"{self.only_table()} j CROSS JOIN {table}"
            conds.append(f"{sub} = j.value")
        else:
            conds.append(f"{sub} IS NOT NULL{self.within(sub)}")
        time = {"order": "o.created_at", "item": "o.created_at", "activity": "a.at",
                "checkout": {"abandoned": "c.abandoned_at", "completed": "c.completed_at"}.get(seg.state or "", "c.started_at")}[seg.source]  # fmt: skip
        if seg.source == "activity":
            conds.append(f"a.kind = {self.p(seg.kind)}")
        if seg.state == "abandoned":
            conds.append("c.abandoned_at IS NOT NULL AND c.completed_at IS NULL")
        elif seg.state == "completed":
            conds.append("c.completed_at IS NOT NULL")
        if seg.within_days is not None:
            # Restricted to a few subscribers (`only`), SQLite must probe their rows by owner, not range
            # over the tenant's window by time: `+` keeps the time index out of the choice.
            plus = "+" if self.only is not None and not self.pg and not driven else ""
            conds.append(f"{plus}{time} >= {self.num(self.now - seg.within_days * DAY)}")
        for column, allowed in seg.where:
            owner = "i" if column in _ITEM_COLUMNS else "o"
            conds.append(self.in_list(f"{owner}.{column}", allowed, False))
        from_where = f"{table} WHERE " + " AND ".join(conds)
        rows = f"SELECT {sub} FROM {from_where}"
        zero, one = aggregate_holds(seg, 0), aggregate_holds(seg, 1)
        if seg.measure == "count" and _same_for_every_positive_count(seg, one):
            if zero == one:  # `count >= 0`: everyone (or no one), rows or not
                return "(1 = 1)" if zero else "(1 = 0)"
            return self.semi(from_where, sub, negate=zero, restricted=True)  # `conds` holds within(sub)
        if seg.measure == "count":
            measure = "COUNT(*)"
        else:
            measure = f"COALESCE(SUM({'i.quantity' if seg.measure == 'quantity' else _SUM[seg.source]}), 0)"
        if self.pg:
            measure = f"CAST({measure} AS DOUBLE PRECISION)"
        having = f"{measure} {_CMP[seg.op]} {self.num(seg.value)}"
        # SQLite would rather walk every order in owner order than sort a window's rows; `+` keeps
        # the grouping off that index, so a window reads only its own rows (30 days of 2 years: 5x).
        group = f"+{sub}" if seg.within_days is not None and not self.pg else sub
        if zero:  # no rows at all (count/sum 0) holds: exclude the subscribers whose rows fail it
            return f"s.id NOT IN ({rows} GROUP BY {group} HAVING NOT ({having}))"
        return f"s.id IN ({rows} GROUP BY {group} HAVING {having})"

    def rolled_up(self, seg: Event) -> str:
        """An order or item condition (no filter but the items' category) over a whole audience, from
        ``order_rollups`` (campaigns/store/rollups.py): the buckets wholly inside the window (all of
        them without one) from the rollups, the rest of the window (the part of the bucket straddling
        its edge, ``cutoff <= created_at < first whole bucket``) from the orders and items themselves."""
        t = self.tenant
        if seg.source == "order":
            key = "r.key = 'o'"
        elif seg.where:
            key = self.in_list("r.key", [rollups.item_key(c) for c in dict(seg.where)["category"]], False)
        else:
            key = "r.key <> 'o'"
        rolled = {"count": "r.n", "sum": "r.amount", "quantity": "r.quantity"}[seg.measure]
        if self.only is not None and not self.pg:
            # driven by the ids (CROSS JOIN: SQLite keeps the order written), so each is one seek to
            # (subscriber, key, first bucket); with `subscriber_id IN (...)` SQLite seeks on the
            # subscriber alone and reads every key and bucket of theirs (4x the CPU)
            rollup_rows = f"{self.only_table()} j CROSS JOIN order_rollups r WHERE r.subscriber_id = j.value AND"
        else:
            rollup_rows = "order_rollups r WHERE"
        parts = [f"SELECT r.subscriber_id AS sid, {rolled} AS v FROM {rollup_rows} r.tenant = {t} AND {key}"
                 f"{self.within('r.subscriber_id') if self.pg else ''}"]
        if seg.within_days is not None:
            cutoff = self.now - seg.within_days * DAY
            first = math.ceil(cutoff / rollups.BUCKET_S)  # the first bucket wholly inside the window
            parts[0] += f" AND r.bucket >= {self.p(first)}"
            edge = first * rollups.BUCKET_S  # exact: BUCKET_S is a power of two
            if cutoff < edge:
                if seg.source == "order":
                    raw, frm = ("1" if seg.measure == "count" else "o.total"), "orders o WHERE"
                else:
                    raw = {"count": "1", "sum": "i.price * i.quantity", "quantity": "i.quantity"}[seg.measure]
                    frm = "orders o CROSS JOIN order_items i WHERE i.tenant = o.tenant AND i.order_id = o.order_id AND"
                    if seg.where:
                        frm += " " + self.in_list("i.category", dict(seg.where)["category"], False) + " AND"
                parts.append(f"SELECT o.subscriber_id AS sid, {raw} AS v FROM {frm} o.tenant = {t}"
                             f"{self.within('o.subscriber_id')} AND o.created_at >= {self.num(cutoff)} "
                             f"AND o.created_at < {self.num(edge)}")  # fmt: skip
        zero, one = aggregate_holds(seg, 0), aggregate_holds(seg, 1)
        if seg.measure == "count" and _same_for_every_positive_count(seg, one):  # any row at all (rows have n >= 1)
            if zero == one:
                return "(1 = 1)" if zero else "(1 = 0)"
            if self.pg:  # one EXISTS over the union: a semi (anti) join; `EXISTS a OR EXISTS b` was 8x slower
                return f"({'NOT ' if zero else ''}EXISTS (SELECT 1 FROM ({' UNION ALL '.join(parts)}) x WHERE x.sid = s.id))"
            return f"s.id {'NOT ' if zero else ''}IN ({' UNION ALL '.join(f'SELECT sid FROM ({p})' for p in parts)})"
        measure = "COALESCE(SUM(u.v), 0)"
        if self.pg:
            measure = f"CAST({measure} AS DOUBLE PRECISION)"
        having = f"{measure} {_CMP[seg.op]} {self.num(seg.value)}"
        rows = f"SELECT u.sid FROM ({' UNION ALL '.join(parts)}) u GROUP BY u.sid"
        if zero:
            return f"s.id NOT IN ({rows} HAVING NOT ({having}))"
        return f"s.id IN ({rows} HAVING {having})"


def _rolled_up(seg: Event) -> bool:
    """Whether ``order_rollups`` answers the condition: orders without a filter, items filtered by
    category at most (the rollups keep no other column)."""
    if seg.source == "order":
        return not seg.where
    return seg.source == "item" and all(col == "category" for col, _ in seg.where)


_SUM = {"order": "o.total", "item": "i.price * i.quantity", "checkout": "c.value"}


def _same_for_every_positive_count(seg: Event, one: bool) -> bool:
    """Whether the comparison has the same answer for every count >= 1 (so: any row at all)."""
    if seg.op in ("gt", "gte"):
        return one
    if seg.op in ("lt", "lte"):
        return not one
    return seg.value == 0


def members_from(dialect: Dialect) -> str:
    """What a restricted compile (``compile_segment(..., only=...)``) is evaluated over: each subscriber
    with its aggregates row (``st``, NULLs when it has none), so a condition on the aggregates is a
    column test, not a subquery per tree: ``SELECT s.id, CASE WHEN <where> ... FROM <this> WHERE ...``.
    PostgreSQL: a lateral probe of the row by its key (``LIMIT 1``: at most one row, and it keeps the
    planner from turning the join into a hash of every aggregates row of the shop, 20x the pass's
    subscribers at 20k and growing with the audience, not with the batch)."""
    if dialect == "postgres":
        return ("subscribers s LEFT JOIN LATERAL (SELECT * FROM subscriber_stats x WHERE x.subscriber_id = s.id "
                "AND x.tenant = s.tenant LIMIT 1) st ON TRUE")  # fmt: skip
    return "subscribers s LEFT JOIN subscriber_stats st ON st.subscriber_id = s.id AND st.tenant = s.tenant"


def compile_segment(seg: Segment, dialect: Dialect, tenant: str, now: float,
                    only: list[int] | None = None, *, caller_restricts: bool = False) -> tuple[str, list[Any]]:  # fmt: skip
    """``(where, params)`` selecting the tenant's subscribers in ``seg`` at ``now``:
    ``SELECT count(*) FROM subscribers s WHERE <where>``.

    ``only``: the answer for these subscriber ids alone (live membership after a batch of events).
    Every subquery is then restricted to them too, so it reads their rows through the per-subscriber
    indexes instead of the tenant's whole window; for a subscriber of ``only`` the answer is the same
    (a subquery's rows for other subscribers never decide it). The restricted ``where`` is over
    ``members_from(dialect)`` (the subscriber and its aggregates row ``st``), not ``subscribers s`` alone.

    ``caller_restricts`` (SQLite): the statement the ``where`` goes into restricts ``s.id`` to
    ``only`` itself (a membership pass's: ``SqlStore._read_group``), so the ``where`` leaves that test
    out: a pass's statement holds a ``where`` per segment, and each copy of the test parsed the ids'
    JSON and built an index of them again (4.4 of 30 ms for 13 trees over 950 subscribers). For
    any other subscriber the ``where`` is then no answer. PostgreSQL keeps the test (its pass's plans
    were measured with it)."""
    c = _Compiler(dialect, tenant, now, only)
    outer = "" if caller_restricts and not c.pg else c.within("s.id")
    where = f"s.tenant = {c.tenant}{outer} AND {c.node(seg)}"
    return _positional(c, where)


def _positional(c: _Compiler, text: str) -> tuple[str, list[Any]]:
    """Parameters are named while compiling (a subquery's are made before the text around them),
    then made positional in textual order: the engine's own style (`?` / `%s`), for any DB-API cursor."""
    params: list[Any] = []

    def positional(m: re.Match[str]) -> str:
        params.append(c.params[m.group(1)])
        return "%s" if c.pg else "?"

    return _PLACEHOLDER[c.pg].sub(positional, text), params


def compile_edges(seg: Segment, dialect: Dialect, tenant: str, now: float, only: list[int], *,
                  orders: bool = True) -> tuple[str, list[Any]] | None:  # fmt: skip
    """SQL answering ``(subscriber_id, at)``: for each subscriber of ``only``, the earliest instant after
    ``now`` at which time alone *may* change its membership of ``seg`` (a window edge passing one of
    its rows: the instants ``segments.next_change`` checks; the next UTC midnight for birthdays); none
    when time alone cannot. A timer set then re-evaluates exactly (``next_change``) and sets the next
    one, so an early edge costs one re-evaluation and never a missed change. None if ``seg`` has no
    clock. ``orders=False``: without the edges of its order and item windows (``order_edges`` reads
    those of several segments in one scan); None if nothing else is left."""
    c = _Compiler(dialect, tenant, now, only)
    parts: list[str] = []
    for node in walk(seg):
        match node:
            case Event(source="order" | "item", within_days=w) if w is not None and not orders:
                continue
            case Field(field=f, op=op, value=days) if NEGATED.get(op, op) in ("within_days", "before_days"):
                table, key = ("subscribers x", "x.id") if FIELDS[f].table == "subscribers" else (
                    "subscriber_stats x", "x.subscriber_id")  # fmt: skip
                shift = c.num(days * DAY + EDGE)
                parts.append(f"SELECT {key} AS sid, x.{f} + {shift} AS at FROM {table} WHERE x.tenant = {c.tenant}"
                             f"{c.within(key)} AND {_after(c, f'x.{f}', days * DAY + EDGE, now)}")  # fmt: skip
            case Field(op=op) if NEGATED.get(op, op) == "in_next_days":
                midnight = (math.floor(now / DAY) + 1) * DAY
                parts.append(f"SELECT s.id AS sid, {c.num(midnight)} AS at FROM subscribers s WHERE s.tenant = {c.tenant}"
                             f"{c.within('s.id')}")  # fmt: skip
            case Event(source=source, state=state, kind=kind, within_days=w) if w is not None:
                table, sub, time = _EDGE_ROWS[source if source != "checkout" else f"checkout.{state}"]
                extra = f" AND a.kind = {c.p(kind)}" if source == "activity" else ""
                parts.append(f"SELECT {sub} AS sid, {time} + {c.num(w * DAY + EDGE)} AS at FROM {table} "
                             f"WHERE {sub[0]}.tenant = {c.tenant}{c.within(sub)}{extra} AND "
                             f"{_after(c, time, w * DAY + EDGE, now)}")  # fmt: skip
    if not parts:
        return None
    return _positional(c, f"SELECT sid, MIN(at) FROM ({' UNION ALL '.join(parts)}) e GROUP BY sid")


def order_shifts(seg: Segment) -> list[float]:
    """The shifts (``days * DAY + EDGE``) of ``seg``'s order and item windows: their edges are instants
    of its subscribers' orders (``_EDGE_ROWS``), whatever the window's filter."""
    return [w * DAY + EDGE for node in walk(seg)
            if isinstance(node, Event) and node.source in ("order", "item") and (w := node.within_days) is not None]  # fmt: skip


def order_edges(shifts: list[tuple[int, list[float]]], dialect: Dialect, tenant: str, now: float,
                only: list[int]) -> tuple[str, list[Any], list[int]] | None:  # fmt: skip
    """The order and item window edges of several segments (``(segment id, order_shifts)``) for the
    subscribers of ``only``, in one scan of their orders in the widest window: SQL answering
    ``(subscriber_id, at_1, ..., at_k)``, one column a shift, and the segment each column belongs to.
    Each column is ``compile_edges``' part for that window: the least ``created_at + shift`` after
    ``now`` (NULL: none), over the same rows (a row a narrower window keeps is inside the range of the
    widest) and the same double sum. A membership pass's segments over orders (the year's spend,
    the last 30 days, shoes in 90 days) read their subscribers' orders once, not once each."""
    cols = [(seg_id, s) for seg_id, ss in shifts for s in ss]
    if not cols:
        return None
    c = _Compiler(dialect, tenant, now, only)
    widest = max(s for _, s in cols)
    mins = ", ".join(f"MIN(CASE WHEN o.created_at + {c.num(s)} > {c.num(now)} THEN o.created_at + {c.num(s)} END)"
                     for _, s in cols)  # fmt: skip
    sql, params = _positional(c, f"SELECT o.subscriber_id, {mins} FROM orders o WHERE o.tenant = {c.tenant}"
                                 f"{c.within('o.subscriber_id')} AND o.created_at > {c.num(now - widest - 1.0)} "
                                 "GROUP BY o.subscriber_id")  # fmt: skip
    return sql, params, [seg_id for seg_id, _ in cols]


def _after(c: _Compiler, time: str, shift: float, now: float) -> str:
    """``time + shift > now``, exactly as before (the double sum), behind a range on ``time`` alone that
    holds for every row it keeps (a second of slack is far more than the sum's rounding), so the
    engines read only the window's rows through the per-subscriber time indexes, not every row of the
    subscriber (``time + shift`` is an expression no index answers)."""
    return f"{time} > {c.num(now - shift - 1.0)} AND {time} + {c.num(shift)} > {c.num(now)}"


# (rows, their subscriber, their instant) whose window edges may move a windowed event condition
_EDGE_ROWS = {
    "order": ("orders o", "o.subscriber_id", "o.created_at"),
    "item": ("orders o", "o.subscriber_id", "o.created_at"),
    "activity": ("activities a", "a.subscriber_id", "a.at"),
    "checkout.started": ("checkouts c", "c.subscriber_id", "c.started_at"),
    "checkout.abandoned": ("checkouts c", "c.subscriber_id", "c.abandoned_at"),
    "checkout.completed": ("checkouts c", "c.subscriber_id", "c.completed_at"),
}


_PLACEHOLDER = {True: re.compile(r"%\((p\d+)\)s"), False: re.compile(r":(p\d+)\b")}
