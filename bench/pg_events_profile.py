"""Where a batch of order events goes on PostgreSQL: statements, round trips, client and server CPU.

``python -m bench.pg_events_profile --subscribers 20000 --orders 200000 --batches 20`` loads the
audience bench's data into a throwaway server (with ``pg_stat_statements``), then applies
``--batches`` batches of 1,000 order events (``store.apply_events``, as ``POST /v1/events/bulk``
does after its checks; no membership) and prints, an event: this process's CPU, the store's server
backend's CPU (``/proc/<pid>/stat``) and every server process's (the postmaster's children: WAL
writer, checkpointer ... too), the statements a batch and their time (``pg_stat_statements``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import time
from typing import Any

import click

from bench import postgres
from bench.audience import NOW, TENANT, Audience, _load_postgres, _order_line
from bench.service import cpu_seconds
from campaigns.core.events import decode_event
from campaigns.store import open_store



def proc_ns(pid: int) -> int:
    """A process's time on a CPU in nanoseconds (``/proc/<pid>/schedstat``: exact, not in ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _timed_cursor(backend: int, spent: dict[str, list[float]]) -> type:
    """A psycopg cursor class that adds each statement's server backend CPU (and the client's wall
    time) to ``spent[statement head]``: the client waits for each, so the backend's CPU between the
    call and its answer is that statement's."""
    import psycopg

    def note(query: Any, b0: int, t0: float) -> None:
        head = " ".join(str(query if isinstance(query, str) else query.as_string(None)).split())[:100]
        s = spent.setdefault(head, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += (proc_ns(backend) - b0) / 1e9
        s[2] += time.perf_counter() - t0

    class Timed(psycopg.Cursor):
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            b0, t0 = proc_ns(backend), time.perf_counter()
            try:
                return super().execute(query, params, **kw)
            finally:
                note(query, b0, t0)

        def executemany(self, query: Any, params_seq: Any, **kw: Any) -> Any:
            b0, t0 = proc_ns(backend), time.perf_counter()
            try:
                return super().executemany(query, params_seq, **kw)
            finally:
                note(query, b0, t0)

        @contextlib.contextmanager
        def copy(self, statement: Any, *a: Any, **kw: Any) -> Any:
            b0, t0 = proc_ns(backend), time.perf_counter()
            try:
                with super().copy(statement, *a, **kw) as c:
                    yield c
            finally:
                note(statement, b0, t0)

    return Timed


def server_pids(backend: int) -> list[int]:
    """The postmaster of ``backend`` and every child of it (the server's processes)."""
    with open(f"/proc/{backend}/stat") as f:
        master = int(f.read().rsplit(")", 1)[1].split()[1])
    pids = [master]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(d))
            except OSError:
                continue
    return pids


def server_cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:  # a process that ended (an autovacuum worker): its CPU is gone with it
            continue
    return total


