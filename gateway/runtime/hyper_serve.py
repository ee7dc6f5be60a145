"""Hypercorn on trio (``sluice serve --backend trio``) with a bound on its connections.

Hypercorn (0.18) accepts every connection it is offered: a client opening thousands of idle
sockets ran the process out of file descriptors (``accept`` failed with EMFILE, and trio's
``serve_listeners`` waits and retries, so nobody else was answered), exactly as uvicorn did before
``gateway.http_guard`` capped it. The rule is http_guard's: at most ``max_connections`` open; a
connection over the cap makes room by closing the oldest one that is idle (between requests, or
its head not complete: Hypercorn's idle timer is running, RFC 9112 §9.6 lets a server close it),
and only when every connection is inside a request is the new one refused (503, closed). So a
flood of idle sockets costs its sender its oldest ones, never someone else their answer.

``serve`` is Hypercorn's ``worker_serve`` for one plain-TCP listener and an app without lifespan
(as uvicorn runs it: ``lifespan="off"``), with ``TCPServer`` subclassed to keep the register.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from gateway.http_guard import refusal

__all__ = ["serve"]

_REFUSE_S = 1.0  # at most this long writing a refusal to a client that does not read it


class _Capped(TCPServer):
    """A connection that, on arrival, makes room under the cap first (or is refused)."""

    def __init__(self, live: dict[TCPServer, None], cap: int, *args) -> None:
        super().__init__(*args)
        self._live, self._cap = live, cap

    async def run(self) -> None:
        live = self._live
        if len(live) >= self._cap:
            # Oldest first (a dict keeps arrival order); idle: Hypercorn's idle timer is armed.
            victim = next((c for c in live if c.idle_task._handle is not None), None)
            if victim is None:
                with trio.move_on_after(_REFUSE_S), trio.CancelScope(shield=True):
                    try:
                        await self.stream.send_all(refusal(503, "too many connections"))
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                await self.stream.aclose()
                return
            del live[victim]
            with trio.CancelScope(shield=True):
                await victim._initiate_server_close()  # what its idle timer would do, now
        live[self] = None
        try:
            await super().run()
        finally:
            live.pop(self, None)


async def serve(app, config: Config, max_connections: int, *, shutdown_trigger: Callable[[], Awaitable[None]],
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    """Serve ``app`` on ``config.bind`` (plain TCP) until ``shutdown_trigger`` returns, then give
    open requests ``config.graceful_timeout`` seconds. ``task_status`` gets the bound addresses."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    sockets = config.create_sockets()
    listeners, binds = [], []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    live: dict[TCPServer, None] = {}
    handler = partial(_Capped, live, max_connections, wrapped, config, context, ConnectionState({}))
    async with trio.open_nursery() as connections:
        task_status.started(binds)
        try:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, handler, listeners, handler_nursery=connections))
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
        finally:
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
