"""The profiles are pure: requests built and answers read without any I/O."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import pytest

from carriers.http.profiles import base, generic, get, twilio
from carriers.http.profiles.base import Accepted, Refused, Results, Retry, Throttle
from carriers.http.settings import FieldMap, HttpSettings
from http_helpers import make_dispatch

NOW = 1_700_000_000.0
G = HttpSettings(name="g", url="https://carrier.example/v1/sms")
T = HttpSettings(name="t", profile="twilio", url="https://api.example", account="AC123",
                 status_callback="https://gw.example/cb/t")  # fmt: skip


def test_profiles_by_name() -> None:
    assert get("generic") is generic and get("twilio") is twilio
    with pytest.raises(ValueError):
        get("smoke-signals")


def test_generic_builds_one_request_per_batch_with_a_stable_key() -> None:
    ds = [make_dispatch(i, f"hi {i}", message_id=100 + i) for i in range(3)]
    (req,) = generic.build(ds, G, "tok")
    assert req.method == "POST" and req.url == G.url and req.refs == (0, 1, 2)
    headers = dict(req.headers)
    assert headers["Authorization"] == "Bearer tok"
    assert headers["Idempotency-Key"] == req.idempotency_key
    doc = json.loads(req.body)
    assert doc["messages"][1] == {"to": ds[1].recipient, "from": "Sluice", "text": "hi 1", "client_ref": "101"}
    # The same messages on another attempt (other refs): the same key. A bumped generation: another.
    again = [make_dispatch(10 + i, f"hi {i}", message_id=100 + i, attempt=3) for i in range(3)]
    assert generic.build(again, G, "tok")[0].idempotency_key == req.idempotency_key
    assert generic.build(ds, G, "tok", {101: 1})[0].idempotency_key != req.idempotency_key


def test_generic_field_mapping_and_media() -> None:
    s = HttpSettings(name="g", fields=FieldMap(messages="sms", to="msisdn", text="body", media="mms"),
                     auth_header="X-Api-Key", auth_scheme="", idempotency_header="")  # fmt: skip
    (req,) = generic.build([make_dispatch(1, media=("https://m.example/a.png",))], s, "k")
    headers = dict(req.headers)
    assert headers["X-Api-Key"] == "k" and "Idempotency-Key" not in headers
    (item,) = json.loads(req.body)["sms"]
    assert item["msisdn"] == "+447911000001" and item["body"] == "hello" and item["mms"] == ["https://m.example/a.png"]


def test_generic_reads_results_in_order() -> None:
    body = json.dumps({"messages": [{"id": "a1"}, {"error": {"code": 21211, "name": "invalid number"}}]}).encode()
    assert generic.parse(200, {}, body, 2, G, NOW) == Results(
        [Accepted("a1"), Refused(code=21211, name="invalid number", permanent=True)]
    )
    temp = HttpSettings(name="g", fields=FieldMap(temporary_codes=(30001,)))
    body = json.dumps({"messages": [{"error": {"code": 30001, "name": "queue full"}}]}).encode()
    assert generic.parse(202, {}, body, 1, temp, NOW) == Results([Refused(code=30001, name="queue full", permanent=False)])


@pytest.mark.parametrize(
    "status, headers, body, expected",
    [
        (429, {"retry-after": "3"}, b"", Throttle(3.0)),
        (429, {"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, b"", Throttle(10.0)),
        (429, {}, b"", Throttle(None)),
        (503, {}, b"", Retry(status=503, reason="HTTP 503")),
        (409, {}, b"", Retry(status=409, reason="HTTP 409")),
        (200, {}, b"not json", Retry(status=200, reason="answer does not list every message")),
        (200, {}, b'{"messages": [{"id": "x"}]}', Retry(status=200, reason="answer does not list every message")),
    ],
)
def test_generic_status_answers(status, headers, body, expected) -> None:
    assert generic.parse(status, headers, body, 2, G, NOW) == expected


def test_generic_4xx_refuses_every_message_with_the_carriers_code() -> None:
    body = b'{"error": {"code": 1002, "name": "sender not allowed"}}'
    assert generic.parse(400, {}, body, 2, G, NOW) == Results([Refused(code=1002, name="sender not allowed")] * 2)
    assert generic.parse(401, {}, b"", 1, G, NOW) == Results([Refused(code=401, name="HTTP 401")])


def test_retry_after_forms() -> None:
    assert base.retry_after("0", NOW) == 0.0
    assert base.retry_after("-1", NOW) is None
    assert base.retry_after("soon", NOW) is None
    assert base.retry_after("Tue, 14 Nov 2023 22:13:00 GMT", NOW) == 0.0  # in the past: now


def test_generic_callbacks_are_signed_and_parsed() -> None:
    body = json.dumps({"receipts": [{"id": "a1", "status": "delivered"}, {"id": "a2", "status": "failed", "error_code": 30003}],
                       "inbound": [{"from": "+447911000001", "to": "SLUICE", "text": "STOP"}]}).encode()  # fmt: skip
    headers = generic.sign("ignored", body, "s3cret", NOW)
    assert generic.verify("", headers, body, "s3cret", NOW + 10)
    assert not generic.verify("", headers, body + b" ", "s3cret", NOW)  # tampered
    assert not generic.verify("", headers, body, "other", NOW)
    assert not generic.verify("", headers, body, "s3cret", NOW + 301)  # replayed too late
    assert not generic.verify("", {}, body, "s3cret", NOW)
    items = generic.parse_callback(headers, body)
    assert [type(i).__name__ for i in items] == ["CallbackReceipt", "CallbackReceipt", "CallbackInbound"]
    assert items[1].state == "undeliverable" and items[1].error_code == 30003
    assert items[2].text == "STOP"


def test_twilio_builds_one_form_per_message() -> None:
    ds = [make_dispatch(1, "héllo", message_id=7, media=("https://m.example/a.png",)), make_dispatch(2)]
    reqs = twilio.build(ds, T, "tok")
    assert [r.refs for r in reqs] == [(1,), (2,)]
    r = reqs[0]
    assert r.url == "https://api.example/2010-04-01/Accounts/AC123/Messages.json"
    headers = dict(r.headers)
    assert headers["authorization"] == "Basic " + base64.b64encode(b"AC123:tok").decode()
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qs(r.body.decode())
    assert form == {"To": ["+447911000001"], "From": ["Sluice"], "Body": ["héllo"],
                    "MediaUrl": ["https://m.example/a.png"], "StatusCallback": ["https://gw.example/cb/t"]}  # fmt: skip
    assert reqs[0].idempotency_key != reqs[1].idempotency_key


def test_twilio_answers() -> None:
    assert twilio.parse(201, {}, b'{"sid": "SM1", "status": "queued"}', 1, T, NOW) == Results([Accepted("SM1")])
    err = b'{"code": 21211, "message": "The \'To\' number is not valid.", "status": 400}'
    assert twilio.parse(400, {}, err, 1, T, NOW) == Results([Refused(code=21211, name="The 'To' number is not valid.")])
    assert twilio.parse(429, {"retry-after": "2"}, b"", 1, T, NOW) == Throttle(2.0)
    assert twilio.parse(500, {}, b"", 1, T, NOW) == Retry(status=500, reason="HTTP 500")
    assert twilio.parse(201, {}, b"{}", 1, T, NOW) == Retry(status=201, reason="answer has no sid")


def test_twilio_callbacks_sign_url_and_sorted_params() -> None:
    url = "https://gw.example/cb/t?x=1"
    body = b"MessageStatus=undelivered&MessageSid=SM1&ErrorCode=30003"
    headers = twilio.sign(url, body, "tok", NOW)
    assert twilio.verify(url, headers, body, "tok", NOW)
    assert not twilio.verify(url + "2", headers, body, "tok", NOW)  # the URL is signed too
    assert not twilio.verify(url, headers, body.replace(b"30003", b"0"), "tok", NOW)
    # The order of the parameters on the wire does not matter: they are sorted by name.
    assert twilio.verify(url, headers, b"ErrorCode=30003&MessageSid=SM1&MessageStatus=undelivered", "tok", NOW)
    (receipt,) = twilio.parse_callback(headers, body)
    assert receipt.carrier_id == "SM1" and receipt.state == "undeliverable" and receipt.error_code == 30003
    (mo,) = twilio.parse_callback({}, b"From=%2B447911000001&To=SLUICE&Body=STOP&SmsStatus=received&NumMedia=1&MediaUrl0=u")
    assert (mo.sender, mo.text, mo.media) == ("+447911000001", "STOP", ("u",))
    with pytest.raises(ValueError):
        twilio.parse_callback({}, b"nonsense=1")


def test_profiles_are_sans_io() -> None:
    """Profiles and settings import no event loop, socket, HTTP client or clock."""
    import ast
    from pathlib import Path

    root = Path(generic.__file__).parent.parent
    forbidden = {"anyio", "trio", "asyncio", "socket", "httpx", "time", "uvloop", "datetime"}
    for path in [*root.joinpath("profiles").glob("*.py"), root / "settings.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & forbidden, f"{path.name}:{node.lineno} imports {names & forbidden}"


def test_a_status_the_profile_does_not_know_is_kept_for_the_stateless_rule() -> None:
    from gateway.core.model import FinalState
    from gateway.core.receipts import Progressed, Reconciler

    (r,) = generic.parse_callback({}, b'{"receipts": [{"id": "a", "status": "Bounced", "error_code": 7}]}')
    assert (r.state, r.word, r.error_code) == (None, "Bounced", 7)
    (t,) = twilio.parse_callback({}, b"MessageSid=SM1&MessageStatus=teleported")
    assert (t.state, t.word, t.error_code) == (None, "teleported", None)
    rc = Reconciler()
    rc.submitted(1, "h", ["a"], 1, now=0)
    rc.submitted(2, "h", ["SM1"], 1, now=0)
    (end,) = rc.receipt("h", r.carrier_id, r.state, r.error_code, 1.0, word=r.word)
    assert (end.state, end.error_code, end.reason) == (FinalState.UNDELIVERED, 7, "receipt without state (stat:Bounced) err:7")
    (p,) = rc.receipt("h", t.carrier_id, t.state, t.error_code, 1.0, word=t.word)
    assert isinstance(p, Progressed)
