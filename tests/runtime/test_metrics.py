"""/metrics content, from a core with queued work and a dispatcher's counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.config import default_text, loads
from gateway.core.model import Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.runtime.dispatcher import DispatcherStats
from gateway.runtime.metrics import LatencyHistogram, Metrics

NOON_UTC = 1_767_268_800.0  # 2026-01-01 12:00 UTC


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}  # fmt: skip


def test_queue_depth_by_shard_and_state_rates_counters_and_latency() -> None:
    cfg = loads(default_text())
    core = Scheduler(cfg.core, NOON_UTC)
    job = Job(id="j1", tenant="t", sender="Shop", template="Hello", category="transactional")
    core.admit(job, [Recipient(to="+4479111%05d" % i) for i in range(100)], NOON_UTC)
    stats = DispatcherStats()
    stats.submitted = 7
    stats.writes, stats.write_s, stats.window_wait_s, stats.wire_wait_s = 3, 0.25, 1.5, 0.125
    stats.rows_written, stats.record_cpu_s = 5, 0.0625
    latency = LatencyHistogram()
    for v in (0.01, 0.2, 0.2, 3.0, 10_000_000.0):
        latency.observe(v)
    got = samples(Metrics(core, {}, lambda: NOON_UTC, lambda: stats, latency))
    depth = {k: v for k, v in got.items() if k[0] == "sluice_queue_depth"}
    assert len({dict(k[1])["shard"] for k in depth}) == cfg.core.shards
    assert sum(v for k, v in depth.items() if dict(k[1])["state"] == "ready") == 100
    assert got[("sluice_queue_ready", (("carrier", "beta"),))] == 100  # 44 routes to beta first
    assert got[("sluice_carrier_rate", (("carrier", "alpha"),))] == cfg.core.carriers[0].rate
    assert got[("sluice_messages_total", (("event", "submitted"),))] == 7
    assert got[("sluice_messages_total", (("event", "writes"),))] == 3
    assert got[("sluice_messages_total", (("event", "rows_written"),))] == 5
    assert {w: got[("sluice_dispatcher_seconds_total", (("what", w),))]
            for w in ("write", "window_wait", "wire_wait", "record_cpu")} \
        == {"write": 0.25, "window_wait": 1.5, "wire_wait": 0.125, "record_cpu": 0.0625}
    assert got[("sluice_receipt_latency_seconds_bucket", (("le", "0.05"),))] == 1
    assert got[("sluice_receipt_latency_seconds_bucket", (("le", "0.25"),))] == 3
    assert got[("sluice_receipt_latency_seconds_bucket", (("le", "86400.0"),))] == 4
    assert got[("sluice_receipt_latency_seconds_bucket", (("le", "+Inf"),))] == 5
    assert got[("sluice_receipt_latency_seconds_count", ())] == 5


def test_garbage_collections_counted_by_generation_while_entered() -> None:
    import gc

    from gateway.runtime.metrics import GcTimes

    cfg = loads(default_text())
    core = Scheduler(cfg.core, NOON_UTC)
    with GcTimes() as times:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    gc.collect(2)  # after the block: not counted
    got = samples(Metrics(core, {}, lambda: NOON_UTC, gc_times=times))
    assert got[("sluice_gc_collections_total", (("generation", "0"),))] == 1
    assert got[("sluice_gc_collections_total", (("generation", "2"),))] == 2
    assert got[("sluice_gc_seconds_total", (("generation", "2"),))] >= 0.0
    assert times not in gc.callbacks
    assert ("sluice_gc_collections_total", (("generation", "0"),)) not in samples(
        Metrics(core, {}, lambda: NOON_UTC))
