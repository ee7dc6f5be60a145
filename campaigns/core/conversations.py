"""Two-way conversations: where an inbound reply goes, and the inbox, as pure state transitions.

Routing (``route_reply``): the gateway's inbound webhook hands the campaigns layer a reply. The
classifier (the gateway's keyword/opt-out classifier, passed in as a function: this layer does
not import the gateway) decides first, so an opt-out word is never a flow's answer:

    opt_out          -> EndRuns: every run of the subscriber gets an OptOut event; the inbox
                        records the message but asks nobody to answer it
    opt_in, help     -> Handled: the gateway answered it; recorded, no reply needed
    other            -> ToRun if a run waits for a reply and takes this one (a choice matches, or
                        the reply node accepts any text); the most recently waiting run wins
                     -> StartFlow if a keyword flow's keyword is the whole text (``QUIZ``)
                     -> ToInbox otherwise: the conversation needs a reply from a person

The service (``campaigns/service/inbox.py``) routes with the flow runtime's own answer instead of
``runs``: ``ToFlow`` when a waiting run took the reply (``ReplyRouter.offer_reply`` returned True).

Inbox: one ``Conversation`` per subscriber with its whole history (in and out), a needs-reply
flag and since when, an assignee, the response times of people's answers, and whether a person
closed it. Its ``status`` is ``needs_reply`` (waiting for a person), ``closed`` (a person closed it:
a new question reopens it) or ``open``. Transitions are
functions returning a new value; a message id seen before changes nothing (webhook replays).

Errors: ``ConversationError`` (an ``InvalidInput``): ``conversation.empty_answer``,
``conversation.opted_out`` (no answers to a number that opted out), ``conversation.too_long``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Union

import msgspec

from campaigns.core import flows as F
from campaigns.errors import InvalidInput

__all__ = [
    "Conversation", "ConversationError", "EndRuns", "Handled", "Intent", "Message", "ResponseStats", "StartFlow",
    "Status", "ToFlow", "ToInbox", "ToRun", "answer", "assign", "close", "needs_reply_queue", "record_sent",
    "receive", "reopen", "response_stats", "route_reply", "status",
]  # fmt: skip

Intent = Literal["opt_out", "opt_in", "help", "other"]
Classify = Callable[[str], Intent]
MAX_ANSWER = 1600


class ConversationError(InvalidInput):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


# ---- routing ------------------------------------------------------------------------------------


class ToRun(msgspec.Struct, frozen=True, kw_only=True, tag="to_run"):
    run_id: str
    event: F.Reply


class EndRuns(msgspec.Struct, frozen=True, kw_only=True, tag="end_runs"):
    run_ids: tuple[str, ...]
    event: F.OptOut


class Handled(msgspec.Struct, frozen=True, kw_only=True, tag="handled"):
    intent: Intent


class StartFlow(msgspec.Struct, frozen=True, kw_only=True, tag="start_flow"):
    flow_id: str
    event: F.Reply


class ToInbox(msgspec.Struct, frozen=True, kw_only=True, tag="to_inbox"):
    pass


class ToFlow(msgspec.Struct, frozen=True, kw_only=True, tag="to_flow"):
    """A waiting run took the reply (the flow runtime decided which, through ``ReplyRouter``)."""


Route = Union[ToRun, EndRuns, Handled, StartFlow, ToInbox, ToFlow]
Status = Literal["open", "needs_reply", "closed"]


def takes_reply(flow: F.Flow, run: F.Run, text: str) -> bool:
    """Whether ``run`` (of ``flow``) waits for a reply and would take ``text`` as its answer."""
    if run.node is None or flow.id != run.flow_id or flow.version != run.version:
        return False
    node = flow.nodes.get(run.node)
    if not isinstance(node, F.ReplyNode):
        return False
    return node.other is not None or F.match_reply(node, text) is not None


def route_reply(message_id: str, text: str, runs: Sequence[tuple[F.Flow, F.Run]], classify: Classify,
                keyword_flows: Iterable[F.Flow] = ()) -> Route:  # fmt: skip
    """Where one inbound reply of a subscriber goes; ``runs``: that subscriber's runs with their flows."""
    intent = classify(text)
    if intent == "opt_out":
        active = tuple(sorted(r.id for _, r in runs if r.node is not None))
        return EndRuns(run_ids=active, event=F.OptOut(id=message_id))
    if intent in ("opt_in", "help"):
        return Handled(intent=intent)
    event = F.Reply(id=message_id, text=text)
    waiting = [(r.waiting_since or 0.0, r.id) for f, r in runs if takes_reply(f, r, text)]
    if waiting:
        return ToRun(run_id=max(waiting)[1], event=event)
    for flow in keyword_flows:
        if isinstance(flow.trigger, F.KeywordTrigger) and flow.trigger.keywords and F.matches_trigger(flow.trigger, event):
            return StartFlow(flow_id=flow.id, event=event)
    return ToInbox()


# ---- the inbox ----------------------------------------------------------------------------------


