"""A hostile client on the campaigns API's own HTTP server (uvicorn, a `sluice campaigns serve` child on
loopback), as tests/runtime/test_abuse.py does for the gateway's: heads dribbled a byte at a time
(slowloris), connections that send nothing, an endless header, and pipelined requests. Before
``header_timeout_s`` / ``max_head_bytes`` the first two held their connections for ever; now each is
cut off within its bound (408 / 431, the connection closed), pipelined requests are each answered in
order, and a well-behaved client is served meanwhile.

The abusers' pacing sleeps are the client's behaviour, not waits for anything inside the server."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.testing.processes import start
from tests.runtime.test_abuse import HEADER_TIMEOUT, SLACK, abuse, complete, status

pytestmark = pytest.mark.anyio
MAX_HEAD = 8192
EACH = 10


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def _wrapper(cfg: Path) -> list[str]:
    """`campaigns serve` announces {"campaigns": PORT}; ``start`` waits for {"listening": ...}."""
    cmd = [sys.executable, "-m", "campaigns.cli", "campaigns", "serve", "--config", str(cfg)]
    return [sys.executable, "-c", (
        "import json,subprocess,sys\n"
        f"p=subprocess.Popen({cmd!r},stdout=subprocess.PIPE,text=True)\n"
        "line=json.loads(p.stdout.readline()); print(json.dumps({'listening': line['campaigns']}), flush=True)\n"
        "import signal\nsignal.signal(signal.SIGTERM, lambda *a: (p.terminate(), p.wait(), sys.exit(0)))\n"
        "p.wait()\n")]  # fmt: skip


async def test_slow_heads_silent_and_huge_ones_are_cut_off_and_others_served(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[campaigns]\nstore_url = "sqlite:///{tmp_path / "c.db"}"\nport = 0\n'
                   f"header_timeout_s = {HEADER_TIMEOUT}\nmax_head_bytes = {MAX_HEAD}\n"
                   '[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\n')  # fmt: skip
    slow_head = (b"GET /v1/subscribers HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 200)
    huge_head = b"GET /v1/subscribers HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20)
    results: dict[str, list[tuple[bytes, float, bool]]] = {"head": [], "silent": [], "huge": []}
    served: list[float] = []
    with anyio.fail_after(90):
        async with start(_wrapper(cfg), name="campaigns", env={"CK": "ck-key"}) as child:

            async def run(kind: str, *args: bytes) -> None:
                results[kind].append(await abuse(child.port, *args))

            async with anyio.create_task_group() as tg:
                for _ in range(EACH):
                    tg.start_soon(run, "head", *slow_head)
                    tg.start_soon(run, "silent", b"")
                    tg.start_soon(run, "huge", huge_head)
                for _ in range(5):  # meanwhile a normal client, on fresh connections, is answered
                    async with httpx.AsyncClient(base_url=child.url, timeout=5.0) as fresh:
                        t0 = anyio.current_time()
                        r = await fresh.get("/v1/subscribers", headers={"authorization": "Bearer ck-key"})
                        assert r.status_code == 200, r.text
                        served.append(anyio.current_time() - t0)
                    await anyio.sleep(0.1)
            # Three requests in one write (HTTP/1.1 pipelining): three answers, in order, then open.
            async with await anyio.connect_tcp("127.0.0.1", child.port) as s:
                paths = [b"/healthz", b"/v1/subscribers", b"/nope"]
                await s.send(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ck-key\r\n\r\n" % p
                                      for p in paths))  # fmt: skip
                got = b""
                with anyio.fail_after(10):
                    while got.count(b"HTTP/1.1 ") < 3 or not complete(b"HTTP/1.1 " + got.rsplit(b"HTTP/1.1 ", 1)[-1]):
                        got += await s.receive()
                assert [int(x[:3]) for x in got.split(b"HTTP/1.1 ")[1:]] == [200, 200, 404], got[:500]
    for kind, rs in results.items():
        assert len(rs) == EACH and all(closed for _, _, closed in rs), kind  # none is left open
    for answer, t, _ in results["head"] + results["silent"]:
        assert status(answer) in (408, None) and HEADER_TIMEOUT - 0.2 <= t <= HEADER_TIMEOUT + SLACK, (answer, t)
    assert all(status(a) == 408 for a, _, _ in results["head"])
    for answer, t, _ in results["huge"]:
        assert status(answer) in (431, None) and t <= SLACK, (answer, t)
    assert max(served) < HEADER_TIMEOUT + SLACK
