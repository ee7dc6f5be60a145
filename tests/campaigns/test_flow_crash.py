"""kill -9 of the process running the flows, again and again, while it works through a flow whose
every run waits on a timer and whose tagged subscribers get two sends a second apart: nothing is
lost and nothing is sent twice. Sends are counted at the gateway side: the fake gateway, in its own
process over real HTTP, keeps Idempotency-Keys as the real one does, so a message it accepts under
a *new* key for the same recipient and step would be a duplicate; a run that never finished, or a
send that never arrived, is lost.

The fast version runs in the default suite; the slow ones (``make test-slow``) are the issue's: 5
kills during a 100,000-run flow on SQLite and on PostgreSQL (every 50th subscriber sends: the fake
gateway takes one POST per message, and 200,000 sends would not fit the slow suite's budget), and
with two workers, 20,000 runs on SQLite and 5,000 on PostgreSQL (a 100,000-run PostgreSQL flow took
32 s on 2026-12-07, after its runs' inserts were cut; 20,000 took 5 minutes on a slower host). They write their figures for ``sluice bench flows --crash-json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.flows import crash_store, gateway_process, gateway_thread, phone, runs_ended

ROOT = Path(__file__).resolve().parents[2]


def _worker(store_url: str, gateway_url: str, part: int = 0, parts: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "bench.flows", "worker", "--store", store_url, "--gateway", gateway_url,
                             "--part", str(part), "--parts", str(parts)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def crash_run(store_url: str, runs: int, kills: int, *, send_every: int, deadline_s: float,
              life_s: float, local: bool = False, workers: int = 1) -> dict[str, int]:  # fmt: skip
    """``workers`` processes, worker ``p`` of them running the subscribers ``id % workers == p``
    (inputs, timers, sends). Kill ``k`` hits worker ``k % workers`` once the gateway has its share
    of the sends, or after ``life_s`` seconds (whichever first: so kills also land while inputs and
    timers are worked); the killed one is restarted at once, the others run on."""
    crash_store(store_url, runs, time.time(), send_every=send_every)
    senders = list(range(send_every, runs + 1, send_every))
    expected = 2 * len(senders)
    with (gateway_thread() if local else gateway_process()) as gw:
        stop_at = time.monotonic() + deadline_s
        procs = [_worker(store_url, gw.url, p, workers) for p in range(workers)]

        def check_alive() -> None:
            for proc in procs:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""

        for k in range(kills):
            target = expected * (k + 1) // (kills + 2)  # kills spread over the run, the first one early
            die_at = min(stop_at, time.monotonic() + life_s)
            while gw.count() < target and time.monotonic() < die_at and all(p.poll() is None for p in procs):
                time.sleep(0.05)
            check_alive()
            victim = k % workers
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait()
            procs[victim] = _worker(store_url, gw.url, victim, workers)
        while (gw.count() < expected or runs_ended(store_url) < runs) and time.monotonic() < stop_at:
            time.sleep(0.2)
        time.sleep(0.3)  # a duplicate would show after the counts are reached: a few more rounds
        check_alive()
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        messages, posts = gw.record()
    ended = runs_ended(store_url)
    steps = Counter((m["to"], m["body"].split(" Reply STOP")[0]) for m in messages)
    wanted = {(phone(i), f"step {s}") for i in senders for s in ("one", "two")}
    return {"runs": runs, "kills": kills, "expected_sends": expected, "accepted": len(messages), "runs_ended": ended,
            "lost": len(wanted - set(steps)) + (runs - ended), "duplicates": sum(n - 1 for n in steps.values() if n > 1),
            "retried_posts": posts - len(messages)}  # fmt: skip


def _record(r: dict[str, int], engine: str) -> None:
    out = os.environ.get("SLUICE_FLOW_CRASH_JSON")
    if out:
        Path(f"{out}.{engine}").write_text(json.dumps({**r, "engine": engine}))


def test_kill_9_of_either_of_two_workers_fast(sqlite_url: str) -> None:
    """Two workers, each its share of the subscribers; each is killed once mid-run and restarted."""
    r = crash_run(sqlite_url, 40, 2, send_every=2, deadline_s=90, life_s=1.5, local=True, workers=2)
    assert (r["lost"], r["duplicates"], r["accepted"], r["runs_ended"]) == (0, 0, 40, 40), r


def test_kill_9_loses_nothing_and_sends_nothing_twice_fast(sqlite_url: str) -> None:
    r = crash_run(sqlite_url, 80, 1, send_every=2, deadline_s=90, life_s=4, local=True)
    assert (r["lost"], r["duplicates"], r["accepted"], r["runs_ended"]) == (0, 0, 80, 80), r


@pytest.mark.slow
def test_five_kill_9s_during_a_100000_run_flow_sqlite(sqlite_url: str) -> None:
    r = crash_run(sqlite_url, 100_000, 5, send_every=50, deadline_s=600, life_s=25)
    _record(r, "sqlite")
    assert (r["lost"], r["duplicates"]) == (0, 0), r


@pytest.mark.slow
def test_five_kill_9s_during_a_flow_postgres(pg_url: str) -> None:
    r = crash_run(pg_url, 5_000, 5, send_every=10, deadline_s=200, life_s=8)
    _record(r, "postgres")
    assert (r["lost"], r["duplicates"]) == (0, 0), r


@pytest.mark.slow
def test_five_kill_9s_during_a_100000_run_flow_postgres(pg_url: str) -> None:
    r = crash_run(pg_url, 100_000, 5, send_every=50, deadline_s=900, life_s=25)
    _record(r, "postgres-100k")
    assert (r["lost"], r["duplicates"]) == (0, 0), r


@pytest.mark.slow
def test_five_kill_9s_two_workers_sqlite(sqlite_url: str) -> None:
    r = crash_run(sqlite_url, 20_000, 5, send_every=20, deadline_s=400, life_s=15, workers=2)
    _record(r, "sqlite-2-workers")
    assert (r["lost"], r["duplicates"]) == (0, 0), r


@pytest.mark.slow
def test_five_kill_9s_two_workers_postgres(pg_url: str) -> None:
    r = crash_run(pg_url, 5_000, 5, send_every=10, deadline_s=300, life_s=8, workers=2)
    _record(r, "postgres-2-workers")
    assert (r["lost"], r["duplicates"]) == (0, 0), r
