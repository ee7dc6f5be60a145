"""The delivery core's invariants, stated as hypothesis properties on virtual time.

For any interleaving of submits, takes, completions, retries, throttles, cancels, opt-outs and
time jumps:
(1) no carrier gets more than ``burst + rate * t`` segments in any interval of length t;
(2) no recipient gets more than the cap of capped categories in any rolling 7 days;
(3) no marketing dispatch outside 08:00-21:00 (20:00 in Florida) in any of the recipient's zones;
(4) every accepted message ends in exactly one final outcome, or is still queued or in flight;
    none is dispatched while it is in flight, or after it ended;
(5) per carrier, priority order: a batch never puts a lower priority before a higher one, and
    never sends marketing while an eligible OTP for that carrier is left waiting;
(6) a blocked carrier never changes what another carrier is sent (separate test below).

The oracles are independent of the code under test: zones come from phonenumbers, local time
from zoneinfo, windows are written out here by hand.
"""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import phonenumbers
import holidays
import phonenumbers.timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gateway.core.model import Final, Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CapSettings, CarrierSettings, CoreSettings, Route

WEEK = 7 * 86400.0
CARRIERS = {"a": (5.0, 6), "b": (3.0, 6)}  # rate, burst
POOL = [
    ("+12125550101", None),  # New York
    ("+13055550102", None),  # Miami: Florida closes at 20:00
    ("+14155550103", None),  # San Francisco
    ("+33612345678", None),  # Paris
    ("+33612345679", "Asia/Kolkata"),  # explicit zone wins over the number's
    ("+61412345678", None),  # Australian mobile: several zones, all must be open
    ("+12125550104", None),
]
WINDOWS = {"+13055550102": (8 * 60, 20 * 60)}  # everyone else 08:00-21:00
BODIES = ["Hi {name}", "Sale " * 40 + "{name}", "Bonjour {name} ☃ ✓", "Code {name}"]
STEPS = [0.05, 0.5, 1.0, 7.0, 60.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 3 * 86400.0]


def make_settings(policy: str = "drop") -> CoreSettings:
    return CoreSettings(
        shards=4,
        max_segments=4,
        carriers=[CarrierSettings(name=n, rate=r, burst=b) for n, (r, b) in CARRIERS.items()],
        routes=[Route(prefix="", carriers=["a"]), Route(prefix="33", carriers=["b"])],
        weekly_cap=CapSettings(limit=2, policy=policy),
    )


def zones_of(number: str, tz: str | None) -> list[str]:
    if tz:
        return [tz]
    zs = phonenumbers.timezone.time_zones_for_number(phonenumbers.parse(number))
    return [z for z in zs if z != "Etc/Unknown"] or ["UTC"]


FR_HOLIDAYS = holidays.country_holidays("FR")


def open_everywhere(number: str, tz: str | None, now: float) -> bool:
    # French numbers (an explicit zone too: the region is the number's) follow the shipped FR
    # rule: 08:00-20:00, nothing on Sundays and public holidays, on the local calendar.
    french = number.startswith("+33")
    start, end = (8 * 60, 20 * 60) if french else WINDOWS.get(number, (8 * 60, 21 * 60))
    for z in zones_of(number, tz):
        local = dt.datetime.fromtimestamp(now, ZoneInfo(z))
        minute = local.hour * 60 + local.minute
        if not start <= minute < end:
            return False
        if french and (local.weekday() == 6 or local.date() in FR_HOLIDAYS):
            return False
    return True


