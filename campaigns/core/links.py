"""Per-recipient short links, UTM merging, and telling a person's click from a preview fetcher's.

Pure: no clock, no store. The shell passes ``exists`` (is this code already taken on this domain?) and
the instants.

**URLs in a text** (``find_urls``): ``http://`` or ``https://`` followed by non-space characters, or a
bare ``www.`` host. The match stops at white space, at ``<>"`` and at full-width/CJK punctuation
(``。，、！？；：）」』】`` ...). CJK ideographs (Chinese texts run words into URLs) follow one rule: a
letter or digit of the host followed by an ideograph ends the URL there, and in a URL whose host holds
no ideograph the first ideograph ends it, so "点击https://x.cn/a领取。" gives ``https://x.cn/a`` (such a
URL's Chinese path must be percent-encoded); a host written in ideographs is an internationalised
domain name and its URL runs to the next space or punctuation, path included ("访问https://例子.中国/路径，"
gives ``https://例子.中国/路径``; write a space or punctuation after a bare ideographic host). Trailing
``.,;:!?'`` and ``…`` are sentence punctuation, not part of the URL; a trailing ``)`` or ``]`` is
dropped only when the URL holds no matching opener ("(see https://w.org/wiki/Foo_(bar))" keeps
``Foo_(bar)``). Unicode hosts (``пример.рф``, ``例子.中国``, ``bücher.de``) and paths are kept as
written in the target and sent in IDNA / percent-encoded at redirect time (``with_utm``); a host that
IDNA cannot encode is a ``LinkError("bad_url")`` when the text is checked.

**Short links**: ``https://{domain}/{code}``, at most ``max_length`` (default 22) characters in all.
The code alphabet is base62 (``0-9A-Za-z``); its length is what the limit leaves after the domain,
at most 8 and at least 5 (62**5 is about 9.2e8 codes per domain). A domain too long to leave 5 is a
``LinkError("domain_too_long")``. Codes come from a keyed hash (HMAC-SHA256 of the tenant's secret
key and the link's scope: campaign, recipient, URL position), so a relaunch after a crash mints the
same codes again (idempotent), and nobody can guess a neighbour's code. On a collision with a code
already taken (``exists(code)``), the attempt counter in the hashed message is bumped, up to 64
times, then ``LinkError("code_space_exhausted")``. ``shorten`` is ``splice(skeleton(text))``: a
launch splits each distinct text around its URLs once (``skeleton``, URLs found and checked) and
only mints and splices codes per recipient (``splice``).

**Clicks**: a hit is a click only if it is a GET (a HEAD is a preview), its user agent is not a known
link-preview fetcher or bot, and it comes at least ``min_delay`` seconds (default 10 s) after the
message was delivered, on either side (previews are fetched by the phone or the chat app right on
arrival, and a receipt's time can trail that by a little). Unique
clicks count each (message, link) once; total clicks count every human hit.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal
from urllib.parse import SplitResult, quote, unquote_plus, urlencode, urlsplit, urlunsplit

import msgspec
import numpy as np

from campaigns.errors import InvalidInput

__all__ = ["ALPHABET", "BOT_MARKERS", "ClickTally", "Hit", "HitVerdict", "LinkCipher", "LinkError", "ShortLink",
           "Shortened", "Skeleton", "cipher_for", "classify_hit", "code_length", "in_range_half", "range_limit", "fill", "is_bot_agent", "find_urls", "mint_code", "mint_codes", "shorten", "skeleton",
           "splice", "verdict", "with_utm"]  # fmt: skip

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
MIN_CODE = 5
MAX_CODE = 8
MAX_ATTEMPTS = 64  # half of a tenant's codes are its ranges' (``in_range_half``): 2**-64 to fail
SCHEME = "https://"


class LinkError(InvalidInput):
    """A short link cannot be made as asked; ``code`` says why (``domain_too_long``, ...)."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message, code=code, field=field)


# ---- finding URLs ---------------------------------------------------------------------------

