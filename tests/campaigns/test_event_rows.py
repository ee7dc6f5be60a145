"""What an order event writes beyond its rows: no index entry that no read needs.

- PostgreSQL keeps room on the pages of the rows every order updates in place (the subscriber's
  aggregates row, an existing rollup row), so the update is HOT: the new version stays on the row's
  page and no index of the table gets an entry. Shown by the rows' pages (``ctid``): an update that
  left its page wrote an entry in every index of the table. A store made before it gets the room at
  open.
- ``activities_kind (tenant, kind, at)`` was a prefix of ``activities_segment (tenant, kind, at,
  subscriber_id)``: gone from a new store and from an older one at open, on both engines; the
  activity conditions answer the same (the conformance suites, and the window count below).
"""

from __future__ import annotations

import psycopg
import pytest

from campaigns.core.events import ActivityEvent, OrderEvent, Item
from campaigns.core.segments import parse_segment
from campaigns.store import open_store
from campaigns.store.rollups import BUCKET_S
from campaigns.store.segment_sql import compile_segment

T = "acme"
NOW = 1_800_000_000.0


def _phone(i: int) -> str:
    return f"+3361{i:07d}"


def _order(i: int, k: int, at: float) -> OrderEvent:
    return OrderEvent(id=f"e{k}-{i}", at=at, order_id=f"o{k}-{i}", phone=_phone(i), total=1_000 + i, currency="EUR",
                      payment_status="paid", items=(Item(product="p1", category="shoes", price=1_000, quantity=1),))  # fmt: skip


def _pages(conn: psycopg.Connection, table: str, where: str) -> dict[int, int]:
    """subscriber -> the page its row is on (order_rollups: its orders' row, key ``o``)."""
    if table == "order_rollups":
        where += " AND key = 'o'"
    rows = conn.execute(f"SELECT subscriber_id, (ctid::text::point)[0]::bigint FROM {table} WHERE {where}").fetchall()
    return {int(s): int(p) for s, p in rows}


def test_an_order_updates_the_aggregates_and_rollup_rows_in_place_on_postgres(pg_url: str) -> None:
    store = open_store(pg_url)
    n, every = 1_000, 10
    t0 = (NOW // BUCKET_S) * BUCKET_S + 10  # every order of the test in one rollup bucket
    try:
        # a shop's subscribers, each with an order (aggregates and rollup rows), loaded in bulk and
        # vacuumed, as an import or a restore leaves the tables: pages packed as far as the table allows
        store.apply_events(T, [(e, e.phone) for e in (_order(i, 0, t0) for i in range(n))], now=NOW)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for table in ("subscriber_stats", "order_rollups"):
                conn.execute(f"CREATE TEMP TABLE c AS SELECT * FROM {table}")
                conn.execute(f"TRUNCATE {table}")
                conn.execute(f"INSERT INTO {table} SELECT * FROM c ORDER BY subscriber_id")
                conn.execute("DROP TABLE c")
                conn.execute(f"VACUUM {table}")
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM subscribers ORDER BY id").fetchall()]
            picked = ids[::every]
            where = f"subscriber_id = ANY(ARRAY{picked}::bigint[])"
            stats0, rollups0 = _pages(conn, "subscriber_stats", where), _pages(conn, "order_rollups", where)
            # a batch of new orders: one in ten subscribers, spread over every page
            batch = [_order(i, 1, t0 + 1) for i in range(0, n, every)]
            store.apply_events(T, [(e, e.phone) for e in batch], now=NOW)
            stats1, rollups1 = _pages(conn, "subscriber_stats", where), _pages(conn, "order_rollups", where)
            counts = dict(conn.execute("SELECT subscriber_id, orders_count FROM subscriber_stats WHERE " + where).fetchall())
        assert set(counts.values()) == {2}, "every picked subscriber's aggregates row was updated"
        moved = [s for s in picked if stats1[s] != stats0[s]]
        assert not moved, f"{len(moved)} of {len(picked)} aggregates rows left their page (index entries written)"
        moved = [s for s in picked if rollups1[s] != rollups0[s]]
        assert not moved, f"{len(moved)} of {len(picked)} rollup rows left their page (index entries written)"
    finally:
        store.close()


def test_an_older_postgres_store_gets_the_room_at_open(pg_url: str) -> None:
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("subscriber_stats", "order_rollups"):
            conn.execute(f"ALTER TABLE {table} RESET (fillfactor)")  # as a store made before
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("subscriber_stats", "order_rollups"):
            (opts,) = conn.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()  # type: ignore[misc]
            assert "fillfactor=80" in (opts or []), table


def _indexes(store: object, url: str) -> set[str]:
    if url.startswith("sqlite"):
        rows = store._conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'activities'").fetchall()  # type: ignore[attr-defined]
    else:
        rows = store._conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "  # type: ignore[attr-defined]
                                   "AND tablename = 'activities'").fetchall()  # fmt: skip
    return {r[0] for r in rows}


