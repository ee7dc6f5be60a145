"""The API over real HTTP on loopback, against ``sluice serve`` as a child process: what the
in-process tests (tests/api, over ASGITransport) cannot see — uvicorn's framing, real headers,
bodies cut off at the limit, one process serving two tenants — and the server still up after."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.testing.serving import KEYS, client, job_counts, open_served, wait_final


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    """Child processes observed over HTTP: asyncio+uvloop is enough here."""
    return ("asyncio", {"use_uvloop": True})

pytestmark = pytest.mark.anyio

MSG = {"to": "+447911123456", "body": "Your code is 1234", "from": "Shop", "category": "otp"}
JOB = {"from": "Shop", "category": "transactional", "template": "Hi {n}",
       "recipients": [{"to": "+4479111%05d" % i, "vars": {"n": str(i)}} for i in range(20)]}  # fmt: skip


async def still_serving(gw, c: httpx.AsyncClient) -> None:
    """The child is alive and still does real work: a message goes through to delivered."""
    assert gw.proc.returncode is None
    assert (await c.get("/healthz")).status_code == 200
    r = await c.post("/v1/jobs", json={**JOB, "recipients": JOB["recipients"][:3]})
    assert r.status_code == 202, r.text
    assert await wait_final(c, r.json()["id"], 3, timeout=20.0) == {"delivered": 3}


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


async def test_auth_and_tenant_isolation(tmp_path) -> None:
    async with open_served(tmp_path, "--dlr-delay", "0.01") as (_, gw), client(gw.url) as acme, \
            client(gw.url, "beta") as beta, httpx.AsyncClient(base_url=gw.url) as anon:  # fmt: skip
        error_of(await anon.post("/v1/messages", json=MSG), 401)
        error_of(await anon.get("/v1/suppressions"), 401)
        wrong = await anon.post("/v1/messages", json=MSG, headers={"authorization": "Bearer not-a-key"})
        assert "not-a-key" not in error_of(wrong, 401)["error"]
        error_of(await anon.get("/v1/jobs/x", headers={"authorization": KEYS["acme"]}), 401)  # no "Bearer"
        error_of(await anon.get("/v1/carriers"), 401)  # every /v1 path, the operational one too
        assert (await beta.get("/v1/carriers")).status_code == 200

        mid = (await acme.post("/v1/messages", json=MSG)).json()["id"]
        jid = (await acme.post("/v1/jobs", json=JOB)).json()["id"]
        await wait_final(acme, jid, 20)
        assert (await acme.get(f"/v1/messages/{mid}")).status_code == 200
        for path in (f"/v1/messages/{mid}", f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/messages"):
            error_of(await beta.get(path), 404)
        for action in ("cancel", "pause", "resume"):
            error_of(await beta.post(f"/v1/jobs/{jid}/{action}"), 404)
        assert (await acme.post("/v1/suppressions", json={"number": "+447911123457"})).status_code == 201
        assert (await beta.get("/v1/suppressions")).json() == []
        error_of(await beta.delete("/v1/suppressions/+447911123457"), 404)
        assert len((await acme.get("/v1/suppressions")).json()) == 1
        # Suppression lists are per tenant both ways: beta's list does not touch acme's, and acme's
        # suppression of a number does not stop beta's marketing message to it.
        assert (await beta.post("/v1/suppressions", json={"number": "+447911123458"})).status_code == 201
        assert [s["number"] for s in (await acme.get("/v1/suppressions")).json()] == ["+447911123457"]
        promo = {"from": "Shop", "category": "marketing", "template": "Sale",
                 "recipients": [{"to": "+447911123457"}]}  # fmt: skip
        r = await acme.post("/v1/jobs", json=promo)
        assert await wait_final(acme, r.json()["id"], 1) == {"suppressed": 1}  # decided at admission
        r = await beta.post("/v1/jobs", json=promo)
        assert r.status_code == 202, r.text
        assert "suppressed" not in await job_counts(beta, r.json()["id"])  # queued, or deferred by quiet hours
        await still_serving(gw, acme)


async def test_idempotency_over_http(tmp_path) -> None:
    async with open_served(tmp_path, "--dlr-delay", "0.01") as (sim, gw), client(gw.url) as c, \
            client(gw.url, "beta") as beta:  # fmt: skip
        body = json.dumps(JOB).encode()
        headers = {"idempotency-key": "order-42", "content-type": "application/json"}
        first = await c.post("/v1/jobs", content=body, headers=headers)
        again = await c.post("/v1/jobs", content=body, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.content == again.content  # the same answer, byte for byte
        jid = first.json()["id"]
        assert (await c.get(f"/v1/jobs/{jid}")).json()["size"] == 20  # no second copy
        error_of(await c.post("/v1/jobs", json={**JOB, "template": "Other {n}"}, headers={"idempotency-key": "order-42"}), 409)
        # Keys are per tenant: beta's "order-42" is its own.
        other = await beta.post("/v1/jobs", content=body, headers=headers)
        assert other.status_code == 202 and other.json()["id"] != jid
        await wait_final(c, jid, 20)
        await wait_final(beta, other.json()["id"], 20)
        assert (await sim.counters())["accepted"] == 40  # each job sent once
        await still_serving(gw, c)


async def test_every_bad_input_class_is_a_4xx_json_error(tmp_path) -> None:
    async with open_served(tmp_path, "--dlr-delay", "0.01", max_body=64 * 1024) as (_, gw), client(gw.url) as c:
        big = {**JOB, "recipients": [{"to": "+447911100000", "vars": {"pad": "x" * 600}}] * 200}
        error_of(await c.post("/v1/jobs", json=big), 413)
        error_of(await c.post("/v1/jobs", content=b"x" * (1 << 20), headers={"content-type": "application/x-ndjson"}), 413)
        bad = error_of(await c.post("/v1/messages", content=b'{"to": "+44', headers={"content-type": "application/json"}), 400)
        assert "malformed JSON" in bad["error"]
        error_of(await c.post("/v1/messages", content=b""), 400)
        ndjson = json.dumps({"from": "Shop", "template": "Hi"}).encode() + b"\n{broken\n"
        bad = error_of(await c.post("/v1/jobs", content=ndjson, headers={"content-type": "application/x-ndjson"}), 400)
        assert bad["error"].startswith("line 2:")
        assert error_of(await c.post("/v1/messages", json={**MSG, "to": 4479}), 422)["field"] == "to"
        assert error_of(await c.post("/v1/messages", json={**MSG, "body": ""}), 422)["field"] == "body"
        assert error_of(await c.post("/v1/messages", json={**MSG, "category": "nope"}), 422)["field"] == "category"
        error_of(await c.post("/v1/messages", json=[MSG]), 422)
        error_of(await c.post("/v1/jobs", json={**JOB, "recipients": []}), 422)
        error_of(await c.get("/v1/jobs/job_nope/messages", params={"limit": "lots"}), 422)
        error_of(await c.get("/v1/messages/%00%ff"), 404)
        error_of(await c.get("/v1/nothing"), 404)
        error_of(await c.put("/v1/messages", json=MSG), 405)
        error_of(await c.post("/v1/messages", json=MSG, headers={"idempotency-key": "k" * 201}), 422)
        await still_serving(gw, c)


async def test_rate_limit_is_per_key(tmp_path) -> None:
    async with open_served(tmp_path, "--dlr-delay", "0.01", rps=0.05, burst=5) as (_, gw), client(gw.url) as c, \
            client(gw.url, "beta") as beta:  # fmt: skip
        codes = [(await c.get("/v1/suppressions")).status_code for _ in range(10)]
        assert codes[:5] == [200] * 5 and codes.count(429) >= 4, codes
        r = await c.get("/v1/suppressions")
        error_of(r, 429)
        assert int(r.headers["retry-after"]) >= 1
        assert (await beta.get("/v1/suppressions")).status_code == 200  # another tenant is unaffected
        assert (await c.get("/healthz")).status_code == 200  # health is not rate limited
        assert gw.proc.returncode is None



async def test_concurrent_posts_with_one_idempotency_key_over_http_get_one_answer(tmp_path) -> None:
    """uvicorn + SQLite: 30 connections at once with the same key and body; every one gets the
    stored answer (never 409 "UNIQUE constraint failed"), one job is stored; and the job that
    every recipient of is delivered says it is ``completed``."""
    import anyio

    async with open_served(tmp_path, "--dlr-delay", "0.01") as (_, gw):
        clients = [client(gw.url) for _ in range(30)]
        answers: list = [None] * len(clients)
        body = {**JOB, "reference": "crm-7", "recipients": JOB["recipients"][:5]}

        async def one(k: int) -> None:
            answers[k] = await clients[k].post("/v1/jobs", json=body, headers={"idempotency-key": "same-key"})

        async with anyio.create_task_group() as tg:
            for k in range(len(clients)):
                tg.start_soon(one, k)
        assert {a.status_code for a in answers} == {202}, {a.text for a in answers}
        assert len({a.content for a in answers}) == 1
        c = clients[0]
        listed = (await c.get("/v1/jobs")).json()["jobs"]
        assert [j["id"] for j in listed] == [answers[0].json()["id"]] and listed[0]["reference"] == "crm-7"
        assert await wait_final(c, listed[0]["id"], 5, timeout=20.0) == {"delivered": 5}
        assert (await c.get(f"/v1/jobs/{listed[0]['id']}")).json()["status"] == "completed"
        assert (await c.post(f"/v1/jobs/{listed[0]['id']}/pause")).json()["code"] == "job_finished"
        for x in clients:
            await x.aclose()
