"""The inbox's SQL (issue 19, two-way conversations), shared by both engines (mixed into ``SqlStore``).

Every change to a conversation is one transaction that loads the conversation's *head* (its queue
state, plus the one stored message with the id being applied, if any), hands it to a pure
transition of ``campaigns.core.conversations`` (``receive``, ``answer``, ``assign``...), and writes
what changed: the new messages and the new head. The core never sees the whole history (it only
needs to know whether this id was seen), so a conversation's cost does not grow with its length;
the unique ``(tenant, message_id)`` makes a redelivered message a no-op even across processes.
A batch of flow sends (``conversations_record``) does the same for all its conversations at once:
a statement a step for the batch, not a statement a step a send.

The history (``conversation_history``) is the conversation's own messages merged, by time, with
the subscriber's campaign sends read from ``campaign_recipients`` (submitted or later): a campaign
send is never copied, so it cannot be lost or double-counted. They are found through the shop's
campaigns (one primary-key lookup per campaign: ``batch + 0`` keeps SQLite off the slot index,
which would read every recipient of a campaign), so launches pay for no extra index."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from campaigns.core import conversations as C
from campaigns.errors import NotFound
from campaigns.store.campaign_rows import ACCEPTED, STATE

Change = Callable[[C.Conversation], tuple[C.Conversation, Sequence[Any]]]
#: Answer states in order: ``sending`` (stored, the gateway has not answered yet), the gateway's
#: states, and ``refused`` (the gateway answered 4xx: never retried). States only move forward.
ANSWER_RANK = {"sending": 0, "queued": 1, "deferred": 1, "submitted": 2, "accepted": 3, "delivered": 4,
               "undelivered": 4, "rejected": 4, "failed": 4, "expired": 4, "canceled": 4, "unknown": 4,
               "capped": 4, "suppressed": 4, "refused": 4}  # fmt: skip
UNSETTLED = ("sending", "queued", "deferred", "submitted", "accepted")
_CONV_COLS = ("c.id, c.phone, c.our_number, c.needs_reply, c.waiting_since, c.closed, c.assignee, c.opted_out, "
              "c.created_at, c.last_at, s.id, s.consent")  # fmt: skip
_JOIN = "FROM conversations c LEFT JOIN subscribers s ON s.tenant = c.tenant AND s.phone = c.phone"
_MSG_COLS = "message_id, direction, kind, text, at, by_whom, route, gateway_id, state, state_at, error, response_s"
_json = msgspec.json.Encoder()


class ConversationRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant: str
    phone: str
    subscriber_id: int | None  # None: the sender is not a subscriber (yet)
    status: C.Status
    needs_reply: bool
    waiting_since: float | None
    assignee: str | None
    opted_out: bool
    our_number: str | None  # the number they texted: answers go from it
    created_at: float
    last_at: float


class HistoryItem(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    direction: Literal["in", "out"]
    kind: str  # reply, opt_out, keyword, answer, flow, campaign, system
    text: str
    at: float
    by: str | None = None
    route: str | None = None  # inbound: inbox, flow, keyword, opt_out, handled
    gateway_id: str | None = None
    state: str | None = None  # outbound: sending, then the gateway's states (or refused)
    state_at: float | None = None
    error: str | None = None
    response_s: float | None = None  # an answer that ended a wait: how long the wait was


class PendingAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """An answer to (re)send or to ask the gateway about."""

    conversation_id: int
    message_id: str
    gateway_key: str
    request: bytes  # the exact body sent (a resend must be the same bytes for the gateway's idempotency)
    gateway_id: str | None
    state: str


class ConversationApplied(msgspec.Struct, frozen=True, kw_only=True):
    conversation: ConversationRow
    actions: list[Any]
    new: bool  # False: the message id was seen before (nothing changed)
    message: HistoryItem | None = None  # the stored message with the applied id, if any


class InboxFigures(msgspec.Struct, frozen=True, kw_only=True):
    response_times: list[float]  # of answers since ``since``
    waiting_since: list[float]  # of every conversation in the queue
    open: int
    needs_reply: int
    closed: int


def _route_name(route: C.Route | None) -> str | None:
    match route:
        case None:
            return None
        case C.EndRuns():
            return "opt_out"
        case C.ToInbox():
            return "inbox"
        case C.ToFlow() | C.ToRun():
            return "flow"
        case C.StartFlow():
            return "keyword"
        case _:
            return "handled"


def _opted_out(flag: int, subscriber_id: int | None, consent: str | None) -> bool:
    """A subscriber's consent ledger decides (revoked: no answers); for a sender who is not a
    subscriber, the conversation's own flag (set by their opt-out, cleared by their opt-in)."""
    return consent == "revoked" if subscriber_id is not None else bool(flag)


