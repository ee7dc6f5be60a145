"""`sluice serve` as a child process: HTTP carrier callbacks (signed, forged), the inbound
pipeline behind them, and failover when an SMSC simulator child is killed mid-job. The child is
observed through its API with bounded polls; nothing in-process is slept on."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest

from carriers.http.profiles import generic
from gateway.testing.processes import gateway, http_simulator, simulator
from gateway.testing.serving import BETA_CALLBACKS, FINAL, config_file, operator, tenant, wait_final

pytestmark = pytest.mark.anyio

KEY = "inbound-serve-key-0123456789"
CB_SECRET = "carrier-callback-secret"
ENV = {"SLUICE_KEY": KEY, "BETA_CB": CB_SECRET}
STOPPER = "+447911123456"


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def write(tmp_path, body: str) -> str:
    return config_file(tmp_path, api=tenant("acme", "SLUICE_KEY", senders=("12345",), rps=1000.0)
                       + operator("ops", "SLUICE_KEY"), body=body)  # fmt: skip


def callbacks_config(tmp_path, sim_port: int) -> str:
    return write(tmp_path, f"""
[[core.carriers]]
name = "alpha"
[[core.carriers]]
name = "beta"
[[core.routes]]
prefix = ""
carriers = ["alpha"]
[[carriers.smpp]]
name = "alpha"
port = {sim_port}
{BETA_CALLBACKS}""")


async def poll(get, until, timeout: float = 20.0):
    with anyio.fail_after(timeout):
        while not until(got := await get()):
            await anyio.sleep(0.05)
    return got


async def test_http_callbacks_signed_forged_and_unknown(tmp_path) -> None:
    async with simulator("--dlr-delay", "0.01") as sim, gateway(callbacks_config(tmp_path, sim.port), env=ENV) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as c:
            stop = json.dumps({"inbound": [{"from": STOPPER, "to": "12345", "text": "Stop."}]}).encode()
            receipt = json.dumps({"receipts": [{"id": "no-such-id", "status": "delivered"}]}).encode()
            forged = generic.sign("", stop, "not-the-secret", time.time())
            for path, body in (("inbound", stop), ("receipts", receipt)):
                r = await c.post(f"/v1/carriers/beta/{path}", content=body, headers=forged)
                assert r.status_code == 401, r.text
                r = await c.post(f"/v1/carriers/beta/{path}", content=body)  # no signature at all
                assert r.status_code == 401
            assert (await c.post("/v1/carriers/nope/receipts", content=receipt)).status_code == 404
            assert (await c.get("/v1/carriers/beta/receipts")).status_code == 405
            # Nothing changed: no opt-out, no inbound message, no receipt seen by the connector.
            assert (await c.get("/v1/suppressions")).json() == []
            assert (await c.get("/v1/inbound")).json()["inbound"] == []
            beta = (await c.get("/v1/carriers")).json()["beta"]["link"]
            assert (beta["inbound"], beta["receipts_unmatched"], beta["receipts_pending"]) == (0, 0, 0)

            signed = generic.sign("", stop, CB_SECRET, time.time())
            r = await c.post("/v1/carriers/beta/inbound", content=stop, headers=signed)
            assert r.status_code == 204
            supp = await poll(lambda: c.get("/v1/suppressions"), lambda r: r.json() != [])
            [entry] = supp.json()
            assert (entry["number"], entry["source"]) == (STOPPER, "keyword:STOP")
            [mo] = (await c.get("/v1/inbound", params={"kind": "opt_out"})).json()["inbound"]
            assert (mo["from"], mo["to"], mo["text"], mo["carrier"], mo["keyword"]) == (STOPPER, "12345", "Stop.",
                                                                                          "beta", "STOP")  # fmt: skip
            r = await c.post("/v1/carriers/beta/receipts", content=receipt,
                             headers=generic.sign("", receipt, CB_SECRET, time.time()))  # fmt: skip
            assert r.status_code == 204  # an unknown id is held (hold_unmatched_s), then counted
            beta = (await c.get("/v1/carriers")).json()["beta"]
            assert beta["health"] == "up" and beta["link"]["inbound"] == 1
            # The confirmation went out through alpha (the route), from the short code.
            await poll(sim.counters, lambda counters: counters["accepted"] >= 1)


def failover_config(tmp_path, port_a: int, port_b: int) -> str:
    links = "".join(f"""
[[carriers.smpp]]
name = "{name}"
port = {port}
window = 20
binds = 2
carrier_down_after = 1.0
reconnect_max = 1.0
receipt_horizon_s = 5.0
""" for name, port in (("alpha", port_a), ("beta", port_b)))
    return write(tmp_path, f"""
