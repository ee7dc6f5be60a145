"""The HTTP API's bodies, as msgspec types: decoding validates them, and the OpenAPI document
is generated from them (``msgspec.json.schema_components``), so the two never disagree."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "CarrierOut",
    "ErrorBody",
    "HealthOut",
    "InboundMessageOut",
    "InboundPageOut",
    "JobAccepted",
    "JobIn",
    "JobPage",
    "JobStatus",
    "BatchItemIn",
    "BatchOut",
    "BatchResult",
    "MessageAccepted",
    "MessageIn",
    "MessageOut",
    "MessagePage",
    "MessageSummary",
    "RecipientError",
    "RecipientIn",
    "StateChangeOut",
    "SuppressionIn",
    "SuppressionOut",
    "local_zone",
]

Number = Annotated[str, msgspec.Meta(min_length=2, max_length=32, description=(
    "E.164, e.g. +14155550123; spaces, dashes, dots, parens, a leading 00 and non-ASCII decimal digits are "
    "accepted and folded: the number is kept as phonenumbers' E.164 of it"))]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=1600)]
Sender = Annotated[str, msgspec.Meta(min_length=1, max_length=20, description="alphanumeric or number")]
CategoryIn = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="otp, transactional, marketing, ...")]
Validity = Annotated[int, msgspec.Meta(ge=1, le=7 * 86400, description="seconds")]
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)]
Media = Annotated[list[Url], msgspec.Meta(max_length=10, description="MMS: media URLs; only carriers that take media")]
Reference = Annotated[str, msgspec.Meta(max_length=128, description="the client's own reference, returned with every result")]
Zone = Annotated[str, msgspec.Meta(max_length=64, description=(
    "the recipient's IANA time zone, e.g. America/New_York: wins over the zones of the number for quiet hours "
    "(the number still gives the region whose rules apply)"))]
# The states a callback_url may ask for: gateway/store/base.py NOTIFY (checked by a test), in the
# order a message goes through them.
CallbackState = Literal["accepted", "deferred", "submitted", "delivered", "undelivered", "expired", "rejected",
                        "failed", "unknown", "capped", "suppressed", "canceled"]  # fmt: skip
CallbackStates = Annotated[list[CallbackState], msgspec.Meta(min_length=1, max_length=12, description=(
    "the states the callback_url hears about (default: all of them); e.g. only the final ones. "
    "Needs callback_url"))]
Timestamp = Annotated[float, msgspec.Meta(ge=0, description="seconds since the Unix epoch")]


#: The category of a message or a job that names none, the same for both: the strictest (quiet
#: hours, weekly caps, opt-outs apply), so a sender that forgets it never breaks those rules;
#: an OTP or a transactional message says so (docs/API.md).
DEFAULT_CATEGORY = "marketing"


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    to: Number
    body: Body
    sender: Sender
    category: CategoryIn = DEFAULT_CATEGORY
    tz: Zone | None = None
    zone: Zone | None = None  # the same as tz (either name; both: they must agree)
    send_at: Timestamp | None = None
    validity: Validity | None = None
    callback_url: Url | None = None
    callback_states: CallbackStates | None = None
    reference: Reference | None = None
    media: Media = []


class RecipientIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    to: Number
    vars: dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=640)]] = {}
    tz: Zone | None = None
    zone: Zone | None = None  # the same as tz (either name; both: they must agree)


def local_zone(r: MessageIn | RecipientIn) -> str | None:
    """The recipient's own zone, given as ``tz`` or ``zone``; ValueError if both, differing."""
    if r.zone is None or r.zone == r.tz:
        return r.tz
    if r.tz is not None:
        raise ValueError(f"tz {r.tz!r} and zone {r.zone!r} differ: give one zone")
    return r.zone


class JobIn(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    sender: Sender
    template: Body
    recipients: list[RecipientIn] = []
    category: CategoryIn = DEFAULT_CATEGORY
    send_at: Timestamp | None = None
    validity: Validity | None = None
    callback_url: Url | None = None
    callback_states: CallbackStates | None = None
    reference: Reference | None = None
    media: Media = []


class MessageAccepted(msgspec.Struct):
    """``state``: the message's state; ``status`` is the same value under its old name (deprecated)."""

    id: str
    state: str
    status: str


#: The most messages one ``POST /v1/messages/batch`` may hold (more: 413 ``batch_too_large``).
MAX_BATCH = 1000

IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=200, description=(
    "this message's own Idempotency-Key: as the header of POST /v1/messages, per message"))]


class BatchItemIn(msgspec.Struct, forbid_unknown_fields=True):
    """One message of a batch: its key and the message exactly as ``POST /v1/messages`` takes it.
    The key's stored answer is compared with the SHA-256 of the ``message`` value's bytes as sent,
    the same bytes the single endpoint would hash: either endpoint answers a key the other stored."""

    idempotency_key: IdempotencyKey
    message: MessageIn


# The bound is said, not stated as maxItems: more is refused with 413 batch_too_large (RFC 9110
# §15.5.14: content larger than the server will process), not 422 as a schema violation.
BatchIn = Annotated[list[BatchItemIn], msgspec.Meta(min_length=1, description=(
    f"1 to {MAX_BATCH} messages; more: 413 batch_too_large"))]


class BatchResult(msgspec.Struct, omit_defaults=True):
    """A batch message's answer, at its ``index``: ``status`` is what ``POST /v1/messages`` would
    have answered for it alone (202 with ``id`` and ``state``; 409 or 422 with ``code``, ``error``
    and ``field``)."""

    index: int
    status: int
    id: str | None = None
    state: str | None = None
    code: str | None = None
    error: str | None = None
    field: str | None = None


