"""A campaign's preview is measured by the gateway (its POST /v1/preview, in process) and agrees with
the send: the same subscriber's launched message has the preview's length, encoding and segments."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from campaigns.core.events import Profile
from campaigns.errors import NotFound
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.store import open_store
from campaigns.store.base import NewConsent
from gateway.api.app import Api, hash_key
from gateway.config import Tenant, default_text, loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore
from gateway.testing.clock import FakeClock

pytestmark = pytest.mark.anyio
KEY = "acme-secret-key-1"


def gateway_api(clock: FakeClock) -> Api:
    cfg = loads(default_text())
    carriers = [msgspec.structs.replace(c, price_per_segment=5) for c in cfg.core.carriers]
    cfg = msgspec.structs.replace(cfg, core=msgspec.structs.replace(cfg.core, carriers=carriers))
    gw = Gateway(Scheduler(cfg.core, clock()), MemoryStore())
    tenant = Tenant(name="acme", key_sha256=hash_key(KEY), requests_per_second=1e6, burst=10**6)
    return Api(gw, {hash_key(KEY): tenant}, clock=clock, max_body=1 << 20)


@pytest.mark.parametrize("template, name, language", [
    ("Hi {first_name}, {attr.tier|VIP} sale {discount_code}: https://shop.example/p?x=1 {{literal}}", "Ana", "en"),
    ("{first_name}，点击https://shop.cn/a领取优惠 {discount_code}", "小明", "zh"),
    ("Hi {first_name} " + "long text " * 30 + "https://a.example/" + "x" * 80, "Zoë", "fr"),
])  # fmt: skip
async def test_preview_matches_the_send(tmp_path, template: str, name: str, language: str) -> None:
    clock = FakeClock()
    api = gateway_api(clock)
    client = GatewayClient("http://gw.test", KEY, transport=httpx.ASGITransport(app=api))
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    now = clock()
    phone = "+447911123456"
    sub, _ = store.put_subscriber("acme", Profile(phone=phone, first_name=name, language=language), phone=phone,
                                  at=now - 60, now=now - 60)  # fmt: skip
    for action in ("opt_in", "confirm"):
        store.record_consent("acme", NewConsent(phone=phone, action=action, source="api", at=now - 30), now=now - 30)
    la = Launcher(store, {"acme": client}, {"acme": TenantLinks(domain="go.shop", key=b"q" * 32)}, clock)
    camp = await la.create("acme", "P", {"sender": "ACME", "template": template, "rules": {"brand": "Shop"},
                                         "discount": {"pattern": "SALE-######"}, "audience": {"subscribers": [sub.id]}})
    [pre] = await la.preview("acme", camp.id, sub.id)
    assert pre.prices and all(p == 5 * pre.segments for p in pre.prices.values())
    out = await la.launch("acme", camp.id)
    assert out.accepted == 1
    [row] = store.campaign_recipients("acme", camp.id)
    assert len(row.text) == len(pre.text) and "https://go.shop/" in row.text
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://gw.test",
                                 headers={"authorization": f"Bearer {KEY}"}) as c:  # fmt: skip
        jobs = (await c.get("/v1/jobs")).json()["jobs"]
        msgs = (await c.get(f"/v1/jobs/{jobs[0]['id']}/messages")).json()["messages"]
        got = (await c.get(f"/v1/messages/{msgs[0]['id']}")).json()
    assert (got["segments"], got["encoding"]) == (pre.segments, pre.encoding)
    with pytest.raises(NotFound):
        await la.preview("acme", camp.id, 999)
    await client.aclose()
    store.close()
