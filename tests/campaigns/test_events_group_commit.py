"""Group commit (``campaigns.service.batching.GroupCommit``) and the events path through it: items
arriving while a flush runs share the next flush, each caller gets its own result (or its own error)
after the flush that carried its item; through the service, concurrent single events with repeated
ids are applied once each, on both engines, and the bulk path's membership loop catches up."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from campaigns.config import loads
from campaigns.core.events import OrderEvent
from campaigns.errors import InvalidInput
from campaigns.service.audience import Audience
from campaigns.service.batching import GroupCommit
from campaigns.store import open_store

T0 = 1_760_000_000.0
PHONES = [f"+3361000{i:04d}" for i in range(40)]


def test_items_queued_during_a_flush_share_the_next_one() -> None:
    flushed: list[list[int]] = []
    gate = None

    async def flush(items: list[int]) -> list[int | BaseException]:
        flushed.append(items)
        if len(flushed) == 1:
            await gate.wait()  # the first flush is "in its transaction" until released
        return [ValueError(f"bad {i}") if i == 7 else i * 10 for i in items]

    async def main() -> None:
        nonlocal gate
        gate = anyio.Event()
        group: GroupCommit[int, int] = GroupCommit(flush, max_items=100)
        results: dict[int, object] = {}

        async def call(i: int) -> None:
            try:
                results[i] = await group.submit(i)
            except ValueError as exc:
                results[i] = str(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0)
            await anyio.wait_all_tasks_blocked()
            for i in range(1, 10):
                tg.start_soon(call, i)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert flushed == [[0], list(range(1, 10))]  # one flush for the nine that waited
        assert results == {i: ("bad 7" if i == 7 else i * 10) for i in range(10)}
        assert (group.flushes, group.items) == (2, 10)

    anyio.run(main)


def test_a_flush_that_fails_fails_its_callers_only() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("storage down")
        return items

    async def main() -> None:
        group: GroupCommit[int, int] = GroupCommit(flush)
        with pytest.raises(RuntimeError):
            await group.submit(1)
        assert await group.submit(2) == 2  # the next flush is not affected

    anyio.run(main)


@pytest.fixture
def audience(store_url: str) -> Iterator[Audience]:
    settings = loads('[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "K"\n')
    assert settings is not None
    a = Audience(open_store(store_url), settings, lambda: T0)
    yield a
    a.store.close()


def order(eid: str, k: int) -> OrderEvent:
    return OrderEvent(id=eid, at=T0 - 1000 + k, order_id=f"o{eid}", phone=PHONES[k % len(PHONES)], total=1000,
                      currency="EUR", payment_status="paid")  # fmt: skip


def test_concurrent_single_events_are_applied_once_each(audience: Audience) -> None:
    """200 concurrent senders, every id sent twice and one bad number: each id applied exactly once,
    the other copy a duplicate, the bad event alone refused, the aggregates those of 100 orders."""

    async def main() -> None:
        seg = await audience.put_segment("acme", "buyers", {"field": "orders_count", "op": "gte", "value": 1})
        outcomes: dict[str, list[str]] = {}
        errors: list[str] = []

        async def send(eid: str, k: int) -> None:
            e = order(eid, k)
            try:
                outcomes.setdefault(eid, []).append((await audience.post_event("acme", e)).outcome)
            except InvalidInput as exc:
                errors.append(f"{eid}:{exc.field}")

        async with anyio.create_task_group() as tg:
            for k in range(100):
                tg.start_soon(send, f"e{k}", k)
                tg.start_soon(send, f"e{k}", k)
            bad = OrderEvent(id="bad", at=T0, order_id="ob", phone="+3361", total=1, currency="EUR", payment_status="paid")
            tg.start_soon(lambda: send_bad(bad, errors))
        assert all(sorted(v) == ["applied", "duplicate"] for v in outcomes.values()) and len(outcomes) == 100
        assert errors == ["bad:phone"]
        group = audience._groups["acme"]
        assert group.flushes < group.items  # they were grouped
        total = 0
        for phone in PHONES:
            sub = audience.store.subscriber_by_phone("acme", phone)
            assert sub is not None
            total += audience.store.stats("acme", sub.id).orders_count
        assert total == 100
        assert len(audience.store.members("acme", seg.id, after=0, limit=1000)) == len(PHONES)  # live, at once

    async def send_bad(e: OrderEvent, errors: list[str]) -> None:
        try:
            await audience.post_event("acme", e)
        except InvalidInput as exc:
            errors.append(f"{e.id}:{exc.field}")

    anyio.run(main)


def test_bulk_membership_follows_from_the_loop(audience: Audience) -> None:
    """With the membership loop running (as ``serve`` runs it), bulk ingest answers at commit and the
    loop brings every touched subscriber's membership up to date."""
    import msgspec

    async def main() -> None:
        seg = await audience.put_segment("acme", "big", {"field": "total_spent", "op": "gte", "value": 3000})
        lags: list[float] = []
        audience.on_membership = lags.extend
        async with anyio.create_task_group() as tg:
            await tg.start(audience.run_membership)
            body = b"\n".join(msgspec.json.encode(order(f"b{k}", k)) for k in range(120))
            results = await audience.ingest_ndjson("acme", body)
            assert [r.outcome for r in results] == ["applied"] * 120
            with anyio.fail_after(30):
                await audience.wait_membership()
            assert len(audience.store.members("acme", seg.id, after=0, limit=1000)) == len(PHONES)  # 3 orders each
            assert len(lags) == len(PHONES)
            new = OrderEvent(id="s1", at=T0, order_id="s1", phone="+33610009999", total=5000, currency="EUR",
                             payment_status="paid")  # fmt: skip
            assert (await audience.post_event("acme", new)).outcome == "applied"  # answered at commit
            with anyio.fail_after(30):
                await audience.wait_membership()
            tg.cancel_scope.cancel()
        assert len(audience.store.members("acme", seg.id, after=0, limit=1000)) == len(PHONES) + 1

    anyio.run(main)


