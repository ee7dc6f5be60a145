"""SQL and Python agree on who is in a segment, on SQLite and on PostgreSQL.

Hypothesis draws subscribers with profiles, tags, custom attributes, aggregates, orders with items,
checkouts and activities, and a batch of random segment trees (every node kind and operator, values
drawn from the same small pools as the data so conditions do hit, times on window edges); the data
is loaded into both engines (with the store's own DDL, campaigns/store/schema.py), and for each tree
the members selected by ``compile_segment``'s WHERE must equal those for which ``evaluate`` holds.

Another tenant's rows are loaded too, pointing at the same subscriber ids: a subquery that forgot
its tenant would count them and disagree. Each example runs in a transaction that is rolled back.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.model import Activity, Checkout, Order, OrderItem, Stats, Subscriber, SubscriberView
from campaigns.core.segments import (
    _OPS,
    ATTRIBUTE_OPS,
    DAY,
    FIELDS,
    NEGATED,
    RFM_TIERS,
    Segment,
    dump_segment,
    evaluate,
    parse_segment,
)
from campaigns.store import rollups
from campaigns.store.schema import statements
from campaigns.store.sql import Tx
from campaigns.store.segment_sql import compile_segment, members_from

psycopg = pytest.importorskip("psycopg")

TENANT, OTHER = "acme", "other"
NOWS = [
    dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.timezone.utc).timestamp(),
    dt.datetime(2027, 2, 27, 23, 30, tzinfo=dt.timezone.utc).timestamp(),  # 29 Feb in a non-leap year
    dt.datetime(2028, 12, 31, 12, 0, tzinfo=dt.timezone.utc).timestamp(),  # the year wraps
]
WINDOWS = [0.5, 1, 30, 365]
OFFSETS_DAYS = [-400, -365, -30, -1, -0.5, -0.25, 0, 2]  # the edges of the windows are drawn too

TEXTS = ["Ana", "ana", "Zoë", "O'Brien", "a%b_c", "", "Bob"]
NEEDLES = ["a", "An", "%", "_", "ë", "Bo"]
COUNTRIES = ["US", "RO", "CN", "FR"]
DATES = ["1990-01-15", "1990-01-20", "2000-02-29", "1985-12-31", "1999-03-01", "1999-02-28", "2001-01-01"]
NUMBERS = [0, 1, 2, 3, 5, 4999, 5000, 10000, 10000.5, -1]
SCORES = [1, 2, 3, 4, 5]
ATTR_NAMES = ["plan", "score", "vip"]
ATTR_VALUES = ["gold", "Gold", "silver", 1, 2.5, 3, 0, True, False, None]
TAGS = ["vip", "loyal", "birthday_club"]
KINDS = ["clicked", "replied", "message_sent", "quiz_done"]
CATEGORIES = ["shoes", "hats", "Shoes"]
PRODUCTS = ["boot", "cap", "scarf"]
CURRENCIES = ["USD", "EUR"]
PAYMENT = ["paid", "pending", "refunded"]
FULFILMENT = ["shipped", "delivered", "unfulfilled"]
DISCOUNTS = ["WELCOME10", "VIP"]
SOURCES = ["keyword", "popup", "checkout", "social"]


# ---- data -----------------------------------------------------------------------------------


def times(now: float) -> st.SearchStrategy[float]:
    on_edge = st.sampled_from([now - w * DAY for w in WINDOWS])
    return st.one_of(st.sampled_from([now + d * DAY for d in OFFSETS_DAYS]), on_edge, st.sampled_from(bucket_edges(now)))


def bucket_edges(now: float) -> list[float]:
    """Instants on and beside the rollups' bucket edges next to each window's cutoff (the first whole
    bucket of the window starts there: before it the orders are read, from it the rollups)."""
    out = []
    for w in WINDOWS:
        edge = math.ceil((now - w * DAY) / rollups.BUCKET_S) * rollups.BUCKET_S
        out += [edge, math.nextafter(edge, -math.inf), math.nextafter(edge, math.inf), edge - rollups.BUCKET_S,
                math.nextafter(edge - rollups.BUCKET_S, -math.inf)]
    return out


@st.composite
def subscriber_view(draw: st.DrawFn, sid: int, now: float) -> tuple[SubscriberView, bool]:
    opt = lambda s: draw(st.one_of(st.none(), s))  # noqa: E731
    attrs = {k: v for k in ATTR_NAMES if (v := draw(st.sampled_from([*ATTR_VALUES, "absent"]))) != "absent"}
    sub = Subscriber(
        tenant=TENANT, id=sid, phone=f"+1555000{sid:04d}",
        first_name=opt(st.sampled_from(TEXTS)), last_name=opt(st.sampled_from(TEXTS)), email=opt(st.sampled_from(TEXTS)),
        gender=opt(st.sampled_from(["female", "male", "other"])), birthday=opt(st.sampled_from(DATES)),
        country=opt(st.sampled_from(COUNTRIES)), region=opt(st.sampled_from(TEXTS)), city=opt(st.sampled_from(TEXTS)),
        time_zone=opt(st.sampled_from(["Europe/Bucharest", "America/New_York"])),
        language=opt(st.sampled_from(["en", "ro", "zh"])), signup_source=opt(st.sampled_from(SOURCES)),
        created_at=draw(times(now)), consent=draw(st.sampled_from(["none", "pending", "confirmed", "revoked"])),
        consent_at=opt(times(now)), attributes=attrs,
    )  # fmt: skip
    has_stats = draw(st.booleans())
    stats = Stats()
    if has_stats:
        stats = Stats(
            orders_count=draw(st.sampled_from([0, 1, 2, 3, 5])), total_spent=draw(st.sampled_from([0, 4999, 5000, 10000, 10001])),
            first_order_at=opt(times(now)), last_order_at=opt(times(now)), avg_order_value=draw(st.sampled_from([0, 5000])),
            last_order_payment_status=opt(st.sampled_from(PAYMENT)), last_abandoned_checkout_at=opt(times(now)),
            last_click_at=opt(times(now)), last_message_at=opt(times(now)), last_reply_at=opt(times(now)),
            rfm_r=opt(st.sampled_from(SCORES)), rfm_f=opt(st.sampled_from(SCORES)), rfm_m=opt(st.sampled_from(SCORES)),
            engagement=opt(st.sampled_from(SCORES)),
        )  # fmt: skip
    orders = []
    for k in range(draw(st.integers(0, 3))):
        items = tuple(
            OrderItem(product=draw(st.sampled_from(PRODUCTS)), category=opt(st.sampled_from(CATEGORIES)),
                      price=draw(st.sampled_from([0, 999, 5000])), quantity=draw(st.integers(1, 3)))
            for _ in range(draw(st.integers(0, 2)))
        )  # fmt: skip
        orders.append(Order(
            order_id=f"{sid}-{k}", subscriber_id=sid, total=draw(st.sampled_from([0, 999, 5000, 10000, 10001])),
            currency=draw(st.sampled_from(CURRENCIES)), payment_status=draw(st.sampled_from(PAYMENT)),
            fulfillment_status=opt(st.sampled_from(FULFILMENT)), discount_code=opt(st.sampled_from(DISCOUNTS)),
            created_at=draw(times(now)), items=items,
        ))  # fmt: skip
    checkouts = []
    for k in range(draw(st.integers(0, 2))):
        started = draw(times(now))
        checkouts.append(Checkout(
            checkout_id=f"{sid}-c{k}", subscriber_id=sid, value=draw(st.sampled_from([0, 5000, 12000])),
            started_at=started, completed_at=opt(times(now)), abandoned_at=opt(times(now)),
        ))  # fmt: skip
    activities = tuple(
        Activity(kind=draw(st.sampled_from(KINDS)), at=draw(times(now))) for _ in range(draw(st.integers(0, 3)))
    )
    tags = frozenset(draw(st.sets(st.sampled_from(TAGS), max_size=2)))
    view = SubscriberView(subscriber=sub, tags=tags, stats=stats, orders=tuple(orders), checkouts=tuple(checkouts),
                          activities=activities)  # fmt: skip
    return view, has_stats


# ---- trees ----------------------------------------------------------------------------------


def _field_leaf(draw: st.DrawFn) -> dict:
    name = draw(st.sampled_from(sorted(FIELDS)))
    spec = FIELDS[name]
    pos = sorted(_OPS[spec.kind])
    ops = pos + [n for n, p in NEGATED.items() if p in pos]
    op = draw(st.sampled_from(ops))
    base = NEGATED.get(op, op)
    if base == "exists":
        return {"field": name, "op": op}
    pool: list[Any] = {
        "text": TEXTS + SOURCES, "enum": sorted(spec.choices), "country": COUNTRIES, "date": DATES,
        "number": NUMBERS + SCORES,
    }.get(spec.kind, [])  # fmt: skip
    if spec.kind == "time":
        pool = [NOWS[0] + d * DAY for d in OFFSETS_DAYS]
    if base == "in":
        value: Any = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    elif base == "contains":
        value = draw(st.sampled_from(NEEDLES))
    elif base in ("within_days", "before_days"):
        value = draw(st.sampled_from(WINDOWS))
    elif base == "in_next_days":
        value = draw(st.sampled_from([0, 1, 7, 45, 366]))
    else:
        value = draw(st.sampled_from(pool))
    return {"field": name, "op": op, "value": value}


def _attribute_leaf(draw: st.DrawFn) -> dict:
    ops = sorted(ATTRIBUTE_OPS) + [n for n, p in NEGATED.items() if p in ATTRIBUTE_OPS]
    op = draw(st.sampled_from(ops))
    base = NEGATED.get(op, op)
    out = {"attribute": draw(st.sampled_from(ATTR_NAMES)), "op": op}
    scalars = [v for v in ATTR_VALUES if v is not None]
    if base == "exists":
        return out
    if base == "in":
        return out | {"value": draw(st.lists(st.sampled_from(scalars), min_size=1, max_size=3))}
    if base == "contains":
        return out | {"value": draw(st.sampled_from(["old", "G", "s"]))}
    if base in ("gt", "gte", "lt", "lte"):
        return out | {"value": draw(st.sampled_from([0, 1, 2.5, 3]))}
    return out | {"value": draw(st.sampled_from(scalars))}


def _event_leaf(draw: st.DrawFn) -> dict:
    source = draw(st.sampled_from(["order", "item", "checkout", "activity"]))
    out: dict[str, Any] = {"event": source}
    if source == "activity":
        out["kind"] = draw(st.sampled_from(KINDS))
    if source == "checkout" and draw(st.booleans()):
        out["state"] = draw(st.sampled_from(["started", "abandoned", "completed"]))
    if draw(st.booleans()):
        out["within_days"] = draw(st.sampled_from(WINDOWS))
    where_pool = {"order": {"payment_status": PAYMENT, "fulfillment_status": FULFILMENT, "currency": CURRENCIES,
                            "discount_code": DISCOUNTS},
                  "item": {"category": CATEGORIES, "product": PRODUCTS, "payment_status": PAYMENT}}.get(source, {})  # fmt: skip
    where = {}
    for key in draw(st.sets(st.sampled_from(sorted(where_pool)), max_size=2)) if where_pool else ():
        where[key] = draw(st.lists(st.sampled_from(where_pool[key]), min_size=1, max_size=2))
    if where:
        out["where"] = where
    measures = {"order": ["count", "sum"], "item": ["count", "sum", "quantity"], "checkout": ["count", "sum"],
                "activity": ["count"]}[source]  # fmt: skip
    if draw(st.booleans()):
        out["measure"] = draw(st.sampled_from(measures))
        out["op"] = draw(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]))
        out["value"] = draw(st.sampled_from([0, 1, 2, 0.5, 5000, 10000, 10001, 12000]))
    return out


@st.composite
def leaf(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["field", "field", "attribute", "tag", "rfm", "event", "event"]))
    if kind == "field":
        return _field_leaf(draw)
    if kind == "attribute":
        return _attribute_leaf(draw)
    if kind == "tag":
        return {"tag": draw(st.sampled_from(TAGS))}
    if kind == "rfm":
        return {"rfm": draw(st.sampled_from(sorted(RFM_TIERS)))}
    return _event_leaf(draw)


trees = st.recursive(
    leaf(),
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=6,
)


# ---- the engines ----------------------------------------------------------------------------


def _rows(view: SubscriberView, tenant: str, has_stats: bool) -> dict[str, list[tuple]]:
    s = view.subscriber
    sid = s.id
    rows: dict[str, list[tuple]] = {
        "subscriber_tags": [(tenant, sid, t) for t in sorted(view.tags)],
        "orders": [], "order_items": [], "checkouts": [], "activities": [], "subscriber_stats": [],
    }  # fmt: skip
    suffix = "" if tenant == TENANT else "x"
    for o in view.orders:
        oid = o.order_id + suffix
        rows["orders"].append((tenant, oid, sid, o.total, o.currency, o.payment_status, o.fulfillment_status,
                               o.discount_code, o.created_at, o.created_at))  # fmt: skip
        rows["order_items"] += [(tenant, oid, i.product, i.category, i.price, i.quantity) for i in o.items]
    rows["checkouts"] = [(tenant, c.checkout_id + suffix, sid, c.value, c.started_at, c.completed_at, c.abandoned_at,
                          c.started_at) for c in view.checkouts]  # fmt: skip
    rows["activities"] = [(tenant, sid, a.kind, a.at) for a in view.activities]
    if has_stats and tenant == TENANT:  # subscriber_stats is keyed by subscriber_id alone
        st_ = view.stats
        rows["subscriber_stats"] = [(tenant, sid, *(getattr(st_, f) for f in STATS_COLUMNS))]
    return rows


STATS_COLUMNS = [f.name for f in msgspec.structs.fields(Stats)]
SUB_COLUMNS = ["phone", "first_name", "last_name", "email", "gender", "birthday", "country", "region", "city",
               "time_zone", "language", "signup_source", "created_at", "consent", "consent_at"]  # fmt: skip
INSERTS = {
    "subscribers": f"INSERT INTO subscribers (tenant, id, {', '.join(SUB_COLUMNS)}, attributes) VALUES "
                   f"({', '.join(['?'] * (len(SUB_COLUMNS) + 3))})",
    "subscriber_tags": "INSERT INTO subscriber_tags (tenant, subscriber_id, tag) VALUES (?, ?, ?)",
    "subscriber_stats": f"INSERT INTO subscriber_stats (tenant, subscriber_id, {', '.join(STATS_COLUMNS)}) VALUES "
                        f"({', '.join(['?'] * (len(STATS_COLUMNS) + 2))})",
    "orders": "INSERT INTO orders (tenant, order_id, subscriber_id, total, currency, payment_status, fulfillment_status, "
              "discount_code, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "order_items": "INSERT INTO order_items (tenant, order_id, product, category, price, quantity) VALUES (?, ?, ?, ?, ?, ?)",
    "checkouts": "INSERT INTO checkouts (tenant, checkout_id, subscriber_id, value, started_at, completed_at, abandoned_at, "
                 "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "activities": "INSERT INTO activities (tenant, subscriber_id, kind, at) VALUES (?, ?, ?, ?)",
}  # fmt: skip


def load(cur: Any, ph: str, views: list[tuple[SubscriberView, bool]]) -> None:
    def run(table: str, rows: list[tuple]) -> None:
        if rows:
            cur.executemany(INSERTS[table].replace("?", ph), rows)

    for view, has_stats in views:
        s = view.subscriber
        for tenant, sid in ((TENANT, s.id), (OTHER, s.id + 10_000)):
            run("subscribers", [(tenant, sid, *(getattr(s, c) if c != "phone" else s.phone for c in SUB_COLUMNS),
                                 msgspec.json.encode(s.attributes).decode())])  # fmt: skip
            # The other tenant's rows point at *this* tenant's subscriber ids.
            for table, rows in _rows(view, tenant, has_stats).items():
                run(table, rows)
    rollups.rebuild(Tx(cur, ph))  # the store keeps them with every order it stores


@pytest.fixture(scope="module")
def sqlite_db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for stmt in statements("sqlite"):
        conn.execute(stmt)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def pg_db(pg_server: Any) -> Iterator[Any]:
    schema = f"seg_{uuid.uuid4().hex[:12]}"
    conn = psycopg.connect(pg_server.url, autocommit=True)
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"SET search_path TO {schema}")
    for stmt in statements("postgres"):
        conn.execute(stmt)
    yield conn
    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


def members_sql(cur: Any, dialect: str, seg: Segment, now: float) -> set[int]:
    where, params = compile_segment(seg, dialect, TENANT, now)
    cur.execute(f"SELECT s.id FROM subscribers s WHERE {where}", params)
    ids = {r[0] for r in cur.fetchall()}
    cur.execute(f"SELECT count(*) FROM subscribers s WHERE {where}", params)
    assert cur.fetchone()[0] == len(ids)
    return ids


def members_restricted(cur: Any, dialect: str, segs: list[Segment], now: float, only: list[int],
                       caller_restricts: bool = False) -> list[set[int]]:  # fmt: skip
    """Live membership's statement (``SqlStore.refresh_members``): every segment compiled restricted to
    ``only`` (``compile_segment(..., only=...)``), one ``CASE`` column each, over those subscribers
    (``caller_restricts``: the statement restricts them, as a pass's does, not each ``where``)."""
    parts = [compile_segment(seg, dialect, TENANT, now, only=only, caller_restricts=caller_restricts) for seg in segs]
    cols = ", ".join(f"CASE WHEN {where} THEN 1 ELSE 0 END" for where, _ in parts)
    ph = "%s" if dialect == "postgres" else "?"
    ids = f" AND s.id IN ({', '.join(str(int(i)) for i in only)})" if caller_restricts else ""
    cur.execute(f"SELECT s.id, {cols} FROM {members_from(dialect)} WHERE s.tenant = {ph}{ids}",
                [*(x for _, params in parts for x in params), TENANT])  # fmt: skip
    got: list[set[int]] = [set() for _ in segs]
    for row in cur.fetchall():
        for k, hit in enumerate(row[1:]):
            if hit:
                got[k].add(int(row[0]))
    return got


def check(sqlite_db: sqlite3.Connection, pg_db: Any, views: list[tuple[SubscriberView, bool]], raw_trees: list[dict],
          now: float) -> None:  # fmt: skip
    segs = [parse_segment(t) for t in raw_trees]
    expected = [{v.subscriber.id for v, _ in views if evaluate(seg, v, now)} for seg in segs]
    # Live membership asks about some subscribers only (every other one, and an id no one has).
    only = sorted({v.subscriber.id for v, _ in views[::2]} | {99_999})
    cur = sqlite_db.cursor()
    cur.execute("BEGIN")
    try:
        load(cur, "?", views)
        got_sqlite = [members_sql(cur, "sqlite", seg, now) for seg in segs]
        live_sqlite = members_restricted(cur, "sqlite", segs, now, only)
        pass_sqlite = members_restricted(cur, "sqlite", segs, now, only, caller_restricts=True)
    finally:
        sqlite_db.execute("ROLLBACK")
    with pg_db.transaction(force_rollback=True), pg_db.cursor() as pcur:
        load(pcur, "%s", views)
        got_pg = [members_sql(pcur, "postgres", seg, now) for seg in segs]
        live_pg = members_restricted(pcur, "postgres", segs, now, only)
    for tree, seg, want, lite, pg, l_lite, l_pg in zip(raw_trees, segs, expected, got_sqlite, got_pg, live_sqlite,
                                                       live_pg, strict=True):  # fmt: skip
        assert lite == want, f"SQLite disagrees with Python on {tree} (canonical {dump_segment(seg)})"
        assert pg == want, f"PostgreSQL disagrees with Python on {tree} (canonical {dump_segment(seg)})"
        assert l_lite == want & set(only), f"SQLite's live membership disagrees on {tree} ({dump_segment(seg)})"
        assert l_pg == want & set(only), f"PostgreSQL's live membership disagrees on {tree} ({dump_segment(seg)})"
    for tree, seg, want, got in zip(raw_trees, segs, expected, pass_sqlite, strict=True):
        assert got == want & set(only), f"SQLite's pass statement disagrees on {tree} ({dump_segment(seg)})"


@st.composite
def population(draw: st.DrawFn, max_subscribers: int, min_subscribers: int = 0) -> tuple[float, list[tuple[SubscriberView, bool]]]:
    now = draw(st.sampled_from(NOWS))
    n = draw(st.integers(min_subscribers, max_subscribers))
    return now, [draw(subscriber_view(sid, now)) for sid in range(1, n + 1)]


_HC = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=25, deadline=None, suppress_health_check=_HC)
@given(pop=population(8), raw_trees=st.lists(trees, min_size=1, max_size=12))
def test_sql_agrees_with_python_on_both_engines(sqlite_db, pg_db, pop, raw_trees):
    now, views = pop
    check(sqlite_db, pg_db, views, raw_trees, now)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=_HC)
@given(pop=population(16), raw_trees=st.lists(trees, min_size=1, max_size=20))
def test_sql_agrees_with_python_on_both_engines_long(sqlite_db, pg_db, pop, raw_trees):
    now, views = pop
    check(sqlite_db, pg_db, views, raw_trees, now)
