"""CSV import of subscribers with consent columns (pure: text in, typed rows or an error out).

Columns (header row, any order; only ``phone`` is required): the profile fields (``first_name``,
``last_name``, ``email``, ``gender``, ``birthday``, ``country``, ``region``, ``city``, ``time_zone``,
``language``, ``signup_source``), ``tags`` (separated by ``;``), and consent: ``consent`` (``confirmed``
or ``pending``; empty: none), ``consent_at`` (epoch seconds or ISO 8601), ``consent_source``,
``disclosure_text``, ``disclosure_version``, and evidence (``ip``, ``user_agent``, ``page_url``,
``form_id``, ``keyword``, ``mo_id``, ``checkout_id``).

A row claiming consent without proof (no ``consent_at``, or neither a disclosure text nor any evidence)
is imported as **not marketable**: its profile is stored, its consent is not. A malformed row refuses
the whole file with the row and column named (``rows[3].birthday``): nothing is half-imported."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
from typing import Any

import msgspec

from campaigns.core.consent import SOURCES, Evidence
from campaigns.core.events import Profile, canonical_phone
from campaigns.errors import InvalidInput

PROFILE_COLUMNS = ("first_name", "last_name", "email", "gender", "birthday", "country", "region", "city",
                   "time_zone", "language", "signup_source")  # fmt: skip
EVIDENCE_COLUMNS = ("ip", "user_agent", "page_url", "form_id", "keyword", "mo_id", "checkout_id")
CONSENT_COLUMNS = ("consent", "consent_at", "consent_source", "disclosure_text", "disclosure_version")
KNOWN = frozenset({"phone", "tags", *PROFILE_COLUMNS, *EVIDENCE_COLUMNS, *CONSENT_COLUMNS})
MAX_ROWS = 1_000_000


class ImportRow(msgspec.Struct, frozen=True, kw_only=True):
    profile: Profile
    phone: str
    consent: str | None  # "confirmed" | "pending" | None (no proof, or none claimed)
    consent_at: float | None = None
    source: str = "import"
    disclosure_text: str | None = None
    disclosure_version: str | None = None
    evidence: Evidence = Evidence()
    unproven: bool = False  # consent was claimed without proof: imported as not marketable


def _time(raw: str, field: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{field}: {raw!r} is neither epoch seconds nor ISO 8601", code="invalid_field",
                           field=field) from None  # fmt: skip
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def _row(rec: dict[str, str], i: int, file_name: str, region: str | None) -> ImportRow:
    at = f"rows[{i}]"
    vals = {k: v.strip() for k, v in rec.items() if k is not None and v is not None and v.strip()}
    for k, v in vals.items():
        if "\x00" in v:  # PostgreSQL cannot store it, SQLite would: refused alike
            raise InvalidInput(f"{at}: NUL character (U+0000) in {k}", code="invalid_field", field=f"{at}.{k}")
    fields: dict[str, Any] = {k: vals[k] for k in PROFILE_COLUMNS if k in vals}
    if "tags" in vals:
        fields["tags"] = tuple(t.strip() for t in vals["tags"].split(";") if t.strip())
    if "phone" not in vals:
        raise InvalidInput(f"{at}: phone is required", code="missing_field", field=f"{at}.phone")
    try:
        profile = msgspec.convert({"phone": vals["phone"], **fields}, Profile)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        col = msg.rsplit("$.", 1)[1].rstrip("`") if "$." in msg else "row"
        raise InvalidInput(f"{at}: {msg}", code="invalid_field", field=f"{at}.{col}") from None
    phone = canonical_phone(vals["phone"], region=profile.country or region, field=f"{at}.phone")
    claimed = vals.get("consent", "").lower() or None
    if claimed not in (None, "confirmed", "pending", "none"):
        raise InvalidInput(f"{at}: consent must be confirmed, pending or empty", code="invalid_field",
                           field=f"{at}.consent")  # fmt: skip
    source = vals.get("consent_source", "import")
    if source not in SOURCES:
        raise InvalidInput(f"{at}: consent_source must be one of {', '.join(SOURCES)}", code="invalid_field",
                           field=f"{at}.consent_source")  # fmt: skip
    consent_at = _time(vals["consent_at"], f"{at}.consent_at") if "consent_at" in vals else None
    evidence = Evidence(import_file=file_name or None, **{k: vals[k] for k in EVIDENCE_COLUMNS if k in vals})
    has_proof = consent_at is not None and ("disclosure_text" in vals or any(k in vals for k in EVIDENCE_COLUMNS))
    claimed = None if claimed == "none" else claimed
    return ImportRow(profile=profile, phone=phone, consent=claimed if has_proof else None, consent_at=consent_at,
                     source=source, disclosure_text=vals.get("disclosure_text"),
                     disclosure_version=vals.get("disclosure_version"), evidence=evidence,
                     unproven=claimed is not None and not has_proof)  # fmt: skip


# The charsets a CSV may declare: the IANA names spreadsheets and shops write (Python's own codecs such as
# unicode_escape, idna or rot13 are not text files' encodings).
_CHARSETS = frozenset(codecs.lookup(n).name for n in (
    "utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "ascii", "latin-1",
    *(f"iso-8859-{i}" for i in (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)), *(f"cp125{i}" for i in range(9)),
    "cp437", "cp850", "cp852", "cp866", "mac-roman", "koi8-r", "koi8-u", "gb2312", "gbk", "gb18030", "big5", "big5hkscs",
    "shift_jis", "cp932", "euc-jp", "iso-2022-jp", "euc-kr", "cp949", "tis-620", "cp874"))  # fmt: skip
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE begins like UTF-16 LE


def decode_csv(raw: bytes, charset: str | None = None) -> str:
    """A CSV file's bytes as text, never guessed (a wrong guess would store wrong names and consent
    texts): the encoding its byte order mark declares (UTF-8, UTF-16 as a spreadsheet's "Unicode
    text" export, UTF-32), else the ``charset`` the sender declares (``Content-Type: text/csv;
    charset=windows-1252``, RFC 7111 §3), else UTF-8. Bytes that are not of that encoding are refused
    naming the line and byte (a 422 ``invalid_encoding``); an unknown charset names ``charset``."""
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), None)
    if encoding is None and charset:
        try:
            info = codecs.lookup(charset.strip())
        except (LookupError, ValueError, TypeError):
            info = None
        if info is None or info.name not in _CHARSETS:
            raise InvalidInput(f"unknown charset {charset[:40]!r}", code="invalid_encoding", field="charset")
        encoding = "utf-8-sig" if info.name == "utf-8" else info.name
    if encoding is None and b"\x00" in raw[:2]:  # a header's first letter in UTF-16 or UTF-32: a NUL beside it
        raise InvalidInput("the CSV holds NUL bytes: UTF-16 or UTF-32 without a byte order mark? Declare its charset "
                           "(text/csv; charset=utf-16le) or save it as CSV UTF-8", code="invalid_encoding", field="header")
    try:
        return raw.decode(encoding or "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].decode(encoding or "utf-8", "replace").count("\n") + 1
        name = "UTF-8" if encoding in (None, "utf-8-sig") else encoding
        hint = " (declare its charset, or save it as CSV UTF-8)" if encoding is None else ""
        raise InvalidInput(f"the CSV is not {name}: byte 0x{raw[exc.start]:02x} on line {line}{hint}",
                           code="invalid_encoding", field=f"rows[{max(line - 2, 0)}]" if line > 1 else "header") from None  # fmt: skip


def _delimiter(text: str) -> str:
    """The header row's delimiter: a comma, else a semicolon (spreadsheets in locales whose decimal
    mark is a comma write those) or a tab, whichever the header holds."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return ";" if header.count(";") >= header.count("\t") and ";" in header else "\t" if "\t" in header else ","


