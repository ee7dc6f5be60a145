from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main

ROOT = Path(__file__).parent.parent


def test_check_config_accepts_the_shipped_files():
    runner = CliRunner()
    for name in ("sluice.toml", "example.toml"):
        result = runner.invoke(main, ["check-config", str(ROOT / "config" / name)], env={"ALPHA_SMPP_PASSWORD": "pw"})
        assert result.exit_code == 0, result.output
        assert "ok" in result.output


ENV_CONFIG = """
[[api.tenants]]
name = "acme"
key_env = "SLUICE_TEST_ACME_KEY"
webhook_secret_env = "SLUICE_TEST_ACME_HOOK"

[[api.tenants]]
name = "beta"
key_sha256 = "%s"
""" % ("0" * 64)


def test_check_config_fails_naming_each_unset_variable(tmp_path):
    cfg = tmp_path / "env.toml"
    cfg.write_text(ENV_CONFIG)
    unset = {"SLUICE_TEST_ACME_KEY": None, "SLUICE_TEST_ACME_HOOK": None}
    result = CliRunner().invoke(main, ["check-config", str(cfg)], env=unset)
    assert result.exit_code == 2
    assert "'SLUICE_TEST_ACME_KEY' is not set (at api.tenants[0].key_env)" in result.output
    assert "'SLUICE_TEST_ACME_HOOK' is not set (at api.tenants[0].webhook_secret_env)" in result.output
    empty = CliRunner().invoke(main, ["check-config", str(cfg)], env={**unset, "SLUICE_TEST_ACME_KEY": ""})
    assert empty.exit_code == 2 and "SLUICE_TEST_ACME_KEY" in empty.output  # empty is unset
    ok = CliRunner().invoke(main, ["check-config", str(cfg)], env={"SLUICE_TEST_ACME_KEY": "k", "SLUICE_TEST_ACME_HOOK": "s"})
    assert ok.exit_code == 0, ok.output
    skipped = CliRunner().invoke(main, ["check-config", "--skip-env", str(cfg)], env=unset)
    assert skipped.exit_code == 0, skipped.output
    # A carrier's secret too (the shipped example names one).
    carrier = CliRunner().invoke(main, ["check-config", str(ROOT / "config" / "example.toml")],
                                 env={"ALPHA_SMPP_PASSWORD": None})  # fmt: skip
    assert carrier.exit_code == 2 and "ALPHA_SMPP_PASSWORD" in carrier.output and "carriers.smpp[0]" in carrier.output


def test_serve_with_a_variable_unset_exits_with_one_line(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "env.toml"
    cfg.write_text(ENV_CONFIG)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SLUICE_TEST_")}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert lines == ["error: environment variable 'SLUICE_TEST_ACME_KEY' is not set (at api.tenants[0].key_env)"]


def test_check_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[core.weekly_cap]\nlimit = 0\n")
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "core.weekly_cap.limit" in result.output


def test_virtual_demo_runs_and_summarises():
    result = CliRunner().invoke(main, ["demo", "--virtual", "--recipients", "2000"])
    assert result.exit_code == 0, result.output
    for text in ("accepted", "capped", "suppressed", "largest 1-s window", "quiet hours"):
        assert text in result.output


def test_bench_core_writes_its_figures(tmp_path):
    import json

    out = tmp_path / "core.json"
    result = CliRunner().invoke(main, ["bench", "core", "--messages", "3000", "--runs", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("decisions_per_s", "heapq_reference_per_s", "ratio", "bytes_per_message"):
        assert data[key] > 0


def test_the_readmes_minimal_config_is_valid_and_names_its_variables(tmp_path):
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A minimal config to start from"):]
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(toml)
    env = {"ALPHA_SMPP_PASSWORD": "pw", "ACME_API_KEY": "k"}
    ok = CliRunner().invoke(main, ["check-config", str(cfg)], env=env)
    assert ok.exit_code == 0, ok.output
    missing = CliRunner().invoke(main, ["check-config", str(cfg)], env={**env, "ACME_API_KEY": None})
    assert missing.exit_code == 2 and "ACME_API_KEY" in missing.output
