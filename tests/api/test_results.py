"""Issue 15, "API: results a client can use": results matched to recipients, jobs that say they
are done and can be listed, finished jobs that refuse to flip, jobs with nothing accepted, bad
ids, concurrent idempotent requests, error codes, and the HTTP details of authentication.
Through the ASGI app (the seam where each of these lived)."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api import openapi
from gateway.api.app import Api, hash_key
from gateway.config import Tenant, default_text, loads
from gateway.core.ids import format_id
from gateway.core.scheduler import Scheduler
from gateway.runtime.service import Gateway
from gateway.store.base import Change
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from gateway.testing.store_conformance import drain

KEYS = {"acme": "acme-secret-key-1", "beta": "beta-secret-key-2"}  # as tests/api/conftest.py

pytestmark = pytest.mark.anyio

NDJSON = {"content-type": "application/x-ndjson"}


def roomy_api(gateway: Gateway, clock) -> Api:
    """The API of conftest.py, with a request rate no test here reaches (they count answers)."""
    tenants = {hash_key(k): Tenant(name=n, key_sha256=hash_key(k), requests_per_second=1e6, burst=1_000_000)
               for n, k in KEYS.items()}  # fmt: skip
    return Api(gateway, tenants, clock=clock, max_body=1 << 20)


@pytest.fixture
def api(gateway, clock):
    return roomy_api(gateway, clock)


@pytest.fixture
def make_api(clock):
    return lambda gateway: roomy_api(gateway, clock)
GOOD = ["+14155550123", "+447911123456", "+33612345678", "+4915112345678", "+12125550100", "+61412345678"]
BAD = ["+1415555", "+999", "+12"]


def job_with(numbers: list[str], **extra) -> dict:
    return {"from": "ACME", "template": "Hi {name}", "category": "transactional", "reference": "batch-9",
            "recipients": [{"to": n, "vars": {"name": f"n{i}"}} for i, n in enumerate(numbers)], **extra}  # fmt: skip


def as_ndjson(job: dict) -> bytes:
    head = {k: v for k, v in job.items() if k != "recipients"}
    return ("\n".join([json.dumps(head), *(json.dumps(r) for r in job["recipients"])]) + "\n").encode()


async def all_messages(client, jid: str, limit: int = 2) -> list[dict]:
    out, after = [], None
    while True:
        params = {"limit": limit, **({"after": after} if after else {})}
        page = (await client.get(f"/v1/jobs/{jid}/messages", params=params)).json()
        out += page["messages"]
        if not (after := page["next"]):
            return out


# -- results matched to recipients -------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "ndjson"])
async def test_every_result_names_its_recipient_index_and_reference(client, gateway, form) -> None:
    numbers = [GOOD[0], BAD[0], GOOD[1], GOOD[2], BAD[1], GOOD[3], GOOD[4], GOOD[5]]
    job = job_with(numbers, callback_url="https://hooks.example.com/sluice")
    if form == "json":
        r = await client.post("/v1/jobs", json=job)
    else:
        r = await client.post("/v1/jobs", content=as_ndjson(job), headers=NDJSON)
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    assert [e["index"] for e in r.json()["rejected"]] == [1, 4]
    messages = await all_messages(client, jid)
    assert sorted(m["index"] for m in messages) == [0, 2, 3, 5, 6, 7]  # each accepted recipient once
    for m in messages:
        assert m["to"] == numbers[m["index"]] and m["reference"] == "batch-9"
        assert m["state"] == m["status"] == "queued"
        one = (await client.get(f"/v1/messages/{m['id']}")).json()
        assert (one["to"], one["index"], one["reference"]) == (m["to"], m["index"], "batch-9")
    # Webhooks say it too: cancel the job, every message's event names its recipient.
    await client.post(f"/v1/jobs/{jid}/cancel")
    items = drain(gateway.store)
    assert sorted(i.index for i in items) == [0, 2, 3, 5, 6, 7]
    assert all(i.to == numbers[i.index] and i.reference == "batch-9" for i in items)


async def test_a_single_message_is_index_0_with_its_reference(client) -> None:
    r = await client.post("/v1/messages", json={"to": GOOD[0], "body": "code 1", "from": "ACME", "category": "otp",
                                                "reference": "user-17"})  # fmt: skip
    assert r.status_code == 202 and r.json()["state"] == r.json()["status"] == "queued"
    m = (await client.get(f"/v1/messages/{r.json()['id']}")).json()
    assert (m["to"], m["index"], m["reference"]) == (GOOD[0], 0, "user-17")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.sampled_from(GOOD + BAD), min_size=1, max_size=30))
async def test_property_indexes_match_the_request(client, picks) -> None:
    r = await client.post("/v1/jobs", json=job_with(picks))
    if all(p in BAD for p in picks):
        assert r.status_code == 422 and r.json()["code"] == "all_recipients_rejected"
        return
    assert r.status_code == 202, r.text
    rejected = {e["index"] for e in r.json()["rejected"]}
    messages = await all_messages(client, r.json()["id"], limit=7)
    assert sorted(m["index"] for m in messages) == sorted(set(range(len(picks))) - rejected)
    assert all(m["to"] == picks[m["index"]] for m in messages)


# -- completed, listing, pause/resume on finished jobs -----------------------------------


async def deliver_all(gateway: Gateway, client, jid: str) -> None:
    ids = [m["id"] for m in await all_messages(client, jid, limit=100)]
    from gateway.core.ids import parse_id

    gateway.store.record([Change(message_id=parse_id(i), state="delivered", at=1.0, reason="DELIVRD") for i in ids])


async def test_a_job_whose_every_message_is_final_is_completed_and_cannot_flip(client, gateway) -> None:
    jid = (await client.post("/v1/jobs", json=job_with(GOOD[:3]))).json()["id"]
    assert (await client.get(f"/v1/jobs/{jid}")).json()["status"] == "active"
    await deliver_all(gateway, client, jid)
    status = (await client.get(f"/v1/jobs/{jid}")).json()
    assert status["status"] == "completed" and status["counts"] == {"delivered": 3}
    assert status["reference"] == "batch-9"
    for action in ("pause", "resume", "cancel"):
        r = await client.post(f"/v1/jobs/{jid}/{action}")
        assert r.status_code == 409 and r.json()["code"] == "job_finished", r.text
    assert (await client.get(f"/v1/jobs/{jid}")).json()["status"] == "completed"


async def test_pause_and_resume_of_a_canceled_job_are_refused_and_nothing_flips(client, gateway) -> None:
    jid = (await client.post("/v1/jobs", json=job_with(GOOD[:3]))).json()["id"]
    assert (await client.post(f"/v1/jobs/{jid}/cancel")).json()["status"] == "canceled"
    for action in ("pause", "resume", "pause", "resume"):
        r = await client.post(f"/v1/jobs/{jid}/{action}")
        assert r.status_code == 409 and r.json()["code"] == "job_finished", r.text
        assert (await client.get(f"/v1/jobs/{jid}")).json()["status"] == "canceled"
    assert (await client.post(f"/v1/jobs/{jid}/cancel")).status_code == 200  # cancel again: a no-op
    assert {m["state"] for m in await all_messages(client, jid)} == {"canceled"}


async def test_paused_jobs_pause_and_resume_as_before(client) -> None:
    jid = (await client.post("/v1/jobs", json=job_with(GOOD[:2]))).json()["id"]
    assert (await client.post(f"/v1/jobs/{jid}/pause")).json()["status"] == "paused"
    assert (await client.post(f"/v1/jobs/{jid}/pause")).json()["status"] == "paused"
    assert (await client.post(f"/v1/jobs/{jid}/resume")).json()["status"] == "active"


async def test_jobs_are_listed_per_tenant_paged_and_filtered(client, other, gateway) -> None:
    jids = [(await client.post("/v1/jobs", json=job_with(GOOD[:2]))).json()["id"] for _ in range(5)]
    await other.post("/v1/jobs", json=job_with(GOOD[:1]))
    await client.post(f"/v1/jobs/{jids[1]}/cancel")
    await deliver_all(gateway, client, jids[3])
    await client.post(f"/v1/jobs/{jids[4]}/pause")
    seen, after = [], None
    while True:
        page = (await client.get("/v1/jobs", params={"limit": 2, **({"after": after} if after else {})})).json()
        seen += page["jobs"]
        if not (after := page["next"]):
            break
    assert [j["id"] for j in seen] == jids  # oldest first, only this tenant's
    assert [j["status"] for j in seen] == ["active", "canceled", "active", "completed", "paused"]
    for status, want in (("completed", [jids[3]]), ("canceled", [jids[1]]), ("active", [jids[0], jids[2]]),
                         ("paused", [jids[4]])):  # fmt: skip
        got = (await client.get("/v1/jobs", params={"status": status, "limit": 100})).json()
        assert [j["id"] for j in got["jobs"]] == want
    assert len((await other.get("/v1/jobs")).json()["jobs"]) == 1
    bad = await client.get("/v1/jobs", params={"status": "done"})
    assert bad.status_code == 422 and bad.json()["field"] == "status"


# -- a job with nothing accepted -----------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "ndjson"])
async def test_a_job_whose_every_recipient_is_rejected_is_a_422_with_the_rejections(client, form) -> None:
    job = job_with(BAD + ["+14155550123"], template="Hi {name} {missing}")
    r = (await client.post("/v1/jobs", json=job) if form == "json"
         else await client.post("/v1/jobs", content=as_ndjson(job), headers=NDJSON))  # fmt: skip
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "all_recipients_rejected" and body["field"] == "recipients" and "id" not in body
    assert [e["index"] for e in body["rejected"]] == [0, 1, 2, 3]
    assert "missing variable" in body["rejected"][3]["error"]
    assert (await client.get("/v1/jobs")).json()["jobs"] == []  # nothing stored, no id that 404s


# -- malformed ids -------------------------------------------------------------------------

BAD_IDS = ["zzzzzzzzzzzzz", "ZZZZZZZZZZZZZ", "job_zzzzzzzzzzzzz", "7zzzzzzzzzzzz", "8000000000000", "0000000000000",
           "job_0000000000000", "-1", "-0000000000001", "9" * 40, "1e400", "0x10", "job_", "job", "nan", "…",
           "ü" * 13, "İ" * 13, "job_" + "İ" * 13, "𝟘" * 13, "٣" * 13, "\u00a0" * 13, "a b", "%", "%00", "%ff",
           "..", "job_0000000000000;drop", "x" * 5000, "\ud800" * 2]  # fmt: skip


async def raw_get(api, method: str, path: str, query: bytes = b"") -> tuple[int, dict]:
    """One request with ``path`` as the ASGI scope's (decoded) path, exactly: no client quoting."""
    sent: list[dict] = []
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode("utf-8", "surrogatepass"),
             "query_string": query, "headers": [(b"authorization", f"Bearer {KEYS['acme']}".encode())]}  # fmt: skip

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await api(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


async def test_malformed_ids_on_every_route_with_an_id_are_404_or_422(api, client) -> None:
    jid = (await client.post("/v1/jobs", json=job_with(GOOD[:2]))).json()["id"]
    templated = [(m, t) for m, t in api.routes() if "{" in t]
    assert len(templated) >= 6
    for method, template in templated:
        for bad in BAD_IDS:
            path = template.split("{")[0] + bad + template.split("}", 1)[1]
            status, body = await raw_get(api, method, path)
            assert status in (404, 422), (method, path, status, body)
            assert body["code"] in ("not_found", "no_such_endpoint", "invalid_field"), body
    for path in ("/v1/jobs", f"/v1/jobs/{jid}/messages", "/v1/inbound"):
        for bad in [*BAD_IDS, "", "1" * 19, "9223372036854775808", " 7", "1_0"]:
            query = b"after=" + bad.encode("utf-8", "surrogatepass").replace(b"%", b"%25").replace(b" ", b"%20")
            status, body = await raw_get(api, "GET", path, query)
            assert status in (200, 404, 422), (path, bad, status, body)
            if status == 422:
                assert body["field"] == "after" and body["code"] in ("invalid_cursor", "invalid_field")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=40).filter(lambda t: "/" not in t))
