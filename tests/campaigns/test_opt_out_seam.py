"""Opt-out replies in the seeds' languages and real-world spellings, through the seam: a carrier
delivers each to a real `sluice serve` child, the campaign layer's link reads it (``GET
/v1/inbound``); an opt-out must reach the consent ledger (``revoked``) and the gateway's
suppressions, and never a flow or the inbox as an answer; a non-opt-out must do neither.
Slow (`make test-slow`): children are started; observed with bounded polls."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from campaigns.config import loads
from campaigns.core.events import Profile
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.audience import Audience
from campaigns.service.inbox import Inbox
from campaigns.service.link import GatewayLink
from campaigns.store import open_store
from gateway.testing.processes import gateway, simulator
from tests.campaigns.test_gateway_link import CAMPAIGNS, ENV, KEY, gateway_config, mo, poll

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Replies that revoke consent (docs/COMPLIANCE.md "Opt-out by any reasonable means"; the zh footer
#: asks for R, seed 003 for TD/退订; Romanian is a seed language).
OPT_OUTS = ["stop please", "STOP.", "Stop!", "arrêt", "ARRET", "dezabonare", "Dezabonați-mă vă rog", "退订", "TD",
            "拒收", "R", "unsubscribe", "cancel", "STOP 🛑", "ＳＴＯＰ", "  stop \n", "Ｓｔｏｐ ｐｌｅａｓｅ 🙏",
            "Nu-mi mai trimiteți mesaje", "回复TD退订", "不要再傳了", "STOP PUB", "Oprește", "anulare abonament",
            "R 谢谢", "回复R", "Ne plus m'envoyer de SMS"]  # fmt: skip  (hunt12: the footer's letter in a longer reply)
#: Replies that must not: negated, about an order, a keyword named in a question.
OTHERS = ["don't stop the deals", "cancel my order please", "where is the bus stop?", "我不想退订", "不用退订",
          "nu vreau să mă dezabonez", "Should I reply STOP?", "2", "😀", "R你好吗"]  # fmt: skip


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


async def test_opt_out_spellings_reach_the_ledger_and_suppressions_and_others_do_not(tmp_path: Path) -> None:
    texts = OPT_OUTS + OTHERS
    phones = [f"+4479111{i:05d}" for i in range(len(texts))]
    async with simulator("--dlr-delay", "0.01") as sim, gateway(gateway_config(tmp_path, sim.port), env=ENV) as gw:
        settings = loads(CAMPAIGNS.replace("[campaigns.tenants.signup]", '[campaigns.tenants.signup]\nsender = "12345"'))
        assert settings is not None
        store = open_store(f"sqlite:///{tmp_path / 'campaigns.db'}")
        audience = Audience(store, settings, time.time)
        client = GatewayClient(gw.url, KEY)
        inbox = Inbox(store, {"acme": client}, settings, time.time)
        link = GatewayLink(audience, {"acme": client}, inbox=inbox)
        for p in phones:
            store.put_subscriber("acme", Profile(phone=p), phone=p, at=time.time(), now=time.time())
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as g:
            for p, text in zip(phones, texts, strict=True):
                await mo(g, p, text)
            await poll(lambda: g.get("/v1/inbound", params={"limit": 100}),
                       lambda r: len(r.json()["inbound"]) == len(texts))  # fmt: skip
            assert await link.pull("acme") == len(texts)
            suppressed = {s["number"] for s in (await g.get("/v1/suppressions")).json()}
        wrong = []
        for p, text in zip(phones, texts, strict=True):
            want = text in OPT_OUTS
            sub = store.subscriber_by_phone("acme", p)
            assert sub is not None
            if (sub.consent == "revoked", p in suppressed) != (want, want):
                wrong.append((text, sub.consent, p in suppressed))
        assert not wrong, wrong
        queued = {c.phone for c in store.conversations("acme", status="needs_reply", limit=100)}
        assert not queued & {p for p, t in zip(phones, texts, strict=True) if t in OPT_OUTS}  # never an answer
        await client.aclose()
        store.close()


#: (keyword, confirmation) as people type them: full-width, spaced, with emoji and punctuation.
SIGNUPS = [("JOIN", "Y"), ("ＪＯＩＮ", "Ｙ"), ("Join 😀", "YES 👍"), ("j o i n!", "yes."), ("join", "Da"), ("JOIN", "是")]


async def test_keyword_opt_in_spellings_reach_a_confirmed_consent(tmp_path: Path) -> None:
    phones = [f"+4479112{i:05d}" for i in range(len(SIGNUPS))]
    async with simulator("--dlr-delay", "0.01") as sim, gateway(gateway_config(tmp_path, sim.port), env=ENV) as gw:
        settings = loads(CAMPAIGNS.replace("[campaigns.tenants.signup]", '[campaigns.tenants.signup]\nsender = "12345"'))
        assert settings is not None
        store = open_store(f"sqlite:///{tmp_path / 'campaigns.db'}")
        client = GatewayClient(gw.url, KEY)
        link = GatewayLink(Audience(store, settings, time.time), {"acme": client})
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as g:
            for step in (0, 1):
                for p, texts in zip(phones, SIGNUPS, strict=True):
                    await mo(g, p, texts[step])
                await poll(lambda: g.get("/v1/inbound", params={"limit": 100}),
                           lambda r, n=(step + 1) * len(SIGNUPS): len(r.json()["inbound"]) == n)  # fmt: skip
                assert await link.pull("acme") == len(SIGNUPS)
                states = [getattr(store.subscriber_by_phone("acme", p), "consent", None) for p in phones]
                assert states == ["pending" if step == 0 else "confirmed"] * len(SIGNUPS), list(zip(SIGNUPS, states))
        await client.aclose()
        store.close()
