"""`sluice bench soak`: a fixed-rate run for a given duration; is memory flat?

`sluice serve` and one `sluice sim smsc` (limit = the offered rate + 10 %) as child processes on
loopback. Every second a job of ``--rate`` transactional recipients is POSTed; each second the
server's RSS (from /proc), the carrier's accepted count and the core's queue depth (`/metrics`)
are sampled. At the end, every message's final state is collected (bounded wait).

Reported: RSS over time (goal: flat within 10 % -- the median RSS of the last quarter against
that of the second quarter, after warm-up), the rate the carrier accepted over time, the final
states, and whether every message reached one.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import click
import httpx

from bench.machine import describe
from bench.output import out_option, save
from gateway.testing.processes import gateway, simulator

KEY = "bench-soak-key-0123456789"
FINAL = {"delivered", "undelivered", "expired", "rejected", "failed", "unknown", "capped", "suppressed", "canceled"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _queued(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("sluice_queue_depth{") and ('state="ready"' in line or 'state="waiting"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _config(directory: Path, sim_port: int, rate: float) -> Path:
    path = directory / "soak.toml"
    path.write_text(f"""
[api]
host = "127.0.0.1"

[[api.tenants]]
name = "soak"
key_env = "SLUICE_SOAK_KEY"
requests_per_second = 2000.0
burst = 2000

[[api.operators]]  # the same key reads /metrics
name = "soak"
key_env = "SLUICE_SOAK_KEY"

[store]
url = "sqlite:///{directory / 'sluice.db'}"

[[core.carriers]]
name = "c1"
rate = {rate}
burst = {max(1, int(rate / 10))}

[[core.routes]]
prefix = ""
carriers = ["c1"]

[[carriers.smpp]]
name = "c1"
port = {sim_port}
window = 100
""")
    return path


async def run(rate: int, duration: float) -> dict[str, Any]:
    series: list[dict[str, float]] = []
    jobs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sluice-soak-") as tmp:
        d = Path(tmp)
        async with simulator("--tps", str(int(rate * 1.1)), "--dlr-delay", "0.5") as sim:
            async with gateway(_config(d, sim.port, rate), env={"SLUICE_SOAK_KEY": KEY}) as gw:
                async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"},
                                             timeout=30) as client:  # fmt: skip
                    t0 = time.monotonic()
                    accepted_before = 0
                    for second in range(int(duration)):
                        job = {"from": "Shop", "category": "transactional", "template": "Order {n} shipped",
                               "recipients": [{"to": "+4479%08d" % (second * rate + i), "vars": {"n": str(i)}}
                                              for i in range(rate)]}  # fmt: skip
                        r = await client.post("/v1/jobs", json=job)
                        r.raise_for_status()
                        jobs.append(r.json()["id"])
                        counters = await sim.counters()
                        metrics = (await client.get("/metrics")).text
                        series.append({"t": time.monotonic() - t0, "rss_mb": _rss_mb(gw.pid),
                                       "rate": counters["accepted"] - accepted_before, "queued": _queued(metrics)})  # fmt: skip
                        accepted_before = counters["accepted"]
                        await anyio.sleep(max(0.0, t0 + second + 1 - time.monotonic()))
                    done: dict[str, dict[str, int]] = {}  # job -> its counts, once all final
                    with anyio.move_on_after(60):
                        while len(done) < len(jobs):
                            for job_id in jobs:
                                if job_id in done:
                                    continue
                                r = await client.get(f"/v1/jobs/{job_id}")
                                r.raise_for_status()
                                got = r.json()["counts"]
                                if sum(n for s, n in got.items() if s in FINAL) >= rate:
                                    done[job_id] = got
                            if len(done) < len(jobs):
                                await anyio.sleep(1.0)
                    counts: dict[str, int] = {}
                    for got in done.values():
                        for state, n in got.items():
                            counts[state] = counts.get(state, 0) + n
    n = len(series)
    second_q = [p["rss_mb"] for p in series[n // 4 : n // 2]] or [series[0]["rss_mb"]]
    last_q = [p["rss_mb"] for p in series[3 * n // 4 :]] or [series[-1]["rss_mb"]]
    total = rate * len(jobs)
    return {
        "scenario": "soak",
        "rate": rate,
        "duration_s": duration,
        "messages": total,
        "messages_per_s": statistics.median(p["rate"] for p in series[2:]) if n > 2 else 0.0,
        "rss_mb_second_quarter": statistics.median(second_q),
        "rss_mb_last_quarter": statistics.median(last_q),
        "rss_growth": statistics.median(last_q) / statistics.median(second_q) - 1,
        "final_states": counts,
        "all_final": sum(v for s, v in counts.items() if s in FINAL) == total,
        "series": series,
        "machine": describe(),
    }


@click.command("soak")
@click.option("--rate", default=500, show_default=True, help="Messages offered per second.")
@click.option("--duration", default=120.0, show_default=True, help="Seconds of offered load (bounded).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_soak(rate: int, duration: float, json_path: str | None, out_dir: str | None) -> None:
    """A fixed-rate run: RSS over time (goal: flat within 10 %), rate over time, final states."""
    if duration > 3600:
        raise click.BadParameter("at most 3600 s", param_hint="--duration")
    r = anyio.run(run, rate, duration, backend="asyncio", backend_options={"use_uvloop": True})
    click.echo(f"sluice bench soak: {rate}/s offered for {duration:g} s ({r['messages']:,} messages)")
    click.echo(f"  accepted by the carrier, median/s   {r['messages_per_s']:>10,.0f}")
    click.echo(f"  RSS second quarter / last quarter  {r['rss_mb_second_quarter']:>7.1f} / {r['rss_mb_last_quarter']:.1f} MB"
               f"  ({r['rss_growth']:+.1%}; goal within 10 %)")  # fmt: skip
    click.echo(f"  final states                       {r['final_states']}")
    click.echo(f"  every message final                {'yes' if r['all_final'] else 'NO'}")
    save(r, json_path, out_dir)
