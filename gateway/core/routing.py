"""Which carriers a number goes to: the longest configured prefix of its E.164 digits wins.

A route lists carriers in order of preference; the first is the primary, the rest take over
when it is down (failover). Lookups are cached by the number's first digits, since prefixes are
short and numbers many.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from gateway.core.settings import Route

__all__ = ["NoRoute", "Router"]


class NoRoute(LookupError):
    pass


class Router:
    __slots__ = ("_table", "_lengths", "_cache", "_key_digits")

    def __init__(self, routes: Sequence[Route], carrier_index: dict[str, int]) -> None:
        self._table: dict[str, tuple[int, ...]] = {}
        for r in routes:
            self._table.setdefault(r.prefix, tuple(carrier_index[c] for c in r.carriers))
        self._lengths = sorted({len(p) for p in self._table}, reverse=True)
        # Numbers that share their first `_key_digits` digits share their route.
        self._key_digits = max(self._lengths, default=0)
        self._cache: dict[str, tuple[int, ...]] = {}

    def carriers_for(self, digits: str) -> tuple[int, ...]:
        """Carrier indices for a number (its E.164 digits without '+'), best first."""
        key = digits[: self._key_digits]
        found = self._cache.get(key)
        if found is None:
            found = self._lookup(digits)
            if len(digits) >= self._key_digits:
                self._cache[key] = found
        return found

    def primaries(self, texts: Sequence[str]) -> list[int]:
        """``carriers_for(t[1:])[0]`` of each E.164 text ('+' and digits): the cache looked up
        with two C-level ``map``s for a chunk of a large job, the misses one by one."""
        k = self._key_digits
        found = list(map(self._cache.get, map(operator.itemgetter(slice(1, 1 + k)), texts)))
        if None in found:
            found = [f if f is not None else self.carriers_for(t[1:]) for f, t in zip(found, texts)]
        return [f[0] for f in found]

    def _lookup(self, digits: str) -> tuple[int, ...]:
        table = self._table
        for n in self._lengths:
            if n <= len(digits):
                hit = table.get(digits[:n])
                if hit is not None:
                    return hit
        raise NoRoute(f"no route for +{digits}")
