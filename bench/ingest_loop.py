"""The event loop's CPU for a large streamed job, in process (no HTTP, no client competing).

    python -m bench.ingest_loop [--recipients N]

``Gateway.submit_job_stream`` on a fresh SQLite store (``synchronous=FULL``) with a pool of two
check workers (warmed first, as ``/readyz`` waits for), fed the bench's NDJSON job
(``bench.service.ndjson_job``) through ``NdjsonBody`` in chunks of 1,000, as the API feeds it.
Prints one JSON line: the loop thread's CPU a recipient (``time.thread_time``: admission,
resume, the pool's hand-offs, the store's scheduling; not the writer thread nor the workers),
the process's (the loop and SQLite's writer thread) and the wall time. Cheaper and less noisy
than ``sluice bench ingest`` for comparing two versions of the loop's work, alternated.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import anyio

from bench.service import config, ndjson_job
from gateway.api.app import NdjsonBody
from gateway.config import load
from gateway.core.scheduler import Scheduler
from gateway.runtime.ingest import CheckPool
from gateway.runtime.service import Gateway
from gateway.store.sqlite import SqliteStore

NOW = 1_795_546_800.0


async def run(n: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="sluice-ingest-loop-"))
    cfg = load(config(directory))
    pieces = ndjson_job(n)
    gw = Gateway(Scheduler(cfg.core, NOW), SqliteStore(str(directory / "sluice.db")), pool=CheckPool(cfg.core, 2))
    await gw.pool.warm()
    events = iter([*({"type": "http.request", "body": p, "more_body": True} for p in pieces),
                   {"type": "http.request", "body": b"", "more_body": False}])  # fmt: skip

    async def receive() -> dict:
        return next(events)

    body = NdjsonBody(receive, max_line=1 << 20, chunk=1000, digest=False)
    head = await body.head()
    loop, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
    answer, _ = await gw.submit_job_stream("bench", head, body.chunks(), NOW, digest=lambda: "")
    loop, process, wall = time.thread_time() - loop, time.process_time() - process, time.perf_counter() - wall
    return {"recipients": n, "accepted": json.loads(answer)["accepted"], "loop_cpu_us": loop / n * 1e6,
            "process_cpu_us": process / n * 1e6, "wall_s": wall}  # fmt: skip


def main() -> None:
    n = int(sys.argv[sys.argv.index("--recipients") + 1]) if "--recipients" in sys.argv else 200_000
    print(json.dumps(anyio.run(run, n)))


if __name__ == "__main__":  # the check workers import this module again as __mp_main__
    main()
