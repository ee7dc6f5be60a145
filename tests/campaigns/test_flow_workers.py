"""`serve` with its flow runtime in worker processes (``flow_workers = N``, campaigns/service/flow_workers.py):
the flows run to their end with every send once, on both engines; a worker killed with SIGKILL is
restarted by serve and nothing is lost or sent twice; a reply is applied by serve (the process that
receives it) and its send posted by the subscriber's worker; bad values of the key are refused
naming it. The gateway is the tests' fake in its own process (HTTP on loopback), which keeps each
Idempotency-Key's answer as the real one does; serve runs in this process; every wait is a bounded poll."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from bench.flows import TENANT, RemoteGateway, bulk_subscribers, crash_store, gateway_process, install, phone, runs_ended
from campaigns.config import CampaignSettings, loads
from campaigns.errors import ConfigError
from campaigns.service.server import serve
from campaigns.service.signature import HEADER, sign
from campaigns.store import open_store

pytestmark = pytest.mark.anyio

ENV = {"CK": "workers-campaigns-key", "GK": "bench-key", "WH": "whsec"}


def settings_for(url: str, workers: int | str = 2, flows_interval: float = 0.05) -> CampaignSettings:
    s = loads(f"""[campaigns]
store_url = "{url}"
port = 0
flows_interval = {flows_interval}
sync_interval = 3600
flow_workers = {json.dumps(workers)}

