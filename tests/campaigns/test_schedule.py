"""Schedules (campaigns/core/schedule.py): "10:00 local" per recipient zone, DST gaps and folds, late
zones, "now" and "at", smart sending at its edge, and the send-time report by hour of day."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, available_timezones

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.schedule import (
    At,
    Local,
    Now,
    Schedule,
    ScheduleError,
    SendTime,
    local_instant,
    send_time_report,
    send_times,
    smart_send,
)

NOW = datetime(2026, 6, 20, 0, 0, tzinfo=timezone.utc).timestamp()
ZONES = sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/", "posix/", "right/")))


def utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, timezone.utc)


def test_ten_local_is_ten_on_each_recipients_clock() -> None:
    spec = Local(date="2026-06-21", time="10:00")
    plan = send_times(spec, [(1, "Europe/Paris"), (2, "Asia/Shanghai"), (3, "America/New_York"), (4, "Asia/Kolkata")], now=NOW)
    assert [utc(p.send_at).strftime("%H:%M") for p in plan] == ["08:00", "02:00", "14:00", "04:30"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ZONES), st.dates(date(2024, 1, 1), date(2030, 12, 31)), st.times().map(lambda t: t.replace(second=0, microsecond=0)))
def test_local_wall_time_is_kept_unless_the_day_skips_it(zone_name: str, day: date, wall: time) -> None:
    zone = ZoneInfo(zone_name)
    at = local_instant(day, wall, zone)
    local = datetime.fromtimestamp(at, zone)
    naive = datetime.combine(day, wall)
    if local.replace(tzinfo=None) != naive:
        # Only a gap may move the time, and only forward, by the gap's length (at most a day: Samoa 2011).
        shift = local.replace(tzinfo=None) - naive
        assert timedelta(0) < shift <= timedelta(days=1)
        before = datetime.fromtimestamp(at - 1, zone).utcoffset()
        assert before is not None and local.utcoffset() is not None and local.utcoffset() - before == shift
    else:
        # In a fold, the first of the two instants.
        for delta in (1800, 3600, 7200):
            assert datetime.fromtimestamp(at - delta, zone).replace(tzinfo=None) != naive


def test_dst_gap_moves_forward_and_fold_takes_the_first() -> None:
    paris = ZoneInfo("Europe/Paris")
    gap = local_instant(date(2026, 3, 29), time(2, 30), paris)
    assert utc(gap) == datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)  # 03:30 CEST
    fold = local_instant(date(2026, 10, 25), time(2, 30), paris)
    assert utc(fold) == datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)  # the first 02:30 (CEST)
    ny = ZoneInfo("America/New_York")
    assert utc(local_instant(date(2026, 3, 8), time(2, 15), ny)) == datetime(2026, 3, 8, 7, 15, tzinfo=timezone.utc)
    assert utc(local_instant(date(2026, 11, 1), time(1, 30), ny)) == datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(("late", "expected"), [("next_day", "2026-06-22 02:00"), ("now", "2026-06-21 09:00"), ("skip", None)])
def test_a_zone_already_past_the_time(late: str, expected: str | None) -> None:
    now = datetime(2026, 6, 21, 9, 0, tzinfo=timezone.utc).timestamp()  # 17:00 in Shanghai
    [p] = send_times(Local(date="2026-06-21", time="10:00", late=late), [(1, "Asia/Shanghai")], now=now)  # type: ignore[arg-type]
    assert (utc(p.send_at).strftime("%Y-%m-%d %H:%M") if p.send_at is not None else None) == expected


def test_missing_or_unknown_zone_uses_the_tenant_zone_and_a_bad_tenant_zone_is_an_error() -> None:
    spec = Local(date="2026-06-21", time="10:00")
    junk = ["Mars/Olympus", "../etc", "Europe", "/etc/passwd", "a" * 5000, "x\x00y", "Europe/", " UTC", "europe/paris"]
    plan = send_times(spec, [(1, None), *((i + 2, z) for i, z in enumerate(junk))], now=NOW, default_zone="Europe/Bucharest")
    assert {utc(p.send_at).hour for p in plan} == {7}
    assert {p.zone for p in plan} == {"Europe/Bucharest"}
    for bad in ("Nowhere/Land", "Europe", "a" * 300):
        with pytest.raises(ScheduleError) as err:
            send_times(spec, [(1, None)], now=NOW, default_zone=bad)
        assert err.value.code == "unknown_time_zone"


def test_now_and_at() -> None:
    assert [p.send_at for p in send_times(Now(), [(1, "Asia/Tokyo"), (2, None)], now=NOW)] == [NOW, NOW]
    assert [p.send_at for p in send_times(At(at=NOW + 60), [(1, None)], now=NOW)] == [NOW + 60]
    assert [p.send_at for p in send_times(At(at=NOW - 60), [(1, None)], now=NOW)] == [NOW]  # never in the past


def test_schedules_decode_from_json_with_clear_errors() -> None:
    dec = msgspec.json.Decoder(Schedule)
    assert dec.decode(b'{"kind":"local","date":"2026-06-21","time":"10:00"}') == Local(date="2026-06-21", time="10:00")
    for bad in (b'{"kind":"local","date":"2026-06-21","time":"25:00"}', b'{"kind":"soon"}', b'{"kind":"at"}'):
        with pytest.raises(msgspec.ValidationError):
            dec.decode(bad)
    for day in ("2026-02-30", "9999-12-31", "0001-01-01"):
        with pytest.raises(ScheduleError) as err:
            send_times(Local(date=day, time="10:00"), [(1, "Pacific/Kiritimati")], now=NOW)
        assert err.value.code == "bad_date"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 50), st.sampled_from(["Asia/Tokyo", "Europe/Paris", "America/Denver", None])), unique_by=lambda r: r[0], max_size=30),
    st.sampled_from(["10:00", "02:30", "23:59", "00:00"]),
    st.integers(0, 72 * 3600),
)
def test_every_send_at_is_on_time_and_not_in_the_past(recipients: list, wall: str, launch_offset: int) -> None:
    now = NOW + launch_offset
    plan = send_times(Local(date="2026-06-21", time=wall), recipients, now=now, default_zone="UTC")
    assert [p.subscriber for p in plan] == [s for s, _z in recipients]
    for p in plan:
        assert p.send_at is not None and now <= p.send_at <= max(now + 86_400 + 3600, NOW + 56 * 3600)
        local = datetime.fromtimestamp(p.send_at, ZoneInfo(p.zone))
        assert local.strftime("%H:%M") == wall


def test_smart_sending_skips_within_16_hours_strictly() -> None:
    send_at = NOW + 10 * 3600
    plan = [SendTime(subscriber=i, send_at=send_at, zone="UTC") for i in range(5)]
    last = {0: None, 1: send_at - 16 * 3600, 2: send_at - 16 * 3600 + 1, 3: send_at - 3600}
    kept, skipped = smart_send(plan, last)
    assert [p.subscriber for p in kept] == [0, 1, 4]
    assert [p.subscriber for p in skipped] == [2, 3]
    kept24, _ = smart_send(plan, last, hours=24)
    assert [p.subscriber for p in kept24] == [0, 4]


@given(st.lists(st.tuples(st.integers(0, 10**6), st.one_of(st.none(), st.integers(0, 10**6))), max_size=40), st.integers(1, 48))
def test_smart_sending_partitions_by_the_rule(rows: list[tuple[int, int | None]], hours: int) -> None:
    plan = [SendTime(subscriber=i, send_at=float(at), zone="UTC") for i, (at, _l) in enumerate(rows)]
    last = {i: (None if l is None else float(l)) for i, (_a, l) in enumerate(rows)}
    kept, skipped = smart_send(plan, last, hours=hours)
    assert len(kept) + len(skipped) == len(plan)
    for p in skipped:
        assert last[p.subscriber] is not None and p.send_at - last[p.subscriber] < hours * 3600  # type: ignore[operator]
    for p in kept:
        assert last[p.subscriber] is None or p.send_at - last[p.subscriber] >= hours * 3600  # type: ignore[operator]


def test_send_time_report_by_hour_on_either_clock() -> None:
    spec = Local(date="2026-06-21", time="10:00")
    plan = send_times(spec, [(1, "Asia/Shanghai"), (2, "Asia/Shanghai"), (3, "Europe/Paris"), (4, None)], now=NOW)
    by_tenant = send_time_report(plan, tenant_zone_name="Asia/Shanghai")
    assert sum(by_tenant) == 4 and by_tenant[10] == 2 and by_tenant[16] == 1 and by_tenant[18] == 1
    assert send_time_report(plan, clock="recipient")[10] == 4
    skipped = [SendTime(subscriber=9, send_at=None, zone="UTC")]
    assert sum(send_time_report(skipped)) == 0
