"""When a marketing message may go out: only inside the recipient's local sending window.

Semantics
---------
- The window is ``start <= local wall-clock time < end`` (default 08:00-21:00). ``end`` may be
  "24:00"; ``start > end`` wraps past midnight ("22:00"-"06:00"); ``start == end`` is refused.
- A zone set (``gateway.core.zones``) is open at an instant only if the window is open in
  **every** one of its zones at that instant; a number that may be in Perth or in Sydney waits
  until it is 08:00 in Perth and closes at 21:00 in Sydney.
- Per-region windows: ``overrides`` maps a region ("US-FL") or a country ("US", "FR") to its
  window; the most specific one that matches the zone set's region wins, else the default.
- Local time is what a wall clock shows, so DST is handled by construction: the night the clocks
  spring forward, 08:00 comes an hour sooner in UTC; a window start inside the skipped hour opens
  at the jump (02:30 does not exist in New York on 2025-03-09: a 02:30 window opens at 03:00 EDT);
  a time inside a repeated hour is inside the window both times it is shown.

Theory of operation
-------------------
Within a stretch where a zone's UTC offset ``u`` is constant, the zone is open at ``t`` iff
``(t + u - start) mod 86400 < length``: plain UTC arithmetic, no naive local times. The offsets
and the instants where they change come from ``zoneinfo`` (probed every 3 hours, each change
then found to the second by bisection; tzdata never changes a zone's offset twice within 3
hours). Each zone's open intervals over a few days are intersected across the set; that gives
the open interval holding ``now``, or the closed gap holding it and the instant it ends.

Either way the answer is constant over an interval: "open, until X" or "closed, opens at Y".
``next_open`` caches that interval per key, so the call per message is a list lookup and two
float comparisons; only a call outside the cached interval (about twice a day per zone set, or
any ``now`` out of order) computes again, so a stale answer is never given.

``math.inf`` means the windows of the zones never meet: no opening within ``HORIZON`` (400 days,
more than a year of DST combinations) of the instant asked.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.core.zones import ZoneResolver

__all__ = ["HORIZON", "QuietHours"]

DAY = 86400
HORIZON = 400 * DAY
_PROBE = 3 * 3600  # seconds between offset probes; tzdata changes are months apart
_SPAN = 2 * DAY  # computed on each side of `now`, then further in chunks of this size
_HHMM = re.compile(r"^(?:([01][0-9]|2[0-3]):([0-5][0-9])|24:00)$")
_NEVER = (math.inf, -math.inf, False)  # an empty cached interval: always recomputed

Interval = tuple[float, float]


class QuietHours:
    """Sending windows per zone set; answers are cached as intervals of constant answer."""

    def __init__(
        self,
        resolver: ZoneResolver,
        *,
        start: str = "08:00",
        end: str = "21:00",
        overrides: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.resolver = resolver
        self._window = _window(start, end)
        self._overrides = {region: _window(s, e) for region, (s, e) in (overrides or {}).items()}
        self._plans: dict[int, tuple[tuple[ZoneInfo, ...], int, int]] = {}
        self._cache: list[tuple[float, float, bool]] = []

    def next_open(self, key: int, now: float) -> float:
        """``now`` if the window is open in every zone of the set; else the first instant after
        ``now`` when it is; ``math.inf`` if it never is."""
        try:
            lo, hi, is_open = self._cache[key]
        except IndexError:
            lo, hi, is_open = _NEVER
        if lo <= now < hi:
            return now if is_open else hi
        return self._refresh(key, now)

    def open_until(self, key: int, now: float) -> float:
        """When open at ``now``: the instant it closes (the earliest close across the zones).
        Raises ValueError when it is closed at ``now``."""
        if self.next_open(key, now) != now:
            raise ValueError("quiet hours: closed at now")
        return self._cache[key][1]

    def window_for(self, region: str | None) -> tuple[int, int]:
        """The (start, length) in seconds of the window for a region: the region's own, else its
        country's ("US" for "US-FL"), else the default."""
        if region is not None:
            for r in (region, region.partition("-")[0]):
                if r in self._overrides:
                    return self._overrides[r]
        return self._window

    # -- behind the cache ------------------------------------------------------------------

    def _refresh(self, key: int, now: float) -> float:
        plan = self._plans.get(key)
        if plan is None:
            zs = self.resolver.zone_set(key)
            plan = self._plans[key] = (tuple(ZoneInfo(z) for z in zs.zones), *self.window_for(zs.region))
        lo, hi, is_open = _solve(*plan, now)
        cache = self._cache
        if key >= len(cache):
            cache.extend([_NEVER] * (key + 1 - len(cache)))
        cache[key] = (lo, hi, is_open)
        return now if is_open else hi


