"""SQLite's WAL is copied back into the database by a thread of the store's own (``Checkpointer``), not
inside the ``COMMIT`` of the thread that writes (the bulk events' ingest, the membership pass): what
each commit wrote is checkpointed once that thread has run, the writer's own checkpoint is only a far
backstop, and nothing committed is lost across a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from campaigns.core.events import Item, OrderEvent
from campaigns.store import open_store
from campaigns.store.sqlite_checkpoint import BACKSTOP_PAGES

T0 = 1_760_000_000.0


def _orders(k0: int, n: int) -> list[tuple[OrderEvent, str]]:
    out = []
    for k in range(k0, k0 + n):
        phone = f"+3361{k % 500:07d}"
        out.append((OrderEvent(id=f"e{k}", at=T0 + k, order_id=f"o{k}", phone=phone, total=1000 + k, currency="EUR",
                               payment_status="paid", items=(Item(product=f"p{k % 7}", category="shoes", price=900,
                                                                  quantity=1),)), phone))  # fmt: skip
    return out


def _wal(path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames of it already in the database file), asked on a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return log, done
    finally:
        conn.close()


def test_the_wal_is_checkpointed_by_the_stores_thread_not_by_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = open_store(f"sqlite:///{path}")
    try:
        # the committing connection checkpoints only as a backstop, far past SQLite's 1,000 pages
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES  # type: ignore[attr-defined]
        checkpointer = store._checkpointer  # type: ignore[attr-defined]
        before = checkpointer.checkpoints
        for b in range(3):
            out = store.apply_events("shop", _orders(b * 1000, 1000), now=T0 + 10_000)
            assert {a.outcome for a in out} == {"applied"}
        checkpointer.wait_idle()
        assert checkpointer.checkpoints > before
        log, done = _wal(path)
        assert log == done  # every frame committed so far is in the database file
    finally:
        store.close()
    store = open_store(f"sqlite:///{path}")
    try:
        assert store.apply_events("shop", _orders(0, 3), now=T0 + 10_000)[0].outcome == "duplicate"
        assert sum(store.view("shop", store.subscriber_by_phone("shop", f"+3361{k:07d}").id).stats.orders_count  # type: ignore[union-attr]
                   for k in range(500)) == 3000  # fmt: skip
    finally:
        store.close()


def test_a_store_in_memory_has_no_checkpoint_thread() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        assert store._checkpointer is None  # type: ignore[attr-defined]
        assert store.apply_events("shop", _orders(0, 5), now=T0 + 10_000)[0].outcome == "applied"
    finally:
        store.close()


def test_a_long_wal_is_topped_up_under_the_stores_locks_and_restarts(tmp_path: Path, monkeypatch) -> None:
    """Copied only in the background while the next transaction already writes, the WAL never
    restarted (the bench's grew to the backstop); once it holds ``TOP_UP_FRAMES``, the rest is copied
    under the store's locks (``top_ups``) and a later writer starts the WAL over: its frame count
    falls instead of growing for ever."""
    import campaigns.store.sqlite_checkpoint as ck

    monkeypatch.setattr(ck, "TOP_UP_FRAMES", 200)
    path = tmp_path / "s.db"
    store = open_store(f"sqlite:///{path}")
    try:
        checkpointer = store._checkpointer  # type: ignore[attr-defined]
        seen = []
        for b in range(8):
            store.apply_events("shop", _orders(b * 400, 400), now=T0 + 10_000)
            checkpointer.wait_idle()
            seen.append(_wal(path)[0])
        assert checkpointer.top_ups >= 1
        assert any(later < earlier for earlier, later in zip(seen, seen[1:], strict=False)), seen
    finally:
        store.close()
