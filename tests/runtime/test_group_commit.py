"""Concurrent single-message POSTs share a transaction (``Gateway``'s group commit): every one is
stored and answered, a write takes what queued during the last one, and one item's conflict
fails that item alone. On both anyio backends."""

from __future__ import annotations

import threading
import time

import anyio
import msgspec
import pytest

from gateway.api import schemas
from gateway.config import default_text, loads
from gateway.core.ids import parse_id
from gateway.core.scheduler import Scheduler
from gateway.errors import Conflict
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore


class SlowStore(MemoryStore):
    """Each write blocks until the test lets it go, so requests pile up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.gate = threading.Event()

    def add_jobs(self, items):
        self.gate.wait(10)
        self.batches.append(len(items))
        return super().add_jobs(items)


def gateway(store) -> Gateway:
    return Gateway(Scheduler(loads(default_text()).core, time.time()), store)


def message(i: int) -> schemas.MessageIn:
    return schemas.MessageIn(to="+4479111%05d" % i, body=f"Code {i}", sender="Shop", category="otp")


@pytest.mark.anyio
async def test_concurrent_posts_share_writes_and_all_are_stored() -> None:
    store = SlowStore()
    gw = gateway(store)
    answers: dict[int, str] = {}

    async def post(i: int) -> None:
        raw, _ = await gw.submit_message("acme", message(i), time.time())
        answers[i] = msgspec.json.decode(raw)["id"]

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(post, i)
        await anyio.wait_all_tasks_blocked()  # the first write holds; the other 49 queued behind it
        store.gate.set()
    assert len(answers) == 50
    assert sum(store.batches) == 50 and len(store.batches) < 50, store.batches
    for i, mid in answers.items():
        m = store.message("acme", parse_id(mid))
        assert m is not None and m.recipient.to == "+4479111%05d" % i


@pytest.mark.anyio
async def test_a_conflict_in_a_shared_write_fails_only_its_request() -> None:
    store = MemoryStore()
    gw = gateway(store)
    results: dict[int, object] = {}

    async def post(i: int, key: str | None) -> None:
        body = message(i)
        try:
            raw, _ = await gw.submit_message("acme", body, time.time(), raw=msgspec.json.encode(body),
                                             idempotency_key=key)  # fmt: skip
            results[i] = msgspec.json.decode(raw)["id"]
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(post, i, "same-key" if i in (3, 4) else None)
    failed = [r for r in results.values() if isinstance(r, Exception)]
    assert len(results) == 10 and len(failed) == 1, results  # two bodies under one key: one wins
    assert isinstance(failed[0], Conflict)
    assert all(store.message("acme", parse_id(r)) is not None for r in results.values() if isinstance(r, str))
