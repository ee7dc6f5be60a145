"""Is this an E.164 number phonenumbers accepts? Fast enough for jobs of a million recipients.

``phonenumbers.parse`` + ``is_valid_number`` cost ~17 µs a number (17 s for a 1M job; a cache
by leading digits barely helps, since real lists have few numbers per range). The verdict is the
same question asked directly of phonenumbers' metadata: for a ``+`` and digits, the country code
is the first 1-3 digits that name one, the rest is the national number, and the number is valid
iff the region that claims it (``_region_code_for_number_from_list``'s rule: leading digits, or
the first region that knows the number) has a general pattern and a number type that both match
it, length and pattern. That is one regex match a number: the general pattern (as a lookahead)
and the patterns of every type allowed at the number's length, joined into one and compiled
once per (region, length).

A chunk of a large job asks it of all its numbers at once (``sure``, in ingest's worker
processes): per calling code, the same questions in the same order (region by leading digits,
then the general pattern and the types of the number's length) are compiled into one regex of
the whole E.164 text, a *country table*; a number is certainly valid and canonical iff it
matches. A number that does not match (invalid, formatted, or one ``_fast`` leaves to
phonenumbers) is asked of ``canonical``. Tables are compiled from the installed phonenumbers'
metadata on first use (0.05-0.3 s a country, so not in an event loop:
``NumberCheck(tables=True)``), and a test checks them against ``_fast`` and phonenumbers on a
corpus of every country's numbers.

A table match still costs ~2 µs (the regex engine backtracks through the lookaheads and a
country's type alternatives), so ``sure`` asks it once per *prefix class*, as the zone resolver
does (``gateway.core.zones``): the shortest prefix of the text (from '+' and 4 digits on) for
which the table says the same of every number of that length, proven with the resolver's
rewritten patterns (``PrefixPattern``: "does every completion match?", "does any?"), never by
sampling. A warm number is one or two dict hits. A class that no prefix shorter than the number
decides, and every number of a country whose prefix rule or leading digits the rewrite does not
cover (Japan's prefix rule has a '$'), is matched against the table itself. A test compares the
classes with the tables on every calling code, in two orders.

Anything unusual goes to phonenumbers itself, so the verdict is always phonenumbers' own: an
unknown country code, a non-geographic one (+800 ...), a national number with a leading zero
(Italy), or one from which the region's national prefix would be stripped. A test compares both
on many numbers.

Canonical form (``canonical``): every number is stored, keyed, suppressed, capped, routed and
sent as phonenumbers' E.164 of it, so one person has one key. Input may be formatted (spaces,
dashes, dots, parens, slashes), written with any script's decimal digits (full-width,
Arabic-Indic, Devanagari...) and a full-width plus; it is folded to ASCII first. A number
written with its national trunk digit after the country code (``+1 1 212 555 0190``,
``+44 0 7911 123456``) is the person's ``+12125550190`` / ``+447911123456``, as phonenumbers
parses it. Without a numbering context (the API) a number is international: ``+`` or ``00`` then
the country code. With one (an MO sender on a carrier whose ``default_region`` is "US"), a
national number is read in that region, as ``phonenumbers.parse(text, region)`` reads it.
Anything else (letters, extensions) is refused, and so is a number phonenumbers calls valid
with fewer than 7 or more than 15 digits (E.164 §6.1 allows at most 15; the core keys on 7-15). A test compares the verdict and the canonical
form with phonenumbers' on a generated sample of many countries and spellings.
"""

from __future__ import annotations

import operator
import re
import unicodedata as _unicodedata
from collections.abc import Sequence

import phonenumbers
from phonenumbers import phonenumberutil as _pnu
from phonenumbers.phonemetadata import PhoneMetadata

from gateway.core.zones import PrefixPattern

__all__ = ["NumberCheck", "fold"]

_INVALID = "invalid number {!r}: not a number in use in its country's numbering plan"
_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
          "fixed_line")  # fmt: skip


_FORMATTING = frozenset(" \t-.()/[]\u00a0\u2010\u2011\u2012\u2013\u2014\u2212\u3000\u2009\u202f\u200b"
                        "\uff0d\uff0e\uff08\uff09\uff0f")  # fmt: skip
_PLUS = frozenset("+\uff0b")


def fold(text: str) -> str | None:
    """``text`` with formatting dropped and digits made ASCII ('+', then digits), or None if it
    holds anything else (letters, an extension, a second '+', symbols)."""
    if text.isascii() and text[1:].isdigit() and text[:1] == "+":
        return text  # the usual case: already folded
    out: list[str] = []
    for ch in text.strip():
        if ch in _FORMATTING:
            continue
        if ch in _PLUS:
            if out:
                return None
            out.append("+")
            continue
        d = _unicodedata.decimal(ch, None)
        if d is None:
            return None
        out.append(chr(48 + d))
    return "".join(out) or None


