"""`sluice bench campaign` at a tiny size: a real `sluice serve` (both layers) launches the campaign
to the gateway's 202s, a load generator in its own process follows short links, and the report
attributes the seeded outcomes; every figure the issue names is written (this checks the bench, it
measures nothing)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gateway.cli import main


def test_bench_campaign_writes_its_figures(tmp_path) -> None:
    out = tmp_path / "campaign.json"
    r = CliRunner().invoke(main, ["bench", "campaign", "--recipients", "300", "--runs", "1", "--redirect-seconds", "0.5",
                                  "--concurrency", "2", "--json", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    for key in ("launch_to_accepted_s", "redirects_per_s", "redirect_p99_ms", "attribution_s"):
        assert data[key] > 0, key
    # Consent (5 % revoked) and smart sending (5 % sent an hour ago) left out about a tenth.
    assert 230 <= data["recipients"] == data["accepted"] < 300
    # The launch starts on an idle server, and the CPU of serve's own processes is counted apart.
    assert data["startup_settle_s"] > 0 and data["launch_workers_cpu_s"] >= 0 and data["launch_server_cpu_s"] > 0
    [load] = data["redirect_runs"]
    assert load["requests"] > 0 and load["errors"] == 0
    totals, seeded = data["report_totals"], data["outcomes"]
    assert totals["sent"] == totals["delivered"] == seeded["deliveries"] == data["recipients"]
    assert totals["cost"] == 4 * totals["sent"]  # the seeded price: 1 segment x 4
    assert 0 < totals["conversions"] <= seeded["orders"] and totals["opt_outs"] <= seeded["opt_outs"]
    assert totals["unique_clicks"] >= seeded["clicks"]
    assert data["command"].startswith("sluice bench campaign --recipients 300")
    # The report again after the redirect phase's clicks, once serve is idle (twice), with serve's CPU.
    assert data["attribution_after_redirects_s"] > 0 and data["attribution_settled_s"] > 0
    assert data["attribution_server_cpu_s"] >= 0 and data["after_redirects_settle_s"] > 0  # (CPU: 10 ms ticks)
    clicks = data["clicks_after_redirects"]
    assert clicks["rows"] >= clicks["human"] >= clicks["unique"] >= seeded["clicks"]


def test_report_clicks_times_the_report_before_and_after_live_clicks() -> None:
    from bench.report_clicks import main as report_clicks

    r = CliRunner().invoke(report_clicks, ["--recipients", "400", "--clicks", "30"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if "plans changed" in x]
    assert [x.split()[0] for x in lines] == ["seeded,", "+30", "then"], r.output
