"""The service benchmarks still run end to end (tiny sizes: this checks them, it measures nothing)."""

import json

from click.testing import CliRunner

from gateway.cli import main


def test_bench_ingest_and_e2e_write_their_figures(tmp_path):
    out = tmp_path / "ingest.json"
    result = CliRunner().invoke(main, ["bench", "ingest", "--recipients", "3000", "--runs", "1", "--seconds", "0.5",
                                       "--clients", "4", "--json", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["per_run"][0]["stored"] == data["per_run"][0]["accepted"] > 2500
    assert data["single_per_s"] > 0 and data["server_peak_rss"] > 0
    out = tmp_path / "e2e.json"
    result = CliRunner().invoke(main, ["bench", "e2e", "--messages", "2000", "--runs", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["per_run"][0]["delivered"] == data["per_run"][0]["accepted"] > 1500
    assert data["messages_per_s"] > 0
