"""Webhooks: deliver each subscriber's change sequence to its ``callback_url``, batched, signed, retried.

Theory of operation. ``Store.record`` appends, in the very statement that applies a batch of
state changes, one sequence row per message of a job with a ``callback_url`` (that batch's
changes of the message): nothing committed is ever without its webhook, and no event is written
twice. Each subscriber (tenant, url) has a durable cursor. ``WebhookSender`` delivers in rounds:

1. ``hook_due(now)``: the subscribers with events after their cursor, not backing off;
2. ``hook_events``: their events in sequence order (whom each is about joined in the same
   query; ``callback_states`` applied on read), and ``plan``: batches of at most ``batch_size``
   events, every event of one message in the same batch (so a message's events arrive in order
   even though batches are POSTed side by side), at most ``concurrency`` batches per round;
3. POST each batch (``concurrency`` at a time, each bounded by ``timeout`` as a whole),
   signed with the tenant's secret (``gateway/webhook_signature.py``);
4. ``settle`` each batch: 2xx -> done; 408/425/429/5xx/network error -> retried after a capped
   exponential backoff with jitter, or after ``Retry-After``; any other answer, or an event older
   than ``max_age`` or past ``max_attempts`` -> dead (kept as a dead letter, counted, logged,
   never sent again). ``advance`` then moves the subscriber's cursor over the longest run of
   its events, in sequence order, that are settled: only after the receiver's 2xx (or a dead
   letter). Events after an unsettled one are sent again later (at least once).

For SQLite the sender runs in its own process (``gateway/runtime/webhook_process.py``, started
and restarted by ``sluice serve``) on its own connection to the store file: the event loop that
drives the carriers never encodes, signs or POSTs a webhook, and WAL lets it read while
``record`` writes. The memory store's sender is a task of ``serve``.

``LeasedSender`` is the same machinery over a leased queue (``InboundSender``: MOs to a
tenant's ``inbound_url``). Decisions (``plan``, ``settle``, ``advance``) are pure functions of
their inputs and ``now``; the clock is injected, so tests drive rounds with ``run_once`` on
virtual time.
"""

from __future__ import annotations

import email.utils
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import httpx
import msgspec

from gateway.webhook_settings import WebhookSettings
from gateway.core.ids import format_id
from gateway.core.targets import TargetPolicy
from gateway.runtime.guarded_http import Resolver, TargetRefused, guarded_transport, quiet_http_logs, redact_url, resolve
from gateway.store.base import HookEvent, Store, Subscriber
from gateway.webhook_signature import HEADER, sign

__all__ = ["Answer", "LeasedSender", "Settlement", "WebhookEvent", "WebhookSender", "WebhookStats", "advance", "plan",
           "plan_by_message", "settle"]

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


