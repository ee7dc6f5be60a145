"""Sign-up tools: the pure SMS opt-in decisions (hypothesis: every decision is a valid ledger step), the
hosted form and pop-up (the disclosure recorded is the shop's own legal text, with the visitor's
evidence; double opt-in by SMS requested with an idempotent key), the social sms: link and its QR code,
and CSV import through the API (a bad row refuses the file, naming row and column)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import TestClient

from campaigns.config import FormSettings, loads
from campaigns.core import consent
from campaigns.core.forms import form_page, legal_text, popup_script, sms_link
from campaigns.core.signup import decide_inbound
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.link import GatewayLink
from campaigns.store import open_store

KW, YES = ["JOIN"], ["Y", "YES"]


@pytest.mark.parametrize("kind,text,state,action,reply", [
    ("message", "JOIN", "none", "opt_in", "confirm"),
    ("message", " join! ", "none", "opt_in", "confirm"),
    ("message", "ＪＯＩＮ", "none", "opt_in", "confirm"),  # full-width, emoji, spaced: folded as the gateway folds
    ("message", "Join 😀", "none", "opt_in", "confirm"),
    ("message", "J O I N", "none", "opt_in", "confirm"),
    ("message", "Ｙ", "pending", "confirm", "welcome"),
    ("message", "YES 👍", "pending", "confirm", "welcome"),
    ("message", "join us?", "none", None, None),
    ("message", "JOIN", "revoked", "re_opt_in", "confirm"),
    ("message", "JOIN", "pending", None, "confirm"),
    ("message", "JOIN", "confirmed", None, None),
    ("message", "y", "pending", "confirm", "welcome"),
    ("opt_in", "YES", "pending", "confirm", "welcome"),
    ("message", "Y", "none", None, None),
    ("message", "Y", "revoked", None, None),
    ("opt_in", "START", "revoked", "re_opt_in", "confirm"),
    ("opt_out", "STOP", "confirmed", "opt_out", None),
    ("message", "don't stop sending me deals", "confirmed", None, None),
    ("message", "I want to join later", "none", None, None),
    ("help", "HELP", "pending", None, None),
])  # fmt: skip
def test_inbound_decisions(kind: str, text: str, state: str, action: str | None, reply: str | None) -> None:
    d = decide_inbound(kind=kind, text=text, state=state, keywords=KW, confirm_words=YES)  # type: ignore[arg-type]
    assert (d.action, d.reply) == (action, reply)


@given(st.sampled_from(["opt_out", "opt_in", "help", "message"]), st.text(max_size=30) | st.sampled_from(KW + YES),
       st.sampled_from(["none", "pending", "confirmed", "revoked"]))  # fmt: skip
def test_every_decision_is_a_valid_ledger_step(kind: str, text: str, state: str) -> None:
    d = decide_inbound(kind=kind, text=text, state=state, keywords=KW, confirm_words=YES)  # type: ignore[arg-type]
    if d.action is not None:
        assert consent.step(state, d.action) is not None  # type: ignore[arg-type]
    if d.action == "confirm":
        assert state == "pending"  # only a pending opt-in is ever confirmed
    if kind == "opt_out":
        assert d.action == "opt_out"


def test_sms_link_and_pages_escape_text() -> None:
    assert sms_link("+14155550100", "JOIN") == "sms:+14155550100?&body=JOIN"
    assert sms_link("12345", "join vip") == "sms:12345?&body=join%20vip"
    form = FormSettings(title="<b>10%</b> off</script>", text="a & b", legal_text="Texts from {shop}. STOP to end.")
    page = form_page(form, shop="Acme & Co", action="https://x/signup/acme/subscribe")
    assert "<b>10%</b>" not in page and "&lt;b&gt;10%&lt;/b&gt;" in page and "Texts from Acme &amp; Co." in page
    js = popup_script(form, tenant="acme", shop="Acme", action="https://x/s")
    assert "</script>" not in js and "<\\/script>" in js and '"every_days":7.0' in js
    assert legal_text(form, "Acme") == "Texts from Acme. STOP to end."


CONFIG = """
[campaigns]
public_url = "https://sms.acme.example"
[[campaigns.tenants]]
name = "acme"
key_env = "CK"
default_region = "FR"
[campaigns.tenants.signup]
shop_name = "Acme"
sender = "+33612000000"
[campaigns.tenants.form]
legal_version = "pop-3"
[[campaigns.tenants]]
name = "beta"
key_env = "CKB"
"""


class FakeGateway(GatewayClient):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "k")
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kw: Any) -> str:  # type: ignore[override]
        self.sent.append(kw)
        return "m"


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, Audience, FakeGateway]]:
    settings = loads(CONFIG)
    assert settings is not None
    audience = Audience(open_store("sqlite:///:memory:"), settings, time.time)
    gw = FakeGateway()
    app = create_app(audience, tenant_keys(settings, {"CK": "key-a", "CKB": "key-b"}),
                     link=GatewayLink(audience, {"acme": gw}))  # fmt: skip
    with TestClient(app) as c:
        yield c, audience, gw


def test_form_opt_in_records_the_shop_legal_text_and_evidence(setup: tuple[TestClient, Audience, FakeGateway]) -> None:
    c, audience, gw = setup
    body = {"phone": "06 12 34 56 78", "legal_version": "pop-3", "form_id": "popup", "page_url": "https://acme/p/1",
            "email": "ana@example.com"}  # fmt: skip
    r = c.post("/signup/acme/subscribe", content=__import__("json").dumps(body), headers={
        "content-type": "text/plain;charset=UTF-8", "user-agent": "Browser/1.0"})  # fmt: skip
    assert r.status_code == 202 and r.json()["status"] == "pending", r.text
    assert r.headers["access-control-allow-origin"] == "*"
    sub = audience.store.subscriber_by_phone("acme", "+33612345678")
    assert sub is not None and sub.consent == "pending" and sub.email == "ana@example.com" and sub.signup_source == "popup"
    [entry] = audience.store.ledger("acme", sub.id)
    text = legal_text(audience.tenants["acme"].form, "Acme")
    assert (entry.action, entry.source, entry.disclosure_text, entry.disclosure_version) == ("opt_in", "popup", text, "pop-3")
    assert entry.disclosure_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert (entry.evidence.user_agent, entry.evidence.page_url, entry.evidence.form_id) == ("Browser/1.0", "https://acme/p/1", "popup")
    assert entry.evidence.ip  # the client's address
    [sent] = gw.sent
    assert sent["to"] == "+33612345678" and "reply Y" in sent["body"] and sent["key"] == f"campaigns:acme:confirm:entry-{entry.id}"
    # Submitted again: no second opt-in, no second text.
    r = c.post("/signup/acme/subscribe", json=body)
    assert r.status_code == 202 and len(audience.store.ledger("acme", sub.id)) == 1 and len(gw.sent) == 1
    # An HTML form post (no JavaScript) works too, and answers a page.
    r = c.post("/signup/acme/subscribe", data={"phone": "+33612345679", "legal_version": "pop-3"})
    assert r.status_code == 202 and r.headers["content-type"].startswith("text/html") and "reply Y" in r.text
    other = audience.store.subscriber_by_phone("acme", "+33612345679")
    assert other is not None and audience.store.ledger("acme", other.id)[0].source == "form"


@pytest.mark.parametrize("body,code,field", [
    ({"phone": "+33612345678", "legal_version": "pop-2"}, "stale_form", "legal_version"),
    ({"phone": "123", "legal_version": "pop-3"}, "invalid_phone", "phone"),
    ({"phone": "+33612345678", "legal_version": "pop-3", "email": "nope"}, "invalid_field", "email"),
    ({"legal_version": "pop-3"}, "invalid_field", "phone"),  # a missing field is named
])  # fmt: skip
def test_form_bad_input(setup: tuple[TestClient, Audience, FakeGateway], body: dict, code: str, field: str | None) -> None:
    c, audience, gw = setup
    r = c.post("/signup/acme/subscribe", json=body)
    assert r.status_code == 422 and r.json()["code"] == code and r.json()["field"] == field, r.text
    assert audience.store.subscribers("acme", after=0, limit=10) == [] and gw.sent == []


def test_form_is_rate_limited_per_ip(setup: tuple[TestClient, Audience, FakeGateway]) -> None:
    """A public form that texts any number is an SMS-pumping target: at most max_per_ip_per_hour."""
    c, audience, gw = setup
    codes = [c.post("/signup/acme/subscribe", json={"phone": f"+336123456{i:02d}", "legal_version": "pop-3"}).status_code
             for i in range(12)]  # fmt: skip
    assert codes == [202] * 10 + [429] * 2 and len(gw.sent) == 10
    r = c.post("/signup/acme/subscribe", json={"phone": "+33612345699", "legal_version": "pop-3"})
    assert r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) > 0


@given(st.lists(st.floats(0, 10_000), max_size=60), st.integers(1, 5), st.floats(1, 1000))
def test_window_limit_never_exceeds(times: list[float], limit: int, window: float) -> None:
    from campaigns.core.limits import WindowLimit

    w, admitted = WindowLimit(limit, window), []
    for t in sorted(times):
        if w.allow("ip", t):
            admitted.append(t)
    for t in admitted:  # in any window, at most `limit` admitted
        assert sum(1 for u in admitted if t - window < u <= t) <= limit
    if len(times) <= limit:
        assert len(admitted) == len(times)


def test_pages_qr_and_tools(setup: tuple[TestClient, Audience, FakeGateway]) -> None:
    c, _, _ = setup
    page = c.get("/signup/acme/form")
    assert page.status_code == 200 and 'action="https://sms.acme.example/signup/acme/subscribe"' in page.text
    assert 'value="pop-3"' in page.text
    js = c.get("/signup/acme/popup.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    svg = c.get("/signup/acme/qr.svg")
    assert svg.status_code == 200 and svg.text.lstrip().startswith("<?xml") and "<svg" in svg.text
    assert c.get("/signup/nope/form").json()["code"] == "shop_not_found"
    assert c.get("/signup/beta/qr.svg").status_code == 404  # no sender configured
    tools = c.get("/v1/signup/tools", headers={"authorization": "Bearer key-a"}).json()
    assert tools["sms_link"] == "sms:+33612000000?&body=JOIN" and tools["qr_svg_url"].endswith("/signup/acme/qr.svg")
    assert tools["popup_script"] == '<script async src="https://sms.acme.example/signup/acme/popup.js"></script>'


def test_csv_import_through_the_api(setup: tuple[TestClient, Audience, FakeGateway]) -> None:
    c, audience, _ = setup
    h = {"authorization": "Bearer key-a", "content-type": "text/csv"}
    bad = "phone,birthday\n0612345678,1990-01-01\n0612345679,1990-02-30x\n"
    r = c.post("/v1/subscribers/import", content=bad, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "rows[1].birthday", r.text
    assert audience.store.subscribers("acme", after=0, limit=10) == []  # nothing half-imported
    r = c.post("/v1/subscribers/import", content="phone,colour\n0612345678,red\n", headers=h)
    assert r.status_code == 422 and r.json()["code"] == "unknown_field" and r.json()["field"] == "colour"
    good = ("phone,first_name,consent,consent_at,disclosure_text,disclosure_version,page_url\n"
            "0612345678,Ana,confirmed,1700000000,Text club,v1,https://acme/\n0612345679,Bo,confirmed,,,,\n")  # fmt: skip
    r = c.post("/v1/subscribers/import?file_name=legacy.csv", content=good.encode("utf-8-sig"), headers=h)
    assert r.status_code == 201 and r.json() == {"rows": 2, "created": 2, "consented": 1, "unproven": 1,
                                                 "skipped_revoked": 0}, r.text  # fmt: skip
    ana = audience.store.subscriber_by_phone("acme", "+33612345678")
    assert ana is not None and ana.consent == "confirmed"
    assert audience.store.subscriber_by_phone("beta", "+33612345678") is None


# Sign-up numbers as people type them in many countries (the shop's default region is FR): mobiles in
# any notation are taken; landlines, toll-free, premium-rate and shared-cost numbers (a typo, or an SMS
# pumping bot's premium numbers) are a 422 `not_mobile` naming `phone`, and no confirmation is texted.
FORM_NUMBERS = [  # (typed, canonical or the refusal's code)
    ("06 12 34 56 78", "+33612345678"), ("＋44 7911 123456", "+447911123456"), ("+49 151 12345678", "+4915112345678"),
    ("+1 (415) 555-2671", "+14155552671"), ("+86 138 0013 8000", "+8613800138000"), ("+886 912 345 678", "+886912345678"),
    ("+40 712 345 678", "+40712345678"), ("+٩٧١ ٥٠ ١٢٣ ٤٥٦٧", "+971501234567"), ("+91 98765 43210", "+919876543210"),
    ("+55 11 98765-4321", "+5511987654321"), ("+81 90-1234-5678", "+819012345678"), ("0033 6 12 34 56 79", "+33612345679"),
    ("01 23 45 67 89", "not_mobile"), ("+44 20 7946 0958", "not_mobile"), ("+1 800 555 0199", "not_mobile"),
    ("08 99 12 34 56", "not_mobile"), ("+44 800 123 4567", "not_mobile"), ("+44 90 1234 5678", "not_mobile"),
    ("+86 10 1234 5678", "not_mobile"), ("+40 21 234 5678", "not_mobile"), ("123", "invalid_phone"),
]  # fmt: skip


def test_form_numbers_of_many_countries() -> None:
    settings = loads(CONFIG.replace('legal_version = "pop-3"', 'legal_version = "pop-3"\nmax_per_ip_per_hour = 1000'))
    assert settings is not None
    audience, gw = Audience(open_store("sqlite:///:memory:"), settings, time.time), FakeGateway()
    app = create_app(audience, tenant_keys(settings, {"CK": "key-a", "CKB": "key-b"}), link=GatewayLink(audience, {"acme": gw}))
    taken = []
    with TestClient(app) as c:
        for typed, want in FORM_NUMBERS:
            r = c.post("/signup/acme/subscribe", json={"phone": typed, "legal_version": "pop-3"})
            if want.startswith("+"):
                assert r.status_code == 202, (typed, r.text)
                taken.append(want)
            else:
                assert r.status_code == 422 and (r.json()["code"], r.json()["field"]) == (want, "phone"), (typed, r.text)
    stored = sorted(s.phone for s in audience.store.subscribers("acme", after=0, limit=100))
    assert stored == sorted(taken) and sorted(m["to"] for m in gw.sent) == sorted(taken)
