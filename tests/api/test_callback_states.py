"""``callback_states`` at the API's seam: validated against the states a callback can report
(422 naming the field, whatever the body's form), stored with the job, in the OpenAPI document."""

from __future__ import annotations

import json
import typing

import msgspec
import pytest

from gateway.api import openapi, schemas
from gateway.store.base import CALLBACK_STATES, FINAL, NOTIFY, STATES

pytestmark = pytest.mark.anyio

HOOK = "https://hooks.example.com/sluice"
MSG = {"to": "+14155550123", "body": "Your code is 123456", "from": "ACME", "category": "otp", "callback_url": HOOK}
JOB = {"from": "ACME", "template": "Hi", "category": "transactional", "callback_url": HOOK,
       "recipients": [{"to": "+14155550123"}, {"to": "+14155550124"}]}  # fmt: skip
NOT_NOTIFIED = sorted(set(STATES) - NOTIFY)  # e.g. queued: never reported
BAD = [[], ["bogus"], ["delivered", "bogus"], ["Delivered"], "delivered", [1], *([s] for s in NOT_NOTIFIED),
       list(CALLBACK_STATES) * 2]  # fmt: skip


def test_the_api_names_exactly_the_states_the_store_notifies() -> None:
    """The schema's list and the store's NOTIFY are one set: a state added to one is in both."""
    (inner,) = typing.get_args(typing.get_args(schemas.CallbackStates)[0])
    assert set(typing.get_args(inner)) == NOTIFY == set(CALLBACK_STATES)
    assert FINAL <= NOTIFY


async def _posts(client, extra: dict):
    """The same choice as a message, a JSON job and an NDJSON job: the three answers."""
    yield await client.post("/v1/messages", content=json.dumps({**MSG, **extra}))
    yield await client.post("/v1/jobs", content=json.dumps({**JOB, **extra}))
    head = {k: v for k, v in JOB.items() if k != "recipients"} | extra
    lines = [json.dumps(head), *(json.dumps(r) for r in JOB["recipients"])]
    yield await client.post("/v1/jobs", content="\n".join(lines) + "\n", headers={"content-type": "application/x-ndjson"})


@pytest.mark.parametrize("states", BAD, ids=[json.dumps(b) for b in BAD])
async def test_bad_callback_states_are_refused_with_422_naming_the_field(client, gateway, states) -> None:
    async for r in _posts(client, {"callback_states": states}):
        assert r.status_code == 422, (states, r.text)
        assert "callback_states" in r.json()["field"] and r.json()["code"] == "invalid_field", r.text
    assert gateway.store.jobs("acme", after="", limit=10).jobs == []  # nothing stored


async def test_callback_states_without_a_callback_url_are_refused(client) -> None:
    body = {k: v for k, v in MSG.items() if k != "callback_url"} | {"callback_states": ["delivered"]}
    r = await client.post("/v1/messages", json=body)
    assert r.status_code == 422 and r.json()["field"] == "callback_states" and "callback_url" in r.json()["error"]
    head = {k: v for k, v in JOB.items() if k not in ("recipients", "callback_url")} | {"callback_states": ["failed"]}
    r = await client.post("/v1/jobs", content=json.dumps(head) + '\n{"to": "+14155550123"}\n',
                          headers={"content-type": "application/x-ndjson"})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "callback_states", r.text


async def test_the_choice_is_stored_with_the_job_and_absent_means_every_state(client, gateway) -> None:
    chosen = ["delivered", "undelivered", "expired", "rejected", "failed"]
    answers = [r async for r in _posts(client, {"callback_states": chosen})]
    answers += [r async for r in _posts(client, {})]
    assert [r.status_code for r in answers] == [202] * 6, [r.text for r in answers]
    stored = [j.job for j in gateway.store.jobs("acme", after="", limit=10).jobs]
    assert [j.callback_states for j in stored] == [frozenset(chosen)] * 3 + [None] * 3


def test_the_openapi_document_describes_callback_states() -> None:
    doc = msgspec.json.decode(openapi.document())["components"]["schemas"]
    for kind in ("MessageIn", "JobIn"):
        prop = doc[kind]["properties"]["callback_states"]
        arm = next(a for a in prop["anyOf"] if a.get("type") == "array")
        assert set(arm["items"]["enum"]) == NOTIFY and arm["minItems"] == 1, prop