def _conv_row(tenant: str, r: tuple) -> ConversationRow:
    cid, phone, ours, needs, since, closed, assignee, opted, created, last, sid, consent = r
    conv = C.Conversation(subscriber_id=sid or 0, needs_reply=bool(needs), closed=bool(closed))
    return ConversationRow(id=cid, tenant=tenant, phone=phone, subscriber_id=sid, status=C.status(conv),
                           needs_reply=bool(needs), waiting_since=since, assignee=assignee, opted_out=_opted_out(opted, sid, consent),
                           our_number=ours, created_at=created, last_at=last)  # fmt: skip


def _item(r: Sequence[Any]) -> HistoryItem:
    mid, d, kind, text, at, by, route, gid, state, state_at, error, resp = r
    return HistoryItem(message_id=mid, direction=d, kind=kind, text=text, at=at, by=by, route=route, gateway_id=gid,
                       state=state, state_at=state_at, error=error, response_s=resp)  # fmt: skip


def _head_fields(r: tuple) -> list[Any]:
    """A conversation row's fields a change can move: needs_reply, waiting_since, closed, assignee,
    opted_out (the flag), last_at."""
    return [r[3], r[4], r[5], r[6], r[7], r[9]]


def _message_row(tenant: str, cid: int, m: C.Message, head: C.Conversation, after: C.Conversation,
                 actions: Sequence[Any], route: C.Route | None, answer_request: bytes | None, now: float) -> tuple[Any, ...]:  # fmt: skip
    """A message a change added, as the row ``_insert_messages`` writes (``_MSG_ROW``'s columns)."""
    answer = m.kind == "answer"
    key = next((a.key for a in actions if isinstance(a, C.AnswerSend)), None)
    return (tenant, cid, m.id, m.direction, m.kind, m.text, m.at, m.by,
            _route_name(route) if m.direction == "in" else None,
            key if answer else None,
            answer_request.decode() if answer and answer_request is not None else None,
            "sending" if answer else None, now if answer else None,
            after.response_times[-1] if answer and len(after.response_times) > len(head.response_times) else None)  # fmt: skip


_MSG_ROW = ("tenant, conversation_id, message_id, direction, kind, text, at, by_whom, route, gateway_key, request, "
            "state, state_at, response_s")  # fmt: skip
_MSG_ROW_TYPES = ("text", "bigint", "text", "text", "text", "text", "float8", "text", "text", "text", "text", "text",
                  "float8", "float8")  # fmt: skip


# ``_PLANNED``: the batch's reads and its heads' update are planned at each execution on PostgreSQL,
# never prepared. psycopg prepares a statement run five times; its generic plan, made while the
# conversations were few, read whole tables (the per-change statements before this: 54-72 shared
# blocks a lookup at 5,000 conversations, growing with them). One plan a batch of up to 500 sends.


