"""The short-link listener (``campaigns/service/short_http.py``): its parser half bytes-in/heads-out
whatever the read boundaries, its bounds against hostile input, and the listener over real loopback
sockets (answers, errors, pipelining, slowloris, idle and connection limits), the process serving on."""

from __future__ import annotations

import json

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.errors import StorageError
from campaigns.service.short_http import BadRequest, RequestReader, ShortLinkServer, code_of, serve_short_links

pytestmark = pytest.mark.anyio
UA = b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"


# ---- the parser (sans-I/O) -------------------------------------------------------------------------

_CODES = st.text(alphabet="ABCDEFGHJKabcdefgh0123456789", min_size=5, max_size=16)


def _req(method: str, target: str, ua: bytes | None, close: bool = False) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: sl.ui\r\n".encode()
    if ua is not None:
        head += b"User-Agent: " + ua + b"\r\n"
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n"


@settings(max_examples=60, deadline=None)
@given(reqs=st.lists(st.tuples(st.sampled_from(["GET", "HEAD"]), _CODES, st.booleans()), min_size=1, max_size=6),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))  # fmt: skip
def test_pipelined_requests_come_out_whole_whatever_the_read_boundaries(reqs, cuts) -> None:
    data = b"".join(_req(m, f"/{c}", UA if ua else None) for m, c, ua in reqs)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    reader, out = RequestReader(), []
    for a, b in zip(points, points[1:]):
        out += reader.receive_data(data[a:b])
    assert [(h.method.decode(), code_of(h.target), h.user_agent, h.keep_alive) for h in out] == \
        [(m, c, UA if ua else None, True) for m, c, ua in reqs]  # fmt: skip
    assert not reader.in_head


