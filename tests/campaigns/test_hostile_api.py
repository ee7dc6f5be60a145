"""A hostile client on the campaigns HTTP API, on both engines: bodies nested 100,000 deep, NUL
characters in any text, spreadsheet CSVs (BOM, CRLF, quoted commas, semicolons, tabs, capitalised
headers, ragged rows, huge fields, non-UTF-8), NDJSON with a byte order mark and bad lines. Every
one is a 4xx naming what is wrong (never a 500), nothing half-stored, and the service keeps
answering."""

from __future__ import annotations

import codecs

import pytest
from litestar.testing import TestClient

from tests.campaigns.test_campaigns_api import client, clock, h  # noqa: F401

DEEP = {"array": b"[" * 100_000 + b"]" * 100_000, "object": b'{"a":' * 5_000 + b"1" + b"}" * 5_000}
POSTS = ["/v1/subscribers", "/v1/subscribers/1/tags", "/v1/subscribers/1/consent", "/v1/events", "/v1/segments",
         "/v1/segments/validate"]  # fmt: skip


@pytest.mark.parametrize("shape", sorted(DEEP))
def test_a_body_nested_too_deep_is_a_400_not_a_500(client: TestClient, shape: str) -> None:
    r = client.post("/v1/subscribers", json={"profile": {"phone": "+14155550100"}}, headers=h("acme"))
    assert r.status_code == 201
    for path in POSTS:
        for ctype in ("application/json", "text/plain"):
            r = client.post(path, content=DEEP[shape], headers={**h("acme"), "content-type": ctype})
            assert r.status_code == 400 and r.json()["code"] == "invalid_json", (path, r.status_code, r.text[:200])
    r = client.post("/v1/events/bulk", content=DEEP[shape] + b"\n", headers=h("acme"))
    assert r.status_code == 422 and r.json()["field"] == "lines[0]", r.text[:200]
    assert client.get("/healthz").status_code == 200


NUL_BODIES = [
    ("/v1/subscribers", {"profile": {"phone": "+14155550100", "first_name": "A\u0000B"}}, "profile.first_name"),
    ("/v1/subscribers", {"profile": {"phone": "+14155550100", "tags": ["ok", "a\u0000"]}}, "profile.tags[1]"),
    ("/v1/subscribers", {"profile": {"phone": "+14155550100", "attributes": {"k": ["v\u0000"]}}}, "profile.attributes.k[0]"),
    ("/v1/events", {"id": "e\u0000", "at": 1_760_000_000, "type": "custom", "phone": "+14155550100", "name": "x"}, "id"),
    ("/v1/events", {"id": "e1", "at": 1_760_000_000, "type": "order", "order_id": "1", "phone": "+14155550100",
                    "total": 1, "currency": "USD", "payment_status": "paid",
                    "items": [{"product": "Boot\u0000"}]}, "items[0].product"),
    ("/v1/events", {"id": "e2", "at": 1_760_000_000, "type": "checkout", "checkout_id": "c", "phone": "+14155550100",
                    "consent": {"accepted": True, "evidence": {"ip": "1.2.3.4\u0000"}}}, "consent.evidence.ip"),
]  # fmt: skip


def test_a_nul_character_is_a_422_naming_the_field_on_both_engines(client: TestClient) -> None:
    """PostgreSQL cannot store U+0000 in text (it answered 500) and SQLite stored it: both refuse it."""
    for path, body, field in NUL_BODIES:
        r = client.post(path, json=body, headers=h("acme"))
        assert r.status_code == 422 and r.json()["field"] == field, (path, field, r.status_code, r.text[:300])
    r = client.post("/v1/subscribers/1/tags", json={"add": ["x\u0000"]}, headers=h("acme"))
    assert r.status_code in (404, 422) and r.status_code != 500
    line = b'{"id":"b1","at":1760000000,"type":"custom","phone":"+14155550100","name":"x","properties":{"a":"\\u0000"}}'
    ok = b'{"id":"b0","at":1760000000,"type":"customer","profile":{"phone":"+14155550100"}}'
    r = client.post("/v1/events/bulk", content=ok + b"\n" + line + b"\n", headers=h("acme"))
    assert r.status_code == 422 and r.json()["field"] == "lines[1].properties.a", r.text
    r = client.post("/v1/subscribers/import", content="phone,first_name\n+14155550109,A\u0000B\n".encode(), headers=h("acme"))
    assert r.status_code == 422 and r.json()["field"] == "rows[0].first_name", r.text
    assert client.get("/v1/subscribers", headers=h("acme")).json()["items"] == []  # nothing half-stored


