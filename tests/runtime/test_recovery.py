"""``Gateway.recover``: what a restart does with each unfinished message it finds in the store."""

from __future__ import annotations

import msgspec
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


NOON = 1_780_000_000.0 - 1_780_000_000.0 % 86400 + 12 * 3600  # 12:00 UTC: a UK number's window is open


def _marketing_store(sent_at: list[float], queued: int, *, carrier: str = "beta") -> MemoryStore:
    """One marketing job to one UK number: ``sent_at`` taken by ``carrier`` then delivered,
    ``queued`` more not sent yet."""
    store = MemoryStore()
    job = Job(id="job_m", tenant="acme", sender="Shop", template="Sale", category="marketing")
    store.add_job(job, 1000, [(i, Recipient(to="+447911100000")) for i in range(len(sent_at) + queued)], sent_at[0] - 60)
    for i, at in enumerate(sent_at):
        store.record([Change(message_id=1000 + i, state="submitted", at=at, carrier=carrier, carrier_ids=(f"c{i}",))])
        store.record([Change(message_id=1000 + i, state="delivered", at=at + 1, carrier=carrier)])
    return store


@pytest.mark.parametrize("policy", ["drop", "wait"])
async def test_weekly_caps_are_rebuilt_from_the_store(policy) -> None:
    """3 delivered marketing messages this week, then a restart: the 4th and 5th do not go."""
    store = _marketing_store([NOON - 3 * 86400, NOON - 86400, NOON - 60], queued=2)
    core = loads(default_text()).core
    gw = Gateway(Scheduler(msgspec.structs.replace(core, weekly_cap=msgspec.structs.replace(
        core.weekly_cap, policy=policy)), NOON), store)  # fmt: skip
    recovery = await gw.recover(NOON, carriers={"alpha", "beta"})
    assert recovery.queued == 2 and recovery.capped_sends == 3
    batch = gw.core.take("beta", 100, NOON)
    assert batch.dispatches == []
    if policy == "drop":
        assert sorted((o.message_id, str(o.state)) for o in batch.outcomes) == [(1003, "capped"), (1004, "capped")]
    else:  # held until the oldest of the three leaves the window
        assert {o.until for o in batch.outcomes} == {NOON - 3 * 86400 + 7 * 86400}
    # The week after the oldest send, one slot is free again: exactly one goes.
    later = NOON + 4 * 86400 + 1
    if policy == "wait":
        assert len(gw.core.take("beta", 100, later).dispatches) == 1


async def test_sends_older_than_the_window_do_not_count_after_a_restart() -> None:
    store = _marketing_store([NOON - 9 * 86400, NOON - 8 * 86400, NOON - 60], queued=2)
    gw = Gateway(Scheduler(loads(default_text()).core, NOON), store)
    recovery = await gw.recover(NOON, carriers={"alpha", "beta"})
    assert recovery.capped_sends == 1
    assert len(gw.core.take("beta", 100, NOON).dispatches) == 2  # 1 + 2 = the cap of 3


async def test_a_message_sent_again_at_recovery_counts_once() -> None:
    """Taken by a carrier that is gone: it is queued again and counts when it is sent, not twice."""
    store = _marketing_store([NOON - 120], queued=2)  # 1000 delivered; 1001, 1002 queued
    store.record([Change(message_id=1001, state="submitted", at=NOON - 40, carrier="gone", carrier_ids=("g",))])
    gw = Gateway(Scheduler(loads(default_text()).core, NOON), store)
    recovery = await gw.recover(NOON, carriers={"alpha", "beta"})
    assert recovery.queued == 2 and recovery.capped_sends == 1
    assert len(gw.core.take("beta", 100, NOON).dispatches) == 2  # 1 counted + these 2 = 3


async def test_a_scheduled_job_recovered_paused_keeps_its_send_at_and_validity() -> None:
    store = MemoryStore()
    job = Job(id="job_s", tenant="acme", sender="Shop", template="hi", category="transactional",
              not_before=NOON + 3600, expires_at=NOON + 3600 + 600)  # fmt: skip
    store.add_job(job, 1000, [(0, Recipient(to="+447911100000")), (1, Recipient(to="+447911100001"))], NOON - 10)
    store.set_job_status("acme", "job_s", "paused")
    gw = Gateway(Scheduler(loads(default_text()).core, NOON), store)
    assert (await gw.recover(NOON)).queued == 2
    gw.core.resume_job("job_s")
    assert gw.core.take("beta", 100, NOON + 3599).dispatches == []  # not before send_at
    assert len(gw.core.take("beta", 100, NOON + 3600).dispatches) == 2
    # Paused again across its validity: they end expired at the end of it, not at the resume.
    store.add_job(msgspec.structs.replace(job, id="job_t"), 2000, [(0, Recipient(to="+447911100002"))], NOON)
    store.set_job_status("acme", "job_t", "paused")
    gw = Gateway(Scheduler(loads(default_text()).core, NOON), store)
    await gw.recover(NOON)
    assert gw.core.take("beta", 100, NOON + 4199).outcomes == []  # still paused, still valid
    ended = gw.core.take("beta", 100, NOON + 4200).outcomes  # both jobs (their store rows are open)
    assert sorted((o.message_id, str(o.state)) for o in ended) == [(1000, "expired"), (1001, "expired"),
                                                                   (2000, "expired")]


async def test_messages_whose_validity_ended_while_down_end_expired_in_the_store() -> None:
    """Recovery admits them expired: the store must hear it, or they stay queued for ever."""
    store = MemoryStore()
    job = Job(id="job_x", tenant="acme", sender="Shop", template="hi", category="transactional",
              expires_at=NOON - 5)  # fmt: skip
    store.add_job(job, 1000, [(0, Recipient(to="+447911100000"))], NOON - 60)
    gw = Gateway(Scheduler(loads(default_text()).core, NOON), store)
    await gw.recover(NOON)
    got = store.message("acme", 1000)
    assert got.state == "expired" and got.history[-1].at == NOON
    assert store.job("acme", "job_x").counts == {"expired": 1}
