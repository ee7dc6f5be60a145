"""SQLite's WAL checkpoint on a thread of its own, off the writer's path.

With SQLite's default (``wal_autocheckpoint`` 1000 pages) the connection whose ``COMMIT`` pushes the
WAL past 1,000 pages copies the WAL back into the database file inside that ``COMMIT``: on the
audience's bulk path that was the ingest's commit (~18 µs of CPU an order event, 2,450 WAL pages a
batch of 1,000) and the membership pass's (~8), each holding the store's write lock, which the
other of the two waits for (docs/BENCHMARKS.md, "Issue 17, ninth pass"). A checkpoint needs no write
lock (``PASSIVE``: it copies the frames no reader still needs and never blocks a writer or a reader),
so a thread with a connection of its own does it after the commits, and the two workers' threads
only append to the WAL.

Nothing changes for durability: a commit is the WAL's frames, written before ``COMMIT`` returns, as
before (``synchronous=NORMAL``: durable against a crash of the process); a checkpoint only copies
them. The writer keeps a backstop (``BACKSTOP_PAGES``): if this thread falls far behind (a core busy
elsewhere), the committing connection checkpoints itself as SQLite always did, so the WAL stays
bounded.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from typing import Any

log = logging.getLogger(__name__)

# the writer's own checkpoint only if this thread lags ~16 batches of 1,000 order events behind
BACKSTOP_PAGES = 40_000
# A WAL restarts from its beginning only when a write transaction begins with every frame copied
# back (and no reader on them). Copied while the next transaction already writes, it never is: the
# WAL grew to the backstop (165 MB in the audience bench, against ~17 MB with SQLite's own
# checkpoint). So once it holds this many frames, the remainder is copied under the store's
# membership and write locks (most of it was copied already, without them): no pass's snapshot and no
# transaction of the store is open, so the next writer restarts it.
TOP_UP_FRAMES = 8_000
# rows a connection changed since the last poke before another checkpoint is asked for: a batch of
# order events changes ~6 rows an event; a single event's group commit tens to hundreds
POKE_ROWS = 1_000


class Checkpointer:
    """``poke(total_changes)`` after a commit; the thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` once
    ``POKE_ROWS`` rows were written since its last one. ``wait_idle()`` returns once every poke so far
    was checkpointed (tests). ``checkpoints``: how many ran; ``top_ups``: how many of them finished
    under the store's write lock, so that the WAL restarts (``TOP_UP_FRAMES``)."""

    def __init__(self, path: str, locks: tuple[Any, ...]) -> None:
        self._path = path
        self._locks = locks  # the store's (in its order): held, none of its transactions or snapshots is open
        self._cond = threading.Condition()
        self._asked = 0  # pokes that asked for a checkpoint
        self._done = 0  # of them, answered
        self._closed = False
        self._last_changes = 0
        self.checkpoints = 0
        self.top_ups = 0  # of them, topped up under the write lock (``TOP_UP_FRAMES``)
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def poke(self, total_changes: int) -> None:
        """After a commit of the writing connection (``total_changes``: its running count of rows)."""
        if total_changes - self._last_changes < POKE_ROWS:
            return
        self._last_changes = total_changes
        with self._cond:
            self._asked += 1
            self._cond.notify()

    def wait_idle(self) -> None:
        """Until every checkpoint asked for so far has run (no timeout: the thread never waits on a lock)."""
        with self._cond:
            self._asked += 1  # one more, so what was committed before this call is copied
            self._cond.notify()
            target = self._asked
            while self._done < target and not self._closed:
                self._cond.wait()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                with self._cond:
                    while self._done >= self._asked and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    target = self._asked
                self._checkpoint(conn)
                with self._cond:
                    self._done = target
                    self._cond.notify_all()
        finally:
            conn.close()
            with self._cond:
                self._done = self._asked
                self._cond.notify_all()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= TOP_UP_FRAMES:
                with contextlib.ExitStack() as held:
                    for lock in self._locks:
                        held.enter_context(lock)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.top_ups += 1
        except sqlite3.Error as exc:  # another process's checkpoint, a closing store: the next poke retries
            log.debug("sqlite.checkpoint.skipped error=%s", exc)
            return
        self.checkpoints += 1
