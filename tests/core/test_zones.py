"""ZoneResolver: numbers -> interned zone sets, cached by prefix class.

The oracle is phonenumbers itself, asked per number with no cache.
"""

from __future__ import annotations

import random

import phonenumbers
import phonenumbers.timezone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata, PhoneNumberType

from gateway.core import zone_overrides as overrides
from gateway.core import nanp_regions
from gateway.core import zones as zones_mod
from gateway.core.zones import ZoneResolver, ZoneSet


def n(e164: str) -> int:
    return int(e164[1:])


@pytest.fixture
def resolver() -> ZoneResolver:
    return ZoneResolver()


@pytest.mark.parametrize(
    ("number", "zones", "region"),
    [
        ("+12125550123", ("America/New_York",), "US-NY"),
        ("+13055550123", ("America/New_York",), "US-FL"),  # "Florida"
        ("+14055550123", ("America/Chicago",), "US-OK"),
        ("+12025550123", ("America/New_York",), "US-DC"),  # "Washington D.C."
        ("+12065550123", ("America/Los_Angeles",), "US-WA"),  # "Washington State"
        ("+14165550123", ("America/Toronto",), "CA-ON"),
        ("+17875550123", ("America/Puerto_Rico",), "PR"),
        ("+33612345678", ("Europe/Paris",), "FR"),
        ("+33142345678", ("Europe/Paris",), "FR"),
        ("+5511912345678", ("America/Sao_Paulo",), "BR"),
        ("+919812345678", ("Asia/Calcutta",), "IN"),
    ],
)
def test_single_zone_numbers(resolver: ZoneResolver, number: str, zones: tuple, region: str) -> None:
    zs = resolver.zone_set(resolver.key_for(n(number)))
    assert zs == ZoneSet(zones, region)


def test_numbers_with_several_zones(resolver: ZoneResolver) -> None:
    idaho = resolver.zone_set(resolver.key_for(n("+12085550123")))  # a geographic prefix
    # 208 5 lists exchanges in Denver too: an unlisted one may be in any of them
    assert idaho == ZoneSet(("America/Boise", "America/Denver", "America/Los_Angeles"), "US-ID")
    au_mobile = resolver.zone_set(resolver.key_for(n("+61412345678")))  # mobile: the whole country
    assert "Australia/Perth" in au_mobile.zones and "Australia/Lord_Howe" in au_mobile.zones
    assert au_mobile.region == "AU" and list(au_mobile.zones) == sorted(au_mobile.zones)
    ru_mobile = resolver.zone_set(resolver.key_for(n("+79161234567")))
    assert {"Europe/Moscow", "Asia/Kamchatka"} <= set(ru_mobile.zones) and ru_mobile.region == "RU"
    toll_free = resolver.zone_set(resolver.key_for(n("+18005550123")))
    assert {"Pacific/Honolulu", "America/New_York", "Pacific/Guam"} <= set(toll_free.zones)


def test_same_set_same_key(resolver: ZoneResolver) -> None:
    a = resolver.key_for(n("+12125550123"))
    assert resolver.key_for(n("+12125550199")) == a
    assert resolver.key_for(n("+16465550123")) == a  # another NYC area code, same set
    assert resolver.key_for(n("+13055550123")) != a  # same zone, other region
    assert resolver.key_for_zones(["America/New_York"], "US-NY") == a
    assert resolver.key_for_zones(["Europe/Paris", "Asia/Tokyo", "Europe/Paris"]) == resolver.key_for_zones(
        ["Asia/Tokyo", "Europe/Paris"]
    )
    assert len(resolver) == len({resolver.zone_set(k) for k in range(len(resolver))})