def _stored_messages(tx: Any, tenant: str, message_ids: list[str]) -> list[tuple]:
    """The stored rows (``_MSG_COLS``) of these message ids."""
    if tx.pg:
        return tx.named_rows(f"SELECT {_MSG_COLS} FROM conversation_messages WHERE tenant = %(t)s AND "
                             "message_id = ANY(%(m)s::text[])", {"t": tenant, "m": message_ids}, prepare=False)  # fmt: skip
    return tx.rows(f"SELECT {_MSG_COLS} FROM conversation_messages WHERE tenant = ? AND message_id IN {tx.values()}",
                   (tenant, tx.array(message_ids)))  # fmt: skip


def _insert_messages(tx: Any, rows: list[tuple[Any, ...]]) -> None:
    """New history rows: one statement on PostgreSQL (the columns bound as arrays), one executemany on SQLite."""
    if not rows:
        return
    if tx.pg:
        cols = ", ".join(f"?::{t}[]" for t in _MSG_ROW_TYPES)
        tx.run(f"INSERT INTO conversation_messages ({_MSG_ROW}) SELECT * FROM unnest({cols})",
               [list(c) for c in zip(*rows)])  # fmt: skip
    else:
        tx.many(f"INSERT INTO conversation_messages ({_MSG_ROW}) VALUES ({', '.join('?' * len(_MSG_ROW_TYPES))})", rows)


def _update_heads(tx: Any, tenant: str, rows: list[tuple[Any, ...]]) -> None:
    """Conversations' moved fields, ``(id, needs_reply, waiting_since, closed, assignee, opted_out,
    last_at)``: one statement on PostgreSQL, one executemany on SQLite."""
    if not rows:
        return
    if tx.pg:
        cols = dict(zip(("id", "nr", "ws", "cl", "asg", "oo", "la"), (list(c) for c in zip(*rows))))
        tx.named_run("UPDATE conversations c SET needs_reply = u.nr, waiting_since = u.ws, closed = u.cl, "
                     "assignee = u.asg, opted_out = u.oo, last_at = u.la FROM unnest(%(id)s::bigint[], "
                     "%(nr)s::bigint[], %(ws)s::float8[], %(cl)s::bigint[], %(asg)s::text[], %(oo)s::bigint[], "
                     "%(la)s::float8[]) AS u (id, nr, ws, cl, asg, oo, la) WHERE c.tenant = %(t)s AND c.id = u.id",
                     {**cols, "t": tenant}, prepare=False)  # fmt: skip
    else:
        tx.many("UPDATE conversations SET needs_reply = ?, waiting_since = ?, closed = ?, assignee = ?, opted_out = ?, "
                "last_at = ? WHERE tenant = ? AND id = ?", [(*r[1:], tenant, r[0]) for r in rows])  # fmt: skip