CSVS = [  # (name, body, stored first names)
    ("bom crlf", "\ufeffphone,first_name\r\n+14155550101,Bob\r\n".encode(), ["Bob"]),
    ("quoted comma", 'phone,first_name,city\r\n+14155550102,"Smith, Jr",Paris\r\n'.encode(), ["Smith, Jr"]),
    ("semicolon", "phone;first_name\n+33612345679;Zoé\n".encode(), ["Zoé"]),
    ("semicolon quoted", 'phone;first_name;city\n+33612345679;"Zoé; Ana";Lyon\n'.encode(), ["Zoé; Ana"]),
    ("tab", "phone\tfirst_name\n+33612345682\tTab\n".encode(), ["Tab"]),
    ("capitalised header", " Phone , First_Name \n+33612345684,Caps\n".encode(), ["Caps"]),
    # hunt12: what spreadsheets write beyond the data (their used range) and their preamble
    ("empty rows after the data", b"phone,first_name\r\n+14155550103,Row\r\n,\r\n , \r\n,\r\n", ["Row"]),
    ("empty rows in between", b"phone;first_name\n+33612345687;One\n;\n+33612345688;Two\n", ["One", "Two"]),
    ("unnamed empty columns", b"phone,first_name,,\n+14155550104,Wide,,\n,,,\n", ["Wide"]),
    ("empty cells past the header", b"phone,first_name\n+14155550105,Past,,\n", ["Past"]),
    ("sep= line", b"sep=;\r\nphone;first_name\r\n+33612345689;Sep\r\n", ["Sep"]),
    ("bom and sep= line", "\ufeffsep=,\nphone,first_name\n+14155550106,BomSep\n".encode(), ["BomSep"]),
]


@pytest.mark.parametrize(("name", "body", "names"), CSVS, ids=[c[0] for c in CSVS])
def test_spreadsheet_csvs_are_read(client: TestClient, name: str, body: bytes, names: list[str]) -> None:
    r = client.post("/v1/subscribers/import", content=body, headers={**h("acme"), "content-type": "text/csv"})
    assert r.status_code == 201, r.text
    got = [s["first_name"] for s in client.get("/v1/subscribers", headers=h("acme")).json()["items"]]
    assert got == names


BAD_CSVS = [  # (name, body, code, field)
    ("latin-1", "phone,first_name\n+33612345680,Zo\xe9\n".encode("latin-1"), "invalid_encoding", "rows[0]"),
    ("utf-16 without a byte order mark", "phone,first_name\n+33612345683,U16\n".encode("utf-16-le"), "invalid_encoding", "header"),
    ("unknown charset", "phone,first_name\n+33612345683,X\n".encode(), "invalid_encoding", "charset"),
    ("a codec that is no charset", "phone,first_name\n+33612345683,X\n".encode(), "invalid_encoding", "charset"),
    ("declared charset not matching", "phone,first_name\n+33612345683,Zo\xe9\n".encode("latin-1"), "invalid_encoding", "rows[0]"),
    ("ragged", b"phone,first_name\n+33612345685,A\n+33612345686,B,extra\n", "invalid_csv", "rows[1]"),
    ("huge field", b"phone,first_name\n+33612345685,A\n+33612345686,\"" + b"x" * 200_000 + b"\"\n", "invalid_csv", "rows[1]"),
    ("column twice", b"phone,first_name,First_Name\n+33612345685,A,B\n", "invalid_csv", "first_name"),
    ("a value in an unnamed column", b"phone,first_name,\n+33612345685,A,\n+33612345686,B,x\n", "invalid_csv", "rows[1]"),
    ("a row without a phone among others", b"phone,first_name\n+33612345685,A\n,B\n", "missing_field", "rows[1].phone"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "code", "field"), BAD_CSVS, ids=[c[0] for c in BAD_CSVS])
def test_bad_csvs_are_a_422_naming_the_row_and_nothing_is_stored(client: TestClient, name: str, body: bytes,
                                                                 code: str, field: str) -> None:  # fmt: skip
    ctype = {"unknown charset": "text/csv; charset=klingon", "declared charset not matching": "text/csv; charset=utf-8",
             "a codec that is no charset": "text/csv; charset=idna"}  # idna's decoder raised UnicodeError: a 500
    r = client.post("/v1/subscribers/import", content=body, headers={**h("acme"), "content-type": ctype.get(name, "text/csv")})
    assert r.status_code == 422 and (r.json()["code"], r.json()["field"]) == (code, field), r.text[:300]
    assert client.get("/v1/subscribers", headers=h("acme")).json()["items"] == []