def test_explicit_zone_overrides_number_but_keeps_region(resolver: ZoneResolver) -> None:
    k = resolver.key_for(n("+33612345679"), "Asia/Kolkata")
    assert resolver.zone_set(k) == ZoneSet(("Asia/Kolkata",), "FR")
    assert resolver.key_for(n("+33612345670"), "Asia/Kolkata") == k
    fl = resolver.zone_set(resolver.key_for(n("+13055550123"), "America/Chicago"))
    assert fl == ZoneSet(("America/Chicago",), "US-FL")  # Florida's window still applies


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "Etc/Unknown", "", "../../etc/passwd"])
def test_unknown_explicit_zone_is_refused_by_name(resolver: ZoneResolver, tz: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone") as info:
        resolver.key_for(n("+12125550123"), tz)
    assert repr(tz) in str(info.value)


def test_unknown_zone_gets_the_default() -> None:
    r = ZoneResolver(default_zone="Asia/Tokyo")
    assert r.zone_set(r.key_for(n("+80012345678"))).zones == ("Asia/Tokyo",)  # intl freephone
    assert r.zone_set(r.key_for(n("+9991234567"))) == ZoneSet(("Asia/Tokyo",), None)  # no such code
    with pytest.raises(ValueError, match="Nowhere/Land"):
        ZoneResolver(default_zone="Nowhere/Land")


def test_every_zone_phonenumbers_names_loads() -> None:
    names = {z for zones in phonenumbers.tzdata.TIMEZONE_DATA.values() for z in zones} - {"Etc/Unknown"}
    for name in sorted(names):
        assert zones_mod._check_zone(name) == name


def test_invalid_number_gets_its_countrys_zones(resolver: ZoneResolver) -> None:
    # 055 is no valid exchange: phonenumbers says "Etc/Unknown"; we hold it to all NANP zones
    bad = resolver.zone_set(resolver.key_for(n("+12120550123")))
    assert bad.zones == tuple(sorted(phonenumbers.timezone.time_zones_for_number(phonenumbers.parse("+18005550123"))))
    assert bad.region == "US-NY"


def test_warm_lookups_do_not_ask_phonenumbers(resolver: ZoneResolver, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(4)
    numbers = [n(p) * 10**k + rnd.randrange(10**k) for p, k in [("+1212", 7), ("+447", 9), ("+614", 8)] for _ in range(300)]
    keys = [resolver.key_for(x) for x in numbers]
    monkeypatch.setattr(phonenumbers, "parse", lambda *a, **k: pytest.fail("cache miss"))
    assert [resolver.key_for(x) for x in rnd.sample(numbers, 200)] != []
    assert [resolver.key_for(x) for x in numbers] == keys


def test_prefix_classes_are_shared() -> None:
    # 1000 New York numbers: the class is "+1 212 d" (the exchange's first digit decides
    # validity), so there are at most 10 classes + the 4-digit node, not 1000.
    r, rnd = ZoneResolver(), random.Random(1)
    for _ in range(1000):
        r.key_for(12120000000 + rnd.randrange(10**7))
    assert len(r._nodes) <= 11
    for _ in range(1000):
        r.key_for(336_0000_0000 + rnd.randrange(10**8))  # French mobiles: one zone, decided early
    assert len(r._nodes) <= 11 + 20


# -- agreement with phonenumbers, whatever the order numbers come in -----------------------------

PREFIXES = [
    "1212", "1208", "1305", "1808", "1867", "1242", "1664", "1800", "1340", "44", "447", "4475",
    "441534", "33", "49", "4915", "61", "614", "7", "79", "77", "55", "5511", "5592", "52", "62",
    "86", "91", "81", "39", "3906", "262", "590", "599", "47", "358", "353", "800", "882", "246",
    "299", "976", "54", "1671", "7401", "74012", "740", "7845", "628", "6281", "1850", "1219", "1250", "243", "1907",
]  # fmt: skip


def _oracle(digits: str, default: str = "UTC") -> tuple[str, ...] | None:
    """phonenumbers' zones for a valid number, corrected as ``gateway.core.zone_overrides`` says,
    computed per number from the raw tables (no prefix classes); None for invalid numbers."""
    try:
        num = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return None
    ntype = phonenumbers.number_type(num)
    if ntype == PhoneNumberType.UNKNOWN:
        return None
    cc = str(num.country_code)
    e164 = cc + phonenumbers.national_significant_number(num)
    table = phonenumbers.tzdata.TIMEZONE_DATA
    hits = [p for p in overrides.PREFIX_ZONES if e164.startswith(p)]
    country = {overrides.ZONE_FIXES.get((cc, z), z) for z in table.get(cc, ())}
    for r in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[int(cc)] if cc != "1" else ():
        country = overrides.merge_zones(country, overrides.country_zones(r))
    if hits:
        zones = set(overrides.PREFIX_ZONES[max(hits, key=len)][0])
        if overrides.COUNTRY in zones:
            zones = country
    elif not phonenumbers.is_number_type_geographical(ntype, num.country_code):
        zones = country
    else:
        key = max((k for k in table if e164.startswith(k)), key=len, default=cc)
        if key == cc or table[key] == table.get(cc):
            zones = country
        else:  # the key's zones and those of every longer key under it
            zones = {z for k in _UNDER.get(key, [key]) for z in table[k]}
    zones = {overrides.ZONE_FIXES.get((cc, z), z) for z in zones} - {"Etc/Unknown"}
    return tuple(sorted(zones)) or (default,)


_UNDER: dict[str, list[str]] = {}
for _k in phonenumbers.tzdata.TIMEZONE_DATA:
    for _n in range(1, len(_k) + 1):
        _UNDER.setdefault(_k[:_n], []).append(_k)


numbers_st = st.tuples(st.sampled_from(PREFIXES), st.integers(7, 15), st.randoms(use_true_random=False)).map(
    lambda t: t[0] + "".join(t[2].choice("0123456789") for _ in range(max(0, t[1] - len(t[0]))))
)


@settings(max_examples=300, deadline=None)
@given(st.lists(numbers_st, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_matches_phonenumbers_in_any_order(batch: list[str], rnd: random.Random) -> None:
    a, b = ZoneResolver(), ZoneResolver()
    other = batch[:]
    rnd.shuffle(other)
    for digits in other:
        b.key_for(int(digits))
    for digits in batch:
        got = a.zone_set(a.key_for(int(digits)))
        assert b.zone_set(b.key_for(int(digits))) == got  # the cache never depends on the order
        expected = _oracle(digits)
        if expected is not None:
            assert got.zones == expected, digits


def test_matches_phonenumbers_on_a_large_sample() -> None:
    """Many numbers through one warm resolver, near prefixes phonenumbers distinguishes."""
    rnd, r = random.Random(7), ZoneResolver()
    keys = list(phonenumbers.tzdata.TIMEZONE_DATA)
    rnd.shuffle(keys)
    numbers = []
    for key in keys[:1500]:
        length = rnd.choice((10, 11, 12))
        numbers.append(key + "".join(rnd.choice("0123456789") for _ in range(max(1, length - len(key)))))
    for digits in numbers * 2:
        expected = _oracle(digits)
        got = r.zone_set(r.key_for(int(digits)))
        if expected is not None:
            assert got.zones == expected, digits


# -- the exact prefix test on the metadata's patterns -------------------------------------------


def _all_patterns() -> list[tuple[str, bool]]:
    out = []
    for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        for region in regions:
            meta = PhoneMetadata.metadata_for_nongeo_region(cc) if region == "001" else PhoneMetadata.metadata_for_region(region)
            if meta.leading_digits:
                out.append((meta.leading_digits, True))
            for desc in [meta.general_desc, *zones_mod._type_descs(meta)]:
                if desc is not None and desc.national_number_pattern:
                    out.append((desc.national_number_pattern, False))
    return out


def test_every_metadata_pattern_is_rewritten() -> None:
    for pattern, prefix_match in _all_patterns():
        p = zones_mod._Pattern(pattern, None, prefix_match=prefix_match)
        assert p.all_of is not None and p.any_of is not None, pattern


PATTERNS = _all_patterns()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATTERNS), st.integers(0, 6), st.integers(4, 12), st.randoms(use_true_random=False))
def test_decided_means_all_completions_agree(pat: tuple[str, bool], head_len: int, length: int, rnd: random.Random) -> None:
    import re

    pattern, prefix_match = pat
    rx = re.compile(pattern)
    test = (lambda s: bool(rx.match(s))) if prefix_match else (lambda s: bool(rx.fullmatch(s)))
    head = "".join(rnd.choice("0123456789") for _ in range(min(head_len, length)))
    p = zones_mod._Pattern(pattern, None, prefix_match=prefix_match)
    completions = [head + "".join(rnd.choice("0123456789") for _ in range(length - len(head))) for _ in range(30)]
    if p.decided(head, length):
        assert len({test(c) for c in completions}) == 1
    if p.none(head, length):
        assert not any(test(c) for c in completions)


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("Miami, FL", {"US-FL"}),
        ("Florida", {"US-FL"}),
        ("Washington D.C.", {"US-DC"}),
        ("Washington State", {"US-WA"}),
        ("Toronto, ON", {"CA-ON"}),
        ("British Colombia", {"CA-BC"}),  # sic, in the geocoder data
        ("Nova Scotia/Prince Edward Island", {"CA-NS", "CA-PE"}),
        ("New Providence", set()),
        ("Charlotte Amalie, VI", set()),  # a territory: its region comes from phonenumbers
    ],
)
def test_place_names_to_subdivisions(description: str, expected: set) -> None:
    assert zones_mod._subdivisions(description) == expected


