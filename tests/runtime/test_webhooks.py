"""Webhooks: signing and verifying, batching, retries, give-up, and delivery after a restart.

Rounds are driven with ``run_once`` on a ``FakeClock``: nothing sleeps. The receiver is an
httpx ``MockTransport`` for the retry logic, and a real HTTP server on 127.0.0.1 for the
end-to-end cases (``gateway.testing.http_receiver``).
"""

from __future__ import annotations

import math

import anyio
import httpx
import msgspec
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gateway.config import WebhookSettings, default_text, loads
from gateway.core.ids import format_id
from gateway.core.model import Job, Recipient
from gateway.runtime.webhooks import Answer, WebhookSender, advance, plan, plan_by_message, retry_after_seconds, settle
from gateway.store.base import Change, HookEvent
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from gateway.testing import http_receiver
from gateway.testing.clock import FakeClock
from gateway.webhook_signature import HEADER, sign, verify

pytestmark = pytest.mark.anyio

SECRET = "whsec_test_0123456789"
HOOK = "https://hooks.example.invalid/sluice"
JOB = Job(id="job_1", tenant="acme", sender="ACME", template="Hi", category="transactional")
BASE = 1 << 40
SETTINGS = WebhookSettings(batch_size=100, concurrency=4, timeout=5.0, backoff_initial=2.0, backoff_max=60.0,
                           max_attempts=100, max_age=3600.0, allow_private=["127.0.0.0/8"])  # fmt: skip
_events = msgspec.json.Decoder(dict)


def people(n: int) -> list[tuple[int, Recipient]]:
    return [(i, Recipient(to=f"+1212555{i:04d}", index=n - 1 - i)) for i in range(n)]


def outbox_with(store, n: int, *, url: str = HOOK, job: Job = JOB, base: int = BASE, at: float = 0.0) -> None:
    store.add_job(job, base, people(n), at, callback_url=url)
    store.record([Change(message_id=base + i, state="delivered", at=at, reason="DELIVRD", carrier="alpha")
                  for i in range(n)])  # fmt: skip


