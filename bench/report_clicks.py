"""The campaign report before and after live clicks (issue 18): does it slow down because of them?

``python -m bench.report_clicks --recipients 200000 --clicks 40000 [--engine postgres]``: the
campaign and outcomes of `sluice bench campaign` written into a fresh store (``seed_frozen``,
``seed_outcomes``: N deliveries, N/10 clicks, N/50 orders, then ANALYZE), then ``report_facts`` (the
report's reads, in this process: its CPU is this process's, plus the server's on PostgreSQL) timed
three ways, each the median of three: on the seeded outcomes; after ``--clicks`` more unique human
clicks stored through the redirect's real flush (``record_link_hits``, 200 hits a flush); after the
store's ``analyze`` (SQLite) or ``ANALYZE`` (PostgreSQL). With each, the plan of every statement the
report runs (``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN`` without costs on PostgreSQL), so a plan
changed by stale statistics shows as ``plans changed``; and the live clicks' flush, its wall time and
CPU a click (this process's, and the server backend's on PostgreSQL: the write's side of the report's
cost). Bounded: about a minute at 200k on SQLite.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bench.audience import throwaway_postgres
from bench.campaign import TENANT, _campaign_codes, _conn, seed_frozen, seed_outcomes
from campaigns.store import open_store
from campaigns.store import sql as S
from campaigns.store.campaign_rows import HitIn
from campaigns.store.report_sql import Scope


def _server_cpu_s(store: Any) -> float:
    """PostgreSQL: the CPU of the server's backends (the report's statements run there)."""
    if store.engine != "postgres":
        return 0.0
    with store._tx() as tx:
        pid = tx.one("SELECT pg_backend_pid()")[0]
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / 100.0
    except OSError:
        return 0.0


def _measure(store: Any, scope: Scope) -> tuple[float, float, dict[str, list[str]], dict[str, float]]:
    """Median wall and CPU seconds of ``report_facts`` over 3 runs, the plan of each statement, and
    each statement's wall seconds (in a fourth run)."""
    plans: dict[str, list[str]] = {}
    walls_of: dict[str, float] = {}
    orig = S.Tx.rows

    def rows(self: Any, q: str, p: Any = ()) -> list[tuple]:
        key = " ".join(q.split())[:100]
        if key not in plans:
            if self.pg:
                self._cur.execute("EXPLAIN (COSTS OFF) " + self._sql(q), tuple(p))
                plans[key] = [r[0] for r in self._cur.fetchall()]
            else:
                plans[key] = [r[-1] for r in self._cur.execute("EXPLAIN QUERY PLAN " + self._sql(q), tuple(p)).fetchall()]
        t0 = time.perf_counter()
        out = orig(self, q, p)
        walls_of[key] = walls_of.get(key, 0.0) + time.perf_counter() - t0
        return out

    S.Tx.rows = rows  # type: ignore[method-assign]
    try:
        store.report_facts(TENANT, scope)
    finally:
        S.Tx.rows = orig  # type: ignore[method-assign]
    walls, cpus = [], []
    for _ in range(3):
        w0, c0, s0 = time.perf_counter(), time.process_time(), _server_cpu_s(store)
        store.report_facts(TENANT, scope)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0 + _server_cpu_s(store) - s0)
    return statistics.median(walls), statistics.median(cpus), plans, walls_of


@click.command()
@click.option("--recipients", "n", default=200_000, show_default=True)
@click.option("--clicks", "extra", default=40_000, show_default=True, help="Unique clicks stored by the live flush.")
@click.option("--engine", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--seed", default=7, show_default=True)
def main(n: int, extra: int, engine: str, seed: int) -> None:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-report-clicks-")))
        url = stack.enter_context(throwaway_postgres()) if engine == "postgres" else f"sqlite:///{tmp / 'c.db'}"
        now = time.time()
        cid = seed_frozen(url, n, now, seed)
        outcomes = seed_outcomes(url, cid, n, seed)
        store = open_store(url)
        stack.callback(store.close)
        scope = Scope(campaign=cid)
        phases = [("seeded, ANALYZE", _measure(store, scope))]
        with _conn(url) as (conn, ph):
            cur = conn.cursor()
            codes = _campaign_codes(cur, ph, cid)
            cur.execute("SELECT code FROM clicks")
            clicked = {r[0] for r in cur.fetchall()}
        fresh = [(c, s) for c, s in codes if c not in clicked]
        random.Random(seed).shuffle(fresh)
        t0 = now + 3 * 86_400
        hits = [HitIn(code=c, at=t0 + i * 1e-3, user_agent="Mozilla/5.0", verdict="click", tenant=TENANT, campaign_id=cid,
                      subscriber_id=s, phone=f"+1555{s:07d}", target="https://shop.example/sale?c=spring", created_at=now,
                      expires_at=None) for i, (c, s) in enumerate(fresh[:extra])]  # fmt: skip
        w0, c0, s0 = time.perf_counter(), time.process_time(), _server_cpu_s(store)
        for i in range(0, len(hits), 200):
            store.record_link_hits(hits[i:i + 200], now=t0)
        flush = (time.perf_counter() - w0, time.process_time() - c0, _server_cpu_s(store) - s0)
        phases.append((f"+{len(hits):,} live clicks", _measure(store, scope)))
        if store.engine == "postgres":  # (no ``analyze`` there: autovacuum's job, done here at once)
            with _conn(url) as (conn, _ph):
                conn.execute("ANALYZE")
        else:
            store.analyze()
        phases.append(("then analyze()", _measure(store, scope)))
    click.echo(f"report_clicks: {engine}, {n:,} recipients, outcomes {outcomes}")
    per = 1e6 / max(1, extra)
    click.echo(f"  the live clicks' flush: wall {flush[0]:.3f} s, CPU {flush[1] * per:.1f} us a click here + "
               f"{flush[2] * per:.1f} us the server's")
    base_plans = phases[0][1][2]
    for label, (wall, cpu, plans, each) in phases:
        changed = sorted(k for k in plans if plans[k] != base_plans.get(k))
        click.echo(f"  {label:<22} wall {wall:6.3f} s  cpu {cpu:6.3f} s  plans changed: {len(changed)}")
        for k, w in sorted(each.items(), key=lambda kv: -kv[1])[:3]:
            click.echo(f"    {w:6.3f} s  {k[:90]}")
        for k in changed:
            click.echo(f"    {k}\n      before {base_plans.get(k)}\n      now    {plans[k]}")


if __name__ == "__main__":
    main()
