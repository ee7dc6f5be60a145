"""The webhook client: signed JSON POSTs over kept-alive HTTP/1.1 connections, and nothing else.

Why not httpx here: the delivery process POSTs a batch of events per request, and httpx's
client machinery (its request and response models, httpcore's pool, which walks every
connection for every request, and the socket-readability checks on reuse) cost more CPU than
encoding and signing the batch (docs/ARCHITECTURE.md, "Webhooks: the delivery process's CPU").
A webhook POST needs very little of HTTP: one method, headers we write ourselves, a body of
known length, and from the answer only its status, its ``Retry-After`` and whether the
connection can be used again. So this module is

- ``ResponseParser``: a sans-I/O reader of one HTTP/1.1 response (RFC 9112): bytes in, the
  status when the head is complete, ``done`` once the body is over. Framing as §6.3 says:
  1xx answers skipped (101 refused), no body after 204/304, ``Transfer-Encoding: chunked``
  (extensions and trailers read and dropped), ``Content-Length`` (several values must agree),
  else the body runs until the server closes. A body is read and dropped, never kept; one larger
  than ``max_body`` is not waited for (its status stands, the connection is closed).
  Anything else malformed is a ``ResponseError``. Tested against h11 as an oracle.
- ``HookClient``: ``post(url, body, headers)`` over a small pool per origin, connections opened
  through ``GuardedBackend.checked_addresses`` (the SSRF rule, resolve once, connect to the
  checked address: ``gateway/runtime/guarded_http.py``). A connection is reused only when the
  answer was complete and kept alive (HTTP/1.1 without ``Connection: close``) and it has been
  idle less than ``keepalive_expiry``; a kept-alive connection the server closed meanwhile fails
  before any byte of an answer, and that POST is tried once more on a new connection (a
  webhook may arrive twice anyway: at least once). ``http://`` only: ``https://`` URLs are
  sent by httpx (``webhooks.py``), TLS and all.

Errors (``HookHTTPError``): ``UnusableURL`` (asking again cannot help), ``ConnectFailed``,
``ResponseError`` (the answer broke the protocol, or the connection ended mid-answer); the
caller bounds each POST in time (``webhooks.timeout``) and maps them to retries or dead letters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio
import anyio.abc

from gateway.core.targets import TargetPolicy
from gateway.runtime.guarded_http import GuardedBackend, Resolver, resolve

__all__ = ["ConnectFailed", "HookClient", "HookHTTPError", "Reply", "ResponseError", "ResponseParser", "UnusableURL"]


class HookHTTPError(Exception):
    """A POST that did not come to an answer."""


class UnusableURL(HookHTTPError):
    """The URL cannot be POSTed to by this client (no host, not http, a character HTTP forbids)."""


class ConnectFailed(HookHTTPError):
    """No connection (refused, unreachable, the name resolves to nothing)."""


class ResponseError(HookHTTPError):
    """The answer broke HTTP/1.1, or the connection ended before it was complete."""


class Reply:
    """What a POST came to: the status and its ``Retry-After`` (raw text, or None)."""

    __slots__ = ("retry_after", "status")

    def __init__(self, status: int, retry_after: str | None) -> None:
        self.status, self.retry_after = status, retry_after


_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")
_MAX_HEAD = 64 * 1024


class ResponseParser:
    """One response (sans-I/O): ``feed(data)`` as bytes arrive, ``end()`` at end of file.
    ``status`` is set once the final head is read; ``done`` once the body is over;
    ``keep_alive``: the connection may carry the next request."""

    def __init__(self, *, max_body: int = 64 * 1024) -> None:
        self.status: int | None = None
        self.retry_after: str | None = None
        self.keep_alive = False
        self.done = False
        self.overflow = False  # the body was larger than max_body: not read to its end
        self._max_body = max_body
        self._buf = b""
        self._left = 0  # content-length framing: body bytes still to come
        self._mode = "head"  # head | length | chunk-size | chunk-data | chunk-end | trailer | close
        self._seen = 0  # body bytes read

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self._buf += data
        while not self.done and self._step():
            pass

    def end(self) -> None:
        """The server closed the connection."""
        if self.done:
            return
        if self._mode == "close":
            self.done, self.keep_alive = True, False
            return
        raise ResponseError("the connection closed before the answer was complete")

    # -- framing ------------------------------------------------------------------------

    def _step(self) -> bool:
        """Use what the buffer holds; False when more bytes are needed."""
        mode = self._mode
        if mode == "head":
            return self._head()
        if mode == "length":
            take = min(self._left, len(self._buf))
            self._buf, self._left = self._buf[take:], self._left - take
            self._body(take)
            if self._left == 0:
                self._finish()
            return bool(self._buf) and not self.done
        if mode == "close":
            self._body(len(self._buf))
            self._buf = b""
            return False
        return self._chunked()

    def _head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                raise ResponseError("the answer's head is too large")
            return False
        head, self._buf = self._buf[:end], self._buf[end + 4 :]
        lines = head.split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            raise ResponseError("not an HTTP/1.x status line")
        minor, status = m.group(1), int(m.group(2))
        fields: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or _TOKEN.fullmatch(name) is None:  # obs-fold too (a line starting with a space)
                raise ResponseError("a malformed header line")
            fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
        if 100 <= status < 200:
            if status == 101:
                raise ResponseError("101 Switching Protocols to a POST")
            return True  # an interim answer: the final one follows (RFC 9110 §15.2)
        if status < 200:
            raise ResponseError("a status below 100")
        self.status = status
        if (after := fields.get(b"retry-after")) is not None:
            self.retry_after = after[0].decode("latin-1")
        close = any(b"close" in v.lower() for v in fields.get(b"connection", ()))
        self.keep_alive = minor == b"1" and not close
        self._framing(status, fields)
        return True

    def _framing(self, status: int, fields: dict[bytes, list[bytes]]) -> None:
        """RFC 9112 §6.3: how the body ends."""
        if status in (204, 304):
            self._finish()
            return
        if (te := fields.get(b"transfer-encoding")) is not None:
            codings = [c.strip().lower() for v in te for c in v.split(b",") if c.strip()]
            if codings and codings[-1] == b"chunked":
                self._mode = "chunk-size"
            else:
                self._mode, self.keep_alive = "close", False
            return
        if (lengths := fields.get(b"content-length")) is not None:
            values = {v.strip() for v in lengths for v in v.split(b",")}
            if len(values) != 1 or not (value := values.pop()).isdigit():
                raise ResponseError("an invalid Content-Length")
            self._left = int(value)
            if self._left == 0:
                self._finish()
            else:
                self._mode = "length"
            return
        self._mode, self.keep_alive = "close", False

    def _chunked(self) -> bool:
        mode = self._mode
        if mode == "chunk-data":
            take = min(self._left, len(self._buf))
            self._buf, self._left = self._buf[take:], self._left - take
            self._body(take)
            if self._left:
                return False
            self._mode = "chunk-end"
            return True
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                raise ResponseError("a chunk line is too long")
            return False
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        if mode == "chunk-end":
            if line:
                raise ResponseError("a chunk not followed by CRLF")
            self._mode = "chunk-size"
        elif mode == "chunk-size":
            m = _CHUNK_SIZE.fullmatch(line)
            if m is None:
                raise ResponseError("an invalid chunk size")
            self._left = int(m.group(1), 16)
            self._mode = "chunk-data" if self._left else "trailer"
        elif not line:  # the end of the trailer section
            self._finish()
        elif b":" not in line:
            raise ResponseError("a malformed trailer line")
        return True

    def _body(self, n: int) -> None:
        self._seen += n
        if self._seen > self._max_body and not self.done:
            self.overflow, self.done, self.keep_alive = True, True, False

    def _finish(self) -> None:
        self.done = True
        if self._buf:  # more than the answer: its status stands, the connection is not reused
            self.keep_alive = False


class _Target:
    """A URL parsed once: where to connect and the request head's fixed part."""

    __slots__ = ("head", "host", "origin", "port")

    def __init__(self, url: str) -> None:
        if any(c <= " " or c >= "\x7f" for c in url):
            raise UnusableURL("a character a URL may not carry (space, control, non-ASCII)")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnusableURL(f"not a URL: {exc}") from None
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise UnusableURL("not an http:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise UnusableURL("credentials in the URL")
        host = parts.hostname
        self.host, self.port = host, port or 80
        self.origin = (host, self.port)
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port is None else f"{shown}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.head = (f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n").encode("ascii")


