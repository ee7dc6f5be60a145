"""The PostgreSQL engine (psycopg 3, synchronous; the shell calls it from worker threads). Two
connections, each serialised by a lock, each operation one transaction: the store's, and one for
the membership writers (``_member_tx``), so the live membership of one batch runs in the server while
the next batch's events commit on the other."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import psycopg

from campaigns.errors import StorageError
from campaigns.store import click_sql
from campaigns.store.event_batch_pg import PgEventBatch, pg_array
from campaigns.store.base import MembersFound
from campaigns.store.campaign_rows import HitIn, LinkRow
from campaigns.store.campaign_sql import link_read_many, link_rows, resolve_codes, resolve_ranges
from campaigns.store import rollups
from campaigns.store.schema import FLOW_RUN_KEY_UPGRADE, ORDER_KEY_UPGRADE, PG_FILLFACTOR, statements, upgrades
from campaigns.store.sql import SqlStore, Tx, enqueue_entered


_CREATE_INDEX = re.compile(r"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS (\w+) ON", re.IGNORECASE)


def _index_exists(conn: psycopg.Connection, stmt: str) -> bool:
    """Whether ``stmt`` creates an index that exists already. PostgreSQL's ``CREATE INDEX IF NOT
    EXISTS`` takes a SHARE lock on its table before it looks for the name, and the schema is made in
    one transaction: a process (re)opening a store in use took those locks table after table while a
    flow worker's transaction held ROW EXCLUSIVE on one and waited for another (a deadlock that
    killed a restarted worker: tests/campaigns/test_flow_crash.py). An index that exists is skipped:
    no lock at all."""
    found = _CREATE_INDEX.match(stmt.strip())
    if found is None:
        return False
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (found.group(1),)).fetchone()
    return bool(row and row[0])


class PostgresStore(PgEventBatch, SqlStore):
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
                    if not _index_exists(self._conn, stmt):
                        self._conn.execute(stmt)
                for stmt in upgrades("postgres", self._columns):
                    if not _index_exists(self._conn, stmt):
                        self._conn.execute(stmt)
                for table, percent in PG_FILLFACTOR.items():  # only where missing: no lock on a usual open
                    if f"fillfactor={percent}" not in self._reloptions(table):
                        self._conn.execute(f"ALTER TABLE {table} SET (fillfactor = {percent})")
                key_index, drops = FLOW_RUN_KEY_UPGRADE  # the constraint's index has its name
                if (self._conn.execute("SELECT to_regclass(%s) IS NOT NULL", (key_index,)).fetchone() or (False,))[0]:
                    for stmt in drops:
                        self._conn.execute(stmt)
                if self._order_key_bare():
                    for stmt in ORDER_KEY_UPGRADE:
                        self._conn.execute(stmt)
            with self._tx() as tx:
                rollups.ensure(tx)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open the PostgreSQL store: {exc}") from exc

    @property
    def process_url(self) -> str:
        """The URL another process opens this store by."""
        return self._url

    def _reloptions(self, table: str) -> list[str]:
        row = self._conn.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()
        return list(row[0] or []) if row else []

    def _order_key_bare(self) -> bool:
        """Whether ``orders``' key carries no column (a store made before ``schema.ORDER_KEY``)."""
        row = self._conn.execute("SELECT indnkeyatts = indnatts FROM pg_index WHERE indexrelid = "
                                 "to_regclass('orders_pkey')").fetchone()  # fmt: skip
        return bool(row and row[0])

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

    @staticmethod
    def _write_group(tx: Tx, tenant: str, ids: list[int], found: dict[int, list[int]],
                     edges: dict[int, dict[int, float]], now: float) -> int:  # fmt: skip
        """``SqlStore._write_group`` as one statement for the members and one for the timers: the
        server compares what a pass found with what is stored and writes only the differences (the
        stored rows were read into Python, joiners went by COPY into a staging table, and each leaver
        and each moved timer was a statement of its own: ~100 ms of the server's CPU a pass of 1,000
        subscribers and 13 trees, a fifth of the pass)."""
        pairs = [(seg, sid) for seg, sids in found.items() for sid in sids]
        n = functools.partial(pg_array, numeric=True)  # the arrays' text by msgspec, not psycopg's loop (pg_array)
        bound_ids = n(ids)
        row = tx.named_rows(_MEMBERS_WRITE, {"tenant": tenant, "now": now, "ids": bound_ids, "segs": n(sorted(found)),
                                             "fseg": n([p[0] for p in pairs]), "fsid": n([p[1] for p in pairs])})  # fmt: skip
        if edges:
            _pg_timers(tx, tenant, ids, edges)
        joined = [(int(seg), int(sid)) for seg, sid, _ in row if seg is not None]
        enqueue_entered(tx, tenant, joined, now)
        return sum(int(r[2]) for r in row)

    @staticmethod
    def _write_found(tx: Tx, tenant: str, f: MembersFound, now: float) -> int:
        """A group's differences, read with its stored members (``SqlStore._read_group``), in one
        statement (the leavers deleted by their rows' ctids, the joiners inserted), its timers in another."""
        assert f.joined is not None and f.left is not None
        n = functools.partial(pg_array, numeric=True)
        row = tx.named_rows(_MEMBERS_APPLY, {"tenant": tenant, "now": now,
                                             "jseg": n([j[0] for j in f.joined]), "jsid": n([j[1] for j in f.joined]),
                                             "lseg": n([x[0] for x in f.left]), "lsid": n([x[1] for x in f.left])})  # fmt: skip
        if f.edges:
            _pg_timers(tx, tenant, f.ids, f.edges)
        joined = [(int(seg), int(sid)) for seg, sid, _ in row if seg is not None]
        enqueue_entered(tx, tenant, joined, now)
        return sum(int(r[2]) for r in row)

    def known_phones(self, tenant: str, phones: Sequence[str]) -> set[str]:
        """``SqlStore.known_phones`` with the phones bound as one array text (``pg_array``)."""
        with self._tx() as tx:
            return {r[0] for r in tx.rows("SELECT phone FROM subscribers WHERE tenant = ? AND phone IN "
                                          "(SELECT value FROM unnest(?::text[]) AS value)",
                                          (tenant, pg_array(sorted(set(phones)))))}  # fmt: skip

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

    def slot_recipients(self, slots: Sequence[tuple[str, int, int, int]]) -> dict[tuple[str, int, int, int], tuple[int, str, float | None]]:
        """``CampaignSql.slot_recipients`` as one statement on the autocommit connection (a read:
        no ``BEGIN``/``COMMIT`` round trips), the slots bound as four arrays (one prepared shape)."""
        if not slots:
            return {}
        with self._lock:
            self._conn = self._connected(self._conn)
            try:
                rows = self._conn.execute(_SLOT_READ, [list(c) for c in zip(*slots, strict=True)]).fetchall()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise StorageError(str(exc)) from exc
        return {(t, int(c), int(b), int(k)): (int(sid), phone, delivered) for t, c, b, k, sid, phone, delivered in rows}

    def open_link_reader(self) -> PgLinkReader:
        return PgLinkReader(self._url, self.link_keys)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._member_lock:
            if self._member_conn is not None:
                self._member_conn.close()


