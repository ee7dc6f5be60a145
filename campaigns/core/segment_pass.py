"""A membership pass in Python: every live segment's tree compiled once to a closure over the facts
of one subscriber that a pass reads set-based (issue 17, fifth pass).

Pure: no I/O, no clock (``now`` is an argument of every closure). ``campaigns.store.sql`` reads the
facts of a batch's changed subscribers once per pass (``Needs`` says which) and runs the closures;
``campaigns.store.segment_sql`` stays the path of counts and rebuilds, and the two must agree
(tests/campaigns/test_segment_pass.py: random data, random trees, both engines, against the SQL
restricted to the same subscribers).

The facts of a subscriber (``Facts``): its profile row, tags and aggregates (as ``evaluate`` reads
them: a ``SubscriberView``), its checkouts, its activities of the kinds the trees name (from the
earliest cutoff the trees need of that kind), its ``order_rollups`` rows of the keys the trees name
(campaigns/store/rollups.py: per time bucket, ``n``, ``amount``, ``quantity``), and its orders (with
their items) whose ``created_at`` lies in the part of a window that straddles a bucket edge
(``cutoff <= created_at < first whole bucket``, one range per distinct window). An order or item
condition sums the buckets wholly inside its window and those orders, exactly as the SQL does.

What the facts cannot decide (``compile_tree`` returns None; the pass runs that tree's SQL
instead): an order condition with a ``where`` filter (payment status, fulfilment status, currency,
discount code) and an item condition filtered by anything but its category: the rollups keep no
such column, and reading every order of every changed subscriber to decide them is the cost this
pass removes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import msgspec

from campaigns.core.model import SubscriberView
from campaigns.core.segments import (
    DAY,
    FIELD_DEFAULTS,
    FIELDS,
    AllOf,
    AnyOf,
    Attribute,
    Event,
    Field,
    Not,
    RfmTier,
    Segment,
    Tag,
    _attribute_holds,
    aggregate_holds,
    compare,
    event_rows,
    expand_rfm,
    field_op_holds,
    walk,
)

__all__ = ["BUCKET_S", "Closure", "EdgeOrder", "Facts", "Needs", "Rollup", "bucket", "compile_tree", "item_key", "needs_of", "rolled_up"]

# The rollups' time bucket (campaigns/store/rollups.py uses these): 2^22 s, about 48.5 days from the
# epoch, a power of two so that ``t / BUCKET_S`` is exact and a window's edge can be split exactly.
BUCKET_S = float(2**22)
ORDER_KEY = "o"


def bucket(t: float) -> int:
    """The bucket of instant ``t`` (exact: ``BUCKET_S`` is a power of two)."""
    return math.floor(t / BUCKET_S)


def item_key(category: str | None) -> str:
    return "i" if category is None else f"i:{category}"


# One ``order_rollups`` row of a subscriber: (key, bucket, n, amount, quantity).
Rollup = tuple[str, int, int, int, int]


# An order in a window's straddling part: (created_at, total, items as (category, price, quantity)).
EdgeOrder = tuple[float, int, list[tuple[str | None, int, int]]]


class Facts(msgspec.Struct, kw_only=True):
    """What a pass read of one subscriber: ``view`` without orders, its rollups, and its orders in a
    window's straddling part with their items."""

    view: SubscriberView
    rollups: list[Rollup] = msgspec.field(default_factory=list)
    orders: list[EdgeOrder] = msgspec.field(default_factory=list)


Closure = Callable[[Facts, float], bool]


def rolled_up(seg: Event) -> bool:
    """Whether the rollups answer an order or item condition: orders without a filter, items filtered
    by category at most (the SQL's ``_rolled_up``)."""
    if seg.source == "order":
        return not seg.where
    return seg.source == "item" and all(col == "category" for col, _ in seg.where)


def decidable(seg: Segment) -> bool:
    """Whether ``compile_tree`` decides ``seg`` from the facts a pass reads."""
    return all(rolled_up(n) for n in walk(seg) if isinstance(n, Event) and n.source in ("order", "item"))


class Needs(msgspec.Struct, kw_only=True):
    """What a pass reads for a set of trees: tags at all; the rollup keys (None: every item key too);
    the activity kinds, each from its earliest cutoff (None: all time); the straddling ranges of the
    windowed order/item conditions; whether their orders' items are needed; checkouts at all."""

    tags: bool = False
    order_key: bool = False
    item_keys: set[str] | None = msgspec.field(default_factory=set)
    activities: dict[str, float | None] = msgspec.field(default_factory=dict)
    ranges: set[tuple[float, float]] = msgspec.field(default_factory=set)
    items: bool = False
    checkouts: bool = False

    def keys(self) -> list[str] | None:
        """The rollup keys to read ([]: none; None: every key)."""
        if self.item_keys is None:
            return None
        return sorted(self.item_keys | ({ORDER_KEY} if self.order_key else set()))

    @property
    def rollups(self) -> bool:
        return self.order_key or self.item_keys is None or bool(self.item_keys)


