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
import time

import anyio
import httpx
import pytest

from carriers.http.profiles import generic
from gateway.testing.processes import gateway, http_simulator, simulator
from gateway.testing.serving import ENV, KEYS, client, config_file, job_counts, tenant, wait_final, write_config

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
    r = await c.post("/v1/messages", json={"to": "+447911000999", "body": "canary", "from": "Shop",
                                               "category": "transactional"})  # any hour: no quiet hours
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
            r = await c.post("/v1/messages", json={"to": "+447911100000", "body": "Hi", "from": "Shop", "send_at": due,
                                                   "category": "transactional"})  # any hour of the day
            assert r.status_code == 202 and r.json()["status"] == "queued", r.text
            single = r.json()["id"]
            as_json = await post_job(c, job_body(due, 3, prefix="11"))
            as_ndjson = await post_ndjson(c, job_body(due, 3, prefix="12"))
            paused = await post_job(c, job_body(due, 2, prefix="13"))
            await control(c, paused, "pause")
            await control(c, paused, "resume")  # before its send_at
            # Paused (before its send_at) past its validity: it ends expired on time, unsent, unresumed.
            lapsed = await post_job(c, job_body(time.time() + 4.0, 2, prefix="14", validity=1))
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


def two_carrier_config(tmp_path, smpp_port: int, http_port: int, horizon: float) -> str:
    """SMPP carrier "alpha" for everything, but +447911131... go to HTTP carrier "web"."""
    tenants = "".join(tenant(name, f"SLUICE_KEY_{name.upper()}") for name in KEYS)
    return config_file(tmp_path, api=tenants, body=f"""
[[core.carriers]]
name = "alpha"
[[core.carriers]]
name = "web"
[[core.routes]]
prefix = ""
carriers = ["alpha"]
[[core.routes]]
prefix = "447911131"
carriers = ["web"]
[[carriers.smpp]]
name = "alpha"
port = {smpp_port}
[[carriers.http]]
name = "web"
url = "http://127.0.0.1:{http_port}/messages"
callback_secret_env = "WEB_CB"
receipt_horizon_s = {horizon}
""")


async def test_restart_promises_hold_across_sigterm_and_kill_9(tmp_path) -> None:
    """Three processes on one store: the first stopped by SIGTERM, the second by kill -9.

    - ``send_at`` two days ahead is still held after both restarts (not sent, not lost); one
      a few seconds ahead goes out after its time, not before;
    - a paused job whose validity ends meanwhile ends ``expired`` (in whichever process is up
      then, or at recovery), never sent;
    - weekly caps: 3 marketing messages delivered to a number, then after each restart one more
      to it is ``capped`` (the caps are rebuilt from the store);
    - an HTTP carrier's accepted messages are not sent again after either restart: each ends by
      its receipt (posted to the last process, signed as the carrier would; posted by the test
      so it never races a restart) or ``unknown`` at the receipt horizon.
    """
    n_web, secret, horizon = 10, "web-callback-secret", 8.0
    env = {**ENV, "WEB_CB": secret}
    zone = midday_zone()

    def marketing(n: int) -> dict:
        return {"from": "Shop", "category": "marketing", "template": "Sale {n}",
                "recipients": [{"to": "+447911199999", "tz": zone, "vars": {"n": str(i)}} for i in range(n)]}

    async with simulator("--dlr-delay", "0.05") as sim, http_simulator() as web:  # web posts no receipts
        cfg = two_carrier_config(tmp_path, sim.port, web.port, horizon)
        async with gateway(cfg, env=env) as gw, client(gw.url) as c:
            t0 = time.time()
            far = await post_job(c, job_body(t0 + 2 * 86400, 2, prefix="21"))
            near = await post_job(c, job_body(t0 + 8.0, 2, prefix="22"))
            lapse = await post_job(c, job_body(t0 + 3.0, 2, prefix="23", validity=1))
            await control(c, lapse, "pause")  # never sent: it lapses
            capped = await post_job(c, marketing(3))
            assert await wait_final(c, capped, 3) == {"delivered": 3}
            taken = await post_job(c, job_body(None, n_web, prefix="31"))  # routed to "web"
            await until(lambda: job_counts(c, taken), lambda k: k.get("submitted", 0) == n_web)
            await gw.stop()  # graceful
        async with gateway(cfg, env=env) as gw, client(gw.url) as c:
            assert await wait_final(c, await post_job(c, marketing(1)), 1) == {"capped": 1}
            await canary(c)
            await gw.kill()  # kill -9
        async with gateway(cfg, env=env) as gw, client(gw.url) as c:
            assert await wait_final(c, await post_job(c, marketing(1)), 1) == {"capped": 1}
            ids = await message_ids(c, taken)
            carrier_ids = [(await c.get(f"/v1/messages/{mid}")).json()["carrier_ids"] for mid in ids[: n_web // 2]]
            body = json.dumps({"receipts": [{"id": cid, "status": "delivered"} for cids in carrier_ids
                                            for cid in cids]}).encode()  # fmt: skip
            r = await c.post("/v1/carriers/web/receipts", content=body, headers=generic.sign("", body, secret, time.time()))
            assert r.status_code == 204, r.text
            await canary(c)
            assert await wait_final(c, lapse, 2, timeout=30.0) == {"expired": 2}
            await assert_not_before(c, near, t0 + 8.0, 2)
            assert await job_counts(c, far) == {"queued": 2}  # held, not sent, not lost
            for mid in await message_ids(c, far):
                assert await first_submit(c, mid) is None
            counts = await wait_final(c, taken, n_web, timeout=horizon + 30.0)
            assert counts == {"delivered": n_web // 2, "unknown": n_web - n_web // 2}, counts
        assert (await sim.counters())["accepted"] == 3 + 2 + 2  # marketing, two canaries, `near`
        assert (await web.counters())["accepted"] == n_web  # none sent again
