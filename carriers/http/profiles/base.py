"""What every profile builds and returns: requests, answers, callbacks; and the helpers they share.

An ``Answer`` is one of:

- ``Results``    the carrier read the request: one ``Accepted`` or ``Refused`` per message, in order
- ``Throttle``   429: nothing was taken; wait ``retry_after`` seconds (None: not said)
- ``Retry``      5xx, 408, 409 (same key still in progress), or an answer we cannot read: the
                 carrier may or may not have taken it; send the *same* request (same idempotency key)
"""

from __future__ import annotations

import email.utils
import hashlib
import math
from collections.abc import Mapping, Sequence

import msgspec

from gateway.core.model import Dispatch
from gateway.core.receipts import ReceiptState

__all__ = [
    "Accepted",
    "Answer",
    "CallbackInbound",
    "CallbackReceipt",
    "Refused",
    "Request",
    "Results",
    "Retry",
    "Throttle",
    "dig",
    "idempotency_key",
    "media_of",
    "retry_after",
    "status_answer",
]


class Request(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    refs: tuple[int, ...]  # the dispatches it carries, in body order
    idempotency_key: str


class Accepted(msgspec.Struct, frozen=True, tag="accepted"):
    carrier_id: str


class Refused(msgspec.Struct, frozen=True, kw_only=True, tag="refused"):
    code: int  # the carrier's code (its own error number, else the HTTP status)
    name: str
    permanent: bool = True


class Results(msgspec.Struct, frozen=True, tag="results"):
    items: list[Accepted | Refused]


class Throttle(msgspec.Struct, frozen=True, tag="throttle"):
    retry_after: float | None


class Retry(msgspec.Struct, frozen=True, kw_only=True, tag="retry"):
    status: int
    reason: str


Answer = Results | Throttle | Retry


class CallbackReceipt(msgspec.Struct, frozen=True, kw_only=True, tag="receipt"):
    """``state`` None: a status the profile does not know, decided like an SMPP receipt without
    a state (``gateway.core.receipts.stateless_state``); ``word`` is the status as posted."""

    carrier_id: str
    state: ReceiptState | None
    error_code: int | None = None
    word: str | None = None


class CallbackInbound(msgspec.Struct, frozen=True, kw_only=True, tag="inbound"):
    sender: str
    recipient: str
    text: str
    media: tuple[str, ...] = ()
    carrier_id: str | None = None  # the carrier's id of the MO (a redelivery carries the same)


def media_of(d: Dispatch) -> tuple[str, ...]:
    """Media URLs of a dispatch (an MMS), empty for a plain SMS."""
    return d.media


def idempotency_key(carrier: str, dispatches: Sequence[Dispatch], generations: Mapping[int, int]) -> str:
    """The same key for the same messages, whichever attempt: a request retried in the connector,
    or sent again by the core after a time-out, is never taken twice by a carrier that honours
    keys. ``generations`` bumps a message's key after a definite refusal, so a new try of it is
    a new request rather than a replay of the stored refusal."""
    h = hashlib.blake2b(carrier.encode(), digest_size=16)
    for d in dispatches:
        h.update(b"%d.%d," % (d.message_id, generations.get(d.message_id, 0)))
    return h.hexdigest()


def dig(obj: object, path: str) -> object:
    """``obj["a"]["b"]`` for the path ``"a.b"``; None where it is missing."""
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def status_answer(status: int, headers: Mapping[str, str], now: float) -> Answer | None:
    """The answer when the status alone decides it (throttled, retry), else None."""
    if status == 429:
        return Throttle(retry_after(headers.get("retry-after"), now))
    if status >= 500 or status in (408, 409, 425):
        return Retry(status=status, reason=f"HTTP {status}")
    return None
