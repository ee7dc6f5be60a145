"""Quiet-hours rules with weekdays and public holidays (gateway/core/quiet_hours.py).

The oracle reads each zone's wall clock and calendar with ``datetime`` and ``holidays``, per
instant, with no intervals and no cache: "open" means inside the window of the local day it
started on, in every zone of the set.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import holidays as holidays_pkg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import default_text, loads
from gateway.core.quiet_hours import QuietHours
from gateway.core.settings import WEEKDAYS, QuietHoursSettings, WindowRule, default_rules
from gateway.core.zones import ZoneResolver

DAY = 86400
CELL = 900  # every window, offset, DST change and midnight below falls on a 15-minute boundary


def at(zone: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(zone)).timestamp()


def local(zone: str, t: float) -> datetime:
    return datetime.fromtimestamp(t, ZoneInfo(zone))


def shipped() -> tuple[QuietHours, ZoneResolver]:
    qh = loads(default_text()).core.quiet_hours
    r = ZoneResolver()
    return QuietHours(r, start=qh.start, end=qh.end, overrides=dict(qh.overrides), rules=dict(qh.rules)), r


# -- the shipped defaults, on days that matter ---------------------------------------------------


def test_france_no_marketing_on_sunday_nor_before_8_nor_from_20() -> None:
    qh, r = shipped()
    key = r.key_for(33612345678)  # a French mobile: Europe/Paris, region FR
    saturday_19 = at("Europe/Paris", 2026, 3, 7, 19, 30)
    assert qh.next_open(key, saturday_19) == saturday_19  # Saturday is a working day (jour ouvrable)
    assert qh.open_until(key, saturday_19) == at("Europe/Paris", 2026, 3, 7, 20, 0)
    sunday_noon = at("Europe/Paris", 2026, 3, 8, 12, 0)
    assert qh.next_open(key, sunday_noon) == at("Europe/Paris", 2026, 3, 9, 8, 0)  # Monday 08:00


def test_france_holiday_defers_to_the_next_working_morning() -> None:
    qh, r = shipped()
    key = r.key_for(33612345678)
    bastille_day = at("Europe/Paris", 2026, 7, 14, 10, 0)  # a Tuesday
    assert qh.next_open(key, bastille_day) == at("Europe/Paris", 2026, 7, 15, 8, 0)
    # Saturday 2026-08-15 (Assumption), then Sunday: Monday 08:00
    assert qh.next_open(key, at("Europe/Paris", 2026, 8, 14, 20, 30)) == at("Europe/Paris", 2026, 8, 17, 8, 0)
    # Easter Monday 2026-04-06 after the Sunday: Tuesday
    assert qh.next_open(key, at("Europe/Paris", 2026, 4, 4, 21, 0)) == at("Europe/Paris", 2026, 4, 7, 8, 0)


def test_france_rule_follows_the_recipients_zone_and_dst() -> None:
    qh, r = shipped()
    # The clocks go forward on Sunday 2026-03-29 (closed): Monday opens at 08:00 CEST
    key = r.key_for(33612345678)
    assert qh.next_open(key, at("Europe/Paris", 2026, 3, 28, 20, 0)) == at("Europe/Paris", 2026, 3, 30, 8, 0)
    # A French number whose recipient lives in Reunion: the French rule, on Reunion's clock
    reunion = r.key_for(33612345678, "Indian/Reunion")
    sunday = at("Indian/Reunion", 2026, 3, 8, 10, 0)
    assert qh.next_open(reunion, sunday) == at("Indian/Reunion", 2026, 3, 9, 8, 0)


def test_india_promotional_window_is_10_to_21() -> None:
    qh, r = shipped()
    key = r.key_for(919812345678)
    assert qh.next_open(key, at("Asia/Kolkata", 2026, 5, 4, 9, 0)) == at("Asia/Kolkata", 2026, 5, 4, 10, 0)
    assert qh.open_until(key, at("Asia/Kolkata", 2026, 5, 4, 10, 0)) == at("Asia/Kolkata", 2026, 5, 4, 21, 0)


def test_texas_sunday_opens_at_noon() -> None:
    qh, r = shipped()
    key = r.key_for(15125550123)  # Austin
    assert r.zone_set(key).region == "US-TX"
    assert qh.next_open(key, at("America/Chicago", 2026, 3, 7, 8, 0)) == at("America/Chicago", 2026, 3, 7, 9, 0)
    assert qh.next_open(key, at("America/Chicago", 2026, 3, 8, 9, 30)) == at("America/Chicago", 2026, 3, 8, 12, 0)


def test_a_rule_at_country_level_uses_the_states_holidays() -> None:
    r = ZoneResolver()
    qh = QuietHours(r, rules={"US": WindowRule(closed_on_holidays=True)})
    tx, ny = r.key_for(15125550123), r.key_for(12125550123)
    # 2026-03-02: Texas Independence Day, a Texan holiday only
    assert qh.next_open(tx, at("America/Chicago", 2026, 3, 2, 12, 0)) == at("America/Chicago", 2026, 3, 3, 8, 0)
    assert qh.next_open(ny, at("America/New_York", 2026, 3, 2, 12, 0)) == at("America/New_York", 2026, 3, 2, 12, 0)


def test_every_shipped_rule_cites_its_source_and_matches_the_embedded_config() -> None:
    rules = default_rules()
    assert all(rule.source for rule in rules.values())
    def bare(rs: dict[str, WindowRule]) -> dict[str, WindowRule]:
        return {k: msgspec.structs.replace(v, source="") for k, v in rs.items()}

    assert bare(loads(default_text()).core.quiet_hours.rules) == bare(rules)
    assert QuietHoursSettings().rules == rules


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[core.quiet_hours.rules.FR]\nclosed = ["mon","tue","wed","thu","fri","sat","sun"]', "at least one day"),
        ("[core.quiet_hours.rules.XX]\nclosed_on_holidays = true", "no public holidays"),
        ('[core.quiet_hours.rules.FR]\ndays = { sun = ["09:00", "09:00"] }', "empty sending window"),
        ('[core.quiet_hours.rules.FR]\ndays = { sunday = ["09:00", "10:00"] }', "rules"),
        ('[core.quiet_hours.rules.FR]\nclosed = ["sun"]\ndays = { sun = ["09:00", "10:00"] }', "both closed"),
        ('[core.quiet_hours.rules.fr]\nstart = "09:00"', "rules"),
        ('[core.quiet_hours.country_zones]\nRU = "Mars/Olympus"', "country_zones.RU"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(toml: str, words: str) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        loads(toml)
    assert words in str(info.value)


# -- the properties, against the wall-clock oracle -------------------------------------------------

POOL = [
    "Europe/Paris", "America/New_York", "America/Chicago", "Australia/Lord_Howe", "Australia/Sydney",
    "Australia/Perth", "Asia/Kolkata", "Europe/Kaliningrad", "America/Sao_Paulo", "Pacific/Chatham",
    "Asia/Kathmandu", "America/St_Johns", "Europe/London", "America/Santiago", "America/Havana",
    "Africa/Casablanca", "Pacific/Auckland",
]  # fmt: skip
REGIONS = ["FR", "US-TX", "US", "IN", "GB", "DE-BY", "AU-NSW", "NZ", "CL", "MA"]


def _transitions() -> list[float]:
    """Instants near which clocks change (or holidays fall), 2025-2027: the anchors of ``now``."""
    out = []
    for name in POOL:
        z = ZoneInfo(name)
        t = datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()
        prev = local(name, t).utcoffset()
        while t < datetime(2028, 1, 1, tzinfo=timezone.utc).timestamp():
            t += 6 * 3600
            off = datetime.fromtimestamp(t, z).utcoffset()
            if off != prev:
                out.append(t)
                prev = off
    for d in holidays_pkg.country_holidays("FR", years=[2025, 2026, 2027]):
        out.append(at("Europe/Paris", d.year, d.month, d.day, 0, 0))
    return out


ANCHORS = _transitions()
# every quarter hour, and "24:00" (the config accepts it; it ends a window at midnight, or as a
# start is the next day's 00:00)
hhmm = st.integers(0, 96).map(lambda q: "24:00" if q == 96 else f"{q // 4:02d}:{q % 4 * 15:02d}")
window = st.tuples(hhmm, hhmm).filter(lambda w: w[0] != w[1])


@st.composite
def rules(draw: st.DrawFn) -> WindowRule:
    start, end = draw(window)
    closed = draw(st.lists(st.sampled_from(WEEKDAYS), max_size=5, unique=True))
    days = draw(st.dictionaries(st.sampled_from([d for d in WEEKDAYS if d not in closed]), window, max_size=3))
    return WindowRule(start=start, end=end, closed=closed, days=days, closed_on_holidays=draw(st.booleans()))


instants = st.tuples(st.sampled_from(ANCHORS), st.integers(-3 * DAY, 3 * DAY)).map(lambda a: float(a[0] + a[1]))


def _calendar_of(region: str):
    country, _, sub = region.partition("-")
    return holidays_pkg.country_holidays(country, subdiv=sub or None)


def _window_on(rule: WindowRule, day: date, hols) -> tuple[int, int] | None:
    name = WEEKDAYS[day.weekday()]
    if name in rule.closed or (rule.closed_on_holidays and day in hols):
        return None
    s, e = (int(x[:2]) * 3600 + int(x[3:]) * 60 for x in rule.days.get(name, (rule.start, rule.end)))
    return s % DAY, (e - s) % DAY or DAY


def oracle_open(zones: list[str], rule: WindowRule, hols, t: float) -> bool:
    for name in zones:
        wall = local(name, t)
        secs = wall.hour * 3600 + wall.minute * 60 + wall.second
        inside = False
        for day, shift in ((wall.date(), 0), (wall.date() - timedelta(days=1), DAY)):
            w = _window_on(rule, day, hols)
            if w is not None and w[0] <= secs + shift < w[0] + w[1]:
                inside = True
        if not inside:
            return False
    return True


def _setup(zones: list[str], rule: WindowRule, region: str):
    r = ZoneResolver()
    key = r.key_for_zones(zones, region)
    return QuietHours(r, start="03:00", end="04:00", rules={region.partition("-")[0]: rule}), key


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True), rules(), st.sampled_from(REGIONS), instants)
def test_next_open_is_open_and_nothing_before_it_is(zones: list[str], rule: WindowRule, region: str, now: float) -> None:
    """No marketing send ever in a closed instant, and the release is the *next* open instant,
    across DST changes, closed days and holidays."""
    qh, key = _setup(zones, rule, region)
    hols = _calendar_of(region)
    got = qh.next_open(key, now)
    assert got >= now
    assert (got == now) == oracle_open(zones, rule, hols, now)
    if got == now:
        until = qh.open_until(key, now)
        t = now
        while t < min(until, now + 2 * DAY):  # open all the way to `until`...
            assert oracle_open(zones, rule, hols, t), (t, until)
            t = (t // CELL + 1) * CELL
        if until < math.inf:  # ...and closed right there
            assert not oracle_open(zones, rule, hols, until)
        return
    t = (now // CELL + 1) * CELL
    while t < min(got, now + 8 * DAY):  # closed all the way to `got`...
        assert not oracle_open(zones, rule, hols, t), (t, got)
        t += CELL
    if got < math.inf:  # ...and open right there, on a boundary
        assert got % CELL == 0 and oracle_open(zones, rule, hols, got)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True), rules(), st.sampled_from(REGIONS),
       instants, st.lists(st.integers(0, 6 * 3600), min_size=1, max_size=30))  # fmt: skip
def test_cached_answers_equal_fresh_ones(zones: list[str], rule: WindowRule, region: str, start: float,
                                         steps: list[int]) -> None:  # fmt: skip
    """The cached interval never answers stale: time moving on (and back) through one object
    gives what a new object gives at each instant."""
    qh, key = _setup(zones, rule, region)
    t = start
    for i, step in enumerate(steps):
        t = t + step if i % 7 else start + step  # mostly forward, sometimes back
        fresh, fkey = _setup(zones, rule, region)
        assert qh.next_open(key, t) == fresh.next_open(fkey, t)


def test_rule_struct_roundtrips_through_toml_names() -> None:
    rule = msgspec.convert({"start": "09:00", "days": {"sun": ["12:00", "21:00"]}, "closed": ["sat"]}, WindowRule)
    assert rule.days == {"sun": ("12:00", "21:00")} and rule.closed == ["sat"]


def test_held_messages_are_released_inside_a_short_window() -> None:
    """The release spread (30 min by default) never pushes a held message past the opening it
    waits for: with a 20-minute window every held message goes that morning, none the next."""
    from gateway.core.model import Job, Recipient
    from gateway.core.scheduler import Scheduler
    from gateway.core.settings import CarrierSettings, CoreSettings, Route

    settings = CoreSettings(
        carriers=[CarrierSettings(name="c", rate=1e6, burst=10**6)], routes=[Route(carriers=["c"])],
        quiet_hours=QuietHoursSettings(start="08:00", end="08:20", overrides={}, rules={}, spread=1800.0),
    )  # fmt: skip
    start = at("Europe/Paris", 2026, 12, 1, 6, 0)
    core = Scheduler(settings, start)
    people = [Recipient(to=f"+336123{i:05d}") for i in range(200)]
    core.admit(Job(id="j", tenant="t", sender="S", template="x", category="marketing"), people, start)
    opens, closes = at("Europe/Paris", 2026, 12, 1, 8, 0), at("Europe/Paris", 2026, 12, 1, 8, 20)
    now, sent = start, {}
    while now < start + DAY and len(sent) < len(people):
        batch = core.take("c", 10_000, now)
        for d in batch.dispatches:
            sent[d.message_id] = now
            core.complete(d.ref)
        wake = core.next_wakeup()
        now = max(wake, now + 1) if wake is not None else now + 60
    assert len(sent) == len(people)
    assert all(opens <= t < closes for t in sent.values())
    assert max(sent.values()) - min(sent.values()) > 60  # still spread, over part of the window
