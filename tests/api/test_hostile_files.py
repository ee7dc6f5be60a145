"""Job files as real tools write them, sent as they are (``curl --data-binary @job.ndjson``): a UTF-8
byte order mark (Notepad, PowerShell 5's ``Out-File``, Excel's "CSV UTF-8"), CRLF line ends, blank and
whitespace-only lines, no newline at the end. Each is the same job as the clean file: the same
recipients accepted, the same rejections by index. On the base a BOM was a 400 ``malformed_json`` at
byte 0 on every body (NDJSON and JSON jobs, single messages, batches)."""

from __future__ import annotations

import json

import pytest

from tests.api.test_api import MSG

pytestmark = pytest.mark.anyio

BOM = b"\xef\xbb\xbf"
HEAD = {"from": "ACME", "template": "Hi {name}", "category": "transactional"}
PEOPLE = [{"to": "+14155550123", "vars": {"name": "Ann"}}, {"to": "+1415555", "vars": {"name": "Bad"}},
          {"to": "+447911123456", "vars": {"name": "Bo"}}]  # fmt: skip
LINES = [json.dumps(HEAD).encode()] + [json.dumps(p).encode() for p in PEOPLE]
NDJSON = {
    "clean": b"\n".join(LINES) + b"\n",
    "bom": BOM + b"\n".join(LINES) + b"\n",
    "crlf": b"\r\n".join(LINES) + b"\r\n",
    "bom+crlf, no end": BOM + b"\r\n".join(LINES),
    "blank lines": b"\n\n".join(LINES) + b"\n  \n\t\r\n",
    "bom, blank first": BOM + b"\r\n" + b"\r\n".join(LINES) + b"\r\n",
}


def _answer(r) -> tuple[int, int, list[int]]:
    body = r.json()
    return r.status_code, body.get("accepted"), [x["index"] for x in body.get("rejected") or []]


@pytest.mark.parametrize("name", list(NDJSON))
async def test_an_ndjson_job_file_as_tools_write_it(client, name: str) -> None:
    r = await client.post("/v1/jobs", content=NDJSON[name], headers={"content-type": "application/x-ndjson"})
    assert _answer(r) == (202, 2, [1]), (name, r.text)


@pytest.mark.parametrize("path,body", [
    ("/v1/jobs", json.dumps({**HEAD, "recipients": PEOPLE}).encode()),
    ("/v1/messages", json.dumps(MSG).encode()),
    ("/v1/messages/batch", json.dumps([{"idempotency_key": "k1", "message": MSG}]).encode()),
])  # fmt: skip
async def test_a_json_file_with_a_byte_order_mark(client, path: str, body: bytes) -> None:
    plain = await client.post(path, content=body, headers={"content-type": "application/json",
                                                          "idempotency-key": "plain-" + path})  # fmt: skip
    marked = await client.post(path, content=BOM + body, headers={"content-type": "application/json",
                                                                 "idempotency-key": "bom-" + path})  # fmt: skip
    assert plain.status_code == marked.status_code and plain.status_code in (200, 202), marked.text
    if path == "/v1/jobs":
        assert _answer(marked)[1:] == _answer(plain)[1:]


async def test_a_bom_alone_or_before_nothing_is_still_an_empty_body(client) -> None:
    r = await client.post("/v1/messages", content=BOM, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"
    r = await client.post("/v1/jobs", content=BOM + b"\r\n", headers={"content-type": "application/x-ndjson"})
    assert r.status_code in (400, 422), r.text
