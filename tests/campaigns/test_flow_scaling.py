"""The flow runtime's work per batch does not grow with the shop (SQLite, through the store seam).

What is counted is SQLite's own work: virtual machine instructions (``set_progress_handler``), on
the store's connection and on the planned batches' snapshot connection. They are proportional to
the rows and index entries a statement visits, and do not depend on the machine's load, so a
statement that reads the whole queue, the whole runs table or the whole due-time index for one
batch shows as a count that grows with the shop. The bug this guards against: the oldest inputs
were taken through the per-subscriber index and sorted, reading every queued input of the tenant
for every batch (O(queue) a batch; 9 % of a drain's samples at 100,000 queued inputs)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest

from bench.flows import EVENTS_FLOW, TENANT, TIMER_FLOW, bulk_subscribers, install
from campaigns.core import flows as F
from campaigns.service.flow_runtime import FlowWorker, TenantFlows
from campaigns.store import open_store

T0 = 1_767_000_000.0
_enc = msgspec.json.Encoder()
BATCH = 100


@contextmanager
def _store(path: Any, subscribers: int) -> Iterator[Any]:
    store = open_store(f"sqlite:///{path}")
    try:
        bulk_subscribers(store, subscribers, T0 - 100)
        install(store, EVENTS_FLOW, {"one": "Your cart: {checkout_url|our shop}", "two": "Last call"}, T0)
        install(store, TIMER_FLOW, {}, T0)
        yield store
    finally:
        store.close()


def _queue(store: Any, events: list[tuple[int, F.Event]]) -> None:
    with store._tx() as tx:
        tx._cur.executemany(tx._sql("INSERT INTO flow_inputs (tenant, subscriber_id, event) VALUES (?, ?, ?)"),
                            [(TENANT, sid, _enc.encode(e).decode()) for sid, e in events])  # fmt: skip


def _abandoned(i: int) -> F.Event:
    return F.ShopEvent(id=f"checkout_abandoned:c{i}", kind="checkout_abandoned", object_id=f"c{i}",
                       payload={"value": 1000 + i % 20_000, "checkout_url": f"https://shop.example/c/{i}"})  # fmt: skip


def _vm_steps(store: Any, work: Callable[[], object]) -> int:
    """SQLite VM instructions (in hundreds) that ``work`` costs on the store's connections."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    if store._flow_reader is None:
        store._flow_reader = store._read_only_connection()
    conns: list[sqlite3.Connection] = [store._conn, store._flow_reader]
    for c in conns:
        c.set_progress_handler(tick, 100)
    try:
        work()
    finally:
        for c in conns:
            c.set_progress_handler(None, 100)
    return count[0]


def _first_batch_steps(tmp_path: Any, subscribers: int, parts: int) -> int:
    """Every subscriber has a checkout queued and an earlier run waiting (the shop's runs table and
    queue both of its size); the cost of the first batch of ``BATCH`` inputs of worker 0."""
    with _store(tmp_path / f"s{subscribers}-{parts}.db", subscribers) as store:
        _queue(store, [(i, F.ShopEvent(id=f"go:{i}", kind="custom", name="t")) for i in range(1, subscribers + 1)])
        warm = FlowWorker(store, {TENANT: TenantFlows(sender="S")})
        while warm.drain(TENANT, T0, 2000):
            pass
        _queue(store, [(i, _abandoned(i)) for i in range(1, subscribers + 1)])
        worker = FlowWorker(store, {TENANT: TenantFlows(sender="S")}, part=0, parts=parts)
        steps = _vm_steps(store, lambda: worker.drain(TENANT, T0 + 10, BATCH))
        assert worker.stats.inputs == BATCH and worker.stats.started == BATCH
        return steps


@pytest.mark.parametrize("parts", [1, 2])
def test_a_batch_of_inputs_costs_the_same_whatever_the_queue_and_the_runs(tmp_path: Any, parts: int) -> None:
    small = _first_batch_steps(tmp_path, 4 * BATCH, parts)
    large = _first_batch_steps(tmp_path, 40 * BATCH, parts)
    # B-trees one level deeper are not VM instructions; anything O(queue) or O(runs) is 10x here.
    assert large < small * 1.3, (small, large)


def test_firing_due_timers_costs_the_same_whatever_is_pending(tmp_path: Any) -> None:
    def steps(pending: int) -> int:
        with _store(tmp_path / f"t{pending}.db", pending) as store:
            _queue(store, [(i, F.ShopEvent(id=f"t:{i}", kind="custom", name="t")) for i in range(1, pending + 1)])
            worker = FlowWorker(store, {TENANT: TenantFlows(sender="S")})
            while worker.drain(TENANT, T0, 2000):  # every subscriber waits a second (TIMER_FLOW)
                pass
            # BATCH of them fall due; the rest stay pending, a day later
            with store._tx() as tx:
                tx.run("UPDATE flow_runs SET due = due + 86400 WHERE flow_id = 'timer' AND subscriber_id > ?", (BATCH,))
            got = _vm_steps(store, lambda: worker.fire(TENANT, T0 + 2, 1000))
            assert worker.stats.timers == BATCH
            return got

    small, large = steps(4 * BATCH), steps(40 * BATCH)
    assert large < small * 1.3, (small, large)
