"""The store seam: what the gateway keeps durably, behind one small interface.

A 202 from the API means ``add_job`` returned: the messages are on disk. A job streamed in
chunks is written with ``add_job(..., incoming=True)`` per chunk and is not a job yet (never
recovered, never counted) until ``commit_job`` marks it active, in one transaction with its
idempotency key; ``drop_job`` removes an incoming job whose upload failed, and
``drop_incoming`` (at start-up) every incoming job an earlier process left. Everything else is a
batch (``record`` takes many state changes in one transaction) because the store is on the
hot path of every message. Implementations: ``MemoryStore`` (the fake for tests) and
``SqliteStore`` (the embedded default); both pass ``gateway.testing.store_conformance``.
Backends are chosen by URL (``memory://``, ``sqlite:///path/to.db``) with ``open_store``.

Webhook events are derived from the changes ``record`` makes (the change sequence): for a
message of a job with a ``callback_url``, the same statement that changes the message appends
its changes of the batch to that job's subscriber's sequence (one row per message and batch,
keyed by an increasing ``seq``), so a committed change is never without its webhook and there is
no second write per event. Each subscriber (tenant, ``callback_url``) has a durable cursor: a
reader (``gateway/runtime/webhooks.py``, in its own process for SQLite) reads the events after it
in order with ``hook_events`` (whom each is about and the job's ``callback_states`` filter
applied on read; ``hook_rows`` is the same read row by row, each event already in the wire's
form, which is what the sender uses), and moves it with ``hook_ack`` only after the receiver's 2xx. Events given up
on are kept as dead letters (``hook_dead``; counted by ``outbox_statistics``).

Inbound (MO) messages are kept too, one ``InboundRecord`` each, whatever they were: keywords
(the opt-out audit: keyword, time, carrier, raw text) and messages for the tenant. An opt-out or
opt-in record changes the tenant's suppression list in the same transaction as it is written.
A record given a ``url`` (the tenant's inbound webhook) is due for forwarding until
``inbound_done``; the ``inbound_*`` calls mirror the ``outbox_*`` ones.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Protocol

import msgspec

from gateway.core.ids import format_id
from gateway.core.model import Job, Recipient

__all__ = [
    "AWAITING",
    "CALLBACK_STATES",
    "Change",
    "InboundItem",
    "InboundPage",
    "InboundRecord",
    "JobCounts",
    "JobsPage",
    "MessageRecord",
    "RecipientRows",
    "NewJob",
    "HookEvent",
    "HookRow",
    "WebhookEvent",
    "hook_wire",
    "hook_rows_of",
    "OutboxStats",
    "Subscriber",
    "Page",
    "Store",
    "StoredJob",
    "Suppression",
    "job_status",
]

#: Every state a message can be in. The final ones never change again. ``accepted``: an
#: intermediate receipt said the carrier's network took it (after ``submitted``, not final).
STATES = (
    "accepted", "queued", "deferred", "submitted", "delivered", "undelivered", "expired",
    "rejected", "failed", "unknown", "capped", "suppressed", "canceled",
)  # fmt: skip
FINAL = frozenset(STATES[4:])
#: The states a job's ``callback_url`` hears about: handed to a carrier, held, and every final one.
NOTIFY = FINAL | {"submitted", "accepted", "deferred"}
#: ``NOTIFY`` in a fixed order: the names a job's ``callback_states`` may list (docs/WEBHOOKS.md).
CALLBACK_STATES = tuple(s for s in STATES if s in NOTIFY)
#: Taken by a carrier, waiting for its final receipt (recovered as such after a restart).
AWAITING = ("submitted", "accepted")


class Change(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One state change of one message, with when and why."""

    message_id: int
    state: str
    at: float
    reason: str = ""
    carrier: str | None = None
    carrier_ids: tuple[str, ...] = ()
    error_code: int | None = None  # the carrier's code, from a receipt (err:, network_error_code)


#: How many jobs a filtered ``Store.jobs`` call looks at, per job it may return.
JOBS_SCAN = 10


class StoredJob(msgspec.Struct, frozen=True, kw_only=True):
    job: Job
    first_id: int
    size: int
    status: str  # active | paused | canceled
    created_at: float
    callback_url: str | None = None
    # The states the callback_url hears about (a subset of NOTIFY); None: all of NOTIFY.
    callback_states: frozenset[str] | None = None


class MessageRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    job_id: str
    tenant: str
    recipient: Recipient
    state: str
    carrier: str | None
    carrier_ids: tuple[str, ...]
    attempts: int
    history: list[Change]
    error_code: int | None = None  # the carrier's code from the last change that carried one


