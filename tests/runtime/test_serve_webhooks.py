"""`sluice serve` end to end: a message that ends at admission (suppressed number) reaches its
callback_url as a signed webhook, through the real wiring (store outbox, sender, uvicorn)."""

from __future__ import annotations

import time

import anyio
import httpx
import msgspec
import pytest

from gateway.config import Tenant, default_text, loads
from gateway.errors import ConfigError
from gateway.runtime.app import serve, webhook_secrets
from gateway.testing import http_receiver
from gateway.webhook_signature import HEADER, verify

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"  # uvicorn runs on asyncio only


def config(tmp_path):
    cfg = loads(default_text())
    tenant = Tenant(name="acme", key_env="T_ACME_KEY", webhook_secret_env="T_ACME_HOOKS")
    api = msgspec.structs.replace(cfg.api, port=0, tenants=[tenant])
    store = msgspec.structs.replace(cfg.store, url=f"sqlite:///{tmp_path}/serve.db")
    hooks = msgspec.structs.replace(cfg.webhooks, allow_private=["127.0.0.0/8"])  # the receiver is on loopback
    return msgspec.structs.replace(cfg, api=api, store=store, webhooks=hooks)


def test_webhook_secrets_from_environment(tmp_path):
    cfg = config(tmp_path)
    assert webhook_secrets(cfg, {"T_ACME_HOOKS": "s3cret"}) == {"acme": "s3cret"}
    with pytest.raises(ConfigError, match=r"api.tenants\[0\].webhook_secret_env"):
        webhook_secrets(cfg, {})


async def test_serve_sends_signed_webhooks(tmp_path, monkeypatch):
    monkeypatch.setenv("T_ACME_KEY", "acme-key")
    monkeypatch.setenv("T_ACME_HOOKS", "hook-secret")
    got: list[tuple[dict, bytes]] = []
    arrived, ready = anyio.Event(), anyio.Event()
    port: list[int] = []

    def answer(request, body):
        got.append(({k.decode(): v.decode() for k, v in request.headers}, body))
        arrived.set()
        return 200, [], b""

    def on_ready(p: int) -> None:
        port.append(p)
        ready.set()

    async with anyio.create_task_group() as tg:
        hook_port = await tg.start(http_receiver.serve, answer)
        tg.start_soon(lambda: serve(config(tmp_path), on_ready=on_ready))
        with anyio.fail_after(20):
            await ready.wait()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port[0]}",
                                         headers={"authorization": "Bearer acme-key"}) as c:  # fmt: skip
                await c.post("/v1/suppressions", json={"number": "+14155550123"})
                r = await c.post("/v1/messages", json={"to": "+14155550123", "from": "ACME", "body": "Sale!",
                                                       "category": "marketing",
                                                       "callback_url": f"http://127.0.0.1:{hook_port}/hooks"})
                assert r.json()["status"] == "suppressed"
            await arrived.wait()
        tg.cancel_scope.cancel()
    [(headers, body)] = got
    assert verify("hook-secret", headers[HEADER.lower()], body, now=time.time())
    [event] = msgspec.json.decode(body)["events"]
    assert event["message_id"] == r.json()["id"] and event["state"] == "suppressed"
