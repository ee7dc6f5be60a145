import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gateway.core.ids import IdGenerator, format_id, parse_id
from gateway.core.routing import NoRoute, Router
from gateway.core.settings import Route


def test_longest_prefix_wins():
    r = Router(
        [Route(prefix="", carriers=["a"]), Route(prefix="44", carriers=["b", "a"]),
         Route(prefix="447", carriers=["c"])],
        {"a": 0, "b": 1, "c": 2},
    )
    assert r.carriers_for("14155550123") == (0,)
    assert r.carriers_for("441234567890") == (1, 0)
    assert r.carriers_for("447700900123") == (2,)
    assert r.carriers_for("447700900123") == (2,)  # cached


def test_no_route():
    with pytest.raises(NoRoute):
        Router([Route(prefix="1", carriers=["a"])], {"a": 0}).carriers_for("4412345678")


def test_ids_sortable_unique_and_formatted():
    g = IdGenerator()
    a = g.reserve(10, 1000.0)
    b = g.reserve(1, 999.0)  # clock went back: still larger
    c = g.reserve(1, 2000.0)
    assert a < a + 9 < b < c
    assert format_id(a) < format_id(b) < format_id(c)
    assert parse_id(format_id(c)) == c
    with pytest.raises(ValueError):
        parse_id("not-an-id")


def _format_id_by_loop(value: int) -> str:
    """The definition: 13 base32 digits, most significant first."""
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    return "".join(alphabet[(value >> (5 * k)) & 31] for k in range(12, -1, -1))


@hsettings(max_examples=300)
@given(st.integers(0, (1 << 63) - 1), st.integers(0, (1 << 63) - 1))
def test_property_format_id_is_base32_of_the_id_ordered_and_parsed_back(a: int, b: int) -> None:
    assert format_id(a) == _format_id_by_loop(a) and len(format_id(a)) == 13
    assert (format_id(a) < format_id(b)) == (a < b)
    assert parse_id(format_id(a)) == a
