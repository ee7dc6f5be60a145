"""The gateway link against a real `sluice serve` child (and an SMPP simulator child): opt-outs recorded
here reach the gateway's suppressions, STOPs the gateway hears reach the ledger, keyword opt-in with
double opt-in by SMS, and nothing is lost across a restart of either side (outbox + stored cursor +
reconciliation of the gateway's suppressions). The child is observed through its API with bounded
polls; nothing is slept on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import httpx
import pytest

from campaigns.config import loads
from campaigns.core.consent import disclosure_sha256
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.link import GatewayLink
from campaigns.service.signature import HEADER, sign
from campaigns.store import open_store
from campaigns.store.base import NewConsent
from carriers.http.profiles import generic
from gateway.testing.serving import shop_config
from gateway.testing.processes import gateway, simulator

pytestmark = pytest.mark.anyio

KEY = "link-serve-key-0123456789"
CB_SECRET = "carrier-callback-secret"
ENV = {"SLUICE_KEY": KEY, "BETA_CB": CB_SECRET}
P = ["+447911123401", "+447911123402", "+447911123403", "+447911123404", "+447911123405"]
CAMPAIGNS = """
[campaigns]
gateway_url = "http://127.0.0.1:9"
[[campaigns.tenants]]
name = "acme"
key_env = "CK"
gateway_key_env = "SLUICE_KEY"
webhook_secret_env = "WH"
[campaigns.tenants.signup]
shop_name = "Acme"
"""


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def gateway_config(tmp_path: Path, sim_port: int) -> str:
    return shop_config(tmp_path, sim_port, sender="12345", rps=1000.0, http_carrier=True)


async def poll(get, until, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not until(got := await get()):
            await anyio.sleep(0.05)
    return got


async def mo(c: httpx.AsyncClient, sender: str, text: str) -> None:
    """An inbound message, as a carrier's signed callback delivers it to the gateway."""
    body = json.dumps({"inbound": [{"from": sender, "to": "12345", "text": text}]}).encode()
    r = await c.post("/v1/carriers/beta/inbound", content=body, headers=generic.sign("", body, CB_SECRET, time.time()))
    assert r.status_code == 204, r.text


def make(tmp_path: Path, gw_url: str) -> tuple[Audience, GatewayLink]:
    settings = loads(CAMPAIGNS)
    assert settings is not None
    audience = Audience(open_store(f"sqlite:///{tmp_path / 'campaigns.db'}"), settings, time.time)
    return audience, GatewayLink(audience, {"acme": GatewayClient(gw_url, KEY)})


async def test_consent_reaches_both_sides_and_survives_restarts(tmp_path: Path) -> None:
    async with simulator("--dlr-delay", "0.01") as sim, gateway(gateway_config(tmp_path, sim.port), env=ENV) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as c:
            audience, link = make(tmp_path, gw.url)
            store, now = audience.store, time.time()
            # Here -> gateway: an opt-out recorded here becomes a suppression there.
            for action in ("opt_in", "confirm", "opt_out"):
                store.record_consent("acme", NewConsent(phone=P[0], action=action, source="api", at=now), now=now)
            assert await link.push("acme") == 1
            assert P[0] in {s["number"] for s in (await c.get("/v1/suppressions")).json()}
            assert await link.push("acme") == 0  # sent once, then forgotten

            # Gateway -> here: a STOP the gateway heard (and acted on) reaches the ledger.
            await mo(c, P[1], "STOP")
            await poll(lambda: c.get("/v1/inbound"), lambda r: len(r.json()["inbound"]) == 1)
            assert await link.pull("acme") == 1
            sub = store.subscriber_by_phone("acme", P[1])
            assert sub is not None and sub.consent == "revoked"
            [entry] = store.ledger("acme", sub.id)
            assert (entry.action, entry.source, entry.evidence.mo_id is not None) == ("opt_out", "gateway", True)

            # Keyword opt-in, double opt-in by SMS: JOIN -> pending + "reply Y"; Y -> confirmed + welcome.
            accepted = (await sim.counters())["accepted"]
            await mo(c, P[2], "join")
            await poll(lambda: c.get("/v1/inbound"), lambda r: len(r.json()["inbound"]) == 2)
            assert await link.pull("acme") == 1
            sub = store.subscriber_by_phone("acme", P[2])
            assert sub is not None and sub.consent == "pending"
            await poll(sim.counters, lambda n: n["accepted"] >= accepted + 1)  # the confirmation request
            await mo(c, P[2], "Y")
            await poll(lambda: c.get("/v1/inbound"), lambda r: len(r.json()["inbound"]) == 3)
            assert await link.pull("acme") == 1
            ledger = store.ledger("acme", sub.id)
            assert [(e.action, e.source) for e in ledger] == [("opt_in", "keyword"), ("confirm", "reply")]
            text = audience.tenants["acme"].signup.confirm_text.format(shop="Acme")
            assert ledger[0].disclosure_sha256 == disclosure_sha256(text) and ledger[0].evidence.keyword == "JOIN"
            assert store.subscriber("acme", sub.id).consent == "confirmed"  # type: ignore[union-attr]
            await poll(sim.counters, lambda n: n["accepted"] >= accepted + 2)  # the welcome
            assert await link.pull("acme") == 0  # the cursor moved: nothing is handled twice

            # Restart of this side: what the gateway suppressed meanwhile is reconciled at start-up,
            # and the stored cursor means old messages are not handled again.
            store.close()
            r = await c.post("/v1/suppressions", json={"number": P[3]})
            assert r.status_code == 201, r.text
            audience, link = make(tmp_path, gw.url)
            store = audience.store
            await link.start()
            assert store.subscriber_by_phone("acme", P[3]).consent == "revoked"  # type: ignore[union-attr]
            assert len(store.ledger("acme", store.subscriber_by_phone("acme", P[2]).id)) == 2  # type: ignore[union-attr]
            await link.start()  # again: nothing added twice
            assert len(store.ledger("acme", store.subscriber_by_phone("acme", P[3]).id)) == 1  # type: ignore[union-attr]

            # The gateway unreachable: the opt-out stays queued, and goes when it is back.
            down = GatewayLink(audience, {"acme": GatewayClient("http://127.0.0.1:9", KEY, timeout=2)})
            store.record_consent("acme", NewConsent(phone=P[4], action="opt_out", source="api", at=now), now=now)
            assert await down.push("acme") == 0 and len(store.sync_pending("acme")) == 1
            assert await link.push("acme") == 1
            assert P[4] in {s["number"] for s in (await c.get("/v1/suppressions")).json()}
            store.close()