class _Connection:
    __slots__ = ("idle_since", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream, self.idle_since = stream, 0.0


class HookClient:
    """POSTs over kept-alive HTTP/1.1 connections (module docstring). ``async with`` or ``aclose``."""

    def __init__(self, policy: TargetPolicy, *, keep: int = 16, resolver: Resolver = resolve,
                 headers: Sequence[tuple[str, str]] = (), keepalive_expiry: float = 5.0,
                 max_body: int = 64 * 1024) -> None:  # fmt: skip
        """``keep``: idle connections kept per origin; ``headers``: sent with every request."""
        self._backend = GuardedBackend(policy, resolver=resolver)
        self._keep, self._expiry, self._max_body = keep, keepalive_expiry, max_body
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
        self._targets: dict[str, _Target | UnusableURL] = {}
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def __aenter__(self) -> HookClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await anyio.aclose_forcefully(conn.stream)

    def target(self, url: str) -> _Target:
        """``url`` parsed (cached: a subscriber's URL is POSTed to again and again)."""
        t = self._targets.get(url)
        if t is None:
            if len(self._targets) > 4096:
                self._targets.clear()
            try:
                t = _Target(url)
            except UnusableURL as exc:
                t = exc
            self._targets[url] = t
        if isinstance(t, UnusableURL):
            raise t
        return t

    async def post(self, url: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> Reply:
        """POST ``body``; the answer's status once it is read. Raises ``HookHTTPError`` (or
        ``TargetRefused``, the SSRF rule); the caller bounds it in time."""
        t = self.target(url)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
        request = b"%s%sContent-Length: %d\r\n%s\r\n%s" % (t.head, self._fixed, len(body), extra, body)
        conn = await self._reuse(t.origin)
        if conn is not None:
            try:
                return await self._exchange(t, conn, request)
            except _Stale:
                pass  # closed by the server while idle: once more, on a new connection
        conn = await self._connect(t)
        try:
            return await self._exchange(t, conn, request)
        except _Stale:
            raise ResponseError("the connection closed before the answer began") from None

    async def _reuse(self, origin: tuple[str, int]) -> _Connection | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()  # the most recently used: the least likely to have been closed
            if now - conn.idle_since < self._expiry:
                return conn
            await anyio.aclose_forcefully(conn.stream)
        return None

    async def _connect(self, t: _Target) -> _Connection:
        addresses = await self._backend.checked_addresses(t.host, t.port)
        error: Exception | None = None
        for ip in addresses:  # the checked addresses: never the name again
            try:
                return _Connection(await anyio.connect_tcp(ip.compressed, t.port))
            except OSError as exc:
                error = exc
        raise ConnectFailed(f"cannot connect: {error}")

    async def _exchange(self, t: _Target, conn: _Connection, request: bytes) -> Reply:
        parser = ResponseParser(max_body=self._max_body)
        got = False
        try:
            await conn.stream.send(request)
            while not parser.done:
                try:
                    data = await conn.stream.receive(65536)
                except anyio.EndOfStream:
                    if not got:
                        raise _Stale from None
                    parser.end()
                    break
                got = True
                parser.feed(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            await anyio.aclose_forcefully(conn.stream)
            if not got:
                raise _Stale from exc
            raise ResponseError(f"the connection failed mid-answer: {type(exc).__name__}") from exc
        except BaseException:  # a protocol error, a time-out (cancellation): never reuse it
            await anyio.aclose_forcefully(conn.stream)
            raise
        assert parser.status is not None
        if parser.keep_alive:
            conn.idle_since = time.monotonic()
            conns = self._idle.setdefault(t.origin, [])
            conns.append(conn)
            conn = conns.pop(0) if len(conns) > self._keep else None
        if conn is not None:
            await anyio.aclose_forcefully(conn.stream)
        return Reply(parser.status, parser.retry_after)


class _Stale(Exception):
    """The connection ended before any byte of an answer (a kept-alive one closed meanwhile)."""