def test_membership_passes_overlapping_the_ingest_end_where_python_does(audience: Audience) -> None:
    """Bodies keep committing while the loop's passes run (a pass reads a snapshot, then writes what it
    read: on SQLite the reads are on a connection of their own, off the write lock). Once the loop has
    caught up, every segment holds exactly whom ``evaluate`` finds over each subscriber's ``view``, and
    a timed segment has a timer for everyone time alone will move: a pass that wrote from a snapshot
    older than a subscriber's last commit would leave that subscriber wrong."""
    import random

    import msgspec

    from campaigns.core.events import ActivityEvent
    from campaigns.core.segments import evaluate, next_change, parse_segment

    trees = {"big": {"field": "total_spent", "op": "gte", "value": 5000},
             "often": {"field": "orders_count", "op": "gte", "value": 3},
             "clicked": {"event": "activity", "kind": "clicked", "within_days": 30},
             "spent_90": {"event": "order", "within_days": 90, "measure": "sum", "op": "gt", "value": 4000}}  # fmt: skip
    r = random.Random(7)
    lines = [msgspec.json.encode(OrderEvent(id=f"p{k}", at=T0 - r.random() * 120 * 86400, order_id=f"po{k}",
                                            phone=PHONES[r.randrange(len(PHONES))], total=r.randint(100, 3000),
                                            currency="EUR", payment_status=r.choice(["paid", "paid", "refunded"])))
             if k % 4 else msgspec.json.encode(ActivityEvent(id=f"p{k}", at=T0 - r.random() * 60 * 86400,
                                                               phone=PHONES[r.randrange(len(PHONES))], kind="clicked"))
             for k in range(200)]  # fmt: skip
    audience.batch_size = 25

    async def main() -> dict[str, int]:
        ids = {name: (await audience.put_segment("acme", name, tree)).id for name, tree in trees.items()}
        async with anyio.create_task_group() as tg:
            await tg.start(audience.run_membership)
            for i in range(0, len(lines), 50):
                await audience.ingest_ndjson("acme", b"\n".join(lines[i:i + 50]))
            with anyio.fail_after(60):
                await audience.wait_membership()
            tg.cancel_scope.cancel()
        return ids

    ids = anyio.run(main)
    store = audience.store
    for name, tree in trees.items():
        seg = parse_segment(tree)
        members = set(store.members("acme", ids[name], after=0, limit=10_000))
        for phone in PHONES:
            sub = store.subscriber_by_phone("acme", phone)
            assert sub is not None
            view = store.view("acme", sub.id)
            assert view is not None
            assert (sub.id in members) == evaluate(seg, view, T0), (name, phone)
    timers = {(seg, sid) for _, seg, sid in store.due_timers(T0 + 10**9, limit=10_000)}
    for name in ("clicked", "spent_90"):
        seg = parse_segment(trees[name])
        for phone in PHONES:
            sub = store.subscriber_by_phone("acme", phone)
            view = store.view("acme", sub.id)  # type: ignore[union-attr]
            if next_change(seg, view, T0) is not None:  # type: ignore[arg-type]
                assert (ids[name], sub.id) in timers, (name, phone)  # type: ignore[union-attr]
