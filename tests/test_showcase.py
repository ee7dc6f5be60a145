"""`make run` (`sluice demo`): two simulators and `sluice serve` as child processes, a job over
HTTP, and a summary whose facts hold: all that is not deferred is final, the weekly cap and the
opt-outs were applied, and no simulator saw more than its limit in any second."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import main


def test_the_run_command_shows_the_product_end_to_end(tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["demo", "--recipients", "2000", "--timeout", "60", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("Messages by state", "largest 1-s rate seen", "Throughput", "One-time codes", "stopped"):
        assert text in result.output
    assert "Deferred for quiet hours" in result.output or "No message is deferred" in result.output
    report = json.loads(out.read_text())
    for counts in report["jobs"].values():
        assert not {"queued", "accepted", "submitted"} & counts.keys(), counts
    sale = report["jobs"]["winter sale (marketing)"]
    assert sale["capped"] == 20 and sale["suppressed"] == 10  # 2000 // 100 regulars, 10 opted out
    assert report["rejected_at_submission"] > 0
    assert sum(sale.values()) + report["rejected_at_submission"] == 2000
    assert report["deferred_total"] == sale.get("deferred", 0)
    for sim in report["carriers"]:
        assert sim["max_submits_1s"] <= sim["limit"] and sim["throttled"] == 0, sim
    assert report["carriers"][0]["limit"] != report["carriers"][1]["limit"]
