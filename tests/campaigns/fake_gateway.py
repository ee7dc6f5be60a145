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
        # POST /v1/messages (people's answers): id -> the request's JSON and its state
        self.messages: dict[str, dict[str, Any]] = {}
        self.down = False  # every call fails (the gateway unreachable)
        self.lose_message_answers = 0  # the next n POST /v1/messages are stored, then the link breaks
        self.refuse_messages: dict[str, Any] | None = None  # answer POST /v1/messages with this 422 body
        self.deliver_on_read = False  # a message read with GET /v1/messages/{id} has been delivered

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.down:
            raise httpx.ConnectError("the gateway is down")
        if request.method == "POST" and path == "/v1/messages":
            return self._message(request)
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
            head, *lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            job_id = f"job-{len(self.jobs) + 1}"
            rejected = [{"index": i, "error": "bad number"} for i, r in enumerate(lines) if r["to"].endswith("000")]
            self.jobs[job_id] = {"head": head, "recipients": lines, "status": "active"}
            answer = {"id": job_id, "accepted": len(lines) - len(rejected), "rejected": rejected}
            self.keys[key] = (digest, answer)
        if self.posts in self.lose_answer_of:
            raise httpx.ReadError("connection reset after the job was stored")
        return httpx.Response(202, json=answer)

    def _message(self, request: httpx.Request) -> httpx.Response:
        body, key = request.content, request.headers.get("idempotency-key", "")
        digest = hashlib.sha256(body).hexdigest()
        if self.refuse_messages is not None:
            return httpx.Response(422, json=self.refuse_messages)
        if key in self.keys:
            stored_digest, answer = self.keys[key]
            if stored_digest != digest:
                return httpx.Response(409, json={"code": "idempotency_key_reused"})
        else:
            mid = f"M{len(self.messages) + 1:012d}"
            self.messages[mid] = {"request": json.loads(body), "state": "queued", "key": key}
            answer = {"id": mid, "state": "queued", "status": "queued"}
            self.keys[key] = (digest, answer)
        if self.lose_message_answers:
            self.lose_message_answers -= 1
            raise httpx.ReadError("connection reset after the message was stored")
        return httpx.Response(202, json=answer)

    def set_state(self, message_id: str, state: str) -> None:
        self.messages[message_id]["state"] = state

    def sent(self) -> list[str]:
        """Every recipient number the gateway accepted, once per acceptance."""
        return [r["to"] for j in self.jobs.values() for r in j["recipients"] if not r["to"].endswith("000")]
