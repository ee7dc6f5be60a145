"""Where a live membership pass goes on PostgreSQL: per segment tree, the server's CPU.

``python -m bench.pg_member_profile --subscribers 20000 --orders 200000 --batches 6`` loads the
audience bench's data and its 23 live trees into a throwaway server, then applies ``--batches``
batches of 1,000 order events through ``Audience.apply_many`` (the store's batch, then the pass,
``refresh_members``, as the membership loop runs it). Around each pass it records the membership
connection's server backend CPU (``/proc/<pid>/schedstat``) and the pass's wall time; after each
pass it runs every plan of it again alone (its ``CASE`` column over the plan's ids, and its window
edges), each timed the same way: which trees cost the pass its CPU. Prints medians over the
batches after the first (a warm-up: plans prepared, pages cached).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import click

from bench import postgres
from bench.audience import Audience, apply_batches, _load_postgres, mix_and_events
from bench.pg_events_profile import proc_ns
from campaigns.store import open_store
from campaigns.store.segment_sql import members_from


def profile(n: int, m: int, batches: int, batch: int, seed: int) -> dict[str, Any]:
    settings = {"fsync": "off", "synchronous_commit": "off", "shared_buffers": "512MB", "work_mem": "64MB"}
    with postgres.throwaway_postgres(settings, prefix="sluice-bench-pg-") as url:
        store = open_store(url)
        _load_postgres(url, Audience(n, m, seed))
        audience, names, events = mix_and_events(store, n, seed, batches * batch)
        passes: list[dict[str, float]] = []
        per_tree: dict[str, list[float]] = {}

        def timed(tenant: str, plans: Any, *, now: float) -> int:
            with store._member_tx() as tx:  # the membership connection exists and is warm
                tx.one("SELECT 1", ())
            backend = store._member_conn.info.backend_pid
            b0, c0, t0 = proc_ns(backend), time.thread_time(), time.perf_counter()
            found = store.read_members(tenant, plans)
            b1 = proc_ns(backend)
            changed = store.write_members(tenant, found, now=now)
            passes.append({"server_ms": (proc_ns(backend) - b0) / 1e6, "server_read_ms": (b1 - b0) / 1e6,
                           "server_write_ms": (proc_ns(backend) - b1) / 1e6, "client_ms": (time.thread_time() - c0) * 1e3,
                           "wall_ms": (time.perf_counter() - t0) * 1e3, "plans": len(plans),
                           "ids": sum(len(p.ids) for p in plans), "changed": changed})  # fmt: skip
            with store._member_tx() as tx:
                for p in plans:
                    b = proc_ns(backend)
                    tx.raw_rows(f"SELECT s.id, CASE WHEN {p.where} THEN 1 ELSE 0 END FROM {members_from('postgres')} "
                                "WHERE s.tenant = %s AND s.id = ANY(%s::bigint[])", [*p.params, tenant, p.ids])  # fmt: skip
                    per_tree.setdefault(names[p.segment_id], []).append((proc_ns(backend) - b) / 1e6)
                    if p.edges is not None:
                        b = proc_ns(backend)
                        tx.raw_rows(*p.edges)
                        per_tree.setdefault(names[p.segment_id] + " (edges)", []).append((proc_ns(backend) - b) / 1e6)
            return changed

        store.refresh_members = timed  # type: ignore[method-assign]
        apply_batches(audience, events, batches, batch)
        store.close()
    warm = passes[1:] or passes
    med = {k: statistics.median(p[k] for p in warm) for k in warm[0]}
    trees = {k: statistics.median(v[1:] or v) for k, v in per_tree.items()}
    return {"pass": med, "per_tree_server_ms": dict(sorted(trees.items(), key=lambda kv: -kv[1]))}


@click.command()
@click.option("--subscribers", "n", default=20_000, show_default=True)
@click.option("--orders", "m", default=200_000, show_default=True)
@click.option("--batches", default=6, show_default=True)
@click.option("--batch", default=1000, show_default=True)
@click.option("--seed", default=1, show_default=True)
def main(n: int, m: int, batches: int, batch: int, seed: int) -> None:
    out = profile(n, m, batches, batch, seed)
    click.echo("  a pass (median): " + ", ".join(f"{k} {v:,.1f}" for k, v in out["pass"].items()))
    click.echo("  server backend CPU per tree, alone, ms a pass (median):")
    for name, ms in out["per_tree_server_ms"].items():
        click.echo(f"  {ms:9.2f}  {name}")
    click.echo(f"  sum {sum(out['per_tree_server_ms'].values()):9.2f}")


if __name__ == "__main__":
    main()
