"""Abusive clients over real sockets against ``sluice serve`` (a child process): slow heads and
bodies (slowloris), silent connections, endless headers, and a flood on one API key. Each is cut
off within its configured bound (408 / 431 / 429, or the connection closed), the gateway's memory
stays bounded, and a well-behaved client, and another tenant, are served normally meanwhile.

The abusers are raw TCP clients driven by this test; their pacing sleeps are the client's
behaviour, not waits for anything inside the server.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from gateway.testing.serving import KEYS, client, open_served


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    """Child processes observed over HTTP: asyncio+uvloop is enough here."""
    return ("asyncio", {"use_uvloop": True})


pytestmark = pytest.mark.anyio

HEADER_TIMEOUT, BODY_TIMEOUT, MAX_HEAD = 1.0, 1.0, 8192
GUARD = f"header_timeout = {HEADER_TIMEOUT}\nbody_timeout = {BODY_TIMEOUT}\nmax_head_bytes = {MAX_HEAD}\n"
SLACK = 5.0  # seconds of scheduling on a loaded machine (2 cores at load ~17 measured 3.3 s)
EACH = 15  # abusers of each kind at once


async def abuse(port: int, first: bytes, trickle: bytes = b"", every: float = 0.1) -> tuple[bytes, float, bool]:
    """Connect, send ``first``, then ``trickle`` a byte every ``every`` s until the server
    answers or closes. Returns what it answered and how long the connection lived."""
    started = anyio.current_time()
    answer = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        async with anyio.create_task_group() as tg:

            async def dribble() -> None:
                try:
                    await stream.send(first)
                    for i in range(len(trickle)):
                        await anyio.sleep(every)
                        await stream.send(trickle[i : i + 1])
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass

            tg.start_soon(dribble)
            with anyio.move_on_after(HEADER_TIMEOUT + BODY_TIMEOUT + 10):
                try:
                    while not complete(answer):
                        answer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
            lived = anyio.current_time() - started
            closed = False
            with anyio.move_on_after(SLACK):  # answered: is the connection closed too?
                try:
                    while await stream.receive():
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    closed = True
            tg.cancel_scope.cancel()
    return answer, lived, closed


def complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return body.endswith(b"0\r\n\r\n")  # chunked: the last chunk


def status(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


@pytest.mark.parametrize("backend", ["asyncio", pytest.param("trio", marks=pytest.mark.slow)])
async def test_slow_clients_are_cut_off_and_others_are_served(tmp_path, backend: str) -> None:
    """uvicorn with ``http_guard`` on asyncio (the default); Hypercorn on trio (slow run)."""
    auth = b"Authorization: Bearer " + KEYS["acme"].encode() + b"\r\n"
    slow_head = (b"GET /v1/suppressions HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 200)
    slow_body = (b"POST /v1/suppressions HTTP/1.1\r\nHost: x\r\n" + auth +
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", b'"number": "' * 50)  # fmt: skip
    huge_head = b"GET /v1/suppressions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20)
    results: dict[str, list[tuple[bytes, float, bool]]] = {"head": [], "body": [], "silent": [], "huge": []}
    with anyio.fail_after(60):
        async with open_served(tmp_path, "--dlr-delay", "0.01", backend=backend, api_extra=GUARD) as (_, gw), \
                client(gw.url) as c:  # fmt: skip
            before = gw.memory_kb()

            async def run(kind: str, *args) -> None:
                results[kind].append(await abuse(gw.port, *args))

            served = []
            async with anyio.create_task_group() as tg:
                for _ in range(EACH):
                    tg.start_soon(run, "head", *slow_head)
                    tg.start_soon(run, "body", *slow_body)
                    tg.start_soon(run, "silent", b"")
                    tg.start_soon(run, "huge", huge_head)
                # Meanwhile a normal client, on fresh connections, is answered promptly.
                for _ in range(10):
                    async with httpx.AsyncClient(base_url=gw.url, timeout=5.0) as fresh:
                        t0 = anyio.current_time()
                        r = await fresh.get("/v1/suppressions", headers={"authorization": f"Bearer {KEYS['acme']}"})
                        assert r.status_code == 200, r.text
                        served.append(anyio.current_time() - t0)
                    await anyio.sleep(0.1)
            assert (await c.get("/healthz")).status_code == 200
            after = gw.memory_kb()

    lived = {kind: max(t for _, t, _ in rs) for kind, rs in results.items()}
    print(f"slowloris ({backend}): connections={sum(map(len, results.values()))} lived_max_s="
          f"{ {k: round(v, 2) for k, v in lived.items()} } normal_client_max_s={max(served):.3f} "
          f"rss_kb_before={before} rss_kb_after={after}")  # fmt: skip
    for kind, rs in results.items():
        assert len(rs) == EACH
    # A head dribbled a byte at a time, or never sent: 408 (or closed) after header_timeout.
    assert all(closed for rs in results.values() for _, _, closed in rs)  # none is left open
    for answer, t, _ in results["head"] + results["silent"]:
        assert status(answer) in (408, None) and b"HTTP/1.1 200" not in answer, answer
        assert HEADER_TIMEOUT - 0.2 <= t <= HEADER_TIMEOUT + SLACK, t
    if backend == "asyncio":  # http_guard answers 408; Hypercorn's idle timer just closes
        assert all(status(a) == 408 for a, _, _ in results["head"])
    # A body that never finishes: the app's body budget answers 408 JSON.
    for answer, t, _ in results["body"]:
        assert status(answer) == 408 and b'"error":"request body not received within' in answer, answer
        assert BODY_TIMEOUT - 0.2 <= t <= BODY_TIMEOUT + SLACK, t
    # An endless header: refused as soon as it passes max_head_bytes, not buffered.
    for answer, t, _ in results["huge"]:
        assert status(answer) in (431, None), answer
        assert t <= SLACK, t
    # Served while the abusers hold their connections: most answers well inside the abusers' timeout
    # (the median: one answer may wait for a core on a loaded machine), none held until they are cut.
    assert sorted(served)[len(served) // 2] < HEADER_TIMEOUT / 2, served
    assert max(served) < HEADER_TIMEOUT + SLACK, served
    assert after["VmHWM"] - before["VmRSS"] < 30 * 1024, (before, after)  # 15 MB of headers were thrown at it


async def test_a_flood_on_one_key_leaves_another_tenant_served(tmp_path) -> None:
    async with open_served(tmp_path, "--dlr-delay", "0.01", rps=20.0, burst=20) as (_, gw), \
            client(gw.url) as acme, client(gw.url, "beta") as beta:  # fmt: skip
        codes: dict[str, list[int]] = {"acme": [], "beta": []}

        async def flood(worker: int) -> None:
            for _ in range(25):
                codes["acme"].append((await acme.get("/v1/suppressions")).status_code)

        with anyio.fail_after(30):
            t0 = anyio.current_time()
            async with anyio.create_task_group() as tg:
                for w in range(16):  # 400 requests from 16 concurrent connections on one key
                    tg.start_soon(flood, w)
                for _ in range(10):  # beta, at the same time, well within its own limit
                    codes["beta"].append((await beta.get("/v1/suppressions")).status_code)
                    await anyio.sleep(0.05)
            elapsed = anyio.current_time() - t0
        ok = codes["acme"].count(200)
        print(f"flood: {len(codes['acme'])} requests in {elapsed:.2f} s: acme 200={ok} "
              f"429={codes['acme'].count(429)} beta={codes['beta']}")  # fmt: skip
        assert set(codes["acme"]) <= {200, 429} and len(codes["acme"]) == 400
        assert ok <= 20 + 20.0 * elapsed + 1, (ok, elapsed)  # never more than burst + rate x time
        assert codes["beta"] == [200] * 10
        assert gw.proc.returncode is None