class Receiver:
    """A MockTransport handler answering from a script (default 200); keeps every request."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.script = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.script.pop(0) if self.script else httpx.Response(200)

    def events(self, i: int | None = None) -> list[dict]:
        reqs = self.requests if i is None else [self.requests[i]]
        return [e for r in reqs for e in _events.decode(r.content)["events"]]


def sender(store, clock, receiver, *, settings=SETTINGS, secrets=None) -> WebhookSender:
    return WebhookSender(store, settings, {"acme": SECRET} if secrets is None else secrets, clock=clock,
                         transport=httpx.MockTransport(receiver), jitter=lambda: 0.5)  # fmt: skip


# -- signatures ----------------------------------------------------------------------------


def test_signature_verifies_and_rejects_forgeries_and_replays() -> None:
    body = b'{"events":[]}'
    header = sign(SECRET, body, 1_000_000)
    assert header.startswith("t=1000000,v1=")
    assert verify(SECRET, header, body, now=1_000_000)
    assert verify(SECRET.encode(), header, body, now=1_000_000 + 299)  # bytes secret, within tolerance
    assert not verify("another-secret", header, body, now=1_000_000)
    assert not verify(SECRET, header, body + b" ", now=1_000_000)  # altered body
    assert not verify(SECRET, header, body, now=1_000_000 + 301)  # replayed later
    assert not verify(SECRET, header, body, now=1_000_000 - 301)  # from the future
    assert not verify(SECRET, header.replace("t=1000000", "t=1000100"), body, now=1_000_100)  # time moved
    for bad in ("", "t=abc,v1=00", "v1=" + "0" * 64, "t=1000000", "garbage"):
        assert not verify(SECRET, bad, body, now=1_000_000)
    rotated = f"{header},v1={'0' * 64}"  # several v1 while a secret rotates: any match is enough
    assert verify(SECRET, rotated, body, now=1_000_000)


# -- pure decisions ------------------------------------------------------------------------


def item(i: int, *, tenant: str = "acme", url: str = HOOK, attempts: int = 0, at: float = 0.0, seq: int | None = None,
         message: int | None = None) -> HookEvent:  # fmt: skip
    return HookEvent(id=i, seq=i if seq is None else seq, sub=1, tenant=tenant, url=url,
                     message_id=BASE + (i if message is None else message), job_id="job_1", state="delivered", at=at,
                     reason="", carrier=None, attempts=attempts)  # fmt: skip


def test_plan_by_message_keeps_a_messages_events_in_one_batch_in_order() -> None:
    # message 0 has events in rows 0, 3 and 6: they travel together, in that order
    events = [item(k, message=0 if k % 3 == 0 else k) for k in range(8)]
    batches = plan_by_message(events, 3, 10)
    assert [[e.id for e in b] for b in batches] == [[0, 3, 6], [1, 2, 4], [5, 7]]
    # At most 2: event 5 is left out, so message 0's event 6 waits too (sent now, the cursor could
    # not pass it, and the next round would send it again).
    assert [[e.id for e in b] for b in plan_by_message(events, 3, 2)] == [[0, 3], [1, 2, 4]]
    big = [item(k, message=0) for k in range(5)]
    assert [len(b) for b in plan_by_message(big, 3, 10)] == [5]  # one message's events are never split


def test_advance_moves_over_the_settled_run_only() -> None:
    events = [item(0, seq=10), item(1, seq=11), item(2, seq=11), item(3, seq=12), item(4, seq=13)]
    assert advance(events, set()) is None
    assert advance(events, {0, 1, 2, 3, 4}) == 13
    assert advance(events, {0, 1, 2, 4}) == 11  # 12 not settled: 13 is sent again later
    assert advance(events, {0, 1}) == 10  # row 11 only half settled: never move into it
    assert advance(events, {1, 2, 3, 4}) is None


def test_plan_groups_by_tenant_and_url_and_caps_batches() -> None:
    items = [item(i, url=HOOK if i % 3 else "https://b.invalid/") for i in range(10)]
    items.append(item(99, tenant="beta"))
    batches = plan(items, 3)
    assert [[i.id for i in b] for b in batches] == [[0, 3, 6], [9], [1, 2, 4], [5, 7, 8], [99]]


def test_settle_backoff_retry_after_and_give_up() -> None:
    s = SETTINGS
    assert settle([item(1)], Answer(status=204), 10.0, s, 0.0).done == [1]
    first = settle([item(1)], Answer(status=500), 10.0, s, 0.0)
    assert first.retry == [1] and first.retry_at == 11.0 and first.error == "HTTP 500"  # 2 s, jitter low half
    later = settle([item(1, attempts=4)], Answer(status=None, error="ConnectError"), 10.0, s, 1.0 - 1e-9)
    assert later.retry_at == pytest.approx(10.0 + 32.0) and later.error == "ConnectError"
    capped = settle([item(1, attempts=20)], Answer(status=503), 10.0, s, 1.0 - 1e-9)
    assert capped.retry_at == pytest.approx(10.0 + 60.0)  # backoff_max
    told = settle([item(1)], Answer(status=429, retry_after=120.0), 10.0, s, 0.0)
    assert told.retry_at == 130.0  # Retry-After wins over the backoff
    assert settle([item(1)], Answer(status=404), 10.0, s, 0.0).dead == [1]  # refused: no point asking again
    assert settle([item(1)], Answer(status=None, permanent=True), 10.0, s, 0.0).dead == [1]
    mixed = settle([item(1, at=0.0), item(2, at=3000.0)], Answer(status=502), 3600.0, s, 0.0)
    assert mixed.dead == [1] and mixed.retry == [2]  # each event ages on its own
    last = settle([item(2, at=3000.0)], Answer(status=429, retry_after=9999.0), 3590.0, s, 0.0)
    assert last.retry_at == 6600.0  # one last try at max_age rather than none
    tired = settle([item(1, attempts=99)], Answer(status=500), 10.0, s, 0.0)
    assert tired.dead == [1]  # max_attempts


def test_a_body_from_rows_is_byte_for_byte_the_structs_encoding() -> None:
    """The sender encodes rows' dicts (``hook_wire``); receivers were promised ``WebhookEvent``'s
    JSON: the same bytes, field order included, for awkward values too."""
    from gateway.runtime.webhooks import WebhookBody, WebhookEvent, _encode
    from gateway.store.base import hook_wire

    events = [HookEvent(id=k, seq=k, sub=1, tenant="acme", url=HOOK, message_id=BASE + k, job_id="job_1",
                        state="undelivered", at=1795532398.5212345 + k, reason='r "q" \\ é\x01', carrier=c,
                        attempts=0, error_code=code, to="+12125550123", index=idx, reference=ref)
              for k, (c, code, idx, ref) in enumerate([(None, None, None, None), ("alpha", 11, 17, "ü\"x")])]  # fmt: skip
    structs = WebhookBody(events=[WebhookEvent(
        message_id=format_id(e.message_id), job_id=e.job_id, state=e.state, at=e.at, reason=e.reason, carrier=e.carrier,
        error_code=e.error_code, to=e.to, index=e.index, reference=e.reference) for e in events])  # fmt: skip
    assert _encode({"events": [hook_wire(e) for e in events]}) == msgspec.json.encode(structs)


def test_retry_after_forms() -> None:
    assert retry_after_seconds("120", 0.0) == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412420.0) == 60.0
    assert retry_after_seconds("soon", 0.0) is None and retry_after_seconds(None, 0.0) is None


# -- the sender against a mock receiver ------------------------------------------------------


async def test_batches_signed_per_tenant_and_url() -> None:
    store, clock, rx = MemoryStore(), FakeClock(), Receiver()
    outbox_with(store, 250, at=clock())
    outbox_with(store, 3, url="https://other.invalid/x", job=msgspec.structs.replace(JOB, id="job_2"), base=BASE * 2)
    outbox_with(store, 2, job=Job(id="job_3", tenant="beta", sender="B", template="x"), base=BASE * 3)
    async with sender(store, clock, rx, secrets={"acme": SECRET}) as s:
        assert await s.run_once() == 253  # at most `concurrency` (4) batches a round
        assert await s.run_once() == 2
        assert await s.run_once() == 0
    sizes = sorted((str(r.url), len(_events.decode(r.content)["events"])) for r in rx.requests)
    assert sizes == [("https://hooks.example.invalid/sluice", 2), ("https://hooks.example.invalid/sluice", 50),
                     ("https://hooks.example.invalid/sluice", 100), ("https://hooks.example.invalid/sluice", 100),
                     ("https://other.invalid/x", 3)]  # fmt: skip
    for r in rx.requests:
        assert r.headers["content-type"] == "application/json"
        if r.headers.get(HEADER) is None:  # beta has no secret: sent unsigned (and logged once)
            assert {e["job_id"] for e in _events.decode(r.content)["events"]} == {"job_3"}
        else:
            assert verify(SECRET, r.headers[HEADER], r.content, now=clock())
    [first] = [e for e in rx.events() if e["message_id"] == format_id(BASE)]
    assert first == {"message_id": format_id(BASE), "job_id": "job_1", "state": "delivered", "at": clock(),
                     "reason": "DELIVRD", "carrier": "alpha", "error_code": None, "to": "+12125550000",
                     "index": first["index"], "reference": None}  # fmt: skip
    assert first["index"] is not None  # the recipient's index in the request, not its id's offset
    assert store.outbox_statistics().pending == 0


async def test_a_failed_batch_holds_the_cursor_until_a_2xx_and_nothing_is_lost() -> None:
    """Two batches side by side, the first to arrive gets a 500: the cursor stays before it,
    so it and everything after it go again after the backoff (at least once; the events of a
    later batch that had its 2xx may arrive twice), until every event had a 2xx."""
    store, clock = MemoryStore(), FakeClock()
    rx = Receiver(httpx.Response(500), httpx.Response(200), httpx.Response(503))
    outbox_with(store, 150, at=clock())
    everything = [format_id(BASE + i) for i in range(150)]
    async with sender(store, clock, rx) as s:
        assert await s.run_once() == 150  # two batches: the first to arrive gets the 500
        failed = [e["message_id"] for e in rx.events(0)]
        assert s.statistics().retried == len(failed) and s.statistics().delivered == 150 - len(failed)
        again = 150 if failed == everything[:100] else 50  # the failed batch and what follows it
        assert await s.run_once() == 0  # backing off: nothing due yet
        clock.advance(1.4)
        assert await s.run_once() == 0  # 2 s backoff, jitter 0.5 -> 1.5 s
        clock.advance(0.1)
        assert await s.run_once() == again  # one of them gets a 503
        # Which of the two batches arrives first (and gets the 503) may differ from the first round:
        # the cursor holds before the 503's first event, so that and everything after it go again.
        again = 150 - everything.index(rx.events(2)[0]["message_id"])
        clock.advance(2.99)
        assert await s.run_once() == 0
        clock.advance(0.01)
        assert await s.run_once() == again
        assert await s.run_once() == 0
    ok = [e["message_id"] for k, r in enumerate(rx.requests) if k not in (0, 2) for e in rx.events(k)]
    assert set(ok) == set(everything)  # every event had a 2xx
    assert store.outbox_statistics().pending == 0 and store.outbox_statistics().dead == 0


async def test_retry_after_header_is_honoured() -> None:
    store, clock = MemoryStore(), FakeClock()
    rx = Receiver(httpx.Response(429, headers={"retry-after": "120"}))
    outbox_with(store, 1, at=clock())
    async with sender(store, clock, rx) as s:
        await s.run_once()
        clock.advance(119.9)
        assert await s.run_once() == 0
        clock.advance(0.1)
        assert await s.run_once() == 1
    assert len(rx.requests) == 2 and store.outbox_statistics().pending == 0


async def test_gives_up_after_max_age_and_keeps_the_rows_dead() -> None:
    store, clock = MemoryStore(), FakeClock()
    rx = Receiver(*[httpx.Response(503)] * 1000)
    outbox_with(store, 5, at=clock())
    settings = msgspec.structs.replace(SETTINGS, max_age=600.0)
    async with sender(store, clock, rx, settings=settings) as s:
        for _ in range(100):
            await s.run_once()
            next_at = store.hook_next_at()
            if next_at is None:
                break
            clock.now = next_at
        assert s.statistics().dead == 5
        tries = len(rx.requests)
        clock.advance(10**6)
        assert await s.run_once() == 0 and len(rx.requests) == tries
    assert clock.now - 1_795_532_400.0 >= 600.0  # the last try was at max_age, not before
    assert store.outbox_statistics().dead == 5 and store.outbox_statistics().pending == 0


async def test_network_errors_and_timeouts_are_retried() -> None:
    store, clock = MemoryStore(), FakeClock()
    calls = []

    async def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 2:
            await anyio.sleep(math.inf)  # never answers: the sender's own timeout ends it
        return httpx.Response(200)

    outbox_with(store, 1, at=clock())
    settings = msgspec.structs.replace(SETTINGS, timeout=0.01)
    async with WebhookSender(store, settings, {"acme": SECRET}, clock=clock, transport=httpx.MockTransport(flaky),
                             jitter=lambda: 0.0) as s:  # fmt: skip
        for _ in range(3):
            await s.run_once()
            clock.now = store.hook_next_at() or clock.now
    assert len(calls) == 3 and s.statistics().delivered == 1 and s.statistics().retried == 2


async def test_a_tenant_without_secret_is_sent_unsigned(caplog: pytest.LogCaptureFixture) -> None:
    store, clock, rx = MemoryStore(), FakeClock(), Receiver()
    outbox_with(store, 1, at=clock())
    outbox_with(store, 1, job=msgspec.structs.replace(JOB, id="job_2"), base=BASE * 2)
    with caplog.at_level("WARNING"):
        async with sender(store, clock, rx, secrets={}) as s:
            await s.run_once()
            await s.run_once()
    assert [HEADER in r.headers for r in rx.requests] == [False]
    assert [r.getMessage() for r in caplog.records].count(
        "webhook.unsigned tenant=acme reason=no webhook_secret_env for this tenant") == 1  # fmt: skip
    assert SECRET not in caplog.text


async def test_httpxs_request_lines_carry_no_path_or_query(caplog: pytest.LogCaptureFixture) -> None:
    """https:// webhooks are POSTed by httpx, which logs each request's URL at INFO: the line
    is there, cut to scheme and host."""
    store, clock, rx = MemoryStore(), FakeClock(), Receiver()
    outbox_with(store, 1, url="https://hooks.example.invalid/p/canary-path?token=canary-query", at=clock())
    with caplog.at_level("INFO"):
        async with sender(store, clock, rx) as s:
            assert await s.run_once() == 1
    assert "HTTP Request: POST https://hooks.example.invalid" in caplog.text
    assert "canary" not in caplog.text and str(rx.requests[0].url).endswith("canary-query")


# -- over real loopback, after a restart -----------------------------------------------------


async def test_restart_delivers_what_was_written_before(tmp_path) -> None:
    """Outbox rows written, the sender never ran, the process ended: a new store on the same file
    and a running sender deliver them to a real HTTP server on 127.0.0.1, signed."""
    got: list[tuple[str | None, bytes]] = []
    arrived = anyio.Event()
    total = 0

    def answer(request, body: bytes):
        nonlocal total
        got.append((dict((k.decode(), v.decode()) for k, v in request.headers).get(HEADER.lower()), body))
        total += len(_events.decode(body)["events"])
        if total >= 120:
            arrived.set()
        return 200, [], b"ok"

    path = str(tmp_path / "sluice.db")
    clock = FakeClock()
    first = SqliteStore(path)
    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        url = f"http://127.0.0.1:{port}/hooks?token=receiver-token"
        outbox_with(first, 120, url=url, at=clock())
        first.close()  # "crash": nothing was sent

        again = SqliteStore(path)
        async with WebhookSender(again, SETTINGS, {"acme": SECRET}, clock=clock) as s:
            tg.start_soon(s.run)
            with anyio.fail_after(10):
                await arrived.wait()
        tg.cancel_scope.cancel()
    assert sorted(e["message_id"] for _, body in got for e in _events.decode(body)["events"]) == sorted(
        format_id(BASE + i) for i in range(120))  # fmt: skip
    assert all(h is not None and verify(SECRET, h, body, now=clock()) for h, body in got)
    assert [len(_events.decode(b)["events"]) for _, b in got] in ([100, 20], [20, 100])
    again.close()


async def test_a_poke_wakes_the_running_sender(tmp_path) -> None:
    arrived = anyio.Event()

    def answer(request, body: bytes):
        arrived.set()
        return 204, [], b""

    store, clock = MemoryStore(), FakeClock()
    slow_poll = msgspec.structs.replace(SETTINGS, poll_interval=3600.0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        async with WebhookSender(store, slow_poll, {"acme": SECRET}, clock=clock) as s:
            tg.start_soon(s.run)
            await anyio.wait_all_tasks_blocked()  # the sender is waiting (poll_interval: an hour)
            outbox_with(store, 1, url=f"http://127.0.0.1:{port}/", at=clock())
            s.poke()
            with anyio.fail_after(10):  # far less than poll_interval: the poke woke it
                await arrived.wait()
        tg.cancel_scope.cancel()


def test_config_webhook_defaults_are_the_documented_ones() -> None:
    from pathlib import Path

    example = (Path(__file__).parents[2] / "config" / "example.toml").read_text()
    assert loads(example).webhooks == loads(default_text()).webhooks == WebhookSettings()


# -- properties of the pure decisions ---------------------------------------------------------


@st.composite
def reads(draw):
    """A read: sequence rows in order, each one message's 1-3 events (ids are positions)."""
    rows = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3)), min_size=1, max_size=25))
    events, seq = [], 100
    for message, n in rows:
        seq += draw(st.integers(1, 3))
        for _ in range(n):
            events.append(item(len(events), seq=seq, message=message))
    return events


