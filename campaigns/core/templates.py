"""The shortcode language of campaign texts, the brand signature and the opt-out footer.

Syntax (one rule, no nesting)::

    Hi {first_name|there}, {shop_name} picked {product_offered} for you: {product_offered_url}
    Use {discount_code} -> {discount_url}. Your {attr.tier|VIP} perks. Literal braces: {{ and }}.

- ``{name}`` is a shortcode; ``{name|fallback}`` gives the text to use when the subscriber has no
  value (an empty fallback, ``{first_name|}``, is allowed and means "blank is fine").
- Names: ``first_name``, ``shop_name``, ``product_bought``, ``product_offered``,
  ``product_offered_url``, ``discount_code``, ``discount_url``, ``checkout_url``, ``order_id``,
  ``tracking_url``, and ``attr.NAME`` for any custom attribute (``NAME``: letters, digits, ``_``, ``-``).
  Spaces around the name and the ``|`` are ignored; the fallback is kept as written except for
  surrounding spaces; it cannot contain ``{``, ``}`` or a line break.
- ``{{`` and ``}}`` are literal braces; but ``{{first_name}}`` (a shortcode's name in doubled braces, as
  Liquid-style tools write it) is the error ``doubled_braces``, not the literal text "{first_name}".
- A value is put in as one line: line breaks and control characters become one space each run (a
  value never adds lines of its own to a text). A ``first_name`` holding a link (``://`` or ``www.``)
  counts as missing: a name is typed by the person (a checkout, a form), and a link in it would be
  shortened under the shop's own domain like the shop's links.
- A value that is missing, None or only white space, with no fallback, is a ``TemplateError`` with
  code ``missing_value`` at preview (and the same check guards sending: a text is never sent with a
  blank). Other codes: ``unknown_shortcode``, ``unclosed_shortcode``, ``stray_brace``,
  ``empty_shortcode``, ``bad_fallback``, ``doubled_braces``. Every error names the shortcode and its character position.
  ``check_audience`` runs the same rule over a whole audience before launch: how many subscribers
  lack which value, with examples.

**Signature and footer** (marketing only; transactional texts go out as written). The tenant's
``MessageRules`` say, per locale (``zh`` matches ``zh-CN`` ...; unknown locales use ``en``), how to sign
(``【{brand}】`` as a prefix for ``zh``/``ja``, ``{brand}: `` elsewhere) and which footer to add
(``Reply STOP to opt out``, ``拒收请回复R``, ...), and when: ``always``, ``first_message`` (only on
the first marketing message to that subscriber) or ``never``. A text that already carries the footer
(or already starts with the signature) does not get it twice. Both are part of the rendered text,
hence counted in its length, encoding and segments by the gateway's preview.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from campaigns.core.links import find_urls
from campaigns.errors import InvalidInput

__all__ = ["AudienceCheck", "DEFAULT_FOOTERS", "DEFAULT_SIGNATURES", "KNOWN", "Literal_", "MessageRules", "Rendered",
           "Shortcode", "Template", "TemplateError", "check_audience", "compile_template", "footer_for", "render", "render_body",
           "signature_for", "values_key"]  # fmt: skip

KNOWN = frozenset({
    "first_name", "shop_name", "product_bought", "product_offered", "product_offered_url",
    "discount_code", "discount_url", "checkout_url", "order_id", "tracking_url",
})  # fmt: skip
_ATTR = re.compile(r"^attr\.[A-Za-z0-9_-]{1,64}$")
# ``{{first_name}}`` (Liquid's, Klaviyo's, Mailchimp's habit) would be the literal text "{first_name}":
_DOUBLED = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*(?:\|[^{}\n]*)?\}\}")


class TemplateError(InvalidInput):
    """A template cannot be rendered; ``shortcode`` and ``position`` (0-based character) say where."""

    def __init__(self, code: str, shortcode: str | None, position: int, message: str) -> None:
        super().__init__(f"at {position}: {message}", code=code, field=shortcode)
        self.shortcode = shortcode
        self.position = position


class Literal_(msgspec.Struct, frozen=True):
    text: str


class Shortcode(msgspec.Struct, frozen=True):
    name: str
    fallback: str | None
    position: int


class Template(msgspec.Struct, frozen=True):
    source: str
    parts: tuple[Literal_ | Shortcode, ...]

    @property
    def shortcodes(self) -> tuple[Shortcode, ...]:
        return tuple(p for p in self.parts if isinstance(p, Shortcode))


def _shortcode(inner: str, position: int) -> Shortcode:
    name, bar, fallback = inner.partition("|")
    name = name.strip()
    if not name:
        raise TemplateError("empty_shortcode", None, position, "a shortcode needs a name: {first_name}")
    if name not in KNOWN and not _ATTR.match(name):
        raise TemplateError("unknown_shortcode", name, position,
                            f"unknown shortcode {name!r} (known: {', '.join(sorted(KNOWN))}, attr.NAME)")
    if bar and ("\n" in fallback or "\r" in fallback):
        raise TemplateError("bad_fallback", name, position, "a fallback cannot span lines")
    return Shortcode(name, fallback.strip() if bar else None, position)


def compile_template(source: str) -> Template:
    """Parse ``source`` once; raises ``TemplateError`` on the first syntax error."""
    parts: list[Literal_ | Shortcode] = []
    buf: list[str] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c in "{}" and source.startswith(c * 2, i):
            if c == "{" and (m := _DOUBLED.match(source, i)) and (m[1] in KNOWN or _ATTR.match(m[1])):
                raise TemplateError("doubled_braces", m[1], i,
                                    f"{m[0]!r} would send the literal text {m[0][1:-1]!r}: a shortcode takes one "
                                    f"pair of braces, {{{m[1]}}}")  # fmt: skip
            buf.append(c)
            i += 2
        elif c == "}":
            raise TemplateError("stray_brace", None, i, "a lone '}' (write '}}' for a literal brace)")
        elif c == "{":
            end = source.find("}", i + 1)
            nxt = source.find("{", i + 1)
            if end < 0 or (0 <= nxt < end):
                raise TemplateError("unclosed_shortcode", None, i, "'{' is not closed by '}' (write '{{' for a literal brace)")
            if buf:
                parts.append(Literal_("".join(buf)))
                buf = []
            parts.append(_shortcode(source[i + 1 : end], i))
            i = end + 1
        else:
            buf.append(c)
            i += 1
    if buf:
        parts.append(Literal_("".join(buf)))
    return Template(source, tuple(parts))


_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_LINKY = re.compile(r"://|www\.", re.IGNORECASE)


def _value(values: Mapping[str, object], name: str) -> str | None:
    if name.startswith("attr."):
        attrs = values.get("attributes")
        raw = attrs.get(name[5:]) if isinstance(attrs, Mapping) else None
    else:
        raw = values.get(name)
    if raw is None or isinstance(raw, (dict, list)):
        return None
    text = raw if isinstance(raw, str) else str(raw).lower() if isinstance(raw, bool) else str(raw)
    if not text.isprintable():  # rare (a line break, a control, a no-break space): the C check first
        text = _BREAKS.sub(" ", text)
    if name == "first_name" and ("://" in text or ("." in text and _LINKY.search(text))):  # "in" first: per recipient
        return None
    return text if text.strip() else None


def values_key(template: Template, values: Mapping[str, object]) -> tuple[str | None, ...]:
    """Everything of ``values`` that ``render_body`` reads, in shortcode order: two value maps with the
    same key render the same body (a launch renders each distinct key once)."""
    return tuple(_value(values, p.name) for p in template.parts if isinstance(p, Shortcode))


def render_body(template: Template, values: Mapping[str, object]) -> str:
    """The text with every shortcode replaced; a value missing without fallback raises."""
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, Literal_):
            out.append(part.text)
            continue
        value = _value(values, part.name)
        if value is None:
            if part.fallback is None:
                raise TemplateError("missing_value", part.name, part.position,
                                    f"no value for {{{part.name}}} and no fallback (write {{{part.name}|...}})")
            value = part.fallback
        out.append(value)
    return "".join(out)


# ---- signature and footer -------------------------------------------------------------------

When = Literal["always", "first_message", "never"]

DEFAULT_FOOTERS = {
    "en": "Reply STOP to opt out",
    "zh": "拒收请回复R",
    "zh-TW": "拒收請回覆R",  # Traditional script (seed 000)
    "zh-HK": "拒收請回覆R",
    "zh-Hant": "拒收請回覆R",
    "fr": "Répondez STOP pour vous désabonner",
    "ro": "Raspunde STOP pentru dezabonare",
    "es": "Responde STOP para darte de baja",
    "de": "Antworte STOP zum Abmelden",
}
DEFAULT_SIGNATURES = {"zh": "【{brand}】", "ja": "【{brand}】"}


class MessageRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's rules for marketing texts (per-locale texts override the defaults above)."""

    brand: str | None = None
    signature: When = "always"
    footer: When = "always"
    signatures: dict[str, str] = msgspec.field(default_factory=dict)  # locale -> "【{brand}】" or "{brand}: "
    footers: dict[str, str] = msgspec.field(default_factory=dict)  # locale -> footer text


