"""A scratch prototype: SQLite's ingest of bulk order events with one subscriber's writes together.

``python -m bench.sqlite_event_layout --layout base|together|clustered|both [--no-map]`` loads the
audience bench's data into a throwaway SQLite file (as ``bench.sqlite_events_profile``), changes the
layout, turns every checkpoint off, and sends ``--batches`` batches of ``--batch`` order events
through ``store.apply_events`` (the ingest's transaction alone, no membership pass; the layouts
change the writes only, so the pass's reads would not run here). It prints the thread CPU an event
of the store's transaction, by statement, and the WAL frames an event: by b-tree (``dbstat``,
slow at 100k), or with ``--no-map`` with the CPU of a checkpoint after each batch (what the store's
checkpoint thread pays for those frames in the product).

Layouts:
- ``base``: the store as it is.
- ``together``: a WITHOUT ROWID table ``subscriber_orders`` keyed by (tenant, subscriber, key, at,
  order id) holding each order's spend row (key '', at = created_at, amount = total, status) and
  each rollup row (key as in ``order_rollups``, at = bucket, order id ''); the two b-trees keyed by
  subscriber it replaces (``orders_segment_spend``, ``order_rollups_by_subscriber``) dropped. One
  event's subscriber-keyed writes then land on one leaf (aggregates apart).
- ``clustered``: ``orders`` WITHOUT ROWID (its key the table): one b-tree entry an order less.
- ``both``: the two together.
Measured and not built: docs/BENCHMARKS.md, "Issue 17, twelfth pass".
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from collections import Counter
from typing import Any

import click

from bench.audience import NOW, TENANT, Audience, _load_sqlite, _order_line
from bench.sqlite_event_pages import _frames
from bench.sqlite_events_profile import _Conn, _timed_cursor
from campaigns.config import loads
from campaigns.core.events import decode_event
from campaigns.service.audience import Audience as AudienceService
from campaigns.store import event_batch, open_store, rollups

TOGETHER = [
    "CREATE TABLE subscriber_orders (tenant TEXT NOT NULL, subscriber_id INTEGER NOT NULL, key TEXT NOT NULL, "
    "at NOT NULL, order_id TEXT NOT NULL, n INTEGER, amount INTEGER, quantity INTEGER, payment_status TEXT, "
    "PRIMARY KEY (tenant, subscriber_id, key, at, order_id)) WITHOUT ROWID",
    "INSERT INTO subscriber_orders SELECT tenant, subscriber_id, '', created_at, order_id, 1, total, 0, payment_status "
    "FROM orders ORDER BY tenant, subscriber_id, created_at, order_id",
    "INSERT INTO subscriber_orders SELECT tenant, subscriber_id, key, bucket, '', n, amount, quantity, NULL "
    "FROM order_rollups ORDER BY tenant, subscriber_id, key, bucket",
    "DROP INDEX orders_segment_spend",
    "DROP INDEX order_rollups_by_subscriber",
]
_SO = ("tenant", "subscriber_id", "key", "at", "order_id", "n", "amount", "quantity", "payment_status")


def _together(store: Any) -> Any:
    """The layout made and the batch patched; returns what undoes the patches (module attributes)."""
    with store._conn:
        for s in TOGETHER:
            store._conn.execute(s)
    store.analyze()
    insert_orders = event_batch.EventBatch._insert_orders
    upkeep = rollups.upkeep

    def orders(tx: Any, tenant: str, rows: list[Any]) -> None:
        insert_orders(tx, tenant, rows)
        tx.insert_many("subscriber_orders", _SO, [
            (tenant, sid, "", e.created_at if e.created_at is not None else e.at, e.order_id, 1, e.total, 0,
             e.payment_status) for e, sid in rows])  # fmt: skip

    def keep(tx: Any, tenant: str, *, added: Any = (), recompute: Any = ()) -> None:
        if recompute:
            upkeep(tx, tenant, recompute=recompute)  # not in this bench's batches (new orders only)
        if not added:
            return
        rows = rollups._rows(tenant, ((sid, e.created_at if e.created_at is not None else e.at, e.total,
                                       [(it.category, it.price, it.quantity) for it in e.items]) for e, sid in added))  # fmt: skip
        for table, cols, key, out in (
                ("order_rollups", rollups._COLS, "tenant, key, bucket, subscriber_id", rows),
                ("subscriber_orders", _SO, "tenant, subscriber_id, key, at, order_id",
                 [(t, sid, k, b, "", n, a, q, None) for t, k, b, sid, n, a, q in rows])):  # fmt: skip
            adds = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in ("n", "amount", "quantity"))
            tx._insert_on_conflict(table, cols, out, f"ON CONFLICT ({key}) DO UPDATE SET {adds}")

    event_batch.EventBatch._insert_orders = staticmethod(orders)  # type: ignore[assignment]
    rollups.upkeep = keep  # type: ignore[assignment]

    def undo() -> None:
        event_batch.EventBatch._insert_orders = staticmethod(insert_orders)  # type: ignore[assignment]
        rollups.upkeep = upkeep  # type: ignore[assignment]

    return undo


_SAME = ("SELECT (SELECT COUNT(*) FROM (SELECT tenant, subscriber_id, created_at, order_id, total, payment_status FROM orders "
         "EXCEPT SELECT tenant, subscriber_id, at, order_id, amount, payment_status FROM subscriber_orders WHERE key = '')) + "
         "(SELECT COUNT(*) FROM (SELECT tenant, subscriber_id, key, bucket, n, amount, quantity FROM order_rollups "
         "EXCEPT SELECT tenant, subscriber_id, key, at, n, amount, quantity FROM subscriber_orders WHERE key <> '')) + "
         "(SELECT COUNT(*) FROM orders) + (SELECT COUNT(*) FROM order_rollups) - (SELECT COUNT(*) FROM subscriber_orders)")


def _clustered_orders(store: Any) -> None:
    """``orders`` WITHOUT ROWID: its key's b-tree is the table (one b-tree entry an order less)."""
    conn = store._conn
    ddl = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'orders'").fetchone()[0]
    idx = [r[0] for r in conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'orders' "
                                      "AND sql IS NOT NULL")]  # fmt: skip
    with conn:
        conn.execute(ddl.replace("CREATE TABLE orders", "CREATE TABLE orders_c", 1) + " WITHOUT ROWID")
        conn.execute("INSERT INTO orders_c SELECT * FROM orders ORDER BY tenant, order_id")
        conn.execute("DROP TABLE orders")
        conn.execute("ALTER TABLE orders_c RENAME TO orders")
        for i in idx:
            conn.execute(i)
    store.analyze()


