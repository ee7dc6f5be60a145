"""`python -m bench.webhook_live`: the webhook delivery process fed as `sluice serve` feeds it (issue 16).

`sluice bench kannel` runs the delivery process beside serve, the simulator and the receiver, and
what it costs there moves with the rate and the machine's load: under load serve writes ~20
times a second, on a quiet machine 100-150 times, and every write pokes the process for a round
(a read, its POSTs, the receiver's wake-ups). This bench fixes that rate. A writer (this process,
as serve's loop: ``SqliteStore.record``, ``synchronous=FULL``) writes ``--writes-per-s`` writes,
each with the ``submitted`` of ``--per-write`` new messages and the receipts (``delivered``) of
the messages submitted ``--lag`` writes before (receipts 100 ms later at ~12,000 messages/s), and
pokes a real delivery process (``DeliveryProcess``: `python -m gateway.runtime.webhook_process`,
niced as in serve) after each write, exactly as serve's dispatcher does; `bench.status_receiver`
hears every event in a process of its own on loopback.

Per run: the delivery process's CPU per event and its wake-ups (voluntary context switches) per
second, the receiver's CPU per event, the writer's ``record`` CPU per change (the delivery
process's reads and cursor writes touch the same file), the pokes written, and the tail: from the
last write to the last final event heard. ``--linger`` sets ``webhooks.linger`` (0: a poke per
write, as before it). Prints one JSON line per run; ``--runs`` alternates the ``--linger`` values
given (``--linger 0 --linger 0.02``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import click
import httpx

from gateway.core.model import Job, Recipient
from gateway.runtime.webhook_process import DeliveryProcess, Start
from gateway.store.base import Change
from gateway.store.sqlite import SqliteStore
from gateway.webhook_settings import WebhookSettings

_BASE = 1 << 40
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` so far (user + system, every thread)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _switches(pid: int) -> int:
    """Voluntary context switches of ``pid``'s main thread so far: its wake-ups."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


async def _one(path: str, url: str, port: int, n: int, per: int, lag: int, rate: float, linger: float) -> dict:
    job = Job(id="job_bench", tenant="acme", sender="Shop", template="Order shipped", category="transactional",
              reference="bench")  # fmt: skip
    store = SqliteStore(path)
    store.add_job(job, _BASE, [(i, Recipient(to=f"+4479{i:08d}", index=i)) for i in range(n)], 1.0, callback_url=url)
    settings = WebhookSettings(allow_private=["127.0.0.0/8"], linger=linger)
    proc = DeliveryProcess(Start(store_path=path, settings=settings, secrets={"acme": "whsec_bench"}, own=[]))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as rx, anyio.create_task_group() as tg:
        await rx.post("/reset", json={"keys": n, "want": n})
        tg.start_soon(proc.run)
        proc.spawn()
        while proc.pid is None:  # started: its imports are done before the clock
            await anyio.sleep(0.05)
        await anyio.sleep(1.0)
        pid = proc.pid
        cpu0, sw0, rec = _cpu(pid), _switches(pid), 0.0
        rx_pid = int((await rx.get("/stats")).json().get("pid", 0)) or None
        sent: list[range] = []
        t0 = time.monotonic()
        for k, lo in enumerate(range(0, n + lag * per, per)):
            await anyio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
            if lo < n:
                sent.append(range(_BASE + lo, _BASE + min(n, lo + per)))
            now = time.time()
            changes = [Change(message_id=m, state="submitted", at=now, reason="submit_sm_resp", carrier="alpha",
                              carrier_ids=(f"c{m}",)) for m in (sent[-1] if lo < n else ())]  # fmt: skip
            if k >= lag and k - lag < len(sent):
                changes += [Change(message_id=m, state="delivered", at=now, reason="receipt DELIVRD", carrier="alpha")
                            for m in sent[k - lag]]  # fmt: skip
            c = time.thread_time()
            store.record(changes)
            rec += time.thread_time() - c
            proc.poke()
        last_write = time.monotonic()
        with anyio.fail_after(120):
            while (stats := (await rx.get("/stats")).json())["done_at"] is None:
                await anyio.sleep(0.01)
        cpu, sw = _cpu(pid) - cpu0, _switches(pid) - sw0
        tg.cancel_scope.cancel()
    await proc.aclose()
    store.close()
    events = 2 * n
    seconds = last_write - t0
    return {"linger": linger, "messages": n, "events": events, "writes_per_s": rate, "per_write": per,
            "write_seconds": round(seconds, 2), "delivery_cpu_us_per_event": round(cpu / events * 1e6, 2),
            "delivery_wakeups_per_s": round(sw / seconds, 1), "pokes_written": proc.pokes_written,
            "record_cpu_us_per_change": round(rec / (2 * n) * 1e6, 2),
            "tail_ms": round((stats["done_at"] - last_write) * 1e3, 1), "final_heard": stats["final"],
            "duplicates": stats["duplicates"], "receiver_pid": rx_pid}  # fmt: skip


@click.command()
@click.option("--messages", default=40_000, show_default=True)
@click.option("--per-write", default=100, show_default=True, help="New messages a write (and as many receipts).")
@click.option("--lag", default=12, show_default=True, help="Receipts this many writes after their submits.")
@click.option("--writes-per-s", default=120.0, show_default=True)
@click.option("--linger", type=float, multiple=True, default=(0.0, 0.02), show_default=True)
@click.option("--runs", default=2, show_default=True, help="Rounds of every --linger value, alternated.")
def main(messages: int, per_write: int, lag: int, writes_per_s: float, linger: tuple[float, ...], runs: int) -> None:
    rx = subprocess.Popen([sys.executable, "-m", "bench.status_receiver", "--port", "0"], stdout=subprocess.PIPE)  # noqa: S603
    try:
        assert rx.stdout is not None
        port = json.loads(rx.stdout.readline())["listening"]
        for _ in range(runs):
            for value in linger:
                with tempfile.TemporaryDirectory(dir=".") as tmp:  # the disk the store would be on
                    rcpu0 = _cpu(rx.pid)
                    out = anyio.run(_one, str(Path(tmp) / "sluice.db"), f"http://127.0.0.1:{port}/hooks", port,
                                    messages, per_write, lag, writes_per_s, value,
                                    backend="asyncio", backend_options={"use_uvloop": True})  # fmt: skip
                    out["receiver_cpu_us_per_event"] = round((_cpu(rx.pid) - rcpu0) / out["events"] * 1e6, 2)
                    out["load_average"] = os.getloadavg()[0]
                    out.pop("receiver_pid", None)
                print(json.dumps(out), flush=True)
    finally:
        rx.terminate()
        rx.wait()


if __name__ == "__main__":
    main()
