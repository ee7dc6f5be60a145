"""Per-recipient weekly cap: at most ``limit`` capped messages per (tenant, recipient) in any
rolling ``window`` seconds (default 3 in 7 days).

A send is counted when the core dispatches it (``record``) and un-counted if the message comes
back to the queue before the carrier took it (``refund``), so the cap counts messages, not
attempts. ``next_slot`` answers "when may the next one go?": ``now`` if a slot is free, else the
instant the oldest counted send leaves the window.

Keys are ints (tenant index and number packed by the caller) so the table stays small: a dict
of int -> list of send times, pruned lazily on access and in bulk by ``prune``.
"""

from __future__ import annotations

__all__ = ["WeeklyCap"]

WEEK = 7 * 86400.0


class WeeklyCap:
    __slots__ = ("limit", "window", "_sends")

    def __init__(self, limit: int = 3, window: float = WEEK) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"weekly cap needs limit >= 1 and window > 0, got {limit}, {window}")
        self.limit = limit
        self.window = window
        self._sends: dict[int, list[float]] = {}

    def next_slot(self, key: int, now: float) -> float:
        sends = self._sends.get(key)
        if sends is None or len(sends) < self.limit:
            return now
        horizon = now - self.window
        while sends and sends[0] <= horizon:
            del sends[0]
        if len(sends) < self.limit:
            return now
        return sends[-self.limit] + self.window

    def take(self, key: int, now: float) -> float:
        """Count a send at ``now`` if a slot is free and return ``now``; else count nothing and
        return when the next slot frees (``next_slot`` and ``record`` in one lookup)."""
        sends = self._sends.get(key)
        if sends is None:
            self._sends[key] = [now]
            return now
        slot = self.next_slot(key, now) if len(sends) >= self.limit else now
        if slot <= now:
            sends.append(now)
        return slot

    def record(self, key: int, at: float) -> None:
        sends = self._sends.get(key)
        if sends is None:
            self._sends[key] = [at]
        else:
            sends.append(at)  # `at` is the dispatch instant, non-decreasing per shard

    def refund(self, key: int, at: float) -> None:
        sends = self._sends.get(key)
        if sends is None:
            return
        for i in range(len(sends) - 1, -1, -1):
            if sends[i] == at:
                del sends[i]
                break
        if not sends:
            del self._sends[key]

    def count(self, key: int, now: float) -> int:
        horizon = now - self.window
        return sum(1 for t in self._sends.get(key, ()) if t > horizon)

    def prune(self, now: float) -> int:
        """Forget sends that left the window; returns how many recipients were dropped."""
        horizon = now - self.window
        dead = [k for k, v in self._sends.items() if v[-1] <= horizon]
        for k in dead:
            del self._sends[k]
        return len(dead)

    def __len__(self) -> int:
        return len(self._sends)
