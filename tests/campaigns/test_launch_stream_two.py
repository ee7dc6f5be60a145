"""Two chunks of a stream at once (docs/ARCHITECTURE.md, "Two chunks of a stream at once"; PostgreSQL,
each chunk on a connection of its own): chunk k+1 starts from where chunk k's audience ends, while
chunk k writes its rows, and moves the cursor only once chunk k has committed.

- Overlapped, the rows are those of one freeze, byte for byte.
- A chunk whose chunk before rolled back commits nothing (``stream_chunk_lost``); the stream goes
  on from the cursor the committed chunks left.
- Through the launcher (``stream_store``): the next chunk is frozen while the one before is still
  in its transaction, each recipient is sent once, and a launch stopped at any chunk (before or after
  its commit, an answer lost) is finished by relaunches, each recipient sent once."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import anyio
import pytest
from fake_gateway import FakeGateway
from test_launch_set_based import RULES, TEMPLATES, TL, Sub, _definition, _people, _stored
from test_launch_stream import T0, ONE_TIME, _segment, _streams, _subscriber

from campaigns.errors import Conflict, StorageError
from campaigns.service import launch
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, freeze, stream_step
from campaigns.store import Store, open_store

WAIT = 20.0  # bounded waits for the other thread (never reached when the code is right)


def _audience(store: Store, tenants: tuple[str, ...]) -> dict[str, Any]:
    subs: list[Sub] = [(["Ana", None, "李雷"][i % 3], [None, "en", "zh"][i % 3], [None, "Europe/Paris", "Asia/Shanghai",
                        "Not/AZone"][i % 4], "pending" if i % 7 == 3 else "confirmed", None if i % 3 else float(i * 3600))
                       for i in range(29)]  # fmt: skip
    ids = _people(store, subs, tenants)
    camps = {}
    for t in tenants:
        c = store.put_campaign(t, "c", {**_definition(TEMPLATES[1].replace("{first_name}", "{first_name|you}"), ONE_TIME[0],
                                                      16.0, 3, RULES[2], 30.0),
                                        "audience": {"include": [_segment(store, t, ids[t][:25])],
                                                     "subscribers": ids[t][26:]}}, now=T0)  # fmt: skip
        camps[t] = store.set_campaign_status(t, c.id, "launching", now=T0)
    return camps


def _one_frozen_two_streamed(pg_url: str) -> tuple[Store, Store, dict[str, Any], Any]:
    """Two connections; campaign "one" frozen whole (the reference), "two" announced as a stream of
    chunks of 3 (each test then steps it)."""
    a, b = open_store(pg_url), open_store(pg_url)
    camps = _audience(a, ("one", "two"))
    assert freeze(a, "one", camps["one"], TL, T0) is True
    c = camps["two"]
    assert freeze(a, "two", c, TL, T0, stream=3) is True
    return a, b, camps, c


def test_two_chunks_at_once_store_what_one_freeze_stores(pg_url: str) -> None:
    """Each chunk after the first starts on the other connection from its ``begun`` announcement,
    and the chunk before waits (bounded) until it has its own audience: every chunk overlaps the
    next one. The rows, batches and link range equal one freeze's; the cursor is gone."""
    a, b, camps, c = _one_frozen_two_streamed(pg_url)
    try:
        overlapped, errors, threads = [], [], []

        def chunk(k: int, start: tuple[int, int] | None, announced: threading.Event) -> None:
            mine = threading.Event()

            def begun(last: int, slot: int, done: bool) -> None:
                announced.set()
                if not done:
                    nxt = threading.Thread(target=chunk, args=(k + 1, (last, slot), mine))
                    threads.append(nxt)
                    nxt.start()
                    overlapped.append(mine.wait(WAIT))  # the next chunk's audience, read beside this transaction

            try:
                stream_step((a, b)[k % 2], "two", c, TL, 3, T0 + 1, start=start, begun=begun)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                announced.set()

        chunk(0, None, threading.Event())
        for t in threads:
            t.join(WAIT)
        assert not errors
        assert len(overlapped) >= 5 and all(overlapped)
        assert _stored(a, "two", c.id) == _stored(a, "one", camps["one"].id)
        assert _streams(a) == 0
    finally:
        a.close()
        b.close()


def test_a_chunk_after_one_rolled_back_commits_nothing(pg_url: str) -> None:
    """Chunk 1 announces its audience, chunk 2 starts from it, then chunk 1 fails inside its
    transaction: chunk 2, done with its rows, finds the cursor not moved and is refused
    (``stream_chunk_lost``), nothing of it committed; the stream then goes on from the cursor and
    stores what one freeze stores."""
    a, b, camps, c = _one_frozen_two_streamed(pg_url)
    try:
        batches = len(a.batches("two", c.id))
        second: list[Any] = []

        def later(start: tuple[int, int]) -> None:
            try:
                second.append(stream_step(b, "two", c, TL, 3, T0 + 1, start=start, begun=lambda *_: None))
            except Exception as exc:  # noqa: BLE001
                second.append(exc)

        def begun(last: int, slot: int, done: bool) -> None:
            t = threading.Thread(target=later, args=((last, slot),))
            t.start()
            raise StorageError("killed inside the chunk")  # rolled back while chunk 2 runs

        with pytest.raises(StorageError):
            stream_step(a, "two", c, TL, 3, T0 + 1, begun=begun)
        for _ in range(int(WAIT * 10)):
            if second:
                break
            threading.Event().wait(0.1)
        assert len(second) == 1 and isinstance(second[0], Conflict) and second[0].code == "stream_chunk_lost"
        assert len(a.batches("two", c.id)) == batches  # neither chunk left a row
        assert a.stream_pending("two", c.id, 3) == batches
        for _ in range(100):
            if stream_step(a, "two", c, TL, 3, T0 + 1) is None:
                break
        assert _stored(a, "two", c.id) == _stored(a, "one", camps["one"].id)
        assert _streams(a) == 0
    finally:
        a.close()
        b.close()


