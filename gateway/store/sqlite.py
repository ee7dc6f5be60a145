"""The embedded default store: SQLite in WAL mode, one transaction per batch (group commit).

Why SQLite: no server to run, crash-safe by design, and measured here at ~480k rows/s when rows
are written 100+ per transaction (docs/BENCHMARKS.md). ``synchronous=FULL`` by default, so a
returned ``add_job`` survives power loss as well as a process crash; ``NORMAL`` survives a
process crash (kill -9) and is faster.

Calls are synchronous and may block on disk: the async shell runs them in a worker thread.
One connection, guarded by a lock, so the store is safe to call from several threads.
"""

from __future__ import annotations


import bisect
import collections
import sqlite3
import threading
import unicodedata
from collections.abc import Collection, Iterator, Sequence
from functools import cache, partial

import msgspec

from gateway.core.ids import format_id
from gateway.core.model import Job, Recipient
from gateway.errors import Conflict, StorageError
from gateway.store.base import (
    AWAITING,
    FINAL,
    JOBS_SCAN,
    NOTIFY,
    HookRow,
    hook_wire,
    Change,
    InboundItem,
    InboundPage,
    InboundRecord,
    JobCounts,
    JobsPage,
    MessageRecord,
    NewJob,
    RecipientRows,
    HookEvent,
    OutboxStats,
    Page,
    StoredJob,
    Subscriber,
    Suppression,
    page_of_jobs,
)

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    tenant TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, first_id INTEGER NOT NULL,
    size INTEGER NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, callback_url TEXT,
    callback_states TEXT, -- the states callback_url hears about, comma-separated; NULL: all (NOTIFY)
    PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, job_id TEXT NOT NULL, recipient BLOB NOT NULL,
    state TEXT NOT NULL, final INTEGER NOT NULL DEFAULT 0, carrier TEXT, carrier_ids TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL, history TEXT);
CREATE INDEX IF NOT EXISTS messages_job ON messages (tenant, job_id, id);
CREATE INDEX IF NOT EXISTS messages_open ON messages (final, job_id) WHERE final = 0;
-- The history of stores written before messages.history (read, no longer written).
CREATE TABLE IF NOT EXISTS events (
    message_id INTEGER NOT NULL, at REAL NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
    carrier TEXT);
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL, key TEXT NOT NULL, digest TEXT NOT NULL, response BLOB NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (tenant, key));
CREATE TABLE IF NOT EXISTS suppressions (
    tenant TEXT NOT NULL, number TEXT NOT NULL, at REAL NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (tenant, number));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, url TEXT NOT NULL, message_id INTEGER NOT NULL,
    job_id TEXT NOT NULL, state TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL, carrier TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0,
    error TEXT, error_code INTEGER);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at, id) WHERE dead = 0;
