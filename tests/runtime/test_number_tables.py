"""The per-country tables (``NumberCheck.sure``, one regex a number) against phonenumbers.

A corpus of numbers of every country phonenumbers knows: its own example numbers of every type
and region, the same with their last digits changed, a digit added or dropped (valid and
invalid alike, every length), and random digits after every calling code. For each: what
``sure`` says agrees with ``_fast`` (the table is the same questions asked by the regex engine)
and with phonenumbers (valid, and written as its own E.164), and ``canonical`` agrees with
phonenumbers on the verdict, the canonical form and, for valid numbers, the region of the
number is the one phonenumbers gives (the table's region order is phonenumbers')."""

from __future__ import annotations

import random

import phonenumbers
from phonenumbers import PhoneNumberType
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from gateway.runtime.numbers import NumberCheck

_TYPES = [t for t in vars(PhoneNumberType).values() if isinstance(t, int) and t != PhoneNumberType.UNKNOWN]


def _corpus(seed: int) -> list[str]:
    rnd = random.Random(seed)
    out: list[str] = []
    for cc, regions in sorted(COUNTRY_CODE_TO_REGION_CODE.items()):
        for region in regions:
            for t in _TYPES:
                ex = (phonenumbers.example_number_for_type(region, t) if region != "001"
                      else phonenumbers.example_number_for_non_geo_entity(cc))  # fmt: skip
                if ex is None:
                    continue
                e164 = phonenumbers.format_number(ex, phonenumbers.PhoneNumberFormat.E164)
                out.append(e164)
                for _ in range(6):  # its neighbours: the last 1-4 digits changed
                    k = rnd.randint(1, 4)
                    out.append(e164[:-k] + "".join(rnd.choice("0123456789") for _ in range(k)))
                out.append(e164 + rnd.choice("0123456789"))  # one digit more, one less
                out.append(e164[:-1])
        for _ in range(10):  # random digits after the calling code, every length
            out.append(f"+{cc}" + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 15 - len(str(cc))))))
    return out


def _phonenumbers(number: str) -> tuple[str | None, str | None]:
    """(E.164, region) if phonenumbers finds ``number`` valid, else (None, None)."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return None, None
    if not phonenumbers.is_valid_number(parsed):
        return None, None
    return (phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
            phonenumbers.region_code_for_number(parsed))  # fmt: skip


def test_tables_agree_with_phonenumbers_on_every_country() -> None:
    corpus = _corpus(16)
    check = NumberCheck(tables=True)
    sure = check.sure(corpus)
    valid = sure_count = 0
    for number, is_sure in zip(corpus, sure):
        e164, region = _phonenumbers(number)
        fast = check._fast(number) if number[1:].isdigit() and 8 <= len(number) <= 16 and number[1] != "0" else None
        # The table asks what _fast asks; it leaves to canonical (never decides) a number its
        # country's national prefix rule matches (Russia's 8xx), where _fast asks phonenumbers
        # whether the prefix would be stripped.
        assert is_sure == (fast is True) or (fast is True and _prefix_matches(check, number)), number
        if is_sure:  # valid, and written as its own E.164
            assert e164 == number, number
            assert region is not None and region in _regions(number), number
        verdict = check.canonical(number)
        if e164 is not None and 8 <= len(e164) <= 16:
            assert verdict == (e164, None), number
        else:
            assert verdict[0] is None and verdict[1], number
        valid += e164 is not None
        sure_count += is_sure
    assert len(COUNTRY_CODE_TO_REGION_CODE) > 200 and len(corpus) > 12_000
    assert valid > 5_000  # not all invalid: the examples and many neighbours are valid
    assert sure_count > 0.8 * valid  # and the tables decide most valid numbers themselves


def _prefix_matches(check: NumberCheck, number: str) -> bool:
    k, plan = check._heads[number[1:4]]
    return plan is not None and plan[1] is not None and plan[1].match(number[k:]) is not None


def _regions(number: str) -> list[str]:
    for k in (1, 2, 3):
        if int(number[1 : 1 + k]) in COUNTRY_CODE_TO_REGION_CODE:
            return COUNTRY_CODE_TO_REGION_CODE[int(number[1 : 1 + k])]
    return []


def test_sure_is_false_for_anything_not_canonical() -> None:
    check = NumberCheck(tables=True)
    texts = ["+1 212 555 0190", "+12125550190 ", "0012125550190", "+1212555019O", "+\uff11\uff12\uff11\uff12",
             "+12125550190\n", "++12125550190", "+", "", "+1", "+01234567890", "+5491123456789"]
    assert check.sure(texts) == [False] * len(texts)
    assert check.sure(["+12125550190", "+447911123456"]) == [True, True]
    assert NumberCheck().sure(["+12125550190"]) == [False]  # no tables: canonical decides
