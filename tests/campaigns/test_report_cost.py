"""Cost and ROI come back from the gateway (through its public API, in process): a state event naming
the carrier prices the message with the gateway's own preview (segments x that carrier's
``price_per_segment``), which must equal the segments the gateway planned for the message it holds.
And the report is fresh: a delivery, a click (buffered by the redirect) and an order show in the very
next report, with no wait."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from campaigns.core.events import OrderEvent, Profile
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.service.tracking import StateBatch, StateEvent, Tracker, text_shape
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
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"


def gateway_api(clock: FakeClock) -> tuple[Api, dict[str, int]]:
    cfg = loads(default_text())
    prices = {c.name: 7 + i for i, c in enumerate(cfg.core.carriers)}  # a different price per carrier
    carriers = [msgspec.structs.replace(c, price_per_segment=prices[c.name]) for c in cfg.core.carriers]
    cfg = msgspec.structs.replace(cfg, core=msgspec.structs.replace(cfg.core, carriers=carriers))
    gw = Gateway(Scheduler(cfg.core, clock()), MemoryStore())
    tenant = Tenant(name="acme", key_sha256=hash_key(KEY), requests_per_second=1e6, burst=10**6)
    return Api(gw, {hash_key(KEY): tenant}, clock=clock, max_body=1 << 20), prices


@pytest.mark.parametrize("name", ["Ana", "Zoë", "小明"])  # GSM-7, a GSM-7 look-alike, UCS-2
async def test_cost_is_the_gateways_price_and_the_report_is_fresh(tmp_path, name: str) -> None:
    clock = FakeClock()
    api, prices = gateway_api(clock)
    client = GatewayClient("http://gw.test", KEY, transport=httpx.ASGITransport(app=api))
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    now = clock()
    phone = "+447911123456"
    sub, _ = store.put_subscriber("acme", Profile(phone=phone, first_name=name), phone=phone, at=now - 60, now=now - 60)
    for action in ("opt_in", "confirm"):
        store.record_consent("acme", NewConsent(phone=phone, action=action, source="api", at=now - 30), now=now - 30)
    la = Launcher(store, {"acme": client}, {"acme": TenantLinks(domain="go.shop", key=b"q" * 32)}, clock)
    tracker = Tracker(la)
    template = "Hi {first_name}, " + "our spring sale starts today " * 6 + "https://shop.example/sale"
    camp = await la.create("acme", "P", {"sender": "ACME", "template": template, "audience": {"subscribers": [sub.id]}})
    assert (await la.launch("acme", camp.id)).accepted == 1
    [row] = store.campaign_recipients("acme", camp.id)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://gw.test",
                                 headers={"authorization": f"Bearer {KEY}"}) as c:  # fmt: skip
        [job] = (await c.get("/v1/jobs")).json()["jobs"]
        [msg] = (await c.get(f"/v1/jobs/{job['id']}/messages")).json()["messages"]
        held = (await c.get(f"/v1/messages/{msg['id']}")).json()
    assert held["segments"] >= 2
    carrier = sorted(prices)[-1]


    # Fresh: each figure moves in the very next report.
    rep = await tracker.report("acme", camp.id, ["campaign"])
    assert (rep.rows[0].sent, rep.rows[0].delivered, rep.rows[0].cost, rep.rows[0].roi) == (1, 0, 0, None)
    clock.advance(5)
    ev = StateEvent(message_id=msg["id"], job_id=job["id"], state="delivered", at=clock(), index=0, carrier=carrier)
    assert await tracker.states("acme", StateBatch(events=[ev])) == 1
    await tracker.states("acme", StateBatch(events=[ev]))  # a retried webhook: priced once
    [r] = (await tracker.report("acme", camp.id, ["campaign"])).rows
    assert r.delivered == 1 and r.cost == held["segments"] * prices[carrier]  # read back, as the gateway prices it
    clock.advance(60)
    code = row.text.split("https://go.shop/")[1].split()[0]
    assert (await tracker.redirect(code, method="GET", user_agent=UA)) is not None
    [r] = (await tracker.report("acme", camp.id, ["campaign"])).rows
    assert r.unique_clicks == 1  # the buffered click was written before the report read
    clock.advance(60)
    store.apply_event("acme", OrderEvent(id="o1", at=clock(), order_id="o1", phone=phone, total=10_000, currency="EUR",
                                         payment_status="paid"), phone=phone, now=clock())  # fmt: skip
    [r] = (await tracker.report("acme", camp.id, ["campaign"])).rows
    assert r.conversions == 1 and r.revenue == 10_000
    assert r.roi == pytest.approx((10_000 - r.cost) / r.cost)
    await client.aclose()
    store.close()


def test_a_texts_shape_keeps_the_gateways_measure() -> None:
    """Letters and digits become ``a``; everything that changes encoding or length is kept."""
    assert text_shape("Hi Zoë, 20% off: https://go.shop/Ab3dE9 €5 小明") == "aa aaë, aa% aaa: aaaaa://aa.aaaa/aaaaaa €a 小明"
