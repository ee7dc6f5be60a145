"""Webhooks: deliver each subscriber's change sequence to its ``callback_url``, batched, signed, retried.

Theory of operation. ``Store.record`` appends, in the very statement that applies a batch of
state changes, one sequence row per message of a job with a ``callback_url`` (that batch's
changes of the message): nothing committed is ever without its webhook, and no event is written
twice. Each subscriber (tenant, url) has a durable cursor. ``WebhookSender`` delivers in rounds:

1. ``hook_due(now)``: the subscribers with events after their cursor, not backing off;
2. ``hook_rows``: their sequence rows in order, each with its events already in the wire's
   form (whom each is about, ``callback_states`` applied on read), and ``plan_by_message``:
   batches of at most ``batch_size`` events, every event of one message in the same batch (so a
   message's events arrive in order even though batches are POSTed side by side), at most
   ``concurrency`` batches per round;
3. POST each batch (``concurrency`` at a time, each bounded by ``timeout`` as a whole; its body
   one msgspec call), signed with the tenant's secret (``gateway/webhook_signature.py``), by
   ``gateway/runtime/hook_http.py`` for ``http://`` URLs and httpx for ``https://`` (both
   through the SSRF guard);
4. ``settle`` each batch: 2xx -> done; 408/425/429/5xx/network error -> retried after a capped
   exponential backoff with jitter, or after ``Retry-After``; any other answer, or an event older
   than ``max_age`` or past ``max_attempts`` -> dead (kept as a dead letter, counted, logged,
   never sent again). A 2xx settles a batch's rows whole; only a failed batch is looked at
   event by event. ``advance`` then moves the subscriber's cursor over the longest run of its
   rows, in sequence order, that are settled: only after the receiver's 2xx (or a dead letter;
   a row with nothing to send is settled at once). Rows after an unsettled one are sent again
   later (at least once).

The cursor's writes. The sender keeps what it delivered in memory (``_after``: the next round
reads after it) and writes the cursors, all in one ``hook_ack``, at most every ``ack_every``
seconds (the first round, or a round or a wait ``ack_every`` after the last write, writes them;
so an idle sender's cursors are on disk ``ack_every`` after its last delivery), at once when a POST
failed (before its backoff is written), and when the sender stops. Each write takes
the store's write lock: on SQLite, ``serve``'s next write of state changes waits for it (SQLite's
busy wait sleeps 1, 2, 5... ms, on the loop that drives the carriers) and finds its page cache
stale. A cursor write per round was ~one per ``serve`` write under load. A kill -9 sends the
events delivered since the last write again (at least once; the receiver deduplicates).

For SQLite the sender runs in its own process (``gateway/runtime/webhook_process.py``, started
and restarted by ``sluice serve``) on its own connection to the store file: the event loop that
drives the carriers never encodes, signs or POSTs a webhook, and WAL lets it read while
``record`` writes; there it calls the store inline (``store_inline``: its loop has nothing else
to do meanwhile). The memory store's sender is a task of ``serve`` (store calls in threads).

``LeasedSender`` is the same machinery over a leased queue (``InboundSender``: MOs to a
tenant's ``inbound_url``). Decisions (``plan``, ``settle``, ``advance``) are pure functions of
their inputs and ``now``; the clock is injected, so tests drive rounds with ``run_once`` on
virtual time.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import httpcore
import httpx
import msgspec

from gateway.webhook_settings import WebhookSettings
from gateway.core.targets import TargetPolicy
from gateway.runtime.guarded_http import Resolver, TargetRefused, guarded_transport, quiet_http_logs, redact_url, resolve
from gateway.runtime.hook_http import HookClient, HookHTTPError, UnusableURL
from gateway.errors import StorageError
from gateway.store.base import HookEvent, HookRow, Store, Subscriber, WebhookEvent, hook_wire
from gateway.webhook_signature import HEADER, sign

__all__ = ["Answer", "LeasedSender", "Settlement", "WebhookEvent", "WebhookSender", "WebhookStats", "advance", "plan",
           "plan_by_message", "settle"]

log = logging.getLogger(__name__)

#: Answers worth asking again: the receiver is overloaded, down or slow, not refusing.
_RETRY_STATUS = frozenset({408, 425, 429})


class WebhookBody(msgspec.Struct, frozen=True, kw_only=True):
    """A request's body (what ``_encode`` writes from the rows' dicts, and receivers decode)."""

    events: list[WebhookEvent]


_encode = msgspec.json.Encoder().encode
_HEADERS = (("user-agent", "sluice-webhooks/1"), ("content-type", "application/json"))


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


def plan_by_message(events: Sequence[Any], batch_size: int, most: int,
                    weight: Callable[[Any], int] | None = None) -> list[list[Any]]:  # fmt: skip
    """At most ``most`` batches of one subscriber's ``events`` (in sequence order): every event
    of one message in the same batch, in order, so batches POSTed side by side never reorder a
    message's events; a batch holds at most ``batch_size`` events unless one message has more.
    ``weight``: how many events an item stands for (a ``HookRow``: its events), default 1.

    What is planned is a prefix of ``events``: when ``most`` batches cannot hold them all, nothing
    at or after the first event left out is sent (a message's later event, gathered into an early
    batch, waits for a later round). The cursor can only move up to the first event not settled
    (``advance``), so an event sent beyond it would be read and sent again by the next round even
    though its batch succeeded: a duplicate in a clean run."""
    by_message: dict[int, list[Any]] = {}
    for e in events:
        by_message.setdefault(e.message_id, []).append(e)
    batches: list[list[Any]] = []
    current: list[Any] = []
    size = 0
    for mine in by_message.values():
        n = len(mine) if weight is None else sum(weight(e) for e in mine)
        if current and size + n > batch_size:
            batches.append(current)
            if len(batches) == most:
                return _prefix(events, batches)
            current, size = [], 0
        current.extend(mine)
        size += n
    if current:
        batches.append(current)
    return _prefix(events, batches[:most])


def _prefix(events: Sequence[Any], batches: list[list[Any]]) -> list[list[Any]]:
    """``batches`` without what lies at or after the first of ``events`` they leave out."""
    planned = {id(e) for b in batches for e in b}
    cut = next((e.seq for e in events if id(e) not in planned), None)
    if cut is None:
        return batches
    kept = [[e for e in b if e.seq < cut] for b in batches]
    return [b for b in kept if b]


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
        store_inline: bool = False,
    ) -> None:
        """``targets``: where POSTs may go (default: public addresses only, ``webhooks.allow_private``
        as configured); checked at connect time, after resolving (``guarded_http``). A test's
        ``transport`` replaces the network, and with it that check. ``store_inline``: call the
        store on the event loop rather than in a worker thread (the delivery process, whose loop
        has nothing else to do while a round reads or settles: a thread hop per call cost more
        than the calls)."""
        self._inline = store_inline
        self._store, self._s, self._secrets, self._clock, self._jitter = store, settings, secrets, clock, jitter
        self._limit = settings.batch_size * settings.concurrency
        limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
        self._lean: HookClient | None = None  # http:// URLs (hook_http.py); httpx for https:// and tests' transports
        if transport is None:
            policy = targets if targets is not None else TargetPolicy(settings.allow_private)
            transport = guarded_transport(policy, limits, resolver=resolver)
            self._lean = HookClient(policy, keep=settings.concurrency, resolver=resolver, headers=_HEADERS)
        quiet_http_logs()  # httpx logs each request's full URL at INFO: scheme and host only
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=settings.timeout,
            limits=limits,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: it would connect in our stead, unchecked
            headers=dict(_HEADERS),
        )
        self._limiter = anyio.CapacityLimiter(settings.concurrency)
        self._wake = anyio.Event()
        self._warned: set[str] = set()
        self._requests = self._delivered = self._retried = self._dead = 0

    async def __aenter__(self):
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._lean is not None:
            await self._lean.aclose()
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
            began = anyio.current_time()
            busy = await self.run_once() >= self._limit  # more may be due at once
            if on_round is not None:
                on_round(busy)
            if not busy:
                await self._wait()
                await self._linger(began)

    async def _linger(self, began: float) -> None:
        """Let the next round begin ``linger`` after this one began (``WebhookSettings.linger``):
        pokes that come meanwhile are one round, not one each. Not after a round that left events
        behind (``run`` goes on at once), nor beyond ``linger`` (an event waits at most that)."""
        rest = self._s.linger - (anyio.current_time() - began)
        if rest > 0:
            await anyio.sleep(rest)

    async def run_once(self) -> int:
        raise NotImplementedError

    def _next_at(self) -> float | None:
        raise NotImplementedError

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (store calls): inline, or in a worker thread (module docstring)."""
        if self._inline:
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args)

    async def _wait(self) -> None:
        next_at = await self._call(self._next_at)
        delay = self._delay(next_at, self._clock())
        if delay > 0:
            with anyio.move_on_after(delay):
                await self._wake.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if self._wake.is_set():
            self._wake = anyio.Event()

    def _delay(self, next_at: float | None, now: float) -> float:
        """How long to wait for a poke: at most ``poll_interval``, until the next backoff ends."""
        return self._s.poll_interval if next_at is None else min(self._s.poll_interval, next_at - now)

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
        """A request's body for ``batch`` (``HookEvent``s; ``InboundSender`` has its own)."""
        return _encode({"events": [hook_wire(i) for i in batch]})

    def _headers(self, tenant: str, body: bytes) -> dict[str, str]:
        secret = self._secrets.get(tenant)
        if not secret:
            if tenant not in self._warned:
                self._warned.add(tenant)
                log.warning("webhook.unsigned tenant=%s reason=no webhook_secret_env for this tenant", tenant)
            return {}
        return {HEADER: sign(secret, body, int(self._clock()))}

    async def _post(self, batch: list[Any], answers: list[tuple[list[Any], Answer]]) -> None:
        answers.append((batch, await self._send(batch[0].tenant, batch[0].url, self.body(batch))))

    async def _send(self, tenant: str, url: str, body: bytes) -> Answer:
        """POST ``body`` signed for ``tenant``, within ``webhooks.timeout`` as a whole."""
        headers = self._headers(tenant, body)
        async with self._limiter:
            self._requests += 1
            with anyio.move_on_after(self._s.timeout):
                if self._lean is not None and url[:7].lower() == "http://":
                    return await self._send_lean(url, body, headers)
                return await self._send_httpx(url, body, headers)
        return Answer(status=None, error="timeout")

    async def _send_lean(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        assert self._lean is not None
        try:
            reply = await self._lean.post(url, body, tuple(headers.items()))
        except UnusableURL as exc:
            return Answer(status=None, error=f"UnusableURL: {exc}", permanent=True)
        except TargetRefused as exc:  # the SSRF rule, at connect time: never sent, never again
            return Answer(status=None, error=f"target refused: {exc}", permanent=True)
        except (HookHTTPError, httpcore.ConnectError) as exc:
            return Answer(status=None, error=type(exc).__name__)
        return Answer(status=reply.status, retry_after=retry_after_seconds(reply.retry_after, self._clock()))

    async def _send_httpx(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            async with self._client.stream("POST", url, content=body, headers=headers) as r:
                answer = Answer(status=r.status_code,
                                retry_after=retry_after_seconds(r.headers.get("retry-after"), self._clock()))  # fmt: skip
                await _drain(r)
                return answer
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return Answer(status=None, error=type(exc).__name__, permanent=True)
        except TargetRefused as exc:  # the SSRF rule, at connect time: never sent, never again
            return Answer(status=None, error=f"target refused: {exc}", permanent=True)
        except httpx.HTTPError as exc:
            return Answer(status=None, error=type(exc).__name__)


class WebhookSender(_Sender):
    """Delivers each subscriber's change sequence (module docstring), moving its cursor.

    It works on sequence rows (``Store.hook_rows``: one message's events of one write, each
    event already the wire's dict), not on an object per event: a batch's body is one msgspec
    call over its rows' events, and a 2xx settles its rows whole. Only a batch that failed is
    looked at event by event (``settle``: each event ages on its own), as ``HookEvent``s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._after: dict[int, int] = {}  # subscriber -> delivered (2xx or dead) up to this seq
        self._unwritten: dict[int, int] = {}  # ... of which its cursor in the store does not say so yet
        self._written_at = -math.inf  # when cursors were last written

    async def __aenter__(self) -> WebhookSender:
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._unwritten:  # a stop (not a kill): what was delivered is not sent again
                with anyio.CancelScope(shield=True), contextlib.suppress(StorageError):
                    await self._call(self._write_cursors, self._clock())
        finally:
            await super().__aexit__(*exc)

    async def run_once(self) -> int:
        """One round: read what is due, POST it, settle every batch, move the cursors.
        Returns how many events it POSTed."""
        now = self._clock()
        work = await self._call(self._read, now)
        if not work:
            if self._unwritten and now - self._written_at >= self._s.ack_every:  # idle: the cursors catch up
                await self._call(self._write_cursors, now)
            return 0
        answers: list[tuple[Subscriber, list[HookRow], Answer]] = []
        async with anyio.create_task_group() as tg:
            for sub, _, batches in work:
                for batch in batches:
                    tg.start_soon(self._post_rows, sub, batch, answers)
        await self._call(self._apply, work, answers, self._clock())
        return sum(len(r.events) for _, _, batches in work for b in batches for r in b)

    async def _post_rows(self, sub: Subscriber, batch: list[HookRow],
                         answers: list[tuple[Subscriber, list[HookRow], Answer]]) -> None:  # fmt: skip
        body = _encode({"events": [e for r in batch for e in r.events]})
        answers.append((sub, batch, await self._send(sub.tenant, sub.url, body)))

    def _read(self, now: float) -> list[tuple[Subscriber, list[HookRow], list[list[HookRow]]]]:
        """Runs in a worker thread: each due subscriber's rows and their batches, at most
        ``concurrency`` batches in all (rows without events are sent in none)."""
        budget, work = self._s.concurrency, []
        for sub in self._store.hook_due(now):
            if budget == 0:
                break
            rows = self._store.hook_rows(sub.id, self._s.batch_size * budget, self._after.get(sub.id, 0))
            if rows:
                batches = plan_by_message([r for r in rows if r.events], self._s.batch_size, budget, _weight)
                budget -= len(batches)
                work.append((sub, rows, batches))
        return work

    def _next_at(self) -> float | None:
        return self._store.hook_next_at()

    def _apply(self, work, answers: list[tuple[Subscriber, list[HookRow], Answer]], now: float) -> None:
        """Runs in a worker thread: settle each batch, then the store calls of one round, per
        subscriber: the cursor moves over the rows settled (2xx, dead, or nothing to send)."""
        settled: dict[int, set[int]] = {sub.id: {r.id for r in rows if not r.events} for sub, rows, _ in work}
        dead: dict[int, list[HookEvent]] = {}
        retry: dict[int, tuple[float, str]] = {}
        errors: dict[int, str] = {}
        for sub, batch, answer in answers:
            if answer.status is not None and 200 <= answer.status < 300:
                settled[sub.id].update(r.id for r in batch)
                self._delivered += sum(len(r.events) for r in batch)
                continue
            events = _events_of(sub, batch)
            st = settle(events, answer, now, self._s, self._jitter())
            self._count(sub.tenant, sub.url, st)
            over = set(st.done) | set(st.dead)
            owner = [r.id for r in batch for _ in r.events]
            settled[sub.id].update(r.id for r in batch)
            settled[sub.id].difference_update(owner[e.id] for e in events if e.id not in over)
            dead_ids = set(st.dead)
            dead.setdefault(sub.id, []).extend(e for e in events if e.id in dead_ids)
            if st.dead:
                errors[sub.id] = st.error
            if st.retry:
                at, _ = retry.get(sub.id, (st.retry_at, ""))
                retry[sub.id] = (min(at, st.retry_at), st.error)
        unwritten, after = self._unwritten, self._after
        failed = bool(retry) or any(dead.values())
        for sub, rows, _ in work:
            upto = advance(rows, settled[sub.id])
            if upto is None:
                continue
            after[sub.id] = max(after.get(sub.id, 0), upto)
            kept = [e for e in dead.get(sub.id, ()) if e.seq <= upto]  # the rest: judged again
            if kept:
                unwritten.pop(sub.id, None)  # the dead letters' write moves the cursor
                self._store.hook_dead(sub.id, kept, errors.get(sub.id, ""), upto)
            else:
                unwritten[sub.id] = after[sub.id]
        if failed or now - self._written_at >= self._s.ack_every:
            self._write_cursors(now)  # before a retry's write: an ack forgets the backoff
        for sub_id, (retry_at, error) in retry.items():
            self._store.hook_retry(sub_id, retry_at, error)

    def _delay(self, next_at: float | None, now: float) -> float:
        if not self._unwritten:
            return super()._delay(next_at, now)
        # The store counts what was delivered and not written yet as due (``hook_next_at`` <= now):
        # wait for a poke, a backoff that ends later, or the cursors' write, whichever comes first.
        due = self._written_at + self._s.ack_every
        return min(self._s.poll_interval, due - now, next_at - now if next_at is not None and next_at > now else due - now)

    def _write_cursors(self, now: float) -> None:
        """The cursors over what was delivered, in one write. Not every round: the write takes
        the store's write lock (module docstring, "The cursor's writes")."""
        self._store.hook_ack(sorted(self._unwritten.items()))
        self._unwritten.clear()
        self._written_at = now


def _weight(row: HookRow) -> int:
    return len(row.events)


def _events_of(sub: Subscriber, batch: Sequence[HookRow]) -> list[HookEvent]:
    """A batch's events as ``HookEvent``s (ids: their place in the batch), for ``settle`` and
    the dead letters."""
    return [HookEvent(id=k, seq=r.seq, sub=sub.id, tenant=sub.tenant, url=sub.url, message_id=r.message_id,
                      job_id=e["job_id"], state=e["state"], at=e["at"], reason=e["reason"], carrier=e["carrier"],
                      attempts=sub.attempts, error_code=e["error_code"], to=e["to"], index=e["index"],
                      reference=e["reference"])
            for k, (r, e) in enumerate((r, e) for r in batch for e in r.events)]  # fmt: skip


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