def test_activities_keep_no_index_that_another_one_prefixes(store_url: str) -> None:
    store = open_store(store_url)
    assert _indexes(store, store_url) == {"activities_subscriber", "activities_segment"}
    store._conn.execute("CREATE INDEX activities_kind ON activities (tenant, kind, at)")  # type: ignore[attr-defined]
    store.close()
    store = open_store(store_url)  # an older store's index is dropped at open
    try:
        assert "activities_kind" not in _indexes(store, store_url)
        events = [ActivityEvent(id=f"a{i}", at=NOW - i * 86_400, phone=_phone(i % 3), kind="clicked") for i in range(60)]
        store.apply_events(T, [(e, e.phone) for e in events], now=NOW)
        seg = parse_segment({"event": "activity", "kind": "clicked", "within_days": 1})
        where, params = compile_segment(seg, store.engine, T, NOW)  # type: ignore[attr-defined]
        assert store.count_where(T, where, params) == 2  # clicks 0 and 1 days ago: +3361...0, +3361...1
    finally:
        store.close()


@pytest.mark.parametrize("path", ["batch", "one"])
def test_a_new_order_changes_only_the_aggregates_it_names(store_url: str, path: str) -> None:
    """``Applied.changed`` of a new order names the aggregates it may change (``new_order_changes``):
    the live membership re-evaluates only the segments that read one of them. Every other aggregate
    is the same after it (the last click, message, reply; the last abandoned checkout without one)."""
    from campaigns.core.events import CheckoutEvent
    from campaigns.core.segments import FIELDS

    store = open_store(store_url)
    try:
        A, t = _phone(1), NOW - 5 * 86_400
        setup = [ActivityEvent(id="c", at=t, phone=A, kind="clicked"), ActivityEvent(id="r", at=t + 1, phone=A, kind="replied"),
                 ActivityEvent(id="m", at=t + 2, phone=A, kind="message_sent"),
                 CheckoutEvent(id="k", at=t + 3, phone=A, checkout_id="k1", status="abandoned", value=500),
                 _order(1, 0, t + 4)]  # fmt: skip
        sid = [store.apply_event(T, e, phone=A, now=t + 10) for e in setup][-1].subscriber_id
        assert sid is not None
        before = store.stats(T, sid)
        new = [_order(1, 1, NOW - 60), _order(1, 2, NOW - 30)]
        if path == "batch":
            got = store.apply_events(T, [(e, A) for e in new], now=NOW)
        else:
            got = [store.apply_event(T, e, phone=A, now=NOW) for e in new]
        after = store.stats(T, sid)
        named = {c.split(".", 1)[1] for r in got for c in r.changed if c.startswith("subscriber_stats.")}
        assert all(r.outcome == "applied" and "subscriber_stats" not in r.changed for r in got)
        stats_fields = [f for f, spec in FIELDS.items() if spec.table == "subscriber_stats"]
        assert {f for f in stats_fields if getattr(after, f) != getattr(before, f)} <= named
        assert {"orders_count", "total_spent", "last_order_at"} <= {f for f in stats_fields if getattr(after, f) != getattr(before, f)}
        assert after.last_click_at == before.last_click_at and after.last_abandoned_checkout_at == before.last_abandoned_checkout_at
    finally:
        store.close()


def _order_indexes(conn: object, url: str) -> set[str]:
    if url.startswith("sqlite"):
        rows = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'orders' "  # type: ignore[attr-defined]
                            "AND sql IS NOT NULL").fetchall()  # fmt: skip
    else:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "  # type: ignore[attr-defined]
                            "AND tablename = 'orders'").fetchall()  # fmt: skip
    return {r[0] for r in rows}


