import pytest

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
