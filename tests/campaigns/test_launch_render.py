"""The launch's rendering shortcut (``TextCache``: each distinct text rendered once, codes spliced
per recipient) gives exactly what rendering every recipient from scratch gives: same text, same
short links, same errors. Random templates whose values and literals run into URLs, CJK punctuation,
signatures and footers, over an audience that repeats some values and not others."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import links, templates
from campaigns.core.model import Subscriber
from campaigns.errors import InvalidInput
from campaigns.service.launch import CampaignSpec, TenantLinks, TextCache, _values, render_for
from campaigns.store.campaign_rows import AudienceRow

TL = TenantLinks(domain="sl.ui", key=b"k" * 32)
# Fragments that make or break URLs, footers and signatures when they meet.
BITS = ["Hi ", " ", ".", "/", "a", "Ana", "https://", "http://x.io", "www.", "shop.example/p?q=1", "，", "。", "领取",
        "(", ")", "Reply STOP to opt out", "【Acme】", "拒收请回复R", "\n", "…", "!", ":", "e.com", "{{", "}}"]
CODES = ["{first_name}", "{first_name|there}", "{first_name|}", "{shop_name}", "{attr.tier|VIP}",
         "{product_offered_url|www.shop.example}", "{discount_code|}"]
value = st.one_of(st.none(), st.sampled_from(BITS), st.lists(st.sampled_from(BITS), min_size=1, max_size=4).map("".join))
template = st.lists(st.one_of(st.sampled_from(BITS), st.sampled_from(CODES)), min_size=1, max_size=8).map("".join)
rules = st.builds(templates.MessageRules, brand=st.sampled_from([None, "Acme"]),
                  signature=st.sampled_from(["always", "first_message", "never"]),
                  footer=st.sampled_from(["always", "first_message", "never"]))  # fmt: skip
person = st.tuples(value, st.sampled_from([None, "en", "zh-CN", "fr"]), st.booleans())


def reference(spec: CampaignSpec, sub: Subscriber, first: bool) -> tuple[str, list[tuple[str, str]]]:
    """Every recipient rendered from scratch: the text and its (code, target) pairs."""
    rendered = templates.render(templates.compile_template(spec.texts()[None]), _values(spec, sub, None), rules=spec.rules,
                                locale=sub.language, first_message=first)  # fmt: skip
    short = links.shorten(rendered.text, domain=TL.domain, key=TL.key, scope=f"7:{sub.id}",
                          exists=lambda c: links.in_range_half(TL.key, c))  # row codes: the tenant's row half
    return short.text, [(link.code, link.target) for link in short.links]


def outcome(fn: Any) -> Any:
    try:
        return fn()
    except InvalidInput as exc:
        return ("error", exc.code)


@settings(max_examples=300, deadline=None)
@given(source=template, shop=value, rules=rules, people=st.lists(person, min_size=1, max_size=12))
def test_the_cached_render_is_the_render_from_scratch(source: str, shop: str | None, rules: templates.MessageRules,
                                                      people: list) -> None:  # fmt: skip
    try:
        templates.compile_template(source)
    except templates.TemplateError:
        return
    spec = CampaignSpec(sender="SHOP", template=source, rules=rules, values={"shop_name": shop} if shop else {})
    compiled = templates.compile_template(source)
    cache = TextCache(spec, limit=5)  # small: the bound is crossed too
    for n, (name, language, first) in enumerate(people * 2):  # each person twice: hits as well as misses
        sub = Subscriber(tenant="acme", id=n % len(people) + 1, phone="+447911100001", first_name=name, language=language,
                         created_at=0.0, consent="confirmed")  # fmt: skip

        def cached() -> tuple[str, list[tuple[str, str]]]:
            text, rows = render_for(None, "acme", spec, 7, sub, compiled, TL, 0.0, first=first, taken=set(),  # type: ignore[arg-type]
                                    exists=lambda _c: False, cache=cache)  # fmt: skip
            return text, [(r.code, r.target) for r in rows]

        assert outcome(cached) == outcome(lambda: reference(spec, sub, first))


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(BITS), max_size=10).map("".join), taken=st.sets(st.sampled_from(["a", "b"])))
def test_splice_of_a_skeleton_is_shorten(text: str, taken: set[str]) -> None:
    kw: dict[str, Any] = {"domain": "sl.ui", "key": b"s", "scope": "1:2"}
    assert outcome(lambda: links.splice(links.skeleton(text), **kw)) == outcome(lambda: links.shorten(text, **kw))


def test_a_too_long_domain_is_the_first_error_with_or_without_urls() -> None:
    for text in ("no link", "see https://[bad"):
        with pytest.raises(links.LinkError) as err:
            links.shorten(text, domain="x" * 20, key=b"s", scope="1")
        assert err.value.code == "domain_too_long"


def test_base62_keeps_the_codes_it_always_minted() -> None:
    # Codes minted before the reduction (digit by digit from the full 256-bit number).
    import hmac

    for scope in ("1:1:0", "7:42:0", "99:123456:3"):
        digest = hmac.digest(b"k" * 32, f"{scope}#0".encode(), "sha256")
        n, digits = int.from_bytes(digest, "big"), []
        for _ in range(8):
            n, r = divmod(n, 62)
            digits.append(links.ALPHABET[r])
        assert links.mint_code(b"k" * 32, scope, 8) == "".join(digits)


# ---- the launch's hot path: TextCache.for_recipient + links.mint_codes + links.fill ------------------

ATTRS = [None, "{}", '{"tier": "gold"}', '{"tier": "https://x.io/t"}', '{"tier": 3, "vip": true}', '{"tier": ""}']


@settings(max_examples=60, deadline=None)
@given(source=template, shop=value, rules=rules, discount=st.sampled_from([None, "SAVE-1", "www.e.com/d"]),
       people=st.lists(st.tuples(value, st.sampled_from([None, "en", "zh-CN"]), st.booleans(), st.sampled_from(ATTRS)),
                       min_size=1, max_size=10))  # fmt: skip
def test_the_launch_hot_path_is_the_render_from_scratch(source: str, shop: str | None, rules: templates.MessageRules,
                                                        discount: str | None, people: list) -> None:  # fmt: skip
    """Keyed by the raw first name, attributes (JSON as stored) and discount code where the
    template reads them, a recipient gets the text and links of rendering it from scratch."""
    try:
        compiled = templates.compile_template(source)
    except templates.TemplateError:
        return
    spec = CampaignSpec(sender="SHOP", template=source, rules=rules, values={"shop_name": shop} if shop else {})
    cache = TextCache(spec, limit=4)
    for n, (name, language, first, attrs) in enumerate(people * 2):
        sid = n % len(people) + 1
        row = AudienceRow(id=sid, phone="+447911100001", first_name=name, time_zone=None, language=language,
                          attributes=attrs)  # fmt: skip
        sub = Subscriber(tenant="acme", id=sid, phone=row.phone, first_name=name, language=language, created_at=0.0,
                         consent="confirmed", attributes=msgspec.json.decode(attrs) if attrs else {})  # fmt: skip

        def fast() -> tuple[str, list[tuple[str, str]]]:
            sk, targets = cache.for_recipient(compiled, row, discount, first)
            codes = links.mint_codes(sk, TL.key, f"7:{sid}", 8, set())  # the launch's own codes: none clash here
            return links.fill(sk, TL.domain, codes), list(zip(codes, targets, strict=True))

        def scratch() -> tuple[str, list[tuple[str, str]]]:
            rendered = templates.render(compiled, _values(spec, sub, discount), rules=spec.rules, locale=language,
                                        first_message=first)  # fmt: skip
            short = links.shorten(rendered.text, domain=TL.domain, key=TL.key, scope=f"7:{sid}")
            return short.text, [(link.code, link.target) for link in short.links]

        assert outcome(fast) == outcome(scratch)


@settings(max_examples=100, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32), length=st.integers(links.MIN_CODE, links.MAX_CODE))
def test_two_digits_a_division_is_base62(digest: bytes, length: int) -> None:
    assert links._base62_fast(digest, length) == links._base62(digest, length)


@settings(max_examples=50, deadline=None)
@given(text=st.lists(st.sampled_from(BITS), max_size=10).map("".join),
       taken=st.sets(st.text(alphabet=links.ALPHABET, min_size=8, max_size=8), max_size=3))
def test_mint_codes_are_the_codes_splice_mints(text: str, taken: set[str]) -> None:
    try:
        sk = links.skeleton(text)
    except links.LinkError:
        return
    # The first code of each URL taken: the next attempt is minted, as splice does.
    first = set(links.mint_codes(sk, b"s", "1:2", 8, set()))
    blocked = taken | first
    ref = links.splice(sk, domain="sl.ui", key=b"s", scope="1:2", exists=blocked.__contains__)
    codes = links.mint_codes(sk, b"s", "1:2", 8, set(blocked))
    assert codes == [link.code for link in ref.links]
    assert links.fill(sk, "sl.ui", codes) == ref.text


@settings(max_examples=50, deadline=None)
@given(lines=st.lists(st.tuples(st.text(max_size=16), st.text(max_size=40), st.text(max_size=20)), max_size=6),
       callback=st.sampled_from([None, "https://c.example/hook"]))  # fmt: skip
def test_a_job_body_is_the_same_bytes_as_lines_of_dicts(lines: list[tuple[str, str, str]], callback: str | None) -> None:
    """The body's bytes are what the Idempotency-Key stands for: built from the frozen rows or from
    their (phone, text, tz), they are the NDJSON of plain dicts, as they always were."""
    from campaigns.service.launch import head_line, job_body, job_body_of
    from campaigns.store.campaign_rows import CampaignRow, RecipientRow

    camp = CampaignRow(id=7, tenant="acme", name="c", definition={}, status="launching", created_at=0.0, updated_at=0.0)
    spec = CampaignSpec(sender="SHOP", template="x")
    rows = [RecipientRow(campaign_id=7, subscriber_id=i, phone=p, variant=None, send_at=1.5, tz=z, text=t, batch=3,
                         idx=i, message_id=None, state="planned", state_at=None) for i, (p, t, z) in enumerate(lines)]
    head = {"from": "SHOP", "template": "{body}", "category": "marketing", "send_at": 1.5, "reference": "campaign:7:batch:3"}
    if callback:
        head["callback_url"] = callback
    enc = msgspec.json.encode
    reference = b"\n".join([enc(head)] + [enc({"to": p, "vars": {"body": t}, "tz": z}) for p, t, z in lines]) + b"\n"
    assert job_body(camp, spec, 3, 1.5, rows, callback) == reference
    assert job_body_of(head_line(camp, spec, 3, 1.5, callback), lines) == reference
