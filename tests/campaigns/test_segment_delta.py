"""The delta test (``campaigns.core.segment_delta``) is exact: whenever it says a batch's change cannot
change a tree's answer, ``evaluate`` (the segment language's oracle) gives the same answer before and
after, now and at every instant time alone could move it (each view's window edges, and beyond).

Random trees (every node kind and operator, test_segment_agreement's generators) over random
subscribers; the "after" view is the "before" view with the tables the batch ``changed`` replaced
(the aggregates row moved a few columns at a time, so that it often stays on the same side of a
tree's thresholds and the test has something to skip)."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from campaigns.core.model import Stats, Subscriber, SubscriberView
from campaigns.core.segment_delta import DeltaTest
from campaigns.core.segments import DAY, FIELDS, _candidates, evaluate, parse_segment
from tests.campaigns.test_segment_agreement import NOWS, OFFSETS_DAYS, WINDOWS, leaf, subscriber_view

TABLES = ["subscribers", "subscriber_tags", "subscriber_stats", "orders", "order_items", "checkouts", "activities"]
STATS_FIELDS = list(Stats.__struct_fields__)


@st.composite
def stats_leaf(draw: st.DrawFn) -> dict:
    """A condition on an aggregate (what the delta test decides from the rows)."""
    name = draw(st.sampled_from(STATS_FIELDS))
    kind = FIELDS[name].kind
    op = draw(st.sampled_from({"number": ["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "not_exists"],
                               "time": ["within_days", "before_days", "gt", "lte", "exists", "not_exists"],
                               "enum": ["eq", "ne", "in", "exists"]}[kind]))  # fmt: skip
    if op in ("exists", "not_exists"):
        return {"field": name, "op": op}
    if kind == "number":
        pool = [0, 1, 2, 3, 4, 5, 4999, 5000, 10000]
    elif kind == "time":
        pool = WINDOWS if op in ("within_days", "before_days") else [NOWS[0] + d * DAY for d in OFFSETS_DAYS]
    else:
        pool = sorted(FIELDS[name].choices)
    value = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2) if op in ("in", "not_in") else st.sampled_from(pool))
    return {"field": name, "op": op, "value": value}


@st.composite
def stats_rows(draw: st.DrawFn, now: float) -> Stats:
    """An aggregates row, every column set or missing, values on the trees' thresholds and windows' edges."""
    def opt(s: st.SearchStrategy) -> object:
        return draw(st.one_of(st.none(), s))
    edge = st.sampled_from([now + d * DAY for d in OFFSETS_DAYS] + [now - w * DAY for w in WINDOWS])
    score = st.integers(1, 5)
    return Stats(orders_count=draw(st.integers(0, 5)), total_spent=draw(st.sampled_from([0, 4999, 5000, 10000, 10001])),
                 first_order_at=opt(edge), last_order_at=opt(edge), avg_order_value=draw(st.sampled_from([0, 4999, 5000])),
                 last_order_payment_status=opt(st.sampled_from(["paid", "pending", "refunded"])),
                 last_abandoned_checkout_at=opt(edge), last_click_at=opt(edge), last_message_at=opt(edge),
                 last_reply_at=opt(edge), rfm_r=opt(score), rfm_f=opt(score), rfm_m=opt(score),
                 engagement=opt(score))  # fmt: skip


trees = st.recursive(
    st.one_of(leaf(), stats_leaf(), stats_leaf()),
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=6,
)


def after_view(before: SubscriberView, other: SubscriberView, changed: frozenset[str], moved: list[str]) -> SubscriberView:
    """``before`` with the parts in ``changed`` taken from ``other`` (the aggregates: the ``moved`` columns)."""
    parts: dict = {}
    if "subscribers" in changed:
        parts["subscriber"] = other.subscriber
    if "subscriber_tags" in changed:
        parts["tags"] = other.tags
    if "subscriber_stats" in changed:
        parts["stats"] = msgspec.structs.replace(before.stats, **{f: getattr(other.stats, f) for f in moved})
    if "orders" in changed:
        parts["orders"] = other.orders
    elif "order_items" in changed:  # the same orders, other items
        parts["orders"] = tuple(msgspec.structs.replace(o, items=other.orders[k].items if k < len(other.orders) else ())
                                for k, o in enumerate(before.orders))  # fmt: skip
    if "checkouts" in changed:
        parts["checkouts"] = other.checkouts
    if "activities" in changed:
        parts["activities"] = other.activities
    return msgspec.structs.replace(before, **parts)


@st.composite
def cases(draw: st.DrawFn) -> tuple[float, list[dict], SubscriberView, SubscriberView, frozenset[str], bool]:
    now = draw(st.sampled_from(NOWS))
    before, _ = draw(subscriber_view(1, now))
    other, _ = draw(subscriber_view(1, now))
    before = msgspec.structs.replace(before, stats=draw(stats_rows(now)))
    other = msgspec.structs.replace(other, stats=draw(stats_rows(now)))
    changed = frozenset(draw(st.sets(st.sampled_from(TABLES), max_size=3)))
    if draw(st.integers(0, 3)):
        changed |= {"subscriber_stats"}
    moved = draw(st.one_of(st.lists(st.sampled_from(STATS_FIELDS), max_size=3, unique=True), st.just(STATS_FIELDS)))
    stats_known = draw(st.integers(0, 9)) > 0
    raw = draw(st.lists(trees, min_size=1, max_size=4))
    return now, raw, before, after_view(before, other, changed, moved), changed, stats_known


def instants(seg, before: SubscriberView, after: SubscriberView, now: float) -> list[float]:
    """Now, every instant time alone could move either view's answer, and some far ones."""
    edges = sorted(_candidates(seg, before, now) | _candidates(seg, after, now))[:24]
    return [now, *edges, now + 0.75 * DAY, now + 40 * DAY, now + 400 * DAY, now + 40_000 * DAY]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_unchanged_means_evaluate_agrees_before_and_after(case) -> None:
    now, raw, before, after, changed, stats_known = case
    for r in raw:
        seg = parse_segment(r)
        test = DeltaTest(seg)
        stats = (before.stats, after.stats) if stats_known else None
        verdict = test.may_change(changed, stats)
        assert test.may_change(changed, stats) == verdict  # the plan cached per changed set answers the same
        if verdict:
            continue
        for t in instants(seg, before, after, now):
            assert evaluate(seg, before, t) == evaluate(seg, after, t), (r, changed, t - now)


