"""A tiny HTTP/1.1 server on 127.0.0.1 for tests, on anyio (so it runs on asyncio and trio)
with h11: ``port = await tg.start(serve, answer)`` where ``answer(request, body)`` returns
``(status, headers, body)``."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc
import h11

Answer = tuple[int, list[tuple[str, str]], bytes]


async def serve(answer: Callable[[h11.Request, bytes], Answer], *,
                task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
    await listener.serve(lambda stream: _connection(stream, answer))


async def _connection(stream: anyio.abc.ByteStream, answer: Callable[[h11.Request, bytes], Answer]) -> None:
    """One client connection. A client that goes away mid-request (a sender killed with -9, as the
    crash tests do) ends its connection only, never the server: its partial request is not answered."""
    try:
        await _exchange(stream, answer)
    except (h11.RemoteProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return


async def _exchange(stream: anyio.abc.ByteStream, answer: Callable[[h11.Request, bytes], Answer]) -> None:
    conn = h11.Connection(h11.SERVER)
    request, body = None, b""
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    conn.receive_data(b"")
                continue
            if isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                status, headers, content = answer(request, body)
                headers = [*headers, ("content-length", str(len(content)))]
                out = conn.send(h11.Response(status_code=status, headers=headers))
                out += conn.send(h11.Data(data=content)) + conn.send(h11.EndOfMessage())
                await stream.send(out)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            else:  # ConnectionClosed, or anything we don't serve
                return
