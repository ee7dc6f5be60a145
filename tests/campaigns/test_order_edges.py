"""A membership pass reads the order and item window edges of its segments in one scan of their
subscribers' orders (``segment_sql.order_edges``, planned by ``audience._plans``): the edges found,
and so the timers written, are exactly those of each segment's own ``compile_edges``, on both
engines, whatever the orders' instants (on and around every window's edge), the windows (equal,
nested, with a filter or not) and the other clocked conditions beside them."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.events import ActivityEvent, Item, OrderEvent
from campaigns.core.segments import DAY, dependencies, parse_segment
from campaigns.service.audience import _plans
from campaigns.store import Store
from campaigns.store.base import MemberPlan
from campaigns.store.segment_sql import compile_edges, compile_segment

NOW = 1_800_000_000.0
PHONES = [f"+3361234567{i}" for i in range(6)]
WINDOWS = [1, 30, 90, 365]
TREES = [
    lambda w: {"event": "order", "within_days": w},
    lambda w: {"event": "order", "within_days": w, "measure": "sum", "op": "gt", "value": 10000},
    lambda w: {"event": "item", "within_days": w, "where": {"category": ["shoes", "bags"]}, "measure": "sum",
               "op": "gte", "value": 5000},
    lambda w: {"all": [{"event": "order", "within_days": w}, {"not": {"event": "activity", "kind": "clicked",
                                                                      "within_days": 30}}]},
    lambda w: {"any": [{"event": "order", "within_days": w}, {"field": "last_order_at", "op": "within_days", "value": 7}]},
    lambda w: {"field": "orders_count", "op": "gt", "value": 1},  # no clock: never merged
]  # fmt: skip


@st.composite
def shops(draw: st.DrawFn) -> tuple[list, list[tuple[int, int]]]:
    events: list = []
    for k in range(draw(st.integers(1, 30))):
        w = draw(st.sampled_from(WINDOWS))
        # on a window's edge, a millisecond either side, or anywhere in the last 400 days
        at = draw(st.sampled_from([NOW - w * DAY, NOW - w * DAY - 1e-3, NOW - w * DAY + 1e-3, NOW - w * DAY - 0.7])
                  | st.floats(NOW - 400 * DAY, NOW))  # fmt: skip
        phone = draw(st.sampled_from(PHONES))
        if draw(st.integers(0, 4)) == 0:
            events.append(ActivityEvent(id=f"a{k}", at=at, phone=phone, kind="clicked"))
        else:
            events.append(OrderEvent(id=f"e{k}", at=at, order_id=f"o{k}", phone=phone, total=draw(st.integers(0, 20000)),
                                     currency="USD", payment_status=draw(st.sampled_from(["paid", "refunded"])),
                                     items=(Item(product="p", category=draw(st.sampled_from(["shoes", "hats"])),
                                                 price=draw(st.integers(0, 9000))),)))  # fmt: skip
    trees = draw(st.lists(st.tuples(st.integers(0, len(TREES) - 1), st.sampled_from(WINDOWS)), min_size=1, max_size=6))
    return events, trees


@given(shop=shops())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_passs_order_edges_in_one_scan_are_each_segments_own(store: Store, shop: tuple[list, list]) -> None:
    events, trees = shop
    tenant = f"t{abs(hash((tuple(e.id for e in events), tuple(trees)))) % 10**12}"
    store.apply_events(tenant, [(e, e.phone) for e in events], now=NOW)
    ids = sorted({store.subscriber_by_phone(tenant, p).id for p in PHONES if store.subscriber_by_phone(tenant, p)})  # type: ignore[union-attr]
    group = []
    for i, (t, w) in enumerate(trees):
        seg = parse_segment(TREES[t](w))
        group.append((1000 + i, seg, "clock" in dependencies(seg)))
    merged = _plans(store.engine, tenant, ids, group, NOW)
    alone = []
    for seg_id, seg, timed in group:
        where, params = compile_segment(seg, store.engine, tenant, NOW, only=ids, caller_restricts=True)  # type: ignore[arg-type]
        edges = compile_edges(seg, store.engine, tenant, NOW, ids) if timed else None  # type: ignore[arg-type]
        alone.append(MemberPlan(segment_id=seg_id, ids=ids, where=where, params=params, edges=edges))
    got, want = store.read_members(tenant, merged), store.read_members(tenant, alone)
    assert [(f.ids, f.inside, f.edges) for f in got] == [(f.ids, f.inside, f.edges) for f in want]


def test_two_order_windows_share_one_scan_and_a_lone_one_keeps_its_own() -> None:
    seg = [parse_segment({"event": "order", "within_days": w}) for w in (30, 365)]
    other = parse_segment({"event": "activity", "kind": "clicked", "within_days": 30})
    plans = _plans("sqlite", "t", [1, 2], [(1, seg[0], True), (2, seg[1], True), (3, other, True)], NOW)
    assert plans[0].shared_edges is not None and plans[0].shared_edges[2] == [1, 2]
    assert [p.edges for p in plans[:2]] == [None, None] and all(p.timed for p in plans)
    assert plans[2].edges is not None and plans[2].shared_edges is None
    lone = _plans("sqlite", "t", [1, 2], [(1, seg[0], True), (3, other, True)], NOW)
    assert lone[0].shared_edges is None and lone[0].edges is not None