# Spreadsheet exports in other encodings: declared by their byte order mark (Excel's "Unicode text" is
# UTF-16 LE with a BOM, tab-delimited) or by the request's charset (Excel's "CSV" on Windows is
# Windows-1252; a Latin-1 export); read as declared, never guessed.
ENCODED = [  # (name, body, content type, stored first names)
    ("utf-16 le bom tab", "phone\tfirst_name\r\n+33612345690\tZoé\r\n+8613800138000\t王芳\r\n".encode("utf-16"),
     "text/csv", ["Zoé", "王芳"]),
    ("utf-16 be bom", codecs.BOM_UTF16_BE + "phone,first_name\n+40712345678,Ștefan\n".encode("utf-16-be"), "text/csv",
     ["Ștefan"]),
    ("utf-32 bom", "phone,first_name\n+33612345691,Anaïs\n".encode("utf-32"), "text/csv", ["Anaïs"]),
    ("windows-1252", "phone;first_name;city\n+33612345692;Zoé;Besançon €\n".encode("cp1252"),
     "text/csv; charset=windows-1252", ["Zoé"]),
    ("latin-1 quoted charset", "phone,first_name\n+33612345693,Noël\n".encode("latin-1"),
     'text/csv; charset="ISO-8859-1"', ["Noël"]),
    ("utf-8 declared with bom", "\ufeffphone,first_name\n+33612345694,Élodie\n".encode(), "text/csv; charset=utf-8",
     ["Élodie"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "ctype", "names"), ENCODED, ids=[c[0] for c in ENCODED])
def test_csvs_in_a_declared_encoding_are_read(client: TestClient, name: str, body: bytes, ctype: str,
                                             names: list[str]) -> None:  # fmt: skip
    r = client.post("/v1/subscribers/import", content=body, headers={**h("acme"), "content-type": ctype})
    assert r.status_code == 201, r.text
    got = [s["first_name"] for s in client.get("/v1/subscribers", headers=h("acme")).json()["items"]]
    assert got == names


ORDER = '{{"id":"{id}","at":1760000000,"type":"order","order_id":"{id}","phone":"+14155550100","total":{total},' \
        '"currency":"USD","payment_status":"paid"}}'  # fmt: skip


def test_ndjson_with_a_byte_order_mark_and_crlf_is_read(client: TestClient) -> None:
    body = ("\ufeff" + ORDER.format(id="o1", total=100) + "\r\n" + ORDER.format(id="o2", total=250) + "\r\n").encode()
    r = client.post("/v1/events/bulk", content=body, headers=h("acme"))
    assert r.status_code == 202 and r.json()["applied"] == 2, r.text


def test_ndjson_bad_lines_name_line_and_field_and_nothing_is_stored(client: TestClient) -> None:
    lines = [ORDER.format(id="o1", total=100), ORDER.format(id="o2", total=-5), '{"id":"o3"',
             ORDER.format(id="o4", total=10**14), ORDER.format(id="o1", total=100)]  # fmt: skip
    r = client.post("/v1/events/bulk", content="\n".join(lines).encode(), headers=h("acme"))
    body = r.json()
    assert r.status_code == 422 and body["field"] == "lines[1].total" and "3 bad lines: 1, 2, 3" in body["message"], body
    assert client.get("/v1/subscribers", headers=h("acme")).json()["items"] == []
    ok = [ORDER.format(id="o1", total=100), ORDER.format(id="o1", total=100), ORDER.format(id="o2", total=10**13)]
    r = client.post("/v1/events/bulk", content="\n".join(ok).encode(), headers=h("acme"))
    assert r.status_code == 202 and (r.json()["applied"], r.json()["duplicate"]) == (2, 1), r.text


def test_json_the_decoder_refuses_is_a_400_invalid_json(client: TestClient) -> None:
    """A number beyond a float's range and a truncated body were answered 400 `http_error`: the code
    every other malformed body gets is `invalid_json`; nothing is stored."""
    for body in (b'{"profile":{"phone":"+14155550100"},"x":1e999}', b'{"profile":', b'{"profile":{"phone":1e400}}'):
        r = client.post("/v1/subscribers", content=body, headers={**h("acme"), "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_json", (body, r.text)
    assert client.get("/v1/subscribers", headers=h("acme")).json()["items"] == []


def test_a_json_body_saved_with_a_byte_order_mark_is_read(client: TestClient) -> None:
    """``curl --data-binary @subscriber.json`` of a file saved by Notepad: the mark is skipped, as on
    the gateway's API (on the base: 400 invalid_json at byte 0). The mark alone is still no body."""
    import json

    bom = b"\xef\xbb\xbf"
    body = json.dumps({"profile": {"phone": "+14155550100", "first_name": "Zoë"}}).encode()
    r = client.post("/v1/subscribers", content=bom + body, headers={**h("acme"), "content-type": "application/json"})
    assert r.status_code == 201 and r.json()["subscriber"]["first_name"] == "Zoë", r.text
    event = {"id": "e1", "at": 1_760_000_000, "type": "custom", "phone": "+14155550100", "name": "x"}
    r = client.post("/v1/events", content=bom + json.dumps(event).encode(),
                    headers={**h("acme"), "content-type": "application/json; charset=utf-8"})  # fmt: skip
    assert r.status_code == 202, r.text
    for path in POSTS:  # no body, or only a mark: 400 invalid_json saying so (on the base: 422 "'data'")
        for content in (b"", bom):
            r = client.post(path, content=content, headers={**h("acme"), "content-type": "application/json"})
            assert (r.status_code, r.json()["code"], r.json()["message"]) == (
                400, "invalid_json", "empty body: a JSON object is expected"), (path, r.text)
