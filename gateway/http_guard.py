"""Two limits uvicorn does not have: a deadline for a request's head, and a bound on its size.

Used by both HTTP servers on asyncio: the gateway's API (``gateway/runtime/app.py``) and the campaign
layer's (``campaigns/service/server.py``, which may import it: it is no part of the gateway's runtime).

uvicorn (0.54, httptools) arms no timer while a request's head is arriving: its
``timeout_keep_alive`` runs only between requests, and every ``data_received`` cancels it. A
client that sends its headers a byte at a time (slowloris), or connects and sends nothing, holds
a connection open for ever. llhttp sets no limit on the size of a head either (h11's
``h11_max_incomplete_event_size`` applies only to the h11 protocol), so one endless header grows
memory without bound.

``guarded_httptools(header_timeout, max_head_bytes)`` is uvicorn's httptools protocol with both
(and an answer for a client that half-closes after its request, ``eof_received``):
from the connection (and from the first byte of each later request) until the end of the
headers, at most ``header_timeout`` seconds -> 408 and close; at most ``max_head_bytes`` bytes
-> 431 and close (RFC 9110 §15.5.9, RFC 6585 §5). The head counted is the request line, the
header lines and the empty line that ends them (up to and including its CRLF CRLF), exactly:
a head of ``max_head_bytes`` is served, one byte more is refused, however the bytes arrive. The body has its own budget in the ASGI app
(``gateway/api/app.py``). On trio, Hypercorn needs no head guard: its idle timer runs until a head
is complete (``serve`` sets it to ``header_timeout``) and h11 bounds the head; its connections are
capped by the same rule as below (``gateway/runtime/hyper_serve.py``).

Nor does uvicorn bound its connections (``limit_concurrency`` answers 503 to requests; the sockets
stay open): a client opening thousands of idle sockets ran the process out of file descriptors
(``accept`` failed with EMFILE, so nobody else was answered, and the store and the carriers could open
nothing) for ``header_timeout`` seconds, again and again. ``max_connections`` caps them: a connection
over the cap makes room by closing the oldest one that is between requests or still sending its head
(an idle keep-alive connection may be closed at any time, RFC 9112 §9.6; a head that has not come in
gets a 503), and only when every connection is inside a request is the new one refused (503, closed).
So a flood of idle sockets costs its sender its oldest ones, never someone else their answer.
``connection_caps`` fits the caps of a process's listeners into its file-descriptor limit
(``RLIMIT_NOFILE``): the soft limit raised towards the hard one as far as they need, else the caps
lowered, with a warning naming the keys.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Mapping

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["connection_caps", "guarded_httptools", "refusal"]

#: File descriptors a process keeps for what is not a client's connection: the store's files and
#: connections, carrier binds, HTTP clients, child processes' pipes, logs.
RESERVED_FDS = 256
_granted: dict[str, int] = {}  # config key -> the cap granted to a listener of this process

log = logging.getLogger(__name__)

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def refusal(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection: 408, 431 or 503 (with Retry-After)."""
    code = {408: "header_timeout", 431: "headers_too_large", 503: "too_many_connections"}[status]
    body = msgspec.json.encode({"error": message, "code": code})
    retry = b"retry-after: 1\r\n" if status == 503 else b""
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
    return head % (status, _REASONS[status], len(body), retry) + body


