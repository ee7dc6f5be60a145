"""`sluice bench priority`: OTPs submitted while a million marketing messages are queued.

The gateway's own pieces, in one process on the real clock: ``Gateway`` (API use cases) over a
SQLite store on disk, the ``Dispatcher`` pumping the core into a carrier. The carrier answers at
once (``MockConnector``) and its bucket allows ``--rate`` segments/s, so the marketing backlog
keeps it saturated for the whole run. Marketing here skips quiet hours and the weekly cap (this
measures ordering, not those rules, and must not depend on the hour it is run at).

Then one OTP every ``1/--otp-rate`` seconds for ``--seconds``, each through
``Gateway.submit_message`` (durable on return, like a 202). Queue wait of an OTP = from that
return to the moment the dispatcher hands it to the connector. Goal: p99 <= 20 ms.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import click
import msgspec

from bench.machine import describe
from bench.output import out_option, save
from carriers.base import ConnectorEvent
from carriers.testing import MockConnector
from gateway.api import schemas
from gateway.core.ids import parse_id
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CarrierSettings, CategoryPolicy, CoreSettings, Route
from gateway.runtime.dispatcher import Dispatcher
from gateway.runtime.service import Gateway
from gateway.store.sqlite import SqliteStore

CHUNK = 50_000


def settings(rate: float) -> CoreSettings:
    return CoreSettings(
        categories={
            "otp": CategoryPolicy(priority=0, suppressible=False),
            "marketing": CategoryPolicy(priority=2),
        },
        carriers=[CarrierSettings(name="c1", rate=rate, burst=max(1, int(rate / 20)))],
        routes=[Route(prefix="", carriers=["c1"])],
    )


class Sink(MockConnector):
    """Answers every message at once; timestamps the OTPs as they are handed over."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.otp_seen: dict[int, float] = {}
        self.marketing = 0

    async def submit(self, batch) -> None:
        now = time.perf_counter()
        for d in batch:
            if d.category == "otp":
                self.otp_seen[d.message_id] = now
            else:
                self.marketing += 1
        await super().submit(batch)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


async def run(backlog: int, rate: float, otp_rate: float, seconds: float, directory: str) -> dict[str, object]:
    clock = time.time
    store = SqliteStore(str(Path(directory) / "priority.db"))
    core = Scheduler(settings(rate), clock())
    gw = Gateway(core, store)
    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    sink = Sink("c1", send, capacity=500)
    disp = Dispatcher(core, {"c1": sink}, receive, store, clock=clock)
    gw.on_admitted = disp.poke
    t0 = time.perf_counter()
    for start in range(0, backlog, CHUNK):  # the backlog, through the real use case, on disk
        size = min(CHUNK, backlog - start)
        job = schemas.JobIn(sender="Shop", category="marketing", template="Winter sale {pct}% off, {name}!",
                            recipients=[schemas.RecipientIn(to="+4479%08d" % (start + i),
                                                            vars={"name": "Ann", "pct": "20"})
                                        for i in range(size)])  # fmt: skip
        await gw.submit_job("shop", job, clock())
    admit_s = time.perf_counter() - t0
    accepted_at: dict[int, float] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(disp.run)
        await anyio.sleep(1.0)  # the carrier saturated by the backlog before the first OTP
        before = sink.marketing
        t_start = time.perf_counter()
        n = int(seconds * otp_rate)
        for i in range(n):
            body = schemas.MessageIn(to="+4479555%05d" % i, body=f"Your code is {i:06d}", sender="Shop",
                                     category="otp")  # fmt: skip
            raw, _ = await gw.submit_message("shop", body, clock())
            accepted_at[parse_id(msgspec.json.decode(raw)["id"])] = time.perf_counter()
            await anyio.sleep(max(0.0, t_start + (i + 1) / otp_rate - time.perf_counter()))
        with anyio.move_on_after(5):
            while len(sink.otp_seen) < n:
                await anyio.sleep(0.01)
        marketing_rate = (sink.marketing - before) / (time.perf_counter() - t_start)
        tg.cancel_scope.cancel()
    store.close()
    waits = [(sink.otp_seen[m] - t) * 1000 for m, t in accepted_at.items() if m in sink.otp_seen]
    return {
        "backlog": backlog,
        "backlog_admit_s": admit_s,
        "otps": len(accepted_at),
        "otps_dispatched": len(waits),
        "otp_wait_ms_p50": statistics.median(waits) if waits else None,
        "otp_wait_ms_p99": _percentile(waits, 99) if waits else None,
        "otp_wait_ms_max": max(waits) if waits else None,
        "marketing_per_s_during": marketing_rate,
        "carrier_rate": rate,
        "queued_after": core.statistics(clock()).ready.get("c1", 0),
    }


@click.command("priority")
@click.option("--backlog", default=1_000_000, show_default=True, help="Marketing messages queued first.")
@click.option("--rate", default=5_000.0, show_default=True, help="The carrier's segments/s.")
@click.option("--otp-rate", default=50.0, show_default=True, help="OTPs submitted per second.")
@click.option("--seconds", default=10.0, show_default=True, help="How long OTPs are submitted.")
@click.option("--runs", default=3, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_priority(backlog: int, rate: float, otp_rate: float, seconds: float, runs: int, json_path: str | None, out_dir: str | None) -> None:
    """Queue wait of OTPs behind a marketing backlog (goal p99 <= 20 ms)."""
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="sluice-bench-") as d:
            results.append(anyio.run(run, backlog, rate, otp_rate, seconds, d, backend="asyncio",
                                     backend_options={"use_uvloop": True}))  # fmt: skip

    def median(key: str) -> float:
        return statistics.median(float(r[key]) for r in results if r[key] is not None)

    out = {
        "scenario": "priority",
        "runs": runs,
        "backlog": backlog,
        "otp_wait_ms_p50": median("otp_wait_ms_p50"),
        "otp_wait_ms_p99": median("otp_wait_ms_p99"),
        "otp_wait_ms_max": median("otp_wait_ms_max"),
        "marketing_per_s_during": median("marketing_per_s_during"),
        "per_run": results,
        "target": {"otp_wait_ms_p99": 20.0},
        "machine": describe(),
    }
    click.echo(f"sluice bench priority: {backlog:,} marketing queued, OTPs at {otp_rate:g}/s for {seconds:g} s,"
               f" carrier {rate:,.0f}/s; median of {runs} runs")  # fmt: skip
    for key in ("otp_wait_ms_p50", "otp_wait_ms_p99", "otp_wait_ms_max", "marketing_per_s_during"):
        click.echo(f"  {key.replace('_', ' '):<32} {out[key]:>12,.2f}")
    click.echo(f"  backlog admitted in (s)          {statistics.median(r['backlog_admit_s'] for r in results):>12,.1f}")
    click.echo(f"  target p99 <= 20 ms: {'met' if out['otp_wait_ms_p99'] <= 20 else 'NOT met'}")
    save(out, json_path, out_dir)
