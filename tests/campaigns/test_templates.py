"""Templates (campaigns/core/templates.py): every shortcode, fallbacks, errors with code, shortcode and
position, and the per-locale signature and opt-out footer under the tenant's rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.templates import (
    KNOWN,
    MessageRules,
    TemplateError,
    check_audience,
    compile_template,
    footer_for,
    render,
    render_body,
    signature_for,
)

FULL = {
    "first_name": "Ana",
    "shop_name": "Acme",
    "product_bought": "Blue Mug",
    "product_offered": "Teapot",
    "product_offered_url": "https://acme.shop/teapot",
    "discount_code": "SAVE10-X7Q",
    "discount_url": "https://acme.shop/d/SAVE10-X7Q",
    "checkout_url": "https://acme.shop/c/123",
    "order_id": 1042,
    "tracking_url": "https://track.example/1042",
    "attributes": {"tier": "gold", "points": 120, "vip": True},
}


def test_seed_002_five_shortcode_campaign_renders_every_value() -> None:
    t = compile_template(
        "Hi {first_name}! Thanks for buying {product_bought} at {shop_name}. "
        "You may like {product_offered}: {product_offered_url}"
    )
    body = render_body(t, FULL)
    assert body == ("Hi Ana! Thanks for buying Blue Mug at Acme. You may like Teapot: https://acme.shop/teapot")


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_every_shortcode_renders_its_value_and_errors_when_missing(name: str) -> None:
    t = compile_template(f"x {{{name}}} y")
    assert render_body(t, FULL) == f"x {FULL[name]} y"
    with pytest.raises(TemplateError) as err:
        render_body(t, {})
    assert (err.value.code, err.value.shortcode, err.value.position) == ("missing_value", name, 2)
    assert render_body(compile_template(f"x {{{name}|fb}} y"), {}) == "x fb y"


def test_custom_attributes_and_their_fallbacks() -> None:
    t = compile_template("{attr.tier}/{attr.points}/{attr.vip}/{ attr.nick | pal }")
    assert render_body(t, FULL) == "gold/120/true/pal"
    with pytest.raises(TemplateError) as err:
        render_body(compile_template("hello {attr.nick}"), FULL)
    assert (err.value.code, err.value.shortcode, err.value.position) == ("missing_value", "attr.nick", 6)


@pytest.mark.parametrize("blank", [None, "", "   ", [], {}])
def test_blank_values_are_missing_never_sent_blank(blank: object) -> None:
    with pytest.raises(TemplateError):
        render_body(compile_template("Hi {first_name}"), {"first_name": blank})
    assert render_body(compile_template("Hi {first_name|there}"), {"first_name": blank}) == "Hi there"
    assert render_body(compile_template("Hi{first_name|}!"), {"first_name": blank}) == "Hi!"


@pytest.mark.parametrize(
    ("source", "code", "position"),
    [
        ("Hi {first_nam}", "unknown_shortcode", 3),
        ("Hi {first_name", "unclosed_shortcode", 3),
        ("Hi {first_name {shop_name}", "unclosed_shortcode", 3),
        ("Hi } there", "stray_brace", 3),
        ("Hi {} there", "empty_shortcode", 3),
        ("Hi { |x} there", "empty_shortcode", 3),
        ("Hi {first_name|a\nb}", "bad_fallback", 3),
        ("Hi {attr.} there", "unknown_shortcode", 3),
        ("Hi {attr.a b}", "unknown_shortcode", 3),
    ],
)
def test_syntax_errors_name_code_and_position(source: str, code: str, position: int) -> None:
    with pytest.raises(TemplateError) as err:
        compile_template(source)
    assert err.value.code == code
    assert err.value.position == position


def test_literal_braces() -> None:
    assert render_body(compile_template("{{name}} is {first_name}; }}"), FULL) == "{name} is Ana; }"
    assert render_body(compile_template("{{ }} {{x|y}} {{}}"), FULL) == "{ } {x|y} {}"


@pytest.mark.parametrize("source", ["Hi {{first_name}}!", "Hi {{ first_name }}", "{{attr.tier|VIP}} perks",
                                    "ok {first_name} then {{ discount_code }}"])  # fmt: skip
def test_a_shortcode_in_doubled_braces_is_an_error_not_its_literal_text(source: str) -> None:
    """Liquid-style tools write ``{{first_name}}``: sent as the literal "{first_name}" to every
    recipient, it is the mistake a preview must catch."""
    with pytest.raises(TemplateError) as err:
        compile_template(source)
    assert err.value.code == "doubled_braces" and err.value.position == source.index("{{")


literal_text = st.text(st.characters(blacklist_characters="{}"), max_size=20)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.one_of(literal_text, st.sampled_from(sorted(KNOWN))), max_size=8), st.data())
def test_render_is_the_concatenation_of_its_parts(pieces: list[str], data: st.DataObject) -> None:
    """Invariant: a template built from literals and shortcodes renders to literals + values, and a
    missing value is an error exactly when it has no fallback."""
    source, expected, missing = [], [], None
    values: dict[str, object] = {}
    for p in pieces:
        if p in KNOWN:
            has_value = values.get(p) is not None or (p not in values and data.draw(st.booleans()))
            values[p] = f"<{p}>" if has_value else None
            fallback = data.draw(st.one_of(st.none(), st.text("abc xyz", max_size=5)))
            source.append("{" + p + ("" if fallback is None else "|" + fallback) + "}")
            if has_value:
                expected.append(str(values[p]))
            elif fallback is not None:
                expected.append(fallback.strip())
            elif missing is None:
                missing = p
        else:
            source.append(p.replace("{", "{{").replace("}", "}}"))
            expected.append(p)
    t = compile_template("".join(source))
    if missing is not None:
        with pytest.raises(TemplateError) as err:
            render_body(t, values)
        assert err.value.shortcode == missing
    else:
        assert render_body(t, values) == "".join(expected)


def test_footer_and_signature_per_locale() -> None:
    rules = MessageRules(brand="品牌")
    zh = render(compile_template("新品上架 https://x.cn/a"), {}, rules=rules, locale="zh-CN")
    assert zh.text == "【品牌】新品上架 https://x.cn/a 拒收请回复R"
    assert zh.urls == ("https://x.cn/a",)
    en = render(compile_template("New in: https://x.co/a"), {}, rules=MessageRules(brand="Acme"), locale="en-US")
    assert en.text == "Acme: New in: https://x.co/a Reply STOP to opt out"
    assert en.urls == ("https://x.co/a",)
    # An unknown locale falls back to English; a tenant's own footer wins.
    own = MessageRules(footers={"ro": "STOP la 1234"})
    assert render(compile_template("Salut"), {}, rules=own, locale="ro").text == "Salut STOP la 1234"
    assert render(compile_template("Hej"), {}, rules=own, locale="sv").footer == "Reply STOP to opt out"
    # Traditional Chinese (seed 000) gets its own script; the most specific tag wins.
    assert footer_for(MessageRules(), "zh-TW") == "拒收請回覆R"
    assert footer_for(MessageRules(), "zh-Hant-HK") == "拒收請回覆R"
    assert footer_for(MessageRules(), "zh_CN") == "拒收请回复R"
    assert signature_for(MessageRules(brand="品牌"), "zh-TW") == "【品牌】"


def test_footer_rule_always_first_message_never_and_transactional() -> None:
    t = compile_template("Sale today")
    first = MessageRules(footer="first_message", signature="never", brand="Acme")
    assert render(t, {}, rules=first, first_message=True).text == "Sale today Reply STOP to opt out"
    assert render(t, {}, rules=first, first_message=False).text == "Sale today"
    assert render(t, {}, rules=MessageRules(footer="never")).text == "Sale today"
    assert render(t, {}, rules=MessageRules(brand="Acme"), marketing=False).text == "Sale today"


def test_footer_and_signature_are_not_doubled_and_count_in_length() -> None:
    t = compile_template("【品牌】已发货 拒收请回复R")
    out = render(t, {}, rules=MessageRules(brand="品牌"), locale="zh")
    assert out.text == "【品牌】已发货 拒收请回复R"
    assert out.signature is None and out.footer is None
    plain = render(compile_template("Hi"), {}, rules=MessageRules(brand="Acme"))
    assert len(plain.text) == len("Acme: ") + len("Hi") + 1 + len("Reply STOP to opt out")


def test_footer_never_glues_onto_a_url() -> None:
    out = render(compile_template("{checkout_url}"), FULL, rules=MessageRules(), locale="zh")
    assert out.urls == (FULL["checkout_url"],)


@settings(max_examples=120, deadline=None)
@given(
    st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=60),
    st.sampled_from(["en", "zh", "zh-TW", "fr", "ro", "xx", None]),
    st.sampled_from(["always", "first_message", "never"]),
    st.booleans(),
)
def test_footer_appears_once_exactly_when_the_rule_says(body: str, locale: str | None, when: str, first: bool) -> None:
    rules = MessageRules(brand="Acme", footer=when)  # type: ignore[arg-type]
    out = render(compile_template(body), {}, rules=rules, locale=locale, first_message=first)
    footer = footer_for(MessageRules(), locale)
    wanted = when == "always" or (when == "first_message" and first)
    already = footer.casefold() in body.casefold()
    assert (out.footer is not None) == (wanted and not already)
    if out.footer is not None:
        assert out.text.endswith(footer) and len(out.text) >= len(body) + len(footer)
    assert body in out.text  # the body is never altered


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={"first_name": st.sampled_from(["Ana", "", None]), "order_id": st.just(7)}), max_size=30))
def test_audience_check_agrees_with_rendering_each_subscriber(profiles: list[dict[str, object]]) -> None:
    t = compile_template("Hi {first_name}, order {order_id} ships. {shop_name|Our shop}")
    check = check_audience(t, enumerate(profiles), examples=3)
    fails = []
    for i, values in enumerate(profiles):
        try:
            render_body(t, values)
        except TemplateError:
            fails.append(i)
    assert check.checked == len(profiles) and check.failing == len(fails)
    assert [s for s, _name in check.examples] == fails[:3]
    assert "shop_name" not in check.missing  # it has a fallback