async def test_property_no_id_gives_a_5xx(api, text) -> None:
    for method, template in [(m, t) for m, t in api.routes() if "{" in t]:
        path = template.split("{")[0] + text + template.split("}", 1)[1]
        status, body = await raw_get(api, method, path)
        assert status < 500 and body["code"], (path, body)
    for path in ("/v1/jobs", "/v1/inbound"):
        status, _ = await raw_get(api, "GET", path, b"after=" + text.encode("utf-8", "surrogatepass"))
        assert status in (200, 422)


def test_parse_id_refuses_what_format_id_never_wrote() -> None:
    from gateway.core.ids import parse_id

    for bad in ("zzzzzzzzzzzzz", "8000000000000", "İ" * 13, "٣" * 13, "𝟘" * 13, "", "0" * 14):
        with pytest.raises(ValueError):
            parse_id(bad)
    for value in (0, 1, 2**40 + 7, 2**63 - 1):
        assert parse_id(format_id(value)) == value == parse_id(format_id(value).upper())


# -- idempotency under concurrency ---------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def store_of(request, tmp_path):
    def make():
        return MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "sluice.db"))

    return make


async def concurrently(n: int, call) -> list[httpx.Response]:
    out: list = [None] * n

    async def one(k: int) -> None:
        out[k] = await call(k)

    async with anyio.create_task_group() as tg:
        for k in range(n):
            tg.start_soon(one, k)
    return out


