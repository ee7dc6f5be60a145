"""The dispatcher drives the core with a clock and a scripted connector, and writes every state
change to the store: on both anyio backends, waiting on the changes themselves (no sleeps)."""

from __future__ import annotations

import math
import threading
import time

import anyio
import msgspec
import pytest

from anyio import wait_all_tasks_blocked

from carriers.base import ConnectorEvent, ReceiptMatched, Submitted
from carriers.testing import MockConnector
from gateway.api import schemas
from gateway.config import default_text, loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.dispatcher import Dispatcher
from gateway.runtime.service import Gateway
from gateway.store.base import FINAL, Change
from gateway.store.memory import MemoryStore
from gateway.testing.store_conformance import JOB, PEOPLE


FAST = """
[[core.carriers]]
name = "alpha"
rate = 100000.0
burst = 5000

[[core.routes]]
prefix = ""
carriers = ["alpha"]
"""


class Finals:
    """Collects final states from the change feed; ``wait(n)`` returns once n messages ended."""

    def __init__(self) -> None:
        self.state: dict[int, str] = {}
        self.changes: list[Change] = []
        self._event = anyio.Event()
        self._want = math.inf

    def __call__(self, changes: list[Change]) -> None:
        self.changes.extend(changes)
        for c in changes:
            if c.state in FINAL:
                assert c.message_id not in self.state, f"message {c.message_id} ended twice"
                self.state[c.message_id] = c.state
        if len(self.state) >= self._want:
            self._event.set()

    async def wait(self, n: int, timeout: float = 20.0) -> dict[int, str]:
        self._want = n
        if len(self.state) >= n:
            return self.state
        with anyio.fail_after(timeout):
            await self._event.wait()
        return self.state


class ThreadedMemoryStore(MemoryStore):
    """Written from a worker thread, as a store across a network would be."""

    inline_record = 0


# Every write on the event loop's thread (MemoryStore), or every write from a worker thread.
STORES = pytest.mark.parametrize("store_class", [MemoryStore, ThreadedMemoryStore])


async def run_job(script, recipients: int = 300, body: str = "Order {n} shipped",
                  connector: type[MockConnector] = MockConnector, store_class: type[MemoryStore] = MemoryStore,
                  ) -> tuple[dict[int, str], MemoryStore, Dispatcher, MockConnector]:  # fmt: skip
    cfg = loads(default_text().split("[[core.carriers]]")[0] + FAST)
    clock = time.time
    store = store_class()
    core = Scheduler(cfg.core, clock())
    finals = Finals()
    gw = Gateway(core, store, on_changes=finals)
    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    conn = connector("alpha", send, script=script, capacity=50)
    conn.store = store  # type: ignore[attr-defined]  # for connectors that look (_Watched)
    disp = Dispatcher(core, {"alpha": conn}, receive, store, clock=clock, on_changes=finals)
    gw.on_admitted = disp.poke
    job = schemas.JobIn(sender="Shop", category="transactional", template=body,
                        recipients=[schemas.RecipientIn(to="+4479111%05d" % i, vars={"n": str(i)})
                                    for i in range(recipients)])  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(disp.run)
        raw, _ = await gw.submit_job("acme", job, clock())
        assert msgspec.json.decode(raw)["accepted"] == recipients
        state = await finals.wait(recipients)
        await disp.flush()
        tg.cancel_scope.cancel()
    return state, store, disp, conn


def number_of(store: MemoryStore, mid: int) -> str:
    m = store.message("acme", mid)
    assert m is not None
    return m.recipient.to


@pytest.mark.anyio
@STORES
async def test_every_message_reaches_the_state_its_receipt_says(store_class) -> None:
    # Odd numbers undelivered: receipts come after the core reused the refs, so a receipt
    # keyed by ref would land on the wrong message.
    state, store, disp, conn = await run_job(lambda d: "undeliver" if int(d.recipient[-1]) % 2 else "deliver",
                                             store_class=store_class)  # fmt: skip
    assert len(state) == 300
    for mid, s in state.items():
        want = "undelivered" if int(number_of(store, mid)[-1]) % 2 else "delivered"
        assert s == want, (mid, s)
        m = store.message("acme", mid)
        assert [c.state for c in m.history][-2:] == ["submitted", want]
        assert m.carrier == "alpha" and m.carrier_ids
    assert disp.stats.submitted == 300 and disp.stats.receipts == 300
    assert disp.receipt_latency.count == 300
    assert sorted(d.body for d in conn.dispatched)[0].startswith("Order ")  # rendered per recipient
    assert disp.inflight() == 0


