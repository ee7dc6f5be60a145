"""A freeze in chunks (docs/ARCHITECTURE.md, "A chunked freeze"): the plan of the whole audience is
made and stored in one transaction, its recipients written a chunk of batches at a time, and a
batch posted as soon as its chunk is committed.

- The rows are those of one freeze, byte for byte, whatever the chunk (smart sending, send times,
  batches, slots, link numbers, texts, first-message footers, the error a text cannot be rendered with).
- A launch planned while another of the tenant is still being written sees that one whole (its
  planned sends count for smart sending and for a first message), as if it had been frozen at once.
- A batch is posted only once its rows are committed; a launch stopped between any two chunks (and
  answers lost anywhere) is finished by a relaunch from a store opened afresh, each recipient sent
  once; and a batch is posted while a later chunk is still to be written (the overlap itself)."""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

import anyio
import pytest
from fake_gateway import FakeGateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_launch_set_based import RULES, SCHEDULES, TEMPLATES, TL, Sub, _definition, _people, _put, _stored, subs_st

from campaigns.errors import InvalidInput, StorageError
from campaigns.service import launch
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import Launcher, freeze, freeze_step
from campaigns.store import Store, open_store

T0 = 1_767_000_000.0


def _freeze_chunked(store: Store, tenant: str, camp: Any, chunk: int | None, now: float = T0) -> Any:
    """Freeze ``camp`` (in chunks of ``chunk`` recipients, every chunk written); the error if any."""
    try:
        assert freeze(store, tenant, camp, TL, now, chunk=chunk) is True
    except InvalidInput as exc:
        return ("error", exc.code, exc.field)
    if chunk is not None:
        for _ in range(10_000):
            if freeze_step(store, tenant, camp, TL, chunk) is None:
                break
    assert freeze(store, tenant, camp, TL, now + 60, chunk=chunk) is False  # frozen once
    return None


def _plan_rows(store: Store) -> int:
    with store._tx() as tx:  # type: ignore[attr-defined]
        return int(tx.one("SELECT COUNT(*) FROM campaign_plan")[0]) + int(tx.one("SELECT COUNT(*) FROM campaign_plan_texts")[0])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subs=subs_st, template=st.sampled_from(TEMPLATES), schedule=st.sampled_from(SCHEDULES),
       smart=st.sampled_from([0.0, 16.0]), batch_size=st.integers(1, 4), rules=st.sampled_from(RULES),
       chunk=st.integers(1, 9), interleave=st.booleans())  # fmt: skip
def test_a_chunked_freeze_stores_what_one_freeze_stores(tmp_path_factory: pytest.TempPathFactory, subs: list[Sub],
                                                        template: str, schedule: dict[str, Any], smart: float,
                                                        batch_size: int, rules: dict[str, Any], chunk: int,
                                                        interleave: bool) -> None:  # fmt: skip
    """Two campaigns over one audience under two tenants: under ``one`` each is frozen in one go,
    the first before the second; under ``chunk`` the first in chunks, and (``interleave``) the
    second planned and frozen while the first has only its first chunk written. Every column of
    both campaigns' rows, their batches, link ranges and codes' rows, and any error, agree."""
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('chunked') / 'c.db'}")
    try:
        ids = _people(store, subs, ("one", "chunk"))
        out: dict[str, Any] = {}
        for t in ("one", "chunk"):
            camps = []
            for k, tmpl in enumerate([template, "Again https://shop.example/again {first_name|}"]):
                c = store.put_campaign(t, f"c{k}", {**_definition(tmpl, schedule, smart, batch_size, rules, None),
                                                    "audience": {"subscribers": ids[t]}}, now=T0)  # fmt: skip
                camps.append(store.set_campaign_status(t, c.id, "launching", now=T0))
            if t == "one":
                errors = [_freeze_chunked(store, t, c, None) for c in camps]
            elif not interleave:
                errors = [_freeze_chunked(store, t, camps[0], chunk), _freeze_chunked(store, t, camps[1], None)]
            else:
                try:
                    assert freeze(store, t, camps[0], TL, T0, chunk=chunk) is True
                    first = None
                except InvalidInput as exc:
                    first = ("error", exc.code, exc.field)
                second = _freeze_chunked(store, t, camps[1], chunk)  # planned while the first is half written
                while first is None and freeze_step(store, t, camps[0], TL, chunk) is not None:
                    pass
                errors = [first, second]
            out[t] = (errors, [_stored(store, t, c.id) if e is None else None for c, e in zip(camps, errors, strict=True)])
        assert out["chunk"] == out["one"]
        assert _plan_rows(store) == 0  # nothing left planned once every chunk is written
    finally:
        store.close()


