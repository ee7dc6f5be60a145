"""`python -m bench.status_receiver`: the HTTP receiver of `sluice bench kannel`, in its own process.

It stands for the upstream system that learns each message's fate from a status callback, and
counts what it hears, keyed by the message's position in what was sent:

- ``GET /dlr?id=I&t=T`` is a Kannel delivery report (the ``dlr-url`` given with each sendsms,
  ``t`` = Kannel's ``%d``: 1 delivered, 2 failed, 4 buffered, 8 SMSC accepted, 16 SMSC rejected);
  final when ``T & 19``; the key is ``I``.
- ``POST /hooks`` is a batch of Sluice webhook events (``{"events": [...]}``, docs/WEBHOOKS.md); an
  event is final when its ``state`` is one of Sluice's final states; the key is its ``index``.

Every key's first final event counts; a later final event for the same key is a duplicate. When
as many keys as wanted have been heard, the time (``time.monotonic()``, the clock the bench reads
too: CLOCK_MONOTONIC, one per machine) is kept as ``done_at``. ``POST /reset`` (JSON ``{"keys":
K, "want": N}``) starts over; ``GET /stats`` answers the counts as JSON.

Cheap by construction, so it is never what limits the rate it measures: a raw asyncio protocol
(on uvloop when installed), no HTTP framework, keep-alive, one 200 with an empty body per
request, the webhook body decoded by msgspec into only the two fields it reads. `sluice bench
kannel` measures its ceiling (``ceiling``) before it measures anything else. Chunked bodies are
not read (neither Kannel nor Sluice sends them): such a request is answered 411 and counted as bad.

Prints ``{"listening": PORT}`` when ready (``--port 0``: a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from urllib.parse import parse_qsl

import msgspec

from gateway.store.base import FINAL

__all__ = ["KANNEL_FINAL", "Receiver", "main"]

#: Kannel's report types that end a message: delivered (1), failed (2), rejected by the SMSC (16).
KANNEL_FINAL = 1 | 2 | 16

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_MAX_HEAD = 64 * 1024


class _Event(msgspec.Struct):
    state: str
    index: int | None = None


class _Body(msgspec.Struct):
    events: list[_Event]


_decode_body = msgspec.json.Decoder(_Body).decode
_FINAL = frozenset(FINAL)


class Receiver:
    """The counts (one instance per process, shared by its connections)."""

    def __init__(self) -> None:
        self.reset(0, 0)

    def reset(self, keys: int, want: int) -> None:
        self.seen = bytearray(keys)
        self.want = want
        self.final = 0  # distinct keys heard final
        self.duplicates = 0  # final events for a key already heard final
        self.out_of_range = 0  # final events whose key is not one sent
        self.events = 0  # every event (final or not)
        self.requests = 0
        self.bad = 0  # requests not understood
        self.first_at: float | None = None
        self.last_final_at: float | None = None
        self.done_at: float | None = None

    def final_event(self, key: int | None, now: float) -> None:
        self.last_final_at = now
        if key is None or not 0 <= key < len(self.seen):
            self.out_of_range += 1
            return
        if self.seen[key]:
            self.duplicates += 1
            return
        self.seen[key] = 1
        self.final += 1
        if self.final == self.want:
            self.done_at = now

    def stats(self) -> dict[str, object]:
        return {"want": self.want, "final": self.final, "missing": self.want - self.final,
                "duplicates": self.duplicates, "out_of_range": self.out_of_range, "events": self.events,
                "requests": self.requests, "bad": self.bad, "first_at": self.first_at,
                "last_final_at": self.last_final_at, "done_at": self.done_at}  # fmt: skip

    def answer(self, method: bytes, target: bytes, body: bytes) -> bytes:
        now = time.monotonic()
        path, _, query = target.partition(b"?")
        if path == b"/dlr":
            self._count_request(now)
            args = dict(parse_qsl(query.decode("latin-1")))
            try:
                key, kind = int(args["id"]), int(args["t"])
            except (KeyError, ValueError):
                self.bad += 1
                return _OK
            self.events += 1
            if kind & KANNEL_FINAL:
                self.final_event(key, now)
            return _OK
        if path == b"/hooks" and method == b"POST":
            self._count_request(now)
            try:
                events = _decode_body(body).events
            except msgspec.DecodeError:
                self.bad += 1
                return _OK
            self.events += len(events)
            for e in events:
                if e.state in _FINAL:
                    self.final_event(e.index, now)
            return _OK
        if path == b"/reset" and method == b"POST":
            spec = json.loads(body)
            self.reset(int(spec["keys"]), int(spec["want"]))
            return _OK
        if path == b"/stats":
            out = json.dumps(self.stats()).encode()
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out)
        self.bad += 1
        return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    def _count_request(self, now: float) -> None:
        self.requests += 1
        if self.first_at is None:
            self.first_at = now


class _Connection(asyncio.Protocol):
    """HTTP/1.1 requests with a content-length (or none), kept alive, answered in order."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        close = False
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    close = True
                break
            head = bytes(buf[:end])
            lines = head.split(b"\r\n")
            method, target = (lines[0].split(b" ") + [b"", b""])[:2]
            length, chunked = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                self.receiver.bad += 1
                out.append(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                close = True
                break
            if len(buf) < end + 4 + length:
                close = False
                break
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            out.append(self.receiver.answer(method, target, body))
            if close:
                break
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


async def serve(port: int) -> None:
    receiver = Receiver()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(receiver), "127.0.0.1", port, backlog=1024)
    sys.stdout.write(json.dumps({"listening": server.sockets[0].getsockname()[1], "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    port = int(args[args.index("--port") + 1]) if "--port" in args else 0
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(port))


if __name__ == "__main__":
    main()
