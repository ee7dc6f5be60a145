"""The inbox: where a subscriber's reply goes, people's answers, and the figures (issue 19).

Theory of operation
-------------------
*A reply arrives* (``GatewayLink.handle``, for the gateway's signed inbound webhook and for the
``GET /v1/inbound`` catch-up alike; the consent work is done first, as before):

1. the gateway classified it (``kind``). ``opt_out``: the ledger and the suppression are the
   link's; here it enters the history as an opt-out (``EndRuns``), never as anybody's answer, and
   nobody is asked to reply. ``opt_in``/``help`` and sign-up keywords (JOIN, Y): history only.
2. Any other text of a subscriber is offered to the flow runtime (``ReplyRouter.offer_reply``):
   True means a waiting run took it (``ToFlow``); False, or a sender who is not a subscriber
   (no run can wait for them), puts the conversation in the queue (``ToInbox``). The flow
   runtime is offered ``message_id = str(<the gateway's inbound id>)``: the same id whichever
   path the message came by, so the runtime's own dedupe holds.
3. The conversation (one per phone per shop: senders who are not subscribers get one too) gets
   the message in one store transaction (``Store.conversation_apply`` with the pure
   ``conversations.receive``), idempotent by ``mo:<gateway inbound id>``: a redelivered webhook
   is stored once, and a message already stored is not offered to the flows again.

*A person answers* (``POST /v1/inbox/conversations/{id}/answers``): the answer, its exact gateway
request (``POST /v1/messages``, ``category = "transactional"``, from the number the subscriber
texted) and its Idempotency-Key (``answer:<subscriber>:<message id>``) are stored first, in the
same transaction that ends the wait and records the response time (``conversations.answer``);
then it is sent. A crash in between leaves it ``sending``: ``settle`` (each round of the link)
sends the same bytes with the same key, so the gateway sends it once. A retried API call with
the same ``Idempotency-Key`` finds the stored answer and sends nothing new. Its state then
follows the gateway's (``settle`` asks ``GET /v1/messages/{id}`` for answers not final, and the
state webhook moves it when the gateway posts one): it is in the history.

The flow runtime is reached through ``ReplyRouter`` only, read from the app's state
(``app.state.reply_router``) at each reply, so the runtime can register itself when it starts;
until then ``NoRunWaits`` answers False (every reply of a subscriber goes to the inbox).
"""

from __future__ import annotations

import base64
import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

import anyio
import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter

from campaigns.config import CampaignSettings
from campaigns.core import conversations as C
from campaigns.core import flows as F
from campaigns.core.signup import Decision
from campaigns.errors import Conflict, GatewayError, GatewayRefused, InvalidInput, NotFound, no_nul
from campaigns.service.gateway_client import GatewayClient, Inbound
from campaigns.store.base import Store
from campaigns.store.inbox_sql import ANSWER_RANK, ConversationRow, HistoryItem

log = logging.getLogger(__name__)


class ReplyRouter(Protocol):
    """The flow runtime's side of a reply: True when a run waiting for a reply took this one."""

    async def offer_reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool: ...


class NoRunWaits:
    """The router while no flow runtime is registered: no run waits, every reply is the inbox's."""

    async def offer_reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool:
        return False


# ---- API types ------------------------------------------------------------------------------------
Agent = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class AnswerIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=C.MAX_ANSWER)]
    agent: Agent

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class AssignIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent: Agent | None  # null: unassign

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class ConversationPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ConversationRow]
    next: str | None = None  # the ``after`` of the next page


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[HistoryItem]
    next: str | None = None


class ConversationOut(msgspec.Struct, frozen=True, kw_only=True):
    conversation: ConversationRow
    messages: HistoryPage  # the first page of its history, oldest first


class AnswerOut(msgspec.Struct, frozen=True, kw_only=True):
    conversation: ConversationRow
    message: HistoryItem  # the answer, with its gateway state
    replayed: bool  # True: this Idempotency-Key's answer was already stored (nothing new was sent)


class FiguresOut(msgspec.Struct, frozen=True, kw_only=True):
    since: float
    answered: int  # answers that ended a wait, since ``since``
    first_response_p50_s: float | None
    first_response_p90_s: float | None
    first_response_mean_s: float | None
    first_response_max_s: float | None
    open: int
    needs_reply: int
    closed: int
    oldest_wait_s: float | None