@hsettings(max_examples=300, deadline=None)
@given(reads(), st.integers(1, 8), st.integers(1, 6), st.data())
def test_property_batches_keep_messages_whole_and_the_cursor_never_passes_an_unsettled_event(
        events, batch_size, most, data) -> None:  # fmt: skip
    batches = plan_by_message(events, batch_size, most)
    assert 1 <= len(batches) <= most
    sent = [e for b in batches for e in b]
    assert len({e.id for e in sent}) == len(sent)  # nothing twice
    for b in batches:
        assert len(b) <= batch_size or len({e.message_id for e in b}) == 1
        for m in {e.message_id for e in b}:
            mine = [e.id for e in b if e.message_id == m]
            assert mine == [e.id for e in events if e.message_id == m and e.id in mine] == sorted(mine)
            assert all(e.message_id != m for other in batches if other is not b for e in other)  # in one batch
    # Any set of batches settled: the cursor stops before the first event not settled.
    ok = data.draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)))
    settled = {e.id for b, fine in zip(batches, ok) if fine for e in b}
    upto = advance(events, settled)
    first_open = next((e.seq for e in events if e.id not in settled), None)
    if upto is not None:
        assert all(e.id in settled for e in events if e.seq <= upto)
        assert first_open is None or upto < first_open
    if first_open is None:
        assert upto == events[-1].seq
    elif upto is not None:  # as far as it can: the last row before the first open one
        assert upto == max(e.seq for e in events if e.seq < first_open)
    else:
        assert all(e.seq >= first_open for e in events)
    # Every batch answered 2xx: the cursor passes everything sent, so a clean run sends nothing twice.
    clean = advance(events, {e.id for e in sent})
    assert clean is not None and all(e.seq <= clean for e in sent)


