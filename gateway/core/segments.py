"""SMS encodings and segments: GSM 03.38 7-bit or UCS-2, split into concatenated parts.

Rules (3GPP TS 23.038 §6.2.1 for the alphabet, TS 23.040 §9.2.3.24.1 for concatenation):

- A text that uses only the GSM 7-bit default alphabet and its extension table is sent as GSM-7.
  An extension character (``^ { } \\ [ ~ ] | €`` and form feed) costs two septets: ESC (0x1B)
  then its code. A single SMS holds 160 septets; a part of a long one 153 (the 6-octet
  concatenation UDH with an 8-bit reference takes 7 septets) or 152 (16-bit reference). An escape
  pair never straddles two parts: a part ends one septet early instead.
- Anything else is UCS-2 (UTF-16 code units; a character outside the BMP, such as an emoji, is a
  surrogate pair of two units that never straddles two parts). 70 units single; 67 per part
  (8-bit reference) or 66 (16-bit).

``plan`` only counts (fast: C-level string operations for the common cases); ``split`` produces
the parts' payloads. Deciding that a message is too long is the caller's job: never truncate.

What dispatch sends of a text that is not GSM-7 as written (``composed``, ``smart``):

- Always its Unicode NFC form (``composed``). NFC is canonical equivalence (Unicode UAX #15): the
  same text to every reader, so sending it is lossless. A decomposed text (NFD: "e" + U+0301 where
  "é" is meant, as macOS file names and some keyboards produce) would otherwise be UCS-2 for one
  combining mark although its composed form is GSM-7, or take two UTF-16 units a letter
  (Romanian "s" + U+0326 is one "ș" composed). Carriers pass the text they get through: nobody
  downstream composes it for us.
- With ``core.smart_encoding`` (``smart``), then look-alikes replaced by GSM characters if that
  makes the whole text GSM-7: typographic quotes and dashes, spaces, accented vowels GSM-7 lacks
  (á -> a), Romanian ș ț ă (comma- and cedilla-below forms) -> s t a, and ç -> Ç. The default
  alphabet's 0x09 is capital Ç (TS 23.038 §6.2.1); handsets show it as Ç or ç by make (the
  Unicode mapping table reads it as ç; Kannel maps both to 0x09), which is closer than any other
  GSM character and costs no segment. Whoever needs the exact lowercase ç sends with smart
  encoding off (the text goes as UCS-2).
"""

from __future__ import annotations

import re
import unicodedata

import msgspec

__all__ = [
    "GSM7",
    "UCS2",
    "Plan",
    "Split",
    "composed",
    "decode_gsm7",
    "decode_ucs2",
    "encode_gsm7",
    "encode_ucs2",
    "is_gsm7",
    "is_plain",
    "pack_septets",
    "plain_count",
    "plain_segments",
    "plain_septets",
    "plan",
    "smart",
    "split",
    "udh_concat",
    "unpack_septets",
]

GSM7 = "gsm7"
UCS2 = "ucs2"
ESC = 0x1B

# TS 23.038 §6.2.1: the default alphabet, by septet value (0x1B is the escape to the extension).
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# TS 23.038 §6.2.1.1: the extension table (after ESC).
_EXT = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65}
assert len(_BASIC) == 128

