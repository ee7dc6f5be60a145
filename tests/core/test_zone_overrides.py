"""Corrections to phonenumbers' zones, and the per-country "all"/"main" choice
(gateway/core/zone_overrides.py, through ZoneResolver)."""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType
from phonenumbers.tzdata import TIMEZONE_DATA

from gateway.config import loads
from gateway.core import zone_overrides as zo
from gateway.core.zones import ZoneResolver
from gateway.errors import ConfigError


def zones_of(e164: str, r: ZoneResolver | None = None) -> tuple[str, ...]:
    r = ZoneResolver() if r is None else r  # (an empty resolver is falsy: it has a length)
    return r.zone_set(r.key_for(int(e164[1:]))).zones


def offsets(zones: tuple[str, ...], when: datetime) -> set:
    return {when.replace(tzinfo=ZoneInfo(z)).utcoffset() for z in zones}


JULY, JANUARY = datetime(2026, 7, 15, 12), datetime(2026, 1, 15, 12)


# -- the table -----------------------------------------------------------------------------------


def test_every_entry_names_real_zones_and_a_source() -> None:
    for prefix, (zones, source) in zo.PREFIX_ZONES.items():
        assert prefix.isdigit() and len(source) > 40, prefix
        for z in zones:
            assert z == zo.COUNTRY or ZoneInfo(z), z
    for (cc, wrong), right in zo.ZONE_FIXES.items():
        assert ZoneInfo(wrong) and ZoneInfo(right) and cc.isdigit()
    for country, ranked in zo.MAIN_ZONES.items():
        assert len(set(ranked)) == len(ranked)
        for z in ranked:
            ZoneInfo(z)
        assert set(ranked) & zo.country_zones(country), country


@pytest.mark.parametrize(
    ("number", "zone"),
    [
        ("+74012123456", "Europe/Kaliningrad"),  # phonenumbers: Europe/Bucharest (EU summer time)
        ("+74015212345", "Europe/Kaliningrad"),  # an oblast number, not the city
        ("+78452123456", "Europe/Saratov"),  # phonenumbers: Europe/Moscow, an hour off since 2016
    ],
)
def test_wrong_ranges_get_their_real_zone_all_year(number: str, zone: str) -> None:
    got = zones_of(number)
    assert got == (zone,)
    for when in (JULY, JANUARY):
        assert offsets(got, when) == offsets((zone,), when)


def test_indonesian_mobiles_may_be_in_any_of_the_countrys_zones() -> None:
    for number in ("+6281234567890", "+6285212345678", "+6289912345678", "+6281112345678"):
        got = set(zones_of(number))
        assert {"Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"} <= got, number
    assert zones_of("+62215551234") == ("Asia/Jakarta",)  # a Jakarta landline stays in Jakarta


def test_kazakh_numbers_get_kazakh_time_not_all_of_plus_7() -> None:
    from datetime import timedelta

    for number in ("+77011234567", "+77272123456", "+77172123456"):
        got = zones_of(number)
        assert offsets(got, JULY) == offsets(got, JANUARY) == {timedelta(hours=5)}, number


def test_bucharest_never_appears_for_a_plus_7_number() -> None:
    rnd = random.Random(3)
    for prefix in ("79", "7401", "740", "7495", "7800", "7", "73", "74", "78"):
        for _ in range(40):
            digits = prefix + "".join(rnd.choice("0123456789") for _ in range(11 - len(prefix)))
            assert "Europe/Bucharest" not in zones_of("+" + digits), digits


# -- the classes: never the first zone -------------------------------------------------------------


def _under() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key, zones in TIMEZONE_DATA.items():
        for n in range(1, len(key)):
            out.setdefault(key[:n], set()).update(zones)
    return out


UNDER = _under()
MULTI = sorted(k for k, zones in TIMEZONE_DATA.items() if UNDER.get(k, set()) - set(zones) and len(k) > 3)


def test_the_class_exists_in_the_installed_data() -> None:
    assert "1850" in MULTI and "1219" in MULTI and len(MULTI) > 20


