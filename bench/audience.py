"""`sluice bench audience`: segment counts over a shop's audience, on SQLite or PostgreSQL.

1. Import: N subscribers (profiles, tags, custom attributes), M orders with one item each (drawn
   with numpy, in order id order), N/4 checkouts, 2N activities (clicks, replies, messages), and
   the per-subscriber aggregates computed from them, bulk-loaded into a fresh store (SQLite: the
   store closed, executemany in one transaction without a journal; PostgreSQL: COPY; both with
   the secondary indexes built after the rows), the order rollups built in SQL, then ANALYZE.
   ``import_s`` is all of that. ``--events 0`` stops after the counts (the issue's 1M / 10M size).
2. Counts: a fixed mix of segment trees (``MIX``: profile/aggregate trees, and trees with windowed
   event conditions), each compiled by ``campaigns.store.segment_sql`` and counted through the
   store's ``count_where``; every tree runs ``--runs`` times, its median is its figure.
   ``count_p50_s`` is the median over profile/aggregate trees, ``count_windowed_p50_s`` over
   windowed trees, ``count_p95_s`` the 95th percentile over all.
3. Events: order events through the store's ``apply_event`` (aggregates updated in the same
   transaction), then, per event, every segment whose ``dependencies`` the event changed is
   re-evaluated for that subscriber (``view`` + ``evaluate``) and its membership written.
   ``events_per_s`` is the ingest alone; ``membership_update_p99_s`` the 99th percentile from
   the event's arrival to its membership changes being stored.

PostgreSQL: ``--pg-url`` names a server, or (without it) the bench starts a throwaway one with
``initdb``/``pg_ctl`` on a free loopback port (Debian's ``postgresql`` package), as the tests do.
"""

from __future__ import annotations

import array
import contextlib
import json
import math
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import click
import numpy as np

from bench import postgres
from bench.machine import describe
from bench.output import out_option, save
from campaigns.config import loads
from campaigns.core.events import decode_event
from campaigns.core.segments import Segment, dependencies, parse_segment
from campaigns.service.audience import Audience as AudienceService
from campaigns.store import open_store, rollups
from campaigns.store.schema import latest_order_fill
from campaigns.store.segment_sql import compile_segment
from campaigns.store.sql import Tx

TENANT = "bench"
DAY = 86_400.0
NOW = 1_800_000_000.0
COUNTRIES = ["US", "US", "US", "CA", "GB", "FR", "RO", "DE", "CN", "TW", "AU", "BR"]
CITIES = ["Springfield", "Bucuresti", "Paris", "Toronto", "Taipei", "Berlin", "Sydney", "Shanghai"]
SOURCES = ["keyword", "popup", "social", "checkout", "in_store", "import"]
CATEGORIES = ["shoes", "hats", "bags", "dresses", "shirts", "jeans", "socks", "jewelry", "watches", "beauty",
              "home", "gifts"]  # fmt: skip
PAYMENT = ["paid"] * 8 + ["pending", "refunded"]

# The fixed mix: (name, tree); a tree is windowed when time alone moves its answer (`windowed`). At least 20 trees, the seeds' segments among them.
MIX: list[tuple[str, dict]] = [
    ("high_value", {"all": [{"field": "orders_count", "op": "gt", "value": 2},
                            {"field": "total_spent", "op": "gt", "value": 10000}]}),
    ("women_in_us", {"all": [{"field": "gender", "op": "eq", "value": "female"},
                             {"field": "country", "op": "eq", "value": "US"}]}),
    ("marketable", {"field": "consent", "op": "eq", "value": "confirmed"}),
    ("popup_or_social", {"field": "signup_source", "op": "in", "value": ["popup", "social"]}),
    ("city_contains", {"field": "city", "op": "contains", "value": "pring"}),
    ("never_ordered", {"field": "orders_count", "op": "eq", "value": 0}),
    ("pending_last_order", {"field": "last_order_payment_status", "op": "eq", "value": "pending"}),
    ("champions", {"rfm": "champions"}),
    ("at_risk", {"rfm": "at_risk"}),
    ("engaged_4_5", {"field": "engagement", "op": "gte", "value": 4}),
    ("vip_tag", {"tag": "vip"}),
    ("gold_plan", {"attribute": "plan", "op": "eq", "value": "gold"}),
    ("aov_over_50", {"all": [{"field": "avg_order_value", "op": "gt", "value": 5000},
                             {"not": {"field": "country", "op": "in", "value": ["CN", "TW"]}}]}),
    ("bought_shoes", {"event": "item", "where": {"category": ["shoes"]}}),
    ("spent_100_last_year", {"event": "order", "within_days": 365, "measure": "sum", "op": "gt", "value": 10000}),
    ("ordered_last_30", {"event": "order", "within_days": 30}),
    ("abandoned_last_day", {"event": "checkout", "state": "abandoned", "within_days": 1}),
    ("clicked_last_30", {"event": "activity", "kind": "clicked", "within_days": 30}),
    ("clicked_or_replied_30", {"any": [{"event": "activity", "kind": "clicked", "within_days": 30},
                                       {"event": "activity", "kind": "replied", "within_days": 30}]}),
    ("story", {"all": [{"field": "orders_count", "op": "gt", "value": 2},
                       {"field": "total_spent", "op": "gt", "value": 10000},
                       {"not": {"event": "activity", "kind": "clicked", "within_days": 30}}]}),
    ("no_click_90_marketable", {"all": [{"field": "consent", "op": "eq", "value": "confirmed"},
                                        {"not": {"field": "last_click_at", "op": "within_days", "value": 90}}]}),
    ("shoes_last_90", {"event": "item", "within_days": 90, "where": {"category": ["shoes", "bags"]},
                       "measure": "sum", "op": "gte", "value": 5000}),
    ("birthday_week", {"field": "birthday", "op": "in_next_days", "value": 7}),
]  # fmt: skip


