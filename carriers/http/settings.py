"""``HttpSettings``: how to reach one HTTP carrier (a ``[[carriers.http]]`` table in the config).

Pure data: the config loads it without importing httpx or an event loop, and the profiles read it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["FieldMap", "HttpSettings"]

Positive = Annotated[float, msgspec.Meta(gt=0)]


class FieldMap(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the generic JSON profile puts each field of a message, and finds each field of the
    answer. Paths into the answer are dotted (``error.code``)."""

    messages: str = "messages"  # the list of messages in the request, and of results in the answer
    to: str = "to"
    sender: str = "from"
    text: str = "text"
    client_ref: str = "client_ref"  # our message id, so the carrier (and its receipts) can name it
    media: str = "media_urls"
    id: str = "id"  # the carrier's id of an accepted message, in each result
    error_code: str = "error.code"  # the carrier's code of a refused message, in each result ...
    error_name: str = "error.name"  # ... and its name
    temporary_codes: tuple[int, ...] = ()  # result codes that mean "try again later", not "never"


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One HTTP carrier. Secrets are never here: ``*_env`` names an environment variable."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    profile: Literal["generic", "twilio"] = "generic"
    url: str = "http://127.0.0.1:8900/messages"  # generic: the POST endpoint; twilio: the API base
    account: str = ""  # twilio: the account SID (in the path, and the Basic auth user)
    auth_env: str | None = None  # the variable holding the API token (generic: sent as below)
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"  # "" sends the token alone
    callback_secret_env: str | None = None  # generic: HMAC key of receipts (twilio: the auth token)
    status_callback: str | None = None  # twilio: where the carrier posts receipts (StatusCallback)
    fields: FieldMap = msgspec.field(default_factory=FieldMap)
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8  # requests in flight = keep-alive connections
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100  # messages per request, if the profile batches
    timeout: Positive = 10.0  # per request (connect, write, read)
    retry_backoff: Positive = 0.25  # wait before the 2nd try of a request; doubles, with jitter ...
    retry_backoff_max: Positive = 5.0  # ... up to this
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 4  # tries of one request, then its messages go back
    throttle_pause: Annotated[float, msgspec.Meta(ge=0)] = 1.0  # after a 429 without Retry-After
    # Failing (5xx, time-outs) past core.carriers[].down_after: its traffic fails over; after this
    # many seconds it is tried again (doubling while it keeps failing, at most 300 s).
    probe_after: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    temporary_backoff: Positive = 2.0  # retry_after of a per-message temporary refusal: this * 2**attempt ...
    temporary_backoff_max: Positive = 300.0  # ... at most this
    idempotency_header: str = "Idempotency-Key"  # "" if the carrier has none
    media: bool = False  # the carrier takes media URLs (MMS)
    id_format: Literal["dec", "hex", "str"] = "str"
    hold_unmatched_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    receipt_horizon_s: Positive = 72 * 3600.0
    horizon_state: Literal["unknown", "expired"] = "unknown"
    signature_tolerance_s: Positive = 300.0  # generic: how old a signed callback may be
    # A receipts callback is answered 204 once the states it made are written; after this many
    # seconds without, 503 (the carrier posts it again).
    callback_ack_timeout: Positive = 10.0
    answer_receipts: Literal["after_write", "on_arrival"] = "after_write"  # "on_arrival": 204 at once
    tick_interval: Positive = 1.0