# Characters that end a URL: white space, quotes/brackets that never appear raw in one, CJK
# ideographs ("点击https://x.cn/a领取": Chinese texts run words into URLs; an IRI with a Chinese path
# must be percent-encoded), full-width / CJK punctuation (U+3000-U+303F, full-width forms), curly
# quotes and guillemets, and zero-width spaces/joiners (invisible, but not part of a URL).
_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_STOP = r"\s<>\"\u3000-\u303f\uff01\uff08\uff09\uff0c\uff1a\uff1b\uff1f\uff3b\uff3d\uff5b\uff5d\u2018\u2019\u201c\u201d\u00ab\u00bb\u2039\u203a\u200b-\u200d\u2060\ufeff"
_URL = re.compile(rf"(?:https?://|(?<![\w.@/])www\.)[^{_STOP}]+", re.IGNORECASE)
_IDEOGRAPH = re.compile(f"[{_IDEOGRAPHS}]")
_ALNUM_THEN_IDEOGRAPH = re.compile(f"[A-Za-z0-9](?=[{_IDEOGRAPHS}])")
_HOST_END = re.compile(r"[/?#]")
_TRAILING = ".,;:!?'…"
_PAIRS = {")": "(", "]": "[", "}": "{"}


def _trim(url: str) -> str:
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _PAIRS and url.count(_PAIRS[last]) < url.count(last):
            url = url[:-1]
        else:
            break
    return url


def _cut_at_ideographs(url: str) -> str:
    """The module docstring's rule for CJK ideographs: an ASCII letter or digit of the host followed by
    an ideograph ends the URL ("x.cn领取"); a host without ideographs ends at the first one anywhere."""
    start = url.find("://") + 3 if "://" in url[:8] else 0
    end = _HOST_END.search(url, start)
    host_end = end.start() if end else len(url)
    joint = _ALNUM_THEN_IDEOGRAPH.search(url, start, host_end)
    if joint:
        return url[: joint.end()]
    if not _IDEOGRAPH.search(url, start, host_end):
        first = _IDEOGRAPH.search(url, host_end)
        if first:
            return url[: first.start()]
    return url


def find_urls(text: str) -> list[tuple[int, int, str]]:
    """Each URL in ``text`` as ``(start, end, url)``, in order; ``text[start:end] == url``."""
    found = []
    pos = 0
    while m := _URL.search(text, pos):
        cut = _cut_at_ideographs(m.group())
        pos = m.start() + len(cut)  # what an ideograph cut off may hold the next URL ("a.cn/点击https://b.cn")
        url = _trim(cut)
        host = url.split("://", 1)[-1]
        if len(host) < 4 or "." not in host.split("/", 1)[0]:
            continue  # "https://" alone, or no dotted host
        found.append((m.start(), m.start() + len(url), url))
    return found


# ---- short codes ----------------------------------------------------------------------------


def code_length(domain: str, max_length: int = 22) -> int:
    """How many code characters fit in ``https://{domain}/{code}`` within ``max_length``."""
    room = max_length - len(SCHEME) - len(domain) - 1
    if room < MIN_CODE:
        raise LinkError(
            "domain_too_long",
            f"https://{domain}/ leaves {max(room, 0)} characters for a code within {max_length}; "
            f"at least {MIN_CODE} are needed",
            field="domain",
        )
    return min(room, MAX_CODE)


def _base62(digest: bytes, length: int) -> str:
    # Only the low ``length`` base-62 digits are used: reduce the 256-bit number once, then the
    # digits come from a machine-sized int (same code as digit by digit from the full number).
    n = int.from_bytes(digest, "big") % 62**length
    out = []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(out)