def windowed(seg: Segment) -> bool:
    """Trees whose answer moves with time (windows): the 3 s target rather than the 1 s one."""
    return "clock" in dependencies(seg)


# ---- data ---------------------------------------------------------------------------------------

SUB_COLS = ("tenant", "id", "phone", "first_name", "gender", "birthday", "country", "city", "signup_source",
            "created_at", "consent", "consent_at", "attributes")  # fmt: skip
ORDER_COLS = ("tenant", "order_id", "subscriber_id", "total", "currency", "payment_status", "created_at", "updated_at")
ITEM_COLS = ("tenant", "order_id", "product", "category", "price", "quantity")
CHECKOUT_COLS = ("tenant", "checkout_id", "subscriber_id", "value", "started_at", "completed_at", "abandoned_at",
                 "updated_at")  # fmt: skip
ACTIVITY_COLS = ("tenant", "subscriber_id", "kind", "at")
STATS_COLS = ("tenant", "subscriber_id", "orders_count", "total_spent", "first_order_at", "last_order_at",
              "avg_order_value", "last_order_payment_status", "last_abandoned_checkout_at", "last_click_at",
              "last_reply_at", "rfm_r", "rfm_f", "rfm_m", "engagement")  # fmt: skip


def _score(value: float, bounds: tuple[float, ...], higher_is_better: bool) -> int:
    for i, b in enumerate(bounds):
        if (value >= b) if higher_is_better else (value <= b):
            return 5 - i
    return 1


