"""Discount codes from a pattern (campaigns/core/discounts.py): shape, determinism per recipient,
uniqueness across an audience, collision handling, and refused patterns."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.discounts import CODE_ALPHABET, DiscountError, check_pattern, discount_code

pattern_st = st.builds(
    lambda pre, n, post: pre + "#" * n + post,
    st.text("ABCsave10-_", max_size=8),
    st.integers(6, 16),
    st.text("XYZ-9", max_size=4),
)


@settings(max_examples=100, deadline=None)
@given(pattern_st, st.text(max_size=12))
def test_code_follows_the_pattern(pattern: str, scope: str) -> None:
    code = discount_code(pattern, key=b"k", scope=scope)
    assert len(code) == len(pattern)
    for p, c in zip(pattern, code):
        assert c in CODE_ALPHABET if p == "#" else c == p.upper()
    assert discount_code(pattern, key=b"k", scope=scope) == code  # a relaunch reserves the same code


def test_an_audience_gets_distinct_codes_and_a_store_clash_moves_on() -> None:
    # Hash clashes do happen (birthday bound: ~0.2 expected among 20,000 six-character codes); the
    # store's check makes every reserved code unique.
    reserved: set[str] = set()
    for i in range(20_000):
        reserved.add(discount_code("WELCOME-######", key=b"k", scope=f"c1:{i}", exists=reserved.__contains__))
    assert len(reserved) == 20_000
    first = discount_code("WELCOME-######", key=b"k", scope="c1:0")
    second = discount_code("WELCOME-######", key=b"k", scope="c1:0", exists={first}.__contains__)
    assert second != first
    with pytest.raises(DiscountError) as err:
        discount_code("WELCOME-######", key=b"k", scope="c1:0", exists=lambda _c: True)
    assert err.value.code == "code_space_exhausted"


@pytest.mark.parametrize("pattern", ["SAVE-#####", "SAVE-" + "#" * 17, "SAVE 10-######", "", "ÉTÉ-######", "{first_name}######"])
def test_unusable_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(DiscountError) as err:
        check_pattern(pattern)
    assert err.value.code == "bad_discount_pattern"
