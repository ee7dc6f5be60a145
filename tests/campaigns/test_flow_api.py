"""The flow routes of the campaigns API through the ASGI app (SQLite): create with typed errors naming
the JSON path (nothing stored), versions (runs keep theirs), enable checks the templates, install a
ready-made flow (editable), simulate over generated and past events, runs and per-node counts,
tenant isolation (another shop's flow answers 404), OpenAPI."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from campaigns.config import loads
from campaigns.core.events import CheckoutEvent, Profile
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.flow_api import FlowService, flow_handlers
from campaigns.store import Store, open_store
from campaigns.store.base import NewConsent

KEYS = {"acme": "acme-campaigns-key-0123456789", "beta": "beta-campaigns-key-9876543210"}
T0 = 1_760_000_000.0
CONFIG = f"""
[campaigns]
[[campaigns.tenants]]
name = "acme"
key_env = "CK_ACME"
[[campaigns.tenants]]
name = "beta"
key_sha256 = "{hashlib.sha256(KEYS['beta'].encode()).hexdigest()}"
"""
FLOW = {"id": "hello", "name": "Hello", "trigger": {"type": "custom", "name": "hi"}, "entry": "s",
        "nodes": {"s": {"type": "send", "template": "hi_text"}}}


@pytest.fixture
def env(sqlite_url: str) -> Iterator[tuple[TestClient, Store]]:
    settings = loads(CONFIG)
    assert settings is not None
    store = open_store(sqlite_url)
    clock = lambda: T0  # noqa: E731
    app = create_app(Audience(store, settings, clock), tenant_keys(settings, {"CK_ACME": KEYS["acme"]}),
                     extra_handlers=flow_handlers(FlowService(store, clock)))  # fmt: skip
    with TestClient(app) as c:
        yield c, store
    store.close()


def h(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


def test_create_errors_versions_enable_and_isolation(env: tuple[TestClient, Store]) -> None:
    c, _ = env
    bad = {**FLOW, "nodes": {"s": {"type": "send", "template": "hi_text", "next": "nowhere"}}}
    r = c.post("/v1/flows", json={"definition": bad}, headers=h("acme"))
    assert r.status_code == 422 and r.json()["code"] == "flow.bad_reference" and r.json()["field"] == "$.nodes.s.next"
    assert c.get("/v1/flows", headers=h("acme")).json()["items"] == []  # nothing half-stored
    r = c.post("/v1/flows", json={"definition": FLOW}, headers=h("acme"))
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["flow"]["enabled"] is False
    assert c.post("/v1/flows", json={"definition": FLOW}, headers=h("acme")).json()["code"] == "flow_exists"
    r = c.post("/v1/flows/hello/enable", headers=h("acme"))
    assert r.status_code == 422 and r.json()["code"] == "flow.unknown_template" and r.json()["field"] == "$.nodes.s.template"
    assert c.put("/v1/flow-templates/hi_text", json={"text": "Hi {nope}"}, headers=h("acme")).json()["code"] == "unknown_shortcode"
    assert c.put("/v1/flow-templates/hi_text", json={"text": "Hi {{first_name}}"}, headers=h("acme")).json()["code"] == "doubled_braces"
    assert c.put("/v1/flow-templates/hi_text", json={"text": "Hi {first_name|there}"}, headers=h("acme")).status_code == 200
    assert c.post("/v1/flows/hello/enable", headers=h("acme")).json()["enabled"] is True
    r = c.post("/v1/flows/hello/versions", json={"definition": {**FLOW, "name": "Hello 2"}}, headers=h("acme"))
    assert r.status_code == 201 and r.json()["version"] == 2
    assert c.get("/v1/flows/hello?version=1", headers=h("acme")).json()["definition"]["name"] == "Hello"
    r = c.post("/v1/flows/hello/versions", json={"definition": {**FLOW, "id": "other"}}, headers=h("acme"))
    assert r.status_code == 422 and r.json()["code"] == "flow.id_mismatch"
    for path in ("/v1/flows/hello", "/v1/flows/hello/runs", "/v1/flows/hello/nodes", "/v1/flows/hello/messages"):
        assert c.get(path, headers=h("beta")).status_code == 404, path
    assert c.post("/v1/flows/hello/enable", headers=h("beta")).json()["code"] == "flow_not_found"
    assert c.post("/v1/flows/hello/simulate", json={}, headers=h("beta")).status_code == 404
    assert c.get("/v1/flows", headers=h("beta")).json()["items"] == []
    assert c.get("/v1/flows").status_code == 401
    paths = c.get("/schema/openapi.json").json()["paths"]
    assert {"/v1/flows", "/v1/flows/install", "/v1/flows/{flow_id}/simulate", "/v1/flows/{flow_id}/nodes",
            "/v1/subscribers/{subscriber_id}/runs"} <= set(paths)


def test_install_edit_simulate_and_runs(env: tuple[TestClient, Store]) -> None:
    c, store = env
    r = c.post("/v1/flows/install", json={"flow": "abandoned_cart"}, headers=h("acme"))
    assert r.status_code == 201 and r.json()["definition"]["trigger"] == {"type": "checkout_abandoned"}
    assert "cart_big_mms" in c.get("/v1/flow-templates", headers=h("acme")).json()["items"]
    assert c.post("/v1/flows/install", json={"flow": "nope"}, headers=h("acme")).json()["code"] == "library_flow_not_found"
    definition = r.json()["definition"]
    definition["nodes"]["wait1h"]["seconds"] = 60  # editable
    assert c.post("/v1/flows/abandoned_cart/versions", json={"definition": definition}, headers=h("acme")).json()["version"] == 2
    sim = c.post("/v1/flows/abandoned_cart/simulate", json={"subscribers": 200, "seed": 3}, headers=h("acme")).json()
    assert sim["entered"] == 200 and sim["sends"] == sum(n["sent"] for n in sim["nodes"].values())
    # Past events: two abandoned checkouts of marketable subscribers, one over $100.
    for i, value in ((1, 25_000), (2, 3_000)):
        p = f"+3361234567{i}"
        store.put_subscriber("acme", Profile(phone=p), phone=p, at=T0 - 9000, now=T0 - 9000)
        store.record_consent("acme", NewConsent(phone=p, action="opt_in", source="api", at=T0 - 9000), now=T0 - 9000)
        store.apply_event("acme", CheckoutEvent(id=f"c{i}", at=T0 - 8000, checkout_id=f"c{i}", phone=p, value=value,
                                                status="abandoned"), phone=p, now=T0 - 8000)  # fmt: skip
    sim = c.post("/v1/flows/abandoned_cart/simulate", json={"source": "history", "since": T0 - 86_400},
                 headers=h("acme")).json()  # fmt: skip
    assert sim["entered"] == 2 and sim["nodes"]["big"]["sent"] == 1 and sim["nodes"]["small"]["sent"] == 1
    bad = c.post("/v1/flows/abandoned_cart/simulate", json={"source": "history", "since": T0, "until": T0 - 1},
                 headers=h("acme"))  # fmt: skip
    assert bad.status_code == 422 and bad.json()["field"] == "until"
    assert c.get("/v1/flows/abandoned_cart/runs", headers=h("acme")).json() == {"items": [], "next": None}
    assert c.get("/v1/subscribers/1/runs", headers=h("beta")).status_code == 404
