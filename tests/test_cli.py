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
