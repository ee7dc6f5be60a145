"""Scheduled sends and validity, as hypothesis properties of the core on virtual time.

For any interleaving of admissions (straight in, or parked while "the store writes them" and
resumed later, as the service does), takes, completions, requeues (at once or after a delay),
carriers going down and up (failover moves ready rows to the next carrier of their route),
pauses, resumes, cancels, restarts (a new core recovering every unfinished message with its
own id, as ``Gateway.recover`` does) and time jumps:

(1) no message is dispatched before its job's ``send_at`` (``not_before``), on whichever
    carrier it fails over to;
(2) none is dispatched at or after its expiry (``send_at`` or admission, plus ``validity``);
(3) a message whose validity is over ends ``expired`` on the first unhindered take after it
    (paused or not), never later, and never before its expiry;
(4) every message ends in exactly one final state once time has run far enough.

The regression this guards: admission parks rows while the store writes them, and un-parking
made them ready at once, so ``send_at`` was ignored by every path through the service.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.core.model import Final, FinalState, Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CarrierSettings, CoreSettings, QuietHoursSettings, Route

NUMBERS = ["+12125550101", "+447911123456", "+33612345678", "+4915112345678"]
STEPS = [0.2, 0.7, 1.0, 3.0, 30.0, 600.0, 7200.0, 86400.0]
LATER = [None, None, -5.0, 0.5, 2.0, 45.0, 3600.0, 2 * 86400.0]  # send_at relative to now
VALIDITY = [None, None, 1.0, 2.5, 60.0, 4000.0]
ROOM = 10_000  # a take with this much room and enough tokens looks at every ready message
CARRIERS = ("a", "b")


def make_settings() -> CoreSettings:
    # Quiet hours open all day: what is checked here is the schedule alone (the other property
    # suite checks quiet hours and caps with schedules mixed in).
    return CoreSettings(
        shards=3,
        carriers=[CarrierSettings(name=c, rate=100_000.0, burst=100_000) for c in CARRIERS],
        routes=[Route(prefix="", carriers=["a", "b"])],  # a down: its ready rows fail over to b
        quiet_hours=QuietHoursSettings(start="00:00", end="24:00", overrides={}, rules={}),  # no day rules either
    )


class ScheduleMachine(RuleBasedStateMachine):
    @initialize(start=st.floats(1.76e9, 1.80e9))
    def setup(self, start: float) -> None:
        self.now = start
        self.core = Scheduler(make_settings(), start)
        self.jobs: dict[str, dict] = {}  # id -> {job, people: {mid: Recipient}, pending, paused}
        self.msgs: dict[int, dict] = {}  # id -> {job, state, not_before, expires}
        self.inflight: dict[int, int] = {}  # ref -> message id
        self.down: set[str] = set()

    # -- rules --------------------------------------------------------------------------

    @rule(
        n=st.integers(1, 4),
        later=st.sampled_from(LATER),
        validity=st.sampled_from(VALIDITY),
        category=st.sampled_from(["otp", "transactional", "marketing"]),
        stored_first=st.booleans(),
    )
    def submit(self, n: int, later: float | None, validity: float | None, category: str, stored_first: bool) -> None:
        """As ``Gateway._job`` builds it: expiry counts from ``send_at`` when that is ahead."""
        send_at = None if later is None else self.now + later
        start = send_at if send_at is not None and send_at > self.now else self.now
        job = Job(id=f"j{len(self.jobs)}", tenant="t", sender="S", template="Hi", category=category,
                  not_before=send_at, expires_at=None if validity is None else start + validity)  # fmt: skip
        people = [Recipient(to=NUMBERS[i % len(NUMBERS)]) for i in range(n)]
        adm = self.core.admit(job, people, self.now, paused=stored_first)
        self._outcomes(adm.outcomes)
        mids = {adm.first_id + adm.offsets[i]: r for i, r in enumerate(people)}
        self.jobs[job.id] = dict(job=job, people=mids, pending=stored_first, paused=False)
        for mid in mids:
            if mid not in self.msgs:
                self.msgs[mid] = dict(job=job.id, state="queued", not_before=send_at or -math.inf,
                                      expires=job.expires_at or math.inf)  # fmt: skip
        for o in adm.outcomes:  # expired at admission already: recorded by _outcomes above
            assert o.message_id in mids

    @precondition(lambda self: any(j["pending"] for j in self.jobs.values()))
    @rule(k=st.integers(0, 10**6))
    def stored(self, k: int) -> None:
        """The store has written a job admitted paused: the service resumes it."""
        pending = sorted(i for i, j in self.jobs.items() if j["pending"])
        job_id = pending[k % len(pending)]
        self.jobs[job_id]["pending"] = False
        if not self.jobs[job_id]["paused"]:
            self.core.resume_job(job_id)

    @rule(dt_=st.sampled_from(STEPS))
    def advance(self, dt_: float) -> None:
        self.now += dt_

    @rule(carrier=st.sampled_from(CARRIERS), down=st.booleans())
    def failover(self, carrier: str, down: bool) -> None:
        if down and not self.down - {carrier}:  # one of the two stays up
            self.core.carrier_down(carrier, self.now)
            self.down.add(carrier)
        else:
            self.core.carrier_up(carrier, self.now)
            self.down.discard(carrier)

    @rule(room=st.sampled_from([1, 3, ROOM]), done=st.booleans(), carrier=st.sampled_from(CARRIERS))
    def take(self, room: int, done: bool, carrier: str = "a") -> None:
        self._take(carrier, room, done)
        if room == ROOM:  # every lane of every carrier looked at: then (3) can be checked
            self._take("b" if carrier == "a" else "a", room, done, check=True)

    def _take(self, carrier: str, room: int, done: bool, *, check: bool = False) -> None:
        tokens = min(self.core.bucket(c).available(self.now) for c in CARRIERS)
        queued_before = {i for i, m in self.msgs.items() if m["state"] == "queued"}
        batch = self.core.take(carrier, room, self.now)
        self._outcomes(batch.outcomes)
        for d in batch.dispatches:
            m = self.msgs[d.message_id]
            assert m["state"] == "queued", f"dispatched a message that is {m['state']}"
            assert not self._held(m["job"]), "a paused or unwritten job sent a message"
            assert self.now >= m["not_before"], "(1) dispatched before its send_at"
            assert self.now < m["expires"], "(2) dispatched at or after its expiry"
            if done:
                self.core.complete(d.ref)
                m["state"] = "done"
            else:
                m["state"] = "inflight"
                self.inflight[d.ref] = d.message_id
        if check and tokens > len(queued_before):
            late = [i for i in queued_before if self.msgs[i]["state"] == "queued"
                    and not self.jobs[self.msgs[i]["job"]]["pending"]
                    and self.msgs[i]["expires"] < math.inf and math.ceil(self.msgs[i]["expires"]) <= self.now]  # fmt: skip
            assert not late, f"(3) validity over, still queued: {late}"

    @precondition(lambda self: self.inflight)
    @rule(k=st.integers(0, 10**6), delay=st.sampled_from([0.0, 0.0, 1.5, 120.0, 86400.0]))
    def requeue(self, k: int, delay: float) -> None:
        ref = sorted(self.inflight)[k % len(self.inflight)]
        self.core.requeue(ref, self.now, delay=delay)
        self.msgs[self.inflight.pop(ref)]["state"] = "queued"

    @precondition(lambda self: self.inflight)
    @rule(k=st.integers(0, 10**6))
    def complete(self, k: int) -> None:
        ref = sorted(self.inflight)[k % len(self.inflight)]
        self.core.complete(ref)
        self.msgs[self.inflight.pop(ref)]["state"] = "done"

    @precondition(lambda self: self.jobs)
    @rule(k=st.integers(0, 10**6), resume=st.booleans())
    def pause(self, k: int, resume: bool) -> None:
        job_id = sorted(self.jobs)[k % len(self.jobs)]
        j = self.jobs[job_id]
        if j["pending"]:
            return  # the API cannot name a job before its 202
        if resume:
            self.core.resume_job(job_id)
            j["paused"] = False
        elif self.core.pause_job(job_id):
            j["paused"] = True

    @precondition(lambda self: self.jobs)
    @rule(k=st.integers(0, 10**6))
    def cancel(self, k: int) -> None:
        job_id = sorted(self.jobs)[k % len(self.jobs)]
        if self.jobs[job_id]["pending"]:
            return
        self._outcomes(self.core.cancel_job(job_id, self.now))

    @precondition(lambda self: not any(j["pending"] for j in self.jobs.values()))
    @rule()
    def restart(self) -> None:
        """A new process: every message not final is admitted again with its own id (those in
        flight too: they may not have reached the carrier), paused if its job is paused."""
        core = Scheduler(make_settings(), self.now)
        self.down = set()
        core.reserve_ids(0, self.now, floor=max(self.msgs, default=0) + 1)
        for job_id, j in self.jobs.items():
            for mid, person in j["people"].items():
                m = self.msgs[mid]
                if m["state"] in ("queued", "inflight"):
                    self._outcomes(core.admit(j["job"], [person], self.now, first_id=mid, paused=j["paused"]).outcomes,
                                   recovering=True)  # fmt: skip
                    if m["state"] == "inflight":
                        m["state"] = "queued"
            if j["paused"]:
                core.pause_job(job_id)
        self.core, self.inflight = core, {}

    # -- checks -------------------------------------------------------------------------

    def _held(self, job_id: str) -> bool:
        j = self.jobs[job_id]
        return j["pending"] or j["paused"]

    def _outcomes(self, outcomes, *, recovering: bool = False) -> None:
        for o in outcomes:
            m = self.msgs.get(o.message_id)
            if m is None:  # ended at its own admission: expired on arrival
                assert isinstance(o, Final) and o.state == FinalState.EXPIRED
                self.msgs[o.message_id] = dict(job=o.job_id, state="expired", not_before=-math.inf, expires=o.at)
                continue
            assert m["state"] in ("queued", "inflight") if recovering else m["state"] == "queued", (o, m)
            if isinstance(o, Final):
                if o.state == FinalState.EXPIRED:
                    assert self.now >= m["expires"], "(3) expired before its validity ended"
                m["state"] = str(o.state)
            else:
                assert o.until > self.now and o.until <= m["expires"]
                assert not (o.reason == "scheduled" and o.until != min(m["not_before"], m["expires"]))

    @invariant()
    def accounted(self) -> None:
        if not hasattr(self, "core"):
            return
        stats = self.core.statistics(self.now)
        queued = sum(1 for m in self.msgs.values() if m["state"] == "queued")
        assert sum(stats.ready.values()) + stats.waiting + stats.parked == queued, "queue and model agree"
        assert stats.inflight == len(self.inflight)

    def teardown(self) -> None:
        """(4): release everything, run time out to the end, and every message has ended."""
        if not hasattr(self, "core"):
            return
        for job_id, j in self.jobs.items():
            if j["pending"] or j["paused"]:
                j["pending"] = j["paused"] = False
                self.core.resume_job(job_id)
        for ref in list(self.inflight):
            self.core.complete(ref)
            self.msgs[self.inflight.pop(ref)]["state"] = "done"
        for c in CARRIERS:
            self.core.carrier_up(c, self.now)
        for _ in range(8):
            self.now += 3 * 86400.0
            self.take(ROOM, True)
        left = {i: m for i, m in self.msgs.items() if m["state"] in ("queued", "inflight")}
        assert not left, f"(4) never ended: {left}"


ScheduleMachine.TestCase.settings = settings(
    max_examples=75, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip
TestSchedule = ScheduleMachine.TestCase