stats_trees = st.recursive(
    st.one_of(stats_leaf(), stats_leaf(), stats_leaf(), st.just({"rfm": "champions"}), st.just({"tag": "vip"}),
              st.just({"event": "order", "within_days": 30})),
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=5,
)
_BARE = SubscriberView(subscriber=Subscriber(tenant="t", id=1, phone="+15550000001", created_at=0.0), tags=frozenset(),
                       stats=Stats(), orders=(), checkouts=(), activities=())  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(now=st.sampled_from(NOWS), data=st.data(), raw=stats_trees,
       changed=st.sets(st.sampled_from(["subscriber_tags", "orders", "activities"]), max_size=2))
def test_unchanged_aggregates_mean_evaluate_agrees(now, data, raw, changed) -> None:
    """The same on trees over the aggregates (where the test reads the rows): cheap, so many examples."""
    b = data.draw(stats_rows(now))
    moved = data.draw(st.one_of(st.lists(st.sampled_from(STATS_FIELDS), max_size=3, unique=True), st.just(STATS_FIELDS)))
    a = msgspec.structs.replace(b, **{f: getattr(data.draw(stats_rows(now)), f) for f in moved})
    changed = frozenset(changed | {"subscriber_stats"})
    before = msgspec.structs.replace(_BARE, stats=b)
    after = msgspec.structs.replace(_BARE, stats=a, tags=frozenset({"vip"}) if "subscriber_tags" in changed else frozenset())
    seg = parse_segment(raw)
    if DeltaTest(seg).may_change(changed, (b, a)):
        return
    for t in instants(seg, before, after, now):
        assert evaluate(seg, before, t) == evaluate(seg, after, t), (raw, t - now)


SPENT = {"all": [{"field": "orders_count", "op": "gt", "value": 2}, {"field": "total_spent", "op": "gt", "value": 10000}]}
ORDER = frozenset({"orders", "order_items", "subscriber_stats"})


@example(tree=SPENT, spent=(3000, 3500), count=(4, 5), expect=False)  # below the threshold both times
@example(tree=SPENT, spent=(9000, 10500), count=(4, 5), expect=True)  # crosses it
@example(tree=SPENT, spent=(20000, 30000), count=(1, 2), expect=False)  # the other child false both times
@example(tree={"not": SPENT}, spent=(20000, 30000), count=(3, 4), expect=False)
@example(tree={"any": [SPENT, {"event": "order", "within_days": 30}]}, spent=(20000, 30000), count=(3, 4),
         expect=False)  # the `any` is true both times whatever the window says
@example(tree={"any": [SPENT, {"event": "order", "within_days": 30}]}, spent=(0, 10), count=(0, 1),
         expect=True)  # false both times, but the window's count may have moved
@example(tree={"all": [{"tag": "vip"}, {"field": "total_spent", "op": "lt", "value": 100}]}, spent=(0, 10), count=(0, 1),
         expect=False)  # tags untouched, the aggregate on the same side
@example(tree={"field": "last_click_at", "op": "within_days", "value": 30}, spent=(0, 10), count=(0, 1),
         expect=False)  # a window on an instant the order did not move
@given(tree=st.just(SPENT), spent=st.just((0, 0)), count=st.just((0, 0)), expect=st.just(False))
def test_the_delta_test_skips_what_an_order_cannot_change(tree, spent, count, expect) -> None:
    b = Stats(orders_count=count[0], total_spent=spent[0])
    a = Stats(orders_count=count[1], total_spent=spent[1])
    assert DeltaTest(parse_segment(tree)).may_change(ORDER, (b, a)) is expect
    assert DeltaTest(parse_segment(tree)).may_change(ORDER, None) is True  # the rows unknown: may change
