"""The webhook client (gateway/runtime/hook_http.py): its response parser against h11 as an
oracle, and the client over real loopback sockets against receivers that misbehave in every
way a user's server can: slow, half an answer, closed mid-answer, 1xx/3xx/4xx/5xx, huge bodies,
chunked and close-delimited bodies, keep-alive dropped while idle, ``Connection: close``.

Nothing sleeps to wait for something: the one time-out case waits for a 50 ms bound.
"""

from __future__ import annotations

import anyio
import anyio.abc
import h11
import msgspec
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gateway.core.targets import TargetPolicy
from gateway.runtime.guarded_http import TargetRefused
from gateway.runtime.hook_http import HookClient, ResponseError, ResponseParser, UnusableURL
from gateway.runtime.webhooks import WebhookSender
from gateway.store.memory import MemoryStore
from gateway.testing import http_receiver
from gateway.testing.clock import FakeClock
from gateway.webhook_settings import WebhookSettings

pytestmark = pytest.mark.anyio

LOOPBACK = TargetPolicy(["127.0.0.0/8"])


# -- the parser, h11 as the oracle ------------------------------------------------------------


def _h11_reading(data: bytes, closes: bool) -> tuple[int | None, bool, bool]:
    """(status, complete, reusable) as h11 reads ``data`` (then EOF if ``closes``)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if closes:
        conn.receive_data(b"")
    status, complete = None, False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return status, False, False
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            break
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            complete = True
            break
    return status, complete, complete and conn.our_state is h11.DONE and conn.their_state is h11.DONE


def _ours(data: bytes, cuts: list[int], closes: bool) -> tuple[int | None, bool, bool]:
    p = ResponseParser(max_body=1 << 30)
    last = 0
    try:
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            p.feed(data[last:cut])
            last = cut
        if closes:
            p.end()
    except ResponseError:
        return p.status, False, False
    return p.status, p.done, p.done and p.keep_alive


@st.composite
def responses(draw) -> tuple[bytes, bool]:
    """A valid response (sometimes after 1xx interim ones), and whether the server then closes."""
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        out += b"HTTP/1.1 %d Continue\r\n\r\n" % draw(st.sampled_from([100, 102, 103]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    status = draw(st.sampled_from([200, 201, 202, 204, 301, 304, 400, 404, 408, 429, 500, 503]))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status in (204, 304):
        framing, body = "none", b""
    headers = [b"Server: test"]
    if draw(st.booleans()):
        headers.append(b"Retry-After: %d" % draw(st.integers(0, 999)))
    if draw(st.booleans()):
        headers.append(b"Connection: close")
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 50), max_size=8))
        payload, rest = b"", body
        for n in sizes:
            piece, rest = rest[:n], rest[n:]
            if piece:
                ext = b";name=value" if draw(st.booleans()) else b""
                payload += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        if rest:
            payload += b"%x\r\n%s\r\n" % (len(rest), rest)
        payload += b"0\r\n" + (b"X-Trailer: 1\r\n" if draw(st.booleans()) else b"") + b"\r\n"
    else:
        payload = body
    closes = framing == "close" or draw(st.booleans())
    return out + b"HTTP/%s %d Reason\r\n" % (version, status) + b"\r\n".join(headers) + b"\r\n\r\n" + payload, closes


@hsettings(max_examples=80, deadline=None)
@given(responses(), st.lists(st.integers(0, 2000), max_size=6))
def test_property_the_parser_reads_valid_answers_as_h11_does_however_they_are_cut(response, cuts) -> None:
    data, closes = response
    status, complete, reusable = _ours(data, cuts, closes)
    want_status, want_complete, want_reusable = _h11_reading(data, closes)
    assert (status, complete) == (want_status, want_complete)
    # h11 keeps an HTTP/1.0 connection or a closed one no more than we do; we never reuse one
    # h11 would not.
    assert reusable <= want_reusable or not closes and reusable == want_reusable


@hsettings(max_examples=80, deadline=None)
@given(responses(), st.integers(0, 10_000))
def test_property_an_answer_cut_short_is_never_complete(response, at) -> None:
    data, _ = response
    cut = at % len(data)
    status, complete, _ = _ours(data[:cut], [], closes=True)
    if complete:  # only a close-delimited body may end at the server's close
        assert _h11_reading(data[:cut], True)[1]


@pytest.mark.parametrize("data", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"SMTP ready\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nName : v\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
])  # fmt: skip
def test_malformed_answers_are_protocol_errors(data: bytes) -> None:
    p = ResponseParser()
    with pytest.raises(ResponseError):
        p.feed(data)
        p.end()


@pytest.mark.parametrize("data", [
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
])  # fmt: skip
def test_an_answer_the_server_closed_early_is_an_error(data: bytes) -> None:
    p = ResponseParser()
    p.feed(data)
    with pytest.raises(ResponseError):
        p.end()


def test_a_huge_body_is_not_waited_for_and_the_connection_not_kept() -> None:
    p = ResponseParser(max_body=1000)
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1001)
    assert p.done and p.overflow and p.status == 200 and not p.keep_alive


def test_the_head_is_bounded() -> None:
    p = ResponseParser()
    with pytest.raises(ResponseError):
        p.feed(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000)


# -- the client over loopback -------------------------------------------------------------


class Scripted:
    """A raw TCP server: reads each request (head + Content-Length body), answers from
    ``script(n, request)`` (n counts requests over all connections): bytes to write, then
    ``"close"`` to close the connection, ``"hang"`` to never answer, or ``"keep"``."""

    def __init__(self, script) -> None:
        self.script, self.requests, self.connections = script, [], 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(self._connection)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        buf = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        buf += await stream.receive()
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))  # fmt: skip
                    while len(buf) < length:
                        buf += await stream.receive()
                    body, buf = buf[:length], buf[length:]
                    self.requests.append((head, body))
                    data, then = self.script(len(self.requests) - 1, head)
                    if data:
                        await stream.send(data)
                    if then == "close":
                        return
                    if then == "hang":
                        await anyio.sleep_forever()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _with(script, fn) -> Scripted:
    server = Scripted(script)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        async with HookClient(LOOPBACK, keep=4) as client:
            await fn(client, f"http://127.0.0.1:{port}/hooks?token=t")
        tg.cancel_scope.cancel()
    return server


async def test_keep_alive_one_connection_for_many_posts_and_the_request_is_as_written() -> None:
    async def go(client: HookClient, url: str) -> None:
        for _ in range(5):
            reply = await client.post(url, b'{"events":[]}', [("Sluice-Signature", "t=1,v1=ab")])
            assert reply.status == 200 and reply.retry_after is None

    server = await _with(lambda n, head: (OK, "keep"), go)
    assert server.connections == 1 and len(server.requests) == 5
    head, body = server.requests[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hooks?token=t HTTP/1.1" and body == b'{"events":[]}'
    assert {b"host: 127.0.0.1:%s" % lines[1].split(b":")[-1].strip(), b"content-length: 13",
            b"sluice-signature: t=1,v1=ab"} <= {line.lower() for line in lines}  # fmt: skip


async def test_a_real_h11_receiver_keeps_the_connection() -> None:
    seen = []

    def answer(request, body):
        seen.append(body)
        return 204, [], b""

    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        async with HookClient(LOOPBACK) as client:
            for i in range(3):
                assert (await client.post(f"http://127.0.0.1:{port}/", b"%d" % i)).status == 204
        tg.cancel_scope.cancel()
    assert seen == [b"0", b"1", b"2"]


@pytest.mark.parametrize(("answer", "reused"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", True),
])  # fmt: skip
async def test_framings_and_when_a_connection_is_reused(answer: bytes, reused: bool) -> None:
    async def go(client: HookClient, url: str) -> None:
        for _ in range(3):
            assert 200 <= (await client.post(url, b"{}")).status < 300

    server = await _with(lambda n, head: (answer, "keep"), go)
    assert server.connections == (1 if reused else 3)


async def test_a_close_delimited_answer_is_read_to_the_close() -> None:
    async def go(client: HookClient, url: str) -> None:
        for _ in range(2):
            assert (await client.post(url, b"{}")).status == 200

    server = await _with(lambda n, head: (b"HTTP/1.0 200 OK\r\n\r\nwhatever", "close"), go)
    assert server.connections == 2


async def test_statuses_and_retry_after_come_back_as_they_are() -> None:
    answers = [b"HTTP/1.1 503 Busy\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"]  # fmt: skip

    async def go(client: HookClient, url: str) -> None:
        got = [await client.post(url, b"{}") for _ in answers]
        assert [(r.status, r.retry_after) for r in got] == [(503, "120"), (302, None), (404, None)]

    server = await _with(lambda n, head: (answers[n], "keep"), go)
    assert server.connections == 1 and len(server.requests) == 3  # never followed the redirect


async def test_a_huge_answer_body_is_not_read_and_its_connection_is_dropped() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 200_000

    async def go(client: HookClient, url: str) -> None:
        assert (await client.post(url, b"{}")).status == 200
        assert (await client.post(url, b"{}")).status == 200

    server = await _with(lambda n, head: (big, "hang"), go)
    assert server.connections == 2


@pytest.mark.parametrize("answer", [
    b"", b"HTTP/1.1 200 OK\r\nContent-Len", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", b"garbage\r\n\r\n",
])  # fmt: skip
async def test_half_answers_and_connections_closed_mid_answer_are_errors(answer: bytes) -> None:
    async def go(client: HookClient, url: str) -> None:
        with pytest.raises(ResponseError):
            await client.post(url, b"{}")

    await _with(lambda n, head: (answer, "close"), go)


async def test_a_kept_alive_connection_the_server_dropped_while_idle_is_replaced() -> None:
    """The server answers and closes without saying so (a keep-alive time-out): the next POST
    finds the connection closed before any byte of an answer and goes again on a new one."""

    async def go(client: HookClient, url: str) -> None:
        for _ in range(3):
            assert (await client.post(url, b"{}")).status == 200

    server = await _with(lambda n, head: (OK, "close"), go)
    assert server.connections == 3 and len(server.requests) == 3


async def test_a_receiver_that_never_answers_is_bounded_by_the_callers_time_out() -> None:
    async def go(client: HookClient, url: str) -> None:
        with anyio.move_on_after(0.05) as scope:
            await client.post(url, b"{}")
        assert scope.cancelled_caught
        # its connection was not kept: the next POST opens another
        with anyio.move_on_after(0.05):
            await client.post(url, b"{}")

    server = await _with(lambda n, head: (b"", "hang"), go)
    assert server.connections == 2


async def test_unusable_urls_and_refused_targets() -> None:
    async with HookClient(TargetPolicy([])) as client:  # loopback not allowed
        with pytest.raises(TargetRefused):
            await client.post("http://127.0.0.1:9/hooks", b"{}")
        for url in ("http://user:pw@example.com/", "https://example.com/", "http:///nohost", "http://exa mple.com/",
                    "http://example.com/\u00e9", "http://example.com:99999/"):
            with pytest.raises(UnusableURL):
                await client.post(url, b"{}")


# -- through the sender: what each answer comes to ---------------------------------------


async def test_the_sender_over_the_lean_client_retries_5xx_and_dead_letters_4xx_and_3xx() -> None:
    from gateway.core.model import Job, Recipient
    from gateway.store.base import Change

    answers = {"/ok": OK, "/busy": b"HTTP/1.1 503 Busy\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n",
               "/gone": b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n",
               "/moved": b"HTTP/1.1 301 Moved\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n"}  # fmt: skip
    server = Scripted(lambda n, head: (answers[head.split(b" ")[1].decode()], "keep"))
    store, clock = MemoryStore(), FakeClock()
    settings = WebhookSettings(allow_private=["127.0.0.0/8"], timeout=5.0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        for k, path in enumerate(answers):
            job = Job(id=f"job_{k}", tenant="acme", sender="S", template="x")
            base = (k + 1) << 40
            store.add_job(job, base, [(0, Recipient(to="+12125550100", index=0))], clock(),
                          callback_url=f"http://127.0.0.1:{port}{path}")  # fmt: skip
            store.record([Change(message_id=base, state="delivered", at=clock(), reason="DELIVRD", carrier="a")])
        async with WebhookSender(store, settings, {"acme": "s"}, clock=clock) as sender:
            assert await sender.run_once() == 4
            stats = sender.statistics()
        tg.cancel_scope.cancel()
    assert (stats.delivered, stats.retried, stats.dead) == (1, 1, 2)
    assert store.outbox_statistics().dead == 2 and store.outbox_statistics().pending == 1  # /busy waits
    assert store.hook_next_at() == clock() + 30
    first = msgspec.json.decode(server.requests[0][1])
    assert set(first) == {"events"} and first["events"][0]["state"] == "delivered"
