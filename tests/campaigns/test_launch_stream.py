"""A streamed freeze (docs/ARCHITECTURE.md, "A streamed freeze"): a launch with one send time is
frozen a chunk at a time in subscriber id order, each chunk's batches posted while the next is
frozen, with a durable cursor (``campaign_streams``).

- Left alone, the rows are those of one freeze, byte for byte (recipients, slots, texts, batches,
  the link range once the stream ends), on both engines.
- A launch stopped at any new point (a chunk's transaction failing, the process gone right after a
  chunk committed, answers lost) is finished by a relaunch from a store opened afresh: each recipient
  sent once, one job a batch, the cursor gone.
- The audience rule: a segment member who joined at or before the launch instant and is still a
  member (with consent confirmed) when the stream reaches its id is sent; one who leaves, or
  revokes consent, before that is not; one who joins after the launch instant is not; a recipient
  whose chunk was frozen is sent whatever happens to its membership afterwards."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import anyio
import pytest
from fake_gateway import FakeGateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_launch_set_based import RULES, TEMPLATES, TL, Sub, _definition, _people, _put, _stored, subs_st

from campaigns.core.events import Profile
from campaigns.errors import InvalidInput, StorageError
from campaigns.service import launch
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, freeze, stream_step
from campaigns.store import Store, open_store
from campaigns.store.base import NewConsent

T0 = 1_767_000_000.0
ONE_TIME = [{"kind": "now"}, {"kind": "at", "at": T0 + 7200}, {"kind": "at", "at": T0 - 50}]


def _streams(store: Store) -> int:
    with store._tx() as tx:  # type: ignore[attr-defined]
        return int(tx.one("SELECT COUNT(*) FROM campaign_streams")[0])


def _freeze_streamed(store: Store, tenant: str, camp: Any, chunk: int | None, now: float = T0) -> Any:
    """Freeze ``camp`` (as a stream of ``chunk`` recipients, every chunk written); the error if any."""
    try:
        assert freeze(store, tenant, camp, TL, now, stream=chunk) is True
        if chunk is not None:
            for _ in range(10_000):
                if stream_step(store, tenant, camp, TL, chunk, now + 1) is None:
                    break
    except InvalidInput as exc:
        return ("error", exc.code, exc.field)
    assert freeze(store, tenant, camp, TL, now + 60, stream=chunk) is False  # frozen once
    return None


def _segment(store: Store, tenant: str, ids: list[int], since: float = T0 - 100) -> int:
    seg = store.put_segment(tenant, "all", {"field": "orders_count", "op": "gte", "value": 0}, now=since)
    for sid in ids:
        store.set_member(tenant, seg.id, sid, True, now=since)
    return seg.id


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subs=subs_st, template=st.sampled_from(TEMPLATES), schedule=st.sampled_from(ONE_TIME),
       smart=st.sampled_from([0.0, 16.0]), batch_size=st.integers(1, 4), rules=st.sampled_from(RULES),
       chunk=st.integers(1, 9), by_segment=st.booleans())  # fmt: skip
def test_a_streamed_freeze_stores_what_one_freeze_stores(tmp_path_factory: pytest.TempPathFactory, subs: list[Sub],
                                                         template: str, schedule: dict[str, Any], smart: float,
                                                         batch_size: int, rules: dict[str, Any], chunk: int,
                                                         by_segment: bool) -> None:  # fmt: skip
    """One audience under two tenants, frozen in one go and as a stream: every column of the rows,
    the batches, the link range (shrunk to the recipients at the end) and any error agree, and no
    cursor is left. A template whose links depend on the recipient is not streamed (same rows)."""
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('stream') / 'c.db'}")
    try:
        ids = _people(store, subs, ("one", "stream"))
        out: dict[str, Any] = {}
        for t, ch in (("one", None), ("stream", chunk)):
            audience: dict[str, Any] = {"subscribers": ids[t]}
            if by_segment:
                audience = {"include": [_segment(store, t, ids[t][::2])], "subscribers": ids[t][1::3]}
            c = store.put_campaign(t, "c", {**_definition(template, schedule, smart, batch_size, rules, None),
                                            "audience": audience}, now=T0)  # fmt: skip
            c = store.set_campaign_status(t, c.id, "launching", now=T0)
            err = _freeze_streamed(store, t, c, ch)
            out[t] = (err, _stored(store, t, c.id) if err is None else None)
        assert out["stream"] == out["one"]
        assert _streams(store) == 0
    finally:
        store.close()


def test_a_streamed_freeze_on_both_engines(store: Store) -> None:
    """A fixed mixed audience (segment included, another excluded, ids listed) on each engine, as a
    stream of 4 recipients against one freeze; the cursor moves a chunk at a time and is gone at the end."""
    subs: list[Sub] = [(["Ana", None, "李雷"][i % 3], [None, "en", "zh"][i % 3], [None, "Europe/Paris", "Asia/Shanghai",
                        "Not/AZone"][i % 4], "pending" if i % 7 == 3 else "confirmed", None if i % 3 else float(i * 3600))
                       for i in range(23)]  # fmt: skip
    ids = _people(store, subs, ("one", "stream"))
    got = {}
    for t, chunk in (("one", None), ("stream", 4)):
        inc = _segment(store, t, ids[t][:18])
        exc = store.put_segment(t, "not", {"field": "orders_count", "op": "gte", "value": 0}, now=T0 - 100).id
        for sid in ids[t][5:8]:
            store.set_member(t, exc, sid, True, now=T0 - 100)
        c = store.put_campaign(t, "c", {**_definition(TEMPLATES[1].replace("{first_name}", "{first_name|you}"), ONE_TIME[0],
                                                      16.0, 3, RULES[2], 30.0),
                                        "audience": {"include": [inc], "exclude": [exc], "subscribers": ids[t][20:]}},
                               now=T0)  # fmt: skip
        c = store.set_campaign_status(t, c.id, "launching", now=T0)
        assert freeze(store, t, c, TL, T0, stream=chunk)
        if chunk is not None:
            assert store.stream_pending(t, c.id, 3) == 2  # two batches of 3 written, the rest to stream
            for _ in range(100):
                if stream_step(store, t, c, TL, chunk, T0 + 5) is None:
                    break
        got[t] = _stored(store, t, c.id)
        assert store.stream_pending(t, c.id, 3) is None
    assert got["stream"] == got["one"] and len(got["one"][0]) > 10
    assert _streams(store) == 0


# ---- through the launcher ------------------------------------------------------------------------


def _launcher(store: Store, gw: FakeGateway, chunk: int, now: float = T0) -> Launcher:
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    return Launcher(store, {"acme": client}, {"acme": TL}, lambda: now, freeze_chunk=None, stream_chunk=chunk)


def _subscriber(store: Store, i: int) -> int:
    return _put(store, "acme", i, ("Ana", "en", "Europe/Paris", "confirmed", None))


@pytest.mark.parametrize("fail_at", [1, 2, 3])
@pytest.mark.parametrize("after_commit", [False, True])
def test_a_streamed_launch_stopped_at_a_chunk_is_finished_by_a_relaunch_sending_each_once(
        store_url: str, fail_at: int, after_commit: bool) -> None:  # fmt: skip
    """The ``fail_at``-th chunk of the stream fails, before its transaction commits or right after
    (the process gone, what was committed stays), and the gateway's answer to the second job is
    lost: each relaunch, on a store opened afresh, continues from the cursor and re-posts what was
    not answered (the same bytes under the same key); in the end every recipient is sent once, in
    as many jobs as batches, and the cursor is gone. (The first chunk is written by ``freeze``, in
    the launch; the chunks after it by ``stream_step``.)"""
    n, batch_size, chunk = 13, 2, 4
    store = open_store(store_url)
    ids = [_subscriber(store, i) for i in range(1, n + 1)]
    seg = _segment(store, "acme", ids[:10])
    gw = FakeGateway()
    gw.lose_answer_of = {2}
    calls = [0]

    def flaky(real: Any) -> Any:
        def step(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if calls[0] == fail_at and not after_commit:
                raise StorageError("killed inside a chunk")
            out = real(*a, **k)
            if calls[0] == fail_at:
                raise StorageError("killed right after a chunk committed")
            return out
        return step

    async def run() -> None:
        nonlocal store
        camp = await _launcher(store, gw, chunk).create("acme", "C", {
            "sender": "A", "template": "Sale https://s.io/x {first_name|friend}", "batch_size": batch_size,
            "audience": {"include": [seg], "subscribers": ids[10:]}})  # fmt: skip
        for attempt in range(20):
            store.freeze_stream = flaky(store.freeze_stream)  # type: ignore[method-assign]
            try:
                out = await _launcher(store, gw, chunk, now=T0 + attempt).launch("acme", camp.id)
                assert out.status == "launched" and out.accepted == n and out.recipients == n
                return
            except (StorageError, launch.GatewayError):
                store.close()  # the process is gone; the next one opens the store afresh
                store = open_store(store_url)
        raise AssertionError("never finished")

    try:
        anyio.run(run)
        assert calls[0] > fail_at  # the failure happened, and the stream went on after it
        assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, n + 1)})
        assert len(gw.jobs) == -(-n // batch_size)
        assert _streams(store) == 0
    finally:
        store.close()


def test_who_joins_or_leaves_during_a_streamed_launch(store_url: str) -> None:
    """Batch 0 (chunk 0: ids 1-3) is posted before chunk 1 is frozen; at that post: member 2
    (frozen) leaves, member 5 leaves, member 6 revokes consent, subscriber 10 (created before the
    launch) and subscriber 11 (created now) join. Sent: 1-4, 7-9 (member 2's chunk was frozen);
    not sent: 5 and 6 (gone before the stream reached them), 10 and 11 (joined after the launch)."""
    store = open_store(store_url)
    other = open_store(store_url)  # the audience's changes, as the service's other work would make them
    try:
        ids = [_subscriber(store, i) for i in range(1, 11)]
        seg = _segment(store, "acme", ids[:9])
        gw = FakeGateway()
        inner = gw.handle
        posted = threading.Event()

        def handle(request: Any) -> Any:
            if request.url.path == "/v1/jobs" and request.method == "POST" and not posted.is_set():
                other.set_member("acme", seg, ids[1], False, now=T0 + 1)
                other.set_member("acme", seg, ids[4], False, now=T0 + 1)
                other.record_consent("acme", NewConsent(phone="+447911100006", action="opt_out", source="api",
                                                        at=T0 + 1), now=T0 + 1)  # fmt: skip
                other.set_member("acme", seg, ids[9], True, now=T0 + 1)
                new, _ = other.put_subscriber("acme", Profile(phone="+447911100011", first_name="Ana"),
                                              phone="+447911100011", at=T0 + 1, now=T0 + 1)  # fmt: skip
                for k, action in enumerate(["opt_in", "confirm"]):
                    other.record_consent("acme", NewConsent(phone="+447911100011", action=action, source="api",
                                                            at=T0 + 1 + k), now=T0 + 1)  # fmt: skip
                other.set_member("acme", seg, new.id, True, now=T0 + 2)
                posted.set()
            return inner(request)

        gw.handle = handle  # type: ignore[method-assign]
        real = getattr(store, "freeze_stream", None)
        if real is not None:
            def held(*a: Any, **k: Any) -> Any:  # the second chunk waits (bounded) until batch 0 is posted
                if store.stream_pending("acme", a[1], 3) is not None:
                    posted.wait(timeout=20)
                return real(*a, **k)
            store.freeze_stream = held  # type: ignore[method-assign]

        async def run() -> Any:
            la = _launcher(store, gw, 3)
            camp = await la.create("acme", "J", {"sender": "A", "template": "Sale https://s.io/x", "batch_size": 3,
                                                 "audience": {"include": [seg]}})  # fmt: skip
            return await la.launch("acme", camp.id)

        out = anyio.run(run)
        sent = sorted(gw.sent())
        assert sent == sorted(f"+4479111{i:05d}" for i in (1, 2, 3, 4, 7, 8, 9))
        assert out.status == "launched" and out.accepted == 7
    finally:
        other.close()
        store.close()
