"""The generic JSON profile: many messages per request, results in order, HMAC-signed callbacks.

Request (field names from ``HttpSettings.fields``)::

    POST {url}            Authorization: Bearer <token>      Idempotency-Key: <key>
    {"messages": [{"to": "+4479...", "from": "Sluice", "text": "...", "client_ref": "123",
                   "media_urls": ["https://..."]}, ...]}

Answer (2xx)::

    {"messages": [{"id": "abc"}, {"error": {"code": 21211, "name": "invalid number"}}, ...]}

Callbacks (receipts and inbound) are posted to us as JSON, signed like Stripe's webhooks:
``X-Sluice-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``::

    {"receipts": [{"id": "abc", "status": "delivered", "error_code": null}, ...]}
    {"inbound": [{"from": "+4479...", "to": "SLUICE", "text": "STOP"}, ...]}
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

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
    dig,
    idempotency_key,
    media_of,
    status_answer,
)
from carriers.http.settings import HttpSettings
from gateway.core.model import Dispatch
from gateway.core.receipts import ReceiptState

__all__ = ["MAX_BATCH", "MEDIA", "NAME", "SIGNATURE_HEADER", "build", "parse", "parse_callback", "sign", "verify"]

NAME = "generic"
MAX_BATCH = 10_000
MEDIA = True
SIGNATURE_HEADER = "x-sluice-signature"

_encode = msgspec.json.encode
_decode = msgspec.json.decode

_STATES = {
    "delivered": ReceiptState.DELIVERED,
    "undelivered": ReceiptState.UNDELIVERABLE,
    "failed": ReceiptState.UNDELIVERABLE,
    "expired": ReceiptState.EXPIRED,
    "rejected": ReceiptState.REJECTED,
    "unknown": ReceiptState.UNKNOWN,
    "accepted": ReceiptState.ACCEPTED,
    "sent": ReceiptState.ENROUTE,
    "queued": ReceiptState.ENROUTE,
}


def build(
    dispatches: Sequence[Dispatch], s: HttpSettings, token: str, generations: Mapping[int, int] = {}
) -> list[Request]:
    """One request for the whole batch (the connector keeps batches within ``batch_size``)."""
    f = s.fields
    items = []
    for d in dispatches:
        item = {f.to: d.recipient, f.sender: d.sender, f.text: d.body, f.client_ref: str(d.message_id)}
        media = media_of(d)
        if media:
            item[f.media] = list(media)
        items.append(item)
    key = idempotency_key(s.name, dispatches, generations)
    headers = [("content-type", "application/json")]
    if token:
        headers.append((s.auth_header, f"{s.auth_scheme} {token}" if s.auth_scheme else token))
    if s.idempotency_header:
        headers.append((s.idempotency_header, key))
    body = _encode({f.messages: items})
    return [Request(method="POST", url=s.url, headers=tuple(headers), body=body,
                    refs=tuple(d.ref for d in dispatches), idempotency_key=key)]  # fmt: skip


def parse(status: int, headers: Mapping[str, str], body: bytes, n: int, s: HttpSettings, now: float) -> Answer:
    """What the carrier said about a request of ``n`` messages."""
    early = status_answer(status, headers, now)
    if early is not None:
        return early
    f = s.fields
    try:
        doc = _decode(body) if body else None
    except msgspec.DecodeError:
        doc = None
    if status >= 400:  # the whole request refused: every message, with the carrier's code if it gave one
        code = dig(doc, f.error_code)
        name = dig(doc, f.error_name)
        refused = Refused(code=code if isinstance(code, int) else status, name=str(name or f"HTTP {status}"))
        return Results([refused] * n)
    results = dig(doc, f.messages)
    if not isinstance(results, list) or len(results) != n:
        return Retry(status=status, reason="answer does not list every message")
    items: list[Accepted | Refused] = []
    for r in results:
        cid = dig(r, f.id)
        if cid is not None and cid != "":
            items.append(Accepted(str(cid)))
            continue
        code = dig(r, f.error_code)
        code = code if isinstance(code, int) else 0
        name = dig(r, f.error_name)
        items.append(Refused(code=code, name=str(name or "refused"), permanent=code not in f.temporary_codes))
    return Results(items)


class _Receipt(msgspec.Struct, frozen=True):
    id: str
    status: str
    error_code: int | None = None


class _Inbound(msgspec.Struct, frozen=True, rename={"sender": "from", "recipient": "to"}):
    sender: str
    recipient: str
    text: str = ""
    media_urls: list[str] = []
    id: str | None = None


class _Callback(msgspec.Struct, frozen=True):
    receipts: list[_Receipt] = []
    inbound: list[_Inbound] = []


_callback = msgspec.json.Decoder(_Callback)


def parse_callback(headers: Mapping[str, str], body: bytes) -> list[CallbackReceipt | CallbackInbound]:
    """Receipts and inbound messages in one posted body. Raises ``msgspec.DecodeError`` if unreadable."""
    doc = _callback.decode(body)
    out: list[CallbackReceipt | CallbackInbound] = [
        CallbackReceipt(carrier_id=r.id, state=_STATES.get(r.status.lower()), error_code=r.error_code,
                        word=r.status[:32])  # fmt: skip
        for r in doc.receipts
    ]
    out.extend(
        CallbackInbound(sender=m.sender, recipient=m.recipient, text=m.text, media=tuple(m.media_urls),
                        carrier_id=m.id or None)  # fmt: skip
        for m in doc.inbound
    )
    return out


def _mac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()


def sign(url: str, body: bytes, secret: str, now: float) -> dict[str, str]:
    t = int(now)
    return {SIGNATURE_HEADER: f"t={t},v1={_mac(secret, t, body)}"}


def verify(url: str, headers: Mapping[str, str], body: bytes, secret: str, now: float, tolerance: float = 300.0) -> bool:
    """The signature is ours and no older (or newer) than ``tolerance`` seconds (replays)."""
    value = headers.get(SIGNATURE_HEADER) or ""
    parts = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
    try:
        t = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - t) > tolerance:
        return False
    return hmac.compare_digest(_mac(secret, t, body), parts.get("v1", ""))