class JobCounts(msgspec.Struct, frozen=True, kw_only=True):
    job: StoredJob
    counts: dict[str, int]


class Page(msgspec.Struct, frozen=True, kw_only=True):
    ids: list[tuple[int, str]]  # (message id, state)
    next_after: int | None
    recipients: list[Recipient] = []  # recipients[k] is the recipient of ids[k]


#: A job's status as the API reports it: as stored (active, paused, canceled), or ``completed``.
JOB_STATUSES = ("active", "paused", "canceled", "completed")


def job_status(stored: str, counts: dict[str, int]) -> str:
    """``completed`` once every message of an active or paused job is final (nothing is left
    to send or to hear about); a canceled job stays ``canceled``."""
    if stored in ("active", "paused") and counts and all(s in FINAL for s, n in counts.items() if n > 0):
        return "completed"
    return stored


class JobsPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a tenant's jobs, by id (oldest first). ``next_after``: the id to pass as
    ``after`` for the next page; it may be set on a page shorter than asked for (a filtered
    listing scans a bounded number of jobs per call), None once the listing is over."""

    jobs: list[JobCounts]
    next_after: str | None


def page_of_jobs(ids: Sequence[str], *, limit: int, scan: int, status: str | None,
                 job: Callable[[str], JobCounts | None]) -> JobsPage:  # fmt: skip
    """The page both stores answer from ``ids`` (the tenant's job ids after the cursor, in
    order): at most ``limit`` jobs of ``status`` (any if None), looking at ``scan`` ids at most."""
    out: list[JobCounts] = []
    last = None
    for n, job_id in enumerate(ids):
        if len(out) == limit or n == scan:
            return JobsPage(jobs=out, next_after=last)
        got = job(job_id)
        last = job_id
        if got is not None and (status is None or job_status(got.job.status, got.counts) == status):
            out.append(got)
    return JobsPage(jobs=out, next_after=None)


class Suppression(msgspec.Struct, frozen=True, kw_only=True):
    number: str
    at: float
    source: str = "api"


class HookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook event read from a subscriber's change sequence: a state change of a message
    whose job has a ``callback_url``, with whom it is about (the recipient's number and index in
    the job's request, the job's reference; None only for messages stored before them)."""

    id: int  # its position in the read that returned it (what ``settle`` names it by)
    seq: int  # the sequence row it came from: the cursor moves past it once delivered
    sub: int  # its subscriber
    tenant: str
    url: str
    message_id: int
    job_id: str
    state: str
    at: float
    reason: str
    carrier: str | None
    attempts: int  # failed deliveries of the subscriber's head so far
    error_code: int | None = None
    to: str | None = None
    index: int | None = None
    reference: str | None = None


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One state change as a receiver sees it (docs/WEBHOOKS.md). Receivers dedupe by
    (message_id, state, at)."""

    message_id: str  # as the API formats it (gateway.core.ids.format_id)
    job_id: str
    state: str
    at: float  # Unix seconds
    reason: str
    carrier: str | None
    error_code: int | None = None  # the carrier's code, where the change came from a receipt with one
    # The recipient (its number and index in the job's request) and the job's reference, so a
    # receiver can match results to what it sent; None only for messages stored before them.
    to: str | None = None
    index: int | None = None
    reference: str | None = None


class HookRow(msgspec.Struct, frozen=True, kw_only=True):
    """One sequence row as webhooks carry it (``hook_rows``): one message's events of one
    write, those its subscriber hears about, each already the wire's ``WebhookEvent`` as a dict
    (same keys, same order), so a batch's body is one msgspec call over them."""

    id: int  # its position in the read that returned it
    seq: int  # the cursor moves past it once its events are delivered (or dead)
    message_id: int
    events: list[dict]  # empty: nothing to send (its message is gone, or no state is heard)


def hook_wire(e: HookEvent) -> dict:
    """``e`` as a webhook carries it (``WebhookEvent``'s fields, in its order)."""
    return {"message_id": format_id(e.message_id), "job_id": e.job_id, "state": e.state, "at": e.at,
            "reason": e.reason, "carrier": e.carrier, "error_code": e.error_code, "to": e.to, "index": e.index,
            "reference": e.reference}  # fmt: skip


def hook_rows_of(events: Sequence[HookEvent]) -> list[HookRow]:
    """``hook_events``' read as rows (one per seq, in order): what a store without its own
    ``hook_rows`` returns."""
    rows: list[HookRow] = []
    start = 0
    for k in range(1, len(events) + 1):
        if k == len(events) or events[k].seq != events[start].seq:
            mine = events[start:k]
            rows.append(HookRow(id=len(rows), seq=mine[0].seq, message_id=mine[0].message_id,
                                events=[hook_wire(e) for e in mine]))  # fmt: skip
            start = k
    return rows