[[core.carriers]]
name = "alpha"
rate = 300.0
burst = 50
down_after = 0.5
[[core.carriers]]
name = "beta"
rate = 2000.0
burst = 200
[[core.routes]]
prefix = ""
carriers = ["alpha", "beta"]
{links}""")


async def test_failover_when_a_carrier_is_killed_mid_job(tmp_path) -> None:
    total = 1500
    async with simulator("--dlr-delay", "0.01") as sim_a, simulator("--dlr-delay", "0.01") as sim_b:
        async with gateway(failover_config(tmp_path, sim_a.port, sim_b.port), env=ENV) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"},
                                         timeout=30.0) as c:  # fmt: skip
                job = {"from": "Shop", "category": "transactional", "template": "Order {n} shipped",
                       "recipients": [{"to": "+4479111%05d" % i, "vars": {"n": str(i)}} for i in range(total)]}
                r = await c.post("/v1/jobs", json=job)
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                await poll(lambda: c.get("/v1/carriers"), lambda r: r.json()["alpha"]["link"]["submitted"] >= 200)
                await sim_a.kill()  # mid-job: alpha has ~5 s of work left at 300/s
                health = await poll(lambda: c.get("/v1/carriers"), lambda r: r.json()["alpha"]["health"] == "down")
                assert health.json()["beta"]["health"] == "up"
                counts = await wait_final(c, job_id, total, timeout=60.0)
                carriers = (await c.get("/v1/carriers")).json()
    assert sum(counts.values()) == total and set(counts) <= FINAL, counts
    # Taken by alpha and its receipt lost with it: `unknown` at the receipt horizon, never sent
    # twice; everything else delivered, most of it through beta.
    assert set(counts) <= {"delivered", "unknown"}, counts
    assert counts.get("unknown", 0) <= 2 * 20 + 50, counts  # at most alpha's windows and a burst
    assert carriers["beta"]["link"]["submitted"] >= total - carriers["alpha"]["link"]["submitted"]
    assert carriers["alpha"]["link"]["submitted"] + carriers["beta"]["link"]["submitted"] >= total


def http_failover_config(tmp_path, http_port: int, smpp_port: int) -> str:
    return write(tmp_path, f"""
[[core.carriers]]
name = "web"
down_after = 1.0
[[core.carriers]]
name = "smsc"
[[core.routes]]
prefix = ""
carriers = ["web", "smsc"]
[[carriers.http]]
name = "web"
url = "http://127.0.0.1:{http_port}/messages"
max_attempts = 2
retry_backoff = 0.05
probe_after = 2.0
[[carriers.smpp]]
name = "smsc"
port = {smpp_port}
""")


async def test_a_failing_http_carrier_fails_over_and_is_probed_again(tmp_path) -> None:
    """An HTTP carrier answering 503 to everything: after down_after its traffic goes to the
    SMPP carrier of the same route; after probe_after it is tried again (half-open), fails,
    and is down again. Every message ends delivered, none through the failing carrier."""
    total = 400
    async with http_simulator("--error-rate", "1", "--error-when", "before") as web, \
            simulator("--dlr-delay", "0.01") as smsc:  # fmt: skip
        async with gateway(http_failover_config(tmp_path, web.port, smsc.port), env=ENV) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"},
                                         timeout=30.0) as c:  # fmt: skip
                job = {"from": "Shop", "category": "transactional", "template": "Order {n} shipped",
                       "recipients": [{"to": "+4479111%05d" % i, "vars": {"n": str(i)}} for i in range(total)]}
                r = await c.post("/v1/jobs", json=job)
                assert r.status_code == 202, r.text
                await poll(lambda: c.get("/v1/carriers"), lambda r: r.json()["web"]["health"] == "down")
                counts = await wait_final(c, r.json()["id"], total, timeout=60.0)
                assert counts == {"delivered": total}
                # half-open: up again after probe_after, then down again when the probe fails
                await poll(lambda: c.get("/v1/carriers"), lambda r: r.json()["web"]["health"] == "up")
                await c.post("/v1/messages", json={"to": "+447911100001", "body": "probe", "from": "Shop",
                                                   "category": "transactional"})  # sent now, at any hour
                await poll(lambda: c.get("/v1/carriers"), lambda r: r.json()["web"]["health"] == "down")
                carriers = (await c.get("/v1/carriers")).json()
    assert carriers["web"]["link"]["submitted"] == 0
    assert carriers["smsc"]["link"]["submitted"] >= total


@pytest.mark.parametrize("text", ["STOP", "退订"])
async def test_stop_by_smpp_mo_suppresses_and_confirms(tmp_path, text) -> None:
    """An MO over SMPP (deliver_sm from the SMSC simulator, UCS-2 for 退订) goes through the same
    pipeline: the number is on the tenant's list with the keyword, and one confirmation is sent."""
    config = write(tmp_path, """
[[core.carriers]]
name = "alpha"
[[core.routes]]
prefix = ""
carriers = ["alpha"]
[[carriers.smpp]]
name = "alpha"
port = PORT
""")
    async with simulator("--dlr-delay", "0.01", "--mo-rate", "20", "--mo-limit", "3", "--mo-text", text,
                         "--mo-to", "12345") as sim:  # fmt: skip
        path = tmp_path / "sluice.toml"
        path.write_text(path.read_text().replace("PORT", str(sim.port)))
        async with gateway(config, env=ENV) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as c:
                supp = await poll(lambda: c.get("/v1/suppressions"), lambda r: len(r.json()) == 3)
                assert {s["source"] for s in supp.json()} == {f"keyword:{text}"}
                optouts = (await c.get("/v1/inbound", params={"kind": "opt_out"})).json()["inbound"]
                assert len(optouts) == 3 and {m["text"] for m in optouts} == {text}
                assert {m["carrier"] for m in optouts} == {"alpha"}
                counters = await poll(sim.counters, lambda k: k["accepted"] >= 3)  # the confirmations
                assert counters["mos_acked"] == 3