def _product_count(store: object) -> int:
    seg = parse_segment({"event": "item", "where": {"product": ["p1"], "payment_status": ["paid"]}, "within_days": 30})
    where, params = compile_segment(seg, store.engine, T, NOW)  # type: ignore[attr-defined]
    return store.count_where(T, where, params)  # type: ignore[attr-defined]


def test_an_order_writes_no_index_entry_that_its_key_answers(store_url: str) -> None:
    """The item conditions read an order's owner, time and payment status by its key: on PostgreSQL the
    key carries them (``schema.ORDER_KEY``), so an order writes three index entries, not four; SQLite
    keeps ``orders_segment_owner``. The product conditions count the same (the conformance suites and
    the agreement test check every condition; this one the join the index served)."""
    store = open_store(store_url)
    try:
        conn = store._conn  # type: ignore[attr-defined]
        expected = {"orders_segment_spend", "orders_segment_window"}
        if store_url.startswith("sqlite"):
            assert _order_indexes(conn, store_url) == expected | {"orders_segment_owner"}
        else:
            assert _order_indexes(conn, store_url) == expected | {"orders_pkey"}
            (include,) = conn.execute("SELECT indnatts - indnkeyatts FROM pg_index WHERE indexrelid = "
                                      "to_regclass('orders_pkey')").fetchone()  # fmt: skip
            assert include == 3
        events = [_order(i, k, NOW - (k * 20 + i) * 86_400) for i in range(3) for k in range(2)]  # 0-22 and 20-42 days ago
        store.apply_events(T, [(e, e.phone) for e in events], now=NOW)
        assert _product_count(store) == 3
    finally:
        store.close()


def test_an_older_postgres_store_gets_the_covering_key_at_open(pg_url: str) -> None:
    store = open_store(pg_url)
    events = [_order(i, k, NOW - (k * 20 + i) * 86_400) for i in range(3) for k in range(2)]
    store.apply_events(T, [(e, e.phone) for e in events], now=NOW)
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as a store made before: a bare key, the owner index
        conn.execute("ALTER TABLE orders DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (tenant, order_id)")
        conn.execute("CREATE INDEX orders_segment_owner ON orders (tenant, order_id, subscriber_id, created_at, payment_status)")
    store = open_store(pg_url)
    try:
        conn = store._conn  # type: ignore[attr-defined]
        assert _order_indexes(conn, pg_url) == {"orders_pkey", "orders_segment_spend", "orders_segment_window"}
        (include,) = conn.execute("SELECT indnatts - indnkeyatts FROM pg_index WHERE indexrelid = "
                                  "to_regclass('orders_pkey')").fetchone()  # fmt: skip
        assert include == 3
        assert _product_count(store) == 3
        again = OrderEvent(id="again", at=NOW, order_id="o0-0", phone=_phone(0), total=5, currency="EUR", payment_status="paid")
        store.apply_events(T, [(again, again.phone)], now=NOW)  # the key still holds: the order is updated, not doubled
        assert conn.execute("SELECT count(*) FROM orders WHERE order_id = 'o0-0'").fetchone()[0] == 1
    finally:
        store.close()
    open_store(pg_url).close()  # opened again: nothing left to do, nothing changed


def test_a_batch_inserts_only_the_subscribers_it_lacks_on_postgres(pg_url: str) -> None:
    """The batch's claim looks its phones up first and inserts only the phones without a subscriber:
    a known phone costs no attempted insert (each one a speculative index entry and an id drawn from
    the sequence, then thrown away). Seen by the ids: a new subscriber after a batch of known ones
    gets the next id, no gap."""
    store = open_store(pg_url)
    try:
        store.apply_events(T, [(e, e.phone) for e in (_order(i, 0, NOW - 60) for i in range(10))], now=NOW)
        ids = store._conn.execute("SELECT max(id) FROM subscribers").fetchone()[0]  # type: ignore[attr-defined]
        batch = [_order(i, 1, NOW - 30) for i in range(11)]  # ten known phones and a new one
        got = store.apply_events(T, [(e, e.phone) for e in batch], now=NOW)
        assert [r.outcome for r in got] == ["applied"] * 11
        assert got[-1].subscriber_id == ids + 1
        assert [r.subscriber_id for r in got[:10]] == list(range(ids - 9, ids + 1))
    finally:
        store.close()
