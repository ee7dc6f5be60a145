"""The Twilio-style profile: one form-encoded request per message, Basic auth, signed callbacks.

Request::

    POST {url}/2010-04-01/Accounts/{account}/Messages.json     Authorization: Basic <account:token>
    To=%2B4479...&From=Sluice&Body=...&MediaUrl=https://...&StatusCallback=https://...

Answer: 201 ``{"sid": "SM...", "status": "queued"}``, or 4xx ``{"code": 21211, "message": "..."}``.

Callbacks are forms: a receipt has ``MessageSid``, ``MessageStatus``, ``ErrorCode``; an inbound
message has ``From``, ``To``, ``Body``, ``NumMedia``, ``MediaUrl0``... Both are signed with
``X-Twilio-Signature``: base64 of HMAC-SHA1(auth token, the full URL + every POST parameter's name
and value, sorted by name).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, urlencode

import msgspec

from carriers.http.profiles.base import (
    Accepted,
    Answer,
    CallbackInbound,
    CallbackReceipt,
    Refused,
    Request,
    Results,
    Retry,
    idempotency_key,
    media_of,
    status_answer,
)
from carriers.http.settings import HttpSettings
from gateway.core.model import Dispatch
from gateway.core.receipts import ReceiptState

__all__ = ["MAX_BATCH", "MEDIA", "NAME", "SIGNATURE_HEADER", "build", "messages_url", "parse", "parse_callback",
           "sign", "verify"]  # fmt: skip

NAME = "twilio"
MAX_BATCH = 1
MEDIA = True
SIGNATURE_HEADER = "x-twilio-signature"

_STATES = {
    "delivered": ReceiptState.DELIVERED,
    "undelivered": ReceiptState.UNDELIVERABLE,
    "failed": ReceiptState.UNDELIVERABLE,
    "canceled": ReceiptState.DELETED,
    "read": ReceiptState.DELIVERED,
    "accepted": ReceiptState.ACCEPTED,
    "queued": ReceiptState.ENROUTE,
    "sending": ReceiptState.ENROUTE,
    "sent": ReceiptState.ENROUTE,
}


def messages_url(s: HttpSettings) -> str:
    return f"{s.url.rstrip('/')}/2010-04-01/Accounts/{s.account}/Messages.json"


def build(
    dispatches: Sequence[Dispatch], s: HttpSettings, token: str, generations: Mapping[int, int] = {}
) -> list[Request]:
    url = messages_url(s)
    auth = "Basic " + base64.b64encode(f"{s.account}:{token}".encode()).decode()
    out = []
    for d in dispatches:
        form = [("To", d.recipient), ("From", d.sender), ("Body", d.body)]
        form.extend(("MediaUrl", m) for m in media_of(d))
        if s.status_callback:
            form.append(("StatusCallback", s.status_callback))
        key = idempotency_key(s.name, (d,), generations)
        headers = [("content-type", "application/x-www-form-urlencoded"), ("authorization", auth)]
        if s.idempotency_header:
            headers.append((s.idempotency_header, key))
        out.append(Request(method="POST", url=url, headers=tuple(headers), body=urlencode(form).encode(),
                           refs=(d.ref,), idempotency_key=key))  # fmt: skip
    return out


class _Created(msgspec.Struct, frozen=True):
    sid: str = ""


class _Error(msgspec.Struct, frozen=True):
    code: int | None = None
    message: str = ""


_created = msgspec.json.Decoder(_Created)
_error = msgspec.json.Decoder(_Error)


def parse(status: int, headers: Mapping[str, str], body: bytes, n: int, s: HttpSettings, now: float) -> Answer:
    early = status_answer(status, headers, now)
    if early is not None:
        return early
    if status >= 400:
        try:
            err = _error.decode(body)
        except msgspec.DecodeError:
            err = _Error()
        return Results([Refused(code=err.code or status, name=err.message or f"HTTP {status}")] * n)
    try:
        created = _created.decode(body)
    except msgspec.DecodeError:
        created = _Created()
    if not created.sid:
        return Retry(status=status, reason="answer has no sid")
    return Results([Accepted(created.sid)])


def parse_callback(headers: Mapping[str, str], body: bytes) -> list[CallbackReceipt | CallbackInbound]:
    form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if status and status != "received":
        code = form.get("ErrorCode") or ""
        return [CallbackReceipt(carrier_id=form.get("MessageSid", ""),
                                state=_STATES.get(status.lower()), word=status[:32],
                                error_code=int(code) if code.isdigit() else None)]  # fmt: skip
    if "From" not in form:
        raise ValueError("neither a receipt nor an inbound message")
    media = tuple(form[f"MediaUrl{i}"] for i in range(int(form.get("NumMedia") or 0)) if f"MediaUrl{i}" in form)
    return [CallbackInbound(sender=form["From"], recipient=form.get("To", ""), text=form.get("Body", ""), media=media,
                            carrier_id=form.get("MessageSid") or form.get("SmsSid") or None)]  # fmt: skip


def _mac(url: str, body: bytes, token: str) -> str:
    params = sorted(parse_qsl(body.decode("utf-8"), keep_blank_values=True), key=lambda kv: kv[0])
    data = url + "".join(k + v for k, v in params)
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def sign(url: str, body: bytes, secret: str, now: float) -> dict[str, str]:
    return {SIGNATURE_HEADER: _mac(url, body, secret)}


def verify(url: str, headers: Mapping[str, str], body: bytes, secret: str, now: float, tolerance: float = 300.0) -> bool:
    """Twilio's scheme has no timestamp: ``now`` and ``tolerance`` are unused."""
    return hmac.compare_digest(_mac(url, body, secret), headers.get(SIGNATURE_HEADER) or "")
