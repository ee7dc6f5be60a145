"""POST /v1/preview: a text measured by the gateway's own rules (encoding, segments, smart encoding,
price per segment per carrier); it agrees with what a sent message reports, on random texts."""

from __future__ import annotations

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.app import Api, hash_key
from gateway.config import Tenant, default_text, loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore
from gateway.testing.clock import FakeClock

pytestmark = pytest.mark.anyio
KEY = "acme-secret-key-1"


def _config():  # the default config, its first carrier priced at 7 cents a segment
    cfg = loads(default_text())
    carriers = [msgspec.structs.replace(c, price_per_segment=7 if i == 0 else None) for i, c in enumerate(cfg.core.carriers)]
    return msgspec.structs.replace(cfg, core=msgspec.structs.replace(cfg.core, carriers=carriers))


@pytest.fixture
async def client():
    clock = FakeClock()
    cfg = _config()
    gw = Gateway(Scheduler(cfg.core, clock()), MemoryStore())
    api = Api(gw, {hash_key(KEY): Tenant(name="acme", key_sha256=hash_key(KEY), requests_per_second=1e6, burst=10**6)},
              clock=clock, max_body=1 << 20)  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://sluice.test",
                                 headers={"authorization": f"Bearer {KEY}"}) as c:  # fmt: skip
        c.carriers = [c_.name for c_ in cfg.core.carriers]  # type: ignore[attr-defined]
        yield c


async def test_preview_measures_encoding_segments_and_price(client) -> None:
    first, *rest = client.carriers
    r = await client.post("/v1/preview", json={"text": "Hi {name}, 20% off today", "vars": {"name": "Ana"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["text"], body["encoding"], body["segments"], body["units"]) == ("Hi Ana, 20% off today", "gsm7", 1, 21)
    assert body["prices"] == {first: 7, **{n: None for n in rest}}
    r = await client.post("/v1/preview", json={"text": "x" * 161})
    assert (r.json()["segments"], r.json()["prices"][first]) == (2, 14)
    r = await client.post("/v1/preview", json={"text": "【品牌】拒收请回复R"})
    assert (r.json()["encoding"], r.json()["segments"], r.json()["units"]) == ("ucs2", 1, 10)
    # Smart encoding: curly quotes alone do not force UCS-2 (dispatch replaces them).
    r = await client.post("/v1/preview", json={"text": "It\u2019s on"})
    assert r.json()["encoding"] == "gsm7"


async def test_preview_errors_are_coded(client) -> None:
    r = await client.post("/v1/preview", json={"text": "Hi {name}"})
    assert r.status_code == 422 and r.json()["field"] == "vars.name"
    r = await client.post("/v1/preview", json={"text": "é" * 1600})
    assert r.status_code == 422 and r.json()["code"] == "too_long"
    r = await client.post("/v1/preview", json={"text": ""})
    assert r.status_code == 422
    r = await client.post("/v1/preview", content=b"{nope")
    assert r.status_code == 400
    r = await client.post("/v1/preview", json={"text": "x"}, headers={"authorization": "Bearer nope"})
    assert r.status_code == 401
    assert "/v1/preview" in (await client.get("/openapi.json")).json()["paths"]


_ALPHABET = st.sampled_from(list("abc XYZ 0123456789.,!?@$_{}[]~^|\\€é\u2019\u201c😀中"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(_ALPHABET, min_size=1, max_size=400))
async def test_preview_agrees_with_the_sent_message(client, text: str) -> None:
    text = text.replace("{", "(").replace("}", ")")  # no placeholders: a literal body
    p = await client.post("/v1/preview", json={"text": text})
    m = await client.post("/v1/messages", json={"to": "+447911123456", "body": text, "from": "ACME",
                                                "category": "transactional"})  # fmt: skip
    if p.status_code != 200:
        assert p.json()["code"] == "too_long" and m.status_code == 422
        return
    assert m.status_code == 202, m.text
    got = (await client.get(f"/v1/messages/{m.json()['id']}")).json()
    assert (got["segments"], got["encoding"]) == (p.json()["segments"], p.json()["encoding"])