@pytest.mark.parametrize("make", [lambda p: SqliteStore(p / "s.db"), lambda p: MemoryStore()], ids=["sqlite", "memory"])
async def test_a_clean_run_sends_every_event_once_when_a_round_cannot_take_the_whole_backlog(tmp_path, make) -> None:
    # Each message's rows are apart in the sequence (submitted, then delivered a write later), and a
    # round holds fewer events than it reads: a message's later row gathered into an early batch
    # would be sent beyond where the cursor can move, and sent again by the next round.
    store, clock, rx = make(tmp_path), FakeClock(), Receiver()
    n = 30
    store.add_job(JOB, BASE, people(n), clock(), callback_url=HOOK)
    for k in range(0, n, 3):
        for state in ("submitted", "delivered"):
            store.record([Change(message_id=BASE + i, state=state, at=clock(), reason="", carrier="alpha")
                          for i in range(k, k + 3)])  # fmt: skip
    small = msgspec.structs.replace(SETTINGS, batch_size=3, concurrency=2)
    async with sender(store, clock, rx, settings=small) as s:
        for _ in range(4 * n):  # bounded: far more rounds than 60 events need
            if not await s.run_once():
                break
    got = sorted((e["message_id"], e["state"]) for e in rx.events())
    assert got == sorted((format_id(BASE + i), state) for i in range(n) for state in ("submitted", "delivered"))
    assert s.statistics().retried == 0


