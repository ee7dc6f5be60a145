"""A new user's start-up mistake on the campaign layer: ``sluice campaigns serve`` started a second
time on the same store (by hand, on another port), on both engines, over real processes.

Before: the second one served too, and two processes on one store each read the gateway's inbound
replies from the stored cursor and applied them, each ran every flow's due runs and the segment
timers. Now it is refused before it opens the store, in one line naming the key (exit 2); a
kill -9 of the first never locks a restart out; another schema of the same PostgreSQL database is
another store and serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest

pytestmark = pytest.mark.anyio
ENV = {"CK": "ck-key-1"}


def _config(tmp_path: Path, store_url: str, name: str = "c.toml") -> str:
    path = tmp_path / name
    path.write_text(f'[campaigns]\nstore_url = "{store_url}"\nport = 0\n'
                    '[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\n')  # fmt: skip
    return str(path)


def _cmd(cfg: str) -> list[str]:
    return [sys.executable, "-m", "campaigns.cli", "campaigns", "serve", "--config", cfg]


async def _started(cfg: str) -> anyio.abc.Process:
    proc = await anyio.open_process(_cmd(cfg), env={**os.environ, **ENV}, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    with anyio.fail_after(60):
        line = b""
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive(1)
    assert "campaigns" in json.loads(line), line
    return proc


def _second(cfg: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(cfg), env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60, check=False)


async def _stop(proc: anyio.abc.Process, sig: int = signal.SIGTERM) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
    with anyio.fail_after(30):
        await proc.wait()


async def test_a_second_campaign_layer_on_one_store_is_one_line(tmp_path: Path, store_url: str) -> None:
    cfg = _config(tmp_path, store_url)
    first = await _started(cfg)
    try:
        again = await anyio.to_thread.run_sync(_second, cfg)
        assert again.returncode == 2, again.stderr[-3000:]
        last = again.stderr.strip().splitlines()[-1]
        assert last.startswith("error: the store ") and "in use by another serving campaign layer" in last, last
        assert last.endswith("(at campaigns.store_url)") and "Traceback" not in again.stderr
        if store_url.startswith("sqlite"):
            assert f"(pid {first.pid})" in last
        else:  # the holder named; another schema of the same database is another store: it serves
            assert "database session's pid " in last and "pid ?" not in last, last
            other = f"{store_url.split('?')[0]}?options={quote('-csearch_path=public')}"
            neighbour = await _started(_config(tmp_path, other, "other.toml"))
            await _stop(neighbour)
        await _stop(first, signal.SIGKILL)  # killed -9: the store is free again (at once, or within the wait)
        restarted = await _started(cfg)
        await _stop(restarted)
    finally:
        await _stop(first, signal.SIGKILL)


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


async def test_serve_with_campaigns_does_not_log_a_line_per_link_request(tmp_path: Path) -> None:
    """README's "Try it on your machine" as a new user sees it: the gateway link's requests (its
    inbound poll every `sync_interval`, here each 0.1 s) were each an httpx INFO line, for ever."""
    import httpx

    from gateway.testing.processes import simulator, start
    from gateway.testing.serving import shop_config

    key, ckey = "hostile-startup-gw-key-0123456", "hostile-startup-campaigns-key-0"
    async with simulator() as sim:
        cfg = shop_config(tmp_path, sim.port, sender="12345", extra=f"""
[campaigns]
store_url = "sqlite:///{tmp_path / 'campaigns.db'}"
port = 0
sync_interval = 0.1
[[campaigns.tenants]]
name = "acme"
key_env = "CK"
gateway_key_env = "SLUICE_KEY"
""")
        cmd = [sys.executable, "-m", "campaigns.cli", "serve", "--config", cfg, "--port", "0"]
        errors = tmp_path / "stderr"
        with anyio.fail_after(90), errors.open("wb") as err:
            async with start(cmd, name="sluice", env={"SLUICE_KEY": key, "CK": ckey}, stderr=err) as gw:
                cport = (await gw.line())["campaigns"]
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", headers={"authorization": f"Bearer {ckey}"}) as c, \
                        httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}) as g:  # fmt: skip
                    r = await c.post("/v1/subscribers", json={"profile": {"phone": "+447911123401"},
                                                              "consent": {"action": "opt_out", "source": "api"}})  # fmt: skip
                    assert r.status_code == 201, r.text
                    while "+447911123401" not in {s["number"] for s in (await g.get("/v1/suppressions")).json()}:
                        await anyio.sleep(0.05)  # the link posted it: its requests were made
    log = errors.read_text()
    assert "campaigns.listening" in log and "HTTP Request:" not in log, log[-2000:]
