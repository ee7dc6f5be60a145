"""Flow webhook nodes against the receivers a shop really has, through the runtime and the store (both
engines): one that answers, one that redirects (never followed: failed at once), one that is dead (5xx,
refused connections: tried again with a doubling back-off, given up after a day), one that never answers
(cut off after ``WEBHOOK_TIMEOUT``), and a crowd of dead ones recorded before the SMS of other flows:
the SMS go in the first round (on the base the dead calls filled every batch and the SMS waited behind
them for ever)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from campaigns.core.events import CustomEvent
from campaigns.service import flow_runtime
from campaigns.service.flow_api import FlowService
from campaigns.service.flow_runtime import FlowRuntime, TenantFlows
from campaigns.service.gateway_client import GatewayClient
from campaigns.store import Store
from fake_gateway import FakeGateway
from tests.campaigns.test_flow_runtime import T0, Clock, phone, subscriber

pytestmark = pytest.mark.anyio
HOOKS = {"ok": "https://ok.example/h", "moved": "https://moved.example/h", "dead": "https://dead.example/h",
         "refused": "https://refused.example/h", "silent": "https://silent.example/h"}  # fmt: skip


async def _handler(request: httpx.Request) -> httpx.Response:
    host = request.url.host
    if host.startswith("ok."):
        return httpx.Response(200)
    if host.startswith("moved."):
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest"})
    if host.startswith("refused."):
        raise httpx.ConnectError("connection refused", request=request)
    if host.startswith("silent."):
        await anyio.sleep(3600)  # the receiver's behaviour: it never answers
    return httpx.Response(503)


async def _flows(store: Store, clock: Clock, hooks: dict[str, str]) -> None:
    svc = FlowService(store, clock)
    for fid, url in hooks.items():
        flow = {"id": fid, "name": fid, "trigger": {"type": "custom", "name": "go"}, "entry": "w",
                "nodes": {"w": {"type": "webhook", "url": url}}}  # fmt: skip
        await svc.publish("acme", flow, new=True)
        await svc.enable("acme", fid, True)


async def test_dead_slow_and_redirecting_receivers(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flow_runtime, "WEBHOOK_TIMEOUT", 0.2)
    clock, gw = Clock(), FakeGateway()
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    rt = FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME")}, clock,
                     webhook_transport=httpx.MockTransport(_handler), allow_private_webhooks=True)  # fmt: skip
    await _flows(store, clock, HOOKS)
    subscriber(store, 1)
    store.apply_event("acme", CustomEvent(id="g", at=T0, phone=phone(1), name="go"), phone=phone(1), now=T0)
    with anyio.fail_after(30):
        await rt.round()

        def states() -> dict[str, tuple[str, str]]:
            return {m.flow_id: (m.state, m.detail or "") for m in store.flow_messages("acme")}

        first = states()
        assert first["ok"] == ("sent", "")
        assert first["moved"] == ("failed", "HTTP 302: redirects are not followed")
        assert first["dead"] == ("pending", "HTTP 503") and first["refused"] == ("pending", "ConnectError")
        assert first["silent"] == ("pending", "no answer within 0.2 s")
        # Not tried again before the back-off (30 s, then as long as it has been failing), then again.
        assert await rt.post_webhooks() == 0
        clock.now = T0 + 29
        assert store.pending_flow_messages(kind="webhooks", now=clock.now) == []
        clock.now = T0 + 30
        assert len(store.pending_flow_messages(kind="webhooks", now=clock.now)) == 3
        await rt.post_webhooks()
        assert store.pending_flow_messages(kind="webhooks", now=T0 + 59) == []
        assert len(store.pending_flow_messages(kind="webhooks", now=T0 + 60)) == 3
        # A day of failures: given up, failed with the last reason; the others stay as they were.
        clock.now = T0 + flow_runtime.WEBHOOK_GIVE_UP_S
        await rt.post_webhooks()
        last = states()
        assert last["dead"] == ("failed", "gave up after 24 h: HTTP 503")
        assert last["silent"][0] == "failed" and last["ok"] == ("sent", "") and last["moved"][0] == "failed"
        assert store.pending_flow_messages() == []
    await rt.aclose()


async def test_dead_receivers_recorded_first_never_hold_up_the_sms(store: Store) -> None:
    clock, gw = Clock(), FakeGateway()
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    rt = FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME")}, clock, batch=50,
                     webhook_transport=httpx.MockTransport(_handler), allow_private_webhooks=True)  # fmt: skip
    await _flows(store, clock, {"dead": HOOKS["dead"]})
    svc = FlowService(store, clock)
    await svc.put_template("acme", "hi", "Hello")
    sms = {"id": "sms", "name": "sms", "trigger": {"type": "custom", "name": "buy"}, "entry": "s",
           "nodes": {"s": {"type": "send", "template": "hi"}}}  # fmt: skip
    await svc.publish("acme", sms, new=True)
    await svc.enable("acme", "sms", True)
    n = 120  # more dead calls than a batch of sends
    for i in range(n):
        subscriber(store, i)
        store.apply_event("acme", CustomEvent(id=f"g{i}", at=T0, phone=phone(i), name="go"), phone=phone(i), now=T0)
    with anyio.fail_after(30):
        await rt.round()  # the dead calls are recorded (and tried) first
        clock.now = T0 + 1
        for i in range(n):
            store.apply_event("acme", CustomEvent(id=f"b{i}", at=T0 + 1, phone=phone(i), name="buy"), phone=phone(i), now=T0 + 1)
        await rt.round()
    assert len(gw.sent_messages()) == n
    kinds = [(m.flow_id, m.state) for m in store.flow_messages("acme", limit=10_000)]
    assert kinds.count(("sms", "sent")) == n and kinds.count(("dead", "pending")) == n
    await rt.aclose()