def test_keep_alive_follows_the_request() -> None:
    [a] = RequestReader().receive_data(_req("GET", "/AbCdE1", UA, close=True))
    [b] = RequestReader().receive_data(b"GET /AbCdE1 HTTP/1.0\r\n\r\n")
    [c] = RequestReader().receive_data(b"GET /AbCdE1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert (a.keep_alive, b.keep_alive, c.keep_alive) == (False, False, True)


@pytest.mark.parametrize("data, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello on the plain port
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400),
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /AbCdE1 HTTP/1.1\r\nContent-Length: 999999\r\n\r\n" + b"x" * 17_000, 413),
])  # fmt: skip
def test_hostile_heads_are_refused_with_a_status(data: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as err:
        RequestReader().receive_data(data)
    assert err.value.status == status


@settings(max_examples=30, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=4096), name_heavy=st.booleans())
def test_a_head_that_never_ends_is_cut_at_the_bound(chunk: int, name_heavy: bool) -> None:
    """Headers fed forever (one endless header, or endless small ones): 431 before the reader has
    taken more than max_head plus one read, whatever the chunking."""
    reader = RequestReader(max_head=8192)
    fed = len(b"GET /AbCdE1 HTTP/1.1\r\n")
    reader.receive_data(b"GET /AbCdE1 HTTP/1.1\r\n")
    piece = b"X-A: " + b"b" * 40 + b"\r\n" if not name_heavy else b"c" * 64
    if name_heavy:
        reader.receive_data(b"X-Long: ")
    stream = piece * (chunk // len(piece) + 2)
    at = 0
    with pytest.raises(BadRequest) as err:
        while True:  # one continuous stream of headers, cut into reads of ``chunk`` bytes
            data = stream[at:at + chunk]
            at = (at + chunk) % len(piece)
            reader.receive_data(data)
            fed += len(data)
            assert fed <= 8192 + 16 * 1024 + chunk
    assert err.value.status == 431


@pytest.mark.parametrize("target, code", [("/AbCdE1", "AbCdE1"), ("/l/AbCdE1", "AbCdE1"), ("/AbCdE1?x=1", "AbCdE1"),
                                          ("/abc", None), ("/" + "a" * 17, None), ("/AbC-E1", None), ("/", None),
                                          ("/%41bCdE1", None), ("/l/", None), ("/AbCdE1/x", None),
                                          ("/\u00e9bCdE1", None)])  # fmt: skip
def test_code_of(target: str, code: str | None) -> None:
    assert code_of(target.encode()) == code


# ---- the listener over loopback ------------------------------------------------------------------


class FakeRedirector:
    def __init__(self) -> None:
        self.hits: list[tuple[str, str, str | None]] = []

    async def redirect(self, code: str, *, method: str, user_agent: str | None):  # type: ignore[no-untyped-def]
        if code == "Broken1":
            raise StorageError("database is locked")
        if code == "Evil123":
            return type("R", (), {"location": "https://x.example/\r\nset-cookie: a=b"})()
        if code.startswith("Known"):
            self.hits.append((code, method, user_agent))
            return type("R", (), {"location": f"https://shop.example/p?c={code}&utm_source=sms"})()
        return None


_LEFT: dict[int, bytes] = {}  # bytes read past a response, per stream (pipelined answers arrive together)


async def _read_response(stream) -> tuple[int, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    buf = _LEFT.pop(id(stream), b"")
    while b"\r\n\r\n" not in buf:
        buf += await stream.receive()
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(headers["content-length"])
    while len(rest) < n:
        rest += await stream.receive()
    _LEFT[id(stream)] = rest[n:]
    return int(lines[0].split()[1]), headers, rest[:n]


async def _eof_within(stream, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    """True when the server closes the connection within ``seconds`` (a bounded wait on the condition)."""
    with anyio.move_on_after(seconds):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return True
    return False


async def _serving(tg, server: ShortLinkServer) -> int:  # type: ignore[no-untyped-def]
    ready = anyio.Event()
    port: list[int] = []

    def on_ready(p: int) -> None:
        port.append(p)
        ready.set()

    tg.start_soon(lambda: serve_short_links(server, host="127.0.0.1", port=0, on_ready=on_ready, reap_interval=0.02))
    await ready.wait()
    return port[0]


async def test_answers_over_loopback() -> None:
    red = FakeRedirector()
    async with anyio.create_task_group() as tg:
        port = await _serving(tg, ShortLinkServer(red))
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(_req("GET", "/KnownAA1", UA))
            status, h, body = await _read_response(s)
            assert (status, h["location"], h["cache-control"], h["referrer-policy"], body) == \
                (302, "https://shop.example/p?c=KnownAA1&utm_source=sms", "no-store", "no-referrer", b"")  # fmt: skip
            # pipelined, on the same connection: answered in order
            await s.send(_req("HEAD", "/l/KnownAA2", None) + _req("GET", "/Nope123", UA) + _req("POST", "/KnownAA3", UA)
                         + _req("GET", "/Broken1", UA) + _req("GET", "/favicon.ico", UA))  # fmt: skip
            answers = [await _read_response(s) for _ in range(5)]
            assert [a[0] for a in answers] == [302, 404, 405, 503, 404]
            assert answers[0][2] == b"" and json.loads(answers[1][2]) == {"error": "no such link", "code": "link_not_found"}
            assert answers[2][1]["allow"] == "GET, HEAD" and answers[3][1]["retry-after"] == "1"
            assert json.loads(answers[3][2])["code"] == "storage_unavailable"
            await s.send(_req("GET", "/Evil123", UA))  # a target that would split the head: 500, closed
            assert (await _read_response(s))[0] == 500
            assert await _eof_within(s, 5)
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(_req("GET", "/KnownAA4", UA, close=True))
            status, h, _ = await _read_response(s)
            assert status == 302 and h["connection"] == "close" and await _eof_within(s, 5)
        assert red.hits == [("KnownAA1", "GET", UA.decode()), ("KnownAA2", "HEAD", None), ("KnownAA4", "GET", UA.decode())]
        tg.cancel_scope.cancel()


async def test_hostile_clients_are_cut_off_and_the_listener_serves_on() -> None:
    red = FakeRedirector()
    server = ShortLinkServer(red, head_timeout=0.3, idle_timeout=0.6, max_connections=6)
    async with anyio.create_task_group() as tg:
        port = await _serving(tg, server)
        # garbage: 400 then closed
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(b"\x00\xff garbage \r\n\r\n")
            assert (await _read_response(s))[0] == 400 and await _eof_within(s, 5)
        # huge headers: 431 then closed, the server's buffer never past the bound
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(b"GET /KnownAA1 HTTP/1.1\r\n")
            with pytest.raises((anyio.BrokenResourceError, ConnectionResetError, OSError)):
                for _ in range(200):
                    await s.send(b"X-Pad: " + b"p" * 1000 + b"\r\n")
                    await anyio.sleep(0)
            assert server.connections <= 1
        # slowloris: a byte now and then never completes a head; cut after head_timeout
        async with await anyio.connect_tcp("127.0.0.1", port) as slow:
            t0 = anyio.current_time()
            await slow.send(b"GET /KnownAA1 HTTP/1.1\r\n")
            closed = False
            with anyio.move_on_after(5):
                for _ in range(500):
                    try:
                        await slow.send(b"X")
                    except (anyio.BrokenResourceError, ConnectionResetError, OSError):
                        closed = True
                        break
                    if await _eof_within(slow, 0.05):
                        closed = True
                        break
            assert closed and anyio.current_time() - t0 < 3
        # an idle keep-alive connection is closed after idle_timeout
        async with await anyio.connect_tcp("127.0.0.1", port) as idle:
            await idle.send(_req("GET", "/KnownAA2", UA))
            assert (await _read_response(idle))[0] == 302
            assert await _eof_within(idle, 5)
        # more idle connections than allowed: the oldest are closed to make room, the newest served
        conns = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(8)]
        try:
            for c in conns[2:]:
                await c.send(_req("GET", "/KnownAA3", UA))
                assert (await _read_response(c))[0] == 302
            assert all([await _eof_within(c, 5) for c in conns[:2]]) and server.evicted >= 2
        finally:
            for c in conns:
                await c.aclose()
        # and after all of it, a normal client is served
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(_req("GET", "/KnownAA5", UA))
            assert (await _read_response(s))[0] == 302
        tg.cancel_scope.cancel()


async def test_a_failing_redirector_closes_one_connection_not_the_listener() -> None:
    class Buggy(FakeRedirector):
        async def redirect(self, code: str, *, method: str, user_agent: str | None):  # type: ignore[no-untyped-def]
            if code == "Buggy12":
                raise ZeroDivisionError("a bug")
            return await super().redirect(code, method=method, user_agent=user_agent)

    async with anyio.create_task_group() as tg:
        port = await _serving(tg, ShortLinkServer(Buggy()))
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(_req("GET", "/Buggy12", UA))
            assert await _eof_within(s, 5)
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(_req("GET", "/KnownAA1", UA))
            assert (await _read_response(s))[0] == 302
        tg.cancel_scope.cancel()
