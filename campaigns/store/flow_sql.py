"""The flow runtime's tables (FLOWS_DDL in ``schema.py``), shared by both engines: a mixin of ``SqlStore``.

Two kinds of operations:

- plain ones, one transaction each (``put_flow_version``, ``flow_heads``, ``set_flow_enabled``,
  ``put_flow_template``, ``flow_run_rows``, ``flow_node_counts``, ``pending_flow_messages``,
  ``flow_message_done`` ...);
- ``flow_tx(tenant)``: one transaction handed to the runtime as a ``FlowTx``, in which it reads runs,
  calls the pure engine (``campaigns.core.flows.step``) and writes the new run, its next timer and
  the actions' records together. Nothing is half stored: a kill -9 before the commit leaves the run
  as it was (its timer still due, the event not marked applied), after it leaves the run advanced
  and its sends recorded as ``pending`` in ``flow_outbox`` (the sender's outbox). A batch of inputs
  is read up front (``first_times``, ``prefetch``: one statement per chunk, not per input) and its
  new runs and run updates are held in the ``FlowTx`` and written by ``flush`` before the commit.

Planned batches (SQLite, ``flow_plan``): SQLite has one writer, so a batch decided inside its
``BEGIN IMMEDIATE`` transaction keeps every other worker waiting while it reads and runs the pure
steps. ``flow_plan(tenant, part=, parts=)`` hands the runtime a ``FlowTx`` over a WAL read snapshot
(a connection of its own, no lock): the same reads, the same decisions, but every write is logged
instead of made (``FlowTx._log``: statements in program order, each with the row count it must
have). Then, under ``BEGIN IMMEDIATE``, the log is checked and replayed: the batch's inputs still
queued (the ``DELETE`` removes them all), its events not applied meanwhile (``flow_events``), the
runs of its subscribers exactly as the snapshot read them (ids and active runs' JSON), its new run
ids and short links still free. Any difference raises ``FlowStale``: the transaction is rolled
back (nothing of the batch stored) and the runtime redoes the batch the old way, under the lock.
Run ids of a planned batch are ``id % parts == part`` above the snapshot's highest id, so two
workers' batches never pick the same one. What cannot be replayed blind (an ``update`` node's
read-modify-write of a subscriber, a read of runs the batch did not prefetch) raises ``FlowStale``
at once, and the batch goes under the lock.

Claiming due timers: ``FlowTx.claim_due(now, limit)`` reads the due-time index in due order; on
PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so several workers (processes, or connections) take
disjoint batches; on SQLite the transaction is ``BEGIN IMMEDIATE``: one writer at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import functools
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from campaigns.core import flow_inputs
from campaigns.core import flows as F
from campaigns.core.model import Subscriber
from campaigns.errors import Conflict, NotFound, StorageError
from campaigns.store.flow_rows import FlowHead, FlowMessage, FlowRunRow, NodeCount
from campaigns.store.schema import FLOW_RUN_KEY

if TYPE_CHECKING:
    from campaigns.core.events import ShopEvent
    from campaigns.store.base import Applied

_json = msgspec.json.Encoder()
_run_decoder = msgspec.json.Decoder(F.Run)
_RUN_COLS = "id, run_key, flow_id, version, subscriber_id, object_id, node, visit, state, ended, started_at, updated_at, due"
_MSG_COLS = ("key, run_id, flow_id, version, step, visit, subscriber_id, kind, category, recipient, sender, body, media_url, "
             "state, detail, message_id, created_at, sent_at")  # fmt: skip
_SUB_COLS = ("id, phone, first_name, last_name, email, gender, birthday, country, region, city, time_zone, "
             "language, signup_source, created_at, consent, consent_at, attributes")  # fmt: skip
_SUB_NAMES = tuple(c.strip() for c in _SUB_COLS.split(","))


# ``FlowTx.prefetch``: a chunk's subscribers with their stats row (``has_stats`` NULL: none) and tags.
_PREFETCH_SUBS = {
    engine: (f"SELECT s.tenant, {', '.join('s.' + c for c in _SUB_NAMES)}, st.subscriber_id, st.orders_count, "
             f"st.total_spent, st.last_order_at, (SELECT {agg} FROM subscriber_tags t WHERE t.tenant = s.tenant AND "
             f"t.subscriber_id = s.id) FROM subscribers s LEFT JOIN subscriber_stats st ON st.subscriber_id = s.id "
             f"AND st.tenant = s.tenant WHERE s.id {{marks}}")
    for engine, agg in (("sqlite", "json_group_array(t.tag)"), ("postgres", "array_agg(t.tag)"))}  # fmt: skip
_NEW_RUN_COLS = ("id, tenant, run_key, flow_id, version, subscriber_id, object_id, node, visit, state, ended, "
                 "started_at, updated_at, due, run")  # fmt: skip
# %b: arrays go to PostgreSQL in binary (psycopg's text format escapes every element with a regex:
# 1.2 s for 2,000 runs' JSON, 17 ms in binary). A plain INSERT, not ``ON CONFLICT DO NOTHING``: a
# batch's run keys were read with its subscribers' runs (``prefetch``), so a conflict is a race the
# batch cannot survive anyway (the unique violation aborts it, ``flush`` says so, the batch is
# redone); ``ON CONFLICT`` made every row a speculative insertion (an extra index probe and a WAL
# record to confirm it): ~20 % of the insert's server CPU.
_PG_INSERT_RUNS = (f"INSERT INTO flow_runs ({_NEW_RUN_COLS}) SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], "
                   "%b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[], "
                   "%b::double precision[], %b::double precision[], %b::double precision[], %b::text[])")  # fmt: skip


# PostgreSQL: a batch's input ids marked applied, those not marked before returned; a NOT EXISTS, not
# ``ON CONFLICT DO NOTHING`` (a speculative insertion a row: ~7.9 against ~6.4 µs of the server an id,
# measured alone). An id marked by a transaction still open meets the unique index: this one is
# refused (``_race``) and the batch redone, where ``ON CONFLICT`` waited and skipped it; only a
# subscriber's own worker marks its inputs, so that is a misrouted share or a scan racing a drain.
_PG_FIRST_TIMES = ("INSERT INTO flow_events (tenant, event_id) SELECT %b, e FROM unnest(%b::text[]) AS e WHERE NOT EXISTS "
                   "(SELECT 1 FROM flow_events f WHERE f.tenant = %b AND f.event_id = e) RETURNING event_id")  # fmt: skip


@contextmanager
def _race(what: str) -> Iterator[None]:
    """PostgreSQL: a unique violation of a batch's plain insert (a key another transaction wrote since
    the batch read) refuses the transaction as a retryable ``StorageError``: nothing of it is stored."""
    from psycopg import errors

    try:
        yield
    except errors.UniqueViolation as exc:
        raise StorageError(f"{what}; the batch is retried") from exc


class FlowStale(StorageError):
    """A planned batch (``flow_plan``) cannot be written as decided: what its snapshot read changed
    before the write lock was taken, or it needs a read of its own writes. Redo it under the lock."""

    code = "flow_stale"


def _expect(n: int, want: int, what: str) -> None:
    if n != want:
        raise FlowStale(f"flow_stale: {what}: {n} rows, planned {want}")


_INSERT_MESSAGE = f"INSERT INTO flow_outbox (tenant, {_MSG_COLS}) VALUES ({', '.join('?' * 19)}) ON CONFLICT DO NOTHING"
# PostgreSQL: a batch's sends in one statement of 19 array parameters (one per send cost the server
# ~250 µs of CPU each: a statement's executor start-up and commit bookkeeping for one row).
_PG_INSERT_MESSAGES = (f"INSERT INTO flow_outbox (tenant, {_MSG_COLS}) SELECT * FROM unnest(%b::text[], %b::text[], "
                       "%b::bigint[], %b::text[], %b::bigint[], %b::text[], %b::bigint[], %b::bigint[], %b::text[], "
                       "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], "
                       "%b::double precision[], %b::double precision[]) ON CONFLICT DO NOTHING")  # fmt: skip
# PostgreSQL: a sender's round of answers in one statement (four a send before: the outbox row marked,
# read back, its report row, its links; ~4,000 round trips for 1,000 sends, 1.6 s of a 6.7 s events
# phase of the flows bench at load ~4). Only rows still pending move (a send answered twice counts
# once); those that went (``sent``, not webhooks) become report sources with their links, as
# ``_report_source`` does one by one.
_PG_MESSAGES_DONE = (
    "WITH d AS (SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[]) "
    "AS d (tenant, key, state, message_id, detail)), "
    "u AS (UPDATE flow_outbox o SET state = d.state, message_id = d.message_id, detail = d.detail, sent_at = %b "
    "FROM d WHERE o.tenant = d.tenant AND o.key = d.key AND o.state = 'pending' "
    "RETURNING o.tenant, o.key, o.flow_id, o.step, o.subscriber_id, o.message_id, o.sent_at, o.state, o.kind), "
    "s AS (SELECT * FROM u WHERE state = 'sent' AND kind <> 'webhook'), "
    "m AS (INSERT INTO flow_messages (tenant, id, flow_id, step, subscriber_id, sent_at, message_id) "
    "SELECT tenant, key, flow_id, step, subscriber_id, sent_at, message_id FROM s ON CONFLICT DO NOTHING) "
    "INSERT INTO flow_links (code, tenant, flow_message) SELECT l.code, s.tenant, s.key FROM s JOIN flow_run_links l "
    "ON l.tenant = s.tenant AND l.message_key = s.key ON CONFLICT DO NOTHING")  # fmt: skip
_UPDATE_RUNS = ("UPDATE flow_runs SET node = COALESCE(?, node), visit = ?, state = ?, ended = ?, updated_at = ?, due = ?, "
                "run = ? WHERE id = ?")  # fmt: skip

# PostgreSQL: a batch's run updates in one statement (``executemany`` was one statement a run: its
# executor start-up and plan each time, ~95 µs of the server a run in the flows bench's exits).
_PG_UPDATE_RUNS = ("UPDATE flow_runs r SET node = COALESCE(u.node, r.node), visit = u.visit, state = u.state, "
                   "ended = u.ended, updated_at = u.updated_at, due = u.due, run = u.run FROM unnest(%b::text[], "
                   "%b::bigint[], %b::text[], %b::text[], %b::double precision[], %b::double precision[], %b::text[], "
                   "%b::bigint[]) AS u (node, visit, state, ended, updated_at, due, run, id) WHERE r.id = u.id")  # fmt: skip

def _run_row(tenant: str, row: tuple) -> FlowRunRow:
    names = [c.strip() for c in _RUN_COLS.split(",")]
    return FlowRunRow(tenant=tenant, **dict(zip(names, row, strict=True)))


def _msg_row(tenant: str, row: tuple) -> FlowMessage:
    names = [c.strip() for c in _MSG_COLS.split(",")]
    values = dict(zip(names, row, strict=True))
    return FlowMessage(tenant=tenant, **values)


class FlowTx:
    """One transaction of the flow runtime (see the module docstring). ``tenant`` scopes every read."""

    def __init__(self, tx: Any, tenant: str, engine: str, *, planned: bool = False, part: int = 0,
                 parts: int = 1) -> None:  # fmt: skip
        self.tx, self.tenant, self.engine = tx, tenant, engine
        # ``planned``: ``tx`` is a read snapshot; writes go to ``_log`` (``flow_plan``), replayed under the
        # write lock, each a function of the write transaction that raises ``FlowStale`` on a mismatch.
        self.planned, self.part, self.parts = planned, part, parts
        self._log: list[Callable[[Any], None]] = []
        self._codes: set[str] = set()  # short link codes this planned batch added
        self._msgs: list[tuple[Any, ...]] = []  # a planned batch's sends, not logged yet (``_log_messages``)
        # ``flow_plan``: seconds waiting for the write lock, holding it, and this thread's CPU holding it
        self.write_times = (0.0, 0.0, 0.0)
        # Read once per transaction (a start and its first send read the same subscriber); writes
        # through ``update_subscriber`` drop the entry.
        # subscriber -> (their fields as a dict: a Subscriber's without the tenant, attributes decoded;
        # their tags; their stats), or None. A dict, not a Subscriber: a run's snapshot is a dict, and
        # a struct built and taken apart again per start was 5 % of a drain (py-spy).
        self._subs: dict[int, tuple[dict[str, Any], tuple[str, ...], dict[str, Any]] | None] = {}
        self._templates: dict[str, str | None] = {}
        # The batch path (``prefetch``): the runs of a batch's subscribers, read in one query and kept
        # current by ``insert_run`` / ``save_run``; run updates are written together by ``flush``
        # (before any read of ``flow_runs`` that the cache does not answer, and before the commit).
        self._runs: dict[int, list[tuple[int, F.Run]]] = {}  # subscriber -> active runs, by id
        self._entries: dict[int, dict[str, list[F.Entry]]] = {}  # subscriber -> flow -> every run's entry
        self._dirty: dict[int, tuple[Any, ...]] = {}  # run id -> the UPDATE's parameters
        self._keys: dict[int, set[str]] = {}  # subscriber -> the keys of all their runs
        self._new: list[tuple[Any, ...]] = []  # runs started, written by ``flush`` (ids given out up front)
        self._ids: list[int] = []  # PostgreSQL: ids taken from the sequence, not yet given out
        self._top: int | None = None  # SQLite (one writer): the highest id given out
        self._fresh: set[int] = set()  # run ids this transaction gave out (their sends' keys are new)

    # ---- the batch path ---------------------------------------------------------------------
    def first_times(self, event_ids: Sequence[str]) -> set[str]:
        """Mark many input events applied at once; returns those that were not before (``first_time``
        for a batch: one multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` per 400 ids)."""
        fresh: set[str] = set()
        ids = list(dict.fromkeys(event_ids))
        if self.engine == "postgres" and ids:  # one array parameter: psycopg parses no 800-placeholder text
            with _race("flow_event_race: an input of this batch was applied concurrently"):
                rows = self.tx.rows(_PG_FIRST_TIMES, (self.tenant, ids, self.tenant))
            return {str(r[0]) for r in rows}
        if self.planned:  # read which are new; mark them at the replay, which must mark exactly those
            for i in range(0, len(ids), 400):
                chunk = ids[i:i + 400]
                seen = {str(r[0]) for r in self.tx.rows(
                    f"SELECT event_id FROM flow_events WHERE tenant = ? AND event_id IN ({', '.join('?' * len(chunk))})",
                    (self.tenant, *chunk))}  # fmt: skip
                new = [e for e in chunk if e not in seen]
                fresh.update(new)
                if new:
                    self._log.append(functools.partial(self._mark_events, new))
            return fresh
        for i in range(0, len(ids), 400):
            chunk = ids[i:i + 400]
            rows = self.tx.rows(f"INSERT INTO flow_events (tenant, event_id) VALUES {', '.join(['(?, ?)'] * len(chunk))} "
                                f"ON CONFLICT DO NOTHING RETURNING event_id", [v for e in chunk for v in (self.tenant, e)])  # fmt: skip
            fresh.update(str(r[0]) for r in rows)
        return fresh

    def _mark_events(self, ids: Sequence[str], tx: Any) -> None:
        # The row count, not ``RETURNING``: SQLite buffers a RETURNING's rows in a temporary table
        # (~1/3 of such an insert's CPU); the replay only needs how many rows went in.
        got = tx.run(f"INSERT INTO flow_events (tenant, event_id) VALUES {', '.join(['(?, ?)'] * len(ids))} "
                     f"ON CONFLICT DO NOTHING", [v for e in ids for v in (self.tenant, e)])  # fmt: skip
        _expect(got, len(ids), "input events applied meanwhile")

    def prefetch(self, subscriber_ids: Sequence[int]) -> None:
        """Read the runs (locked on PostgreSQL), the subscribers, their tags and stats of a batch: two
        queries per 500 subscribers (the runs; the subscribers with their stats and tags), instead of
        five per input."""
        self.flush()
        ids = sorted(set(subscriber_ids) - self._runs.keys())
        lock = " FOR UPDATE" if self.engine == "postgres" else ""
        names = _SUB_NAMES
        step = (len(ids) or 1) if self.engine == "postgres" else 500
        for i in range(0, len(ids), step):
            chunk = ids[i:i + step]
            marks, params = self._ids_in(chunk)
            runs: dict[int, list[tuple[int, F.Run]]] = {sid: [] for sid in chunk}
            entries: dict[int, dict[str, list[F.Entry]]] = {sid: {} for sid in chunk}
            keys: dict[int, set[str]] = {sid: set() for sid in chunk}
            found = self.tx.rows(
                f"SELECT id, subscriber_id, run_key, flow_id, started_at, object_id, CASE WHEN state = 'active' THEN run "
                f"END FROM flow_runs WHERE tenant = ? AND subscriber_id {marks} ORDER BY id{lock}", params)  # fmt: skip
            if self.planned:  # at the replay, these subscribers' runs must be exactly what was read here
                self._log.append(functools.partial(self._same_runs, marks, params, [(r[0], r[6]) for r in found]))
            for rid, sid, key, fid, started, obj, run in found:
                keys[int(sid)].add(str(key))
                entries[int(sid)].setdefault(str(fid), []).append(F.Entry(started_at=float(started), object_id=obj))
                if run is not None:
                    runs[int(sid)].append((int(rid), _run_decoder.decode(run)))
            subs = dict.fromkeys(chunk)
            # One statement for the subscribers, their stats and their tags (three before): by id alone
            # (the primary key; ids are unique across tenants), the tenant checked here: with
            # ``tenant = ?`` in the WHERE, SQLite answered from the (tenant, consent) index, reading
            # every subscriber of the tenant for each chunk (O(N) per batch).
            for tenant, *row, has_stats, orders, spent, last, tags in self.tx.rows(
                    _PREFETCH_SUBS[self.engine].format(marks=marks), params[1:]):  # fmt: skip
                if tenant != self.tenant:
                    continue
                if isinstance(tags, str):  # SQLite: a JSON array (PostgreSQL: a list, or NULL)
                    tags = msgspec.json.decode(tags)
                stats = {} if has_stats is None else {"orders_count": orders, "total_spent": spent, "last_order_at": last}
                subs[int(row[0])] = (self._fields_of(names, row), tuple(sorted(tags or ())), stats)
            for sid in chunk:
                self._subs.setdefault(sid, subs[sid])
            self._runs.update(runs)
            self._entries.update(entries)
            self._keys.update(keys)

    @staticmethod
    def _same_runs(marks: str, params: tuple, seen: list[tuple[Any, Any]], tx: Any) -> None:
        """The check of a planned batch: no run of its subscribers started, ended or moved since its
        snapshot (by a reply, a scan, another worker's misrouted share): ids and active runs' JSON."""
        now = [tuple(r) for r in tx.rows(f"SELECT id, CASE WHEN state = 'active' THEN run END FROM flow_runs WHERE "
                                          f"tenant = ? AND subscriber_id {marks} ORDER BY id", params)]  # fmt: skip
        if now != [tuple(r) for r in seen]:
            raise FlowStale("flow_stale: a run of this batch's subscribers changed since its snapshot")

    def _ids_in(self, ids: Sequence[int]) -> tuple[str, tuple]:
        """``IN (?, ...)`` on SQLite, ``= ANY(%b)`` with one binary array on PostgreSQL (whose driver
        would parse a text of hundreds of placeholders on every call); params start with the tenant."""
        if self.engine == "postgres":
            return "= ANY(%b::bigint[])", (self.tenant, list(ids))
        return f"IN ({', '.join('?' * len(ids))})", (self.tenant, *ids)

    def flush(self) -> None:
        """Write the runs started (multi-row inserts) and the run updates (one ``executemany``) held
        since the last flush."""
        while self._new:
            if self.engine == "postgres":  # one statement of 15 array parameters, its text always the same
                chunk, self._new = self._new, []
                self._pg_insert_runs(chunk)
                continue
            elif self.planned:  # logged; any conflict (a run key, or an id taken since) makes the batch stale
                chunk, self._new = self._new[:200], self._new[200:]
                self._log.append(functools.partial(self._insert_runs, chunk))
                continue
            else:
                chunk, self._new = self._new[:200], self._new[200:]
                got = self.tx.rows(f"INSERT INTO flow_runs ({_NEW_RUN_COLS}) VALUES "
                                   f"{', '.join(['(' + ', '.join('?' * 15) + ')'] * len(chunk))} "
                                   f"ON CONFLICT (tenant, run_key) DO NOTHING RETURNING id", [v for r in chunk for v in r])  # fmt: skip
            if len(got) != len(chunk):  # another transaction started one of these runs: redo the batch
                self._new = []
                raise StorageError("flow_run_race: a run of this batch was started concurrently; the batch is retried")
        self._log_messages()
        if self._dirty:
            rows, self._dirty = list(self._dirty.values()), {}
            if self.planned:  # the runs were checked unchanged (``_same_runs``) before this replays
                self._log.append(lambda tx: tx.many(_UPDATE_RUNS, rows))
                return
            if self.engine == "postgres":  # one statement of 8 array parameters (one UPDATE a run before)
                self.tx.run(_PG_UPDATE_RUNS, [list(col) for col in zip(*rows)])
                return
            self.tx.many(_UPDATE_RUNS, rows)

    def _pg_insert_runs(self, chunk: list[tuple[Any, ...]]) -> None:
        with _race("flow_run_race: a run of this batch was started concurrently"):  # redo the batch
            self.tx.run(_PG_INSERT_RUNS, [list(col) for col in zip(*chunk)])

    @staticmethod
    def _insert_runs(chunk: list[tuple[Any, ...]], tx: Any) -> None:
        got = tx.run(f"INSERT INTO flow_runs ({_NEW_RUN_COLS}) VALUES {', '.join(['(' + ', '.join('?' * 15) + ')'] * len(chunk))} "
                     f"ON CONFLICT DO NOTHING", [v for r in chunk for v in r])  # fmt: skip
        _expect(got, len(chunk), "runs started (a run key or id taken meanwhile)")

    def _unplanned(self, what: str) -> None:
        """Reads of this batch's own writes, and read-modify-writes, are not planned: under the lock."""
        if self.planned:
            raise FlowStale(f"flow_stale: {what} is not planned in a snapshot")

    # ---- inputs ------------------------------------------------------------------------------
    def first_time(self, event_id: str) -> bool:
        """Mark the input event applied; False when it was already (a redelivery: do nothing)."""
        return self.tx.run("INSERT INTO flow_events (tenant, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           (self.tenant, event_id)) > 0  # fmt: skip

    def enabled_flows(self) -> list[tuple[str, int]]:
        return [(str(f), int(v)) for f, v in self.tx.rows(
            "SELECT flow_id, latest FROM flow_heads WHERE tenant = ? AND enabled = 1 ORDER BY flow_id", (self.tenant,))]

    def definition(self, flow_id: str, version: int) -> Any:
        row = self.tx.one("SELECT definition FROM flow_versions WHERE tenant = ? AND flow_id = ? AND version = ?",
                          (self.tenant, flow_id, version))  # fmt: skip
        return None if row is None else msgspec.json.decode(row[0])

    def subscriber(self, subscriber_id: int) -> tuple[Subscriber, tuple[str, ...], dict[str, Any]] | None:
        """The subscriber, their tags and their stats (a run's snapshot)."""
        found = self.subscriber_fields(subscriber_id)
        return None if found is None else (Subscriber(tenant=self.tenant, **found[0]), found[1], found[2])

    def subscriber_fields(self, subscriber_id: int) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Any]] | None:
        """``subscriber`` with the subscriber as a dict of their fields (no tenant); not to be mutated."""
        if subscriber_id not in self._subs:
            self._subs[subscriber_id] = self._read_subscriber(subscriber_id)
        return self._subs[subscriber_id]

    def _read_subscriber(self, subscriber_id: int) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Any]] | None:
        row = self.tx.one(f"SELECT {_SUB_COLS} FROM subscribers WHERE tenant = ? AND id = ?", (self.tenant, subscriber_id))
        if row is None:
            return None
        sub = self._fields_of(_SUB_NAMES, row)
        tags = tuple(sorted(r[0] for r in self.tx.rows(
            "SELECT tag FROM subscriber_tags WHERE tenant = ? AND subscriber_id = ?", (self.tenant, subscriber_id))))
        st = self.tx.one("SELECT orders_count, total_spent, last_order_at FROM subscriber_stats WHERE tenant = ? "
                         "AND subscriber_id = ?", (self.tenant, subscriber_id))  # fmt: skip
        stats = {} if st is None else {"orders_count": st[0], "total_spent": st[1], "last_order_at": st[2]}
        return sub, tags, stats

    @staticmethod
    def _fields_of(names: Sequence[str], row: tuple) -> dict[str, Any]:
        values = dict(zip(names, row, strict=True))
        values["attributes"] = msgspec.json.decode(values["attributes"] or "{}")
        return values

    # ---- runs --------------------------------------------------------------------------------
    def active_runs(self, subscriber_id: int) -> list[tuple[int, F.Run]]:
        if subscriber_id in self._runs:
            return list(self._runs[subscriber_id])
        self._unplanned("the runs of a subscriber not prefetched")
        self.flush()
        lock = " FOR UPDATE" if self.engine == "postgres" else ""
        rows = self.tx.rows(f"SELECT id, run FROM flow_runs WHERE tenant = ? AND subscriber_id = ? AND state = 'active' "
                            f"ORDER BY id{lock}", (self.tenant, subscriber_id))  # fmt: skip
        return [(int(i), _run_decoder.decode(r)) for i, r in rows]

    def entries(self, flow_id: str, subscriber_id: int) -> list[F.Entry]:
        if subscriber_id in self._entries:
            return list(self._entries[subscriber_id].get(flow_id, ()))
        self._unplanned("the past runs of a subscriber not prefetched")
        self.flush()
        rows = self.tx.rows("SELECT started_at, object_id FROM flow_runs WHERE tenant = ? AND flow_id = ? AND "
                            "subscriber_id = ?", (self.tenant, flow_id, subscriber_id))  # fmt: skip
        return [F.Entry(started_at=float(a), object_id=o) for a, o in rows]

    def insert_run(self, run: F.Run, now: float) -> int | None:
        """Store a new run; None when a run with its key exists (a replayed trigger). For a prefetched
        subscriber the run gets its id now and is written by ``flush``."""
        sid = run.subscriber_id
        if sid in self._keys:
            if run.id in self._keys[sid]:
                return None
            rid = self._run_id()
            self._fresh.add(rid)
            self._keys[sid].add(run.id)
            self._new.append((rid, self.tenant, run.id, run.flow_id, run.version, sid, run.object_id, run.node, run.visit,
                              "active" if run.node is not None else "ended", run.ended, run.started_at, now,
                              run.timer_due, _json.encode(run).decode()))  # fmt: skip
            self._cache_started(rid, run)
            return rid
        self._unplanned("a run of a subscriber not prefetched")
        self.flush()
        self._top = None  # SQLite picks this one's id
        row = self.tx.one(
            "INSERT INTO flow_runs (tenant, run_key, flow_id, version, subscriber_id, object_id, node, visit, state, "
            "ended, started_at, updated_at, due, run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT {FLOW_RUN_KEY[self.engine]} DO NOTHING RETURNING id",
            (self.tenant, run.id, run.flow_id, run.version, run.subscriber_id, run.object_id, run.node, run.visit,
             "active" if run.node is not None else "ended", run.ended, run.started_at, now, run.timer_due,
             _json.encode(run).decode()))  # fmt: skip
        return None if row is None else int(row[0])

    def _cache_started(self, rid: int, run: F.Run) -> None:
        sid = run.subscriber_id
        if run.node is not None:
            self._runs[sid].append((rid, run))
        self._entries[sid].setdefault(run.flow_id, []).append(F.Entry(started_at=run.started_at, object_id=run.object_id))

    def _run_id(self) -> int:
        """A new run's id before its row is written: from the sequence on PostgreSQL (taken 1,000 at a
        time; unused ones are gaps), after the highest id on SQLite (this transaction is the only writer)."""
        if self.planned:  # above the snapshot's highest id, in this worker's class: never another worker's
            if self._top is None:
                row = self.tx.one("SELECT COALESCE(MAX(id), 0) FROM flow_runs")
                self._top = int(row[0]) if row is not None else 0
            self._top += 1
            self._top += (self.part - self._top) % self.parts
            return self._top
        if self.engine == "postgres":
            if not self._ids:
                # The sequence looked up once (OFFSET 0: not flattened into the rows), not once per id:
                # the catalog lookup per row was 5-10 ms of the server's CPU for 1,000 ids, now ~1.
                self._ids = [int(r[0]) for r in self.tx.rows(
                    "SELECT nextval(q.seq) FROM (SELECT pg_get_serial_sequence('flow_runs', 'id')::regclass AS seq "
                    "OFFSET 0) q, generate_series(1, 1000)")][::-1]
            return self._ids.pop()
        if self._top is None:
            row = self.tx.one("SELECT COALESCE(MAX(id), 0) FROM flow_runs")
            self._top = int(row[0]) if row is not None else 0
        self._top += 1
        return self._top

    def save_run(self, run_id: int, run: F.Run, now: float) -> None:
        """Held until ``flush`` (the end of the transaction, or the next uncached read of runs)."""
        self._dirty[run_id] = (run.node, run.visit, "active" if run.node is not None else "ended", run.ended, now,
                               run.timer_due, _json.encode(run).decode(), run_id)  # fmt: skip
        cached = self._runs.get(run.subscriber_id)
        if cached is not None:
            kept = [(i, r) for i, r in cached if i != run_id]
            if run.node is not None:
                kept.append((run_id, run))
                kept.sort(key=lambda x: x[0])
            self._runs[run.subscriber_id] = kept

    def claim_due(self, now: float, limit: int, *, part: int = 0, parts: int = 1) -> list[tuple[int, F.Run]]:
        """Up to ``limit`` runs of this tenant whose timer is due at ``now``, earliest first (locked on
        PostgreSQL; other workers skip them). With ``parts`` > 1 only the runs of subscribers
        ``id % parts == part``: the worker that applies a subscriber's inputs also fires their timers,
        so an exit queued before a due timer is applied first (``FlowWorker.fire``), never raced."""
        self._unplanned("claiming timers")
        self.flush()
        lock = " FOR UPDATE SKIP LOCKED" if self.engine == "postgres" else ""
        share, params = self._share(part, parts)
        rows = self.tx.rows(f"SELECT id, run FROM flow_runs WHERE due IS NOT NULL AND due <= ? AND tenant = ?{share} "
                            f"ORDER BY due LIMIT ?{lock}", (now, self.tenant, *params, limit))  # fmt: skip
        return [(int(i), _run_decoder.decode(r)) for i, r in rows]

    def _share(self, part: int, parts: int) -> tuple[str, tuple[int, ...]]:
        """The SQL filter of worker ``part`` of ``parts`` (subscriber id modulo ``parts``: a stable hash)."""
        if parts <= 1:
            return "", ()
        if not 0 <= part < parts:
            raise ValueError(f"part {part} is not in 0..{parts - 1}")
        return (" AND subscriber_id %% ? = ?" if self.engine == "postgres" else " AND subscriber_id % ? = ?"), (parts, part)

    def take_inputs(self, limit: int, *, part: int = 0, parts: int = 1) -> list[tuple[int, int, F.Event]]:
        """The oldest queued inputs of this tenant (id, subscriber, event), deleted with this
        transaction's commit (locked against other workers on PostgreSQL). With ``parts`` > 1 only
        the subscribers ``id % parts == part``: each worker drains its own share, so one
        subscriber's inputs are always applied in order, by one worker."""
        share, params = self._share(part, parts)
        if self.engine == "postgres":  # taken and deleted in one statement (one round trip, one probe a row)
            rows = sorted(self.tx.rows(
                f"DELETE FROM flow_inputs WHERE id IN (SELECT id FROM flow_inputs WHERE tenant = ?{share} ORDER BY id "
                f"LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING id, subscriber_id, event", (self.tenant, *params, limit)))  # fmt: skip
            return [(int(i), int(s), _event_decoder.decode(e)) for i, s, e in rows]
        rows = self.tx.rows(f"SELECT id, subscriber_id, event FROM flow_inputs WHERE tenant = ?{share} ORDER BY id "
                            f"LIMIT ?", (self.tenant, *params, limit))  # fmt: skip
        if rows and self.planned:  # the replay must delete every one: else another worker took them
            ids = [int(r[0]) for r in rows]
            for i in range(0, len(ids), 500):
                marks, params = self._ids_in(ids[i:i + 500])
                self._log.append(lambda tx, m=marks, p=params[1:]: _expect(
                    tx.run(f"DELETE FROM flow_inputs WHERE id {m}", p), len(p), "inputs taken meanwhile"))
        elif rows:
            ids = [int(r[0]) for r in rows]
            for i in range(0, len(ids), 500):
                marks, params = self._ids_in(ids[i:i + 500])
                self.tx.run(f"DELETE FROM flow_inputs WHERE id {marks}", params[1:])
        return [(int(i), int(s), _event_decoder.decode(e)) for i, s, e in rows]

    def take_inputs_of(self, subscriber_ids: Sequence[int]) -> list[tuple[int, int, F.Event]]:
        """The queued inputs of these subscribers, oldest first, deleted with this transaction (the
        timer worker applies them before their runs' timers: an exit queued before a due send wins)."""
        self._unplanned("the inputs of claimed timers")
        out: list[tuple[int, int, F.Event]] = []
        ids = sorted(set(subscriber_ids))
        lock = " FOR UPDATE SKIP LOCKED" if self.engine == "postgres" else ""
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            # No ORDER BY (sorted below): with one, SQLite walked the tenant's whole queue in id order
            # (``flow_inputs_queue``) to spare a sort of a few rows, instead of these subscribers' index entries.
            rows = self.tx.rows(f"SELECT id, subscriber_id, event FROM flow_inputs WHERE tenant = ? AND subscriber_id IN "
                                f"({', '.join('?' * len(chunk))}){lock}", (self.tenant, *chunk))  # fmt: skip
            out += [(int(r[0]), int(r[1]), _event_decoder.decode(r[2])) for r in rows]
        for i in range(0, len(out), 500):
            chunk_ids = [r[0] for r in out[i:i + 500]]
            self.tx.run(f"DELETE FROM flow_inputs WHERE id IN ({', '.join('?' * len(chunk_ids))})", chunk_ids)
        out.sort(key=lambda r: r[0])
        return out

    def run_by_id(self, run_id: int) -> F.Run | None:
        self._unplanned("a run by id")
        self.flush()
        row = self.tx.one("SELECT run FROM flow_runs WHERE id = ? AND tenant = ?", (run_id, self.tenant))
        return None if row is None else _run_decoder.decode(row[0])

    def queue(self, subscriber_id: int, events: Sequence[F.Event]) -> None:
        self._unplanned("queueing inputs")
        enqueue_inputs(self.tx, self.tenant, subscriber_id, events)

    def run_of_link(self, code: str) -> tuple[int, F.Run, str] | None:
        self._unplanned("a run by its link")
        self.flush()
        row = self.tx.one("SELECT r.id, r.run, l.send_key FROM flow_run_links l JOIN flow_runs r ON r.id = l.run_id "
                          "WHERE l.code = ? AND l.tenant = ?", (code, self.tenant))  # fmt: skip
        return None if row is None else (int(row[0]), _run_decoder.decode(row[1]), str(row[2]))

    # ---- actions -----------------------------------------------------------------------------
    def template(self, template_id: str) -> str | None:
        if template_id not in self._templates:
            row = self.tx.one("SELECT text FROM flow_templates WHERE tenant = ? AND template_id = ?",
                              (self.tenant, template_id))  # fmt: skip
            self._templates[template_id] = None if row is None else str(row[0])
        return self._templates[template_id]

    def add_message(self, m: FlowMessage) -> bool:
        """Record a send or webhook call; False when its key was recorded before (never twice). A
        planned batch's key is new (its run id is), which the replay checks; so is, on PostgreSQL, the
        key of a run this transaction started, written with the batch's other such sends."""
        row = (self.tenant, m.key, m.run_id, m.flow_id, m.version, m.step, m.visit, m.subscriber_id, m.kind, m.category,
               m.recipient, m.sender, m.body, m.media_url, m.state, m.detail, m.message_id, m.created_at, m.sent_at)  # fmt: skip
        # Written together by ``flush`` (``_log_messages``): a planned batch's; on PostgreSQL those of
        # the runs this transaction started (a key of a run id it took from the sequence is new).
        if self.planned or (self.engine == "postgres" and m.run_id in self._fresh):
            self._msgs.append(row)
            return True
        return self.tx.run(_INSERT_MESSAGE, row) > 0

    def _log_messages(self) -> None:
        """A planned batch's sends recorded since the last call, logged as one ``executemany`` whose
        row count must be all of them (a key recorded meanwhile makes the batch stale). On PostgreSQL,
        a batch's sends held since the last call, written now in one statement (a key recorded
        before stays as it was: ``ON CONFLICT DO NOTHING``, as one by one)."""
        if self._msgs and self.engine == "postgres":
            rows, self._msgs = self._msgs, []
            self.tx.run(_PG_INSERT_MESSAGES, [list(col) for col in zip(*rows)])
        elif self._msgs:
            rows, self._msgs = self._msgs, []
            self._log.append(lambda tx: _expect(tx.many(_INSERT_MESSAGE, rows), len(rows), "sends recorded meanwhile"))

    def forget(self, subscriber_id: int) -> None:
        """Read the subscriber again (their consent changed in this transaction)."""
        self._subs.pop(subscriber_id, None)

    def cancel_pending(self, subscriber_id: int, reason: str) -> int:
        """Marketing sends of the subscriber recorded but not posted yet become ``skipped``."""
        self._log_messages()  # after this batch's own earlier sends (held, or logged)
        if self.planned:  # replayed in order (0: not counted here)
            self._log.append(lambda tx: self._cancel(tx, subscriber_id, reason))
            return 0
        return self._cancel(self.tx, subscriber_id, reason)

    def _cancel(self, tx: Any, subscriber_id: int, reason: str) -> int:
        return tx.run("UPDATE flow_outbox SET state = 'skipped', detail = ? WHERE tenant = ? AND subscriber_id = ? "
                           "AND state = 'pending' AND category = 'marketing'", (reason, self.tenant, subscriber_id))  # fmt: skip

    def link_taken(self, code: str) -> bool:
        if code in self._codes:
            return True
        return self.tx.one("SELECT 1 FROM short_links WHERE code = ? UNION ALL SELECT 1 FROM flow_run_links WHERE code = ?",
                           (code, code)) is not None  # fmt: skip

    def add_link(self, code: str, run_id: int, send_key: str, target: str, now: float, message_key: str = "") -> None:
        """A flow's short link: the redirect table (campaign 0) and which run and send it belongs to."""
        self.flush()  # the run's row is read below
        if self.planned:  # the code must still be free at the replay (``link_taken`` read the snapshot)
            self._codes.add(code)
            self._log.append(lambda tx: self._link(tx, code, run_id, send_key, target, now, message_key, 1))
            return
        self._link(self.tx, code, run_id, send_key, target, now, message_key, None)

    def _link(self, tx: Any, code: str, run_id: int, send_key: str, target: str, now: float, message_key: str,
              want: int | None) -> None:  # fmt: skip
        a = tx.run("INSERT INTO short_links (code, tenant, campaign_id, subscriber_id, target, created_at) "
                   "SELECT ?, ?, 0, subscriber_id, ?, ? FROM flow_runs WHERE id = ? ON CONFLICT DO NOTHING",
                   (code, self.tenant, target, now, run_id))  # fmt: skip
        b = tx.run("INSERT INTO flow_run_links (code, tenant, run_id, send_key, message_key) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING", (code, self.tenant, run_id, send_key, message_key))  # fmt: skip
        if want is not None:
            _expect(a + b, 2 * want, f"short link {code} taken meanwhile")

    def update_subscriber(self, subscriber_id: int, add_tags: Sequence[str], remove_tags: Sequence[str],
                          set_attributes: dict[str, Any]) -> None:  # fmt: skip
        self._unplanned("an update of a subscriber (read, merged, written)")
        self._subs.pop(subscriber_id, None)
        for tag in add_tags:
            self.tx.run("INSERT INTO subscriber_tags (tenant, subscriber_id, tag) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        (self.tenant, subscriber_id, tag))  # fmt: skip
        for tag in remove_tags:
            self.tx.run("DELETE FROM subscriber_tags WHERE tenant = ? AND subscriber_id = ? AND tag = ?",
                        (self.tenant, subscriber_id, tag))  # fmt: skip
        if set_attributes:
            row = self.tx.one("SELECT attributes FROM subscribers WHERE tenant = ? AND id = ?", (self.tenant, subscriber_id))
            if row is not None:
                merged = {**msgspec.json.decode(row[0] or "{}"), **set_attributes}
                self.tx.run("UPDATE subscribers SET attributes = ? WHERE tenant = ? AND id = ?",
                            (_json.encode(merged).decode(), self.tenant, subscriber_id))  # fmt: skip


_event_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(F.Event)


def enqueue_inputs(tx: Any, tenant: str, subscriber_id: int | None, events: Sequence[F.Event]) -> None:
    """Queue flow input events in the caller's transaction (a no-op for a shop that has no flow)."""
    if not events or subscriber_id is None:
        return
    if tx.one("SELECT 1 FROM flow_heads WHERE tenant = ? LIMIT 1", (tenant,)) is None:
        return
    for e in events:
        tx.run("INSERT INTO flow_inputs (tenant, subscriber_id, event) VALUES (?, ?, ?)",
               (tenant, subscriber_id, _event_encoder.encode(e).decode()))  # fmt: skip


def applied_inputs(event: ShopEvent, applied: Applied) -> list[tuple[int, F.Event]]:
    """An applied shop event's flow inputs (subscriber, event), in the order they are queued: the
    event's own subscriber's (``flow_inputs.from_shop_event``), then its checkout's end, for the
    checkout's own subscriber (``Applied.checkout_end``). Every path (one event, both batches) queues
    exactly these, so a batch queues what its events one by one would, in the same order."""
    if applied.outcome == "duplicate":
        return []
    sid = applied.subscriber_id
    out: list[tuple[int, F.Event]] = [] if sid is None else [(sid, fe) for fe in flow_inputs.from_shop_event(event)]
    if applied.checkout_end is not None:
        end, owner = applied.checkout_end
        out.append((owner, flow_inputs.checkout_end(event, end)))  # type: ignore[arg-type]
    return out


def enqueue_applied(tx: Any, tenant: str, pairs: Sequence[tuple[int, F.Event]], *, has_flows: bool | None = None) -> None:
    """Queue ``applied_inputs``' pairs in the caller's transaction, in order, as one statement
    (``has_flows``: whether the shop has a flow, when the caller read it; None: read here)."""
    if not pairs:
        return
    if has_flows is None:
        has_flows = tx.one("SELECT 1 FROM flow_heads WHERE tenant = ? LIMIT 1", (tenant,)) is not None
    if has_flows:
        tx.many("INSERT INTO flow_inputs (tenant, subscriber_id, event) VALUES (?, ?, ?)",
                [(tenant, sid, _event_encoder.encode(e).decode()) for sid, e in pairs])  # fmt: skip


class FlowSql:
    """Needs ``self._tx()`` (the engine's transaction) and ``self.engine``."""

    _tx: Any
    engine: str

    @contextmanager
    def flow_tx(self, tenant: str) -> Iterator[FlowTx]:
        with self._tx() as tx:
            ftx = FlowTx(tx, tenant, self.engine)
            yield ftx
            ftx.flush()

    def flow_plan_supported(self) -> bool:
        """Whether ``flow_plan`` can plan in a snapshot (SQLite on a file: a second connection)."""
        return self.engine == "sqlite" and self._flow_snapshot_ok()

    def _flow_snapshot_ok(self) -> bool:
        return False

    @contextmanager
    def _flow_snapshot(self) -> Iterator[Any]:  # a read transaction of the engine (SQLite: sqlite.py)
        raise NotImplementedError
        yield

    @contextmanager
    def flow_plan(self, tenant: str, *, part: int = 0, parts: int = 1) -> Iterator[FlowTx]:
        """A batch decided in a WAL read snapshot, written under the write lock after its checks (the
        module docstring, "Planned batches"); raises ``FlowStale`` (nothing stored) when they fail."""
        ftx: FlowTx | None = None
        try:
            with self._flow_snapshot() as rtx:
                ftx = FlowTx(rtx, tenant, self.engine, planned=True, part=part, parts=parts)
                yield ftx
                ftx.flush()
            if ftx._log:
                t0 = time.perf_counter()
                with self._tx() as tx:
                    t1, c1 = time.perf_counter(), time.thread_time()
                    for op in ftx._log:
                        op(tx)
                ftx.write_times = (t1 - t0, time.perf_counter() - t1, time.thread_time() - c1)
        finally:
            # The log's closures hold ``ftx`` (bound methods), and ``ftx`` holds the log: a reference
            # cycle that kept the whole batch (its runs, subscribers, rows) alive until the cyclic
            # collector found it, which then walked it all (most of the drain's 12 % in ``gc_collect_main``).
            # Cleared, the batch is freed by reference counting when the caller drops it.
            if ftx is not None:
                ftx._log.clear()

    # ---- definitions -------------------------------------------------------------------------
    def put_flow_version(self, tenant: str, flow_id: str, name: str, definition: Any, *, now: float,
                         new: bool) -> FlowHead:  # fmt: skip
        """Publish ``definition`` as the flow's next version (``new``: the flow must not exist yet,
        else it must). The definition's ``version`` is set here; returns the head."""
        with self._tx() as tx:
            head = tx.one("SELECT latest FROM flow_heads WHERE tenant = ? AND flow_id = ?", (tenant, flow_id))
            if new and head is not None:
                raise Conflict(f"flow {flow_id!r} exists: publish a new version instead", code="flow_exists", field="id")
            if not new and head is None:
                raise NotFound(f"no flow {flow_id!r}", code="flow_not_found")
            version = 1 if head is None else int(head[0]) + 1
            body = _json.encode({**definition, "version": version}).decode()
            tx.run("INSERT INTO flow_versions (tenant, flow_id, version, definition, created_at) VALUES (?, ?, ?, ?, ?)",
                   (tenant, flow_id, version, body, now))  # fmt: skip
            if head is None:
                tx.run("INSERT INTO flow_heads (tenant, flow_id, name, latest, enabled, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, 0, ?, ?)", (tenant, flow_id, name, version, now, now))  # fmt: skip
            else:
                tx.run("UPDATE flow_heads SET name = ?, latest = ?, updated_at = ? WHERE tenant = ? AND flow_id = ?",
                       (name, version, now, tenant, flow_id))  # fmt: skip
        head_row = self.flow_head(tenant, flow_id)
        assert head_row is not None
        return head_row

    def flow_head(self, tenant: str, flow_id: str) -> FlowHead | None:
        with self._tx() as tx:
            row = tx.one("SELECT flow_id, name, latest, enabled, created_at, updated_at FROM flow_heads WHERE tenant = ? "
                         "AND flow_id = ?", (tenant, flow_id))  # fmt: skip
        return None if row is None else FlowHead(tenant=tenant, id=row[0], name=row[1], latest=int(row[2]),
                                                 enabled=bool(row[3]), created_at=row[4], updated_at=row[5])  # fmt: skip

    def flow_heads(self, tenant: str) -> list[FlowHead]:
        with self._tx() as tx:
            rows = tx.rows("SELECT flow_id, name, latest, enabled, created_at, updated_at FROM flow_heads WHERE tenant = ? "
                           "ORDER BY flow_id", (tenant,))  # fmt: skip
        return [FlowHead(tenant=tenant, id=r[0], name=r[1], latest=int(r[2]), enabled=bool(r[3]), created_at=r[4],
                         updated_at=r[5]) for r in rows]  # fmt: skip

    def flow_version(self, tenant: str, flow_id: str, version: int) -> Any:
        with self._tx() as tx:
            return FlowTx(tx, tenant, self.engine).definition(flow_id, version)

    def set_flow_enabled(self, tenant: str, flow_id: str, enabled: bool, *, now: float) -> FlowHead:
        with self._tx() as tx:
            if tx.run("UPDATE flow_heads SET enabled = ?, updated_at = ? WHERE tenant = ? AND flow_id = ?",
                      (int(enabled), now, tenant, flow_id)) == 0:  # fmt: skip
                raise NotFound(f"no flow {flow_id!r}", code="flow_not_found")
        head = self.flow_head(tenant, flow_id)
        assert head is not None
        return head

    def put_flow_template(self, tenant: str, template_id: str, text: str, *, now: float) -> None:
        with self._tx() as tx:
            tx.run("INSERT INTO flow_templates (tenant, template_id, text, updated_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (tenant, template_id) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
                   (tenant, template_id, text, now))  # fmt: skip

    def flow_templates(self, tenant: str) -> dict[str, str]:
        with self._tx() as tx:
            return {str(k): str(v) for k, v in tx.rows(
                "SELECT template_id, text FROM flow_templates WHERE tenant = ? ORDER BY template_id", (tenant,))}

    # ---- runs and messages -------------------------------------------------------------------
    def flow_run_rows(self, tenant: str, *, flow_id: str | None = None, subscriber_id: int | None = None,
                      after: int = 0, limit: int = 100) -> list[FlowRunRow]:  # fmt: skip
        where, params = _where_flow(["tenant = ?", "id > ?"], [tenant, after], flow_id, subscriber_id)
        with self._tx() as tx:
            rows = tx.rows(f"SELECT {_RUN_COLS} FROM flow_runs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                           (*params, limit))  # fmt: skip
        return [_run_row(tenant, r) for r in rows]

    def flow_node_counts(self, tenant: str, flow_id: str) -> list[NodeCount]:
        """Per version and node: runs waiting there now, runs that ended there, messages recorded there."""
        out: dict[tuple[int, str], dict[str, int]] = {}
        with self._tx() as tx:
            for version, node, state, ended, n in tx.rows(
                    "SELECT version, node, state, ended, COUNT(*) FROM flow_runs WHERE tenant = ? AND flow_id = ? "
                    "GROUP BY version, node, state, ended", (tenant, flow_id)):  # fmt: skip
                c = out.setdefault((int(version), node or ""), {})
                key = "waiting" if state == "active" else ("exited" if ended and ended != "completed" else "completed")
                c[key] = c.get(key, 0) + int(n)
            for version, step, state, n in tx.rows(
                    "SELECT version, step, state, COUNT(*) FROM flow_outbox WHERE tenant = ? AND flow_id = ? "
                    "GROUP BY version, step, state", (tenant, flow_id)):  # fmt: skip
                c = out.setdefault((int(version), step), {})
                c[state] = c.get(state, 0) + int(n)
        return [NodeCount(version=v, node=node, waiting=c.get("waiting", 0), completed=c.get("completed", 0),
                          exited=c.get("exited", 0), pending=c.get("pending", 0), sent=c.get("sent", 0),
                          failed=c.get("failed", 0), skipped=c.get("skipped", 0))
                for (v, node), c in sorted(out.items())]  # fmt: skip

    def pending_flow_messages(self, limit: int = 500, *, tenant: str | None = None, part: int = 0,
                              parts: int = 1, kind: Literal["sends", "webhooks"] | None = None,
                              now: float | None = None) -> list[FlowMessage]:  # fmt: skip
        """The oldest pending sends; with ``parts`` > 1 only those of subscribers ``id % parts == part``
        (each worker posts what it recorded; a send posted twice would still go once: its key).
        ``kind="sends"``: SMS and MMS only; ``"webhooks"``: webhook calls only, and of those only the
        ones due (``next_at`` unset or at most ``now``: a receiver that failed waits its back-off), so a
        dead receiver never holds up the sends behind it."""
        with self._tx() as tx:
            share, params = FlowTx(tx, "", self.engine)._share(part, parts)
            of_tenant = ("", ()) if tenant is None else (" AND tenant = ?", (tenant,))
            of_kind: tuple[str, tuple[float, ...]] = ("", ())
            if kind == "sends":
                of_kind = (" AND kind <> 'webhook'", ())
            elif kind == "webhooks":
                of_kind = (" AND kind = 'webhook'", ()) if now is None else \
                    (" AND kind = 'webhook' AND (next_at IS NULL OR next_at <= ?)", (now,))  # fmt: skip
            rows = tx.rows(f"SELECT tenant, {_MSG_COLS} FROM flow_outbox WHERE state = 'pending'{of_kind[0]}{share}{of_tenant[0]} "
                           f"ORDER BY created_at LIMIT ?", (*of_kind[1], *params, *of_tenant[1], limit))  # fmt: skip
        return [_msg_row(r[0], r[1:]) for r in rows]

    def flow_messages_later(self, later: Sequence[tuple[str, str, float, str | None]]) -> None:
        """Pending webhook calls whose receiver failed: (tenant, key, not before, why), one transaction."""
        with self._tx() as tx:
            for tenant, key, next_at, detail in later:
                tx.run("UPDATE flow_outbox SET next_at = ?, detail = ? WHERE tenant = ? AND key = ? AND state = 'pending'",
                       (next_at, detail, tenant, key))  # fmt: skip

    def flow_messages_done(self, done: Sequence[tuple[str, str, str, str | None, str | None]], *, now: float) -> None:
        """Mark sends answered: (tenant, key, state 'sent'|'failed', message id, detail), one transaction.
        On PostgreSQL one statement for them all (``_PG_MESSAGES_DONE``); on SQLite four a send."""
        if self.engine == "postgres":
            first = list({(t, k): (t, k, s, m, d) for t, k, s, m, d in reversed(done)}.values())[::-1]
            if first:  # a key twice: the first answer wins, as one by one (the second finds it not pending)
                with self._tx() as tx:
                    tx.run(_PG_MESSAGES_DONE, [*map(list, zip(*first)), now])
            return
        with self._tx() as tx:
            for tenant, key, state, message_id, detail in done:
                moved = tx.run("UPDATE flow_outbox SET state = ?, message_id = ?, detail = ?, sent_at = ? WHERE tenant = ? "
                               "AND key = ? AND state = 'pending'", (state, message_id, detail, now, tenant, key))  # fmt: skip
                if moved and state == "sent":
                    self._report_source(tx, tenant, key, now)

    @staticmethod
    def _report_source(tx: Any, tenant: str, key: str, now: float) -> None:
        """A send the gateway took becomes a message source of the reports (``flow_messages`` and its
        short links in ``flow_links``, REPORT_DDL: campaigns/store/report_sql.py), in the transaction
        that marks it sent: attribution and the report by flow step see every flow send once."""
        row = tx.one("SELECT flow_id, step, subscriber_id, message_id, kind FROM flow_outbox WHERE tenant = ? AND key = ?",
                     (tenant, key))  # fmt: skip
        if row is None or row[4] == "webhook":
            return
        tx.run("INSERT INTO flow_messages (tenant, id, flow_id, step, subscriber_id, sent_at, message_id) "
               "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (tenant, key, row[0], row[1], row[2], now, row[3]))  # fmt: skip
        for (code,) in tx.rows("SELECT code FROM flow_run_links WHERE tenant = ? AND message_key = ?", (tenant, key)):
            tx.run("INSERT INTO flow_links (code, tenant, flow_message) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                   (code, tenant, key))  # fmt: skip

    def flow_messages(self, tenant: str, *, flow_id: str | None = None, subscriber_id: int | None = None,
                      limit: int = 1000) -> list[FlowMessage]:  # fmt: skip
        where, params = _where_flow(["tenant = ?"], [tenant], flow_id, subscriber_id)
        with self._tx() as tx:
            rows = tx.rows(f"SELECT {_MSG_COLS} FROM flow_outbox WHERE {' AND '.join(where)} ORDER BY created_at, key "
                           f"LIMIT ?", (*params, limit))  # fmt: skip
        return [_msg_row(tenant, r) for r in rows]

    def next_flow_due(self) -> float | None:
        with self._tx() as tx:
            row = tx.one("SELECT MIN(due) FROM flow_runs WHERE due IS NOT NULL")
        return None if row is None or row[0] is None else float(row[0])

    def flow_history(self, tenant: str, *, since: float, until: float, limit: int = 200_000) -> list[tuple[float, int, F.Event]]:
        """The shop's past inputs in ``[since, until]`` as flow events (for the simulation): orders
        placed / paid / fulfilled / delivered, checkouts abandoned and completed, consents confirmed and revoked,
        custom events. Time order; at most ``limit``."""
        out: list[tuple[float, int, F.Event]] = []
        with self._tx() as tx:
            for oid, sid, total, paid, fstatus, created, fat, cid in tx.rows(
                    "SELECT order_id, subscriber_id, total, payment_status, fulfillment_status, created_at, fulfillment_at, "
                    "checkout_id FROM orders WHERE tenant = ? AND created_at >= ? AND created_at <= ? ORDER BY created_at "
                    "LIMIT ?", (tenant, since, until, limit)):  # fmt: skip
                payload = {"order_id": oid, "total": total, "value": total, "checkout_id": cid}
                out.append((created, int(sid), F.ShopEvent(id=f"order_placed:{oid}", kind="order_placed", object_id=oid,
                                                           payload=payload)))  # fmt: skip
                if paid == "paid":
                    out.append((created, int(sid), F.ShopEvent(id=f"order_paid:{oid}", kind="order_paid", object_id=oid,
                                                               payload=payload)))  # fmt: skip
                kind = {"shipped": "order_fulfilled", "fulfilled": "order_fulfilled",
                        "delivered": "order_delivered"}.get((fstatus or "").lower())  # fmt: skip
                if kind is not None:
                    out.append((max(fat or created, created), int(sid),
                                F.ShopEvent(id=f"{kind}:{oid}", kind=kind, object_id=oid, payload=payload)))  # type: ignore[arg-type]
            for cid, sid, value, url, at in tx.rows(
                    "SELECT checkout_id, subscriber_id, value, url, abandoned_at FROM checkouts WHERE tenant = ? AND "
                    "abandoned_at >= ? AND abandoned_at <= ? ORDER BY abandoned_at LIMIT ?", (tenant, since, until, limit)):  # fmt: skip
                out.append((at, int(sid), flow_inputs.abandoned(cid, int(value or 0), url)))
            for cid, sid, at in tx.rows(
                    "SELECT checkout_id, subscriber_id, completed_at FROM checkouts WHERE tenant = ? AND "
                    "completed_at >= ? AND completed_at <= ? ORDER BY completed_at LIMIT ?", (tenant, since, until, limit)):  # fmt: skip
                out.append((at, int(sid), flow_inputs.completed(cid)))
            for eid, sid, action, source, at in tx.rows(
                    "SELECT id, subscriber_id, action, source, at FROM consent_ledger WHERE tenant = ? AND at >= ? AND "
                    "at <= ? ORDER BY at LIMIT ?", (tenant, since, until, limit)):  # fmt: skip
                if action == "opt_out":
                    out.append((at, int(sid), F.OptOut(id=f"consent:{eid}")))
                elif action in ("confirm", "re_opt_in", "opt_in"):
                    out.append((at, int(sid), F.ShopEvent(id=f"consent:{eid}", kind="subscribed", name=source)))
            for sid, kind, at, props in tx.rows(
                    "SELECT subscriber_id, kind, at, properties FROM activities WHERE tenant = ? AND at >= ? AND at <= ? "
                    "AND kind NOT IN ('clicked', 'replied', 'message_sent', 'delivered') ORDER BY at LIMIT ?",
                    (tenant, since, until, limit)):  # fmt: skip
                out.append((at, int(sid), F.ShopEvent(id=f"custom:{sid}:{kind}:{at!r}", kind="custom", name=kind,
                                                      payload=msgspec.json.decode(props or "{}"))))  # fmt: skip
        out.sort(key=lambda x: x[0])
        return out[:limit]


def _where_flow(where: list[str], params: list[object], flow_id: str | None,
                subscriber_id: int | None) -> tuple[list[str], list[object]]:  # fmt: skip
    """``where``/``params`` narrowed to a flow and/or a subscriber when given."""
    if flow_id is not None:
        where.append("flow_id = ?")
        params.append(flow_id)
    if subscriber_id is not None:
        where.append("subscriber_id = ?")
        params.append(subscriber_id)
    return where, params
