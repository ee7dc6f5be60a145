"""Every endpoint folds a number to its one canonical E.164 at the door, or refuses it with a
4xx naming the field (COMPLIANCE.md, "One canonical number per person"). Suppression and the
weekly cap are keyed on that form, so another spelling of a suppressed number is suppressed."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.anyio

# (spelling, canonical): trunk digits after the country code, formatting, 00, non-ASCII digits.
SPELLINGS = [
    ("+1 1 212 555 0190", "+12125550190"),
    ("+1 (212) 555-0190", "+12125550190"),
    ("001 212.555.0190", "+12125550190"),
    ("+١٢١٢٥٥٥٠١٩٠", "+12125550190"),
    ("＋１２１２５５５０１９０", "+12125550190"),
    ("+44 0 7911 123456", "+447911123456"),
    ("+44 (0) 7911-123456", "+447911123456"),
    ("+४४७९१११२३४५६", "+447911123456"),
]
REFUSED = ["+1 212 555 0190 x5", "+1-800-FLOWERS", "2125550190", "+1²125550190", "+44 7911 1234"]
MARKETING = {"body": "Sale today", "from": "ACME", "category": "marketing"}


@pytest.mark.parametrize(("spelling", "canonical"), SPELLINGS)
async def test_a_message_is_kept_and_shown_canonical(client, spelling, canonical):
    r = await client.post("/v1/messages", json={**MARKETING, "to": spelling})
    assert r.status_code == 202, r.text
    m = await client.get(f"/v1/messages/{r.json()['id']}")
    assert m.status_code == 200, m.text
    assert m.json()["to"] == canonical


@pytest.mark.parametrize("spelling", REFUSED)
async def test_every_endpoint_refuses_what_cannot_be_canonical(client, spelling):
    r = await client.post("/v1/messages", json={**MARKETING, "to": spelling})
    assert r.status_code == 422 or r.status_code == 400, r.text
    assert r.json()["field"] == "to"
    job = {"from": "ACME", "template": "x", "recipients": [{"to": spelling}, {"to": "+12125550190"}]}
    r = await client.post("/v1/jobs", json=job)
    assert r.status_code == 202 and r.json()["accepted"] == 1 and r.json()["rejected"][0]["index"] == 0
    nd = "\n".join(json.dumps(x) for x in ({"from": "ACME", "template": "x"}, {"to": spelling}, {"to": "+12125550190"}))
    r = await client.post("/v1/jobs", content=nd, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["accepted"] == 1 and r.json()["rejected"][0]["index"] == 0
    r = await client.post("/v1/suppressions", json={"number": spelling})
    assert r.status_code in (400, 422) and r.json()["field"] == "number"
    assert (await client.delete(f"/v1/suppressions/{spelling}")).status_code == 404


@pytest.mark.parametrize(("spelling", "canonical"), SPELLINGS)
async def test_suppression_holds_for_every_spelling(client, spelling, canonical):
    r = await client.post("/v1/suppressions", json={"number": spelling})
    assert r.status_code == 201 and r.json() == {"number": canonical}
    listed = (await client.get("/v1/suppressions")).json()
    assert [s["number"] for s in listed] == [canonical]
    others = [s for s, c in SPELLINGS if c == canonical]
    for other in others:  # each spelling, by single POST, JSON job and NDJSON job: suppressed
        r = await client.post("/v1/messages", json={**MARKETING, "to": other})
        assert r.json()["status"] == "suppressed", (other, r.text)
    job = {"from": "ACME", "template": "x", "recipients": [{"to": o} for o in others]}
    jid = (await client.post("/v1/jobs", json=job)).json()["id"]
    assert (await client.get(f"/v1/jobs/{jid}")).json()["counts"] == {"suppressed": len(others)}
    nd = "\n".join(json.dumps(x) for x in ({"from": "ACME", "template": "x"}, *({"to": o} for o in others)))
    r = await client.post("/v1/jobs", content=nd, headers={"content-type": "application/x-ndjson"})
    jid = r.json()["id"]
    assert (await client.get(f"/v1/jobs/{jid}")).json()["counts"] == {"suppressed": len(others)}
    assert (await client.delete(f"/v1/suppressions/{others[-1]}")).status_code == 200
    assert (await client.get("/v1/suppressions")).json() == []


async def test_an_ndjson_job_stores_canonical_numbers(client):
    nd = "\n".join(json.dumps(x) for x in ({"from": "ACME", "template": "Hi {n}"},
                                           *({"to": s, "vars": {"n": "x"}} for s, _ in SPELLINGS)))  # fmt: skip
    r = await client.post("/v1/jobs", content=nd, headers={"content-type": "application/x-ndjson"})
    assert r.json()["accepted"] == len(SPELLINGS), r.text
    page = (await client.get(f"/v1/jobs/{r.json()['id']}/messages")).json()["messages"]
    got = sorted([(await client.get(f"/v1/messages/{m['id']}")).json()["to"] for m in page])
    assert got == sorted(c for _, c in SPELLINGS)