class CountingAcks:
    """A store whose cursor writes (``hook_ack``) are counted: each is a write transaction, and
    on SQLite the server's writes wait for it."""

    def __init__(self, store) -> None:
        self.store, self.writes = store, []

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def hook_ack(self, acks) -> None:
        self.writes.append(list(acks))
        self.store.hook_ack(acks)


@pytest.mark.parametrize("make", [lambda p: SqliteStore(p / "s.db"), lambda p: MemoryStore()], ids=["sqlite", "memory"])
async def test_a_busy_sender_writes_its_cursor_at_most_every_ack_every_and_once_idle(tmp_path, make) -> None:
    """Rounds that keep finding events write the cursor once per ``ack_every``, not once a round;
    the next round reads after what was delivered, so nothing goes twice in a clean run; an idle
    sender writes it ``ack_every`` after its last write (not spinning meanwhile), and so does a stop. A sender killed in between (its
    cursor not written) leaves those events to the next one: sent again, at least once."""
    store, clock, rx = CountingAcks(make(tmp_path)), FakeClock(), Receiver()
    store.add_job(JOB, BASE, people(60), clock(), callback_url=HOOK)

    def deliver(first: int, n: int) -> None:
        store.record([Change(message_id=BASE + i, state="delivered", at=clock(), reason="DELIVRD", carrier="alpha")
                      for i in range(first, first + n)])  # fmt: skip

    every = msgspec.structs.replace(SETTINGS, ack_every=0.25)
    async with sender(store, clock, rx, settings=every) as s:
        for k in range(4):  # four busy rounds 0.05 s apart: the first writes, the next three do not
            deliver(10 * k, 10)
            assert await s.run_once() == 10
            clock.advance(0.05)
        assert len(store.writes) == 1
        assert store.outbox_statistics().pending == 30  # delivered, the cursor not moved over them yet
        clock.advance(0.1)  # 0.3 s after the last write (more than ack_every): this round writes
        deliver(40, 10)
        assert await s.run_once() == 10
        assert len(store.writes) == 2 and store.outbox_statistics().pending == 0
        deliver(50, 5)
        assert await s.run_once() == 5
        assert len(store.writes) == 2 and store.outbox_statistics().pending == 5
        assert await s.run_once() == 0  # nothing more to send, but within ack_every of the last write
        assert len(store.writes) == 2
        assert 0 < s._delay(0.0, clock()) <= 0.25  # the rows delivered count as due: no spinning until the write
        clock.advance(0.25)
        assert await s.run_once() == 0  # idle, ack_every later: the cursor catches up
        assert len(store.writes) == 3 and store.outbox_statistics().pending == 0
        got = [e["message_id"] for e in rx.events()]
        assert got == [format_id(BASE + i) for i in range(55)]  # each once, in order
        deliver(55, 5)
        assert await s.run_once() == 5  # within ack_every of the last write: not written...
        assert store.outbox_statistics().pending == 5
        async with sender(store, clock, rx, settings=every) as killed_and_restarted:
            assert await killed_and_restarted.run_once() == 5  # ... so a new sender sends them again
    assert store.outbox_statistics().pending == 0  # the stop wrote what was delivered
    assert [e["message_id"] for e in rx.events()][55:] == [format_id(BASE + i) for i in range(55, 60)] * 2


