"""`sluice bench e2e`: messages per second through the whole gateway, as a user would see it.

An SMSC simulator (``sluice sim smsc``, no TPS limit, receipts ``--dlr-delay`` seconds after the
submit) and `sluice serve` (one carrier, an SMPP link of 2 binds with window 100, a carrier rate
far above what the link can do) run as child processes on loopback. One job of N transactional
messages is POSTed (NDJSON); the clock starts at its 202 and stops when the job's counts, polled
over the API five times a second, show every message final. Each message has then gone API ->
core -> submit_sm -> submit_sm_resp -> receipt (deliver_sm) reconciled -> state ``delivered``
committed to the store (SQLite WAL, ``synchronous=FULL``). messages/s = N / that time.

The simulator's counters (submits accepted, receipts sent and acknowledged) are read at the end
and must agree with the store. Three processes share two cores. The server's and the
simulator's CPU time per message (from /proc) are reported too: steadier than the rate on a
shared machine. `sluice bench kannel` runs Kannel on the same path in the same run, as the
reference; ``--store memory`` runs the same scenario with nothing written to disk.
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
from bench.service import AUTH, ENV, config, cpu_seconds, medians, memory, ndjson_job, until_ready
from gateway.store.base import FINAL
from gateway.testing.processes import gateway, simulator


async def _bound(client: httpx.AsyncClient, binds: int) -> None:
    with anyio.fail_after(30):
        while True:
            link = (await client.get("/v1/carriers")).json()["alpha"]["link"]
            if link and link["bound"] >= binds:
                return
            await anyio.sleep(0.05)


async def _until_final(client: httpx.AsyncClient, job_id: str, total: int, timeout: float) -> tuple[float, dict]:
    """Polls the job's counts; returns when every message is final (time, counts)."""
    with anyio.fail_after(timeout):
        while True:
            counts = (await client.get(f"/v1/jobs/{job_id}")).json()["counts"]
            if sum(n for s, n in counts.items() if s in FINAL) >= total:
                return time.perf_counter(), counts
            await anyio.sleep(0.2)


_LOOP = {"writes": 'sluice_messages_total{event="writes"}',
         "changes": 'sluice_messages_total{event="changes_written"}',
         "record_cpu": 'sluice_dispatcher_seconds_total{what="record_cpu"}',
         "write": 'sluice_dispatcher_seconds_total{what="write"}',
         "window_wait": 'sluice_dispatcher_seconds_total{what="window_wait"}',
         "wire_wait": 'sluice_dispatcher_seconds_total{what="wire_wait"}',
         **{f"gc{g}_n": f'sluice_gc_collections_total{{generation="{g}"}}' for g in range(3)},
         **{f"gc{g}_s": f'sluice_gc_seconds_total{{generation="{g}"}}' for g in range(3)}}  # fmt: skip


async def _loop_counters(client: httpx.AsyncClient) -> dict[str, float]:
    """``serve``'s dispatcher and garbage-collector counters (/metrics), to tell a slow run's cause:
    smaller writes (more of them a message), waits for the window, or the collector."""
    out = dict.fromkeys(_LOOP, 0.0)
    for line in (await client.get("/metrics")).text.splitlines():
        name, _, value = line.rpartition(" ")
        for key, metric in _LOOP.items():
            if name == metric:
                out[key] = float(value)
    return out


def _loop_figures(c0: dict[str, float], c1: dict[str, float], n: int, seconds: float) -> dict[str, float]:
    d = {k: c1[k] - c0[k] for k in c1}
    return {"writes_per_1k": 1000 * d["writes"] / n, "changes_per_write": d["changes"] / max(1.0, d["writes"]),
            "record_cpu_us": d["record_cpu"] / n * 1e6, "write_share": d["write"] / seconds,
            "window_wait_share": d["window_wait"] / seconds, "wire_wait_share": d["wire_wait"] / seconds,
            **{f"gc{g}": d[f"gc{g}_n"] for g in range(3)}, **{f"gc{g}_ms": 1000 * d[f"gc{g}_s"] for g in range(3)}}  # fmt: skip


async def one_run(n: int, pieces: list[bytes], dlr_delay: float, binds: int, window: int, timeout: float,
                  answer: str, store: str = "sqlite") -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        d = Path(tmp)
        with open(d / "sim.log", "wb") as sim_log, open(d / "serve.log", "wb") as log:
            async with simulator("--dlr-delay", str(dlr_delay), stderr=sim_log) as sim:
                cfg = config(d, smpp_port=sim.port, binds=binds, window=window, answer_receipts=answer, store=store)
                async with gateway(cfg, env=ENV, stderr=log) as gw, \
                        httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=300) as client:  # fmt: skip
                    await until_ready(gw.url)
                    await _bound(client, binds)

                    async def body():
                        for p in pieces:
                            yield p

                    t0 = time.perf_counter()
                    r = await client.post("/v1/jobs", content=body(), headers={"content-type": "application/x-ndjson"})
                    accepted_at = time.perf_counter()
                    cpu0 = (cpu_seconds(gw.pid, main_thread=True), cpu_seconds(gw.pid), cpu_seconds(sim.pid))
                    if r.status_code != 202:
                        raise click.ClickException(f"job POST answered {r.status_code}: {r.text[:300]}")
                    job = r.json()
                    loop0 = await _loop_counters(client)
                    done_at, counts = await _until_final(client, job["id"], job["accepted"], timeout)
                    cpu1 = (cpu_seconds(gw.pid, main_thread=True), cpu_seconds(gw.pid), cpu_seconds(sim.pid))
                    loop1 = await _loop_counters(client)
                    mem = memory(gw.pid)
                sim_counters = await sim.counters()
    seconds = done_at - accepted_at
    return {
        "accepted": job["accepted"],
        "ingest_seconds": accepted_at - t0,
        "seconds": seconds,
        "messages_per_s": job["accepted"] / seconds,
        "delivered": counts.get("delivered", 0),
        # CPU per message: steadier than messages/s on a shared machine (another tenant's load
        # stretches the wall clock far more than it changes the work done per message)
        "server_loop_cpu_us": (cpu1[0] - cpu0[0]) / job["accepted"] * 1e6,
        "server_cpu_us": (cpu1[1] - cpu0[1]) / job["accepted"] * 1e6,
        "simulator_cpu_us": (cpu1[2] - cpu0[2]) / job["accepted"] * 1e6,
        "counts": counts,
        "loop": _loop_figures(loop0, loop1, job["accepted"], seconds),
        "server_peak_rss": mem["peak_rss"],
        "sim": {k: sim_counters[k] for k in ("submits", "accepted", "throttled", "receipts_sent", "receipts_acked",
                                              "max_accepted_1s")},  # fmt: skip
    }


