"""The HTTP API's bodies, as msgspec types: decoding validates them, and the OpenAPI document
is generated from them (``msgspec.json.schema_components``), so the two never disagree."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
    "ErrorBody",
    "InboundMessageOut",
    "InboundPageOut",
    "JobAccepted",
    "JobIn",
    "JobStatus",
    "MessageAccepted",
    "MessageIn",
    "MessageOut",
    "MessagePage",
    "RecipientIn",
    "StateChangeOut",
    "SuppressionIn",
    "SuppressionOut",
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
Reference = Annotated[str, msgspec.Meta(max_length=128)]
Zone = Annotated[str, msgspec.Meta(max_length=64, description="IANA time zone, e.g. America/New_York")]
Timestamp = Annotated[float, msgspec.Meta(ge=0, description="seconds since the Unix epoch")]


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    to: Number
    body: Body
    sender: Sender
    category: CategoryIn = "transactional"
    tz: Zone | None = None
    send_at: Timestamp | None = None
    validity: Validity | None = None
    callback_url: Url | None = None
    reference: Reference | None = None
    media: Media = []


class RecipientIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    to: Number
    vars: dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=640)]] = {}
    tz: Zone | None = None


class JobIn(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    sender: Sender
    template: Body
    recipients: list[RecipientIn] = []
    category: CategoryIn = "marketing"
    send_at: Timestamp | None = None
    validity: Validity | None = None
    callback_url: Url | None = None
    reference: Reference | None = None
    media: Media = []


class MessageAccepted(msgspec.Struct):
    id: str
    status: str


class RecipientError(msgspec.Struct, gc=False):
    index: int
    error: str


class JobAccepted(msgspec.Struct):
    id: str
    accepted: int
    rejected: list[RecipientError]


class JobStatus(msgspec.Struct):
    id: str
    status: Literal["active", "paused", "canceled"]
    size: int
    counts: dict[str, int]
    created_at: float


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
    state: str
    carrier: str | None
    segments: int  # as dispatch plans it (0 if it cannot be planned)
    encoding: Literal["gsm7", "ucs2"] | None
    carrier_ids: list[str]
    attempts: int
    history: list[StateChangeOut]
    error_code: int | None = None  # the carrier's code from its last receipt that gave one


class MessagePage(msgspec.Struct):
    messages: list[MessageAccepted]
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


class ErrorBody(msgspec.Struct):
    error: str
    field: str | None = None
    index: int | None = None
