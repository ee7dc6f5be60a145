"""`sluice bench audience` on a tiny audience: it runs and writes the figures the issue names, and on
its generated data (both engines) every tree of its mix counts in SQL what ``evaluate`` finds in
Python over the store's own ``view`` of each subscriber."""

from __future__ import annotations

import json
import random

import anyio
import pytest
from click.testing import CliRunner

from bench.audience import MIX, NOW, TENANT, Audience, _load_postgres, _load_sqlite, _phone, windowed
from campaigns.config import loads
from campaigns.core.events import ActivityEvent, Item, OrderEvent
from campaigns.core.segments import affected_by, dependencies, evaluate, next_change, parse_segment
from campaigns.service.audience import Audience as Service
from campaigns.store import open_store
from campaigns.store.segment_sql import compile_segment
from gateway.cli import main


def test_bench_audience_writes_its_figures(tmp_path):
    out = tmp_path / "aud.json"
    args = ["bench", "audience", "--subscribers", "300", "--orders", "3000", "--events", "20", "--runs", "1",
            "--workdir", str(tmp_path), "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    for key in ("engine", "import_s", "events_per_s", "count_p50_s", "count_p95_s", "count_windowed_p50_s",
                "membership_update_p99_s"):  # fmt: skip
        assert key in r
    assert r["engine"] == "sqlite" and r["trees"] >= 20
    assert {t["windowed"] for t in r["per_tree"]} == {True, False}
    assert sum(1 for t in r["per_tree"] if 0 < t["count"] < 300) >= 15  # the data hits the trees


def _load(store, store_url: str, gen: Audience) -> None:
    if store.engine == "sqlite":
        _load_sqlite(store_url.removeprefix("sqlite:///"), gen)
    else:
        _load_postgres(store_url, gen)


def _service(store) -> Service:
    settings = loads(f'[campaigns]\n[[campaigns.tenants]]\nname = "{TENANT}"\nkey_env = "K"\n')
    return Service(store, settings, lambda: NOW)


def test_the_mix_counts_what_python_finds(store_url):
    store = open_store(store_url)
    try:
        gen = Audience(150, 1500, seed=3)
        _load(store, store_url, gen)
        views = [store.view(TENANT, sid) for sid in range(1, 151)]
        assert sum(len(v.orders) for v in views) == 1500
        for name, tree in MIX:
            seg = parse_segment(tree)
            where, params = compile_segment(seg, store.engine, TENANT, NOW)
            want = sum(evaluate(seg, v, NOW) for v in views)
            assert store.count_where(TENANT, where, params) == want, (name, windowed(seg))
    finally:
        store.close()


def test_live_membership_after_batches_is_what_python_finds(store_url):
    """The set-based membership refresh after a batch (``Audience.refresh_batch``: each segment's SQL
    restricted to the subscribers the batch touched, timers at the next window edge) gives, for every
    tree of the mix, the members ``evaluate`` finds; and no timer is later than ``next_change``."""
    store = open_store(store_url)
    try:
        gen = Audience(150, 1500, seed=4)
        _load(store, store_url, gen)
        audience = _service(store)
        audience.batch_size = 40
        segs = [(anyio.run(audience.put_segment, TENANT, name, tree).id, parse_segment(tree)) for name, tree in MIX]
        r = random.Random(5)
        events = [OrderEvent(id=f"x{k}", at=NOW - r.random() * 400 * 86400, order_id=f"x{k}", phone=_phone(r.randint(1, 160)),
                             total=r.randint(100, 30000), currency="USD", payment_status=r.choice(["paid", "pending", "refunded"]),
                             items=(Item(product="p", category=r.choice(["shoes", "bags", "hats"]), price=r.randint(100, 9000)),))
                  if k % 3 else ActivityEvent(id=f"x{k}", at=NOW - r.random() * 40 * 86400, phone=_phone(r.randint(1, 160)),
                                              kind=r.choice(["clicked", "replied"]))
                  for k in range(200)]  # fmt: skip
        applied = anyio.run(audience.apply_many, TENANT, [(e, e.phone) for e in events])
        touched = sorted({a.subscriber_id for a in applied})
        assert len(touched) > 100
        views = {sid: store.view(TENANT, sid) for sid in touched}
        for seg_id, seg in segs:
            members = set(store.members(TENANT, seg_id, after=0, limit=10_000))
            for sid in touched:
                assert (sid in members) == evaluate(seg, views[sid], NOW), (seg_id, sid)
        timers = {(seg, sub): None for _, seg, sub in store.due_timers(NOW + 10**9, limit=10**6)}
        changed: dict[int, frozenset[str]] = {}
        for a in applied:
            changed[a.subscriber_id] = changed.get(a.subscriber_id, frozenset()) | a.changed
        for seg_id, seg in segs:
            if not windowed(seg):
                continue
            for sid in [t for t in touched if affected_by(dependencies(seg), changed[t])]:
                change = next_change(seg, views[sid], NOW)
                if change is not None:
                    assert (seg_id, sid) in timers, (seg_id, sid)
    finally:
        store.close()


def test_the_membership_loop_in_a_process_of_its_own_keeps_what_python_finds(sqlite_url):
    """``serve``'s membership loop with its passes in a child process (service/member_process.py): bulk
    bodies ingested while it runs leave, once it caught up, for every tree of the mix and every
    subscriber the bodies touched, the members ``evaluate`` finds; the child did the passes and is
    gone once the loop ends."""
    _loop_in_a_process(sqlite_url)


@pytest.mark.slow
def test_on_postgresql_the_membership_loop_keeps_its_passes_in_process(pg_url):
    """PostgreSQL's passes are the server's work: no child (measured: it only added a round trip)."""
    store = open_store(pg_url)
    try:
        audience = _service(store)
        audience.membership_process = True
        seen: dict[str, object] = {}

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(audience.run_membership)
                seen["proc"] = audience.member_process
                tg.cancel_scope.cancel()

        anyio.run(main)
        assert seen["proc"] is None
    finally:
        store.close()


def _loop_in_a_process(store_url: str) -> None:
    from bench.audience import _order_line

    store = open_store(store_url)
    try:
        gen = Audience(150, 1500, seed=6)
        _load(store, store_url, gen)
        audience = _service(store)
        audience.batch_size = 50
        audience.membership_process = True
        segs = [(anyio.run(audience.put_segment, TENANT, name, tree).id, parse_segment(tree)) for name, tree in MIX]
        r = random.Random(7)
        lines = [_order_line(k, r, 150) for k in range(300)]
        seen: dict[str, object] = {}

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(audience.run_membership)
                seen["proc"] = audience.member_process
                for i in range(0, len(lines), 50):
                    await audience.ingest_ndjson(TENANT, b"\n".join(lines[i : i + 50]))
                await audience.wait_membership()
                tg.cancel_scope.cancel()

        anyio.run(main)
        proc = seen["proc"]
        assert proc is not None and proc.cpu_s > 0  # the passes ran in the child
        assert not proc._proc.is_alive()  # and it was stopped with the loop
        touched = sorted({s.id for s in (store.subscriber_by_phone(TENANT, json.loads(x)["phone"]) for x in lines) if s})
        assert len(touched) > 100
        views = {sid: store.view(TENANT, sid) for sid in touched}
        for seg_id, seg in segs:
            members = set(store.members(TENANT, seg_id, after=0, limit=10_000))
            for sid in touched:
                assert (sid in members) == evaluate(seg, views[sid], NOW), (seg_id, sid)
    finally:
        store.close()
