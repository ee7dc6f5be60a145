"""Short links made from the URLs real texts hold, launched through a fake gateway and followed through
the redirect (in front of the framework and through its routes): several links, the same URL twice,
parentheses, query strings, fragments, trailing punctuation, a Unicode path and host. Each text holds
one short link per URL, the punctuation stays in the text, and each redirect is a 302 whose Location
is ASCII (a Unicode host in IDNA, the rest percent-encoded) and is the URL as written plus the UTM."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest

from campaigns.config import loads
from campaigns.core.events import Profile
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.service.campaign_api import campaign_handlers, redirect_front
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.service.tracking import Tracker
from campaigns.store import open_store
from campaigns.store.base import NewConsent
from fake_gateway import FakeGateway

pytestmark = pytest.mark.anyio
KEY = "acme-campaigns-key-0123456789"
T0 = 1_767_000_000.0
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"

TEMPLATE = ("New: https://shop.example/wiki/Boot_(2026)), see (https://shop.example/a?b=1&c=x%20y#frag). "
            "Été: https://shop.example/été/chaussure?taille=é! Also https://bücher.example/ü… "
            "Again https://shop.example/a?b=1&c=x%20y#frag.")  # fmt: skip
# The URLs as written, in order (the trailing ")", ".", "!", "…" are the sentence's, not the URL's).
URLS = ["https://shop.example/wiki/Boot_(2026)", "https://shop.example/a?b=1&c=x%20y#frag",
        "https://shop.example/été/chaussure?taille=é", "https://bücher.example/ü", "https://shop.example/a?b=1&c=x%20y#frag"]  # fmt: skip
ASCII = ["https://shop.example/wiki/Boot_(2026)", "https://shop.example/a?b=1&c=x%20y", "https://shop.example/%C3%A9t%C3%A9/chaussure?taille=%C3%A9",
         "https://xn--bcher-kva.example/%C3%BC", "https://shop.example/a?b=1&c=x%20y"]  # fmt: skip
# Hosts in other scripts (IDNA), the leftover of the last hunt: Cyrillic, Chinese (an ideographic host runs to
# the next space or punctuation, its path included), Japanese with a kanji path, Arabic; an ASCII host beside
# Chinese text still ends at the first ideograph.
IDN_TEMPLATE = ("Скидки: https://пример.рф/скидки. 访问https://例子.中国/路径，或 https://日本.jp/漢字?q=東京 "
                "زوروا https://مثال.إختبار/عرض! 点击https://x.cn/a领取。")  # fmt: skip
IDN_URLS = ["https://пример.рф/скидки", "https://例子.中国/路径", "https://日本.jp/漢字?q=東京",
            "https://مثال.إختبار/عرض", "https://x.cn/a"]  # fmt: skip
IDN_ASCII = ["https://xn--e1afmkfd.xn--p1ai/%D1%81%D0%BA%D0%B8%D0%B4%D0%BA%D0%B8",
             "https://xn--fsqu00a.xn--fiqs8s/%E8%B7%AF%E5%BE%84", "https://xn--wgv71a.jp/%E6%BC%A2%E5%AD%97?q=%E6%9D%B1%E4%BA%AC",
             "https://xn--mgbh0fb.xn--kgbechtv/%D8%B9%D8%B1%D8%B6", "https://x.cn/a"]  # fmt: skip
CASES = {"latin": (TEMPLATE, URLS, ASCII), "idn": (IDN_TEMPLATE, IDN_URLS, IDN_ASCII)}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_every_url_of_a_real_text_redirects_to_itself_with_utm(tmp_path, case: str) -> None:
    template, urls, asciis = CASES[case]
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    assert settings is not None
    store, now = open_store(f"sqlite:///{tmp_path / 'c.db'}"), [T0]
    clock = lambda: now[0]  # noqa: E731
    gw = FakeGateway()
    la = Launcher(store, {"acme": GatewayClient("http://g", "k", transport=gw.transport())},
                  {"acme": TenantLinks(domain="sl.ui", key=b"s" * 32)}, clock)  # fmt: skip
    tracker = Tracker(la)
    app = create_app(Audience(store, settings, clock), tenant_keys(settings, {}), extra_handlers=campaign_handlers(la, tracker, {}))
    phone = "+447911100001"
    sub, _ = store.put_subscriber("acme", Profile(phone=phone), phone=phone, at=T0 - 99, now=T0 - 99)
    for action in ("opt_in", "confirm"):
        store.record_consent("acme", NewConsent(phone=phone, action=action, source="api", at=T0 - 50), now=T0 - 50)
    camp = await la.create("acme", "S", {"sender": "ACME", "template": template, "utm": {"utm_campaign": "été 26"},
                                         "audience": {"subscribers": [sub.id]}})  # fmt: skip
    await la.launch("acme", camp.id)
    [job] = gw.jobs.values()
    text = job["recipients"][0]["vars"]["body"]
    codes = re.findall(r"https://sl\.ui/([0-9A-Za-z]+)", text)
    assert len(codes) == len(urls) and len(set(codes)) == len(urls), text  # the same URL twice: two links
    if case == "latin":
        assert "(https://sl.ui/" in text and "). " in text and "…" in text and text.endswith(". Reply STOP to opt out")
    else:
        assert "访问https://sl.ui/" in text and "，或 " in text and "领取。" in text and not re.search("[\u4e00-\u9fff]/", text)
    now[0] = T0 + 100
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=redirect_front(app, tracker)), base_url="http://s") as f, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as plain:  # fmt: skip
        for code, url, ascii_ in zip(codes, urls, asciis, strict=True):
            for client in (f, plain):
                r = await client.get(f"/{code}", headers={"user-agent": UA})
                assert r.status_code == 302, (url, client is f, r.status_code, r.text[:300])
                loc = r.headers["location"]
                assert r.status_code == 302 and loc.isascii(), (url, loc)
                parts = urlsplit(loc)
                assert loc.startswith(ascii_ + ("&" if "?" in ascii_ else "?")), (url, loc)
                assert parse_qsl(parts.query)[-1] == ("utm_campaign", "été 26")
                assert unquote(parts.fragment) == urlsplit(url).fragment
    store.close()


async def test_a_name_with_a_link_or_line_breaks_never_becomes_a_short_link_or_new_lines(tmp_path) -> None:
    """Subscribers type their own names (a checkout, a form): a link in one was shortened under the shop's
    domain like the shop's own (an open redirect with the shop's name on it), and a line break added
    lines of the subscriber's choosing to the shop's text. Launched through a fake gateway: the name
    with a link takes the fallback, the line breaks are spaces, and the only link is the shop's."""
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    assert settings is not None
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    gw = FakeGateway()
    la = Launcher(store, {"acme": GatewayClient("http://g", "k", transport=gw.transport())},
                  {"acme": TenantLinks(domain="sl.ui", key=b"s" * 32)}, lambda: T0)  # fmt: skip
    names = {"+447911100001": "Visit https://evil.example/x", "+447911100002": "www.evil.example",
             "+447911100003": "Ann\nYour account is locked:\r\ncall +19005550100\u2028now", "+447911100004": "Zoé"}  # fmt: skip
    ids = []
    for phone, name in names.items():
        sub, _ = store.put_subscriber("acme", Profile(phone=phone, first_name=name), phone=phone, at=T0 - 99, now=T0 - 99)
        for action in ("opt_in", "confirm"):
            store.record_consent("acme", NewConsent(phone=phone, action=action, source="api", at=T0 - 50), now=T0 - 50)
        ids.append(sub.id)
    camp = await la.create("acme", "S", {"sender": "ACME", "template": "Hi {first_name|there}! https://shop.example/a",
                                         "audience": {"subscribers": ids}})  # fmt: skip
    await la.launch("acme", camp.id)
    texts = {r["to"]: r["vars"]["body"] for job in gw.jobs.values() for r in job["recipients"]}
    greet = {to: t.split("!")[0] for to, t in texts.items()}
    assert greet == {"+447911100001": "Hi there", "+447911100002": "Hi there",
                     "+447911100003": "Hi Ann Your account is locked: call +19005550100 now", "+447911100004": "Hi Zoé"}
    for t in texts.values():
        assert "\n" not in t.split(" Reply STOP")[0] and len(re.findall(r"https://sl\.ui/", t)) == 1 and "evil" not in t
    store.close()