class Message(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    direction: Literal["in", "out"]
    text: str
    at: float
    by: str | None = None  # an agent for answers, "flow:<id>" / "campaign:<id>" for sends
    kind: Literal["reply", "answer", "flow", "campaign", "opt_out", "keyword", "system"] = "reply"


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    subscriber_id: int
    messages: tuple[Message, ...] = ()
    needs_reply: bool = False
    waiting_since: float | None = None  # the first unanswered inbound message
    assignee: str | None = None
    opted_out: bool = False
    response_times: tuple[float, ...] = ()  # seconds, one per answered wait
    closed: bool = False  # a person closed it; a new question (ToInbox) or an answer reopens it


def status(conv: Conversation) -> Status:
    return "needs_reply" if conv.needs_reply else ("closed" if conv.closed else "open")


class AnswerSend(msgspec.Struct, frozen=True, kw_only=True):
    """Send an agent's answer through the gateway, as a transactional reply (idempotent on ``key``)."""

    key: str
    subscriber_id: int
    text: str
    transactional: bool = True


def _seen(conv: Conversation, message_id: str) -> bool:
    return any(m.id == message_id for m in conv.messages)


def receive(conv: Conversation, message_id: str, text: str, now: float, route: Route) -> Conversation:
    """Record an inbound message with where it was routed; only ``ToInbox`` asks a person to answer."""
    if _seen(conv, message_id):
        return conv
    match route:
        case EndRuns():
            kind = "opt_out"
        case Handled() | StartFlow():
            kind = "keyword"
        case _:
            kind = "reply"
    conv = msgspec.structs.replace(conv, messages=conv.messages + (Message(id=message_id, direction="in", text=text,
                                                                           at=now, kind=kind),))  # fmt: skip
    if isinstance(route, EndRuns):
        return msgspec.structs.replace(conv, opted_out=True, needs_reply=False, waiting_since=None)
    if isinstance(route, Handled) and route.intent == "opt_in":
        return msgspec.structs.replace(conv, opted_out=False)
    if isinstance(route, ToInbox) and not conv.needs_reply:
        return msgspec.structs.replace(conv, needs_reply=True, waiting_since=now, closed=False)
    return conv


def record_sent(conv: Conversation, message_id: str, text: str, now: float, by: str,
                kind: Literal["flow", "campaign", "system"] = "flow") -> Conversation:  # fmt: skip
    """An automated message sent to the subscriber: history only (it answers nobody's question)."""
    if _seen(conv, message_id):
        return conv
    msg = Message(id=message_id, direction="out", text=text, at=now, by=by, kind=kind)
    return msgspec.structs.replace(conv, messages=conv.messages + (msg,))


def answer(conv: Conversation, message_id: str, text: str, agent: str, now: float) -> tuple[Conversation, list[AnswerSend]]:
    """A person answers: the message is sent (transactional), the wait ends and its time is counted."""
    if _seen(conv, message_id):
        return conv, []
    if not text.strip():
        raise ConversationError("conversation.empty_answer", "an answer needs some text")
    if len(text) > MAX_ANSWER:
        raise ConversationError("conversation.too_long", f"an answer has at most {MAX_ANSWER} characters")
    if conv.opted_out:
        raise ConversationError("conversation.opted_out", "the subscriber opted out; they get no more messages")
    times = conv.response_times
    if conv.needs_reply and conv.waiting_since is not None:
        times = times + (max(0.0, now - conv.waiting_since),)
    msg = Message(id=message_id, direction="out", text=text, at=now, by=agent, kind="answer")
    conv = msgspec.structs.replace(conv, messages=conv.messages + (msg,), needs_reply=False, waiting_since=None,
                                   response_times=times, assignee=conv.assignee or agent, closed=False)  # fmt: skip
    return conv, [AnswerSend(key=f"answer:{conv.subscriber_id}:{message_id}", subscriber_id=conv.subscriber_id,
                             text=text)]  # fmt: skip


def assign(conv: Conversation, agent: str | None) -> Conversation:
    return msgspec.structs.replace(conv, assignee=agent)


def close(conv: Conversation) -> Conversation:
    """Nothing to answer (a "thanks!"): leaves the queue without counting a response time."""
    return msgspec.structs.replace(conv, needs_reply=False, waiting_since=None, closed=True)


def reopen(conv: Conversation) -> Conversation:
    """Back to ``open`` (not to the queue: nobody asked anything new)."""
    return msgspec.structs.replace(conv, closed=False)


def needs_reply_queue(convs: Iterable[Conversation], assignee: str | None = None) -> list[Conversation]:
    """Conversations waiting for a person, the longest wait first (``assignee``: only theirs)."""
    waiting = [c for c in convs if c.needs_reply and (assignee is None or c.assignee == assignee)]
    return sorted(waiting, key=lambda c: (c.waiting_since or 0.0, c.subscriber_id))


class ResponseStats(msgspec.Struct, frozen=True, kw_only=True):
    answered: int
    waiting: int
    median_s: float | None
    p90_s: float | None
    mean_s: float | None
    max_s: float | None
    oldest_wait_s: float | None


def _quantile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank quantile: the smallest value with at least ``q`` of the values at or below it."""
    return xs[max(0, math.ceil(q * len(xs)) - 1)]


def response_stats(convs: Iterable[Conversation], now: float) -> ResponseStats:
    convs = list(convs)
    times = sorted(t for c in convs for t in c.response_times)
    waits = [now - c.waiting_since for c in convs if c.needs_reply and c.waiting_since is not None]
    return ResponseStats(
        answered=len(times), waiting=len(waits),
        median_s=_quantile(times, 0.5) if times else None, p90_s=_quantile(times, 0.9) if times else None,
        mean_s=sum(times) / len(times) if times else None, max_s=times[-1] if times else None,
        oldest_wait_s=max(waits) if waits else None,
    )  # fmt: skip
