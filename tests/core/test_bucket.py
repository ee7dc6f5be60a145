from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.bucket import TokenBucket


def test_starts_full_and_refills_at_rate():
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert b.try_take(5, 0.0)
    assert not b.try_take(1, 0.0)
    assert b.try_take(1, 0.1)
    assert b.available(10.0) == 5  # never above burst


def test_take_is_all_or_nothing():
    b = TokenBucket(rate=1, burst=3, now=0.0)
    assert not b.try_take(4, 0.0)
    assert b.available(0.0) == 3


def test_throttle_without_acceptance_figures_halves_and_drops_tokens():
    b = TokenBucket(rate=100, burst=10, now=0.0, backoff=0.5, cooldown=1.0)
    b.throttled(0.0)
    assert b.rate == 50
    assert b.available(0.0) == 0
    b.throttled(0.5)  # within cooldown: one overload, one cut
    assert b.rate < 51


def accept_steadily(b: TokenBucket, per_s: float, start: float, end: float) -> None:
    t = start
    while t < end:
        b.accepted(per_s / 100, t)
        t += 0.01


def test_throttle_cuts_to_just_below_what_the_carrier_accepted():
    b = TokenBucket(rate=500, burst=50, now=0.0, margin=0.95, probe=5.0)
    accept_steadily(b, 300, 0.0, 3.0)  # the carrier quietly lowered its limit to 300/s
    assert abs(b.accepted_rate(3.0) - 300) < 10
    b.throttled(3.0)
    assert 280 <= b.rate <= 290  # 0.95 * 300, not 250 (halving) nor 475 (0.95 * our rate)


def test_recovery_is_cubic_slow_near_the_limit_found_then_fast():
    b = TokenBucket(rate=500, burst=50, now=0.0, margin=0.95, probe=5.0)
    accept_steadily(b, 300, 0.0, 3.0)
    b.throttled(3.0)
    cut = b.rate
    b.available(3.0 + 2.5)  # half a probe: an eighth of the way back to the limit found
    assert cut < b.rate < cut + 0.2 * (300 - cut)
    b.available(3.0 + 5.0)  # one probe: back at the limit found
    assert abs(b.rate - 300) < 1
    b.available(3.0 + 10.0)  # two probes: 8x the distance above the cut, towards configured
    assert abs(b.rate - (cut + 8 * (300 - cut))) < 1
    b.available(3.0 + 60.0)
    assert b.rate == 500  # never above configured


def carrier_run(limit_at, seconds: float, rate: float, burst: int) -> tuple[list[int], list[float]]:
    """A carrier that accepts at most ``limit_at(t)`` in any sliding second (and says
    "throttled" to the rest), 5 ms away, fed every 5 ms from the bucket, on virtual time.
    Returns accepted per second and the limit per second."""
    from collections import deque

    b = TokenBucket(rate, burst, 0.0)
    window: deque[float] = deque()
    answers: deque[tuple[float, bool]] = deque()
    accepted = [0] * int(seconds)
    t = 0.0
    for step in range(int(seconds / 0.005)):
        t = step * 0.005
        for _ in range(b.take_upto(10_000, t)):  # arrives at t + 2.5 ms, answered at t + 5 ms
            at = t + 0.0025
            while window and window[0] <= at - 1.0:
                window.popleft()
            ok = len(window) < limit_at(at)
            if ok:
                window.append(at)
                accepted[int(at)] += 1
            answers.append((t + 0.005, ok))
        while answers and answers[0][0] <= t:
            _, ok = answers.popleft()
            if ok:
                b.accepted(1, t)
            else:
                b.throttled(t)
    return accepted, [limit_at(float(s)) for s in range(int(seconds))]


def test_a_carrier_that_lowers_its_limit_unannounced_stays_nearly_full():
    """500/s configured; the carrier allows 500/s, then 300/s from 10 s on: after the drop the
    bucket settles just under 300/s (halving with linear recovery gets about 70 % here)."""
    accepted, limits = carrier_run(lambda t: 500 if t < 10 else 300, 40, rate=500, burst=50)
    assert sum(accepted[12:]) / sum(limits[12:]) >= 0.93
    assert sum(accepted[2:10]) / sum(limits[2:10]) >= 0.93


def test_a_carrier_that_raises_its_limit_again_gets_the_configured_rate_back():
    accepted, _ = carrier_run(lambda t: 500 if t < 5 or t >= 10 else 200, 40, rate=500, burst=50)
    assert min(accepted[30:]) >= 470


def test_accepted_rate_forgets_after_a_second():
    b = TokenBucket(rate=500, burst=50, now=0.0)
    accept_steadily(b, 200, 0.0, 1.0)
    assert abs(b.accepted_rate(1.0) - 200) < 10
    assert b.accepted_rate(2.5) == 0
    b.throttled(2.5)  # nothing accepted lately: halve
    assert b.rate == 250


def test_rate_floor():
    b = TokenBucket(rate=100, burst=10, now=0.0, floor=0.1, cooldown=0)
    for i in range(50):
        b.throttled(i * 1e-6)
    assert b.rate == 10


def test_stale_now_earns_nothing():
    b = TokenBucket(rate=10, burst=10, now=5.0)
    b.try_take(10, 5.0)
    assert b.available(1.0) == 0


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 100),
    ops=st.lists(
        st.tuples(st.floats(0, 2), st.integers(1, 10), st.booleans()), min_size=1, max_size=60
    ),
)
def test_never_more_than_burst_plus_rate_t(rate, burst, ops):
    """In any interval of length t, at most burst + rate*t tokens are taken, throttles or not."""
    b = TokenBucket(rate=rate, burst=burst, now=0.0)
    now, taken = 0.0, []
    for dt, n, throttle in ops:
        now += dt
        if throttle:
            b.throttled(now)
        if b.try_take(n, now):
            taken.append((now, n))
    for i in range(len(taken)):
        total = 0
        for j in range(i, len(taken)):
            total += taken[j][1]
            t = taken[j][0] - taken[i][0]
            assert total <= burst + rate * t + 1e-6
