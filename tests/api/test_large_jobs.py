"""Large jobs without stalling the API: a JSON body cut into pieces (gateway/api/json_pieces.py)
is the same job as decoded whole; rejection lists are capped and counted; bulk admission gives
way to other requests. (The latency figure itself is `sluice bench fairness`, not a test.)"""

from __future__ import annotations

import json

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api import schemas
from gateway.api.app import Traffic
from gateway.api.json_pieces import elements, recipient_pieces
from gateway.runtime.service import Rejections

pytestmark = pytest.mark.anyio

TRICKY = st.sampled_from(['},{', '}]', '"recipients": [', '\\', '"', '}, {"to": "+1"}', '\n', 'é', '😀', ']}'])
VALUE = st.lists(st.one_of(TRICKY, st.text(max_size=8)), max_size=4).map("".join)
RECIPIENT = st.fixed_dictionaries(
    {"to": st.from_regex(r"\+[1-9][0-9]{9,12}", fullmatch=True)},
    optional={"vars": st.dictionaries(st.text(max_size=6), VALUE, max_size=3), "tz": st.sampled_from(["Europe/Paris"])},
)


def cut(body: bytes, piece: int, max_tries: int = 64):
    items = list(recipient_pieces(body, piece=piece, max_tries=max_tries))
    return items[-1] if items and items[-1] is not None else None


@settings(max_examples=60, deadline=None)
@given(people=st.lists(RECIPIENT, max_size=40), piece=st.integers(1, 400), indent=st.sampled_from([None, 1]),
       first=st.booleans(), template=VALUE.filter(bool))  # fmt: skip
def test_pieces_are_the_array_decoded_whole(people, piece, indent, first, template) -> None:
    head = {"from": "ACME", "template": template, "category": "marketing"}
    job = {"recipients": people, **head} if first else {**head, "recipients": people}
    body = json.dumps(job, indent=indent, ensure_ascii=False).encode()
    whole = msgspec.json.decode(body, type=schemas.JobIn)
    # Values full of "}, {" can make a piece's cut fail more than max_tries times: then the body is
    # left to the whole decode (None). With tries enough, every valid body is cut, and the same.
    assert cut(body, piece) in (None, cut(body, piece, max_tries=len(body) + 1))
    pieces = cut(body, piece, max_tries=len(body) + 1)
    assert pieces is not None
    parts = [msgspec.json.decode(e, type=schemas.RecipientIn) for span in pieces.spans for e in elements(body, span)]
    assert parts == whole.recipients
    assert msgspec.json.decode(pieces.head, type=schemas.JobIn) == msgspec.structs.replace(whole, recipients=[])
    if people:
        assert all(end > start for start, end in pieces.spans)


@pytest.mark.parametrize("body", [
    b'{"from": "A", "template": "x", "recipients": [1, 2, 3]}',  # elements that are not objects
    b'{"from": "A", "template": "x", "recipients": [{"to": "+14155550123"}, "x"]}',
    b'{"from": "A", "template": "x", "recipients": [{"to": "+14155550123"}',  # truncated
    b'{"from": "A", "template": "x"}',  # no recipients at all
])  # fmt: skip
def test_a_body_that_cannot_be_cut_is_left_to_the_whole_decode(body) -> None:
    assert cut(body, 8) is None


@pytest.fixture
async def big(gateway, clock):
    """A client of an API that takes bodies of 16 MiB (conftest's takes 1 MiB)."""
    import httpx

    from gateway.api.app import Api, hash_key
    from gateway.config import Tenant

    key = "acme-secret-key-1"
    api = Api(gateway, {hash_key(key): Tenant(name="acme", key_sha256=hash_key(key))}, clock=clock, max_body=16 << 20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://sluice.test",
                                 headers={"authorization": f"Bearer {key}"}, timeout=120) as c:  # fmt: skip
        yield c


PAD = "x" * 600  # ~0.6 kB a recipient: 2,000 of them make a body past the pieces threshold (1 MiB)


def big_job(people: list[dict]) -> bytes:
    body = msgspec.json.encode({"from": "ACME", "template": "Hi {name}", "category": "marketing", "recipients": people})
    assert len(body) >= 1 << 20  # the pieces path
    return body


