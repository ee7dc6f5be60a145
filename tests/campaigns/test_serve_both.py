"""`sluice serve` with a [campaigns] table hosts both layers in one process (the embedded default), and
the campaign layer still reaches the gateway only over HTTP: an opt-out recorded through the campaigns
API becomes a gateway suppression, a STOP the gateway hears becomes a ledger entry. A child process
observed through both APIs, with bounded polls."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from campaigns.cli import main
from carriers.http.profiles import generic
from gateway.testing.serving import shop_config
from gateway.testing.processes import simulator, start

pytestmark = pytest.mark.anyio

KEY, CKEY, CB = "serve-both-gw-key-0123456789", "serve-both-campaigns-key-0123", "cb-secret"
ENV = {"SLUICE_KEY": KEY, "CK": CKEY, "BETA_CB": CB}


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def config(tmp_path: Path, sim_port: int) -> str:
    return shop_config(tmp_path, sim_port, sender="12345", http_carrier=True, extra=f"""
[campaigns]
store_url = "sqlite:///{tmp_path / 'campaigns.db'}"
port = 0
sync_interval = 0.1
[[campaigns.tenants]]
name = "acme"
key_env = "CK"
gateway_key_env = "SLUICE_KEY"
""")


async def poll(get, until, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not until(got := await get()):
            await anyio.sleep(0.05)
    return got


@pytest.mark.slow  # ~15 s: two child processes; the link itself is tested against `sluice serve` in make test
async def test_serve_hosts_both(tmp_path: Path) -> None:
    async with simulator() as sim:
        cmd = [sys.executable, "-m", "campaigns.cli", "serve", "--config", config(tmp_path, sim.port), "--port", "0"]
        async with start(cmd, name="sluice", env=ENV) as gw:
            cport = (await gw.line())["campaigns"]
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as g, \
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}",
                                      headers={"authorization": f"Bearer {CKEY}"}) as c:  # fmt: skip
                r = await c.post("/v1/subscribers", json={"profile": {"phone": "+447911123401"},
                                                          "consent": {"action": "opt_in", "source": "in_store"}})  # fmt: skip
                assert r.status_code == 201, r.text
                sid = r.json()["subscriber"]["id"]
                r = await c.post(f"/v1/subscribers/{sid}/consent", json={"action": "opt_out", "source": "api"})
                assert r.status_code == 201, r.text
                await poll(lambda: g.get("/v1/suppressions"),
                           lambda r: "+447911123401" in {s["number"] for s in r.json()})  # fmt: skip
                body = json.dumps({"inbound": [{"from": "+447911123402", "to": "12345", "text": "STOP"}]}).encode()
                r = await g.post("/v1/carriers/beta/inbound", content=body, headers=generic.sign("", body, CB, time.time()))
                assert r.status_code == 204
                page = await poll(lambda: c.get("/v1/subscribers"),
                                  lambda r: any(s["phone"] == "+447911123402" and s["consent"] == "revoked"
                                                for s in r.json()["items"]))  # fmt: skip
                assert len(page.json()["items"]) == 2
                assert (await c.get("/schema/openapi.json")).status_code == 200


def test_campaigns_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\n')
    r = CliRunner().invoke(main, ["campaigns", "check-config", str(good)], env={"CK": ""})
    assert r.exit_code == 2 and "campaigns.tenants[0].key_env" in r.output and "'CK'" in r.output
    r = CliRunner().invoke(main, ["campaigns", "check-config", str(good)], env={"CK": "k"})
    assert r.exit_code == 0 and "1 tenants" in r.output
    r = CliRunner().invoke(main, ["campaigns", "check-config", "--skip-env", str(good)], env={"CK": ""})
    assert r.exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[campaigns]\nstore_url = "mysql://x"\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\nport = 1\n')
    r = CliRunner().invoke(main, ["campaigns", "check-config", str(bad)])
    assert r.exit_code == 2 and "campaigns.tenants[0]" in r.output


def test_campaigns_cli_import_events_count_proof(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[campaigns]\nstore_url = "sqlite:///{tmp_path / "c.db"}"\n'
                   '[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\ndefault_region = "FR"\n')
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("phone,first_name,consent,consent_at,disclosure_text\n0612345678,Ana,confirmed,1700000000,Join\n")
    run = CliRunner().invoke
    r = run(main, ["campaigns", "import", "--config", str(cfg), "--tenant", "acme", str(csv_path)])
    assert r.exit_code == 0 and json.loads(r.output)["consented"] == 1, r.output
    ev = tmp_path / "ev.ndjson"
    ev.write_text(json.dumps({"type": "order", "id": "e1", "at": 1.7e9, "order_id": "o1", "phone": "+33612345678",
                              "total": 12000, "currency": "EUR", "payment_status": "paid"}) + "\n")  # fmt: skip
    for _ in range(2):
        r = run(main, ["campaigns", "events", "--config", str(cfg), "--tenant", "acme", str(ev)])
    assert r.exit_code == 0 and json.loads(r.output) == {"applied": 0, "duplicate": 1, "stale": 0}, r.output
    r = run(main, ["campaigns", "count", "--config", str(cfg), "--tenant", "acme",
                   '{"all": [{"field": "total_spent", "op": "gt", "value": 10000}, {"field": "consent", "op": "eq", "value": "confirmed"}]}'])
    assert r.exit_code == 0 and json.loads(r.output) == {"count": 1}, r.output
    r = run(main, ["campaigns", "count", "--config", str(cfg), "--tenant", "acme", '{"field": "nope"}'])
    assert r.exit_code == 1 and "(field $." in r.output
    r = run(main, ["campaigns", "proof", "--config", str(cfg), "--tenant", "acme", "--phone", "06 12 34 56 78",
                   "--format", "csv"])  # fmt: skip
    assert r.exit_code == 0 and r.output.count("\n") == 3 and ",import," in r.output, r.output
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"type": "order", "id": "x"}\n')
    r = run(main, ["campaigns", "events", "--config", str(cfg), "--tenant", "acme", str(bad)])
    assert r.exit_code == 1 and "line 0" in r.output
