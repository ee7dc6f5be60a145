"""A large paused job resumed in steps (``resume_job(limit=)`` + ``resume_more``): the service
serves other requests between steps; the outcome is the same as one ``resume_job``."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CarrierSettings, CoreSettings, Route

NOW = 1_795_546_800.0


def core() -> Scheduler:
    s = CoreSettings(carriers=[CarrierSettings(name="a", rate=1e6, burst=100_000)], routes=[Route(carriers=["a"])])
    return Scheduler(s, NOW)


def admitted(n: int) -> Scheduler:
    c = core()
    job = Job(id="j", tenant="t", sender="S", template="x", category="transactional")
    c.admit(job, [Recipient(to=f"+1212555{i:04d}") for i in range(n)], NOW, paused=True)
    return c


def sent_ids(c: Scheduler) -> list[int]:
    return sorted(d.message_id for d in c.take("a", 100_000, NOW).dispatches)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), step=st.integers(1, 120))
def test_stepwise_resume_makes_ready_what_one_resume_does(n, step) -> None:
    whole, steps = admitted(n), admitted(n)
    whole.resume_job("j")
    steps.resume_job("j", limit=step)
    rounds = 0
    while (left := steps.resume_more("j", step)) > 0:
        assert left == steps.statistics(NOW).parked
        rounds += 1
    assert rounds <= n // step + 1
    assert steps.statistics(NOW).parked == 0
    assert sent_ids(steps) == sent_ids(whole) and len(sent_ids(admitted(n))) == 0


def test_a_job_paused_again_mid_resume_stays_paused() -> None:
    c = admitted(100)
    c.resume_job("j", limit=30)
    c.pause_job("j")
    assert c.resume_more("j", 30) == 0  # stops: the rest stay parked
    assert c.statistics(NOW).parked == 70
    assert c.take("a", 1000, NOW).dispatches == []  # paused: the 30 made ready are held too
    c.resume_job("j")
    assert len(c.take("a", 1000, NOW).dispatches) == 100


def test_a_scheduled_job_resumed_in_steps_waits_for_its_time() -> None:
    c = core()
    job = Job(id="j", tenant="t", sender="S", template="x", category="transactional", not_before=NOW + 60)
    c.admit(job, [Recipient(to=f"+1212555{i:04d}") for i in range(50)], NOW, paused=True)
    c.resume_job("j", limit=7)
    while c.resume_more("j", 7):
        pass
    assert c.take("a", 1000, NOW).dispatches == []  # not due yet: on the timers, not in a lane
    assert len(c.take("a", 1000, NOW + 61).dispatches) == 50


def _two_carriers() -> Scheduler:
    s = CoreSettings(carriers=[CarrierSettings(name="a", rate=1e6, burst=100_000),
                               CarrierSettings(name="b", rate=1e6, burst=100_000)],
                     routes=[Route(prefix="44", carriers=["b"]), Route(carriers=["a"])], shards=2)  # fmt: skip
    return Scheduler(s, NOW)


def _one_by_one(shard, job_slot: int, jobs) -> None:
    """What ``Shard.unpark`` did before it made rows ready a lane at a time: a call a row."""
    for row in shard.parked.pop(job_slot, ()):
        shard.make_ready(row, jobs)


@settings(max_examples=60, deadline=None)
@given(people=st.lists(st.sampled_from(["+1212555", "+4420794", "+1415555"]).flatmap(
           lambda p: st.integers(0, 9999).map(lambda i: f"{p}{i:04d}")), min_size=1, max_size=120),
       gap=st.integers(0, 40), cancel_first=st.booleans())  # fmt: skip
def test_a_resumed_job_fills_each_lane_as_a_row_at_a_time_would(people, gap, cancel_first) -> None:
    """Lanes, row states and what ``take`` sends are the same as with ``make_ready`` a row at
    a time, whether the job's rows are consecutive (fresh) or scattered among freed rows, on
    one carrier or several."""
    cores = []
    for _ in range(2):
        c = _two_carriers()
        first = Job(id="first", tenant="t", sender="S", template="x", category="transactional")
        c.admit(first, [Recipient(to=f"+1646555{i:04d}") for i in range(gap)], NOW, paused=True)
        if cancel_first:
            c.cancel_job("first", NOW)  # its rows freed: the next job's rows are taken from them
        job = Job(id="j", tenant="t", sender="S", template="x", category="transactional")
        c.admit(job, [Recipient(to=p) for p in people], NOW, paused=True)
        cores.append(c)
    bulk, reference = cores
    bulk.resume_job("j")
    entry = reference._jobs["j"]
    reference._set_paused(entry, False)
    for shard in reference._shards:
        _one_by_one(shard, entry.slot, reference._p.jobs)
    for a, b in zip(bulk._shards, reference._shards):
        assert a.state == b.state
        assert {k: list(v) for k, v in a.lanes.items()} == {k: list(v) for k, v in b.lanes.items()}
    for carrier in ("a", "b"):
        assert [d.message_id for d in bulk.take(carrier, 100_000, NOW).dispatches] == \
               [d.message_id for d in reference.take(carrier, 100_000, NOW).dispatches]  # fmt: skip


def _waits_one_by_one(shard, job_slot: int, due: float) -> None:
    """What ``Shard.unpark`` did before a scheduled job's rows went to the timers in one extend."""
    for row in shard.parked.pop(job_slot, ()):
        shard.wait(row, due)


