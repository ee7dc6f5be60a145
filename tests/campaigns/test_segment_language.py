"""The segment language: validation (errors name the path), the seeds' segments evaluated in Python,
round trips, dependencies, ``next_change`` on virtual time, and SQL that never carries user text.

(SQL == Python on random data, both engines: test_segment_agreement.py.)"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_segment_agreement import NOWS, population, trees

from campaigns.core.model import Activity, Checkout, Order, OrderItem, Stats, Subscriber, SubscriberView
from campaigns.core.segments import (
    DAY,
    EDGE,
    MAX_DEPTH,
    MAX_LIST,
    MAX_NODES,
    AllOf,
    Field,
    SegmentError,
    birthday_keys,
    affected_by,
    dependencies,
    dump_segment,
    evaluate,
    new_order_changes,
    next_change,
    parse_segment,
)
from campaigns.errors import InvalidInput
from campaigns.store.segment_sql import compile_segment

NOW = dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.timezone.utc).timestamp()

# ---- validation corpus: (definition, code, path) --------------------------------------------

BAD = [
    ("not json {", "segment.json", "$"),
    ([], "segment.type", "$"),
    ({}, "segment.shape", "$"),
    ({"all": [], "any": []}, "segment.shape", "$"),
    ({"all": {}}, "segment.type", "$.all"),
    ({"all": [1]}, "segment.type", "$.all[0]"),
    ({"all": [{"tag": "x"}, {"tag": "y"}, {"any": [{"field": "orders_count", "op": "gt", "value": "2"}]}]},
     "segment.bad_value", "$.all[2].any[0].value"),
    ({"all": [{"field": "orders_count", "op": "gt", "value": True}]}, "segment.bad_value", "$.all[0].value"),
    ({"field": "shoe_size", "op": "eq", "value": 1}, "segment.unknown_field", "$.field"),
    ({"field": "gender", "op": "gt", "value": "female"}, "segment.bad_op", "$.op"),
    ({"field": "gender", "op": "eq", "value": "f"}, "segment.bad_value", "$.value"),
    ({"field": "gender", "op": "eq"}, "segment.missing_key", "$.value"),
    ({"field": "gender", "value": "female"}, "segment.missing_key", "$.op"),
    ({"field": "gender", "op": "exists", "value": "x"}, "segment.unknown_key", "$.value"),
    ({"field": "gender", "op": "eq", "value": "female", "extra": 1}, "segment.unknown_key", "$.extra"),
    ({"field": "country", "op": "in", "value": ["US", "usa"]}, "segment.bad_value", "$.value[1]"),
    ({"field": "country", "op": "in", "value": []}, "segment.bad_value", "$.value"),
    ({"field": "country", "op": "in", "value": ["US"] * (MAX_LIST + 1)}, "segment.bad_value", "$.value"),
    ({"field": "city", "op": "contains", "value": ""}, "segment.bad_value", "$.value"),
    ({"field": "city", "op": "eq", "value": "x" * 257}, "segment.bad_value", "$.value"),
    ({"field": "city", "op": "eq", "value": "a\x00b"}, "segment.bad_value", "$.value"),
    ({"field": "city", "op": "not_contains", "value": "a\x00b"}, "segment.bad_value", "$.value"),
    ({"attribute": "plan", "op": "contains", "value": "y" * 300}, "segment.bad_value", "$.value"),
    ({"field": "birthday", "op": "gt", "value": "2020-02-30"}, "segment.bad_value", "$.value"),
    ({"field": "birthday", "op": "in_next_days", "value": 400}, "segment.bad_value", "$.value"),
    ({"field": "birthday", "op": "in_next_days", "value": 1.5}, "segment.bad_value", "$.value"),
    ({"field": "last_click_at", "op": "within_days", "value": 0}, "segment.bad_value", "$.value"),
    ({"field": "last_click_at", "op": "within_days", "value": -3}, "segment.bad_value", "$.value"),
    ({"field": "last_click_at", "op": "eq", "value": 1}, "segment.bad_op", "$.op"),
    ({"field": "total_spent", "op": "gt", "value": 2**60}, "segment.bad_value", "$.value"),
    ({"field": "total_spent", "op": "gt", "value": float("nan")}, "segment.bad_value", "$.value"),
    ({"attribute": "bad-key", "op": "eq", "value": 1}, "segment.bad_value", "$.attribute"),
    ({"attribute": "size", "op": "gt", "value": "10"}, "segment.bad_value", "$.value"),
    ({"attribute": "size", "op": "eq", "value": [1]}, "segment.bad_value", "$.value"),
    ({"tag": 5}, "segment.bad_value", "$.tag"),
    ({"rfm": "kings"}, "segment.bad_value", "$.rfm"),
    ({"event": "visit"}, "segment.bad_value", "$.event"),
    ({"event": "activity"}, "segment.missing_key", "$.kind"),
    ({"event": "order", "kind": "clicked"}, "segment.unknown_key", "$.kind"),
    ({"event": "order", "state": "abandoned"}, "segment.unknown_key", "$.state"),
    ({"event": "checkout", "state": "lost"}, "segment.bad_value", "$.state"),
    ({"event": "activity", "kind": "clicked", "measure": "sum"}, "segment.bad_value", "$.measure"),
    ({"event": "order", "measure": "quantity"}, "segment.bad_value", "$.measure"),
    ({"event": "order", "op": "contains"}, "segment.bad_op", "$.op"),
    ({"event": "order", "within_days": "30"}, "segment.bad_value", "$.within_days"),
    ({"event": "order", "where": {"category": ["x"]}}, "segment.unknown_key", "$.where.category"),
    ({"event": "order", "where": {"payment_status": ["paid", "lost"]}}, "segment.bad_value",
     "$.where.payment_status[1]"),
    ({"event": "item", "where": {"category": "shoes"}}, "segment.bad_value", "$.where.category"),
    ({"not": {"not": {"field": "consent", "op": "eq", "value": "yes"}}}, "segment.bad_value", "$.not.not.value"),
]  # fmt: skip


@pytest.mark.parametrize(("definition", "code", "path"), BAD)
def test_bad_definitions_are_refused_naming_the_path(definition, code, path):
    with pytest.raises(SegmentError) as err:
        parse_segment(definition)
    assert (err.value.code, err.value.path) == (code, path), str(err.value)
    assert isinstance(err.value, InvalidInput) and err.value.field == path
    assert str(err.value).startswith(path + ": ")


def test_depth_and_size_are_bounded():
    deep: dict = {"tag": "x"}
    for _ in range(MAX_DEPTH):
        deep = {"not": deep}
    parse_segment(deep)
    with pytest.raises(SegmentError) as err:
        parse_segment({"not": deep})
    assert err.value.code == "segment.too_deep"
    wide = {"any": [{"tag": str(i)} for i in range(MAX_NODES - 1)]}
    parse_segment(wide)
    wide["any"].append({"tag": "one too many"})
    with pytest.raises(SegmentError) as err:
        parse_segment(wide)
    assert err.value.code == "segment.too_large" and err.value.path == f"$.any[{MAX_NODES - 1}]"


def test_json_text_is_accepted():
    assert parse_segment(b'{"tag": "vip"}') == parse_segment({"tag": "vip"})


# ---- the seeds' segments, evaluated ---------------------------------------------------------


def view(**kw) -> SubscriberView:
    sub = Subscriber(tenant="acme", id=1, phone="+15550001", created_at=NOW - 100 * DAY,
                     **{k: kw.pop(k) for k in list(kw) if k in Subscriber.__struct_fields__})  # fmt: skip
    return SubscriberView(subscriber=sub, **kw)


def order(oid: str, total: int, days_ago: float, status: str = "paid", items=()) -> Order:
    return Order(order_id=oid, subscriber_id=1, total=total, currency="USD", payment_status=status,
                 created_at=NOW - days_ago * DAY, items=tuple(items))  # fmt: skip


HIGH_VALUE = {"all": [{"field": "orders_count", "op": "gt", "value": 2},
                      {"field": "total_spent", "op": "gt", "value": 10000}]}  # fmt: skip
SPENT_YEAR = {"event": "order", "within_days": 365, "measure": "sum", "op": "gt", "value": 10000}
ABANDONED_DAY = {"event": "checkout", "state": "abandoned", "within_days": 1}
PENDING_LAST = {"field": "last_order_payment_status", "op": "eq", "value": "pending"}
BOUGHT_SHOES = {"event": "item", "where": {"category": ["shoes"]}}
ENGAGED_30 = {"any": [{"event": "activity", "kind": "clicked", "within_days": 30},
                      {"event": "activity", "kind": "replied", "within_days": 30}]}  # fmt: skip
STORY = {"all": [HIGH_VALUE, {"not": {"event": "activity", "kind": "clicked", "within_days": 30}}]}


@pytest.mark.parametrize(
    ("definition", "subscriber", "expected"),
    [
        (HIGH_VALUE, view(stats=Stats(orders_count=3, total_spent=10001)), True),
        (HIGH_VALUE, view(stats=Stats(orders_count=3, total_spent=10000)), False),
        (HIGH_VALUE, view(stats=Stats(orders_count=2, total_spent=50000)), False),
        (SPENT_YEAR, view(orders=(order("a", 6000, 10), order("b", 5000, 364))), True),
        (SPENT_YEAR, view(orders=(order("a", 6000, 10), order("b", 5000, 366))), False),
        (ABANDONED_DAY, view(checkouts=(Checkout(checkout_id="c", subscriber_id=1, started_at=NOW - 2 * DAY,
                                                 abandoned_at=NOW - 0.5 * DAY),)), True),  # fmt: skip
        (ABANDONED_DAY, view(checkouts=(Checkout(checkout_id="c", subscriber_id=1, started_at=NOW - 2 * DAY,
                                                 abandoned_at=NOW - 0.5 * DAY, completed_at=NOW - 0.1 * DAY),)), False),  # fmt: skip
        (ABANDONED_DAY, view(checkouts=(Checkout(checkout_id="c", subscriber_id=1, started_at=NOW - 3 * DAY,
                                                 abandoned_at=NOW - 2 * DAY),)), False),  # fmt: skip
        (PENDING_LAST, view(stats=Stats(last_order_payment_status="pending")), True),
        (PENDING_LAST, view(), False),
        (BOUGHT_SHOES, view(orders=(order("a", 100, 400, items=[OrderItem(product="boot", category="shoes")]),)), True),
        (BOUGHT_SHOES, view(orders=(order("a", 100, 4, items=[OrderItem(product="cap", category="hats")]),)), False),
        (ENGAGED_30, view(activities=(Activity(kind="replied", at=NOW - 29 * DAY),)), True),
        (ENGAGED_30, view(activities=(Activity(kind="clicked", at=NOW - 31 * DAY),)), False),
        (STORY, view(stats=Stats(orders_count=3, total_spent=20000),
                     activities=(Activity(kind="clicked", at=NOW - 40 * DAY),)), True),  # fmt: skip
        (STORY, view(stats=Stats(orders_count=3, total_spent=20000),
                     activities=(Activity(kind="clicked", at=NOW - 4 * DAY),)), False),  # fmt: skip
        ({"all": [{"field": "gender", "op": "eq", "value": "female"}, {"field": "country", "op": "in", "value": ["RO", "FR"]},
                  {"field": "signup_source", "op": "eq", "value": "popup"}]},
         view(gender="female", country="RO", signup_source="popup"), True),  # fmt: skip
        ({"field": "gender", "op": "ne", "value": "female"}, view(), True),  # no gender: not female
        ({"field": "consent", "op": "eq", "value": "confirmed"}, view(consent="confirmed"), True),
        ({"rfm": "champions"}, view(stats=Stats(rfm_r=5, rfm_f=4, rfm_m=4)), True),
        ({"rfm": "champions"}, view(stats=Stats(rfm_r=5, rfm_f=3, rfm_m=4)), False),
        ({"field": "engagement", "op": "gte", "value": 4}, view(stats=Stats(engagement=4)), True),
        ({"field": "orders_count", "op": "lt", "value": 1}, view(), True),  # no stats row: no orders
        ({"tag": "birthday_club"}, view(tags=frozenset({"birthday_club"})), True),
        ({"attribute": "vip", "op": "eq", "value": True}, view(attributes={"vip": True}), True),
        ({"attribute": "vip", "op": "eq", "value": 1}, view(attributes={"vip": True}), False),  # types differ
        ({"attribute": "size", "op": "gte", "value": 40}, view(attributes={"size": 42.5}), True),
        ({"attribute": "size", "op": "gte", "value": 40}, view(attributes={"size": "42"}), False),
        ({"field": "birthday", "op": "in_next_days", "value": 7}, view(birthday="1990-01-20"), True),
        ({"field": "birthday", "op": "in_next_days", "value": 3}, view(birthday="1990-01-20"), False),
        ({"field": "city", "op": "contains", "value": "cur"}, view(city="Bucuresti"), True),
        ({"field": "city", "op": "contains", "value": "BUC"}, view(city="Bucuresti"), False),  # case-sensitive
    ],
)
def test_seed_segments(definition, subscriber, expected):
    assert evaluate(parse_segment(definition), subscriber, NOW) is expected


def test_birthday_keys_wrap_the_year_and_keep_29_february():
    dec30 = dt.datetime(2026, 12, 30, 23, 59, tzinfo=dt.timezone.utc).timestamp()
    assert birthday_keys(dec30, 3) == {"12-30", "12-31", "01-01", "01-02"}
    feb28 = dt.datetime(2027, 2, 28, tzinfo=dt.timezone.utc).timestamp()
    assert birthday_keys(feb28, 0) == {"02-28"}
    assert birthday_keys(feb28, 1) == {"02-28", "03-01", "02-29"}  # 2027 has no 29 February
    assert "02-29" not in birthday_keys(dt.datetime(2028, 2, 28, tzinfo=dt.timezone.utc).timestamp(), 2) - {"02-29"}
    assert birthday_keys(dt.datetime(2028, 2, 28, tzinfo=dt.timezone.utc).timestamp(), 1) == {"02-28", "02-29"}


def test_dependencies_name_what_the_segment_reads():
    assert dependencies(parse_segment(STORY)) == {"subscriber_stats.orders_count", "subscriber_stats.total_spent",
                                                  "activities.clicked", "clock"}  # fmt: skip
    assert dependencies(parse_segment(BOUGHT_SHOES)) == {"order_items.category.shoes", "orders.stored"}
    assert dependencies(parse_segment({"event": "item", "where": {"product": ["boot"]}})) == {"orders", "order_items"}
    assert dependencies(parse_segment({"event": "item"})) == {"orders", "order_items"}
    assert dependencies(parse_segment({"rfm": "new"})) == {"subscriber_stats.rfm_r", "subscriber_stats.rfm_f"}
    assert dependencies(parse_segment({"attribute": "a", "op": "exists"})) == {"subscribers.attributes"}
    assert "clock" in dependencies(parse_segment({"field": "birthday", "op": "in_next_days", "value": 3}))


_HC = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=150, deadline=None, suppress_health_check=_HC)
@given(tree=trees)
def test_dump_round_trips(tree):
    seg = parse_segment(tree)
    assert parse_segment(dump_segment(seg)) == seg


# ---- next_change: virtual time ---------------------------------------------------------------


def test_next_change_moves_people_out_of_a_window_on_time():
    seg = parse_segment(ENGAGED_30)
    v = view(activities=(Activity(kind="clicked", at=NOW - 10 * DAY),))
    t = next_change(seg, v, NOW)
    assert t is not None and NOW + 20 * DAY < t <= NOW + 20 * DAY + 2 * EDGE
    assert evaluate(seg, v, t) is False and evaluate(seg, v, NOW + 20 * DAY) is True
    assert next_change(seg, v, t) is None  # out for good, by time alone
    assert next_change(parse_segment(HIGH_VALUE), v, NOW) is None  # no window: never by time


def test_next_change_finds_the_birthday_midnight():
    seg = parse_segment({"field": "birthday", "op": "in_next_days", "value": 2})
    v = view(birthday="1990-01-20")  # NOW is 15 January, 08:00 UTC: in from 18 January 00:00
    assert next_change(seg, v, NOW) == dt.datetime(2027, 1, 18, tzinfo=dt.timezone.utc).timestamp()


@settings(max_examples=60, deadline=None, suppress_health_check=_HC)
@given(pop=population(2), tree=trees, data=st.data())
def test_next_change_is_the_first_flip(pop, tree, data):
    now, views = pop
    seg = parse_segment(tree)
    for v, _ in views:
        current = evaluate(seg, v, now)
        t = next_change(seg, v, now)
        if t is None:
            probes = [now + d * DAY for d in (0.3, 1.7, 31, 366.5, 800)]
        else:
            assert t > now and evaluate(seg, v, t) != current
            probes = [now + (t - now - 2 * EDGE) * f for f in (0.0, 0.25, 0.5, 0.999, 1.0)]
            probes += [data.draw(st.floats(now, max(now, t - 2 * EDGE)))]
        for p in probes:
            if p >= now:
                assert evaluate(seg, v, p) == current, (p - now) / DAY


# ---- SQL carries no user text ----------------------------------------------------------------

HOSTILE = ["'; DROP TABLE subscribers; --", 'x" OR 1=1 --', "%(p0)s", ":p1", "a' || 'b", "$.vip')) --"]


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
@pytest.mark.parametrize("text", HOSTILE)
def test_values_are_bound_never_spliced(text, dialect):
    tree = {"any": [
        {"field": "city", "op": "eq", "value": text}, {"field": "city", "op": "in", "value": [text, "x"]},
        {"field": "first_name", "op": "not_contains", "value": text}, {"tag": text},
        {"attribute": "plan", "op": "in", "value": [text, 3, True]},
        {"event": "activity", "kind": text, "within_days": 3},
        {"event": "item", "where": {"category": [text], "product": [text]}, "measure": "sum", "op": "gt", "value": 5},
    ]}  # fmt: skip
    where, params = compile_segment(parse_segment(tree), dialect, text, NOW)
    assert text not in where
    assert where.count("%s" if dialect == "postgres" else "?") == len(params)
    assert text in params


def test_unknown_dialect_is_refused():
    with pytest.raises(ValueError):
        compile_segment(AllOf(items=(Field(field="gender", op="exists"),)), "mysql", "acme", NOW)


def test_the_documented_examples_parse():
    import json
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "CAMPAIGNS.md").read_text()
    section = doc.split("## Segments", 1)[1].split("\n## ", 1)[0]
    found = 0
    for block in re.findall(r"```json\n(.*?)```", section, re.S):
        text, pos = block.strip(), 0
        while pos < len(text):
            obj, end = json.JSONDecoder().raw_decode(text, pos)
            parse_segment(obj)
            found += 1
            pos = end + len(text[end:]) - len(text[end:].lstrip())
    assert found >= 8


# ---- dependencies are sound: what a segment does not list cannot change its answer -------------


def _hybrid(a, b, deps):
    """``a``, with everything the segment does not depend on taken from ``b``."""
    import msgspec

    from campaigns.core.segments import FIELDS

    sub_changes = {f: getattr(b.subscriber, f) for f, spec in FIELDS.items()
                   if spec.table == "subscribers" and f"subscribers.{f}" not in deps}  # fmt: skip
    if "subscribers.attributes" not in deps:
        sub_changes["attributes"] = b.subscriber.attributes
    stats_changes = {f: getattr(b.stats, f) for f, spec in FIELDS.items()
                     if spec.table == "subscriber_stats" and f"subscriber_stats.{f}" not in deps}  # fmt: skip
    kinds = {d.split(".", 1)[1] for d in deps if d.startswith("activities.")}
    activities = tuple(x for x in a.activities if x.kind in kinds) + tuple(x for x in b.activities if x.kind not in kinds)
    return msgspec.structs.replace(
        a,
        subscriber=msgspec.structs.replace(a.subscriber, **sub_changes),
        stats=msgspec.structs.replace(a.stats, **stats_changes),
        tags=a.tags if "subscriber_tags" in deps else b.tags,
        orders=a.orders if any(d.split(".", 1)[0] in ("orders", "order_items") for d in deps) else b.orders,
        checkouts=a.checkouts if "checkouts" in deps else b.checkouts,
        activities=activities,
    )


@settings(max_examples=50, deadline=None, suppress_health_check=_HC)
@given(pop=population(3, min_subscribers=2), tree=trees)
def test_what_a_segment_does_not_depend_on_never_changes_it(pop, tree):
    now, views = pop
    seg = parse_segment(tree)
    deps = dependencies(seg)
    for (a, _), (b, _) in zip(views, views[1:]):
        assert evaluate(seg, _hybrid(a, b, deps), now) == evaluate(seg, a, now), deps


def test_a_new_order_touches_the_item_conditions_of_its_own_categories():
    changes = new_order_changes(["hats", None])
    assert not affected_by(dependencies(parse_segment(BOUGHT_SHOES)), changes)
    assert affected_by(dependencies(parse_segment(BOUGHT_SHOES)), new_order_changes(["hats", "shoes"]))
    assert affected_by(dependencies(parse_segment(SPENT_YEAR)), changes)  # every order condition
    assert affected_by(dependencies(parse_segment({"event": "item"})), changes)
    assert affected_by(dependencies(parse_segment(HIGH_VALUE)), changes)  # the aggregates
    # a stored order changed (refunded, moved, an earlier time): every item condition
    assert affected_by(dependencies(parse_segment(BOUGHT_SHOES)), frozenset({"orders", "checkouts", "subscriber_stats"}))
    assert affected_by(dependencies(parse_segment(BOUGHT_SHOES)), frozenset({"orders", "order_items", "subscriber_stats"}))
    assert not affected_by(dependencies(parse_segment(ENGAGED_30)), changes)


@settings(max_examples=80, deadline=None, suppress_health_check=_HC)
@given(pop=population(1, min_subscribers=1), tree=trees, data=st.data())
def test_a_new_order_that_does_not_affect_a_segment_never_changes_it(pop, tree, data):
    """``affected_by(dependencies(seg), new_order_changes(its categories))`` false: the segment's answer
    for the subscriber is the same with the new order as without it (the aggregates aside: a segment
    that reads them is affected by every order)."""
    from test_segment_agreement import CATEGORIES, PRODUCTS

    now, [(v, _)] = pop
    seg = parse_segment(tree)
    cats = data.draw(st.lists(st.none() | st.sampled_from(CATEGORIES), max_size=3))
    new = Order(order_id="new", subscriber_id=v.subscriber.id, total=data.draw(st.integers(0, 50_000)), currency="USD",
                payment_status=data.draw(st.sampled_from(["paid", "pending", "refunded"])),
                created_at=now - data.draw(st.floats(0, 400)) * DAY,
                items=tuple(OrderItem(product=data.draw(st.sampled_from(PRODUCTS)), category=c,
                                      price=data.draw(st.integers(0, 900)), quantity=1) for c in cats))  # fmt: skip
    if not affected_by(dependencies(seg), new_order_changes(cats)):
        after = msgspec.structs.replace(v, orders=(*v.orders, new))
        assert evaluate(seg, after, now) == evaluate(seg, v, now), dump_segment(seg)
