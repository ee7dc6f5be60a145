"""The queue's two containers of row numbers: ready lanes (FIFO) and timers (by due second).

Both hold plain row numbers in ``array('q')`` (8 bytes each) instead of Python objects: a queue
of millions of messages is mostly these arrays, and a deque of ints costs ~36 bytes per entry.

- ``Lane``: the ready messages of one (carrier, priority) in one shard. Messages put back after a
  failed attempt go to a small ``retry`` deque that is served first, so a retry keeps its place
  ahead of everything that arrived after it ("retried without losing their order").
- ``Timers``: deferred messages keyed by the whole second at or after their due time (never
  early; at most one second late), with a heap of the distinct seconds.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from collections.abc import Iterator

__all__ = ["Lane", "Timers"]

_COMPACT_AT = 4096


class Lane:
    __slots__ = ("_items", "_head", "_retry")

    def __init__(self) -> None:
        self._items = array("q")
        self._head = 0
        self._retry: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._items) - self._head + len(self._retry)

    def push(self, row: int) -> None:
        self._items.append(row)

    def extend(self, rows: array) -> None:
        """``push`` of each of ``rows``, in order."""
        self._items.extend(rows)

    def push_front(self, row: int) -> None:
        self._retry.append(row)  # retries keep their relative order among themselves

    def unpop(self, row: int) -> None:
        """Put back the row just popped, at the head."""
        self._retry.appendleft(row)

    def peek(self) -> int:
        if self._retry:
            return self._retry[0]
        return self._items[self._head]

    def pop(self) -> int:
        if self._retry:
            return self._retry.popleft()
        row = self._items[self._head]
        self._head += 1
        if self._head >= _COMPACT_AT and self._head * 2 >= len(self._items):
            del self._items[: self._head]
            self._head = 0
        return row

    def __iter__(self) -> Iterator[int]:
        yield from self._retry
        yield from self._items[self._head :]

    def nbytes(self) -> int:
        return self._items.buffer_info()[1] * self._items.itemsize


class Timers:
    __slots__ = ("_buckets", "_heap", "_count")

    def __init__(self) -> None:
        self._buckets: dict[int, array] = {}
        self._heap: list[int] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _bucket(self, due: float) -> array:
        second = math.ceil(due)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = array("q")
            heapq.heappush(self._heap, second)
        return bucket

    def add(self, row: int, due: float) -> None:
        self._bucket(due).append(row)
        self._count += 1

    def extend(self, rows: array, due: float) -> None:
        """``add(row, due)`` of each row, in their order (they share one bucket)."""
        if not rows:
            return
        self._bucket(due).extend(rows)
        self._count += len(rows)

    def next_due(self) -> float | None:
        return float(self._heap[0]) if self._heap else None

    def pop_due(self, now: float) -> array | None:
        """The rows of the earliest second that is due at ``now``, or None. Call until None."""
        heap = self._heap
        if not heap or heap[0] > now:
            return None
        second = heapq.heappop(heap)
        rows = self._buckets.pop(second)
        self._count -= len(rows)
        return rows

    def __iter__(self) -> Iterator[int]:
        for rows in self._buckets.values():
            yield from rows