def _window(start: str, end: str) -> tuple[int, int]:
    """(start, length) in seconds; the length is in (0, 86400]."""
    s, e = _seconds(start), _seconds(end)
    if s == e:
        raise ValueError(f"empty sending window {start}-{end}")
    return s % DAY, (e - s) % DAY or DAY


def _seconds(hhmm: str) -> int:
    m = _HHMM.match(hhmm)
    if m is None:
        raise ValueError(f"bad time of day {hhmm!r}, want HH:MM")
    return DAY if m.group(1) is None else int(m.group(1)) * 3600 + int(m.group(2)) * 60


def _solve(zones: tuple[ZoneInfo, ...], start: int, length: int, now: float) -> tuple[float, float, bool]:
    """(lo, hi, open): the answer is the same for every instant in [lo, hi) that holds ``now``."""
    if length >= DAY:
        return -math.inf, math.inf, True
    a, b = now - _SPAN, now + _SPAN
    closed_since = a
    for x, y in _open_in(zones, start, length, a, b):
        if y <= now:
            closed_since = y
        elif x <= now:  # open now; an interval cut at b may go on in the next chunk
            while y == b and b - now < HORIZON:
                more = _open_in(zones, start, length, b, b + _SPAN)
                b += _SPAN
                if more and more[0][0] == y:
                    y = more[0][1]
            return x, y, True
        else:
            return closed_since, x, False
    while b - now < HORIZON:  # closed for the rest of the span: look further ahead
        more = _open_in(zones, start, length, b, b + _SPAN)
        if more:
            return closed_since, more[0][0], False
        b += _SPAN
    return closed_since, math.inf, False


def _open_in(zones: tuple[ZoneInfo, ...], start: int, length: int, a: float, b: float) -> list[Interval]:
    """The intervals of [a, b) when the window is open in all ``zones``, sorted and merged."""
    result: list[Interval] = [(a, b)]
    for zone in zones:
        result = _intersect(result, _zone_open(zone, start, length, a, b))
        if not result:
            break
    return result


def _zone_open(zone: ZoneInfo, start: int, length: int, a: float, b: float) -> list[Interval]:
    out: list[Interval] = []
    for sa, sb, offset in _segments(zone, a, b):
        first = start - offset  # the window opens at first + k * DAY while the offset holds
        k = math.floor((sa - first - length) / DAY)
        while (x := first + k * DAY) < sb:
            x, y = max(x, sa), min(x + length, sb)
            if x < y:
                if out and out[-1][1] == x:
                    x = out.pop()[0]  # same window across an offset change
                out.append((x, y))
            k += 1
    return out


def _segments(zone: ZoneInfo, a: float, b: float) -> list[tuple[float, float, int]]:
    """[a, b) cut where ``zone``'s UTC offset changes: (from, to, offset in seconds)."""
    out = []
    seg_start, t = a, a
    offset = _offset(zone, a)
    while t < b:
        probe = min(t + _PROBE, b)
        if _offset(zone, probe) == offset:
            t = probe
            continue
        lo, hi = math.floor(t), math.ceil(probe)  # offset(lo) is the old one, offset(hi) the new
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _offset(zone, mid) == offset else (lo, mid)
        if hi > seg_start:
            out.append((seg_start, float(hi), offset))
        seg_start, t, offset = float(hi), float(hi), _offset(zone, hi)
    out.append((seg_start, b, offset))
    return out


def _offset(zone: ZoneInfo, t: float) -> int:
    delta = datetime.fromtimestamp(t, zone).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def _intersect(p: list[Interval], q: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(p) and j < len(q):
        x, y = max(p[i][0], q[j][0]), min(p[i][1], q[j][1])
        if x < y:
            out.append((x, y))
        if p[i][1] < q[j][1]:
            i += 1
        else:
            j += 1
    return out
