"""One canonical number per person: ``NumberCheck.canonical`` gives phonenumbers' own verdict and
E.164 for every spelling of a number (COMPLIANCE.md, "One canonical number per person").

The sample is generated per country (every region phonenumbers knows): its example numbers of
each type and random numbers around them (valid and invalid), each written many ways: E.164,
international format, with the national trunk digit kept after the country code, '00' instead
of '+', dashes, dots, parens, full-width / Arabic-Indic / Devanagari / Persian digits, and the
national form read with the region as numbering context. Any disagreement fails the test."""

from __future__ import annotations

import random
import re

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from gateway.runtime.numbers import NumberCheck

_TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.TOLL_FREE, PhoneNumberType.VOIP,
          PhoneNumberType.PREMIUM_RATE)  # fmt: skip
_SCRIPTS = {"fullwidth": 0xFF10, "arabic-indic": 0x0660, "persian": 0x06F0, "devanagari": 0x0966, "bengali": 0x09E6}


def _reference(text: str, region: str | None) -> str | None:
    """phonenumbers' answer: the E.164 of a valid number, else None. (Its patterns accept a few
    numbers of 6 or 16-17 digits, e.g. +989640: not E.164, refused by Sluice as by E.164 §6.1.)"""
    try:
        n = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(n):
        return None
    e164 = phonenumbers.format_number(n, PhoneNumberFormat.E164)
    return e164 if 8 <= len(e164) <= 16 else None


def _script(text: str, base: int) -> str:
    return "".join(chr(base + int(c)) if c.isdigit() else c for c in text)


def _spellings(rnd: random.Random, e164: str, region: str) -> list[tuple[str, str | None, str]]:
    """(spelling, region given or None, the text phonenumbers is asked about)."""
    try:
        n = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return [(e164, None, e164)]
    cc = str(n.country_code)
    nsn = phonenumbers.national_significant_number(n)
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    trunk = (meta.national_prefix if meta is not None else None) or ""
    intl = phonenumbers.format_number(n, PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(n, PhoneNumberFormat.NATIONAL)
    out = [
        (e164, None, e164),
        (intl, None, intl),
        (f"+{cc} {trunk} {nsn}", None, f"+{cc} {trunk} {nsn}"),
        (f"+{cc}{trunk}{nsn}", None, f"+{cc}{trunk}{nsn}"),
        (f"00{cc} {nsn}", None, f"+{cc} {nsn}"),
        (f"00 {cc} ({trunk}) {nsn[:3]}-{nsn[3:]}", None, f"+{cc} ({trunk}) {nsn[:3]}-{nsn[3:]}"),
        (f"+{cc}.{nsn[:2]}.{nsn[2:5]}.{nsn[5:]}", None, f"+{cc}.{nsn[:2]}.{nsn[2:5]}.{nsn[5:]}"),
        (f"+({cc}) {nsn}", None, f"+({cc}) {nsn}"),
        (national, region, national),
        (trunk + nsn, region, trunk + nsn),
        (nsn, region, nsn),
        (e164, rnd.choice(("US", "GB", "DE", "FR")), e164),  # a '+' number ignores the region
    ]
    name, base = rnd.choice(sorted(_SCRIPTS.items()))
    out += [(_script(s, base), r, _script(q, base)) for s, r, q in rnd.sample(out, 3)]
    out.append(("\uff0b" + _script(e164[1:], _SCRIPTS["fullwidth"]), None, e164))
    return out


def _sample(seed: int, per_region: int) -> list[tuple[str, str | None, str]]:
    rnd = random.Random(seed)
    cases = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        bases = []
        for t in _TYPES:
            ex = phonenumbers.example_number_for_type(region, t)
            if ex is not None:
                bases.append(phonenumbers.format_number(ex, PhoneNumberFormat.E164))
        if not bases:
            continue
        for _ in range(per_region):
            b = rnd.choice(bases)
            keep = rnd.randint(max(3, len(b) - 6), len(b))  # nearby numbers: valid and invalid
            num = b[:keep] + "".join(rnd.choice("0123456789") for _ in range(len(b) - keep + rnd.choice((-1, 0, 0, 0, 1))))
            cases += _spellings(rnd, num if len(num) > 3 else b, region)
    return cases


def _disagreements(cases) -> list[tuple[str, str | None, str | None, str | None]]:
    check = NumberCheck()
    bad = []
    for text, region, asked in cases:
        got, err = check.canonical(text, region)
        want = _reference(asked, region)
        if got != want or (got is None) != (err is not None):
            bad.append((text, region, got, want))
    return bad


def test_canonical_agrees_with_phonenumbers_on_every_spelling() -> None:
    cases = _sample(seed=14, per_region=6)
    assert len(cases) > 20_000
    valid = sum(_reference(q, r) is not None for _, r, q in cases)
    assert valid > len(cases) // 4  # the sample is not mostly invalid numbers
    assert _disagreements(cases) == []


@pytest.mark.slow
def test_canonical_agrees_with_phonenumbers_on_a_large_sample() -> None:
    assert _disagreements(_sample(seed=2026, per_region=80)) == []


@pytest.mark.parametrize(("text", "region", "canonical"), [
    ("+1 1 212 555 0190", None, "+12125550190"),
    ("+112125550190", None, "+12125550190"),
    ("+44 0 7911 123456", None, "+447911123456"),
    ("+44 (0) 7911-123456", None, "+447911123456"),
    ("0044 7911 123456", None, "+447911123456"),
    ("+١٢١٢٥٥٥٠١٩٠", None, "+12125550190"),
    ("＋１２１２５５５０１９０", None, "+12125550190"),
    ("2125550191", "US", "+12125550191"),
    ("+1 (212) 555-0194", "US", "+12125550194"),
    ("07911 123456", "GB", "+447911123456"),
    ("+393123456789", None, "+393123456789"),
])  # fmt: skip
def test_known_spellings(text: str, region: str | None, canonical: str) -> None:
    assert NumberCheck().canonical(text, region) == (canonical, None)


@pytest.mark.parametrize("text", ["+989640", "+49 956793929162773", "2125550191", "+1 212 555 0190 ext 5", "+1-800-FLOWERS", "+1²12555019", "",
                                  "+", "++12125550190", "+1 212 555 0190 +1", "tel:+12125550190", "+0123456789"])
def test_refused_at_the_door(text: str) -> None:
    got, err = NumberCheck().canonical(text)
    assert got is None and err and "invalid number" in err


_CHARS = "0123456789+ -.()/" + "٠١٢٣٤٥٦٧٨٩" + "０１２３４５６７８９＋" + "x#abc²"


@given(st.text(alphabet=_CHARS, max_size=24), st.sampled_from([None, "US", "GB", "DE", "IN", "BR", "IT"]))
@settings(max_examples=400)
def test_canonical_is_total_idempotent_and_phonenumbers_own(text: str, region: str | None) -> None:
    """Any text: never raises; the answer is ASCII E.164 (what the core's ``Digits`` accepts), is
    its own canonical form, and is a number phonenumbers calls valid."""
    check = NumberCheck()
    got, err = check.canonical(text, region)
    assert (got is None) != (err is None)
    if got is not None:
        assert re.fullmatch(r"\+[1-9][0-9]{6,14}", got), got  # what the core's Digits accepts
        assert check.canonical(got) == (got, None)
        assert _reference(got, None) == got