class BatchOut(msgspec.Struct):
    """The answer to a batch: one result per message, in the request's order."""

    results: list[BatchResult]
    accepted: int  # results with an id (new or answered before under their key)
    rejected: int


class RecipientError(msgspec.Struct, gc=False):
    index: int
    error: str


class JobAccepted(msgspec.Struct):
    id: str
    accepted: int
    # The first REJECTED_IN_FULL rejected recipients in full (by index); all of them counted in
    # rejected_count and, by reason (the reason without the number itself), in rejected_by_reason.
    rejected: list[RecipientError]
    rejected_count: int = 0
    rejected_by_reason: dict[str, int] = {}


#: How many rejected recipients a job's answer lists one by one (the rest are counted by reason).
REJECTED_IN_FULL = 1000


class JobStatus(msgspec.Struct):
    """``status``: active, paused, canceled, or completed (every message final); ``counts``:
    messages per state."""

    id: str
    status: Literal["active", "paused", "canceled", "completed"]
    size: int
    counts: dict[str, int]
    created_at: float
    reference: str | None = None


class JobPage(msgspec.Struct):
    jobs: list[JobStatus]
    next: str | None  # pass as `after` for the next page


class StateChangeOut(msgspec.Struct):
    state: str
    at: float
    reason: str
    carrier: str | None = None
    error_code: int | None = None  # the carrier's code this change came with (receipt err:, network_error_code)


class MessageOut(msgspec.Struct):
    id: str
    job_id: str
    to: str
    index: int | None  # the recipient's position in the job's request (None: stored before it was kept)
    reference: str | None  # the job's (or message's) reference as submitted
    state: str
    carrier: str | None
    segments: int  # as dispatch plans it (0 if it cannot be planned)
    encoding: Literal["gsm7", "ucs2"] | None
    carrier_ids: list[str]
    attempts: int
    history: list[StateChangeOut]
    error_code: int | None = None  # the carrier's code from its last receipt that gave one


class MessageSummary(msgspec.Struct):
    """One message of a job: its recipient (``to``, ``index`` in the request) and its state.
    ``status`` is ``state`` under its old name (deprecated)."""

    id: str
    state: str
    to: str
    index: int | None
    reference: str | None
    status: str


class MessagePage(msgspec.Struct):
    messages: list[MessageSummary]
    next: str | None


class SuppressionIn(msgspec.Struct, forbid_unknown_fields=True):
    number: Number


class SuppressionOut(msgspec.Struct):
    number: str
    at: float
    source: str


class InboundMessageOut(msgspec.Struct, frozen=True, kw_only=True, rename={"sender": "from", "recipient": "to"}):
    """An inbound (MO) message, as ``GET /v1/inbound`` and the tenant's ``inbound_url`` see it.
    ``kind``: opt_out, opt_in, help (keywords, acted on by Sluice) or message. ``from`` is the
    sender's canonical E.164, or as the carrier gave it when ``sender_canonical`` is false (an
    alphanumeric sender, a national number without the carrier's ``default_region``): such an
    opt-out is kept and shown, flagged, for an operator to act on. ``certain``: false for an
    opt-out the classifier was unsure of."""

    id: int
    sender: str
    recipient: str
    text: str
    at: float
    carrier: str
    kind: str
    keyword: str | None
    sender_canonical: bool = True
    certain: bool = True


class InboundPageOut(msgspec.Struct, frozen=True, kw_only=True):
    inbound: list[InboundMessageOut]
    next: int | None = None  # pass as `after` for the next page


class PreviewIn(msgspec.Struct, forbid_unknown_fields=True):
    """A text to measure: ``text`` is a template like a job's (placeholders filled from ``vars``)."""

    text: Body
    vars: dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=640)]] = {}


class PreviewOut(msgspec.Struct):
    """How the gateway will send ``text``: the same planning as dispatch (smart encoding included).
    ``units``: GSM-7 septets or UTF-16 code units; ``prices``: carrier -> segments x its
    ``price_per_segment`` (minor units), null where none is configured."""

    text: str
    encoding: str
    segments: int
    units: int
    prices: dict[str, int | None]


class ErrorBody(msgspec.Struct):
    """Every error answer. ``code``: stable and machine-readable (docs/API.md, "Errors");
    ``error``: for people; ``field``/``index``: where in the request; ``rejected``: with
    ``all_recipients_rejected``, why each recipient was refused."""

    error: str
    code: str
    field: str | None = None
    index: int | None = None
    rejected: list[RecipientError] | None = None  # the first REJECTED_IN_FULL
    rejected_count: int | None = None  # with ``rejected``: how many in all
    rejected_by_reason: dict[str, int] | None = None


class HealthOut(msgspec.Struct):
    """``/healthz`` (ok), ``/readyz`` (ready, or starting with 503 and what it waits for)."""

    status: str
    waiting_for: str | None = None


class CarrierOut(msgspec.Struct):
    """One carrier in ``/v1/carriers``: its health, messages ready for it, its rate bucket and
    its link's statistics (per connector type). A tenant's key sees ``health`` only (the rest
    counts every tenant's traffic); an operator's key sees all of it."""

    health: Literal["up", "down"]
    ready: int | None = None
    bucket: dict[str, Any] | None = None
    link: dict[str, Any] | None = None
