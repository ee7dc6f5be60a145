"""``NumberCheck.sure`` decides a number by its prefix class (a prefix and a length for which the
country's table says the same of every number), and ``ZoneResolver.keys_for`` /
``Router.primaries`` look a chunk's numbers up by their text. Each must answer exactly what the
one-number path answers, for every number, whichever numbers came first (a class is cached by
the first number that finds it): the table's own regex match, ``key_for``, ``carriers_for``.

The corpus is ``test_number_tables``' (every calling code: examples of every type and region,
their neighbours, random digits), asked in two orders with the classes forgotten in between,
and hypothesis adds numbers that share long prefixes with valid ones (the classes' borders)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.routing import NoRoute, Router
from gateway.core.settings import Route
from gateway.core.zones import ZoneResolver
from gateway.runtime.numbers import NumberCheck
from tests.runtime.test_number_tables import _corpus

_CORPUS = [t for t in _corpus(17) if 8 <= len(t) <= 16 and t[1] != "0"]
_CHECK = NumberCheck(tables=True)  # tables compiled once (the slow part); classes cleared per test


def _table(check: NumberCheck, text: str) -> bool:
    """What ``sure`` answered before prefix classes: one match of the country's table."""
    return check._matches_table(text)


@pytest.fixture
def check() -> NumberCheck:
    _CHECK._classes.clear()
    return _CHECK


def test_classes_agree_with_the_tables_on_every_country_in_any_order(check: NumberCheck) -> None:
    expected = [_table(check, t) for t in _CORPUS]
    assert check.sure(_CORPUS) == expected
    shuffled = list(zip(_CORPUS, expected))
    random.Random(5).shuffle(shuffled)
    check._classes.clear()  # the same numbers, other numbers first
    assert check.sure([t for t, _ in shuffled]) == [e for _, e in shuffled]
    # mostly decided by a class, not by the table: the design's point
    decided = sum(v in (0, 1) for d in check._classes.values() for v in d.values())
    asked = sum(v == 2 for d in check._classes.values() for v in d.values())
    assert sum(expected) > 5_000 and decided > 4 * asked


_VALID = [t for t in _CORPUS if _CHECK._matches_table(t)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_VALID), st.integers(1, 8), st.integers(-1, 1), st.randoms()),
                min_size=1, max_size=60))  # fmt: skip
def test_numbers_near_valid_ones_agree(picks: list) -> None:
    """Valid numbers with their last 1-8 digits changed (and one digit more or less): the
    classes' borders, where a prefix stops deciding. The classes are kept between examples:
    each example's numbers meet those the earlier ones found."""
    check = _CHECK
    texts = []
    for number, k, extra, rnd in picks:
        k = min(k, len(number) - 5)
        tail = "".join(rnd.choice("0123456789") for _ in range(k + extra))
        texts.append(number[: len(number) - k] + tail)
    assert check.sure(texts) == [(8 <= len(t) <= 16 and _table(check, t)) for t in texts]


def test_sure_of_a_chunk_not_all_e164_asks_each(check: NumberCheck) -> None:
    texts = [*_VALID[:50], "+1 212 555 0190", "12125550190", "+1212555019O", "+12125550190\n+1"]
    assert check.sure(texts) == [True] * 50 + [False] * 4


def _zone_keys_agree(numbers: list[str], seeds: tuple[int, ...]) -> None:
    for seed in seeds:
        shuffled = random.Random(seed).sample(numbers, len(numbers))
        by_int, by_text = ZoneResolver(), ZoneResolver()
        half = len(shuffled) // 2  # key_for first for half of them: the text nodes copy its tree
        for t in shuffled[:half]:
            by_text.key_for(int(t[1:]))
        keys = by_text.keys_for(shuffled)
        assert [by_text.zone_set(k) for k in keys] == [by_int.zone_set(by_int.key_for(int(t[1:]))) for t in shuffled]
        assert by_text.keys_for(shuffled) == keys  # warm: the same


def test_zone_keys_by_text_agree_with_key_for() -> None:
    """Each zone class costs a phonenumbers call the first time: a sample here (the numbers of
    a few calling codes, many per class), every country in the slow run."""
    ccs = ("+1", "+7", "+44", "+49", "+55", "+61", "+86", "+91", "+33", "+81", "+62", "+52")
    _zone_keys_agree([t for t in _CORPUS if t.startswith(ccs)][:3_000], (1,))


@pytest.mark.slow
def test_zone_keys_by_text_agree_with_key_for_on_every_country_in_any_order() -> None:
    _zone_keys_agree(_CORPUS, (1, 2))


@given(st.lists(st.sampled_from(["+12125550190", "+447911123456", "+33612345678", "+4915112345678", "+5511987654321",
                                 "+8613800138000", "+12"]), min_size=1, max_size=20))  # fmt: skip
def test_primaries_agree_with_carriers_for(texts: list[str]) -> None:
    routes = [Route(prefix="1", carriers=["a", "b"]), Route(prefix="44", carriers=["b"]), Route(prefix="4479", carriers=["c"]),
              Route(prefix="33", carriers=["c", "a"]), Route(prefix="49", carriers=["a"])]  # fmt: skip
    router = Router(routes, {"a": 0, "b": 1, "c": 2})
    try:
        expected = [router.carriers_for(t[1:])[0] for t in texts]
    except NoRoute:
        with pytest.raises(NoRoute):
            Router(routes, {"a": 0, "b": 1, "c": 2}).primaries(texts)
        return
    assert Router(routes, {"a": 0, "b": 1, "c": 2}).primaries(texts) == expected
    assert router.primaries(texts) == expected  # warm cache
