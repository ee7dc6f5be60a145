"""kill -9 of ``sluice serve`` between two deliveries of the same MO, and between a clarifying
question and its answer (issue 14 §4: inbound de-duplication state and pending opt-in questions
survive a restart). Through the HTTP carrier's inbound callback seam; the child is observed over
its API with bounded polls."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest

from carriers.http.profiles import generic
from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import shop_config

pytestmark = pytest.mark.anyio

KEY = "crash-inbound-key-0123456789"
CB_SECRET = "carrier-callback-secret"
ENV = {"SLUICE_KEY": KEY, "BETA_CB": CB_SECRET}


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def config(tmp_path, sim_port: int) -> str:
    return shop_config(tmp_path, sim_port, sender="12345", rps=1000.0, http_carrier=True,
                       beta_extra='default_region = "GB"\n',
                       tenant_extra='[api.tenants.keywords]\nopt_out_uncertain = "ask"\n')  # fmt: skip


async def post(c: httpx.AsyncClient, **item) -> None:
    body = json.dumps({"inbound": [{"to": "12345", **item}]}).encode()
    r = await c.post("/v1/carriers/beta/inbound", content=body, headers=generic.sign("", body, CB_SECRET, time.time()))
    assert r.status_code == 204, r.text  # answered once the record is written


async def listed(c: httpx.AsyncClient) -> list[tuple[str, str, str]]:
    return [(m["from"], m["text"], m["kind"]) for m in (await c.get("/v1/inbound")).json()["inbound"]]


async def test_dedupe_and_questions_survive_kill_9(tmp_path) -> None:
    async with simulator("--dlr-delay", "0.01") as sim:
        cfg = config(tmp_path, sim.port)
        async with gateway(cfg, env=ENV) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as c:
                await post(c, **{"from": "07911 123456", "text": "STOP", "id": "mo-1"})  # national (GB)
                await post(c, **{"from": "+447911123457", "text": "leave me alone"})  # no id: a digest key
                await post(c, **{"from": "+447911123458", "text": "not interested", "id": "mo-3"})  # asks
                before = await listed(c)
                assert [k for _, _, k in before] == ["opt_out", "opt_out", "opt_out"]
                assert len((await c.get("/v1/suppressions")).json()) == 3
            await gw.kill()  # SIGKILL: no shutdown, no flush
        async with gateway(cfg, env=ENV) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as c:
                # The carrier posts again what it may not have seen answered: stored once.
                await post(c, **{"from": "07911 123456", "text": "STOP", "id": "mo-1"})
                await post(c, **{"from": "+447911123457", "text": "leave me alone"})
                assert await listed(c) == before
                # The question asked before the kill still takes its YES; a YES without one does not.
                await post(c, **{"from": "+447911123458", "text": "Yes", "id": "mo-4"})
                await post(c, **{"from": "+447911123456", "text": "YES", "id": "mo-5"})
                after = await listed(c)
                assert after[3:] == [("+447911123458", "Yes", "opt_in"), ("+447911123456", "YES", "message")]
                numbers = sorted(s["number"] for s in (await c.get("/v1/suppressions")).json())
                assert numbers == ["+447911123456", "+447911123457"]