def profile(n: int, m: int, batches: int, batch: int, seed: int, fillfactor: int = 100,
            fillfactor_tables: tuple[str, ...] = (), ddl: tuple[str, ...] = (), durable: bool = False) -> dict[str, Any]:  # fmt: skip
    settings = {"shared_buffers": "512MB", "work_mem": "64MB",
                "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}  # fmt: skip
    if not durable:
        settings.update({"fsync": "off", "synchronous_commit": "off"})
    with postgres.throwaway_postgres(settings, prefix="sluice-bench-pg-") as url:
        store = open_store(url)
        for table in fillfactor_tables:  # an experiment: room on each page for HOT updates
            store._conn.execute(f"ALTER TABLE {table} SET (fillfactor = {fillfactor})")
        _load_postgres(url, Audience(n, m, seed))
        for stmt in ddl:  # an experiment: a schema change after the load (an index dropped ...)
            store._conn.execute(stmt)
        if ddl:
            store._conn.execute("VACUUM ANALYZE")
        r = random.Random(seed + 1)
        lines = [_order_line(k, r, n) for k in range(batches * batch)]
        events = [decode_event(x) for x in lines]
        store._conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        backend = store._conn.info.backend_pid
        pids = server_pids(backend)
        store.apply_events(TENANT, [(e, e.phone) for e in events[:batch]], now=NOW)  # warm: prepared, cached
        spent: dict[str, list[float]] = {}
        store._conn.cursor_factory = _timed_cursor(backend, spent)
        store._conn.execute("SELECT pg_stat_statements_reset()")
        lsn0 = store._conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        c0, b0, s0, t0 = time.process_time(), proc_ns(backend) / 1e9, server_cpu(pids), time.perf_counter()
        walls = []
        for i in range(1, batches):
            chunk = [(e, e.phone) for e in events[i * batch:(i + 1) * batch]]
            t = time.perf_counter()
            store.apply_events(TENANT, chunk, now=NOW)
            walls.append(time.perf_counter() - t)
        done = (batches - 1) * batch
        client, back, server, wall = (time.process_time() - c0, proc_ns(backend) / 1e9 - b0, server_cpu(pids) - s0,
                                      time.perf_counter() - t0)  # fmt: skip
        wal = store._conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).fetchone()[0]
        rows = store._conn.execute(
            "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM "
            "pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC").fetchall()
        hot = {t: (u, h) for t, u, h in store._conn.execute(
            "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE n_tup_upd > 0").fetchall()}
        store.close()
    per = [{"calls_per_batch": c / (batches - 1), "backend_cpu_ms_per_batch": cpu * 1e3 / (batches - 1),
            "wall_ms_per_batch": w * 1e3 / (batches - 1), "statement": h}
           for h, (c, cpu, w) in sorted(spent.items(), key=lambda kv: -kv[1][1]) if "pg_stat_statements" not in h]
    calls = sum(r[0] for r in rows)
    return {"events": done, "events_per_s": done / wall, "batch_wall_p50_ms": statistics.median(walls) * 1e3,
            "client_cpu_us_per_event": client / done * 1e6, "backend_cpu_us_per_event": back / done * 1e6,
            "server_cpu_us_per_event": server / done * 1e6, "wal_bytes_per_event": float(wal) / done, "statements_per_batch": calls / (batches - 1),
            "by_statement": per, "updates_hot": hot, "statements": [{"calls_per_batch": c / (batches - 1), "ms_per_batch": t / (batches - 1), "rows": rr, "query": q}
                           for c, t, rr, q in rows[:25]]}  # fmt: skip


@click.command()
@click.option("--subscribers", "n", default=20_000, show_default=True)
@click.option("--orders", "m", default=200_000, show_default=True)
@click.option("--batches", default=20, show_default=True)
@click.option("--batch", default=1000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--fillfactor", default=100, show_default=True)
@click.option("--fillfactor-table", "tables", multiple=True)
@click.option("--ddl", multiple=True, help="A statement run after the load (an experiment: an index dropped ...).")
@click.option("--durable", is_flag=True, help="fsync and synchronous_commit on (as the audience bench's server).")
@click.option("--json", "json_path", default=None)
def main(n: int, m: int, batches: int, batch: int, seed: int, fillfactor: int, tables: tuple[str, ...],
         ddl: tuple[str, ...], durable: bool, json_path: str | None) -> None:  # fmt: skip
    out = profile(n, m, batches, batch, seed, fillfactor, tables, ddl, durable)
    for k, v in out.items():
        if k not in ("statements", "by_statement", "updates_hot"):
            click.echo(f"  {k:<28} {v:>12,.1f}")
    click.echo(f"  updates (all, HOT) by table since the load: {out['updates_hot']}")
    click.echo("  backend CPU a batch, by statement (client-side timers):")
    for s in out["by_statement"]:
        click.echo(f"  {s['calls_per_batch']:6.1f} x {s['backend_cpu_ms_per_batch']:8.2f} ms cpu {s['wall_ms_per_batch']:8.2f} ms wall  "
                   f"{s['statement']}")
    click.echo("  server time a batch, by statement (pg_stat_statements):")
    for s in out["statements"]:
        click.echo(f"  {s['calls_per_batch']:6.1f} x {s['ms_per_batch']:8.2f} ms  {s['query']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