def _rows(db: str, sql: str, *args) -> list[tuple]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


async def test_smpp_mo_national_sender_redelivered_is_one_opt_out(tmp_path) -> None:
    """Issue 14 §2/§3 through the SMPP seam: the SMSC simulator sends "Please stop texting me" from
    a national number (source_addr_ton 2) twice per MO. The carrier's default_region reads it as
    +12125550191; it is stored once, suppressed, and confirmed once; every deliver_sm answered."""
    config = write(tmp_path, """
[[core.carriers]]
name = "alpha"
default_region = "US"
[[core.routes]]
prefix = ""
carriers = ["alpha"]
[[carriers.smpp]]
name = "alpha"
port = PORT
""")
    async with simulator("--dlr-delay", "0.01", "--mo-rate", "20", "--mo-limit", "1", "--mo-text",
                         "Please stop texting me", "--mo-to", "12345", "--mo-from", "2125550191", "--mo-ton", "2",
                         "--mo-twice") as sim:  # fmt: skip
        path = tmp_path / "sluice.toml"
        path.write_text(path.read_text().replace("PORT", str(sim.port)))
        async with gateway(config, env=ENV) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as c:
                supp = await poll(lambda: c.get("/v1/suppressions"), lambda r: len(r.json()) == 1)
                assert supp.json()[0]["number"] == "+12125550191"
                await poll(sim.counters, lambda k: k["mos_acked"] >= 2 and k["accepted"] >= 1)
                [mo] = (await c.get("/v1/inbound")).json()["inbound"]
                assert (mo["from"], mo["kind"], mo["sender_canonical"]) == ("+12125550191", "opt_out", True)
    db = str(tmp_path / "sluice.db")
    assert _rows(db, "SELECT count(*) FROM inbound") == [(1,)]
    assert _rows(db, "SELECT count(*) FROM messages WHERE recipient ->> '$.to' = ?", "+12125550191") == [(1,)]


async def test_http_inbound_callback_national_duplicate_and_yes(tmp_path) -> None:
    """The HTTP carrier's callback seam: a national sender read with the carrier's default_region,
    the same callback posted twice (same carrier id) stored once, YES with no question pending
    a message (still opted out), an alphanumeric STOP kept and flagged."""
    async with simulator("--dlr-delay", "0.01") as sim:
        callbacks_config(tmp_path, sim.port)
        path = tmp_path / "sluice.toml"
        path.write_text(path.read_text().replace('name = "beta"\n[[core.routes]]',
                                                 'name = "beta"\ndefault_region = "US"\n[[core.routes]]'))
        async with gateway(str(path), env=ENV) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"}) as c:
                async def post(*items) -> None:
                    body = json.dumps({"inbound": list(items)}).encode()
                    r = await c.post("/v1/carriers/beta/inbound", content=body,
                                     headers=generic.sign("", body, CB_SECRET, time.time()))  # fmt: skip
                    assert r.status_code == 204, r.text

                stop = {"from": "(212) 555-0194", "to": "12345", "text": "stop please", "id": "mo-1"}
                await post(stop)
                await post(stop)  # the carrier did not see our 204 and posts it again
                await post({"from": "2125550194", "to": "12345", "text": "YES", "id": "mo-2"})
                await post({"from": "ACMEINFO", "to": "12345", "text": "STOP", "id": "mo-3"})
                listed = await poll(lambda: c.get("/v1/inbound"), lambda r: len(r.json()["inbound"]) >= 3)
                got = [(m["from"], m["kind"], m["sender_canonical"]) for m in listed.json()["inbound"]]
                assert got == [("+12125550194", "opt_out", True), ("+12125550194", "message", True),
                               ("ACMEINFO", "opt_out", False)]  # fmt: skip
                assert [s["number"] for s in (await c.get("/v1/suppressions")).json()] == ["+12125550194"]
