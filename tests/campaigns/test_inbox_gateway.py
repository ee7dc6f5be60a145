"""The inbox against a real `sluice serve` child and an SMPP simulator child: a subscriber's question
reaches the gateway as a carrier delivers it, the link reads it (``GET /v1/inbound``), it lands in
the queue; "stop please" is the gateway's opt-out, in the ledger and the history, never queued; the
agent's answer (retried) reaches the simulator once and its delivery comes back into the history.
Slow (`make test-slow`): children are started; everything is observed with bounded polls."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from campaigns.config import loads
from campaigns.core.events import Profile
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.inbox import Inbox
from campaigns.service.link import GatewayLink
from campaigns.store import open_store
from gateway.testing.processes import gateway, simulator
from tests.campaigns.test_gateway_link import CAMPAIGNS, ENV, KEY, P, gateway_config, mo, poll

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


async def test_question_answered_once_through_a_real_gateway(tmp_path: Path) -> None:
    async with simulator("--dlr-delay", "0.01") as sim, gateway(gateway_config(tmp_path, sim.port), env=ENV) as gw:
        settings = loads(CAMPAIGNS.replace("[campaigns.tenants.signup]", '[campaigns.tenants.signup]\nsender = "12345"'))
        assert settings is not None
        store = open_store(f"sqlite:///{tmp_path / 'campaigns.db'}")
        audience = Audience(store, settings, time.time)
        client = GatewayClient(gw.url, KEY)
        inbox = Inbox(store, {"acme": client}, settings, time.time)
        link = GatewayLink(audience, {"acme": client}, inbox=inbox)
        app = create_app(audience, tenant_keys(settings, {"CK": "ck"}), link=link, inbox=inbox)
        headers = {"authorization": "Bearer ck"}
        for p in P[:2]:
            store.put_subscriber("acme", Profile(phone=p), phone=p, at=time.time(), now=time.time())
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as g, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c", headers=headers) as c:  # fmt: skip
            await mo(g, P[0], "Do you ship to Ireland?")
            await mo(g, P[1], "stop please")
            await poll(lambda: g.get("/v1/inbound"), lambda r: len(r.json()["inbound"]) == 2)
            assert await link.pull("acme") == 2
            queue = (await c.get("/v1/inbox/conversations", params={"status": "needs_reply"})).json()["items"]
            assert [q["phone"] for q in queue] == [P[0]]
            assert store.subscriber_by_phone("acme", P[1]).consent == "revoked"  # type: ignore[union-attr]
            stopped = (await c.get("/v1/inbox/conversations", params={"phone": P[1]})).json()["items"][0]
            hist = (await c.get(f"/v1/inbox/conversations/{stopped['id']}")).json()["messages"]["items"]
            assert [(m["kind"], m["text"]) for m in hist] == [("opt_out", "stop please")] and stopped["opted_out"]

            before = (await sim.counters())["accepted"]
            body = {"text": "Yes, to Ireland in 3 days.", "agent": "ann"}
            first = await c.post(f"/v1/inbox/conversations/{queue[0]['id']}/answers", json=body,
                                 headers={"idempotency-key": "a1"})  # fmt: skip
            again = await c.post(f"/v1/inbox/conversations/{queue[0]['id']}/answers", json=body,
                                 headers={"idempotency-key": "a1"})  # fmt: skip
            assert (first.status_code, again.status_code, again.json()["replayed"]) == (202, 200, True)
            gid = first.json()["message"]["gateway_id"]
            msg = (await g.get(f"/v1/messages/{gid}")).json()
            assert msg["to"] == P[0] and msg["reference"] == f"answer:{queue[0]['id']}:a1"

            async def settled() -> str:
                await inbox.settle("acme")
                return store.conversation_message("acme", f"answer:{queue[0]['id']}:a1").state  # type: ignore[union-attr]

            assert await poll(settled, lambda s: s == "delivered") == "delivered"
            with anyio.move_on_after(0.5):  # nothing more arrives at the carrier
                await poll(sim.counters, lambda n: n["accepted"] > before + 1)
            assert (await sim.counters())["accepted"] == before + 1
            r = await c.post(f"/v1/inbox/conversations/{stopped['id']}/answers", json=body)
            assert r.status_code == 422 and r.json()["code"] == "conversation.opted_out"
        await client.aclose()
        store.close()
