"""The event loop's CPU for a large streamed job, in process (no HTTP, no client competing).

    python -m bench.ingest_loop [--recipients N] [--campaign] [--profile]

``Gateway.submit_job_stream`` on a fresh SQLite store (``synchronous=FULL``) with a pool of two
check workers (warmed first, as ``/readyz`` waits for), fed the bench's NDJSON job
(``bench.service.ndjson_job``) through ``NdjsonBody`` in chunks of 1,000, as the API feeds it.
Prints one JSON line: the loop thread's CPU a recipient (``time.thread_time``: admission,
resume, the pool's hand-offs, the store's scheduling; not the writer thread nor the workers),
the process's (the loop and SQLite's writer thread) and the wall time. Cheaper and less noisy
than ``sluice bench ingest`` for comparing two versions of the loop's work, alternated.

``--campaign``: a campaign layer's job instead, as ``sluice bench campaign`` posts it (template
``{body}``, each line ``{"to", "vars": {"body"}, "tz"}`` with a ~100-character text and a short
link, UK numbers, one zone) and no check workers (the bench's ``ingest_workers = 0``): every
recipient checked on the loop. ``--profile``: cProfile of the loop's thread, top entries.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import anyio

from bench.service import config, ndjson_job, ndjson_pieces
from gateway.api.app import NdjsonBody
from gateway.config import load
from gateway.core.scheduler import Scheduler
from gateway.runtime.ingest import CheckPool
from gateway.runtime.service import Gateway
from gateway.store.sqlite import SqliteStore

NOW = 1_795_546_800.0


def campaign_job(n: int) -> list[bytes]:
    """A campaign batch of ``n`` lines as the campaign layer writes it (``launch.job_body_of``)."""
    head = {"from": "SHOP", "template": "{body}", "category": "marketing", "send_at": NOW + 86_400.0,
            "reference": "campaign:1:batch:0"}  # fmt: skip
    names = ["Ana", "Bob", "Chloé", "Dan", "there"]
    return ndjson_pieces(head, ({"to": f"+4474{10 + i // 1_000_000}{i % 1_000_000:06d}", "tz": "Europe/London",
                                 "vars": {"body": f"Hi {names[i % 5]}, CommerceCo spring sale: 20% off today only "
                                                  f"https://sl.ui/{i * 7919 % 10**7:07d} Reply STOP to opt out"}}
                                for i in range(n)))  # fmt: skip


def body_of(pieces: list[bytes]) -> NdjsonBody:
    """The request body ``pieces`` as the API reads it: ASGI messages into ``NdjsonBody``, chunks of 1,000."""
    events = iter([*({"type": "http.request", "body": p, "more_body": True} for p in pieces),
                   {"type": "http.request", "body": b"", "more_body": False}])  # fmt: skip

    async def receive() -> dict:
        return next(events)

    return NdjsonBody(receive, max_line=1 << 20, chunk=1000, digest=False)

async def run(n: int, campaign: bool, profile: bool) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="sluice-ingest-loop-"))
    cfg = load(config(directory))
    pieces = campaign_job(n) if campaign else ndjson_job(n)
    pool = None if campaign else CheckPool(cfg.core, 2)
    gw = Gateway(Scheduler(cfg.core, NOW), SqliteStore(str(directory / "sluice.db")), pool=pool)
    if pool is not None:
        await pool.warm()
    body = body_of(pieces)
    head = await body.head()
    prof = cProfile.Profile() if profile else None
    loop, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    answer, _ = await gw.submit_job_stream("bench", head, body.chunks(), NOW, digest=lambda: "")
    if prof:
        prof.disable()
    loop, process, wall = time.thread_time() - loop, time.process_time() - process, time.perf_counter() - wall
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    return {"recipients": n, "accepted": json.loads(answer)["accepted"], "loop_cpu_us": loop / n * 1e6,
            "process_cpu_us": process / n * 1e6, "wall_s": wall}  # fmt: skip


def main() -> None:
    n = int(sys.argv[sys.argv.index("--recipients") + 1]) if "--recipients" in sys.argv else 200_000
    print(json.dumps(anyio.run(run, n, "--campaign" in sys.argv, "--profile" in sys.argv)))


if __name__ == "__main__":  # the check workers import this module again as __mp_main__
    main()
