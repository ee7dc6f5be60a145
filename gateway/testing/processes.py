"""Child processes for tests, benchmarks and ``make run``: SMSC simulators and ``sluice serve``.

Both print one JSON line ``{"listening": PORT}`` on stdout when ready (started with port 0, so
every run gets free loopback ports). The simulator prints its counters as a JSON line on SIGUSR1
and on exit. Processes are ended by their own PID only: ``stop()`` sends SIGTERM and waits,
``kill()`` sends SIGKILL (the crash tests). Every wait is bounded.

    async with simulator("--tps", "500") as sim, gateway(config_text) as gw:
        ...  # sim.port, gw.port, gw.url
        counters = await sim.counters()
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

__all__ = ["Child", "gateway", "http_simulator", "simulator", "start"]


class Child:
    """A child process that announced a port; reads its JSON lines from stdout."""

    def __init__(self, proc: anyio.abc.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.port = 0
        self._out = TextReceiveStream(proc.stdout) if proc.stdout else None
        self._buf = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def memory_kb(self) -> dict[str, int]:
        """Resident memory now and at its peak (VmRSS, VmHWM from /proc/PID/status), in kB."""
        fields = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields

    async def line(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next JSON line on the child's stdout (other lines are skipped)."""
        assert self._out is not None
        with anyio.fail_after(timeout):
            while True:
                while "\n" not in self._buf:
                    self._buf += await self._out.receive()
                text, self._buf = self._buf.split("\n", 1)
                if text.startswith("{"):
                    try:
                        return json.loads(text)
                    except ValueError:
                        continue

    async def counters(self) -> dict[str, Any]:
        """A simulator's counters, now (SIGUSR1)."""
        self.proc.send_signal(signal.SIGUSR1)
        return await self.line()

    async def stop(self, timeout: float = 20.0) -> dict[str, Any] | None:
        """SIGTERM, then wait; returns the last JSON line it printed on the way out, if any."""
        if self.proc.returncode is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        last = None
        with anyio.move_on_after(timeout):
            try:
                last = await self.line(timeout)
            except (anyio.EndOfStream, TimeoutError):
                pass
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        return last

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no flush (what the crash tests need)."""
        if self.proc.returncode is None:
            self.proc.kill()
        with anyio.CancelScope(shield=True):
            await self.proc.wait()


@asynccontextmanager
async def start(cmd: Sequence[str], *, name: str, env: Mapping[str, str] | None = None,
                cwd: str | Path | None = None, stderr: Any = None,
                timeout: float = 60.0) -> AsyncIterator[Child]:  # fmt: skip
    """Start ``cmd``, wait for its ``{"listening": PORT}`` line, yield it, stop it on exit."""
    full_env = {**os.environ, **(env or {})}
    proc = await anyio.open_process(list(cmd), env=full_env, cwd=cwd, stderr=stderr)
    child = Child(proc, name)
    try:
        try:
            hello = await child.line(timeout)
        except (TimeoutError, anyio.EndOfStream):
            raise RuntimeError(f"{name} did not start: {' '.join(cmd)}") from None
        child.port = int(hello["listening"])
        yield child
    finally:
        with anyio.CancelScope(shield=True):
            await child.stop()
            await proc.aclose()


def simulator(*args: str, stderr: Any = None) -> Any:
    """``sluice sim smsc --port 0 ARGS`` as a child process."""
    cmd = [sys.executable, "-m", "carriers.smpp.simulator", "--port", "0", *args]
    return start(cmd, name="sim", stderr=stderr)


def http_simulator(*args: str, stderr: Any = None) -> Any:
    """``sluice sim http --port 0 ARGS`` as a child process."""
    cmd = [sys.executable, "-m", "carriers.http.simulator", "--port", "0", *args]
    return start(cmd, name="sim-http", stderr=stderr)


def gateway(config_path: str | Path, *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
            stderr: Any = None, backend: str = "asyncio") -> Any:  # fmt: skip
    """``sluice serve --config PATH --port 0 --backend BACKEND`` as a child process."""
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), "--port", "0",
           "--backend", backend]  # fmt: skip
    return start(cmd, name="gateway", env=env, cwd=cwd, stderr=stderr)
