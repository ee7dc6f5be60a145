"""A client that opens far more sockets than a server has file descriptors, and leaves them idle, on
every HTTP listener: the gateway's API (``sluice serve``), the campaigns API and its short-link
listener (``sluice campaigns serve``), each a child process started under a low open-files limit
(``RLIMIT_NOFILE`` 512, soft and hard, as on many hosts). Before the connection cap the idle sockets
took every descriptor: ``accept`` failed (EMFILE) and a well-behaved client was not answered until
the head deadline closed them (and the idle ones were back the next moment). Now each listener's cap
is fitted into the limit at start (a warning names the keys), a connection over it closes the oldest
idle one, and a normal client is answered at once while the flood is still open.

The idle sockets are this test's behaviour (a raw TCP client), not waits for the server."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from gateway.testing.processes import simulator, start
from gateway.testing.serving import ENV, KEYS, write_config

pytestmark = pytest.mark.anyio

FD_LIMIT = 512  # the child's soft and hard RLIMIT_NOFILE: caps must fit in 512 - 256 reserved
IDLE = 1_000  # idle sockets opened against each listener (this process's own limit is higher)
HEAD_TIMEOUT = 60  # long: the idle sockets are not closed by the head deadline during the test
SLACK = 10.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def _limited(cmd: list[str], *, relay: Path | None = None) -> list[str]:
    """``cmd`` run under RLIMIT_NOFILE = FD_LIMIT. ``relay``: it prints {"campaigns": P} then
    {"short_links": Q}; the wrapper prints {"listening": P} for ``start`` and writes Q to ``relay``."""
    head = f"import resource,subprocess,sys,json,signal\nresource.setrlimit(resource.RLIMIT_NOFILE,({FD_LIMIT},{FD_LIMIT}))\n"
    if not relay:
        return [sys.executable, "-c", head + f"import os\nos.execv(sys.executable,{cmd!r})\n"]
    return [sys.executable, "-c", head + (
        f"p=subprocess.Popen({cmd!r},stdout=subprocess.PIPE,text=True)\n"
        "a=json.loads(p.stdout.readline()); b=json.loads(p.stdout.readline())\n"
        f"open({str(relay)!r},'w').write(str(b['short_links']))\n"
        "print(json.dumps({'listening': a['campaigns']}), flush=True)\n"
        "signal.signal(signal.SIGTERM, lambda *x: (p.terminate(), p.wait(), sys.exit(0)))\np.wait()\n")]  # fmt: skip


async def _flood(port: int, n: int) -> list[anyio.abc.SocketStream]:
    return [await anyio.connect_tcp("127.0.0.1", port) for _ in range(n)]


async def _closed(s: anyio.abc.SocketStream) -> bool:
    """The server closed it (EOF, or reset), or wrote something and closed; False if still open."""
    with anyio.move_on_after(0.01):
        try:
            while await s.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


async def _answered_meanwhile(url: str, path: str, statuses: tuple[int, ...]) -> float:
    t0 = anyio.current_time()
    async with httpx.AsyncClient(base_url=url, timeout=SLACK) as fresh:
        r = await fresh.get(path)
    assert r.status_code in statuses, r.text
    return anyio.current_time() - t0


async def _check_listener(port: int, path: str, statuses: tuple[int, ...]) -> int:
    """Flood ``port`` with IDLE idle sockets; a normal client must be answered while they are open.
    Returns how many of them the server still holds open."""
    flood = await _flood(port, IDLE)
    try:
        took = await _answered_meanwhile(f"http://127.0.0.1:{port}", path, statuses)
        assert took < SLACK, took
        closed = [await _closed(s) for s in flood]
        assert closed[-1] is False and all(closed[: IDLE - FD_LIMIT]), (sum(closed), closed.index(False))
        return closed.count(False)
    finally:
        for s in flood:
            await s.aclose()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_the_gateway_api_under_an_idle_socket_flood(tmp_path: Path, backend: str) -> None:
    """Both of ``serve``'s HTTP servers: uvicorn (asyncio) and Hypercorn (``--backend trio``)."""
    async with simulator() as sim:
        cfg = write_config(tmp_path, sim.port, api_extra=f"header_timeout = {HEAD_TIMEOUT}\n")
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", cfg, "--port", "0", "--backend", backend]
        with anyio.fail_after(120):
            async with start(_limited(cmd), name="gateway", env=ENV) as gw:
                held = await _check_listener(gw.port, "/healthz", (200,))
                assert held <= FD_LIMIT - 256
                # and the API still works for a tenant afterwards
                async with httpx.AsyncClient(base_url=gw.url, timeout=SLACK) as c:
                    r = await c.get("/v1/jobs/none", headers={"authorization": f"Bearer {KEYS['acme']}"})
                    assert r.status_code == 404, r.text


async def test_the_campaigns_api_and_short_links_under_an_idle_socket_flood(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[campaigns]\nstore_url = "sqlite:///{tmp_path / "c.db"}"\nport = 0\nshort_link_port = 0\n'
                   f"header_timeout_s = {HEAD_TIMEOUT}\nshort_link_head_timeout_s = {HEAD_TIMEOUT}\n"
                   '[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\n')  # fmt: skip
    cmd = [sys.executable, "-m", "campaigns.cli", "campaigns", "serve", "--config", str(cfg)]
    errors, short = tmp_path / "stderr", tmp_path / "short_port"
    with anyio.fail_after(180), errors.open("wb") as err:
        async with start(_limited(cmd, relay=short), name="campaigns", env={"CK": "ck-key"}, stderr=err) as child:
            held = await _check_listener(child.port, "/healthz", (200,))
            held += await _check_listener(int(short.read_text()), "/NoSuchCode1", (404,))
            assert held <= FD_LIMIT - 256
    log = errors.read_text()
    assert "http.connections.capped" in log and "short_link_max_connections=10000->" in log, log[-2000:]
