"""Per-carrier token bucket, charged per SMS segment, that backs off when the carrier throttles.

Theory of operation
-------------------
Tokens accrue at ``rate`` per second up to ``burst``. Sending one message of *n* segments takes
*n* tokens. Over any interval of length *t* a bucket therefore lets through at most
``burst + rate * t`` segments (the invariant the property tests check, with the *configured*
rate: the adaptive rate is never above it).

When the carrier answers "throttled" (SMPP 0x58 / 0x14, HTTP 429) the connector calls
``throttled(now)``: the tokens on hand are dropped, so the next send waits, and the rate is cut
to just below what the carrier *accepted* over the last second (``accepted(n, now)`` is called
for every message the carrier took) -- that is the carrier's real limit, whatever it told us
when we were configured. Without acceptance figures (nothing accepted lately) the rate is halved
instead. Afterwards the rate grows back along a cubic, as in CUBIC congestion control (RFC 8312)
and the AWS SDK's adaptive retry mode: it stays close to the limit it found for ``probe``
seconds, reaches that limit again after ``probe`` seconds, then climbs ever faster towards the
configured rate, so a carrier that recovers gets its full rate back within a few probes. Plain
halving with linear recovery (AIMD) spends most of its time far below a lowered limit; the
cubic spends it just below. Two throttles within ``cooldown`` seconds count once, because a
window of 100 in-flight submits can bring back 100 throttle answers for one overload.

The bucket never reads a clock: every method takes ``now``.
"""

from __future__ import annotations

import msgspec

__all__ = ["BucketStatistics", "TokenBucket"]


_SLOTS = 10  # acceptance is counted in tenths of a second


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
        "_margin",
        "_probe",
        "_floor",
        "_cooldown",
        "_last_throttle",
        "_throttles",
        "_cut",
        "_found",
        "_slots",
        "_slot",
    )

    def __init__(
        self,
        rate: float,
        burst: float,
        now: float,
        *,
        backoff: float = 0.5,
        margin: float = 0.97,
        probe: float = 5.0,
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
        self._backoff = backoff  # the cut when nothing was accepted lately
        self._margin = margin  # the cut is this fraction of the accepted rate
        self._probe = probe  # seconds to climb back to the limit found
        self._floor = floor
        self._cooldown = cooldown
        self._last_throttle = float("-inf")
        self._throttles = 0
        self._cut = self._rate  # the rate right after the last throttle ...
        self._found = self._rate  # ... and the limit that throttle revealed
        self._slots = [0.0] * _SLOTS  # accepted per 1/_SLOTS s, over the last second
        self._slot = 0

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
            # Cubic recovery first, then accrue at the (new) rate: never faster than configured.
            t = (now - self._last_throttle) / self._probe
            if t < 100.0:
                self._rate = min(self._configured, self._cut + (self._found - self._cut) * t * t * t)
            else:  # long ago (or never, after a reconfigure upwards)
                self._rate = self._configured
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

    def accepted(self, n: float, now: float) -> None:
        """The carrier took *n* segments (its answer came in at ``now``)."""
        slot = int(now * _SLOTS)
        slots = self._slots
        if slot != self._slot:
            if slot - self._slot >= _SLOTS or slot < self._slot:
                for i in range(_SLOTS):
                    slots[i] = 0.0
            else:
                for s in range(self._slot + 1, slot + 1):
                    slots[s % _SLOTS] = 0.0
            self._slot = slot
        slots[slot % _SLOTS] += n

    def accepted_rate(self, now: float) -> float:
        """Segments per second the carrier accepted over the last 0.9-1 s."""
        self.accepted(0, now)
        span = (_SLOTS - 1 + (now * _SLOTS - self._slot)) / _SLOTS
        return sum(self._slots) / span

    def throttled(self, now: float) -> None:
        """The carrier said "too fast": drop the tokens on hand and cut the rate to just below
        what the carrier accepted over the last second (or by ``backoff`` if it accepted none)."""
        self._refill(now)
        if now - self._last_throttle < self._cooldown:
            return  # the same overload: the in-flight window coming back
        self._tokens = min(self._tokens, 0.0)
        self._throttles += 1
        floor = self._configured * self._floor
        seen = self.accepted_rate(now)
        if seen >= floor:
            # The carrier's window is full at what it accepted: that is its limit now, even if
            # our own rate was already below it (a burst, jitter) -- never cut below that.
            found = min(self._configured, seen)
            cut = found * self._margin
        else:
            found = self._rate
            cut = self._rate * self._backoff
        self._last_throttle = now
        self._cut = max(floor, cut)
        self._found = max(found, self._cut / self._margin)  # always something to climb back to
        self._rate = self._cut

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
