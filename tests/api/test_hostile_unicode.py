"""Held-out text corpus: the same words written in other Unicode forms (hunt12).

A decomposed text (NFD: "e" + U+0301 where "é" is meant, Romanian "s" + U+0326, Hangul as jamo)
is canonically the same text as its composed form: dispatch sends the NFC form, so it costs what
the composed text costs, and ``POST /v1/preview`` says exactly what dispatch sends (body, encoding,
segments, units), with smart encoding on and off. Through the seam: API -> core -> the dispatch a
carrier connector is handed.
"""

from __future__ import annotations

import unicodedata

import httpx
import msgspec
import pytest

from gateway.api.app import Api, hash_key
from gateway.config import Tenant, default_text, loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore
from gateway.testing.clock import FakeClock

pytestmark = pytest.mark.anyio
KEY = "acme-secret-key-1"
NFD = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731

# (text as a client sends it, smart_encoding) -> (body dispatched, encoding, segments)
CORPUS = [
    (NFD("Café ouvert"), False, ("Café ouvert", "gsm7", 1)),
    (NFD("Café ouvert"), True, ("Café ouvert", "gsm7", 1)),
    (NFD("é" * 40), False, ("é" * 40, "gsm7", 1)),  # 80 UTF-16 units as written: 2 segments
    (NFD("Ñandú über Åland"), False, ("Ñandú über Åland", "ucs2", 1)),  # ú is not GSM-7
    (NFD("Ñandú über Åland"), True, ("Ñandu über Åland", "gsm7", 1)),
    (NFD("ș" * 60), False, ("ș" * 60, "ucs2", 1)),  # 120 units as written: 2 segments
    ("s\u0326i t\u0326ara", True, ("si tara", "gsm7", 1)),  # comma below, decomposed
    ("Promoţie şi reducere în Bucureşti", True, ("Promotie si reducere in Bucuresti", "gsm7", 1)),  # cedilla forms
    ("Promoție și reducere în București", False, ("Promoție și reducere în București", "ucs2", 1)),
    (NFD("한국어 안내"), False, ("한국어 안내", "ucs2", 1)),  # jamo: 14 units, composed 6
    ("x\u0301 y", False, ("x\u0301 y", "ucs2", 1)),  # no composed form: sent as written
    ("Garçon 5 €", True, ("GarÇon 5 €", "gsm7", 1)),  # 0x09 (segments.py: the ç decision)
    ("Garçon 5 €", False, ("Garçon 5 €", "ucs2", 1)),  # smart encoding off: the exact letter
]


def _api(smart: bool) -> tuple[Api, Gateway, FakeClock]:
    clock = FakeClock()
    cfg = loads(default_text())
    cfg = msgspec.structs.replace(cfg, core=msgspec.structs.replace(cfg.core, smart_encoding=smart))
    gw = Gateway(Scheduler(cfg.core, clock()), MemoryStore())
    tenants = {hash_key(KEY): Tenant(name="acme", key_sha256=hash_key(KEY), requests_per_second=1e6, burst=10**6)}
    return Api(gw, tenants, clock=clock, max_body=1 << 20), gw, clock


@pytest.mark.parametrize(("text", "smart", "want"), CORPUS)
async def test_preview_and_dispatch_send_the_composed_text(text: str, smart: bool, want: tuple[str, str, int]) -> None:
    api, gw, clock = _api(smart)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://sluice.test",
                                 headers={"authorization": f"Bearer {KEY}"}) as c:  # fmt: skip
        p = (await c.post("/v1/preview", json={"text": "{body}", "vars": {"body": text}})).json()
        m = await c.post("/v1/messages", json={"to": "+40721234567", "body": text, "from": "ACME",
                                               "category": "transactional"})  # fmt: skip
        assert m.status_code == 202, m.text
        got = (await c.get(f"/v1/messages/{m.json()['id']}")).json()
    dispatched = [d for name in [c_.name for c_ in gw.core.settings.carriers] for d in gw.core.take(name, 10, clock()).dispatches]
    assert [(d.body, d.encoding, d.segments) for d in dispatched] == [want]
    units = len(want[0]) if want[1] == "gsm7" else len(want[0].encode("utf-16-le")) // 2
    assert (p["text"], p["encoding"], p["segments"], p["units"]) == (*want, units + (want[0].count("€") if want[1] == "gsm7" else 0))
    assert (got["encoding"], got["segments"]) == want[1:]
