"""`sluice bench ingest`: how fast `sluice serve` accepts work durably over HTTP.

1. One job of N recipients (default 1,000,000) POSTed as streamed NDJSON over loopback; timed
   from the first byte of the request to the 202, which is sent only after the store committed
   every message (SQLite WAL, ``synchronous=FULL``: on disk, not just in the OS cache). The
   accepted count is checked against the job's size read back over the API, and the server's
   peak resident memory (``VmHWM``) is recorded.
2. Single-message POSTs per second from C concurrent keep-alive clients for S seconds, each 202
   also committed with ``synchronous=FULL``. The reference measured in the same run is the
   same clients on ``GET /healthz`` (the HTTP stack alone: no auth, no core, no store).

The carrier has no link, so nothing drains the queue during the measurement: ingest is measured
alone, without the dispatcher's work in the same process competing for the CPU (that is what
`sluice bench e2e` measures). The queue is not free either way: every message is admitted to
the core (validated, routed, planned into segments, queued) as it would be with a link.

Each run starts a fresh `sluice serve` child process on a fresh store, so caches are cold (the
number and time-zone caches are warmed by the job itself). The bench client runs in this
process; on a 2-core machine it takes the other core.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio
import click
import httpx

from bench.machine import describe
from bench.output import out_option, save
from bench.service import (
    AUTH,
    ENV,
    children,
    children_cpu_seconds,
    config,
    cpu_seconds,
    hammer,
    medians,
    memory,
    ndjson_job,
    single_messages,
    until_ready,
)
from gateway.testing.processes import gateway


async def _post_job(url: str, pieces: list[bytes]) -> tuple[float, dict]:
    async def body():
        for p in pieces:
            yield p

    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=300) as client:
        t0 = time.perf_counter()
        r = await client.post("/v1/jobs", content=body(), headers={"content-type": "application/x-ndjson"})
        elapsed = time.perf_counter() - t0
        if r.status_code != 202:
            raise click.ClickException(f"job POST answered {r.status_code}: {r.text[:300]}")
        accepted = r.json()
        stored = (await client.get(f"/v1/jobs/{accepted['id']}")).json()
    return elapsed, {"accepted": accepted["accepted"], "rejected": accepted.get("rejected_count", len(accepted["rejected"])), "stored": stored["size"]}


def _cpu(pid: int) -> tuple[float, float, float]:
    return cpu_seconds(pid, main_thread=True), cpu_seconds(pid), children_cpu_seconds(pid)


async def one_run(n: int, pieces: list[bytes], singles: list[bytes], clients: int, seconds: float,
                  workers: int | str) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        d = Path(tmp)
        with open(d / "serve.log", "wb") as log:
            async with gateway(config(d, ingest_workers=workers), env=ENV, stderr=log) as gw:
                with anyio.fail_after(600):
                    await until_ready(gw.url)
                    before = memory(gw.pid)
                    cpu0 = _cpu(gw.pid)
                    elapsed, counts = await _post_job(gw.url, pieces)
                    cpu = [(b - a) / n * 1e6 for a, b in zip(cpu0, _cpu(gw.pid))]
                    mem = memory(gw.pid)
                    mem["workers_rss"] = sum(memory(kid)["rss"] for kid in children(gw.pid))
                    if counts["accepted"] + counts["rejected"] != n or counts["stored"] != counts["accepted"]:
                        raise click.ClickException(f"counts do not add up: {counts}")
                    ref = await hammer(gw.port, "/healthz", [b""], clients=clients, seconds=seconds / 2, method="GET")
                    single = await hammer(gw.port, "/v1/messages", singles, clients=clients, seconds=seconds)
        size = (d / "sluice.db").stat().st_size if (d / "sluice.db").exists() else 0
    return {
        "job_seconds": elapsed,
        "job_recipients_per_s": n / elapsed,
        "cpu_us_loop": cpu[0],
        "cpu_us_server": cpu[1],
        "cpu_us_workers": cpu[2],
        **counts,
        "server_rss_before": before["rss"],
        "server_peak_rss": mem["peak_rss"],
        "server_rss_after": mem["rss"],
        "workers_rss": mem["workers_rss"],
        "store_bytes": size,
        "single_per_s": single["requests_per_s"],
        "single_errors": single["errors"],
        "single_latency_ms_median": single["latency_ms_median"],
        "single_latency_ms_p99": single["latency_ms_p99"],
        "healthz_reference_per_s": ref["requests_per_s"],
        "single_ratio": single["requests_per_s"] / ref["requests_per_s"],
    }


def run(n: int, runs: int, clients: int, seconds: float, seed: int, workers: int | str = "auto") -> dict[str, object]:
    pieces = ndjson_job(n, seed=seed)
    singles = single_messages(20_000, seed)
    results = []
    for _ in range(runs):
        results.append(anyio.run(one_run, n, pieces, singles, clients, seconds, workers, backend="asyncio",
                                  backend_options={"use_uvloop": True}))  # fmt: skip
    keys = ("job_seconds", "job_recipients_per_s", "cpu_us_loop", "cpu_us_server", "cpu_us_workers", "server_peak_rss", "workers_rss", "single_per_s", "single_latency_ms_median",
            "single_latency_ms_p99", "healthz_reference_per_s", "single_ratio")  # fmt: skip
    return {
        "scenario": "ingest",
        "runs": runs,
        "recipients": n,
        "body_bytes": sum(map(len, pieces)),
        "clients": clients,
        "seconds": seconds,
        "ingest_workers": workers,
        **medians(results, keys),
        "per_run": results,
        "machine": describe(),
    }


@click.command("ingest")
@click.option("--recipients", "n", default=1_000_000, show_default=True, help="Recipients in the job.")
@click.option("--runs", default=3, show_default=True, help="Runs; figures are medians.")
@click.option("--clients", default=16, show_default=True, help="Concurrent clients for single-message POSTs.")
@click.option("--seconds", default=5.0, show_default=True, help="How long single-message POSTs go on.")
@click.option("--seed", default=1, show_default=True)
@click.option("--ingest-workers", "workers", default="auto", show_default=True,
              help="The server's api.ingest_workers: processes that check large jobs (0: its event loop does).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_ingest(n: int, runs: int, clients: int, seconds: float, seed: int, workers: str, json_path: str | None,
                 out_dir: str | None) -> None:  # fmt: skip
    """A big job accepted durably over HTTP (NDJSON), and single-message POSTs per second."""
    if workers != "auto" and not workers.isdigit():
        raise click.BadParameter("a whole number or 'auto'", param_hint="--ingest-workers")
    r = run(n, runs, clients, seconds, seed, int(workers) if workers.isdigit() else workers)
    mb = 1 << 20
    rows = [
        (f"job of {n:,} recipients, POST -> 202 (s)", f"{r['job_seconds']:.2f}"),
        ("  recipients/s", f"{r['job_recipients_per_s']:,.0f}"),
        ("  server CPU per recipient, event loop (µs)", f"{r['cpu_us_loop']:.1f}"),
        ("  server CPU per recipient, all threads (µs)", f"{r['cpu_us_server']:.1f}"),
        ("  ingest workers' CPU per recipient (µs)", f"{r['cpu_us_workers']:.1f}"),
        ("  server peak RSS (MB)", f"{r['server_peak_rss'] / mb:,.0f}"),
        ("  ingest workers' RSS after the job, all (MB)", f"{r['workers_rss'] / mb:,.0f}"),
        (f"single-message POSTs/s ({clients} clients)", f"{r['single_per_s']:,.0f}"),
        ("  latency median / p99 (ms)", f"{r['single_latency_ms_median']:.1f} / {r['single_latency_ms_p99']:.1f}"),
        ("GET /healthz/s (reference)", f"{r['healthz_reference_per_s']:,.0f}"),
        ("  ratio", f"{r['single_ratio']:.2f}"),
    ]
    click.echo(f"sluice bench ingest: {n:,} recipients ({r['body_bytes'] / mb:,.0f} MB NDJSON), ingest workers "
               f"{workers}, median of {runs} runs")  # fmt: skip
    for k, v in rows:
        click.echo(f"  {k:<44} {v:>14}")
    save(r, json_path, out_dir)
