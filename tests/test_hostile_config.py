"""Config files with a new user's mistakes, through ``sluice check-config`` (both layers' reader, the
one ``sluice serve`` uses) and the gateway's own: each is one line, exit 2, naming the file and the key
(or the TOML line and column). On the base a name or key given twice passed (two tenants of one name
shared jobs and suppressions; one key for two tenants was answered as the last of them; a carrier's
second link replaced the first), a file saved with a byte order mark (Notepad) was "not
valid TOML at line 1, column 1", and the campaigns reader's TOML errors did not name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from campaigns.cli import main as sluice
from gateway.config import load as load_gateway
from gateway.errors import ConfigError as GatewayConfigError

LINK = 'host = "127.0.0.1"\nport = 2775\nsystem_id = "s"\n'
CARRIER = '[[core.carriers]]\nname = "alpha"\nrate = 100.0\nburst = 10\n[[core.routes]]\nprefix = ""\ncarriers = ["alpha"]\n'
BAD = {
    "tenant named twice": ('[[api.tenants]]\nname = "a"\nkey_env = "K1"\n[[api.tenants]]\nname = "a"\nkey_env = "K2"\n',
                           "api.tenants[1].name: 'a' is already api.tenants[0]'s"),
    "operator named twice": ('[[api.operators]]\nname = "o"\nkey_env = "K1"\n[[api.operators]]\nname = "o"\nkey_env = "K2"\n',
                             "api.operators[1].name: 'o' is already api.operators[0]'s"),
    "one key_env for two operators": ('[[api.operators]]\nname = "o"\nkey_env = "K"\n[[api.operators]]\nname = "p"\nkey_env = "K"\n',
                                      "api.operators[1].key_env: the same key as api.operators[0]'s"),
    "one key_sha256 for two tenants": (f'[[api.tenants]]\nname = "a"\nkey_sha256 = "{"1" * 64}"\n'
                                       f'[[api.tenants]]\nname = "b"\nkey_sha256 = "{"1" * 64}"\n',
                                       "api.tenants[1].key_sha256: the same key as api.tenants[0]'s"),
    "a carrier linked twice": (CARRIER + f'[[carriers.smpp]]\nname = "alpha"\n{LINK}[[carriers.smpp]]\nname = "alpha"\n{LINK}',
                               "carriers.smpp[1].name: carrier 'alpha' already has a link, carriers.smpp[0]"),
    "a carrier linked by SMPP and HTTP": (CARRIER + f'[[carriers.smpp]]\nname = "alpha"\n{LINK}'
                                          '[[carriers.http]]\nname = "alpha"\nurl = "https://sms.example.com/send"\n',
                                          "carriers.http[0].name: carrier 'alpha' already has a link, carriers.smpp[0]"),
    "TOML syntax": ("[api\nport = 1\n", "not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 5)"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_each_mistake_is_one_line_naming_the_file_and_the_key(tmp_path: Path, name: str) -> None:
    text, expected = BAD[name]
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(text)
    r = CliRunner().invoke(sluice, ["check-config", str(cfg), "--skip-env"])
    assert r.exit_code == 2, r.output
    [line] = r.output.strip().splitlines()
    assert line.startswith(f"error: {cfg}: ") and expected in line, line
    with pytest.raises(GatewayConfigError) as exc:  # the gateway's own reader (``sluice serve`` without [campaigns])
        load_gateway(cfg)
    assert expected in str(exc.value)


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "sluice.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + CARRIER.encode())
    assert load_gateway(cfg).core.carriers[0].name == "alpha"
    cfg.write_bytes(b"\xef\xbb\xbf" + (CARRIER + '[campaigns]\nstore_url = "sqlite:///c.db"\n').encode())
    r = CliRunner().invoke(sluice, ["check-config", str(cfg), "--skip-env"])
    assert r.exit_code == 0 and "ok" in r.output and "[campaigns]" in r.output, r.output


def test_a_tenants_key_may_also_be_an_operators(tmp_path: Path) -> None:
    """Apart tables (the showcase and the benches read /metrics with the tenant's key): not a mistake."""
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('[[api.tenants]]\nname = "a"\nkey_env = "K"\n[[api.operators]]\nname = "o"\nkey_env = "K"\n')
    assert load_gateway(cfg).api.operators[0].key_env == "K"


def test_two_variables_holding_one_key_are_refused_at_start(tmp_path: Path) -> None:
    """Keys from the environment are only known at start: ``serve``'s key table refuses a key two
    clients hold (``tenant_table``), naming the second."""
    from gateway.config import loads
    from gateway.errors import ConfigError
    from gateway.runtime.app import tenant_table

    cfg = loads('[[api.tenants]]\nname = "a"\nkey_env = "K1"\n[[api.tenants]]\nname = "b"\nkey_env = "K2"\n')
    with pytest.raises(ConfigError, match=r"the same key as 'a'.*api\.tenants\[1\]\.key_env"):
        tenant_table(cfg, {"K1": "same-key", "K2": "same-key"})
    assert len(tenant_table(cfg, {"K1": "one-key", "K2": "another"})) == 2
