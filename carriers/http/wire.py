"""A minimal HTTP/1.1 server on anyio, for the carrier simulator and the tests' receivers.

Why not uvicorn: the simulator must run inside the tests on both anyio backends (trio too), and
it must not be the bottleneck. This serves what an HTTP client such as httpx sends: keep-alive
requests with a ``Content-Length`` body (no chunked bodies, no ``Expect``), one at a time per
connection, one ``send`` per response. Headers are handed over lower-cased.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

__all__ = ["Handler", "Incoming", "Reply", "serve_http"]

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_REASONS = {200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content", 400: b"Bad Request",
            401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 409: b"Conflict",
            413: b"Content Too Large", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable"}  # fmt: skip


class Incoming:
    __slots__ = ("method", "target", "headers", "body")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body


Reply = tuple[int, list[tuple[str, str]], bytes]
Handler = Callable[[Incoming], Awaitable[Reply]]


def _response(status: int, headers: list[tuple[str, str]], body: bytes, close: bool) -> bytes:
    head = [b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n" % (status, _REASONS.get(status, b"Status"), len(body))]
    for k, v in headers:
        head.append(f"{k}: {v}\r\n".encode("latin-1"))
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


async def _serve_connection(stream: anyio.abc.ByteStream, handler: Handler) -> None:
    buf = bytearray()
    receive = stream.receive
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > _MAX_HEAD:
                    await stream.send(_response(431, [], b"", True))
                    return
                buf += await receive(65536)
                end = buf.find(b"\r\n\r\n")
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            method, target, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "transfer-encoding" in headers or headers.get("expect"):
                await stream.send(_response(501, [], b"", True))
                return
            n = int(headers.get("content-length") or 0)
            if n > _MAX_BODY:
                await stream.send(_response(413, [], b"", True))
                return
            while len(buf) < n:
                buf += await receive(max(65536, n - len(buf)))
            body = bytes(buf[:n])
            del buf[:n]
            status, out_headers, out = await handler(Incoming(method, target, headers, body))
            close = version != "HTTP/1.1" or headers.get("connection", "").lower() == "close"
            await stream.send(_response(status, out_headers, out, close))
            if close:
                return
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return
    except ValueError as exc:  # a request line or length we cannot read
        log.info("http.bad_request error=%s", exc)
        try:
            await stream.send(_response(400, [], b"", True))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def serve_http(
    handler: Handler, host: str = "127.0.0.1", port: int = 0, *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:  # fmt: skip
    """Serve ``handler`` on ``host:port`` (0: a free port, reported through ``task_status``)."""
    listener: Any = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener, anyio.create_task_group() as tg:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(lambda stream: _serve_connection(stream, handler), task_group=tg)