class _Region:
    """One region's validity patterns: per national-number length, one regex that asks both
    questions (the general pattern, as a lookahead, and any number type's)."""

    __slots__ = ("leading", "meta", "_by_length")

    def __init__(self, meta: PhoneMetadata) -> None:
        self.meta = meta
        self.leading = re.compile(meta.leading_digits) if meta.leading_digits is not None else None
        self._by_length: dict[int, re.Pattern[str] | None] = {}

    def valid(self, nn: str) -> bool:
        pattern = self._by_length.get(len(nn), False)
        if pattern is False:
            pattern = self._by_length[len(nn)] = self._pattern(len(nn))
        return pattern is not None and pattern.fullmatch(nn) is not None

    def _pattern(self, n: int) -> re.Pattern[str] | None:
        source = self.source(n)
        return None if source is None else re.compile(source)

    def source(self, n: int) -> str | None:
        """The regex (text) of a valid national number of ``n`` digits, or None if none is."""
        m = self.meta
        g = m.general_desc
        if g is None or not g.national_number_pattern or (g.possible_length and n not in g.possible_length):
            return None
        names = _TYPES if m.same_mobile_and_fixed_line_pattern else (*_TYPES, "mobile")
        parts = []
        for name in names:
            desc = getattr(m, name)
            if desc is None or not desc.national_number_pattern:
                continue
            if desc.possible_length and n not in desc.possible_length:
                continue
            parts.append(f"(?:{desc.national_number_pattern})")
        if not parts:
            return None
        return f"(?=(?:{g.national_number_pattern})\\Z)(?:{'|'.join(parts)})"

    def any_length(self, lengths: range) -> str | None:
        """``source`` for every length in ``lengths`` at once (lengths with the same regex
        grouped), each ending the string; None if no length has one."""
        by_source: dict[str, list[int]] = {}
        for n in lengths:
            source = self.source(n)
            if source is not None:
                by_source.setdefault(source, []).append(n)
        if not by_source:
            return None
        alternatives = []
        for source, ns in by_source.items():
            length = "|".join(f"[0-9]{{{n}}}" for n in ns)
            alternatives.append(f"(?=(?:{length})\\Z)(?:{source})\\Z")
        return "|".join(alternatives)


def _table(cc: str, main: PhoneMetadata, prefix: re.Pattern[str] | None, regions: list[_Region],
           ) -> re.Pattern[str] | None:  # fmt: skip
    """One regex that fully matches exactly the numbers ``NumberCheck._fast`` finds valid for
    this country code, written as E.164 ('+', the code, the national number): the same
    questions in the same order, asked by the regex engine instead of Python. Numbers ``_fast``
    leaves to phonenumbers (a leading zero, a national prefix that may be stripped) do not
    match, so ``canonical`` asks. None when the prefix rule cannot be put as a lookahead."""
    lengths = range(max(2, 7 - len(cc)), 16 - len(cc))  # E.164: 7-15 digits, the code's included
    head = rf"\+{cc}(?!0)(?=[0-9]{{{lengths.start},{lengths.stop - 1}}}\Z)"
    if prefix is not None:  # ``_fast`` asks phonenumbers whenever the prefix rule matches
        if "^" in prefix.pattern or any((m := prefix.match(s)) is not None and m.end() == 0 for s in _PROBES):
            return None  # matches empty: the lookahead would refuse every number (Argentina)
        head += f"(?!(?:{prefix.pattern}))"
    alternatives, guards = [], ""
    for r in regions:  # phonenumbers' region_code_for_number: leading digits decide, in order
        body = r.any_length(lengths)
        leading = r.meta.leading_digits if len(regions) > 1 else None
        if leading is None:
            if body is not None:
                alternatives.append(f"{guards}(?:{body})")
            continue
        if "^" in leading:
            return None
        if body is not None:
            alternatives.append(f"{guards}(?=(?:{leading}))(?:{body})")
        guards += f"(?!(?:{leading}))"
    if not alternatives:
        return None
    try:
        return re.compile(f"{head}(?:{'|'.join(alternatives)})")
    except (re.error, RecursionError, OverflowError):
        return None