[[campaigns.tenants]]
name = "{TENANT}"
key_env = "CK"
gateway_key_env = "GK"
webhook_secret_env = "WH"
[campaigns.tenants.signup]
sender = "12345"
""")
    assert s is not None
    return s


async def poll(get: Callable[[], Awaitable[Any]], until: Callable[[Any], bool], timeout: float = 60.0) -> Any:
    with anyio.fail_after(timeout):
        while not until(got := await get()):
            await anyio.sleep(0.05)
    return got


@asynccontextmanager
async def serving(settings: CampaignSettings, gw: RemoteGateway) -> AsyncIterator[httpx.AsyncClient]:
    """``serve`` in this process until the block ends; yields a client of its API."""
    bound: list[int] = []
    ready = anyio.Event()

    def on_ready(p: int) -> None:
        bound.append(p)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(settings, gateway_url=gw.url, port=0, on_ready=on_ready, environ=ENV))
        with anyio.fail_after(30):
            await ready.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound[0]}", timeout=30,
                                     headers={"authorization": f"Bearer {ENV['CK']}"}) as c:  # fmt: skip
            yield c
        tg.cancel_scope.cancel()


async def counts(gw: RemoteGateway, url: str) -> tuple[int, int]:
    return await anyio.to_thread.run_sync(gw.count), await anyio.to_thread.run_sync(runs_ended, url)


def tally(gw: RemoteGateway, senders: list[int]) -> tuple[int, int]:
    """(lost sends, duplicate sends) as the gateway saw them, per recipient and step."""
    messages, _posts = gw.record()
    steps = Counter((m["to"], m["body"].split(" Reply STOP")[0]) for m in messages)
    wanted = {(phone(i), f"step {s}") for i in senders for s in ("one", "two")}
    return len(wanted - set(steps)), sum(n - 1 for n in steps.values() if n > 1)


async def workers_of(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.get("/healthz")
    assert r.status_code == 200, r.text
    return r.json()["flow_workers"]


async def test_serve_with_two_workers_runs_a_flow_to_its_end_with_every_send_once(store_url: str) -> None:
    runs = 40
    crash_store(store_url, runs, time.time(), send_every=3)  # senders in both shares
    senders = list(range(3, runs + 1, 3))
    share = [(runs // 2, 2 * sum(1 for i in senders if i % 2 == p)) for p in (0, 1)]
    with gateway_process() as gw:
        async with serving(settings_for(store_url, 2), gw) as c:
            health = await poll(lambda: workers_of(c), lambda h: h["alive"] == 2)
            assert (health["configured"], health["restarts"]) == (2, 0)
            pids = {w["pid"] for w in health["workers"]}
            assert len(pids) == 2 and os.getpid() not in pids  # the runtime's rounds are not serve's
            await poll(lambda: counts(gw, store_url), lambda n: n == (2 * len(senders), runs))
            # each worker took its own share (subscribers id % 2): half the inputs and sends each
            # (the counters reach /healthz within a second)
            done = await poll(lambda: workers_of(c), lambda h: [(w["inputs"], w["sent"]) for w in h["workers"]]
                              == share, timeout=20)  # fmt: skip
            assert done["alive"] == 2
        assert tally(gw, senders) == (0, 0)
    store = open_store(store_url)
    try:  # serve stopped its workers (by PID) when it stopped
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        store.close()


async def test_a_worker_killed_with_sigkill_is_restarted_and_nothing_is_lost_or_sent_twice(store_url: str) -> None:
    runs = 60
    crash_store(store_url, runs, time.time(), send_every=2)
    senders = list(range(2, runs + 1, 2))
    with gateway_process() as gw:
        async with serving(settings_for(store_url, 2), gw) as c:
            health = await poll(lambda: workers_of(c), lambda h: h["alive"] == 2)
            victim = health["workers"][0]["pid"]
            await poll(lambda: counts(gw, store_url), lambda n: n[0] >= 4)  # mid-run: first sends out, timers pending
            os.kill(victim, signal.SIGKILL)
            again = await poll(lambda: workers_of(c), lambda h: h["workers"][0]["starts"] == 2 and h["alive"] == 2)
            assert again["workers"][0]["pid"] != victim and again["workers"][0]["last_exit"] == -signal.SIGKILL
            assert again["restarts"] == 1 and again["workers"][1]["starts"] == 1
            await poll(lambda: counts(gw, store_url), lambda n: n == (2 * len(senders), runs))
        assert tally(gw, senders) == (0, 0)


KEYWORD_FLOW: dict[str, Any] = {
    "id": "quiz", "version": 1, "name": "Quiz", "trigger": {"type": "keyword", "keywords": ["QUIZ"]},
    "entry": "q", "nodes": {"q": {"type": "send", "template": "q"}}, "reentry": {"rule": "always"},
}  # fmt: skip


async def test_a_reply_is_applied_by_serve_and_its_send_posted_by_the_subscriber_s_worker(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    now = time.time()
    bulk_subscribers(store, 2, now)  # ids 1 and 2, consent confirmed: one in each worker's share
    sids, phones = [1, 2], {1: "+447911123401", 2: "+447911123402"}  # numbers the inbound path accepts
    with store._tx() as tx:  # type: ignore[attr-defined]
        for sid, p in phones.items():
            tx.run("UPDATE subscribers SET phone = ? WHERE tenant = ? AND id = ?", (p, TENANT, sid))
    install(store, KEYWORD_FLOW, {"q": "Question one"}, now)
    store.close()
    with gateway_process() as gw:
        async with serving(settings_for(sqlite_url, 2, flows_interval=60), gw) as c:  # idle workers poll once a minute
            await poll(lambda: workers_of(c), lambda h: h["alive"] == 2)
            for n, sid in enumerate(sids, 1):
                body = json.dumps({"inbound": [{"id": n, "from": phones[sid], "to": "12345", "text": "QUIZ", "at": now,
                                                "carrier": "x", "kind": "message", "keyword": None}]}).encode()  # fmt: skip
                r = await c.post(f"/v1/gateway/{TENANT}/inbound", content=body,
                                 headers={HEADER: sign(ENV["WH"], body, int(time.time()))})  # fmt: skip
                assert r.status_code == 204, r.text
            # both sends arrive long before the workers' next poll: each subscriber's worker was poked
            await poll(lambda: anyio.to_thread.run_sync(gw.count), lambda n: n == 2, timeout=20)
            # one each (ids 1 and 2 are two shares), as their counters say within a second
            await poll(lambda: workers_of(c), lambda h: [w["sent"] for w in h["workers"]] == [1, 1], timeout=20)
        messages, _ = gw.record()
        assert sorted(m["to"] for m in messages) == sorted(phones.values())


async def test_flow_workers_zero_keeps_the_runtime_in_serve(sqlite_url: str) -> None:
    crash_store(sqlite_url, 10, time.time(), send_every=2)
    with gateway_process() as gw:
        async with serving(settings_for(sqlite_url, 0), gw) as c:
            r = await c.get("/healthz")
            assert r.json() == {"status": "ok"}
            await poll(lambda: counts(gw, sqlite_url), lambda n: n == (10, 10))
        assert tally(gw, list(range(2, 11, 2))) == (0, 0)


@pytest.mark.parametrize("value", ["-1", "65", '"many"', "1.5", "true", '""'])
def test_a_bad_flow_workers_value_is_refused_naming_the_key(value: str, tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as err:
        loads(f"[campaigns]\nflow_workers = {value}\n")
    assert err.value.key == "campaigns.flow_workers"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[campaigns]\nflow_workers = {value}\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\n')
    from campaigns.cli import main

    r = CliRunner().invoke(main, ["campaigns", "check-config", "--skip-env", str(cfg)])
    assert r.exit_code == 2 and "campaigns.flow_workers" in r.output, r.output


def test_flow_workers_values() -> None:
    assert loads("[campaigns]\n").flow_workers == "auto"  # type: ignore[union-attr]
    for value, n in (("0", 0), ("3", 3), ('"auto"', None)):
        s = loads(f"[campaigns]\nflow_workers = {value}\n")
        assert s is not None and s.flow_worker_count(cpus=8) == (n if n is not None else s.flow_worker_count(cpus=8))
    auto = loads('[campaigns]\nflow_workers = "auto"\n')
    assert auto is not None
    assert auto.flow_worker_count(cpus=1) == 1 and auto.flow_worker_count(cpus=2) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_the_bench_runs_the_flows_as_serve_does(workers: int, tmp_path: Any) -> None:
    """`sluice bench flows --workers N` runs serve's supervisor and worker processes (0: the runtime's
    loop in the bench process); its default is serve's default."""
    from bench.flows import run, serve_default_workers

    r = run("sqlite", 300, 10, 1, 1.0, str(tmp_path), None, "events", workers)
    assert (r["workers"], r["runs_started"], r["inputs"], r["gateway_duplicate_keys"]) == (workers, 300, 300 + 3 * 60, 0)
    assert r["runs_advanced"] == 60 and len(r["worker_inputs"]) == workers  # the exits ended 60 runs
    assert run("sqlite", 50, 10, 1, 1.0, str(tmp_path), None, "events")["workers"] == serve_default_workers()
    assert serve_default_workers() == CampaignSettings().flow_worker_count()
