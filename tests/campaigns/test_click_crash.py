"""kill -9 of the process answering redirects: the bound on what it loses. Hits are buffered and
written every ``flush_interval`` (5 ms), so a kill loses at most the hits answered since the last
committed flush began (``campaigns/service/tracking.py``): every hit answered more than one flush
interval plus one write before the kill is stored, and nothing is stored that was not answered.

A real ``sluice campaigns serve`` with its short-link listener; a client sends redirects as fast as
it can and notes when each 302 came back; the process is killed mid-stream; the store is read back."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

from campaigns.store import open_store
from campaigns.store.campaign_rows import LinkRow
from gateway.testing.processes import Child

pytestmark = pytest.mark.anyio
T0 = time.time() - 3600
CODES = [f"Crash{i:03d}" for i in range(50)]
#: The promised bound, generous for a loaded machine: the flush interval (5 ms) + one write.
BOUND_S = 1.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def _config(tmp_path: Path) -> str:
    path = tmp_path / "c.toml"
    path.write_text(f"""
[campaigns]
store_url = "sqlite:///{tmp_path / 'c.db'}"
port = 0
short_link_port = 0
gateway_url = "http://127.0.0.1:9"
sync_interval = 60.0
[[campaigns.tenants]]
name = "acme"
key_sha256 = "{hashlib.sha256(b'k' * 24).hexdigest()}"
""")
    return str(path)


@pytest.mark.slow  # ~10 s: a child process started, loaded and killed
async def test_kill_9_loses_only_the_last_flush_window(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    store.freeze_audience("acme", 1, [], [LinkRow(code=c, tenant="acme", campaign_id=1, subscriber_id=i + 1,
                                                  target="https://x.example/", created_at=T0)
                                          for i, c in enumerate(CODES)], now=T0)  # fmt: skip
    store.close()
    cmd = [sys.executable, "-m", "campaigns.cli", "campaigns", "serve", "--config", _config(tmp_path), "--port", "0"]
    answered: list[float] = []
    async with await anyio.open_process(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                                        stderr=None) as p:  # fmt: skip
        proc = Child(p, "campaigns")
        while "short_links" not in (ready := await proc.line(60)):
            pass
        async with await anyio.connect_tcp("127.0.0.1", int(ready["short_links"])) as s:
            t_end = time.monotonic() + 3.0
            killed_at = None
            i = 0
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                while True:
                    if killed_at is None and time.monotonic() > t_end:
                        os.kill(p.pid, signal.SIGKILL)
                        killed_at = time.monotonic()
                    await s.send(f"GET /{CODES[i % len(CODES)]} HTTP/1.1\r\nHost: s\r\nUser-Agent: M\r\n\r\n".encode())
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        chunk = await s.receive()
                        buf += chunk
                    assert buf.startswith(b"HTTP/1.1 302")
                    answered.append(time.monotonic())
                    i += 1
    assert killed_at is not None and len(answered) > 200
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    stored = store.click_counts("acme", 1)
    store.close()
    total = stored.total + stored.ignored
    surely = sum(1 for t in answered if t < killed_at - BOUND_S)
    assert surely <= total <= len(answered), (surely, total, len(answered))
