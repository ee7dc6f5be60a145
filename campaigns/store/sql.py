"""The SQL both engines share. Statements are written with ``?`` placeholders; an engine turns them
into its own style (``_q``). Subclasses provide the connection and the transaction (``_tx``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec

from campaigns.core import aggregates, consent
from campaigns.core.consent import ConsentEntry, Evidence, State
from campaigns.core.events import (ActivityEvent, CheckoutEvent, ConsentGrant, CustomerEvent, CustomEvent,
                                   FulfillmentEvent, OrderEvent, Profile, ShopEvent)  # fmt: skip
from campaigns.core.model import Activity, Checkout, Order, OrderItem, Stats, Subscriber, SubscriberView
from campaigns.core.segments import new_order_changes
from campaigns.errors import Conflict, InvalidInput, NotFound
from campaigns.core.imports import ImportRow
from campaigns.store.base import Applied, ImportResult, MemberPlan, MembersFound, NewConsent, SegmentRow, SyncItem
from campaigns.store.campaign_sql import CampaignSql
from campaigns.store.event_batch import EventBatch
from campaigns.core import flow_inputs
from campaigns.core.flow_inputs import CheckoutEnd
from campaigns.store.flow_sql import FlowSql, applied_inputs, enqueue_applied, enqueue_inputs
from campaigns.store.inbox_sql import InboxSql
from campaigns.store import rollups
from campaigns.store.segment_sql import members_from

_json = msgspec.json.Encoder()
_SUB_COLS = ("id, phone, first_name, last_name, email, gender, birthday, country, region, city, time_zone, "
             "language, signup_source, created_at, consent, consent_at, attributes")  # fmt: skip
_PROFILE = ("first_name", "last_name", "email", "gender", "birthday", "country", "region", "city", "time_zone",
            "language", "signup_source")  # fmt: skip
_STATS = tuple(f for f in Stats.__struct_fields__)
_LATEST_KEY = ("latest_order_at", "latest_order_id")  # the store's own: which order `last_order_payment_status` is
_LEDGER_COLS = ("id, subscriber_id, phone, action, source, disclosure_text, disclosure_version, "
                "disclosure_sha256, evidence, at")  # fmt: skip
_ORDER_PARTS = {False: frozenset({"orders"}), True: frozenset({"orders", "checkouts"})}  # by "names a checkout"
_ACTIVITY_STAT = {"clicked": "last_click_at", "message_sent": "last_message_at", "replied": "last_reply_at"}


def enqueue_entered(tx: Tx, tenant: str, joined: Sequence[tuple[int, int]], now: float) -> None:
    """The flows' ``segment_entered`` inputs of a membership pass's joiners ((segment, subscriber)
    pairs), in the pass's transaction, ordered by subscriber then segment: every way into a segment
    (``set_member``, a rebuild, a pass after an event or a window edge) queues one."""
    if not joined or tx.one("SELECT 1 FROM flow_heads WHERE tenant = ? LIMIT 1", (tenant,)) is None:
        return  # a shop without flows: no input made (a pass's ~1,700 joiners' inputs were ~2 ms of its write)
    pairs = sorted(joined, key=lambda j: (j[1], j[0]))
    enqueue_applied(tx, tenant, [(sid, flow_inputs.segment_entered(seg, sid, now)) for seg, sid in pairs], has_flows=True)


class Tx:
    """One transaction's cursor: ``rows`` / ``one`` / ``run`` with ``?`` placeholders."""

    def __init__(self, cur: Any, placeholder: str) -> None:
        self._cur, self._ph = cur, placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._ph == "?" else sql.replace("?", self._ph)

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self._sql(sql), tuple(params))
        return self._cur.rowcount

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement over many rows (executemany: one round trip per batch on PostgreSQL)."""
        if rows:
            self._cur.executemany(self._sql(sql), rows)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        self._cur.execute(self._sql(sql), tuple(params))
        return list(self._cur.fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        self._cur.execute(self._sql(sql), tuple(params))
        return self._cur.fetchone()

    def raw_rows(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """SQL already in the engine's own placeholder style (compiled segments)."""
        self._cur.execute(sql, tuple(params))
        return list(self._cur.fetchall())

    def named_rows(self, sql: str, params: dict[str, Any], *, prepare: bool | None = None) -> list[tuple]:
        """SQL with psycopg's ``%(name)s`` parameters (PostgreSQL only: a parameter used many times).
        ``prepare=False``: never a server-side prepared statement (planned at each execution)."""
        self._cur.execute(sql, params, prepare=prepare)
        return list(self._cur.fetchall())

    def named_run(self, sql: str, params: dict[str, Any], *, prepare: bool | None = None) -> int:
        self._cur.execute(sql, params, prepare=prepare)
        return self._cur.rowcount

    def raw_run(self, sql: str, params: Sequence[Any]) -> int:
        self._cur.execute(sql, tuple(params))
        return self._cur.rowcount

    @property
    def pg(self) -> bool:
        return self._ph != "?"

    def each(self, kind: str = "text") -> str:
        """A set of values bound as ONE parameter (``tx.array(values)``: a JSON array on SQLite, an array
        on PostgreSQL), as a table of one column ``value``: ``SELECT value FROM {tx.each()}``."""
        return f"unnest(?::{kind}[]) AS value" if self.pg else "json_each(?)"

    def values(self, kind: str = "text") -> str:
        """The same as a subquery: ``x IN {tx.values()}``."""
        return f"(SELECT value FROM {self.each(kind)})"

    def array(self, values: Sequence[Any]) -> Any:
        return list(values) if self.pg else _json.encode(list(values)).decode()

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """One statement over many rows (psycopg pipelines them: one round trip, not one per row);
        returns the driver's row count (SQLite: the rows changed, summed over the parameter rows)."""
        if not rows:
            return 0
        self._cur.executemany(self._sql(sql), [tuple(r) for r in rows])
        return self._cur.rowcount

    def upsert_many(self, table: str, cols: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert or update many rows by ``key``: ``executemany`` on SQLite; on PostgreSQL ``COPY`` into a
        temporary staging table, then one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``."""
        if not rows:
            return
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key)
        self._insert_on_conflict(table, cols, rows, f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")

    def insert_new(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows, skipping those whose key is taken: ``executemany`` on SQLite; on PostgreSQL
        ``COPY`` into a temporary staging table, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``."""
        if rows:
            self._insert_on_conflict(table, cols, rows, "ON CONFLICT DO NOTHING")

    def _insert_on_conflict(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]], conflict: str) -> None:
        """``INSERT ... {conflict}`` of many rows: ``executemany`` on SQLite; on PostgreSQL ``COPY`` into a
        temporary staging table, then one ``INSERT ... SELECT``."""
        if not self.pg:
            self._cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                                  f"{conflict}", rows)  # fmt: skip
            return
        stage = f"stage_{table}"
        self._cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
        self.insert_many(stage, cols, rows)
        self._cur.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {stage} {conflict}")

    def insert_many(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Plain inserts of many rows: ``executemany`` on SQLite, ``COPY`` on PostgreSQL."""
        if not rows:
            return
        if self.pg:
            with self._cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
        else:
            self._cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)


_SUB_NAMES = tuple(c.strip() for c in _SUB_COLS.split(","))


def _first_end(completion: tuple[bool, int] | None) -> tuple[CheckoutEnd, int] | None:
    """``Applied.checkout_end`` of ``_complete_checkout``'s answer: the first completion only."""
    return ("completed", completion[1]) if completion is not None and completion[0] else None


def _subscriber(tenant: str, row: tuple) -> Subscriber:
    values = dict(zip(_SUB_NAMES, row, strict=True))
    raw = values["attributes"]
    values["attributes"] = msgspec.json.decode(raw) if raw and raw != "{}" else {}
    return Subscriber(tenant=tenant, **values)


def _entry(tenant: str, row: tuple) -> ConsentEntry:
    names = [c.strip() for c in _LEDGER_COLS.split(",")]
    values = dict(zip(names, row, strict=True))
    values["evidence"] = msgspec.json.decode(values["evidence"] or "{}", type=Evidence)
    return ConsentEntry(tenant=tenant, **values)


class SqlStore(EventBatch, CampaignSql, InboxSql, FlowSql):
    engine = "sql"
    _least = "MIN"  # the two-argument minimum: MIN on SQLite, LEAST on PostgreSQL

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Membership writers are serialised among themselves (a pass reads, then writes what it read):
        # re-entrant, so a pass holds it across its read and its write transactions.
        self._member_lock = threading.RLock()

    @contextmanager
    def _tx(self) -> Iterator[Tx]:  # pragma: no cover - each engine provides it
        raise NotImplementedError
        yield

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError

    @contextmanager
    def _member_tx(self) -> Iterator[Tx]:
        """The transaction of a membership writer (the live refresh, rebuilds, members set one by one,
        segment timers). One engine connection: the store's. PostgreSQL gives them a connection of their
        own (``PostgresStore``), so a batch's membership runs while the next batch's events commit; the
        membership writers stay serialised among themselves, and a subscriber whose rows commit after
        a pass read them was deferred again by that commit, so a later pass reads them."""
        with self._member_lock, self._tx() as tx:
            yield tx

    @contextmanager
    def _member_read(self) -> Iterator[Tx]:
        """The reads of a membership pass (its segments' restricted SQL, their window edges): by
        default a membership transaction; SQLite reads a WAL snapshot on a connection of its own, off
        the write lock, so a pass's reads run while the next batch of events commits."""
        with self._member_tx() as tx:
            yield tx

    # ---- subscribers -------------------------------------------------------------------------
    def put_subscriber(self, tenant: str, profile: Profile, *, phone: str, at: float, now: float,
                       consent: NewConsent | None = None) -> tuple[Subscriber, bool]:  # fmt: skip
        with self._tx() as tx:
            sid, created = self._put_profile(tx, tenant, profile, phone, at, now)
            if consent is not None:
                self._record_consent(tx, tenant, consent, now)
            row = tx.one(f"SELECT {_SUB_COLS} FROM subscribers WHERE tenant = ? AND id = ?", (tenant, sid))
        assert row is not None
        return _subscriber(tenant, row), created

    def _ensure(self, tx: Tx, tenant: str, phone: str, now: float) -> int:
        """The id of ``phone``'s subscriber, created (consent ``none``) if new."""
        row = tx.one("SELECT id FROM subscribers WHERE tenant = ? AND phone = ?", (tenant, phone))
        if row is not None:
            return int(row[0])
        row = tx.one("INSERT INTO subscribers (tenant, phone, created_at) VALUES (?, ?, ?) "
                     "ON CONFLICT (tenant, phone) DO UPDATE SET phone = excluded.phone RETURNING id",
                     (tenant, phone, now))  # fmt: skip
        assert row is not None
        tx.run("INSERT INTO subscriber_stats (tenant, subscriber_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
               (tenant, row[0]))  # fmt: skip
        return int(row[0])

    def _put_profile(self, tx: Tx, tenant: str, p: Profile, phone: str, at: float, now: float) -> tuple[int, bool]:
        existed = tx.one("SELECT id FROM subscribers WHERE tenant = ? AND phone = ?", (tenant, phone))
        sid = self._ensure(tx, tenant, phone, now)
        fields = {f: getattr(p, f) for f in _PROFILE if getattr(p, f) is not None}
        # An older profile event never overwrites a newer one (profile_at); unset fields stay.
        if fields:
            sets = ", ".join(f"{f} = ?" for f in fields)
            tx.run(f"UPDATE subscribers SET {sets}, profile_at = ? WHERE tenant = ? AND id = ? AND profile_at <= ?",
                   (*fields.values(), at, tenant, sid, at))  # fmt: skip
        if p.attributes:
            row = tx.one("SELECT attributes FROM subscribers WHERE tenant = ? AND id = ?", (tenant, sid))
            merged = {**msgspec.json.decode(row[0] if row else "{}"), **p.attributes}
            tx.run("UPDATE subscribers SET attributes = ? WHERE tenant = ? AND id = ?",
                   (_json.encode(merged).decode(), tenant, sid))  # fmt: skip
        for tag in p.tags:
            tx.run("INSERT INTO subscriber_tags (tenant, subscriber_id, tag) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                   (tenant, sid, tag))  # fmt: skip
        return sid, existed is None

    def subscriber(self, tenant: str, subscriber_id: int) -> Subscriber | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {_SUB_COLS} FROM subscribers WHERE tenant = ? AND id = ?", (tenant, subscriber_id))
        return _subscriber(tenant, row) if row else None

    def subscriber_by_phone(self, tenant: str, phone: str) -> Subscriber | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {_SUB_COLS} FROM subscribers WHERE tenant = ? AND phone = ?", (tenant, phone))
        return _subscriber(tenant, row) if row else None

    def subscribers(self, tenant: str, *, after: int, limit: int) -> list[Subscriber]:
        with self._tx() as tx:
            rows = tx.rows(f"SELECT {_SUB_COLS} FROM subscribers WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?",
                           (tenant, after, limit))  # fmt: skip
        return [_subscriber(tenant, r) for r in rows]

    def subscribers_by_ids(self, tenant: str, ids: Sequence[int]) -> list[Subscriber]:
        """The subscribers of ``ids`` that exist, in id order (500 a query)."""
        out: list[Subscriber] = []
        with self._tx() as tx:
            for i in range(0, len(ids), 500):
                chunk = list(ids[i:i + 500])
                marks = ", ".join("?" * len(chunk))
                out += [_subscriber(tenant, r) for r in tx.rows(
                    f"SELECT {_SUB_COLS} FROM subscribers WHERE tenant = ? AND id IN ({marks})", (tenant, *chunk))]
        return sorted(out, key=lambda s: s.id)

    def tags(self, tenant: str, subscriber_id: int) -> frozenset[str]:
        with self._tx() as tx:
            rows = tx.rows("SELECT tag FROM subscriber_tags WHERE tenant = ? AND subscriber_id = ?", (tenant, subscriber_id))
        return frozenset(r[0] for r in rows)

    def set_tags(self, tenant: str, subscriber_id: int, *, add: Sequence[str] = (), remove: Sequence[str] = ()) -> frozenset[str]:  # noqa: E501
        with self._tx() as tx:
            if tx.one("SELECT 1 FROM subscribers WHERE tenant = ? AND id = ?", (tenant, subscriber_id)) is None:
                raise NotFound(f"no subscriber {subscriber_id}", code="subscriber_not_found")
            for tag in add:
                tx.run("INSERT INTO subscriber_tags (tenant, subscriber_id, tag) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                       (tenant, subscriber_id, tag))  # fmt: skip
            for tag in remove:
                tx.run("DELETE FROM subscriber_tags WHERE tenant = ? AND subscriber_id = ? AND tag = ?",
                       (tenant, subscriber_id, tag))  # fmt: skip
            rows = tx.rows("SELECT tag FROM subscriber_tags WHERE tenant = ? AND subscriber_id = ?", (tenant, subscriber_id))
        return frozenset(r[0] for r in rows)

    # ---- consent -----------------------------------------------------------------------------
    def record_consent(self, tenant: str, entry: NewConsent, *, now: float,
                       event_id: str | None = None) -> tuple[ConsentEntry | None, State]:  # fmt: skip
        with self._tx() as tx:
            if event_id is not None and tx.run(
                    "INSERT INTO processed_events (tenant, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (tenant, event_id)) == 0:  # fmt: skip
                row = tx.one("SELECT consent FROM subscribers WHERE tenant = ? AND phone = ?", (tenant, entry.phone))
                return None, row[0] if row else "none"
            return self._record_consent(tx, tenant, entry, now)

    def cursor(self, tenant: str, name: str) -> int:
        with self._tx() as tx:
            row = tx.one("SELECT value FROM cursors WHERE tenant = ? AND name = ?", (tenant, name))
        return int(row[0]) if row else 0

    def set_cursor(self, tenant: str, name: str, value: int) -> None:
        with self._tx() as tx:  # cursors only move forward
            tx.run("INSERT INTO cursors (tenant, name, value) VALUES (?, ?, ?) ON CONFLICT (tenant, name) "
                   "DO UPDATE SET value = excluded.value WHERE cursors.value < excluded.value", (tenant, name, value))

    def _record_consent(self, tx: Tx, tenant: str, e: NewConsent, now: float) -> tuple[ConsentEntry, State]:
        if consent.needs_disclosure(e.action, e.source) and not e.disclosure_text:
            raise InvalidInput(f"an opt-in from {e.source} must record the disclosure text shown",
                               code="disclosure_required", field="disclosure_text")  # fmt: skip
        sid = self._ensure(tx, tenant, e.phone, now)
        history = tx.rows("SELECT at, id, action FROM consent_ledger WHERE tenant = ? AND subscriber_id = ?",
                          (tenant, sid))  # fmt: skip
        before, _ = consent.fold(((a, i, act) for a, i, act in history if a <= e.at))
        if consent.step(before, e.action) is None:
            raise Conflict(f"cannot {e.action} when consent is {before}", code="consent_out_of_order", field="action")
        digest = consent.disclosure_sha256(e.disclosure_text) if e.disclosure_text is not None else None
        row = tx.one(f"INSERT INTO consent_ledger (tenant, subscriber_id, phone, action, source, disclosure_text, "
                     f"disclosure_version, disclosure_sha256, evidence, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                     f"RETURNING {_LEDGER_COLS}",
                     (tenant, sid, e.phone, e.action, e.source, e.disclosure_text, e.disclosure_version, digest,
                      _json.encode(e.evidence).decode(), e.at))  # fmt: skip
        assert row is not None
        entry = _entry(tenant, row)
        old = tx.one("SELECT consent FROM subscribers WHERE tenant = ? AND id = ?", (tenant, sid))
        state, since = consent.fold([*((a, i, act) for a, i, act in history), (e.at, entry.id, e.action)])
        tx.run("UPDATE subscribers SET consent = ?, consent_at = ? WHERE tenant = ? AND id = ?", (state, since, tenant, sid))
        self._queue_sync(tx, tenant, e, old[0] if old else "none", state)
        source = e.source
        if e.action == "confirm":  # a flow's "subscribed by source" means the sign-up's source, not the Y's
            row = tx.one("SELECT source FROM consent_ledger WHERE tenant = ? AND subscriber_id = ? AND action IN "
                         "('opt_in', 're_opt_in') ORDER BY at DESC, id DESC LIMIT 1", (tenant, sid))  # fmt: skip
            source = row[0] if row else source
        change = flow_inputs.consent_change(entry.id, source, old[0] if old else "none", state)
        enqueue_inputs(tx, tenant, sid, [change] if change is not None else [])
        return entry, state

    def _queue_sync(self, tx: Tx, tenant: str, e: NewConsent, old: str, state: str) -> None:
        # Opt-outs recorded here reach the gateway's suppressions through an outbox row (a restart loses
        # nothing); a confirmed re-opt-in after an opt-out lifts the suppression. A STOP the gateway heard
        # (source "gateway") is already suppressed there.
        if state == "revoked" and old != "revoked" and e.source != "gateway":
            action = "suppress"
        elif state == "confirmed" and old != "confirmed" and self._was_revoked(tx, tenant, e.phone):
            action = "unsuppress"
        else:
            return
        tx.run("INSERT INTO gateway_sync (tenant, phone, action, at) VALUES (?, ?, ?, ?) ON CONFLICT (tenant, phone) "
               "DO UPDATE SET action = excluded.action, at = excluded.at", (tenant, e.phone, action, e.at))

    def _was_revoked(self, tx: Tx, tenant: str, phone: str) -> bool:
        return tx.one("SELECT 1 FROM consent_ledger WHERE tenant = ? AND phone = ? AND action = 'opt_out'",
                      (tenant, phone)) is not None  # fmt: skip

    def import_rows(self, tenant: str, rows: Sequence[ImportRow], *, now: float) -> ImportResult:
        """All rows in one transaction. Consent with proof becomes ledger entries (``opt_in`` and, for
        ``confirmed``, ``confirm``, at the proven time); an import never re-subscribes a revoked number."""
        created = consented = skipped = 0
        with self._tx() as tx:
            for r in rows:
                _, new = self._put_profile(tx, tenant, r.profile, r.phone, now, now)
                created += new
                if r.consent is None or r.consent_at is None:
                    continue
                state = tx.one("SELECT consent FROM subscribers WHERE tenant = ? AND phone = ?", (tenant, r.phone))
                if state is not None and state[0] in ("revoked", r.consent, "confirmed"):
                    skipped += state[0] == "revoked"
                    continue
                for action in ("opt_in", "confirm") if r.consent == "confirmed" else ("opt_in",):
                    if action == "opt_in" and state is not None and state[0] == "pending":
                        continue
                    self._record_consent(tx, tenant, NewConsent(
                        phone=r.phone, action=action, source=r.source, at=r.consent_at,  # type: ignore[arg-type]
                        disclosure_text=r.disclosure_text, disclosure_version=r.disclosure_version,
                        evidence=r.evidence), now)  # fmt: skip
                consented += 1
        return ImportResult(rows=len(rows), created=created, consented=consented,
                            unproven=sum(r.unproven for r in rows), skipped_revoked=skipped)  # fmt: skip

    def ledger(self, tenant: str, subscriber_id: int) -> list[ConsentEntry]:
        with self._tx() as tx:
            rows = tx.rows(f"SELECT {_LEDGER_COLS} FROM consent_ledger WHERE tenant = ? AND subscriber_id = ? "
                           "ORDER BY at, id", (tenant, subscriber_id))  # fmt: skip
        return [_entry(tenant, r) for r in rows]

    # ---- shop events -------------------------------------------------------------------------
    def apply_event(self, tenant: str, event: ShopEvent, *, phone: str | None, now: float) -> Applied:
        with self._tx() as tx:
            return self._apply_and_queue(tx, tenant, event, phone, now)

    def apply_events(self, tenant: str, events: Sequence[tuple[ShopEvent, str | None]], *, now: float) -> list[Applied]:
        """Many events in one transaction (bulk ingestion and group commit: all or none), set-based
        where it counts (``campaigns.store.event_batch``); the same outcomes and state as ``apply_event``
        on each in turn."""
        with self._tx() as tx:
            return self._apply_events(tx, tenant, events, now)

    def _apply_events(self, tx: Tx, tenant: str, events: Sequence[tuple[ShopEvent, str | None]], now: float) -> list[Applied]:
        results, queued = self._apply_batch(tx, tenant, events, now)
        if not queued and tx.one("SELECT 1 FROM flow_heads WHERE tenant = ? LIMIT 1", (tenant,)) is not None:
            # the flow runtime hears them, in arrival order
            enqueue_applied(tx, tenant, [p for (e, _), r in zip(events, results, strict=True) for p in applied_inputs(e, r)],
                            has_flows=True)  # fmt: skip
        return results

    def _apply_and_queue(self, tx: Tx, tenant: str, event: ShopEvent, phone: str | None, now: float) -> Applied:
        applied = self._apply(tx, tenant, event, phone, now)
        enqueue_applied(tx, tenant, applied_inputs(event, applied))  # the flow runtime hears it in this same transaction
        return applied

    def _apply(self, tx: Tx, tenant: str, event: ShopEvent, phone: str | None, now: float) -> Applied:
        if tx.run("INSERT INTO processed_events (tenant, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                  (tenant, event.id)) == 0:  # fmt: skip
            return Applied(outcome="duplicate")
        return self._apply_new(tx, tenant, event, phone, now)

    def _apply_new(self, tx: Tx, tenant: str, event: ShopEvent, phone: str | None, now: float) -> Applied:
        """One event whose id was just claimed (``processed_events``), in ``tx``."""
        match event:
            case CustomerEvent():
                assert phone is not None
                sid, _ = self._put_profile(tx, tenant, event.profile, phone, event.at, now)
                entry = self._grant(tx, tenant, event.consent, phone, "api", event.at, now)
                return Applied(outcome="applied", subscriber_id=sid, consent=entry,
                               changed=frozenset({"subscribers", "subscriber_tags"}))  # fmt: skip
            case OrderEvent():
                assert phone is not None
                return self._order(tx, tenant, event, phone, now)
            case CheckoutEvent():
                assert phone is not None
                return self._checkout(tx, tenant, event, phone, now)
            case FulfillmentEvent():
                return self._fulfillment(tx, tenant, event, now)
            case ActivityEvent() | CustomEvent():
                assert phone is not None
                return self._activity(tx, tenant, event, phone, now)
        raise AssertionError(event)  # pragma: no cover

    def _grant(self, tx: Tx, tenant: str, grant: ConsentGrant | None, phone: str, source: str, at: float,
               now: float) -> ConsentEntry | None:  # fmt: skip
        if grant is None or not grant.accepted:
            return None
        state = tx.one("SELECT consent FROM subscribers WHERE tenant = ? AND phone = ?", (tenant, phone))
        if state is not None and state[0] in ("pending", "confirmed"):
            return None  # already opted in: a repeated box tick is not a new opt-in
        action = "re_opt_in" if state is not None and state[0] == "revoked" else "opt_in"
        entry, _ = self._record_consent(tx, tenant, NewConsent(
            phone=phone, action=action, source=source, at=at, disclosure_text=grant.disclosure_text,  # type: ignore[arg-type]
            disclosure_version=grant.disclosure_version, evidence=grant.evidence), now)
        return entry

    def _order(self, tx: Tx, tenant: str, e: OrderEvent, phone: str, now: float) -> Applied:
        sid = self._ensure(tx, tenant, phone, now)
        # When the order was placed: the earliest of what the shop says (``created_at``) and of the
        # instants of the events seen for it (a minimum: any arrival order gives the same).
        created = e.created_at if e.created_at is not None else e.at
        row = tx.one("SELECT updated_at, subscriber_id FROM orders WHERE tenant = ? AND order_id = ?", (tenant, e.order_id))
        if row is not None:
            tx.run(f"UPDATE orders SET created_at = {self._least}(created_at, ?) WHERE tenant = ? AND order_id = ?",
                   (created, tenant, e.order_id))  # fmt: skip
        if row is not None and row[0] > e.at:
            # Older than the order's state: only what stays true whatever came after still counts
            # (when it was placed, which checkout it completed, a fulfilment status newer than the
            # stored one: fulfilments have their own instant).
            self._order_fulfillment(tx, tenant, e)
            owner, end = int(row[1]), None
            if e.checkout_id is not None:
                tx.run("UPDATE orders SET checkout_id = COALESCE(checkout_id, ?) WHERE tenant = ? AND order_id = ?",
                       (e.checkout_id, tenant, e.order_id))  # fmt: skip
                end = self._complete_checkout(tx, tenant, e.checkout_id, int(row[1]), created, now)
            self._restat(tx, tenant, int(row[1]), now, _ORDER_PARTS[e.checkout_id is not None])
            rollups.upkeep(tx, tenant, recompute=[int(row[1])])
            others = () if end is None or end[1] == owner else (end[1],)
            return Applied(outcome="stale", subscriber_id=owner, others=others, checkout_end=_first_end(end),
                           changed=frozenset({"orders", "checkouts", "subscriber_stats"}))  # fmt: skip
        if row is None:
            tx.run("INSERT INTO orders (tenant, order_id, subscriber_id, total, currency, payment_status, "
                   "fulfillment_status, discount_code, created_at, checkout_id, updated_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (tenant, e.order_id, sid, e.total, e.currency, e.payment_status, None, e.discount_code, created,
                    e.checkout_id, e.at))  # fmt: skip
            self._early_fulfillment(tx, tenant, e.order_id)
        else:
            tx.run("UPDATE orders SET subscriber_id = ?, total = ?, currency = ?, payment_status = ?, discount_code = ?, "
                   "checkout_id = COALESCE(?, checkout_id), updated_at = ? WHERE tenant = ? AND order_id = ?",
                   (sid, e.total, e.currency, e.payment_status, e.discount_code, e.checkout_id, e.at,
                    tenant, e.order_id))  # fmt: skip
            tx.run("DELETE FROM order_items WHERE tenant = ? AND order_id = ?", (tenant, e.order_id))
        self._order_fulfillment(tx, tenant, e)
        for it in e.items:
            tx.run("INSERT INTO order_items (tenant, order_id, product, category, price, quantity) VALUES (?, ?, ?, ?, ?, ?)",
                   (tenant, e.order_id, it.product, it.category, it.price, it.quantity))  # fmt: skip
        # a new order changes its own items' categories; a stored one, whatever its items were (``new_order_changes``)
        changed = ({"orders", "order_items", "subscriber_stats"} if row is not None else
                   set(new_order_changes((it.category for it in e.items), checkout=e.checkout_id is not None)))  # fmt: skip
        others: set[int] = set()
        end = None
        if e.checkout_id is not None:
            end = self._complete_checkout(tx, tenant, e.checkout_id, sid, created, now)
            if end[1] != sid:
                others.add(end[1])
            changed.add("checkouts")
        stale_owner = int(row[1]) if row is not None and int(row[1]) != sid else None
        self._restat(tx, tenant, sid, now, _ORDER_PARTS[e.checkout_id is not None])
        if stale_owner is not None:
            self._restat(tx, tenant, stale_owner, now, _ORDER_PARTS[True])
            others.add(stale_owner)
        rollups.upkeep(tx, tenant, recompute=[sid] if stale_owner is None else [sid, stale_owner])
        return Applied(outcome="applied", subscriber_id=sid, changed=frozenset(changed), others=tuple(sorted(others)),
                       checkout_end=_first_end(end))  # fmt: skip

    def _order_fulfillment(self, tx: Tx, tenant: str, e: OrderEvent) -> None:
        """The order event's fulfilment status, unless a newer one is stored (newest ``at`` wins)."""
        if e.fulfillment_status is not None:
            tx.run("UPDATE orders SET fulfillment_status = ?, fulfillment_at = ? WHERE tenant = ? AND order_id = ? "
                   "AND fulfillment_at <= ?", (e.fulfillment_status, e.at, tenant, e.order_id, e.at))  # fmt: skip

    def _early_fulfillment(self, tx: Tx, tenant: str, order_id: str) -> None:
        row = tx.one("SELECT status, tracking_url, at FROM early_fulfillments WHERE tenant = ? AND order_id = ?",
                     (tenant, order_id))  # fmt: skip
        if row is not None:
            tx.run("UPDATE orders SET fulfillment_status = ?, tracking_url = ?, fulfillment_at = ? "
                   "WHERE tenant = ? AND order_id = ?", (row[0], row[1], row[2], tenant, order_id))  # fmt: skip
            tx.run("DELETE FROM early_fulfillments WHERE tenant = ? AND order_id = ?", (tenant, order_id))

    def _fulfillment(self, tx: Tx, tenant: str, e: FulfillmentEvent, now: float) -> Applied:
        row = tx.one("SELECT subscriber_id, fulfillment_at FROM orders WHERE tenant = ? AND order_id = ?",
                     (tenant, e.order_id))  # fmt: skip
        if row is None:  # before its order: kept until the order arrives (the newest wins)
            tx.run("INSERT INTO early_fulfillments (tenant, order_id, status, tracking_url, at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (tenant, order_id) DO UPDATE SET status = excluded.status, "
                   "tracking_url = excluded.tracking_url, at = excluded.at WHERE early_fulfillments.at <= excluded.at",
                   (tenant, e.order_id, e.status, e.tracking_url, e.at))  # fmt: skip
            return Applied(outcome="applied")
        if row[1] > e.at:
            return Applied(outcome="stale", subscriber_id=int(row[0]))
        tx.run("UPDATE orders SET fulfillment_status = ?, tracking_url = COALESCE(?, tracking_url), fulfillment_at = ? "
               "WHERE tenant = ? AND order_id = ?", (e.status, e.tracking_url, e.at, tenant, e.order_id))  # fmt: skip
        return Applied(outcome="applied", subscriber_id=int(row[0]), changed=frozenset({"orders"}))

    def _complete_checkout(self, tx: Tx, tenant: str, checkout_id: str, sid: int, at: float,
                           now: float) -> tuple[bool, int]:  # fmt: skip
        """Completion is final whatever arrives later; an order may name a checkout not seen yet.
        Instants are minima over every event seen, so arrival order never matters. A stored checkout
        of another subscriber (the shopper paid under another phone) no longer counts as that
        subscriber's abandoned one: their aggregates are recomputed. Returns (whether this completed
        the checkout the first time, the checkout's own subscriber: ``sid`` if it was not stored)."""
        row = tx.one("SELECT subscriber_id, completed_at FROM checkouts WHERE tenant = ? AND checkout_id = ?",
                     (tenant, checkout_id))  # fmt: skip
        tx.run(f"INSERT INTO checkouts (tenant, checkout_id, subscriber_id, started_at, completed_at, updated_at) "
               f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, checkout_id) DO UPDATE SET "
               f"completed_at = {self._least}(COALESCE(checkouts.completed_at, excluded.completed_at), excluded.completed_at), "
               f"started_at = {self._least}(checkouts.started_at, excluded.started_at)",
               (tenant, checkout_id, sid, at, at, 0.0))  # fmt: skip
        first = row is None or row[1] is None
        if row is None or int(row[0]) == sid:
            return first, sid
        self._restat(tx, tenant, int(row[0]), now, frozenset({"checkouts"}))
        return first, int(row[0])

    def _checkout(self, tx: Tx, tenant: str, e: CheckoutEvent, phone: str, now: float) -> Applied:
        sid = self._ensure(tx, tenant, phone, now)
        entry = self._grant(tx, tenant, e.consent, phone, "checkout", e.at, now)
        row = tx.one("SELECT updated_at, subscriber_id, completed_at FROM checkouts WHERE tenant = ? AND checkout_id = ?",
                     (tenant, e.checkout_id))  # fmt: skip
        if row is None:
            tx.run("INSERT INTO checkouts (tenant, checkout_id, subscriber_id, url, url_at, value, started_at, updated_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (tenant, e.checkout_id, sid, e.url, None if e.url is None else e.at, e.value, e.at, e.at))  # fmt: skip
        else:
            if row[0] <= e.at:  # the newest event's value
                tx.run("UPDATE checkouts SET value = ?, updated_at = ? WHERE tenant = ? AND checkout_id = ?",
                       (e.value, e.at, tenant, e.checkout_id))  # fmt: skip
            if e.url is not None:  # the newest url given (``url_at``: its event's instant), whatever the arrival order
                tx.run("UPDATE checkouts SET url = ?, url_at = ? WHERE tenant = ? AND checkout_id = ? "
                       "AND (url_at IS NULL OR url_at <= ?)", (e.url, e.at, tenant, e.checkout_id, e.at))  # fmt: skip
            tx.run(f"UPDATE checkouts SET started_at = {self._least}(started_at, ?) WHERE tenant = ? AND checkout_id = ?",
                   (e.at, tenant, e.checkout_id))  # fmt: skip
        owner = None if row is None or int(row[1]) == sid else int(row[1])  # the checkout stays its first owner's
        end: tuple[CheckoutEnd, int] | None = None
        if e.status == "completed":
            end = _first_end(self._complete_checkout(tx, tenant, e.checkout_id, sid, e.at, now))
        elif e.status == "abandoned":
            tx.run(f"UPDATE checkouts SET abandoned_at = {self._least}(COALESCE(abandoned_at, ?), ?) "
                   "WHERE tenant = ? AND checkout_id = ?", (e.at, e.at, tenant, e.checkout_id))  # fmt: skip
            if owner is not None:
                self._restat(tx, tenant, owner, now, frozenset({"checkouts"}))
            if row is None or row[2] is None:  # a paid checkout reported abandoned (late, re-sent) starts no flow
                end = ("abandoned", sid if owner is None else owner)
        self._restat(tx, tenant, sid, now, frozenset({"checkouts"}))
        changed = {"checkouts", "subscriber_stats"} | ({"subscribers"} if entry is not None else set())
        return Applied(outcome="applied", subscriber_id=sid, consent=entry, changed=frozenset(changed),
                       others=() if owner is None else (owner,), checkout_end=end)

    def _activity(self, tx: Tx, tenant: str, e: ActivityEvent | CustomEvent, phone: str, now: float) -> Applied:
        sid = self._ensure(tx, tenant, phone, now)
        kind = e.kind if isinstance(e, ActivityEvent) else e.name
        tx.run("INSERT INTO activities (tenant, subscriber_id, kind, at, properties) VALUES (?, ?, ?, ?, ?)",
               (tenant, sid, kind, e.at, _json.encode(e.properties).decode()))  # fmt: skip
        changed = {"activities"}
        if kind in _ACTIVITY_STAT:
            # A maximum is order-independent: no need to scan the subscriber's activities.
            stats = self._stats(tx, tenant, sid)
            field = _ACTIVITY_STAT[kind]
            stats = aggregates.scores(msgspec.structs.replace(stats, **{field: aggregates.latest(getattr(stats, field), e.at)}), now)
            values = [getattr(stats, f) for f in _STATS]
            tx.run(f"UPDATE subscriber_stats SET {', '.join(f'{f} = ?' for f in _STATS)} WHERE subscriber_id = ? AND tenant = ?",
                   (*values, sid, tenant))  # fmt: skip
            changed.add("subscriber_stats")
        return Applied(outcome="applied", subscriber_id=sid, changed=frozenset(changed))

    def _restat(self, tx: Tx, tenant: str, sid: int, now: float, parts: frozenset[str] = frozenset(
            {"orders", "checkouts", "activities"})) -> None:  # fmt: skip
        """Recompute ``sid``'s aggregates from the stored rows (order-independent by construction):
        the ``parts`` an event changed, the rest as stored; then the scores as of ``now``."""
        fields: dict[str, Any] = msgspec.structs.asdict(self._stats(tx, tenant, sid))
        key: tuple[Any, ...] = ()
        if "orders" in parts:
            orders = tx.rows("SELECT order_id, total, payment_status, created_at FROM orders WHERE tenant = ? AND "
                             "subscriber_id = ?", (tenant, sid))  # fmt: skip
            fields.update(aggregates.order_stats(orders))
            # the latest order's key, kept for the batch path (event_batch.aggregate_sql compares with it)
            latest = max(orders, key=lambda o: (o[3], o[0]), default=None)
            key = (None, None) if latest is None else (latest[3], latest[0])
        if "checkouts" in parts:
            # Not MAX() in SQL: SQLite would answer it from the partial index on (tenant, abandoned_at),
            # walking the whole shop's abandoned checkouts down to this subscriber's (20 ms per order
            # at 100,000 checkouts); the subscriber's own rows are a few.
            abandoned = [r[0] for r in tx.rows("SELECT abandoned_at FROM checkouts WHERE tenant = ? AND subscriber_id = ? "
                                               "AND completed_at IS NULL", (tenant, sid)) if r[0] is not None]  # fmt: skip
            fields["last_abandoned_checkout_at"] = max(abandoned) if abandoned else None
        if "activities" in parts:
            for kind, name in _ACTIVITY_STAT.items():
                last = tx.one("SELECT MAX(at) FROM activities WHERE tenant = ? AND subscriber_id = ? AND kind = ?",
                              (tenant, sid, kind))  # fmt: skip
                fields[name] = last[0] if last else None
        stats = aggregates.scores(Stats(**fields), now)
        cols = _STATS + (_LATEST_KEY if key else ())
        values = [getattr(stats, f) for f in _STATS]
        sets = ", ".join(f"{f} = excluded.{f}" for f in cols)
        tx.run(f"INSERT INTO subscriber_stats (tenant, subscriber_id, {', '.join(cols)}) VALUES "
               f"(?, ?, {', '.join('?' for _ in cols)}) ON CONFLICT (subscriber_id) DO UPDATE SET {sets}",
               (tenant, sid, *values, *key))  # fmt: skip

    def abandon_checkouts(self, tenant: str, *, after_s: float, now: float) -> list[int]:
        """Checkouts started ``after_s`` seconds ago or more and neither completed nor abandoned become
        abandoned (at started_at + after_s). Returns the subscribers whose aggregates changed."""
        with self._tx() as tx:
            rows = tx.rows("SELECT checkout_id, subscriber_id, started_at, value, url FROM checkouts WHERE tenant = ? "
                           "AND completed_at IS NULL AND abandoned_at IS NULL AND started_at <= ?",
                           (tenant, now - after_s))  # fmt: skip
            for checkout_id, sid_, started, value, url in rows:
                tx.run("UPDATE checkouts SET abandoned_at = ? WHERE tenant = ? AND checkout_id = ?",
                       (started + after_s, tenant, checkout_id))  # fmt: skip
                enqueue_inputs(tx, tenant, int(sid_), [flow_inputs.abandoned(checkout_id, int(value or 0), url)])
            sids = sorted({int(r[1]) for r in rows})
            for sid in sids:
                self._restat(tx, tenant, sid, now, frozenset({"checkouts"}))
        return sids

    def refresh_scores(self, tenant: str, *, now: float) -> int:
        """Recompute the time-relative scores (recency, engagement) of every subscriber as of ``now``."""
        with self._tx() as tx:
            ids = [int(r[0]) for r in tx.rows("SELECT subscriber_id FROM subscriber_stats WHERE tenant = ?", (tenant,))]
            for sid in ids:
                self._restat(tx, tenant, sid, now)
        return len(ids)

    def stats(self, tenant: str, subscriber_id: int) -> Stats:
        with self._tx() as tx:
            return self._stats(tx, tenant, subscriber_id)

    def _stats(self, tx: Tx, tenant: str, sid: int) -> Stats:
        row = tx.one(f"SELECT {', '.join(_STATS)} FROM subscriber_stats WHERE tenant = ? AND subscriber_id = ?",
                     (tenant, sid))  # fmt: skip
        return Stats(**dict(zip(_STATS, row, strict=True))) if row else Stats()

    def view(self, tenant: str, subscriber_id: int) -> SubscriberView | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {_SUB_COLS} FROM subscribers WHERE tenant = ? AND id = ?", (tenant, subscriber_id))
            if row is None:
                return None
            tags = frozenset(r[0] for r in tx.rows(
                "SELECT tag FROM subscriber_tags WHERE tenant = ? AND subscriber_id = ?", (tenant, subscriber_id)))
            items: dict[str, list[OrderItem]] = {}
            for oid, product, category, price, qty in tx.rows(
                    "SELECT i.order_id, i.product, i.category, i.price, i.quantity FROM order_items i JOIN orders o "
                    "ON o.tenant = i.tenant AND o.order_id = i.order_id WHERE o.tenant = ? AND o.subscriber_id = ?",
                    (tenant, subscriber_id)):  # fmt: skip
                items.setdefault(oid, []).append(OrderItem(product=product, category=category, price=price, quantity=qty))
            orders = tuple(Order(order_id=r[0], subscriber_id=subscriber_id, total=r[1], currency=r[2], payment_status=r[3],
                                 fulfillment_status=r[4], discount_code=r[5], created_at=r[6],
                                 items=tuple(items.get(r[0], ())))
                           for r in tx.rows("SELECT order_id, total, currency, payment_status, fulfillment_status, "
                                            "discount_code, created_at FROM orders WHERE tenant = ? AND subscriber_id = ? "
                                            "ORDER BY created_at, order_id", (tenant, subscriber_id)))  # fmt: skip
            checkouts = tuple(Checkout(checkout_id=r[0], subscriber_id=subscriber_id, url=r[1], value=r[2], started_at=r[3],
                                       completed_at=r[4], abandoned_at=r[5])
                              for r in tx.rows("SELECT checkout_id, url, value, started_at, completed_at, abandoned_at "
                                               "FROM checkouts WHERE tenant = ? AND subscriber_id = ? ORDER BY started_at, "
                                               "checkout_id", (tenant, subscriber_id)))  # fmt: skip
            activities = tuple(Activity(kind=r[0], at=r[1], properties=msgspec.json.decode(r[2]))
                               for r in tx.rows("SELECT kind, at, properties FROM activities WHERE tenant = ? AND "
                                                "subscriber_id = ? ORDER BY at", (tenant, subscriber_id)))  # fmt: skip
            stats = self._stats(tx, tenant, subscriber_id)
        return SubscriberView(subscriber=_subscriber(tenant, row), tags=tags, stats=stats, orders=orders,
                              checkouts=checkouts, activities=activities)  # fmt: skip

    # ---- segments ----------------------------------------------------------------------------
    def count_where(self, tenant: str, where: str, params: Sequence[Any]) -> int:
        with self._tx() as tx:
            rows = tx.raw_rows(f"SELECT COUNT(*) FROM subscribers s WHERE ({where})", params)
        return int(rows[0][0])

    def ids_where(self, tenant: str, where: str, params: Sequence[Any], *, after: int, limit: int) -> list[int]:
        ph = "?" if self.engine == "sqlite" else "%s"
        with self._tx() as tx:
            rows = tx.raw_rows(f"SELECT s.id FROM subscribers s WHERE ({where}) AND s.id > {ph} ORDER BY s.id LIMIT {ph}",
                               [*params, after, limit])  # fmt: skip
        return [int(r[0]) for r in rows]

    def put_segment(self, tenant: str, name: str, definition: Any, *, now: float, segment_id: int | None = None) -> SegmentRow:
        text = _json.encode(definition).decode()
        with self._tx() as tx:
            if segment_id is None:
                row = tx.one("INSERT INTO segments (tenant, name, definition, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                             "RETURNING id, created_at", (tenant, name, text, now, now))  # fmt: skip
            else:
                row = tx.one("UPDATE segments SET name = ?, definition = ?, updated_at = ? WHERE tenant = ? AND id = ? "
                             "RETURNING id, created_at", (name, text, now, tenant, segment_id))  # fmt: skip
                if row is None:
                    raise NotFound(f"no segment {segment_id}", code="segment_not_found")
                tx.run("DELETE FROM segment_members WHERE tenant = ? AND segment_id = ?", (tenant, segment_id))
        assert row is not None
        return SegmentRow(id=int(row[0]), tenant=tenant, name=name, definition=definition, created_at=row[1], updated_at=now)

    def segment(self, tenant: str, segment_id: int) -> SegmentRow | None:
        with self._tx() as tx:
            row = tx.one("SELECT id, name, definition, created_at, updated_at FROM segments WHERE tenant = ? AND id = ?",
                         (tenant, segment_id))  # fmt: skip
        return self._segment_row(tenant, row) if row else None

    @staticmethod
    def _segment_row(tenant: str, row: tuple) -> SegmentRow:
        return SegmentRow(id=int(row[0]), tenant=tenant, name=row[1], definition=msgspec.json.decode(row[2]),
                          created_at=row[3], updated_at=row[4])  # fmt: skip

    def segments(self, tenant: str, *, after: int = 0, limit: int = 100) -> list[SegmentRow]:
        with self._tx() as tx:
            rows = tx.rows("SELECT id, name, definition, created_at, updated_at FROM segments WHERE tenant = ? AND id > ? "
                           "ORDER BY id LIMIT ?", (tenant, after, limit))  # fmt: skip
        return [self._segment_row(tenant, r) for r in rows]

    def delete_segment(self, tenant: str, segment_id: int) -> bool:
        with self._tx() as tx:
            tx.run("DELETE FROM segment_members WHERE tenant = ? AND segment_id = ?", (tenant, segment_id))
            tx.run("DELETE FROM segment_timers WHERE tenant = ? AND segment_id = ?", (tenant, segment_id))
            return tx.run("DELETE FROM segments WHERE tenant = ? AND id = ?", (tenant, segment_id)) > 0

    def set_member(self, tenant: str, segment_id: int, subscriber_id: int, member: bool, *, now: float) -> bool:
        with self._member_tx() as tx:
            if member:
                added = tx.run("INSERT INTO segment_members (tenant, segment_id, subscriber_id, since) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT DO NOTHING", (tenant, segment_id, subscriber_id, now)) > 0  # fmt: skip
                if added:
                    enqueue_inputs(tx, tenant, subscriber_id, [flow_inputs.segment_entered(segment_id, subscriber_id, now)])
                return added
            return tx.run("DELETE FROM segment_members WHERE tenant = ? AND segment_id = ? AND subscriber_id = ?",
                          (tenant, segment_id, subscriber_id)) > 0  # fmt: skip

    def members(self, tenant: str, segment_id: int, *, after: int, limit: int) -> list[int]:
        with self._tx() as tx:
            rows = tx.rows("SELECT subscriber_id FROM segment_members WHERE tenant = ? AND segment_id = ? AND subscriber_id > ? "
                           "ORDER BY subscriber_id LIMIT ?", (tenant, segment_id, after, limit))  # fmt: skip
        return [int(r[0]) for r in rows]

    def rebuild_members(self, tenant: str, segment_id: int, where: str, params: Sequence[Any], *, now: float) -> int:
        """The segment's membership, recomputed from its compiled SQL in one transaction: members
        who stay keep their ``since``; returns the member count."""
        ph = "?" if self.engine == "sqlite" else "%s"
        with self._member_tx() as tx:
            tx.raw_rows(f"DELETE FROM segment_members WHERE tenant = {ph} AND segment_id = {ph} AND subscriber_id NOT IN "
                        f"(SELECT s.id FROM subscribers s WHERE {where}) RETURNING subscriber_id",
                        [tenant, segment_id, *params])  # fmt: skip
            added = tx.raw_rows(f"INSERT INTO segment_members (tenant, segment_id, subscriber_id, since) SELECT {ph}, {ph}, "
                                f"s.id, {ph} FROM subscribers s WHERE {where} ON CONFLICT DO NOTHING RETURNING subscriber_id",
                                [tenant, segment_id, now, *params])  # fmt: skip
            for (sid,) in added:
                enqueue_inputs(tx, tenant, int(sid), [flow_inputs.segment_entered(segment_id, int(sid), now)])
            row = tx.one("SELECT COUNT(*) FROM segment_members WHERE tenant = ? AND segment_id = ?", (tenant, segment_id))
        return int(row[0]) if row else 0

    def refresh_members(self, tenant: str, plans: Sequence[MemberPlan], *, now: float) -> int:
        """Live membership after a batch: per plan, who of ``ids`` is in the segment now (its compiled
        SQL, restricted to them) and, for segments time alone can change, the next window edge of each
        (``compile_edges``), and who of them is stored as a member, read in one snapshot
        (``_member_read``); then, in one short write transaction, the differences written (joiners
        ``since`` now, leavers deleted) and the timers that changed. Plans over the same ids are
        answered by one statement (a bit per segment, their stored members folded the same way).
        Returns how many memberships changed.

        Reading first and writing after is safe because membership passes are serialised
        (``_member_lock``, held by every membership writer: the stored members the snapshot sees are
        the ones the write changes) and a subscriber whose rows commit after the snapshot was handed to a later
        pass by that commit, which reads them: the last pass over a subscriber reads after its last
        commit."""
        with self._member_lock:
            return self.write_members(tenant, self.read_members(tenant, plans), now=now)

    def read_members(self, tenant: str, plans: Sequence[MemberPlan]) -> list[MembersFound]:
        """A pass's reads (``refresh_members``' first half), in one snapshot: per group of plans over the
        same ids, who of them is in each segment and the next window edges. Another process may run
        it (service/member_process.py) while this one holds ``_member_lock`` and writes the result."""
        groups: dict[tuple[int, ...], list[MemberPlan]] = {}
        for p in plans:
            groups.setdefault(tuple(p.ids), []).append(p)
        with self._member_read() as rx:
            return [self._read_group(rx, tenant, list(ids), group[i:i + _MASK_BITS])
                    for ids, group in groups.items() for i in range(0, len(group), _MASK_BITS)]  # fmt: skip

    def write_members(self, tenant: str, found: Sequence[MembersFound], *, now: float) -> int:
        """A pass's writes (``refresh_members``' second half): the differences with the stored members
        and timers, in one short transaction. Returns how many memberships changed."""
        with self._member_lock, self._member_tx() as tx:
            return sum(self._write_found(tx, tenant, f, now) if f.joined is not None
                       else self._write_group(tx, tenant, f.ids, f.inside, f.edges, now) for f in found)

    @staticmethod
    def _write_found(tx: Tx, tenant: str, f: MembersFound, now: float) -> int:
        """A group's differences read with its members (``_read_group`` on SQLite): the joiners
        inserted (``since`` now), the leavers deleted, the timers that moved written."""
        assert f.joined is not None and f.left is not None
        tx.insert_new("segment_members", ("tenant", "segment_id", "subscriber_id", "since"),
                      [(tenant, seg, sid, now) for seg, sid in sorted(f.joined)])  # in the key's order
        tx.many("DELETE FROM segment_members WHERE tenant = ? AND segment_id = ? AND subscriber_id = ?",
                [(tenant, seg, sid) for seg, sid in sorted(f.left)])  # fmt: skip
        if f.edges:
            _write_timers(tx, tenant, f.ids, f.edges)
        enqueue_entered(tx, tenant, f.joined, now)
        return len(f.joined) + len(f.left)

    @staticmethod
    def _read_group(tx: Tx, tenant: str, ids: list[int], plans: list[MemberPlan]) -> MembersFound:
        """Who of ``ids`` is in each plan's segment, and the next window edges. On SQLite the same
        statement reads each subscriber's stored memberships of these segments (one range of
        ``segment_members_by_subscriber`` a subscriber, folded to a bit a segment) and only the
        differences come back to Python (``MembersFound.joined`` / ``left``): reading the ~10 stored
        memberships of each subscriber into Python in the write transaction was a fifth of a pass."""
        ph = "%s" if tx.pg else "?"
        only = f"s.id = ANY({ph}::bigint[])" if tx.pg else f"s.id IN (SELECT value FROM json_each({ph}))"
        params = [x for p in plans for x in p.params]
        segs = [p.segment_id for p in plans]
        now_in = " + ".join(f"(CASE WHEN {p.where} THEN {1 << k} ELSE 0 END)" for k, p in enumerate(plans))
        bits = " ".join(f"WHEN {int(seg)} THEN {1 << k}" for k, seg in enumerate(segs))
        stored = (f"(SELECT coalesce(sum(CASE m.segment_id {bits} ELSE 0 END), 0) FROM segment_members m "
                  "WHERE m.tenant = s.tenant AND m.subscriber_id = s.id)")  # fmt: skip
        joined: list[tuple[int, int]] = []
        left: list[tuple[int, int]] = []
        for sid, now_mask, was in tx.raw_rows(f"SELECT s.id, {now_in}, {stored} FROM {members_from('postgres' if tx.pg else 'sqlite')} "
                                              f"WHERE s.tenant = {ph} AND {only}", [*params, tenant, tx.array(ids)]):  # fmt: skip
            now_mask, was = int(now_mask), int(was)  # PostgreSQL's sum of bigints is a numeric
            if now_mask != was:
                for k, seg in enumerate(segs):
                    bit = 1 << k
                    if now_mask & bit and not was & bit:
                        joined.append((seg, int(sid)))
                    elif was & bit and not now_mask & bit:
                        left.append((seg, int(sid)))
        edges: dict[int, dict[int, float]] = {p.segment_id: {} for p in plans if p.edges is not None or p.timed}
        for p in plans:
            if p.edges is not None:
                edges[p.segment_id] = {int(sid): float(at) for sid, at in tx.raw_rows(*p.edges)}
        for p in plans:
            if p.shared_edges is not None:
                sql, params, cols = p.shared_edges
                for row in tx.raw_rows(sql, params):
                    sid = int(row[0])
                    for seg, at in zip(cols, row[1:], strict=True):
                        if at is not None and (sid not in edges[seg] or at < edges[seg][sid]):
                            edges[seg][sid] = float(at)
        return MembersFound(ids=ids, inside={}, edges=edges, joined=joined, left=left)

    @staticmethod
    def _write_group(tx: Tx, tenant: str, ids: list[int], found: dict[int, list[int]],
                     edges: dict[int, dict[int, float]], now: float) -> int:  # fmt: skip
        arr = tx.array(ids)
        inside = {seg: set(sids) for seg, sids in found.items()}
        stored: dict[int, set[int]] = {seg: set() for seg in inside}
        # Driven by the ids (CROSS JOIN: SQLite keeps that order), one index probe each: with
        # `subscriber_id IN (ids)` SQLite may take the primary key on `tenant` alone and walk every
        # membership of the shop (the single-event path grew with the audience: 571/s at 20k, 35/s at 1M).
        for seg, sid in tx.rows(f"SELECT m.segment_id, m.subscriber_id FROM {tx.each('bigint')} CROSS JOIN "
                                "segment_members m WHERE m.tenant = ? AND m.subscriber_id = value", (arr, tenant)):  # fmt: skip
            if int(seg) in stored:
                stored[int(seg)].add(int(sid))
        joined = [(seg, sid) for seg in inside for sid in sorted(inside[seg] - stored[seg])]
        tx.insert_new("segment_members", ("tenant", "segment_id", "subscriber_id", "since"),
                      [(tenant, seg, sid, now) for seg, sid in joined])
        tx.many("DELETE FROM segment_members WHERE tenant = ? AND segment_id = ? AND subscriber_id = ?",
                [(tenant, seg, sid) for seg in inside for sid in sorted(stored[seg] - inside[seg])])  # fmt: skip
        if edges:
            _write_timers(tx, tenant, ids, edges)
        enqueue_entered(tx, tenant, joined, now)
        return sum(len(inside[seg] ^ stored[seg]) for seg in inside)

    def known_phones(self, tenant: str, phones: Sequence[str]) -> set[str]:
        with self._tx() as tx:
            return {r[0] for r in tx.rows(f"SELECT phone FROM subscribers WHERE tenant = ? AND phone IN {tx.values()}",
                                          (tenant, tx.array(sorted(set(phones)))))}  # fmt: skip

    def first_order_currency(self, tenant: str) -> str | None:
        """The currency of the tenant's earliest order (``orders_segment_window`` leads with tenant, created_at)."""
        with self._tx() as tx:
            row = tx.one("SELECT currency FROM orders WHERE tenant = ? ORDER BY created_at LIMIT 1", (tenant,))
        return None if row is None else str(row[0])

    def claim_currency(self, tenant: str, currency: str | None) -> str | None:
        """The shop's currency, decided once: the one claimed (``shop_currencies``), else its earliest
        stored order's (a store older than the table), else ``currency`` (None: only read). One
        transaction, first claim wins: two first uploads in different currencies racing from two
        requests (or two processes) get the same answer (PostgreSQL: the second INSERT waits on the
        key until the first commits, then does nothing; SQLite has one writer)."""
        with self._tx() as tx:
            row = tx.one("SELECT currency FROM shop_currencies WHERE tenant = ?", (tenant,))
            if row is not None:
                return str(row[0])
            first = tx.one("SELECT currency FROM orders WHERE tenant = ? ORDER BY created_at LIMIT 1", (tenant,))
            chosen = str(first[0]) if first is not None else currency
            if chosen is None:
                return None
            tx.run("INSERT INTO shop_currencies (tenant, currency) VALUES (?, ?) ON CONFLICT (tenant) DO NOTHING",
                   (tenant, chosen))  # fmt: skip
            row = tx.one("SELECT currency FROM shop_currencies WHERE tenant = ?", (tenant,))
        return str(row[0])

    def member_segments(self, tenant: str, subscriber_id: int) -> list[tuple[int, float]]:
        """(segment id, member since) of every segment the subscriber is in."""
        with self._tx() as tx:
            rows = tx.rows("SELECT segment_id, since FROM segment_members WHERE tenant = ? AND subscriber_id = ? "
                           "ORDER BY segment_id", (tenant, subscriber_id))  # fmt: skip
        return [(int(r[0]), float(r[1])) for r in rows]

    def set_timer(self, tenant: str, segment_id: int, subscriber_id: int, at: float | None) -> None:
        with self._member_tx() as tx:
            if at is None:
                tx.run("DELETE FROM segment_timers WHERE tenant = ? AND segment_id = ? AND subscriber_id = ?",
                       (tenant, segment_id, subscriber_id))  # fmt: skip
            else:
                tx.run("INSERT INTO segment_timers (tenant, segment_id, subscriber_id, at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (tenant, segment_id, subscriber_id) DO UPDATE SET at = excluded.at",
                       (tenant, segment_id, subscriber_id, at))  # fmt: skip

    def due_timers(self, now: float, limit: int = 1000) -> list[tuple[str, int, int]]:
        """Timers due at ``now``, taken (deleted) in the same transaction: (tenant, segment, subscriber)."""
        with self._member_tx() as tx:
            rows = tx.rows("SELECT tenant, segment_id, subscriber_id FROM segment_timers WHERE at <= ? ORDER BY at LIMIT ?",
                           (now, limit))  # fmt: skip
            for t, seg, sub in rows:
                tx.run("DELETE FROM segment_timers WHERE tenant = ? AND segment_id = ? AND subscriber_id = ?", (t, seg, sub))
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    # ---- the gateway link --------------------------------------------------------------------
    def sync_pending(self, tenant: str | None = None, limit: int = 500) -> list[SyncItem]:
        with self._tx() as tx:
            if tenant is None:
                rows = tx.rows("SELECT tenant, phone, action, at FROM gateway_sync ORDER BY at LIMIT ?", (limit,))
            else:
                rows = tx.rows("SELECT tenant, phone, action, at FROM gateway_sync WHERE tenant = ? ORDER BY at LIMIT ?",
                               (tenant, limit))  # fmt: skip
        return [SyncItem(tenant=r[0], phone=r[1], action=r[2], at=r[3]) for r in rows]

    def sync_done(self, item: SyncItem) -> None:
        with self._tx() as tx:  # only if nothing newer was queued for the number meanwhile
            tx.run("DELETE FROM gateway_sync WHERE tenant = ? AND phone = ? AND action = ? AND at = ?",
                   (item.tenant, item.phone, item.action, item.at))  # fmt: skip


_MASK_BITS = 62  # segments a pass's statement folds into one integer (SQLite's are 64-bit, signed)


def _write_timers(tx: Tx, tenant: str, ids: list[int], edges: dict[int, dict[int, float]]) -> None:
    """The timers of ``edges``' segments for ``ids``: what is stored is read (one index probe per
    subscriber), and only the timers that changed are written (an order moves few window edges;
    rewriting every timer of every subscriber touched cost a fifth of a pass)."""
    segs = tx.array(sorted(edges))
    stored: dict[tuple[int, int], float] = {(int(seg), int(sid)): float(at) for seg, sid, at in tx.rows(
        f"SELECT t.segment_id, t.subscriber_id, t.at FROM {tx.each('bigint')} CROSS JOIN segment_timers t "
        f"WHERE t.tenant = ? AND t.segment_id IN {tx.values('bigint')} AND t.subscriber_id = value",
        (tx.array(ids), tenant, segs))}  # fmt: skip
    want = {(seg, sid): at for seg, by_sid in edges.items() for sid, at in by_sid.items()}
    gone = [(tenant, seg, sid) for (seg, sid) in stored if (seg, sid) not in want]
    put = [(tenant, seg, sid, at) for (seg, sid), at in want.items() if stored.get((seg, sid)) != at]
    tx.many("DELETE FROM segment_timers WHERE tenant = ? AND segment_id = ? AND subscriber_id = ?", sorted(gone))
    tx.upsert_many("segment_timers", ("tenant", "segment_id", "subscriber_id", "at"), ("tenant", "segment_id", "subscriber_id"),
                   sorted(put))  # PostgreSQL: COPY into a staging table, then one upsert (not a bind per row)
