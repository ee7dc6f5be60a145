"""The short-link listener: a small HTTP/1.1 server that answers ``GET|HEAD /{code}`` (and ``/l/{code}``)
and nothing else, on a port of its own (the tenants' short domains point at it).

Why not the API's server: a redirect is one dictionary lookup and a 302, and through uvicorn, ASGI
and the framework most of its CPU went to the machinery around it (docs/BENCHMARKS.md). Here the
request head is parsed by llhttp (``httptools``, the parser uvicorn uses) and the answer is a few
bytes built at once. The shell is asyncio's protocol callbacks, not a task per connection on anyio
streams: measured, a stream's ``receive``/``send`` (a checkpoint each, a task switch per request)
cost as much CPU as uvicorn and ``redirect_front`` together, so a first version on anyio streams
saved nothing. A request whose link is in memory, or read on the loop (SQLite), is answered inside
``data_received`` (``Tracker.redirect_nowait``); one that must wait (a read off the loop) is answered
by a callback when its round of reads ends (``answer_later``, ``Tracker.redirect_later``; a task only
for a redirector without it), the connection's later requests queued behind it, in order. A 302's
bytes are built once per ``Location``. The service runs on asyncio
(uvicorn), so this costs no portability it had.

``RequestReader`` is the sans-I/O half: bytes in, complete request heads out, or ``BadRequest``
(with the status to answer before closing). Its bounds, so that hostile input costs little and
never grows memory:

- a request head (request line and headers) bigger than ``max_head`` bytes: 431 and close
  (counted on what was fed while the head was incomplete: at most one read, ``READ_BYTES``, over);
- a request target longer than ``max_target``: 414 and close;
- a body (a GET need not have one): more than ``max_body`` bytes: 413 and close;
- anything llhttp rejects (garbage, an Upgrade): 400 and close.

The shell (``serve_short_links``) adds the time bounds: a head must be complete within
``head_timeout`` of its first byte (slowloris), an idle keep-alive connection is closed after
``idle_timeout``, and at most ``max_connections`` are open (one more closes the oldest connection
not inside a request, or is closed itself when every one is: ``make_room``). The listener's
loop checks the deadlines every ``reap_interval`` (``ShortLinkServer.reap(now)``): a request costs
no timer of its own. A peer that does not read its answers stops being read (``pause_writing``).

Answers: 302 with ``Location`` (the link's target with its UTM parameters), ``Cache-Control:
no-store`` and ``Referrer-Policy: no-referrer``, exactly the API route's; 404 ``link_not_found``
(the route's JSON body); 405 for other methods; 503 ``storage_unavailable`` when the store cannot
be read (the hit is not kept). Every answer is HTTP/1.1 with a ``Content-Length``; a request that
asks to close (or HTTP/1.0 without keep-alive) is answered with ``Connection: close``, then closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import httptools

from campaigns.errors import CampaignError

log = logging.getLogger(__name__)

READ_BYTES = 16 * 1024


class BadRequest(Exception):
    """The request cannot be answered: answer ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class RequestHead:
    __slots__ = ("method", "target", "user_agent", "keep_alive")

    def __init__(self, method: bytes, target: bytes, user_agent: bytes | None, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.user_agent = user_agent
        self.keep_alive = keep_alive


class RequestReader:
    """Bytes in, complete request heads out (HTTP/1.1 pipelining included), bounded (module docstring)."""

    def __init__(self, *, max_head: int = 8 * 1024, max_target: int = 2048, max_body: int = 16 * 1024) -> None:
        self.max_head, self.max_target, self.max_body = max_head, max_target, max_body
        self._parser = httptools.HttpRequestParser(self)
        self._done: list[RequestHead] = []
        self.in_head = False  # a request's head has begun and is not complete
        self._head_fed = 0
        self._url: list[bytes] = []
        self._url_len = 0
        self._ua: bytes | None = None
        self._body = 0

    def receive_data(self, data: bytes) -> list[RequestHead]:
        """Feed what was read; the requests now complete (raises ``BadRequest``)."""
        was_in_head = self.in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise BadRequest(400, "upgrade not supported") from exc
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, BadRequest):  # a bound raised in a callback (llhttp wraps it)
                raise exc.__context__ from None
            raise BadRequest(400, f"malformed request: {exc}") from exc
        if self.in_head:
            self._head_fed = self._head_fed + len(data) if was_in_head else min(len(data), READ_BYTES)
            if self._head_fed > self.max_head:
                raise BadRequest(431, "request head too large")
        out, self._done = self._done, []
        return out

    # httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_head, self._head_fed = True, 0
        self._url, self._url_len, self._ua, self._body = [], 0, None, 0

    def on_url(self, url: bytes) -> None:
        self._url_len += len(url)
        if self._url_len > self.max_target:
            raise BadRequest(414, "request target too long")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 10 and name.lower() == b"user-agent":
            self._ua = value

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > self.max_body:
            raise BadRequest(413, "body too large")

    def on_message_complete(self) -> None:
        p = self._parser
        self._done.append(RequestHead(p.get_method(), b"".join(self._url), self._ua, p.should_keep_alive()))