def test_prepare_builds_now_what_the_first_numbers_would(monkeypatch) -> None:
    """``serve`` calls ``zones.prepare`` before it listens: afterwards, resolving a US number (its
    state: the shipped table, or for another phonenumbers release the geocoder's, seconds on a
    loaded machine) and a geographic one (the zone table's prefix index) builds nothing more on
    the event loop."""
    data = zones_mod._PrefixData()
    data.prepare()
    built = (data._nanp, data._deeper)
    assert built[1] and (built[0] is not None) != zones_mod._NANP_SHIPPED

    def rebuilt() -> dict:
        raise AssertionError("built again at the first number")

    monkeypatch.setattr(zones_mod, "_nanp_regions", rebuilt)
    zones, region, _ = data.answer("12125550194", 4)
    assert region == "US-NY" and "America/New_York" in zones
    data.answer("441632960123", 4)
    assert (data._nanp, data._deeper) == built


def test_the_shipped_nanp_table_is_the_installed_geocoders() -> None:
    """``nanp_regions`` is what ``_nanp_regions`` derives from the phonenumbers it names; under
    another release the resolver derives it itself. If this fails after upgrading phonenumbers,
    regenerate the table (``zones.nanp_table_source``)."""
    derived = zones_mod._nanp_regions()
    if zones_mod._NANP_SHIPPED:
        assert nanp_regions.REGIONS == derived, "regenerate gateway/core/nanp_regions.py"
        assert zones_mod.nanp_table_source().endswith("}\n")
    else:
        data = zones_mod._PrefixData()
        data.prepare()
        assert data._nanp == derived
    assert {derived[a] for a in ("212", "305", "416", "604")} == {"US-NY", "US-FL", "CA-ON", "CA-BC"}