class Audience:
    """A seeded, streamed generator: rows in chunks, aggregates kept in flat arrays."""

    def __init__(self, n: int, m: int, seed: int) -> None:
        self.n, self.m, self.rng = n, m, random.Random(seed)
        self.count = np.zeros(n + 1, dtype=np.int64)
        self.spent = np.zeros(n + 1, dtype=np.int64)
        self.first = np.full(n + 1, np.inf)
        self.last = np.zeros(n + 1)
        self.last_status = np.full(n + 1, -1, dtype=np.int64)  # index into PAYMENT
        self.last_any = np.zeros(n + 1)
        self.last_click = array.array("d", [0.0]) * (n + 1)
        self.last_reply = array.array("d", [0.0]) * (n + 1)
        self.abandoned = array.array("d", [0.0]) * (n + 1)

    def subscribers(self) -> Iterator[tuple]:
        r = self.rng
        for i in range(1, self.n + 1):
            created = NOW - r.random() * 900 * DAY
            consent = r.choices(["confirmed", "pending", "none", "revoked"], (70, 10, 15, 5))[0]
            attrs = '{"plan": "gold"}' if r.random() < 0.1 else '{"plan": "basic", "size": 42}'
            yield (TENANT, i, _phone(i), "Ana", r.choice(["female", "male", "other", None]),
                   f"19{r.randint(50, 99)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}", r.choice(COUNTRIES),
                   r.choice(CITIES), r.choice(SOURCES), created, consent, created if consent != "none" else None,
                   attrs)  # fmt: skip

    def tags(self) -> Iterator[tuple]:
        r = self.rng
        for i in range(1, self.n + 1):
            if r.random() < 0.2:
                yield (TENANT, i, r.choice(["vip", "loyal", "birthday_club"]))

    def orders(self, chunk: int = 200_000) -> Iterator[tuple[list[tuple], list[tuple]]]:
        """Orders and their items in chunks, in ``order_id`` order (zero-padded: the primary key's
        b-tree is filled by appending). Drawn with numpy (10M orders in seconds): a Pareto head (a
        few buy often; the tail past n drawn again uniformly, not clamped to n, which made
        subscriber n hold 6% of all orders) mixed half and half with a uniform draw."""
        rng = np.random.default_rng(self.rng.getrandbits(63))
        n = self.n
        width = max(8, len(str(self.m)))
        cats = np.array(CATEGORIES, dtype=object)
        status_names = np.array(PAYMENT, dtype=object)
        for start in range(0, self.m, chunk):
            c = min(chunk, self.m - start)
            sid = (rng.pareto(1.2, c) + 1.0) * (n / 6)
            sid = np.maximum(sid.astype(np.int64), 1) if n >= 6 else np.ones(c, dtype=np.int64)
            tail = sid > n
            sid[tail] = rng.integers(1, n + 1, int(tail.sum()))
            flat = rng.random(c) < 0.5
            sid[flat] = rng.integers(1, n + 1, int(flat.sum()))
            total = rng.integers(500, 30001, c)
            status = rng.integers(0, len(PAYMENT), c)
            at = NOW - rng.random(c) * (730 * DAY)
            counted = status_names[status] != "refunded"
            self._account(sid, total, status, at, counted)
            oids = [f"o{k:0{width}d}" for k in range(start, start + c)]
            product = [f"p{x}" for x in rng.integers(1, 501, c).tolist()]
            category = cats[rng.integers(0, len(CATEGORIES), c)].tolist()
            sids, totals, ats, statuses = sid.tolist(), total.tolist(), at.tolist(), status_names[status].tolist()
            yield ([(TENANT, o, s, t, "USD", st, a, a) for o, s, t, st, a in zip(oids, sids, totals, statuses, ats)],
                   [(TENANT, o, p, cat, t, 1) for o, p, cat, t in zip(oids, product, category, totals)])  # fmt: skip

    def _account(self, sid: np.ndarray, total: np.ndarray, status: np.ndarray, at: np.ndarray, counted: np.ndarray) -> None:
        """The aggregates of a chunk of orders (refunded ones count only for the latest status)."""
        s, t, a = sid[counted], total[counted], at[counted]
        self.count += np.bincount(s, minlength=self.n + 1)
        self.spent += np.bincount(s, weights=t, minlength=self.n + 1).astype(np.int64)
        np.minimum.at(self.first, s, a)
        np.maximum.at(self.last, s, a)
        a_all = at
        order = np.lexsort((at, sid))  # by subscriber, then time: the last of each run is the latest
        last_of_run = np.ones(len(order), dtype=bool)
        last_of_run[:-1] = sid[order][1:] != sid[order][:-1]
        pick = order[last_of_run]
        newer = a_all[pick] >= self.last_any[sid[pick]]
        pick = pick[newer]
        self.last_any[sid[pick]] = a_all[pick]
        self.last_status[sid[pick]] = status[pick]

    def checkouts(self) -> Iterator[tuple]:
        r = self.rng
        for k in range(self.n // 4):
            sid, started = r.randint(1, self.n), NOW - r.random() * 60 * DAY
            done = r.random() < 0.6
            abandoned = None if done else started + 3600
            if abandoned is not None:
                self.abandoned[sid] = max(self.abandoned[sid], abandoned)
            yield (TENANT, f"c{k}", sid, r.randint(1000, 40000), started, started + 600 if done else None, abandoned,
                   started)  # fmt: skip

    def activities(self) -> Iterator[tuple]:
        r = self.rng
        for _ in range(2 * self.n):
            sid, kind, at = r.randint(1, self.n), r.choice(["clicked", "replied", "message_sent"]), NOW - r.random() * 180 * DAY
            if kind == "clicked":
                self.last_click[sid] = max(self.last_click[sid], at)
            elif kind == "replied":
                self.last_reply[sid] = max(self.last_reply[sid], at)
            yield (TENANT, sid, kind, at)

    def stats(self) -> Iterator[tuple]:
        count, spent, first, last = self.count.tolist(), self.spent.tolist(), self.first.tolist(), self.last.tolist()
        status = self.last_status.tolist()
        for i in range(1, self.n + 1):
            c, s = count[i], spent[i]
            last_i = last[i] or None
            recency = (NOW - last_i) / DAY if last_i else 10_000.0
            engaged = max(last[i], self.last_click[i], self.last_reply[i])
            yield (TENANT, i, c, s, first[i] if c else None, last_i, s // c if c else 0,
                   PAYMENT[status[i]] if status[i] >= 0 else None,
                   self.abandoned[i] or None, self.last_click[i] or None, self.last_reply[i] or None,
                   _score(recency, (30, 90, 180, 365), False), _score(c, (10, 5, 3, 2), True),
                   _score(s, (100_000, 50_000, 20_000, 5_000), True),
                   _score((NOW - engaged) / DAY if engaged else 10_000.0, (7, 30, 90, 180), False))  # fmt: skip


def _chunks(rows: Iterator[Any], size: int = 50_000) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_LOADED = ("subscribers", "subscriber_tags", "orders", "order_items", "checkouts", "activities", "subscriber_stats",
           "order_rollups")


def _load_sqlite(path: str, gen: Audience) -> None:
    """A bulk load: the store's file with no other connection open. Rows in one transaction, no
    rollback journal and no fsync while it runs (the file is thrown away if the bench dies), a
    1 GB cache for the index builds; the tables' secondary indexes dropped first and built again
    after the rows (one sorted build each, instead of a random b-tree page per inserted row and
    index); primary keys filled in key order. The store's own settings (WAL, synchronous) are
    restored after, and the store opened again reads them."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        journal = True
    except sqlite3.OperationalError:  # the store is open (the tests' small shops): its WAL stays
        journal = False
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("BEGIN")
    marks = ", ".join("?" * len(_LOADED))
    indexes = conn.execute(f"SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL AND tbl_name "
                           f"IN ({marks})", _LOADED).fetchall()  # fmt: skip
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")

    def put(table: str, cols: tuple[str, ...], rows: Any) -> None:
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        for chunk in _chunks(rows):
            conn.executemany(sql, chunk)

    put("subscribers", SUB_COLS, gen.subscribers())
    put("subscriber_tags", ("tenant", "subscriber_id", "tag"), gen.tags())
    for orders, items in gen.orders():
        conn.executemany(f"INSERT INTO orders ({', '.join(ORDER_COLS)}) VALUES ({', '.join('?' * len(ORDER_COLS))})",
                         orders)  # fmt: skip
        conn.executemany(f"INSERT INTO order_items ({', '.join(ITEM_COLS)}) VALUES ({', '.join('?' * len(ITEM_COLS))})",
                         items)  # fmt: skip
    put("checkouts", CHECKOUT_COLS, gen.checkouts())
    put("activities", ACTIVITY_COLS, gen.activities())
    put("subscriber_stats", STATS_COLS, gen.stats())
    rollups.rebuild(Tx(conn.cursor(), "?"), TENANT)
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute(latest_order_fill("sqlite"))  # the latest order's key, after the orders' indexes
    conn.execute("COMMIT")
    if journal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def _load_postgres(url: str, gen: Audience) -> None:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        # Secondary indexes (not those of a constraint) dropped for the COPYs and built again after.
        cur.execute("SELECT indexname, indexdef FROM pg_indexes i WHERE tablename = ANY(%s) AND NOT EXISTS "
                    "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)", (list(_LOADED),))  # fmt: skip
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f"DROP INDEX {name}")

        def put(table: str, cols: tuple[str, ...], rows: Iterator[tuple]) -> None:
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

        put("subscribers", SUB_COLS, gen.subscribers())
        put("subscriber_tags", ("tenant", "subscriber_id", "tag"), gen.tags())
        with cur.copy(f"COPY orders ({', '.join(ORDER_COLS)}) FROM STDIN") as orders_copy:
            item_file = tempfile.TemporaryFile()  # items after their orders (one COPY each)
            for orders, items in gen.orders():
                for row in orders:
                    orders_copy.write_row(row)
                item_file.write(b"".join(b"\t".join(str(v).encode() for v in it) + b"\n" for it in items))
        item_file.seek(0)
        with cur.copy(f"COPY order_items ({', '.join(ITEM_COLS)}) FROM STDIN") as items_copy:
            while block := item_file.read(1 << 20):
                items_copy.write(block)
        item_file.close()
        put("checkouts", CHECKOUT_COLS, gen.checkouts())
        put("activities", ACTIVITY_COLS, gen.activities())
        put("subscriber_stats", STATS_COLS, gen.stats())
        rollups.rebuild(Tx(cur, "%s"), TENANT)
        cur.execute("SET maintenance_work_mem = '1GB'")
        for _, sql in indexes:
            cur.execute(sql)
        cur.execute(latest_order_fill("postgres"))  # the latest order's key, after the orders' indexes
        cur.execute(f"SELECT setval(pg_get_serial_sequence('subscribers', 'id'), {gen.n})")
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE")


# ---- a throwaway PostgreSQL ---------------------------------------------------------------------


# The durability a user's server has: ``fsync`` and ``synchronous_commit`` at PostgreSQL's defaults
# (on; Sluice sets neither), so a commit waits for its WAL on disk as it does in production.
DURABLE = {"shared_buffers": "512MB", "work_mem": "64MB"}
FAST = {"fsync": "off", "synchronous_commit": "off", **DURABLE}  # a server that may lose its last commits


def throwaway_postgres(durable: bool = False) -> contextlib.AbstractContextManager[str]:
    """The benches' server: bench/postgres.py with a larger cache and sort memory. ``durable``: as a
    user's (the audience and flows benches); else ``fsync`` off (the campaign benches, as before)."""
    return postgres.throwaway_postgres(DURABLE if durable else FAST, prefix="sluice-bench-pg-")


# ---- the measurement ----------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _counts(store: Any, runs: int, deadline: float = math.inf, echo: Any = None) -> list[dict[str, Any]]:
    """Each tree of the mix counted ``runs`` times (its median kept); past ``deadline``
    (``time.perf_counter``) the remaining trees are counted once."""
    out = []
    for name, tree in MIX:
        seg = parse_segment(tree)
        where, params = compile_segment(seg, store.engine, TENANT, NOW)
        times, cpu, count = [], [], 0
        for k in range(runs):
            if k and time.perf_counter() > deadline:
                break
            t0, c0 = time.perf_counter(), time.process_time()
            count = store.count_where(TENANT, where, params)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        # cpu_s: this process's CPU (SQLite runs in it; PostgreSQL's server is another process)
        out.append({"name": name, "windowed": windowed(seg), "count": count, "seconds": statistics.median(times),
                    "cpu_s": statistics.median(cpu), "runs": len(times)})  # fmt: skip
        if echo is not None:
            echo(_tree_line(out[-1]))
    return out


def _tree_line(c: dict[str, Any]) -> str:
    return (f"  {c['name']:<26} {'windowed' if c['windowed'] else '':<9} {c['count']:>10,} {c['seconds']:>8.3f} s "
            f"{c['cpu_s']:>8.3f} s cpu")


def _phone(i: int) -> str:
    """Subscriber ``i``'s number: a valid French mobile (+33 6 1x xx xx xx), canonical E.164."""
    return f"+3361{i:07d}"


def _order_line(k: int, r: random.Random, n: int) -> bytes:
    # 2% of orders come from numbers the shop has not seen (a new subscriber, checked by phonenumbers)
    phone = _phone(r.randint(1, n)) if r.random() >= 0.02 else f"+3362{r.randint(0, 9_999_999):07d}"
    return json.dumps({"type": "order", "id": f"bench-{k}", "at": NOW - r.random() * 3600, "order_id": f"bench-o{k}",
                       "phone": phone, "total": r.randint(500, 30000), "currency": "USD", "payment_status": "paid",
                       "items": [{"product": f"p{r.randint(1, 500)}", "category": r.choice(CATEGORIES),
                                  "price": r.randint(500, 30000)}]}).encode()  # fmt: skip


def _events(store: Any, n: int, events: int, batch: int, concurrency: int, seed: int,
            membership_process: bool = False) -> dict[str, Any]:  # fmt: skip
    """Order events through the service functions the HTTP routes call, with the membership loop running
    as ``serve`` runs it. Bulk: ``Audience.ingest_ndjson`` (``POST /v1/events/bulk``), one body of
    ``batch`` lines after another: parsing and checking, the store's batch transaction with the
    aggregates (``events_per_s``: answered at commit); membership follows from the loop, its lag per
    subscriber from the commit of its event to its memberships stored (``membership_update_*``);
    ``events_with_membership_per_s`` counts until the loop caught up. Single: ``Audience.post_event``
    (``POST /v1/events``) from ``concurrency`` concurrent senders, group-committed, each answered after
    its commit (``single_p99_s``), membership from the loop (``single_membership_p99_s``)."""
    r = random.Random(seed + 1)
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "{TENANT}"\nkey_env = "BENCH_KEY"\n')
    assert settings is not None
    audience = AudienceService(store, settings, lambda: NOW)
    audience.batch_size = batch
    audience.membership_process = membership_process  # off, as ``serve`` runs it; on: the loop's reads in a child
    t0 = time.perf_counter()
    for name, tree in MIX:  # as a live service has them: created, their members filled from their SQL
        anyio.run(audience.put_segment, TENANT, name, tree)
    segments_s = time.perf_counter() - t0
    lines = [_order_line(k, r, n) for k in range(events)]
    bulk, singles = lines[: events // 2], [decode_event(x) for x in lines[events // 2 :]]
    latencies: list[float] = []
    audience.on_membership = latencies.extend

    single_members: list[float] = []
    cpu: dict[str, float] = {}  # this process's CPU per phase, membership included (SQLite: all of it)
    threads = _ThreadCpu(store, audience)  # the same, split: ingest's and membership's worker threads
    # PostgreSQL: the server's processes' CPU too (the store's backends, the membership child's, WAL ...)
    pg = getattr(store, "engine", "") == "postgres"
    server = (lambda: postgres.server_cpu(store._conn.info.backend_pid)) if pg else (lambda: {})

    async def main() -> tuple[float, float, float, list[float]]:
        single_lat: list[float] = []
        it = iter(singles)

        async def client() -> None:
            for e in it:
                t = time.perf_counter()
                await audience.post_event(TENANT, e)
                single_lat.append(time.perf_counter() - t)

        async with anyio.create_task_group() as tg:
            await tg.start(audience.run_membership)
            t0, c0, s0 = time.perf_counter(), time.process_time(), server()
            threads.reset()
            threads.audience = audience  # the loop's child (started by run_membership): its CPU counts
            threads.reset()
            for i in range(0, len(bulk), batch):
                await audience.ingest_ndjson(TENANT, b"\n".join(bulk[i : i + batch]))
            bulk_s = time.perf_counter() - t0
            await audience.wait_membership()
            settled_s = time.perf_counter() - t0
            cpu.update(threads.reset())
            cpu["bulk"] = time.process_time() - c0 + cpu["child"]  # the membership child's CPU too
            s1 = server()
            cpu["server"] = postgres.cpu_spent(s0, s1) if s0 else 0.0
            ingest = store._conn.info.backend_pid if pg else 0  # the store's connection: the batches' backend
            cpu["server_ingest"] = s1.get(ingest, 0.0) - s0.get(ingest, 0.0)
            audience.on_membership = single_members.extend
            t0, c0 = time.perf_counter(), time.process_time()
            async with anyio.create_task_group() as clients:
                for _ in range(concurrency):
                    clients.start_soon(client)
            single_s = time.perf_counter() - t0
            await audience.wait_membership()
            cpu["single"] = time.process_time() - c0 + threads.reset()["child"]
            tg.cancel_scope.cancel()
        return bulk_s, settled_s, single_s, single_lat

    bulk_s, settled_s, single_s, single_lat = anyio.run(main)
    members = sum(len(store.members(TENANT, seg.id, after=0, limit=10**9)) for seg in store.segments(TENANT, limit=100))
    group = audience._groups[TENANT]
    return {"events_per_s": len(bulk) / bulk_s, "events_with_membership_per_s": len(bulk) / settled_s,
            "membership_update_p99_s": _pct(latencies, 0.99),
            "membership_update_p50_s": _pct(latencies, 0.50), "single_events_per_s": len(singles) / single_s,
            "single_p99_s": _pct(single_lat, 0.99),
            "single_membership_p99_s": _pct(single_members, 0.99), "single_events_per_commit": group.items / max(1, group.flushes),
            "memberships_after": members, "segments_create_s": segments_s,
            "bulk_cpu_us_per_event": cpu["bulk"] / len(bulk) * 1e6, "single_cpu_us_per_event": cpu["single"] / len(singles) * 1e6,
            "bulk_ingest_cpu_us_per_event": cpu["ingest"] / len(bulk) * 1e6,
            "bulk_membership_cpu_us_per_event": cpu["membership"] / len(bulk) * 1e6,
            "bulk_membership_child_cpu_us_per_event": cpu["child"] / len(bulk) * 1e6,
            "bulk_server_cpu_us_per_event": cpu["server"] / len(bulk) * 1e6,
            "bulk_server_ingest_cpu_us_per_event": cpu["server_ingest"] / len(bulk) * 1e6}  # fmt: skip


class _ThreadCpu:
    """CPU of the bulk path's two kinds of work, each measured in the worker thread that does it
    (``time.thread_time``): ``ingest`` is the numbers' check and the store's batch transaction
    (``check_events``, ``apply_events``), ``membership`` the membership loop's passes
    (``refresh_members``: the segments' restricted SQL, SQLite's included, and the writes), in this
    process's thread and, when the passes run in the loop's child process (``member_process``), the
    child's CPU (``child``, counted in ``membership`` too). The NDJSON parse and the compiles run on
    the event loop and count in neither (they are in ``bulk_cpu``)."""

    def __init__(self, store: Any, audience: Any) -> None:
        self.spent = {"ingest": 0.0, "membership": 0.0}
        self._lock = threading.Lock()
        self.audience: Any = None
        self._child_seen = 0.0
        for obj, name, kind in ((store, "apply_events", "ingest"), (audience, "check_events", "ingest"),
                                (store, "refresh_members", "membership")):  # fmt: skip
            setattr(obj, name, self._timed(getattr(obj, name), kind))
        import campaigns.service.member_process as mp  # the child's passes: timed in this thread too

        mp.MemberProcess.refresh_members = self._timed(mp.MemberProcess.refresh_members, "membership")  # type: ignore[method-assign]

    def _child(self) -> float:
        proc = getattr(self.audience, "member_process", None)
        total = proc.cpu_s if proc is not None else self._child_seen
        spent, self._child_seen = max(0.0, total - self._child_seen), total
        return spent

    def _timed(self, fn: Any, kind: str) -> Any:
        def run(*args: Any, **kw: Any) -> Any:
            c = time.thread_time()
            try:
                return fn(*args, **kw)
            finally:
                with self._lock:
                    self.spent[kind] += time.thread_time() - c
        return run

    def reset(self) -> dict[str, float]:
        with self._lock:
            spent, self.spent = self.spent, {"ingest": 0.0, "membership": 0.0}
        spent["child"] = self._child()
        spent["membership"] += spent["child"]
        return spent


def _store_ratio(store: Any, n: int, seed: int, rounds: int = 3) -> dict[str, float]:
    """The store alone, in the same run: order events for known subscribers through ``apply_event`` (one
    transaction each, as the old path) and through ``apply_events`` (1,000 a transaction); medians of
    ``rounds`` (aggregates updated, no membership, no parsing)."""
    from campaigns.core.events import Item, OrderEvent

    r = random.Random(seed + 2)

    def ev(k: int) -> OrderEvent:
        return OrderEvent(id=f"ratio-{k}", at=NOW - k, order_id=f"ratio-o{k}", phone=_phone(r.randint(1, n)), total=1000,
                          currency="USD", payment_status="paid", items=(Item(product="p", category="shoes", price=1000),))

    one_by_one, batched, batched_cpu = [], [], []
    for i in range(rounds):
        singles = [ev(k) for k in range(i * 100_000, i * 100_000 + 1000)]
        t = time.perf_counter()
        for e in singles:
            store.apply_event(TENANT, e, phone=e.phone, now=NOW)
        one_by_one.append(len(singles) / (time.perf_counter() - t))
        many = [(e, e.phone) for e in (ev(k) for k in range(i * 100_000 + 50_000, i * 100_000 + 60_000))]
        t, c = time.perf_counter(), time.process_time()
        for j in range(0, len(many), 1000):
            store.apply_events(TENANT, many[j : j + 1000], now=NOW)
        batched.append(len(many) / (time.perf_counter() - t))
        batched_cpu.append((time.process_time() - c) / len(many) * 1e6)
    return {"store_apply_event_per_s": statistics.median(one_by_one), "store_apply_events_per_s": statistics.median(batched),
            "store_apply_events_cpu_us": statistics.median(batched_cpu)}  # fmt: skip


def run(engine: str, n: int, m: int, runs: int, events: int, seed: int, pg_url: str | None, workdir: str | None,
        batch: int = 1000, concurrency: int = 64, store_ratio: bool = False, max_seconds: float = math.inf,
        echo: Any = None, membership_process: bool = False) -> dict:  # fmt: skip
    """``events`` 0: the import and the counts only (the 1M / 10M size: the events' 23 live segments
    would be filled first). ``max_seconds``: past it (from the start of the counts), each tree left is
    counted once."""
    with contextlib.ExitStack() as stack:
        if engine == "postgres":
            url = pg_url or stack.enter_context(throwaway_postgres(durable=True))
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-bench-aud-", dir=workdir))
            url = f"sqlite:///{tmp}/campaigns.db"
        store = open_store(url)  # the store's own schema (and the segments' indexes)
        gen = Audience(n, m, seed)
        t0 = time.perf_counter()
        if engine == "postgres":
            _load_postgres(url, gen)
        else:
            store.close()  # the bulk load wants the file to itself (journal_mode=OFF)
            _load_sqlite(url.removeprefix("sqlite:///"), gen)
            store = open_store(url)
            store.analyze()  # ANALYZE, and the store's planning statistics for the tables still empty
        stack.callback(store.close)
        import_s = time.perf_counter() - t0
        if echo is not None:
            echo(f"  import_s {import_s:.1f}")
        counts = _counts(store, runs, time.perf_counter() + max_seconds, echo)
        ev = _events(store, n, events, batch, concurrency, seed, membership_process) if events else {}
        if store_ratio:
            ev.update(_store_ratio(store, n, seed))
    plain = [c["seconds"] for c in counts if not c["windowed"]]
    win = [c["seconds"] for c in counts if c["windowed"]]
    slowest = sorted(counts, key=lambda c: -c["seconds"])[:3]
    return {
        "scenario": "audience",
        "engine": engine,
        "subscribers": n,
        "orders": m,
        "trees": len(counts),
        "import_s": import_s,
        **{k: v for k, v in ev.items() if not k.startswith("membership")},
        "count_p50_s": statistics.median(plain),
        "count_p95_s": _pct(plain + win, 0.95),
        "count_max_s": max(plain + win),
        "count_windowed_p50_s": statistics.median(win),
        "count_cpu_p50_s": statistics.median([c["cpu_s"] for c in counts if not c["windowed"]]),
        "count_windowed_cpu_p50_s": statistics.median([c["cpu_s"] for c in counts if c["windowed"]]),
        "slowest_trees": [c["name"] for c in slowest],
        **({"membership_update_p99_s": ev["membership_update_p99_s"],
            "membership_update_p50_s": ev["membership_update_p50_s"]} if events else {}),
        "per_tree": counts,
        "machine": describe(),
    }


@click.command("audience")
@click.option("--subscribers", "n", default=100_000, show_default=True, help="Subscribers to import.")
@click.option("--orders", "m", default=1_000_000, show_default=True, help="Orders to import (one item each).")
@click.option("--engine", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--pg-url", default=None, help="PostgreSQL to use (an empty database); default: start a throwaway one.")
@click.option("--runs", default=3, show_default=True, help="Counts per tree; its figure is the median.")
@click.option("--events", default=40_000, show_default=True,
              help="Order events after the import: half as bulk NDJSON bodies, half as concurrent single events "
                   "(0: none, the import and the counts only).")
@click.option("--max-seconds", default=None, type=float,
              help="Bound the counts: past this many seconds, each tree left is counted once.")
@click.option("--batch", default=1000, show_default=True, help="Events per bulk body (and per transaction).")
@click.option("--concurrency", default=64, show_default=True, help="Concurrent single-event senders.")
@click.option("--store-ratio", is_flag=True, help="Also time the store alone: apply_event one by one vs apply_events.")
@click.option("--seed", default=1, show_default=True)
@click.option("--workdir", default=None, type=click.Path(file_okay=False), help="Where the SQLite file goes.")
@click.option("--membership-process/--no-membership-process", default=False, show_default=True,
              help="The membership loop's reads in a child process (SQLite; `serve` keeps them in-process).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_audience(n: int, m: int, engine: str, pg_url: str | None, runs: int, events: int, batch: int, concurrency: int,
                   store_ratio: bool, seed: int, workdir: str | None, json_path: str | None, out_dir: str | None,
                   max_seconds: float | None, membership_process: bool = False) -> None:  # fmt: skip
    """Segment counts, event ingest and live membership over N subscribers and M orders."""
    if n < 1 or m < 0 or events == 1 or events < 0 or runs < 1:
        raise click.BadParameter("--subscribers >= 1, --orders >= 0, --events 0 or >= 2, --runs >= 1")
    click.echo(f"sluice bench audience: {engine}, {n:,} subscribers, {m:,} orders, {len(MIX)} segment trees")
    r = run(engine, n, m, runs, events, seed, pg_url, workdir, batch, concurrency, store_ratio,
            math.inf if max_seconds is None else max_seconds, lambda line: click.echo(line), membership_process)
    keys = ["import_s"] if not events else ["import_s", "events_per_s", "bulk_cpu_us_per_event",
                                            "bulk_ingest_cpu_us_per_event", "bulk_membership_cpu_us_per_event",
                                            "bulk_server_cpu_us_per_event", "bulk_server_ingest_cpu_us_per_event",
                                            "membership_update_p99_s", "single_events_per_s", "single_cpu_us_per_event",
                                            "single_p99_s", "single_membership_p99_s", "single_events_per_commit"]  # fmt: skip
    for key in (*keys,
                *(["store_apply_event_per_s", "store_apply_events_per_s", "store_apply_events_cpu_us"] if store_ratio else []),
                "count_p50_s", "count_p95_s", "count_windowed_p50_s", "count_cpu_p50_s", "count_windowed_cpu_p50_s"):  # fmt: skip
        click.echo(f"  {key:<36} {r[key]:>12,.3f}")
    save(r, json_path, out_dir)


def mix_and_events(store: Any, n: int, seed: int, count: int) -> tuple[Any, dict[int, str], list[Any]]:
    """The profiles' setup (`bench.pg_member_profile`, `bench.sqlite_member_profile`): the audience
    service over ``store`` with the bench's segment mix saved (segment id -> name) and ``count``
    order events decoded, the same for a seed on every engine."""
    conf = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "{TENANT}"\nkey_env = "BENCH_KEY"\n')
    assert conf is not None
    audience = AudienceService(store, conf, lambda: NOW)
    names = {anyio.run(audience.put_segment, TENANT, name, tree).id: name for name, tree in MIX}
    r = random.Random(seed + 1)
    return audience, names, [decode_event(_order_line(k, r, n)) for k in range(count)]


def apply_batches(audience: Any, events: list[Any], batches: int, batch: int) -> None:
    """``events`` applied as ``batches`` bulk batches of ``batch`` (what the bulk endpoint does)."""
    for i in range(batches):
        anyio.run(audience.apply_many, TENANT, [(e, e.phone) for e in events[i * batch:(i + 1) * batch]])
