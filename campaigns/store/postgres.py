"""The PostgreSQL engine (psycopg 3, synchronous; the shell calls it from worker threads). Two
connections, each serialised by a lock, each operation one transaction: the store's, and one for
the membership writers (``_member_tx``), so the live membership of one batch runs in the server while
the next batch's events commit on the other.

The redirect's two round trips may be the exception (``short_link_store_io = "loop"``): on the
event loop, on psycopg's async connections of their own (no worker-thread hop a round): ``PgLinkReader.aread`` (a round of missed
codes: the ``short_links`` rows and the range slots in one statement, one round trip) and ``PgClickWriter``
(the click flush, one statement)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from contextlib import contextmanager

import psycopg

from campaigns.errors import StorageError
from campaigns.store import click_sql
from campaigns.store.campaign_rows import HitIn, LinkRow
from campaigns.store.campaign_sql import (link_read_many, link_rows, range_candidates, range_links, range_reads, resolve_codes,
                                         resolve_ranges)
from campaigns.store import rollups
from campaigns.store.schema import statements, upgrades
from campaigns.store.sql import SqlStore, Tx


class PostgresStore(SqlStore):
    engine = "postgres"
    _least = "LEAST"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._member_conn: psycopg.Connection | None = None  # made at its first use
        try:
            self._conn = psycopg.connect(url, autocommit=True)
            with self._conn.transaction():
                # Two processes creating the schema at once would race on the catalog.
                self._conn.execute("SELECT pg_advisory_xact_lock(717017)")
                for stmt in statements("postgres"):
                    self._conn.execute(stmt)
                for stmt in upgrades("postgres", self._columns):
                    self._conn.execute(stmt)
            with self._tx() as tx:
                rollups.ensure(tx)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open the PostgreSQL store: {exc}") from exc

    @property
    def process_url(self) -> str:
        """The URL another process opens this store by."""
        return self._url

    def _columns(self, table: str) -> set[str]:
        rows = self._conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                  "current_schema() AND table_name = %s", (table,)).fetchall()  # fmt: skip
        return {r[0] for r in rows}

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._lock:
            self._conn = self._connected(self._conn)
            with self._in_tx(self._conn) as tx:
                yield tx

    @contextmanager
    def _member_tx(self) -> Iterator[Tx]:
        with self._member_lock:
            self._member_conn = self._connected(self._member_conn)
            with self._in_tx(self._member_conn) as tx:
                yield tx

    def _connected(self, conn: psycopg.Connection | None) -> psycopg.Connection:
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        try:  # the first use, or the server restarted, or the link broke: a new one
            return psycopg.connect(self._url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StorageError(f"PostgreSQL unreachable: {exc}") from exc

    @staticmethod
    @contextmanager
    def _in_tx(conn: psycopg.Connection) -> Iterator[Tx]:
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield Tx(cur, "%s")
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # The transaction did not commit; the caller may retry (503), and the next call reconnects.
            raise StorageError(str(exc)) from exc

    def record_link_hits(self, hits: Sequence[HitIn], *, now: float) -> int:
        """``CampaignSql.record_link_hits`` as one statement (``click_sql``), atomic on its own: run on
        the autocommit connection, no ``BEGIN``/``COMMIT`` round trips (one round trip a flush)."""
        if not hits:
            return 0
        with self._lock:
            self._conn = self._connected(self._conn)
            try:
                cur = psycopg.RawCursor(self._conn)
                row = cur.execute(click_sql.flush_raw_sql(), click_sql.flush_raw_params(hits, now)).fetchone()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:  # not stored; the caller keeps them
                raise StorageError(str(exc)) from exc
        assert row is not None
        return int(row[0])

    def open_link_reader(self) -> PgLinkReader:
        return PgLinkReader(self._url, self.link_keys)

    def open_click_writer(self) -> PgClickWriter:
        """The click flush on the event loop (``Tracker.flush``): an async connection of its own."""
        return PgClickWriter(self._url)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._member_lock:
            if self._member_conn is not None:
                self._member_conn.close()


_LINK_READ_ANY = link_read_many(1, "%s").replace("l.code IN (%s)", "l.code = ANY(%s::text[])")
#: A round's codes in ONE statement (``PgLinkReader.aread``): their ``short_links`` rows (kind 0, in
#: the range read's column order, padded) and every candidate's range slot (kind 1, ``range_reads``'
#: statement): one round trip whether the codes are rows or ranges.
_ROUND_READ = ("SELECT 0, l.code, l.tenant, l.campaign_id, l.target, l.created_at, l.expires_at, l.subscriber_id, "
               "r.phone, CASE WHEN r.state = 'delivered' THEN r.state_at END, NULL::text, NULL::bigint FROM "
               "short_links l LEFT JOIN campaign_recipients r ON r.tenant = l.tenant AND r.campaign_id = l.campaign_id "
               "AND r.subscriber_id = l.subscriber_id WHERE l.code = ANY(%s::text[]) UNION ALL SELECT 1, "
               + range_reads([("", "", 0, 0)], "%s")[0][0].removeprefix("SELECT "))  # fmt: skip


class PgLinkReader:
    """Links by code on a connection of their own (autocommit reads: never queued behind the store's
    writes, the click flushes or a launch). A network round trip: the redirect awaits ``aread`` on the
    event loop with every code waiting at that moment (one round trip for all of them); ``read`` is
    the same for callers in a worker thread."""

    on_loop = False

    def __init__(self, url: str, keys: Mapping[str, bytes] | None = None) -> None:
        self._url = url
        self._keys: Mapping[str, bytes] = keys if keys is not None else {}  # the store's (range codes)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._aconn: psycopg.AsyncConnection | None = None  # ``aread``'s, made at its first use
        self._alock: asyncio.Lock | None = None

    def read(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = psycopg.connect(self._url, autocommit=True)
                # One statement shape whatever the round's size (codes bound as one array): prepared
                # once by psycopg, not once per count of codes. Codes without a row: range codes.
                conn = self._conn
                found = link_rows(conn.execute(_LINK_READ_ANY, (list(codes),)).fetchall())
                missing = [c for c in codes if c not in found]
                if missing and self._keys:
                    found.update(resolve_ranges(lambda sql, params: conn.execute(sql, params).fetchall(), missing,
                                                self._keys, "%s"))  # fmt: skip
                return found
            except psycopg.Error as exc:
                raise StorageError(f"link read: {exc}") from exc

    async def aread(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        """``read`` on the event loop (psycopg's async connection, a second one of this reader's): the
        ``short_links`` rows and every candidate's range slot in one statement (``_ROUND_READ``), one
        round trip a round, no worker thread. A code's ``short_links`` row wins over its range, as in ``resolve_codes``. The
        caller runs one round at a time (``Tracker``'s rounds); a lock makes sure of it."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            try:
                conn = self._aconn
                if conn is None or conn.closed or conn.broken:
                    conn = self._aconn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
                codes = list(codes)
                candidates = range_candidates(codes, self._keys) if self._keys else []
                if not candidates:
                    cur = await conn.execute(_LINK_READ_ANY, (codes,))
                    return link_rows(await cur.fetchall())
                cur = await conn.execute(_ROUND_READ, [codes, *(list(c) for c in zip(*candidates, strict=True))])
                rows = await cur.fetchall()
                found = {r[1]: LinkRow(code=r[1], tenant=r[2], campaign_id=r[3], subscriber_id=r[7], target=r[4],
                                       created_at=r[5], expires_at=r[6], phone=r[8], delivered_at=r[9])
                         for r in rows if r[0] == 0}  # fmt: skip
                ranged = range_links([c for c in candidates if c[0] not in found], [r[1:] for r in rows if r[0] == 1])
                found.update(ranged)
                return found
            except psycopg.Error as exc:
                raise StorageError(f"link read: {exc}") from exc
            except BaseException:  # cancelled mid-round (shutting down): the connection's state is unknown
                _drop(self._aconn)
                self._aconn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
        _drop(self._aconn)
        self._aconn = None

    async def aclose(self) -> None:
        conn, self._aconn = self._aconn, None
        if conn is not None:
            await conn.close()
        self.close()


class PgClickWriter:
    """The click flush (``PostgresStore.record_link_hits``' statement, ``click_sql``) on the event loop:
    psycopg's async connection of its own, autocommit (one statement is atomic on its own): one round
    trip a flush and no worker-thread hop. The caller runs one flush at a time (``Tracker.flush``)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection | None = None

    async def write(self, hits: Sequence[HitIn], *, now: float) -> int:
        if not hits:
            return 0
        try:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                conn = self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            cur = psycopg.AsyncRawCursor(conn)  # the same statement as ``PostgresStore.record_link_hits``
            await cur.execute(click_sql.flush_raw_sql(), click_sql.flush_raw_params(hits, now))
            row = await cur.fetchone()
        except psycopg.Error as exc:  # not stored (one statement: all or none); the caller keeps them
            raise StorageError(f"click flush: {exc}") from exc
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        _drop(self._conn)
        self._conn = None

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _drop(conn: psycopg.AsyncConnection | None) -> None:
    """An async connection closed from synchronous code (no loop to await on): its socket closed."""
    if conn is not None and not conn.closed:
        conn.pgconn.finish()
