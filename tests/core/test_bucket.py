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


def test_throttle_cuts_rate_and_recovers_additively():
    b = TokenBucket(rate=100, burst=10, now=0.0, backoff=0.5, recovery=0.1, cooldown=1.0)
    b.throttled(0.0)
    assert b.rate == 50
    assert b.available(0.0) == 0
    b.throttled(0.5)  # within cooldown: one overload, one cut; 0.5 s recovered 5% of 100
    assert b.rate == 55
    b.throttled(1.5)  # 65 by then, cut in half
    assert b.rate == 32.5
    b.available(2.5)  # one second later: +10% of configured
    assert abs(b.rate - 42.5) < 1e-9
    b.available(100.0)
    assert b.rate == 100  # never above configured


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