@pytest.mark.anyio
async def test_throttled_and_timed_out_messages_go_again_and_arrive() -> None:
    first = {"throttle": 0, "timeout": 0}

    def script(d):
        if d.attempt == 0 and int(d.recipient[-2:]) % 3 == 0:
            kind = "throttle" if int(d.recipient[-2:]) % 2 else "timeout"
            first[kind] += 1
            return kind
        return "deliver"

    state, store, disp, conn = await run_job(script, recipients=200)
    assert set(state.values()) == {"delivered"}
    assert first["throttle"] > 0 and first["timeout"] > 0
    assert disp.stats.requeued == first["throttle"] + first["timeout"]
    assert disp.stats.throttles == first["throttle"]
    # Each retried message was sent twice, never more, and its history says why.
    sent: dict[str, int] = {}
    for d in conn.dispatched:
        sent[d.recipient] = sent.get(d.recipient, 0) + 1
    assert sum(n - 1 for n in sent.values()) == disp.stats.requeued
    retried = [m for m in (store.message("acme", mid) for mid in state)
               if any(c.reason.startswith("retried:") for c in m.history)]  # fmt: skip
    assert len(retried) == disp.stats.requeued
    assert {m.recipient.to for m in retried} == {n for n, k in sent.items() if k == 2}
    assert all(m.history[-1].state == "delivered" for m in retried)


@pytest.mark.anyio
async def test_permanent_refusal_ends_rejected_with_the_code() -> None:
    state, store, _, _ = await run_job(lambda d: "reject" if d.recipient.endswith("7") else "deliver", recipients=50)
    rejected = [mid for mid, s in state.items() if s == "rejected"]
    assert len(rejected) == 5
    m = store.message("acme", rejected[0])
    assert "ESME_RINVDSTADR" in m.history[-1].reason


@pytest.mark.anyio
async def test_temporary_refusal_is_retried_after_its_backoff() -> None:
    state, store, disp, conn = await run_job(
        lambda d: "retry" if d.attempt == 0 and d.recipient.endswith("3") else "deliver", recipients=40
    )
    assert set(state.values()) == {"delivered"}
    assert len(conn.dispatched) == 44  # 4 numbers end in 3: each sent twice
    again = [d for d in conn.dispatched if d.attempt == 1]
    assert len(again) == 4 and all(d.recipient.endswith("3") for d in again)


class _Watched(MockConnector):
    """Checks the two crash bounds from the connector's side: at every hand-over, the messages
    it was given whose ``submitted`` is not in the store are at most the window; at every
    ``acknowledge``, the receipt's state is already in the store."""

    store: MemoryStore

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.given: list[int] = []
        self.worst = 0
        self.token = 0
        self.owed: dict[int, int] = {}  # token -> message id
        self.early: list[int] = []

    async def submit(self, batch) -> None:
        self.given += [d.message_id for d in batch]
        unwritten = sum(self.store.message("acme", mid).state in ("queued", "deferred") for mid in self.given)
        self.worst = max(self.worst, unwritten)
        await super().submit(batch)

    def _answer(self, d, outcome, now):
        out = super()._answer(d, outcome, now)
        for i, e in enumerate(out):
            if isinstance(e, ReceiptMatched):
                self.token += 1
                self.owed[self.token] = e.message_id
                out[i] = msgspec.structs.replace(e, acks=(self.token,))
        return out

    def acknowledge(self, acks) -> None:
        super().acknowledge(acks)
        for a in acks:
            if self.store.message("acme", self.owed.pop(a)).state not in FINAL:
                self.early.append(a)


@pytest.mark.anyio
@STORES
async def test_unconfirmed_messages_stay_within_the_window_and_receipts_are_answered_once_written(store_class) -> None:
    state, store, disp, conn = await run_job(lambda d: "deliver", recipients=600, connector=_Watched,
                                             store_class=store_class)  # fmt: skip
    assert len(state) == 600 and set(state.values()) == {"delivered"}
    assert 0 < conn.worst <= 50, conn.worst  # MockConnector(capacity=50): a window of 50, one bind
    assert conn.early == [] and not conn.owed and len(conn.acknowledged) == 600
    assert disp.unconfirmed("alpha") == 0


class _WhereWritten(MemoryStore):
    inline_record = 10

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, bool]] = []  # (changes, on the event loop's thread)
        self.loop_thread = threading.get_ident()  # made on the loop's thread

    def record(self, changes) -> int:
        self.writes.append((len(changes), threading.get_ident() == self.loop_thread))
        return super().record(changes)


@pytest.mark.anyio
async def test_short_writes_run_on_the_loops_thread_long_ones_in_a_worker() -> None:
    store = _WhereWritten()
    store.add_job(JOB, 1000, PEOPLE, 10.0)
    _, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    disp = Dispatcher(Scheduler(loads(default_text()).core, 10.0), {}, receive, store, clock=lambda: 11.0)
    for n in (3, 10, 11, 40):
        disp._change(1000, "deferred", 11.0, "quiet hours")
        disp._pending *= n
        await disp.flush()
    assert store.writes == [(3, True), (10, True), (11, False), (40, False)]


