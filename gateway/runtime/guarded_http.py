"""The HTTP client the gateway uses for tenants' URLs: the SSRF rule at connect time, quiet logs.

``guarded_transport(policy, limits)`` is httpx's own transport whose connections are opened by
``GuardedBackend``: the host is resolved once (``resolve``, replaceable in tests), *every*
address it resolves to is checked with ``gateway.core.targets.address_problem``, and the TCP
connection is opened to a checked address, not to the name (so a name that resolves to a public
address now and to 127.0.0.1 a moment later, DNS rebinding, cannot slip through: the address
we check is the address we connect to). TLS still verifies the certificate for the name, and
``Host`` is the name: only the socket's address is pinned. One check per connection: a pooled
connection is reused only for the origin it was opened (and checked) for. A refused target
raises ``TargetRefused`` before any packet is sent. Proxies from the environment are never used
(``trust_env=False`` on the client): a proxy would connect in our stead, unchecked.

``quiet_http_logs()``: httpx logs every request at INFO with its full URL (``HTTP Request:
POST https://user:token@host/path?secret=...``). Tenants' URLs may carry secrets in their path
or query, so records of the ``httpx`` and ``httpcore`` loggers have every URL cut down to
scheme and host (``redact_url``), as our own log lines do.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
import sniffio

from gateway.core.targets import Address, TargetPolicy, address_problem, parse_host

__all__ = ["GuardedBackend", "TargetRefused", "guarded_transport", "quiet_http_logs", "redact_url"]

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]


class TargetRefused(Exception):
    """The URL's host is (or resolves to) an address the gateway must not call."""


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as text (getaddrinfo, asyncio and trio alike)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(str(sockaddr[0]))
    return seen


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, with every address checked before the connection opens."""

    def __init__(self, policy: TargetPolicy, *, resolver: Resolver = resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:  # fmt: skip
        self._policy = policy
        self._resolve = resolver
        self._inner = inner

    async def checked_addresses(self, host: str, port: int) -> list[Address]:
        """Resolve ``host`` once and check every address; refuse if any one is refused (a name
        that also resolves to 127.0.0.1 is as good as one that resolves only to it)."""
        target = parse_host(host)
        if target is None:
            raise TargetRefused(f"not a host name nor an IP address: {host!r}")
        if isinstance(target, str):
            try:
                texts = await self._resolve(target, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve the host: {exc}") from exc
            addresses = [parse_host(t.split("%", 1)[0]) for t in texts]
        else:
            addresses = [target]
        if not addresses:
            raise httpcore.ConnectError("the host resolves to no address")
        for ip in addresses:
            if ip is None or isinstance(ip, str):
                raise TargetRefused("the resolver gave something that is not an address")
            if (problem := address_problem(ip, port, self._policy, target if isinstance(target, str) else "")):
                raise TargetRefused(problem)
        return addresses  # type: ignore[return-value]

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Iterable | None = None,
                          ) -> httpcore.AsyncNetworkStream:  # fmt: skip
        addresses = await self.checked_addresses(host, port)
        inner = self._backend()
        error: Exception | None = None
        for ip in addresses:  # the checked addresses, in the resolver's order: never the name again
            try:
                return await inner.connect_tcp(ip.compressed, port, timeout=timeout, local_address=local_address,
                                               socket_options=socket_options)  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        raise TargetRefused("Unix sockets are never a target")

    async def sleep(self, seconds: float) -> None:
        await self._backend().sleep(seconds)

    def _backend(self) -> httpcore.AsyncNetworkBackend:
        if self._inner is None:  # chosen on first use: the event loop is known by then
            trio = sniffio.current_async_library() == "trio"
            self._inner = httpcore.TrioBackend() if trio else httpcore.AnyIOBackend()
        return self._inner


def guarded_transport(policy: TargetPolicy, limits: httpx.Limits, *,
                      resolver: Resolver = resolve) -> httpx.AsyncHTTPTransport:  # fmt: skip
    """httpx's transport with its connection pool opening connections through ``GuardedBackend``.
    (httpx has no public way to give its transport a network backend: we give its pool one.)"""
    transport = httpx.AsyncHTTPTransport(limits=limits, retries=0)
    transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(policy, resolver=resolver),
    )
    return transport


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]*")


def redact_url(url: object) -> str:
    """A URL as logs may show it: scheme and host only (no credentials, path, query)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
    except ValueError:
        return "<url>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}"


class _RedactUrls(logging.Filter):
    """Every URL in a record (its message or its arguments), cut down to scheme and host."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "://" in record.msg:
            record.msg = _redact_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return True


def _redact_text(text: str) -> str:
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def _redact_arg(arg: object) -> object:
    if isinstance(arg, httpx.URL):
        return redact_url(arg)
    if isinstance(arg, bytes):
        arg = arg.decode("latin-1")
    if isinstance(arg, str):
        return _redact_text(arg) if "://" in arg else arg
    if isinstance(arg, (int, float)) or arg is None:
        return arg
    text = str(arg)  # anything else (a Request, a URL of httpcore): as text, redacted
    return _redact_text(text) if "://" in text else arg


_FILTER = _RedactUrls()
#: A logger's filters see only the records logged on it, not on its children: every one by name.
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
                 "httpcore.socks")


def quiet_http_logs() -> None:
    """Install the URL filter on httpx's and httpcore's loggers (idempotent)."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
