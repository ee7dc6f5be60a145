"""Where a live membership pass goes on SQLite: its read, its window edges, its writes, per tree.

``python -m bench.sqlite_member_profile --subscribers 20000 --orders 200000 --batches 6`` loads the
audience bench's data and its 23 live trees into a throwaway SQLite file, then applies ``--batches``
batches of 1,000 order events through ``Audience.apply_many`` (the store's batch, then the pass,
``refresh_members``, as the membership loop runs it). Around each pass it records this thread's CPU
(``time.thread_time``: SQLite's work is on it) of the read (the one ``CASE`` statement per group of
plans, then the window edges) and of the write transaction; after each pass it runs every plan of
it again alone (its ``CASE`` column over the plan's ids, and its window edges), each timed the same
way: which trees cost the pass its CPU. Prints medians over the batches after the first (a warm-up).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import click

from bench.audience import Audience, apply_batches, _load_sqlite, mix_and_events
from bench.sqlite_events_profile import _Conn, _timed_cursor
from campaigns.store import open_store
from campaigns.store.segment_sql import members_from


def profile(n: int, m: int, batches: int, batch: int, seed: int, workdir: str | None,
            no_checkpoint: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = os.path.join(d, "member.db")
        open_store(f"sqlite:///{path}").close()  # the schema
        _load_sqlite(path, Audience(n, m, seed))
        store = open_store(f"sqlite:///{path}")
        store.analyze()
        audience, names, events = mix_and_events(store, n, seed, batches * batch)
        passes: list[dict[str, float]] = []
        per_tree: dict[str, list[float]] = {}
        ingest: list[float] = []
        writes: dict[str, list[float]] = {}

        def timed(tenant: str, plans: Any, *, now: float) -> int:
            c0, t0 = time.thread_time(), time.perf_counter()
            found = store.read_members(tenant, plans)
            c1 = time.thread_time()
            f0 = frames()
            plain, store._conn = store._conn, _Conn(store._conn, _timed_cursor(writes))
            try:
                changed = store.write_members(tenant, found, now=now)
            finally:
                store._conn = plain
            c2 = time.thread_time()
            passes.append({"write_wal_frames": frames() - f0, "read_ms": (c1 - c0) * 1e3, "write_ms": (c2 - c1) * 1e3,
                           "pass_ms": (c2 - c0) * 1e3,
                           "wall_ms": (time.perf_counter() - t0) * 1e3, "plans": len(plans),
                           "ids": sum(len(p.ids) for p in plans), "changed": changed})  # fmt: skip
            with store._member_read() as tx:
                for p in plans:
                    c = time.thread_time()
                    tx.raw_rows(f"SELECT s.id, CASE WHEN {p.where} THEN 1 ELSE 0 END FROM {members_from('sqlite')} "
                                "WHERE s.tenant = ? AND s.id IN (SELECT value FROM json_each(?))",
                                [*p.params, tenant, tx.array(p.ids)])  # fmt: skip
                    per_tree.setdefault(names[p.segment_id], []).append((time.thread_time() - c) * 1e3)
                    if p.edges is not None:
                        c = time.thread_time()
                        tx.raw_rows(*p.edges)
                        per_tree.setdefault(names[p.segment_id] + " (edges)", []).append((time.thread_time() - c) * 1e3)
            return changed

        apply_events = store.apply_events

        def timed_apply(*a: Any, **kw: Any) -> Any:
            c = time.thread_time()
            try:
                return apply_events(*a, **kw)
            finally:
                ingest.append((time.thread_time() - c) * 1e3)

        if no_checkpoint:  # the WAL grows; each pass's frames counted, its commit timed without a checkpoint
            store._conn.execute("PRAGMA wal_autocheckpoint=0")

        def frames() -> int:
            # never checkpointed, the WAL never restarts: its growth is the frames written
            # (a page and a 24-byte header each)
            return os.path.getsize(path + "-wal") // (4096 + 24) if no_checkpoint else 0

        store.refresh_members = timed  # type: ignore[method-assign]
        store.apply_events = timed_apply  # type: ignore[method-assign]
        apply_batches(audience, events, batches, batch)
        store.close()
    warm = passes[1:] or passes
    med = {k: statistics.median(p[k] for p in warm) for k in warm[0]}
    med["ingest_ms"] = statistics.median(ingest[1:] or ingest)
    trees = {k: statistics.median(v[1:] or v) for k, v in per_tree.items()}
    by_write = [{"calls_per_pass": c / len(passes), "cpu_ms_per_pass": cpu / len(passes) * 1e3,
                 "rows_per_pass": rows / len(passes), "statement": h}
                for h, (c, cpu, rows) in sorted(writes.items(), key=lambda kv: -kv[1][1])]  # fmt: skip
    return {"pass": med, "per_tree_ms": dict(sorted(trees.items(), key=lambda kv: -kv[1])), "writes": by_write}


@click.command()
@click.option("--subscribers", "n", default=20_000, show_default=True)
@click.option("--orders", "m", default=200_000, show_default=True)
@click.option("--batches", default=6, show_default=True)
@click.option("--batch", default=1000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--workdir", default=None, help="Where the throwaway database goes (default: the system's temp dir).")
@click.option("--no-checkpoint", is_flag=True, help="No automatic checkpoint: a pass's WAL frames counted.")
def main(n: int, m: int, batches: int, batch: int, seed: int, workdir: str | None, no_checkpoint: bool) -> None:
    out = profile(n, m, batches, batch, seed, workdir, no_checkpoint)
    click.echo("  a pass (median, this thread's CPU): " + ", ".join(f"{k} {v:,.1f}" for k, v in out["pass"].items()))
    click.echo("  CPU per tree, alone, ms a pass (median):")
    for name, ms in out["per_tree_ms"].items():
        click.echo(f"  {ms:9.2f}  {name}")
    click.echo(f"  sum {sum(out['per_tree_ms'].values()):9.2f}")
    click.echo("  the write transaction's statements (mean a pass, the warm-up included):")
    for w in out["writes"]:
        click.echo(f"  {w['calls_per_pass']:5.1f} x {w['rows_per_pass']:8.0f} rows {w['cpu_ms_per_pass']:7.2f} ms  "
                   f"{w['statement']}")


if __name__ == "__main__":
    main()
