"""A launch's freeze statement by statement: the CPU time of the thread running each store
statement (``Tx`` methods timed), on a seeded SQLite store (the audience of `sluice bench campaign`),
frozen in one transaction, in chunks (``freeze(chunk=...)`` then ``freeze_step``) or as a stream
(``freeze(stream=...)`` then ``stream_step``). With ``postgres`` (a throwaway server, the campaign
bench's settings) each statement's *wall* time is added instead (the server does the work; the
client thread waits), and the server's CPU over the freeze is printed.

    python -m bench.launch_statements 100000 20000         # chunks of 20,000 recipients
    python -m bench.launch_statements 100000 none          # one transaction
    python -m bench.launch_statements 100000 stream20000   # a stream of 20,000 a chunk
    python -m bench.launch_statements 200000 stream20000 postgres
"""

from __future__ import annotations

import collections
import contextlib
import sys
import tempfile
import time
from typing import Any

from bench import campaign as bc
from bench import postgres as pgbench
from bench.audience import throwaway_postgres
from bench.launch_profile import ready_campaign
from campaigns.service import launch
from campaigns.store import sql as sqlmod


def _timed_statements(clock: Any = time.thread_time) -> dict[str, list[float]]:
    """Patch ``Tx``'s statement methods to add each statement's ``clock`` time (thread CPU, or wall
    on PostgreSQL) to the returned table."""
    acc: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for name in ("run", "many", "rows", "one"):
        real = getattr(sqlmod.Tx, name)

        def wrap(self: Any, sql: str, *a: Any, _real: Any = real, **k: Any) -> Any:
            c0 = clock()
            try:
                return _real(self, sql, *a, **k)
            finally:
                e = acc[" ".join(sql.split())[:110]]
                e[0] += clock() - c0
                e[1] += 1

        setattr(sqlmod.Tx, name, wrap)
    return acc


def main(n: int, chunk: int | None, stream: int | None = None, postgres: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-launch-statements-") as tmp, contextlib.ExitStack() as stack:
        url = stack.enter_context(throwaway_postgres()) if postgres else None
        store, camp, tl, now = ready_campaign(tmp, n, url)
        clock = time.perf_counter if postgres else time.thread_time
        server = None
        if postgres:
            with store._tx() as tx:  # type: ignore[attr-defined]
                server = int(tx.one("SELECT pg_backend_pid()")[0])
            cpu0 = pgbench.server_cpu(server)
        acc = _timed_statements(clock)
        c0 = clock()
        launch.freeze(store, bc.TENANT, camp, tl, now, chunk=chunk, stream=stream)
        c1 = clock()
        if stream is not None:
            step = launch.stream_steps(store, bc.TENANT, camp, tl, stream)
            while step(now) is not None:
                pass
        elif chunk is not None:
            while launch.freeze_step(store, bc.TENANT, camp, tl, chunk) is not None:
                pass
        c2 = clock()
        r = max(1, sum(b.size for b in store.batches(bc.TENANT, camp.id)))
        if server is not None:
            spent = pgbench.cpu_spent(cpu0, pgbench.server_cpu(server))
            print(f"server CPU over the freeze {spent:.2f} s ({spent * 1e6 / r:.1f} us a recipient); times below are wall")
        store.close()
    print(f"recipients={r} first transaction {c1 - c0:.2f} s ({(c1 - c0) * 1e6 / r:.1f} us a recipient), "
          f"the other chunks {c2 - c1:.2f} s ({(c2 - c1) * 1e6 / r:.1f} us)")
    for sql, (t, count) in sorted(acc.items(), key=lambda x: -x[1][0])[:12]:
        print(f"{t * 1e6 / r:6.2f} us  x{int(count):<4d} {sql}")


if __name__ == "__main__":
    how = sys.argv[2] if len(sys.argv) > 2 else "20000"
    pg = sys.argv[3:4] == ["postgres"]
    if how.startswith("stream"):
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, None, int(how.removeprefix("stream")), pg)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, None if how == "none" else int(how), None, pg)
