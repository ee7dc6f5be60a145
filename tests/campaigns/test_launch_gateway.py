"""A campaign launch against a real `sluice serve` child: the answer to one batch is lost after the
gateway stored it (the link breaks), the launcher is restarted, and the gateway holds each recipient
exactly once (its Idempotency-Key store answers the retried batch)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from campaigns.core.events import Profile
from campaigns.errors import GatewayError
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.store import open_store
from campaigns.store.base import NewConsent
from gateway.testing.serving import shop_config
from gateway.testing.processes import gateway, simulator

pytestmark = pytest.mark.anyio
KEY = "launch-gateway-key-0123456789"


def config(tmp_path: Path, sim_port: int) -> str:
    return shop_config(tmp_path, sim_port, sender="ACME", rps=1000.0)


class LoseAnswer(httpx.AsyncBaseTransport):
    """Forwards to the gateway; the answer to the n-th job POST is dropped (the job is stored)."""

    def __init__(self, lose: int) -> None:
        self.inner, self.lose, self.jobs = httpx.AsyncHTTPTransport(), lose, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.jobs += 1
            if self.jobs == self.lose:
                await resp.aread()
                await resp.aclose()
                raise httpx.ReadError("connection reset after the gateway stored the job")
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_lost_answer_and_a_restart_send_each_recipient_once(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'campaigns.db'}")
    now = time.time()
    phones = [f"+4479111234{i:02d}" for i in range(7)]
    ids = []
    for p in phones:
        sub, _ = store.put_subscriber("acme", Profile(phone=p, first_name="Ana"), phone=p, at=now - 60, now=now - 60)
        for action in ("opt_in", "confirm"):
            store.record_consent("acme", NewConsent(phone=p, action=action, source="api", at=now - 30), now=now - 30)
        ids.append(sub.id)
    links = {"acme": TenantLinks(domain="sl.ui", key=b"x" * 32)}
    definition = {"sender": "ACME", "template": "Hi {first_name}: https://shop.example/x", "batch_size": 3,
                  "audience": {"subscribers": ids}}  # fmt: skip
    async with simulator() as sim, gateway(config(tmp_path, sim.port), env={"SLUICE_KEY": KEY}) as gw:
        broken = GatewayClient(gw.url, KEY, transport=LoseAnswer(lose=2))
        first = Launcher(store, {"acme": broken}, links, time.time)
        camp = await first.create("acme", "Crash", definition)
        with pytest.raises(GatewayError):
            await first.launch("acme", camp.id)
        await broken.aclose()
        client = GatewayClient(gw.url, KEY)
        out = await Launcher(store, {"acme": client}, links, time.time).launch("acme", camp.id)
        assert (out.status, out.batches, out.accepted) == ("launched", 3, 7)
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as c:
            jobs = (await c.get("/v1/jobs", params={"limit": 100})).json()["jobs"]
            assert len(jobs) == 3
            seen: Counter[str] = Counter()
            for j in jobs:
                page = (await c.get(f"/v1/jobs/{j['id']}/messages", params={"limit": 100})).json()
                seen.update(m["to"] for m in page["messages"])
        assert seen == Counter({p: 1 for p in phones})
        await client.aclose()
    store.close()
