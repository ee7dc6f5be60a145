"""When a marketing message may go out: only inside the recipient's local sending window.

Semantics
---------
- The window is ``start <= local wall-clock time < end`` (default 08:00-21:00). ``end`` may be
  "24:00"; ``start > end`` wraps past midnight ("22:00"-"06:00"); ``start == end`` is refused.
- A zone set (``gateway.core.zones``) is open at an instant only if the window is open in
  **every** one of its zones at that instant; a number that may be in Perth or in Sydney waits
  until it is 08:00 in Perth and closes at 21:00 in Sydney.
- Per-region windows: ``overrides`` maps a region ("US-FL") or a country ("US", "FR") to its
  window; ``rules`` maps one to a ``WindowRule``: a window, other windows on some weekdays, days
  with no window, and optionally none on the region's public holidays (``holidays`` package:
  the country's, plus the state's or province's when the region names one the package knows).
  The most specific key that has a rule or an override wins (a rule before an override at the
  same key), else the default window.
- Days are local: a window belongs to the local day it starts on (a 22:00-06:00 window of a
  Saturday runs into Sunday even if Sunday is closed), and whether that day is a weekday or a
  holiday is decided in each zone of the set by its own calendar date.
- Local time is what a wall clock shows, so DST is handled by construction: the night the clocks
  spring forward, 08:00 comes an hour sooner in UTC; a window start inside the skipped hour opens
  at the jump (02:30 does not exist in New York on 2025-03-09: a 02:30 window opens at 03:00 EDT);
  a time inside a repeated hour is inside the window both times it is shown.

Theory of operation
-------------------
Within a stretch where a zone's UTC offset ``u`` is constant, local day ``d`` (days since
1970-01-01 on the wall clock) starts at the instant ``d * 86400 - u``, and that day's window is
``[that + start, that + start + length)``: plain UTC arithmetic, no naive local times. Each
day's window (or none: a closed weekday, a holiday) is looked up once per zone set and cached. The offsets
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

from datetime import date
from functools import lru_cache

from gateway.core.settings import WEEKDAYS, WindowRule
from gateway.core.zones import ZoneResolver

__all__ = ["HORIZON", "QuietHours"]

DAY = 86400
HORIZON = 400 * DAY
_PROBE = 3 * 3600  # seconds between offset probes; tzdata changes are months apart
_SPAN = 2 * DAY  # computed on each side of `now`, then further in chunks of this size
_HHMM = re.compile(r"^(?:([01][0-9]|2[0-3]):([0-5][0-9])|24:00)$")
_NEVER = (math.inf, -math.inf, False, math.inf)  # an empty cached interval: always recomputed

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
        rules: dict[str, WindowRule] | None = None,
    ) -> None:
        self.resolver = resolver
        self._window = _window(start, end)
        self._overrides = {region: _window(s, e) for region, (s, e) in (overrides or {}).items()}
        self._rules = dict(rules or {})
        self._calendars: dict[tuple[str | None, str | None], _Calendar] = {}
        self._plans: dict[int, tuple[tuple[ZoneInfo, ...], _Calendar]] = {}
        # per key: (lo, hi, open, end of the opening at hi): the answer for [lo, hi)
        self._cache: list[tuple[float, float, bool, float]] = []

    def next_open(self, key: int, now: float) -> float:
        """``now`` if the window is open in every zone of the set; else the first instant after
        ``now`` when it is; ``math.inf`` if it never is."""
        try:
            lo, hi, is_open, _ = self._cache[key]
        except IndexError:
            lo, hi, is_open, _ = _NEVER
        if lo <= now < hi:
            return now if is_open else hi
        return self._refresh(key, now)

    def next_window(self, key: int, now: float) -> tuple[float, float]:
        """(opens, closes): the next open interval from ``now`` (``opens`` is ``next_open``);
        ``closes`` may be an early bound when the interval runs on past the days computed, and
        is ``math.inf`` when it never closes or never opens."""
        opens = self.next_open(key, now)
        lo, hi, is_open, after = self._cache[key]
        return opens, (hi if is_open else after)

    def open_until(self, key: int, now: float) -> float:
        """When open at ``now``: the instant it closes (the earliest close across the zones).
        Raises ValueError when it is closed at ``now``."""
        if self.next_open(key, now) != now:
            raise ValueError("quiet hours: closed at now")
        return self._cache[key][1]

    def window_for(self, region: str | None) -> tuple[int, int]:
        """The (start, length) in seconds of the daily window for a region: the region's own,
        else its country's ("US" for "US-FL"), else the default (a rule's days may differ)."""
        if region is not None:
            for r in (region, region.partition("-")[0]):
                if r in self._rules:
                    return _window(self._rules[r].start, self._rules[r].end)
                if r in self._overrides:
                    return self._overrides[r]
        return self._window

    def rule_for(self, region: str | None) -> str | None:
        """The key ("US-FL", "US") of the rule or override that applies to a region, or None
        for the default window."""
        if region is not None:
            for r in (region, region.partition("-")[0]):
                if r in self._rules or r in self._overrides:
                    return r
        return None

    def calendar(self, region: str | None) -> _Calendar:
        """Which window each local day has, for numbers of ``region``."""
        key = self.rule_for(region)
        cal = self._calendars.get((key, region))
        if cal is None:
            if key in self._rules:
                cal = _Calendar.of_rule(self._rules[key], region)
            else:
                cal = _Calendar((self.window_for(region),) * 7, None)
            self._calendars[(key, region)] = cal
        return cal

    # -- behind the cache ------------------------------------------------------------------

    def _refresh(self, key: int, now: float) -> float:
        plan = self._plans.get(key)
        if plan is None:
            zs = self.resolver.zone_set(key)
            plan = self._plans[key] = (tuple(ZoneInfo(z) for z in zs.zones), self.calendar(zs.region))
        answer = _solve(*plan, now)
        cache = self._cache
        if key >= len(cache):
            cache.extend([_NEVER] * (key + 1 - len(cache)))
        cache[key] = answer
        return now if answer[2] else answer[1]


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


class _Calendar:
    """The window of each local day (days since 1970-01-01): a weekly pattern, minus holidays.
    ``always``: open at every instant (a 24-hour window every day, no holidays)."""

    __slots__ = ("always", "_days", "_holidays", "_weekly")

    def __init__(self, weekly: tuple[tuple[int, int] | None, ...], holidays: object | None) -> None:
        self._weekly = weekly  # Monday first
        self._holidays = holidays
        self._days: dict[int, tuple[int, int] | None] = {}
        self.always = holidays is None and all(w is not None and w[1] >= DAY for w in weekly)

    @classmethod
    def of_rule(cls, rule: WindowRule, region: str | None) -> _Calendar:
        weekly = tuple(
            None if day in rule.closed else _window(*rule.days.get(day, (rule.start, rule.end))) for day in WEEKDAYS
        )
        return cls(weekly, _holidays_of(region) if rule.closed_on_holidays else None)

    def on(self, day: int) -> tuple[int, int] | None:
        """(start, length) of local day ``day``'s window, or None: no window that day."""
        try:
            return self._days[day]
        except KeyError:
            pass
        w = self._weekly[(day + 3) % 7]  # 1970-01-01 was a Thursday
        if w is not None and self._holidays is not None and date.fromordinal(_EPOCH_ORDINAL + day) in self._holidays:
            w = None
        if len(self._days) > 4096:  # a long-running process: forget, never grow without bound
            self._days.clear()
        self._days[day] = w
        return w


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=256)
def _holidays_of(region: str | None) -> object | None:
    """The public holidays of a region ("US-TX": federal and Texan; "FR"), or None if the
    ``holidays`` package knows none (the rule's key was checked; a number's state may not be)."""
    import holidays

    if region is None:
        return None
    country, _, sub = region.partition("-")
    supported = holidays.list_supported_countries()
    if country not in supported:
        return None
    return holidays.country_holidays(country, subdiv=sub if sub in supported[country] else None)


