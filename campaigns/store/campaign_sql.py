"""The campaign tables' SQL (issue 18), shared by both engines: a mixin of ``SqlStore``.

Launch is two steps, each its own transaction: ``freeze_audience`` stores every recipient (text,
batch, slot) and its short links at once, so a relaunch after a crash re-reads the same frozen rows
and re-submits the same bytes; ``batch_submitted`` records the gateway job of one batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from campaigns.core import flows as F
from campaigns.core import link_table
from campaigns.core import links as core_links
from campaigns.core.events import ShopEvent
from campaigns.errors import Conflict, NotFound, StorageError
from campaigns.store import click_sql
from campaigns.store.flow_sql import enqueue_inputs
from campaigns.store.report_sql import ReportSql
from campaigns.store.campaign_rows import (AudienceRow, BatchRow, CampaignRow, CampaignStatus, ClickCounts, ClickIn, HitIn, LinkRange,
                                           LinkRow, Outcomes, PlannedRecipient, RecipientRow, SetTexts, STATE,
                                           TextKey)  # fmt: skip

_json = msgspec.json.Encoder()
_CAMP_COLS = "id, name, definition, status, created_at, updated_at, launched_at"
_REC_COLS = ("campaign_id, subscriber_id, phone, variant, send_at, tz, text, batch, idx, message_id, state, "
             "state_at")  # fmt: skip
_LINK_COLS = "code, tenant, campaign_id, subscriber_id, target, created_at, expires_at"
_LINK_READ = (f"SELECT {', '.join(f'l.{c.strip()}' for c in _LINK_COLS.split(','))}, r.phone, CASE WHEN r.state = "
              "'delivered' THEN r.state_at END FROM short_links l LEFT JOIN campaign_recipients r ON r.tenant = "
              "l.tenant AND r.campaign_id = l.campaign_id AND r.subscriber_id = l.subscriber_id WHERE l.code = ?")
_LINK_NAMES = [c.strip() for c in _LINK_COLS.split(",")] + ["phone", "delivered_at"]
_CLICK_COLS = ("code", "at", "user_agent", "verdict", "is_bot", "is_unique")
_FREEZE_COLS = ("tenant", "campaign_id", "subscriber_id", "phone", "variant", "send_at", "tz", "text", "batch", "idx")


def link_read_many(n: int, placeholder: str = "?") -> str:
    """The link read of ``n`` codes at once (a ``LinkReader``'s round; same columns as ``_LINK_READ``)."""
    return _LINK_READ.replace("l.code = ?", f"l.code IN ({', '.join([placeholder] * n)})")


def link_rows(rows: Sequence[Sequence[Any]]) -> dict[str, LinkRow]:
    """Rows of ``_LINK_READ`` by code."""
    return {r[0]: _link_row(*r) for r in rows}


def _link_row(code: str, tenant: str, campaign_id: int, subscriber_id: int, target: str, created_at: float,
              expires_at: float | None, phone: str | None, delivered_at: float | None) -> LinkRow:  # fmt: skip
    """One row of ``_LINK_READ`` (its columns in order: ``_LINK_NAMES``); keywords, not a dict per row."""
    return LinkRow(code=code, tenant=tenant, campaign_id=campaign_id, subscriber_id=subscriber_id, target=target,
                   created_at=created_at, expires_at=expires_at, phone=phone, delivered_at=delivered_at)


#: Range codes' links, many at once: each candidate (code, tenant, code length, link number) of the
#: rowset ``b`` joined to its range (by tenant, code length and link number) and to the recipient in
#: the slot the number names (one indexed read each; integer division on both engines).
_SLOT = "((b.n - g.start) / g.stride)"
_RANGE_READ_MANY = (f"SELECT b.code, b.tenant, g.campaign_id, g.targets, g.created_at, g.expires_at, r.subscriber_id, "
                    f"r.phone, CASE WHEN r.state = 'delivered' THEN r.state_at END, r.text, (b.n - g.start) - {_SLOT} * "
                    f"g.stride FROM {{rowset}} JOIN link_ranges g ON g.tenant = b.tenant AND g.length = b.length AND "
                    f"g.start <= b.n AND b.n < g.start + g.count JOIN campaign_recipients r ON r.tenant = g.tenant AND "
                    f"r.campaign_id = g.campaign_id AND r.batch = {_SLOT} / g.batch_size AND r.idx = {_SLOT} - "
                    f"({_SLOT} / g.batch_size) * g.batch_size")  # fmt: skip
_RANGE_ROWSET = {"?": "(SELECT value ->> 0 AS code, value ->> 1 AS tenant, value ->> 2 AS length, value ->> 3 AS n "
                      "FROM json_each(?)) AS b",
                 "%s": "unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) AS b (code, tenant, length, n)"}  # fmt: skip


def resolve_codes(query: Callable[[str, Sequence[Any]], Sequence[Sequence[Any]]], codes: Sequence[str],
                  keys: Mapping[str, bytes], placeholder: str = "?") -> dict[str, LinkRow]:  # fmt: skip
    """THE code -> link resolution (docs/ARCHITECTURE.md): each code's ``short_links`` row (old codes,
    flows' links, held and per-recipient-target recipients), else its range link: the code decoded
    with each tenant's key (in name order) to a link number, that number's range and the recipient in
    the slot it names, whose text must carry the code (a slot given HMAC codes resolves nothing).
    ``query(sql, params)`` runs on the caller's connection (``placeholder``: its parameter mark)."""
    out: dict[str, LinkRow] = {}
    for i in range(0, len(codes), 500):
        chunk = list(codes[i:i + 500])
        out.update(link_rows(query(link_read_many(len(chunk), placeholder), chunk)))
    if keys:
        out.update(resolve_ranges(query, [c for c in codes if c not in out], keys, placeholder))
    return out


def resolve_ranges(query: Callable[[str, Sequence[Any]], Sequence[Sequence[Any]]], codes: Sequence[str],
                   keys: Mapping[str, bytes], placeholder: str = "?") -> dict[str, LinkRow]:  # fmt: skip
    """``resolve_codes``'s second half: the range links of ``codes`` that have no ``short_links`` row.
    Every code is decoded in memory with every tenant's key (a keyed permutation: no read), then one
    statement per 500 candidates reads their ranges and slots; a code's link is its first tenant (in
    name order) whose slot's text carries the code."""
    candidates: list[tuple[str, str, int, int]] = []
    for code in codes:
        if not core_links.MIN_CODE <= len(code) <= core_links.MAX_CODE:
            continue
        for tenant in sorted(keys):
            n = core_links.cipher_for(keys[tenant], len(code)).decode(code)
            if n is None:
                break  # not base62: no tenant's code
            candidates.append((code, tenant, len(code), n))
    found: dict[tuple[str, str], tuple] = {}
    sql = _RANGE_READ_MANY.replace("{rowset}", _RANGE_ROWSET[placeholder])
    for i in range(0, len(candidates), 500):
        chunk = candidates[i:i + 500]
        params = [list(c) for c in zip(*chunk, strict=True)] if placeholder != "?" else [_json.encode(chunk).decode()]
        for row in query(sql, params):
            found[(row[0], row[1])] = row
    out: dict[str, LinkRow] = {}
    for code, tenant, _length, _n in candidates:
        row = found.get((code, tenant))
        if code in out or row is None or f"/{code}" not in row[9]:
            continue
        _c, _t, cid, targets, created, expires, sid, phone, delivered, _text, position = row
        out[code] = LinkRow(code=code, tenant=tenant, campaign_id=int(cid), subscriber_id=int(sid),
                            target=msgspec.json.decode(targets)[int(position)], created_at=created,
                            expires_at=expires, phone=phone, delivered_at=delivered)  # fmt: skip
    return out


class SharedLinkReader:
    """The default ``LinkReader``: the store's own connection (SQLite ``:memory:``, test doubles).
    ``read`` may wait for the connection: callers run it in a worker thread."""

    on_loop = False

    def __init__(self, store: Any) -> None:
        self._store = store

    def read(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        return self._store.links(codes)

    def close(self) -> None:
        pass
#: Which status a campaign may move to from which (a missing pair is a Conflict).
_MOVES = {("draft", "launching"), ("launching", "launched"), ("launched", "paused"), ("paused", "launched"),
          ("draft", "canceled"), ("launching", "canceled"), ("launched", "canceled"), ("paused", "canceled"),
          ("launching", "launching"), ("launched", "launched"), ("paused", "paused"), ("canceled", "canceled")}
#: A recipient's state only moves forward (a late "sent" never overwrites "delivered").
_RANK = {"planned": 0, "submitted": 1, "rejected": 2, "queued": 2, "sent": 3, "delivered": 4, "failed": 4,
         "expired": 4, "canceled": 4}  # fmt: skip


def _camp(tenant: str, row: tuple) -> CampaignRow:
    i, name, definition, status, created, updated, launched = row
    return CampaignRow(id=int(i), tenant=tenant, name=name, definition=msgspec.json.decode(definition),
                       status=status, created_at=created, updated_at=updated, launched_at=launched)  # fmt: skip


_REC_NAMES = tuple(c.strip() for c in _REC_COLS.split(","))
#: The recipient columns as read (``r``): ``state`` as its readers see it (``campaign_rows.STATE``).
_REC_READ = ", ".join(STATE if c == "state" else f"r.{c}" for c in _REC_NAMES)


def _rec(row: tuple) -> RecipientRow:
    return RecipientRow(**dict(zip(_REC_NAMES, row, strict=True)))


def _pending(tx: Any, tenant: str) -> bool:
    """Whether another launch of the tenant is still being frozen in chunks (``campaign_plan`` rows):
    then its planned sends, not yet in ``campaign_recipients``, are gathered into ``launch_pending``
    (one row a subscriber: the latest planned send), which the audience's last send reads too, so a
    launch planned between another's chunks sees that launch whole, as if frozen in one go."""
    if tx.one("SELECT 1 FROM campaign_plan WHERE tenant = ? LIMIT 1", (tenant,)) is None:
        return False
    tx.run(f"DROP TABLE IF EXISTS {'' if tx.pg else 'temp.'}launch_pending")
    whole, real = ("BIGINT", "DOUBLE PRECISION") if tx.pg else ("INTEGER", "REAL")
    tx.run(_temp(tx, "launch_pending", f"(sid {whole} PRIMARY KEY, at {real} NOT NULL)"))
    tx.run("INSERT INTO launch_pending (sid, at) SELECT subscriber_id, MAX(send_at) FROM campaign_plan WHERE tenant = ? "
           "GROUP BY subscriber_id", (tenant,))  # fmt: skip
    return True


def _audience_sql(tx: Any, tenant: str, include: Sequence[int], exclude: Sequence[int],
                  ids: Sequence[int]) -> tuple[str, list[Any]] | None:  # fmt: skip
    """``launch_audience``'s query (no ORDER BY) and its parameters; None for an empty audience.
    Its columns: id, phone, first_name, time_zone, language, attributes, the last campaign send
    (``last_marketing_at``'s rule, a launch still being frozen counted: ``_pending``) and
    ``subscriber_stats.last_message_at``."""
    pending = _pending(tx, tenant)
    parts: list[str] = []
    params: list[Any] = []
    if include:
        parts.append(f"SELECT m.subscriber_id AS sid FROM {tx.each('bigint')} CROSS JOIN segment_members m "
                     "WHERE m.tenant = ? AND m.segment_id = value")  # fmt: skip
        params += [tx.array(sorted(set(include))), tenant]
    if ids:
        parts.append(f"SELECT value AS sid FROM {tx.each('bigint')}")
        params.append(tx.array(sorted(set(ids))))
    if not parts:
        return None
    aud = " UNION ".join(parts) if len(parts) > 1 or len(set(include)) > 1 else parts[0]
    skip = ""
    if exclude:
        skip = (f" AND NOT EXISTS (SELECT 1 FROM {tx.each('bigint')} CROSS JOIN segment_members x WHERE x.tenant = "
                "s.tenant AND x.segment_id = value AND x.subscriber_id = s.id)")  # fmt: skip
    sent = _sent_expr(tx, pending)
    sql = (f"SELECT s.id, s.phone, s.first_name, s.time_zone, s.language, s.attributes, {sent} AS sent, "
           "(SELECT st.last_message_at FROM subscriber_stats st WHERE "
           f"st.subscriber_id = s.id AND st.tenant = s.tenant) AS stat FROM ({aud}) a CROSS JOIN subscribers s WHERE s.id = a.sid AND s.tenant = ? AND "
           f"s.consent = 'confirmed'{skip}")  # fmt: skip
    return sql, [*params, tenant, *([tx.array(sorted(set(exclude)))] if exclude else [])]


def _sent_expr(tx: Any, pending: bool) -> str:
    """Subscriber ``s``'s last campaign send (``last_marketing_at``'s rule), a launch still being frozen
    in chunks counted (``pending``: ``_pending``'s table)."""
    sent = ("(SELECT MAX(r.send_at) FROM campaign_recipients r WHERE r.tenant = s.tenant AND r.subscriber_id = s.id "
            "AND r.state NOT IN ('rejected', 'canceled', 'failed'))")  # fmt: skip
    if pending:
        planned = "(SELECT p.at FROM launch_pending p WHERE p.sid = s.id)"
        sent = (f"GREATEST({sent}, {planned})" if tx.pg
                else f"max(COALESCE({sent}, {planned}), COALESCE({planned}, {sent}))")  # fmt: skip
    return sent


def _plan_exprs(tx: Any, reads_name: bool) -> list[tuple[str, str]]:
    """``launch_plan``'s columns from ``launch_aud a`` and ``launch_zones z``, each ``(expression, name)``:
    id, phone, send time, zone, first marketing message or not (``f``), language (NULL kept apart), first
    name where the template reads it; the last three are a recipient's text key."""
    two = "chr(2)" if tx.pg else "char(2)"
    return [("a.id", "id"), ("a.phone", "phone"), ("z.send_at", "send_at"), ("z.zone", "zone"),
            ("CASE WHEN a.sent IS NULL AND a.stat IS NULL THEN 1 ELSE 0 END", "f"), (f"COALESCE(a.language, {two})", "lang"),
            ("COALESCE(a.first_name, '')" if reads_name else "''", "name")]  # fmt: skip


def _plan_cols(tx: Any, reads_name: bool) -> str:
    """``_plan_exprs``' expressions, in order (an ``INSERT INTO launch_plan``'s select list)."""
    return ", ".join(e for e, _ in _plan_exprs(tx, reads_name))


def _plan_named(tx: Any, reads_name: bool, *, keys_only: bool = False) -> str:
    """``_plan_exprs`` as a select list naming each column (only the text key's three with ``keys_only``)."""
    exprs = _plan_exprs(tx, reads_name)
    return ", ".join(f"{e} AS {n}" for e, n in (exprs[4:] if keys_only else exprs))


def _stream_key(tenant: str, campaign_id: int) -> str:
    """The text of a stream's advisory locks (with the slot a chunk ends at: ``freeze_stream``)."""
    return f"sluice:stream:{tenant}:{campaign_id}"


def _temp(tx: Any, name: str, columns: str = "") -> str:
    """``CREATE TEMP TABLE name columns``: dropped at commit on PostgreSQL (``_drop_launch_temps`` on SQLite)."""
    return f"CREATE TEMP TABLE {name} {columns}{' ON COMMIT DROP' if tx.pg else ''}"


def _drop_launch_temps(tx: Any) -> None:
    for name in ("launch_aud", "launch_zones", "launch_plan", "launch_groups", "launch_texts", "launch_pending"):
        tx.run(f"DROP TABLE IF EXISTS {'' if tx.pg else 'temp.'}{name}")


def _last(tx: Any) -> str:
    """When ``launch_aud``'s subscriber ``a`` last got marketing (``last_marketing_at``'s rule): the
    later of its last campaign send and its stats' last message, NULL when it has neither."""
    return "GREATEST(a.sent, a.stat)" if tx.pg else "max(COALESCE(a.sent, a.stat), COALESCE(a.stat, a.sent))"


def _text_expr(tx: Any, stride: int, length: int, base: int = 0) -> str:
    """A recipient's text in SQL: its key's pieces (``t.p0`` ...) around the codes of its link numbers
    (``((slot - base) * stride + p)``-th code of the bound ASCII bytes, one parameter per link: the
    codes of the slots from ``base`` on)."""
    if not stride:
        return "t.p0"
    parts = []
    for p in range(stride):
        at = f"((q.slot - {int(base)}) * {stride} + {p}) * {length} + 1"
        code = (f"convert_from(substring(?::bytea FROM CAST({at} AS INTEGER) FOR {length}), 'UTF8')" if tx.pg
                else f"CAST(substr(?, {at}, {length}) AS TEXT)")  # fmt: skip
        parts += [f"t.p{p}", code]
    return " || ".join([*parts, f"t.p{stride}"])


class CampaignSql(ReportSql):
    """Needs ``self._tx()`` (the engine's transaction)."""

    _tx: Any

    # ---- campaigns -----------------------------------------------------------------------------
    def put_campaign(self, tenant: str, name: str, definition: Any, *, now: float) -> CampaignRow:
        with self._tx() as tx:
            row = tx.one(f"INSERT INTO campaigns (tenant, name, definition, created_at, updated_at) "
                         f"VALUES (?, ?, ?, ?, ?) RETURNING {_CAMP_COLS}",
                         (tenant, name, _json.encode(definition).decode(), now, now))  # fmt: skip
        return _camp(tenant, row)

    def campaign(self, tenant: str, campaign_id: int) -> CampaignRow | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {_CAMP_COLS} FROM campaigns WHERE tenant = ? AND id = ?", (tenant, campaign_id))
        return _camp(tenant, row) if row else None

    def campaign_status(self, tenant: str, campaign_id: int) -> CampaignStatus | None:
        """The campaign's status as last committed. On SQLite a read on a connection of its own (WAL:
        it never waits for a transaction on the store's, such as a launch's freeze chunk); here the
        store's own (PostgreSQL: a launch's chunks have connections of their own)."""
        with self._status_read() as tx:
            row = tx.one("SELECT status FROM campaigns WHERE tenant = ? AND id = ?", (tenant, campaign_id))
        return row[0] if row else None

    def _status_read(self) -> Any:
        return self._tx()

    def set_campaign_status(self, tenant: str, campaign_id: int, status: CampaignStatus, *, now: float) -> CampaignRow:
        with self._tx() as tx:
            row = tx.one("SELECT status FROM campaigns WHERE tenant = ? AND id = ?", (tenant, campaign_id))
            if row is None:
                raise NotFound(f"no campaign {campaign_id}", code="campaign_not_found")
            if (row[0], status) not in _MOVES:
                raise Conflict(f"a {row[0]} campaign cannot become {status}", code="campaign_status", field="status")
            launched = ", launched_at = COALESCE(launched_at, ?)" if status == "launching" else ""
            params = (status, now, now) if status == "launching" else (status, now)
            row = tx.one(f"UPDATE campaigns SET status = ?, updated_at = ?{launched} "
                         f"WHERE tenant = ? AND id = ? RETURNING {_CAMP_COLS}", (*params, tenant, campaign_id))
        return _camp(tenant, row)

    # ---- the frozen audience -------------------------------------------------------------------
    def link_range_end(self, tenant: str, length: int) -> int:
        """The first link number no range of the tenant's codes of ``length`` holds (a new range's start)."""
        with self._tx() as tx:
            row = tx.one("SELECT MAX(start + count) FROM link_ranges WHERE tenant = ? AND length = ?", (tenant, length))
        return int(row[0]) if row and row[0] is not None else 0

    def link_range(self, tenant: str, campaign_id: int) -> LinkRange | None:
        with self._tx() as tx:
            row = tx.one("SELECT length, start, count, stride, batch_size, targets, created_at, expires_at, holes "
                         "FROM link_ranges WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))  # fmt: skip
        if row is None:
            return None
        length, start, count, stride, size, targets, created, expires, holes = row
        return LinkRange(tenant=tenant, campaign_id=campaign_id, length=int(length), start=int(start), count=int(count),
                         stride=int(stride), batch_size=int(size), targets=tuple(msgspec.json.decode(targets)),
                         created_at=created, expires_at=expires,
                         holes=None if holes is None else tuple(msgspec.json.decode(holes)))  # fmt: skip

    def freeze_audience(self, tenant: str, campaign_id: int, recipients: Sequence[PlannedRecipient],
                        links: Sequence[LinkRow], *, now: float, link_range: LinkRange | None = None) -> bool:  # fmt: skip
        """Store the audience, its batches, its links (rows for HMAC codes, one ``link_ranges`` row for
        the range codes) in one transaction; False (nothing written) if the campaign's audience was
        already frozen (a relaunch keeps the first one). A range that another launch took meanwhile
        is a ``Conflict("link_range_taken")`` with nothing written (plan again from a new start)."""
        with self._tx() as tx:
            if tx.one("SELECT 1 FROM campaign_batches WHERE tenant = ? AND campaign_id = ? LIMIT 1",
                      (tenant, campaign_id)) is not None:  # fmt: skip
                return False
            if link_range is not None:
                end = tx.one("SELECT MAX(start + count) FROM link_ranges WHERE tenant = ? AND length = ?",
                             (tenant, link_range.length))  # fmt: skip
                if end is not None and end[0] is not None and int(end[0]) > link_range.start:
                    raise Conflict("another launch took these link numbers", code="link_range_taken")
                g = link_range
                tx.run("INSERT INTO link_ranges (tenant, campaign_id, length, start, count, stride, batch_size, targets, "
                       "created_at, expires_at, holes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (tenant, campaign_id, g.length, g.start, g.count, g.stride, g.batch_size,
                        _json.encode(list(g.targets)).decode(), g.created_at, g.expires_at,
                        None if g.holes is None else _json.encode(sorted(g.holes)).decode()))  # fmt: skip
                self._shadow_range(tx, tenant, g.length, g.start, g.count)
            sizes: dict[int, tuple[float, int]] = {}
            for r in recipients:
                at, n = sizes.get(r.batch, (r.send_at, 0))
                sizes[r.batch] = (at, n + 1)
            # Each in key order (the recipients by subscriber, the links by code): inserts walk their
            # indexes in order instead of at random pages. COPY on PostgreSQL.
            tx.insert_many("campaign_recipients", _FREEZE_COLS,
                           sorted(((tenant, campaign_id, r.subscriber_id, r.phone, r.variant, r.send_at, r.tz, r.text,
                                    r.batch, r.idx) for r in recipients), key=lambda row: row[2]))  # fmt: skip
            _write_batches(tx, tenant, campaign_id, sizes, now)
            tx.insert_new("short_links", _LINK_NAMES[:7],
                          sorted((link.code, tenant, link.campaign_id, link.subscriber_id, link.target, link.created_at,
                                  link.expires_at) for link in links))  # fmt: skip
            self._shadow_rows(tx, [link.code for link in links])
        self._links_changed()
        return True

    def freeze_set(self, tenant: str, campaign_id: int, include: Sequence[int], exclude: Sequence[int],
                   ids: Sequence[int], *, batch_size: int, smart_window_s: float, reads_name: bool,
                   zones: Callable[[list[str | None]], Mapping[str | None, tuple[str, float | None]]],
                   texts: Callable[[list[TextKey], Callable[[Sequence[TextKey]], tuple[TextKey, int]]], SetTexts], now: float, expires_at: float | None = None,
                   chunk: int | None = None) -> bool:  # fmt: skip
        """``freeze_audience`` done set-based (docs/ARCHITECTURE.md, "A set-based freeze"): the
        audience, consent, smart sending, batches, slots, link numbers and texts computed in SQL and
        stored by one ``INSERT INTO campaign_recipients ... SELECT``. Python is asked only once per
        distinct value: ``zones(time zones)`` -> ``{zone: (resolved zone, send_at or None: skip)}``,
        ``texts(keys)`` -> each key's pieces between its links and the link codes. A recipient's text
        is its key's pieces joined with the codes of its slot's link numbers: the bytes ``_plan``
        gives. False (nothing written) when the audience was frozen already.

        ``chunk`` (batches): only the first ``chunk`` batches' recipients are written now; the rest of
        the plan is stored as it stands (``campaign_plan``, the texts' pieces in ``campaign_plan_texts``)
        and written a chunk at a time by ``freeze_next``, each chunk its own transaction (docs/
        ARCHITECTURE.md, "A chunked freeze"). The plan is the whole audience's either way."""
        with self._tx() as tx:
            if tx.one("SELECT 1 FROM campaign_batches WHERE tenant = ? AND campaign_id = ? LIMIT 1",
                      (tenant, campaign_id)) is not None:  # fmt: skip
                return False
            _drop_launch_temps(tx)
            q = _audience_sql(tx, tenant, include, exclude, ids)
            sizes: dict[int, tuple[float, int]] = {}
            if q is not None:
                # Each subquery once per subscriber (an expression over them here would repeat them).
                tx.run(f"{_temp(tx, 'launch_aud')} AS SELECT id, phone, first_name, time_zone, language, sent, stat "
                       f"FROM ({q[0]}) u", q[1])  # fmt: skip
                sizes = self._freeze_set_rows(tx, tenant, campaign_id, batch_size, smart_window_s, reads_name, zones,
                                              texts, now, expires_at, chunk)  # fmt: skip
            _write_batches(tx, tenant, campaign_id, sizes, now)
            _drop_launch_temps(tx)
        self._links_changed()
        return True

    def _freeze_set_rows(self, tx: Any, tenant: str, campaign_id: int, batch_size: int, smart_window_s: float,
                         reads_name: bool, zones: Callable[[list[str | None]], Mapping[str | None, tuple[str, float | None]]],
                         texts: Callable[[list[TextKey], Callable[[Sequence[TextKey]], tuple[TextKey, int]]], SetTexts], now: float,
                         expires_at: float | None, chunk: int | None = None) -> dict[int, tuple[float, int]]:  # fmt: skip
        """``freeze_set``'s recipients from ``launch_aud``: each batch's ``(send_at, size)``.

        ``launch_plan`` holds the kept recipients in send order (``pos`` from 1: ``(send_at, id)``
        order, SQLite's rowid as inserted in that order, PostgreSQL's ``row_number()``) with their
        text's key; a recipient's slot is ``pos`` plus its send time's offset (``launch_groups``)."""
        real, whole = ("DOUBLE PRECISION", "BIGINT") if tx.pg else ("REAL", "INTEGER")
        tx.run(_temp(tx, "launch_zones", f"(tz TEXT PRIMARY KEY, zone TEXT NOT NULL, send_at {real})"))
        found = zones([z for (z,) in tx.rows("SELECT DISTINCT time_zone FROM launch_aud")])
        by_key: dict[str, tuple[str, float | None]] = {}
        for z, (zone, at) in found.items():  # NULL and '' both mean "no zone": the tenant's
            by_key.setdefault(z or "", (zone, at))
        tx.many("INSERT INTO launch_zones (tz, zone, send_at) VALUES (?, ?, ?)", [(k, z, a) for k, (z, a) in by_key.items()])
        last = _last(tx)
        kept = ("z.send_at IS NOT NULL" + (f" AND ({last} IS NULL OR z.send_at - {last} >= {float(smart_window_s)!r})"
                                           if smart_window_s > 0 else ""))  # fmt: skip
        cols = _plan_cols(tx, reads_name)
        order = "ORDER BY z.send_at, a.id"
        tx.run(_temp(tx, "launch_plan", f"(pos {whole} PRIMARY KEY, id {whole}, phone TEXT, send_at {real}, zone TEXT, "
                                        f"f {whole}, lang TEXT, name TEXT)"))  # fmt: skip
        tx.run(f"INSERT INTO launch_plan ({'pos, ' if tx.pg else ''}id, phone, send_at, zone, f, lang, name) SELECT "
               f"{f'row_number() OVER ({order}), ' if tx.pg else ''}{cols} FROM launch_aud a JOIN launch_zones z ON "
               f"z.tz = COALESCE(a.time_zone, '') WHERE {kept} {order}")  # fmt: skip
        # Two small aggregates (SQLite: about 0.9 µs a recipient; reading every row into Python: 2.3).
        counts = {float(at): int(n) for at, n in tx.rows("SELECT send_at, COUNT(*) FROM launch_plan GROUP BY send_at")}
        if not counts:
            return {}
        sizes: dict[int, tuple[float, int]] = {}
        tx.run(_temp(tx, "launch_groups", f"(send_at {real} PRIMARY KEY, delta {whole})"))
        batch, pos = 0, 1
        for at, n in sorted(counts.items()):  # batches in send_at order, each time its own batches
            tx.run("INSERT INTO launch_groups (send_at, delta) VALUES (?, ?)", (at, batch * batch_size - pos))
            for i in range(0, n, batch_size):
                sizes[batch] = (at, min(batch_size, n - i))
                batch += 1
            pos += n
        keys = {(int(f), lang, name) for f, lang, name in tx.rows("SELECT DISTINCT f, lang, name FROM launch_plan")}
        plan = texts(*self._text_keys(tx, keys))
        self._insert_recipients(tx, tenant, campaign_id, plan, batch, batch_size, now, expires_at, chunk)
        return sizes

    @staticmethod
    def _text_keys(tx: Any, keys: set[tuple[int, str, str]],
                   source: str = "launch_plan") -> tuple[list[TextKey], Callable[[Sequence[TextKey]], tuple[TextKey, int]]]:  # fmt: skip
        """Each distinct ``(first, language, name)`` of ``launch_plan`` (or ``source``: rows of its
        columns) as a ``TextKey``, and a function that finds which of some keys comes first in send
        order, with its recipient (the one a render error names: read only then)."""
        out = [TextKey(key=f"{f}\x01{lang}\x01{name}", first_name=name or None,
                       language=None if lang == "\x02" else lang, first=bool(f)) for f, lang, name in sorted(keys)]  # fmt: skip

        def first(some: Sequence[TextKey]) -> tuple[TextKey, int]:
            found = []
            for k in some:
                f, lang, name = k.key.split("\x01", 2)
                row = tx.one(f"SELECT pos, id FROM {source} lp WHERE f = ? AND lang = ? AND name = ? ORDER BY pos LIMIT 1",
                             (int(f), lang, name))  # fmt: skip
                found.append((int(row[0]), int(row[1]), k))
            _pos, sid, k = min(found, key=lambda x: x[0])
            return k, sid

        return out, first

    def _insert_recipients(self, tx: Any, tenant: str, campaign_id: int, plan: SetTexts, batches: int, batch_size: int,
                           now: float, expires_at: float | None, chunk: int | None = None) -> None:  # fmt: skip
        """``launch_plan`` into ``campaign_recipients``: one ``INSERT ... SELECT``, the texts joined in SQL
        (with ``chunk``: the first ``chunk`` batches; the rest into ``campaign_plan``)."""
        stride = len(plan.targets)
        width = max(len(p) for p in plan.pieces.values())
        pieces = ", ".join(f"p{i} TEXT NOT NULL" for i in range(width))
        tx.run(_temp(tx, "launch_texts", f"(f {'BIGINT' if tx.pg else 'INTEGER'}, lang TEXT, name TEXT, {pieces}, "
                                         "PRIMARY KEY (f, lang, name))"))  # fmt: skip
        rows = []
        for key, p in plan.pieces.items():
            f, lang, name = key.split("\x01", 2)
            rows.append((int(f), lang, name, *p))
        tx.many(f"INSERT INTO launch_texts VALUES ({', '.join('?' * (width + 3))})", rows)
        codes = b""
        slots = batches * batch_size
        now_slots = slots if chunk is None else min(slots, max(1, chunk) * batch_size)  # written in this transaction
        if stride:
            start = self._take_link_range(tx, tenant, campaign_id, plan, slots, batch_size, now, expires_at)
            if now_slots < slots:  # the whole range's codes exist (else the error now, before anything is written)
                plan.codes(start + slots * stride - 1, 1)
            codes = plan.codes(start, now_slots * stride)
        cut = f" WHERE q.slot < {now_slots}" if now_slots < slots else ""
        plan_q = ("(SELECT p.id, p.phone, p.send_at, p.zone, p.f, p.lang, p.name, p.pos + g.delta AS slot FROM launch_plan p "
                  "JOIN launch_groups g ON g.send_at = p.send_at) q")  # fmt: skip
        tx.run(f"INSERT INTO campaign_recipients ({', '.join(_FREEZE_COLS)}) SELECT ?, ?, q.id, q.phone, NULL, q.send_at, "
               f"q.zone, {_text_expr(tx, stride, plan.length)}, q.slot / {batch_size}, q.slot - (q.slot / {batch_size}) * "
               f"{batch_size} FROM {plan_q} JOIN launch_texts t ON t.f = q.f AND t.lang = q.lang AND t.name = q.name{cut}",
               (tenant, campaign_id, *([codes] * stride)))  # fmt: skip
        if now_slots < slots:  # the rest of the plan, durable: ``freeze_next`` writes it a chunk at a time
            tx.run("INSERT INTO campaign_plan (tenant, campaign_id, slot, subscriber_id, phone, send_at, tz, f, lang, name) "
                   f"SELECT ?, ?, q.slot, q.id, q.phone, q.send_at, q.zone, q.f, q.lang, q.name FROM {plan_q} "
                   f"WHERE q.slot >= {now_slots} ORDER BY q.slot", (tenant, campaign_id))  # fmt: skip
            tx.many("INSERT INTO campaign_plan_texts (tenant, campaign_id, f, lang, name, pieces) VALUES (?, ?, ?, ?, ?, ?)",
                    [(tenant, campaign_id, *r[:3], _json.encode(list(r[3:])).decode()) for r in rows])  # fmt: skip

    def plan_pending(self, tenant: str, campaign_id: int, batch_size: int) -> int | None:
        """The first batch of the campaign whose recipients are still only planned (``campaign_plan``:
        a freeze in chunks not finished); None when every recipient is written."""
        with self._tx() as tx:
            row = tx.one("SELECT MIN(slot) FROM campaign_plan WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))
        return None if row is None or row[0] is None else int(row[0]) // batch_size

    def freeze_next(self, tenant: str, campaign_id: int, *, batches: int, batch_size: int,
                    codes: Callable[[int, int], bytes] | None) -> int | None:  # fmt: skip
        """Write the next ``batches`` batches of a plan (``freeze_set(chunk=...)``) into
        ``campaign_recipients``, and take them out of ``campaign_plan``, in one transaction: the rows
        ``freeze_set`` writes in one go (the same texts: the pieces stored with the plan around the
        codes of the same link numbers, ``codes(first number, count)`` as ``SetTexts.codes``). The
        first batch still planned after it; None when none is (then the plan's texts are gone too)."""
        with self._tx() as tx:
            row = tx.one("SELECT MIN(slot) FROM campaign_plan WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))
            if row is None or row[0] is None:
                return None
            lo = int(row[0]) // batch_size * batch_size
            hi = lo + max(1, batches) * batch_size
            rng = tx.one("SELECT start, stride, length, count FROM link_ranges WHERE tenant = ? AND campaign_id = ?",
                         (tenant, campaign_id))  # fmt: skip
            start, stride, length, count = (int(rng[0]), int(rng[1]), int(rng[2]), int(rng[3])) if rng else (0, 0, 0, 0)
            texts = [(int(f), lang, name, *msgspec.json.decode(pieces)) for f, lang, name, pieces in tx.rows(
                "SELECT f, lang, name, pieces FROM campaign_plan_texts WHERE tenant = ? AND campaign_id = ?",
                (tenant, campaign_id))]  # fmt: skip
            _drop_launch_temps(tx)
            width = max(len(t) for t in texts) - 3
            tx.run(_temp(tx, "launch_texts", f"(f {'BIGINT' if tx.pg else 'INTEGER'}, lang TEXT, name TEXT, "
                                             f"{', '.join(f'p{i} TEXT NOT NULL' for i in range(width))}, PRIMARY KEY (f, lang, name))"))  # fmt: skip
            tx.many(f"INSERT INTO launch_texts VALUES ({', '.join('?' * (width + 3))})", texts)
            block = b""
            if stride:
                assert codes is not None, "a plan with links needs its codes"
                block = codes(start + lo * stride, min(hi * stride, count) - lo * stride)  # the range's own numbers
            tx.run(f"INSERT INTO campaign_recipients ({', '.join(_FREEZE_COLS)}) SELECT ?, ?, q.subscriber_id, q.phone, "
                   f"NULL, q.send_at, q.tz, {_text_expr(tx, stride, length, lo)}, q.slot / {batch_size}, q.slot - "
                   f"(q.slot / {batch_size}) * {batch_size} FROM campaign_plan q JOIN launch_texts t ON t.f = q.f AND "
                   "t.lang = q.lang AND t.name = q.name WHERE q.tenant = ? AND q.campaign_id = ? AND q.slot >= ? AND "
                   "q.slot < ?", (tenant, campaign_id, *([block] * stride), tenant, campaign_id, lo, hi))  # fmt: skip
            tx.run("DELETE FROM campaign_plan WHERE tenant = ? AND campaign_id = ? AND slot < ?", (tenant, campaign_id, hi))
            row = tx.one("SELECT MIN(slot) FROM campaign_plan WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))
            if row is None or row[0] is None:
                tx.run("DELETE FROM campaign_plan_texts WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))
            _drop_launch_temps(tx)
        self._links_changed()
        return None if row is None or row[0] is None else int(row[0]) // batch_size

    def url_like_names(self, tenant: str) -> bool:
        """Whether a subscriber's first name could be read as a URL in a text (``links.find_urls``:
        ``://`` or ``www.``): then a streamed launch cannot know its links from its first chunk."""
        with self._tx() as tx:
            return tx.one(f"SELECT 1 FROM subscribers WHERE tenant = ? AND (first_name LIKE ? OR first_name "
                          f"{'ILIKE' if tx.pg else 'LIKE'} ?) LIMIT 1", (tenant, "%://%", "%www.%")) is not None  # fmt: skip

    def stream_pending(self, tenant: str, campaign_id: int, batch_size: int) -> int | None:
        """The first batch of a streamed freeze not yet written (``campaign_streams``); None when the
        campaign has no stream under way."""
        with self._tx() as tx:
            row = tx.one("SELECT next_slot FROM campaign_streams WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))
        return None if row is None else int(row[0]) // batch_size

    def freeze_stream(self, tenant: str, campaign_id: int, include: Sequence[int], exclude: Sequence[int],
                      ids: Sequence[int], *, batch_size: int, chunk: int, smart_window_s: float, reads_name: bool,
                      send_at: float, zones: Callable[[list[str | None]], Mapping[str | None, tuple[str, float | None]]],
                      texts: Callable[[list[TextKey], Callable[[Sequence[TextKey]], tuple[TextKey, int]]], SetTexts],
                      now: float, expires_at: float | None = None,
                      lines: dict[int, list[tuple[str, str, str]]] | None = None,
                      start: tuple[int, int] | None = None,
                      begun: Callable[[int, int, bool], None] | None = None) -> int | None:  # fmt: skip
        """Freeze the next chunk of a streamed launch (docs/ARCHITECTURE.md, "A streamed freeze"), one
        transaction: the next ``chunk`` batches' worth of kept recipients in subscriber id order after
        the stored cursor (the first call starts the stream: the audience as of ``now``, everyone sent
        at ``send_at``), written as ``freeze_set`` writes them (the same slots, texts and link numbers),
        their batches with them; the cursor moved on. Returns the first batch still to be frozen, None
        when the stream is done, -1 when the campaign was frozen already (nothing written). ``lines``:
        filled, once the chunk is committed, with each of its batches' ``(phone, text, tz)`` in slot
        order (``batch_lines``, read in the chunk's transaction: the bodies need no read of their own).

        Two chunks at once (PostgreSQL, each on a connection of its own; docs/ARCHITECTURE.md, "Two
        chunks of a stream at once"): ``begun(last_id, next_slot, done)`` is called once this chunk's
        audience is known (before its rows are written), so the next chunk can start from there
        (``start``: ``(after_id, next_slot)`` instead of the stored cursor, which the chunk before has
        not committed yet). The cursor is moved only from the slot this chunk starts at: a chunk whose
        chunk before did not commit (its row lock waited for, then the cursor found elsewhere) is a
        ``Conflict``, rolled back whole."""
        need = max(1, chunk) * batch_size
        written: dict[int, list[tuple[str, str, str]]] = {}
        with self._tx() as tx:
            if tx.pg:  # a chunk's statements are short: JIT compiling them cost more than it saved (70 ms a chunk)
                tx.run("SET LOCAL jit = off")
            cur = tx.one("SELECT after_id, next_slot, max_id, bound, as_of, send_at, targets FROM campaign_streams "
                         "WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))  # fmt: skip
            if cur is None:
                if tx.one("SELECT 1 FROM campaign_batches WHERE tenant = ? AND campaign_id = ? LIMIT 1",
                          (tenant, campaign_id)) is not None:  # fmt: skip
                    return -1
                # Every recipient is a subscriber of the tenant with an id up to the largest now: their
                # count bounds the link numbers the stream can use (its range, shrunk at the end).
                n, top = tx.one("SELECT COUNT(*), MAX(id) FROM subscribers WHERE tenant = ?", (tenant,)) or (0, None)
                after, base, max_id, bound, as_of, targets = 0, 0, int(top or 0), int(n or 0), now, None
            else:
                after, base, max_id, bound, as_of, send_at = (int(cur[0]), int(cur[1]), int(cur[2]), int(cur[3]),
                                                              float(cur[4]), float(cur[5]))  # fmt: skip
                targets = None if cur[6] is None else tuple(msgspec.json.decode(cur[6]))
                if start is not None:
                    after, base = start
            _drop_launch_temps(tx)
            got = self._stream_audience(tx, tenant, include, exclude, ids, after, max_id, as_of, send_at,
                                        smart_window_s, need)  # fmt: skip
            done = got < need
            announced = None
            if begun is not None:
                top = tx.one("SELECT MAX(id) FROM launch_aud") if got else None
                announced = int(top[0]) if top and top[0] is not None else after
                if tx.pg:  # held to the end of this transaction: the chunk starting from here waits on it
                    tx.one("SELECT pg_advisory_xact_lock(hashtext(?), ?)", (_stream_key(tenant, campaign_id), base + got))
                begun(announced, base + got, done)
            last_id = after
            if got:
                last_id = self._stream_rows(tx, tenant, campaign_id, base, batch_size, bound, reads_name, send_at,
                                            zones, texts, targets, now, expires_at)  # fmt: skip
            if announced is not None and last_id != announced:  # (every kept subscriber has a zone row)
                raise StorageError(f"a stream's chunk wrote up to subscriber {last_id}, announced {announced}")
            if got and lines is not None:
                for b, phone, text, tz in tx.rows("SELECT batch, phone, text, tz FROM campaign_recipients WHERE tenant = ? "
                                                  "AND campaign_id = ? AND batch >= ? AND batch <= ? ORDER BY batch, idx",
                                                  (tenant, campaign_id, base // batch_size, (base + got - 1) // batch_size)):  # fmt: skip
                    written.setdefault(int(b), []).append((phone, text, tz))
            sizes = {b: (send_at, min(batch_size, base + got - b * batch_size))
                     for b in range(base // batch_size, -(-(base + got) // batch_size))}  # fmt: skip
            if sizes or base == 0:  # (an empty audience: the marker batch)
                _write_batches(tx, tenant, campaign_id, sizes, now)
            # The cursor moves only from where this chunk started: a chunk started beside the one
            # before waits here until that one's transaction is over (the lock it took before
            # announcing where this one starts), then finds the cursor moved (it committed) or not
            # (it rolled back: this one is refused, rolled back too).
            if start is not None and tx.pg:
                tx.one("SELECT pg_advisory_xact_lock(hashtext(?), ?)", (_stream_key(tenant, campaign_id), base))
            if done:
                moved = tx.run("DELETE FROM campaign_streams WHERE tenant = ? AND campaign_id = ? AND next_slot = ?",
                               (tenant, campaign_id, base))  # fmt: skip
                tx.run("UPDATE link_ranges SET count = (?) * stride WHERE tenant = ? AND campaign_id = ?",
                       (-(-(base + got) // batch_size) * batch_size, tenant, campaign_id))  # the numbers past the last batch freed
            elif cur is None:
                moved = tx.run("INSERT INTO campaign_streams (tenant, campaign_id, after_id, next_slot, max_id, bound, "
                               "as_of, send_at, targets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                               (tenant, campaign_id, last_id, base + got, max_id, bound, as_of, send_at))  # fmt: skip
            else:
                moved = tx.run("UPDATE campaign_streams SET after_id = ?, next_slot = ? WHERE tenant = ? AND "
                               "campaign_id = ? AND next_slot = ?", (last_id, base + got, tenant, campaign_id, base))  # fmt: skip
            if cur is not None and moved != 1:
                raise Conflict("a stream's chunk before this one was not written", code="stream_chunk_lost")
            if not done:
                tx.run("UPDATE campaign_streams SET targets = (SELECT targets FROM link_ranges r WHERE r.tenant = ? AND "
                       "r.campaign_id = ?) WHERE tenant = ? AND campaign_id = ? AND targets IS NULL",
                       (tenant, campaign_id, tenant, campaign_id))  # fmt: skip
            _drop_launch_temps(tx)
        self._links_changed()
        if lines is not None:
            lines.update(written)
        return None if done else (base + got) // batch_size

    def _stream_audience(self, tx: Any, tenant: str, include: Sequence[int], exclude: Sequence[int], ids: Sequence[int],
                         after: int, max_id: int, as_of: float, send_at: float, smart_window_s: float, need: int) -> int:  # fmt: skip
        """``launch_aud``: the first ``need`` kept recipients with an id above ``after`` (consent
        confirmed and smart sending's window judged now; segment members who joined at or before
        ``as_of``; ids up to ``max_id``), read in id order a window of candidates at a time (the
        candidates are walked by their indexes in id order, never the whole remaining audience)."""
        real, whole = ("DOUBLE PRECISION", "BIGINT") if tx.pg else ("REAL", "INTEGER")
        tx.run(_temp(tx, "launch_aud", f"(id {whole} PRIMARY KEY, phone TEXT, first_name TEXT, time_zone TEXT, "
                                       f"language TEXT, sent {real}, stat {real})"))  # fmt: skip
        sent = _sent_expr(tx, _pending(tx, tenant))
        skip = ""
        if exclude:
            skip = (f" AND NOT EXISTS (SELECT 1 FROM {tx.each('bigint')} CROSS JOIN segment_members x WHERE x.tenant = "
                    "s.tenant AND x.segment_id = value AND x.subscriber_id = s.id)")  # fmt: skip
        last = _last(tx)
        # Smart sending judged on the rows inserted (a filter over the subqueries' columns in the same
        # statement would evaluate each correlated subquery once per mention: measured 2.4x the insert).
        drop = (f"DELETE FROM launch_aud AS a WHERE a.id > ? AND {last} IS NOT NULL AND {float(send_at)!r} - {last} < "
                f"{float(smart_window_s)!r}") if smart_window_s > 0 else None  # fmt: skip
        got, cursor = 0, after
        while got < need:
            want = need - got
            parts, params = [], []
            for seg in sorted(set(include)):
                parts.append("SELECT sid FROM (SELECT m.subscriber_id AS sid FROM segment_members m WHERE m.tenant = ? AND "
                             "m.segment_id = ? AND m.subscriber_id > ? AND m.subscriber_id <= ? AND m.since <= ? "
                             "ORDER BY m.subscriber_id LIMIT ?) p" + str(len(parts)))  # fmt: skip
                params += [tenant, seg, cursor, max_id, as_of, want]
            listed = sorted(i for i in set(ids) if cursor < i <= max_id)[:want]
            if listed:
                parts.append(f"SELECT value AS sid FROM {tx.each('bigint')}")
                params.append(tx.array(listed))
            if not parts:
                break
            cands = (f"(SELECT sid FROM ({' UNION '.join(parts)}) u ORDER BY sid LIMIT {int(want)})" if len(parts) > 1
                     else f"({parts[0]})")  # fmt: skip
            row = tx.one(f"SELECT COUNT(*), MAX(c.sid) FROM {cands} c", params)
            scanned, top = (int(row[0]), row[1]) if row else (0, None)
            if not scanned:
                break
            # PostgreSQL: the candidates' id range stated, so the subscribers are read by their key's
            # range, not a whole-table scan joined by hash (its plan for a LIMIT of thousands: a chunk
            # read every subscriber of the tenant, a launch read them once a chunk).
            span = " AND s.id > ? AND s.id <= ?" if tx.pg else ""
            inner = (f"SELECT s.id, s.phone, s.first_name, s.time_zone, s.language, {sent} AS sent, (SELECT "
                     "st.last_message_at FROM subscriber_stats st WHERE st.subscriber_id = s.id AND st.tenant = s.tenant) "
                     f"AS stat FROM {cands} c CROSS JOIN subscribers s WHERE s.id = c.sid AND s.tenant = ?{span} AND "
                     f"s.consent = 'confirmed'{skip}")  # fmt: skip
            got += tx.run(f"INSERT INTO launch_aud (id, phone, first_name, time_zone, language, sent, stat) {inner}",
                          [*params, tenant, *([cursor, int(top)] if tx.pg else []),
                           *([tx.array(sorted(set(exclude)))] if exclude else [])])  # fmt: skip
            if drop is not None:
                got -= tx.run(drop, (cursor,))
            cursor = int(top)
            if scanned < want:  # the candidates ran out
                break
        return got

    def _stream_rows(self, tx: Any, tenant: str, campaign_id: int, base: int, batch_size: int, bound: int,
                     reads_name: bool, send_at: float,
                     zones: Callable[[list[str | None]], Mapping[str | None, tuple[str, float | None]]],
                     texts: Callable[[list[TextKey], Callable[[Sequence[TextKey]], tuple[TextKey, int]]], SetTexts],
                     targets: tuple[str, ...] | None, now: float, expires_at: float | None) -> int:  # fmt: skip
        """``launch_aud``'s recipients written into the slots from ``base`` (``freeze_set``'s rows for
        one send time: slot order is id order); the link range taken at the stream's first links
        (``bound`` slots: shrunk when the stream ends). The chunk's last subscriber id."""
        real, whole = ("DOUBLE PRECISION", "BIGINT") if tx.pg else ("REAL", "INTEGER")
        tx.run(_temp(tx, "launch_zones", f"(tz TEXT PRIMARY KEY, zone TEXT NOT NULL, send_at {real})"))
        by_key: dict[str, str] = {}
        for z, (zone, _at) in zones([z for (z,) in tx.rows("SELECT DISTINCT time_zone FROM launch_aud")]).items():
            by_key.setdefault(z or "", zone)  # NULL and '' both mean "no zone": the tenant's
        tx.many("INSERT INTO launch_zones (tz, zone, send_at) VALUES (?, ?, ?)", [(k, z, send_at) for k, z in by_key.items()])
        joined = "launch_aud a JOIN launch_zones z ON z.tz = COALESCE(a.time_zone, '')"
        if tx.pg:
            # No written plan: each chunk's slots are its rows' rank in id order, computed where the
            # recipients are inserted (the plan's copy, a temporary table with its key, was a fifth of
            # a chunk's statements on the server; SQLite numbers rows by inserting them in order).
            source = f"(SELECT row_number() OVER (ORDER BY a.id) AS pos, {_plan_named(tx, reads_name)} FROM {joined})"
            n, top = tx.one(f"SELECT COUNT(*), MAX(a.id) FROM {joined}") or (0, 0)
            keys = {(int(f), lang, name) for f, lang, name in
                    tx.rows(f"SELECT DISTINCT {_plan_named(tx, reads_name, keys_only=True)} FROM {joined}")}  # fmt: skip
        else:
            source = "launch_plan"
            tx.run(_temp(tx, "launch_plan", f"(pos {whole} PRIMARY KEY, id {whole}, phone TEXT, send_at {real}, zone TEXT, "
                                            f"f {whole}, lang TEXT, name TEXT)"))  # fmt: skip
            tx.run(f"INSERT INTO launch_plan (id, phone, send_at, zone, f, lang, name) SELECT {_plan_cols(tx, reads_name)} "
                   f"FROM {joined} ORDER BY a.id")  # fmt: skip
            n, top = tx.one("SELECT COUNT(*), MAX(id) FROM launch_plan") or (0, 0)
            keys = {(int(f), lang, name) for f, lang, name in tx.rows("SELECT DISTINCT f, lang, name FROM launch_plan")}
        plan = texts(*self._text_keys(tx, keys, source))
        if targets is not None and plan.targets != targets or targets is None and base > 0 and plan.targets:
            raise Conflict("a streamed launch's texts link other URLs than its first chunk's", code="stream_links_differ")
        start = 0
        if plan.targets:
            if targets is None:  # the stream's first links: its range, as large as it can need
                start = self._take_link_range(tx, tenant, campaign_id, plan, max(bound, base + int(n)), batch_size, now,
                                              expires_at)  # fmt: skip
            else:
                row = tx.one("SELECT start FROM link_ranges WHERE tenant = ? AND campaign_id = ?", (tenant, campaign_id))
                start = int(row[0])
            plan.codes(start + max(bound, base + int(n)) * len(plan.targets) - 1, 1)  # the whole range exists
        self._write_text_rows(tx, tenant, campaign_id, plan, start, base, int(n), batch_size, source)
        return int(top)

    def _write_text_rows(self, tx: Any, tenant: str, campaign_id: int, plan: SetTexts, start: int, base: int, n: int,
                         batch_size: int, source: str = "launch_plan") -> None:  # fmt: skip
        """``launch_plan`` (or ``source``: rows of its columns; slots ``base`` .. ``base + n - 1``) into
        ``campaign_recipients``, the texts joined in SQL."""
        stride = len(plan.targets)
        width = max(len(p) for p in plan.pieces.values())
        pieces = ", ".join(f"p{i} TEXT NOT NULL" for i in range(width))
        tx.run(_temp(tx, "launch_texts", f"(f {'BIGINT' if tx.pg else 'INTEGER'}, lang TEXT, name TEXT, {pieces}, "
                                         "PRIMARY KEY (f, lang, name))"))  # fmt: skip
        rows = [(int(f), lang, name, *p) for f, lang, name, p in
                ((*key.split("\x01", 2), p) for key, p in plan.pieces.items())]  # fmt: skip
        tx.many(f"INSERT INTO launch_texts VALUES ({', '.join('?' * (width + 3))})", rows)
        codes = plan.codes(start + base * stride, n * stride) if stride else b""
        tx.run(f"INSERT INTO campaign_recipients ({', '.join(_FREEZE_COLS)}) SELECT ?, ?, q.id, q.phone, NULL, q.send_at, "
               f"q.zone, {_text_expr(tx, stride, plan.length, base)}, q.slot / {batch_size}, q.slot - (q.slot / "
               f"{batch_size}) * {batch_size} FROM (SELECT p.id, p.phone, p.send_at, p.zone, p.f, p.lang, p.name, p.pos + "
               f"{int(base) - 1} AS slot FROM {source} p) q JOIN launch_texts t ON t.f = q.f AND t.lang = q.lang AND "
               "t.name = q.name", (tenant, campaign_id, *([codes] * stride)))  # fmt: skip

    def _take_link_range(self, tx: Any, tenant: str, campaign_id: int, plan: SetTexts, slots: int, batch_size: int,
                         now: float, expires_at: float | None) -> int:  # fmt: skip
        """Store the launch's link range at the end of the tenant's numbers of its code length (read in
        this transaction; on PostgreSQL the tenant's launches take their ranges one at a time, by a
        transaction-scoped advisory lock, so two concurrent launches get consecutive ranges); its start."""
        if tx.pg:
            tx.one("SELECT pg_advisory_xact_lock(hashtext(?))", (f"sluice:link_ranges:{tenant}",))
        end = tx.one("SELECT MAX(start + count) FROM link_ranges WHERE tenant = ? AND length = ?", (tenant, plan.length))
        start = int(end[0]) if end and end[0] is not None else 0
        tx.run("INSERT INTO link_ranges (tenant, campaign_id, length, start, count, stride, batch_size, targets, "
               "created_at, expires_at, holes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]')",
               (tenant, campaign_id, plan.length, start, slots * len(plan.targets), len(plan.targets), batch_size,
                _json.encode(list(plan.targets)).decode(), now, expires_at))  # fmt: skip
        self._shadow_range(tx, tenant, plan.length, start, slots * len(plan.targets))
        return start

    def batches(self, tenant: str, campaign_id: int) -> list[BatchRow]:
        with self._tx() as tx:
            rows = tx.rows("SELECT campaign_id, batch, send_at, size, job_id, accepted FROM campaign_batches "
                           "WHERE tenant = ? AND campaign_id = ? AND batch >= 0 ORDER BY batch",
                           (tenant, campaign_id))  # fmt: skip
        return [BatchRow(campaign_id=r[0], batch=r[1], send_at=r[2], size=r[3], job_id=r[4], accepted=r[5])
                for r in rows]  # fmt: skip

    def batch_recipients(self, tenant: str, campaign_id: int, batch: int) -> list[RecipientRow]:
        with self._tx() as tx:
            job = tx.one("SELECT job_id FROM campaign_batches WHERE tenant = ? AND campaign_id = ? AND batch = ?",
                         (tenant, campaign_id, batch))  # fmt: skip
            rows = tx.rows(f"SELECT {_REC_COLS} FROM campaign_recipients WHERE tenant = ? AND campaign_id = ? "
                           "AND batch = ? ORDER BY idx", (tenant, campaign_id, batch))  # fmt: skip
        if job is None or not job[0]:  # not accepted yet (or the held ones): the states as stored
            return [_rec(r) for r in rows]
        return [_rec(r[:10] + ("submitted" if r[10] == "planned" else r[10],) + r[11:]) for r in rows]  # ``STATE``

    def batch_lines(self, tenant: str, campaign_id: int, batch: int) -> list[tuple[str, str, str]]:
        """The batch's ``(phone, text, tz)`` in slot order: what its NDJSON job holds, nothing more."""
        with self._tx() as tx:  # the rows as the driver gives them: tuples already
            return tx.rows("SELECT phone, text, tz FROM campaign_recipients WHERE tenant = ? AND campaign_id = ? AND "
                           "batch = ? ORDER BY idx", (tenant, campaign_id, batch))  # fmt: skip

    def campaign_recipients(self, tenant: str, campaign_id: int, *, after: int = 0, limit: int = 1000) -> list[RecipientRow]:
        with self._tx() as tx:
            rows = tx.rows(f"SELECT {_REC_READ} FROM campaign_recipients r WHERE r.tenant = ? AND r.campaign_id = ? "
                           "AND r.subscriber_id > ? ORDER BY r.subscriber_id LIMIT ?",
                           (tenant, campaign_id, after, limit))  # fmt: skip
        return [_rec(r) for r in rows]

    def batch_submitted(self, tenant: str, campaign_id: int, batch: int, *, job_id: str, accepted: int,
                        rejected: Sequence[int], now: float) -> None:  # fmt: skip
        with self._tx() as tx:
            tx.run("UPDATE campaign_batches SET job_id = ?, accepted = ? WHERE tenant = ? AND campaign_id = ? AND batch = ?",
                   (job_id, accepted, tenant, campaign_id, batch))  # fmt: skip
            # No state written per recipient: the batch's job id says they were submitted (``STATE``).
            for idx in rejected:
                tx.run("UPDATE campaign_recipients SET state = 'rejected', state_at = ? WHERE tenant = ? AND "
                       "campaign_id = ? AND batch = ? AND idx = ?", (now, tenant, campaign_id, batch, idx))

    def recipient_state(self, tenant: str, job_id: str, idx: int, *, state: str, message_id: str | None,
                        at: float) -> RecipientRow | None:  # fmt: skip
        """Move the recipient in slot ``idx`` of gateway job ``job_id`` to ``state`` (forward only);
        the row after the change, or None when no campaign recipient holds that slot."""
        with self._tx() as tx:
            row = tx.one("SELECT campaign_id, batch FROM campaign_batches WHERE tenant = ? AND job_id = ?",
                         (tenant, job_id))  # fmt: skip
            if row is None:
                return None
            cid, batch = row
            cur = tx.one(f"SELECT {_REC_READ} FROM campaign_recipients r WHERE r.tenant = ? AND r.campaign_id = ? AND "
                         "r.batch = ? AND r.idx = ?", (tenant, cid, batch, idx))  # fmt: skip
            if cur is None:
                return None
            rec = _rec(cur)
            if _RANK.get(state, 0) > _RANK.get(rec.state, 0):
                mid = message_id or rec.message_id  # its cost, if the price came first (report_sql._COST_OF)
                tx.run("UPDATE campaign_recipients SET state = ?, state_at = ?, message_id = COALESCE(?, message_id), "
                       "cost = COALESCE(cost, (SELECT mc.cost FROM message_costs mc WHERE mc.tenant = ? AND "
                       "mc.message_id = ?)) WHERE tenant = ? AND campaign_id = ? AND subscriber_id = ?",
                       (state, at, message_id, tenant, mid, tenant, cid, rec.subscriber_id))  # fmt: skip
                return msgspec.structs.replace(rec, state=state, state_at=at, message_id=message_id or rec.message_id)
            return rec

    # ---- short links and clicks -----------------------------------------------------------------
    @property
    def link_keys(self) -> dict[str, bytes]:
        """tenant -> link key: what range codes are decoded with (``resolve_codes``). One dict for the
        store's life, shared with its link readers (``set_link_keys`` fills it in place)."""
        keys = self.__dict__.get("_link_keys")
        if keys is None:
            keys = self.__dict__["_link_keys"] = {}
        return keys

    def set_link_keys(self, keys: Mapping[str, bytes]) -> None:
        self.link_keys.update(keys)
        self._links_changed()

    @property
    def link_table_version(self) -> int:
        """Bumped by every change this store object makes to what ``link_table`` reads (ranges, their
        written slots, shadows, keys): a redirect's in-memory table older than it is not used."""
        return int(self.__dict__.get("_link_table_version", 0))

    def _links_changed(self) -> None:
        self.__dict__["_link_table_version"] = self.link_table_version + 1

    def link_table(self) -> LinkTable:
        """Every range with which of its slots hold a recipient with its codes, and the shadowed
        codes (docs/ARCHITECTURE.md, "A range code answered without a read"): the redirect's table."""
        keys = dict(self.link_keys)
        with self._tx() as tx:
            ranges = tx.rows("SELECT tenant, campaign_id, length, start, count, stride, batch_size, targets, created_at, "
                             "expires_at, holes FROM link_ranges")  # fmt: skip
            sizes: dict[tuple[str, int], dict[int, int]] = {}
            for t, c, b, n in tx.rows("SELECT b.tenant, b.campaign_id, b.batch, b.size FROM campaign_batches b JOIN "
                                      "link_ranges g ON g.tenant = b.tenant AND g.campaign_id = b.campaign_id "
                                      "WHERE b.batch >= 0"):  # fmt: skip
                sizes.setdefault((t, int(c)), {})[int(b)] = int(n)
            pending = {(t, int(c)): int(m) for t, c, m in tx.rows(
                "SELECT tenant, campaign_id, MIN(slot) FROM campaign_plan GROUP BY tenant, campaign_id")}  # fmt: skip
            shadows = [c for (c,) in tx.rows("SELECT code FROM link_shadows")]
        out = []
        for t, c, length, start, count, stride, size, targets, created, expires, holes in ranges:
            by = sizes.get((t, int(c)), {})
            first = pending.get((t, int(c)))
            out.append(link_table.RangeSlots(
                tenant=t, campaign_id=int(c), length=int(length), start=int(start), count=int(count), stride=int(stride),
                batch_size=int(size), targets=tuple(msgspec.json.decode(targets)), created_at=created, expires_at=expires,
                sizes=tuple(by.get(b, 0) for b in range(max(by, default=-1) + 1)),
                holes=None if holes is None else frozenset(msgspec.json.decode(holes)),
                pending=None if first is None else first // int(size) * int(size)))  # fmt: skip
        return link_table.LinkTable(out, shadows, keys)

    def slot_recipients(self, slots: Sequence[tuple[str, int, int, int]]) -> dict[tuple[str, int, int, int], tuple[int, str, float | None]]:
        """``(tenant, campaign, batch, idx)`` -> the recipient in that slot: ``(subscriber, phone,
        delivered_at or None)``; one statement per 500 slots (what a range hit's click needs)."""
        out: dict[tuple[str, int, int, int], tuple[int, str, float | None]] = {}
        with self._tx() as tx:
            for i in range(0, len(slots), 500):
                chunk = list(slots[i:i + 500])
                if tx.pg:
                    rowset = "unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) AS s (tenant, campaign_id, batch, idx)"
                    params: list[Any] = [list(c) for c in zip(*chunk, strict=True)]
                else:
                    rowset = ("(SELECT value ->> 0 AS tenant, value ->> 1 AS campaign_id, value ->> 2 AS batch, "
                              "value ->> 3 AS idx FROM json_each(?)) AS s")  # fmt: skip
                    params = [_json.encode(chunk).decode()]
                for t, c, b, k, sid, phone, delivered in tx.rows(
                        f"SELECT s.tenant, s.campaign_id, s.batch, s.idx, r.subscriber_id, r.phone, CASE WHEN r.state = "
                        f"'delivered' THEN r.state_at END FROM {rowset} JOIN campaign_recipients r ON r.tenant = s.tenant "
                        "AND r.campaign_id = s.campaign_id AND r.batch = s.batch AND r.idx = s.idx", params):  # fmt: skip
                    out[(t, int(c), int(b), int(k))] = (int(sid), phone, delivered)
        return out

    def _link_ends(self, tx: Any) -> dict[tuple[str, int], int]:
        return {(t, int(n)): int(e) for t, n, e in tx.rows(
            "SELECT tenant, length, MAX(start + count) FROM link_ranges GROUP BY tenant, length")}  # fmt: skip

    def _shadow_rows(self, tx: Any, codes: Sequence[str]) -> None:
        """List in ``link_shadows`` every new row code some tenant's key decodes into that tenant's
        ranges (the row wins: the redirect's table asks the store for it). Row codes minted by the
        service never do for their own tenant (``links.in_range_half``); another tenant's, or a row
        written as is, may."""
        keys = self.link_keys
        ends = self._link_ends(tx) if codes and keys else {}
        if not ends:
            return
        hit = []
        for code in codes:
            for tenant in sorted(keys):
                end = ends.get((tenant, len(code)))
                n = core_links.cipher_for(keys[tenant], len(code)).decode(code) if end else None
                if n is not None and end is not None and n < end:
                    hit.append((code, tenant))
                    break
        if hit:
            tx.many("INSERT INTO link_shadows (code, tenant) VALUES (?, ?) ON CONFLICT DO NOTHING", hit)

    def _shadow_range(self, tx: Any, tenant: str, length: int, start: int, count: int) -> None:
        """A new range of ``tenant``: list in ``link_shadows`` the existing rows whose codes fall in it:
        other tenants' rows, and the tenant's own rows other than its range campaigns' clicked links
        (which are earlier ranges' own codes); row codes the service mints for the tenant never do
        (``links.in_range_half``), rows written as is or from before that rule may. O(those rows)."""
        key = self.link_keys.get(tenant)
        if key is None or count <= 0:
            return
        cipher = core_links.cipher_for(key, length)
        hit = []
        for (code,) in tx.rows("SELECT code FROM short_links WHERE length(code) = ? AND (tenant <> ? OR campaign_id NOT IN "
                               "(SELECT campaign_id FROM link_ranges WHERE tenant = ?))", (length, tenant, tenant)):  # fmt: skip
            n = cipher.decode(code)
            if n is not None and start <= n < start + count:
                hit.append((code, tenant))
        if hit:
            tx.many("INSERT INTO link_shadows (code, tenant) VALUES (?, ?) ON CONFLICT DO NOTHING", hit)

    def links(self, codes: Sequence[str]) -> dict[str, LinkRow]:
        """The links of ``codes`` (``resolve_codes``), with their recipients' numbers and delivery times."""
        with self._tx() as tx:
            return resolve_codes(tx.rows, codes, self.link_keys, "%s" if tx.pg else "?")

    def link(self, code: str) -> LinkRow | None:
        """The link, with its recipient's number and delivery time (indexed reads: redirects are hot)."""
        return self.links((code,)).get(code)

    def link_nowait(self, code: str) -> tuple[bool, LinkRow | None]:
        """``(True, link)`` read on the calling thread when the engine can do it without waiting (SQLite
        with its connection free), else ``(False, None)``: then call ``link`` from a worker thread."""
        read = getattr(self, "read_nowait", None)
        rows = read(_LINK_READ, (code,)) if read is not None else None
        if rows is None:
            return False, None
        if rows:
            return True, LinkRow(**dict(zip(_LINK_NAMES, rows[0], strict=True)))
        if not self.link_keys:
            return True, None
        waited: list[bool] = []

        def query(sql: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
            got = read(sql, params)
            if got is None:
                waited.append(True)
                return []
            return got

        found = resolve_codes(query, (code,), self.link_keys).get(code)
        return (False, None) if waited else (True, found)

    def open_link_reader(self) -> Any:
        """A ``LinkReader`` for the redirect's misses (engines with a connection of its own override this)."""
        return SharedLinkReader(self)

    def existing_links(self, codes: Sequence[str]) -> set[str]:
        """Which of ``codes`` are taken (one query per 500: a launch checks its new links in bulk)."""
        out: set[str] = set()
        with self._tx() as tx:
            for i in range(0, len(codes), 500):
                chunk = list(codes[i:i + 500])
                marks = ", ".join("?" * len(chunk))
                out.update(r[0] for r in tx.rows(f"SELECT code FROM short_links WHERE code IN ({marks})", chunk))
        return out

    def link_exists(self, code: str) -> bool:
        with self._tx() as tx:
            return tx.one("SELECT 1 FROM short_links WHERE code = ?", (code,)) is not None

    def record_click(self, code: str, *, at: float, user_agent: str, verdict: str) -> bool:
        """Store a hit; True when it is the code's first human click (a unique click)."""
        return self.record_clicks([ClickIn(code=code, at=at, user_agent=user_agent, verdict=verdict)]) > 0

    def record_clicks(self, clicks: Sequence[ClickIn]) -> int:
        """Store hits in one transaction; how many were their code's first human click (unique clicks),
        decided against the stored ones in one query."""
        if not clicks:
            return 0
        with self._tx() as tx:
            return self._record_clicks(tx, clicks)

    def record_hits(self, clicks: Sequence[ClickIn], activities: Mapping[str, Sequence[tuple[ShopEvent, str | None]]],
                    *, now: float) -> int:  # fmt: skip
        """The redirect's buffer in one transaction (all or none): the hits, then each tenant's
        ``clicked`` activities through the events batch path (``apply_events``). Unique clicks, as
        ``record_clicks``."""
        with self._tx() as tx:
            unique = self._record_clicks(tx, clicks) if clicks else 0
            for tenant, events in activities.items():
                if events:
                    self._apply_events(tx, tenant, events, now)  # type: ignore[attr-defined]
        return unique

    def _materialise_links(self, tx: Any, codes: Sequence[str]) -> None:
        """Write the ``short_links`` row of each range code among ``codes`` that has none yet (its first
        hit), so what joins ``clicks`` to ``short_links`` (reports, attribution, flows) finds it."""
        if not self.link_keys:
            return
        have: set[str] = set()
        for i in range(0, len(codes), 500):
            chunk = list(codes[i:i + 500])
            marks = ", ".join("?" * len(chunk))
            have.update(r[0] for r in tx.rows(f"SELECT code FROM short_links WHERE code IN ({marks})", chunk))
        missing = [c for c in codes if c not in have]
        if not missing:
            return
        found = resolve_codes(tx.rows, missing, self.link_keys, "%s" if tx.pg else "?")
        if found:
            tx.insert_new("short_links", _LINK_NAMES[:7], sorted((k.code, k.tenant, k.campaign_id, k.subscriber_id,
                                                                  k.target, k.created_at, k.expires_at)
                                                                 for k in found.values()))  # fmt: skip

    def record_link_hits(self, hits: Sequence[HitIn], *, now: float) -> int:
        """The redirect's buffer in one transaction (all or none), set-based and derived from the hits
        themselves (each carries the link it resolved to): the range codes' ``short_links`` rows, the
        hits (unique clicks as ``record_clicks``), each human click's ``clicked`` activity, and the
        aggregates (``last_click_at``, engagement as of ``now``) of the subscribers who clicked, one
        statement per table whatever the number of hits or tenants (PostgreSQL: one in all,
        ``click_sql``). The same rows as ``record_hits``
        given each human click's ``clicked`` activity (tests/campaigns/test_click_flush.py), without
        the events path's per-event work: no id claim (a click's activity is written in its click
        row's transaction, once), no subscriber looked up by number (the link names it)."""
        if not hits:
            return 0
        with self._tx() as tx:
            return self._record_link_hits(tx, hits, now)

    def _record_link_hits(self, tx: Any, hits: Sequence[HitIn], now: float) -> int:
        if tx.pg:  # the same rows in one statement (campaigns/store/click_sql.py)
            return int(tx.rows(click_sql.flush_sql(), click_sql.flush_params(hits, now))[0][0])
        links: dict[str, HitIn] = {}
        for h in hits:
            links.setdefault(h.code, h)
        rows = [(h.code, h.tenant, h.campaign_id, h.subscriber_id, h.target, h.created_at, h.expires_at)
                for _, h in sorted(links.items())]  # fmt: skip
        if tx.pg:  # one statement, the columns bound as arrays (no staging table)
            tx.run("INSERT INTO short_links (code, tenant, campaign_id, subscriber_id, target, created_at, expires_at) "
                   "SELECT * FROM unnest(?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::text[], "
                   "?::double precision[], ?::double precision[]) WHERE true ON CONFLICT DO NOTHING",
                   [list(c) for c in zip(*rows, strict=True)])  # fmt: skip
        else:
            tx.insert_new("short_links", _LINK_NAMES[:7], rows)
        unique = self._record_clicks(tx, [ClickIn(code=h.code, at=h.at, user_agent=h.user_agent, verdict=h.verdict)
                                          for h in hits], materialise=False)  # fmt: skip
        mark_clicked(tx, [(h.tenant, h.campaign_id, h.subscriber_id) for h in hits if h.verdict == "click"])
        clicked = [h for h in hits if h.verdict == "click" and h.phone]
        if clicked:
            tx.insert_many("activities", ("tenant", "subscriber_id", "kind", "at", "properties"), [
                (h.tenant, h.subscriber_id, "clicked", h.at, f'{{"campaign":{int(h.campaign_id)},"code":{_json.encode(h.code).decode()}}}')
                for h in clicked])  # fmt: skip
            # one upsert for every clicker of every tenant, its text the same for every flush
            tx.run(click_sql.stats_sql()[0], click_sql.stats_params([(h.tenant, h.subscriber_id, h.at) for h in clicked], now))
        return unique

    def _record_clicks(self, tx: Any, clicks: Sequence[ClickIn], *, materialise: bool = True) -> int:
        """The hits; with ``materialise`` (hits without their links: ``record_clicks``, ``record_hits``)
        also the range codes' ``short_links`` rows, and the clicked recipients found by their links
        and marked (``mark_clicked``; ``record_link_hits`` marks them from its hits)."""
        if materialise:
            self._materialise_links(tx, sorted({c.code for c in clicks}))
        human = sorted({c.code for c in clicks if c.verdict == "click"})
        if materialise:
            for i in range(0, len(human), 500):
                chunk = human[i:i + 500]
                marks = ", ".join("?" * len(chunk))
                mark_clicked(tx, tx.rows(f"SELECT tenant, campaign_id, subscriber_id FROM short_links WHERE code IN "
                                         f"({marks})", chunk))  # fmt: skip
        seen: set[str] = set()
        for i in range(0, len(human), 500):
            chunk = human[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            seen.update(r[0] for r in tx.rows(f"SELECT DISTINCT code FROM clicks WHERE code IN ({marks}) AND "
                                              f"verdict = 'click'", chunk))  # fmt: skip
        rows = []
        for c in sorted(clicks, key=lambda c: c.at):
            first = c.verdict == "click" and c.code not in seen
            if first:
                seen.add(c.code)
            rows.append((c.code, c.at, c.user_agent[:512], c.verdict, 0 if c.verdict == "click" else 1, int(first)))
        tx.insert_many("clicks", _CLICK_COLS, rows)  # COPY on PostgreSQL
        self._clicks_to_flows(tx, [r[0] for r in rows if r[5]])
        return sum(r[5] for r in rows)

    @staticmethod
    def _clicks_to_flows(tx: Any, first_codes: Sequence[str]) -> None:
        """A flow's link clicked (first human click): its run hears it (clicked / not clicked branches),
        queued in this same transaction, in click order (one query per 500 codes)."""
        found: dict[str, tuple] = {}
        for i in range(0, len(first_codes), 500):
            chunk = list(first_codes[i:i + 500])
            marks = ", ".join("?" * len(chunk))
            for row in tx.rows(f"SELECT l.code, l.tenant, r.subscriber_id, l.send_key FROM flow_run_links l JOIN "
                               f"flow_runs r ON r.id = l.run_id WHERE l.code IN ({marks})", chunk):  # fmt: skip
                found[row[0]] = row
        for code in first_codes:
            row = found.get(code)
            if row is not None:
                enqueue_inputs(tx, row[1], int(row[2]), [F.Click(id=f"click:{code}", key=row[3])])

    def click_counts(self, tenant: str, campaign_id: int) -> ClickCounts:
        with self._tx() as tx:
            row = tx.one("SELECT COALESCE(SUM(c.is_unique), 0), COALESCE(SUM(1 - c.is_bot), 0), "
                         "COALESCE(SUM(c.is_bot), 0) FROM clicks c JOIN short_links l ON l.code = c.code "
                         "WHERE l.tenant = ? AND l.campaign_id = ?", (tenant, campaign_id))  # fmt: skip
        assert row is not None
        return ClickCounts(unique=int(row[0]), total=int(row[1]), ignored=int(row[2]))

    def human_clicks(self, tenant: str, campaign_id: int) -> list[tuple[int, float]]:
        """(subscriber, at) of every human click on the campaign's links (for attribution)."""
        with self._tx() as tx:
            rows = tx.rows("SELECT l.subscriber_id, c.at FROM clicks c JOIN short_links l ON l.code = c.code "
                           "WHERE l.tenant = ? AND l.campaign_id = ? AND c.verdict = 'click' ORDER BY c.at",
                           (tenant, campaign_id))  # fmt: skip
        return [(int(s), float(a)) for s, a in rows]

    # ---- discount pools --------------------------------------------------------------------------
    def add_discount_codes(self, tenant: str, pool: str, codes: Sequence[str]) -> int:
        with self._tx() as tx:
            return sum(tx.run("INSERT INTO discount_codes (tenant, pool, code) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                              (tenant, pool, c)) for c in codes)  # fmt: skip

    def discount_code_taken(self, tenant: str, code: str) -> bool:
        with self._tx() as tx:
            return tx.one("SELECT 1 FROM discount_codes WHERE tenant = ? AND code = ?", (tenant, code)) is not None

    def reserve_discount(self, tenant: str, pool: str, campaign_id: int, subscriber_id: int, *,
                         now: float) -> str | None:  # fmt: skip
        """The recipient's code from ``pool``: the one already reserved for them, else a free one
        (None when the pool is empty). Idempotent: a relaunch reserves nothing twice."""
        with self._tx() as tx:
            row = tx.one("SELECT code FROM discount_codes WHERE tenant = ? AND pool = ? AND campaign_id = ? AND "
                         "subscriber_id = ?", (tenant, pool, campaign_id, subscriber_id))  # fmt: skip
            if row is not None:
                return str(row[0])
            row = tx.one("SELECT code FROM discount_codes WHERE tenant = ? AND pool = ? AND campaign_id IS NULL "
                         "ORDER BY code LIMIT 1", (tenant, pool))  # fmt: skip
            if row is None:
                return None
            tx.run("UPDATE discount_codes SET campaign_id = ?, subscriber_id = ?, reserved_at = ? WHERE tenant = ? "
                   "AND pool = ? AND code = ?", (campaign_id, subscriber_id, now, tenant, pool, row[0]))  # fmt: skip
            return str(row[0])

    def record_pattern_code(self, tenant: str, pool: str, code: str, campaign_id: int, subscriber_id: int, *,
                            now: float) -> None:  # fmt: skip
        """Keep a code minted from a pattern, reserved (so later mints see it as taken)."""
        with self._tx() as tx:
            tx.run("INSERT INTO discount_codes (tenant, pool, code, campaign_id, subscriber_id, reserved_at) "
                   "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (tenant, pool, code, campaign_id, subscriber_id, now))  # fmt: skip

    # ---- smart sending ---------------------------------------------------------------------------
    def last_marketing_at(self, tenant: str, subscriber_ids: Sequence[int]) -> dict[int, float | None]:
        """When each subscriber was last sent marketing (a campaign send planned or done): two
        set-based reads, the ids bound as one array."""
        out: dict[int, float | None] = {}
        if not subscriber_ids:
            return out
        with self._tx() as tx:
            ids = tx.array(list(subscriber_ids))
            for sid, at in tx.rows(f"SELECT subscriber_id, MAX(send_at) FROM campaign_recipients WHERE tenant = ? "
                                   f"AND subscriber_id IN {tx.values('bigint')} AND state NOT IN ('rejected', "
                                   f"'canceled', 'failed') GROUP BY subscriber_id", (tenant, ids)):  # fmt: skip
                out[int(sid)] = float(at)
            for sid, at in tx.rows(f"SELECT subscriber_id, last_message_at FROM subscriber_stats WHERE tenant = ? "
                                   f"AND subscriber_id IN {tx.values('bigint')} AND last_message_at IS NOT NULL",
                                   (tenant, ids)):  # fmt: skip
                out[int(sid)] = max(float(at), out.get(int(sid)) or 0.0)
        return out

    def audience_rows(self, tenant: str, subscriber_ids: Sequence[int]) -> list[AudienceRow]:
        """The subscribers of ``subscriber_ids`` with a confirmed marketing opt-in, in id order: one
        query, consent filtered in SQL, only the columns a launch reads."""
        if not subscriber_ids:
            return []
        with self._tx() as tx:
            ids = "unnest(?::bigint[]) AS v(value)" if tx.pg else "json_each(?) AS v"  # probed by id, not scanned
            rows = tx.rows(f"SELECT s.id, s.phone, s.first_name, s.time_zone, s.language, s.attributes FROM {ids} "
                           f"JOIN subscribers s ON s.tenant = ? AND s.id = v.value WHERE s.consent = 'confirmed' "
                           f"ORDER BY s.id", (tx.array(sorted(set(subscriber_ids))), tenant))  # fmt: skip
        return [AudienceRow(id=int(i), phone=p, first_name=f, time_zone=z, language=lang, attributes=attrs)
                for i, p, f, z, lang, attrs in rows]  # fmt: skip

    def launch_audience(self, tenant: str, include: Sequence[int], exclude: Sequence[int],
                        ids: Sequence[int]) -> tuple[list[AudienceRow], dict[int, float | None]]:  # fmt: skip
        """A launch's audience in one query: the members of the ``include`` segments and ``ids``, minus
        the members of the ``exclude`` segments, with a confirmed opt-in, in id order (only the
        columns a launch reads); and when each was last sent marketing (``last_marketing_at``'s
        rule, read per row by index). Driven by the segment's members (its primary key) and
        the ids, each subscriber probed by id: nothing ranges over the rest of the shop."""
        with self._tx() as tx:
            q = _audience_sql(tx, tenant, include, exclude, ids)
            if q is None:
                return [], {}
            rows = tx.rows(f"{q[0]} ORDER BY s.id", q[1])
        out, last = [], {}
        for i, p, f, z, lang, attrs, sent, stat in rows:
            out.append(AudienceRow(id=int(i), phone=p, first_name=f, time_zone=z, language=lang, attributes=attrs))
            if sent is not None or stat is not None:
                last[int(i)] = max(float(sent) if sent is not None else 0.0, float(stat) if stat is not None else 0.0)
        return out, last

    def campaign_outcomes(self, tenant: str, campaign_id: int, *, since: float) -> Outcomes:
        """Orders and opt-outs of the campaign's recipients at or after ``since``."""
        with self._tx() as tx:
            orders = tx.rows("SELECT o.order_id, o.subscriber_id, o.created_at, o.total, o.discount_code FROM orders o "
                             "JOIN campaign_recipients r ON r.tenant = o.tenant AND r.subscriber_id = o.subscriber_id "
                             "WHERE r.tenant = ? AND r.campaign_id = ? AND o.created_at >= ? ORDER BY o.created_at",
                             (tenant, campaign_id, since))  # fmt: skip
            outs = tx.rows("SELECT c.subscriber_id, c.at FROM consent_ledger c JOIN campaign_recipients r ON "
                           "r.tenant = c.tenant AND r.subscriber_id = c.subscriber_id WHERE r.tenant = ? AND "
                           "r.campaign_id = ? AND c.action = 'opt_out' AND c.at >= ? ORDER BY c.at",
                           (tenant, campaign_id, since))  # fmt: skip
        return Outcomes(orders=[(str(o), int(s), float(a), int(t), d) for o, s, a, t, d in orders],
                        opt_outs=[(int(s), float(a)) for s, a in outs])  # fmt: skip

    def release_held(self, tenant: str, campaign_id: int, recipients: Sequence[PlannedRecipient],
                     links: Sequence[LinkRow]) -> int:  # fmt: skip
        """Give held recipients (batch -1) their text, batch and slot, in one transaction; how many moved
        (0 when they were released already: a retried winner decision sends nobody twice)."""
        moved = 0
        with self._tx() as tx:
            sizes: dict[int, tuple[float, int]] = {}
            for r in recipients:
                n = tx.run("UPDATE campaign_recipients SET variant = ?, text = ?, batch = ?, idx = ?, send_at = ? "
                           "WHERE tenant = ? AND campaign_id = ? AND subscriber_id = ? AND batch = -1",
                           (r.variant, r.text, r.batch, r.idx, r.send_at, tenant, campaign_id, r.subscriber_id))
                if n:
                    moved += 1
                    at, k = sizes.get(r.batch, (r.send_at, 0))
                    sizes[r.batch] = (at, k + 1)
            for batch, (at, n) in sorted(sizes.items()):
                tx.run("INSERT INTO campaign_batches (tenant, campaign_id, batch, send_at, size) VALUES (?, ?, ?, ?, ?)",
                       (tenant, campaign_id, batch, at, n))  # fmt: skip
            for link in links:
                tx.run(f"INSERT INTO short_links ({_LINK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (link.code, tenant, link.campaign_id, link.subscriber_id, link.target, link.created_at,
                        link.expires_at))  # fmt: skip
            self._shadow_rows(tx, [link.code for link in links])
        self._links_changed()
        return moved


def mark_clicked(tx: Any, recipients: Iterable[tuple[str, int, int]]) -> None:
    """Mark each campaign recipient ``(tenant, campaign, subscriber)`` as clicked (``schema``: the
    ``clicked`` column), in the transaction that stores its human click: the report counts unique
    clicks from the recipients' own rows (``report_sql``). Flow links (campaign 0) and links without
    a recipient match no row; a recipient marked already is not written again."""
    keys = sorted({(t, int(c), int(s)) for t, c, s in recipients if int(c) != 0})
    tx.many("UPDATE campaign_recipients SET clicked = 1 WHERE tenant = ? AND campaign_id = ? AND subscriber_id = ? "
            "AND clicked = 0", keys)  # fmt: skip


def _write_batches(tx: Any, tenant: str, campaign_id: int, sizes: Mapping[int, tuple[float, int]], now: float) -> None:
    """A frozen audience's batches (send time, size); an empty audience is frozen too: a marker
    batch of size 0."""
    for batch, (at, n) in sorted(sizes.items()):
        tx.run("INSERT INTO campaign_batches (tenant, campaign_id, batch, send_at, size) VALUES (?, ?, ?, ?, ?)",
               (tenant, campaign_id, batch, at, n))  # fmt: skip
    if not sizes:
        tx.run("INSERT INTO campaign_batches (tenant, campaign_id, batch, send_at, size, job_id, accepted) "
               "VALUES (?, ?, -1, ?, 0, '', 0)", (tenant, campaign_id, now))  # fmt: skip