class Redirector(Protocol):
    """What the listener asks (``Tracker``): where a code leads, the hit kept; None: no such link."""

    async def redirect(self, code: str, *, method: str, user_agent: str | None) -> Any: ...


_FIXED = b"cache-control: no-store\r\nreferrer-policy: no-referrer\r\n"
_NOT_FOUND = b'{"error":"no such link","code":"link_not_found"}'
_UNAVAILABLE = b'{"error":"storage unavailable, try again","code":"storage_unavailable"}'
_REASONS = {302: b"Found", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 413: b"Content Too Large",
            414: b"URI Too Long", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
            503: b"Service Unavailable"}  # fmt: skip


def response(status: int, *, location: bytes | None = None, body: bytes = b"", head_only: bool = False,
             close: bool = False, extra: bytes = b"") -> bytes:  # fmt: skip
    """One HTTP/1.1 answer (RFC 9112 §4, §6.3: a Content-Length always, so keep-alive is unambiguous)."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]), _FIXED, extra]
    if location is not None:
        parts.append(b"location: " + location + b"\r\n")
    if body:
        parts.append(b"content-type: application/json\r\n")
    parts.append(b"content-length: %d\r\n" % len(body))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def code_of(target: bytes) -> str | None:
    """The short code a request target names (``/{code}`` or ``/l/{code}``, query ignored), or None."""
    path = target.split(b"?", 1)[0]
    code = path[3:] if path.startswith(b"/l/") else path[1:]
    if 5 <= len(code) <= 16 and code.isalnum():  # bytes.isalnum: ASCII letters and digits only
        return code.decode("ascii")
    return None


@functools.lru_cache(maxsize=4096)
def _found(location: str, close: bool) -> bytes | None:
    """The 302 to ``location`` (the same bytes for GET and HEAD: it has no body), built once per
    Location (a campaign's URL with its UTM); None when it would split a header."""
    loc = location.encode("utf-8")
    if b"\r" in loc or b"\n" in loc:  # never a header split, whatever a target holds
        return None
    return response(302, location=loc, close=close)


def _finish(req: RequestHead, hit: Any) -> tuple[bytes, bool]:
    """The answer to ``req`` once the redirector said where its code leads (``hit``; None: nowhere)."""
    keep = req.keep_alive
    if hit is None:
        return response(404, body=_NOT_FOUND, head_only=req.method == b"HEAD", close=not keep), keep
    data = _found(hit.location, not keep)
    if data is None:
        log.error("redirect.bad_location location=%r", hit.location[:200])
        return response(500, close=True), False
    return data, keep


def _unavailable(req: RequestHead) -> tuple[bytes, bool]:
    return response(503, body=_UNAVAILABLE, head_only=req.method == b"HEAD", close=not req.keep_alive,
                    extra=b"retry-after: 1\r\n"), req.keep_alive  # fmt: skip


def _early(req: RequestHead) -> tuple[bytes, bool] | str:
    """The answer when the request needs no redirector (a wrong method, no code), else its code."""
    if req.method not in (b"GET", b"HEAD"):
        return response(405, close=not req.keep_alive, extra=b"allow: GET, HEAD\r\n"), req.keep_alive
    code = code_of(req.target)
    if code is None:
        return response(404, body=_NOT_FOUND, head_only=req.method == b"HEAD", close=not req.keep_alive), req.keep_alive
    return code


def _ua(req: RequestHead) -> str | None:
    return req.user_agent.decode("latin-1") if req.user_agent is not None else None


async def answer(redirector: Redirector, req: RequestHead) -> tuple[bytes, bool]:
    """The bytes answering one request (the hit kept by the redirector when it answers 302), and
    whether the connection stays open."""
    early = _early(req)
    if not isinstance(early, str):
        return early
    try:
        hit = await redirector.redirect(early, method="HEAD" if req.method == b"HEAD" else "GET", user_agent=_ua(req))
    except CampaignError as exc:  # the store unreachable: nothing kept, the browser may retry
        log.warning("redirect.unavailable code=%s error=%s", early, exc)
        return _unavailable(req)
    return _finish(req, hit)


def answer_nowait(redirector: Any, req: RequestHead) -> tuple[bytes, bool] | None:
    """``answer`` without waiting when the redirector can (``redirect_nowait``: a link in memory or
    read on the loop); None: call ``answer``."""
    early = _early(req)
    if not isinstance(early, str):
        return early
    nowait = getattr(redirector, "redirect_nowait", None)
    if nowait is None:
        return None
    try:
        done, hit = nowait(early, method="HEAD" if req.method == b"HEAD" else "GET", user_agent=_ua(req))
    except CampaignError:
        return None  # the waiting path answers it (503 if the store is really down)
    return _finish(req, hit) if done else None


def answer_later(redirector: Any, req: RequestHead, done: Callable[[tuple[bytes, bool]], None]) -> bool:
    """After ``answer_nowait`` said the request must wait: start answering it without a task
    (``redirect_later``: the code joins the next round of link reads) and call ``done(answer)`` on
    the loop when it is known. False when the redirector cannot (then ``answer`` in a task)."""
    later = getattr(redirector, "redirect_later", None)
    code = code_of(req.target)
    if later is None or code is None:
        return False

    def got(hit: Any, error: Exception | None) -> None:
        if error is None:
            done(_finish(req, hit))
        elif isinstance(error, CampaignError):  # as ``answer``: nothing kept, the browser may retry
            log.warning("redirect.unavailable code=%s error=%s", code, error)
            done(_unavailable(req))
        else:
            log.error("shortlinks.connection_failed", exc_info=error)
            done((b"", False))

    return bool(later(code, method="HEAD" if req.method == b"HEAD" else "GET", user_agent=_ua(req), done=got))


class ShortLinkProtocol(asyncio.Protocol):
    """One connection (asyncio's protocol callbacks, not a task: see the module docstring). Requests
    are answered in order; one that must wait (a link read off the loop) holds the later ones of
    the connection in ``_queue`` until it is answered, reading paused beyond ``MAX_QUEUED``."""

    MAX_QUEUED = 64

    def __init__(self, server: ShortLinkServer) -> None:
        self.server = server
        self.reader = RequestReader()
        self.since = server.clock()  # the first byte of the head being read, else the last answer (idle)
        self.transport: asyncio.Transport | None = None
        self._queue: list[RequestHead] = []
        self._busy = False  # a request waits for its link: the later ones wait in ``_queue``
        self._held = False  # reading paused because too many requests wait
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.conns) >= self.server.max_connections and not self.server.make_room():
            self.server.refused += 1
            transport.close()
            self._closing = True
            return
        self.server.conns[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.server.conns.pop(self, None)

    def close(self) -> None:
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.close()
        self.server.conns.pop(self, None)

    def pause_writing(self) -> None:  # the peer does not read: stop reading its requests
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if not self.reader.in_head:
            self.since = self.server.clock()  # a head begins with these bytes
        try:
            reqs = self.reader.receive_data(data)
        except BadRequest as exc:
            self.transport.write(response(exc.status, close=True))  # type: ignore[union-attr]
            self.close()
            return
        if not reqs:
            return
        if self._busy:
            self._queue += reqs
            if len(self._queue) > self.MAX_QUEUED and not self._held:
                self._held = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        else:
            self._answer(reqs)
        if not self.reader.in_head:
            self.since = self.server.clock()  # idle from here

    def _answer(self, reqs: list[RequestHead]) -> None:
        out = []
        for i, req in enumerate(reqs):
            try:
                got = answer_nowait(self.server.redirector, req)
            except Exception:  # noqa: BLE001 - a bug answering one connection never stops the listener
                log.exception("shortlinks.connection_failed")
                got = (b"", False)
            if got is None:  # must wait: answered when its link is read, the rest queued behind it
                if out:
                    self.transport.write(b"".join(out))  # type: ignore[union-attr]
                self._wait(req, reqs[i + 1:])
                return
            out.append(got[0])
            if not got[1]:
                self.transport.write(b"".join(out))  # type: ignore[union-attr]
                self.close()
                return
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]

    def _wait(self, req: RequestHead, rest: list[RequestHead]) -> None:
        """``req`` waits for its link (a callback, else a task); the connection's later requests wait
        behind it, in order, reading paused beyond ``MAX_QUEUED``."""
        self._queue = rest + self._queue
        self._busy = True
        if len(self._queue) > self.MAX_QUEUED and not self._held:
            self._held = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        try:
            started = answer_later(self.server.redirector, req, self._resume)
        except Exception:  # noqa: BLE001 - as in _answer
            log.exception("shortlinks.connection_failed")
            self._busy = False
            self.close()
            return
        if not started:
            self._queue.insert(0, req)
            self.server.spawn(self._drain())

    def _resume(self, got: tuple[bytes, bool]) -> None:
        """The waiting request's answer: sent, then the requests queued behind it answered."""
        self._busy = False
        if self._closing:
            return
        data, keep = got
        if data:
            self.transport.write(data)  # type: ignore[union-attr]
        if not keep:
            self.close()
            return
        reqs, self._queue = self._queue, []
        if reqs:
            self._answer(reqs)
        if not self._busy and not self._closing:
            self.since = self.server.clock()
            if self._held:
                self._held = False
                self.transport.resume_reading()  # type: ignore[union-attr]

    async def _drain(self) -> None:
        try:
            while self._queue and not self._closing:
                req = self._queue.pop(0)
                data, keep = await answer(self.server.redirector, req)
                if self._closing:
                    return
                self.transport.write(data)  # type: ignore[union-attr]
                if not keep:
                    self.close()
                    return
        except Exception:  # noqa: BLE001 - as in _answer
            log.exception("shortlinks.connection_failed")
            self.close()
        finally:
            self._busy = False
            if not self._closing and self.transport is not None:
                if self._held:
                    self._held = False
                    self.transport.resume_reading()
                self.since = self.server.clock()