_ZONE_CHOICES = [None, "Europe/London", "America/New_York", "Asia/Kolkata", "UTC", "Mars/Olympus", "europe/london"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(numbers_st, st.sampled_from(_ZONE_CHOICES)), min_size=1, max_size=40),
       st.lists(st.tuples(numbers_st, st.sampled_from(_ZONE_CHOICES)), max_size=20))  # fmt: skip
def test_keys_with_zones_is_key_for_of_each(batch: list[tuple[str, str | None]], before: list) -> None:
    """The column of (number, explicit zone) keys is ``key_for``'s, one by one, whatever the
    resolver saw before (its caches by text, by number and by (zone, the number's key)); a
    zone that is not a known IANA zone is refused as ``key_for`` refuses it."""
    a, b = ZoneResolver(), ZoneResolver()
    for digits, tz in before:  # warm one resolver's caches with other numbers and zones first
        try:
            a.keys_with_zones(["+" + digits], [tz])
        except ValueError:
            pass
    texts, tzs = ["+" + d for d, _ in batch], [tz for _, tz in batch]
    try:
        expected = [b.zone_set(b.key_for(int(d), tz)) for d, tz in batch]
    except ValueError as exc:
        with pytest.raises(ValueError, match="unknown time zone") as got_exc:
            a.keys_with_zones(texts, tzs)
        assert str(got_exc.value) == str(exc)  # the first unknown zone of the chunk, named
        return
    got = a.keys_with_zones(texts, tzs)
    assert [a.zone_set(k) for k in got] == expected
    assert a.keys_with_zones(texts, tzs) == got  # cached: the same keys
