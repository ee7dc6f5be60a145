"""Scheduled sends, validity and durable state through the service: ``sluice serve`` as a child
process, HTTP in, a carrier simulator out, restarts graceful (SIGTERM) and kill -9.

Time is short and real: ``send_at`` a few seconds ahead. Nothing sleeps to synchronise: a
test waits (bounded) for a state it can see over HTTP, e.g. an immediate "canary" message
delivered, which proves the dispatcher has run over the queue since the scheduled ones were
admitted. Whether a message went early is read from its own history (the ``submitted`` time
the gateway wrote) and from the simulator's counters, not from when the test looked.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time

import anyio
import httpx
import pytest

from gateway.testing.processes import gateway, http_simulator, simulator
from gateway.testing.serving import ENV, FINAL, KEYS, client, job_counts, wait_final, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    """Child processes observed over HTTP: one backend is enough here."""
    return ("asyncio", {"use_uvloop": True})


def midday_zone() -> str:
    """A fixed-offset zone where it is about noon now: marketing's quiet hours are open there."""
    off = 12 - dt.datetime.now(dt.UTC).hour
    off = off - 24 if off > 14 else off + 24 if off < -12 else off
    return "Etc/GMT" if off == 0 else f"Etc/GMT{-off:+d}"


async def until(get, ok, timeout: float = 30.0):
    """Poll ``get()`` (bounded) until ``ok(value)``; returns the value."""
    with anyio.fail_after(timeout):
        while not ok(value := await get()):
            await anyio.sleep(0.05)
    return value


async def message_ids(c: httpx.AsyncClient, job_id: str) -> list[str]:
    page = (await c.get(f"/v1/jobs/{job_id}/messages", params={"limit": 1000})).json()
    return [m["id"] for m in page["messages"]]


async def first_submit(c: httpx.AsyncClient, message_id: str) -> float | None:
    history = (await c.get(f"/v1/messages/{message_id}")).json()["history"]
    return min((h["at"] for h in history if h["state"] == "submitted"), default=None)


async def canary(c: httpx.AsyncClient) -> None:
    """An immediate message, delivered: the dispatcher has been over the queue since."""
    r = await c.post("/v1/messages", json={"to": "+447911000999", "body": "canary", "from": "Shop"})
    assert r.status_code == 202, r.text
    msg_id = r.json()["id"]
    await until(lambda: c.get(f"/v1/messages/{msg_id}"), lambda r: r.json()["state"] == "delivered")


def job_body(send_at: float | None, n: int, *, prefix: str, validity: int | None = None, **extra) -> dict:
    body = {"from": "Shop", "category": "transactional", "template": "Your order {n}",
            "recipients": [{"to": f"+4479111{prefix}{i:03d}", "vars": {"n": str(i)}} for i in range(n)], **extra}
    if send_at is not None:
        body["send_at"] = send_at
    if validity is not None:
        body["validity"] = validity
    return body


async def post_job(c: httpx.AsyncClient, body: dict) -> str:
    r = await c.post("/v1/jobs", json=body)
    assert r.status_code == 202 and r.json()["accepted"] == len(body["recipients"]), r.text
    return r.json()["id"]