@settings(max_examples=30, deadline=None)
@given(people=st.lists(st.sampled_from(["+1212555", "+4420794", "+1415555"]).flatmap(
           lambda p: st.integers(0, 9999).map(lambda i: f"{p}{i:04d}")), min_size=1, max_size=120),
       gap=st.integers(0, 40), cancel_first=st.booleans(), ahead=st.floats(0.001, 90_000.0),
       other_at=st.one_of(st.none(), st.floats(0.001, 90_000.0)), step=st.one_of(st.none(), st.integers(1, 50)))  # fmt: skip
def test_a_scheduled_job_resumed_waits_as_a_row_at_a_time_would(people, gap, cancel_first, ahead, other_at,
                                                                step) -> None:  # fmt: skip
    """A job with ``send_at`` ahead (a campaign's batch) resumed whole or in steps: row states,
    due times, the timers' buckets and what ``take`` sends when they come due are the same as
    ``wait`` a row at a time, rows consecutive or scattered among freed rows, with another
    scheduled job's rows in the timers already (the same second's bucket, or another)."""
    cores = []
    for _ in range(2):
        c = _two_carriers()
        first = Job(id="first", tenant="t", sender="S", template="x", category="transactional",
                    not_before=None if other_at is None else NOW + other_at)  # fmt: skip
        c.admit(first, [Recipient(to=f"+1646555{i:04d}") for i in range(gap)], NOW, paused=True)
        if cancel_first:
            c.cancel_job("first", NOW)  # its rows freed: the next job's rows are taken from them
        else:
            c.resume_job("first")
        job = Job(id="j", tenant="t", sender="S", template="x", category="transactional", not_before=NOW + ahead)
        c.admit(job, [Recipient(to=p) for p in people], NOW, paused=True)
        cores.append(c)
    bulk, reference = cores
    bulk.resume_job("j", limit=step)
    while step is not None and bulk.resume_more("j", step):
        pass
    entry = reference._jobs["j"]
    reference._set_paused(entry, False)
    for shard in reference._shards:
        _waits_one_by_one(shard, entry.slot, entry.not_before)
    for a, b in zip(bulk._shards, reference._shards):
        assert a.state == b.state and a.due == b.due
        assert len(a.timers) == len(b.timers) and list(a.timers) == list(b.timers)
        assert a.timers.next_due() == b.timers.next_due()
    later = NOW + max(ahead, other_at or 0.0) + 2
    for carrier in ("a", "b"):
        assert [d.message_id for d in bulk.take(carrier, 100_000, later).dispatches] == \
               [d.message_id for d in reference.take(carrier, 100_000, later).dispatches]  # fmt: skip
