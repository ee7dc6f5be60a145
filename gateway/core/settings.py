"""The delivery core's settings: typed, validated, with the defaults a production gateway expects.

These Structs are the ``[core]``-level parts of the TOML tree (``gateway.config``); the core
itself only ever sees these, already decoded and checked.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
    "CapSettings",
    "CarrierSettings",
    "CategoryPolicy",
    "CoreSettings",
    "QuietHoursSettings",
    "Route",
    "WindowRule",
    "default_categories",
    "default_rules",
]

HHMM = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class CategoryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one message category is treated. Lower ``priority`` goes first."""

    priority: Annotated[int, msgspec.Meta(ge=0, le=9)]
    quiet_hours: bool = False
    weekly_cap: bool = False
    suppressible: bool = True  # opted-out recipients get none of these


def default_categories() -> dict[str, CategoryPolicy]:
    return {
        "otp": CategoryPolicy(priority=0, suppressible=False),
        "transactional": CategoryPolicy(priority=1, suppressible=False),
        "marketing": CategoryPolicy(priority=2, quiet_hours=True, weekly_cap=True),
    }


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A country ("FR"), or an ISO 3166-2 region ("US-FL") as gateway.core.zones names them.
RegionKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")]


class WindowRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A region's sending rule: a daily window, other windows on some days, days with none."""

    start: HHMM = "08:00"
    end: HHMM = "21:00"
    days: dict[Weekday, tuple[HHMM, HHMM]] = {}  # these days' own window instead of start-end
    closed: list[Weekday] = []  # no window at all on these days
    # No window on the region's public holidays (the `holidays` package: the country's, and the
    # recipient's state or province where the number says it and the package knows it).
    closed_on_holidays: bool = False
    source: str = ""  # where the rule comes from (documentation only)

    def __post_init__(self) -> None:
        if set(self.closed) >= set(WEEKDAYS):
            raise ValueError("a rule must leave at least one day open")
        if both := sorted(set(self.closed) & self.days.keys()):
            raise ValueError(f"{', '.join(both)}: both closed and given a window")
        for day, (s, e) in [(None, (self.start, self.end)), *self.days.items()]:
            if s == e:
                raise ValueError(f"empty sending window {s}-{e}" + (f" on {day}" if day else ""))


def default_rules() -> dict[str, WindowRule]:
    return {
        "FR": WindowRule(
            start="08:00", end="20:00", closed=["sun"], closed_on_holidays=True,
            source="AF2M (French mobile operators' association), code of practice for SMS marketing: "
                   "no promotional SMS on Sundays and public holidays, nor before 08:00 or after 20:00",
        ),
        "IN": WindowRule(
            start="10:00", end="21:00",
            source="TRAI Telecom Commercial Communications Customer Preference Regulations 2018 "
                   "(TCCCPR), Schedule-I: promotional messages only between 10:00 and 21:00",
        ),
        "US-TX": WindowRule(
            start="09:00", end="21:00", days={"sun": ("12:00", "21:00")},
            source="Texas Business and Commerce Code 301.051: telephone solicitations 09:00-21:00 Monday to "
                   "Saturday, 12:00-21:00 on Sunday; SB 140 (2023) brought text messages under the chapter",
        ),
    }  # fmt: skip


class QuietHoursSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Capped categories go out only between ``start`` and ``end`` in the recipient's local time."""

    start: HHMM = "08:00"
    end: HHMM = "21:00"
    # Region ("US-FL") or country ("FR") -> [start, end]; the most specific wins.
    overrides: dict[RegionKey, tuple[HHMM, HHMM]] = msgspec.field(
        default_factory=lambda: {"US-FL": ("08:00", "20:00"), "US-OK": ("08:00", "20:00")}
    )
    # Region or country -> a rule with days and holidays; at the same key, a rule wins over an
    # override. The most specific key that has either wins.
    rules: dict[RegionKey, WindowRule] = msgspec.field(default_factory=default_rules)
    # Country -> "all" (a number must be inside the window in every zone it may be in: the
    # default, never early or late, but a Russian mobile's window is short or empty), "main"
    # (the zone most of the country lives in, among the number's zones), or an IANA zone.
    # A recipient's own zone (`tz` or `zone` in the API) always wins over both.
    country_zones: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")], str] = {}
    # Messages held overnight are released spread over this many seconds after the opening.
    spread: Annotated[float, msgspec.Meta(ge=0)] = 1800.0
    default_zone: str = "UTC"  # for numbers whose zone is unknown

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo

        for country, choice in self.country_zones.items():
            if choice not in ("all", "main"):
                try:
                    ZoneInfo(choice)
                except (ValueError, LookupError) as exc:
                    raise ValueError(f"country_zones.{country}: {choice!r} is neither all, main nor a time zone") from exc
        for key, rule in self.rules.items():
            if rule.closed_on_holidays:
                _check_holidays(key)


def _check_holidays(key: str) -> None:
    import holidays

    country, _, sub = key.partition("-")
    supported = holidays.list_supported_countries()
    if country not in supported:
        raise ValueError(f"rules.{key}: no public holidays known for {country!r} (the holidays package)")
    if sub and sub not in supported[country]:
        raise ValueError(f"rules.{key}: no public holidays known for subdivision {sub!r} of {country}")


class CapSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1)] = 3
    window_days: Positive = 7.0
    policy: Literal["drop", "wait"] = "drop"  # over the cap: end as `capped`, or wait for a slot


class CarrierSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The core's view of a carrier: its rate in segments per second and its burst."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    rate: Positive = 100.0
    burst: Annotated[int, msgspec.Meta(ge=1)] = 100
    # No bind up this many seconds: the carrier is marked down and its routes' next carriers
    # take its traffic (gateway/runtime/health.py).
    down_after: Positive = 5.0
    # The numbering context of the carrier's inbound senders and receipt addresses: national
    # numbers ("2125550191", SMPP TON 2) are read in this ISO region ("US"). None: only
    # international numbers are understood (docs/COMPLIANCE.md, "One canonical number per person").
    default_region: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")] | None = None
    # What one segment costs on this carrier, in minor units of the operator's currency (cents);
    # ``POST /v1/preview`` prices a text with it. None: not configured (the preview says null).
    price_per_segment: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None


class Route(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Numbers starting with ``prefix`` (digits of E.164, '' = any) go to ``carriers`` in order."""

    prefix: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{0,15}$")] = ""
    carriers: Annotated[list[str], msgspec.Meta(min_length=1)]


class CoreSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    shards: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    max_segments: Annotated[int, msgspec.Meta(ge=1, le=63)] = 10
    smart_encoding: bool = True
    categories: dict[str, CategoryPolicy] = msgspec.field(default_factory=default_categories)
    quiet_hours: QuietHoursSettings = msgspec.field(default_factory=QuietHoursSettings)
    weekly_cap: CapSettings = msgspec.field(default_factory=CapSettings)
    carriers: list[CarrierSettings] = msgspec.field(
        default_factory=lambda: [CarrierSettings(name="default")]
    )
    routes: list[Route] = msgspec.field(default_factory=lambda: [Route(carriers=["default"])])

    def __post_init__(self) -> None:
        names = [c.name for c in self.carriers]
        if len(set(names)) != len(names):
            raise ValueError(f"carrier names must be unique, got {names}")
        for c in self.carriers:
            if c.burst < self.max_segments:
                raise ValueError(
                    f"carrier {c.name!r}: burst {c.burst} must be >= max_segments "
                    f"{self.max_segments}, or its longest messages could never go"
                )
        for r in self.routes:
            unknown = [n for n in r.carriers if n not in names]
            if unknown:
                raise ValueError(f"route {r.prefix!r} names unknown carriers {unknown}")
        if not self.categories:
            raise ValueError("at least one category is needed")