class Subscriber(msgspec.Struct, frozen=True, kw_only=True):
    """A (tenant, callback_url) with events after its cursor."""

    id: int
    tenant: str
    url: str
    attempts: int  # failed deliveries of its head since the cursor last moved
    next_at: float  # not before (backing off)


class OutboxStats(msgspec.Struct, frozen=True, kw_only=True):
    pending: int  # sequence rows not yet delivered (a row: one message's changes of one batch)
    dead: int  # events given up on: kept, never sent again


class InboundRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One MO message as received. ``sender`` is the subscriber's number, ``recipient`` the
    sender id or short code it was sent to; ``kind`` what it asked for (gateway.core.keywords):
    opt_out, opt_in, help or message; ``keyword`` the configured keyword it matched."""

    id: int = 0  # given by the store
    tenant: str
    carrier: str
    sender: str
    recipient: str
    text: str
    at: float
    kind: str
    keyword: str | None = None
    # False: the sender could not be made a canonical number (an alphanumeric sender, a national
    # number without a numbering context...): kept and listed as given, never put on a list.
    sender_canonical: bool = True
    certain: bool = True  # an opt_out the classifier was sure of (gateway.core.optout)
    asks: bool = False  # an unsure opt_out answered with a question: pending until YES or STOP


class InboundPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[InboundRecord]
    next_after: int | None


class InboundItem(msgspec.Struct, frozen=True, kw_only=True):
    """An inbound record due for its tenant's inbound webhook. ``id``, ``tenant``, ``url``,
    ``at`` and ``attempts`` as in ``HookEvent`` (the webhook sender's ``settle`` decides both)."""

    id: int
    tenant: str
    url: str
    at: float
    attempts: int
    record: InboundRecord


class RecipientRows(msgspec.Struct, frozen=True, kw_only=True):
    """Recipients already encoded where they were checked: a JSON array of ``Recipient``
    objects, element k for id ``first_id + k`` (a large job's chunk, from a worker process; a
    store that keeps JSON writes it as it is)."""

    json: bytes
    count: int

    def __len__(self) -> int:
        return self.count

    def decode(self) -> list[tuple[int, Recipient]]:
        return list(enumerate(_ROWS(self.json)))


_ROWS = msgspec.json.Decoder(list[Recipient]).decode


class NewJob(msgspec.Struct, frozen=True, kw_only=True):
    """The arguments of one ``add_job``, for ``add_jobs``. ``recipients``: (offset of its id
    from ``first_id``, recipient) pairs, or ``RecipientRows``."""

    job: Job
    first_id: int
    recipients: Sequence[tuple[int, Recipient]] | RecipientRows
    now: float
    callback_url: str | None = None
    callback_states: frozenset[str] | None = None  # None: every state of NOTIFY
    idempotency: tuple[str, str, bytes] | None = None
    incoming: bool = False


class Store(Protocol):
    # A write (``record``) of at most this many changes may run on the event loop's own thread:
    # it is local and short enough that handing it to a worker thread costs more time than it
    # blocks the loop (0: always a worker thread, as for a store across a network).
    inline_record: int

    def add_job(self, job: Job, first_id: int, recipients: Sequence[tuple[int, Recipient]] | RecipientRows,
                now: float, *, callback_url: str | None = None, callback_states: frozenset[str] | None = None,
                idempotency: tuple[str, str, bytes] | None = None, incoming: bool = False) -> None: ...  # fmt: skip
    # Several add_job in one transaction (group commit of concurrent requests): each commits or
    # fails alone (its error in its place, None if stored), the disk is synced once.
    def add_jobs(self, items: Sequence[NewJob]) -> list[Exception | None]: ...
    def commit_job(self, tenant: str, job_id: str, now: float,
                   idempotency: tuple[str, str, bytes] | None = None) -> None: ...  # fmt: skip
    def drop_job(self, tenant: str, job_id: str) -> None: ...
    def drop_incoming(self) -> int: ...  # uploads a dead process left unfinished; returns how many
    def record(self, changes: Sequence[Change]) -> int: ...  # returns the webhook sequence rows it added
    def set_job_status(self, tenant: str, job_id: str, status: str) -> bool: ...
    def job(self, tenant: str, job_id: str) -> JobCounts | None: ...
    def job_info(self, tenant: str, job_id: str) -> StoredJob | None: ...  # without the counts: cheap
    def message(self, tenant: str, message_id: int) -> MessageRecord | None: ...
    def messages(self, tenant: str, job_id: str, *, state: str | None, after: int, limit: int) -> Page: ...
    # A tenant's jobs with id > ``after`` (incoming ones never), at most ``limit``; with ``status``
    # (one of JOB_STATUSES, as ``job_status`` derives it) only those, scanning at most
    # ``JOBS_SCAN * limit`` jobs per call.
    def jobs(self, tenant: str, *, after: str, limit: int, status: str | None = None) -> JobsPage: ...
    def unfinished(self) -> Iterator[tuple[StoredJob, list[tuple[int, Recipient, str]]]]: ...
    def awaiting_receipts(self) -> list[tuple[int, str, tuple[str, ...]]]: ...
    def sends_since(self, since: float, categories: Collection[str]) -> list[tuple[int, str, str, float]]:
        """(message id, tenant, recipient, when) of every message of a job in ``categories``
        that a carrier took (its last ``submitted``) after ``since``, oldest first: the weekly
        caps' history, rebuilt from the store at start-up (``Gateway.recover``)."""
        ...
    def remembered(self, tenant: str, key: str, digest: str) -> bytes | None: ...
    def suppress(self, tenant: str, number: str, now: float, source: str = "api") -> None: ...
    def unsuppress(self, tenant: str, number: str) -> bool: ...
    def suppressions(self, tenant: str | None = None) -> list[tuple[str, Suppression]]: ...
    # Webhooks: ``record`` appends to each subscriber's change sequence; a reader delivers it.
    def hook_due(self, now: float) -> list[Subscriber]:
        """Subscribers with events after their cursor and not backing off at ``now``."""
        ...
    def hook_events(self, sub: int, limit: int) -> list[HookEvent]:
        """The events after ``sub``'s cursor, in sequence order (so in order per message), from
        at most ``limit`` sequence rows; only the states the job's ``callback_states`` chose."""
        ...
    def hook_rows(self, sub: int, limit: int, after: int = 0) -> list[HookRow]:
        """What ``hook_events`` reads, as rows: at most ``limit`` sequence rows after ``sub``'s
        cursor and after ``after`` (what a sender delivered and has not acknowledged yet), in
        order, each with its events in the wire's form (``HookRow``). A row whose message is
        gone or whose states the job does not hear may be there with no events."""
        ...
    def hook_ack(self, acks: Sequence[tuple[int, int]]) -> None:
        """(subscriber, seq) pairs: delivered up to ``seq``; its cursor moves there (never back)
        and its failed attempts are forgotten. One transaction."""
        ...
    def hook_retry(self, sub: int, next_at: float, error: str) -> None: ...  # attempts += 1, not before next_at
    def hook_dead(self, sub: int, events: Sequence[HookEvent], error: str, upto: int | None) -> None:
        """Keep ``events`` as dead letters (never sent again) and, with ``upto``, move the
        cursor there, in one transaction."""
        ...
    def hook_next_at(self) -> float | None: ...  # when the first subscriber with events is due, if any
    def outbox_statistics(self) -> OutboxStats: ...
    # Inbound messages:
    def add_inbound(self, record: InboundRecord, *, url: str | None = None) -> int:
        """Keep ``record`` (its id is given here and returned); an opt_out record puts its sender
        on the tenant's suppression list (source ``keyword:<KEYWORD>``, unless already there;
        not when ``sender_canonical`` is False), an opt_in one takes it off, in the same
        transaction. With ``url``: due for forwarding. Tenant "" holds MOs no tenant owns."""
        ...
    def add_inbound_once(self, record: InboundRecord, *, url: str | None = None, key: str | None = None,
                         since: float = 0.0) -> tuple[int, bool]:
        """``add_inbound``, at most once per ``key`` (the carrier's message id, or a digest of
        an MO that has none) seen at or after ``since``: (id, True) when stored now, (the first
        one's id, False) for a duplicate, which changes nothing. Also: an opt_out or opt_in
        record settles its sender's pending question; an ``asks`` record opens one."""
        ...
    def question_pending(self, tenant: str, number: str, since: float) -> bool: ...  # asked at >= since
    def tenants_messaged(self, number: str, since: float) -> list[str]:
        """Tenants with a message to ``number`` changed at or after ``since`` (rare: an
        unroutable opt-out; may scan the recent messages)."""
        ...
    def inbound(self, tenant: str, *, after: int, limit: int, kind: str | None = None) -> InboundPage: ...
    def inbound_take(self, now: float, limit: int, lease: float) -> list[InboundItem]: ...
    def inbound_done(self, ids: Sequence[int]) -> None: ...
    def inbound_retry(self, ids: Sequence[int], next_at: float, error: str) -> None: ...
    def inbound_dead(self, ids: Sequence[int], error: str) -> None: ...
    def inbound_next_at(self) -> float | None: ...
    def close(self) -> None: ...
