"""The campaign routes through the campaigns ASGI app (both engines), the gateway faked at its HTTP
seam: create, launch, the gateway's signed state webhooks, short-link redirects (bots, HEAD and
too-soon hits not counted; unique vs total), orders attributed in the report, the A/B winner."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from litestar.testing import TestClient

from campaigns.config import loads
from campaigns.core.events import Profile
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.campaign_api import campaign_handlers
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.service.signature import HEADER, sign
from campaigns.service.tracking import Tracker
from campaigns.store import Store, open_store
from campaigns.store.base import NewConsent
from fake_gateway import FakeGateway

KEY = "acme-campaigns-key-0123456789"
SECRET = "webhook-secret"
T0 = 1_767_000_000.0
CONFIG = f"""
[campaigns]
[[campaigns.tenants]]
name = "acme"
key_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
"""
H = {"authorization": f"Bearer {KEY}"}
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, client: TestClient, store: Store, clock: Clock, gw: FakeGateway) -> None:
        self.client, self.store, self.clock, self.gw = client, store, clock, gw

    def subscriber(self, i: int) -> int:
        phone = f"+4479111{i:05d}"
        sub, _ = self.store.put_subscriber("acme", Profile(phone=phone, first_name="Ana"), phone=phone, at=T0 - 99, now=T0 - 99)
        for action in ("opt_in", "confirm"):
            self.store.record_consent("acme", NewConsent(phone=phone, action=action, source="api", at=T0 - 50), now=T0 - 50)
        return sub.id

    def webhook(self, events: list[dict], secret: str = SECRET) -> object:
        body = json.dumps({"events": events}).encode()
        return self.client.post("/v1/gateway/acme/events", content=body,
                                headers={HEADER: sign(secret, body, int(self.clock())), "content-type": "application/json"})


@pytest.fixture
def world(store_url: str) -> Iterator[World]:
    settings = loads(CONFIG)
    assert settings is not None
    store, clock, gw = open_store(store_url), Clock(), FakeGateway()
    client = GatewayClient("http://gateway.test", "k", transport=gw.transport())
    launcher = Launcher(store, {"acme": client}, {"acme": TenantLinks(domain="sl.ui", key=b"s" * 32)}, clock,
                        callback_urls={"acme": "https://c.example/v1/gateway/acme/events"})  # fmt: skip
    app = create_app(Audience(store, settings, clock), tenant_keys(settings, {}),
                     extra_handlers=campaign_handlers(launcher, Tracker(launcher), {"acme": SECRET}))  # fmt: skip
    with TestClient(app) as c:
        world = World(c, store, clock, gw)
        world.launcher = launcher  # type: ignore[attr-defined]
        yield world
    store.close()


def test_launch_states_clicks_orders_report(world: World) -> None:
    c = world.client
    a, b = world.subscriber(1), world.subscriber(2)
    r = c.post("/v1/campaigns", headers=H, json={"name": "Sale", "definition": {
        "sender": "ACME", "template": "Hi {first_name}, sale: https://shop.example/p?ref=x",
        "utm": {"utm_campaign": "sale"}, "audience": {"subscribers": [a, b]}}})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert c.post("/v1/campaigns", headers=H, json={"name": "x", "definition": {"sender": "A"}}).json()["code"] == "template_required"
    r = c.post(f"/v1/campaigns/{cid}/launch", headers=H)
    assert r.status_code == 202 and r.json()["accepted"] == 2, r.text
    [job] = world.gw.jobs.values()
    assert job["head"]["callback_url"] == "https://c.example/v1/gateway/acme/events"
    code = job["recipients"][0]["vars"]["body"].split("https://sl.ui/")[1].split()[0]
    hours = c.get(f"/v1/campaigns/{cid}/send-times", headers=H).json()
    assert hours["hours"][9] == 2 and sum(hours["hours"]) == 2  # T0 is 09:20 UTC (the shop's clock: UTC)
    assert c.get(f"/v1/campaigns/{cid}/send-times?clock=moon", headers=H).status_code == 422

    # States by webhook: signed, matched by job + index; a forged one is refused, a repeat changes nothing.
    ev = {"message_id": "m1", "job_id": "job-1", "state": "delivered", "at": T0 + 5, "index": 0, "reference": "x"}
    assert world.webhook([ev], secret="wrong").status_code == 401  # type: ignore[attr-defined]
    assert world.webhook([ev]).json() == {"moved": 1}  # type: ignore[attr-defined]
    world.webhook([ev])
    view = world.store.view("acme", a)
    assert view is not None and [x.kind for x in view.activities] == ["delivered"]  # once, for segments
    # Events of jobs that are not a campaign's, unknown slots and states, are ignored; junk is a 422.
    other = [{**ev, "job_id": "job-404"}, {**ev, "index": 9}, {**ev, "state": "deferred"}, {**ev, "job_id": None}]
    assert world.webhook(other).json() == {"moved": 0}  # type: ignore[attr-defined]
    body = b"{not json"
    r = c.post("/v1/gateway/acme/events", content=body, headers={HEADER: sign(SECRET, body, int(world.clock()))})
    assert r.status_code == 422 and r.json()["code"] == "invalid_json"
    assert c.post("/v1/gateway/beta/events", content=body, headers={HEADER: sign(SECRET, body, int(world.clock()))}).status_code == 401
    [rec] = [x for x in world.store.campaign_recipients("acme", cid) if x.subscriber_id == a]
    assert (rec.state, rec.message_id, rec.state_at) == ("delivered", "m1", T0 + 5)

    # Clicks: a preview fetch within 10 s of delivery, a HEAD and a bot are redirected but not counted.
    world.clock.now = T0 + 8
    r = c.get(f"/l/{code}", headers={"user-agent": UA}, follow_redirects=False)
    assert r.status_code == 302
    world.clock.now = T0 + 100
    assert c.head(f"/l/{code}", headers={"user-agent": UA}, follow_redirects=False).status_code == 302
    assert c.get(f"/l/{code}", headers={"user-agent": "facebookexternalhit/1.1"}, follow_redirects=False).status_code == 302
    assert c.get("/v1/campaigns/%d/clicks" % cid, headers=H).json() == {"unique": 0, "total": 0, "ignored": 3}
    for k in range(2):
        world.clock.now = T0 + 100 + k
        r = c.get(f"/l/{code}", headers={"user-agent": UA}, follow_redirects=False)
    loc = urlsplit(r.headers["location"])
    assert (loc.netloc, loc.path) == ("shop.example", "/p")
    q = parse_qs(loc.query)
    assert q["ref"] == ["x"] and q["utm_campaign"] == ["sale"] and q["utm_source"] == ["sms"]
    assert c.get("/v1/campaigns/%d/clicks" % cid, headers=H).json() == {"unique": 1, "total": 2, "ignored": 3}
    view = world.store.view("acme", a)
    assert view is not None and sorted(x.kind for x in view.activities) == ["clicked", "clicked", "delivered"]
    world.clock.now = T0 + 102
    assert c.get("/l/ZZZZZZZZ", follow_redirects=False).status_code == 404
    # At the root of the short domain too (the link as sent); the API's own routes are unaffected.
    r = c.get(f"/{code}", headers={"user-agent": UA}, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].startswith("https://shop.example/p?ref=x")
    world.clock.now = T0 + 103
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/ZZZZZZZZ", follow_redirects=False).status_code == 404
    assert c.get("/l/../../etc", follow_redirects=False).status_code == 404

    # An order two hours after the click is attributed to it.
    world.clock.now = T0 + 8000
    r = c.post("/v1/events", headers=H, json={"type": "order", "id": "o1", "at": T0 + 7300, "order_id": "o1",
                                              "phone": "+447911100001", "total": 4200, "currency": "EUR",
                                              "payment_status": "paid"})  # fmt: skip
    assert r.status_code in (200, 201, 202), r.text
    rep = c.get(f"/v1/campaigns/{cid}/report", headers=H).json()
    [row] = rep["rows"]
    assert (row["sent"], row["delivered"], row["unique_clicks"], row["conversions"], row["revenue"]) == (2, 1, 1, 1, 4200)
    assert rep["attributions"] == [{"order": "o1", "message": f"{cid}:{a}", "via": "click"}]
    hours = c.get(f"/v1/campaigns/{cid}/report?by=hour", headers=H).json()
    assert sum(x["sent"] for x in hours["rows"]) == 2
    assert c.get(f"/v1/campaigns/{cid}/report?by=planet", headers=H).json()["code"] == "unknown_dimension"

    # Pause and cancel reach the gateway job.
    assert c.post(f"/v1/campaigns/{cid}/pause", headers=H).json()["status"] == "paused"
    assert c.post(f"/v1/campaigns/{cid}/cancel", headers=H).json()["status"] == "canceled"
    assert world.gw.actions == [("job-1", "pause"), ("job-1", "cancel")]
    assert c.post(f"/v1/campaigns/{cid}/resume", headers=H).json()["code"] == "campaign_status"


def test_ab_winner_goes_to_the_held_rest_once(world: World) -> None:
    c = world.client
    ids = [world.subscriber(n) for n in range(1, 31)]
    r = c.post("/v1/campaigns", headers=H, json={"name": "AB", "definition": {
        "sender": "ACME", "variants": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}],
        "ab": {"test_share": 0.5, "period_s": 3600, "min_per_variant": 1}, "audience": {"subscribers": ids}}})
    cid = r.json()["id"]
    out = c.post(f"/v1/campaigns/{cid}/launch", headers=H).json()
    assert out["held"] > 0 and out["recipients"] + out["held"] == 30
    r = c.post(f"/v1/campaigns/{cid}/winner", headers=H).json()
    assert r["decision"]["status"] == "pending" and r["released"] == 0
    world.clock.now = T0 + 3601
    r = c.post(f"/v1/campaigns/{cid}/winner", headers=H).json()
    assert r["decision"]["status"] == "no_winner" and r["decision"]["winner"] == "a" and r["released"] == out["held"]
    assert c.post(f"/v1/campaigns/{cid}/winner", headers=H).json()["released"] == 0  # sent once
    sent = [x["to"] for j in world.gw.jobs.values() for x in j["recipients"]]
    assert sorted(sent) == sorted(f"+4479111{i:05d}" for i in range(1, 31))  # everyone once
    rest = [x for x in world.store.campaign_recipients("acme", cid) if x.variant == "a" and x.text.startswith("A ")]
    assert len(rest) >= out["held"]


def test_links_expire_only_when_configured(world: World) -> None:
    c = world.client
    a = world.subscriber(1)
    codes = {}
    for ttl in (None, 1):
        definition = {"sender": "A", "template": "see https://s.io/x", "audience": {"subscribers": [a]},
                      "smart_sending_hours": 0, **({"link_ttl_days": ttl} if ttl else {})}  # fmt: skip
        cid = c.post("/v1/campaigns", headers=H, json={"name": "T", "definition": definition}).json()["id"]
        c.post(f"/v1/campaigns/{cid}/launch", headers=H)
        [row] = world.store.campaign_recipients("acme", cid)
        codes[ttl] = row.text.split("https://sl.ui/")[1].split()[0]
    world.clock.now = T0 + 86_400 - 1
    assert c.get(f"/{codes[1]}", headers={"user-agent": UA}, follow_redirects=False).status_code == 302
    world.clock.now = T0 + 86_400
    assert c.get(f"/{codes[1]}", headers={"user-agent": UA}, follow_redirects=False).status_code == 404
    world.clock.now = T0 + 3650 * 86_400
    assert c.get(f"/{codes[None]}", headers={"user-agent": UA}, follow_redirects=False).status_code == 302


def test_recipients_are_listed_with_their_texts_and_states(world: World) -> None:
    c = world.client
    ids = [world.subscriber(n) for n in range(1, 6)]
    cid = c.post("/v1/campaigns", headers=H, json={"name": "R", "definition": {
        "sender": "ACME", "template": "Hi {first_name}: https://shop.example/new", "audience": {"subscribers": ids}}}).json()["id"]
    assert c.get(f"/v1/campaigns/{cid}/recipients", headers=H).json() == {"items": [], "next": None}  # not launched
    c.post(f"/v1/campaigns/{cid}/launch", headers=H)
    page = c.get(f"/v1/campaigns/{cid}/recipients?limit=3", headers=H).json()
    assert [r["subscriber_id"] for r in page["items"]] == ids[:3] and page["next"] == ids[2]
    rest = c.get(f"/v1/campaigns/{cid}/recipients?limit=3&after={page['next']}", headers=H).json()
    assert [r["subscriber_id"] for r in rest["items"]] == ids[3:] and rest["next"] is None
    row = page["items"][0]
    assert row["phone"] == "+447911100001" and row["state"] == "submitted" and row["batch"] == 0
    assert row["text"].startswith("Hi Ana: https://sl.ui/")  # the recipient's own short link, as sent
    assert c.get(f"/v1/campaigns/{cid + 99}/recipients", headers=H).json()["code"] == "campaign_not_found"
    assert c.get(f"/v1/campaigns/{cid}/recipients?limit=0", headers=H).status_code in (400, 422)
    assert c.get(f"/v1/campaigns/{cid}/recipients").status_code == 401


@pytest.mark.parametrize(("min_delay", "after_delivery", "counted"), [(2.0, 1.9, False), (2.0, 2.0, True),
                                                                      (2.0, -1.9, False), (0.0, 0.0, True),
                                                                      (10.0, 9.0, False)])  # fmt: skip
def test_the_preview_fetch_window_is_the_tenants(world: World, min_delay: float, after_delivery: float,
                                                 counted: bool) -> None:  # fmt: skip
    """``click_min_delay_s`` (a tenant setting) is the window around delivery in which a hit is a
    link-preview fetch: at its edge a hit counts, inside it does not."""
    world.launcher.tenants["acme"] = TenantLinks(domain="sl.ui", key=b"s" * 32, click_min_delay=min_delay)  # type: ignore[attr-defined]
    c = world.client
    a = world.subscriber(1)
    cid = c.post("/v1/campaigns", headers=H, json={"name": "W", "definition": {
        "sender": "ACME", "template": "New in: https://shop.example/new", "audience": {"subscribers": [a]}}}).json()["id"]
    c.post(f"/v1/campaigns/{cid}/launch", headers=H)
    [row] = c.get(f"/v1/campaigns/{cid}/recipients", headers=H).json()["items"]
    code = row["text"].split("https://sl.ui/")[1].split()[0]
    [job_id] = world.gw.jobs
    world.webhook([{"message_id": "m1", "job_id": job_id, "state": "delivered", "at": T0 + 5, "index": 0}])
    world.clock.now = T0 + 5 + after_delivery
    assert c.get(f"/{code}", headers={"user-agent": UA}, follow_redirects=False).status_code == 302
    assert c.get(f"/v1/campaigns/{cid}/clicks", headers=H).json()["total"] == int(counted)


def test_click_min_delay_is_checked_in_the_config() -> None:
    from campaigns.errors import ConfigError

    base = '[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "K"\n'
    assert loads(base + "click_min_delay_s = 2.5\n").tenants[0].click_min_delay_s == 2.5  # type: ignore[union-attr]
    assert loads(base).tenants[0].click_min_delay_s == 10.0  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as err:
        loads(base + "click_min_delay_s = -1\n")
    assert err.value.key == "campaigns.tenants[0].click_min_delay_s"


def test_a_removed_setting_is_an_unknown_key() -> None:
    """``short_link_store_io`` (the redirect's PostgreSQL round trips on the event loop) was removed:
    a config that still sets it is refused like any unknown key, naming it, not silently ignored."""
    from campaigns.errors import ConfigError

    base = '[campaigns]\nstore_url = "sqlite:///c.db"\nshort_link_port = 0\n'
    assert loads(base) is not None
    for value in ('"loop"', '"threads"'):
        with pytest.raises(ConfigError, match="unknown field `short_link_store_io`") as err:
            loads(base + f"short_link_store_io = {value}\n", path="sluice.toml")
        assert err.value.key == "campaigns.short_link_store_io" and str(err.value).startswith("sluice.toml: ")