async def test_inbound_webhook_is_verified(tmp_path: Path) -> None:
    """The gateway's inbound webhook: a forged or unsigned body changes nothing; a signed one is handled."""
    settings = loads(CAMPAIGNS.replace('shop_name = "Acme"', 'shop_name = "Acme"\nwelcome_media_url = "https://cdn/w.gif"'))
    assert settings is not None
    audience = Audience(open_store("sqlite:///:memory:"), settings, time.time)

    class NoSend(GatewayClient):
        sent: list[tuple[str, list[str] | None]] = []

        async def send(self, **kw):  # type: ignore[no-untyped-def, override]
            self.sent.append((kw["key"], kw["media"]))
            return "m1"

    client = NoSend("http://127.0.0.1:9", KEY)
    link = GatewayLink(audience, {"acme": client})
    app = create_app(audience, tenant_keys(settings, {"CK": "k"}), link=link, secrets={"acme": "whsec"})
    body = json.dumps({"inbound": [{"id": 7, "from": P[0], "to": "12345", "text": "JOIN", "at": time.time(),
                                    "carrier": "beta", "kind": "message", "keyword": None}]}).encode()  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:
        for headers in ({}, {HEADER: sign("wrong", body, int(time.time()))}):
            r = await h.post("/v1/gateway/acme/inbound", content=body, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert audience.store.subscriber_by_phone("acme", P[0]) is None
        good = {HEADER: sign("whsec", body, int(time.time()))}
        assert (await h.post("/v1/gateway/beta/inbound", content=body, headers=good)).status_code == 401
        for _ in range(2):  # delivered twice (a webhook retry): recorded once
            assert (await h.post("/v1/gateway/acme/inbound", content=body, headers=good)).status_code == 204
        sub = audience.store.subscriber_by_phone("acme", P[0])
        assert sub is not None and sub.consent == "pending" and len(audience.store.ledger("acme", sub.id)) == 1
        assert client.sent == [("campaigns:acme:confirm:7", None)] * 2  # same Idempotency-Key: sent once
        yes = body.replace(b'"id": 7', b'"id": 8').replace(b'"JOIN"', b'"yes"').replace(b'"message"', b'"opt_in"')
        r = await h.post("/v1/gateway/acme/inbound", content=yes, headers={HEADER: sign("whsec", yes, int(time.time()))})
        assert r.status_code == 204
    assert client.sent[-1] == ("campaigns:acme:welcome:8", ["https://cdn/w.gif"])  # the MMS welcome
    assert audience.store.subscriber("acme", sub.id).consent == "confirmed"  # type: ignore[union-attr]