_PROBES = ("", *"0123456789", "00", "11")
# A prefix class is first looked up at '+' and 4 digits (a calling code and at least the national
# number's first digit); a number of the usual form is '+' and 7-15 ASCII digits.
_START = 5
_E164_COLUMN = re.compile(r"(?:\+[1-9][0-9]{6,14}\n)*\+[1-9][0-9]{6,14}")
_SURE, _NOT_SURE, _ASK_TABLE = 1, 0, 2  # a class's verdict; a negative value: look at that depth
_MOST_CLASSES = 500_000  # per length; beyond it, numbers are matched against their table uncached


class _Kinds:
    """One calling code's patterns as prefix patterns (``PrefixPattern``), to decide for a prefix
    and a length what its table would answer for every completion: the national prefix rule,
    then per region its leading digits, general pattern and types (``_Region.source``'s). A
    region's general and type patterns are rewritten when a prefix first reaches that region
    (NANP has 25 regions; a job's numbers reach a few)."""

    __slots__ = ("prefix", "regions", "exact", "_bodies")

    def __init__(self, prefix: re.Pattern[str] | None, regions: list[_Region]) -> None:
        self.prefix = PrefixPattern(prefix.pattern, None, prefix_match=True) if prefix is not None else None
        self.regions = [(PrefixPattern(r.meta.leading_digits, None, prefix_match=True)
                         if r.meta.leading_digits is not None and len(regions) > 1 else None, r.meta)
                        for r in regions]  # fmt: skip
        # the prefix rule and leading digits in the subset PrefixPattern rewrites: else the
        # table decides each number of the country (Japan's prefix rule has a '$')
        self.exact = all(p.all_of is not None for p in (self.prefix, *(lead for lead, _ in self.regions)) if p is not None)
        self._bodies: dict[int, tuple[PrefixPattern | None, list[PrefixPattern]] | None] = {}

    def _body(self, i: int) -> tuple[PrefixPattern | None, list[PrefixPattern]] | None:
        """Region ``i``'s general pattern and types, or None if one cannot be rewritten."""
        if i not in self._bodies:
            m = self.regions[i][1]
            names = _TYPES if m.same_mobile_and_fixed_line_pattern else (*_TYPES, "mobile")
            general = PrefixPattern.of(m.general_desc) if m.general_desc is not None else None
            types = [t for t in (PrefixPattern.of(getattr(m, name)) for name in names) if t is not None]
            exact = all(p.all_of is not None for p in (general, *types) if p is not None)
            self._bodies[i] = (general, types) if exact else None
        return self._bodies[i]

    def verdict(self, head: str, n: int) -> int | None:
        """What the table says of every national number of ``n`` digits starting with ``head``:
        ``_SURE``, ``_NOT_SURE``, ``_ASK_TABLE`` (a pattern not rewritten), or None (not the
        same for all of them: look deeper)."""
        if head[:1] == "0":
            return _NOT_SURE  # ``_fast`` leaves a leading zero to phonenumbers
        if not head:
            return None
        if self.prefix is not None and not self.prefix.none(head, n):
            return _NOT_SURE if self.prefix.every(head, n) else None
        for i, (leading, _) in enumerate(self.regions):  # region_code_for_number's order
            if leading is not None:
                if leading.none(head, n):
                    continue
                if not leading.every(head, n):
                    return None
                body = self._body(i)
                return _ASK_TABLE if body is None else _valid(*body, head, n)
            body = self._body(i)
            v = _ASK_TABLE if body is None else _valid(*body, head, n)
            if v != _NOT_SURE:
                return v
        return _NOT_SURE


def _valid(general: PrefixPattern | None, types: list[PrefixPattern], head: str, n: int) -> int | None:
    """``_Region.valid`` for every completion of ``head`` to ``n`` digits, or None: not decided."""
    if general is None or general.none(head, n) or all(t.none(head, n) for t in types):
        return _NOT_SURE
    if general.every(head, n) and any(t.every(head, n) for t in types):
        return _SURE
    return None
_HEAD = operator.itemgetter(slice(1, 4))


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