# ---- cursors: opaque (base64url of JSON), checked ------------------------------------------------
def _cursor(value: list[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).decode().rstrip("=")


def _uncursor(text: str, shape: tuple[type, ...]) -> list[Any]:
    try:
        value = msgspec.json.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, msgspec.DecodeError):
        value = None
    if not isinstance(value, list) or len(value) != len(shape) or not all(
            isinstance(v, t) and not isinstance(v, bool) for v, t in zip(value, shape)):  # fmt: skip
        raise InvalidInput("not a cursor this listing gave", code="invalid_cursor", field="after")
    return value


def _key(request: Request) -> str:
    """The answer's id: the client's ``Idempotency-Key`` (a retry with it sends nothing new)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return uuid.uuid4().hex
    if not (1 <= len(key) <= 100) or not key.isascii() or not key.isprintable():
        raise InvalidInput("Idempotency-Key: 1 to 100 printable ASCII characters", code="invalid_field",
                           field="Idempotency-Key")  # fmt: skip
    return key


class Inbox:
    def __init__(self, store: Store, clients: Mapping[str, GatewayClient], settings: CampaignSettings,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self.store = store
        self.clients = dict(clients)
        self.settings = settings
        self.clock = clock
        self.state: Any = None  # the app's state (``bind``): its ``reply_router``
        self._locks: dict[tuple[str, int], anyio.Lock] = {}  # per inbound message being handled

    def bind(self, state: Any) -> None:
        """Read the flow runtime from ``state.reply_router`` (set to ``NoRunWaits`` unless already set)."""
        if getattr(state, "reply_router", None) is None:
            state.reply_router = NoRunWaits()
        self.state = state

    @property
    def router(self) -> ReplyRouter:
        return getattr(self.state, "reply_router", None) or NoRunWaits()

    async def _run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kw))

    # ---- replies -----------------------------------------------------------------------------------
    async def receive(self, tenant: str, msg: Inbound, phone: str, subscriber_id: int | None, decision: Decision,
                      replied: str | None = None) -> C.Route:  # fmt: skip
        """Route one inbound message and store it in its conversation (once, by its id). Two
        deliveries of one message at once (a webhook retried while the first is handled, or the
        webhook and the inbound catch-up) are handled one after the other, so it is offered once."""
        key = (tenant, msg.id)
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:
                return await self._receive(tenant, msg, phone, subscriber_id, decision, replied)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    async def _receive(self, tenant: str, msg: Inbound, phone: str, subscriber_id: int | None, decision: Decision,
                       replied: str | None) -> C.Route:  # fmt: skip
        mid = f"mo:{msg.id}"
        route: C.Route
        if msg.kind == "opt_out":
            route = C.EndRuns(run_ids=(), event=F.OptOut(id=mid))
        elif msg.kind == "opt_in" or decision.action == "confirm":
            route = C.Handled(intent="opt_in")
        elif msg.kind == "help":
            route = C.Handled(intent="help")
        elif decision.action is not None or decision.reply is not None:
            route = C.Handled(intent="other")  # a sign-up keyword: the link answered it
        elif await self._run(self.store.conversation_message, tenant, mid) is not None:
            return C.Handled(intent="other")  # stored before: not offered to the flows again
        elif subscriber_id is not None and await self.router.offer_reply(tenant, subscriber_id, str(msg.id), msg.text,
                                                                         self.clock()):  # fmt: skip
            route = C.ToFlow()
        else:
            route = C.ToInbox()

        def change(conv: C.Conversation) -> tuple[C.Conversation, list[Any]]:
            after = C.receive(conv, mid, msg.text, msg.at, route)
            if after is not conv and replied is not None:  # the sign-up reply the link sent
                after = C.record_sent(after, f"signup:{msg.id}", replied, msg.at, "signup", kind="system")
            return after, []

        applied = await self._run(self.store.conversation_apply, tenant, phone, change, now=self.clock(),
                                  message_id=mid, route=route, our_number=msg.recipient or None)  # fmt: skip
        log.info("inbox.received tenant=%s conversation=%d id=%s route=%s new=%s", tenant, applied.conversation.id,
                 mid, type(route).__name__, applied.new)  # fmt: skip
        return route

    async def record_sent(self, tenant: str, phone: str, message_id: str, text: str, at: float, by: str,
                          kind: Literal["flow", "campaign", "system"] = "flow") -> bool:  # fmt: skip
        """An automated message sent to ``phone`` (a flow's send: ``message_id = flow-<run>-<visit>``,
        its Idempotency-Key), in the history only. Idempotent by ``message_id``: the flow runtime calls
        it in its at-least-once send path (before or after the gateway call), so nothing is lost and
        nothing is recorded twice. True if it was new."""
        applied = await self._run(self.store.conversation_apply, tenant, phone,
                                  lambda c: (C.record_sent(c, message_id, text, at, by, kind=kind), []),
                                  now=self.clock(), message_id=message_id)  # fmt: skip
        return applied.new

    async def record_sent_many(self, tenant: str, sent: Sequence[tuple[str, str, str, float, str]]) -> int:
        """``record_sent`` for several messages, ``(phone, message_id, text, at, by)``, in one store
        transaction (a batch of flow sends: one commit, not one a send). Idempotent by each message id."""
        changes = [(phone, functools.partial(_record_flow_sent, mid, text, at, by), mid)
                   for phone, mid, text, at, by in sent]  # fmt: skip
        return int(await self._run(self.store.conversations_record, tenant, changes, now=self.clock()))

    # ---- people's actions --------------------------------------------------------------------------
    async def conversation(self, tenant: str, conversation_id: int) -> ConversationRow:
        conv = await self._run(self.store.conversation, tenant, conversation_id)
        if conv is None:
            raise NotFound(f"no conversation {conversation_id}", code="conversation_not_found")
        return conv

    async def _change(self, tenant: str, conversation_id: int, fn: Callable[[C.Conversation], C.Conversation]) -> ConversationRow:
        await self.conversation(tenant, conversation_id)
        applied = await self._run(self.store.conversation_apply, tenant, conversation_id, lambda c: (fn(c), []),
                                  now=self.clock())  # fmt: skip
        return applied.conversation

    async def assign(self, tenant: str, conversation_id: int, agent: str | None) -> ConversationRow:
        return await self._change(tenant, conversation_id, lambda c: C.assign(c, agent))

    async def close(self, tenant: str, conversation_id: int) -> ConversationRow:
        return await self._change(tenant, conversation_id, C.close)

    async def reopen(self, tenant: str, conversation_id: int) -> ConversationRow:
        return await self._change(tenant, conversation_id, C.reopen)

    def _sender(self, tenant: str, conv: ConversationRow) -> str:
        t = next((t for t in self.settings.tenants if t.name == tenant), None)
        sender = conv.our_number or (t.signup.sender if t is not None else None)
        if not sender:
            raise Conflict("no number to answer from: the subscriber never texted one and signup.sender is unset",
                           code="conversation.no_sender")  # fmt: skip
        return sender

    async def answer(self, tenant: str, conversation_id: int, text: str, agent: str, key: str) -> AnswerOut:
        """Store the answer with its gateway request (one transaction), then send it (see the module doc)."""
        if tenant not in self.clients:
            raise Conflict("this shop has no gateway link (gateway_key_env)", code="no_gateway")
        conv = await self.conversation(tenant, conversation_id)
        mid = f"answer:{conversation_id}:{key}"
        body = msgspec.json.encode({"to": conv.phone, "body": text, "from": self._sender(tenant, conv),
                                    "category": "transactional", "reference": mid})  # fmt: skip
        now = self.clock()
        applied = await self._run(self.store.conversation_apply, tenant, conversation_id,
                                  lambda c: C.answer(c, mid, text, agent, now), now=now, message_id=mid,
                                  answer_request=body)  # fmt: skip
        stored = applied.message
        assert stored is not None
        if not applied.new and stored.text != text:
            raise Conflict("this Idempotency-Key was used for another answer", code="idempotency_key_reused",
                           field="Idempotency-Key")  # fmt: skip
        if stored.state == "sending":
            await self._deliver(tenant, mid)
            stored = await self._run(self.store.conversation_message, tenant, mid)
        conv = await self.conversation(tenant, conversation_id)
        return AnswerOut(conversation=conv, message=stored, replayed=not applied.new)

    async def _deliver(self, tenant: str, message_id: str) -> None:
        """Send a stored answer (its stored bytes and key); a failure leaves it for ``settle``."""
        pending = await self._run(self.store.answer_pending, tenant, message_id)
        if pending is None or pending.state != "sending":
            return
        await self._send(tenant, pending.message_id, pending.request, pending.gateway_key)

    async def _send(self, tenant: str, message_id: str, request: bytes, key: str) -> None:
        now = self.clock()
        try:
            sent = await self.clients[tenant].send_body(request, key=key)
        except GatewayRefused as exc:
            log.warning("inbox.answer.refused tenant=%s id=%s status=%d code=%s", tenant, message_id,
                        exc.http_status, exc.gateway_code)  # fmt: skip
            await self._run(self.store.answer_state, tenant, message_id, state="refused", at=now,
                            error=exc.gateway_code or f"HTTP {exc.http_status}")  # fmt: skip
            return
        except GatewayError as exc:
            log.warning("inbox.answer.unsent tenant=%s id=%s error=%s (retried by settle)", tenant, message_id, exc)
            return
        await self._run(self.store.answer_state, tenant, message_id, state=sent.state if sent.state in ANSWER_RANK
                        else "queued", at=now, gateway_id=sent.id)  # fmt: skip

    async def settle(self, tenant: str, *, limit: int = 100) -> int:
        """Resend answers left ``sending`` (same bytes, same key) and ask the gateway the state of the
        others not final; how many moved or were sent."""
        if tenant not in self.clients:
            return 0
        moved = 0
        for p in await self._run(self.store.answers_unsettled, tenant, limit=limit):
            if p.state == "sending" or p.gateway_id is None:
                await self._send(tenant, p.message_id, p.request, p.gateway_key)
                moved += 1
                continue
            try:
                now_state = await self.clients[tenant].message(p.gateway_id)
            except GatewayRefused as exc:  # the gateway does not know it (another store?): stop asking
                moved += await self._run(self.store.answer_state, tenant, p.message_id, state="unknown",
                                         at=self.clock(), error=exc.gateway_code or f"HTTP {exc.http_status}")  # fmt: skip
                continue
            except GatewayError as exc:
                log.info("inbox.answer.state_unknown tenant=%s id=%s error=%s", tenant, p.message_id, exc)
                continue
            moved += await self._run(self.store.answer_state, tenant, p.message_id, state=now_state.state,
                                     at=self.clock())  # fmt: skip
        return moved

    async def states(self, tenant: str, events: list[Any]) -> int:
        """The gateway's state webhook events (``message_id``, ``state``, ``at``) for answers."""
        moved = 0
        for e in events:
            if getattr(e, "job_id", None) is None:
                moved += await self._run(self.store.answer_state_by_gateway_id, tenant, e.message_id,
                                         state=e.state, at=e.at)  # fmt: skip
        return moved

    async def figures(self, tenant: str, since: float) -> FiguresOut:
        f = await self._run(self.store.inbox_figures, tenant, since=since)
        now = self.clock()
        convs = [C.Conversation(subscriber_id=0, response_times=(t,)) for t in f.response_times]
        convs += [C.Conversation(subscriber_id=0, needs_reply=True, waiting_since=w) for w in f.waiting_since]
        st = C.response_stats(convs, now)
        return FiguresOut(since=since, answered=st.answered, first_response_p50_s=st.median_s,
                          first_response_p90_s=st.p90_s, first_response_mean_s=st.mean_s,
                          first_response_max_s=st.max_s, open=f.open, needs_reply=f.needs_reply, closed=f.closed,
                          oldest_wait_s=st.oldest_wait_s)  # fmt: skip