def _table(text: str) -> tuple[str, str]:
    """The CSV without its preamble, and its delimiter. A first line ``sep=;`` (Excel's hint, written
    by tools that export for it) names the delimiter and is not the header."""
    text = text.removeprefix("\ufeff")
    first = text.split("\n", 1)[0].rstrip("\r")
    if first.lower().startswith("sep=") and len(first) == 5:
        return text.split("\n", 1)[1] if "\n" in text else "", first[4]
    return text, _delimiter(text)


def csv_header(text: str) -> list[str]:
    """The column names of a CSV's header row (trimmed, lower-case), checked: a ``phone`` column, no
    unknown column, none twice; else InvalidInput naming the column. A column without a name (a
    spreadsheet's used range wider than its data: ``phone,first_name,,``) is kept as ``""``: its
    cells must be empty (``parse_csv``)."""
    text, delimiter = _table(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error as exc:
        raise InvalidInput(f"header: {exc}", code="invalid_csv", field="header") from None
    if "phone" not in header:
        raise InvalidInput("the header row must name a phone column", code="missing_field", field="phone")
    named = [h for h in header if h]
    unknown = sorted(set(named) - KNOWN)
    if unknown:
        raise InvalidInput(f"unknown columns: {', '.join(unknown)}", code="unknown_field", field=unknown[0])
    if len(set(named)) < len(named):
        twice = sorted({h for h in named if named.count(h) > 1})
        raise InvalidInput(f"columns named twice: {', '.join(twice)}", code="invalid_csv", field=twice[0])
    return header


def parse_csv(text: str, *, file_name: str = "", region: str | None = None) -> list[ImportRow]:
    header = csv_header(text)
    text, delimiter = _table(text)
    unnamed = {f"\x00{j}": j for j, h in enumerate(header) if not h}  # never a column's name: NUL
    names = [h or f"\x00{j}" for j, h in enumerate(header)]
    reader = csv.DictReader(io.StringIO(text, newline=""), fieldnames=names, delimiter=delimiter)
    next(reader, None)  # the header row, read by csv_header
    rows = []
    i = -1
    try:
        for i, rec in enumerate(reader):
            if i >= MAX_ROWS:
                raise InvalidInput(f"more than {MAX_ROWS} rows: split the file", code="too_large", field="rows")
            extra = rec.pop(None, None)  # type: ignore[call-overload]
            if extra is not None and any(v.strip() for v in extra):  # a column shifted: never guessed
                raise InvalidInput(f"rows[{i}]: {len(header) + len(extra)} values for {len(header)} columns",
                                   code="invalid_csv", field=f"rows[{i}]")  # fmt: skip
            if not any(v and v.strip() for v in rec.values()):  # a spreadsheet's empty row (",,,"), or ",,, "
                continue
            for key, j in unnamed.items():
                if (rec.get(key) or "").strip():
                    raise InvalidInput(f"rows[{i}]: a value in column {j + 1}, which the header row does not name",
                                       code="invalid_csv", field=f"rows[{i}]")  # fmt: skip
            rows.append(_row(rec, i, file_name, region))
    except csv.Error as exc:  # a field over the csv module's limit, a NUL on older Pythons, ...
        raise InvalidInput(f"rows[{i + 1}]: {exc}", code="invalid_csv", field=f"rows[{i + 1}]") from None
    return rows