def profile(n: int, m: int, batches: int, batch: int, seed: int, layout: str, workdir: str | None,
            mapped: bool = True) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = os.path.join(d, "layout.db")
        open_store(f"sqlite:///{path}").close()
        _load_sqlite(path, Audience(n, m, seed))
        store = open_store(f"sqlite:///{path}")
        store.analyze()
        undo = _together(store) if layout in ("together", "both") else None
        if layout in ("clustered", "both"):
            _clustered_orders(store)
        if store._checkpointer is not None:
            store._checkpointer.close()
            store._checkpointer = None
        store._conn.execute("PRAGMA wal_autocheckpoint=0")
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "{TENANT}"\nkey_env = "BENCH_KEY"\n')
        audience = AudienceService(store, settings, lambda: NOW)
        r = random.Random(seed + 1)
        bodies = [[decode_event(_order_line(k, r, n)) for k in range(i * batch, (i + 1) * batch)] for i in range(batches)]
        names = {int(p): str(nm) for nm, p in store._conn.execute("SELECT name, pageno FROM dbstat")} if mapped else {}
        pos = 0
        cpu, ckpt, frames, trees = [], [], [], []
        spent: dict[str, list[float]] = {}
        raw = store._conn

        def run_batches() -> None:
            nonlocal pos
            for events in bodies:
                phones = audience.check_events(TENANT, events, [""] * len(events))
                if mapped:
                    _, pos = _frames(path, pos)
                c = time.thread_time()
                if events is bodies[1]:
                    spent.clear()
                store._conn = _Conn(raw, _timed_cursor(spent))
                store.apply_events(TENANT, list(zip(events, phones, strict=True)), now=NOW)
                store._conn = raw
                cpu.append(time.thread_time() - c)
                pages, pos = _frames(path, pos)
                frames.append(len(pages))
                if not mapped:  # the WAL copied back, timed: the store's checkpoint thread pays it in the product
                    c = time.thread_time()
                    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    ckpt.append(time.thread_time() - c)
                    pos = 0
                    continue
                names.update({int(p): str(nm) for nm, p in store._conn.execute("SELECT name, pageno FROM dbstat")
                              if int(p) in set(pages) and int(p) not in names})
                trees.append(Counter(names.get(p, "?") for p in set(pages)))

        try:
            run_batches()
        finally:
            if undo is not None:
                undo()
        # the prototype's writes checked: its rows are exactly the orders' and the rollups'
        same = layout not in ("together", "both") or store._conn.execute(_SAME).fetchone()[0] == 0
        store.close()
    warm = slice(1, None)
    all_trees = sorted({t for c in trees[warm] for t in c})
    return {"layout": layout, "subscribers": n, "orders": m, "rows_consistent": same,
            "store_cpu_us_per_event": statistics.median(cpu[warm]) / batch * 1e6,
            "store_cpu_us_per_event_all": [round(c / batch * 1e6, 1) for c in cpu[warm]],
            "wal_frames_per_event": statistics.median(frames[warm]) / batch,
            "by_statement": sorted(((v[1] / (batches - 1) / batch * 1e6, k) for k, v in spent.items()), reverse=True),
            "checkpoint_cpu_us_per_event": statistics.median(ckpt[warm]) / batch * 1e6 if ckpt else None,
            "pages_by_tree": {t: statistics.median(c.get(t, 0) for c in trees[warm]) / batch for t in all_trees}}


@click.command()
@click.option("--subscribers", "n", default=20_000, show_default=True)
@click.option("--orders", "m", default=200_000, show_default=True)
@click.option("--batches", default=11, show_default=True)
@click.option("--batch", default=1000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--layout", type=click.Choice(["base", "together", "clustered", "both"]), default="base", show_default=True)
@click.option("--workdir", default=None)
@click.option("--map/--no-map", "mapped", default=True, show_default=True,
              help="Map each WAL frame to its b-tree (dbstat: slow); --no-map times a checkpoint after each batch instead.")
def main(n: int, m: int, batches: int, batch: int, seed: int, layout: str, workdir: str | None, mapped: bool) -> None:
    out = profile(n, m, batches, batch, seed, layout, workdir, mapped)
    click.echo(f"{layout} {n}/{m}: store CPU {out['store_cpu_us_per_event']:.1f} us an event "
               f"{out['store_cpu_us_per_event_all']}, WAL frames {out['wal_frames_per_event']:.3f} an event, "
               f"checkpoint CPU {out['checkpoint_cpu_us_per_event']} us an event")
    for us, h in out["by_statement"]:
        click.echo(f"  {us:7.2f} us  {h}")
    for t, v in sorted(out["pages_by_tree"].items(), key=lambda kv: -kv[1]):
        click.echo(f"    {v:6.3f}  {t}")


if __name__ == "__main__":
    main()
