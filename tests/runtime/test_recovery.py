"""``Gateway.recover``: what a restart does with each unfinished message it finds in the store."""

from __future__ import annotations

import pytest

from gateway.config import default_text, loads
from gateway.core.model import Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.runtime.service import Gateway
from gateway.store.base import Change
from gateway.store.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_messages_a_carrier_took_wait_for_receipts_and_are_not_sent_again() -> None:
    store = MemoryStore()
    job = Job(id="job_1", tenant="acme", sender="Shop", template="hi", category="transactional")
    people = [(i, Recipient(to=f"+4479111{i:05d}")) for i in range(4)]
    store.add_job(job, 1000, people, 10.0)
    store.record([
        Change(message_id=1000, state="submitted", at=11.0, carrier="alpha", carrier_ids=("a1",)),
        Change(message_id=1001, state="submitted", at=11.0, carrier="gone", carrier_ids=("g1",)),
        Change(message_id=1003, state="delivered", at=12.0, carrier="alpha"),
    ])  # fmt: skip
    gw = Gateway(Scheduler(loads(default_text()).core, 20.0), store)

    recovery = await gw.recover(20.0, carriers={"alpha", "beta"})

    assert recovery.awaiting == [(1000, "alpha", ("a1",))]  # receipts may still come: not resent
    assert recovery.queued == 2  # 1001 (its carrier is gone) and 1002 (never submitted)
    assert sum(gw.core.statistics(20.0).ready.values()) == 2
    gone = store.message("acme", 1001)
    assert gone.state == "queued" and gone.history[-1].reason == "retried: recovered"
    assert store.message("acme", 1000).state == "submitted"


async def test_without_carriers_everything_unfinished_goes_again() -> None:
    store = MemoryStore()
    job = Job(id="job_1", tenant="acme", sender="Shop", template="hi", category="transactional")
    store.add_job(job, 1000, [(0, Recipient(to="+447911100000"))], 10.0)
    store.record([Change(message_id=1000, state="submitted", at=11.0, carrier="alpha", carrier_ids=("a1",))])
    gw = Gateway(Scheduler(loads(default_text()).core, 20.0), store)
    recovery = await gw.recover(20.0)
    assert recovery.queued == 1 and recovery.awaiting == []


async def test_an_upload_cut_short_by_a_crash_is_dropped_not_sent() -> None:
    store = MemoryStore()
    job = Job(id="job_2", tenant="acme", sender="Shop", template="hi", category="transactional")
    store.add_job(job, 2000, [(0, Recipient(to="+447911100000"))], 10.0, incoming=True)  # no commit_job
    gw = Gateway(Scheduler(loads(default_text()).core, 20.0), store)
    recovery = await gw.recover(20.0)
    assert recovery.queued == 0 and store.job("acme", "job_2") is None and store.message("acme", 2000) is None
