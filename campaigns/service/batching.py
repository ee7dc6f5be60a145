"""Group commit: concurrent callers' items share one flush (one transaction), each caller answered with
its own result once the flush that carried its item is done.

There is no timer: a flush takes every item queued when it starts (up to ``max_items``), so while one
flush runs (a transaction, in a worker thread) the items arriving meanwhile queue up and go together
in the next. An idle service flushes a lone item at once (no added latency); a busy one batches as
much as the store's commit time lets arrive (a few milliseconds' worth). Nothing is answered before
its commit.

``flush(items)`` returns one result per item, an exception instance for an item that failed (that
caller gets it raised); if ``flush`` itself raises, every caller of that flush gets the exception."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R | BaseException]]], *, max_items: int = 1000) -> None:
        self._flush = flush
        self._max = max_items
        self._queue: list[_Slot[T, R]] = []
        self._lock = anyio.Lock()
        self.flushes = 0  # statistics: flushes run, items carried
        self.items = 0

    async def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        self._queue.append(slot)
        while not slot.done:
            async with self._lock:  # one flush at a time; whoever holds the lock flushes for everyone queued
                if not slot.done:
                    await self._flush_queued()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    async def _flush_queued(self) -> None:
        batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        self.flushes += 1
        self.items += len(batch)
        try:
            # Shielded: a caller going away mid-flush must not leave the others' items half-done.
            with anyio.CancelScope(shield=True):
                results = await self._flush([s.item for s in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        for s, r in zip(batch, results, strict=True):
            s.done = True
            if isinstance(r, BaseException):
                s.error = r
            else:
                s.result = r
