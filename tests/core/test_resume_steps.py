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