def run(n: int, runs: int, dlr_delay: float, binds: int, window: int, seed: int,
        answer: str = "after_write", store: str = "sqlite") -> dict[str, object]:  # fmt: skip
    pieces = ndjson_job(n, seed=seed, category="transactional")  # no quiet hours, no weekly cap
    timeout = max(60.0, n / 2000)
    results = [anyio.run(one_run, n, pieces, dlr_delay, binds, window, timeout, answer, store, backend="asyncio",
                         backend_options={"use_uvloop": True}) for _ in range(runs)]  # fmt: skip
    for r in results:
        if r["delivered"] != r["accepted"] or r["sim"]["accepted"] < r["accepted"]:
            raise click.ClickException(f"not every message was delivered: {r['counts']} sim={r['sim']}")
    return {
        "scenario": "e2e",
        "runs": runs,
        "messages": n,
        "dlr_delay": dlr_delay,
        "binds": binds,
        "window": window,
        "answer_receipts": answer,
        "store": store,
        **medians(results, ("messages_per_s", "seconds", "ingest_seconds", "server_peak_rss", "server_loop_cpu_us",
                             "server_cpu_us", "simulator_cpu_us")),
        "per_run": results,
        "machine": describe(),
    }


@click.command("e2e")
@click.option("--messages", "n", default=200_000, show_default=True, help="Messages in the job.")
@click.option("--runs", default=3, show_default=True, help="Runs; figures are medians.")
@click.option("--dlr-delay", default=0.0, show_default=True, help="Simulator: seconds from submit to receipt.")
@click.option("--binds", default=2, show_default=True)
@click.option("--window", default=100, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--answer-receipts", "answer", type=click.Choice(["after_write", "on_arrival"]), default="after_write",
              show_default=True, help="The carrier's answer_receipts: when a receipt's deliver_sm_resp goes.")
@click.option("--store", type=click.Choice(["sqlite", "memory"]), default="sqlite", show_default=True,
              help="memory: nothing written to disk (what the durable write costs, by difference).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_e2e(n: int, runs: int, dlr_delay: float, binds: int, window: int, seed: int, answer: str, store: str,
              json_path: str | None, out_dir: str | None) -> None:  # fmt: skip
    """Bulk API -> core -> SMPP simulator -> receipts reconciled -> states durable, messages/s."""
    r = run(n, runs, dlr_delay, binds, window, seed, answer, store)
    per = r["per_run"]
    rows = [
        ("messages/s, 202 -> all delivered in the store", f"{r['messages_per_s']:,.0f}"),
        ("  seconds", f"{r['seconds']:.2f}"),
        ("  job POST -> 202 (s)", f"{r['ingest_seconds']:.2f}"),
        ("  server peak RSS (MB)", f"{r['server_peak_rss'] / (1 << 20):,.0f}"),
        ("  server CPU per message, event-loop thread (µs)", f"{r['server_loop_cpu_us']:.1f}"),
        ("  server CPU per message, all threads (µs)", f"{r['server_cpu_us']:.1f}"),
        ("  simulator CPU per message (µs)", f"{r['simulator_cpu_us']:.1f}"),
        ("simulator: submits accepted (last run)", f"{per[-1]['sim']['accepted']:,}"),
        ("simulator: receipts acked (last run)", f"{per[-1]['sim']['receipts_acked']:,}"),
        ("simulator: most accepted in 1 s", f"{per[-1]['sim']['max_accepted_1s']:,}"),
    ]
    click.echo(f"sluice bench e2e: {n:,} messages, {binds} binds x window {window}, dlr-delay {dlr_delay}s, "
               f"receipts answered {answer}, store {store}, median of {runs} runs")  # fmt: skip
    for k, v in rows:
        click.echo(f"  {k:<46} {v:>14}")
    click.echo("  per run: msgs/s, loop µs, record µs a message, writes a 1k messages, changes a write, "
               "window/wire wait share, gc collections (ms) by generation")  # fmt: skip
    for p in per:
        lp = p["loop"]
        gcs = " ".join(f"{lp[f'gc{g}']:.0f} ({lp[f'gc{g}_ms']:.0f})" for g in range(3))
        click.echo(f"    {p['messages_per_s']:>8,.0f} {p['server_loop_cpu_us']:>6.1f} {lp['record_cpu_us']:>6.1f} "
                   f"{lp['writes_per_1k']:>6.2f} {lp['changes_per_write']:>6.0f} "
                   f"{lp['window_wait_share']:>5.2f}/{lp['wire_wait_share']:<5.2f} {gcs}")  # fmt: skip
    save(r, json_path, out_dir)
