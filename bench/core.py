"""`sluice bench core`: how fast the delivery core decides, and how little a queued message costs.

N templated messages (a mix of marketing, transactional and OTP) over four carriers, recipients
spread over time zones, go through admission and then dispatch on virtual time (one instant in
the afternoon UTC, so some zones are in quiet hours and get deferred). Measured in the same run:
a bare ``heapq`` push+pop of N tuples, the reference the ratio is taken against. Memory is
measured in a separate pass with tracemalloc (which slows code down), over queued templated
messages only.
"""

from __future__ import annotations

import gc
import heapq
import random
import statistics
import time
import tracemalloc

import click

from gateway.testing import workload
from bench.machine import describe
from bench.output import out_option, save
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CarrierSettings, CoreSettings, Route

NOW = 1795532400.0  # 2026-11-24 15:00 UTC: New York morning, Paris afternoon, Sydney night
CHUNK = 10_000
MIX = (("marketing", 0.80), ("transactional", 0.15), ("otp", 0.05))


def settings() -> CoreSettings:
    big = 10**9  # the benchmark measures the core's decisions, not the carriers' limits
    names = ["c1", "c2", "c3", "c4"]
    return CoreSettings(
        carriers=[CarrierSettings(name=n, rate=float(big), burst=big) for n in names],
        routes=[
            Route(prefix="", carriers=["c1"]),
            Route(prefix="44", carriers=["c2"]),
            Route(prefix="33", carriers=["c2"]),
            Route(prefix="49", carriers=["c3"]),
            Route(prefix="91", carriers=["c3"]),
            Route(prefix="61", carriers=["c4"]),
            Route(prefix="81", carriers=["c4"]),
        ],
    )


def _chunks(n: int, seed: int):
    """(job, recipients) chunks of the workload, generated outside the timed sections."""
    k = 0
    for category, share in MIX:
        count = int(n * share) if category != "otp" else n - k
        job = workload.job(f"job-{category}", category)
        for start in range(0, count, CHUNK):
            size = min(CHUNK, count - start)
            yield job, list(workload.recipients(size, seed + k + start, vars_for=category))
        k += count


def run_decisions(n: int, seed: int) -> dict[str, float]:
    sched = Scheduler(settings(), NOW)
    # Warm the per-prefix caches (zones, regions, routes) as a running gateway has them; the
    # warm-up job is dispatched and forgotten before timing starts.
    sched.admit(workload.job("warm-up", "transactional"), list(workload.recipients(20_000, seed + 10**6,
                vars_for="transactional")), NOW)  # fmt: skip
    for c in sched.settings.carriers:
        for d in sched.take(c.name, 10**6, NOW).dispatches:
            sched.complete(d.ref)
    admit_s = 0.0
    accepted = 0
    for job, chunk in _chunks(n, seed):
        t0 = time.perf_counter()
        adm = sched.admit(job, chunk, NOW)
        admit_s += time.perf_counter() - t0
        accepted += adm.accepted
    t0 = time.perf_counter()
    dispatched = outcomes = 0
    carriers = [c.name for c in sched.settings.carriers]
    busy = True
    while busy:
        busy = False
        for c in carriers:
            batch = sched.take(c, 1000, NOW)
            for d in batch.dispatches:
                sched.complete(d.ref)
            dispatched += len(batch.dispatches)
            outcomes += len(batch.outcomes)
            busy = busy or bool(batch.dispatches or batch.outcomes)
    dispatch_s = time.perf_counter() - t0
    return {
        "messages": n,
        "accepted": accepted,
        "dispatched": dispatched,
        "deferred_or_ended": outcomes,
        "admit_per_s": n / admit_s,
        "dispatch_per_s": (dispatched + outcomes) / dispatch_s,
        "decisions_per_s": n / (admit_s + dispatch_s),
    }


def heapq_reference(n: int, seed: int) -> float:
    rnd = random.Random(seed)
    items = [(rnd.randrange(3), rnd.random(), i) for i in range(n)]
    heap: list[tuple[int, float, int]] = []
    t0 = time.perf_counter()
    push, pop = heapq.heappush, heapq.heappop
    for it in items:
        push(heap, it)
    while heap:
        pop(heap)
    return n / (time.perf_counter() - t0)


def bytes_per_message(n: int, seed: int) -> float:
    """Retained memory of the core per queued templated marketing message."""
    gc.collect()
    sched = Scheduler(settings(), NOW)
    job = workload.job("job-mem", "marketing")
    chunks = [list(workload.recipients(min(CHUNK, n - s), seed + s)) for s in range(0, n, CHUNK)]
    sched.admit(job, chunks[0][:1], NOW)  # warm caches and the job entry before measuring
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for chunk in chunks:
        sched.admit(job, chunk, NOW)
    del chunks
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


def run(n: int, runs: int, seed: int) -> dict[str, object]:
    """Each run measures the core and, right after, the heapq reference: the ratio is taken per
    run (both under the same machine load), then the median of the runs is reported."""
    results = []
    for r in range(runs):
        res = run_decisions(n, seed + r)
        res["heapq_reference_per_s"] = heapq_reference(n, seed + r)
        res["ratio"] = res["decisions_per_s"] / res["heapq_reference_per_s"]
        results.append(res)

    def median(key: str) -> float:
        return statistics.median(float(x[key]) for x in results)

    return {
        "scenario": "core",
        "runs": runs,
        "messages": n,
        "decisions_per_s": median("decisions_per_s"),
        "admit_per_s": median("admit_per_s"),
        "dispatch_per_s": median("dispatch_per_s"),
        "heapq_reference_per_s": median("heapq_reference_per_s"),
        "ratio": median("ratio"),
        "bytes_per_message": bytes_per_message(min(n, 200_000), seed),
        "per_run": results,
        "machine": describe("none (pure core, virtual time)"),
    }


@click.command("core")
@click.option("--messages", "n", default=1_000_000, show_default=True, help="Messages per run.")
@click.option("--runs", default=3, show_default=True, help="Runs; figures are medians.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_core(n: int, runs: int, seed: int, json_path: str | None, out_dir: str | None) -> None:
    """Decisions per second of the delivery core and bytes per queued message."""
    result = run(n, runs, seed)
    rows = [
        ("decisions/s (admit + dispatch)", f"{result['decisions_per_s']:,.0f}"),
        ("  admission/s", f"{result['admit_per_s']:,.0f}"),
        ("  dispatch decisions/s", f"{result['dispatch_per_s']:,.0f}"),
        ("heapq push+pop/s (reference)", f"{result['heapq_reference_per_s']:,.0f}"),
        ("ratio (target >= 0.35)", f"{result['ratio']:.2f}"),
        ("bytes per queued message (target <= 128)", f"{result['bytes_per_message']:.0f}"),
    ]
    click.echo(f"sluice bench core: {n:,} messages, median of {runs} runs")
    for k, v in rows:
        click.echo(f"  {k:<44} {v:>14}")
    save(result, json_path, out_dir)
