"""``POST /v1/messages/batch`` through the HTTP seam: each message answers what ``POST /v1/messages``
answers for it alone (the same checks: numbers, zones, categories, opt-outs, quiet hours; the same
idempotency keys, across both endpoints), in order; only a body that is not a batch fails whole."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import loads, default_text
from gateway.core.scheduler import Scheduler
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore
from gateway.testing.clock import FakeClock

pytestmark = pytest.mark.anyio

MSG = {"to": "+14155550123", "body": "Your code is 123456", "from": "ACME", "category": "otp"}


def compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def batch(*items: tuple[str, object]) -> bytes:
    """A batch body whose messages are exactly ``compact(message)`` (what a single post would send)."""
    return b"[" + b",".join(b'{"idempotency_key":%s,"message":%s}' % (compact(k), compact(m)) for k, m in items) + b"]"


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/v1/messages/batch", content=body, headers={"content-type": "application/json"})


async def test_each_message_answers_alone_in_order(client) -> None:
    r = await post(client, batch(("a", MSG), ("b", {**MSG, "to": "+1415"}), ("c", {**MSG, "to": "+447911123456"})))
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["index"] for x in out["results"]] == [0, 1, 2]
    assert [x["status"] for x in out["results"]] == [202, 422, 202]
    assert (out["accepted"], out["rejected"]) == (2, 1)
    bad = out["results"][1]
    assert bad["code"] == "invalid_field" and bad["field"] == "message.to" and "invalid number" in bad["error"]
    for x, to in ((out["results"][0], MSG["to"]), (out["results"][2], "+447911123456")):
        m = await client.get(f"/v1/messages/{x['id']}")
        assert m.status_code == 200 and m.json()["to"] == to and m.json()["state"] == x["state"] == "queued"


async def test_a_key_answers_its_first_message_across_both_endpoints(client) -> None:
    single = await client.post("/v1/messages", content=compact(MSG), headers={"idempotency-key": "k1"})
    assert single.status_code == 202
    first = (await post(client, batch(("k1", MSG), ("k2", MSG)))).json()["results"]
    assert first[0]["id"] == single.json()["id"] and first[1]["id"] != single.json()["id"]
    again = (await post(client, batch(("k1", MSG), ("k2", MSG)))).json()["results"]
    assert again == first  # a retried batch: the stored answers, nothing new
    alone = await client.post("/v1/messages", content=compact(MSG), headers={"idempotency-key": "k2"})
    assert alone.status_code == 202 and alone.json()["id"] == first[1]["id"]
    other = (await post(client, batch(("k1", {**MSG, "body": "another"})))).json()["results"][0]
    assert other["status"] == 409 and other["code"] == "idempotency_key_reused" and "id" not in other
    page = await client.get("/v1/jobs")
    assert len(page.json()["jobs"]) == 2  # two messages in all


async def test_a_key_twice_in_one_batch_is_one_message(client) -> None:
    out = (await post(client, batch(("d", MSG), ("d", MSG), ("d", {**MSG, "body": "other"})))).json()["results"]
    assert out[0]["id"] == out[1]["id"] and [x["status"] for x in out] == [202, 202, 409]
    assert len((await client.get("/v1/jobs")).json()["jobs"]) == 1


async def test_a_refused_message_stores_nothing_and_frees_its_key(client) -> None:
    out = (await post(client, batch(("e", {**MSG, "to": "+1415"}), ("e", MSG)))).json()["results"]
    assert [x["status"] for x in out] == [422, 202]
    assert (await client.get("/v1/jobs")).json()["jobs"] != []


@pytest.mark.parametrize(("item", "field"), [
    ({"message": MSG}, "messages[1].idempotency_key"), ({"idempotency_key": "f"}, "messages[1].message"),
    ({"idempotency_key": "", "message": MSG}, "messages[1].idempotency_key"),
    ({"idempotency_key": "g", "message": 5}, "messages[1].message"),
    ({"idempotency_key": "h", "message": {**MSG, "colour": 1}}, "messages[1].message.colour"),
    ({"idempotency_key": "h", "message": {**MSG, "to": 14155550123}}, "messages[1].message.to"),
    ({"idempotency_key": "h", "message": {**MSG, "body": "x" * 1601}}, "messages[1].message.body"),
    ({"idempotency_key": "j", "message": MSG, "extra": 1}, "messages[1].extra"), (7, "messages[1]")])  # fmt: skip
async def test_a_message_that_breaks_the_schema_fails_the_batch_naming_it(client, item: object, field: str) -> None:
    """As a recipient line of a job: a malformed message refuses the batch, nothing is stored."""
    r = await post(client, json.dumps([{"idempotency_key": "ok", "message": MSG}, item]).encode())
    assert (r.status_code, r.json()["code"], r.json()["field"], r.json()["index"]) == (422, "invalid_field", field, 1)
    assert (await client.get("/v1/jobs")).json()["jobs"] == []


async def test_a_message_that_cannot_be_sent_fails_alone(client) -> None:
    out = (await post(client, batch(("i", {**MSG, "callback_url": "http://127.0.0.1/x"}), ("j", MSG),
                                    ("k", {**MSG, "category": "nope"}), ("l", {**MSG, "zone": "Mars/Base"})))).json()  # fmt: skip
    assert [(x["status"], x.get("code"), x.get("field")) for x in out["results"]] == [
        (422, "unsafe_url", "message.callback_url"), (202, None, None), (422, "invalid_field", "message.category"),
        (422, "invalid_field", "message.tz")]  # fmt: skip
    assert len((await client.get("/v1/jobs")).json()["jobs"]) == 1


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"", 400, "malformed_json"), (b"[{", 400, "malformed_json"), (b"{}", 422, "invalid_field"),
    (b"[]", 422, "invalid_field"), (b"[" + b",".join([b"{}"] * 1001) + b"]", 413, "batch_too_large")])  # fmt: skip
async def test_a_body_that_is_not_a_batch_fails_whole(client, body: bytes, status: int, code: str) -> None:
    r = await post(client, body)
    assert (r.status_code, r.json()["code"]) == (status, code)
    assert r.json()["code"] != "batch_too_large" or "1000" in r.json()["error"]


async def test_a_full_batch_is_taken(client) -> None:
    body = batch(*((f"n{i}", {**MSG, "to": f"+1415555{i:04d}"}) for i in range(1000)))
    out = (await post(client, body)).json()
    assert out["accepted"] == 1000 and len({x["id"] for x in out["results"]}) == 1000


# ---- the class: a batch answers as its messages posted one by one -------------------------------
NUMBERS = ["+14155550123", "+447911123456", "+33612345678", "+1415", "+14155550199"]  # the last: opted out
message = st.fixed_dictionaries(
    {"to": st.sampled_from(NUMBERS), "body": st.sampled_from(["hi", "Привет " * 60, "x" * 1600]),
     "from": st.just("ACME")},
    optional={"category": st.sampled_from(["otp", "marketing", "transactional", "nope"]),
              "zone": st.sampled_from(["Europe/Paris", "Mars/Base", "America/Los_Angeles"])})  # fmt: skip
items = st.lists(st.tuples(st.sampled_from(["k0", "k1", "k2", "k3", "k4"]), message), min_size=1, max_size=8)


def _gateway(clock: FakeClock) -> Gateway:
    return Gateway(Scheduler(loads(default_text()).core, clock()), MemoryStore())


def _view(x: dict) -> tuple:
    field = x.get("field")
    return (x["status"], x.get("state"), x.get("code"), field.removeprefix("message.") if field else None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=items, now=items, hour=st.integers(0, 23))
async def test_a_batch_answers_as_its_messages_posted_one_by_one(client, make_api, clock, before, now, hour) -> None:
    clock.now = 1_795_478_400.0 + hour * 3600  # quiet hours somewhere for some hours
    answers = []
    for use_batch in (True, False):
        gw = _gateway(clock)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_api(gw)), base_url="http://t",
                                     headers=client.headers) as c:  # fmt: skip
            await c.post("/v1/suppressions", json={"number": NUMBERS[-1]})
            got = []
            for part in (before, now):  # keys stored by an earlier request, then this one
                if use_batch:
                    got += [_view(x) for x in (await post(c, batch(*part))).json()["results"]]
                    continue
                for key, m in part:
                    r = await c.post("/v1/messages", content=compact(m), headers={"idempotency-key": key})
                    j = r.json()
                    got.append((r.status_code, j.get("state"), j.get("code"), j.get("field")))
            answers.append(got)
    assert answers[0] == answers[1]


async def test_the_batch_route_is_not_a_message_id(client) -> None:
    for method in ("GET", "OPTIONS", "DELETE"):
        r = await client.request(method, "/v1/messages/batch")
        assert (r.status_code, r.headers["allow"], r.json()["code"]) == (405, "POST", "method_not_allowed")
    assert (await client.get("/v1/messages/0000000000001")).json()["code"] == "not_found"
