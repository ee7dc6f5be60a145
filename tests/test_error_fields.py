"""A missing or unknown field is named in an error's ``field`` (msgspec names it only in its message:
its path stops at the object that holds it). One test per layer's helper, on msgspec's own errors
over nested objects, lists and dicts, for every way of placing the bad field."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.errors import schema_field
from gateway.api.app import _split
from gateway.config import _split_path


class Leaf(msgspec.Struct, forbid_unknown_fields=True):
    needed: int


class Mid(msgspec.Struct, forbid_unknown_fields=True):
    leaf: Leaf | None = None
    leaves: list[Leaf] = []
    by_name: dict[str, Leaf] = {}


class Top(msgspec.Struct, forbid_unknown_fields=True):
    mid: Mid | None = None


NAME = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=8).filter(lambda s: s != "needed")


@st.composite
def broken(draw: st.DrawFn) -> tuple[object, str]:
    """A value for Top with one bad Leaf somewhere, and the path an error must name."""
    unknown = draw(st.booleans())
    name = draw(NAME) if unknown else "needed"
    leaf = {"needed": 1, name: 2} if unknown else {}
    where = draw(st.sampled_from(["top", "leaf", "list", "dict"]))
    if where == "top":  # at the root: an unknown key next to the known one, or a root that lacks nothing
        return ({"mid": None, name: 1}, name) if unknown else ({"mid": {"leaf": {}}}, "mid.leaf.needed")
    if where == "leaf":
        return {"mid": {"leaf": leaf}}, f"mid.leaf.{name}"
    i = draw(st.integers(0, 3))
    if where == "list":
        return {"mid": {"leaves": [{"needed": 1}] * i + [leaf]}}, f"mid.leaves[{i}].{name}"
    return {"mid": {"by_name": {draw(NAME): leaf}}}, f"mid.by_name[...].{name}"  # msgspec does not say which key


@settings(max_examples=60)
@given(broken())
def test_each_layers_errors_name_the_missing_or_unknown_field(case: tuple[object, str]) -> None:
    value, path = case
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(value, Top)
    message = str(info.value)
    assert schema_field(message)[1] == path, message  # the campaign layer (API, events, config)
    assert _split(message)[1] == path, message  # the gateway's API
    assert _split_path(message)[1] == path, message  # the gateway's config
    assert " - at " not in schema_field(message)[0] and " - at " not in _split(message)[0]
