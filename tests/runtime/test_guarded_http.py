"""The SSRF rule at connect time (gateway/runtime/guarded_http.py), through the webhook sender.

Private and link-local targets are given only to a fake resolver and a recording network
backend (nothing is sent anywhere); live probes use loopback spellings only, against a receiver
on 127.0.0.1 that counts what reaches it."""

from __future__ import annotations

import anyio
import httpcore
import httpx
import pytest

from gateway.config import WebhookSettings
from gateway.core.model import Job, Recipient
from gateway.core.targets import TargetPolicy
from gateway.runtime.guarded_http import GuardedBackend, TargetRefused, guarded_transport
from gateway.runtime.webhooks import WebhookSender
from gateway.store.base import Change
from gateway.store.memory import MemoryStore
from gateway.testing import http_receiver
from gateway.testing.clock import FakeClock

pytestmark = pytest.mark.anyio

SETTINGS = WebhookSettings(timeout=5.0, max_attempts=5)
JOB = Job(id="job_1", tenant="acme", sender="ACME", template="Hi", category="transactional")


class Recording(httpcore.AsyncNetworkBackend):
    """A network that is not one: records where it was asked to connect, answers 200."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append((host, port))
        return httpcore.AsyncMockStream([b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"])

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def fake_resolver(answers: dict[str, list[list[str]]]):
    """Each call for a name pops its next answer (the last one repeats): DNS that changes."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


async def post(backend: GuardedBackend, url: str) -> int:
    """One POST on a fresh pool (a new connection, hence a new check)."""
    pool = httpcore.AsyncConnectionPool(network_backend=backend)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        client._transport._pool = pool  # type: ignore[attr-defined]  # as guarded_transport does
        return (await client.post(url, content=b"{}")).status_code


@pytest.mark.parametrize("private", ["127.0.0.1", "169.254.169.254", "10.0.0.5", "100.64.0.1", "::1",
                                     "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "fd00::1"])  # fmt: skip
async def test_a_name_that_resolves_to_a_private_address_is_refused_before_connecting(private) -> None:
    net = Recording()
    backend = GuardedBackend(TargetPolicy(), resolver=fake_resolver({"hooks.example.com": [[private]]}), inner=net)
    with pytest.raises(TargetRefused):
        await post(backend, "https://hooks.example.com/x")
    assert net.connects == []


async def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    net = Recording()
    resolver = fake_resolver({"hooks.example.com": [["93.184.216.34", "2606:4700::1", "169.254.169.254"]]})
    with pytest.raises(TargetRefused):
        await post(GuardedBackend(TargetPolicy(), resolver=resolver, inner=net), "http://hooks.example.com/")
    assert net.connects == []


async def test_dns_rebinding_is_checked_on_every_connection_and_the_checked_address_is_used() -> None:
    net = Recording()
    resolver = fake_resolver({"rebind.example.com": [["93.184.216.34"], ["127.0.0.1"]]})
    backend = GuardedBackend(TargetPolicy(), resolver=resolver, inner=net)
    assert await post(backend, "http://rebind.example.com:8080/hook") == 200
    assert net.connects == [("93.184.216.34", 8080)]  # the address checked, never the name
    with pytest.raises(TargetRefused):  # the next connection resolves again: now loopback
        await post(backend, "http://rebind.example.com:8080/hook")
    assert net.connects == [("93.184.216.34", 8080)]
    assert resolver.calls == ["rebind.example.com", "rebind.example.com"]  # once per connection


async def test_ip_literals_are_checked_without_resolving() -> None:
    net = Recording()
    resolver = fake_resolver({})
    backend = GuardedBackend(TargetPolicy(), resolver=resolver, inner=net)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:a9fe:a9fe]/", "http://10.1.2.3/"):
        with pytest.raises(TargetRefused):
            await post(backend, url)
    assert net.connects == [] and resolver.calls == []
    assert await post(backend, "http://93.184.216.34/") == 200
    assert net.connects == [("93.184.216.34", 80)]


async def test_own_endpoints_are_refused_even_on_an_allowed_network() -> None:
    net = Recording()
    policy = TargetPolicy(["10.0.0.0/8"], own=[("smsc.internal.example", 2775), ("0.0.0.0", 8080)])
    resolver = fake_resolver({"smsc.internal.example": [["10.0.0.9"]], "hooks.internal.example": [["10.0.0.9"]]})
    backend = GuardedBackend(policy, resolver=resolver, inner=net)
    for url in ("http://smsc.internal.example:2775/", "http://10.0.0.9:8080/"):
        with pytest.raises(TargetRefused):
            await post(backend, url)
    assert await post(backend, "http://hooks.internal.example:8000/") == 200  # the allow-list's purpose
    assert net.connects == [("10.0.0.9", 8000)]


LOOPBACK_SPELLINGS = ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "localhost", "localhost.",
                      "[::ffff:127.0.0.1]", "127.0.0.1."]  # fmt: skip


def rows(store, urls: list[str]) -> None:
    for k, url in enumerate(urls):
        base = (1 << 40) + 1000 * k
        store.add_job(Job(id=f"job_{k}", tenant="acme", sender="A", template="Hi", category="transactional"),
                      base, [(0, Recipient(to="+12125550100"))], 0.0, callback_url=url)  # fmt: skip
        store.record([Change(message_id=base, state="delivered", at=0.0, reason="DELIVRD", carrier="alpha")])


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_live_loopback_spellings_never_reach_a_loopback_receiver(caplog) -> None:
    """The sender as serve builds it (no test transport): every loopback spelling is refused at
    connect time (the submission check is not involved here), and marked dead, not retried."""
    hits: list[str] = []

    def answer(request, body):
        hits.append(request.target.decode())
        return 200, [], b""

    store, clock = MemoryStore(), FakeClock()
    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        rows(store, [f"http://{h}:{port}/hook" for h in LOOPBACK_SPELLINGS])
        async with WebhookSender(store, SETTINGS, {}, clock=clock, targets=TargetPolicy()) as s:
            with anyio.fail_after(20):
                assert await s.run_once() == len(LOOPBACK_SPELLINGS)
            stats = s.statistics()
        tg.cancel_scope.cancel()
    assert hits == []
    assert stats.dead == len(LOOPBACK_SPELLINGS) and stats.delivered == 0 and stats.retried == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_allow_list_lets_a_loopback_receiver_be_called() -> None:
    hits: list[str] = []

    def answer(request, body):
        hits.append(dict(request.headers)[b"host"].decode())
        return 204, [], b""

    store, clock = MemoryStore(), FakeClock()
    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        rows(store, [f"http://localhost:{port}/a", f"http://127.1:{port}/b"])
        policy = TargetPolicy(["127.0.0.0/8", "::1/128"])
        async with WebhookSender(store, SETTINGS, {}, clock=clock, targets=policy) as s:
            with anyio.fail_after(20):
                await s.run_once()
            stats = s.statistics()
        tg.cancel_scope.cancel()
    assert stats.delivered >= 1 and f"localhost:{port}" in hits  # Host stays the name as given


async def test_the_guarded_transport_checks_what_a_plain_one_would_not() -> None:
    transport = guarded_transport(TargetPolicy(), httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(TargetRefused):
            await client.get("http://127.0.0.1:9/")
