"""`sluice bench scaling`: SMPP throughput against binds x window, and against message size.

The real ``SmppConnector`` against `sluice sim smsc` in another process (pinned to the other core;
no TPS limit; receipts at once), as in `sluice bench smpp`. Two sweeps, each configuration run
``--runs`` times (interleaved) and the median kept:

- binds x window with one-segment messages: where the link stops being round-trip bound;
- 1, 2 and 5 segments per message at the best of those: messages/s and segments/s (each segment
  is one submit_sm and one receipt; a message ends when all its parts are in).
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import anyio
import click

from bench.machine import describe
from bench.output import out_option, save
from bench.smpp import _one, _start_simulator, _stop_simulator


def _median_runs(port: int, window: int, binds: int, segments: int, messages: int, seconds: float,
                 runs: int) -> dict[str, Any]:  # fmt: skip
    results = [
        anyio.run(_one, port, window, binds, messages, seconds, segments, backend="asyncio",
                  backend_options={"use_uvloop": True})  # fmt: skip
        for _ in range(runs)
    ]
    out = dict(results[0])
    for key in ("submits_per_s", "receipts_per_s"):
        out[key] = statistics.median(r[key] for r in results)
    out["segments_per_s"] = out["submits_per_s"] * segments
    out["requeued"] = sum(r["requeued"] for r in results)
    return out


def run(binds_list: list[int], windows: list[int], sizes: list[int], messages: int, seconds: float,
        runs: int) -> dict[str, Any]:  # fmt: skip
    proc, port = _start_simulator("asyncio")
    grid, by_size = [], []
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) > 1:
            os.sched_setaffinity(0, {cores[0]})
        for binds in binds_list:
            for window in windows:
                n = messages if window > 1 else min(messages, 10_000)
                grid.append(_median_runs(port, window, binds, 1, n, seconds, runs))
        best = max(grid, key=lambda r: r["submits_per_s"])
        for segments in sizes:
            by_size.append(_median_runs(port, best["window"], best["binds"], segments, messages // segments,
                                        seconds, runs))  # fmt: skip
    finally:
        if len(os.sched_getaffinity(0)) < (os.cpu_count() or 1):
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        simulator = _stop_simulator(proc)
    return {"scenario": "scaling", "runs": runs, "grid": grid, "by_size": by_size, "simulator": simulator,
            "machine": describe()}  # fmt: skip


def _ints(value: str) -> list[int]:
    return [int(x) for x in value.split(",")]


@click.command("scaling")
@click.option("--binds", default="1,2,4", show_default=True)
@click.option("--windows", default="1,10,100,400", show_default=True)
@click.option("--segments", default="1,2,5", show_default=True, help="Message sizes for the second sweep.")
@click.option("--messages", default=60_000, show_default=True, help="At most this many per configuration.")
@click.option("--seconds", default=2.0, show_default=True, help="At most this long feeding each configuration.")
@click.option("--runs", default=3, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_scaling(binds: str, windows: str, segments: str, messages: int, seconds: float, runs: int,
                  json_path: str | None, out_dir: str | None) -> None:  # fmt: skip
    """SMPP throughput vs binds x window, and vs message size (1, 2, 5 segments)."""
    r = run(_ints(binds), _ints(windows), _ints(segments), messages, seconds, runs)
    click.echo(f"sluice bench scaling: SMPP connector vs the simulator, median of {runs} runs")
    click.echo("  binds  window   messages/s  receipts/s")
    for x in r["grid"]:
        click.echo(f"  {x['binds']:>5} {x['window']:>7} {x['submits_per_s']:>12,.0f} {x['receipts_per_s']:>11,.0f}")
    best = max(r["grid"], key=lambda x: x["submits_per_s"])
    click.echo(f"  by message size (binds {best['binds']}, window {best['window']})")
    click.echo("  segments   messages/s  segments/s")
    for x in r["by_size"]:
        click.echo(f"  {x['segments']:>8} {x['submits_per_s']:>12,.0f} {x['segments_per_s']:>11,.0f}")
    save(r, json_path, out_dir)
