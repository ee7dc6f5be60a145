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
(``gateway/api/app.py``). On trio, Hypercorn needs no guard: its idle timer runs until a head is
complete (``serve`` sets it to ``header_timeout``) and h11 bounds the head at 16 KiB.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["guarded_httptools"]

log = logging.getLogger(__name__)

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _refusal(status: int, message: str) -> bytes:
    code = {408: "header_timeout", 431: "headers_too_large"}[status]
    body = msgspec.json.encode({"error": message, "code": code})
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, _REASONS[status], len(body)) + body


def guarded_httptools(header_timeout: float, max_head_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's ``HttpToolsProtocol`` with a head deadline and a head size bound (pass it as
    ``uvicorn.Config(http=...)``)."""
    too_slow = _refusal(408, f"request headers not received within {header_timeout:g} s")
    too_big = _refusal(431, f"request headers larger than {max_head_bytes} bytes")

    class GuardedHttpTools(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _in_head = True  # between requests and until the end of the headers
        _head_bytes = 0
        _eof = False  # the client half-closed: close once the answer is out
        _tail = b""  # the last 3 bytes of the head so far: its end (CRLF CRLF) may span two reads

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

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