def plan(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """Batches of at most ``batch_size`` items, each for one (tenant, url), in take order."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for item in items:
        groups.setdefault((item.tenant, item.url), []).append(item)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def plan_by_message(events: Sequence[HookEvent], batch_size: int, most: int) -> list[list[HookEvent]]:
    """At most ``most`` batches of one subscriber's ``events`` (in sequence order): every event
    of one message in the same batch, in order, so batches POSTed side by side never reorder a
    message's events; a batch holds at most ``batch_size`` events unless one message has more."""
    by_message: dict[int, list[HookEvent]] = {}
    for e in events:
        by_message.setdefault(e.message_id, []).append(e)
    batches: list[list[HookEvent]] = []
    current: list[HookEvent] = []
    for mine in by_message.values():
        if current and len(current) + len(mine) > batch_size:
            batches.append(current)
            if len(batches) == most:
                return batches
            current = []
        current.extend(mine)
    if current:
        batches.append(current)
    return batches[:most]


def advance(events: Sequence[HookEvent], settled: set[int]) -> int | None:
    """The seq to move the cursor to: the last of the longest run of ``events`` (a read, in
    sequence order) whose ids are all ``settled`` (delivered or dead), None if the first is not.
    A sequence row's events share its seq and its fate (they are one message's, one batch)."""
    upto = None
    for e in events:
        if e.id not in settled:
            return upto if upto is None or upto < e.seq else _before(events, e.seq, upto)
        upto = e.seq
    return upto


def _before(events: Sequence[HookEvent], seq: int, upto: int) -> int | None:
    """The last seq below ``seq`` (a row partly settled: never move past any of it)."""
    below = [e.seq for e in events if e.seq < seq]
    return max(below) if below else None


def settle(batch: Sequence[Any], answer: Answer, now: float, s: WebhookSettings, jitter: float) -> Settlement:
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


class _Sender:
    """What both senders share: the HTTP client (SSRF-guarded), signing, POSTing, counting.
    ``async with Sender(...) as sender: await sender.run()``."""

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

    async def __aenter__(self):
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    def poke(self) -> None:
        """New events may be there: look now rather than at the next poll."""
        self._wake.set()

    def statistics(self) -> WebhookStats:
        return WebhookStats(requests=self._requests, delivered=self._delivered, retried=self._retried,
                            dead=self._dead)  # fmt: skip

    async def run(self, on_round: Callable[[bool], None] | None = None) -> None:
        """Rounds until canceled; ``on_round(busy)`` after each (busy: another follows at once)."""
        while True:
            busy = await self.run_once() >= self._limit  # more may be due at once
            if on_round is not None:
                on_round(busy)
            if not busy:
                await self._wait()

    async def run_once(self) -> int:
        raise NotImplementedError

    def _next_at(self) -> float | None:
        raise NotImplementedError

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

    def _count(self, tenant: str, url: str, st: Settlement) -> None:
        self._delivered += len(st.done)
        self._retried += len(st.retry)
        self._dead += len(st.dead)
        where = _where(url)
        if st.dead:
            log.warning("webhook.dead tenant=%s url=%s events=%d error=%s", tenant, where, len(st.dead), st.error)
        if st.retry:
            log.info("webhook.retry tenant=%s url=%s events=%d error=%s in=%.1fs", tenant, where,
                     len(st.retry), st.error, st.retry_at - self._clock())  # fmt: skip

    def body(self, batch: Sequence[Any]) -> bytes:
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

    async def _post(self, batch: list[Any], answers: list[tuple[list[Any], Answer]]) -> None:
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


class WebhookSender(_Sender):
    """Delivers each subscriber's change sequence (module docstring), moving its cursor."""

    async def __aenter__(self) -> WebhookSender:
        await super().__aenter__()
        return self

    async def run_once(self) -> int:
        """One round: read what is due, POST it, settle every batch, move the cursors.
        Returns how many events it POSTed."""
        work = await anyio.to_thread.run_sync(self._read, self._clock())
        if not work:
            return 0
        answers: list[tuple[list[HookEvent], Answer]] = []
        async with anyio.create_task_group() as tg:
            for _, _, batches in work:
                for batch in batches:
                    tg.start_soon(self._post, batch, answers)
        now = self._clock()
        fate = {id(batch): settle(batch, answer, now, self._s, self._jitter()) for batch, answer in answers}
        await anyio.to_thread.run_sync(self._apply, work, fate)
        return sum(len(b) for _, _, batches in work for b in batches)

    def _read(self, now: float) -> list[tuple[Subscriber, list[HookEvent], list[list[HookEvent]]]]:
        """Runs in a worker thread: each due subscriber's events and their batches, at most
        ``concurrency`` batches in all."""
        budget, work = self._s.concurrency, []
        for sub in self._store.hook_due(now):
            if budget == 0:
                break
            events = self._store.hook_events(sub.id, self._s.batch_size * budget)
            if events:
                batches = plan_by_message(events, self._s.batch_size, budget)
                budget -= len(batches)
                work.append((sub, events, batches))
        return work

    def _next_at(self) -> float | None:
        return self._store.hook_next_at()

    def _apply(self, work, fate: dict[int, Settlement]) -> None:
        """Runs in a worker thread: the store calls of one round, per subscriber."""
        acks: list[tuple[int, int]] = []
        retries: list[tuple[int, float, str]] = []  # after the acks: an ack forgets the backoff
        for sub, events, batches in work:
            settled: set[int] = set()
            dead: list[HookEvent] = []
            retry_at, error = None, ""
            for batch in batches:
                st = fate[id(batch)]
                settled.update(st.done)
                settled.update(st.dead)
                dead_ids = set(st.dead)
                dead.extend(e for e in batch if e.id in dead_ids)
                if st.retry:
                    retry_at = st.retry_at if retry_at is None else min(retry_at, st.retry_at)
                    error = st.error
                self._count(sub.tenant, sub.url, st)
            upto = advance(events, settled)
            kept = [e for e in dead if upto is not None and e.seq <= upto]  # the rest is judged again
            if kept:
                self._store.hook_dead(sub.id, kept, _error(batches, fate), upto)
            elif upto is not None:
                acks.append((sub.id, upto))
            if retry_at is not None:
                retries.append((sub.id, retry_at, error))
        self._store.hook_ack(acks)
        for sub_id, retry_at, error in retries:
            self._store.hook_retry(sub_id, retry_at, error)


def _error(batches, fate: dict[int, Settlement]) -> str:
    return next((fate[id(b)].error for b in batches if fate[id(b)].dead), "")


class LeasedSender(_Sender):
    """The same delivery over a leased queue (``InboundSender``): ``_take`` leases the rows due
    now, so that if this process dies mid-round they become due again (at least once)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lease = self._s.timeout * 2 + 30.0  # longer than any round can last

    async def __aenter__(self) -> LeasedSender:
        await super().__aenter__()
        return self

    async def run_once(self) -> int:
        """One round: take what is due, POST it, settle every batch. Returns how many items."""
        items = await anyio.to_thread.run_sync(self._take, self._clock(), self._limit, self._lease)
        if not items:
            return 0
        answers: list[tuple[list[Any], Answer]] = []
        async with anyio.create_task_group() as tg:
            for batch in plan(items, self._s.batch_size):
                tg.start_soon(self._post, batch, answers)
        now = self._clock()
        settled = [settle(batch, answer, now, self._s, self._jitter()) for batch, answer in answers]
        await anyio.to_thread.run_sync(self._apply, settled)
        for (batch, _), st in zip(answers, settled):
            self._count(batch[0].tenant, batch[0].url, st)
        return len(items)

    def _take(self, now: float, limit: int, lease: float) -> Sequence[Any]:
        raise NotImplementedError

    def _apply(self, settled: list[Settlement]) -> None:
        raise NotImplementedError