def test_a_running_sender_pokes_within_linger_make_one_round() -> None:
    """The task sender (memory store, ``delivery = "task"``) is poked by every write of serve:
    forty writes 5 ms apart make a round every ``linger`` (20 ms), not forty rounds, and every
    event is delivered once, the last write's too, within ``linger`` of it (virtual time)."""
    import trio.testing

    async def main() -> tuple[list[bool], Receiver, float]:
        store, clock, rx = MemoryStore(), FakeClock(), Receiver()
        store.add_job(JOB, BASE, people(40), clock(), callback_url=HOOK)
        rounds: list[bool] = []
        lingering = msgspec.structs.replace(SETTINGS, linger=0.02, poll_interval=3600.0)
        async with WebhookSender(store, lingering, {"acme": SECRET}, clock=clock, transport=httpx.MockTransport(rx),
                                 store_inline=True) as s, anyio.create_task_group() as tg:  # fmt: skip
            tg.start_soon(s.run, rounds.append)
            for i in range(40):
                store.record([Change(message_id=BASE + i, state="delivered", at=clock(), reason="DELIVRD",
                                     carrier="alpha")])  # fmt: skip
                s.poke()
                await anyio.sleep(0.005)
            last = anyio.current_time()
            await anyio.sleep(0.025)
            tg.cancel_scope.cancel()
        return rounds, rx, anyio.current_time() - last

    rounds, rx, _ = anyio.run(main, backend="trio",
                              backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})  # fmt: skip
    heard = [e["message_id"] for r in rx.requests for e in _events.decode(r.content)["events"]]
    assert sorted(heard) == sorted(format_id(BASE + i) for i in range(40))  # each once, the last too
    assert 1 < len(rx.requests) <= 12 and len(rounds) <= 12  # 0.2 s / 20 ms, not 40
