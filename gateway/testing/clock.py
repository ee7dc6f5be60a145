"""A clock for tests: time moves only when the test says so."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1_795_532_400.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