-- Webhooks (issue 16). The outbox above now holds only dead letters (dead = 1); pending rows of a
-- store made before are moved into the sequence at open (_migrate_outbox). A subscriber is a
-- (tenant, callback_url) with its durable cursor and backoff; hook_log its change sequence: one
-- row per message and record batch (that batch's changes of the message, as its history has
-- them), keyed by (subscriber, seq), written in record's own transaction (_HOOK_LOG), trimmed as the
-- cursor moves.
CREATE TABLE IF NOT EXISTS hook_subscribers (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, url TEXT NOT NULL, cursor INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, error TEXT, UNIQUE (tenant, url));
CREATE TABLE IF NOT EXISTS hook_log (
    sub INTEGER NOT NULL, seq INTEGER NOT NULL, message_id INTEGER NOT NULL, events TEXT NOT NULL,
    PRIMARY KEY (sub, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hook_seq (n INTEGER NOT NULL);
INSERT INTO hook_seq SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM hook_seq);
CREATE TABLE IF NOT EXISTS inbound (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, carrier TEXT NOT NULL, sender TEXT NOT NULL,
    recipient TEXT NOT NULL, text TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, keyword TEXT,
    url TEXT, next_at REAL, attempts INTEGER NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0, error TEXT);
CREATE INDEX IF NOT EXISTS inbound_tenant ON inbound (tenant, id);
CREATE INDEX IF NOT EXISTS inbound_due ON inbound (next_at, id) WHERE next_at IS NOT NULL AND dead = 0;
-- An MO's key (carrier's id or digest) -> its record: a carrier's redelivery is stored once.
CREATE TABLE IF NOT EXISTS inbound_keys (key TEXT PRIMARY KEY, id INTEGER NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
-- Late receipts (issue 16): a message's lone `submitted` (no other change of it in the write) is
-- appended here instead of rewriting its row, and applied to the row together with the message's
-- next change (its receipt), so the row is written once in the common case. At most one live row
-- per open message; rows of messages made final since are dead and trimmed by range (seq). Folded
-- into the rows at open (a crash), at close, before the rare readers and after `hold` seconds.
CREATE TABLE IF NOT EXISTS submits (
    seq INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, tenant TEXT NOT NULL, job_id TEXT NOT NULL,
    prev TEXT, at REAL NOT NULL, carrier TEXT, carrier_ids TEXT, event TEXT NOT NULL);  -- prev: NULL if final
-- Clarifying questions sent for unsure opt-outs, open until a YES or an opt-out settles them.
CREATE TABLE IF NOT EXISTS questions (
    tenant TEXT NOT NULL, number TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (tenant, number)) WITHOUT ROWID;
"""
_INBOUND_COLUMNS = "id, tenant, carrier, sender, recipient, text, at, kind, keyword, sender_canonical, certain, asks"
_INBOUND_ADDED = {"sender_canonical": "INTEGER NOT NULL DEFAULT 1", "certain": "INTEGER NOT NULL DEFAULT 1",
                  "asks": "INTEGER NOT NULL DEFAULT 0"}  # columns a store made before them lacks
# A job's counts by state, kept by a trigger as the difference from "every message queued"
# (a job's messages are inserted queued and its ``size`` counts them): queued = size + n of
# 'queued', any other state = its n. So ``job`` reads a few rows instead of counting every
# message of the job (it held the store lock for tens of ms per poll on a 200k job), and
# ``add_job`` pays nothing; each state change pays two small upserts, inside SQLite.
_COUNTS = """
CREATE TABLE job_counts (
    tenant TEXT NOT NULL, job_id TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (tenant, job_id, state)) WITHOUT ROWID;
CREATE TRIGGER messages_count AFTER UPDATE OF state ON messages WHEN old.state != new.state BEGIN
    INSERT INTO job_counts VALUES (new.tenant, new.job_id, old.state, -1)
        ON CONFLICT (tenant, job_id, state) DO UPDATE SET n = n - 1;
    INSERT INTO job_counts VALUES (new.tenant, new.job_id, new.state, 1)
        ON CONFLICT (tenant, job_id, state) DO UPDATE SET n = n + 1;
END;
-- A store made before job_counts existed: count what is there once.
INSERT INTO job_counts SELECT tenant, job_id, state, count(*) FROM messages WHERE state != 'queued'
    GROUP BY tenant, job_id, state;
INSERT INTO job_counts SELECT tenant, id, 'queued', -size + (SELECT count(*) FROM messages m
    WHERE m.tenant = jobs.tenant AND m.job_id = jobs.id AND m.state = 'queued') FROM jobs WHERE true
    ON CONFLICT (tenant, job_id, state) DO UPDATE SET n = n + excluded.n;
"""
_DEAD_INSERT = (
    "INSERT INTO outbox (tenant, url, message_id, job_id, state, at, reason, carrier, attempts, dead, error,"
    " error_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
)
#: A batch's sequence rows are numbered (batch << _SEQ_BITS) + their place in it.
_SEQ_BITS = 24
_IN_CHUNK = 500  # ids per "IN (...)": well under SQLite's limit on bound parameters

_job_enc = msgspec.msgpack.Encoder()
_job_dec = msgspec.msgpack.Decoder(Job)
_rcpt_msgpack = msgspec.msgpack.Decoder(Recipient)
_rcpt_json = msgspec.json.Decoder(Recipient)
_INSERT_MESSAGES = """
INSERT INTO messages (id, tenant, job_id, recipient, state, updated_at)
SELECT ?1 + (value ->> 0), ?2, ?3, value -> 1, 'queued', ?4 FROM json_each(?5)
"""
_INSERT_ROWS = """
INSERT INTO messages (id, tenant, job_id, recipient, state, updated_at)
SELECT ?1 + key, ?2, ?3, value, 'queued', ?4 FROM json_each(?5)
"""


def _rcpt_dec(stored: str | bytes) -> Recipient:
    """A stored recipient: JSON text (this version), or msgpack (stores written before it)."""
    try:
        return _rcpt_json.decode(stored) if isinstance(stored, str) else _rcpt_msgpack.decode(stored)
    except msgspec.ValidationError:
        return _legacy_rcpt(stored)


class _LooseRecipient(msgspec.Struct, frozen=True, kw_only=True):
    to: str
    vars: dict[str, str] = {}
    tz: str | None = None


def _legacy_rcpt(stored: str | bytes) -> Recipient:
    """A row written before numbers were made canonical at the door, e.g. with non-ASCII digits
    (which the ``Digits`` pattern refuses, so reading it failed for ever): its digits folded to
    ASCII, so it can still be shown and recovered."""
    loose = (msgspec.json.decode if isinstance(stored, str) else msgspec.msgpack.decode)(stored, type=_LooseRecipient)
    to = "".join(str(unicodedata.decimal(c)) if unicodedata.decimal(c, None) is not None else c for c in loose.to)
    to = "+" + "".join(c for c in to if c.isascii() and c.isdigit())
    return Recipient(to=to, vars=loose.vars, tz=loose.tz)
_json_enc = msgspec.json.Encoder()
# ``record``: a batch's rows go to SQLite as bound parameters of a multi-row VALUES, not as JSON.
# ``_coalesce``'s rows are [id, state, final, at, carrier, carrier_ids, attempts, history fragment
# ([at, state, reason, carrier(, error_code)] JSON arrays, comma-separated)]. A message's history
# is appended to its own row (``history``), in the UPDATE the batch makes anyway: a table of events
# with its index cost as much again as the rest of the write together (`python -m bench.store_record`).
# Until 2026-12-07 the batch was one JSON parameter applied by a temp trigger; SQLite 3.40 parses
# a ``json_each`` row's text again for every ``->>`` (eleven a hooked message), which was ~40 % of
# SQLite's CPU in a window's write (`python -m bench.store_record --window`, docs/BENCHMARKS.md
# "A window's write without JSON"); bound values cost nothing to read. A statement's row count is
# rounded up to a multiple of ``_ROWS`` (the rest padded with NULL rows, which match no message),
# so each size is prepared once and then found in the connection's statement cache; a batch of
# more than ``_MAX_ROWS`` messages is several statements in the same transaction.
#
# Hooked rows ([id, subscriber, history fragment, place in the batch]) are the messages a webhook
# subscriber hears about. The same transaction numbers the batch (``hook_seq``) and appends a
# sequence row for each of them that is not final yet (the state change and its webhook commit
# together; a change to a final message is ignored by both), before the UPDATE applies the
# changes. CROSS JOIN and ``+m.final`` fix the plan: one primary-key lookup per hooked row (left
# to itself, SQLite scanned every open message through ``messages_open`` for each write: 2.8 ms
# of CPU per message at 3,000 open).
_ROWS = 32
_MAX_ROWS = 512
_UPDATE = """UPDATE messages SET state = u.column2, updated_at = u.column4,
    carrier = coalesce(u.column5, carrier), carrier_ids = coalesce(u.column6, carrier_ids),
    attempts = attempts + u.column7, history = coalesce(history || ',', '') || u.column8
    FROM (VALUES {}) AS u WHERE messages.id = u.column1 AND +messages.final = 0"""
# Messages that stay open go through ``_UPDATE``, which does not set ``final``, so SQLite leaves
# their ``messages_open`` entries alone (with ``final`` in the SET it deleted and re-inserted the
# entry of every one of them); those that end go through ``_UPDATE_FINAL``.
_UPDATE_FINAL = _UPDATE.replace("SET state = u.column2,", "SET state = u.column2, final = 1,")
_HOOK_LOG = """INSERT INTO hook_log (sub, seq, message_id, events)
    SELECT h.column2, ((SELECT n FROM hook_seq) << 24) + h.column4, h.column1, h.column3
    FROM (VALUES {}) AS h CROSS JOIN messages m ON m.id = h.column1 WHERE +m.final = 0"""
# A write's lone ``submitted`` rows ([seq, id, at, carrier, carrier_ids, history fragment]; the seqs
# given by the store, which alone appends) appended to ``submits``, with the message's tenant, job
# and state before (NULL for a final or missing message, whose submit every write ignores): one
# primary-key lookup each, no rewrite. No RETURNING: it cost ~2 µs a row (the readers' overlay of
# counts is read back by job and state, a row a write: ``_HELD_COUNTS``).
_JOURNAL = """INSERT INTO submits (seq, message_id, tenant, job_id, prev, at, carrier, carrier_ids, event)
    SELECT v.column1, v.column2, coalesce(m.tenant, ''), coalesce(m.job_id, ''),
        CASE WHEN m.final = 0 THEN m.state END, v.column3, v.column4, v.column5, v.column6
    FROM (VALUES {}) AS v LEFT JOIN messages m ON m.id = v.column2 WHERE v.column1 IS NOT NULL"""
_HELD_COUNTS = "SELECT tenant, job_id, prev, count(*) FROM submits WHERE seq >= ? AND prev IS NOT NULL GROUP BY 1, 2, 3"
_UNHELD_COUNTS = """SELECT s.tenant, s.job_id, s.prev, -count(*) FROM (VALUES {}) AS v JOIN submits s ON s.seq = v.column1
    WHERE s.prev IS NOT NULL GROUP BY 1, 2, 3"""
# A held message's next change ([``_UPDATE``'s 8 values, its submit's seq]): its submit and the
# change applied to the row in one write, as if they had come in one batch.
_UPDATE_HELD = """UPDATE messages SET state = u.column2, updated_at = u.column4,
    carrier = coalesce(u.column5, s.carrier, messages.carrier),
    carrier_ids = coalesce(u.column6, s.carrier_ids, messages.carrier_ids),
    attempts = attempts + u.column7 + 1, history = coalesce(history || ',', '') || s.event || ',' || u.column8
    FROM (VALUES {}) AS u JOIN submits s ON s.seq = u.column9 WHERE messages.id = u.column1 AND +messages.final = 0"""
_UPDATE_HELD_FINAL = _UPDATE_HELD.replace("SET state = u.column2,", "SET state = u.column2, final = 1,")
# Live ``submits`` rows applied to their messages alone, as ``_UPDATE`` would have (all of them at
# open after a crash, at close, before a rare reader; those held longer than ``hold``); dead rows'
# messages are final and left alone.
_FOLD = """UPDATE messages SET state = 'submitted', updated_at = s.at,
    carrier = coalesce(s.carrier, messages.carrier), carrier_ids = coalesce(s.carrier_ids, messages.carrier_ids),
    attempts = attempts + 1, history = coalesce(history || ',', '') || s.event
    FROM submits s WHERE messages.id = s.message_id AND +messages.final = 0"""
#: Dead ``submits`` rows are deleted by range once this many have gone by.
_TRIM = 4096


@cache
def _statement(template: str, rows: int, width: int) -> str:
    """``template`` with a VALUES of ``rows`` rows of ``width`` parameters."""
    return template.format(",".join(["(" + ",".join("?" * width) + ")"] * rows))


def _apply(db: sqlite3.Connection, template: str, params: list, width: int) -> list:
    """``template`` over ``params`` (rows of ``width`` values, flat), in statements of at most
    ``_MAX_ROWS`` rows, each rounded up to a multiple of ``_ROWS`` with NULL rows; the rows it
    returned (a SELECT's)."""
    out: list = []
    step = _MAX_ROWS * width
    for i in range(0, len(params), step):
        part = params[i : i + step] if len(params) > step else params
        rows = len(part) // width
        size = -(-rows // _ROWS) * _ROWS
        if size != rows:
            part = part + [None] * ((size - rows) * width)
        out += db.execute(_statement(template, size, width), part).fetchall()
    return out


def _coalesce(changes: Sequence[Change]) -> list[list]:
    """One row per message: what its changes in this batch, applied in order, leave. A final
    state ends it (later changes in the batch are ignored and not in its history, as ``final =
    0`` ignores them across batches); carrier and ids are the last given; attempts counts its
    ``submitted``; the last item lists the changes applied (its history)."""
    out = list(_merge(changes).values())
    encode = _json_enc.encode
    for row in out:
        row[7] = encode(row[7])[1:-1].decode()
    return out


def _merge(changes: Sequence[Change]) -> dict[int, list]:
    """``_coalesce``'s rows by message id, the history still a list of ``_event`` tuples.
    ``final`` and the count of ``submitted`` are bools where a row has one change (SQLite binds
    them as 0 and 1). One pass, the attributes read once: it runs for every change written."""
    rows: dict[int, list] = {}
    get = rows.get
    final = FINAL
    for c in changes:
        mid, state, at, carrier, err = c.message_id, c.state, c.at, c.carrier, c.error_code
        event = (at, state, c.reason, carrier) if err is None else (at, state, c.reason, carrier, err)
        row = get(mid)
        if row is None:
            ids = c.carrier_ids
            rows[mid] = [mid, state, state in final, at, carrier, ",".join(ids) if ids else None,
                         state == "submitted", [event]]  # fmt: skip
        elif not row[2]:
            row[1], row[2], row[3] = state, state in final, at
            if carrier is not None:
                row[4] = carrier
            if c.carrier_ids:
                row[5] = ",".join(c.carrier_ids)
            if state == "submitted":
                row[6] += 1
            row[7].append(event)
    return rows


def _event(c: Change) -> tuple:
    # The carrier's error code only where there is one: most changes have none, and every byte of
    # the history is written on the hot path.
    if c.error_code is None:
        return (c.at, c.state, c.reason, c.carrier)
    return (c.at, c.state, c.reason, c.carrier, c.error_code)


class _Event(msgspec.Struct, array_like=True):
    at: float
    state: str
    reason: str
    carrier: str | None
    error_code: int | None = None  # absent from changes without one, and from older stores


_history_dec = msgspec.json.Decoder(list[_Event])
_SENDS_SINCE = "SELECT id, tenant, job_id, recipient, history FROM messages WHERE attempts > 0 AND updated_at > ?"
_SUBMITTED = ',"submitted",'  # a history's ``[at,"submitted",...`` (quotes inside JSON strings are escaped)


def _last_submit(history: str | None) -> float | None:
    """The time of the last ``submitted`` change in a message's history (``record``'s
    comma-separated JSON arrays), found without decoding the whole history."""
    if not history:
        return None
    stop = len(history)
    while (at := history.rfind(_SUBMITTED, 0, stop)) >= 0:
        try:  # the state field follows the time; a reason "submitted" follows a state, not a time
            return float(history[history.rfind("[", 0, at) + 1 : at])
        except ValueError:
            stop = at + len(_SUBMITTED) - 1  # matches may overlap: '[t,"submitted","submitted",...'
    return None




_HOOK_EVENTS = (
    "SELECT l.seq, l.message_id, l.events, m.recipient, m.job_id, j.callback_states, s.tenant, s.url,"
    " s.attempts, CASE WHEN j.id IS NULL THEN NULL ELSE j.body END"
    " FROM hook_subscribers s JOIN hook_log l ON l.sub = s.id AND l.seq > s.cursor"
    " LEFT JOIN messages m ON m.id = l.message_id LEFT JOIN jobs j ON j.tenant = m.tenant AND j.id = m.job_id"
    " WHERE s.id = ? ORDER BY l.seq LIMIT ?"
)
_HOOK_ROWS = (
    "SELECT l.seq, l.message_id, l.events, m.recipient, m.job_id FROM hook_subscribers s"
    " JOIN hook_log l ON l.sub = s.id AND l.seq > max(s.cursor, ?) LEFT JOIN messages m ON m.id = l.message_id"
    " WHERE s.id = ? ORDER BY l.seq LIMIT ?"
)
_HOOK_ROW = _HOOK_EVENTS.replace("l.seq > s.cursor", "l.seq = ?").replace(" LIMIT ?", "")


class _WireRecipient(msgspec.Struct):
    """What a webhook event says of its recipient (``to`` is checked as ``Digits`` by
    ``_canonical``: a regex in the decoder cost more than the rest of the decode)."""

    to: str
    index: int | None = None


def _canonical(to: str) -> bool:
    """``to`` matches ``Digits`` (``^\\+[1-9][0-9]{6,14}$``)."""
    return 8 <= len(to) <= 16 and to[0] == "+" and to[1] != "0" and to.isascii() and to[1:].isdigit()


_wire_rcpt = msgspec.json.Decoder(_WireRecipient).decode
_raw_history = msgspec.json.Decoder(list[tuple]).decode


def _ref_json(reference: str | None) -> str:
    return _json_enc.encode(reference).decode()


class SqliteStore:
    # A window's worth of changes (~200) is ~1-2 ms with its sync to disk. From a worker thread
    # the same write waited to be scheduled and for the GIL, before and after SQLite ran, and that
    # latency capped the rate (docs/BENCHMARKS.md, "The write path"). Every write in a worker
    # thread was tried again on 2026-12-07: the loop's CPU fell, `serve`'s rose 7-11 % and the
    # rates did not rise (docs/ARCHITECTURE.md, "The write off the event loop"). Larger writes (a
    # job's expiry, a backlog after a stall) still go to a worker thread.
    inline_record = 512

    def __init__(self, path: str, *, synchronous: str = "FULL", writes_changes: bool = True,
                 hold: float = 2.0) -> None:  # fmt: skip
        """``writes_changes=False``: a connection that never calls ``record`` (the webhook
        delivery process) skips rebuilding the cache of jobs with a callback, and leaves the
        ``submits`` of the process that writes alone. ``hold``: how long (seconds, by the
        changes' own times) a message's lone ``submitted`` may wait in ``submits`` for the
        message's next change before its row is written alone (0: never held, written at once)."""
        self.path = path  # the webhook delivery process opens the same file
        self._sync = "NORMAL" if synchronous == "NORMAL" else "FULL"
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={self._sync}")
            self._db.executescript(_SCHEMA)
            if not any(col[1] == "history" for col in self._db.execute("PRAGMA table_info(messages)")):
                self._db.execute("ALTER TABLE messages ADD COLUMN history TEXT")  # a store made before it
            if not any(col[1] == "callback_states" for col in self._db.execute("PRAGMA table_info(jobs)")):
                self._db.execute("ALTER TABLE jobs ADD COLUMN callback_states TEXT")  # a store made before it
            if not any(col[1] == "error_code" for col in self._db.execute("PRAGMA table_info(outbox)")):
                self._db.execute("ALTER TABLE outbox ADD COLUMN error_code INTEGER")  # a store made before it
            have = {col[1] for col in self._db.execute("PRAGMA table_info(inbound)")}
            for column, decl in _INBOUND_ADDED.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE inbound ADD COLUMN {column} {decl}")
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_counts'").fetchone() is None:
                self._db.executescript(f"BEGIN IMMEDIATE; {_COUNTS} COMMIT;")
            _migrate_outbox(self._db)
            self._db.execute("INSERT OR IGNORE INTO hook_subscribers (tenant, url) SELECT DISTINCT tenant, callback_url"
                             " FROM jobs WHERE callback_url IS NOT NULL")  # jobs of a store made before them
            hooked = self._db.execute(
                "SELECT j.tenant, j.id, j.callback_url, s.id, j.first_id, max(m.id), count(*), j.callback_states"
                " FROM jobs j JOIN hook_subscribers s ON s.tenant = j.tenant AND s.url = j.callback_url"
                " JOIN messages m ON m.tenant = j.tenant AND m.job_id = j.id"
                " WHERE j.callback_url IS NOT NULL AND m.final = 0 GROUP BY j.tenant, j.id"
            ).fetchall() if writes_changes else []
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {path!r}: {exc}") from exc
        self._lock = threading.Lock()
        # Lone ``submitted`` changes appended to ``submits``, not yet in their rows (see _JOURNAL):
        # message id -> its seq there, oldest first; ``_group``: (tenant, job, the state their rows
        # hold) when every held submit has the same (the usual case: one job sent from ``queued``),
        # else None (read back from ``submits`` when they are applied); ``_batches``: (last seq, time) of each write
        # that appended some (for ``hold``). ``_pending``: per job, how many of them by the state
        # their rows hold (``job``'s counts move them to ``submitted``).
        self._hold = hold if writes_changes else 0.0
        self._held: dict[int, int] = {}
        self._group: tuple | None = None
        self._batches: collections.deque[tuple[int, float]] = collections.deque()
        self._pending: dict[tuple[str, str], dict[str, int]] = {}
        self._journal_last = 0  # the last seq appended to ``submits`` (0: nothing since it was emptied)
        self._trimmed = 0  # ``submits`` rows below this seq are deleted
        if writes_changes and self._db.execute("SELECT 1 FROM submits LIMIT 1").fetchone() is not None:
            self._journal_last = 1  # a process stopped (or killed) with submits held: fold them now
            self._fold_now()
        self._hooks = _Hooks()
        self._refs: dict[tuple[str, str], str | None] = {}  # job -> its reference (hook_events)
        for tenant, job_id, url, sub, first_id, last_id, open_count, states in hooked:
            self._hooks.add(tenant, job_id, url, sub, first_id, last_id, open_count, _states_dec(states))

    def _tx(self, *, unsynced: bool = False):
        """A write transaction; ``unsynced``: committed without a sync to disk (``NORMAL``:
        a later synced commit makes it durable), the connection's own setting restored after."""
        return _Transaction(self._db, self._lock, "NORMAL" if unsynced and self._sync == "FULL" else None)

    def add_job(
        self, job: Job, first_id: int, recipients: Sequence[tuple[int, Recipient]], now: float,
        *, callback_url: str | None = None, callback_states: frozenset[str] | None = None,
        idempotency: tuple[str, str, bytes] | None = None, incoming: bool = False,
    ) -> None:  # fmt: skip
        item = NewJob(job=job, first_id=first_id, recipients=recipients, now=now, callback_url=callback_url,
                      callback_states=callback_states, idempotency=idempotency, incoming=incoming)  # fmt: skip
        # An incoming job's chunk is promised nothing (recovery drops it) until ``commit_job``,
        # whose FULL commit syncs the write-ahead log, and with it every chunk written before
        # (one file, appended in order; a checkpoint in between syncs what it moved, as NORMAL
        # does). So a chunk is committed without a sync of its own: one sync a job, not a chunk.
        with self._tx(unsynced=incoming and idempotency is None) as db:
            hook = self._insert_job(db, item)
        if hook is not None:
            with self._lock:
                self._hooks.add(*hook)

    def add_jobs(self, items: Sequence[NewJob]) -> list[Exception | None]:
        """One transaction, one sync to disk; each item inside its own savepoint, so a conflict
        (a repeated idempotency key) fails that item alone."""
        errors: list[Exception | None] = [None] * len(items)
        hooks = []
        # Chunks of incoming jobs only: synced later by their ``commit_job`` (see ``add_job``).
        with self._tx(unsynced=all(it.incoming and it.idempotency is None for it in items)) as db:
            for k, item in enumerate(items):
                db.execute("SAVEPOINT one")
                try:
                    hook = self._insert_job(db, item)
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO one")
                    errors[k] = Conflict(str(exc)) if isinstance(exc, sqlite3.IntegrityError) else StorageError(str(exc))
                else:
                    if hook is not None:
                        hooks.append(hook)
                db.execute("RELEASE one")
        if hooks:  # only once committed
            with self._lock:
                for hook in hooks:
                    self._hooks.add(*hook)
        return errors

    def _insert_job(self, db: sqlite3.Connection, item: NewJob) -> tuple | None:
        """The rows of one add_job, in the caller's transaction; the webhook block to remember
        once it commits, if the job has a callback_url."""
        job, first_id, recipients, now = item.job, item.first_id, item.recipients, item.now
        # One INSERT over a JSON array of [offset, recipient]: SQLite steps through the chunk
        # without taking the GIL back per row (executemany does, and with the event loop busy
        # admitting the next chunk each re-acquisition waited). Recipients are kept as JSON text.
        if isinstance(recipients, RecipientRows):
            rows, insert = recipients.json, _INSERT_ROWS
        else:
            rows, insert = _json_enc.encode(recipients), _INSERT_MESSAGES
        if item.idempotency is not None:
            key, digest, response = item.idempotency
            db.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)", (job.tenant, key, digest, response, now))
        # A later chunk of the same job keeps the job's first callback_url: ask which it is.
        stored_url, stored_first, stored_states = db.execute(
            "INSERT INTO jobs (tenant, id, body, first_id, size, status, created_at, callback_url, callback_states)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, id)"
            " DO UPDATE SET size = size + excluded.size RETURNING callback_url, first_id, callback_states",
            (job.tenant, job.id, _job_enc.encode(job), first_id, len(recipients),
             "incoming" if item.incoming else "active", now, item.callback_url,
             _states_enc(item.callback_states)),  # fmt: skip
        ).fetchone()
        db.execute(insert, (first_id, job.tenant, job.id, now, rows))
        if stored_url and recipients:
            last = first_id + (len(recipients) - 1 if insert is _INSERT_ROWS else max(i for i, _ in recipients))
            db.execute("INSERT OR IGNORE INTO hook_subscribers (tenant, url) VALUES (?, ?)", (job.tenant, stored_url))
            (sub,) = db.execute("SELECT id FROM hook_subscribers WHERE tenant = ? AND url = ?",
                                (job.tenant, stored_url)).fetchone()  # fmt: skip
            return (job.tenant, job.id, stored_url, sub, stored_first, last, len(recipients),
                    _states_dec(stored_states))  # fmt: skip
        return None

    def commit_job(self, tenant: str, job_id: str, now: float, idempotency: tuple[str, str, bytes] | None = None) -> None:
        with self._tx() as db:
            if idempotency is not None:
                key, digest, response = idempotency
                db.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)", (tenant, key, digest, response, now))
            db.execute("UPDATE jobs SET status = 'active' WHERE tenant = ? AND id = ? AND status = 'incoming'",
                       (tenant, job_id))  # fmt: skip

    def drop_job(self, tenant: str, job_id: str) -> None:
        self._fold_now()
        with self._tx() as db:
            db.execute("DELETE FROM messages WHERE tenant = ? AND job_id = ?", (tenant, job_id))
            db.execute("DELETE FROM jobs WHERE tenant = ? AND id = ?", (tenant, job_id))
            db.execute("DELETE FROM job_counts WHERE tenant = ? AND job_id = ?", (tenant, job_id))

    def drop_incoming(self) -> int:
        self._fold_now()
        with self._tx() as db:
            left = db.execute("SELECT tenant, id FROM jobs WHERE status = 'incoming'").fetchall()
            for tenant, job_id in left:
                db.execute("DELETE FROM messages WHERE tenant = ? AND job_id = ?", (tenant, job_id))
                db.execute("DELETE FROM job_counts WHERE tenant = ? AND job_id = ?", (tenant, job_id))
            db.execute("DELETE FROM jobs WHERE status = 'incoming'")
        return len(left)

    def record(self, changes: Sequence[Change]) -> int:
        # One transaction: the batch's sequence rows, then the UPDATEs (messages that stay open,
        # those that end), each of at most ``_MAX_ROWS`` messages, their values bound (see
        # ``_UPDATE``); 3-5 statements, so a write in a worker thread (beyond ``inline_record``)
        # still hands the GIL back a few times a write, not once a row (`python -m
        # bench.store_record --contend`). A message's changes in one batch become one row of it:
        # its last state (none after the first final one), with the carrier and ids it was last given.
        # A message's lone ``submitted`` is appended to ``submits`` (``lone``) and applied to
        # its row with the message's next change (``held_rows``: one write of the row), or alone
        # once held longer than ``hold`` (``timed_out``), so a late receipt's row is written once
        # (issue 16). The readers see the held submits (``message``, ``job``) or fold them first.
        with self._lock:
            open_rows, final_rows, hooked, ended, lone, held_rows, taken, timed_out = self._rows(changes)
            db = self._db
            trim = self._trim_bound()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    if hooked:
                        db.execute("UPDATE hook_seq SET n = n + 1")
                        _apply(db, _HOOK_LOG, hooked, 4)
                    counted: list[tuple] = []
                    if lone:
                        _apply(db, _JOURNAL, lone, 6)
                        counted = db.execute(_HELD_COUNTS, (lone[0],)).fetchall()
                    appended = counted[:]
                    if taken:
                        counted += self._uncount(db, taken)
                    _apply(db, _UPDATE, open_rows, 8)
                    _apply(db, _UPDATE_FINAL, final_rows, 8)
                    if held_rows[0]:
                        _apply(db, _UPDATE_HELD, held_rows[0], 9)
                    if held_rows[1]:
                        _apply(db, _UPDATE_HELD_FINAL, held_rows[1], 9)
                    if timed_out:
                        _each(db, _FOLD + " AND s.seq IN ({})", timed_out)
                    unjournal = timed_out + held_rows[0][8::9]  # rare: a held submit in a row that stays open
                    if unjournal:
                        _each(db, "DELETE FROM submits WHERE seq IN ({})", unjournal)
                    if trim is not None:
                        db.execute("DELETE FROM submits WHERE seq < ?", (trim,))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc
            for b in ended:  # only once committed: a failed batch leaves the cache as it was
                if self._hooks.ended(b) and not self._still_open(b):
                    self._hooks.drop(b)
            self._settle(taken, lone, appended, counted, trim, changes[-1].at if lone else 0.0)
        return len(hooked) // 4

    def _trim_bound(self) -> int | None:
        """Under the lock: the seq below which every ``submits`` row is dead (its message's
        submit applied to the row), once ``_TRIM`` of them have gone by; None: not yet."""
        if self._held:
            oldest = next(iter(self._held.values()))
            return oldest if oldest - self._trimmed > _TRIM else None
        return self._journal_last + 1 if self._journal_last - self._trimmed > _TRIM else None

    def _uncount(self, db: sqlite3.Connection, taken: list[int]) -> list[tuple]:
        """(tenant, job, state before, -n) of the held submits ``taken``: ``_group``, else
        (held submits of several jobs or states) read back."""
        if self._group is not None:
            return [(*self._group, -len(taken))]
        held = self._held
        return _apply(db, _UNHELD_COUNTS, [held[mid] for mid in taken], 1)

    def _settle(self, taken: list[int], lone: list, appended: list[tuple], counted: list[tuple], trim: int | None,
                at: float) -> None:  # fmt: skip
        """Under the lock, once committed: the held submits ``taken`` are in their rows now,
        those in ``lone`` (6 values a row, see ``_JOURNAL``) are held (``appended``: their
        (tenant, job, state before, n)); ``counted``: the held ones' changes by job and state."""
        held, pending = self._held, self._pending
        for mid in taken:
            del held[mid]
        if lone:
            one = appended[0][:3] if len(appended) == 1 and appended[0][3] * 6 == len(lone) else None
            self._group = one if not held or self._group == one else None
            held.update(zip(lone[1::6], lone[0::6]))
            self._journal_last = lone[-6]
            self._batches.append((lone[-6], at))
        for tenant, job_id, prev, n in counted:
            by_state = pending.get((tenant, job_id))
            if by_state is None:
                by_state = pending[(tenant, job_id)] = {}
            n += by_state.get(prev, 0)
            if n:
                by_state[prev] = n
            else:
                del by_state[prev]
                if not by_state:
                    del pending[(tenant, job_id)]
        if trim is not None:
            if trim > self._journal_last:  # emptied: its seqs start again at 1
                self._trimmed = self._journal_last = 0
            else:  # rows from ``trim`` on are left (held, or dead ones after the oldest held)
                self._trimmed = trim

    def _fold_now(self) -> None:
        """Every held submit applied to its row, ``submits`` emptied (at open after a crash, at
        close, before the readers that look at many rows' states)."""
        with self._lock:
            if not self._held and not self._journal_last:
                return
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(_FOLD)
                    db.execute("DELETE FROM submits")
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc
            self._held.clear()
            self._batches.clear()
            self._pending.clear()
            self._journal_last = self._trimmed = 0

    def _rows(self, changes: Sequence[Change]) -> tuple[list, list, list, list[_Block], list, tuple[list, list],
                                                        list[int], list[int]]:  # fmt: skip
        """A batch's parameters, in one pass over its messages (``_merge``): the rows of the
        messages that stay open and of those that end (flat, 8 values a row: see ``_UPDATE``),
        the hooked rows (flat, 4 a row: [id, subscriber, history fragment, place]) for the
        messages whose subscriber hears about at least one of their changes here
        (``callback_states`` is applied again on read), and the block of each message the batch
        makes final (a final state outside the choice ends the message too). Under the lock.

        And the held submits (``_held``): ``lone``, the messages whose only change here is an
        open ``submitted`` (flat, 6 a row: see ``_JOURNAL``), appended to ``submits`` instead of
        written to their rows; ``held_rows``, the rows of held messages with a change here (9
        values a row: ``_UPDATE``'s and the submit's seq), those that stay open and those that
        end; ``taken``, the held messages whose row this write applies (those and the
        ``timed_out``: seqs of submits held longer than ``hold``, by the changes' times)."""
        open_rows: list = []
        final_rows: list = []
        hooked: list = []
        ended: list[_Block] = []
        lone: list = []
        held_open: list = []
        held_final: list = []
        taken: list[int] = []
        encode = _json_enc.encode
        find = self._hooks.find if self._hooks else None
        held = self._held
        seq = self._journal_last if self._hold > 0 else -1
        place = 0
        merged = _merge(changes)
        for row in merged.values():
            events = row[7]
            history = row[7] = encode(events)[1:-1].decode()
            mid = row[0]
            h = held.get(mid) if held else None
            if h is not None:  # its submit, held: applied with this change, in one write of the row
                taken.append(mid)
                row.append(h)
                (held_final if row[2] else held_open).extend(row)
            elif seq >= 0 and not row[2] and row[1] == "submitted" and len(events) == 1:
                seq += 1
                lone += (seq, mid, row[3], row[4], row[5], history)
            else:
                (final_rows if row[2] else open_rows).extend(row)
            if find is not None and (b := find(mid)) is not None:
                states = b.states
                if events[0][1] in states if len(events) == 1 else any(e[1] in states for e in events):
                    hooked += (mid, b.sub, history, place)
                    place += 1
                if row[2]:
                    ended.append(b)
        timed_out: list[int] = []
        batches = self._batches
        if batches and changes and batches[0][1] < changes[-1].at - self._hold:
            limit = changes[-1].at - self._hold
            upto = 0
            while batches and batches[0][1] < limit:
                upto = batches.popleft()[0]
            for mid, s in held.items():
                if s > upto:
                    break
                if mid not in merged:
                    taken.append(mid)
                    timed_out.append(s)
        return open_rows, final_rows, hooked, ended, lone, (held_open, held_final), taken, timed_out

    def _still_open(self, b: _Block) -> bool:
        """Under the lock: a block counted down to zero may have counted a final change to a
        message that was final already (the write ignored it): ask the file, and count again."""
        (n,) = self._db.execute("SELECT count(*) FROM messages WHERE final = 0 AND job_id = ? AND tenant = ?",
                                (b.job_id, b.tenant)).fetchone()  # fmt: skip
        b.open = n
        return n > 0

    # -- webhooks: the change sequence, read by a cursor per subscriber --------------------

    # The reads below take no write lock (no BEGIN IMMEDIATE): in WAL mode a read sees the last
    # commit and never holds up ``record`` in the server process.

    def hook_due(self, now: float) -> list[Subscriber]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, tenant, url, attempts, next_at FROM hook_subscribers s WHERE next_at <= ?"
                " AND EXISTS (SELECT 1 FROM hook_log l WHERE l.sub = s.id AND l.seq > s.cursor) ORDER BY id", (now,)
            ).fetchall()  # fmt: skip
        return [Subscriber(id=i, tenant=t, url=u, attempts=a, next_at=n) for i, t, u, a, n in rows]

    def hook_events(self, sub: int, limit: int) -> list[HookEvent]:
        # One query: the sequence rows after the cursor with the message's recipient and its
        # job (reference, callback_states) joined, not a query per message. A read: in WAL mode
        # it never waits for the writer, nor the writer for it.
        with self._lock:
            rows = self._db.execute(_HOOK_EVENTS, (sub, limit)).fetchall()
        out: list[HookEvent] = []
        for row in rows:
            out.extend(self._row_events(sub, row, len(out)))
        return out

    def _row_events(self, sub: int, row: tuple, first: int) -> list[HookEvent]:
        """A ``_HOOK_EVENTS`` row's events, numbered from ``first``."""
        seq, mid, events, rcpt, job_id, states, tenant, url, attempts, body = row
        if rcpt is None:  # its message is gone (a dropped upload): nobody to tell about
            return []
        chosen = NOTIFY if states is None else _states_dec(states)
        person = _rcpt_dec(rcpt)
        ref = self._reference(tenant, job_id, body)
        out: list[HookEvent] = []
        for e in _history_dec.decode(f"[{events}]"):
            if e.state in NOTIFY and e.state in chosen:
                out.append(HookEvent(id=first + len(out), seq=seq, sub=sub, tenant=tenant, url=url, message_id=mid,
                                     job_id=job_id, state=e.state, at=e.at, reason=e.reason, carrier=e.carrier,
                                     attempts=attempts, error_code=e.error_code, to=person.to,
                                     index=person.index, reference=ref))  # fmt: skip
        return out

    def hook_rows(self, sub: int, limit: int, after: int = 0) -> list[HookRow]:
        # One query; then per row one decode of its events and of its recipient (msgspec), and
        # per event one dict, which the sender encodes with the rest of its batch in one call:
        # no Struct per event, nothing decoded twice, a job's reference and states read once.
        with self._lock:
            rows = self._db.execute(_HOOK_ROWS, (after, sub, limit)).fetchall()
            tenant = self._db.execute("SELECT tenant FROM hook_subscribers WHERE id = ?", (sub,)).fetchone()
        out: list[HookRow] = []
        jobs: dict[str, tuple[frozenset[str], str | None]] = {}
        for seq, mid, events, rcpt, job_id in rows:
            if rcpt is None:  # its message is gone (a dropped upload): nobody to tell about
                out.append(HookRow(id=len(out), seq=seq, message_id=mid, events=[]))
                continue
            try:
                person = _wire_rcpt(rcpt) if isinstance(rcpt, str) else None
            except msgspec.ValidationError:
                person = None
            if person is None or not _canonical(person.to):  # msgpack, or not canonical: an older store
                out.append(HookRow(id=len(out), seq=seq, message_id=mid, events=self._hook_row_slowly(sub, seq)))
                continue
            job = jobs.get(job_id)
            if job is None:
                job = jobs[job_id] = self._hook_job(tenant[0], job_id)
            chosen, ref = job
            message_id, to, index = format_id(mid), person.to, person.index
            out.append(HookRow(id=len(out), seq=seq, message_id=mid, events=[
                {"message_id": message_id, "job_id": job_id, "state": e[1], "at": e[0], "reason": e[2],
                 "carrier": e[3], "error_code": e[4] if len(e) > 4 else None, "to": to, "index": index,
                 "reference": ref}
                for e in _raw_history(f"[{events}]") if e[1] in chosen]))  # fmt: skip
        return out

    def _hook_job(self, tenant: str, job_id: str) -> tuple[frozenset[str], str | None]:
        """The states a job's callback hears (``NOTIFY`` at most) and its reference."""
        with self._lock:
            row = self._db.execute("SELECT callback_states, body FROM jobs WHERE tenant = ? AND id = ?",
                                   (tenant, job_id)).fetchone()  # fmt: skip
        if row is None:
            return NOTIFY, None
        states = _states_dec(row[0])
        return (NOTIFY if states is None else NOTIFY & states), self._reference(tenant, job_id, row[1])

    def _hook_row_slowly(self, sub: int, seq: int) -> list[dict]:
        """One row's events the way ``hook_events`` reads them (recipients of older stores)."""
        with self._lock:
            row = self._db.execute(_HOOK_ROW, (seq, sub)).fetchone()
        return [hook_wire(e) for e in self._row_events(sub, row, 0)] if row is not None else []  # fmt: skip

    def _reference(self, tenant: str, job_id: str, body: bytes | None) -> str | None:
        key = (tenant, job_id)
        if key not in self._refs:
            if len(self._refs) > 4096:
                self._refs.clear()
            self._refs[key] = _job_dec.decode(body).reference if body is not None else None
        return self._refs[key]

    def hook_ack(self, acks: Sequence[tuple[int, int]]) -> None:
        if not acks:
            return
        with self._tx() as db:
            for sub, seq in acks:
                db.execute("UPDATE hook_subscribers SET cursor = max(cursor, ?), attempts = 0, next_at = 0, error = NULL"
                           " WHERE id = ?", (seq, sub))  # fmt: skip
                db.execute("DELETE FROM hook_log WHERE sub = ? AND seq <= ?", (sub, seq))

    def hook_retry(self, sub: int, next_at: float, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE hook_subscribers SET attempts = attempts + 1, next_at = ?, error = ? WHERE id = ?",
                       (next_at, error, sub))  # fmt: skip

    def hook_dead(self, sub: int, events: Sequence[HookEvent], error: str, upto: int | None) -> None:
        with self._tx() as db:
            db.executemany(_DEAD_INSERT, [(e.tenant, e.url, e.message_id, e.job_id, e.state, e.at, e.reason, e.carrier,
                                           e.attempts + 1, error, e.error_code) for e in events])  # fmt: skip
            if upto is not None:
                db.execute("UPDATE hook_subscribers SET cursor = max(cursor, ?), attempts = 0, next_at = 0, error = ?"
                           " WHERE id = ?", (upto, error, sub))  # fmt: skip
                db.execute("DELETE FROM hook_log WHERE sub = ? AND seq <= ?", (sub, upto))

    def hook_next_at(self) -> float | None:
        with self._lock:
            return self._db.execute("SELECT min(next_at) FROM hook_subscribers s WHERE EXISTS"
                              " (SELECT 1 FROM hook_log l WHERE l.sub = s.id AND l.seq > s.cursor)").fetchone()[0]  # fmt: skip

    def outbox_statistics(self) -> OutboxStats:
        with self._lock:
            db = self._db
            dead = db.execute("SELECT count(*) FROM outbox WHERE dead = 1").fetchone()[0]
            pending = db.execute("SELECT count(*) FROM hook_log l JOIN hook_subscribers s ON s.id = l.sub"
                                 " WHERE l.seq > s.cursor").fetchone()[0]  # fmt: skip
        return OutboxStats(pending=pending, dead=dead)

    def set_job_status(self, tenant: str, job_id: str, status: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET status = ? WHERE tenant = ? AND id = ?", (status, tenant, job_id))
            return cur.rowcount > 0

    def job(self, tenant: str, job_id: str) -> JobCounts | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE tenant = ? AND id = ?", (tenant, job_id)).fetchone()
            if row is None:
                return None
            deltas = dict(db.execute(
                "SELECT state, n FROM job_counts WHERE tenant = ? AND job_id = ?", (tenant, job_id)
            ).fetchall())  # fmt: skip
            held = self._pending.get((tenant, job_id))
            if held:  # submits not in their rows yet: counted as submitted, not as what the rows hold
                for state, n in held.items():
                    deltas[state] = deltas.get(state, 0) - n
                    deltas["submitted"] = deltas.get("submitted", 0) + n
        job = _stored_job(row)
        deltas["queued"] = job.size + deltas.get("queued", 0)  # see _COUNTS
        return JobCounts(job=job, counts={state: n for state, n in deltas.items() if n > 0})

    def job_info(self, tenant: str, job_id: str) -> StoredJob | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE tenant = ? AND id = ?", (tenant, job_id)).fetchone()
        return None if row is None else _stored_job(row)

    def message(self, tenant: str, message_id: int) -> MessageRecord | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT m.id, m.job_id, m.recipient, m.state, m.carrier, m.carrier_ids, m.attempts, j.created_at,"
                " m.history, m.final"
                " FROM messages m JOIN jobs j ON j.tenant = m.tenant AND j.id = m.job_id"
                " WHERE m.tenant = ? AND m.id = ?",
                (tenant, message_id),
            ).fetchone()
            if row is None:
                return None
            s = self._held.get(message_id) if not row[-1] else None
            h = None if s is None else db.execute("SELECT carrier, carrier_ids, event FROM submits WHERE seq = ?",
                                                  (s,)).fetchone()  # fmt: skip
            events = db.execute(
                "SELECT at, state, reason, carrier FROM events WHERE message_id = ? ORDER BY rowid", (message_id,)
            ).fetchall()
        mid, job_id, rcpt, state, carrier, cids, attempts, created, kept, _ = row
        if h is not None:  # its submit, held: as its row will have it (see _JOURNAL)
            state, attempts, kept = "submitted", attempts + 1, f"{kept},{h[2]}" if kept else h[2]
            carrier = carrier if h[0] is None else h[0]
            cids = cids if h[1] is None else h[1]
        history = [Change(message_id=mid, state="queued", at=created, reason="accepted")]
        history += [Change(message_id=mid, state=s, at=at, reason=r, carrier=c) for at, s, r, c in events]
        if kept:
            history += [Change(message_id=mid, state=e.state, at=e.at, reason=e.reason, carrier=e.carrier,
                               error_code=e.error_code) for e in _history_dec.decode(f"[{kept}]")]  # fmt: skip
        return MessageRecord(
            id=mid, job_id=job_id, tenant=tenant, recipient=_rcpt_dec(rcpt), state=state,
            carrier=carrier, carrier_ids=tuple(cids.split(",")) if cids else (), attempts=attempts,
            history=history, error_code=next((c.error_code for c in reversed(history) if c.error_code is not None), None),
        )  # fmt: skip

    def messages(self, tenant: str, job_id: str, *, state: str | None, after: int, limit: int) -> Page:
        self._fold_now()  # pages by state: rare, so the held submits are applied first
        sql = "SELECT id, state, recipient FROM messages WHERE tenant = ? AND job_id = ? AND id > ?"
        args: list[object] = [tenant, job_id, after]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        with self._tx() as db:
            rows = db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(ids=[(r[0], r[1]) for r in rows], next_after=rows[-1][0] if more else None,
                    recipients=[_rcpt_dec(r[2]) for r in rows])  # fmt: skip

    def jobs(self, tenant: str, *, after: str, limit: int, status: str | None = None) -> JobsPage:
        scan = limit if status is None else JOBS_SCAN * limit
        with self._tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE tenant = ? AND id > ? AND status != 'incoming' ORDER BY id LIMIT ?",
                (tenant, after, scan + 1)).fetchall()]  # fmt: skip
        return page_of_jobs(ids, limit=limit, scan=scan, status=status, job=partial(self.job, tenant))

    def unfinished(self) -> Iterator[tuple[StoredJob, list[tuple[int, Recipient, str]]]]:
        self._fold_now()
        with self._tx() as db:
            jobs = db.execute(
                "SELECT * FROM jobs WHERE status != 'incoming' AND EXISTS (SELECT 1 FROM messages m"
                " WHERE m.final = 0 AND m.tenant = jobs.tenant AND m.job_id = jobs.id) ORDER BY created_at"
            ).fetchall()
        for row in jobs:
            stored = _stored_job(row)
            with self._tx() as db:
                msgs = db.execute(
                    "SELECT id, recipient, state FROM messages WHERE tenant = ? AND job_id = ? AND final = 0"
                    " ORDER BY id",
                    (stored.job.tenant, stored.job.id),
                ).fetchall()
            yield stored, [(i - stored.first_id, _rcpt_dec(r), s) for i, r, s in msgs]

    def awaiting_receipts(self) -> list[tuple[int, str, tuple[str, ...]]]:
        """(message id, carrier, carrier ids) of every message a carrier took and has not reported
        on: after a restart these wait for their receipts, they are not sent again."""
        self._fold_now()
        with self._tx() as db:
            rows = db.execute(
                f"SELECT id, carrier, carrier_ids FROM messages WHERE final = 0 AND state IN {AWAITING!r}"
                " AND carrier IS NOT NULL AND carrier_ids IS NOT NULL ORDER BY id"
            ).fetchall()
        return [(i, c, tuple(ids.split(","))) for i, c, ids in rows]

    def sends_since(self, since: float, categories: Collection[str]) -> list[tuple[int, str, str, float]]:
        # A message taken by a carrier has attempts > 0, and its last change is no older than
        # its last submit: one pass over the messages table at start-up, no index to keep on
        # the hot path. A job's category is in its (msgpack) body: decoded once per job.
        self._fold_now()
        with self._tx() as db:
            rows = db.execute(_SENDS_SINCE, (since,)).fetchall()
            capped: dict[tuple[str, str], bool] = {}
            for _, tenant, job_id, _, _ in rows:
                if (tenant, job_id) not in capped:
                    body = db.execute("SELECT body FROM jobs WHERE tenant = ? AND id = ?", (tenant, job_id)).fetchone()
                    capped[(tenant, job_id)] = body is not None and _job_dec.decode(body[0]).category in categories
            rows = [r for r in rows if capped[(r[1], r[2])]]
            old: dict[int, float] = {}  # stores written before messages.history keep it in events
            if rows and db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None:
                old = dict(db.execute("SELECT message_id, max(at) FROM events WHERE state = 'submitted'"
                                      " GROUP BY message_id").fetchall())  # fmt: skip
        out = []
        for mid, tenant, _, rcpt, history in rows:
            at = _last_submit(history)
            if mid in old:
                at = old[mid] if at is None else max(at, old[mid])
            if at is not None and at > since:
                out.append((mid, tenant, _rcpt_dec(rcpt).to, at))
        return sorted(out, key=lambda s: (s[3], s[0]))

    def remembered(self, tenant: str, key: str, digest: str) -> bytes | None:
        """The answer given before for this idempotency key, or None. Conflict if the body differs."""
        with self._tx() as db:
            row = db.execute(
                "SELECT digest, response FROM idempotency WHERE tenant = ? AND key = ?", (tenant, key)
            ).fetchone()
        if row is None:
            return None
        if row[0] != digest:
            raise Conflict(f"idempotency key {key!r} was used with another request body", code="idempotency_key_reused")
        return bytes(row[1])

    def suppress(self, tenant: str, number: str, now: float, source: str = "api") -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO suppressions VALUES (?, ?, ?, ?)", (tenant, number, now, source))

    def unsuppress(self, tenant: str, number: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM suppressions WHERE tenant = ? AND number = ?", (tenant, number))
            return cur.rowcount > 0

    def suppressions(self, tenant: str | None = None) -> list[tuple[str, Suppression]]:
        sql, args = "SELECT tenant, number, at, source FROM suppressions", ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = ?", (tenant,)
        with self._tx() as db:
            rows = db.execute(sql + " ORDER BY tenant, number", args).fetchall()
        return [(t, Suppression(number=n, at=at, source=s)) for t, n, at, s in rows]

    # -- inbound ---------------------------------------------------------------------------

    def add_inbound(self, record: InboundRecord, *, url: str | None = None) -> int:
        return self.add_inbound_once(record, url=url)[0]

    def add_inbound_once(self, record: InboundRecord, *, url: str | None = None, key: str | None = None,
                         since: float = 0.0) -> tuple[int, bool]:
        r = record
        with self._tx() as db:
            if key is not None:
                seen = db.execute("SELECT id FROM inbound_keys WHERE key = ? AND at >= ?", (key, since)).fetchone()
                if seen is not None:
                    return int(seen[0]), False
            cur = db.execute(
                "INSERT INTO inbound (tenant, carrier, sender, recipient, text, at, kind, keyword, url, next_at,"
                " sender_canonical, certain, asks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (r.tenant, r.carrier, r.sender, r.recipient, r.text, r.at, r.kind, r.keyword, url, 0.0 if url else None,
                 int(r.sender_canonical), int(r.certain), int(r.asks)),
            )  # fmt: skip
            rid = int(cur.lastrowid)
            if key is not None:
                db.execute("INSERT OR REPLACE INTO inbound_keys VALUES (?, ?, ?)", (key, rid, r.at))
            if r.kind == "opt_out" and r.sender_canonical:
                db.execute("INSERT OR IGNORE INTO suppressions VALUES (?, ?, ?, ?)",
                           (r.tenant, r.sender, r.at, f"keyword:{r.keyword}"))  # fmt: skip
            elif r.kind == "opt_in":
                db.execute("DELETE FROM suppressions WHERE tenant = ? AND number = ?", (r.tenant, r.sender))
            if r.kind in ("opt_out", "opt_in"):
                db.execute("DELETE FROM questions WHERE tenant = ? AND number = ?", (r.tenant, r.sender))
            if r.asks:
                db.execute("INSERT OR REPLACE INTO questions VALUES (?, ?, ?)", (r.tenant, r.sender, r.at))
            return rid, True

    def question_pending(self, tenant: str, number: str, since: float) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT 1 FROM questions WHERE tenant = ? AND number = ? AND at >= ?",
                             (tenant, number, since)).fetchone()  # fmt: skip
        return row is not None

    def tenants_messaged(self, number: str, since: float) -> list[str]:
        # No index on the recipient (rows are JSON, written in bulk): a scan of the messages
        # changed since ``since``, run only for an opt-out no tenant owns.
        self._fold_now()
        with self._tx() as db:
            rows = db.execute("SELECT DISTINCT tenant FROM messages WHERE updated_at >= ? AND typeof(recipient) = 'text'"
                              " AND recipient ->> '$.to' = ? ORDER BY tenant", (since, number)).fetchall()  # fmt: skip
        return [t for (t,) in rows]

    def inbound(self, tenant: str, *, after: int, limit: int, kind: str | None = None) -> InboundPage:
        sql = f"SELECT {_INBOUND_COLUMNS} FROM inbound WHERE tenant = ? AND id > ?"
        args: tuple = (tenant, after)
        if kind is not None:
            sql, args = sql + " AND kind = ?", (*args, kind)
        with self._tx() as db:
            rows = db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit + 1)).fetchall()
        items = [_inbound_record(row) for row in rows[:limit]]
        return InboundPage(items=items, next_after=items[-1].id if len(rows) > limit else None)

    def inbound_take(self, now: float, limit: int, lease: float) -> list[InboundItem]:
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_INBOUND_COLUMNS}, url, attempts FROM inbound"
                " WHERE next_at IS NOT NULL AND dead = 0 AND next_at <= ? ORDER BY next_at, id LIMIT ?", (now, limit),
            ).fetchall()
            _each(db, "UPDATE inbound SET next_at = ? WHERE id IN ({})", [r[0] for r in rows], (now + lease,))
        n = len(_INBOUND_COLUMNS.split(","))
        return [InboundItem(id=row[0], tenant=row[1], url=row[n], at=row[6], attempts=row[n + 1],
                            record=_inbound_record(row[:n])) for row in rows]  # fmt: skip

    def inbound_done(self, ids: Sequence[int]) -> None:
        with self._tx() as db:
            _each(db, "UPDATE inbound SET next_at = NULL, error = NULL WHERE id IN ({})", ids)

    def inbound_retry(self, ids: Sequence[int], next_at: float, error: str) -> None:
        with self._tx() as db:
            _each(db, "UPDATE inbound SET next_at = ?, attempts = attempts + 1, error = ?"
                      " WHERE dead = 0 AND next_at IS NOT NULL AND id IN ({})", ids, (next_at, error))  # fmt: skip

    def inbound_dead(self, ids: Sequence[int], error: str) -> None:
        with self._tx() as db:
            _each(db, "UPDATE inbound SET dead = 1, error = ? WHERE next_at IS NOT NULL AND id IN ({})", ids, (error,))

    def inbound_next_at(self) -> float | None:
        with self._tx() as db:
            row = db.execute("SELECT min(next_at) FROM inbound WHERE next_at IS NOT NULL AND dead = 0").fetchone()
        return row[0]

    def close(self) -> None:
        self._fold_now()  # the file as an older version reads it
        with self._lock:
            self._db.close()


