"""One serving campaign layer per store.

A serving process keeps state a second one on the same store would duplicate: its gateway link
reads the gateway's inbound messages from the stored cursor (two processes read the same replies
and each applies them: two answers in the inbox, a double opt-in confirmed twice), its membership
loop and segment timers, its flow workers (each process's workers take every subscriber's due
runs), its scheduled launches, and the launched codes its redirects answer from memory. A second
``sluice campaigns serve`` (or a second ``sluice serve`` with ``[campaigns]``) started on a store in
use, by hand, on another port, or by a supervisor restarting too early, is refused before it
opens anything else, naming the key:

- SQLite: an exclusive ``flock`` on ``<store>.serve.lock`` beside the file (not the gateway's
  ``<store>.lock``: one file configured as both stores must not lock itself out), held until the
  process ends; the kernel drops it when the process dies, kill -9 included.
- PostgreSQL: a session advisory lock keyed by the store's schema (``current_schema()``: stores in
  other schemas of one database are other stores), on a connection of its own, held until the
  process ends; the server drops it when that connection closes. A restart right after a kill -9 may find the dead
  process's backend not yet gone, so the lock is waited for up to ``_PG_WAIT_S`` before refusing.

The worker processes (flow workers) open the store by URL and take no lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from campaigns.errors import ConfigError

__all__ = ["hold_store"]

_PG_WAIT_S = 5
_PG_KEY = "sluice:campaigns:serve"


def _refused(url: str, holder: str) -> ConfigError:
    shown = url.split("@")[-1] if url.startswith(("postgresql://", "postgres://")) else url  # no password
    return ConfigError(f"the store {shown} is in use by another serving campaign layer ({holder}): one per store "
                       "(two would each apply the gateway's replies and run every flow); stop it first or use another "
                       "store", key="campaigns.store_url")  # fmt: skip


def hold_store(url: str) -> Callable[[], None]:
    """Take the store ``url`` for this process; returns the release. Raises ConfigError
    (``campaigns.store_url``) when another process serves it."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return (lambda: None) if path in ("", ":memory:") else _hold_file(url, path)
    if url.startswith(("postgresql://", "postgres://")):
        return _hold_postgres(url)
    return lambda: None  # open_store refuses it, naming the key


def _hold_file(url: str, path: str) -> Callable[[], None]:
    fd = os.open(path + ".serve.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise _refused(url, f"pid {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return lambda: os.close(fd)


def _hold_postgres(url: str) -> Callable[[], None]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    try:
        conn.execute(f"SET lock_timeout = '{_PG_WAIT_S}s'")
        conn.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(current_schema()))", (_PG_KEY,))
        conn.execute("SET lock_timeout = 0")
    except psycopg.errors.LockNotAvailable:
        row = conn.execute("SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
                           " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                           " AND l.classid::bigint = hashtext(%s)::bigint & 4294967295"
                           " AND l.objid::bigint = hashtext(current_schema())::bigint & 4294967295",
                           (_PG_KEY,)).fetchone()  # fmt: skip
        conn.close()
        raise _refused(url, f"its database session's pid {row[0] if row else '?'}") from None
    except BaseException:
        conn.close()
        raise
    return conn.close
