"""The request head's size bound is exact (``api.max_head_bytes``, 64 KiB by default): a head of
exactly that many bytes (request line, headers and the CRLF CRLF that ends them) is served, one
byte more is refused with 431 and a JSON error with its code, however the bytes are split across
reads (the end of the head may span two). Over real sockets against ``sluice serve``."""

from __future__ import annotations

import anyio
import pytest

from gateway.testing.serving import open_served


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024  # the documented default of api.max_head_bytes


def head_of(size: int) -> bytes:
    """A GET /healthz whose head is exactly ``size`` bytes."""
    start, end = b"GET /healthz HTTP/1.1\r\nHost: sluice.test\r\nX-Pad: ", b"\r\nConnection: close\r\n\r\n"
    head = start + b"a" * (size - len(start) - len(end)) + end
    assert len(head) == size
    return head


async def ask(port: int, head: bytes, cuts: tuple[int, ...]) -> bytes:
    """Send ``head`` in pieces cut at ``cuts`` (each piece its own write); read the answer."""
    answer = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        last = 0
        for cut in (*cuts, len(head)):
            await stream.send(head[last:cut])
            last = cut
        with anyio.fail_after(10):
            try:
                while chunk := await stream.receive():
                    answer += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
    return answer


async def test_the_head_limit_is_exact_however_the_head_arrives(tmp_path) -> None:
    async with open_served(tmp_path, "--dlr-delay", "0.01") as (_, gw):
        port = int(gw.url.rsplit(":", 1)[1])
        for size, expected in ((LIMIT - 1, b"200"), (LIMIT, b"200"), (LIMIT + 1, b"431"), (LIMIT + 2, b"431")):
            head = head_of(size)
            # In one write; cut just before, inside and after the final CRLF CRLF; a byte at a time at the end.
            for cuts in ((), (size - 4,), (size - 3,), (size - 2,), (size - 1,), (1024, size - 1)):
                answer = await ask(port, head, cuts)
                assert answer[9:12] == expected, (size, cuts, answer[:200])
                if expected == b"431":
                    assert b'"code":"headers_too_large"' in answer
        assert gw.proc.returncode is None
