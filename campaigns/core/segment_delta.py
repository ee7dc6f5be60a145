"""Whether a batch's change to one subscriber can change a segment's answer (the delta test).

Pure: no I/O, no clock. The membership pass (``campaigns.service.audience``) re-reads a tree's SQL
for a subscriber only when this test says its answer *may* have changed: for most orders the new
aggregates stay on the same side of every threshold a tree names (``total_spent > 10000`` for a
subscriber who had 3,000 and now has 3,500), and the re-read is skipped.

The test must be exact in one direction: it may say "may change" when nothing changed, never
"unchanged" when something did. "Unchanged" here means: for every instant ``T`` from now on,
``evaluate(seg, before, T) == evaluate(seg, after, T)``, where ``after`` differs from ``before``
only in the tables the batch ``changed`` (``Applied.changed``) and, when ``subscriber_stats`` is one
of them, in the aggregates row as given (``before``/``after``, the rows around the batch's upsert).
That also keeps the stored timer (``next_change``) right for a pair not re-read: the answer as a
function of time did not move. tests/campaigns/test_segment_delta.py checks it against ``evaluate``
on random trees and random before/after views.

Each node yields ``(before, after, same)``: its truth value before and after where the test knows
it for every ``T`` (None where not), and whether it is known to be equal before and after for
every ``T``. Leaves:

- a field of the aggregates, the rows given, an operator without time (``gt``, ``eq``, ``in``,
  ``exists``...): both values are known (``field_op_holds`` on each row's value);
- a field of the aggregates with a time-relative operator (``within_days``, ``before_days``): its
  value moves with ``T``, so it is only known to be *the same* when the stored instant did not
  change, else it may change;
- any other condition (profile fields, attributes, tags, event conditions: windows, item filters,
  rollups) is the same when the batch changed none of the tables it reads (``dependencies``), and
  may change otherwise (the test does not read rows: those are the SQL's to re-read).

``all`` is false where a child is known false, true where all are known true, the same where all
children are the same or its two known values are equal; ``any`` dually; ``not`` swaps values.
"""

from __future__ import annotations

from collections.abc import Callable

from campaigns.core.model import Stats
from campaigns.core.segments import (FIELD_DEFAULTS, FIELDS, NEGATED, AllOf, AnyOf, Attribute, Event, Field, Not,
                                     RfmTier, Segment, Tag, affected_by, dependencies, expand_rfm,
                                     field_op_holds)  # fmt: skip

__all__ = ["DeltaTest", "StatsChange"]

StatsChange = tuple[Stats, Stats]  # the aggregates row before and after a batch
Tri = tuple[bool | None, bool | None, bool]  # (before, after, same)
_Node = Callable[[Stats, Stats], Tri]

_SAME: Tri = (None, None, True)
_MAYBE: Tri = (None, None, False)
_CLOCK_OPS = frozenset({"within_days", "before_days", "in_next_days"})


def _const(t: Tri) -> _Node:
    return lambda b, a: t


def _stat(stats: Stats, name: str) -> object:
    v = getattr(stats, name)
    return FIELD_DEFAULTS.get(name) if v is None else v


def _field(seg: Field, changed: frozenset[str], stats_known: bool) -> _Node:
    if FIELDS[seg.field].table != "subscriber_stats":
        return _const(_MAYBE if affected_by(dependencies(seg), changed) else _SAME)
    if "subscriber_stats" not in changed:
        return _const(_SAME)
    if not stats_known:
        return _const(_MAYBE)
    name, op, value = seg.field, seg.op, seg.value
    if NEGATED.get(op, op) in _CLOCK_OPS:  # moves with T: the same only if the instant stayed

        def instant(b: Stats, a: Stats) -> Tri:
            vb, va = _stat(b, name), _stat(a, name)
            return _SAME if vb == va else _MAYBE
        return instant

    def known(b: Stats, a: Stats) -> Tri:
        hb = field_op_holds(op, _stat(b, name), value, 0.0)  # no time-relative op here: `now` unread
        ha = field_op_holds(op, _stat(a, name), value, 0.0)
        return (hb, ha, hb == ha)
    return known


def _all(children: list[_Node]) -> _Node:
    def node(b: Stats, a: Stats) -> Tri:
        parts = [c(b, a) for c in children]
        before = False if any(p[0] is False for p in parts) else (True if all(p[0] for p in parts) else None)
        after = False if any(p[1] is False for p in parts) else (True if all(p[1] for p in parts) else None)
        same = all(p[2] for p in parts) or (before is not None and before == after)
        return (before, after, same)
    return node


def _any(children: list[_Node]) -> _Node:
    def node(b: Stats, a: Stats) -> Tri:
        parts = [c(b, a) for c in children]
        before = True if any(p[0] for p in parts) else (False if all(p[0] is False for p in parts) else None)
        after = True if any(p[1] for p in parts) else (False if all(p[1] is False for p in parts) else None)
        same = all(p[2] for p in parts) or (before is not None and before == after)
        return (before, after, same)
    return node


def _not(child: _Node) -> _Node:
    def node(b: Stats, a: Stats) -> Tri:
        before, after, same = child(b, a)
        return (None if before is None else not before, None if after is None else not after, same)
    return node


def _compile(seg: Segment, changed: frozenset[str], stats_known: bool) -> _Node:
    match seg:
        case AllOf(items=items):
            return _all([_compile(i, changed, stats_known) for i in items])
        case AnyOf(items=items):
            return _any([_compile(i, changed, stats_known) for i in items])
        case Not(item=item):
            return _not(_compile(item, changed, stats_known))
        case RfmTier(tier=tier):
            return _compile(expand_rfm(tier), changed, stats_known)
        case Field():
            return _field(seg, changed, stats_known)
        case Attribute() | Tag() | Event():
            return _const(_MAYBE if affected_by(dependencies(seg), changed) else _SAME)
    raise TypeError(f"not a segment node: {seg!r}")


def _reads_stats(seg: Segment) -> bool:
    return "subscriber_stats" in {d.split(".", 1)[0] for d in dependencies(seg)}


class DeltaTest:
    """One tree's delta test, specialised once per set of changed tables (a batch has a handful)."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self._reads_stats = _reads_stats(seg)
        self._plans: dict[tuple[frozenset[str], bool], _Node | bool] = {}

    def may_change(self, changed: frozenset[str], stats: StatsChange | None) -> bool:
        """Whether the subscriber's answer may differ at some instant from now on, after a batch that
        changed the tables ``changed`` of it and, if ``subscriber_stats`` is among them, moved its
        aggregates row from ``stats[0]`` to ``stats[1]`` (None: unknown, so may change)."""
        key = (changed, stats is not None)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(changed, stats is not None)
        if plan is True or plan is False:
            return plan
        assert stats is not None
        return not plan(stats[0], stats[1])[2]

    def _plan(self, changed: frozenset[str], stats_known: bool) -> _Node | bool:
        node = _compile(self.seg, changed, stats_known)
        if not (stats_known and self._reads_stats and "subscriber_stats" in changed):
            return not node(Stats(), Stats())[2]  # no leaf reads the rows: one answer for every subscriber
        return node
