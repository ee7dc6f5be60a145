"""A new user's start-up mistakes, over real processes: ``sluice serve`` started a second time on the
same store (by hand, on another port), and on a port another process holds.

Before: the second serve on one store recovered the same queued messages and bound to the carrier
(two processes sending one queue: every queued message twice); a taken port ended in a 40-line
exception-group traceback (exit 3) after the carrier had been bound. Now the second serve is refused
before it reads the store, and both mistakes are one line naming the key, exit 2. A kill -9 never
locks a restart out (the kernel drops the lock with the process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import ENV, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def _serve(cfg: str, port: int) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", cfg, "--port", str(port)]
    return subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60, check=False)


async def test_a_second_serve_on_one_store_and_a_taken_port_are_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    async with simulator() as sim:
        cfg = write_config(tmp_path, sim.port)
        with anyio.fail_after(120):
            async with gateway(cfg, env=ENV) as first:
                again = await anyio.to_thread.run_sync(_serve, cfg, 0)
                assert again.returncode == 2, again.stderr[-3000:]
                last = again.stderr.strip().splitlines()[-1]
                assert last.startswith("error: ") and f"in use by another `sluice serve` (pid {first.pid})" in last
                assert "(at store.url)" in last and "Traceback" not in again.stderr
                assert "serve.recovered" not in again.stderr and "bind.up" not in again.stderr  # refused before anything
                # another store, the first one's port: one line too
                taken = await anyio.to_thread.run_sync(_serve, write_config(tmp_path / "other", sim.port), first.port)
                assert taken.returncode == 2, taken.stderr[-3000:]
                assert taken.stderr.strip().splitlines()[-1] == (f"error: cannot listen on 127.0.0.1:{first.port} "
                                                                 "(in use by another process?) (at api.port)")  # fmt: skip
                assert "Traceback" not in taken.stderr
                os.kill(first.pid, signal.SIGKILL)
                await first.proc.wait()
            # killed -9 mid-run: the store is free again at once
            async with gateway(cfg, env=ENV) as restarted:
                assert restarted.port > 0
