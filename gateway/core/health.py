"""Carrier health: when a carrier counts as down (its traffic fails over) and up again.

Pure: the shell reports how many binds each carrier has up, with ``now``; ``observe`` answers
with the change to make, if any. A carrier is down once it has had no bind up for its
``down_after`` seconds (a bind that drops and comes straight back moves nothing), and up again
as soon as one bind is up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = ["LinkHealth"]


class LinkHealth:
    __slots__ = ("_down_after", "_since", "_down")

    def __init__(self, down_after: Mapping[str, float]) -> None:
        self._down_after = dict(down_after)
        self._since: dict[str, float] = {}  # carrier -> when its last bind went down
        self._down: set[str] = set()

    def observe(self, carrier: str, bound: int, now: float) -> Literal["down", "up"] | None:
        if bound > 0:
            self._since.pop(carrier, None)
            if carrier in self._down:
                self._down.discard(carrier)
                return "up"
            return None
        since = self._since.setdefault(carrier, now)
        if carrier not in self._down and now - since >= self._down_after[carrier]:
            self._down.add(carrier)
            return "down"
        return None

    def is_down(self, carrier: str) -> bool:
        return carrier in self._down
