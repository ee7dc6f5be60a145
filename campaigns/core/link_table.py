"""Which campaign link a range code is, decided in memory (docs/ARCHITECTURE.md, "A range code
answered without a read").

Pure: no clock, no store. The shell loads the rows (``link_ranges``, the range campaigns' batch
sizes, the first slot a chunked freeze has not written yet, the ``link_shadows`` codes) and asks
``find(code)``: either the code's range link (tenant, campaign, batch, slot, URL position: enough for
the ``Location``; the recipient's own facts are read when the click is written), or ``READ``: the
table cannot tell, ask the store (``resolve_codes``, the one exact resolution). It answers only
what it knows for certain:

- a code decoded with a tenant's key (tenants in name order, as ``resolve_ranges`` tries them) to
  a number inside a range the table holds, at a slot the freeze gave a recipient with the range's
  codes (batch ``b`` holds ``sizes[b]`` recipients; ``holes``: slots whose recipient got other codes;
  slots at or after ``pending`` are not written yet), and not a ``short_links`` row's code
  (``shadows``: a row always wins, and every row whose code falls in a range is listed there);
- everything else is ``READ``: a number past the end of the tenant's known ranges (a range launched
  since the table was loaded), a hole, a shadowed code, a range loaded without its holes (made
  before they were recorded), a code of no range (a row code, or nothing).

Ranges of one ``(tenant, length)`` are contiguous from 0 (each starts where the last ended) and
stay below ``range_limit(length)`` (half the code space), where no row code of the same tenant is
ever minted (``links.in_range_half``): so within a tenant a code is a range code or a row code by
construction, never both."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

import msgspec

from campaigns.core import links

__all__ = ["READ", "LinkTable", "RangeSlots", "TableHit"]

#: ``find``'s "ask the store".
READ = None


class RangeSlots(msgspec.Struct, frozen=True, kw_only=True):
    """One ``link_ranges`` row with which of its slots hold a recipient with its codes."""

    tenant: str
    campaign_id: int
    length: int
    start: int
    count: int
    stride: int
    batch_size: int
    targets: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    sizes: tuple[int, ...] = ()  # recipients of batch b (0 for a batch the campaign has not)
    holes: frozenset[int] | None = None  # None: unknown (a range from before they were recorded)
    pending: int | None = None  # the first slot not written yet (a chunked freeze under way)

    def valid(self, slot: int) -> bool:
        if self.holes is None or slot in self.holes or (self.pending is not None and slot >= self.pending):
            return False
        b, i = divmod(slot, self.batch_size)
        return b < len(self.sizes) and i < self.sizes[b]


#: A range code's link: (its range, batch, slot in the batch, URL position).
TableHit = tuple[RangeSlots, int, int, int]


class LinkTable:
    """Every tenant's ranges by ``(tenant, length)``, searched by link number."""

    def __init__(self, ranges: Iterable[RangeSlots], shadows: Iterable[str], keys: Mapping[str, bytes]) -> None:
        by: dict[tuple[str, int], list[RangeSlots]] = {}
        for g in ranges:
            by.setdefault((g.tenant, g.length), []).append(g)
        self._ranges = {k: sorted(v, key=lambda g: g.start) for k, v in by.items()}
        self._starts = {k: [g.start for g in v] for k, v in self._ranges.items()}
        self._ends = {k: max(g.start + g.count for g in v) for k, v in self._ranges.items()}
        self.shadows = frozenset(shadows)
        self._keys = [(t, keys[t]) for t in sorted(keys)]

    def campaigns(self) -> set[tuple[str, int]]:
        """``(tenant, campaign)`` of every range held."""
        return {(g.tenant, g.campaign_id) for v in self._ranges.values() for g in v}

    def find(self, code: str) -> TableHit | None:
        """``code``'s range link, or ``READ`` (None) when only the store can tell."""
        length = len(code)
        if not links.MIN_CODE <= length <= links.MAX_CODE or code in self.shadows:
            return READ
        for tenant, key in self._keys:
            cipher = links.cipher_for(key, length)
            n = cipher.decode(code)
            if n is None:
                return READ
            k = (tenant, length)
            if n >= self._ends.get(k, 0):
                if n < links.range_limit(length):
                    return READ  # maybe a range launched since the table was loaded
                continue  # the tenant's row half: no range code of this tenant
            ranges = self._ranges[k]
            g = ranges[bisect.bisect_right(self._starts[k], n) - 1]
            if not g.start <= n < g.start + g.count or g.stride <= 0:
                return READ
            slot, position = divmod(n - g.start, g.stride)
            if not g.valid(slot):
                return READ  # a hole, a slot not written yet, or holes unknown: the store decides
            b, i = divmod(slot, g.batch_size)
            return g, b, i, position
        return READ
