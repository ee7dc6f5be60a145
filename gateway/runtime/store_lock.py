"""One ``sluice serve`` per store file.

The gateway's queue lives in the serving process and is rebuilt from the store at start
(``Gateway.recover``): two processes on one SQLite file would each recover the same queued
messages and send them both (and each take the other's receipts for strangers). A second
``sluice serve`` started on a store in use (by hand, by a supervisor restarting too early, on
another port) is refused before it reads anything: ``hold_store`` takes an exclusive ``flock``
on ``<store>.lock`` beside the file, held until the process ends. The kernel drops it when the
process dies, kill -9 included, so a restart after a crash is never locked out; the child
processes (webhook delivery, ingest workers) are started with ``exec`` and do not inherit it.
"""

from __future__ import annotations

import fcntl
import os

from gateway.errors import ConfigError

__all__ = ["hold_store"]


def hold_store(path: str) -> int:
    """Lock the store file ``path`` for this process; the descriptor to ``os.close`` at the end.
    Raises ConfigError (``store.url``) naming the holder's pid when another process has it."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"the store {path} is in use by another `sluice serve` (pid {holder}): one process per "
                          "store (two would send its queued messages twice); stop it first or use another store",
                          key="store.url") from None  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
