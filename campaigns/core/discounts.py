"""Unique discount codes per recipient, from a pattern (a pool imported by the shop is the store's job).

Pattern: literal characters, and ``#`` for one random character from an alphabet without look-alikes
(``23456789ABCDEFGHJKLMNPQRSTUVWXYZ``: no 0/O, 1/I; 32 characters, 5 bits each). ``SAVE10-######``
gives ``SAVE10-7KQ2MX``. At least 6 ``#`` are required (32**6 is about 1.07e9 codes), at most 16;
literals are letters, digits, ``-`` and ``_`` (what every shop platform accepts in a code).

A code is a keyed hash (HMAC-SHA256 of the tenant's key and the scope, e.g. campaign and recipient):
the same recipient of the same campaign always gets the same code, so a relaunch after a crash
reserves nothing twice. On a clash with a code the store already holds (``exists``), the attempt
number in the hash is bumped, up to 16 times, then ``code_space_exhausted``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

from campaigns.errors import InvalidInput

__all__ = ["CODE_ALPHABET", "DiscountError", "check_pattern", "discount_code"]

CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
MIN_RANDOM = 6
MAX_RANDOM = 16
MAX_ATTEMPTS = 16
_PATTERN = re.compile(r"^[A-Za-z0-9_#-]{1,64}$")


class DiscountError(InvalidInput):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code, field="discount_pattern")


def check_pattern(pattern: str) -> int:
    """The number of random characters of ``pattern``; raises ``DiscountError`` when unusable."""
    if not _PATTERN.match(pattern):
        raise DiscountError("bad_discount_pattern", f"{pattern!r}: use letters, digits, '-', '_' and '#' (1-64 characters)")
    n = pattern.count("#")
    if not MIN_RANDOM <= n <= MAX_RANDOM:
        raise DiscountError("bad_discount_pattern", f"{pattern!r} has {n} '#'; between {MIN_RANDOM} and {MAX_RANDOM} are needed")
    return n


def _fill(pattern: str, digest: bytes) -> str:
    n = int.from_bytes(digest, "big")
    out = []
    for ch in pattern:
        if ch == "#":
            n, r = divmod(n, 32)
            out.append(CODE_ALPHABET[r])
        else:
            out.append(ch.upper())
    return "".join(out)


def discount_code(pattern: str, *, key: bytes, scope: str, exists: Callable[[str], bool] = lambda _c: False) -> str:
    """The recipient's code for ``scope`` (e.g. ``"camp-7:42"``), the first not already taken."""
    check_pattern(pattern)
    for attempt in range(MAX_ATTEMPTS):
        digest = hmac.new(key, f"{scope}#{attempt}".encode(), hashlib.sha256).digest()
        code = _fill(pattern, digest)
        if not exists(code):
            return code
    raise DiscountError("code_space_exhausted", f"{MAX_ATTEMPTS} codes for {scope!r} were all taken")
