"""The dispatcher: the short async loop that drives the core with the clock.

One ``pump`` task per carrier asks the core what that carrier may be sent now (``take``, bounded
by the connector's free room and the carrier's bucket) and hands the batch to the connector.
One ``listen`` task turns the connectors' events back into core calls (``complete``,
``requeue``, ``throttled``) and into state changes, which a ``flush`` task writes to the store
in batches (group commit: a write starts once the previous one ended, at once if a carrier
waits for it, else within ``flush_every``; never one transaction per message).

Every core call happens on the event loop's thread; store writes in a worker thread (a store
whose writes are a few dict updates, up to ``Store.inline_record`` changes, on the loop), so the
loop keeps reading the carriers while SQLite writes and syncs.
The clock is read once per pump round and the same instant passed to every decision.

What a crash can cost is bounded here. A message handed to a connector stays *unconfirmed*
until its fate is written: ``submitted`` (with the carrier's ids) on disk, or back in the queue,
or refused. A carrier gets at most its in-flight window (``windows``; default ``window x binds``)
of unconfirmed messages, so after a crash at most that many are sent again: the ones on the wire
and the ones the carrier took whose ``submitted`` had not reached the disk. Receipts the same
way: the carrier's receipts are answered (``Connector.acknowledge``) only after the write that
holds the states they made, so a crash before it leaves them with the carrier, which sends them
again to the next process.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

import anyio
from anyio.abc import ObjectReceiveStream

from carriers.base import (
    Connector,
    ConnectorEvent,
    Inbound,
    LinkChanged,
    ReceiptMatched,
    ReceiptProgress,
    Requeue,
    SubmitFailed,
    Submitted,
    Throttled,
)
from gateway.core.model import Dispatch, Final, Outcome
from gateway.core.scheduler import Scheduler
from gateway.runtime.metrics import LatencyHistogram
from gateway.store.base import Change, Store

__all__ = ["Dispatcher", "DispatcherStats"]

log = logging.getLogger(__name__)

_DRAIN_MAX = 4096  # events handled per turn of the listener before it lets other tasks run


class DispatcherStats:
    """Counters, and where the dispatcher's time went (seconds, by the dispatcher's clock):
    ``window_wait_s`` a pump waited with its carrier's window of unconfirmed messages full (their
    ``submitted`` not on disk yet: the crash bound of the module doc), ``wire_wait_s`` with the
    connector's own windows full (responses awaited), ``write_s`` in the store's writes, of which
    ``writes`` were made, holding ``changes_written`` changes to ``rows_written`` messages (a
    message's changes in one write are one row: fewer rows than changes when its ``submitted``
    and its receipt share a write), and ``record_cpu_s`` of the event loop's CPU in the writes it
    ran itself (``inline_record``: SQLite steps on the loop's thread; a write in a worker thread
    is not counted), so that a run tells how much of the loop's CPU a message is its write. Summed over carriers; what ``sluice bench kannel`` reads to tell
    whether a run waited for the window (the write's latency) or for the loop.

    A slot of a carrier's window goes round: a message is handed to the connector, answered by
    the carrier, its ``submitted`` written, the slot freed, and the next message handed over in
    it. Summed over messages (seconds x messages): ``answer_s`` from the hand-over to the answer
    (``answered`` of them: the carrier's turn and our reading of it), ``to_write_s`` from the
    answer to the start of the write that confirms it and ``slot_write_s`` in that write
    (``confirmed``), ``refill_s`` from that write's end to the next hand-over in the freed slot
    (``refilled``; only while the pump has messages to send). When the window binds, the four
    means add up to the slot's cycle, ``binds x window`` / the rate: what to cut is the largest.
    Answers are matched to hand-overs in order (a carrier answers out of order only by
    refusing or dropping some, which moves time between messages, not in or out of the sum)."""

    __slots__ = ("dispatched", "submitted", "failed", "requeued", "receipts", "throttles", "changes_written",
                 "rows_written", "record_cpu_s", "writes", "write_s", "window_wait_s", "wire_wait_s", "answered", "answer_s", "confirmed",
                 "to_write_s", "slot_write_s", "refilled", "refill_s")  # fmt: skip

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class Dispatcher:
    def __init__(
        self,
        core: Scheduler,
        connectors: Mapping[str, Connector],
        events: ObjectReceiveStream[ConnectorEvent],
        store: Store,
        *,
        clock: Callable[[], float],
        idle: float = 0.005,
        flush_every: float = 0.01,
        on_changes: Callable[[list[Change]], None] | None = None,
        on_inbound: Callable[[Inbound], None] | None = None,
        on_outbox: Callable[[], None] | None = None,
        windows: Mapping[str, int] | None = None,
    ) -> None:
        self.core = core
        self.connectors = connectors
        self._events = events
        self._store = store
        self._clock = clock
        self._idle = idle
        self._flush_every = flush_every
        self._on_changes = on_changes
        self._on_inbound = on_inbound
        self._on_outbox = on_outbox  # a write queued webhooks: wake their sender
        self._inflight: dict[int, Dispatch] = {}  # core ref -> what was handed to a connector
        self._pending: list[Change] = []
        self._windows = dict(windows or {})  # carrier -> its in-flight window (see the module doc)
        self._unconfirmed = dict.fromkeys(connectors, 0)  # carrier -> handed out, fate not on disk
        self._confirming: dict[str, int] = {}  # carrier -> Submitted among ``_pending``
        self._acks: dict[str, list[int]] = {}  # carrier -> receipts to answer once ``_pending`` is written
        # A window slot's cycle (``DispatcherStats``), per carrier: the hand-overs not all answered
        # yet ([when, how many left]), the answer times of ``_confirming``'s messages summed, and
        # the slots freed by writes and not taken again yet ([when, how many]).
        self._out: dict[str, deque[list]] = {c: deque() for c in connectors}
        self._answered_sum: dict[str, float] = {}
        self._heard: dict[str, int] = {}  # carrier -> Submitted in this drain (see ``_settle_drain``)
        self._accepted: list[int] = []  # the refs of this drain's Submitted, for the core
        self._freed: dict[str, deque[list]] = {c: deque() for c in connectors}
        self._wake = anyio.Event()
        self._dirty = anyio.Event()  # set when a write should start now (waiting acks, windows)
        self._queued = anyio.Event()  # set when the first change of the next write comes in
        self.stats = DispatcherStats()
        self.receipt_latency = LatencyHistogram()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for name, connector in self.connectors.items():
                tg.start_soon(self._pump, name, connector)
            tg.start_soon(self._listen)
            tg.start_soon(self._flush_loop)

    def poke(self) -> None:
        """New work was admitted: wake the pumps now instead of at their next idle tick."""
        self._wake.set()

    # -- sending ------------------------------------------------------------------------

    async def _pump(self, carrier: str, connector: Connector) -> None:
        while True:
            now = self._clock()
            room = self._room(carrier, connector)
            if room <= 0:
                full = self._unconfirmed[carrier] >= self._windows[carrier]
                await self._wait(self._idle)
                waited = self._clock() - now
                if full:
                    self.stats.window_wait_s += waited
                else:
                    self.stats.wire_wait_s += waited
                continue
            batch = self.core.take(carrier, room, now)
            self._outcomes(batch.outcomes, now)
            if batch.dispatches:
                for d in batch.dispatches:
                    self._inflight[d.ref] = d
                self._handed(carrier, len(batch.dispatches))
                self._unconfirmed[carrier] += len(batch.dispatches)
                self.stats.dispatched += len(batch.dispatches)
                await connector.submit(batch.dispatches)
                continue
            self._freed[carrier].clear()  # nothing to send: the freed slots wait for no one
            await self._sleep_until_work(carrier, now)

    def _handed(self, carrier: str, n: int) -> None:
        now = self._clock()
        self._out[carrier].append([now, n])
        freed, stats = self._freed[carrier], self.stats
        while n and freed:
            slot = freed[0]
            m = min(n, slot[1])
            stats.refill_s += m * (now - slot[0])
            stats.refilled += m
            n -= m
            slot[1] -= m
            if not slot[1]:
                freed.popleft()

    def _off_wire(self, carrier: str, now: float, n: int = 1) -> None:
        """``n`` of ``carrier``'s hand-overs answered at ``now``, the oldest first."""
        out = self._out.get(carrier)
        stats = self.stats
        while n and out:
            head = out[0]
            m = min(n, head[1])
            stats.answer_s += m * (now - head[0])
            stats.answered += m
            n -= m
            head[1] -= m
            if not head[1]:
                out.popleft()

    def _room(self, carrier: str, connector: Connector) -> int:
        s = connector.statistics()
        window = self._windows.get(carrier)
        if window is None:
            window = self._windows[carrier] = s.window * max(1, s.binds)
        # Keep the connector's windows full plus one window queued, so a response frees a slot
        # that is refilled without waiting for our next round; never more unconfirmed than the
        # carrier's in-flight window.
        room = s.window * max(1, s.bound) * 2 - s.in_flight - s.queued
        return max(0, min(room, window - self._unconfirmed[carrier]))

    async def _wait(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = anyio.Event()

    async def _sleep_until_work(self, carrier: str, now: float) -> None:
        bucket = self.core.bucket(carrier)
        waits = [self._idle * 20]
        refill = bucket.wait_time(1, now)
        if refill > 0:
            waits.append(refill)
        wake = self.core.next_wakeup()
        if wake is not None:
            waits.append(max(0.0, wake - now))
        await self._wait(max(self._idle, min(waits)))

    # -- hearing back -------------------------------------------------------------------

    async def _listen(self) -> None:
        # Drain what is buffered without an await per event: anyio's ``receive`` yields to the
        # loop each time (a checkpoint), which cost more than handling the event. One clock
        # read per drain; a drain is bounded so the other tasks run in between.
        events = self._events
        receive_nowait = events.receive_nowait
        handle = self._handle
        while True:
            try:
                event = await events.receive()
            except anyio.EndOfStream:
                return
            now = self._clock()
            handle(event, now)
            for _ in range(_DRAIN_MAX):
                try:
                    event = receive_nowait()
                except anyio.WouldBlock:
                    break
                except anyio.EndOfStream:
                    self._settle_drain(now)
                    return
                handle(event, now)
            self._settle_drain(now)
            if self._acks or self._confirming:
                self._dirty.set()  # a carrier's window or its receipts wait for this write

    def _handle(self, event: ConnectorEvent, now: float) -> None:
        # The two events of every message first, by exact type (cheaper than ``match``).
        kind = type(event)
        if kind is Submitted:
            d = self._inflight.pop(event.ref, None)
            if d is None:
                return
            # Accepted: completed in the core with the drain's others (``_settle_drain``), its
            # segments counted towards the carrier's accepted rate once a carrier, not once a message.
            self._accepted.append(event.ref)
            heard = self._heard
            heard[event.carrier] = heard.get(event.carrier, 0) + 1
            if not self._pending:
                self._queued.set()
            self._pending.append(Change(message_id=d.message_id, state="submitted", at=now, carrier=event.carrier,
                                        carrier_ids=event.carrier_ids))  # fmt: skip
            return
        if kind is ReceiptMatched:
            self.stats.receipts += 1
            if event.submitted_at is not None:
                self.receipt_latency.observe(event.at - event.submitted_at)
            self._receipt_change(event, str(event.state), now)
            return
        if kind is ReceiptProgress:  # an intermediate receipt: ``accepted``, answered once written
            self._receipt_change(event, event.state, now)
            return
        if self._accepted:  # the core hears of the accepted ones before anything else happens to it
            self._complete_accepted(now)
        match event:
            case SubmitFailed(ref=ref, carrier=carrier, command_status=code, name=name, permanent=permanent,
                              retry_after=retry_after):  # fmt: skip
                d = self._inflight.get(ref)
                if d is None:
                    return
                if permanent:
                    del self._inflight[ref]
                    self._unconfirmed[d.carrier] -= 1
                    self._off_wire(d.carrier, now)
                    self.core.complete(ref)
                    self.stats.failed += 1
                    self._change(d.message_id, "rejected", now, f"{name} (0x{code:02x})", carrier)
                else:
                    self._requeue(ref, now, delay=retry_after or 1.0, why=f"retry after {name}")
            case Requeue(ref=ref, reason=reason):
                # Throttled or never answered: the carrier may not have it, so it does not count
                # against the weekly cap; a dropped bind or time-out may mean it went (bounded dups).
                self._requeue(ref, now, delay=0.0, why=reason)
            case Throttled(carrier=carrier):
                self.stats.throttles += 1
                self.core.throttled(carrier, now)
            case Inbound() as inbound:
                if self._on_inbound:
                    self._on_inbound(inbound)
            case LinkChanged(carrier=carrier, bind=bind, up=up, reason=reason):
                log.info("link.%s carrier=%s bind=%d reason=%s", "up" if up else "down", carrier, bind, reason)

    def _complete_accepted(self, now: float) -> None:
        refs, self._accepted = self._accepted, []
        self.core.complete_accepted(refs, now)

    def _settle_drain(self, now: float) -> None:
        """The bookkeeping of a drain's ``Submitted`` by carrier, not by message (one clock a
        drain, so the sums are the same): completed in the core, they count, off the wire,
        towards the next write."""
        if self._accepted:
            self._complete_accepted(now)
        if not self._heard:
            return
        heard, self._heard = self._heard, {}
        confirming, answered = self._confirming, self._answered_sum
        for carrier, n in heard.items():
            self.stats.submitted += n
            self._off_wire(carrier, now, n)
            confirming[carrier] = confirming.get(carrier, 0) + n
            answered[carrier] = answered.get(carrier, 0.0) + n * now

    def _receipt_change(self, event: ReceiptMatched | ReceiptProgress, state: str, now: float) -> None:
        if event.acks:
            acks = self._acks.get(event.carrier)
            if acks is None:
                self._acks[event.carrier] = list(event.acks)
            else:
                acks.extend(event.acks)
        if not self._pending:
            self._queued.set()
        self._pending.append(Change(message_id=event.message_id, state=state, at=now, reason=event.reason,
                                    carrier=event.carrier, error_code=event.error_code))  # fmt: skip

    def _requeue(self, ref: int, now: float, *, delay: float, why: str) -> None:
        d = self._inflight.pop(ref, None)
        if d is None:
            return
        self._unconfirmed[d.carrier] -= 1
        self._off_wire(d.carrier, now)
        self.core.requeue(ref, now, delay=delay, refund_cap=True)
        self.stats.requeued += 1
        self._change(d.message_id, "queued", now, f"retried: {why}", d.carrier)
        self._wake.set()

    def _outcomes(self, outcomes: list[Outcome], now: float) -> None:
        for o in outcomes:
            if isinstance(o, Final):
                self._change(o.message_id, str(o.state), o.at, o.reason)
            else:
                self._change(o.message_id, "deferred", now, f"{o.reason} until {o.until:.0f}")

    def _change(self, mid: int, state: str, at: float, reason: str, carrier: str | None = None,
                ids: tuple[str, ...] = ()) -> None:  # fmt: skip
        if not self._pending:
            self._queued.set()
        self._pending.append(Change(message_id=mid, state=state, at=at, reason=reason, carrier=carrier,
                                    carrier_ids=ids))  # fmt: skip

    # -- writing ------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        # Group commit: a write starts as soon as there are changes and the previous write has
        # ended (at most ``flush_every`` after the first change, if no one asks sooner); what
        # came in meanwhile goes in the next one. Under load the writes run back to back, each
        # taking what arrived during the last; idle, nothing is written and the loop sleeps
        # until the first change (not a wake-up every ``flush_every``).
        while True:
            if not self._pending:
                await self._queued.wait()
            self._queued = anyio.Event()
            with anyio.move_on_after(self._flush_every):
                await self._dirty.wait()
            self._dirty = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        changes, self._pending = self._pending, []
        confirming, self._confirming = self._confirming, {}
        acks, self._acks = self._acks, {}
        answered, self._answered_sum = self._answered_sum, {}
        began = self._clock()
        stats = self.stats
        if len(changes) <= self._store.inline_record:
            cpu = time.thread_time()
            queued = self._store.record(changes)
            stats.record_cpu_s += time.thread_time() - cpu
        else:
            queued = await anyio.to_thread.run_sync(self._store.record, changes)
        stats.changes_written += len(changes)
        stats.rows_written += len({c.message_id for c in changes})
        stats.writes += 1
        ended = self._clock()
        stats.write_s += ended - began
        # On disk now: those submits no longer count against their carrier's window, and the
        # carriers may forget the receipts.
        for carrier, n in confirming.items():
            self._unconfirmed[carrier] -= n
            stats.confirmed += n
            stats.to_write_s += n * began - answered.get(carrier, 0.0)
            stats.slot_write_s += n * (ended - began)
            if carrier in self._freed:
                self._freed[carrier].append([ended, n])
        for carrier, tokens in acks.items():
            self.connectors[carrier].acknowledge(tokens)
        if confirming:
            self._wake.set()
        if queued and self._on_outbox:
            self._on_outbox()
        if self._on_changes:
            self._on_changes(changes)

    def inflight(self) -> int:
        return len(self._inflight)

    def unconfirmed(self, carrier: str) -> int:
        """Messages handed to ``carrier`` whose fate is not on disk yet (at most its window)."""
        return self._unconfirmed[carrier]

