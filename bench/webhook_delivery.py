"""`python -m bench.webhook_delivery`: the webhook sender's own CPU per event (issue 16).

What `sluice serve`'s delivery process does, without the server around it: a SQLite store
holding one job of ``--messages`` messages with a ``callback_url``, each with a ``submitted``
and a ``delivered`` change written in separate writes (as receipts 100 ms later leave them:
two sequence rows per message), signed; ``WebhookSender`` (the delivery process's sender, with
its production HTTP client and SSRF guard) drains that backlog to `bench.status_receiver` in a
process of its own on loopback. CPU is this process's (``time.process_time``: every thread,
the sender's worker threads included), from the first round to the last event acknowledged,
per event. The receiver's count of final events checks that every message arrived once.

Prints one JSON line. ``--profile FILE``: a cProfile of the drain (pstats format).
"""

from __future__ import annotations

import cProfile
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import click
import httpx

from gateway.core.model import Job, Recipient
from gateway.core.targets import TargetPolicy
from gateway.runtime.webhooks import WebhookSender
from gateway.store.base import Change
from gateway.store.sqlite import SqliteStore
from gateway.webhook_settings import WebhookSettings

_BASE = 1 << 40


def fill(path: str, n: int, url: str, write: int = 100) -> None:
    """One job of ``n`` messages to ``url``; ``submitted`` then ``delivered``, ``write`` a write."""
    store = SqliteStore(path, synchronous="OFF")
    job = Job(id="job_bench", tenant="acme", sender="Shop", template="Order shipped", category="transactional",
              reference="bench")  # fmt: skip
    store.add_job(job, _BASE, [(i, Recipient(to=f"+4479{i:08d}", index=i)) for i in range(n)], 1.0, callback_url=url)
    for lo in range(0, n, write):
        ids = range(_BASE + lo, _BASE + min(n, lo + write))
        store.record([Change(message_id=i, state="submitted", at=2.0, reason="submit_sm_resp", carrier="alpha",
                             carrier_ids=(f"c{i}",)) for i in ids])  # fmt: skip
    for lo in range(0, n, write):
        ids = range(_BASE + lo, _BASE + min(n, lo + write))
        store.record([Change(message_id=i, state="delivered", at=2.1, reason="receipt DELIVRD", carrier="alpha")
                      for i in ids])  # fmt: skip
    store.close()


async def drain(path: str, settings: WebhookSettings, profile: str | None) -> dict:
    store = SqliteStore(path, synchronous="NORMAL", writes_changes=False)
    targets = TargetPolicy(settings.allow_private, [])
    prof = cProfile.Profile() if profile else None
    async with WebhookSender(store, settings, {"acme": "whsec_bench"}, clock=time.time, targets=targets) as sender:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, t0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        rounds = 0
        while await sender.run_once():
            rounds += 1
        if prof:
            prof.disable()
            prof.dump_stats(profile)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        stats = sender.statistics()
    store.close()
    return {"cpu_s": cpu, "user_s": ru1.ru_utime - ru0.ru_utime, "sys_s": ru1.ru_stime - ru0.ru_stime, "wall_s": wall, "rounds": rounds, "requests": stats.requests,
            "delivered": stats.delivered, "retried": stats.retried, "dead": stats.dead}  # fmt: skip


@click.command()
@click.option("--messages", default=20_000, show_default=True)
@click.option("--batch-size", default=100, show_default=True)
@click.option("--concurrency", default=16, show_default=True)
@click.option("--profile", type=click.Path(dir_okay=False), default=None, help="cProfile of the drain here.")
def main(messages: int, batch_size: int, concurrency: int, profile: str | None) -> None:
    rx = subprocess.Popen([sys.executable, "-m", "bench.status_receiver", "--port", "0"], stdout=subprocess.PIPE)  # noqa: S603
    try:
        assert rx.stdout is not None
        port = json.loads(rx.stdout.readline())["listening"]
        httpx.post(f"http://127.0.0.1:{port}/reset", json={"keys": messages, "want": messages})
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "sluice.db")
            fill(path, messages, f"http://127.0.0.1:{port}/hooks")
            settings = WebhookSettings(batch_size=batch_size, concurrency=concurrency, allow_private=["127.0.0.0/8"])
            out = anyio.run(drain, path, settings, profile, backend="asyncio", backend_options={"use_uvloop": True})
        heard = httpx.get(f"http://127.0.0.1:{port}/stats").json()
    finally:
        rx.terminate()
        rx.wait()
    events = messages * 2
    out.update(messages=messages, events=events, cpu_us_per_event=out["cpu_s"] / events * 1e6,
               events_per_s=events / out["wall_s"], final_heard=heard["final"], duplicates=heard["duplicates"],
               events_heard=heard["events"], batch_size=batch_size, concurrency=concurrency)  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
