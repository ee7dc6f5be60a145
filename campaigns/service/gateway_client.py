"""The gateway, as the campaign layer sees it: its public HTTP API only (httpx), with one tenant's key.

Sends carry an ``Idempotency-Key`` (retrying a send never sends twice); suppressions are added with
``POST /v1/suppressions`` and lifted with ``DELETE /v1/suppressions/{number}``; inbound messages
(including the STOP family the gateway acts on itself) are read with ``GET /v1/inbound?after=``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from campaigns.errors import GatewayError, GatewayRefused


class Inbound(msgspec.Struct, frozen=True, kw_only=True, rename={"sender": "from", "recipient": "to"}):
    id: int
    sender: str
    recipient: str
    text: str
    at: float
    carrier: str = ""
    kind: str = "message"
    keyword: str | None = None


class InboundPage(msgspec.Struct, frozen=True, kw_only=True):
    inbound: list[Inbound]
    next: int | None = None


class Suppression(msgspec.Struct, frozen=True, kw_only=True):
    number: str
    at: float
    source: str = ""


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    error: str = ""


class JobAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway's answer to a job: ``id`` is empty when no recipient was accepted (no job made)."""

    id: str = ""
    accepted: int = 0
    rejected: list[Rejected] = []
    rejected_count: int = 0