# Two base-62 digits at a time, least significant first (as ``_base62`` writes them).
_DIGIT_PAIRS = tuple(ALPHABET[r % 62] + ALPHABET[r // 62] for r in range(62 * 62))


def _base62_fast(digest: bytes, length: int) -> str:
    """``_base62`` with two digits per division (the launch mints a code per recipient)."""
    n = int.from_bytes(digest, "big") % 62**length
    out = []
    for _ in range(length >> 1):
        n, r = divmod(n, 3844)
        out.append(_DIGIT_PAIRS[r])
    if length & 1:
        out.append(ALPHABET[n])
    return "".join(out)


def mint_codes(sk: Skeleton, key: bytes, scope: str, length: int, taken: set[str],
               exists: Callable[[str], bool] | None = None) -> list[str]:
    """The codes ``splice(sk, scope=scope, exists=...)`` mints, one per URL, free in ``taken`` (and
    ``exists``), each added to ``taken``: the launch's hot path (no structs, two digits per division)."""
    codes: list[str] = []
    digest = hmac.digest
    for i in range(len(sk.urls)):
        prefix = f"{scope}:{i}#"
        for attempt in range(MAX_ATTEMPTS):
            code = _base62_fast(digest(key, f"{prefix}{attempt}".encode(), "sha256"), length)
            if code not in taken and (exists is None or not exists(code)):
                break
        else:
            raise LinkError("code_space_exhausted", f"{MAX_ATTEMPTS} codes for {scope}:{i!r} were all taken")
        taken.add(code)
        codes.append(code)
    return codes


def fill(sk: Skeleton, domain: str, codes: list[str]) -> str:
    """The skeleton's text with its URLs replaced by ``https://{domain}/{code}`` (``codes`` in URL order)."""
    if not codes:
        return sk.pieces[0]
    parts = [sk.pieces[0]]
    base = f"{SCHEME}{domain}/"
    for code, piece in zip(codes, sk.pieces[1:], strict=True):
        parts += (base, code, piece)
    return "".join(parts)


def mint_code(key: bytes, scope: str, length: int, exists: Callable[[str], bool] = lambda _c: False) -> str:
    """A code for ``scope`` (e.g. ``"camp-7:sub-42:0"``), the first free one of the keyed sequence."""
    for attempt in range(MAX_ATTEMPTS):
        digest = hmac.digest(key, f"{scope}#{attempt}".encode(), "sha256")  # one-shot: the launch's hot loop
        code = _base62(digest, length)
        if not exists(code):
            return code
    raise LinkError("code_space_exhausted", f"{MAX_ATTEMPTS} codes for {scope!r} were all taken")


# ---- range codes: a keyed permutation of link numbers (docs/ARCHITECTURE.md) --------------------

_ROUNDS = 8
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_ALPHABET_BYTES = np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)


class LinkCipher:
    """A keyed permutation of ``[0, 62**length)`` and its inverse, written as base62 codes.

    A Feistel network on the mixed-radix pair ``(n // 62**h, n % 62**h)`` (``h = length // 2``):
    each round replaces the pair ``(x, y)`` by ``(y, (x + F(y)) mod |x's half|)``, so after an even
    number of rounds the pair is back in the same halves and the domain is exactly ``62**length``.
    ``F`` is two dependent lookups in tables drawn from SHAKE-256 of the key (one pair per round):
    distinct numbers give distinct codes by construction, and without the key the code of a
    neighbouring number cannot be told. Pure and deterministic: the same key gives the same codes."""

    def __init__(self, key: bytes, length: int) -> None:
        if not MIN_CODE <= length <= MAX_CODE:
            raise LinkError("bad_code_length", f"a code has {MIN_CODE} to {MAX_CODE} characters, not {length}")
        self.length = length
        self.size = 62**length
        self.low = 62 ** (length // 2)  # the size of the low half
        self.high = self.size // self.low  # and of the high half
        raw = hashlib.shake_256(b"sluice-link-cipher:" + length.to_bytes(1, "big") + key).digest(_ROUNDS * 2 * 4096 * 4)
        words = memoryview(raw).cast("I")
        self._np: list[tuple[Any, Any]] | None = None  # the tables as arrays, made on first use
        self._tables = [(tuple(words[(2 * r) * 4096:(2 * r + 1) * 4096]),
                         tuple(words[(2 * r + 1) * 4096:(2 * r + 2) * 4096])) for r in range(_ROUNDS)]  # fmt: skip

    def _permute(self, n: int) -> int:
        x, y = divmod(n, self.low)  # x in the high half, y in the low one
        mods = (self.high, self.low)
        for r, (t1, t2) in enumerate(self._tables):
            h = t1[y & 4095]
            x, y = y, (x + (t2[((y >> 12) ^ h) & 4095] ^ h)) % mods[r & 1]
        return x * self.low + y

    def _unpermute(self, n: int) -> int:
        x, y = divmod(n, self.low)
        mods = (self.high, self.low)
        for r in range(_ROUNDS - 1, -1, -1):
            t1, t2 = self._tables[r]
            h = t1[x & 4095]
            x, y = (y - (t2[((x >> 12) ^ h) & 4095] ^ h)) % mods[r & 1], x
        return x * self.low + y

    def encode(self, n: int) -> str:
        """The code of link number ``n`` (``0 <= n < 62**length``)."""
        if not 0 <= n < self.size:
            raise LinkError("link_number_out_of_range", f"link number {n} is outside [0, 62**{self.length})")
        m = self._permute(n)
        out = []
        for _ in range(self.length >> 1):
            m, r = divmod(m, 3844)
            out.append(_DIGIT_PAIRS[r])
        if self.length & 1:
            out.append(ALPHABET[m])
        return "".join(out)

    def encode_range(self, start: int, count: int) -> list[str]:
        """``[encode(n) for n in range(start, start + count)]`` (a launch's codes, in number order),
        computed as arrays: the same rounds, a few numpy operations per round for the whole range."""
        if count <= 0:
            return []
        flat = self.encode_block(start, count).decode("ascii")
        n = self.length
        return [flat[i:i + n] for i in range(0, count * n, n)]

    def encode_block(self, start: int, count: int) -> bytes:
        """``encode_range(start, count)`` as one ASCII string of ``count * length`` bytes (code ``k`` at
        ``[k * length, (k + 1) * length)``): what a set-based freeze hands its SQL."""
        if count <= 0:
            return b""
        if start < 0 or start + count > self.size:
            raise LinkError("link_number_out_of_range", f"link numbers {start}..{start + count} exceed 62**{self.length}")
        if self._np is None:
            self._np = [(np.asarray(t1, dtype=np.int64), np.asarray(t2, dtype=np.int64)) for t1, t2 in self._tables]
        x, y = np.divmod(np.arange(start, start + count, dtype=np.int64), self.low)
        mods = (self.high, self.low)
        for r, (t1, t2) in enumerate(self._np):
            h = t1[y & 4095]
            x, y = y, (x + (t2[((y >> 12) ^ h) & 4095] ^ h)) % mods[r & 1]
        m = x * self.low + y
        digits = np.empty((count, self.length), dtype=np.uint8)
        for i in range(self.length):  # least significant first, as ``encode`` writes them
            m, d = np.divmod(m, 62)
            digits[:, i] = _ALPHABET_BYTES[d]
        return digits.tobytes()

    def decode(self, code: str) -> int | None:
        """The link number of ``code``; None when it is not a code of this length and alphabet."""
        if len(code) != self.length:
            return None
        m = 0
        for ch in reversed(code):  # least significant digit first, as ``encode`` writes them
            d = _INDEX.get(ch)
            if d is None:
                return None
            m = m * 62 + d
        return self._unpermute(m)


def range_limit(length: int) -> int:
    """Range link numbers of ``length``-character codes stay below this (half the code space); a
    tenant's row codes (HMAC) are minted only among codes its key decodes at or above it
    (``in_range_half``): within a tenant a code is a range code or a row code, never both."""
    return 62**length // 2


def in_range_half(key: bytes, code: str) -> bool:
    """Whether ``code`` decodes with ``key`` below ``range_limit``: a code a range of that tenant may
    hold, so never minted as one of its row codes (pass it as part of ``exists``)."""
    if not MIN_CODE <= len(code) <= MAX_CODE:
        return False
    n = cipher_for(key, len(code)).decode(code)
    return n is not None and n < range_limit(len(code))


@functools.lru_cache(maxsize=64)
def cipher_for(key: bytes, length: int) -> LinkCipher:
    """The key's permutation for codes of ``length``, its tables built once per process."""
    return LinkCipher(key, length)


def _check_url(url: str, position: int) -> None:
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        parts.port  # noqa: B018 - raises ValueError on a port out of range
        host = parts.hostname or ""
        if not host.isascii():
            host.encode("idna")  # what the redirect will send (``_ascii``); UnicodeError is a ValueError
    except ValueError as exc:
        raise LinkError("bad_url", f"{url!r} at {position} is not a valid URL: {exc}", field=str(position)) from exc


class ShortLink(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    url: str  # https://{domain}/{code}
    target: str  # the original URL (UTM parameters are added at redirect time)
    position: int  # which URL of the text, from 0


class Shortened(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    links: tuple[ShortLink, ...]


class Skeleton(msgspec.Struct, frozen=True, kw_only=True):
    """A text split around its URLs, checked once: ``pieces[i]`` precede ``targets[i]`` (as written)
    and ``pieces[-1]`` ends the text. Texts that render alike share one skeleton; only the codes
    differ per recipient (``splice``)."""

    pieces: tuple[str, ...]
    urls: tuple[str, ...]


def skeleton(text: str) -> Skeleton:
    """``text`` split around every URL (``find_urls``); a malformed URL is a ``LinkError("bad_url")``."""
    pieces: list[str] = []
    urls: list[str] = []
    cursor = 0
    for start, end, url in find_urls(text):
        _check_url(url, start)
        pieces.append(text[cursor:start])
        urls.append(url)
        cursor = end
    pieces.append(text[cursor:])
    return Skeleton(pieces=tuple(pieces), urls=tuple(urls))


def splice(
    sk: Skeleton,
    *,
    domain: str,
    key: bytes,
    scope: str,
    exists: Callable[[str], bool] = lambda _c: False,
    max_length: int = 22,
) -> Shortened:
    """The skeleton's text with every URL replaced by a short link unique to ``scope``."""
    length = code_length(domain, max_length)
    if not sk.urls:
        return Shortened(text=sk.pieces[0], links=())
    taken: set[str] = set()
    links: list[ShortLink] = []
    parts: list[str] = []
    for i, url in enumerate(sk.urls):
        code = mint_code(key, f"{scope}:{i}", length, lambda c: c in taken or exists(c))
        taken.add(code)
        short = f"{SCHEME}{domain}/{code}"
        links.append(ShortLink(code=code, url=short, target=url if "://" in url else f"https://{url}", position=i))
        parts += [sk.pieces[i], short]
    parts.append(sk.pieces[-1])
    return Shortened(text="".join(parts), links=tuple(links))


def shorten(
    text: str,
    *,
    domain: str,
    key: bytes,
    scope: str,
    exists: Callable[[str], bool] = lambda _c: False,
    max_length: int = 22,
) -> Shortened:
    """Replace every URL of ``text`` with a short link unique to ``scope`` (campaign + recipient)."""
    code_length(domain, max_length)  # a domain too long is the first error, as before a bad URL
    return splice(skeleton(text), domain=domain, key=key, scope=scope, exists=exists, max_length=max_length)


# ---- UTM ------------------------------------------------------------------------------------


def with_utm(url: str, utm: Mapping[str, str]) -> str:
    """``url`` with the campaign's UTM parameters added where the URL has none of that name.

    Existing query parameters keep their order and values (a merchant's own ``utm_source`` wins); a
    ``utm_*`` name never appears twice (a URL that already repeats one keeps its first). The fragment
    is kept. Keys of ``utm`` must start with ``utm_``. The result is ASCII (``_ascii``): a Unicode host
    in IDNA, other non-ASCII characters percent-encoded, so it can go in a ``Location`` header."""
    for k in utm:
        if not k.startswith("utm_"):
            raise LinkError("bad_utm_key", f"{k!r} is not a utm_ parameter", field=k)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise LinkError("bad_url", f"{url!r} is not a valid URL: {exc}") from exc
    seen: set[str] = set()
    kept: list[str] = []
    for raw in parts.query.split("&") if parts.query else ():
        # Each existing parameter is kept byte for byte (its own encoding, "a" without "=", ...).
        name = unquote_plus(raw.split("=", 1)[0])
        if name.startswith("utm_"):
            if name in seen:
                continue
            seen.add(name)
        kept.append(raw)
    added = [(k, v) for k, v in utm.items() if k not in seen and v]
    if added:
        kept.append(urlencode(added))
    return urlunsplit(_ascii(parts._replace(query="&".join(kept))))


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _pct(text: str) -> str:
    """Non-ASCII characters percent-encoded as UTF-8; everything else (existing escapes too) kept."""
    return _NON_ASCII.sub(lambda m: quote(m.group(), safe=""), text) if not text.isascii() else text


def _ascii(parts: SplitResult) -> SplitResult:
    """An IRI as the URI a ``Location`` header may carry (RFC 3987 §3.1, RFC 9110 §10.2.2): the host
    in IDNA (``bücher.de`` -> ``xn--bcher-kva.de``), the rest percent-encoded as UTF-8. A raw UTF-8
    ``Location`` is not HTTP; clients and proxies read it as Latin-1 or drop it."""
    if parts.netloc.isascii() and parts.path.isascii() and parts.query.isascii() and parts.fragment.isascii():
        return parts
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, colon, port = hostport.partition(":") if not hostport.startswith("[") else (hostport, "", "")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            host = _pct(host)
    netloc = f"{_pct(userinfo)}{at}{host}{colon}{port}"
    return parts._replace(netloc=netloc, path=_pct(parts.path), query=_pct(parts.query), fragment=_pct(parts.fragment))


# ---- clicks ---------------------------------------------------------------------------------

# Lower-case substrings of user agents that fetch links without a person (link previews, crawlers,
# scripts). iMessage previews announce themselves as facebookexternalhit + Twitterbot.
BOT_MARKERS = (
    "bot", "crawler", "spider", "slurp", "preview", "facebookexternalhit", "facebookcatalog",
    "whatsapp", "telegram", "slack", "discord", "skypeuripreview", "linkedinshare", "pinterest",
    "embedly", "quora link preview", "vkshare", "w3c_validator", "redditbot", "applebot", "google-",
    "googleother", "bingpreview", "yahoo", "yandex", "baiduspider", "duckduckgo", "petalbot",
    "bytespider", "headlesschrome", "phantomjs", "lighthouse", "curl/", "wget/", "python-requests",
    "python-urllib", "python-httpx", "aiohttp", "go-http-client", "okhttp", "java/", "libwww",
    "httpclient", "axios/", "node-fetch", "postmanruntime", "insomnia", "scrapy", "feedfetcher",
    "mediapartners", "validator", "monitor", "uptime", "outlook", "microsoft office", "ms-office",
    "proofpoint", "mimecast", "barracuda",
)  # fmt: skip

HitVerdict = Literal["click", "head", "bot", "too_soon"]


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    """One request to a short link, as the redirect endpoint saw it."""

    code: str
    method: str
    user_agent: str | None
    at: float


@functools.lru_cache(maxsize=4096)
def is_bot_agent(user_agent: str) -> bool:
    """An empty user agent, or one naming a known bot or link-preview fetcher (``BOT_MARKERS``).
    Cached: the user agents of a campaign's clicks are a few hundred strings, scanned once each."""
    ua = user_agent.strip().lower()
    return not ua or any(marker in ua for marker in BOT_MARKERS)


def classify_hit(hit: Hit, delivered_at: float | None, *, min_delay: float = 10.0) -> HitVerdict:
    """Whether a hit counts as a click. An absent user agent is a script, hence a bot.

    ``delivered_at`` is when the message was delivered (None when unknown: then only the method and
    user agent decide). A hit within ``min_delay`` of it, on either side (a receipt's time can trail
    the handset's preview fetch), is ``too_soon``; one exactly ``min_delay`` away is a click, and so
    is one long before a late receipt."""
    return verdict(hit.method, hit.user_agent, hit.at, delivered_at, min_delay)


def verdict(method: str, user_agent: str | None, at: float, delivered_at: float | None, min_delay: float) -> HitVerdict:
    """``classify_hit`` without the ``Hit``: the redirect's hot path calls it once per request."""
    if method != "GET" and method.upper() != "GET":
        return "head"
    if not user_agent or is_bot_agent(user_agent):
        return "bot"
    if delivered_at is not None and abs(at - delivered_at) < min_delay:
        return "too_soon"
    return "click"


class ClickTally(msgspec.Struct, kw_only=True):
    """Human clicks per code: ``total`` counts every click, ``unique`` each code once."""

    total: int = 0
    unique: int = 0
    bots: int = 0
    clicked: set[str] = msgspec.field(default_factory=set)

    def add(self, code: str, verdict: HitVerdict) -> bool:
        """Count one hit; True when it is the first human click on ``code``."""
        if verdict != "click":
            self.bots += 1
            return False
        self.total += 1
        if code in self.clicked:
            return False
        self.clicked.add(code)
        self.unique += 1
        return True

    def add_all(self, hits: Iterable[tuple[str, HitVerdict]]) -> ClickTally:
        for code, verdict in hits:
            self.add(code, verdict)
        return self
