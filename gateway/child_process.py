"""A supervised child process's two ends, as its parent sees them: its status lines, read on the
parent's event loop, and its stop. Shared by the gateway's webhook delivery process
(gateway/runtime/webhook_process.py) and the campaign layer's flow workers
(campaigns/service/flow_workers.py): a top-level module, so the campaign layer may import it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable

import anyio
import msgspec


async def read_status(fd: int, take: Callable[[bytes], None]) -> None:
    """The child's status lines until end of file. The pipe is watched by the event loop (a worker
    thread's hop per line, several a second, cost a server's loop more than reading them). Of each
    read only the last whole line that decodes counts: ``take`` raises ``msgspec.DecodeError`` for a
    line that does not, and the line before it is tried."""
    os.set_blocking(fd, False)
    tail = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not chunk:
            return
        *lines, tail = (tail + chunk).split(b"\n")
        for line in reversed(lines):
            with contextlib.suppress(msgspec.DecodeError):
                take(line)
                break


async def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """End of file on its stdin stops it; SIGKILL (by its PID) if it has not stopped within ``grace``."""
    with contextlib.suppress(OSError):
        proc.stdin.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        await anyio.to_thread.run_sync(proc.wait)
    with contextlib.suppress(OSError):
        proc.stdout.close()  # type: ignore[union-attr]


async def until_parent_gone(stdin: int, poke: Callable[[], None]) -> None:
    """The child's side: each read from the parent calls ``poke``; returns at end of file (the parent
    is gone). The pipe is watched by the event loop (no thread hop per poke: a parent pokes often)."""
    while True:
        await anyio.wait_readable(stdin)
        if not os.read(stdin, 4096):
            return
        poke()
