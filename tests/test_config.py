import pytest

from gateway.config import Config, default_text, loads
from gateway.errors import ConfigError


def test_embedded_default_loads():
    cfg = loads(default_text())
    assert [c.name for c in cfg.core.carriers] == ["alpha", "beta"]
    assert cfg.core.quiet_hours.overrides["US-FL"] == ("08:00", "20:00")


def test_example_is_the_same_tree():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "config" / "example.toml").read_text()
    assert isinstance(loads(text), Config)


@pytest.mark.parametrize(
    "text, key",
    [
        ("[core]\nshards = 'many'", "core.shards"),
        ("[core]\nshrads = 4", "core.shrads"),  # an unknown key is named itself, not only its table
        ("shards = 4", "shards"),
        ("[[core.carriers]]\nrate = 1.0", "core.carriers[0].name"),  # a missing key too
        ("[[core.carriers]]\nname = 'x'\nrate = -1", "core.carriers[0].rate"),
        ("[core.quiet_hours]\nstart = '25:00'", "core.quiet_hours.start"),
        ("[core.weekly_cap]\npolicy = 'sometimes'", "core.weekly_cap.policy"),
        ("[api]\nheader_timeout = 0", "api.header_timeout"),
        ("[api]\nbody_timeout = -1", "api.body_timeout"),
        ("[api]\nmax_head_bytes = 10", "api.max_head_bytes"),
    ],
)
def test_errors_name_the_key(text, key):
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert info.value.key == key


def test_semantic_errors_are_config_errors():
    with pytest.raises(ConfigError, match="unknown carriers"):
        loads("[[core.carriers]]\nname='a'\n[[core.routes]]\ncarriers=['b']")
    with pytest.raises(ConfigError, match="not valid TOML"):
        loads("[core")


def test_the_api_listens_on_loopback_unless_configured_otherwise():
    """An empty config, the embedded default and the example all serve on 127.0.0.1 only."""
    from pathlib import Path

    example = (Path(__file__).parent.parent / "config" / "example.toml").read_text()
    for text in ("", default_text(), example):
        assert loads(text).api.host == "127.0.0.1"


def test_the_example_explains_every_key():
    """Every field of the config tree (at any depth) is set or shown in config/example.toml."""
    import re
    import typing
    from pathlib import Path

    import msgspec

    text = (Path(__file__).parent.parent / "config" / "example.toml").read_text()
    shown = set(re.findall(r"^[#\s]*([a-z_0-9]+)\s*=", text, re.MULTILINE))
    shown |= set(re.findall(r"^[#\s]*\[+[a-z_.]*?([a-z_0-9]+)\]", text, re.MULTILINE))  # [table] names

    def structs_in(tp):
        for arg in typing.get_args(tp) or (tp,):
            if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                yield arg
            elif typing.get_args(arg):
                yield from structs_in(arg)

    missing, seen = [], set()

    def walk(cls, path):
        if cls in seen:
            return
        seen.add(cls)
        for f in msgspec.structs.fields(cls):
            sub = list(structs_in(f.type))
            if sub:
                for s in sub:
                    walk(s, f"{path}{f.encode_name}.")
            elif f.encode_name not in shown:
                missing.append(path + f.encode_name)

    walk(Config, "")
    assert not missing, f"not in config/example.toml: {missing}"


def test_receipt_id_formats_and_the_old_key():
    """receipt_id_formats covers every id a receipt carries; the old receipt_id_format (text
    ids only) still loads, as [it, id_format]; both at once is an error naming the new key."""
    base = '[[core.carriers]]\nname = "a"\n[[core.routes]]\nprefix = ""\ncarriers = ["a"]\n[[carriers.smpp]]\nname = "a"\nid_format = "hex"\n'
    assert loads(base).carriers.smpp[0].receipt_formats() == ("hex",)
    assert loads(base + 'receipt_id_formats = ["dec", "hex"]').carriers.smpp[0].receipt_formats() == ("dec", "hex")
    old = loads(base + 'receipt_id_format = "dec"').carriers.smpp[0]
    assert old.receipt_formats() == ("dec", "hex") and old.tlv_in_submit_format
    with pytest.raises(ConfigError, match="receipt_id_formats") as info:
        loads(base + 'receipt_id_format = "dec"\nreceipt_id_formats = ["dec"]')
    assert info.value.key == "carriers.smpp[0]"
    for bad in ('receipt_id_formats = []', 'receipt_id_formats = ["octal"]'):
        with pytest.raises(ConfigError) as info:
            loads(base + bad)
        assert info.value.key.startswith("carriers.smpp[0].receipt_id_formats")