class InboxSql:
    """Mixed into ``SqlStore``: ``_tx`` and ``engine`` come from there."""

    engine: str

    def _tx(self) -> Any: ...  # provided by SqlStore

    # ---- changing a conversation -----------------------------------------------------------------
    def conversation_apply(self, tenant: str, key: int | str, change: Change, *, now: float,
                           message_id: str | None = None, route: C.Route | None = None,
                           our_number: str | None = None, answer_request: bytes | None = None) -> ConversationApplied:  # fmt: skip
        """Apply the pure ``change`` to the conversation ``key`` (an id: it must exist; a canonical
        phone: created if new) in one transaction. ``message_id``: the message the change may add
        (its stored row, if any, is in the head the change sees). ``answer_request``: for an answer,
        the gateway request body to keep with it (``AnswerSend.key`` becomes its ``gateway_key``)."""
        with self._tx() as tx:
            return self._conversation_apply_in(tx, tenant, key, change, now=now, message_id=message_id, route=route,
                                               our_number=our_number, answer_request=answer_request)  # fmt: skip

    def conversations_record(self, tenant: str, changes: Sequence[tuple[str, Change, str]], *, now: float) -> int:
        """Several ``conversation_apply`` by phone in one transaction (a batch of flow sends recorded
        in their conversations' history, one commit instead of one each): ``(phone, change,
        message_id)``, applied in phone order (two batches lock their conversations in one order on
        PostgreSQL). Returns how many added a message (a key recorded before adds nothing).

        Set-based: the batch's conversations made where missing, their heads and its stored messages
        read, its new messages and the heads that moved written, each one statement for the batch (a
        statement or seven a change before: on PostgreSQL their generic plans, made while the tables
        were small, read the whole table each, so a send's record grew with the sends before it)."""
        if not changes:
            return 0
        ordered = sorted(changes, key=lambda c: (c[0], c[2]))
        with self._tx() as tx:
            heads = self._conversation_heads(tx, tenant, sorted({c[0] for c in ordered}), now)
            seen = {r[0]: r for r in _stored_messages(tx, tenant, sorted({c[2] for c in ordered}))}
            moved: dict[int, list[Any]] = {}
            added_rows: list[tuple[Any, ...]] = []
            new = 0
            for phone, change, mid in ordered:
                row = heads[phone]
                cur = moved.get(row[0]) or _head_fields(row)
                one = seen.get(mid)
                head = C.Conversation(subscriber_id=row[10] or 0, needs_reply=bool(cur[0]), waiting_since=cur[1],
                                      closed=bool(cur[2]), assignee=cur[3], opted_out=_opted_out(cur[4], row[10], row[11]),
                                      messages=(C.Message(id=mid, direction=one[1], text=one[3], at=one[4]),)
                                      if one is not None else ())  # fmt: skip
                after, actions = change(head)
                added = after.messages[len(head.messages):]
                for m in added:
                    added_rows.append(_message_row(tenant, row[0], m, head, after, actions, None, None, now))
                    seen[m.id] = (m.id, m.direction, m.kind, m.text, m.at)
                new += bool(added)
                moved[row[0]] = [int(after.needs_reply), after.waiting_since, int(after.closed), after.assignee,
                                 int(after.opted_out) if after.opted_out != head.opted_out else cur[4],
                                 max(cur[5], now) if added else cur[5]]  # fmt: skip
            _insert_messages(tx, added_rows)
            first = {r[0]: _head_fields(r) for r in heads.values()}
            _update_heads(tx, tenant, [(cid, *v) for cid, v in moved.items() if v != first[cid]])  # a re-post: none
            return new

    def _conversation_heads(self, tx: Any, tenant: str, phones: list[str], now: float) -> dict[str, tuple]:
        """The conversations of ``phones`` (sorted), made where missing, by phone; locked on PostgreSQL,
        in phone order."""
        if tx.pg:
            tx.run("INSERT INTO conversations (tenant, phone, created_at, last_at) SELECT ?, value, ?, ? "
                   "FROM unnest(?::text[]) AS value ORDER BY value ON CONFLICT (tenant, phone) DO NOTHING",
                   (tenant, now, now, phones))  # fmt: skip
        else:
            tx.many("INSERT INTO conversations (tenant, phone, created_at, last_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (tenant, phone) DO NOTHING", [(tenant, p, now, now) for p in phones])  # fmt: skip
        if tx.pg:  # planned at each batch, as every statement here on PostgreSQL (``_PLANNED``)
            return {r[1]: r for r in tx.named_rows(f"SELECT {_CONV_COLS} {_JOIN} WHERE c.tenant = %(t)s AND "
                                                   "c.phone = ANY(%(p)s::text[]) ORDER BY c.phone FOR UPDATE OF c",
                                                   {"t": tenant, "p": phones}, prepare=False)}  # fmt: skip
        return {r[1]: r for r in tx.rows(f"SELECT {_CONV_COLS} {_JOIN} WHERE c.tenant = ? AND c.phone IN {tx.values()}",
                                         (tenant, tx.array(phones)))}  # fmt: skip

    def _conversation_apply_in(self, tx: Any, tenant: str, key: int | str, change: Change, *, now: float,
                               message_id: str | None = None, route: C.Route | None = None,
                               our_number: str | None = None, answer_request: bytes | None = None) -> ConversationApplied:  # fmt: skip
        lock = " FOR UPDATE OF c" if self.engine == "postgres" else ""
        if isinstance(key, str):
            tx.run("INSERT INTO conversations (tenant, phone, our_number, created_at, last_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (tenant, phone) DO NOTHING", (tenant, key, our_number, now, now))  # fmt: skip
            row = tx.one(f"SELECT {_CONV_COLS} {_JOIN} WHERE c.tenant = ? AND c.phone = ?{lock}", (tenant, key))
        else:
            row = tx.one(f"SELECT {_CONV_COLS} {_JOIN} WHERE c.tenant = ? AND c.id = ?{lock}", (tenant, key))
        if row is None:
            raise NotFound(f"no conversation {key}", code="conversation_not_found")
        cid = row[0]
        seen = None
        if message_id is not None:
            seen = tx.one(f"SELECT {_MSG_COLS} FROM conversation_messages WHERE tenant = ? AND message_id = ?",
                          (tenant, message_id))  # fmt: skip
        head = C.Conversation(subscriber_id=row[10] or 0, needs_reply=bool(row[3]), waiting_since=row[4],
                              closed=bool(row[5]), assignee=row[6],
                              opted_out=_opted_out(row[7], row[10], row[11]),
                              messages=(C.Message(id=message_id, direction=seen[1], text=seen[3], at=seen[4]),)
                              if seen is not None and message_id is not None else ())  # fmt: skip
        after, actions = change(head)
        added = after.messages[len(head.messages):]
        if added:
            _insert_messages(tx, [_message_row(tenant, cid, m, head, after, actions, route, answer_request, now)
                                  for m in added])  # fmt: skip
        tx.run("UPDATE conversations SET needs_reply = ?, waiting_since = ?, closed = ?, assignee = ?, opted_out = ?, "
               "our_number = COALESCE(?, our_number), last_at = ? WHERE tenant = ? AND id = ?",
               (int(after.needs_reply), after.waiting_since, int(after.closed), after.assignee,
                int(after.opted_out) if after.opted_out != head.opted_out else int(row[7]), our_number, max(row[9], now) if added else row[9], tenant, cid))  # fmt: skip
        row = tx.one(f"SELECT {_CONV_COLS} {_JOIN} WHERE c.tenant = ? AND c.id = ?", (tenant, cid))
        stored = None
        if message_id is not None:
            one = tx.one(f"SELECT {_MSG_COLS} FROM conversation_messages WHERE tenant = ? AND message_id = ?",
                         (tenant, message_id))  # fmt: skip
            stored = _item(one) if one is not None else None
        assert row is not None
        return ConversationApplied(conversation=_conv_row(tenant, row), actions=list(actions), new=bool(added), message=stored)

    def answer_state(self, tenant: str, message_id: str, *, state: str, at: float, gateway_id: str | None = None,
                     error: str | None = None) -> bool:  # fmt: skip
        """Move an answer forward (``sending`` -> the gateway's states); False if it did not move."""
        rank = ANSWER_RANK.get(state)
        if rank is None:
            return False
        with self._tx() as tx:
            cur = tx.one("SELECT state FROM conversation_messages WHERE tenant = ? AND message_id = ? AND kind = 'answer'",
                         (tenant, message_id))  # fmt: skip
            if cur is None:
                return False
            moved = rank > ANSWER_RANK.get(cur[0] or "sending", 0)
            tx.run("UPDATE conversation_messages SET gateway_id = COALESCE(gateway_id, ?), "
                   + ("state = ?, state_at = ?, error = COALESCE(?, error) " if moved else "state = state ")
                   + "WHERE tenant = ? AND message_id = ?",
                   ((gateway_id, state, at, error) if moved else (gateway_id,)) + (tenant, message_id))  # fmt: skip
        return moved

    def answer_state_by_gateway_id(self, tenant: str, gateway_id: str, *, state: str, at: float) -> bool:
        """A state webhook's event for a message the gateway knows as ``gateway_id``."""
        with self._tx() as tx:
            row = tx.one("SELECT message_id FROM conversation_messages WHERE tenant = ? AND gateway_id = ?",
                         (tenant, gateway_id))  # fmt: skip
        return row is not None and self.answer_state(tenant, row[0], state=state, at=at)

    # ---- reading ---------------------------------------------------------------------------------
    def conversation_message(self, tenant: str, message_id: str) -> HistoryItem | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {_MSG_COLS} FROM conversation_messages WHERE tenant = ? AND message_id = ?",
                         (tenant, message_id))  # fmt: skip
        return _item(row) if row is not None else None

    def conversation(self, tenant: str, conversation_id: int) -> ConversationRow | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {_CONV_COLS} {_JOIN} WHERE c.tenant = ? AND c.id = ?", (tenant, conversation_id))
        return _conv_row(tenant, row) if row is not None else None

    def conversation_by_phone(self, tenant: str, phone: str) -> ConversationRow | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {_CONV_COLS} {_JOIN} WHERE c.tenant = ? AND c.phone = ?", (tenant, phone))
        return _conv_row(tenant, row) if row is not None else None

    def conversations(self, tenant: str, *, status: C.Status | None = None, assignee: str | None = None,
                      after: tuple[float, int] | int = 0, limit: int = 100) -> list[ConversationRow]:  # fmt: skip
        """A page of the tenant's conversations. ``status="needs_reply"`` is the queue, longest wait
        first, paged by ``after=(waiting_since, id)``; any other listing is by id (``after=id``)."""
        where, params = ["c.tenant = ?"], [tenant]
        if status == "needs_reply":
            where.append("c.needs_reply = 1")
        elif status == "closed":
            where.append("c.needs_reply = 0 AND c.closed = 1")
        elif status == "open":
            where.append("c.needs_reply = 0 AND c.closed = 0")
        if assignee is not None:
            where.append("c.assignee = ?")
            params.append(assignee)
        if status == "needs_reply":
            since, last = after if isinstance(after, tuple) else (float("-inf"), 0)
            where.append("(c.waiting_since > ? OR (c.waiting_since = ? AND c.id > ?))")
            params += [since, since, last]
            order = "c.waiting_since, c.id"
        else:
            where.append("c.id > ?")
            params.append(after if isinstance(after, int) else after[1])
            order = "c.id"
        with self._tx() as tx:
            rows = tx.rows(f"SELECT {_CONV_COLS} {_JOIN} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",
                           (*params, limit))  # fmt: skip
        return [_conv_row(tenant, r) for r in rows]

    def conversation_history(self, tenant: str, conversation_id: int, *, after: tuple[float, int, int] | None = None,
                             limit: int = 100) -> list[tuple[tuple[float, int, int], HistoryItem]]:  # fmt: skip
        """The conversation's messages and the subscriber's campaign sends, oldest first, each with
        its cursor ``(at, source, key)`` (pass the last one as ``after`` for the next page)."""
        real = "DOUBLE PRECISION" if self.engine == "postgres" else "REAL"
        since = after or (float("-inf"), -1, -1)
        sql = f"""
SELECT * FROM (
  SELECT m.at AS at, 0 AS src, m.seq AS k, m.message_id, m.direction, m.kind, m.text, m.at AS at2,
         m.by_whom, m.route, m.gateway_id, m.state, m.state_at, m.error, m.response_s
    FROM conversation_messages m WHERE m.tenant = ? AND m.conversation_id = ?
  UNION ALL
  SELECT r.send_at, 1, r.campaign_id, 'campaign:' || CAST(r.campaign_id AS TEXT), 'out',
         'campaign', r.text, r.send_at, 'campaign:' || CAST(r.campaign_id AS TEXT), CAST(NULL AS TEXT), r.message_id,
         {STATE}, r.state_at, CAST(NULL AS TEXT), CAST(NULL AS {real})
    FROM conversations c JOIN subscribers s ON s.tenant = c.tenant AND s.phone = c.phone
    JOIN campaign_recipients r ON r.tenant = c.tenant AND r.subscriber_id = s.id
     AND r.campaign_id IN (SELECT k.id FROM campaigns k WHERE k.tenant = ?)
   WHERE c.tenant = ? AND c.id = ? AND r.batch + 0 >= 0 AND r.state <> 'rejected'
     AND (r.state <> 'planned' OR {ACCEPTED})
) h WHERE (h.at > ? OR (h.at = ? AND (h.src > ? OR (h.src = ? AND h.k > ?))))
ORDER BY h.at, h.src, h.k LIMIT ?"""
        with self._tx() as tx:
            rows = tx.rows(sql, (tenant, conversation_id, tenant, tenant, conversation_id, since[0], since[0], since[1],
                                 since[1], since[2], limit))  # fmt: skip
        return [((r[0], r[1], r[2]), _item(r[3:])) for r in rows]

    def answers_unsettled(self, tenant: str, *, limit: int = 100) -> list[PendingAnswer]:
        """Answers not yet final: ``sending`` ones to (re)send, the others to ask the gateway about."""
        marks = ", ".join("?" for _ in UNSETTLED)
        with self._tx() as tx:
            rows = tx.rows("SELECT conversation_id, message_id, gateway_key, request, gateway_id, state FROM "
                           f"conversation_messages WHERE tenant = ? AND kind = 'answer' AND state IN ({marks}) "
                           "ORDER BY seq LIMIT ?", (tenant, *UNSETTLED, limit))  # fmt: skip
        return [PendingAnswer(conversation_id=r[0], message_id=r[1], gateway_key=r[2], request=(r[3] or "").encode(),
                              gateway_id=r[4], state=r[5]) for r in rows]  # fmt: skip

    def answer_pending(self, tenant: str, message_id: str) -> PendingAnswer | None:
        with self._tx() as tx:
            r = tx.one("SELECT conversation_id, message_id, gateway_key, request, gateway_id, state FROM "
                       "conversation_messages WHERE tenant = ? AND message_id = ? AND kind = 'answer'",
                       (tenant, message_id))  # fmt: skip
        return None if r is None else PendingAnswer(conversation_id=r[0], message_id=r[1], gateway_key=r[2],
                                                    request=(r[3] or "").encode(), gateway_id=r[4], state=r[5])  # fmt: skip

    def inbox_figures(self, tenant: str, *, since: float) -> InboxFigures:
        with self._tx() as tx:
            times = tx.rows("SELECT response_s FROM conversation_messages WHERE tenant = ? AND response_s IS NOT NULL "
                            "AND at >= ?", (tenant, since))  # fmt: skip
            waits = tx.rows("SELECT waiting_since FROM conversations WHERE tenant = ? AND needs_reply = 1", (tenant,))
            counts = tx.one("SELECT COALESCE(SUM(CASE WHEN needs_reply = 0 AND closed = 0 THEN 1 ELSE 0 END), 0), "
                            "COALESCE(SUM(CASE WHEN needs_reply = 1 THEN 1 ELSE 0 END), 0), "
                            "COALESCE(SUM(CASE WHEN needs_reply = 0 AND closed = 1 THEN 1 ELSE 0 END), 0) "
                            "FROM conversations WHERE tenant = ?", (tenant,))  # fmt: skip
        assert counts is not None
        return InboxFigures(response_times=[float(t[0]) for t in times],
                            waiting_since=[float(w[0]) for w in waits if w[0] is not None],
                            open=int(counts[0]), needs_reply=int(counts[1]), closed=int(counts[2]))  # fmt: skip
