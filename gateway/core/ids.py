"""Sortable 64-bit message ids: milliseconds since the epoch, then a counter.

``reserve(n, now)`` hands out a contiguous block, so a job's messages are ``base + offset`` (the
core orders offsets by shard, see ``Admission``) and a job of a million recipients needs to
remember one number. Ids never repeat within a process, even if ``now`` goes backwards: the
generator never hands out a smaller id than before.
"""

from __future__ import annotations

__all__ = ["IdGenerator", "format_id", "parse_id"]

_COUNTER_BITS = 22  # 4M ids per millisecond before borrowing from the next one

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> two characters


class IdGenerator:
    __slots__ = ("_next",)

    def __init__(self, floor: int = 0) -> None:
        self._next = floor

    def bump(self, floor: int) -> None:
        self._next = max(self._next, floor)

    def reserve(self, n: int, now: float) -> int:
        base = max(self._next, int(now * 1000) << _COUNTER_BITS)
        self._next = base + n
        return base


def format_id(value: int) -> str:
    """13 base32 characters; string order equals numeric order. (Two characters a lookup: a
    webhook event carries one, and a loop of 13 was its costliest field.)"""
    p = _PAIRS
    return (_ALPHABET[value >> 60 & 31] + p[value >> 50 & 1023] + p[value >> 40 & 1023] + p[value >> 30 & 1023]
            + p[value >> 20 & 1023] + p[value >> 10 & 1023] + p[value & 1023])  # fmt: skip


def parse_id(text: str) -> int:
    """The id ``format_id`` wrote (either case). ValueError for anything else: another length,
    a character outside the alphabet, or a value that does not fit a signed 64-bit integer
    (13 characters hold 65 bits; ids are stored as SQLite INTEGER)."""
    if len(text) != 13:
        raise ValueError(f"not a message id: {text!r}")
    value = 0
    for ch in text:
        i = _ALPHABET.find(ch.lower()) if ch.isascii() else -1
        if i < 0:
            raise ValueError(f"not a message id: {text!r}")
        value = value << 5 | i
    if value >= 1 << 63:
        raise ValueError(f"not a message id: {text!r}")
    return value
