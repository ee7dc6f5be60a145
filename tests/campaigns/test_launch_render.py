"""The launch's rendering shortcut (``TextCache``: each distinct text rendered once, codes spliced
per recipient) gives exactly what rendering every recipient from scratch gives: same text, same
short links, same errors. Random templates whose values and literals run into URLs, CJK punctuation,
signatures and footers, over an audience that repeats some values and not others."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import links, templates
from campaigns.core.model import Subscriber
from campaigns.errors import InvalidInput
from campaigns.service.launch import CampaignSpec, TenantLinks, TextCache, _values, render_for

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
    short = links.shorten(rendered.text, domain=TL.domain, key=TL.key, scope=f"7:{sub.id}")
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