class Preview(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    encoding: str
    segments: int
    units: int
    prices: dict[str, int | None] = {}


class SentMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    state: str = "queued"


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """One message's answer in ``POST /v1/messages/batch``: ``status`` is what ``POST /v1/messages``
    would have answered for it alone (202 with ``id``; 409, 422... with ``code`` and ``error``)."""

    index: int
    status: int
    id: str = ""
    state: str = ""
    code: str = ""
    error: str = ""
    field: str | None = None


class BatchAnswer(msgspec.Struct, frozen=True, kw_only=True):
    results: list[BatchResult]
    accepted: int = 0
    rejected: int = 0


def message_bytes(*, to: str, body: str, sender: str, category: str = "transactional",
                  media: list[str] | None = None) -> bytes:  # fmt: skip
    """A message as ``POST /v1/messages`` takes it, always the same bytes for the same message: the
    gateway compares an Idempotency-Key's bytes, whether the message came alone or in a batch."""
    payload: dict[str, Any] = {"to": to, "body": body, "from": sender, "category": category}
    if media:
        payload["media"] = media
    return msgspec.json.encode(payload)


_sent = msgspec.json.Decoder(SentMessage)
_batch = msgspec.json.Decoder(BatchAnswer)
_pages = msgspec.json.Decoder(InboundPage)
_job = msgspec.json.Decoder(JobAnswer)
_preview = msgspec.json.Decoder(Preview)
_supps = msgspec.json.Decoder(list[Suppression])


class GatewayClient:
    def __init__(self, base_url: str, key: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 10.0) -> None:  # fmt: skip
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), transport=transport, timeout=timeout,
                                       headers={"authorization": f"Bearer {key}"})  # fmt: skip

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, *, ok: tuple[int, ...], **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise GatewayError(f"gateway {method} {path}: {exc!r}") from exc
        if resp.status_code not in ok:
            message = f"gateway {method} {path}: HTTP {resp.status_code} {resp.text[:200]}"
            if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                try:
                    code = msgspec.json.decode(resp.content).get("code")
                except (msgspec.DecodeError, AttributeError):
                    code = None
                raise GatewayRefused(message, http_status=resp.status_code, gateway_code=code)
            raise GatewayError(message)
        return resp

    async def suppress(self, number: str) -> None:
        await self._call("POST", "/v1/suppressions", ok=(200, 201), content=msgspec.json.encode({"number": number}))

    async def unsuppress(self, number: str) -> None:
        await self._call("DELETE", f"/v1/suppressions/{quote(number, safe='')}", ok=(200, 404))

    async def suppressions(self) -> list[Suppression]:
        return _supps.decode((await self._call("GET", "/v1/suppressions", ok=(200,))).content)

    async def inbound(self, *, after: int, limit: int = 500) -> InboundPage:
        resp = await self._call("GET", "/v1/inbound", ok=(200,), params={"after": after, "limit": limit})
        return _pages.decode(resp.content)

    async def send(self, *, to: str, body: str, sender: str, key: str, media: list[str] | None = None,
                   category: str = "transactional") -> str:  # fmt: skip
        """One message (a confirmation request, a welcome); ``key`` makes retries safe."""
        content = message_bytes(to=to, body=body, sender=sender, category=category, media=media)
        resp = await self._call("POST", "/v1/messages", ok=(200, 201, 202), content=content,
                                headers={"idempotency-key": key})  # fmt: skip
        return str(msgspec.json.decode(resp.content).get("id", ""))

    async def send_batch(self, items: Sequence[tuple[str, bytes]]) -> list[BatchResult]:
        """``POST /v1/messages/batch``: (idempotency key, ``message_bytes``) pairs, at most 1,000;
        one result per item, in order. Each key is kept as the single endpoint keeps it, so a
        retry of the batch (or of one of its messages alone) answers what was stored."""
        body = b"[" + b",".join(b'{"idempotency_key":%s,"message":%s}' % (msgspec.json.encode(k), m)
                                for k, m in items) + b"]"  # fmt: skip
        resp = await self._call("POST", "/v1/messages/batch", ok=(200,), content=body,
                                headers={"content-type": "application/json"})  # fmt: skip
        results = _batch.decode(resp.content).results
        if len(results) != len(items) or any(r.index != i for i, r in enumerate(results)):
            raise GatewayError(f"gateway POST /v1/messages/batch: {len(results)} results for {len(items)} messages")
        return results

    async def send_body(self, body: bytes, *, key: str) -> SentMessage:
        """``POST /v1/messages`` with a body built (and stored) by the caller: a retry after a crash
        sends the very same bytes with the same key, so the gateway answers it without sending again."""
        resp = await self._call("POST", "/v1/messages", ok=(200, 201, 202), content=body,
                                headers={"idempotency-key": key, "content-type": "application/json"})  # fmt: skip
        return _sent.decode(resp.content)

    async def message(self, message_id: str) -> SentMessage:
        """``GET /v1/messages/{id}``: the message's state now."""
        resp = await self._call("GET", f"/v1/messages/{quote(message_id, safe='')}", ok=(200,))
        return _sent.decode(resp.content)

    async def submit_job(self, body: bytes, *, key: str) -> JobAnswer:
        """An NDJSON job. ``key`` (the Idempotency-Key) makes a retry return the first answer: a job
        whose every recipient was refused (422 ``all_recipients_rejected``) is an answer too."""
        resp = await self._call("POST", "/v1/jobs", ok=(200, 202, 422), content=body,
                                headers={"idempotency-key": key, "content-type": "application/x-ndjson"})  # fmt: skip
        if resp.status_code == 422:
            err = msgspec.json.decode(resp.content)
            if err.get("code") != "all_recipients_rejected":
                raise GatewayError(f"gateway POST /v1/jobs: HTTP 422 {resp.text[:200]}")
            return JobAnswer(rejected=[Rejected(index=r["index"], error=r.get("error", "")) for r in err.get("rejected", [])],
                             rejected_count=err.get("rejected_count", 0))  # fmt: skip
        return _job.decode(resp.content)

    async def job_action(self, job_id: str, action: str) -> None:
        """``pause``, ``resume`` or ``cancel`` a job (a finished job's 409 ``job_finished`` is fine)."""
        await self._call("POST", f"/v1/jobs/{quote(job_id, safe='')}/{action}", ok=(200, 204, 409))

    async def preview(self, text: str) -> Preview:
        """The gateway's own measure of a final text: encoding, segments and price per carrier. It is
        measured as a campaign sends it (template ``{body}``, the text as the variable), so braces in
        the text are never read as placeholders."""
        payload = {"text": "{body}", "vars": {"body": text}}
        resp = await self._call("POST", "/v1/preview", ok=(200,), content=msgspec.json.encode(payload))
        return _preview.decode(resp.content)
