"""When each recipient's message goes out, who smart sending skips, and the send-time report.

**Schedules** (a tagged union on ``kind``):

- ``now``: every recipient at the launch instant;
- ``at``: every recipient at one UTC instant (``at``, epoch seconds);
- ``local``: ``date`` + ``time`` on each recipient's own wall clock ("10:00 local"): one ``send_at``
  per recipient from their IANA zone (``zoneinfo``). A recipient without a zone, or with a name zoneinfo
  does not know, uses the tenant's zone.

DST, for ``local``: a wall time that does not exist that day (in the spring-forward gap, e.g. 02:30
in Europe/Paris on the last Sunday of March) is sent at the same distance after the gap's start in
the new offset, i.e. 03:30 (the clock reading a person would see had they not moved their watch;
Python's ``fold=0`` rule). A wall time that happens twice (the autumn fold, 02:30 twice) is sent at
its *first* occurrence. If the recipient's wall time is already past at ``now`` (launched at 11:00 in
Tokyo for 10:00 local), ``late`` decides: ``next_day`` (default: the same wall time the next day),
``now`` (right away) or ``skip`` (not sent; ``send_at`` is None).

**Smart sending** skips a recipient whose last marketing message was sent less than ``hours``
(default 16) before *their* ``send_at``: strictly less, so exactly 16 h earlier is sent.

**Send-time report**: how many messages go out in each hour of day, either on the tenant's clock or on
each recipient's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
import datetime as _dt
from datetime import date, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from campaigns.errors import InvalidInput

__all__ = ["At", "Local", "Now", "Schedule", "ScheduleError", "SendTime", "local_instant", "send_times",
           "send_time_report", "smart_send", "tenant_zone", "zone_named"]  # fmt: skip

HOUR = 3600.0
WallTime = _dt.time  # a time of day (named apart from the `time` module the core never reads)


class ScheduleError(InvalidInput):
    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message, code=code, field=field)


class Now(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="now"):
    pass


class At(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="at"):
    at: Annotated[float, msgspec.Meta(ge=0, le=1e11)]


class Local(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="local"):
    date: Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    time: Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    late: Literal["next_day", "now", "skip"] = "next_day"


Schedule = Now | At | Local


_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")


def zone_named(name: str | None) -> ZoneInfo | None:
    """The IANA zone called ``name``, or None for anything else (a path, a directory, junk)."""
    if not name or len(name) > 64 or not _ZONE_NAME.match(name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        return None


def _zone(name: str | None, default: ZoneInfo) -> ZoneInfo:
    return zone_named(name) or default


def tenant_zone(name: str) -> ZoneInfo:
    zone = zone_named(name)
    if zone is None:
        raise ScheduleError("unknown_time_zone", f"unknown time zone {name!r}", field="time_zone")
    return zone


def local_instant(day: date, wall: WallTime, zone: ZoneInfo) -> float:
    """The epoch instant of ``wall`` on ``day`` in ``zone``: gap -> shifted forward, fold -> first."""
    # fold=0 reads a wall time in a gap with the offset from *before* the jump, which lands after the
    # gap at the same distance from its start (02:30 -> 03:30 for a one-hour jump), and a wall time
    # in a fold as its first occurrence (PEP 495).
    return datetime.combine(day, wall).replace(tzinfo=zone, fold=0).timestamp()


def _parse(spec: Local) -> tuple[date, WallTime]:
    try:
        day = date.fromisoformat(spec.date)
        wall = WallTime.fromisoformat(spec.time)
    except ValueError as exc:
        raise ScheduleError("bad_date", f"{spec.date} {spec.time} is not a date and time", field="date") from exc
    if not 1970 <= day.year <= 2200:
        raise ScheduleError("bad_date", f"{spec.date} is out of range (1970-2200)", field="date")
    return day, wall


class SendTime(msgspec.Struct, frozen=True, kw_only=True):
    subscriber: int
    send_at: float | None  # None: not sent (late="skip")
    zone: str


def send_times(
    spec: Schedule,
    recipients: Iterable[tuple[int, str | None]],
    *,
    now: float,
    default_zone: str = "UTC",
) -> list[SendTime]:
    """One ``send_at`` per ``(subscriber, time_zone)``; never earlier than ``now``."""
    fallback = tenant_zone(default_zone)
    names: dict[str | None, str] = {}  # a subscriber's zone name -> the zone it resolves to (once per name)

    def zone_of(z: str | None) -> str:
        name = names.get(z)
        if name is None:
            name = names[z] = str(_zone(z, fallback))
        return name

    match spec:
        case Now():
            return [SendTime(subscriber=s, send_at=now, zone=zone_of(z)) for s, z in recipients]
        case At(at=at):
            send_at = max(at, now)
            return [SendTime(subscriber=s, send_at=send_at, zone=zone_of(z)) for s, z in recipients]
        case Local():
            day, wall = _parse(spec)
            cache: dict[str, float | None] = {}
            out = []
            for s, z in recipients:
                zone = _zone(z, fallback)
                key = str(zone)
                if key not in cache:
                    cache[key] = _local_send_at(day, wall, zone, now, spec.late)
                out.append(SendTime(subscriber=s, send_at=cache[key], zone=key))
            return out
    raise ScheduleError("bad_schedule", f"unknown schedule {spec!r}")


def _local_send_at(day: date, wall: WallTime, zone: ZoneInfo, now: float, late: str) -> float | None:
    at = local_instant(day, wall, zone)
    if at >= now:
        return at
    if late == "now":
        return now
    if late == "skip":
        return None
    nxt = day + timedelta(days=1)
    while (at := local_instant(nxt, wall, zone)) < now:
        nxt += timedelta(days=1)
    return at


def smart_send(
    planned: Iterable[SendTime],
    last_marketing_at: Mapping[int, float | None],
    *,
    hours: float = 16.0,
) -> tuple[list[SendTime], list[SendTime]]:
    """(kept, skipped): skipped when the last marketing send is less than ``hours`` before send_at."""
    window = hours * HOUR
    kept, skipped = [], []
    for p in planned:
        last = last_marketing_at.get(p.subscriber)
        if p.send_at is not None and last is not None and p.send_at - last < window:
            skipped.append(p)
        else:
            kept.append(p)
    return kept, skipped


def send_time_report(
    planned: Iterable[SendTime], *, clock: Literal["tenant", "recipient"] = "tenant", tenant_zone_name: str = "UTC"
) -> list[int]:
    """24 counts: messages sent in each hour of day (0-23) on the chosen clock."""
    counts = [0] * 24
    tz = tenant_zone(tenant_zone_name)
    zones: dict[str, ZoneInfo] = {}
    for p in planned:
        if p.send_at is None:
            continue
        zone = tz if clock == "tenant" else zones.setdefault(p.zone, _zone(p.zone, tz))
        counts[datetime.fromtimestamp(p.send_at, zone).hour] += 1
    return counts
