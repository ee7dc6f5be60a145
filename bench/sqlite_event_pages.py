"""What one bulk order event writes on SQLite: rows, b-tree entries and WAL pages, by b-tree.

``python -m bench.sqlite_event_pages --batches 4`` loads the audience bench's 20k subscribers and
200k orders and its live trees into a throwaway SQLite file (as ``bench.sqlite_member_profile``),
(``--page-size``: the new file's), turns every checkpoint off (the WAL then only grows: each frame is a page written), and applies
``--batches`` batches of ``--batch`` order events through ``Audience.apply_many`` (the store's batch,
then the membership pass). For the ingest's transaction and the pass's write transaction apart it
counts the WAL frames written, maps each frame's page to the table or index it belongs to
(``dbstat``), and counts each table's rows before and after. Prints the medians an event over the
batches after the first.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import struct
import tempfile
from collections import Counter
from typing import Any

import click

from bench.audience import Audience, _load_sqlite, apply_batches, mix_and_events
from campaigns.store import open_store

_TABLES = ("processed_events", "orders", "order_items", "order_rollups", "subscriber_stats", "activities",
           "segment_members", "segment_timers", "flow_inputs")  # fmt: skip


def _frames(path: str, start: int) -> tuple[list[int], int]:
    """The page numbers of the WAL's frames from byte ``start`` (0: after its header), and the end."""
    with open(path + "-wal", "rb") as f:
        head = f.read(32)
        size = struct.unpack(">I", head[8:12])[0]
        f.seek(start or 32)
        pages = []
        while True:
            h = f.read(24)
            if len(h) < 24:
                break
            pages.append(struct.unpack(">I", h[:4])[0])
            f.seek(size, 1)
        return pages, f.tell() - (len(h) if h else 0)


def profile(n: int, m: int, batches: int, batch: int, seed: int, workdir: str | None,
            page_size: int = 4096) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = os.path.join(d, "pages.db")
        # the file made with ``page_size`` (WAL mode writes its header; the store then keeps the size)
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        open_store(f"sqlite:///{path}").close()
        _load_sqlite(path, Audience(n, m, seed))
        store = open_store(f"sqlite:///{path}")
        store.analyze()
        if store._checkpointer is not None:
            store._checkpointer.close()
            store._checkpointer = None
        store._conn.execute("PRAGMA wal_autocheckpoint=0")
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        audience, _, events = mix_and_events(store, n, seed, batches * batch)
        pos = [0]
        steps: list[dict[str, Any]] = []

        def names() -> dict[int, str]:
            return {int(p): str(nm) for nm, p in store._conn.execute("SELECT name, pageno FROM dbstat")}

        def rows() -> dict[str, int]:
            return {t: store._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _TABLES}

        def measured(step: str, fn: Any) -> Any:
            def run(*a: Any, **kw: Any) -> Any:
                r0 = rows()
                _, pos[0] = _frames(path, pos[0])
                c0 = store._conn.total_changes
                out = fn(*a, **kw)
                c1 = store._conn.total_changes
                pages, pos[0] = _frames(path, pos[0])
                by = names()
                r1 = rows()
                steps.append({"step": step, "frames": len(pages), "distinct": len(set(pages)),
                              "changes": c1 - c0, "by_tree": Counter(by.get(p, "?") for p in set(pages)),
                              "rows": {t: r1[t] - r0[t] for t in _TABLES if r1[t] != r0[t]}})  # fmt: skip
                return out
            return run

        store.apply_events = measured("ingest", store.apply_events)  # type: ignore[method-assign]
        store.write_members = measured("pass write", store.write_members)  # type: ignore[method-assign]
        apply_batches(audience, events, batches, batch)
        store.close()
    out: dict[str, Any] = {}
    for step in ("ingest", "pass write"):
        warm = [s for s in steps if s["step"] == step][1:]
        trees = sorted({t for s in warm for t in s["by_tree"]})
        tabs = sorted({t for s in warm for t in s["rows"]})
        out[step] = {"frames": statistics.median(s["frames"] for s in warm) / batch,
                     "distinct pages": statistics.median(s["distinct"] for s in warm) / batch,
                     "row changes (total_changes)": statistics.median(s["changes"] for s in warm) / batch,
                     "pages by b-tree": {t: statistics.median(s["by_tree"].get(t, 0) for s in warm) / batch for t in trees},
                     "rows added": {t: statistics.median(s["rows"].get(t, 0) for s in warm) / batch for t in tabs}}  # fmt: skip
    return out


@click.command()
@click.option("--subscribers", "n", default=20_000, show_default=True)
@click.option("--orders", "m", default=200_000, show_default=True)
@click.option("--batches", default=4, show_default=True)
@click.option("--batch", default=1000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--workdir", default=None)
@click.option("--page-size", default=4096, show_default=True, help="The new file's page size (SQLite's default: a store's).")
def main(n: int, m: int, batches: int, batch: int, seed: int, workdir: str | None, page_size: int) -> None:
    for step, o in profile(n, m, batches, batch, seed, workdir, page_size).items():
        click.echo(f"{step}: WAL frames {o['frames']:.2f} an event ({o['distinct pages']:.2f} distinct pages), "
                   f"row changes {o['row changes (total_changes)']:.2f} an event")
        for t, v in sorted(o["pages by b-tree"].items(), key=lambda kv: -kv[1]):
            click.echo(f"    {v:6.3f} pages an event  {t}")
        for t, v in o["rows added"].items():
            click.echo(f"    {v:+6.3f} rows an event  {t}")


if __name__ == "__main__":
    main()
