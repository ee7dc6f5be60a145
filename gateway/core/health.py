"""Carrier health: when a carrier counts as down (its traffic fails over) and up again.

Pure: the shell reports how many links each carrier has up, with ``now``; ``observe`` answers
with the change to make, if any. A carrier is down once it has had no link up for its
``down_after`` seconds (a link that drops and comes straight back moves nothing), and up again
as soon as one link is up.

Some connectors cannot tell by themselves that their carrier is back: an HTTP connector only
learns it when a request succeeds, and a carrier marked down gets no requests. For those
(``probe_after``), a down carrier is let up again after a cool-off -- a half-open circuit
breaker: traffic routes to it again; if its link does not come up within ``down_after`` it is
down again and the cool-off doubles (up to ``probe_max``); once a link is up, the cool-off is
back to its first value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = ["LinkHealth"]


class LinkHealth:
    __slots__ = ("_down_after", "_probe_after", "_probe_max", "_since", "_down", "_cool", "_probing")

    def __init__(self, down_after: Mapping[str, float], *, probe_after: Mapping[str, float] | None = None,
                 probe_max: float = 300.0) -> None:  # fmt: skip
        self._down_after = dict(down_after)
        self._probe_after = dict(probe_after or {})
        self._probe_max = probe_max
        self._since: dict[str, float] = {}  # carrier -> when its last link went down (or a probe began)
        self._down: dict[str, float] = {}  # carrier -> when it was marked down
        self._cool: dict[str, float] = dict(self._probe_after)  # the current cool-off per probed carrier
        self._probing: set[str] = set()

    def observe(self, carrier: str, bound: int, now: float) -> Literal["down", "up"] | None:
        if bound > 0:
            self._since.pop(carrier, None)
            self._probing.discard(carrier)
            if carrier in self._probe_after:
                self._cool[carrier] = self._probe_after[carrier]
            if carrier in self._down:
                del self._down[carrier]
                return "up"
            return None
        if carrier in self._down:
            if carrier in self._probe_after and now - self._down[carrier] >= self._cool[carrier]:
                del self._down[carrier]  # half-open: let traffic try it again
                self._probing.add(carrier)
                self._since[carrier] = now
                return "up"
            return None
        since = self._since.setdefault(carrier, now)
        if now - since >= self._down_after[carrier]:
            if carrier in self._probing:  # the probe failed: wait twice as long before the next
                self._probing.discard(carrier)
                self._cool[carrier] = min(self._probe_max, self._cool[carrier] * 2)
            self._down[carrier] = now
            return "down"
        return None

    def is_down(self, carrier: str) -> bool:
        return carrier in self._down