@pytest.mark.parametrize("form", ["message", "json", "ndjson"])
async def test_concurrent_requests_with_one_key_and_body_all_get_the_one_answer(store_of, clock, make_api, form) -> None:
    gw = Gateway(Scheduler(loads(default_text()).core, clock()), store_of())
    api = make_api(gw)
    headers = {"authorization": f"Bearer {KEYS['acme']}", "idempotency-key": "order-42"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t", headers=headers) as c:
        if form == "message":
            call = lambda k: c.post("/v1/messages", json={"to": GOOD[0], "body": "x", "from": "A", "category": "otp"})  # noqa: E731
        elif form == "json":
            call = lambda k: c.post("/v1/jobs", json=job_with(GOOD))  # noqa: E731
        else:
            call = lambda k: c.post("/v1/jobs", content=as_ndjson(job_with(GOOD)), headers=NDJSON)  # noqa: E731
        answers = await concurrently(40, call)
        assert {a.status_code for a in answers} == {202}, {a.text for a in answers if a.status_code != 202}
        assert len({a.content for a in answers}) == 1
        assert len((await c.get("/v1/jobs")).json()["jobs"]) == 1  # one job stored, not 40
        other = await c.post("/v1/jobs", json=job_with(GOOD[:2]))
        assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"


async def test_two_gateways_on_one_store_racing_on_a_key_answer_alike(tmp_path, clock, make_api) -> None:
    """No in-process lock helps here (two processes on one database): the store's unique key
    decides, and the loser answers with the winner's stored answer, never a 409."""
    store = SqliteStore(str(tmp_path / "shared.db"))
    cfg = loads(default_text()).core
    apis = [make_api(Gateway(Scheduler(cfg, clock()), store)) for _ in range(2)]
    headers = {"authorization": f"Bearer {KEYS['acme']}", "idempotency-key": "k-7"}
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://t", headers=headers) for a in apis]
    answers = await concurrently(30, lambda k: clients[k % 2].post("/v1/jobs", json=job_with(GOOD)))
    for c in clients:
        await c.aclose()
    assert {a.status_code for a in answers} == {202}, {a.text for a in answers}
    assert len({a.content for a in answers}) == 1
    assert len(store.jobs("acme", after="", limit=10).jobs) == 1


# -- error codes and HTTP details ----------------------------------------------------------


async def test_every_error_has_a_code_and_keeps_field_and_index(client) -> None:
    cases = [
        (client.post("/v1/messages", content=b"{not json"), 400, "malformed_json"),
        (client.post("/v1/messages", json={"to": GOOD[0], "from": "A"}), 422, "invalid_field"),
        (client.post("/v1/jobs", json={**job_with(GOOD[:1]), "recipients": [{"to": 5}]}), 422, "invalid_field"),
        (client.get("/v1/nothing"), 404, "no_such_endpoint"),
        (client.delete("/v1/messages"), 405, "method_not_allowed"),
        (client.get("/v1/messages/0000000000000"), 404, "not_found"),
        (client.get("/v1/jobs", params={"limit": "0"}), 422, "invalid_field"),
        (client.post("/v1/messages", content=b"x" * (2 << 20)), 413, "body_too_large"),
        (client.post("/v1/messages", json={"to": GOOD[0], "body": "x", "from": "A", "category": "nope"}), 422,
         "invalid_field"),
    ]  # fmt: skip
    for request, status, code in cases:
        r = await request
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert r.headers["content-type"] == "application/json"
    r = await client.post("/v1/jobs", json={**job_with(GOOD[:1]), "recipients": [{"to": GOOD[0]}, {"to": 5}]})
    assert (r.json()["field"], r.json()["index"]) == ("recipients[1].to", 1)


async def test_authorization_scheme_is_case_insensitive_and_401_names_the_scheme(api) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            r = await c.get("/v1/suppressions", headers={"authorization": f"{scheme} {KEYS['acme']}"})
            assert r.status_code == 200, (scheme, r.text)
        for value, code in ((None, "missing_credentials"), ("Basic abc", "missing_credentials"),
                            ("Bearer", "missing_credentials"), ("Bearer    ", "missing_credentials"),
                            ("Bearer wrong-key", "unknown_key"), (f"Token {KEYS['acme']}", "missing_credentials")):  # fmt: skip
            r = await c.get("/v1/suppressions", headers={"authorization": value} if value else {})
            assert r.status_code == 401 and r.json()["code"] == code, (value, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")


async def test_two_authorization_headers_are_refused(api) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
        for pair in ((KEYS["acme"], KEYS["acme"]), (KEYS["acme"], KEYS["beta"]), (KEYS["acme"], "wrong")):
            headers = [("authorization", f"Bearer {pair[0]}"), ("authorization", f"Bearer {pair[1]}")]
            r = await c.get("/v1/suppressions", headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "ambiguous_credentials", r.text
            assert r.headers["www-authenticate"].startswith("Bearer")


# -- the OpenAPI document ------------------------------------------------------------------


async def test_every_route_the_app_serves_is_in_the_openapi_document(gateway, clock) -> None:
    async def nothing():
        raise AssertionError

    extra = {p: nothing for p in ("/metrics", "/healthz", "/readyz", "/v1/carriers")}  # what serve registers
    api = Api(gateway, {}, clock=clock, extra=extra, callbacks={"beta": nothing})
    routes = api.routes()
    assert {("GET", "/v1/jobs"), ("POST", "/v1/carriers/{name}/receipts"), ("GET", "/metrics")} <= set(routes)
    assert openapi.undocumented(routes) == []
    assert openapi.undocumented([("GET", "/v1/not-there")]) == [("GET", "/v1/not-there")]
    doc = json.loads(openapi.document())
    for name in ("SuppressionOut", "SuppressionList", "JobPage", "HealthOut", "Carriers", "ErrorBody"):
        assert name in doc["components"]["schemas"]
    assert "code" in doc["components"]["schemas"]["ErrorBody"]["required"]
    with pytest.raises(RuntimeError, match="missing from the OpenAPI"):
        Api(gateway, {}, clock=clock, extra={"/v1/secret": nothing})


async def test_default_category_is_the_same_for_messages_and_jobs(client, gateway) -> None:
    from gateway.api.schemas import DEFAULT_CATEGORY

    r = await client.post("/v1/messages", json={"to": GOOD[0], "body": "x", "from": "A"})
    job = job_with(GOOD[:1])
    del job["category"]
    j = await client.post("/v1/jobs", json=job)
    assert r.status_code == j.status_code == 202
    one = (await client.get(f"/v1/messages/{r.json()['id']}")).json()
    stored = [gateway.store.job_info("acme", jid).job.category for jid in (one["job_id"], j.json()["id"])]
    assert stored == [DEFAULT_CATEGORY, DEFAULT_CATEGORY] == ["marketing", "marketing"]


async def test_a_carrier_callback_refused_for_its_signature_is_a_401_naming_a_scheme(gateway, clock) -> None:
    async def refuse(url, headers, body) -> int:
        return 401

    api = Api(gateway, {}, clock=clock, callbacks={"beta": refuse})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
        r = await c.post("/v1/carriers/beta/receipts", content=b"MessageSid=SM1")
        assert r.status_code == 401 and r.json()["code"] == "bad_signature" and r.headers["www-authenticate"]
        r = await c.post("/v1/carriers/nope/inbound", content=b"")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        r = await c.get("/v1/carriers/beta/receipts")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
