"""SQLite's page size: a new store's file has ``PAGE_SIZE`` pages (8 KiB: fewer WAL pages a bulk order
event, docs/BENCHMARKS.md "Issue 17, tenth pass"); a store made before keeps its 4 KiB pages (a file
in WAL mode cannot change them without a rewrite) and stores exactly what a new one stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from campaigns.core.events import Item, OrderEvent
from campaigns.store import open_store
from campaigns.store.sqlite import PAGE_SIZE, SQLiteStore

T0 = 1_760_000_000.0


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def _orders(n: int) -> list[tuple[OrderEvent, str]]:
    out = []
    for k in range(n):
        phone = f"+3361{k % 97:07d}"
        out.append((OrderEvent(id=f"e{k}", at=T0 + k, order_id=f"o{k}", phone=phone, total=1000 + k, currency="EUR",
                               payment_status="paid" if k % 5 else "pending",
                               items=(Item(product=f"p{k % 7}", category="shoes" if k % 2 else "hats", price=900 + k,
                                           quantity=1 + k % 3),)), phone))  # fmt: skip
    return out


def test_a_new_sqlite_store_has_pages_of_8_kib(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    open_store(f"sqlite:///{path}").close()
    assert PAGE_SIZE == 8192
    assert _page_size(path) == 8192


def test_a_store_made_with_4_kib_pages_keeps_them_and_stores_the_same(tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "old.db", tmp_path / "new.db"
    SQLiteStore(str(old_path), page_size=4096).close()  # SQLite's default: every store made before
    old, new = open_store(f"sqlite:///{old_path}"), open_store(f"sqlite:///{new_path}")
    try:
        assert (_page_size(old_path), _page_size(new_path)) == (4096, 8192)
        events = _orders(600)
        for store in (old, new):
            for k in range(0, len(events), 200):
                store.apply_events("t", events[k:k + 200], now=T0 + 1000)
        views = []
        for store in (old, new):
            subs = sorted((store.subscriber_by_phone("t", p) for p in {p for _, p in events}), key=lambda s: s.phone)  # type: ignore[union-attr]
            views.append([(s.phone, store.view("t", s.id)) for s in subs])  # type: ignore[union-attr]
        assert len(views[0]) == 97 and views[0] == views[1]
    finally:
        old.close()
        new.close()
    assert _page_size(old_path) == 4096  # reopened and written: still its own size
    for path in (old_path, new_path):
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
