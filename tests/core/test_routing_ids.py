import pytest

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
