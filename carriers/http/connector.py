"""The HTTP connector: the anyio + httpx shell around a carrier profile, for one carrier.

Theory of operation
-------------------
``submit`` puts dispatches on one queue (waiting while it holds ``concurrency * batch`` of them).
``concurrency`` worker tasks each take a batch off the queue (at most ``batch_size``, or what the
profile allows per request; only as many as the carrier's ``TokenBucket`` has tokens for, if one
is given), let the profile build the request(s), send them on the worker's own keep-alive
connection (an ``httpx.AsyncClient`` limited to one: the pool is ``concurrency`` connections, and
no pool lock is shared; a shared httpx pool cost ~3x the CPU per request at 16 concurrent
requests) and let the profile read the answer. So the profile is pure and the shell is small; a
carrier API is one profile module.

What happens to a message (``carriers.base`` lists the events):

- the carrier took it -> ``Submitted`` with its id (and the reconciler learns the id);
- it refused it (4xx, or a per-message error in a batch answer) -> ``SubmitFailed`` with the
  carrier's code and name, permanent unless the profile says the code is temporary;
- 429 -> ``Throttled`` (once per pause) and the bucket is cut; the connector pauses for
  Retry-After (or ``throttle_pause``) and gives back that request's messages and then its whole
  queue as ``Requeue(throttled)``, in send order, so the core's retry lane keeps the order and
  nothing waits here through the pause;
- 5xx, 408, 409, a time-out or a broken connection -> the *same* request (same body, same
  ``Idempotency-Key``) again after a capped exponential backoff with jitter, up to
  ``max_attempts`` tries; then ``Requeue(timeout)`` or ``Requeue(carrier_down)``. The key is
  derived from the message ids, so the core sending a message again after that is still the same
  request to a carrier that honours keys: a retry never sends twice.

Receipts and inbound messages reach us as HTTP callbacks on the gateway's endpoint, which hands
each one to ``callback(url, headers, body)``: the signature is checked, the profile parses it,
receipts go to the reconciler (-> ``ReceiptMatched``), inbound messages become ``Inbound``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from carriers.base import (
    ConnectorEvent,
    ConnectorStats,
    Inbound,
    LinkChanged,
    Requeue,
    SubmitFailed,
    Submitted,
    Throttled,
)
from carriers.errors import CarrierError
from carriers.http import profiles
from carriers.http.profiles.base import (
    Accepted,
    CallbackInbound,
    CallbackReceipt,
    Request,
    Results,
    Retry,
    Throttle,
)
from carriers.http.settings import HttpSettings
from carriers.shell import ConnectorShell
from gateway.core.bucket import TokenBucket
from gateway.core.model import Dispatch, FinalState
from gateway.core.receipts import Reconciler
from gateway.errors import ConfigError

__all__ = ["HttpConnector", "HttpSettings", "open_http_connector"]

log = logging.getLogger(__name__)



class _Waiter:
    """The receipts of one callback whose states are not written yet."""

    __slots__ = ("count", "done")

    def __init__(self) -> None:
        self.count = 0
        self.done = anyio.Event()


class HttpConnector(ConnectorShell):
    """Use ``open_http_connector(...)`` (or ``async with HttpConnector(...)``)."""

    def __init__(
        self,
        settings: HttpSettings,
        events: MemoryObjectSendStream[ConnectorEvent],
        *,
        token: str | None = None,
        callback_secret: str | None = None,
        bucket: TokenBucket | None = None,
        reconciler: Reconciler | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        deferred_acks: bool = False,
    ) -> None:
        self.settings = s = settings
        self.name = s.name
        self.deferred_acks = deferred_acks
        self._owed: dict[int, _Waiter] = {}
        self._events = events
        self._profile: Any = profiles.get(s.profile)
        self._token = token if token is not None else _secret(s.auth_env, s, "auth_env")
        secret = callback_secret if callback_secret is not None else _secret(s.callback_secret_env, s, "callback_secret_env")
        self._callback_secret = secret or (self._token if s.profile == "twilio" else "")
        self._bucket = bucket
        self._reconciler = reconciler or Reconciler(
            s.hold_unmatched_s, s.receipt_horizon_s, id_formats={s.name: s.id_format},
            on_horizon=FinalState(s.horizon_state),
        )  # fmt: skip
        self._transport = transport
        self._rng = rng or random.Random()
        self._wall = wall_clock
        self._batch = min(s.batch_size, self._profile.MAX_BATCH)
        self._capacity = s.concurrency * self._batch
        self._media = s.media and self._profile.MEDIA
        self._queue: deque[Dispatch] = deque()
        self._flying: dict[int, Dispatch] = {}  # ref -> taken by a worker, not ended yet
        self._generations: dict[int, int] = {}  # message id -> bumped after a definite refusal
        self._outbox: list[ConnectorEvent] = []
        self._paused_until = 0.0
        self._up = True
        self._closing = False
        self._counts = dict.fromkeys(
            ("submitted", "failed", "requeued", "throttles", "matched", "unmatched", "inbound", "requests", "unparsable"), 0
        )
        self._errors: dict[str, int] = {}
        # Made in __aenter__: they belong to an event loop.
        self._more: anyio.Event = None  # type: ignore[assignment]
        self._space: anyio.Event = None  # type: ignore[assignment]
        self._drained: anyio.Event = None  # type: ignore[assignment]
        self._closed: anyio.Event = None  # type: ignore[assignment]
        self._scope: anyio.CancelScope = None  # type: ignore[assignment]
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> HttpConnector:
        self._more, self._space, self._drained, self._closed = anyio.Event(), anyio.Event(), anyio.Event(), anyio.Event()
        self._scope = anyio.CancelScope()
        if not self._callback_secret:
            log.warning("http.callbacks_unsigned carrier=%s (no callback secret: signatures not checked)", self.name)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run)
        return self

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as tg:
                for _ in range(self.settings.concurrency):
                    tg.start_soon(self._worker)
                tg.start_soon(self._tick)

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop taking messages, let the requests in flight finish (up to ``timeout``, default
        the request time-out), and give back the rest as ``Requeue(closing)``."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        now = anyio.current_time()
        while self._queue:
            self._requeue(self._queue.popleft(), "closing", now, queued=True)
        self._more.set()
        self._space.set()
        await self._flush_events()
        with anyio.move_on_after(self.settings.timeout + 1 if timeout is None else timeout):
            if self._flying:
                await self._drained.wait()
        now = anyio.current_time()
        for d in list(self._flying.values()):
            self._requeue(d, "closing", now)
        await self._flush_events()
        self._scope.cancel()
        self._closed.set()

    # -- the Connector interface ---------------------------------------------------------------

    async def submit(self, batch: Sequence[Dispatch]) -> None:
        if self._closing:
            raise CarrierError(f"connector {self.name} is closed")
        while len(self._queue) >= self._capacity:
            await self._space.wait()
            self._space = anyio.Event()
            if self._closing:
                raise CarrierError(f"connector {self.name} is closed")
        if self._media:
            self._queue.extend(batch)
        else:
            self._queue.extend(self._without_media(batch))
            await self._flush_events()
        more, self._more = self._more, anyio.Event()
        more.set()

    def statistics(self) -> ConnectorStats:
        rs = self._reconciler.statistics()
        return ConnectorStats(
            carrier=self.name,
            binds=1,
            bound=1 if self._up else 0,
            window=self._capacity,
            in_flight=len(self._flying),
            queued=len(self._queue),
            submitted=self._counts["submitted"],
            failed=self._counts["failed"],
            requeued=self._counts["requeued"],
            throttles=self._counts["throttles"],
            errors=dict(self._errors),
            receipts_matched=self._counts["matched"],
            receipts_unmatched=rs.unmatched,
            receipts_pending=rs.pending,
            receipts=self._receipt_counts(rs),
            inbound=self._counts["inbound"],
        )

    async def callback(self, url: str, headers: Mapping[str, str], body: bytes) -> int:
        """A receipt or inbound post from the carrier, as the gateway's endpoint received it
        (``url`` as the carrier called it: the Twilio signature covers it). Returns the HTTP
        status to answer: 204, 401 (bad signature) or 400 (unreadable)."""
        profile = self._profile
        secret = self._callback_secret
        if secret and not profile.verify(url, headers, body, secret, self._wall(), self.settings.signature_tolerance_s):
            log.warning("callback.bad_signature carrier=%s", self.name)
            return 401
        try:
            items = profile.parse_callback(headers, body)
        except (msgspec.DecodeError, ValueError, UnicodeDecodeError) as exc:
            self._counts["unparsable"] += 1
            log.warning("callback.unreadable carrier=%s error=%s body=%.200r", self.name, exc, body)
            return 400
        now = anyio.current_time()
        waiter = _Waiter() if self.deferred_acks else None

        def owe() -> int:  # this item's answer waits for acknowledge (0: no waiting)
            if waiter is None:
                return 0
            waiter.count += 1
            return self._owe(waiter)

        for item in items:
            if type(item) is CallbackReceipt:
                if not item.carrier_id:  # names no message
                    self._counts["unparsable"] += 1
                    log.warning("receipt.unparsable carrier=%s state=%s body=%.200r", self.name, item.state, body)
                    continue
                ack = owe()
                for result in self._reconciler.receipt(self.name, item.carrier_id, item.state, item.error_code, now,
                                                       ack=ack, word=item.word):  # fmt: skip
                    self._on_result(result)
            elif type(item) is CallbackInbound:
                ack = owe()  # answered once stored (the inbound pipeline acknowledges)
                self._counts["inbound"] += 1
                self._outbox.append(Inbound(carrier=self.name, sender=item.sender, recipient=item.recipient,
                                            text=item.text, at=now, acks=(ack,) if ack else (),
                                            carrier_id=item.carrier_id))  # fmt: skip
        await self._flush_events()
        if waiter is not None and waiter.count:
            # Answer 204 only once the states these receipts made (and the inbound messages) are
            # written; if that takes too long, 503: the carrier posts them again (duplicate
            # receipts are answered at once).
            with anyio.move_on_after(self.settings.callback_ack_timeout):
                await waiter.done.wait()
            if waiter.count:
                log.warning("callback.not_written carrier=%s receipts=%d", self.name, waiter.count)
                return 503
        return 204

    def _answer(self, waiter: _Waiter) -> None:
        waiter.count -= 1
        if waiter.count == 0:
            waiter.done.set()

    # -- workers -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        build = self._profile.build
        s = self.settings
        # One keep-alive connection per worker: httpx's shared pool costs ~4x more CPU per
        # request at 16 concurrent requests than at 1 (measured), a pool of one costs nothing.
        async with httpx.AsyncClient(transport=self._transport, timeout=httpx.Timeout(s.timeout),
                                     limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as client:  # fmt: skip
            while True:
                batch = await self._take()
                if batch is None:
                    return
                by_ref = {d.ref: d for d in batch}
                for request in build(batch, s, self._token, self._generations):
                    await self._exchange(client, request, [by_ref[r] for r in request.refs])
                await self._flush_events()

    async def _take(self) -> list[Dispatch] | None:
        """The next batch to send: wait for messages, the end of a pause, and the bucket."""
        queue = self._queue
        while True:
            if self._closing:
                return None
            now = anyio.current_time()
            if now < self._paused_until:
                await anyio.sleep(self._paused_until - now)
                continue
            if not queue:
                await self._more.wait()
                continue
            bucket = self._bucket
            batch: list[Dispatch] = []
            while queue and len(batch) < self._batch:
                if bucket is not None and not bucket.try_take(queue[0].segments, now):
                    break
                batch.append(queue.popleft())
            if batch:
                flying = self._flying
                for d in batch:
                    flying[d.ref] = d
                self._space.set()
                return batch
            assert bucket is not None
            await anyio.sleep(max(0.001, bucket.wait_time(queue[0].segments, now)))

    async def _exchange(self, client: httpx.AsyncClient, request: Request, ds: list[Dispatch]) -> None:
        """Send one request until the carrier gives a definite answer, or give its messages back."""
        s = self.settings
        parse = self._profile.parse
        tries = 0
        while True:
            tries += 1
            self._counts["requests"] += 1
            timed_out = False
            try:
                resp = await client.request(request.method, request.url, headers=request.headers, content=request.body)
            except httpx.TimeoutException:
                answer: Any = Retry(status=0, reason="timeout")
                timed_out = True
            except httpx.TransportError as exc:
                answer = Retry(status=0, reason=type(exc).__name__)
            else:
                answer = parse(resp.status_code, resp.headers, resp.content, len(ds), s, self._wall())
            now = anyio.current_time()
            if type(answer) is Results:
                self._link(True, "answered", now)
                self._results(ds, answer.items, now)
                return
            if type(answer) is Throttle:
                self._link(True, "answered", now)
                self._throttled(ds, answer.retry_after, now)
                return
            self._count_error(answer.reason)
            if tries >= s.max_attempts or self._closing:
                reason = "closing" if self._closing else "timeout" if timed_out else "carrier_down"
                log.warning("http.gave_up carrier=%s tries=%d reason=%s messages=%d", self.name, tries, answer.reason, len(ds))
                if answer.status == 0 or answer.status >= 500:
                    self._link(False, answer.reason, now)
                for d in ds:
                    self._requeue(d, reason, now)
                return
            await anyio.sleep(self._backoff(tries))

    def _backoff(self, tries: int) -> float:
        s = self.settings
        cap = min(s.retry_backoff_max, s.retry_backoff * 2 ** (tries - 1))
        return cap * (0.5 + 0.5 * self._rng.random())  # "equal jitter": never 0, never all at once

    # -- what the carrier said -----------------------------------------------------------------

    def _results(self, ds: list[Dispatch], items: list, now: float) -> None:
        flying, outbox, name, generations = self._flying, self._outbox, self.name, self._generations
        reconciler = self._reconciler
        for d, item in zip(ds, items):
            if flying.pop(d.ref, None) is None:
                continue
            if type(item) is Accepted:
                self._counts["submitted"] += 1
                ids = (item.carrier_id,)
                outbox.append(Submitted(ref=d.ref, carrier=name, carrier_ids=ids, at=now))
                if generations:
                    generations.pop(d.message_id, None)
                for result in reconciler.submitted(d.message_id, name, ids, d.segments, now):
                    self._on_result(result)
                continue
            self._counts["failed"] += 1
            self._count_error(item.name)
            retry_after = None
            if item.permanent:
                generations.pop(d.message_id, None)
            else:
                if len(generations) > 100_000:
                    generations.clear()
                generations[d.message_id] = generations.get(d.message_id, 0) + 1
                s = self.settings
                retry_after = min(s.temporary_backoff_max, s.temporary_backoff * 2 ** min(d.attempt, 30))
            outbox.append(SubmitFailed(ref=d.ref, carrier=name, command_status=item.code, name=item.name,
                                       permanent=item.permanent, retry_after=retry_after, at=now))  # fmt: skip
        self._check_drained()

    def _throttled(self, ds: list[Dispatch], retry_after: float | None, now: float) -> None:
        self._count_error("HTTP 429")
        if now >= self._paused_until:
            self._counts["throttles"] += 1
            if self._bucket is not None:
                self._bucket.throttled(now)
            self._outbox.append(Throttled(carrier=self.name, command_status=429, at=now))
            log.info("http.throttled carrier=%s retry_after=%s", self.name, retry_after)
        pause = self.settings.throttle_pause if retry_after is None else retry_after
        self._paused_until = max(self._paused_until, now + pause)
        for d in ds:
            self._requeue(d, "throttled", now)
        while self._queue:  # nothing waits here through the pause: the core keeps the order
            self._requeue(self._queue.popleft(), "throttled", now, queued=True)
        self._space.set()

    def _requeue(self, d: Dispatch, reason: Any, now: float, *, queued: bool = False) -> None:
        if not queued and self._flying.pop(d.ref, None) is None:
            return
        self._counts["requeued"] += 1
        self._outbox.append(Requeue(ref=d.ref, carrier=self.name, reason=reason, at=now))
        self._check_drained()

    def _check_drained(self) -> None:
        if self._closing and not self._flying:
            self._drained.set()

    def _link(self, up: bool, reason: str, now: float) -> None:
        if up != self._up:
            self._up = up
            self._outbox.append(LinkChanged(carrier=self.name, bind=0, up=up, reason=reason, at=now))
            log.log(logging.INFO if up else logging.WARNING, "http.link_%s carrier=%s reason=%s",
                    "up" if up else "down", self.name, reason)  # fmt: skip

    def _count_error(self, name: str) -> None:
        self._errors[name] = self._errors.get(name, 0) + 1

    # -- housekeeping --------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(self.settings.tick_interval)
            for result in self._reconciler.tick(anyio.current_time()):
                self._on_result(result)
            await self._flush_events()



def _secret(env: str | None, s: HttpSettings, key: str) -> str:
    if env is None:
        return ""
    try:
        return os.environ[env]
    except KeyError:
        raise ConfigError(f"environment variable {env} is not set", key=f"carriers.http.{s.name}.{key}") from None


@asynccontextmanager
async def open_http_connector(
    settings: HttpSettings,
    events: MemoryObjectSendStream[ConnectorEvent],
    **kwargs: Any,
) -> AsyncIterator[HttpConnector]:
    """Run an ``HttpConnector`` for the duration of the block; ``aclose`` on the way out."""
    async with HttpConnector(settings, events, **kwargs) as connector:
        yield connector