class CoreMachine(RuleBasedStateMachine):
    @initialize(
        start=st.floats(1.76e9, 1.80e9),  # 2025-10 .. 2027-01: both DST changes included
        policy=st.sampled_from(["drop", "wait"]),
    )
    def setup(self, start: float, policy: str) -> None:
        self.now = start
        self.s = make_settings(policy)
        self.core = Scheduler(self.s, start)
        self.jobs = 0
        self.msgs: dict[int, dict] = {}  # id -> {state, job, category, to, tz, ready_at, expires}
        self.inflight: dict[int, int] = {}  # ref -> message id
        self.sends: dict[str, list[tuple[float, int]]] = {c: [] for c in CARRIERS}
        self.capped: dict[str, dict[int, float]] = {}  # number -> {message id: dispatch time}
        self.priority = {k: v.priority for k, v in self.s.categories.items()}
        self.paused: set[str] = set()

    # -- rules --------------------------------------------------------------------------

    @rule(
        category=st.sampled_from(["otp", "transactional", "marketing", "marketing"]),
        who=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=5),
        body=st.sampled_from(BODIES),
        later=st.sampled_from([None, None, 0.3, 30.0, 7200.0]),
        validity=st.sampled_from([None, None, 5.0, 3600.0, 2 * 86400.0]),
    )
    def submit(self, category, who, body, later, validity) -> None:
        self.jobs += 1
        job = Job(
            id=f"j{self.jobs}", tenant="t", sender="S", template=body, category=category,
            not_before=None if later is None else self.now + later,
            expires_at=None if validity is None else self.now + validity,
        )  # fmt: skip
        people = [Recipient(to=POOL[i][0], tz=POOL[i][1], vars={"name": "Zoë"}) for i in who]
        adm = self.core.admit(job, people, self.now)
        assert adm.accepted == len(people) and not adm.rejected
        ready = self.now if later is None else math.ceil(self.now + later)
        for i, r in enumerate(people):
            self.msgs[adm.first_id + adm.offsets[i]] = dict(
                state="queued", job=job.id, category=category, to=r.to, tz=r.tz,
                ready_at=ready, expires=job.expires_at or math.inf, not_before=job.not_before or -math.inf,
            )  # fmt: skip
        self._outcomes(adm.outcomes)

    @rule(dt_=st.sampled_from(STEPS))
    def advance(self, dt_: float) -> None:
        self.now += dt_

    @rule(carrier=st.sampled_from(sorted(CARRIERS)), room=st.integers(1, 8))
    def take(self, carrier: str, room: int) -> None:
        batch = self.core.take(carrier, room, self.now)
        self._outcomes(batch.outcomes)
        prios = [d.priority for d in batch.dispatches]
        assert prios == sorted(prios), "(5) a batch is in priority order"
        for d in batch.dispatches:
            m = self.msgs[d.message_id]
            assert m["state"] == "queued", f"(4) dispatched a message that is {m['state']}"
            assert m["job"] not in self.paused, "a paused job sent a message"
            assert d.carrier == carrier
            assert self.now < m["expires"], "(4) dispatched after its validity"
            assert self.now >= m["not_before"], "(4) dispatched before its send_at"
            m["state"] = "inflight"
            self.inflight[d.ref] = d.message_id
            self.sends[carrier].append((self.now, d.segments))
            if m["category"] == "marketing":
                assert open_everywhere(m["to"], m["tz"], self.now), "(3) marketing in quiet hours"
                sent = self.capped.setdefault(m["to"], {})
                sent[d.message_id] = self.now
                recent = [t for t in sent.values() if t > self.now - WEEK]
                assert len(recent) <= self.s.weekly_cap.limit, "(2) weekly cap exceeded"
        self._check_rate(carrier)
        if any(d.category == "marketing" for d in batch.dispatches):
            for m in self.msgs.values():
                left = (m["state"] == "queued" and m["category"] == "otp" and m["ready_at"] <= self.now
                        and m["job"] not in self.paused
                        and self.now < m["expires"] and self._carrier_of(m["to"]) == carrier)  # fmt: skip
                assert not left, "(5) marketing went while an OTP waited"

    @precondition(lambda self: self.inflight)
    @rule(k=st.integers(0, 10**6))
    def complete(self, k: int) -> None:
        ref = sorted(self.inflight)[k % len(self.inflight)]
        mid = self.inflight.pop(ref)
        self.core.complete(ref)
        self.msgs[mid]["state"] = "done"

    @precondition(lambda self: self.inflight)
    @rule(k=st.integers(0, 10**6), delay=st.sampled_from([0.0, 0.0, 2.5, 120.0]))
    def requeue(self, k: int, delay: float) -> None:
        ref = sorted(self.inflight)[k % len(self.inflight)]
        mid = self.inflight.pop(ref)
        self.core.requeue(ref, self.now, delay=delay)
        m = self.msgs[mid]
        m["state"] = "queued"
        m["ready_at"] = self.now if delay == 0 else math.ceil(self.now + delay)
        self.capped.get(m["to"], {}).pop(mid, None)  # the carrier never took it: refunded

    @rule(carrier=st.sampled_from(sorted(CARRIERS)))
    def throttle(self, carrier: str) -> None:
        self.core.throttled(carrier, self.now)

    @precondition(lambda self: self.jobs)
    @rule(k=st.integers(1, 10**6))
    def cancel(self, k: int) -> None:
        job_id = f"j{(k % self.jobs) + 1}"
        waiting = [i for i, m in self.msgs.items() if m["job"] == job_id and m["state"] == "queued"]
        ended = self.core.cancel_job(job_id, self.now)
        self._outcomes(ended)
        assert sorted(f.message_id for f in ended) == sorted(waiting), "cancel ends every queued one"

    @precondition(lambda self: self.jobs)
    @rule(k=st.integers(1, 10**6), resume=st.booleans())
    def pause(self, k: int, resume: bool) -> None:
        job_id = f"j{(k % self.jobs) + 1}"
        if resume:
            self.core.resume_job(job_id)
            self.paused.discard(job_id)
        elif self.core.pause_job(job_id):
            self.paused.add(job_id)

    @rule(i=st.integers(0, len(POOL) - 1))
    def opt_out(self, i: int) -> None:
        self.core.suppress("t", POOL[i][0])

    # -- checks -------------------------------------------------------------------------

    def _outcomes(self, outcomes) -> None:
        for o in outcomes:
            m = self.msgs[o.message_id]
            assert m["state"] == "queued", f"(4) {o} for a message that is {m['state']}"
            if isinstance(o, Final):
                m["state"] = str(o.state)
            else:
                assert o.until > self.now
                m["ready_at"] = math.ceil(o.until)

    def _check_rate(self, carrier: str) -> None:
        rate, burst = CARRIERS[carrier]
        events = self.sends[carrier]
        total = 0
        t_end = events[-1][0] if events else 0.0
        for t, segs in reversed(events):
            total += segs
            assert total <= burst + rate * (t_end - t) + 1e-6, "(1) carrier rate exceeded"

    def _carrier_of(self, number: str) -> str:
        return "b" if number.startswith("+33") else "a"

    @invariant()
    def accounted(self) -> None:
        if not hasattr(self, "core"):
            return
        stats = self.core.statistics(self.now)
        queued = sum(1 for m in self.msgs.values() if m["state"] == "queued")
        assert sum(stats.ready.values()) + stats.waiting + stats.parked == queued, "(4) queue and model agree"
        assert stats.inflight == len(self.inflight)


CoreMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=80, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip
TestCore = CoreMachine.TestCase


# (6) -------------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["otp", "marketing"]), st.lists(st.integers(0, 6), min_size=1, max_size=4)),
        st.tuples(st.just("advance"), st.sampled_from(STEPS[:6])),
        st.tuples(st.just("take"), st.sampled_from(["a", "b"]), st.integers(1, 8)),
        st.tuples(st.just("throttle"), st.sampled_from(["a", "b"])),
    ),
    max_size=60,
)  # fmt: skip


def _replay(ops, *, block: str | None) -> list[tuple[float, int]]:
    now = 1.7800e9
    core = Scheduler(make_settings(), now)
    log = []
    for n, op in enumerate(ops):
        if op[0] == "submit":
            people = [Recipient(to=POOL[i][0], tz=POOL[i][1], vars={"name": "x"}) for i in op[2]]
            core.admit(Job(id=f"j{n}", tenant="t", sender="S", template="Hi {name}", category=op[1]), people, now)
        elif op[0] == "advance":
            now += op[1]
        elif op[1] != block:
            if op[0] == "throttle":
                core.throttled(op[1], now)
                continue
            for d in core.take(op[1], op[2], now).dispatches:
                core.complete(d.ref)
                if d.carrier == "b":
                    log.append((now, d.message_id))
    return log


@settings(max_examples=100, deadline=None)
@given(OPS)
def test_a_blocked_carrier_never_delays_another(ops) -> None:
    """What carrier b is sent, and when, is the same whether carrier a works or is dead."""
    normal = _replay(ops, block=None)
    blocked = _replay(ops, block="a")
    assert normal == blocked