@pytest.mark.parametrize("key", MULTI)
def test_an_unlisted_exchange_gets_every_zone_of_its_area_code(key: str) -> None:
    """A valid geographic number under ``key`` that no longer key lists gets the zones of
    ``key`` and of every key under it, not ``key``'s own (e.g. +1 850: New York *and* Chicago)."""
    rnd, r = random.Random(key), ZoneResolver()
    longer = [k for k in TIMEZONE_DATA if k.startswith(key) and k != key]
    tried = 0
    for _ in range(400):
        digits = key + "".join(rnd.choice("0123456789") for _ in range(11 - len(key)))
        if any(digits.startswith(k) for k in longer):
            continue
        num = phonenumbers.parse("+" + digits)
        if not phonenumbers.is_valid_number(num) or zo.prefix_zones(digits) is not None:
            continue
        tried += 1
        got = set(zones_of("+" + digits, r))
        want = {zo.ZONE_FIXES.get((str(num.country_code), z), z) for z in set(TIMEZONE_DATA[key]) | UNDER[key]}
        assert want <= got, digits
        if tried >= 3:
            break


def _cc_examples() -> list[tuple[int, str]]:
    out = []
    for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        if len(TIMEZONE_DATA.get(str(cc), ())) < 2 or regions[0] == "001":
            continue
        for t in (PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE):
            ex = phonenumbers.example_number_for_type(regions[0], t)
            if ex is not None and not phonenumbers.is_number_type_geographical(phonenumbers.number_type(ex), cc):
                out.append((cc, phonenumbers.format_number(ex, phonenumbers.PhoneNumberFormat.E164)))
    return out


@pytest.mark.parametrize(("cc", "number"), _cc_examples())
def test_a_nationwide_number_gets_every_zone_of_its_country(cc: int, number: str) -> None:
    got = set(zones_of(number))
    listed = {zo.ZONE_FIXES.get((str(cc), z), z) for z in TIMEZONE_DATA[str(cc)]}
    assert listed <= got
    region = phonenumbers.region_code_for_number(phonenumbers.parse(number))
    if cc != 1:  # NANP non-geographic ranges are NANP-wide: phonenumbers' list, not one country's
        own = zo.country_zones(region)
        assert offsets(tuple(own), JULY) <= offsets(tuple(got), JULY), number


# -- "all" or "main", and the recipient's own zone --------------------------------------------------


def test_main_zone_choice_per_country() -> None:
    allz, main = ZoneResolver(), ZoneResolver(country_zones={"RU": "main", "AU": "Australia/Perth", "US": "main"})
    assert len(zones_of("+79161234567", allz)) > 10
    assert zones_of("+79161234567", main) == ("Europe/Moscow",)
    assert zones_of("+61412345678", main) == ("Australia/Perth",)
    assert zones_of("+18005550123", main) == ("America/New_York",)
    assert len(zones_of("+77011234567", main)) > 1  # Kazakhstan was not chosen: all its zones
    assert zones_of("+12125550123", main) == ("America/New_York",)  # one zone: nothing to choose
    # a recipient's own zone wins over both
    k = main.key_for(79161234567, "Asia/Vladivostok")
    assert main.zone_set(k).zones == ("Asia/Vladivostok",) and main.zone_set(k).region == "RU"


def test_main_choice_among_the_numbers_zones_only() -> None:
    r = ZoneResolver(country_zones={"US": "Pacific/Honolulu"})
    assert zones_of("+12195550123", r) == ("America/Chicago", "America/New_York")  # Honolulu is not one of them


def test_country_zones_come_from_the_config() -> None:
    cfg = loads('[core.quiet_hours.country_zones]\nRU = "main"\nAU = "all"')
    from gateway.core.scheduler import Scheduler

    core = Scheduler(cfg.core, 0.0)
    assert zones_of("+79161234567", core.resolver) == ("Europe/Moscow",)
    with pytest.raises(ConfigError, match="country_zones"):
        loads('[core.quiet_hours.country_zones]\nRU = "most"')
    with pytest.raises(ConfigError, match="country_zones"):
        loads('[core.quiet_hours.country_zones]\nRussia = "main"')
