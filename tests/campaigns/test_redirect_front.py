"""Short links answered in front of the framework (``redirect_front``) answer exactly as the API's own
routes do: the same 302 and Location (UTM merged), the same headers, HEAD and bots recorded but not
counted, unknown codes and every other path left to the framework (its 404 body, /healthz)."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import httpx
import pytest

from campaigns.config import loads
from campaigns.core.events import Profile
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.campaign_api import campaign_handlers, redirect_front
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.service.tracking import Tracker
from campaigns.store import open_store
from campaigns.store.base import NewConsent
from fake_gateway import FakeGateway

pytestmark = pytest.mark.anyio
KEY = "acme-campaigns-key-0123456789"
T0 = 1_767_000_000.0
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"


class Launched(NamedTuple):
    store: Any
    tracker: Tracker
    app: Any
    campaign_id: int
    code: str


async def one_launched_link(tmp_path) -> Launched:
    """A shop with one confirmed subscriber, a campaign launched to them through a fake gateway
    (a link with UTM and a fragment), the API app, and the code of the link their text holds; the
    clock then 100 s after the launch."""
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    assert settings is not None
    store, now = open_store(f"sqlite:///{tmp_path / 'c.db'}"), [T0]
    clock = lambda: now[0]  # noqa: E731
    gw = FakeGateway()
    la = Launcher(store, {"acme": GatewayClient("http://g", "k", transport=gw.transport())},
                  {"acme": TenantLinks(domain="sl.ui", key=b"s" * 32)}, clock)  # fmt: skip
    tracker = Tracker(la)
    app = create_app(Audience(store, settings, clock), tenant_keys(settings, {}),
                     extra_handlers=campaign_handlers(la, tracker, {}))  # fmt: skip
    phone = "+447911100001"
    sub, _ = store.put_subscriber("acme", Profile(phone=phone), phone=phone, at=T0 - 99, now=T0 - 99)
    for action in ("opt_in", "confirm"):
        store.record_consent("acme", NewConsent(phone=phone, action=action, source="api", at=T0 - 50), now=T0 - 50)
    camp = await la.create("acme", "S", {"sender": "ACME", "template": "Sale https://shop.example/p?ref=x#top",
                                         "utm": {"utm_campaign": "spring"}, "audience": {"subscribers": [sub.id]}})
    await la.launch("acme", camp.id)
    [job] = gw.jobs.values()
    code = job["recipients"][0]["vars"]["body"].split("https://sl.ui/")[1].split()[0]
    now[0] = T0 + 100
    return Launched(store, tracker, app, camp.id, code)


async def test_front_answers_as_the_routes_do(tmp_path) -> None:
    store, tracker, app, campaign_id, code = await one_launched_link(tmp_path)
    hdr = {"user-agent": UA}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=redirect_front(app, tracker)), base_url="http://s") as f, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as plain:  # fmt: skip
        for path in (f"/{code}", f"/l/{code}"):
            a, b = await f.get(path, headers=hdr), await plain.get(path, headers=hdr)
            assert (a.status_code, a.headers["location"]) == (b.status_code, b.headers["location"]) == (302, b.headers["location"])
            assert a.headers["cache-control"] == b.headers["cache-control"] == "no-store"
            assert a.headers["referrer-policy"] == "no-referrer"
        assert "utm_campaign=spring" in a.headers["location"] and a.headers["location"].endswith("#top")
        assert (await f.head(f"/{code}", headers=hdr)).status_code == 302
        assert (await f.get(f"/{code}", headers={"user-agent": "Slackbot-LinkExpanding 1.0"})).status_code == 302
        for path in ("/ZZZZZZZZ", "/l/ZZZZZZZZ"):
            a, b = await f.get(path), await plain.get(path)
            assert a.status_code == b.status_code == 404 and a.json() == b.json()
        assert (await f.get("/healthz")).json() == {"status": "ok"}
        assert (await f.get(f"/v1/campaigns/{campaign_id}/clicks", headers={"authorization": f"Bearer {KEY}"})).json() == \
            {"unique": 1, "total": 4, "ignored": 2}  # fmt: skip
        auth = {"authorization": f"Bearer {KEY}"}
        rep = (await f.get("/v1/reports?by=campaign,step", headers=auth)).json()  # the shop's report, every source
        assert [(r["key"], r["sent"], r["unique_clicks"]) for r in rep["rows"]] == [({"campaign": str(campaign_id), "step": None}, 1, 1)]
        r = await f.get("/v1/reports?by=planet", headers=auth)
        assert r.status_code == 422 and r.json()["code"] == "unknown_dimension"
        bad = await f.get("/v1/reports?since=-1", headers=auth)
        assert bad.status_code == 422 and bad.json()["field"] == "since"
        assert (await f.get("/v1/reports")).status_code == 401
    store.close()


async def test_a_failed_flush_keeps_the_clicks_for_the_next(tmp_path) -> None:
    from campaigns.errors import StorageError
    from campaigns.store.campaign_rows import LinkRow

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    la = Launcher(store, {}, {}, lambda: T0 + 100)
    tracker = Tracker(la)
    store.freeze_audience("acme", 1, [], [LinkRow(code="AbCdE123", tenant="acme", campaign_id=1, subscriber_id=1,
                                                  target="https://x.example/", created_at=T0)], now=T0)  # fmt: skip
    assert await tracker.redirect("AbCdE123", method="GET", user_agent=UA) is not None
    real, calls = store.record_link_hits, []

    def flaky(clicks, *, now):  # type: ignore[no-untyped-def]
        calls.append(len(clicks))
        if len(calls) == 1:
            raise StorageError("database is locked")
        return real(clicks, now=now)

    store.record_link_hits = flaky  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        await tracker.flush()
    assert await tracker.redirect("AbCdE123", method="GET", user_agent=UA) is not None
    assert await tracker.flush() == 2 and calls == [1, 2]  # the first hit was kept, in order, not lost
    assert store.click_counts("acme", 1).total == 2
    store.close()
