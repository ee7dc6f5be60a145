"""A fake of the gateway's jobs API for campaign tests (httpx MockTransport): it keeps each
Idempotency-Key's answer as the real gateway does (same key + same bytes -> the stored answer, nothing
new; same key + other bytes -> 409), and can fail *after* storing a job (the answer lost on the way)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import msgspec


class _Item(msgspec.Struct):
    idempotency_key: str
    message: msgspec.Raw


class FakeGateway:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}  # job id -> {"head", "recipients", "status"}
        self.keys: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (body sha256, answer)
        self.lose_answer_of: set[int] = set()  # the n-th POST /v1/jobs (from 1): stored, then the link breaks
        self.posts = 0
        self.actions: list[tuple[str, str]] = []
        # POST /v1/messages (people's answers): id -> the request's JSON and its state
        self.messages: dict[str, dict[str, Any]] = {}
        self.down = False  # every call fails (the gateway unreachable)
        self.lose_message_answers = 0  # the next n POST /v1/messages are stored, then the link breaks
        self.refuse_messages: dict[str, Any] | None = None  # answer POST /v1/messages with this 422 body
        self.deliver_on_read = False  # a message read with GET /v1/messages/{id} has been delivered
        self.message_posts = 0  # every POST /v1/messages that reached the fake (re-posts of a key included)
        self.fail_messages = 0  # answer the next n POST /v1/messages (or batches) with a 503 (nothing stored)
        self.batch_posts = 0  # POST /v1/messages/batch requests
        self.no_batch = False  # a gateway from before POST /v1/messages/batch (404)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.down:
            raise httpx.ConnectError("the gateway is down")
        if request.method == "POST" and path == "/v1/messages":
            return self._message(request)
        if request.method == "POST" and path == "/v1/messages/batch" and not self.no_batch:
            return self._batch(request)
        if request.method == "GET" and path == "/_count":  # for a test or bench in another process
            return httpx.Response(200, json={"messages": len(self.messages), "posts": self.message_posts})
        if request.method == "GET" and path == "/_messages":
            return httpx.Response(200, json={"messages": self.sent_messages(), "posts": self.message_posts})
        if request.method == "GET" and path.startswith("/v1/messages/"):
            m = self.messages.get(path.rsplit("/", 1)[1])
            if m is not None and self.deliver_on_read:
                m["state"] = "delivered"
            return httpx.Response(200, json={"id": path.rsplit("/", 1)[1], **m}) if m else httpx.Response(404, json={"code": "not_found"})
        if request.method == "POST" and path == "/v1/jobs":
            return self._job(request)
        if request.method == "POST" and path.startswith("/v1/jobs/"):
            _, _, _, job_id, action = path.split("/")
            self.actions.append((job_id, action))
            self.jobs[job_id]["status"] = action
            return httpx.Response(200, json={"id": job_id})
        return httpx.Response(404, json={"code": "not_found"})

    def _job(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        body, key = request.content, request.headers["idempotency-key"]
        digest = hashlib.sha256(body).hexdigest()
        if key in self.keys:
            stored_digest, answer = self.keys[key]
            if stored_digest != digest:
                return httpx.Response(409, json={"code": "idempotency_key_reused"})
        else:
            head, *lines = [json.loads(x) for x in body.split(b"\n") if x.strip()]  # as the gateway: bytes on LF (U+2028 is text)
            job_id = f"job-{len(self.jobs) + 1}"
            rejected = [{"index": i, "error": "bad number"} for i, r in enumerate(lines) if r["to"].endswith("000")]
            self.jobs[job_id] = {"head": head, "recipients": lines, "status": "active"}
            answer = {"id": job_id, "accepted": len(lines) - len(rejected), "rejected": rejected}
            self.keys[key] = (digest, answer)
        if self.posts in self.lose_answer_of:
            raise httpx.ReadError("connection reset after the job was stored")
        return httpx.Response(202, json=answer)

    def _message(self, request: httpx.Request) -> httpx.Response:
        self.message_posts += 1
        if self.fail_messages > 0:
            self.fail_messages -= 1
            return httpx.Response(503, json={"code": "unavailable"})
        status, answer = self._one(request.content, request.headers.get("idempotency-key", ""))
        if self.lose_message_answers:
            self.lose_message_answers -= 1
            raise httpx.ReadError("connection reset after the message was stored")
        return httpx.Response(status, json=answer)

    def _one(self, body: bytes, key: str) -> tuple[int, dict[str, Any]]:
        """One message, alone or in a batch: the same key and bytes answer what was stored."""
        digest = hashlib.sha256(body).hexdigest()
        if self.refuse_messages is not None:
            return 422, self.refuse_messages
        if key in self.keys:
            stored_digest, answer = self.keys[key]
            if stored_digest != digest:
                return 409, {"code": "idempotency_key_reused", "error": "key used with another body"}
        else:
            mid = f"M{len(self.messages) + 1:012d}"
            self.messages[mid] = {"request": json.loads(body), "state": "queued", "key": key}
            answer = {"id": mid, "state": "queued", "status": "queued"}
            self.keys[key] = (digest, answer)
        return 202, answer

    def _batch(self, request: httpx.Request) -> httpx.Response:
        """``POST /v1/messages/batch``: each message's key and bytes as ``POST /v1/messages``'s."""
        items = msgspec.json.decode(request.content, type=list[_Item])
        self.message_posts += len(items)
        self.batch_posts += 1
        if self.fail_messages > 0:
            self.fail_messages -= 1
            return httpx.Response(503, json={"code": "unavailable"})
        results = []
        for i, item in enumerate(items):
            status, answer = self._one(bytes(item.message), item.idempotency_key)
            results.append({"index": i, "status": status, **({"id": answer["id"], "state": answer["state"]}
                                                              if status == 202 else answer)})  # fmt: skip
        if self.lose_message_answers:
            self.lose_message_answers -= 1
            raise httpx.ReadError("connection reset after the batch was stored")
        accepted = sum(r["status"] == 202 for r in results)
        return httpx.Response(200, json={"results": results, "accepted": accepted, "rejected": len(results) - accepted})

    def sent_messages(self) -> list[dict[str, Any]]:
        """Each message accepted (once per new key), in order: its request's JSON and its ``key``."""
        return [{**m["request"], "key": m["key"]} for m in self.messages.values()]

    def asgi(self) -> Any:
        """The same fake as an ASGI app (to serve it over real HTTP, e.g. with uvicorn)."""

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = b""
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":  # the client died mid-request (kill -9): nothing stored
                    return
                body += event.get("body", b"")
                if not event.get("more_body"):
                    break
            headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
            request = httpx.Request(scope["method"], f"http://fake{scope['path']}", headers=headers, content=body)
            resp = self.handle(request)
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": resp.content})

        return app

    def set_state(self, message_id: str, state: str) -> None:
        self.messages[message_id]["state"] = state

    def sent(self) -> list[str]:
        """Every recipient number the gateway accepted, once per acceptance."""
        return [r["to"] for j in self.jobs.values() for r in j["recipients"] if not r["to"].endswith("000")]
