"""The membership loop's reads in a process of their own (issue 17: both cores working). Off by
default and in ``serve`` since the fifth pass: measured against the passes in-process, it gave no
gain on a quiet machine and a loss on a loaded one (docs/BENCHMARKS.md); kept behind
``Audience.membership_process`` (``sluice bench audience --membership-process``) for that comparison.

A membership pass (``Store.refresh_members``) is two halves: its reads (the segments' restricted SQL
for the subscribers a batch touched, their window edges: most of a pass's CPU) in one snapshot, then
a short write transaction of the differences with what is stored. SQLite's work releases the GIL,
but the reads' Python half (binding, stepping, reading rows) shared the GIL with the ingest's: in
one process the two cores were never both busy with Python. Here the reads run in a child process
that opened the same store by URL (``SqlStore.read_members``: a WAL snapshot of the same SQLite
file; PostgreSQL keeps its passes in-process, see ``start``) and the parent writes what it found
(``SqlStore.write_members``) on its own connection, as in-process. Writing in the parent, not the
child, is deliberate: on SQLite a write by another connection empties this connection's page cache
(WAL), so a child that wrote would make every next batch of the ingest read its pages again, and
its write would wait on SQLite's file lock by polling with sleeps while batches take it back to
back; the rows written (memberships, timers, flows' ``segment_entered`` inputs) stay the parent's.

What crosses: the pass's plans (``MemberPlan``: compiled SQL and parameters) out, the reads
(``MembersFound``) and the child's CPU (for the bench) back, as msgpack over a pipe
(``send_bytes``; no pickle). One request at a time. The parent holds its store's ``_member_lock``
from before the child reads to after it wrote, so membership passes stay serialised exactly as
in-process (the argument in ``SqlStore.refresh_members`` is unchanged: a subscriber whose rows commit
after the child's snapshot was handed to a later pass by that commit).

If the child dies or cannot be started, passes run in-process (``Store.refresh_members``) and the
error is logged; a child's error on one pass is raised as a ``StorageError``.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from campaigns.errors import StorageError
from campaigns.store.base import MemberPlan, MembersFound

__all__ = ["MemberProcess"]

log = logging.getLogger(__name__)


class _Request(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    tenant: str
    plans: list[MemberPlan]


class _Reply(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    found: list[MembersFound] = []
    cpu_s: float = 0.0  # the child's CPU in passes so far
    error: str | None = None


_enc = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(_Request)
_replies = msgspec.msgpack.Decoder(_Reply)


def _serve(url: str, conn: Any) -> None:  # pragma: no cover - runs in the child (tests see its effects)
    from campaigns.store import open_store

    store = open_store(url)
    start = time.process_time()  # the passes' CPU, not the imports' and the open's
    try:
        while data := conn.recv_bytes():
            req = _requests.decode(data)
            try:
                found = store.read_members(req.tenant, req.plans)  # type: ignore[attr-defined]
                reply = _Reply(found=found, cpu_s=time.process_time() - start)
            except Exception as exc:  # noqa: BLE001 - answered to the parent, which raises it
                reply = _Reply(cpu_s=time.process_time() - start, error=f"{type(exc).__name__}: {exc}")
            conn.send_bytes(_enc.encode(reply))
    except EOFError:
        pass
    finally:
        store.close()


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
        """A child for a SQLite ``store`` another process can open (``process_url``: not a database in
        memory), else None (the passes stay in-process). PostgreSQL keeps its passes in-process: their
        reads are the server's work (a connection of their own already), and a child only added its
        round trip and this process's share of the writes (measured: docs/BENCHMARKS.md, issue 17
        fourth pass)."""
        url = getattr(store, "process_url", None)
        if not url or getattr(store, "engine", None) != "sqlite":
            return None
        try:
            return cls(store, url)
        except OSError as exc:
            log.warning("membership.process_failed error=%s", exc)
            return None

    def refresh_members(self, tenant: str, plans: Sequence[MemberPlan], *, now: float) -> int:
        # The parent's membership lock, from before the child's snapshot to after the write.
        with self._store._member_lock, self._io:
            if self._alive:
                try:
                    self._conn.send_bytes(_enc.encode(_Request(tenant=tenant, plans=list(plans))))
                    reply = _replies.decode(self._conn.recv_bytes())
                except (EOFError, OSError) as exc:
                    self._alive = False
                    log.error("membership.process_lost error=%s exitcode=%s", exc, self._proc.exitcode)
                else:
                    self.cpu_s = reply.cpu_s
                    if reply.error is not None:
                        raise StorageError(f"membership pass failed: {reply.error}")
                    return int(self._store.write_members(tenant, reply.found, now=now))
            return int(self._store.refresh_members(tenant, plans, now=now))

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
