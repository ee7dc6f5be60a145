"""Corrections to phonenumbers' time-zone data, and which zone most of a country lives in.

phonenumbers' ``tzdata`` maps number prefixes to IANA zones. Quiet hours trust it, so its known
errors become sends at the wrong hour. Three classes of error are corrected here, each entry
with its source:

1. **Wrong zone for a range** (``PREFIX_ZONES``): a prefix whose numbers all get a wrong or too
   narrow answer. Kaliningrad (+7 401) maps to Europe/Bucharest, which keeps EU summer time
   while Kaliningrad stays at UTC+2 all year: one hour off every summer. Indonesian mobiles
   (+62 8) are treated as geographic and get Asia/Jakarta only, though the operators' ranges are
   nationwide across three (four, with Pontianak's entry) zones. Kazakh numbers (+7 7) get all of
   +7's zones, Kaliningrad to Kamchatka. The value ``COUNTRY`` means
   "every zone of the country" (see 3).
2. **The first zone for an unlisted exchange**: the table lists some exchanges of a multi-zone
   area code (+1 850: Tallahassee in New York's zone, Pensacola in Chicago's) and gives the area
   code's own entry, one zone, to every exchange it does not list. ``gateway.core.zones`` gives
   such a number the union of every zone listed under its area code instead: never one guess.
3. **The country's zones**: a number whose zone phonenumbers knows only as "its country"
   (non-geographic ranges, nationwide mobiles, numbers newer than the installed metadata) gets
   every zone of its calling code: phonenumbers' list (fixed by ``ZONE_FIXES``) plus every zone
   tzdata's ``zone.tab`` lists for the code's countries (``country_zones``; a link such as
   Asia/Calcutta = Asia/Kolkata counted once, ``merge_zones``). For a shared code that is wider
   than one country (+61 mobiles also get Christmas Island's zone): the safe side, since the
   number does not say where a mobile is. NANP (+1) keeps phonenumbers' list: its
   non-geographic ranges (toll-free 8XX, 5XX) are NANP-wide.

``MAIN_ZONES``: for operators who choose "the zone most of the population lives in" for a
country (``[core.quiet_hours] country_zones``), the country's zones ranked by population; the
first one in a number's zone set is used. Figures are the national statistics offices' census
or estimates, rounded (sources per entry).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = [
    "COUNTRY", "MAIN_ZONES", "PREFIX_ZONES", "ZONE_FIXES", "country_zones", "extends_an_override", "fix_zones",
    "main_zone", "merge_zones", "prefix_zones",
]  # fmt: skip

COUNTRY = "*country*"

# E.164 prefix -> (zones, source). A prefix here decides the zones of every number under it,
# whatever its type; the longest matching prefix wins.
PREFIX_ZONES: dict[str, tuple[tuple[str, ...], str]] = {
    "7401": (("Europe/Kaliningrad",),
             "Kaliningrad Oblast area codes 401xx (Rossvyaz numbering plan); phonenumbers maps them to "
             "Europe/Bucharest (EU DST), Kaliningrad is UTC+2 all year since 2014 (tzdata Europe/Kaliningrad)"),
    "77": (("Asia/Almaty", "Asia/Aqtau", "Asia/Aqtobe", "Asia/Atyrau", "Asia/Oral", "Asia/Qostanay",
            "Asia/Qyzylorda"),
           "+7 7 is Kazakhstan's (phonenumbers metadata KZ; tzdata zone.tab KZ, one offset, UTC+5, since "
           "2024-03-01); phonenumbers gives its nationwide ranges the whole +7 list, Kamchatka included"),
    "628": ((COUNTRY,),
            "Indonesian mobile ranges 08xx are allocated per operator, nationwide (Kominfo numbering plan); "
            "phonenumbers treats ID mobiles as geographic and answers Asia/Jakarta only"),
    "7845": (("Europe/Saratov",),
             "Saratov Oblast (area code 845, Rossvyaz) moved from UTC+3 to UTC+4 on 2016-12-04 (federal law "
             "of 2016-11-22, tzdata Europe/Saratov); phonenumbers still maps +7 845 to Europe/Moscow"),
}  # fmt: skip

# (calling code, zone phonenumbers gives) -> the zone it means. Applied to every answer.
ZONE_FIXES: dict[tuple[str, str], str] = {
    ("7", "Europe/Bucharest"): "Europe/Kaliningrad",  # see PREFIX_ZONES["7401"]
}

# Country -> its zones by population, largest first (the "main" choice takes the first one
# present in a number's zone set). Sources: national statistics offices, rounded shares.
MAIN_ZONES: dict[str, tuple[str, ...]] = {
    # Rosstat 2021 census: ~2/3 of Russians live in Moscow time (UTC+3).
    "RU": ("Europe/Moscow", "Asia/Yekaterinburg", "Europe/Samara", "Asia/Novosibirsk", "Asia/Krasnoyarsk",
           "Asia/Omsk", "Asia/Irkutsk", "Asia/Vladivostok", "Europe/Kaliningrad", "Asia/Yakutsk",
           "Asia/Sakhalin", "Asia/Magadan", "Asia/Kamchatka", "Asia/Anadyr"),
    # US Census Bureau 2020: Eastern ~47 %, Central ~29 %, Pacific ~17 %, Mountain ~7 %.
    "US": ("America/New_York", "America/Chicago", "America/Los_Angeles", "America/Denver", "America/Phoenix",
           "America/Boise", "America/Anchorage", "Pacific/Honolulu", "America/Adak"),
    # Statistics Canada 2021: Ontario and Quebec (Eastern) ~61 %.
    "CA": ("America/Toronto", "America/Vancouver", "America/Edmonton", "America/Winnipeg", "America/Halifax",
           "America/Regina", "America/St_Johns"),
    # ABS 2021 census: NSW, Victoria, ACT, Tasmania (Sydney's rules) ~58 %.
    "AU": ("Australia/Sydney", "Australia/Melbourne", "Australia/Brisbane", "Australia/Perth",
           "Australia/Adelaide", "Australia/Hobart", "Australia/Darwin"),
    # IBGE 2022 census: Brasília time (UTC-3) ~93 %.
    "BR": ("America/Sao_Paulo", "America/Manaus", "America/Cuiaba", "America/Rio_Branco", "America/Noronha"),
    # INEGI 2020 census: central zone ~75 %.
    "MX": ("America/Mexico_City", "America/Monterrey", "America/Tijuana", "America/Mazatlan", "America/Cancun"),
    # BPS 2020 census: Java and Sumatra (WIB, UTC+7) ~78 %.
    "ID": ("Asia/Jakarta", "Asia/Makassar", "Asia/Pontianak", "Asia/Jayapura"),
    # Bureau of National Statistics 2021: one zone (UTC+5) since 2024-03-01; Almaty first.
    "KZ": ("Asia/Almaty", "Asia/Qyzylorda", "Asia/Aqtobe", "Asia/Aqtau", "Asia/Atyrau", "Asia/Oral", "Asia/Qostanay"),
    # INS estimates: western provinces incl. Kinshasa (UTC+1) vs eastern (UTC+2) roughly even;
    # Kinshasa, the largest city, first.
    "CD": ("Africa/Kinshasa", "Africa/Lubumbashi"),
    # NSO Mongolia 2020: Ulaanbaatar alone holds ~half the population.
    "MN": ("Asia/Ulaanbaatar", "Asia/Hovd", "Asia/Choibalsan"),
}  # fmt: skip


def prefix_zones(digits: str) -> tuple[str, tuple[str, ...]] | None:
    """The longest ``PREFIX_ZONES`` entry ``digits`` starts with: (prefix, zones), or None."""
    for n in range(min(len(digits), _LONGEST), 0, -1):
        hit = PREFIX_ZONES.get(digits[:n])
        if hit is not None:
            return digits[:n], hit[0]
    return None


def extends_an_override(prefix: str) -> bool:
    """Whether some override prefix is longer than ``prefix`` and starts with it: numbers under
    ``prefix`` then do not all get the same answer."""
    return prefix in _STRICT_HEADS


def fix_zones(cc: str, zones: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({ZONE_FIXES.get((cc, z), z) for z in zones}))


@cache
def country_zones(region: str) -> frozenset[str]:
    """The IANA zones tzdata's ``zone.tab`` lists for an ISO country ("" if it lists none)."""
    return _zone_tab().get(region, frozenset())