# ---- through the launcher ------------------------------------------------------------------------


def _launcher(store: Store, second: Store, gw: FakeGateway, chunk: int, now: float = T0,
              posts: Store | None = None) -> Launcher:  # fmt: skip
    """A launcher whose chunks alternate ``store`` and ``second``; its own reads and answers on ``posts``
    (``serve``: a connection of its own; default ``store``)."""
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    return Launcher(posts or store, {"acme": client}, {"acme": TL}, lambda: now, freeze_chunk=None, stream_chunk=chunk,
                    freeze_store=store, stream_store=second)  # fmt: skip


def test_the_launcher_freezes_the_next_chunk_beside_the_one_before(pg_url: str) -> None:
    """With a second connection (``stream_store``), each chunk on the first one waits (bounded),
    inside its transaction once its audience is known, for the next chunk to have its audience on the
    other connection: the launch finishes only if the launcher starts the next chunk then. Every
    recipient sent once, one job a batch, the cursor gone."""
    n = 21
    store, second, posts = open_store(pg_url), open_store(pg_url), open_store(pg_url)
    try:
        ids = [_subscriber(store, i) for i in range(1, n + 1)]
        seg = _segment(store, "acme", ids)
        gw = FakeGateway()
        on_second = threading.Event()
        overlapped: list[bool] = []
        real_a, real_b = store.freeze_stream, second.freeze_stream

        def held(*a: Any, **k: Any) -> Any:
            inner = k.get("begun")
            if inner is not None:
                def begun(last: int, slot: int, done: bool) -> None:
                    on_second.clear()
                    inner(last, slot, done)
                    if not done:
                        overlapped.append(on_second.wait(WAIT))
                k["begun"] = begun
            return real_a(*a, **k)

        def marked(*a: Any, **k: Any) -> Any:
            inner = k["begun"]

            def begun(last: int, slot: int, done: bool) -> None:
                inner(last, slot, done)
                on_second.set()
            return real_b(*a, **{**k, "begun": begun})

        store.freeze_stream = held  # type: ignore[method-assign]
        second.freeze_stream = marked  # type: ignore[method-assign]

        async def run() -> Any:
            la = _launcher(store, second, gw, 2, posts=posts)
            camp = await la.create("acme", "T", {"sender": "A", "template": "Sale https://s.io/x {first_name|friend}",
                                                 "batch_size": 2, "audience": {"include": [seg]}})  # fmt: skip
            return await la.launch("acme", camp.id)

        out = anyio.run(run)
        assert out.status == "launched" and out.accepted == n
        assert len(overlapped) >= 3 and all(overlapped)
        assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, n + 1)})
        assert len(gw.jobs) == -(-n // 2)
        assert _streams(store) == 0
    finally:
        store.close()
        second.close()
        posts.close()


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
@pytest.mark.parametrize("after_commit", [False, True])
def test_two_chunks_at_once_stopped_at_a_chunk_are_finished_by_a_relaunch_sending_each_once(
        pg_url: str, fail_at: int, after_commit: bool) -> None:  # fmt: skip
    """The ``fail_at``-th chunk (on either connection) fails before its commit or right after, and the
    answer to the second job is lost: relaunches on stores opened afresh finish the launch; every
    recipient is sent once, one job a batch, the cursor gone."""
    n, batch_size, chunk = 17, 2, 4
    store, second = open_store(pg_url), open_store(pg_url)
    ids = [_subscriber(store, i) for i in range(1, n + 1)]
    seg = _segment(store, "acme", ids[:14])
    gw = FakeGateway()
    gw.lose_answer_of = {2}
    calls = [0]
    lock = threading.Lock()

    def flaky(real: Any) -> Any:
        def step(*a: Any, **k: Any) -> Any:
            with lock:
                calls[0] += 1
                mine = calls[0]
            if mine == fail_at and not after_commit:
                inner = k.get("begun")
                if inner is not None:  # announced, then killed: the next chunk may be under way
                    def begun(*x: Any) -> None:
                        inner(*x)
                        raise StorageError("killed inside a chunk")
                    return real(*a, **{**k, "begun": begun})
                raise StorageError("killed inside a chunk")
            out = real(*a, **k)
            if mine == fail_at:
                raise StorageError("killed right after a chunk committed")
            return out
        return step

    async def run() -> None:
        nonlocal store, second
        camp = await _launcher(store, second, gw, chunk).create("acme", "C", {
            "sender": "A", "template": "Sale https://s.io/x {first_name|friend}", "batch_size": batch_size,
            "audience": {"include": [seg], "subscribers": ids[14:]}})  # fmt: skip
        for attempt in range(20):
            store.freeze_stream = flaky(store.freeze_stream)  # type: ignore[method-assign]
            second.freeze_stream = flaky(second.freeze_stream)  # type: ignore[method-assign]
            try:
                out = await _launcher(store, second, gw, chunk, now=T0 + attempt).launch("acme", camp.id)
                assert out.status == "launched" and out.accepted == n and out.recipients == n
                return
            except (StorageError, Conflict, launch.GatewayError):
                store.close()  # the process is gone; the next one opens the stores afresh
                second.close()
                store, second = open_store(pg_url), open_store(pg_url)
        raise AssertionError("never finished")

    try:
        anyio.run(run)
        assert calls[0] > fail_at
        assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, n + 1)})
        assert len(gw.jobs) == -(-n // batch_size)
        assert _streams(store) == 0
    finally:
        store.close()
        second.close()
