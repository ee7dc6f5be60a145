"""A slow client on the campaigns API: a body that never finishes (slowloris) is answered 408
``body_timeout`` once ``body_timeout_s`` of waiting for the client has passed in all, through the
API's error handlers, and the budget is not charged after the body is in. Virtual time (trio's
autojumping clock): no real waiting."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
import trio
from trio.testing import MockClock

from campaigns.config import loads
from campaigns.service.app import body_deadline, create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.store import open_store

KEY = "acme-campaigns-key-0123456789"
T0 = 1_767_000_000.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def _app(tmp_path: Any, timeout: float) -> Any:
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    assert settings is not None
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    return body_deadline(create_app(Audience(store, settings, lambda: T0), tenant_keys(settings, {})), timeout)


async def _call(app: Any, chunks: list[tuple[float, bytes, bool]]) -> tuple[int, dict]:
    """POST /v1/events/bulk whose body arrives as ``chunks`` (delay before it, bytes, more_body); after
    the last, the client goes silent for ever."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/events/bulk", "raw_path": b"/v1/events/bulk", "query_string": b"", "root_path": "",
             "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"host", b"c"), (b"content-length", b"100000")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}  # fmt: skip
    queue = list(chunks)

    async def receive() -> dict:
        if not queue:
            await trio.sleep_forever()
        delay, body, more = queue.pop(0)
        await trio.sleep(delay)
        return {"type": "http.request", "body": body, "more_body": more}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], msgspec.json.decode(body)


@pytest.mark.anyio
async def test_a_body_that_never_finishes_is_a_408(tmp_path: Any) -> None:
    app = _app(tmp_path, 60.0)
    started = trio.current_time()
    status, body = await _call(app, [(1.0, b"{", True), (20.0, b'"id"', True)])
    assert (status, body["code"]) == (408, "body_timeout")
    assert trio.current_time() - started == pytest.approx(60.0)


@pytest.mark.anyio
async def test_a_slow_but_finished_body_is_served(tmp_path: Any) -> None:
    app = _app(tmp_path, 60.0)
    line = b'{"id":"c1","at":1767000000,"type":"customer","profile":{"phone":"+14155550100"}}\n'
    status, body = await _call(app, [(20.0, line[:10], True), (20.0, line[10:], False)])
    assert (status, body["applied"]) == (202, 1)