class _SlowWrites(MemoryStore):
    """Each write takes ``seconds`` of the clock (a list the test reads as the dispatcher's clock)."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def record(self, changes) -> int:
        self.clock[0] += self.seconds
        return super().record(changes)


@pytest.mark.anyio
async def test_the_writes_time_is_counted_by_the_dispatchers_clock() -> None:
    # What `sluice bench kannel` reads to tell where a run waited (DispatcherStats): every write,
    # inline or in a worker thread, and the clock's seconds it took.
    clock = [11.0]
    store = _SlowWrites(clock, 0.25)
    store.add_job(JOB, 1000, PEOPLE, 10.0)
    _, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    disp = Dispatcher(Scheduler(loads(default_text()).core, 10.0), {}, receive, store, clock=lambda: clock[0])
    for n in (1, 600, 3):  # 600: beyond inline_record, in a worker thread
        disp._change(1000, "deferred", 11.0, "quiet hours")
        disp._pending *= n
        await disp.flush()
    await disp.flush()  # nothing pending: no write
    assert (disp.stats.writes, disp.stats.write_s, disp.stats.changes_written) == (3, 0.75, 604)
    assert disp.stats.window_wait_s == disp.stats.wire_wait_s == 0


@pytest.mark.anyio
async def test_a_writes_rows_and_the_loops_cpu_in_it_are_counted() -> None:
    # What `sluice bench kannel` prints as "the writes on serve's loop" (issue 16: is a late
    # receipt's cost its second write?): a message's changes in one write are one row, and the
    # loop's CPU is counted in the writes it runs itself, not in a worker thread's.
    clock = [11.0]
    store = _SlowWrites(clock, 0.25)
    store.inline_record = 512  # as SQLite's
    store.add_job(JOB, 1000, PEOPLE, 10.0)
    _, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    disp = Dispatcher(Scheduler(loads(default_text()).core, 10.0), {}, receive, store, clock=lambda: clock[0])
    disp._change(1000, "submitted", 11.0, "", "alpha", ("c1",))
    disp._change(1000, "delivered", 11.0, "receipt", "alpha")  # its submit's write: one row
    disp._change(1001, "submitted", 11.0, "", "alpha", ("c2",))
    await disp.flush()
    assert (disp.stats.changes_written, disp.stats.rows_written) == (3, 2)
    inline = disp.stats.record_cpu_s
    assert inline > 0
    disp._change(1001, "delivered", 11.0, "receipt", "alpha")  # a later write: its row again
    disp._pending *= 600  # beyond inline_record: a worker thread's write, not the loop's CPU
    await disp.flush()
    assert (disp.stats.changes_written, disp.stats.rows_written, disp.stats.writes) == (603, 3, 2)
    assert disp.stats.record_cpu_s == inline


class _Held(MockConnector):
    """Takes what it is given and answers nothing by itself: the test says what the carrier
    sends back, and when."""

    async def submit(self, batch) -> None:
        self.batches.append(list(batch))
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
async def test_a_window_slots_cycle_is_timed_in_its_parts_by_the_dispatchers_clock() -> None:
    # What `sluice bench kannel` prints as a window slot's cycle (DispatcherStats), summed over
    # messages: hand-over to answer, to the write, in the write, and from its end to the next
    # hand-over in a freed slot.
    base = time.time()
    clock = [base]
    store = _SlowWrites(clock, 0.5)
    cfg = loads(default_text().split("[[core.carriers]]")[0] + FAST)
    core = Scheduler(cfg.core, base)
    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    conn = _Held("alpha", send, capacity=2)  # a window of two

    def later(changes) -> None:  # the pump's turn starts 0.25 after the write's end
        clock[0] += 0.25

    disp = Dispatcher(core, {"alpha": conn}, receive, store, clock=lambda: clock[0], on_changes=later)
    gw = Gateway(core, store)
    gw.on_admitted = disp.poke
    job = schemas.JobIn(sender="Shop", category="transactional", template="Hello",
                        recipients=[schemas.RecipientIn(to="+4479111%05d" % i) for i in range(3)])  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(disp.run)
        await gw.submit_job("acme", job, base)
        with anyio.fail_after(10):
            while len(conn.dispatched) < 2:
                await wait_all_tasks_blocked()
        clock[0] = base + 2.0
        for d in conn.dispatched:
            await send.send(Submitted(ref=d.ref, carrier="alpha", carrier_ids=(f"id-{d.ref}",), at=clock[0]))
        with anyio.fail_after(10):
            while len(conn.dispatched) < 3:
                await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    s = disp.stats
    assert (s.answered, s.answer_s) == (2, 4.0)  # two messages, 2 s each at the carrier
    assert (s.confirmed, s.to_write_s, s.slot_write_s) == (2, 0.0, 1.0)  # written at once, 0.5 s each
    assert (s.refilled, s.refill_s) == (1, 0.25)  # the third took a freed slot 0.25 s after the write
    assert (s.writes, s.write_s) == (1, 0.5)
