"""`make run` (`sluice demo`): two simulators and `sluice serve` as child processes, a job over
HTTP, and a summary whose facts hold: all that is not deferred is final, the weekly cap and the
opt-outs were applied, and no simulator saw more than its limit in any second."""

from __future__ import annotations

import json

import pytest
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


def test_the_run_command_tells_the_shops_story(tmp_path):
    """`sluice demo --part shop` (the second half of `make run`): what the story did from outside (imports,
    sign-ups, clicks, orders, a STOP) is what the campaigns API reports back (the JSON summary). The
    chapters this test checks; the whole story (with the flows' waits) is the slow test below."""
    from campaigns.cli import main as sluice

    out = tmp_path / "story.json"
    result = CliRunner().invoke(sluice, ["demo", "--part", "shop", "--story-json", str(out), "--story-timeout", "80",
                                         "--story-chapters", "audience,campaign,inbox"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("consent ledger", "consent/proof", "Segments", "Preview", "/winner", "Analytics", "stopped"):
        assert text in result.output
    facts = json.loads(out.read_text())["facts"]
    a, c = facts["audience"], facts["campaign"]
    assert (a["imported"], a["consented"], a["unproven"], a["unproven_marketable"]) == (150, 135, 15, False)
    assert a["orders"] > 0 and a["orders_duplicate"] == a["orders"]  # the retried bulk applied nothing twice
    assert a["keyword_ledger"] == ["opt_in", "confirm"] and a["form_status"] == "pending"
    assert (a["proof_actions"], a["proof_sources"]) == (["opt_in", "confirm"], ["form", "reply"])
    assert a["proof_verified"] and a["proof_has_ip"] and a["proof_has_user_agent"]
    loyal = a["segments"]["Loyal, not clicked in 30 days"]
    assert loyal["count"] == loyal["before"] + 1  # the live order moved one customer in
    assert c["smart_skipped"] == c["smart_skipped_expected"] == 6
    assert c["accepted"] == c["relaunch_accepted"] == c["test_recipients"] > 0  # the relaunch sent nothing new
    # sent now, in each recipient's own zone, where the story made it daytime
    assert sum(c["send_hours"].values()) == c["test_recipients"] and all(10 <= int(h) < 18 for h in c["send_hours"])
    assert c["clicks"] == {"unique": c["clickers"], "total": c["clickers"] + c["double_clicks"], "ignored": 2}
    assert c["winner"] == "b" and c["released"] == c["held"]
    t = c["totals"]
    assert t["sent"] == t["delivered"] == c["test_recipients"] + c["released"]
    assert (t["unique_clicks"], t["conversions"], t["revenue"]) == (c["clickers"], c["orders"], c["order_revenue"])
    assert c["attributed_via"] == {"click": c["buyers_after_click"], "view": c["buyers_after_view"]}
    assert t["opt_outs"] == 1 and c["report"]["a"]["ctr"] < c["report"]["b"]["ctr"]
    # one segment each, priced by the carrier that took it (the story's config: alpha 4, beta 5)
    assert 4 * t["sent"] <= t["cost"] <= 5 * t["sent"] and t["roi"] == (t["revenue"] - t["cost"]) / t["cost"]
    i = facts["inbox"]  # a question no flow takes, answered once through the API, delivered
    assert (i["answered"], i["answer_state"], i["needs_reply"]) == (1, "delivered", 0)


@pytest.mark.slow  # every chapter, the flows' waits included (~30 s)
def test_the_whole_shops_story_runs(tmp_path):
    from campaigns.cli import main as sluice
    from campaigns.story.runner import CHAPTERS

    out = tmp_path / "story.json"
    result = CliRunner().invoke(sluice, ["demo", "--part", "shop", "--story-json", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["chapters"] == [name for name, _ in CHAPTERS]
    assert all(summary["facts"].get(name) for name in summary["chapters"]), summary["facts"].keys()