def _edge(within: float, now: float) -> tuple[float, int, float]:
    """(cutoff, first bucket wholly inside the window, that bucket's start): the SQL's arithmetic."""
    cutoff = now - within * DAY
    first = math.ceil(cutoff / BUCKET_S)
    return cutoff, first, first * BUCKET_S


def needs_of(segs: list[Segment], now: float) -> Needs:
    needs = Needs()
    for seg in segs:
        for node in walk(seg):
            match node:
                case Tag():
                    needs.tags = True
                case Event(source="checkout"):
                    needs.checkouts = True
                case Event(source="activity", kind=kind, within_days=w):
                    cutoff = None if w is None else now - w * DAY
                    if kind not in needs.activities:
                        needs.activities[kind] = cutoff  # type: ignore[index]
                    else:
                        old = needs.activities[kind]  # type: ignore[index]
                        needs.activities[kind] = None if old is None or cutoff is None else min(old, cutoff)  # type: ignore[index]
                case Event(source="order" | "item", within_days=w, where=where):
                    if node.source == "order":
                        needs.order_key = True
                    elif not where:
                        needs.item_keys = None
                    elif needs.item_keys is not None:
                        needs.item_keys.update(item_key(c) for c in dict(where)["category"])
                    if w is not None:
                        cutoff, _, edge = _edge(w, now)
                        if cutoff < edge:
                            needs.ranges.add((cutoff, edge))
                            needs.items = needs.items or node.source == "item"
    return needs


# ---- closures -------------------------------------------------------------------------------


def compile_tree(seg: Segment) -> Closure | None:
    """``seg`` as ``f(facts, now) -> bool``, equal to ``evaluate(seg, full view, now)``; None when a
    condition cannot be decided from the facts (``decidable``)."""
    return _node(seg) if decidable(seg) else None


def _node(seg: Segment) -> Closure:
    match seg:
        case AllOf(items=items):
            fs = tuple(_node(i) for i in items)
            if len(fs) == 1:
                return fs[0]
            return lambda f, now: all(g(f, now) for g in fs)
        case AnyOf(items=items):
            fs = tuple(_node(i) for i in items)
            return lambda f, now: any(g(f, now) for g in fs)
        case Not(item=item):
            g = _node(item)
            return lambda f, now: not g(f, now)
        case Field():
            return _field(seg)
        case Attribute():
            return lambda f, now: _attribute_holds(seg, f.view)
        case Tag(tag=tag):
            return lambda f, now: tag in f.view.tags
        case RfmTier(tier=tier):
            return _node(expand_rfm(tier))
        case Event(source="order" | "item"):
            return _rolled(seg)
        case Event():
            return lambda f, now: aggregate_holds(seg, sum(m for _, m in event_rows(seg, f.view, now)))
    raise TypeError(f"not a segment node: {seg!r}")


_FAST = {"gt": float.__gt__, "gte": float.__ge__, "lt": float.__lt__, "lte": float.__le__, "eq": float.__eq__}


def _field(seg: Field) -> Closure:
    name, op, value = seg.field, seg.op, seg.value
    on_stats = FIELDS[name].table == "subscriber_stats"
    default = FIELD_DEFAULTS.get(name)
    if on_stats and FIELDS[name].kind == "number" and op in _FAST:
        # a number of the aggregates, a plain comparison (what RFM tiers and most trees are made of)
        cmp, bound = _FAST[op], float(value)

        def number(f: Facts, now: float) -> bool:
            v = getattr(f.view.stats, name)
            if v is None:
                v = default
            return v is not None and cmp(float(v), bound)

        return number

    def generic(f: Facts, now: float) -> bool:
        v = getattr(f.view.stats if on_stats else f.view.subscriber, name)
        return field_op_holds(op, default if v is None else v, value, now)

    return generic


def _rolled(seg: Event) -> Closure:
    """An order or item condition from the buckets inside its window and the straddling orders."""
    if seg.source == "order":
        keys: frozenset[str] | None = frozenset({ORDER_KEY})
    elif seg.where:
        keys = frozenset(item_key(c) for c in dict(seg.where)["category"])
    else:
        keys = None  # every item key
    index = {"count": 2, "sum": 3, "quantity": 4}[seg.measure]
    categories = dict(seg.where).get("category")
    within, op, value = seg.within_days, seg.op, seg.value

    def holds(f: Facts, now: float) -> bool:
        total = 0
        first = edge = cutoff = None
        if within is not None:
            cutoff, first, edge = _edge(within, now)
        for r in f.rollups:
            if (r[0] != ORDER_KEY if keys is None else r[0] in keys) and (first is None or r[1] >= first):
                total += r[index]
        if cutoff is not None and cutoff < edge:  # type: ignore[operator]
            for o in f.orders:
                if cutoff <= o[0] < edge:  # type: ignore[operator]
                    total += _order_measure(seg.source, seg.measure, o, categories)
        return compare(op, total, value)

    return holds


def _order_measure(source: str, measure: str, o: EdgeOrder, categories: tuple[str, ...] | None) -> int:
    if source == "order":
        return 1 if measure == "count" else o[1]
    out = 0
    for category, price, quantity in o[2]:
        if categories is None or category in categories:
            out += {"count": 1, "sum": price * quantity, "quantity": quantity}[measure]
    return out