class ShortLinkServer:
    """The listener's connections and their deadlines (module docstring)."""

    def __init__(self, redirector: Redirector, *, head_timeout: float = 10.0, idle_timeout: float = 60.0,
                 max_connections: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.redirector = redirector
        self.head_timeout, self.idle_timeout, self.max_connections = head_timeout, idle_timeout, max_connections
        self.clock = clock
        self.conns: dict[ShortLinkProtocol, None] = {}  # oldest first
        self.refused = 0  # connections closed at once (over max_connections, every open one in a request)
        self.evicted = 0  # idle (or head-reading) connections closed to make room for a new one
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return len(self.conns)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def make_room(self) -> bool:
        """Over ``max_connections``: close the oldest connection no request of which is being answered
        (idle, or its head still coming in), so a flood of idle sockets costs its sender its oldest
        ones, never a new client its answer (gateway/http_guard.py does the same for the APIs)."""
        for c in self.conns:
            if not c._busy:
                c.close()
                self.evicted += 1
                return True
        return False

    def reap(self, now: float) -> int:
        """Close the connections past a deadline: a head begun more than ``head_timeout`` ago, or idle
        for ``idle_timeout`` (a connection whose answer is being waited for is neither). How many."""
        n = 0
        for c in list(self.conns):
            if c._busy:
                continue
            limit = self.head_timeout if c.reader.in_head else self.idle_timeout
            if now - c.since > limit:
                c.close()
                n += 1
        return n

    async def aclose(self) -> None:
        for c in list(self.conns):
            c.close()
        for t in list(self._tasks):
            t.cancel()


async def serve_short_links(server: ShortLinkServer, *, host: str, port: int,
                            on_ready: Callable[[int], None] | None = None, reap_interval: float = 1.0) -> None:  # fmt: skip
    """Listen until cancelled; ``on_ready(port)`` once bound. asyncio only (the service runs on it)."""
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: ShortLinkProtocol(server), host, port, reuse_address=True)
    try:
        bound = listener.sockets[0].getsockname()[1]
        log.info("shortlinks.listening host=%s port=%d", host, bound)
        if on_ready is not None:
            on_ready(bound)
        while True:
            await anyio.sleep(reap_interval)
            server.reap(server.clock())
    finally:
        listener.close()
        with anyio.CancelScope(shield=True):
            await server.aclose()


__all__ = ["BadRequest", "RequestHead", "RequestReader", "ShortLinkProtocol", "ShortLinkServer", "answer",
           "answer_later", "answer_nowait", "code_of", "response", "serve_short_links"]  # fmt: skip
