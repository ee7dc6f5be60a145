"""CPU of the redirect's two PostgreSQL round trips, through a worker thread (before: ``read`` /
``record_link_hits`` in ``anyio.to_thread``) against on the event loop (``PgLinkReader.aread``,
``PgClickWriter.write``: psycopg's async connections), alternated in one process under uvloop, per
round of K codes and per flush of B hits; this process's CPU (every thread) and the server
backends' (/proc, same host), and the wall time.

    python -m bench.redirect_rounds [LINKS]
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

import anyio

from bench.audience import throwaway_postgres
from campaigns.store import open_store
from campaigns.store.campaign_rows import HitIn, LinkRow

T0 = 1_767_000_000.0
TENANT = "acme"


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def main(url: str, n: int) -> None:
    store = open_store(url)
    codes = [f"Rr{i:07d}" for i in range(n)]
    store.freeze_audience(TENANT, 1, [], [LinkRow(code=c, tenant=TENANT, campaign_id=1, subscriber_id=i + 1,
                                                  target="https://x.example/p", created_at=T0)
                                          for i, c in enumerate(codes)], now=T0)  # fmt: skip
    store.set_link_keys({TENANT: b"k" * 32})  # range candidates decoded and read too, as in serve
    reader = store.open_link_reader()
    writer = store.open_click_writer()
    r = random.Random(1)
    res: dict[tuple[str, int, str], list[tuple[float, float, float]]] = {}

    async def run() -> None:
        await reader.aread(codes[:2])  # connections made and statements prepared before timing
        reader.read(codes[:2])
        hits0 = [_hit(codes[0], T0 + 1)]
        await writer.write(hits0, now=T0 + 1)
        store.record_link_hits(hits0, now=T0 + 1)
        backends = [reader._aconn.info.backend_pid, reader._conn.info.backend_pid, writer._conn.info.backend_pid,
                    store._conn.info.backend_pid]  # fmt: skip
        t = T0 + 10
        for rnd in range(4):
            for kind, size, reps in (("round", 1, 300), ("round", 4, 300), ("round", 16, 200),
                                     ("flush", 2, 300), ("flush", 10, 200), ("flush", 50, 80)):  # fmt: skip
                for how in (("thread", "loop") if rnd % 2 == 0 else ("loop", "thread")):
                    batches = []
                    for _ in range(reps):
                        picked = r.sample(codes, size)
                        if kind == "flush":
                            t += 0.01
                            picked = [_hit(c, t) for c in picked]
                        batches.append(picked)
                    c0, b0, w0 = time.process_time(), sum(map(_cpu_of, backends)), time.perf_counter()
                    for b in batches:
                        if kind == "round":
                            if how == "loop":
                                await reader.aread(b)
                            else:
                                await anyio.to_thread.run_sync(reader.read, b)
                        elif how == "loop":
                            await writer.write(b, now=t)
                        else:
                            await anyio.to_thread.run_sync(lambda b=b: store.record_link_hits(b, now=t))
                    res.setdefault((kind, size, how), []).append(
                        ((time.process_time() - c0) * 1e6 / reps, (sum(map(_cpu_of, backends)) - b0) * 1e6 / reps,
                         (time.perf_counter() - w0) * 1e6 / reps))  # fmt: skip
        await reader.aclose()
        await writer.aclose()

    anyio.run(run, backend_options={"use_uvloop": True})
    print(f"postgres, {n} links, load {os.getloadavg()[0]:.1f} (medians of 4, alternated)")
    for (kind, size, how), v in sorted(res.items()):
        print(f"{kind} of {size:3d} via {how:6s}: this process {statistics.median(x[0] for x in v):7.1f} us, "
              f"backends {statistics.median(x[1] for x in v):7.1f} us, wall {statistics.median(x[2] for x in v):7.1f} us")
    store.close()


def _hit(code: str, at: float) -> HitIn:
    return HitIn(code=code, at=at, user_agent="Mozilla/5.0", verdict="click", tenant=TENANT, campaign_id=1,
                 subscriber_id=int(code[2:]) + 1, phone=None, target="https://x.example/p", created_at=T0,
                 expires_at=None)  # fmt: skip


if __name__ == "__main__":
    with throwaway_postgres() as pg_url:
        main(pg_url, int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
