"""gateway/testing/http_receiver.py, the loopback receiver of the webhook tests."""

from __future__ import annotations

import anyio
import httpx
import pytest

from gateway.testing import http_receiver

pytestmark = pytest.mark.anyio

async def test_a_client_gone_mid_body_ends_its_connection_not_the_server() -> None:
    got = []
    def answer(request, body):
        got.append(body)
        return 200, [], b"ok"
    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        s = await anyio.connect_tcp("127.0.0.1", port)
        await s.send(b"POST /h HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\npartial")
        await s.aclose()  # gone mid-body, like a sender killed with -9
        async with httpx.AsyncClient() as c:
            r = await c.post(f"http://127.0.0.1:{port}/h", content=b"whole")
        assert r.status_code == 200 and got == [b"whole"]
        tg.cancel_scope.cancel()