def _for_locale(table: Mapping[str, str], locale: str | None) -> str | None:
    """The entry for the most specific tag of ``locale`` (``zh-Hant-TW`` -> ``zh-Hant`` -> ``zh``)."""
    parts = (locale or "en").replace("_", "-").split("-")
    for n in range(len(parts), 0, -1):
        key = "-".join(parts[:n])
        for k in (key, key.lower()):
            if k in table:
                return table[k]
    return None


def _applies(when: When, first_message: bool) -> bool:
    return when == "always" or (when == "first_message" and first_message)


def signature_for(rules: MessageRules, locale: str | None) -> str | None:
    if not rules.brand:
        return None
    pattern = _for_locale(rules.signatures, locale) or _for_locale(DEFAULT_SIGNATURES, locale) or "{brand}: "
    return pattern.replace("{brand}", rules.brand)


def footer_for(rules: MessageRules, locale: str | None) -> str:
    return _for_locale(rules.footers, locale) or _for_locale(DEFAULT_FOOTERS, locale) or DEFAULT_FOOTERS["en"]


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    text: str  # what is sent: signature + body + footer
    body: str
    signature: str | None
    footer: str | None
    urls: tuple[str, ...]  # the URLs of ``text`` in order (what short links will replace)


def render(
    template: Template,
    values: Mapping[str, object],
    *,
    rules: MessageRules = MessageRules(),
    locale: str | None = None,
    marketing: bool = True,
    first_message: bool = False,
    find: bool = True,
) -> Rendered:
    """The full text for one subscriber, as the gateway's preview will measure it (``find=False``:
    ``urls`` left empty, for a caller that shortens the text, which finds them itself)."""
    body = render_body(template, values)
    text = body
    sig = foot = None
    if marketing:
        candidate = signature_for(rules, locale)
        if candidate and _applies(rules.signature, first_message) and not body.lstrip().startswith(candidate.strip()):
            sig = candidate
            text = sig + text
        candidate = footer_for(rules, locale)
        if _applies(rules.footer, first_message) and candidate.casefold() not in body.casefold():
            foot = candidate
            sep = "" if not text or text[-1].isspace() else ("" if _cjk(text[-1]) else " ")
            text = text + sep + foot
    urls = tuple(u for _s, _e, u in find_urls(text)) if find else ()
    return Rendered(text=text, body=body, signature=sig, footer=foot, urls=urls)


def _cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef"


class AudienceCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What a template would do across an audience: how many subscribers it cannot be rendered for,
    which shortcodes lack values (and how often), and the first few subscribers as examples."""

    checked: int
    failing: int
    missing: dict[str, int]  # shortcode -> subscribers without a value for it
    examples: tuple[tuple[int, str], ...]  # (subscriber id, shortcode), at most ``examples`` of them


def check_audience(template: Template, audience: Iterable[tuple[int, Mapping[str, object]]], *, examples: int = 10) -> AudienceCheck:
    """Preview across the audience: every subscriber whose text would need a missing value."""
    needed = [p for p in template.shortcodes if p.fallback is None]
    checked = failing = 0
    missing: dict[str, int] = {}
    found: list[tuple[int, str]] = []
    for subscriber, values in audience:
        checked += 1
        absent = sorted({p.name for p in needed if _value(values, p.name) is None})
        if absent:
            failing += 1
            for name in absent:
                missing[name] = missing.get(name, 0) + 1
            if len(found) < examples:
                found.append((subscriber, absent[0]))
    return AudienceCheck(checked=checked, failing=failing, missing=missing, examples=tuple(found))