_SLOT_READ = ("SELECT s.tenant, s.campaign_id, s.batch, s.idx, r.subscriber_id, r.phone, CASE WHEN r.state = 'delivered' "
              "THEN r.state_at END FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) AS s (tenant, "
              "campaign_id, batch, idx) JOIN campaign_recipients r ON r.tenant = s.tenant AND r.campaign_id = "
              "s.campaign_id AND r.batch = s.batch AND r.idx = s.idx")  # fmt: skip

# A pass's membership differences for ``ids`` over the segments ``segs``: ``found`` (segment,
# subscriber) pairs are the members now; stored pairs not found leave, found pairs not stored join
# (``since`` now). One snapshot for the parts: they touch disjoint rows. Returns the leavers' count,
# then the joiners (segment, subscriber), for their flows' ``segment_entered`` inputs.
_MEMBERS_WRITE = """
WITH found AS (SELECT * FROM unnest(%(fseg)s::bigint[], %(fsid)s::bigint[]) AS f (segment_id, subscriber_id)),
stored AS (  -- driven by the ids, an index probe each (OFFSET 0: the planner may not flatten it into a hash
            -- of every membership of the shop, which grows with the audience, not with the pass)
    SELECT m.row, m.segment_id, m.subscriber_id FROM unnest(%(ids)s::bigint[]) AS i (id)
    CROSS JOIN LATERAL (SELECT x.ctid AS row, x.segment_id, x.subscriber_id FROM segment_members x
                        WHERE x.tenant = %(tenant)s AND x.subscriber_id = i.id
                          AND x.segment_id = ANY(%(segs)s::bigint[]) OFFSET 0) m),
gone AS (  -- by the rows' ctids (a TID scan): joined back on the key, the planner hashed the whole table
    DELETE FROM segment_members m WHERE m.ctid = ANY(ARRAY(
        SELECT s.row FROM stored s WHERE NOT EXISTS (
            SELECT 1 FROM found f WHERE f.segment_id = s.segment_id AND f.subscriber_id = s.subscriber_id)))
    RETURNING 1),
added AS (
    INSERT INTO segment_members (tenant, segment_id, subscriber_id, since)
    SELECT %(tenant)s, f.segment_id, f.subscriber_id, %(now)s FROM found f
    WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.segment_id = f.segment_id AND s.subscriber_id = f.subscriber_id)
    ON CONFLICT DO NOTHING RETURNING segment_id, subscriber_id)
SELECT NULL::bigint, NULL::bigint, (SELECT count(*) FROM gone)
UNION ALL SELECT segment_id, subscriber_id, 1 FROM added
"""

