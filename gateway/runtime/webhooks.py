"""Webhooks: deliver the store's outbox to each job's ``callback_url``, batched, signed, retried.

Theory of operation. ``Store.record`` writes an outbox row for every change a job's callback
must hear about, in the same transaction as the change (so nothing committed is ever without
its webhook, and a crash loses nothing). ``WebhookSender`` drains the outbox in rounds:

1. ``outbox_take(now, limit, lease)``: the rows due now, leased so that if this process dies
   mid-round they become due again after the lease (at-least-once, never at-most-once);
2. ``plan``: group them by (tenant, url) into batches of at most ``batch_size`` events;
3. POST each batch (``concurrency`` at a time, each bounded by ``timeout`` as a whole),
   signed with the tenant's secret (``gateway/webhook_signature.py``);
4. ``settle``: 2xx -> done (deleted); 408/425/429/5xx/network error -> retried after a capped
   exponential backoff with jitter, or after ``Retry-After`` when the receiver gives one; any
   other answer, or an event older than ``max_age`` or past ``max_attempts`` -> dead (kept,
   counted, logged, never sent again).

The sender is its own task and touches the store only in worker threads, so it never blocks
dispatch. Each POST lasts at most ``timeout`` and ``concurrency`` run at once, so a slow
receiver delays a round by one ``timeout`` per wave of POSTs at most, and once it fails it backs
off and stops taking part in rounds.

Decisions (``plan``, ``settle``) are pure functions of their inputs and ``now``; the clock is
injected, so tests drive rounds with ``run_once`` on virtual time.
"""

from __future__ import annotations

import email.utils
import logging
import random
from collections.abc import Callable, Mapping, Sequence

import anyio
import httpx
import msgspec

from gateway.config import WebhookSettings
from gateway.core.ids import format_id
from gateway.core.targets import TargetPolicy
from gateway.runtime.guarded_http import Resolver, TargetRefused, guarded_transport, quiet_http_logs, redact_url, resolve
from gateway.store.base import OutboxItem, Store
from gateway.webhook_signature import HEADER, sign

__all__ = ["Answer", "Settlement", "WebhookEvent", "WebhookSender", "WebhookStats", "plan", "settle"]

log = logging.getLogger(__name__)

#: Answers worth asking again: the receiver is overloaded, down or slow, not refusing.
_RETRY_STATUS = frozenset({408, 425, 429})


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One state change as a receiver sees it. Receivers dedupe by (message_id, state)."""

    message_id: str  # as the API formats it (gateway.core.ids.format_id)
    job_id: str
    state: str
    at: float  # Unix seconds
    reason: str
    carrier: str | None
    error_code: int | None = None  # the carrier's code, where the change came from a receipt with one
    # The recipient (its number and index in the job's request) and the job's reference, so a
    # receiver can match results to what it sent; None only for messages stored before them.
    to: str | None = None
    index: int | None = None
    reference: str | None = None


class WebhookBody(msgspec.Struct, frozen=True, kw_only=True):
    events: list[WebhookEvent]


_encode = msgspec.json.Encoder().encode


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What one POST came to: an HTTP status, or ``status=None`` and why (network, time-out)."""

    status: int | None
    retry_after: float | None = None
    error: str = ""
    permanent: bool = False  # no status, and asking again cannot help (a URL httpx cannot use)


class Settlement(msgspec.Struct, frozen=True, kw_only=True):
    done: list[int]
    retry: list[int]
    retry_at: float
    dead: list[int]
    error: str