def _migrate_outbox(db: sqlite3.Connection) -> None:
    """A store made before the change sequence may hold outbox rows not yet delivered: they
    become sequence rows of their subscribers (in their order, before anything recorded from
    now on), and leave the outbox, in one transaction. Dead rows stay (the dead letters)."""
    rows = db.execute("SELECT tenant, url, message_id, at, state, reason, carrier, error_code FROM outbox"
                      " WHERE dead = 0 ORDER BY id").fetchall()  # fmt: skip
    if not rows:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        subs: dict[tuple[str, str], int] = {}
        out = []
        for k, (tenant, url, mid, at, state, reason, carrier, code) in enumerate(rows):
            if k % (1 << _SEQ_BITS) == 0:
                (n,) = db.execute("UPDATE hook_seq SET n = n + 1 RETURNING n").fetchone()
            if (tenant, url) not in subs:
                db.execute("INSERT OR IGNORE INTO hook_subscribers (tenant, url) VALUES (?, ?)", (tenant, url))
                subs[(tenant, url)] = db.execute("SELECT id FROM hook_subscribers WHERE tenant = ? AND url = ?",
                                                 (tenant, url)).fetchone()[0]  # fmt: skip
            event = (at, state, reason, carrier) if code is None else (at, state, reason, carrier, code)
            out.append((subs[(tenant, url)], (n << _SEQ_BITS) + k % (1 << _SEQ_BITS), mid,
                        _json_enc.encode(event).decode()))  # fmt: skip
        db.executemany("INSERT INTO hook_log (sub, seq, message_id, events) VALUES (?, ?, ?, ?)", out)
        db.execute("DELETE FROM outbox WHERE dead = 0")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _each(db: sqlite3.Connection, sql: str, ids: Sequence[int], args: tuple = ()) -> None:
    """``sql`` with ``IN ({})`` run over ``ids`` in chunks, ``args`` bound before the ids."""
    for i in range(0, len(ids), _IN_CHUNK):
        part = list(ids[i : i + _IN_CHUNK])
        db.execute(sql.format(",".join("?" * len(part))), (*args, *part))