def test_a_chunked_freeze_on_both_engines(store: Store) -> None:
    """A fixed mixed audience on each engine (PostgreSQL's SQL differs: bytea, GREATEST, temp tables
    dropped at commit), in chunks of 4 recipients against one freeze."""
    subs: list[Sub] = [(["Ana", None, "李雷"][i % 3], [None, "en", "zh"][i % 3], [None, "Europe/Paris", "Asia/Shanghai",
                        "Not/AZone"][i % 4], "pending" if i % 7 == 3 else "confirmed", None if i % 3 else float(i * 3600))
                       for i in range(23)]  # fmt: skip
    ids = _people(store, subs, ("one", "chunk"))
    got = {}
    for t, chunk in (("one", None), ("chunk", 4)):
        c = store.put_campaign(t, "c", {**_definition(TEMPLATES[1].replace("{first_name}", "{first_name|you}"), SCHEDULES[3],
                                                      16.0, 3, RULES[2], 30.0), "audience": {"subscribers": ids[t]}}, now=T0)  # fmt: skip
        c = store.set_campaign_status(t, c.id, "launching", now=T0)
        assert freeze(store, t, c, TL, T0, chunk=chunk)
        if chunk is not None:
            assert store.plan_pending(t, c.id, 3) == 2  # two batches of 3 written, the rest planned
            steps = 0
            while freeze_step(store, t, c, TL, chunk) is not None:
                steps += 1
            assert steps >= 1
        got[t] = _stored(store, t, c.id)
        assert store.plan_pending(t, c.id, 3) is None
    assert got["chunk"] == got["one"] and len(got["one"][0]) > 10


# ---- through the launcher --------------------------------------------------------------------


def _subscriber(store: Store, i: int) -> int:
    return _put(store, "acme", i, ("Ana", "en", "Europe/Paris", "confirmed", None))


def _launcher(store: Store, gw: FakeGateway, chunk: int | None, now: float = T0) -> Launcher:
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    return Launcher(store, {"acme": client}, {"acme": TL}, lambda: now, freeze_chunk=chunk, stream_chunk=None)  # the plan in chunks, not a stream


def _committed_before_posted(store_path: str, gw: FakeGateway) -> list[str]:
    """Wrap the fake gateway: every job posted must find each of its recipients' rows committed
    (read on a connection of its own); the violations."""
    import sqlite3

    bad: list[str] = []
    inner = gw.handle

    def check(request: Any) -> Any:
        if request.url.path == "/v1/jobs" and request.method == "POST":
            body = request.content.decode().splitlines()
            batch = int(re.search(r"batch:(\d+)", body[0])[1])  # type: ignore[index]
            conn = sqlite3.connect(store_path)
            try:
                n = conn.execute("SELECT COUNT(*) FROM campaign_recipients WHERE tenant = 'acme' AND batch = ?",
                                 (batch,)).fetchone()[0]  # fmt: skip
            finally:
                conn.close()
            if n != len(body) - 1:
                bad.append(f"batch {batch}: {n} rows committed, {len(body) - 1} posted")
        return inner(request)

    gw.handle = check  # type: ignore[method-assign]
    return bad


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 14), batch_size=st.integers(1, 4), chunk=st.integers(1, 7),
       fail_at=st.lists(st.integers(1, 6), max_size=3), lost=st.lists(st.integers(1, 8), max_size=3))  # fmt: skip
