"""A flow that loops through a send and a wait is valid (a reminder every week until an order exits the
run), but a run must end: through the runtime, the store (both engines) and a gateway that keeps keys,
a loop of a send and a one-second wait sends MAX_RUN_SENDS messages, then the run ends
``limit:sends``; a loop of webhook calls and waits ends ``limit:visits``. On the base it texted the
person every second for as long as the flow was enabled, and its stored run grew with every send."""

from __future__ import annotations

import httpx
import pytest

from campaigns.core import flows as F
from campaigns.core.events import CustomEvent
from campaigns.service.flow_api import FlowService
from campaigns.service.flow_runtime import FlowRuntime, TenantFlows
from campaigns.service.gateway_client import GatewayClient
from campaigns.store import Store
from fake_gateway import FakeGateway
from tests.campaigns.test_flow_runtime import T0, Clock, phone, subscriber

pytestmark = pytest.mark.anyio


async def test_a_looping_run_ends_at_its_limits(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F, "MAX_RUN_SENDS", 5)
    monkeypatch.setattr(F, "MAX_RUN_VISITS", 12)
    clock, gw = Clock(), FakeGateway()
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    rt = FlowRuntime(store, {"acme": client}, {"acme": TenantFlows(sender="ACME")}, clock,
                     webhook_transport=httpx.MockTransport(lambda r: httpx.Response(200)), allow_private_webhooks=True)  # fmt: skip
    svc = FlowService(store, clock)
    await svc.put_template("acme", "nag", "Still there?")
    loops = {"texts": {"s": {"type": "send", "template": "nag", "next": "w"}, "w": {"type": "wait", "seconds": 1, "next": "s"}},
             "hooks": {"s": {"type": "webhook", "url": "https://hook.example/h", "next": "w"},
                       "w": {"type": "wait", "seconds": 1, "next": "s"}}}  # fmt: skip
    for fid, nodes in loops.items():
        flow = {"id": fid, "name": fid, "transactional": True, "trigger": {"type": "custom", "name": "go"}, "entry": "s",
                "nodes": nodes}  # fmt: skip
        await svc.publish("acme", flow, new=True)
        await svc.enable("acme", fid, True)
    subscriber(store, 1)
    store.apply_event("acme", CustomEvent(id="g", at=T0, phone=phone(1), name="go"), phone=phone(1), now=T0)
    for i in range(30):
        clock.now = T0 + i
        await rt.round()
    assert len(gw.sent_messages()) == 5
    runs = {r.flow_id: r for r in store.flow_run_rows("acme")}
    assert runs["texts"].ended == "limit:sends" and runs["hooks"].ended == "limit:visits"
    hooks = [m for m in store.flow_messages("acme", limit=1000) if m.flow_id == "hooks"]
    assert len(hooks) == 6 and {m.state for m in hooks} == {"sent"}  # 12 visits: 6 calls and 6 waits
    await rt.aclose()