async def post_ndjson(c: httpx.AsyncClient, body: dict) -> str:
    head = {k: v for k, v in body.items() if k != "recipients"}
    lines = [json.dumps(head)] + [json.dumps(r) for r in body["recipients"]]
    r = await c.post("/v1/jobs", content="\n".join(lines), headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["accepted"] == len(body["recipients"]), r.text
    return r.json()["id"]


async def control(c: httpx.AsyncClient, job_id: str, action: str) -> None:
    r = await c.post(f"/v1/jobs/{job_id}/{action}")
    assert r.status_code == 200, r.text


async def assert_not_before(c: httpx.AsyncClient, job_id: str, due: float, n: int) -> None:
    counts = await wait_final(c, job_id, n, timeout=60.0)
    assert counts == {"delivered": n}, counts
    for mid in await message_ids(c, job_id):
        sent = await first_submit(c, mid)
        assert sent is not None and sent >= due, (mid, sent, due)


async def test_send_at_holds_for_single_messages_json_and_ndjson_jobs_and_pause_resume(tmp_path) -> None:
    async with simulator("--dlr-delay", "0.05") as sim:
        async with gateway(write_config(tmp_path, sim.port), env=ENV) as gw, client(gw.url) as c:
            due = time.time() + 4.0
            r = await c.post("/v1/messages", json={"to": "+447911100000", "body": "Hi", "from": "Shop", "send_at": due})
            assert r.status_code == 202 and r.json()["status"] == "queued", r.text
            single = r.json()["id"]
            as_json = await post_job(c, job_body(due, 3, prefix="11"))
            as_ndjson = await post_ndjson(c, job_body(due, 3, prefix="12"))
            paused = await post_job(c, job_body(due, 2, prefix="13"))
            await control(c, paused, "pause")
            await control(c, paused, "resume")  # before its send_at
            # Paused (before its send_at) past its validity: it ends expired on time, unsent, unresumed.
            lapsed = await post_job(c, job_body(time.time() + 2.0, 2, prefix="14", validity=1))
            await control(c, lapsed, "pause")
            await canary(c)
            if time.time() < due:  # (on a machine this slow the histories below still decide)
                assert (await sim.counters())["accepted"] == 1, "a scheduled message went before its send_at"
            counts = await wait_final(c, lapsed, 2, timeout=30.0)
            assert counts == {"expired": 2}, counts
            await until(lambda: c.get(f"/v1/messages/{single}"), lambda r: r.json()["state"] == "delivered")
            assert await first_submit(c, single) >= due
            for job_id, n in ((as_json, 3), (as_ndjson, 3), (paused, 2)):
                await assert_not_before(c, job_id, due, n)
        assert (await sim.counters())["accepted"] == 1 + 1 + 3 + 3 + 2


async def test_schedules_and_validity_survive_graceful_and_kill_9_restarts(tmp_path) -> None:
    """send_at two days ahead is still held after a SIGTERM restart and a kill -9 restart; one a
    few seconds ahead goes out after its time, not before; a paused one ends ``expired`` when
    its validity ends (in whichever process is up then, or at recovery), never sent."""
    async with simulator("--dlr-delay", "0.05") as sim:
        cfg = write_config(tmp_path, sim.port)
        async with gateway(cfg, env=ENV) as gw, client(gw.url) as c:
            t0 = time.time()
            far = await post_job(c, job_body(t0 + 2 * 86400, 2, prefix="21"))
            near = await post_job(c, job_body(t0 + 8.0, 2, prefix="22"))
            lapse = await post_job(c, job_body(t0 + 1.0, 2, prefix="23", validity=1))
            await control(c, lapse, "pause")  # never sent: it lapses
            await gw.stop()  # graceful
        async with gateway(cfg, env=ENV) as gw, client(gw.url) as c:
            await canary(c)
            await gw.kill()  # kill -9
        async with gateway(cfg, env=ENV) as gw, client(gw.url) as c:
            await canary(c)
            assert await wait_final(c, lapse, 2, timeout=30.0) == {"expired": 2}
            await assert_not_before(c, near, t0 + 8.0, 2)
            assert await job_counts(c, far) == {"queued": 2}  # held, not sent, not lost
            for mid in await message_ids(c, far):
                assert await first_submit(c, mid) is None
        assert (await sim.counters())["accepted"] == 2 + 2  # two canaries and `near`


async def test_weekly_cap_survives_kill_9(tmp_path) -> None:
    """3 marketing messages delivered to a number, kill -9, restart: the 4th and 5th are capped."""
    zone = midday_zone()

    def marketing(n: int) -> dict:
        return {"from": "Shop", "category": "marketing", "template": "Sale {n}",
                "recipients": [{"to": "+447911199999", "tz": zone, "vars": {"n": str(i)}} for i in range(n)]}

    async with simulator("--dlr-delay", "0.05") as sim:
        cfg = write_config(tmp_path, sim.port)
        async with gateway(cfg, env=ENV) as gw, client(gw.url) as c:
            first = await post_job(c, marketing(3))
            assert await wait_final(c, first, 3) == {"delivered": 3}
            await gw.kill()
        async with gateway(cfg, env=ENV) as gw, client(gw.url) as c:
            second = await post_job(c, marketing(2))
            assert await wait_final(c, second, 2) == {"capped": 2}
        assert (await sim.counters())["accepted"] == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_carrier_config(tmp_path, sim_port: int, horizon: float) -> str:
    path = tmp_path / "sluice.toml"
    tenants = "".join(f'\n[[api.tenants]]\nname = "{name}"\nkey_env = "SLUICE_KEY_{name.upper()}"\n' for name in KEYS)
    path.write_text(f"""
[api]
host = "127.0.0.1"
{tenants}
[store]
url = "sqlite:///{tmp_path / 'sluice.db'}"
synchronous = "NORMAL"
[[core.carriers]]
name = "web"
[[core.routes]]
prefix = ""
carriers = ["web"]
[[carriers.http]]
name = "web"
url = "http://127.0.0.1:{sim_port}/messages"
callback_secret_env = "WEB_CB"
receipt_horizon_s = {horizon}
""")
    return str(path)


@pytest.mark.parametrize("receipts", [True, False], ids=["receipts-after-restart", "no-receipt-horizon"])
async def test_http_carrier_messages_wait_for_receipts_after_kill_9(tmp_path, receipts: bool) -> None:
    """Messages an HTTP carrier accepted, kill -9 before their receipts: after the restart they
    are not sent again; they end by their receipts (posted to the new process) or, when none
    comes, ``unknown`` at the receipt horizon."""
    n, secret, port = 20, "web-callback-secret", free_port()
    env = {**ENV, "WEB_CB": secret}
    hooks = ["--receipt-url", f"http://127.0.0.1:{port}/v1/carriers/web/receipts", "--receipt-secret", secret,
             "--receipt-delay", "4"] if receipts else []  # fmt: skip
    async with http_simulator(*hooks) as sim:
        cfg = http_carrier_config(tmp_path, sim.port, horizon=60.0 if receipts else 2.0)
        async with gateway(cfg, env=env, port=port) as gw, client(gw.url) as c:
            job_id = await post_job(c, job_body(None, n, prefix="31"))
            await until(lambda: job_counts(c, job_id), lambda k: k.get("submitted", 0) == n)
            await gw.kill()
        async with gateway(cfg, env=env, port=port) as gw, client(gw.url) as c:
            counts = await wait_final(c, job_id, n, timeout=30.0)
            assert counts == ({"delivered": n} if receipts else {"unknown": n}), counts
        counters = await sim.counters()
    assert counters["accepted"] == n, counters  # none sent again
    assert set(counts) <= FINAL