class WebhookStats(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    delivered: int  # events
    retried: int  # events
    dead: int  # events


def plan(items: Sequence[OutboxItem], batch_size: int) -> list[list[OutboxItem]]:
    """Batches of at most ``batch_size`` events, each for one (tenant, url), in take order."""
    groups: dict[tuple[str, str], list[OutboxItem]] = {}
    for item in items:
        groups.setdefault((item.tenant, item.url), []).append(item)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def settle(batch: Sequence[OutboxItem], answer: Answer, now: float, s: WebhookSettings, jitter: float) -> Settlement:
    """What to do with a batch after its POST. ``jitter`` in [0, 1) spreads retries over the
    upper half of the backoff, so receivers coming back up are not hit all at once."""
    ids = [i.id for i in batch]
    if answer.status is not None and 200 <= answer.status < 300:
        return Settlement(done=ids, retry=[], retry_at=now, dead=[], error="")
    error = answer.error or f"HTTP {answer.status}"
    refused = answer.status is not None and answer.status not in _RETRY_STATUS and answer.status < 500
    if refused or answer.permanent:
        return Settlement(done=[], retry=[], retry_at=now, dead=ids, error=error)  # refused: asking again won't help
    attempts = max(i.attempts for i in batch) + 1
    if answer.retry_after is not None:
        delay = answer.retry_after
    else:
        delay = min(s.backoff_max, s.backoff_initial * 2 ** min(attempts - 1, 60)) * (0.5 + jitter / 2)
    retry_at = now + delay
    dead, retry, oldest = [], [], now
    for i in batch:
        if i.attempts + 1 >= s.max_attempts or now - i.at >= s.max_age:
            dead.append(i.id)
        else:
            retry.append(i.id)
            oldest = min(oldest, i.at)
    # A last try at max_age rather than none at all when the backoff would jump past it.
    retry_at = min(retry_at, max(now, oldest + s.max_age))
    return Settlement(done=[], retry=retry, retry_at=retry_at, dead=dead, error=error)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date. Unparseable -> None (use the backoff)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


async def _drain(r: httpx.Response, limit: int = 64 * 1024) -> None:
    """Read a small answer to the end so its connection can be reused; never buffer a big one."""
    if r.is_stream_consumed:  # already in memory (a mock transport's answer)
        return
    seen = 0
    async for chunk in r.aiter_raw():
        seen += len(chunk)
        if seen > limit:
            return


def _where(url: str) -> str:
    """The URL as logged: scheme and host only (paths and queries may carry receivers' tokens)."""
    return redact_url(url)


class WebhookSender:
    """``async with WebhookSender(...) as sender: await sender.run()``. Owns its HTTP client."""

    def __init__(
        self,
        store: Store,
        settings: WebhookSettings,
        secrets: Mapping[str, str | bytes],
        *,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
        jitter: Callable[[], float] = random.random,
        targets: TargetPolicy | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        """``targets``: where POSTs may go (default: public addresses only, ``webhooks.allow_private``
        as configured); checked at connect time, after resolving (``guarded_http``). A test's
        ``transport`` replaces the network, and with it that check."""
        self._store, self._s, self._secrets, self._clock, self._jitter = store, settings, secrets, clock, jitter
        self._limit = settings.batch_size * settings.concurrency
        self._lease = settings.timeout * 2 + 30.0  # longer than any round can last
        limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
        if transport is None:
            policy = targets if targets is not None else TargetPolicy(settings.allow_private)
            transport = guarded_transport(policy, limits, resolver=resolver)
        quiet_http_logs()  # httpx logs each request's full URL at INFO: scheme and host only
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=settings.timeout,
            limits=limits,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: it would connect in our stead, unchecked
            headers={"user-agent": "sluice-webhooks/1", "content-type": "application/json"},
        )
        self._limiter = anyio.CapacityLimiter(settings.concurrency)
        self._wake = anyio.Event()
        self._warned: set[str] = set()
        self._requests = self._delivered = self._retried = self._dead = 0

    async def __aenter__(self) -> WebhookSender:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    def poke(self) -> None:
        """New outbox rows may be there: look now rather than at the next poll."""
        self._wake.set()

    def statistics(self) -> WebhookStats:
        return WebhookStats(requests=self._requests, delivered=self._delivered, retried=self._retried,
                            dead=self._dead)  # fmt: skip

    async def run(self) -> None:
        while True:
            if await self.run_once() >= self._limit:
                continue  # more may be due at once
            await self._wait()

    async def _wait(self) -> None:
        next_at = await anyio.to_thread.run_sync(self._next_at)
        delay = self._s.poll_interval
        if next_at is not None:
            delay = min(delay, next_at - self._clock())
        if delay > 0:
            with anyio.move_on_after(delay):
                await self._wake.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if self._wake.is_set():
            self._wake = anyio.Event()

    async def run_once(self) -> int:
        """One round: take what is due, POST it, settle every batch. Returns how many events."""
        items = await anyio.to_thread.run_sync(self._take, self._clock(), self._limit, self._lease)
        if not items:
            return 0
        answers: list[tuple[list[OutboxItem], Answer]] = []
        async with anyio.create_task_group() as tg:
            for batch in plan(items, self._s.batch_size):
                tg.start_soon(self._post, batch, answers)
        now = self._clock()
        settled = [settle(batch, answer, now, self._s, self._jitter()) for batch, answer in answers]
        await anyio.to_thread.run_sync(self._apply, settled)
        for (batch, answer), st in zip(answers, settled):
            self._account(batch[0], answer, st)
        return len(items)

    # The queue this sender drains: the store's outbox (``InboundSender`` drains inbound messages).

    def _take(self, now: float, limit: int, lease: float) -> Sequence[OutboxItem]:
        return self._store.outbox_take(now, limit, lease)

    def _next_at(self) -> float | None:
        return self._store.outbox_next_at()

    def _apply(self, settled: list[Settlement]) -> None:
        """Runs in a worker thread: the store calls of one round."""
        done = [i for st in settled for i in st.done]
        if done:
            self._store.outbox_done(done)
        for st in settled:
            if st.retry:
                self._store.outbox_retry(st.retry, st.retry_at, st.error)
            if st.dead:
                self._store.outbox_dead(st.dead, st.error)

    def _account(self, first: OutboxItem, answer: Answer, st: Settlement) -> None:
        self._delivered += len(st.done)
        self._retried += len(st.retry)
        self._dead += len(st.dead)
        where = _where(first.url)
        if st.dead:
            log.warning("webhook.dead tenant=%s url=%s events=%d error=%s", first.tenant, where, len(st.dead), st.error)
        if st.retry:
            log.info("webhook.retry tenant=%s url=%s events=%d error=%s in=%.1fs", first.tenant, where,
                     len(st.retry), st.error, st.retry_at - self._clock())  # fmt: skip

    def body(self, batch: Sequence[OutboxItem]) -> bytes:
        return _encode(WebhookBody(events=[
            WebhookEvent(message_id=format_id(i.message_id), job_id=i.job_id, state=i.state, at=i.at,
                         reason=i.reason, carrier=i.carrier, error_code=i.error_code, to=i.to, index=i.index,
                         reference=i.reference)
            for i in batch]))  # fmt: skip

    def _headers(self, tenant: str, body: bytes) -> dict[str, str]:
        secret = self._secrets.get(tenant)
        if not secret:
            if tenant not in self._warned:
                self._warned.add(tenant)
                log.warning("webhook.unsigned tenant=%s reason=no webhook_secret_env for this tenant", tenant)
            return {}
        return {HEADER: sign(secret, body, int(self._clock()))}

    async def _post(self, batch: list[OutboxItem], answers: list[tuple[list[OutboxItem], Answer]]) -> None:
        body = self.body(batch)
        headers = self._headers(batch[0].tenant, body)
        answer = Answer(status=None, error="timeout")
        async with self._limiter:
            self._requests += 1
            with anyio.move_on_after(self._s.timeout):
                try:
                    async with self._client.stream("POST", batch[0].url, content=body, headers=headers) as r:
                        answer = Answer(status=r.status_code,
                                        retry_after=retry_after_seconds(r.headers.get("retry-after"), self._clock()))  # fmt: skip
                        await _drain(r)
                except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                    answer = Answer(status=None, error=type(exc).__name__, permanent=True)
                except TargetRefused as exc:  # the SSRF rule, at connect time: never sent, never again
                    answer = Answer(status=None, error=f"target refused: {exc}", permanent=True)
                except httpx.HTTPError as exc:
                    answer = Answer(status=None, error=type(exc).__name__)
        answers.append((batch, answer))