def main_zone(country: str, zones: tuple[str, ...], choice: str) -> tuple[str, ...]:
    """``zones`` narrowed per the operator's choice for ``country``: "all" keeps them; "main"
    takes the first of ``MAIN_ZONES[country]`` among them (all of them when none is ranked);
    an IANA zone name takes that zone when it is among them."""
    if choice == "all" or len(zones) < 2:
        return zones
    ranked = MAIN_ZONES.get(country, ()) if choice == "main" else (choice,)
    return next(((z,) for z in ranked if z in zones), zones)


def merge_zones(known: set[str], more: frozenset[str]) -> set[str]:
    """``known`` plus the zones of ``more`` that are not one of them under another name (tzdata
    links: zone.tab says Asia/Kolkata where phonenumbers says Asia/Calcutta)."""
    seen = {_tzif(z) for z in known}
    out = set(known)
    for z in sorted(more):
        data = _tzif(z)
        if data not in seen:
            seen.add(data)
            out.add(z)
    return out


@cache
def _tzif(zone: str) -> bytes:
    try:
        return resources.files("tzdata").joinpath("zoneinfo", *zone.split("/")).read_bytes()
    except (FileNotFoundError, IsADirectoryError, ValueError):
        return zone.encode()  # not in the tzdata package (e.g. "Etc/Unknown"): by name


@cache
def _zone_tab() -> dict[str, frozenset[str]]:
    text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="utf-8")
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            out.setdefault(fields[0], set()).add(fields[2])
    return {k: frozenset(v) for k, v in out.items()}


_LONGEST = max(map(len, PREFIX_ZONES))
_STRICT_HEADS = frozenset(p[:n] for p in PREFIX_ZONES for n in range(1, len(p)))
