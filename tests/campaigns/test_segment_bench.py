"""`sluice bench audience` on a tiny audience: it runs and writes the figures the issue names, and on
its generated data (both engines) every tree of its mix counts in SQL what ``evaluate`` finds in
Python over the store's own ``view`` of each subscriber."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bench.audience import MIX, NOW, TENANT, Audience, _load_postgres, _load_sqlite, windowed
from campaigns.core.segments import evaluate, parse_segment
from campaigns.store import open_store
from campaigns.store.segment_sql import compile_segment
from gateway.cli import main


def test_bench_audience_writes_its_figures(tmp_path):
    out = tmp_path / "aud.json"
    args = ["bench", "audience", "--subscribers", "300", "--orders", "3000", "--events", "20", "--runs", "1",
            "--workdir", str(tmp_path), "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    for key in ("engine", "import_s", "events_per_s", "count_p50_s", "count_p95_s", "count_windowed_p50_s",
                "membership_update_p99_s"):  # fmt: skip
        assert key in r
    assert r["engine"] == "sqlite" and r["trees"] >= 20
    assert {t["windowed"] for t in r["per_tree"]} == {True, False}
    assert sum(1 for t in r["per_tree"] if 0 < t["count"] < 300) >= 15  # the data hits the trees


def test_the_mix_counts_what_python_finds(store_url):
    store = open_store(store_url)
    try:
        gen = Audience(150, 1500, seed=3)
        if store.engine == "sqlite":
            _load_sqlite(store_url.removeprefix("sqlite:///"), gen)
        else:
            _load_postgres(store_url, gen)
        views = [store.view(TENANT, sid) for sid in range(1, 151)]
        assert sum(len(v.orders) for v in views) == 1500
        for name, tree in MIX:
            seg = parse_segment(tree)
            where, params = compile_segment(seg, store.engine, TENANT, NOW)
            want = sum(evaluate(seg, v, NOW) for v in views)
            assert store.count_where(TENANT, where, params) == want, (name, windowed(seg))
    finally:
        store.close()
