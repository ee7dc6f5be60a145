"""The membership pass's Python evaluation (campaigns/core/segment_pass.py over the facts that
campaigns/store/member_facts.py reads) on the cases where rollups and windows meet: rows exactly on a
window's cutoff, on a bucket's edge, a second either side of both, windows whose straddling parts
share a bucket, items of several categories (and none), another tenant's rows on the same ids; every
order/item measure and comparison; on both engines, against ``evaluate`` and the SQL
(``check`` of test_segment_agreement). The random trees of that module cover the rest."""

from __future__ import annotations

import itertools

import pytest

from campaigns.core.model import Order, OrderItem, Stats, Subscriber, SubscriberView
from campaigns.core.segment_pass import BUCKET_S, compile_tree, decidable, needs_of
from campaigns.core.segments import DAY, parse_segment

from tests.campaigns.test_segment_agreement import NOWS, TENANT, check, pg_db, sqlite_db  # noqa: F401 (fixtures)

WINDOWS = [1, 30, 31, 365]


def _instants(now: float) -> list[float]:
    out = set()
    for w in WINDOWS:
        cutoff = now - w * DAY
        edge = -(-cutoff // BUCKET_S) * BUCKET_S  # the first whole bucket's start
        out.update({cutoff, cutoff - 1, cutoff + 1, edge, edge - 1, edge + 1})
    return sorted(out)


def _population(now: float) -> list[tuple[SubscriberView, bool]]:
    views = []
    cats = [("shoes",), ("bags", "shoes"), (None,), ("hats",)]
    for sid, (at, kinds) in enumerate(itertools.product(_instants(now), cats), start=1):
        items = tuple(OrderItem(product="boot", category=c, price=1000 * (k + 1), quantity=k + 1) for k, c in enumerate(kinds))
        orders = (Order(order_id=f"{sid}-0", subscriber_id=sid, total=4000 + sid, currency="USD", payment_status="paid",
                        created_at=at, items=items),  # fmt: skip
                  Order(order_id=f"{sid}-1", subscriber_id=sid, total=7000, currency="USD", payment_status="pending",
                        created_at=now - 2 * DAY))  # fmt: skip
        views.append((SubscriberView(subscriber=Subscriber(tenant=TENANT, id=sid, phone=f"+1555{sid:07d}", created_at=now),
                                     stats=Stats(orders_count=2), orders=orders), True))  # fmt: skip
    return views


def _trees() -> list[dict]:
    out = []
    for source, w in itertools.product(("order", "item"), [None, *WINDOWS]):
        for measure, op, value in [("count", "gte", 1), ("count", "eq", 2), ("count", "lt", 2), ("sum", "gt", 7000),
                                   ("sum", "lte", 11000), ("quantity", "gte", 3)]:  # fmt: skip
            if source == "order" and measure == "quantity":
                continue
            tree: dict = {"event": source, "measure": measure, "op": op, "value": value}
            if w is not None:
                tree["within_days"] = w
            out.append(tree)
            if source == "item":
                out.append(tree | {"where": {"category": ["shoes", "bags"]}})
    return out


@pytest.mark.parametrize("now", [pytest.param(n, marks=[pytest.mark.slow] if k else []) for k, n in enumerate(NOWS)])
def test_rollups_and_straddling_orders_decide_like_evaluate_and_sql(sqlite_db, pg_db, now):
    trees = _trees()
    assert all(decidable(parse_segment(t)) for t in trees)
    check(sqlite_db, pg_db, _population(now), trees, now)


def test_what_the_facts_cannot_decide_is_named():
    assert compile_tree(parse_segment({"event": "order", "where": {"payment_status": ["paid"]}})) is None
    assert compile_tree(parse_segment({"all": [{"tag": "vip"}, {"event": "item", "where": {"product": ["x"]}}]})) is None
    assert compile_tree(parse_segment({"event": "item", "where": {"category": ["x"]}, "within_days": 3})) is not None
    needs = needs_of([parse_segment({"event": "activity", "kind": "clicked", "within_days": 30}),
                      parse_segment({"event": "activity", "kind": "clicked"})], NOWS[0])  # fmt: skip
    assert needs.activities == {"clicked": None}  # an all-time condition reads every row of the kind
