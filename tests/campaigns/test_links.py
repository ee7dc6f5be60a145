"""Short links (campaigns/core/links.py): URL finding on a corpus of awkward texts and on random ones,
the 22-character limit, keyed codes with collision handling, UTM merging, and bots that are not clicks."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.links import (
    ALPHABET,
    ClickTally,
    Hit,
    LinkError,
    classify_hit,
    code_length,
    find_urls,
    mint_code,
    shorten,
    with_utm,
)

CORPUS = [
    ("Shop now: https://shop.example/sale.", ["https://shop.example/sale"]),
    ("Shop now (https://shop.example/sale)!", ["https://shop.example/sale"]),
    ("see https://en.wikipedia.org/wiki/Foo_(bar)), ok", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
    ("two: http://a.co/x?y=1&z=2, and https://b.io/p#frag;", ["http://a.co/x?y=1&z=2", "https://b.io/p#frag"]),
    ("点击https://x.cn/a领取优惠。", ["https://x.cn/a"]),
    ("【品牌】链接：https://x.cn/b，谢谢", ["https://x.cn/b"]),
    ("quoted \"https://q.com/a\" and 'https://q.com/b'", ["https://q.com/a", "https://q.com/b"]),
    ("<https://angle.com/x>", ["https://angle.com/x"]),
    ("Café: https://café.fr/menü?x=é …", ["https://café.fr/menü?x=é"]),
    ("www.shop.com/deal! now", ["www.shop.com/deal"]),
    ("mail me at bob@www.shop.com", []),
    ("https:// nothing here, https://nodot", []),
    ("end https://e.com/a...", ["https://e.com/a"]),
    ("Visit HTTPS://UPPER.COM/X.", ["HTTPS://UPPER.COM/X"]),
    ("line\nhttps://n.com/a\nnext", ["https://n.com/a"]),
    ("« https://x.fr/a »", ["https://x.fr/a"]),
    ("«https://x.fr/b»", ["https://x.fr/b"]),
    ("voir\u00a0https://x.fr/c\u202f!", ["https://x.fr/c"]),
    ("zero\u200bhttps://z.com/a\u200bwidth", ["https://z.com/a"]),
    ("port https://x.com:8443/a,b?c=1,", ["https://x.com:8443/a,b?c=1"]),
    ("ip http://10.0.0.1/x.", ["http://10.0.0.1/x"]),
    ("[link](https://md.com/a)", ["https://md.com/a"]),
    # Internationalised hosts (IDNA): Cyrillic, Arabic, Hangul, kana, and ideographs (one rule: an ideographic
    # host's URL runs to the next space or punctuation; an ASCII host's ends at the first ideograph).
    ("См. https://пример.рф/скидки.", ["https://пример.рф/скидки"]),
    ("زوروا https://مثال.إختبار/عرض!", ["https://مثال.إختبار/عرض"]),
    ("세일 https://예시.테스트/경로 지금", ["https://예시.테스트/경로"]),
    ("セール https://ドメイン.テスト/パス。", ["https://ドメイン.テスト/パス"]),
    ("Sale https://例子.中国/路径 now", ["https://例子.中国/路径"]),
    ("访问https://例子.中国/路径，谢谢", ["https://例子.中国/路径"]),
    ("点击https://例子.中国领取：", ["https://例子.中国领取"]),
    ("网址：https://例子.中国。", ["https://例子.中国"]),
    ("https://日本.jp/漢字?q=東京#上", ["https://日本.jp/漢字?q=東京#上"]),
    ("点击https://x.cn领取", ["https://x.cn"]),
    ("点击https://x.cn/路径", ["https://x.cn/"]),
    ("see www.пример.рф, then", ["www.пример.рф"]),
]


@pytest.mark.parametrize(("text", "urls"), CORPUS)
def test_find_urls_corpus(text: str, urls: list[str]) -> None:
    found = find_urls(text)
    assert [u for _s, _e, u in found] == urls
    for start, end, url in found:
        assert text[start:end] == url


path_chars = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_/=&?%", min_size=0, max_size=20)
hosts = st.from_regex(r"[a-z]{1,10}\.(com|io|cn|co\.uk)", fullmatch=True)
urls_st = st.builds(lambda h, p: f"https://{h}/{p}".rstrip("?"), hosts, path_chars)
filler = st.sampled_from([" ", ". ", ", ", "! ", " (", ") ", "。", "，", "点击", " 拒收 ", "\n", ": "])


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(filler, urls_st), min_size=1, max_size=4), filler)
def test_find_urls_recovers_each_url_between_punctuation(pieces: list[tuple[str, str]], tail: str) -> None:
    text = "".join(f + u for f, u in pieces) + tail
    assert [u for _s, _e, u in find_urls(text)] == [u for _f, u in pieces]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(filler, urls_st), min_size=0, max_size=4), st.text(max_size=30))
def test_shorten_replaces_every_url_and_keeps_the_rest(pieces: list[tuple[str, str]], noise: str) -> None:
    text = "".join(f + u for f, u in pieces) + " " + noise.replace("http", "htp").replace("www.", "ww.")
    out = shorten(text, domain="sl.ui", key=b"secret", scope="camp-1:42")
    assert len(out.links) == len(find_urls(text))
    assert [link.target for link in out.links] == [u for _s, _e, u in find_urls(text)]
    for link in out.links:
        assert len(link.url) <= 22
        assert link.url == f"https://sl.ui/{link.code}"
        assert set(link.code) <= set(ALPHABET)
    assert len({link.code for link in out.links}) == len(out.links)
    # Nothing but the URLs changed.
    rebuilt = out.text
    for link in out.links:
        rebuilt = rebuilt.replace(link.url, link.target, 1)
    assert rebuilt == text


@pytest.mark.parametrize("domain", ["sl.ui", "bit.ly", "t.co", "go.shop", "sms.io"])
def test_link_fits_22_characters_on_usual_short_domains(domain: str) -> None:
    out = shorten("go https://example.com/a/very/long/path?with=query", domain=domain, key=b"k", scope="c:1")
    assert len(out.links[0].url) <= 22
    assert len(out.links[0].code) >= 5


def test_domain_too_long_is_a_clear_error() -> None:
    with pytest.raises(LinkError) as err:
        code_length("links.myshop.example")
    assert err.value.code == "domain_too_long"
    assert code_length("links.myshop.example", max_length=40) == 8


def test_codes_are_deterministic_per_scope_and_differ_across_recipients() -> None:
    a1 = shorten("https://x.com/a", domain="sl.ui", key=b"k", scope="c:1").links[0].code
    a2 = shorten("https://x.com/a", domain="sl.ui", key=b"k", scope="c:1").links[0].code
    b = shorten("https://x.com/a", domain="sl.ui", key=b"k", scope="c:2").links[0].code
    other_key = shorten("https://x.com/a", domain="sl.ui", key=b"k2", scope="c:1").links[0].code
    assert a1 == a2  # a relaunch after a crash mints the same link
    assert len({a1, b, other_key}) == 3


def test_collision_moves_to_the_next_code_and_exhaustion_is_an_error() -> None:
    first = mint_code(b"k", "s", 6)
    taken = {first}
    second = mint_code(b"k", "s", 6, taken.__contains__)
    assert second != first and len(second) == 6
    with pytest.raises(LinkError) as err:
        mint_code(b"k", "s", 6, lambda _c: True)
    assert err.value.code == "code_space_exhausted"


def test_shorten_skips_codes_the_store_already_holds() -> None:
    preset = {mint_code(b"k", "c:0", 8)}
    out = shorten("https://x.com/a https://x.com/b", domain="sl.ui", key=b"k", scope="c", exists=preset.__contains__)
    assert out.links[0].code not in preset
    assert out.links[0].code == mint_code(b"k", "c:0", 8, preset.__contains__)
    assert len({link.code for link in out.links}) == 2


@pytest.mark.parametrize(
    ("url", "expected_query"),
    [
        ("https://a.com/p", [("utm_source", "sms"), ("utm_campaign", "spring")]),
        ("https://a.com/p?x=1", [("x", "1"), ("utm_source", "sms"), ("utm_campaign", "spring")]),
        ("https://a.com/p?utm_source=me&x=1", [("utm_source", "me"), ("x", "1"), ("utm_campaign", "spring")]),
        ("https://a.com/p?utm_source=a&utm_source=b", [("utm_source", "a"), ("utm_campaign", "spring")]),
        ("https://a.com/p?q=a%20b&flag", [("q", "a b"), ("flag", ""), ("utm_source", "sms"), ("utm_campaign", "spring")]),
    ],
)
def test_utm_merge(url: str, expected_query: list[tuple[str, str]]) -> None:
    out = with_utm(url, {"utm_source": "sms", "utm_campaign": "spring"})
    assert parse_qsl(urlsplit(out).query, keep_blank_values=True) == expected_query


def test_utm_merge_keeps_fragment_and_raw_encoding() -> None:
    out = with_utm("https://a.com/p?q=a%20b&flag#top", {"utm_source": "sms"})
    assert out == "https://a.com/p?q=a%20b&flag&utm_source=sms#top"
    with pytest.raises(LinkError):
        with_utm("https://a.com", {"source": "x"})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["utm_source", "utm_medium", "x", "y", "utm_campaign"]), st.text("ab1 &=%", max_size=4)), max_size=6),
    st.dictionaries(st.sampled_from(["utm_source", "utm_medium", "utm_campaign", "utm_content"]), st.text("abc", min_size=1, max_size=3)),
)
def test_utm_never_duplicates_and_never_drops_a_parameter(existing: list[tuple[str, str]], utm: dict[str, str]) -> None:
    from urllib.parse import urlencode

    url = "https://a.com/p" + ("?" + urlencode(existing) if existing else "")
    pairs = parse_qsl(urlsplit(with_utm(url, utm)).query, keep_blank_values=True)
    names = [k for k, _v in pairs]
    assert len([n for n in names if n.startswith("utm_")]) == len({n for n in names if n.startswith("utm_")})
    for k, v in existing:
        if not k.startswith("utm_"):
            assert (k, v) in pairs
    for k in utm:
        assert k in names


BOTS = [
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "WhatsApp/2.23.20.0 A",
    "Twitterbot/1.0",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
    "Mozilla/5.0 (compatible; Applebot/0.1; +http://www.apple.com/go/applebot)",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.4.0",
    "Wget/1.21.4",
    "python-requests/2.31.0",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
    "SkypeUriPreview Preview/0.5",
    "",
    None,
]
PEOPLE = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.42",
]


@pytest.mark.parametrize("ua", BOTS)
def test_preview_fetchers_and_scripts_are_not_clicks(ua: str | None) -> None:
    assert classify_hit(Hit(code="a", method="GET", user_agent=ua, at=1000.0), delivered_at=0.0) == "bot"


@pytest.mark.parametrize("ua", PEOPLE)
def test_people_are_clicks_but_not_head_or_too_soon(ua: str) -> None:
    assert classify_hit(Hit(code="a", method="GET", user_agent=ua, at=1000.0), delivered_at=0.0) == "click"
    assert classify_hit(Hit(code="a", method="HEAD", user_agent=ua, at=1000.0), delivered_at=0.0) == "head"
    assert classify_hit(Hit(code="a", method="GET", user_agent=ua, at=1009.999), delivered_at=1000.0) == "too_soon"
    assert classify_hit(Hit(code="a", method="GET", user_agent=ua, at=1010.0), delivered_at=1000.0) == "click"
    assert classify_hit(Hit(code="a", method="get", user_agent=ua, at=5.0), delivered_at=None) == "click"
    # The receipt's time can trail the handset's preview fetch: a few seconds before it is too soon,
    # minutes before it (a late receipt) is a person.
    assert classify_hit(Hit(code="a", method="GET", user_agent=ua, at=995.0), delivered_at=1000.0) == "too_soon"
    assert classify_hit(Hit(code="a", method="GET", user_agent=ua, at=700.0), delivered_at=1000.0) == "click"


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(["click", "bot", "head", "too_soon"])), max_size=40))
def test_unique_clicks_count_codes_once_and_total_counts_every_human_hit(hits: list[tuple[str, str]]) -> None:
    tally = ClickTally().add_all(hits)  # type: ignore[arg-type]
    humans = [c for c, v in hits if v == "click"]
    assert tally.total == len(humans)
    assert tally.unique == len(set(humans))
    assert tally.bots == len(hits) - len(humans)
    assert tally.unique <= tally.total


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(filler, urls_st), max_size=4), st.binary(min_size=1, max_size=8), st.text(max_size=8))
def test_a_preview_with_any_key_has_the_length_of_the_real_send(pieces: list[tuple[str, str]], key: bytes, scope: str) -> None:
    """Codes have a fixed length per domain and only base62 characters (GSM-7), so the gateway's
    preview of a text shortened with a placeholder key measures exactly what will be sent."""
    text = "".join(f + u for f, u in pieces)
    real = shorten(text, domain="go.shop", key=b"tenant-secret", scope="camp:1")
    preview = shorten(text, domain="go.shop", key=key, scope=scope)
    assert len(real.text) == len(preview.text)
    assert all(c in ALPHABET for link in real.links for c in link.code)


@pytest.mark.parametrize("text", ["go https://[abc.com/x now", "go https://shop.com:99999/a now",
                                  "go https://пример..рф/x now", "go https://" + "я" * 70 + ".рф now"])
def test_a_malformed_url_is_a_clear_error_at_preview(text: str) -> None:
    with pytest.raises(LinkError) as err:
        shorten(text, domain="sl.ui", key=b"k", scope="c")
    assert err.value.code == "bad_url"
    with pytest.raises(LinkError):
        with_utm("https://[abc/x", {"utm_source": "sms"})
