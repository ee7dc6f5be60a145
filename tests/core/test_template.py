import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import segments
from gateway.core.template import MissingVariable, Template


def test_render_and_pack():
    t = Template("Hi {name}, {name}! Code {code}. {not a field} {}")
    assert t.fields == ("name", "code")
    packed = t.pack({"name": "Ann", "code": "42", "extra": "x"})
    assert t.render(packed) == "Hi Ann, Ann! Code 42. {not a field} {}"


def test_missing_variable_is_named():
    with pytest.raises(MissingVariable, match="'code'"):
        Template("{code}").pack({})


def test_plain_body_has_no_fields():
    t = Template("Sale ends {soon")
    assert t.fields == ()
    assert t.render(b"") == "Sale ends {soon"


def test_nul_in_values_rejected():
    with pytest.raises(ValueError):
        Template("{a}{b}").pack({"a": "x\x00y", "b": "z"})


_TEXT = st.text(alphabet=st.sampled_from("ab Z09.,!\n\r{}[]~^|€éÇ€ß`\x07\x1bЖ🎉"), max_size=200)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["Hi ", "{a}", "{b}", ", see ", "{a}", "€", "{", "x" * 150]), min_size=1, max_size=6),
       _TEXT, _TEXT)  # fmt: skip
def test_measure_agrees_with_filling_and_planning(parts, a, b):
    t = Template("".join(parts))
    values = {"a": a, "b": b}
    packed, units = t.measure(values)
    body, filled = t.fill(values)
    assert packed == filled
    if units >= 0:  # counted without rendering: only when the whole body is plain GSM-7
        got = segments.plan(body)
        assert (got.encoding, got.units, got.segments) == ("gsm7", units, segments.plain_count(units))
        assert segments.is_plain(body)
    else:  # and whenever it is, with each field once, it is counted
        source = "".join(parts)
        once = all(source.count("{%s}" % f) <= 1 for f in "ab")
        assert not (once and segments.is_plain(body) and t.fields)