# A pass's membership differences as read with the stored members (``SqlStore._read_group``): the
# leavers ``l`` deleted (by their rows' ctids, each found by the whole key: a join on the key let the
# planner hash the whole table), the joiners ``j`` inserted (``since`` now). Returns what
# ``_MEMBERS_WRITE`` does.
_MEMBERS_APPLY = """
WITH gone AS (
    DELETE FROM segment_members m WHERE m.ctid = ANY(ARRAY(
        SELECT x.row FROM unnest(%(lseg)s::bigint[], %(lsid)s::bigint[]) AS l (segment_id, subscriber_id)
        CROSS JOIN LATERAL (SELECT y.ctid AS row FROM segment_members y WHERE y.tenant = %(tenant)s
                            AND y.segment_id = l.segment_id AND y.subscriber_id = l.subscriber_id OFFSET 0) x))
    RETURNING 1),
added AS (
    INSERT INTO segment_members (tenant, segment_id, subscriber_id, since)
    SELECT %(tenant)s, j.segment_id, j.subscriber_id, %(now)s
    FROM unnest(%(jseg)s::bigint[], %(jsid)s::bigint[]) AS j (segment_id, subscriber_id)
    ON CONFLICT DO NOTHING RETURNING segment_id, subscriber_id)
SELECT NULL::bigint, NULL::bigint, (SELECT count(*) FROM gone)
UNION ALL SELECT segment_id, subscriber_id, 1 FROM added
"""


def _pg_timers(tx: Tx, tenant: str, ids: list[int], edges: dict[int, dict[int, float]]) -> None:
    want = [(seg, sid, at) for seg, by_sid in edges.items() for sid, at in by_sid.items()]
    n = functools.partial(pg_array, numeric=True)  # the arrays' text by msgspec, not psycopg's loop (pg_array)
    tx.named_run(_TIMERS_WRITE, {"tenant": tenant, "ids": n(ids), "segs": n(sorted(edges)), "wseg": n([w[0] for w in want]),
                                 "wsid": n([w[1] for w in want]), "wat": n([w[2] for w in want])})  # fmt: skip


# The timers of the segments ``segs`` for ``ids`` become ``want`` (segment, subscriber, at): the others
# are deleted; a timer whose instant did not move is not rewritten (an order moves few window edges).
_TIMERS_WRITE = """
WITH want AS (SELECT * FROM unnest(%(wseg)s::bigint[], %(wsid)s::bigint[], %(wat)s::float8[])
              AS w (segment_id, subscriber_id, at)),
gone AS (  -- as the members' leavers: a probe of the whole key per (segment, id), then a TID scan
    -- (the key has no index by subscriber: with `segment_id = ANY(...)` and no statistics yet, the
    -- planner probed on (tenant, subscriber) and read every timer of the shop per id: 1.4 s a pass)
    DELETE FROM segment_timers t WHERE t.ctid = ANY(ARRAY(
        SELECT x.row FROM unnest(%(ids)s::bigint[]) AS i (id) CROSS JOIN unnest(%(segs)s::bigint[]) AS g (seg)
        CROSS JOIN LATERAL (SELECT y.ctid AS row FROM segment_timers y WHERE y.tenant = %(tenant)s
                            AND y.segment_id = g.seg AND y.subscriber_id = i.id OFFSET 0) x
        WHERE NOT EXISTS (SELECT 1 FROM want w WHERE w.segment_id = g.seg AND w.subscriber_id = i.id)))
    RETURNING 1)
INSERT INTO segment_timers AS t (tenant, segment_id, subscriber_id, at)
SELECT %(tenant)s, w.segment_id, w.subscriber_id, w.at FROM want w
ON CONFLICT (tenant, segment_id, subscriber_id) DO UPDATE SET at = excluded.at WHERE t.at <> excluded.at
"""

_LINK_READ_ANY = link_read_many(1, "%s").replace("l.code IN (%s)", "l.code = ANY(%s::text[])")


class PgLinkReader:
    """Links by code on a connection of their own (autocommit reads: never queued behind the store's
    writes, the click flushes or a launch). A network round trip: callers run ``read`` in a worker
    thread with every code waiting at that moment (one query for all of them)."""

    on_loop = False

    def __init__(self, url: str, keys: Mapping[str, bytes] | None = None) -> None:
        self._url = url
        self._keys: Mapping[str, bytes] = keys if keys is not None else {}  # the store's (range codes)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

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

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
