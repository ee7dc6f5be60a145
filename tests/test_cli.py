from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main

ROOT = Path(__file__).parent.parent


def test_check_config_accepts_the_shipped_files():
    runner = CliRunner()
    for name in ("sluice.toml", "example.toml"):
        result = runner.invoke(main, ["check-config", str(ROOT / "config" / name)])
        assert result.exit_code == 0, result.output
        assert "ok" in result.output


def test_check_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[core.weekly_cap]\nlimit = 0\n")
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "core.weekly_cap.limit" in result.output


def test_demo_runs_and_summarises():
    result = CliRunner().invoke(main, ["demo", "--recipients", "2000"])
    assert result.exit_code == 0, result.output
    for text in ("accepted", "capped", "suppressed", "largest 1-s window", "quiet hours"):
        assert text in result.output
