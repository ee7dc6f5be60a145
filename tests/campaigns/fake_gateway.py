"""A fake of the gateway's jobs API for campaign tests (httpx MockTransport): it keeps each
Idempotency-Key's answer as the real gateway does (same key + same bytes -> the stored answer, nothing
new; same key + other bytes -> 409), and can fail *after* storing a job (the answer lost on the way)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx


class FakeGateway:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}  # job id -> {"head", "recipients", "status"}
        self.keys: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (body sha256, answer)
        self.lose_answer_of: set[int] = set()  # the n-th POST /v1/jobs (from 1): stored, then the link breaks
        self.posts = 0
        self.actions: list[tuple[str, str]] = []
        # POST /v1/messages, idempotent by key as the real gateway: key -> (body sha256, answer)
        self.message_keys: dict[str, tuple[str, dict[str, Any]]] = {}
        self.messages: list[dict[str, Any]] = []  # each message accepted (once per new key)
        self.message_posts = 0
        self.fail_messages = 0  # answer the next N POST /v1/messages with a 503 (nothing stored)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/jobs":
            return self._job(request)
        if request.method == "GET" and path == "/_count":  # for a test or bench in another process
            return httpx.Response(200, json={"messages": len(self.messages), "posts": self.message_posts})
        if request.method == "GET" and path == "/_messages":
            return httpx.Response(200, json={"messages": self.messages, "posts": self.message_posts})
        if request.method == "POST" and path == "/v1/messages":
            return self._message(request.content, request.headers.get("idempotency-key", ""))
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
            head, *lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            job_id = f"job-{len(self.jobs) + 1}"
            rejected = [{"index": i, "error": "bad number"} for i, r in enumerate(lines) if r["to"].endswith("000")]
            self.jobs[job_id] = {"head": head, "recipients": lines, "status": "active"}
            answer = {"id": job_id, "accepted": len(lines) - len(rejected), "rejected": rejected}
            self.keys[key] = (digest, answer)
        if self.posts in self.lose_answer_of:
            raise httpx.ReadError("connection reset after the job was stored")
        return httpx.Response(202, json=answer)

    def _message(self, body: bytes, key: str) -> httpx.Response:
        self.message_posts += 1
        if self.fail_messages > 0:
            self.fail_messages -= 1
            return httpx.Response(503, json={"code": "unavailable"})
        digest = hashlib.sha256(body).hexdigest()
        if key in self.message_keys:
            stored, answer = self.message_keys[key]
            if stored != digest:
                return httpx.Response(409, json={"code": "idempotency_key_reused"})
            return httpx.Response(202, json=answer)
        msg = json.loads(body)
        answer = {"id": f"msg-{len(self.messages) + 1}", "state": "queued"}
        self.message_keys[key] = (digest, answer)
        self.messages.append({**msg, "key": key})
        return httpx.Response(202, json=answer)

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

    def sent(self) -> list[str]:
        """Every recipient number the gateway accepted, once per acceptance."""
        return [r["to"] for j in self.jobs.values() for r in j["recipients"] if not r["to"].endswith("000")]
