"""The click flusher's cadence: it writes when the oldest buffered hit's deadline passes or a batch
is full, and not before, and sleeps while nothing is buffered; a failed flush keeps its hits, in
order (no loss, no duplicate)."""

from __future__ import annotations

import time

import anyio
import pytest

from campaigns.errors import StorageError
from campaigns.service.launch import Launcher
from campaigns.service.tracking import Tracker
from campaigns.store.campaign_rows import LinkRow

pytestmark = pytest.mark.anyio
T0 = 1_767_000_000.0
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"


def _links(store, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    codes = [f"AbCdE{i:03d}" for i in range(n)]
    store.freeze_audience("acme", 1, [], [LinkRow(code=c, tenant="acme", campaign_id=1, subscriber_id=1,
                                                  target=f"https://x.example/{c}", created_at=T0) for c in codes],
                          now=T0)  # fmt: skip
    return codes


async def _until(cond, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(seconds):
        while not cond():
            await anyio.sleep(0.001)


class _Writer:
    """``Tracker._write`` (run in a worker thread) recording when each flush came and what it held;
    the first ``fail`` fail."""

    def __init__(self, store, fail: int = 0) -> None:  # type: ignore[no-untyped-def]
        self.store, self.fail, self.calls = store, fail, []  # type: ignore[var-annotated]

    def __call__(self, hits, now):  # type: ignore[no-untyped-def]
        self.calls.append((time.monotonic(), [h[0] for h in hits]))
        if self.fail > 0:
            self.fail -= 1
            raise StorageError("connection lost")
        return self.store.record_link_hits(Tracker._rows(hits), now=now)


async def test_the_flusher_writes_at_the_oldest_hits_deadline_or_a_full_batch(sqlite_url) -> None:  # type: ignore[no-untyped-def]
    from campaigns.store import open_store

    store = open_store(sqlite_url)
    codes = _links(store, 8)
    interval = 1.0  # long enough that a write at once and one at the deadline are told apart under load
    tracker = Tracker(Launcher(store, {}, {}, lambda: T0 + 100), flush_interval=interval, flush_batch=4)
    writer = tracker._write = _Writer(store, fail=1)  # type: ignore[method-assign]
    for c in codes:  # read once (the links then kept in memory)
        await tracker.redirect(c, method="GET", user_agent=UA)
    with pytest.raises(StorageError):
        await tracker.flush()  # fails: kept
    assert len(tracker._hits) == 8
    await tracker.flush()
    assert store.click_counts("acme", 1).total == 8 and [len(c[1]) for c in writer.calls] == [8, 8]
    writer.calls.clear()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tracker.run_flusher)
            await _until(lambda: tracker._wake is not None)  # asleep: nothing buffered
            assert writer.calls == []
            # a full batch (4) is written at once, without waiting for the deadline: one hit, the
            # flusher asleep on its deadline (a fresh, unset event), then the batch filled
            t = time.monotonic()
            tracker.redirect_nowait(codes[0], method="GET", user_agent=UA)
            await _until(lambda: tracker._wake is not None and not tracker._wake.is_set())
            for c in codes[1:4]:
                tracker.redirect_nowait(c, method="GET", user_agent=UA)
            await _until(lambda: len(writer.calls) == 1)
            assert writer.calls[0][1] == codes[:4] and writer.calls[0][0] - t < interval / 2
            # one hit: written when it has waited the interval, not before (and not lost)
            t = time.monotonic()
            tracker.redirect_nowait(codes[4], method="GET", user_agent=UA)
            await _until(lambda: len(writer.calls) == 2)
            assert writer.calls[1][1] == [codes[4]] and writer.calls[1][0] - t >= interval * 0.9
            tg.cancel_scope.cancel()
        assert store.click_counts("acme", 1).total == 13
    finally:
        store.close()
