"""The embedded default engine: SQLite (WAL), one connection serialised by a lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from campaigns.errors import StorageError
from campaigns.store.campaign_sql import SharedLinkReader, link_read_many, link_rows
from campaigns.store.schema import statements, upgrades
from campaigns.store.campaign_rows import LinkRow
from campaigns.store.sql import SqlStore, Tx


class SQLiteStore(SqlStore):
    engine = "sqlite"
    _least = "MIN"

    def __init__(self, path: str, *, synchronous: str = "NORMAL", cache_kib: int = 65_536,
                 mmap_bytes: int = 1 << 30) -> None:  # fmt: skip
        super().__init__()
        self._path = path
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
            finally:
                cur.close()

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
        return SQLiteLinkReader(self._path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SQLiteLinkReader:
    """Links by code on a connection used only by the event loop's redirects: in WAL mode a reader
    sees the last commit and does not wait for the writer, so an indexed read (tens of µs) runs on
    the loop without a thread hop. ``busy`` is short (a checkpoint's brief lock): the caller then
    falls back to the store's own read in a worker thread."""

    on_loop = True

    def __init__(self, path: str, *, busy_s: float = 0.05) -> None:
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_s)
            self._conn.execute("PRAGMA query_only=1")
            self._conn.execute("PRAGMA mmap_size=1073741824")  # pages read from the OS cache without a syscall
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {path} for reading: {exc}") from exc
        self._one = link_read_many(1)

    def read(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        try:
            if len(codes) == 1:
                return link_rows(self._conn.execute(self._one, (codes[0],)).fetchall())
            out: dict[str, LinkRow] = {}
            for i in range(0, len(codes), 500):
                chunk = list(codes[i:i + 500])
                out.update(link_rows(self._conn.execute(link_read_many(len(chunk)), chunk).fetchall()))
            return out
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def close(self) -> None:
        self._conn.close()