def _states_enc(states: frozenset[str] | None) -> str | None:
    return None if states is None else ",".join(sorted(states))


def _states_dec(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(text.split(",")) if text else frozenset()


class _Block:
    __slots__ = ("tenant", "job_id", "url", "sub", "lo", "hi", "open", "states")

    def __init__(self, tenant: str, job_id: str, url: str, sub: int, lo: int, hi: int, open_count: int,
                 states: frozenset[str] | None = None) -> None:  # fmt: skip
        self.tenant, self.job_id, self.url, self.sub = tenant, job_id, url, sub
        self.lo, self.hi, self.open = lo, hi, open_count
        self.states = NOTIFY if states is None else states  # what the callback_url hears about


class _Hooks:
    """Which message ids belong to a job with a callback_url, kept in memory so ``record`` needs
    no join per change. A job's ids are one contiguous block starting at its ``first_id``
    (``gateway/core/ids.py``), so a lookup is one bisect over the blocks' starts. A block counts
    its messages not yet final and is dropped when the last one ends: the cache holds only jobs
    still running. Dropped blocks are swept out once they are half the list (amortised O(1))."""

    __slots__ = ("_starts", "_blocks", "_by_job", "_dropped")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._blocks: list[_Block] = []
        self._by_job: dict[tuple[str, str], _Block] = {}
        self._dropped = 0

    def __bool__(self) -> bool:
        return bool(self._by_job)

    def add(self, tenant: str, job_id: str, url: str, sub: int, first_id: int, last_id: int, open_count: int,
            states: frozenset[str] | None = None) -> None:  # fmt: skip
        b = self._by_job.get((tenant, job_id))
        if b is not None:  # another chunk of a running job
            b.hi, b.open = max(b.hi, last_id), b.open + open_count
            return
        b = self._by_job[(tenant, job_id)] = _Block(tenant, job_id, url, sub, first_id, last_id, open_count, states)
        if not self._starts or first_id >= self._starts[-1]:  # ids grow: the usual case
            self._starts.append(first_id)
            self._blocks.append(b)
        else:
            i = bisect.bisect_right(self._starts, first_id)
            self._starts.insert(i, first_id)
            self._blocks.insert(i, b)

    def find(self, message_id: int) -> _Block | None:
        i = bisect.bisect_right(self._starts, message_id) - 1
        if i < 0:
            return None
        b = self._blocks[i]
        return b if b.open > 0 and message_id <= b.hi else None

    def ended(self, b: _Block) -> bool:
        """One message of ``b`` reached a final state: True when none is left by this count
        (the caller checks the file before ``drop``: a repeated final change counts too)."""
        b.open -= 1
        return b.open <= 0 and self._by_job.get((b.tenant, b.job_id)) is b

    def drop(self, b: _Block) -> None:
        del self._by_job[(b.tenant, b.job_id)]
        self._dropped += 1
        if self._dropped * 2 > len(self._blocks):
            self._blocks = [kept for kept in self._blocks if kept.open > 0]
            self._starts = [kept.lo for kept in self._blocks]
            self._dropped = 0


def _inbound_record(row: tuple) -> InboundRecord:
    rid, tenant, carrier, sender, recipient, text, at, kind, keyword, canonical, certain, asks = row
    return InboundRecord(id=rid, tenant=tenant, carrier=carrier, sender=sender, recipient=recipient, text=text,
                         at=at, kind=kind, keyword=keyword, sender_canonical=bool(canonical), certain=bool(certain),
                         asks=bool(asks))  # fmt: skip


def _stored_job(row: tuple) -> StoredJob:
    _tenant, _id, body, first_id, size, status, created_at, callback_url, states = row
    return StoredJob(job=_job_dec.decode(body), first_id=first_id, size=size, status=status,
                     created_at=created_at, callback_url=callback_url, callback_states=_states_dec(states))  # fmt: skip


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock; sqlite3 errors become StorageError."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, sync: str | None = None) -> None:
        self._db, self._lock, self._sync = db, lock, sync

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            if self._sync is not None:  # a pragma of the connection: set outside a transaction
                self._db.execute(f"PRAGMA synchronous={self._sync}")
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._restore()
            self._lock.release()
            raise StorageError(str(exc)) from exc
        return self._db

    def _restore(self) -> None:
        if self._sync is not None:
            if self._db.in_transaction:  # a COMMIT that failed: the chunk is not written
                self._db.execute("ROLLBACK")
            self._db.execute("PRAGMA synchronous=FULL")

    def __exit__(self, kind, exc, tb) -> bool:
        try:
            if kind is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as err:
            raise StorageError(str(err)) from err
        finally:
            try:
                self._restore()
            finally:
                self._lock.release()
        if isinstance(exc, sqlite3.IntegrityError):
            raise Conflict(str(exc)) from exc
        if isinstance(exc, sqlite3.Error):
            raise StorageError(str(exc)) from exc
        return False
