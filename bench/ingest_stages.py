"""Where a large streamed job's wall time goes: each stage's intervals, in process.

    python -m bench.ingest_stages [--recipients N]

Runs ``bench.ingest_loop``'s job (``Gateway.submit_job_stream`` on a fresh SQLite store with
``synchronous=FULL``, two check workers warmed first, the bench's NDJSON in chunks of 1,000, no
HTTP) with each stage wrapped to record when it ran: the body read (``NdjsonBody._fill``), the
check of a chunk in a worker (``CheckPool.check``, from the hand-off to the answer decoded), the
loop's admission (``Gateway._admit_checked``), the store's write of a chunk or of the chunks
queued (``add_job`` / ``add_jobs``, in its thread), the loop waiting for that write (``_ChunkWriter.wait``), the commit and the resume.
Prints one JSON line: per stage the count, the summed wall time of its intervals, the time
covered by at least one of them (checks overlap: two workers), and the CPU of the loop's thread
and of the writer's; then the wall time from the first chunk to the answer. A stage whose covered
time is close to the wall time is the critical path; the loop's wait for the writer says how
long admission stood still behind the store.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

from bench.ingest_loop import NOW, body_of
from bench.service import config, ndjson_job
from gateway.api.app import NdjsonBody
from gateway.config import load
from gateway.core.scheduler import Scheduler
from gateway.runtime import service
from gateway.runtime.ingest import CheckPool
from gateway.runtime.service import Gateway
from gateway.store.sqlite import SqliteStore

_spans: dict[str, list[tuple[float, float]]] = {}
_cpu: dict[str, float] = {}


def _record(name: str, t0: float, c0: float) -> None:
    _spans.setdefault(name, []).append((t0, time.perf_counter()))
    _cpu[name] = _cpu.get(name, 0.0) + time.thread_time() - c0


def _wrap_sync(owner, attr: str, name: str) -> None:
    fn = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(name, t0, c0)

    setattr(owner, attr, wrapped)


def _wrap_async(owner, attr: str, name: str) -> None:
    fn = getattr(owner, attr)

    async def wrapped(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return await fn(*args, **kwargs)
        finally:
            _spans.setdefault(name, []).append((t0, time.perf_counter()))  # wall only: it awaits

    setattr(owner, attr, wrapped)


def _covered(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


async def run(n: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="sluice-ingest-stages-"))
    cfg = load(config(directory))
    pieces = ndjson_job(n)
    pool = CheckPool(cfg.core, 2)
    gw = Gateway(Scheduler(cfg.core, NOW), SqliteStore(str(directory / "sluice.db")), pool=pool)
    await pool.warm()
    _wrap_async(NdjsonBody, "_fill", "read")
    _wrap_async(CheckPool, "check", "check")
    _wrap_sync(Gateway, "_admit_checked", "admit")
    _wrap_sync(gw.store, "add_job", "write")
    _wrap_sync(gw.store, "add_jobs", "write")
    _wrap_sync(gw.store, "commit_job", "commit")
    _wrap_async(service._ChunkWriter, "wait", "loop waits for the write")
    body = body_of(pieces)
    head = await body.head()
    _spans.clear()
    _cpu.clear()
    loop_cpu, wall = time.thread_time(), time.perf_counter()
    answer, _ = await gw.submit_job_stream("bench", head, body.chunks(), NOW, digest=lambda: "")
    loop_cpu, wall = time.thread_time() - loop_cpu, time.perf_counter() - wall
    stages = {name: {"count": len(s), "summed_s": round(sum(b - a for a, b in s), 3),
                     "covered_s": round(_covered(s), 3), "cpu_s": round(_cpu.get(name, 0.0), 3)}
              for name, s in _spans.items()}  # fmt: skip
    return {"recipients": n, "accepted": json.loads(answer)["accepted"], "wall_s": round(wall, 3),
            "loop_cpu_s": round(loop_cpu, 3), "threads": threading.active_count(), "stages": stages}  # fmt: skip


def main() -> None:
    n = int(sys.argv[sys.argv.index("--recipients") + 1]) if "--recipients" in sys.argv else 200_000
    print(json.dumps(anyio.run(run, n)))


if __name__ == "__main__":  # the check workers import this module again as __mp_main__
    main()
