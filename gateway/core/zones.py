"""Which time zones (and which region) a recipient's number is in, interned as a small int.

Theory of operation
-------------------
``ZoneResolver.key_for(number)`` answers with the key of a ``ZoneSet``: the IANA zones that
phonenumbers gives for the number, and its region ("US-FL", "CA-ON", or the ISO country "FR").
The core stores that key (2 bytes) per message; ``QuietHours`` works per key.

Asking phonenumbers costs 30-50 µs a number (parse, then a dozen regular expressions for the
number's type), so answers are cached by *prefix class*: (number of digits, leading digits).
A class is only ever cached once it is proven that every number in it gets the same answer, so
the cache never depends on which number came first:

- the time-zone table (``phonenumbers.tzdata``) is keyed by prefixes of up to 9 digits: a prefix
  decides the zones when no longer key extends it;
- the number's type (fixed line, mobile, toll free, invalid...) decides between those zones and
  the whole country's, and for shared calling codes (+1, +7, +44...) also the country. The type
  is decided by the metadata's patterns; a prefix decides all of them when each pattern either
  accepts every completion of the prefix or none. That is tested exactly with two rewritten
  copies of each pattern (``_Pattern``), not by sampling;
- if every zone reachable under a prefix is the same (France: Europe/Paris for any number), the
  type does not matter and the prefix decides at once.

So a class is as short as the data allows: "+33 6" for French mobiles, "+1 212 5" for New York,
"+44 79 1" for some UK mobiles. Lookups walk a small tree: ``_nodes`` maps a class to either its
interned key (>= 0) or the deeper prefix length to try (< 0); a warm lookup is one or two dict
hits. The first number of a class pays the phonenumbers call and the pattern tests
(~0.1-0.5 ms); there are a few thousand classes in practice.

Choices that differ from a bare ``time_zones_for_number``:

- numbers phonenumbers finds *invalid* (unknown range, e.g. newer than the installed metadata)
  get the zones of their whole calling code, not "Etc/Unknown": quiet hours must then hold in
  all of the country's zones, the safe side. Only when phonenumbers has no zone at all (an
  unknown calling code, +800...) is ``default_zone`` used;
- region: for NANP numbers the state or province comes from the area code, through the geocoder's
  place names ("Miami, FL", "Florida" -> "US-FL"); an area code spanning several (867: Yukon,
  NWT, Nunavut) gets the country ("CA"). Other numbers get their ISO country. That table ships
  as ``nanp_regions`` (the geocoder is ~100 MB); under another phonenumbers release than the one
  it names, it is derived again (``prepare``, before a server takes traffic).

Corrections (``gateway.core.zone_overrides``): ranges phonenumbers gets wrong (Kaliningrad,
Saratov, Kazakhstan, Indonesian mobiles) have their own zones; an exchange the table does not list, in an
area code whose listed exchanges span several zones, gets all of those zones, not the area
code's first; a number known only by its country gets every zone of the country (phonenumbers'
list and tzdata's ``zone.tab``). Per country, the operator may choose "main" (the zone most of
the country lives in, among the number's zones) instead of "all" (``country_zones``).

An explicit zone (``key_for(number, tz="Asia/Kolkata")``) replaces the number's zones but keeps
its region, so a per-state window still applies to a Florida number with an explicit zone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata, PhoneNumberType
from phonenumbers.tzdata import TIMEZONE_DATA

from gateway.core import nanp_regions, zone_overrides

__all__ = ["PrefixPattern", "ZoneResolver", "ZoneSet", "nanp_table_source", "prepare"]

UNKNOWN_ZONE = "Etc/Unknown"  # what phonenumbers answers when it knows no zone
START_DEPTH = 4  # first prefix length tried: "1" + area code for NANP numbers
_TEXT_START = START_DEPTH + 1  # the same, as E.164 text ('+' first)
_NANP_SHIPPED = nanp_regions.PHONENUMBERS == phonenumbers.__version__
_TZ_LONGEST = max(map(len, TIMEZONE_DATA))
_P10 = [10**i for i in range(40)]
# Digits of the smallest int with b bits; an int with b bits has that many digits or one more.
_DIGITS_FOR_BITS = [1] + [len(str(1 << (b - 1))) for b in range(1, 130)]


class ZoneSet(msgspec.Struct, frozen=True):
    """The zones a number may be in (IANA names, sorted) and its region ("US-FL", "FR" or None)."""

    zones: tuple[str, ...]
    region: str | None


class ZoneResolver:
    """Maps E.164 numbers (as ints) to interned ``ZoneSet`` keys. Pure; caches by prefix class."""

    def __init__(self, *, default_zone: str = "UTC", country_zones: dict[str, str] | None = None) -> None:
        """``country_zones``: country -> "all" (the default), "main" or an IANA zone, for numbers
        that may be in several of the country's zones (``zone_overrides.main_zone``)."""
        self.default_zone = _check_zone(default_zone)
        self._choice = dict(country_zones or {})
        self._sets: list[ZoneSet] = []
        self._ids: dict[ZoneSet, int] = {}
        self._nodes: dict[int, int] = {}  # class (prefix * 16 + digits) -> key, or -(deeper length)
        # the same classes by text: len('+' digits) -> {'+' prefix: key, or -(deeper prefix's length)}
        self._text_nodes: dict[int, dict[str, int]] = {}
        self._explicit: dict[tuple[str, str | None], int] = {}
        self._explicit_by_key: dict[tuple[str, int], int] = {}  # (zone, the number's own key) -> key
        self._valid_zones: set[str] = {self.default_zone}

    # -- the hot path ----------------------------------------------------------------------

    def key_for(self, number: int, tz: str | None = None) -> int:
        """The key of ``number``'s zone set; with ``tz``, of that single zone (raises ValueError
        naming it if it is not a known IANA zone) and the number's region."""
        if tz is not None:
            return self._key_for_explicit(number, tz)
        nd = _DIGITS_FOR_BITS[number.bit_length()]
        if number >= _P10[nd]:
            nd += 1
        k = START_DEPTH if nd > START_DEPTH else nd
        nodes = self._nodes
        while True:
            v = nodes.get(number // _P10[nd - k] * 16 + nd)
            if v is None:
                return self._resolve(number, nd, k)
            if v >= 0:
                return v
            k = -v

    def keys_for(self, texts: Sequence[str]) -> list[int]:
        """``key_for`` of many numbers written as E.164 text ('+' and 7-15 ASCII digits, checked
        by the caller), a chunk of a large job: the same classes looked up by the text's prefix,
        one or two dict hits a number, with no int arithmetic (``_text_nodes`` mirrors every
        node ``key_for`` walks, a class's digits being the text's characters after '+')."""
        by_length, walk = self._text_nodes, self._key_for_text
        out: list[int] = []
        add = out.append
        for t in texts:
            d = by_length.get(len(t))
            v = d.get(t[:_TEXT_START]) if d is not None else None
            if v is not None and v < 0:
                v = d.get(t[:-v])
            add(v if v is not None and v >= 0 else walk(t))
        return out

    def keys_with_zones(self, texts: Sequence[str], tzs: Sequence[str | None]) -> list[int]:
        """``key_for(int(t[1:]), tz)`` of each text and its explicit zone (or None), a chunk of a
        large job whose recipients give their own zone (a campaign's lines: each subscriber's):
        the number's own key by ``keys_for``, then one dict hit a recipient on (zone, that key),
        since an explicit zone's set depends on the number only through the number's region.
        Raises ValueError naming a zone that is not a known IANA zone, as ``key_for`` does."""
        base = self.keys_for(texts)
        pairs = list(zip(tzs, base))
        out = list(map(self._explicit_by_key.get, pairs))
        if None in out:  # a recipient without a zone, or a (zone, key) pair not seen yet
            sets, explicit = self._sets, self._explicit_by_key
            for i, v in enumerate(out):
                if v is None:
                    tz, key = pairs[i]
                    if tz is None:
                        out[i] = key
                    else:
                        out[i] = explicit[pairs[i]] = self._explicit_key(tz, sets[key].region)
        return out

    def zone_set(self, key: int) -> ZoneSet:
        return self._sets[key]

    def key_for_zones(self, zones: Iterable[str], region: str | None = None) -> int:
        """The key of an explicit set of zones (validated), e.g. from configuration or tests."""
        names = tuple(sorted({self._valid(z) for z in zones}))
        if not names:
            raise ValueError("a zone set needs at least one zone")
        return self._intern(ZoneSet(names, region))

    def key_for_set(self, zs: ZoneSet) -> int:
        """The key of a zone set another resolver found (validated the first time it is seen)."""
        key = self._ids.get(zs)
        return key if key is not None else self.key_for_zones(zs.zones, zs.region)

    def __len__(self) -> int:
        """How many distinct zone sets have been interned (keys are ``0 .. len - 1``)."""
        return len(self._sets)

    # -- behind the cache ------------------------------------------------------------------

    def _key_for_text(self, text: str) -> int:
        """``key_for(int(text[1:]))``, every node it walks copied to ``_text_nodes``."""
        number, nd = int(text[1:]), len(text) - 1
        key = self.key_for(number)
        d = self._text_nodes.setdefault(len(text), {})
        k = START_DEPTH if nd > START_DEPTH else nd
        while (v := self._nodes[number // _P10[nd - k] * 16 + nd]) < 0:
            d[text[: k + 1]] = v - 1  # -(the deeper class's length in characters)
            k = -v
        d[text[: k + 1]] = v
        return key

    def _key_for_explicit(self, number: int, tz: str) -> int:
        return self._explicit_key(tz, self._sets[self.key_for(number)].region)

    def _explicit_key(self, tz: str, region: str | None) -> int:
        key = self._explicit.get((tz, region))
        if key is None:
            key = self._intern(ZoneSet((self._valid(tz),), region))
            self._explicit[(tz, region)] = key
        return key

    def _valid(self, tz: str) -> str:
        if tz not in self._valid_zones:
            self._valid_zones.add(_check_zone(tz))
        return tz

    def _intern(self, zs: ZoneSet) -> int:
        key = self._ids.get(zs)
        if key is None:
            key = self._ids[zs] = len(self._sets)
            self._sets.append(zs)
        return key

    def _resolve(self, number: int, nd: int, k: int) -> int:
        """Cache miss at prefix length ``k``: ask phonenumbers, find the shortest prefix length
        ``>= k`` that decides the answer for every number of that length, and cache it there."""
        digits = str(number)
        zones, region, depth = _DATA.answer(digits, k)
        # Validated here, once per class, so a zone this machine's tzdata lacks is refused at
        # admission (ValueError naming it), not found missing at dispatch.
        names = tuple(sorted({self._valid(self.default_zone if z == UNKNOWN_ZONE else z) for z in zones}))
        country = region.partition("-")[0] if region else None
        if country in self._choice:  # the operator's choice for the country's multi-zone numbers
            names = zone_overrides.main_zone(country, names, self._choice[country])
        zs = ZoneSet(names, region)
        key = self._intern(zs)
        self._nodes[number // _P10[nd - depth] * 16 + nd] = key
        if depth > k:
            self._nodes[number // _P10[nd - k] * 16 + nd] = -depth
        return key


def _check_zone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc
    return tz


# -- what phonenumbers knows, and how far into a number it looks ------------------------------


class _PrefixData:
    """Answers for one number plus the prefix length from which that answer is certain. What it
    keeps (compiled patterns, the zone table's prefixes, NANP regions) is derived from the
    installed phonenumbers only, built on first use and shared by all resolvers (``_DATA``)."""

    def __init__(self) -> None:
        self._countries: dict[str, _Country] = {}
        self._deeper: dict[str, frozenset[tuple[str, ...]]] | None = None
        self._nanp: dict[str, str | None] | None = None

    def prepare(self) -> None:
        """Build now what is otherwise built at the first number that needs it."""
        if self._nanp is None and not _NANP_SHIPPED:
            self._nanp = _nanp_regions()
        self._zones_under("1")

    def answer(self, digits: str, k: int) -> tuple[tuple[str, ...], str | None, int]:
        cc = next((digits[:n] for n in (1, 2, 3) if int(digits[:n]) in COUNTRY_CODE_TO_REGION_CODE), None)
        if cc is None:  # no such calling code: nothing to learn from the rest of the number
            return (UNKNOWN_ZONE,), None, k
        country = self._countries.get(cc)
        if country is None:
            country = self._countries[cc] = _Country(cc)
        try:
            num = phonenumbers.parse("+" + digits)
        except phonenumbers.NumberParseException:
            return country.all_zones, country.main_region, len(digits)  # decided per number
        nsn = phonenumbers.national_significant_number(num)
        ntype = phonenumbers.number_type(num)
        geo = phonenumbers.is_number_type_geographical(ntype, num.country_code)
        region = self._region(digits, cc, num)
        override = zone_overrides.prefix_zones(cc + nsn)
        if override is not None:  # a range phonenumbers gets wrong (zone_overrides.PREFIX_ZONES)
            zones = override[1]
            if zone_overrides.COUNTRY in zones:
                zones = country.wide(region)
        elif ntype == PhoneNumberType.UNKNOWN:
            zones = country.all_zones  # invalid numbers: see the module docstring
        elif not geo:
            zones = country.wide(region)
        else:
            zones = self._geographic(cc + nsn, country, region)
        if nsn != digits[len(cc):]:  # a number phonenumbers rewrites (e.g. +44 0...): no class
            return zones, region, len(digits)
        for depth in range(k, len(digits)):
            if self._decides(digits[:depth], len(digits), country, geo):
                return zones, region, depth
        return zones, region, len(digits)

    def _geographic(self, e164: str, country: _Country, region: str | None) -> tuple[str, ...]:
        """The zones of the longest table key ``e164`` starts with; a key the country's own list
        (its calling code's entry, or one as wide) means the whole country; a key with longer
        keys under it (an area code with some exchanges listed, this one not) means every zone
        listed under it, never only the key's own (zone_overrides, class 2)."""
        key = next((e164[:n] for n in range(min(len(e164), _TZ_LONGEST), 0, -1) if e164[:n] in TIMEZONE_DATA), None)
        if key is None:
            return country.wide(region)
        zones = tuple(TIMEZONE_DATA[key])
        if key == country.cc or zones == country.zones:
            return country.wide(region)
        self._zones_under(key)  # builds the index of longer keys
        assert self._deeper is not None
        under = self._deeper.get(key, frozenset())
        return zone_overrides.fix_zones(country.cc, tuple({z for zs in under for z in zs} | set(zones)))

    def _decides(self, prefix: str, nd: int, country: _Country, geo: bool) -> bool:
        if prefix[:1] == "1" and len(prefix) < 4:
            return False  # NANP regions come from the area code
        if zone_overrides.extends_an_override(prefix):
            return False  # an override starts deeper: numbers under the prefix differ
        if zone_overrides.prefix_zones(prefix) is not None:  # one override for every number under it
            return not country.shared or country.type_decided(prefix[len(country.cc):], nd - len(country.cc))
        longest, below = self._zones_under(prefix)
        if not country.shared and below <= {country.zones} and longest == country.zones:
            return True  # every number under the prefix gets the country's zones, whatever its type
        if not country.type_decided(prefix[len(country.cc):], nd - len(country.cc)):
            return False
        return not geo or not below  # geographic numbers also need the zone table to be decided

    def _zones_under(self, prefix: str) -> tuple[tuple[str, ...], frozenset[tuple[str, ...]]]:
        """The zones a geographic number starting with ``prefix`` gets when no longer key matches
        (the longest table key that is a prefix of it), and the zones of the longer keys."""
        if self._deeper is None:
            deeper: dict[str, set[tuple[str, ...]]] = {}
            for key, zones in TIMEZONE_DATA.items():
                for n in range(1, len(key)):
                    deeper.setdefault(key[:n], set()).add(tuple(zones))
            self._deeper = {p: frozenset(s) for p, s in deeper.items()}
        longest = next(
            (tuple(TIMEZONE_DATA[prefix[:n]]) for n in range(len(prefix), 0, -1) if prefix[:n] in TIMEZONE_DATA),
            (UNKNOWN_ZONE,),
        )
        return longest, self._deeper.get(prefix, frozenset())

    def _region(self, digits: str, cc: str, num: phonenumbers.PhoneNumber) -> str | None:
        if cc == "1":
            if _NANP_SHIPPED:  # the table derived from this phonenumbers release, shipped
                region = nanp_regions.REGIONS.get(digits[1:4])
            else:  # another release: derive it from its geocoder (loads ~100 MB, once)
                if self._nanp is None:
                    self._nanp = _nanp_regions()
                region = self._nanp.get(digits[1:4])
            if region is not None:
                return region
        region = phonenumbers.region_code_for_number(num) or phonenumbers.region_code_for_country_code(int(cc))
        return None if region in ("001", "ZZ") else region


class _Country:
    """The metadata of one calling code: its zones and the patterns that decide a number's type."""

    def __init__(self, cc: str) -> None:
        self.cc = cc
        self.zones: tuple[str, ...] = tuple(TIMEZONE_DATA.get(cc, (UNKNOWN_ZONE,)))
        regions = COUNTRY_CODE_TO_REGION_CODE[int(cc)]
        self.shared = len(regions) > 1 or cc == "1"
        self.main_region = None if regions[0] == "001" else regions[0]
        # Every zone a number of this calling code may be in: phonenumbers' list (fixed) and,
        # outside NANP, every zone tzdata lists for each of its countries (zone_overrides, class 3).
        known = set(zone_overrides.fix_zones(cc, self.zones)) - {UNKNOWN_ZONE}
        if cc != "1":
            for r in regions:
                known = zone_overrides.merge_zones(known, zone_overrides.country_zones(r))
        self.all_zones = tuple(sorted(known)) or (UNKNOWN_ZONE,)
        self._regions: list[tuple[_Pattern | None, _Pattern | None, list[_Pattern]]] = []
        for r in regions:
            meta = PhoneMetadata.metadata_for_nongeo_region(int(cc)) if r == "001" else PhoneMetadata.metadata_for_region(r)
            if meta is None:
                continue
            leading = _Pattern(meta.leading_digits, None, prefix_match=True) if meta.leading_digits else None
            general = _Pattern.of(meta.general_desc)
            types = [p for p in map(_Pattern.of, _type_descs(meta)) if p is not None]
            self._regions.append((leading, general, types))

    def wide(self, region: str | None) -> tuple[str, ...]:
        """The zones of a number known only to be in its country (``region``): every zone of the
        calling code (``all_zones``). For a shared code that is wider than the one country (+7
        mobiles of Russia also get Kazakhstan's zones, +61 mobiles Christmas Island's): the safe
        side, since the number's region does not say where a mobile is. NANP non-geographic
        ranges (toll-free 8XX, 5XX) are NANP-wide anyway."""
        return self.all_zones

    def type_decided(self, head: str, length: int) -> bool:
        """Whether every national number of ``length`` digits starting with ``head`` has the same
        type and region: each pattern phonenumbers would try accepts all such numbers or none."""
        for leading, general, types in self._regions:
            if leading is not None and not leading.decided(head, length):
                return False
            if general is None or general.none(head, length):
                continue  # this region's numbers never start so: its type patterns don't matter
            if not general.decided(head, length):
                return False
            if not all(p.decided(head, length) for p in types):
                return False
        return True


def _type_descs(meta: PhoneMetadata) -> list:
    return [
        meta.premium_rate, meta.toll_free, meta.shared_cost, meta.voip, meta.personal_number,
        meta.pager, meta.uan, meta.voicemail, meta.fixed_line, meta.mobile,
    ]  # fmt: skip


class _Pattern:
    """A metadata pattern, plus two rewritten copies that answer, for a prefix ``head`` and a
    length, "do all completions match?" and "does any completion match?" with one regex call.

    ``all_of`` lets only the any-digit parts (``\\d``, ``[0-9]``) also accept "X": it matches
    ``head + "X" * rest`` iff some path reads the rest with any-digit parts only, and then every
    completion matches. ``any_of`` lets every digit part also accept "Y": it matches
    ``head + "Y" * rest`` iff some path reads the rest with parts that each accept some digit,
    i.e. iff some completion matches. The patterns use only digits, digit classes, ``\\d``,
    groups, ``|``, ``?`` and ``{m,n}`` (checked); anything else is never called decided early.
    """

    __slots__ = ("all_of", "any_of", "lengths", "match")

    def __init__(self, pattern: str, lengths: Iterable[int] | None, *, prefix_match: bool = False) -> None:
        self.lengths = frozenset(lengths or ())
        self.match = prefix_match
        self.all_of: re.Pattern[str] | None = None
        self.any_of: re.Pattern[str] | None = None
        try:
            self.all_of = re.compile(_rewrite(pattern, "X"))
            self.any_of = re.compile(_rewrite(pattern, "Y"))
        except (ValueError, re.error):  # syntax we don't rewrite: only the whole number decides
            self.all_of = self.any_of = None

    @classmethod
    def of(cls, desc) -> _Pattern | None:
        if desc is None or not desc.national_number_pattern:
            return None
        return cls(desc.national_number_pattern, desc.possible_length)

    def _test(self, rx: re.Pattern[str], s: str) -> bool:
        return bool(rx.match(s) if self.match else rx.fullmatch(s))

    def none(self, head: str, length: int) -> bool:
        if self.lengths and length not in self.lengths:
            return True
        return self.any_of is not None and not self._test(self.any_of, head + "Y" * (length - len(head)))

    def every(self, head: str, length: int) -> bool:
        """Whether every completion of ``head`` to ``length`` digits matches (False: unknown)."""
        if self.all_of is None or (self.lengths and length not in self.lengths):
            return False
        return self._test(self.all_of, head + "X" * (length - len(head)))

    def decided(self, head: str, length: int) -> bool:
        if self.all_of is None or self.any_of is None:
            return False
        if self.lengths and length not in self.lengths:
            return True
        rest = length - len(head)
        return self._test(self.all_of, head + "X" * rest) or not self._test(self.any_of, head + "Y" * rest)


PrefixPattern = _Pattern  # also decides ``NumberCheck``'s prefix classes (gateway/runtime/numbers.py)

_TOKEN = re.compile(r"\\d|\[[^\]]*\]|\{\d+(?:,\d*)?\}|\(\?:|[()|?*+]|\d")


def _rewrite(pattern: str, marker: str) -> str:
    """See ``_Pattern``. Raises ValueError on syntax outside the small subset the metadata uses."""
    out: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(pattern):
        if m.start() != pos:
            raise ValueError(pattern)
        tok = m.group()
        pos = m.end()
        if tok == r"\d":
            out.append(r"[\d" + marker + "]")
        elif tok.startswith("[") and tok != "[":
            body = tok[1:-1]
            if body.startswith("^") or not body:
                raise ValueError(pattern)
            full = all(re.fullmatch(tok, d) for d in "0123456789")
            out.append("[" + body + marker + "]" if marker == "Y" or full else tok)
        elif tok.isdigit() and len(tok) == 1:
            out.append(tok if marker == "X" else "[" + tok + marker + "]")
        else:
            out.append(tok)
    if pos != len(pattern):
        raise ValueError(pattern)
    return "".join(out)


_DATA = _PrefixData()


def prepare() -> None:
    """Build the derived tables every resolver shares (the zone table's prefix index; the NANP
    regions too if ``nanp_regions`` was made from another phonenumbers release than the one
    installed) now rather than at the first number that needs them: a server calls this before
    it takes traffic, so its event loop is never held by them (deriving the NANP regions takes
    ~0.3 s on a quiet machine, several seconds on a loaded one, and ~100 MB)."""
    _DATA.prepare()


# -- NANP area code -> state or province --------------------------------------------------------

US_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "District of Columbia": "DC",
    "Washington D.C.": "DC", "Florida": "FL", "Georgia": "GA", "Hawaii": "HI", "Idaho": "ID",
    "Illinois": "IL", "Indiana": "IN", "Iowa": "IA", "Kansas": "KS", "Kentucky": "KY",
    "Louisiana": "LA", "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA", "Michigan": "MI",
    "Minnesota": "MN", "Mississippi": "MS", "Missouri": "MO", "Montana": "MT", "Nebraska": "NE",
    "Nevada": "NV", "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM",
    "New York": "NY", "North Carolina": "NC", "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK",
    "Oregon": "OR", "Pennsylvania": "PA", "Rhode Island": "RI", "South Carolina": "SC",
    "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT",
    "Virginia": "VA", "Washington": "WA", "Washington State": "WA", "West Virginia": "WV",
    "Wisconsin": "WI", "Wyoming": "WY",
}  # fmt: skip
CA_PROVINCES = {
    "Alberta": "AB", "British Columbia": "BC", "British Colombia": "BC", "Manitoba": "MB",
    "New Brunswick": "NB", "Newfoundland and Labrador": "NL", "Newfoundland": "NL",
    "Nova Scotia": "NS", "Northwest Territories": "NT", "Nunavut": "NU", "Ontario": "ON",
    "Prince Edward Island": "PE", "Quebec": "QC", "Québec": "QC", "Saskatchewan": "SK",
    "Yukon": "YT",
}  # fmt: skip
_SUBDIVISION = {code: "US-" + code for code in US_STATES.values()} | {
    code: "CA-" + code for code in CA_PROVINCES.values()
}
_NAMES = {name.casefold(): code for name, code in (US_STATES | CA_PROVINCES).items()}
_CITY_STATE = re.compile(r",\s*([A-Z]{2})$")


def _subdivisions(description: str) -> set[str]:
    """'Miami, FL' -> {'US-FL'}; 'Florida' -> {'US-FL'}; 'Nova Scotia/Prince Edward Island' ->
    {'CA-NS', 'CA-PE'}; 'Nassau' -> set()."""
    found = set()
    for part in description.split("/"):
        part = part.strip()
        m = _CITY_STATE.search(part)
        code = m.group(1) if m else _NAMES.get(part.casefold())
        if code in _SUBDIVISION:
            found.add(_SUBDIVISION[code])
    return found


def _nanp_regions() -> dict[str, str | None]:
    """Area code -> "US-XX"/"CA-XX", from the geocoder's English place names. The area code's own
    entry wins; without one, the state of at least 90 % of its places (e.g. 201 lists one
    New York place among 98 in New Jersey). Several states or none: None. Shipped, for the
    phonenumbers release it was made from, as ``nanp_regions`` (``nanp_table_source``)."""
    from phonenumbers.geodata import GEOCODE_DATA  # ~0.3 s and ~100 MB, once

    places: dict[str, Counter[str]] = {}
    own: dict[str, set[str]] = {}
    for prefix, names in GEOCODE_DATA.items():
        name = names.get("en")
        if prefix[:1] != "1" or len(prefix) < 4 or name is None:
            continue
        found = _subdivisions(name)
        if len(prefix) == 4:
            own[prefix[1:]] = found
        elif len(found) == 1:
            places.setdefault(prefix[1:4], Counter()).update(found)
    regions: dict[str, str | None] = {}
    for area in own.keys() | places.keys():
        if area in own and own[area]:
            regions[area] = next(iter(own[area])) if len(own[area]) == 1 else None
            continue
        counts = places.get(area)
        if counts:
            (best, n), total = counts.most_common(1)[0], sum(counts.values())
            regions[area] = best if n >= 0.9 * total else None
    return regions


def nanp_table_source() -> str:
    """The source of ``gateway/core/nanp_regions.py`` for the installed phonenumbers:
    ``python -c 'from gateway.core.zones import nanp_table_source as s; print(s(), end="")' >
    gateway/core/nanp_regions.py`` after upgrading it (a test says when)."""
    rows = "".join(f"    {area!r}: {region!r},\n" for area, region in sorted(_nanp_regions().items()))
    return (f'"""NANP area code -> state or province, derived by ``zones._nanp_regions`` from the geocoder\n'
            f'of phonenumbers {phonenumbers.__version__} (generated by ``zones.nanp_table_source``: do not edit). Shipped\n'
            f'so a server never loads the geocoder (~100 MB) to learn a US number\'s state."""\n\n'
            f"PHONENUMBERS = {phonenumbers.__version__!r}\n\n"
            f"REGIONS: dict[str, str | None] = {{\n{rows}}}\n")