async def test_a_large_json_job_is_the_same_job_as_ndjson(big) -> None:
    people = [{"to": "+1415555%04d" % i, "vars": {"name": "},{" * (i % 3) + "Ann", "pad": PAD}} for i in range(2_000)]
    people[1_234]["to"] = "12"  # refused by its number: rejected by index, the rest accepted
    r = await big.post("/v1/jobs", content=big_job(people), headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text[:300]
    out = r.json()
    assert out["accepted"] == 1_999 and [e["index"] for e in out["rejected"]] == [1_234]
    assert out["rejected_count"] == 1
    ndjson = b"\n".join([msgspec.json.encode({"from": "ACME", "template": "Hi {name}", "category": "marketing"}),
                         *(msgspec.json.encode(p) for p in people)])  # fmt: skip
    r2 = await big.post("/v1/jobs", content=ndjson, headers={"content-type": "application/x-ndjson"})
    assert {k: v for k, v in r2.json().items() if k != "id"} == {k: v for k, v in out.items() if k != "id"}


async def test_a_malformed_recipient_of_a_large_json_job_is_named(big) -> None:
    people = [{"to": "+1415555%04d" % i, "vars": {"pad": PAD}} for i in range(2_000)]
    people[1_500] = {"to": "+14155550000", "nope": 1}
    r = await big.post("/v1/jobs", content=big_job(people), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["index"] == 1_500 and r.json()["field"].startswith("recipients[1500]")


async def test_a_job_of_only_bad_numbers_answers_a_capped_summary(big) -> None:
    n = 2_000
    people = [{"to": "+999%09d" % i, "vars": {"pad": PAD}} for i in range(n)]
    r = await big.post("/v1/jobs", content=big_job(people), headers={"content-type": "application/json"})
    body = r.json()
    assert r.status_code == 422 and body["code"] == "all_recipients_rejected" and body["rejected_count"] == n
    assert [e["index"] for e in body["rejected"]] == list(range(schemas.REJECTED_IN_FULL))
    assert sum(body["rejected_by_reason"].values()) == n and len(body["rejected_by_reason"]) <= 3
    assert all("+999" not in reason for reason in body["rejected_by_reason"])  # no number in a reason
    assert len(r.content) < 150_000  # the first 1,000 and a count


@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=30), max_size=8),
       st.integers(0, 50))  # fmt: skip
def test_rejections_keep_the_first_in_full_and_count_all(chunks, in_full) -> None:
    reasons = ["invalid number '+1%d': too short", "no route for '+44'", 'variable "x" missing', "other"]
    rej, index, flat = Rejections(in_full), 0, []
    for chunk in chunks:
        errors = []
        for kind, _ in chunk:
            errors.append(schemas.RecipientError(index=index, error=reasons[kind].replace("%d", str(index))))
            index += 1
        flat += errors
        rej.add(errors)
    answer = rej.answer("job_x", 0)
    assert answer.rejected == flat[:in_full] and answer.rejected_count == len(flat)
    assert sum(answer.rejected_by_reason.values()) == len(flat) and len(answer.rejected_by_reason) <= 4


async def test_bulk_work_gives_way_to_requests_in_flight_but_not_for_ever() -> None:
    traffic = Traffic(patience=0.2)
    order: list[str] = []

    async def bulk() -> None:
        with traffic.bulk():
            await traffic.give_way()
            order.append("chunk")

    traffic.begin()  # the bulk request itself
    traffic.begin()  # a small request in flight
    async with anyio.create_task_group() as tg:
        tg.start_soon(bulk)
        await anyio.wait_all_tasks_blocked()
        assert order == []  # waiting for the small request
        order.append("small done")
        traffic.end()
    assert order == ["small done", "chunk"]

    traffic.begin()  # a request that never ends: the chunk goes after `patience` anyway
    with anyio.fail_after(5):
        await bulk()
    assert order[-1] == "chunk"


@pytest.mark.parametrize("indent", [None, 1, 4])
def test_every_piece_size_cuts_a_valid_body(indent) -> None:
    """Whatever the piece size, the array's last element is found even when its "}" falls before
    the size and its "]" after it (whitespace between them, as with indent): the body is cut,
    not left to the whole decode."""
    people = [{"to": "+14155550123"}, {"to": "+14155550124", "vars": {"a": "},{"}}, {"to": "+14155550125"}]
    body = json.dumps({"from": "A", "template": "x", "recipients": people}, indent=indent).encode()
    for piece in range(1, len(body) + 2):
        pieces = cut(body, piece)
        assert pieces is not None, piece
        assert [msgspec.json.decode(e) for span in pieces.spans for e in elements(body, span)] == people


async def test_a_streamed_job_is_answered_before_its_messages_are_released(gateway, clock) -> None:
    """The 202 needs the job committed, not its messages made ready for dispatch (~0.1 µs each,
    in steps): the API releases them after the answer is sent (`Response.after`)."""
    from tests.api.conftest import KEYS, api_for

    api = api_for(gateway, clock)
    n = 300
    lines = [msgspec.json.encode({"from": "ACME", "template": "Hi", "category": "marketing"}),
             *(msgspec.json.encode({"to": "+1415555%04d" % i}) for i in range(n))]  # fmt: skip
    events = iter([{"type": "http.request", "body": b"\n".join(lines), "more_body": False}])
    answered: list = []

    async def receive() -> dict:
        return next(events)

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            answered.append((json.loads(message["body"]), gateway.core.statistics(clock())))

    headers = [(b"authorization", f"Bearer {KEYS['acme']}".encode()), (b"content-type", b"application/x-ndjson")]
    await api({"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers, "query_string": b""},
              receive, send)  # fmt: skip
    [(body, at_answer)] = answered
    assert body["accepted"] == n
    assert at_answer.parked == n  # committed and answered, not released yet
    after = gateway.core.statistics(clock())
    assert after.parked == 0 and sum(after.ready.values()) + after.waiting == n  # released once answered