# ---- routes ---------------------------------------------------------------------------------------
Id = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
StatusQ = Literal["open", "needs_reply", "closed"]


Tenant = NamedDependency[str]  # the shop the API key names (as in campaigns.service.app)


def inbox_handlers(inbox: Inbox, canonical: Callable[[str, str], str] | None = None) -> list[Any]:
    """The routes; ``canonical(tenant, raw)`` reads a ``phone`` filter as the shop reads numbers."""
    async def _history(tenant: str, conversation_id: int, after: str | None, limit: int) -> HistoryPage:
        cur = None
        if after is not None:
            at, src, k = _uncursor(after, (float | int, int, int))  # type: ignore[arg-type]
            cur = (float(at), src, k)
        rows = await inbox._run(inbox.store.conversation_history, tenant, conversation_id, after=cur, limit=limit)
        nxt = _cursor(list(rows[-1][0])) if len(rows) == limit else None
        return HistoryPage(items=[r[1] for r in rows], next=nxt)

    @get("/v1/inbox/conversations")
    async def list_conversations(tenant: Tenant, status: FromQuery[StatusQ | None] = None,
                                 needs_reply: FromQuery[bool | None] = None,
                                 assignee: Annotated[str | None, QueryParameter(min_length=1, max_length=100)] = None,
                                 after: Annotated[str | None, QueryParameter(max_length=500)] = None,
                                 phone: Annotated[str | None, QueryParameter(max_length=40)] = None,
                                 limit: Limit = 100) -> ConversationPage:  # fmt: skip
        """The shop's conversations by id; ``status=needs_reply`` (or ``needs_reply=true``) is the queue,
        the longest wait first. ``needs_reply=false``: the others (open and closed). ``phone``: the
        conversation with that number (any spelling), if there is one."""
        if phone is not None:
            number = canonical(tenant, phone) if canonical is not None else phone
            found = await inbox._run(inbox.store.conversation_by_phone, tenant, number)
            return ConversationPage(items=[found] if found is not None else [])
        if needs_reply is True:
            if status not in (None, "needs_reply"):
                raise InvalidInput("needs_reply=true contradicts status", code="invalid_field", field="needs_reply")
            status = "needs_reply"
        if needs_reply is False and status == "needs_reply":
            raise InvalidInput("needs_reply=false contradicts status=needs_reply", code="invalid_field", field="needs_reply")
        queue = status == "needs_reply"
        cur: Any = 0
        if after is not None:
            cur = tuple(_uncursor(after, (float | int, int))) if queue else _uncursor(after, (int,))[0]  # type: ignore[arg-type]
            if queue:
                cur = (float(cur[0]), cur[1])
        rows: list[ConversationRow] = []
        while True:  # needs_reply=false without a status: open and closed, filtered here
            page = await inbox._run(inbox.store.conversations, tenant, status=status, assignee=assignee, after=cur,
                                    limit=limit)  # fmt: skip
            rows += [r for r in page if not (needs_reply is False and r.needs_reply)]
            if len(page) < limit or len(rows) >= limit:
                break
            cur = page[-1].id
        rows = rows[:limit]
        nxt = None
        if len(rows) == limit:
            last = rows[-1]
            nxt = _cursor([last.waiting_since, last.id]) if queue else _cursor([last.id])
        return ConversationPage(items=rows, next=nxt)

    @get("/v1/inbox/conversations/{conversation_id:int}")
    async def get_conversation(tenant: Tenant, conversation_id: Id, limit: Limit = 100) -> ConversationOut:
        """One conversation with the first page of its history (``messages.next`` pages on, with
        ``GET .../messages?after=``): replies, answers with their gateway state, flow and campaign sends."""
        conv = await inbox.conversation(tenant, conversation_id)
        return ConversationOut(conversation=conv, messages=await _history(tenant, conversation_id, None, limit))

    @get("/v1/inbox/conversations/{conversation_id:int}/messages")
    async def conversation_messages(tenant: Tenant, conversation_id: Id,
                                    after: Annotated[str | None, QueryParameter(max_length=1000)] = None,
                                    limit: Limit = 100) -> HistoryPage:  # fmt: skip
        await inbox.conversation(tenant, conversation_id)
        return await _history(tenant, conversation_id, after, limit)

    @post("/v1/inbox/conversations/{conversation_id:int}/assign", status_code=200)
    async def assign_conversation(tenant: Tenant, conversation_id: Id, data: JSONBody[AssignIn]) -> ConversationRow:
        """Assign to ``agent``, or unassign with ``{"agent": null}``."""
        return await inbox.assign(tenant, conversation_id, data.agent)

    @post("/v1/inbox/conversations/{conversation_id:int}/close", status_code=200)
    async def close_conversation(tenant: Tenant, conversation_id: Id) -> ConversationRow:
        """Out of the queue without an answer (no response time counted); a new question reopens it."""
        return await inbox.close(tenant, conversation_id)

    @post("/v1/inbox/conversations/{conversation_id:int}/reopen", status_code=200)
    async def reopen_conversation(tenant: Tenant, conversation_id: Id) -> ConversationRow:
        return await inbox.reopen(tenant, conversation_id)

    @post("/v1/inbox/conversations/{conversation_id:int}/answers", status_code=202)
    async def answer_conversation(tenant: Tenant, conversation_id: Id, data: JSONBody[AnswerIn],
                                  request: Request) -> Response[AnswerOut]:  # fmt: skip
        """A person's answer, sent through the gateway as a transactional reply. Send an
        ``Idempotency-Key``: a retry with it returns the stored answer (200) and sends nothing new."""
        out = await inbox.answer(tenant, conversation_id, data.text, data.agent, _key(request))
        return Response(out, status_code=200 if out.replayed else 202)

    @get("/v1/inbox/figures")
    async def inbox_figures(tenant: Tenant, since_s: Annotated[float, QueryParameter(gt=0, le=366 * 86400)] = 30 * 86400.0) -> FiguresOut:
        """First-response times (p50, p90 nearest rank, mean, max) of answers in the last ``since_s``
        seconds, the open / needs-reply / closed counts and the oldest wait now."""
        return await inbox.figures(tenant, inbox.clock() - since_s)

    return [list_conversations, get_conversation, conversation_messages, assign_conversation, close_conversation,
            reopen_conversation, answer_conversation, inbox_figures]  # fmt: skip


def _record_flow_sent(message_id: str, text: str, at: float, by: str, c: C.Conversation) -> tuple[C.Conversation, list[Any]]:
    return C.record_sent(c, message_id, text, at, by, kind="flow"), []
