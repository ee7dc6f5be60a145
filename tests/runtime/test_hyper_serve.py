"""``gateway.runtime.hyper_serve``: Hypercorn on trio with http_guard's connection cap, in process.
Over the cap the oldest idle connection is closed for the newcomer; when every connection is inside
a request the newcomer gets a 503 and is closed; a request in progress is never cut. (The flood
over real processes under a low open-files limit: tests/runtime/test_hostile_connections.py.)"""

from __future__ import annotations

import pytest
import trio
from hypercorn.config import Config

from gateway.runtime.hyper_serve import serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


class _App:
    """``/hold`` answers when ``release`` is set; anything else at once."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.two_holding = trio.Event()
        self.holding = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            self.holding += 1
            if self.holding == 2:
                self.two_holding.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def _response(stream: trio.SocketStream) -> bytes:
    """One whole response (head and its content-length of body), or what came before EOF."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            if len(body) >= length:
                return data
        chunk = await stream.receive_some(4096)
        if not chunk:
            return data
        data += chunk


async def _closed(stream: trio.SocketStream) -> bool:
    """The server closed it: EOF, or a reset (it closed with our request unread)."""
    try:
        return await stream.receive_some(10) == b""
    except trio.BrokenResourceError:
        return True


async def _get(port: int, path: str) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return stream, await _response(stream)


async def test_the_cap_closes_the_oldest_idle_then_refuses_when_all_are_busy() -> None:
    app, config = _App(), Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = 60
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: serve(app, config, 2, shutdown_trigger=stop.wait,
                                                                  task_status=task_status))  # fmt: skip
            port = int(binds[0].rsplit(":", 1)[1])
            idle = await trio.open_tcp_stream("127.0.0.1", port)  # connected, sends nothing
            kept, answer = await _get(port, "/now")  # answered, kept alive: idle too
            assert answer.startswith(b"HTTP/1.1 200")
            # a third connection: the oldest idle one (``idle``) is closed for it
            third, answer = await _get(port, "/now")
            assert answer.startswith(b"HTTP/1.1 200")
            assert await _closed(idle)
            # both open connections inside a request: a newcomer is refused, they are not cut
            for s in (kept, third):
                await s.send_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
            await app.two_holding.wait()
            refused, answer = await _get(port, "/now")
            assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
            assert await _closed(refused)
            app.release.set()
            for s in (kept, third):
                assert (await _response(s)).startswith(b"HTTP/1.1 200")
            stop.set()