def connection_caps(wanted: Mapping[str, int], *, reserve: int = RESERVED_FDS) -> dict[str, int]:
    """Each listener's connection cap (``wanted``: config key -> cap) within this process's open-files
    limit: the soft ``RLIMIT_NOFILE`` is raised (up to the hard one) to the caps' sum plus ``reserve``;
    if the hard limit is lower, the caps are scaled down to fit (at least 16 each) and a warning names
    the keys and the limit."""
    others = sum(v for k, v in _granted.items() if k not in wanted)  # listeners already serving in this process
    need = others + sum(wanted.values()) + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - a platform that refuses
            log.warning("http.fd_limit.raise_failed soft=%d wanted=%d error=%s", soft, target, exc)
    if soft == resource.RLIM_INFINITY or soft >= need:
        _granted.update(wanted)
        return dict(wanted)
    room = max(soft - reserve - others, 16 * len(wanted))
    caps = {k: max(16, v * room // sum(wanted.values())) for k, v in wanted.items()}
    _granted.update(caps)
    log.warning("http.connections.capped limit_nofile=%d %s (raise the open-files limit, ulimit -n, to %d to keep them)",
                soft, " ".join(f"{k}={wanted[k]}->{caps[k]}" for k in wanted), need)  # fmt: skip
    return caps


def guarded_httptools(header_timeout: float, max_head_bytes: int, max_connections: int | None = None) -> type[asyncio.Protocol]:
    """uvicorn's ``HttpToolsProtocol`` with a head deadline, a head size bound and, unless None, a cap
    on open connections (pass it as ``uvicorn.Config(http=...)``; one call per server: the class
    holds that server's connections)."""
    too_slow = refusal(408, f"request headers not received within {header_timeout:g} s")
    too_big = refusal(431, f"request headers larger than {max_head_bytes} bytes")
    too_many = refusal(503, f"more than {max_connections} connections open: try again")
    conns: dict[asyncio.Protocol, None] = {}  # this server's open connections, oldest first

    class GuardedHttpTools(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _in_head = True  # between requests and until the end of the headers
        _head_bytes = 0
        _eof = False  # the client half-closed: close once the answer is out
        _tail = b""  # the last 3 bytes of the head so far: its end (CRLF CRLF) may span two reads

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if max_connections is not None and len(conns) >= max_connections and not self._make_room():
                log.info("http.refused status=503 client=%s connections=%d", self.client, len(conns))
                transport.write(too_many)
                transport.close()
                return
            conns[self] = None
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            conns.pop(self, None)
            self._disarm()
            super().connection_lost(exc)

        def _make_room(self) -> bool:
            """Close the oldest connection waiting for a request's head (idle, or its head still
            coming in); False if every one is inside a request."""
            for c in conns:
                if c._evictable():  # type: ignore[attr-defined]
                    c._evict()  # type: ignore[attr-defined]
                    return True
            return False

        def _evictable(self) -> bool:
            return self._in_head and (self.cycle is None or self.cycle.response_complete)

        def _evict(self) -> None:
            conns.pop(self, None)
            partial = self._head_bytes > 0
            self._disarm()
            if not self.transport.is_closing():
                if partial:  # a head was coming in: tell it why (an idle connection is just closed)
                    self.transport.write(too_many)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                seen = self._tail + data
                end = seen.find(b"\r\n\r\n")
                if end >= 0:  # the head ends in this read: its exact size, before parsing it
                    if self._head_bytes + end + 4 - len(self._tail) > max_head_bytes:
                        self._refuse(431, too_big)
                        return
                else:
                    self._tail = seen[-3:]
                self._head_bytes += len(data)
                if end < 0 and self._head_bytes > max_head_bytes:  # no end in sight: refuse now
                    self._refuse(431, too_big)
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._in_head, self._head_bytes, self._tail = True, 0, b""  # the idle gap: uvicorn's keep-alive timer
            super().on_response_complete()
            if self._eof and not self.transport.is_closing():
                self.transport.close()  # the client said it sends nothing more: it has its answer

        def eof_received(self) -> bool | None:
            """The client shut its side (``shutdown(SHUT_WR)``) after sending a whole request:
            keep ours open to answer it (RFC 9112 §9.6 leaves that to us; uvicorn closed, so the
            request was done, stored and sent, and the client never heard). An EOF mid-body or
            between requests closes as before."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                self._eof = True
                return True
            return None

        def _arm(self) -> None:
            self._in_head = True
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._timed_out)

        def _disarm(self) -> None:
            self._in_head, self._head_bytes, self._tail = False, 0, b""
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _timed_out(self) -> None:
            self._head_timer = None
            if self._in_head:
                self._refuse(408, too_slow)

        def _refuse(self, status: int, response: bytes) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            log.info("http.refused status=%d client=%s", status, self.client)
            if self.cycle is None or self.cycle.response_complete:  # never inside another response
                self.transport.write(response)
            self.transport.close()

    return GuardedHttpTools
