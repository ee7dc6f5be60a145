"""NumberCheck's fast path gives phonenumbers' own verdict."""

from __future__ import annotations

import random

import phonenumbers
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from gateway.runtime.numbers import NumberCheck
from gateway.testing import workload


def _phonenumbers_says(number: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return False


def test_the_fast_path_agrees_with_phonenumbers() -> None:
    rnd = random.Random(7)
    codes = sorted(COUNTRY_CODE_TO_REGION_CODE)
    numbers = list(workload.numbers(3000, seed=5))
    for _ in range(20_000):  # every country code, every length, leading zeros and prefixes too
        cc = str(rnd.choice(codes))
        rest = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(max(1, 7 - len(cc)), 15 - len(cc))))
        numbers.append("+" + cc + rest)
    for cc in codes:  # and numbers phonenumbers itself gives as examples: mostly valid ones
        for region in COUNTRY_CODE_TO_REGION_CODE[cc]:
            ex = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
            if ex is not None:
                numbers.append(phonenumbers.format_number(ex, phonenumbers.PhoneNumberFormat.E164))
    check = NumberCheck()
    valid = 0
    for n in numbers:
        ok = _phonenumbers_says(n)
        valid += ok
        assert (check.error(n) is None) == ok, n
    assert valid > 2000  # the sample is not all invalid numbers


def test_errors_name_the_number() -> None:
    check = NumberCheck()
    assert check.error("+14155550123") is None
    assert "+1415" in (check.error("+1415") or "")
    assert "+99912345678" in (check.error("+99912345678") or "")  # no such country code
    assert "numbering plan" in (check.error("+44000000000") or "")
