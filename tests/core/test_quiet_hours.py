"""QuietHours: exact UTC instants around DST changes, multi-zone sets, per-region windows, and
hypothesis properties checked against an independent oracle (zoneinfo wall clocks, by hand)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import quiet_hours as qh_mod
from gateway.core.quiet_hours import QuietHours
from gateway.core.zones import ZoneResolver

NY, PARIS = "America/New_York", "Europe/Paris"


def utc(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()


def local(iso: str, zone: str, fold: int = 0) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo(zone), fold=fold).timestamp()


def make(zones: list[str], **kw) -> tuple[QuietHours, int]:
    r = ZoneResolver()
    return QuietHours(r, **kw), r.key_for_zones(zones)


# -- New York: spring forward 2025-03-09 02:00 EST -> 03:00 EDT (07:00 UTC) --------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc("2025-03-08T13:00"), utc("2025-03-08T13:00")),  # 08:00 EST: open, answers now
        (utc("2025-03-09T02:00"), utc("2025-03-09T12:00")),  # 21:00 EST the evening before
        (utc("2025-03-09T06:30"), utc("2025-03-09T12:00")),  # 01:30 EST, before the jump
        (utc("2025-03-09T07:30"), utc("2025-03-09T12:00")),  # 03:30 EDT, after it
        (utc("2025-03-09T11:59"), utc("2025-03-09T12:00")),  # 07:59 EDT: 08:00 is 12:00 UTC now
        (utc("2025-03-09T12:00"), utc("2025-03-09T12:00")),
        (utc("2025-03-10T00:59:59"), utc("2025-03-10T00:59:59")),  # 20:59:59 EDT: still open
        (utc("2025-03-10T01:00"), utc("2025-03-10T12:00")),  # 21:00 EDT
    ],
)
def test_new_york_spring_forward(now: float, expected: float) -> None:
    qh, key = make([NY])
    assert qh.next_open(key, now) == expected


def test_new_york_closes_at_21_edt_on_the_change_day() -> None:
    qh, key = make([NY])
    assert qh.open_until(key, utc("2025-03-09T12:00")) == utc("2025-03-10T01:00")
    assert qh.open_until(key, utc("2025-03-08T13:00")) == utc("2025-03-09T02:00")  # 21:00 EST


def test_window_start_inside_the_skipped_hour_opens_at_the_jump() -> None:
    # 02:30 does not exist in New York on 2025-03-09: the first instant at or after it is 03:00 EDT.
    qh, key = make([NY], start="02:30", end="21:00")
    assert qh.next_open(key, utc("2025-03-09T06:00")) == utc("2025-03-09T07:00")
    assert qh.next_open(key, utc("2025-03-10T06:00")) == local("2025-03-10T02:30", NY)


# -- New York: fall back 2025-11-02 02:00 EDT -> 01:00 EST (06:00 UTC) --------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc("2025-11-02T01:00"), utc("2025-11-02T13:00")),  # 21:00 EDT the evening before
        (utc("2025-11-02T05:30"), utc("2025-11-02T13:00")),  # 01:30 EDT
        (utc("2025-11-02T06:30"), utc("2025-11-02T13:00")),  # 01:30 EST, the same wall time again
        (utc("2025-11-02T12:59"), utc("2025-11-02T13:00")),  # 07:59 EST
        (utc("2025-11-03T02:00"), utc("2025-11-03T13:00")),  # 21:00 EST
    ],
)
def test_new_york_fall_back(now: float, expected: float) -> None:
    qh, key = make([NY])
    assert qh.next_open(key, now) == expected
    assert local("2025-11-02T08:00", NY) == utc("2025-11-02T13:00")


def test_window_inside_the_repeated_hour_opens_twice() -> None:
    qh, key = make([NY], start="01:15", end="01:45")
    assert qh.next_open(key, utc("2025-11-02T05:00")) == utc("2025-11-02T05:15")  # 01:15 EDT
    assert qh.open_until(key, utc("2025-11-02T05:20")) == utc("2025-11-02T05:45")
    assert qh.next_open(key, utc("2025-11-02T05:50")) == utc("2025-11-02T06:15")  # 01:15 EST
    assert qh.open_until(key, utc("2025-11-02T06:15")) == utc("2025-11-02T06:45")


# -- Paris: 2025-03-30 02:00 CET -> 03:00 CEST, 2025-10-26 03:00 CEST -> 02:00 CET (01:00 UTC) ---


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc("2025-03-29T20:00"), utc("2025-03-30T06:00")),  # 21:00 CET
        (utc("2025-03-30T00:30"), utc("2025-03-30T06:00")),  # 01:30 CET
        (utc("2025-03-30T01:30"), utc("2025-03-30T06:00")),  # 03:30 CEST
        (utc("2025-03-30T05:59"), utc("2025-03-30T06:00")),  # 07:59 CEST
        (utc("2025-03-30T18:59"), utc("2025-03-30T18:59")),  # 20:59 CEST
        (utc("2025-03-30T19:00"), utc("2025-03-31T06:00")),  # 21:00 CEST
        (utc("2025-10-25T19:00"), utc("2025-10-26T07:00")),  # 21:00 CEST
        (utc("2025-10-26T00:30"), utc("2025-10-26T07:00")),  # 02:30 CEST
        (utc("2025-10-26T01:30"), utc("2025-10-26T07:00")),  # 02:30 CET
        (utc("2025-10-26T06:59"), utc("2025-10-26T07:00")),  # 07:59 CET
        (utc("2025-10-26T20:00"), utc("2025-10-27T07:00")),  # 21:00 CET
    ],
)
def test_paris_changes(now: float, expected: float) -> None:
    qh, key = make([PARIS])
    assert qh.next_open(key, now) == expected


def test_paris_closes_an_hour_later_in_utc_after_fall_back() -> None:
    qh, key = make([PARIS])
    assert qh.open_until(key, utc("2025-10-25T12:00")) == utc("2025-10-25T19:00")
    assert qh.open_until(key, utc("2025-10-26T12:00")) == utc("2025-10-26T20:00")


# -- several zones, regions, explicit and unknown zones -----------------------------------------


def test_australian_mobile_opens_when_the_last_zone_opens() -> None:
    r = ZoneResolver()
    qh, key = QuietHours(r), r.key_for(61412345678)  # Cocos (+06:30) .. Lord Howe (+10:30/+11)
    assert qh.next_open(key, utc("2025-06-01T00:00")) == utc("2025-06-01T01:30")  # 08:00 Cocos
    assert qh.open_until(key, utc("2025-06-01T01:30")) == utc("2025-06-01T10:30")  # 21:00 Lord Howe
    assert qh.open_until(key, utc("2025-01-15T01:30")) == utc("2025-01-15T10:00")  # summer: +11


def test_geographic_number_with_two_zones() -> None:
    r = ZoneResolver()
    qh, key = QuietHours(r), r.key_for(12085550123)  # Idaho: Boise (MDT) and Los Angeles (PDT)
    assert qh.next_open(key, utc("2025-07-01T14:30")) == utc("2025-07-01T15:00")  # 08:00 PDT
    assert qh.open_until(key, utc("2025-07-01T15:00")) == utc("2025-07-02T03:00")  # 21:00 MDT


def test_florida_closes_at_20_new_york_at_21() -> None:
    r = ZoneResolver()
    qh = QuietHours(r, overrides={"US-FL": ("08:00", "20:00"), "US-OK": ("08:00", "20:00")})
    fl, ny, ok = r.key_for(13055550123), r.key_for(12125550123), r.key_for(14055550123)
    at = utc("2025-06-02T00:30")  # 20:30 EDT, 19:30 CDT
    assert qh.next_open(fl, at) == utc("2025-06-02T12:00")
    assert qh.next_open(ny, at) == at and qh.open_until(ny, at) == utc("2025-06-02T01:00")
    assert qh.open_until(fl, utc("2025-06-01T12:00")) == utc("2025-06-02T00:00")
    assert qh.open_until(ok, utc("2025-06-01T14:00")) == utc("2025-06-02T01:00")  # 20:00 CDT


def test_most_specific_override_wins() -> None:
    r = ZoneResolver()
    qh = QuietHours(r, overrides={"US": ("09:00", "20:00"), "US-FL": ("08:00", "20:00")})
    assert qh.window_for("US-FL") == (8 * 3600, 12 * 3600)
    assert qh.window_for("US-NY") == (9 * 3600, 11 * 3600)
    assert qh.window_for("FR") == qh.window_for(None) == (8 * 3600, 13 * 3600)
    assert qh.next_open(r.key_for(12125550123), utc("2025-06-01T12:30")) == utc("2025-06-01T13:00")


def test_explicit_zone_overrides_the_number() -> None:
    r = ZoneResolver()
    qh = QuietHours(r)
    kolkata = r.key_for(33612345679, "Asia/Kolkata")
    assert qh.next_open(kolkata, utc("2025-06-01T00:00")) == utc("2025-06-01T02:30")  # 08:00 IST
    assert qh.next_open(r.key_for(33612345679), utc("2025-06-01T00:00")) == utc("2025-06-01T06:00")


def test_unknown_zone_uses_the_default() -> None:
    r = ZoneResolver(default_zone="Asia/Tokyo")
    qh = QuietHours(r)
    assert qh.next_open(r.key_for(80012345678), utc("2025-06-01T22:00")) == utc("2025-06-01T23:00")


def test_windows_that_never_meet() -> None:
    qh, key = make(["UTC", "Asia/Kamchatka"], start="08:00", end="20:00")  # exactly 12 h apart
    assert qh.next_open(key, utc("2025-06-01T12:00")) == math.inf
    with pytest.raises(ValueError):
        qh.open_until(key, utc("2025-06-01T12:00"))


def test_windows_that_meet_only_in_winter() -> None:
    # Shanghai (+8) and New York: 12 h apart in summer (a 12 h window never meets), 13 h in winter.
    qh, key = make(["Asia/Shanghai", NY], start="08:00", end="20:00")
    assert qh.next_open(key, utc("2025-06-01T12:00")) == utc("2025-11-03T00:00")
    assert qh.open_until(key, utc("2025-11-03T00:00")) == utc("2025-11-03T01:00")


def test_window_spanning_the_change_is_one_interval() -> None:
    # 22:00-06:00 around the spring-forward night lasts 7 hours of real time, without a break
    qh, key = make([NY], start="22:00", end="06:00")
    assert qh.open_until(key, utc("2025-03-09T03:00")) == utc("2025-03-09T10:00")  # 06:00 EDT
    assert qh.open_until(key, utc("2025-11-02T02:00")) == utc("2025-11-02T11:00")  # 06:00 EST: 9 h


def test_overnight_and_full_day_windows() -> None:
    qh, key = make([PARIS], start="22:00", end="06:00")
    assert qh.next_open(key, utc("2025-06-01T12:00")) == utc("2025-06-01T20:00")
    assert qh.open_until(key, utc("2025-06-01T20:00")) == utc("2025-06-02T04:00")
    qh, key = make([PARIS], start="00:00", end="24:00")
    assert qh.open_until(key, utc("2025-06-01T12:00")) == math.inf


@pytest.mark.parametrize(("start", "end"), [("08:00", "08:00"), ("8:00", "21:00"), ("08:00", "25:00")])
def test_bad_windows_are_refused(start: str, end: str) -> None:
    with pytest.raises(ValueError):
        QuietHours(ZoneResolver(), start=start, end=end)


def test_warm_calls_answer_from_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    qh, key = make([NY])
    calls = []
    solve = qh_mod._solve
    monkeypatch.setattr(qh_mod, "_solve", lambda *a: calls.append(a[-1]) or solve(*a))
    t0 = utc("2025-03-09T02:00")  # closed until 12:00 UTC
    assert {qh.next_open(key, t0 + s) for s in range(0, 36000, 60)} == {utc("2025-03-09T12:00")}
    assert len(calls) == 1
    # earlier than the cached interval: computed again, not answered from it
    assert qh.next_open(key, utc("2025-03-08T20:00")) == utc("2025-03-08T20:00")
    assert len(calls) == 2


# -- properties against an independent oracle ----------------------------------------------------

ZONES = [
    "UTC", NY, PARIS, "America/Los_Angeles", "America/St_Johns", "America/Santiago",
    "America/Sao_Paulo", "Europe/London", "Europe/Moscow", "Asia/Kolkata", "Asia/Kathmandu",
    "Asia/Tokyo", "Asia/Shanghai", "Australia/Adelaide", "Australia/Lord_Howe", "Australia/Perth",
    "Australia/Eucla", "Pacific/Auckland", "Pacific/Chatham", "Pacific/Kiritimati",
    "Pacific/Pago_Pago", "Pacific/Honolulu", "Asia/Tehran", "Africa/Casablanca",
]  # fmt: skip
WINDOWS = [("08:00", "21:00"), ("08:00", "20:00"), ("22:00", "06:00"), ("01:15", "01:45"), ("02:30", "21:00")]
T0, T1 = utc("2024-01-01T00:00"), utc("2028-01-01T00:00")
instants = st.integers(int(T0) * 4, int(T1) * 4).map(lambda q: q / 4)  # exact binary fractions


def minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def open_everywhere(zones: list[str], window: tuple[str, str], t: float) -> bool:
    s, e = minutes(window[0]) * 60, minutes(window[1]) * 60
    for z in zones:
        wall = datetime.fromtimestamp(t, ZoneInfo(z))
        tod = wall.hour * 3600 + wall.minute * 60 + wall.second + wall.microsecond / 1e6
        inside = s <= tod < e if s < e else (tod >= s or tod < e)
        if not inside:
            return False
    return True


def check(qh: QuietHours, key: int, zones: list[str], window: tuple[str, str], now: float) -> float:
    t = qh.next_open(key, now)
    if t == now:
        assert open_everywhere(zones, window, now)
        until = qh.open_until(key, now)
        assert until > now
        if until == math.inf:  # a 24-hour window: open everywhere, for ever
            assert all(open_everywhere(zones, window, now + 86400 * i / 7) for i in range(1, 15))
            return t
        assert not open_everywhere(zones, window, until)
        for i in range(1, 11):
            assert open_everywhere(zones, window, now + (until - 1e-3 - now) * i / 10)
    elif t < math.inf:
        assert t > now and open_everywhere(zones, window, t)
        probes = [now + (t - now) * i / 21 for i in range(1, 21)] + [t - 1e-3]
        assert not any(open_everywhere(zones, window, p) for p in probes if now < p < t)
    else:
        probes = [now + 3 * 86400 * i / 7 for i in range(1, 7 * 130)]  # ~a year, every 3 days + 10 h
        assert not any(open_everywhere(zones, window, p) for p in probes)
    return t


# Any window the config accepts, to the minute, "24:00" as an end.
_hhmm = st.integers(0, 24 * 60).map(lambda m: f"{m // 60:02d}:{m % 60:02d}")
any_window = st.one_of(st.sampled_from(WINDOWS), st.tuples(_hhmm.filter(lambda x: x != "24:00"), _hhmm).filter(
    lambda w: w[0] != w[1]))
zone_sets = st.lists(st.sampled_from(ZONES), min_size=1, max_size=4, unique=True)


@settings(max_examples=250, deadline=None)
@given(zone_sets, any_window, instants)
def test_next_open_is_correct_and_cache_agrees(zones: list[str], window: tuple[str, str], now: float) -> None:
    qh, key = make(zones, start=window[0], end=window[1])
    t = check(qh, key, zones, window, now)
    assert qh.next_open(key, now) == t  # cached
    fresh, fkey = make(zones, start=window[0], end=window[1])
    assert fresh.next_open(fkey, now) == t  # uncached


@settings(max_examples=60, deadline=None)
@given(zone_sets, st.sampled_from(WINDOWS[:3]), st.lists(instants, min_size=2, max_size=12), st.booleans())
def test_cache_never_answers_from_a_stale_interval(
    zones: list[str], window: tuple[str, str], nows: list[float], descending: bool
) -> None:
    """Many calls on one object, in decreasing order or in clusters near the first instant."""
    qh, key = make(zones, start=window[0], end=window[1])
    if descending:
        seq = sorted(nows, reverse=True)
    else:
        seq = [nows[0] + (x - nows[0]) % (3 * 86400) for x in nows]  # close by: hits and misses
    for now in seq:
        fresh, fkey = make(zones, start=window[0], end=window[1])
        assert qh.next_open(key, now) == fresh.next_open(fkey, now)
        check(qh, key, zones, window, now)