def test_a_launch_stopped_between_any_two_chunks_is_finished_by_a_relaunch_sending_each_once(
        tmp_path_factory: pytest.TempPathFactory, n: int, batch_size: int, chunk: int, fail_at: list[int],
        lost: list[int]) -> None:  # fmt: skip
    """The k-th chunk's transaction fails (the process gone between two chunks: what it committed
    stays, nothing else), answers are lost after the gateway stored a job: each relaunch, on a store
    opened afresh on the same file, continues from the stored plan; in the end every recipient is
    sent once, in as many jobs as batches, no job posted before its rows were committed."""
    path = str(tmp_path_factory.mktemp("chunkcrash") / "c.db")
    store = open_store(f"sqlite:///{path}")
    ids = [_subscriber(store, i) for i in range(1, n + 1)]
    gw = FakeGateway()
    gw.lose_answer_of = set(lost)
    bad = _committed_before_posted(path, gw)
    calls = [0]
    failing = set(fail_at)

    def flaky(real: Any) -> Any:
        def step(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if calls[0] in failing:
                raise StorageError("killed between two chunks")
            return real(*a, **k)
        return step

    async def run() -> None:
        nonlocal store
        la = _launcher(store, gw, chunk)
        camp = await la.create("acme", "C", {"sender": "A", "template": "Sale https://s.io/x {first_name}",
                                             "batch_size": batch_size, "audience": {"subscribers": ids}})
        for attempt in range(40):
            store.freeze_next = flaky(store.freeze_next)  # type: ignore[method-assign]
            try:
                out = await _launcher(store, gw, chunk, now=T0 + attempt).launch("acme", camp.id)
                assert out.status == "launched" and out.accepted == n
                return
            except (StorageError, launch.GatewayError):
                store.close()  # the process is gone; the next one opens the file afresh
                store = open_store(f"sqlite:///{path}")
        raise AssertionError("never finished")

    try:
        anyio.run(run)
        assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, n + 1)})
        assert len(gw.jobs) == -(-n // batch_size) and bad == []
        assert _plan_rows(store) == 0
    finally:
        store.close()


def test_a_batch_is_posted_while_a_later_chunk_is_still_to_be_written(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The overlap: the second chunk's transaction waits (bounded) until the gateway holds batch 0;
    a launch that froze everything before posting would never get there (the wait runs out)."""
    path = str(tmp_path_factory.mktemp("overlap") / "c.db")
    store = open_store(f"sqlite:///{path}")
    try:
        ids = [_subscriber(store, i) for i in range(1, 10)]
        gw = FakeGateway()
        bad = _committed_before_posted(path, gw)
        posted = threading.Event()
        inner, real = gw.handle, store.freeze_next

        def handle(request: Any) -> Any:
            resp = inner(request)
            if request.url.path == "/v1/jobs":
                posted.set()
            return resp

        seen: list[bool] = []

        def slow_next(*a: Any, **k: Any) -> Any:
            seen.append(posted.wait(timeout=20))  # a condition, with a deadline
            return real(*a, **k)

        gw.handle = handle  # type: ignore[method-assign]
        store.freeze_next = slow_next  # type: ignore[method-assign]

        async def run() -> Any:
            la = _launcher(store, gw, 3)
            camp = await la.create("acme", "O", {"sender": "A", "template": "Sale https://s.io/x", "batch_size": 3,
                                                 "audience": {"subscribers": ids}})  # fmt: skip
            return await la.launch("acme", camp.id)

        out = anyio.run(run)
        assert out.status == "launched" and out.accepted == 9 and out.batches == 3
        assert seen and seen[0] is True and bad == []
        assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, 10)})
    finally:
        store.close()


def test_serve_chunks_by_default_on_postgresql_only() -> None:
    """Unset, ``launch_freeze_chunk`` chunks on PostgreSQL (20,000) and not on SQLite; 0 is one
    transaction anywhere; a number chunks anywhere. The config accepts 0 and refuses a negative."""
    from campaigns.config import loads
    from campaigns.service.launch import DEFAULT_FREEZE_CHUNK, freeze_chunk_for

    assert freeze_chunk_for(None, "sqlite") is None and freeze_chunk_for(None, "postgres") == DEFAULT_FREEZE_CHUNK
    assert freeze_chunk_for(0, "postgres") is None and freeze_chunk_for(5000, "sqlite") == 5000
    base = '[campaigns]\nlaunch_freeze_chunk = {}\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "K"\n'
    settings = loads(base.format(0))
    assert settings is not None and settings.launch_freeze_chunk == 0
    with pytest.raises(Exception, match="launch_freeze_chunk"):
        loads(base.format(-1))
