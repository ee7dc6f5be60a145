"""A small, pure rate limit for the public sign-up endpoints (SMS pumping: a public form that texts
any number it is given is an open door for toll fraud). ``WindowLimit.allow(key, now)`` admits at
most ``limit`` calls per key in any ``window`` seconds (a sliding log, bounded in keys and entries)."""

from __future__ import annotations

from collections import OrderedDict, deque


class WindowLimit:
    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000) -> None:
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._log: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        times = self._log.pop(key, None) or deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        ok = len(times) < self.limit
        if ok:
            times.append(now)
        self._log[key] = times  # most recently used last
        while len(self._log) > self.max_keys:
            self._log.popitem(last=False)
        return ok

    def retry_after(self, key: str, now: float) -> float:
        times = self._log.get(key)
        return max(0.0, times[0] + self.window - now) if times and len(times) >= self.limit else 0.0
