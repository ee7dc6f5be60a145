"""Where a batch of order events goes on SQLite: statements, rows, and this process's CPU.

``python -m bench.sqlite_events_profile --subscribers 20000 --orders 200000 --batches 20`` loads the
audience bench's data into a throwaway SQLite file, then sends ``--batches`` NDJSON bodies of
``--batch`` order lines (the audience bench's ``_order_line``) through the steps of
``POST /v1/events/bulk`` one after another: the parse (``decode_event``), the numbers' check
(``Audience.check_events``) and the store's batch transaction (``store.apply_events``; no
membership). It prints the CPU an event of each step (``time.thread_time``: the SQLite engine's work
is on this thread) and, inside the transaction, each statement's CPU, calls and rows (a timing
cursor), the rest being the Python around them.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import tempfile
import time
from typing import Any

import click

from bench.audience import NOW, TENANT, Audience, _load_sqlite, _order_line
from campaigns.config import loads
from campaigns.core.events import decode_event
from campaigns.service.audience import Audience as AudienceService
from campaigns.store import open_store


def _head(sql: str) -> str:
    return " ".join(sql.split())[:110]


def _timed_cursor(spent: dict[str, list[float]]) -> type:
    """A cursor class that adds each statement's thread CPU, calls and rows to ``spent[head]``; the
    fetches that step a statement count to it."""

    class Timed(sqlite3.Cursor):
        last = ""

        def _note(self, c0: float, calls: int, rows: int) -> None:
            s = spent.setdefault(self.last, [0, 0.0, 0])
            s[0] += calls
            s[1] += time.thread_time() - c0
            s[2] += max(rows, 0)

        def execute(self, sql: str, params: Any = ()) -> Any:  # type: ignore[override]
            c0, self.last = time.thread_time(), _head(sql)
            out = super().execute(sql, params)
            self._note(c0, 1, 0 if self.description else self.rowcount)
            return out

        def executemany(self, sql: str, seq: Any) -> Any:  # type: ignore[override]
            c0, self.last = time.thread_time(), _head(sql)
            out = super().executemany(sql, seq)
            self._note(c0, 1, self.rowcount)
            return out

        def fetchall(self) -> list[Any]:  # type: ignore[override]
            c0 = time.thread_time()
            rows = super().fetchall()
            self._note(c0, 0, len(rows))
            return rows

        def fetchone(self) -> Any:
            c0 = time.thread_time()
            row = super().fetchone()
            self._note(c0, 0, row is not None)
            return row

    return Timed


class _Conn:
    """The store's connection with every cursor a timing one."""

    def __init__(self, conn: sqlite3.Connection, factory: type) -> None:
        self._c, self._f = conn, factory

    def cursor(self) -> Any:
        return self._c.cursor(self._f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def profile(n: int, m: int, batches: int, batch: int, seed: int, workdir: str | None,
            checkpoint_apart: bool = False, checkpoint_every: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = os.path.join(d, "events.db")
        open_store(f"sqlite:///{path}").close()  # the schema
        _load_sqlite(path, Audience(n, m, seed))
        store = open_store(f"sqlite:///{path}")
        store.analyze()  # as the audience bench does after its load
        settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "{TENANT}"\nkey_env = "BENCH_KEY"\n')
        audience = AudienceService(store, settings, lambda: NOW)
        r = random.Random(seed + 1)
        bodies = [b"\n".join(_order_line(k, r, n) for k in range(i * batch, (i + 1) * batch)) for i in range(batches)]
        step = {"parse": 0.0, "check": 0.0, "store": 0.0, "checkpoint": 0.0}
        frames, done = [0], [0]
        if checkpoint_apart:  # the WAL's pages copied back by a separate call, timed apart from the commit
            store._conn.execute("PRAGMA wal_autocheckpoint=0")
        spent: dict[str, list[float]] = {}

        def one(body: bytes) -> None:
            c = time.thread_time()
            events = [decode_event(x) for x in body.splitlines()]
            c1 = time.thread_time()
            phones = audience.check_events(TENANT, events, [""] * len(events))
            c2 = time.thread_time()
            store.apply_events(TENANT, list(zip(events, phones, strict=True)), now=NOW)
            c3 = time.thread_time()
            step["parse"] += c1 - c
            step["check"] += c2 - c1
            step["store"] += c3 - c2
            done[0] += 1
            if checkpoint_apart and done[0] % checkpoint_every == 0:
                _, log, _ = store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                step["checkpoint"] += time.thread_time() - c3
                frames[0] += log

        one(bodies[0])  # warm: statements prepared, pages cached
        step, frames[0] = dict.fromkeys(step, 0.0), 0
        store._conn = _Conn(store._conn, _timed_cursor(spent))  # type: ignore[assignment]
        t0 = time.perf_counter()
        for body in bodies[1:]:
            one(body)
        wall = time.perf_counter() - t0
        store._conn = store._conn._c  # type: ignore[attr-defined]
        store.close()
    done = (batches - 1) * batch
    in_statements = sum(s[1] for s in spent.values())
    return {"events": done, "wall_events_per_s": done / wall,
            **{f"{k}_cpu_us_per_event": v / done * 1e6 for k, v in step.items()},
            "store_statements_cpu_us_per_event": in_statements / done * 1e6,
            "wal_frames_per_batch": frames[0] / (batches - 1),
            "statements_per_batch": sum(s[0] for s in spent.values()) / (batches - 1),
            "by_statement": [{"calls_per_batch": c / (batches - 1), "cpu_us_per_event": cpu / done * 1e6,
                              "rows_per_batch": rows / (batches - 1), "statement": h}
                             for h, (c, cpu, rows) in sorted(spent.items(), key=lambda kv: -kv[1][1])]}  # fmt: skip


@click.command()
@click.option("--subscribers", "n", default=20_000, show_default=True)
@click.option("--orders", "m", default=200_000, show_default=True)
@click.option("--batches", default=20, show_default=True)
@click.option("--batch", default=1000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--workdir", default=None, help="Where the throwaway database goes (default: the system's temp dir).")
@click.option("--checkpoint-apart", is_flag=True,
              help="No automatic checkpoint: the WAL copied back after each batch by a call timed apart.")
@click.option("--checkpoint-every", default=1, show_default=True, help="With --checkpoint-apart: every N batches.")
@click.option("--json", "json_path", default=None)
def main(n: int, m: int, batches: int, batch: int, seed: int, workdir: str | None, checkpoint_apart: bool,
         checkpoint_every: int, json_path: str | None) -> None:  # fmt: skip
    out = profile(n, m, batches, batch, seed, workdir, checkpoint_apart, checkpoint_every)
    for k, v in out.items():
        if k != "by_statement":
            click.echo(f"  {k:<36} {v:>12,.1f}")
    click.echo("  CPU an event, by statement (calls and rows a batch):")
    for s in out["by_statement"]:
        click.echo(f"  {s['calls_per_batch']:5.1f} x {s['rows_per_batch']:8.0f} rows {s['cpu_us_per_event']:7.2f} us  {s['statement']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
