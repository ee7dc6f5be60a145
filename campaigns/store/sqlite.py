"""The embedded default engine: SQLite (WAL), one connection serialised by a lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from campaigns.errors import StorageError
from campaigns.store.campaign_sql import SharedLinkReader, resolve_codes
from campaigns.store import rollups
from campaigns.store.schema import statements, upgrades
from campaigns.store.campaign_rows import LinkRow
from campaigns.store.sql import SqlStore, Tx
from campaigns.store.sqlite_checkpoint import BACKSTOP_PAGES, Checkpointer

# What SQLite plans the audience's statements with when a table has no statistics (a new store, an
# index added later, or a table empty when ANALYZE last ran): the shape of a shop of 1M subscribers
# and 10M orders, as ``sqlite_stat1`` rows (https://sqlite.org/optoverview.html#manctrl: the number of
# rows, then the rows per distinct prefix of the index's columns). Without them SQLite assumes the
# first column of an index is selective (about ten rows a value), but every index here leads with
# the tenant: it took a covering index on ``tenant`` alone over a per-subscriber one and read the
# whole shop for a few subscribers (the single-event path fell from 571/s at 20k subscribers to 35/s
# at 1M; tests/campaigns/test_event_scaling.py). Real statistics, where a table has them, stay.
_PLAN_STATS: dict[str, dict[str, str]] = {
    "subscribers": {"subscribers_consent": "1000000 1000000 250000", "sqlite_autoindex_subscribers_1": "1000000 1000000 1"},
    "subscriber_tags": {"subscriber_tags_tag": "300000 300000 100000", "sqlite_autoindex_subscriber_tags_1": "300000 300000 2 1"},
    "subscriber_stats": {"subscriber_stats_tenant": "1000000 1000000"},
    "orders": {"orders_segment_owner": "10000000 10000000 1 1 1 1", "orders_segment_window": "10000000 10000000 2 2 1 1",
               "orders_segment_spend": "10000000 10000000 10 1 1 1", "sqlite_autoindex_orders_1": "10000000 10000000 1"},
    "order_items": {"order_items_segment": "10000000 10000000 1000000 1 1 1", "order_items_order": "10000000 10000000 1"},
    "checkouts": {"checkouts_segment_abandoned": "250000 250000 2 1", "checkouts_open": "250000 250000 2",
                  "checkouts_subscriber": "250000 250000 2", "sqlite_autoindex_checkouts_1": "250000 250000 1"},
    "activities": {"activities_segment": "2000000 2000000 500000 1 1",
                   "activities_subscriber": "2000000 2000000 2 1 1"},
    "consent_ledger": {"consent_ledger_action": "2000000 2000000 500000 1", "consent_ledger_subscriber": "2000000 2000000 2 1"},
    # a store made before 2026-12-07 keeps these two as rowid tables with a key index (the first
    # name); a newer one has them WITHOUT ROWID, whose key is the table (the row named after it)
    "segment_members": {"segment_members_by_subscriber": "10000000 10000000 10 1",
                        "sqlite_autoindex_segment_members_1": "10000000 10000000 500000 1",
                        "segment_members": "10000000 10000000 500000 1"},
    "segment_timers": {"segment_timers_due": "1000000 1", "sqlite_autoindex_segment_timers_1": "1000000 1000000 100000 1",
                       "segment_timers": "1000000 1000000 100000 1"},
    "processed_events": {"sqlite_autoindex_processed_events_1": "10000000 10000000 1"},
    "early_fulfillments": {"sqlite_autoindex_early_fulfillments_1": "1000 1000 1"},
    "order_rollups": {"sqlite_autoindex_order_rollups_1": "15000000 15000000 1000000 70000 1", "order_rollups_by_subscriber": "15000000 15000000 15 2 1"},
}  # fmt: skip


class SQLiteStore(SqlStore):
    engine = "sqlite"
    _least = "MIN"

    def __init__(self, path: str, *, synchronous: str = "NORMAL", cache_kib: int = 65_536,
                 mmap_bytes: int = 1 << 30) -> None:  # fmt: skip
        super().__init__()
        self._path = path
        self._pragmas = (cache_kib, mmap_bytes)
        self._reader: sqlite3.Connection | None = None  # the membership's snapshot reads, made at first use
        self._flow_reader: sqlite3.Connection | None = None  # the flow runtime's planned batches (flow_plan)
        self._flow_lock = threading.Lock()
        self._status_reader: sqlite3.Connection | None = None  # a launch's cancel checks (campaign_status)
        self._status_lock = threading.Lock()
        self._checkpointer: Checkpointer | None = None  # the WAL copied back on a thread of its own
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: a commit is durable against a crash of the process, not of the
            # machine (the last commits before a power loss may be lost; the database stays intact).
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            # The page cache and a memory map sized for an audience, not SQLite's 2 MB default: inserts
            # into the events' indexes and the aggregates' lookups touch random pages.
            self._conn.execute(f"PRAGMA cache_size={-cache_kib}")
            self._conn.execute(f"PRAGMA mmap_size={mmap_bytes}")
            self._conn.execute("PRAGMA foreign_keys=OFF")
            for stmt in statements("sqlite"):
                self._conn.execute(stmt)
            for stmt in upgrades("sqlite", lambda t: {c[1] for c in self._conn.execute(f"PRAGMA table_info({t})")}):
                self._conn.execute(stmt)
            self._plan_statistics()
            if rollups.missing(lambda sql: self._conn.execute(sql).fetchone()):  # the usual open takes no write lock
                with self._tx() as tx:
                    rollups.ensure(tx)
            if self._flow_snapshot_ok():  # a file: its WAL checkpointed off the committing thread
                self._conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
                self._checkpointer = Checkpointer(path, (self._member_lock, self._lock))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc
            try:
                yield Tx(cur, "?")
            except BaseException:
                self._conn.rollback()
                raise
            else:
                try:
                    cur.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._conn.rollback()
                    raise StorageError(str(exc)) from exc
                if self._checkpointer is not None:
                    self._checkpointer.poke(self._conn.total_changes)
            finally:
                cur.close()

    @contextmanager
    def _member_read(self) -> Iterator[Tx]:
        """A membership pass's reads on a connection of its own: a WAL snapshot (``BEGIN``, read, end),
        off the write lock, so they run while the next batch of events commits on the store's
        connection (the sqlite3 module lets go of the GIL while SQLite steps: the two use two cores).
        Held under ``_member_lock`` (the pass's). A database in memory has one connection: the store's."""
        reader = self._open_reader()
        if reader is None:
            with self._member_tx() as tx:
                yield tx
            return
        with self._snapshot(reader) as tx:
            yield tx

    @property
    def process_url(self) -> str | None:
        """The URL another process opens this store by (None for a database in memory)."""
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            return None
        return f"sqlite:///{self._path}"

    def _flow_snapshot_ok(self) -> bool:
        return self._path not in ("", ":memory:") and not self._path.startswith("file:")

    @contextmanager
    def _flow_snapshot(self) -> Iterator[Tx]:
        """The flow runtime's planned batches (``FlowSql.flow_plan``): a WAL read snapshot on a
        connection of its own, off the write lock, so a worker decides its batch while another
        writes. One connection per store, used by one batch at a time (``_flow_lock``)."""
        with self._flow_lock:
            if self._flow_reader is None:
                self._flow_reader = self._read_only_connection()
            with self._snapshot(self._flow_reader) as tx:
                yield tx

    @contextmanager
    def _status_read(self) -> Iterator[Tx]:
        """``campaign_status``'s read: a WAL snapshot on a connection of its own, so a launch's check
        for a cancel between two posts does not wait for the freeze chunk that holds the store's
        connection (docs/ARCHITECTURE.md, "A launch's answers off its critical path"). A database in
        memory has one connection: the store's."""
        if not self._flow_snapshot_ok():
            with self._tx() as tx:
                yield tx
            return
        with self._status_lock:
            if self._status_reader is None:
                self._status_reader = self._read_only_connection()
            with self._snapshot(self._status_reader) as tx:
                yield tx

    def _open_reader(self) -> sqlite3.Connection | None:
        if self._reader is None and self._flow_snapshot_ok():
            self._reader = self._read_only_connection()
        return self._reader

    def _read_only_connection(self) -> sqlite3.Connection:
        """A connection of its own to the store's file, for WAL read snapshots (``_snapshot``)."""
        cache_kib, mmap_bytes = self._pragmas
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute(f"PRAGMA cache_size={-cache_kib}")
        conn.execute(f"PRAGMA mmap_size={mmap_bytes}")
        conn.execute("PRAGMA query_only=ON")
        return conn

    @staticmethod
    @contextmanager
    def _snapshot(conn: sqlite3.Connection) -> Iterator[Tx]:
        """A read transaction on ``conn`` (``BEGIN``, read, rolled back: nothing to commit)."""
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")
            yield Tx(cur, "?")
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        finally:
            if conn.in_transaction:
                conn.rollback()
            cur.close()

    def _close_reader(self) -> None:
        """Dropped when the planning statistics change: a connection loads them when it opens."""
        with self._member_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _plan_statistics(self) -> None:
        """``_PLAN_STATS`` for every index of the audience's tables that has no statistics row."""
        c = self._conn

        def missing() -> list[tuple[str, str, str]]:
            have = {(t, i) for t, i in c.execute("SELECT tbl, idx FROM sqlite_stat1")}
            names = {r[0] for r in c.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
            # a WITHOUT ROWID table's key has no index of its own: ANALYZE names its row after the table
            names |= {r[0] for r in c.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql LIKE '%WITHOUT ROWID'")}
            return [(t, i, stat) for t, idx in _PLAN_STATS.items() for i, stat in idx.items()
                    if (t, i) not in have and i in names]  # fmt: skip

        if c.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone() is not None and not missing():
            return  # the usual open: nothing to write, no write lock taken
        c.execute("ANALYZE sqlite_schema")  # creates sqlite_stat1 if missing (and analyses nothing else)
        c.execute("BEGIN IMMEDIATE")  # checked again under the write lock: two processes opening at once
        try:
            c.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", missing())
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        c.execute("ANALYZE sqlite_schema")  # reloads the statistics into the planner

    def analyze(self) -> None:
        """Statistics from the data (``ANALYZE``, after a bulk load), then ``_PLAN_STATS`` for the tables
        that were empty (ANALYZE leaves them without a row)."""
        with self._lock:
            self._conn.execute("ANALYZE")
            self._plan_statistics()
        self._close_reader()

    def read_nowait(self, sql: str, params: tuple) -> list[tuple] | None:
        """One read on the calling thread if the connection is free this instant, else None (the
        caller then goes through a worker thread). Never waits: safe on an event loop (the redirect)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._conn.execute(sql, params).fetchall()  # autocommit: a read sees the last commit
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        finally:
            self._lock.release()

    def open_link_reader(self) -> Any:
        """A read-only connection of its own for the redirect (WAL: it never waits for the writer);
        ``:memory:`` has no second connection to the same data, so it shares the store's."""
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            return SharedLinkReader(self)
        return SQLiteLinkReader(self._path, keys=self.link_keys)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._close_reader()
        with self._flow_lock:
            if self._flow_reader is not None:
                self._flow_reader.close()
                self._flow_reader = None
        with self._status_lock:
            if self._status_reader is not None:
                self._status_reader.close()
                self._status_reader = None
        with self._lock:
            self._conn.close()


class SQLiteLinkReader:
    """Links by code on a connection used only by the event loop's redirects: in WAL mode a reader
    sees the last commit and does not wait for the writer, so an indexed read (tens of µs) runs on
    the loop without a thread hop. ``busy`` is short (a checkpoint's brief lock): the caller then
    falls back to the store's own read in a worker thread."""

    on_loop = True

    def __init__(self, path: str, *, busy_s: float = 0.05, keys: Mapping[str, bytes] | None = None) -> None:
        self._keys: Mapping[str, bytes] = keys if keys is not None else {}  # the store's (range codes)
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_s)
            self._conn.execute("PRAGMA query_only=1")
            self._conn.execute("PRAGMA mmap_size=1073741824")  # pages read from the OS cache without a syscall
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {path} for reading: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def read(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        try:
            return resolve_codes(self._query, codes, self._keys)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def close(self) -> None:
        self._conn.close()
