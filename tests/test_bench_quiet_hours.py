"""`sluice bench quiet-hours` on a small job: its oracle (phonenumbers + zoneinfo, no core code)
finds nothing sent out of window and every held message released, spread over the opening."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import main


def test_quiet_hours_bench_holds_releases_and_spreads(tmp_path):
    out = tmp_path / "qh.json"
    result = CliRunner().invoke(main, ["bench", "quiet-hours", "--messages", "4000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["dispatched_out_of_window"] == 0
    assert r["held_for_quiet_hours"] > 1000 and r["held_then_sent"] == r["held_for_quiet_hours"]
    assert r["dispatched"] == r["accepted"] == 4000
    assert 1500 <= r["release_span_s_min"] <= r["release_span_s_max"] <= 1800  # spread, not a burst
