"""Per-carrier token bucket, charged per SMS segment, that backs off when the carrier throttles.

Theory of operation
-------------------
Tokens accrue at ``rate`` per second up to ``burst``. Sending one message of *n* segments takes
*n* tokens. Over any interval of length *t* a bucket therefore lets through at most
``burst + rate * t`` segments (the invariant the property tests check, with the *configured*
rate: the adaptive rate is never above it).

When the carrier answers "throttled" (SMPP 0x58 / 0x14, HTTP 429) the connector calls
``throttled(now)``: the current rate is cut multiplicatively (``backoff``) and the tokens on hand
are dropped, so the next send waits. Each second without a throttle adds back ``recovery`` of the
configured rate (additive increase), never above it. This is AIMD, the shape the AWS SDK's
adaptive retry mode uses. Two throttles within ``cooldown`` seconds count once, because a
window of 100 in-flight submits can bring back 100 throttle answers for one overload.

The bucket never reads a clock: every method takes ``now``.
"""

from __future__ import annotations

import msgspec

__all__ = ["BucketStatistics", "TokenBucket"]


class BucketStatistics(msgspec.Struct, frozen=True, kw_only=True):
    configured_rate: float
    rate: float
    burst: float
    tokens: float
    throttles: int


class TokenBucket:
    __slots__ = (
        "_configured",
        "_rate",
        "_burst",
        "_tokens",
        "_last",
        "_backoff",
        "_recovery",
        "_floor",
        "_cooldown",
        "_last_throttle",
        "_throttles",
    )

    def __init__(
        self,
        rate: float,
        burst: float,
        now: float,
        *,
        backoff: float = 0.5,
        recovery: float = 0.05,
        floor: float = 0.05,
        cooldown: float = 1.0,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate} burst={burst}")
        self._configured = float(rate)
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now
        self._backoff = backoff
        self._recovery = recovery
        self._floor = floor
        self._cooldown = cooldown
        self._last_throttle = float("-inf")
        self._throttles = 0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def configured_rate(self) -> float:
        return self._configured

    @property
    def burst(self) -> float:
        return self._burst

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed <= 0:
            return  # time never runs backwards for a bucket; a stale `now` earns nothing
        self._last = now
        if self._rate < self._configured:
            # Additive recovery first, then accrue at the (new) rate: never faster than configured.
            self._rate = min(self._configured, self._rate + self._recovery * self._configured * elapsed)
        tokens = self._tokens + elapsed * self._rate
        self._tokens = tokens if tokens < self._burst else self._burst

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def try_take(self, n: float, now: float) -> bool:
        """Take *n* tokens if all are there; otherwise take none."""
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def take_upto(self, n: int, now: float) -> int:
        """Take as many whole tokens as are there, at most *n*; return how many."""
        self._refill(now)
        got = min(n, int(self._tokens))
        self._tokens -= got
        return got

    def refund(self, n: float, now: float) -> None:
        """Give back tokens taken but not used (e.g. a batch cut short). Never above burst."""
        self._refill(now)
        self._tokens = min(self._burst, self._tokens + n)

    def wait_time(self, n: float, now: float) -> float:
        """Seconds until *n* tokens are there (0 if they are now)."""
        self._refill(now)
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self._rate

    def throttled(self, now: float) -> None:
        """The carrier said "too fast": cut the rate and drop the tokens on hand."""
        self._refill(now)
        if now - self._last_throttle < self._cooldown:
            return
        self._last_throttle = now
        self._throttles += 1
        self._rate = max(self._configured * self._floor, self._rate * self._backoff)
        self._tokens = min(self._tokens, 0.0)

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        self._refill(now)
        self._configured = float(rate)
        self._rate = min(self._rate, self._configured)
        self._burst = float(burst)
        self._tokens = min(self._tokens, self._burst)

    def statistics(self, now: float) -> BucketStatistics:
        self._refill(now)
        return BucketStatistics(
            configured_rate=self._configured,
            rate=self._rate,
            burst=self._burst,
            tokens=self._tokens,
            throttles=self._throttles,
        )