class NumberCheck:
    """``canonical`` for one number at a time; with ``tables``, also ``sure`` for many at once
    (in ingest's worker processes, and for a large chunk the event loop checks itself: a
    country's table takes 0.05-0.3 s to compile, once, which single messages should not spend)."""

    __slots__ = ("_plans", "_heads", "_sure", "_tables", "_use_tables", "_classes", "_kinds")

    def __init__(self, *, tables: bool = False) -> None:
        self._use_tables = tables
        # country code -> (main region's metadata, regions in phonenumbers' order), or None when
        # numbers of that code always go to phonenumbers
        self._plans: dict[str, tuple[PhoneMetadata, re.Pattern[str] | None, list[_Region]] | None] = {}
        self._heads: dict[str, tuple[int, tuple | None]] = {}  # first 3 digits -> (k, plan)
        # the 3 characters after '+' -> the country's table (``_table``), or None: ask ``canonical``
        self._sure: dict[str, re.Pattern[str] | None] = {}
        self._tables: dict[str, re.Pattern[str] | None] = {}  # country code -> its table
        # ``sure``'s prefix classes: text length -> {text prefix: verdict, or -(a deeper prefix's length)}
        self._classes: dict[int, dict[str, int]] = {}
        self._kinds: dict[str, _Kinds | None] = {}  # country code -> its patterns as prefix patterns

    def error(self, number: str) -> str | None:
        """None if valid, else why not (for the API's error body)."""
        return self.canonical(number)[1]

    def sure(self, texts: Sequence[str]) -> list[bool]:
        """For each text, True if it is certainly a valid number written as its own E.164
        (``canonical(text) == (text, None)``): one match of its country's table, the form
        that the campaign layer and most upstreams send, a million times a job. False: not
        certain, ask ``canonical`` (invalid, formatted, or a number only phonenumbers decides)."""
        if not self._use_tables:
            return [False] * len(texts)
        column = "\n".join(texts)
        if _E164_COLUMN.fullmatch(column) is None or column.count("\n") != len(texts) - 1:
            return [self._sure_one(t) for t in texts]  # not all '+' and 7-15 ASCII digits
        classes, walk = self._classes, self._walk
        out: list[bool] = []
        add = out.append
        for t in texts:  # the usual case: one or two dict hits a number (its prefix class)
            d = classes.get(len(t))
            v = d.get(t[:_START]) if d is not None else None
            if v is not None and v < 0:
                v = d.get(t[:-v])
            add(v == _SURE if v is not None and v != _ASK_TABLE and v >= 0 else walk(t))
        return out

    def _sure_one(self, text: str) -> bool:
        if text[:1] == "+" and 8 <= len(text) <= 16 and text.isascii() and text[1:].isdigit() and text[1] != "0":
            return self._walk(text)
        return False

    def _matches_table(self, text: str) -> bool:
        rx = self._sure[text[1:4]] if text[1:4] in self._sure else self._table_for(text[1:4])
        return rx is not None and rx.fullmatch(text) is not None

    def _walk(self, text: str) -> bool:
        """``sure`` of one number ('+' and 7-15 ASCII digits) by its prefix class, the class
        found (and cached) first if it is not known: the shortest prefix, from ``_START``
        characters on, for which the country's table says the same of every number of this
        length (``_Kinds.verdict``). A number no shorter prefix decides is matched against the
        table itself, and so is every number of a country whose patterns ``PrefixPattern``
        cannot rewrite."""
        d = self._classes.setdefault(len(text), {})
        k = _START
        v = d.get(text[:k])
        while v is not None and v < 0:
            k = -v
            v = d.get(text[:k])
        if v is not None:
            return v == _SURE if v != _ASK_TABLE else self._matches_table(text)
        if len(d) >= _MOST_CLASSES:
            return self._matches_table(text)
        depth, v = self._decide(text, k)
        d[text[:depth]] = v
        if depth > k:
            d[text[:k]] = -depth
        return v == _SURE if v != _ASK_TABLE else self._matches_table(text)

    def _decide(self, text: str, k: int) -> tuple[int, int]:
        """(depth, verdict): the shortest prefix of ``text``, ``k`` characters or more, whose
        numbers of this length all get the same answer from the table; ``_ASK_TABLE`` when none
        shorter than the number does (or the country's patterns cannot be decided by prefix)."""
        head = text[1:4]
        if (self._sure[head] if head in self._sure else self._table_for(head)) is None:
            return k, _NOT_SURE  # no table for this head: never sure
        cut, plan = self._heads[text[1:4]]
        cc = text[1:cut]
        kinds = self._kinds.get(cc, False)
        if kinds is False:
            kinds = self._kinds[cc] = _Kinds(plan[1], plan[2]) if plan is not None else None
        if kinds is None or not kinds.exact:
            return k, _ASK_TABLE
        n = len(text) - cut
        for depth in range(max(k, cut), len(text)):
            v = kinds.verdict(text[cut:depth], n)
            if v is not None:
                return depth, v
        return len(text) - 1, _ASK_TABLE

    def canonical(self, text: str, region: str | None = None) -> tuple[str, None] | tuple[None, str]:
        """(phonenumbers' E.164 of ``text``, None), or (None, why not). ``region``: the ISO
        region national numbers are read in (a carrier's ``default_region``); None: ``text``
        must be international ('+' or '00' and the country code). See the module docstring."""
        if text[:1] == "+" and 8 <= len(text) <= 16 and text.isascii() and text[1:].isdigit() and text[1] != "0":
            verdict = self._fast(text)  # the usual case, a million times a job: E.164 as it should be
            if verdict is not None:
                return (text, None) if verdict else (None, _INVALID.format(text))
            return self._parsed(text, text, None)
        number = fold(text)
        if number is None:
            return None, f"invalid number {text!r}: only digits, '+', spaces, dashes, dots, parens and slashes"
        if number[:1] != "+":
            if region is not None:
                return self._parsed(text, number, region)
            if number[:2] != "00":
                return None, f"invalid number {text!r}: E.164 is '+' and 7 to 15 digits (or a national number with a region)"
            number = "+" + number[2:]
        if not (8 <= len(number) <= 16 and number[1:2] != "0"):
            return self._parsed(text, number, None)  # unusual: phonenumbers decides
        verdict = self._fast(number)
        if verdict is None:
            return self._parsed(text, number, None)
        return (number, None) if verdict else (None, _INVALID.format(text))

    def _fast(self, number: str) -> bool | None:
        """True/False, or None: ask phonenumbers."""
        k, plan = self._heads.get(number[1:4]) or self._head(number[1:4])
        if plan is None:
            return None
        nn = number[k:]
        main, prefix, regions = plan
        if nn[:1] == "0" or len(nn) < 2:
            return None
        if prefix is not None and prefix.match(nn) and _pnu._maybe_strip_national_prefix_carrier_code(nn, main)[1] != nn:
            return None
        if len(regions) == 1:
            return regions[0].valid(nn)
        for r in regions:  # phonenumbers' region_code_for_number, then validity in that region
            if r.leading is not None:
                if r.leading.match(nn):
                    return r.valid(nn)
            elif r.valid(nn):
                return True
        return False

    def _head(self, head: str) -> tuple[int, tuple | None]:
        """For the first three digits: where the national number starts and the country's plan
        (None: ask phonenumbers), found once. The country code is the first 1-3 digits that
        name one."""
        found: tuple[int, tuple | None] = (0, None)
        for k in (2, 3, 4):
            cc = head[: k - 1]
            plan = self._plans.get(cc, False)
            if plan is False:
                plan = self._plans[cc] = self._plan(cc)
            if plan is not None:
                found = (k, plan)
                break
            if int(cc) in _pnu.COUNTRY_CODE_TO_REGION_CODE:
                break  # a country code, but an unusual one
        self._heads[head] = found
        return found

    def _table_for(self, head: str) -> re.Pattern[str] | None:
        """The table of the country whose numbers start with '+' and ``head``, kept by head
        when ``head`` is 3 digits (at most 1,000 of them, whatever the input)."""
        if not (len(head) == 3 and head.isascii() and head.isdigit()):
            return None
        table = None
        if head[0] != "0":
            k, plan = self._heads.get(head) or self._head(head)
            if plan is not None:
                cc = head[: k - 1]
                if cc not in self._tables:
                    self._tables[cc] = _table(cc, *plan)
                table = self._tables[cc]
        self._sure[head] = table
        return table

    @staticmethod
    def _plan(cc: str) -> tuple[PhoneMetadata, re.Pattern[str] | None, list[_Region]] | None:
        codes = _pnu.COUNTRY_CODE_TO_REGION_CODE.get(int(cc))
        if not codes or _pnu.REGION_CODE_FOR_NON_GEO_ENTITY in codes:
            return None
        main = PhoneMetadata.metadata_for_region_or_calling_code(int(cc), _pnu.region_code_for_country_code(int(cc)))
        regions = [PhoneMetadata.metadata_for_region(code.upper(), None) for code in codes]
        if main is None or any(m is None for m in regions):
            return None
        try:
            return main, _compile(main.national_prefix_for_parsing), [_Region(m) for m in regions]
        except re.error:
            return None

    @staticmethod
    def _parsed(text: str, number: str, region: str | None) -> tuple[str, None] | tuple[None, str]:
        """phonenumbers' own verdict and E.164 (trunk digits after the country code dropped)."""
        try:
            parsed = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException as exc:
            return None, f"invalid number {text!r}: {exc}"
        if not phonenumbers.is_valid_number(parsed):
            return None, _INVALID.format(text)
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        if not 8 <= len(e164) <= 16:  # phonenumbers' patterns allow a few; E.164 (§6.1) does not
            return None, f"invalid number {text!r}: E.164 is '+' and 7 to 15 digits"
        return e164, None
