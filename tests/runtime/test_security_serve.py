"""`sluice serve` as a child process: webhook URLs never in its log, the operator role, a client
that half-closes its side after sending, and the SSRF rule through the real wiring."""

from __future__ import annotations

import re
import socket

import anyio
import httpx
import msgspec
import pytest

from gateway.testing import http_receiver
from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import ENV, KEYS, client, wait_final, write_config

pytestmark = pytest.mark.anyio

CANARY_PATH = "canary-path-7f3a91"
CANARY_QUERY = "canary-query-52c0e8"


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_no_log_line_carries_a_webhook_urls_path_or_query(tmp_path, backend) -> None:
    """A receiver that fails once then accepts: the sender logs the retry and httpx logs each
    POST at INFO. Every line of the child's log is read: the canaries are nowhere."""
    posts: list[str] = []
    delivered = anyio.Event()

    def answer(request, body):
        posts.append(request.target.decode())
        if len(posts) == 1:
            return 503, [("retry-after", "0")], b""
        delivered.set()
        return 200, [], b""

    log_path = tmp_path / "serve.log"
    async with anyio.create_task_group() as tg:
        hook_port = await tg.start(http_receiver.serve, answer)
        url = f"http://127.0.0.1:{hook_port}/hooks/{CANARY_PATH}?token={CANARY_QUERY}&x=1#frag-{CANARY_PATH}"
        async with simulator("--dlr-delay", "0.01") as sim:
            cfg = write_config(tmp_path, sim.port)
            with open(log_path, "wb") as log:
                async with gateway(cfg, env=ENV, stderr=log, backend=backend) as gw, client(gw.url) as acme:
                    job = {"from": "Shop", "category": "transactional", "template": "Hi", "callback_url": url,
                           "recipients": [{"to": "+4479111%05d" % i} for i in range(3)]}  # fmt: skip
                    r = await acme.post("/v1/jobs", json=job)
                    assert r.status_code == 202, r.text
                    await wait_final(acme, r.json()["id"], 3)
                    with anyio.fail_after(30):
                        await delivered.wait()
        tg.cancel_scope.cancel()
    assert any(CANARY_PATH in p and CANARY_QUERY in p for p in posts)  # the receiver got the whole URL
    text = log_path.read_text(errors="replace")
    assert "webhook.retry" in text and "serve.listening" in text  # the log was captured
    # http:// webhooks go through gateway/runtime/hook_http.py, which logs no line per request;
    # httpx (https://) logs one, cut to scheme and host: tests/runtime/test_webhooks.py::
    # test_httpxs_request_lines_carry_no_path_or_query.
    assert CANARY_PATH not in text and CANARY_QUERY not in text


async def test_operator_key_reads_metrics_and_carriers_tenant_keys_do_not(tmp_path) -> None:
    async with simulator("--dlr-delay", "0.01") as sim:
        async with gateway(write_config(tmp_path, sim.port), env=ENV) as gw, client(gw.url) as acme, \
                client(gw.url, "ops") as ops, httpx.AsyncClient(base_url=gw.url) as anon:  # fmt: skip
            assert (await anon.get("/metrics")).status_code == 401
            r = await acme.get("/metrics")
            assert r.status_code == 403 and "operator" in r.json()["error"]
            assert "sluice_queue_depth" in (await ops.get("/metrics")).text
            view = (await acme.get("/v1/carriers")).json()
            assert view == {"alpha": {"health": "up"}}  # whether it is up: no queues, no links
            full = (await ops.get("/v1/carriers")).json()
            assert {"ready", "bucket", "link"} <= set(full["alpha"])
            assert (await anon.get("/healthz")).status_code == 200


async def test_a_callback_url_to_the_gateway_itself_is_refused(tmp_path) -> None:
    async with simulator("--dlr-delay", "0.01") as sim:
        async with gateway(write_config(tmp_path, sim.port), env=ENV) as gw, client(gw.url) as acme:
            for url in (f"http://127.0.0.1:{gw.port}/v1/messages", f"http://localhost:{gw.port}/",
                        f"http://127.0.0.1:{sim.port}/", "http://169.254.169.254/latest/meta-data/"):  # fmt: skip
                r = await acme.post("/v1/messages", json={"to": "+447911100001", "from": "S", "body": "x",
                                                          "callback_url": url})  # fmt: skip
                assert r.status_code == 422 and r.json()["field"] == "callback_url", (url, r.text)


def _half_closed_post(port: int, body: bytes) -> bytes:
    """A POST, then shutdown(SHUT_WR): the client has said all it will say. Its answer?"""
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['acme']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_a_client_that_half_closes_after_sending_gets_its_answer(tmp_path, backend) -> None:
    async with simulator("--dlr-delay", "0.01") as sim:
        async with gateway(write_config(tmp_path, sim.port), env=ENV, backend=backend) as gw:
            body = msgspec.json.encode({"to": "+447911100002", "from": "S", "body": "half-closed"})
            answer = await anyio.to_thread.run_sync(_half_closed_post, gw.port, body)
            assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
            mid = re.search(rb'"id":"([0-9a-z]+)"', answer).group(1).decode()  # Hypercorn: chunked
            async with client(gw.url) as acme:
                assert (await acme.get(f"/v1/messages/{mid}")).status_code == 200
