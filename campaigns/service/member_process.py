"""The membership loop's passes in a process of their own (issue 17: both cores working).

A membership pass (``Store.refresh_members``: the segments' restricted SQL for the subscribers a
batch touched, then the differences written) is mostly SQLite's work, which releases the GIL, but
its Python half (binding, reading rows, building the differences) shared the GIL with the ingest's
Python half: with both in one process, the two cores were never both busy with Python. Here the
pass runs in a child process that opens the same store by URL (SQLite: the same file, WAL; its
snapshot read and its short write transaction are the same as in-process; its write waits for a turn
the parent grants by taking its store's write lock for it (``_write_turn``), so it queues with the
batches as in-process; PostgreSQL: connections of its own, row locks).

What crosses: the pass's plans (``MemberPlan``: compiled SQL and parameters) out, the number of
changes (and the child's CPU, for the bench) back, as msgpack over a pipe (``send_bytes``; no
pickle). One request at a time. The parent holds its store's ``_member_lock`` while the child runs a
pass, so membership writers stay serialised exactly as before: the parent's own (rebuilds, members
set one by one, timers) never interleave with a pass of the child's, and the child's passes are one
after another (the proof in ``SqlStore.refresh_members`` is unchanged). Rows the child writes (the
memberships, their timers, flows' ``segment_entered`` inputs) are the same rows, in the same
transaction, as in-process.

If the child dies or cannot be started, the pass runs in-process (``Store.refresh_members``) and the
error is logged: a pass is idempotent (it writes the difference with what is stored), so re-running
one the child may or may not have committed is safe.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import msgspec

from campaigns.errors import StorageError
from campaigns.store.base import MemberPlan

__all__ = ["MemberProcess"]

log = logging.getLogger(__name__)


class _Request(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    tenant: str
    plans: list[MemberPlan]
    now: float


class _Reply(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    changes: int = 0
    cpu_s: float = 0.0  # the child's CPU in passes so far
    error: str | None = None


_enc = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(_Request)
_replies = msgspec.msgpack.Decoder(_Reply)


_TURN, _GO = b"turn", b"go"  # the child asks for its write turn (SQLite), the parent grants it


def _serve(url: str, conn: Any) -> None:  # pragma: no cover - runs in the child (tests see its effects)
    from campaigns.store import open_store

    store = open_store(url)
    if store.engine == "sqlite":
        store.write_turn = lambda: _write_turn(conn)  # type: ignore[attr-defined]
    start = time.process_time()  # the passes' CPU, not the imports' and the open's
    try:
        while data := conn.recv_bytes():
            req = _requests.decode(data)
            try:
                changes = store.refresh_members(req.tenant, req.plans, now=req.now)
                reply = _Reply(changes=changes, cpu_s=time.process_time() - start)
            except Exception as exc:  # noqa: BLE001 - answered to the parent, which raises it
                reply = _Reply(cpu_s=time.process_time() - start, error=f"{type(exc).__name__}: {exc}")
            conn.send_bytes(_enc.encode(reply))
    except EOFError:
        pass
    finally:
        store.close()


@contextmanager
def _write_turn(conn: Any) -> Iterator[None]:  # pragma: no cover - the child's
    """SQLite: before its write transaction the child asks the parent for the store's write lock and
    waits until the parent holds it for it (released when the pass's answer arrives): the write then
    queues in-process like any other, instead of polling SQLite's file lock with sleeps (the busy
    handler) while the parent's batches take the lock back to back."""
    conn.send_bytes(_TURN)
    if conn.recv_bytes() != _GO:
        raise StorageError("membership process: no write turn")
    yield


class MemberProcess:
    """``refresh_members`` with the ``Store`` method's signature, run by a child process."""

    def __init__(self, store: Any, url: str) -> None:
        self._store = store
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads and connections
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(url, child), name="sluice-membership", daemon=True)
        self._proc.start()
        child.close()
        self._io = threading.Lock()
        self._alive = True
        self.cpu_s = 0.0  # the child's CPU time so far (as of its last answer)

    @classmethod
    def start(cls, store: Any) -> MemberProcess | None:
        """A child for ``store`` when another process can open it (``process_url``: not an in-memory
        database), else None (the passes stay in-process)."""
        url = getattr(store, "process_url", None)
        if not url:
            return None
        try:
            return cls(store, url)
        except OSError as exc:
            log.warning("membership.process_failed error=%s", exc)
            return None

    def refresh_members(self, tenant: str, plans: Sequence[MemberPlan], *, now: float) -> int:
        # The parent's membership lock, held across the child's pass: writers stay serialised.
        with self._store._member_lock, self._io:
            if self._alive:
                try:
                    reply = self._ask(_enc.encode(_Request(tenant=tenant, plans=list(plans), now=now)))
                except (EOFError, OSError) as exc:
                    self._alive = False
                    log.error("membership.process_lost error=%s exitcode=%s", exc, self._proc.exitcode)
                else:
                    self.cpu_s = reply.cpu_s
                    if reply.error is None:
                        return reply.changes
                    raise StorageError(f"membership pass failed: {reply.error}")
            return int(self._store.refresh_members(tenant, plans, now=now))

    def _ask(self, request: bytes) -> _Reply:
        """One pass: the request out; the write turn granted if asked (the store's write lock, held
        until the answer: the child's write transaction is then the one writer, as in-process)."""
        self._conn.send_bytes(request)
        with ExitStack() as turn:
            while (data := self._conn.recv_bytes()) == _TURN:
                turn.enter_context(self._store._lock)
                self._conn.send_bytes(_GO)
            return _replies.decode(data)

    def close(self) -> None:
        with self._io:
            if self._alive:
                try:
                    self._conn.send_bytes(b"")
                except OSError:
                    pass
            self._alive = False
            self._conn.close()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