def _solve(zones: tuple[ZoneInfo, ...], days: _Calendar, now: float) -> tuple[float, float, bool, float]:
    """(lo, hi, open, after): the answer is the same for every instant in [lo, hi) that holds
    ``now``; when closed, ``after`` is when the opening at ``hi`` closes (or an early bound)."""
    if days.always:
        return -math.inf, math.inf, True, math.inf
    a, b = now - _SPAN, now + _SPAN
    closed_since = a
    for x, y in _open_in(zones, days, a, b):
        if y <= now:
            closed_since = y
        elif x <= now:  # open now; an interval cut at b may go on in the next chunk
            while y == b and b - now < HORIZON:
                more = _open_in(zones, days, b, b + _SPAN)
                b += _SPAN
                if more and more[0][0] == y:
                    y = more[0][1]
            return x, y, True, math.inf
        else:
            return closed_since, x, False, y
    while b - now < HORIZON:  # closed for the rest of the span: look further ahead
        more = _open_in(zones, days, b, b + _SPAN)
        if more:
            return closed_since, more[0][0], False, more[0][1]
        b += _SPAN
    return closed_since, math.inf, False, math.inf


def _open_in(zones: tuple[ZoneInfo, ...], days: _Calendar, a: float, b: float) -> list[Interval]:
    """The intervals of [a, b) when the window is open in all ``zones``, sorted and merged."""
    result: list[Interval] = [(a, b)]
    for zone in zones:
        result = _intersect(result, _zone_open(zone, days, a, b))
        if not result:
            break
    return result


def _zone_open(zone: ZoneInfo, days: _Calendar, a: float, b: float) -> list[Interval]:
    found: list[Interval] = []
    for sa, sb, offset in _segments(zone, a, b):
        day = math.floor((sa + offset) / DAY) - 1  # the day before may have a window running past midnight
        while (midnight := day * DAY - offset) < sb:
            w = days.on(day)
            if w is not None:
                x, y = max(midnight + w[0], sa), min(midnight + w[0] + w[1], sb)
                if x < y:
                    found.append((x, y))
            day += 1
    found.sort()
    out: list[Interval] = []
    for x, y in found:  # merged: the same window across an offset change, or days' windows that meet
        if out and out[-1][1] >= x:
            if y > out[-1][1]:
                out[-1] = (out[-1][0], y)
        else:
            out.append((x, y))
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