_TO_SEPTET = {ch: i for i, ch in enumerate(_BASIC) if i != ESC}
_FROM_EXT = {code: ch for ch, code in _EXT.items()}
_GSM_CHARS = "".join(_TO_SEPTET) + "".join(_EXT)
_NON_GSM = re.compile("[^" + re.escape(_GSM_CHARS) + "]")
_EXT_RE = re.compile("[" + re.escape("".join(_EXT)) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
# ASCII characters that are not one plain GSM septet: controls but \n \r, '`', DEL, extensions.
_ASCII_SPECIAL = re.compile(r"[\x00-\x09\x0b-\x0c\x0e-\x1f`\x7f^{}\\\[~\]|]")

# Characters that are one plain septet each: the basic set's, none of the ASCII specials. A text of
# only these is ``no_ascii_special`` and ``one_septet_each`` at once, found in one scan.
_PLAIN_SEPTETS = "".join(ch for ch in _TO_SEPTET if ch not in _EXT and _ASCII_SPECIAL.match(ch) is None)
_NOT_PLAIN_SEPTET = re.compile("[^" + re.escape(_PLAIN_SEPTETS) + "]")

_SINGLE = {GSM7: 160, UCS2: 70}
_PART = {(GSM7, False): 153, (GSM7, True): 152, (UCS2, False): 67, (UCS2, True): 66}

# Unicode look-alikes and their GSM stand-ins, for ``smart``.
_SMART = str.maketrans({
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "´": "'", "`": "'",
    "“": '"', "”": '"', "„": '"', "‟": '"', "″": '"', "«": '"', "»": '"',
    "–": "-", "—": "-", "‒": "-", "―": "-", "‐": "-", "‑": "-", "−": "-",
    "…": "...", "•": "-", "·": ".",
    "\u00a0": " ", "\u2000": " ", "\u2001": " ", "\u2002": " ", "\u2003": " ", "\u2004": " ",
    "\u2005": " ", "\u2006": " ", "\u2007": " ", "\u2008": " ", "\u2009": " ", "\u200a": " ",
    "\u202f": " ", "\u205f": " ", "\u3000": " ", "\u200b": "", "\ufeff": "", "\t": " ",
    "ș": "s", "ş": "s", "ț": "t", "ţ": "t", "ă": "a", "Ș": "S", "Ş": "S", "Ț": "T", "Ţ": "T", "Ă": "A",
    "Â": "A", "Î": "I",
    "ç": "Ç", "á": "a", "í": "i", "ó": "o", "ú": "u", "â": "a", "ê": "e", "î": "i", "ô": "o",
    "û": "u", "ë": "e", "ï": "i", "ã": "a", "õ": "o", "Á": "A", "Í": "I", "Ó": "O", "Ú": "U",
})  # fmt: skip


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    encoding: str  # "gsm7" | "ucs2"
    segments: int
    units: int  # septets (gsm7) or UTF-16 code units (ucs2), in all


class Split(msgspec.Struct, frozen=True, kw_only=True):
    encoding: str
    parts: list[bytes]  # payloads without UDH: unpacked septets, or UTF-16-BE


def is_gsm7(text: str) -> bool:
    return _NON_GSM.search(text) is None


def composed(text: str) -> str:
    """The text in Unicode NFC (canonically equivalent: lossless), or ``text`` itself when it is
    already composed, so a caller can tell by identity that nothing changed."""
    if text.isascii():
        return text
    nfc = unicodedata.normalize("NFC", text)
    return text if nfc == text else nfc


def smart(text: str) -> str:
    """``composed``, then look-alikes replaced by GSM characters if that makes the whole text
    GSM-7; ``text`` itself when neither changes it."""
    if is_gsm7(text):
        return text
    nfc = composed(text)
    if nfc is not text and is_gsm7(nfc):
        return nfc
    replaced = nfc.translate(_SMART)
    return replaced if is_gsm7(replaced) else nfc


def is_plain(text: str) -> bool:
    """Plain GSM-7: ASCII with one septet a character (no extension, no control but CR/LF)."""
    return text.isascii() and _ASCII_SPECIAL.search(text) is None


def one_septet_each(text: str) -> bool:
    """Every character of ``text`` is one GSM-7 septet of the basic set (no extension, nothing
    outside GSM-7): its length is its septets, as ``plan`` counts them ("Chloé")."""
    return _NON_GSM.search(text) is None and _EXT_RE.search(text) is None


def plain_septets(text: str) -> bool:
    """Every character of ``text`` is one septet of the basic set and no ASCII special: both
    ``no_ascii_special`` and ``one_septet_each`` (a campaign's texts with "Chloé" in them), in
    one scan instead of three."""
    return _NOT_PLAIN_SEPTET.search(text) is None


def no_ascii_special(text: str) -> bool:
    """No ASCII character of ``text`` is other than one plain septet (``is_plain`` of its ASCII
    part): with it, each ASCII piece of ``text`` is plain GSM-7."""
    return _ASCII_SPECIAL.search(text) is None


def plain_segments(text: str) -> int:
    """How many segments (8-bit reference) a plain GSM-7 text takes; 0 if it is not one (ask
    ``plan``)."""
    return plain_count(len(text)) if is_plain(text) else 0


def plain_count(units: int) -> int:
    """Segments of a plain GSM-7 text of ``units`` characters (8-bit reference)."""
    return 1 if units <= 160 else -(-units // 153)


def plan(text: str, *, ref16: bool = False) -> Plan:
    if text.isascii() and _ASCII_SPECIAL.search(text) is None:  # the common case: one scan
        units = len(text)
        if units <= 160:
            return Plan(encoding=GSM7, segments=1, units=units)
        return Plan(encoding=GSM7, segments=-(-units // (152 if ref16 else 153)), units=units)
    if _NON_GSM.search(text) is None:
        ext = len(_EXT_RE.findall(text)) if _EXT_RE.search(text) else 0
        units = len(text) + ext
        if units <= 160:
            return Plan(encoding=GSM7, segments=1, units=units)
        if not ext:
            per = 152 if ref16 else 153
            return Plan(encoding=GSM7, segments=-(-units // per), units=units)
        return Plan(encoding=GSM7, segments=len(_gsm_parts(text, ref16)), units=units)
    astral = len(_ASTRAL.findall(text)) if not text.isascii() else 0
    units = len(text) + astral
    if units <= 70:
        return Plan(encoding=UCS2, segments=1, units=units)
    if not astral:
        per = 66 if ref16 else 67
        return Plan(encoding=UCS2, segments=-(-units // per), units=units)
    return Plan(encoding=UCS2, segments=len(_ucs2_parts(text, ref16)), units=units)


def split(text: str, *, ref16: bool = False) -> Split:
    if is_gsm7(text):
        return Split(encoding=GSM7, parts=_gsm_parts(text, ref16))
    return Split(encoding=UCS2, parts=_ucs2_parts(text, ref16))


def _gsm_parts(text: str, ref16: bool) -> list[bytes]:
    septets = encode_gsm7(text)
    if len(septets) <= 160:
        return [septets]
    per = _PART[(GSM7, ref16)]
    parts, start = [], 0
    while start < len(septets):
        end = min(start + per, len(septets))
        if end < len(septets) and _ends_in_escape(septets, start, end):
            end -= 1  # the escape goes with its character to the next part
        parts.append(septets[start:end])
        start = end
    return parts


def _ends_in_escape(septets: bytes, start: int, end: int) -> bool:
    """Is septets[end-1] an ESC that starts a pair (not the second half of one)?"""
    i = start
    while i < end:
        if septets[i] == ESC:
            if i == end - 1:
                return True
            i += 2
        else:
            i += 1
    return False


def _ucs2_parts(text: str, ref16: bool) -> list[bytes]:
    data = encode_ucs2(text)
    if len(data) <= 140:
        return [data]
    per = _PART[(UCS2, ref16)] * 2
    parts, start = [], 0
    while start < len(data):
        end = min(start + per, len(data))
        if end < len(data) and 0xD8 <= data[end - 2] <= 0xDB:
            end -= 2  # a high surrogate stays with its low one
        parts.append(data[start:end])
        start = end
    return parts


def encode_gsm7(text: str) -> bytes:
    """One septet per octet; extension characters as ESC + code. The text must be GSM-7."""
    out = bytearray()
    for ch in text:
        s = _TO_SEPTET.get(ch)
        if s is not None:
            out.append(s)
        else:
            out += bytes((ESC, _EXT[ch]))
    return bytes(out)


def decode_gsm7(data: bytes) -> str:
    """Tolerant: an unknown escape reads as its base character (TS 23.038 note), ESC at the end as
    a space, octets above 0x7F as '?'. Never raises."""
    out, i, n = [], 0, len(data)
    while i < n:
        b = data[i]
        if b == ESC:
            if i + 1 < n:
                code = data[i + 1]
                ext = _FROM_EXT.get(code)
                out.append(ext if ext is not None else (_BASIC[code] if code < 128 and code != ESC else " "))
                i += 2
                continue
            out.append(" ")
        else:
            out.append(_BASIC[b] if b < 128 else "?")
        i += 1
    return "".join(out)


def encode_ucs2(text: str) -> bytes:
    return text.encode("utf-16-be", errors="surrogatepass")


def decode_ucs2(data: bytes) -> str:
    return data.decode("utf-16-be", errors="replace")


def pack_septets(septets: bytes) -> bytes:
    """GSM 7-bit packing (TS 23.038 §6.1.2.1.1): 8 septets in 7 octets, LSB first."""
    out, acc, bits = bytearray(), 0, 0
    for s in septets:
        acc |= (s & 0x7F) << bits
        bits += 7
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_septets(data: bytes, count: int) -> bytes:
    out, acc, bits = bytearray(), 0, 0
    for b in data:
        acc |= b << bits
        bits += 8
        while bits >= 7 and len(out) < count:
            out.append(acc & 0x7F)
            acc >>= 7
            bits -= 7
    return bytes(out)


def udh_concat(ref: int, total: int, seq: int, *, ref16: bool = False) -> bytes:
    """The concatenation UDH (TS 23.040 §9.2.3.24.1/.8): IEI 0x00 (8-bit ref) or 0x08 (16-bit)."""
    if not 1 <= seq <= total <= 255:
        raise ValueError(f"bad concatenation part {seq}/{total}")
    if ref16:
        return bytes((6, 0x08, 4, (ref >> 8) & 0xFF, ref & 0xFF, total, seq))
    return bytes((5, 0x00, 3, ref & 0xFF, total, seq))
