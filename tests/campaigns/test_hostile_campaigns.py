"""A hostile client on the campaigns and flows API, on both engines: ids no store can hold, an
audience CSV without a phone column, NUL characters in definitions and templates. Each is a 422
naming the field of the definition when it is saved (never a draft that fails with a 500 at launch:
SQLite's OverflowError, PostgreSQL's ``bigint out of range``), and a launch of a well-formed
campaign with a bad CSV row names ``audience.csv.rows[i]``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from campaigns.config import loads
from campaigns.core.events import Profile
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.campaign_api import campaign_handlers
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.service.tracking import Tracker
from campaigns.store import open_store
from campaigns.store.base import NewConsent
from fake_gateway import FakeGateway

pytestmark = pytest.mark.anyio
KEY = "acme-campaigns-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
T0 = 1_767_000_000.0
PHONE = "+14155550100"


@pytest.fixture
def app_and_gateway(store_url: str) -> Iterator[tuple[object, FakeGateway]]:
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    assert settings is not None
    store = open_store(store_url)
    gw = FakeGateway()
    la = Launcher(store, {"acme": GatewayClient("http://g", "k", transport=gw.transport())},
                  {"acme": TenantLinks(domain="sl.ui", key=b"s" * 32)}, lambda: T0)  # fmt: skip
    app = create_app(Audience(store, settings, lambda: T0), tenant_keys(settings, {}),
                     extra_handlers=campaign_handlers(la, Tracker(la), {}))  # fmt: skip
    store.put_subscriber("acme", Profile(phone=PHONE), phone=PHONE, at=T0 - 99, now=T0 - 99)
    for action in ("opt_in", "confirm"):
        store.record_consent("acme", NewConsent(phone=PHONE, action=action, source="api", at=T0 - 50), now=T0 - 50)
    yield app, gw
    store.close()


BAD = [  # (audience, field)
    ({"include": [10**30]}, "audience.include[0]"),
    ({"subscribers": [1, 10**30]}, "audience.subscribers[1]"),
    ({"exclude": [2**63]}, "audience.exclude[0]"),
    ({"include": [0]}, "audience.include[0]"),
    ({"subscribers": [-1]}, "audience.subscribers[0]"),
    ({"csv": "x" * 1000}, "audience.csv.phone"),
    ({"csv": "phone,planet\n+14155550100,Mars\n"}, "audience.csv.planet"),
]


@pytest.mark.parametrize(("audience", "field"), BAD, ids=[f for _, f in BAD])
async def test_an_audience_no_store_can_hold_is_a_422_when_saved(app_and_gateway, audience: dict, field: str) -> None:
    app, gw = app_and_gateway
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c", headers=AUTH) as c:
        r = await c.post("/v1/campaigns", json={"name": "S", "definition": {"sender": "ACME", "template": "Hi",
                                                                           "audience": audience}})  # fmt: skip
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert not gw.jobs


async def test_a_nul_in_a_definition_is_a_422_and_a_bad_csv_row_is_named_at_launch(app_and_gateway) -> None:
    app, gw = app_and_gateway
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c", headers=AUTH) as c:
        r = await c.post("/v1/campaigns", json={"name": "S", "definition": {"sender": "ACME", "template": "Hi\u0000"}})
        assert r.status_code == 422 and r.json()["field"] == "template", r.text
        r = await c.post("/v1/campaigns", json={"name": "S", "definition": {
            "sender": "ACME", "template": "Hi", "audience": {"csv": "\ufeffPhone;First_Name\r\n+14155550100;A\r\n12;B\r\n"}}})
        assert r.status_code == 201, r.text
        r = await c.post(f"/v1/campaigns/{r.json()['id']}/launch")
        assert r.status_code == 422 and r.json()["field"] == "audience.csv.rows[1].phone", r.text
        r = await c.post("/v1/campaigns", json={"name": "S", "definition": {
            "sender": "ACME", "template": "Hi", "audience": {"csv": "\ufeffPhone;First_Name\r\n+14155550100;A\r\n"}}})
        r = await c.post(f"/v1/campaigns/{r.json()['id']}/launch")
        assert r.status_code == 202 and r.json()["recipients"] == 1, r.text


@pytest.fixture
def flow_client(store_url: str) -> Iterator[object]:
    from litestar.testing import TestClient

    from campaigns.service.flow_api import FlowService, flow_handlers

    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    assert settings is not None
    store = open_store(store_url)
    app = create_app(Audience(store, settings, lambda: T0), tenant_keys(settings, {}),
                     extra_handlers=flow_handlers(FlowService(store, lambda: T0)))  # fmt: skip
    with TestClient(app) as c:
        yield c
    store.close()


FLOW = {"id": "hello", "name": "Hello", "trigger": {"type": "custom", "name": "hi"}, "entry": "s",
        "nodes": {"s": {"type": "send", "template": "hi_text"}}}


def test_a_nul_in_a_flow_or_a_template_is_a_422_naming_the_field(flow_client) -> None:
    c = flow_client
    for method, path, body, field in [
        ("put", "/v1/flow-templates/hi_text", {"text": "Hi\u0000"}, "text"),
        ("post", "/v1/flows", {"definition": {**FLOW, "name": "He\u0000llo"}}, "definition.name"),
        ("post", "/v1/flows", {"definition": {**FLOW, "nodes": {"s": {"type": "send", "template": "hi\u0000"}}}},
         "definition.nodes.s.template"),
        ("post", "/v1/flows/install", {"flow": "welcome", "id": "w2", "overrides": {"name": "W\u0000"}}, "overrides.name"),
    ]:  # fmt: skip
        r = c.request(method.upper(), path, json=body, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == field, (path, r.status_code, r.text[:300])
    assert c.get("/v1/flows", headers=AUTH).json()["items"] == []
