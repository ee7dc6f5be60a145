"""`sluice bench flows`: the flow runtime's throughput and timer lag, on SQLite or PostgreSQL, sending
to the fake gateway of tests/campaigns/fake_gateway.py served over real HTTP (loopback, uvicorn):
it keeps each Idempotency-Key's answer as the real gateway does.

1. Events: N subscribers (bulk-loaded, consent confirmed), a flow "checkout abandoned -> carts over
   $200 (1 in 20) get a send at once -> wait a day -> send" with the exit "order placed"; N
   checkout-abandoned events and N/5 orders
   go through the store's ``apply_events`` (which queues the flow inputs in the same transaction),
   then the runtime drains them (triggers and exits processed, runs started and advanced) and posts
   every send to the gateway (``POST /v1/messages/batch``, a key per message). ``events_per_s`` =
   (inputs processed + runs advanced + sends answered) / the wall time of that whole phase; each
   part's own rate is reported too, and the CPU time per unit of work (``*_cpu_us``: this process,
   and the gateway process's for the sends), which a loaded machine does not inflate as it does
   wall time. The orders' ingest between the two drains (``apply_events``: the events API's work)
   is inside that phase; ``flow_events_per_s`` / ``flow_events_cpu_us`` / ``drain_*`` leave it out.
   ``--workers N`` (N > 1): N drain processes, worker ``p`` draining the subscribers
   ``id % N == p``; each reports its CPU per input (``worker_input_cpu_us``). On PostgreSQL the
   server's CPU an event during the phase (``server_cpu_us``: all its processes, from /proc;
   ``server_flows_cpu_us``: without the bench process's own backend, the exits' ingest).
2. Timer lag: ``--timers`` runs waiting (default 1,000,000), of which ``--due`` fall due over the
   next ``--window`` seconds (the rest later); one worker on the real clock fires them;
   ``timer_lag_p99_s`` is the 99th percentile of (acted - due), "acted" being the commit of the
   transaction that fired the timer.

``python -m bench.flows worker --store URL --gateway URL`` runs only the runtime (the crash test's
process, killed with SIGKILL and restarted)."""

from __future__ import annotations

import contextlib
import os
import sys
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import msgspec

from bench.machine import describe
from bench.output import out_option, save
from campaigns.core import flows as F
from campaigns.core.events import CheckoutEvent, OrderEvent
from campaigns.store import Store, open_store

TENANT = "bench"
CRASH_FLOW: dict[str, Any] = {
    "id": "crash", "version": 1, "name": "Two sends a second apart (tagged subscribers), a timer for all",
    "trigger": {"type": "custom", "name": "go"}, "entry": "pick",
    "nodes": {"pick": {"type": "branch", "condition": {"op": "has_tag", "tag": "sends"}, "then": "one", "else": "wait"},
              "one": {"type": "send", "template": "one", "next": "wait"},
              "wait": {"type": "wait", "seconds": 1, "next": "pick2"},
              "pick2": {"type": "branch", "condition": {"op": "has_tag", "tag": "sends"}, "then": "two", "else": None},
              "two": {"type": "send", "template": "two"}},
    "reentry": {"rule": "always"},
}  # fmt: skip
EVENTS_FLOW: dict[str, Any] = {
    "id": "cart", "version": 1, "name": "Cart", "trigger": {"type": "checkout_abandoned"}, "entry": "value",
    "nodes": {"value": {"type": "branch", "condition": {"op": "gt", "field": "trigger.value", "value": 20_000},
                        "then": "now", "else": "day"},
              "now": {"type": "send", "template": "one", "next": "day"},
              "day": {"type": "wait", "seconds": 86_400, "next": "last"},
              "last": {"type": "send", "template": "two"}},
    "exits": [{"event": "order_placed"}],
}  # fmt: skip
TIMER_FLOW: dict[str, Any] = {
    "id": "timer", "version": 1, "name": "Timer", "trigger": {"type": "custom", "name": "t"},
    "entry": "w", "nodes": {"w": {"type": "wait", "seconds": 1, "next": "e"}, "e": {"type": "end"}},
}  # fmt: skip
_enc = msgspec.json.Encoder()


def phone(i: int) -> str:
    return f"+1555{i:07d}"


def fake_gateway() -> Any:
    """The tests' fake gateway (tests/campaigns/fake_gateway.py)."""
    here = Path(__file__).resolve().parent.parent / "tests" / "campaigns"
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    from fake_gateway import FakeGateway  # type: ignore[import-not-found]

    return FakeGateway()


@contextlib.contextmanager
def serve_http(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           lifespan="off"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the fake gateway did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class RemoteGateway:
    """The fake gateway in its own process (a server thread in the measuring process would share its
    GIL: every request would wait for thread switches). ``messages()`` / ``count()`` read its record."""

    def __init__(self, url: str, pid: int | None = None) -> None:
        self.url, self.pid = url, pid

    def cpu_s(self) -> float:
        """The gateway process's CPU time so far (user + system, /proc/PID/stat), 0 if unknown."""
        return _proc_cpu_s(self.pid) if self.pid else 0.0

    def count(self) -> int:
        import httpx

        return int(httpx.get(f"{self.url}/_count", timeout=30).json()["messages"])

    def record(self) -> tuple[list[dict[str, Any]], int]:
        import httpx

        data = httpx.get(f"{self.url}/_messages", timeout=120).json()
        return data["messages"], int(data["posts"])


class LocalGateway:
    """The fake gateway served from a thread of this process (fine for a few hundred messages)."""

    def __init__(self, fake: Any, url: str) -> None:
        self.fake, self.url = fake, url

    def count(self) -> int:
        return len(self.fake.messages)

    def record(self) -> tuple[list[dict[str, Any]], int]:
        return self.fake.sent_messages(), int(self.fake.message_posts)


@contextlib.contextmanager
def gateway_thread() -> Iterator[LocalGateway]:
    fake = fake_gateway()
    with serve_http(fake.asgi()) as url:
        yield LocalGateway(fake, url)


@contextlib.contextmanager
def gateway_process() -> Iterator[RemoteGateway]:
    """``python -m bench.flows fake-gateway`` on a free loopback port; stopped (by its PID) on exit."""
    import subprocess

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "bench.flows", "fake-gateway", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/_count", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the fake gateway process did not start") from None
                time.sleep(0.05)
        yield RemoteGateway(url, proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def _pg_server(store: Store) -> tuple[int, int]:
    """PostgreSQL: (the postmaster's PID, this store connection's backend PID), from /proc."""
    with store._tx() as tx:  # type: ignore[attr-defined]
        row = tx.one("SELECT pg_backend_pid()")
    backend = int(row[0]) if row else 0
    return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1]), backend


def _server_cpu_s(master: int) -> float:
    """The server's CPU so far: its processes' (the postmaster and its children) and the children the
    postmaster reaped (cutime, cstime), in 10 ms ticks."""
    total = 0.0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(d) == master:
                total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
            elif int(fields[1]) == master:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def bulk_subscribers(store: Store, n: int, now: float, *, tag_every: int = 0) -> None:
    """N confirmed subscribers (ids 1..N) and their stats rows, in one transaction; every
    ``tag_every``-th is tagged ``sends``."""
    with store._tx() as tx:  # type: ignore[attr-defined]
        sql = tx._sql("INSERT INTO subscribers (tenant, id, phone, created_at, consent, consent_at) VALUES (?, ?, ?, ?, 'confirmed', ?)")
        tx._cur.executemany(sql, [(TENANT, i, phone(i), now, now) for i in range(1, n + 1)])
        tx._cur.executemany(tx._sql("INSERT INTO subscriber_stats (tenant, subscriber_id) VALUES (?, ?)"),
                            [(TENANT, i) for i in range(1, n + 1)])  # fmt: skip
        if tag_every:
            tx._cur.executemany(tx._sql("INSERT INTO subscriber_tags (tenant, subscriber_id, tag) VALUES (?, ?, 'sends')"),
                                [(TENANT, i) for i in range(tag_every, n + 1, tag_every)])  # fmt: skip
        if store.engine == "postgres":
            tx.run("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), ?)", (n,))


def install(store: Store, flow: dict[str, Any], templates: dict[str, str], now: float) -> None:
    F.parse_flow(flow, templates=templates.keys())
    for tid, text in templates.items():
        store.put_flow_template(TENANT, tid, text, now=now)
    store.put_flow_version(TENANT, flow["id"], flow["name"], flow, now=now, new=True)
    store.set_flow_enabled(TENANT, flow["id"], True, now=now)


def queue_go(store: Store, n: int) -> None:
    """One ``custom go`` input per subscriber, queued as the store's hooks queue them."""
    with store._tx() as tx:  # type: ignore[attr-defined]
        rows = [(TENANT, i, _enc.encode(F.ShopEvent(id=f"go:{i}", kind="custom", name="go")).decode())
                for i in range(1, n + 1)]  # fmt: skip
        tx._cur.executemany(tx._sql("INSERT INTO flow_inputs (tenant, subscriber_id, event) VALUES (?, ?, ?)"), rows)


def crash_store(url: str, n: int, now: float, *, send_every: int = 1) -> None:
    store = open_store(url)
    try:
        bulk_subscribers(store, n, now, tag_every=send_every)
        install(store, CRASH_FLOW, {"one": "step one", "two": "step two"}, now)
        queue_go(store, n)
    finally:
        store.close()


def runs_ended(url: str) -> int:
    """How many of the bench tenant's runs have ended (the crash tests' count)."""
    store = open_store(url)
    try:
        with store.flow_tx(TENANT) as ftx:
            row = ftx.tx.one("SELECT COUNT(*) FROM flow_runs WHERE tenant = ? AND state = 'ended'", (TENANT,))
        return int(row[0]) if row else 0
    finally:
        store.close()


# ---- the worker process (crash test) -----------------------------------------------------------


def worker_main(store_url: str, gateway_url: str, part: int = 0, parts: int = 1) -> None:
    import anyio

    from campaigns.service.flow_runtime import FlowRuntime, TenantFlows
    from campaigns.service.gateway_client import GatewayClient

    async def main() -> None:
        store = open_store(store_url)
        client = GatewayClient(gateway_url, "bench-key")
        rt = FlowRuntime(store, {TENANT: client}, {TENANT: TenantFlows(sender="BENCH")}, time.time, batch=500,
                         send_concurrency=32, part=part, parts=parts)  # fmt: skip
        await rt.run(interval=0.05)

    anyio.run(main)


# ---- the bench ------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _analyze(store: Store) -> None:
    """PostgreSQL: planner statistics for what was just bulk-loaded (autovacuum would take them a
    minute later; without them the orders' ingest between the drains was planned for empty tables:
    134 s for 4,000 orders at 20,000 subscribers, load 16)."""
    if store.engine == "postgres":
        with store._tx() as tx:  # type: ignore[attr-defined]
            tx.run("ANALYZE")


def bench_settings(url: str) -> Any:
    """The campaigns settings of the bench's shop, as a user's config would give them (serve's
    defaults: batch sizes, ``flows_interval``), its gateway key in ``BENCH_ENV``."""
    from campaigns.config import CampaignSettings

    return msgspec.convert({"store_url": url, "tenants": [{"name": TENANT, "key_env": "BENCH_CAMPAIGNS_KEY",
                                                            "gateway_key_env": "BENCH_GATEWAY_KEY",
                                                            "signup": {"sender": "BENCH"}}]}, CampaignSettings)  # fmt: skip


BENCH_ENV = {"BENCH_GATEWAY_KEY": "bench-key"}


def serve_default_workers() -> int:
    """How many flow worker processes ``serve`` runs with the default config on this machine."""
    from campaigns.config import CampaignSettings

    return CampaignSettings().flow_worker_count()


def _flows_busy(store: Store, sends_too: bool) -> bool:
    """Whether the flows still have work: an input queued, or (``sends_too``) a send pending. Each read
    stops at its first row, in an index's order: the bench asks every 20 ms while the workers run,
    and the ``COUNT(*)`` of the queue it made before read every row, dead ones too (on PostgreSQL a
    sequential scan of the drained table: 30 ms a read at 100,000 subscribers, 16 s of the server's
    CPU in a 50 s phase, taken from the workers it measures, and quadratic in the subscribers)."""
    with store._tx() as tx:  # type: ignore[attr-defined]
        if tx.one("SELECT 1 FROM flow_inputs WHERE tenant = ? ORDER BY id LIMIT 1", (TENANT,)) is not None:
            return True
        return sends_too and tx.one("SELECT 1 FROM flow_outbox WHERE state = 'pending' AND tenant = ? "
                                    "ORDER BY created_at LIMIT 1", (TENANT,)) is not None  # fmt: skip


def events_phase(url: str, n: int, gw: RemoteGateway, workers: int) -> dict[str, Any]:
    """The flows as ``serve`` runs them (``campaigns.flow_workers = workers``): 0, the runtime's
    loop (``FlowRuntime.run``) in this process; N, serve's supervisor (``FlowWorkers``) and its N
    worker processes, started by the same code. The runtime drains, fires and posts on its own
    while the bench ingests and waits for the queue and the outbox to be empty (two reads every 20 ms,
    each stopping at its first row)."""
    import anyio

    from campaigns.service.flow_workers import FlowWorkers, WorkerStart, open_runtime

    now = time.time()
    store = open_store(url)
    bulk_subscribers(store, n, now - 100)
    install(store, EVENTS_FLOW, {"one": "Your cart: {checkout_url|our shop}", "two": "Last call"}, now)
    events = [(CheckoutEvent(id=f"c{i}", at=now - 50, checkout_id=f"c{i}", phone=phone(i), status="abandoned",
                             value=1000 + i % 20_000, url=f"https://shop.example/c/{i}"), phone(i)) for i in range(1, n + 1)]
    exits = [(OrderEvent(id=f"o{i}", at=now - 10, order_id=f"o{i}", phone=phone(i), total=100, currency="USD",
                         payment_status="paid", checkout_id=f"c{i}"), phone(i)) for i in range(1, n + 1, 5)]  # fmt: skip
    settings = bench_settings(url)
    _analyze(store)
    cpu: dict[str, float] = {}
    counters: list[dict[str, Any]] = []
    pids: list[int] = []

    async def until_done(wake: Any, sends_too: bool) -> None:
        wake()  # the ingest's inputs are queued: look now (serve's runtime polls every flows_interval)
        while True:
            if not await anyio.to_thread.run_sync(_flows_busy, store, sends_too):
                return
            await anyio.sleep(0.02)

    server = _pg_server(store) if store.engine == "postgres" else None

    async def measured(wake: Any) -> float:
        """From the clock's start to the last send answered; the exits' ingest timed apart. On
        PostgreSQL the server's CPU too, and this process's backend's (the exits' ingest, the reads
        of "done"): the rest is the flows' share."""
        t1 = time.perf_counter()
        if server is not None:
            cpu.update(server_cpu_s=-_server_cpu_s(server[0]), bench_backend_cpu_s=-_proc_cpu_s(server[1]))
        await until_done(wake, False)
        t2, c2 = time.perf_counter(), time.process_time()
        for chunk in range(0, len(exits), 2000):
            store.apply_events(TENANT, exits[chunk:chunk + 2000], now=time.time())
        cpu.update(exits_ingest_s=time.perf_counter() - t2, exits_ingest_cpu_s=time.process_time() - c2)
        await until_done(wake, True)
        if server is not None:
            cpu["server_cpu_s"] += _server_cpu_s(server[0])
            cpu["bench_backend_cpu_s"] += _proc_cpu_s(server[1])
        return time.perf_counter() - t1

    async def main() -> float:
        pool = FlowWorkers(settings, gw.url, BENCH_ENV, workers) if workers else None
        if pool is not None:
            pool.spawn()  # imported and waiting while the checkouts are ingested (outside the clock)
        t0 = time.perf_counter()
        for chunk in range(0, n, 2000):  # the events API's bulk path: applied, and flow inputs queued, per transaction
            store.apply_events(TENANT, events[chunk:chunk + 2000], now=now)
        cpu["ingest_s"] = time.perf_counter() - t0
        _analyze(store)
        if pool is None:
            start = WorkerStart(settings=settings, gateway_url=gw.url, environ=BENCH_ENV, part=0, parts=1)
            async with open_runtime(start) as rt, anyio.create_task_group() as tg:
                c0, g0 = time.process_time(), gw.cpu_s()
                tg.start_soon(lambda: rt.run(interval=settings.flows_interval))
                total_s = await measured(rt.wake)
                cpu.update(flows_cpu_s=time.process_time() - c0 - cpu["exits_ingest_cpu_s"],
                           gateway_send_cpu_s=gw.cpu_s() - g0)  # fmt: skip
                counters.append(msgspec.to_builtins(rt.statistics()))
                tg.cancel_scope.cancel()
            return total_s
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run)
            await pool.wait_ready()  # each opened the store and reported (then the clock starts)
            pids.extend(p for p in pool.pids if p is not None)
            w0, g0 = [_proc_cpu_s(p) for p in pids], gw.cpu_s()
            total_s = await measured(pool.wake)
            w1 = [_proc_cpu_s(p) for p in pids]
            cpu.update(flows_cpu_s=sum(w1) - sum(w0), gateway_send_cpu_s=gw.cpu_s() - g0)
            cpu["worker_cpu_s"] = [b - a for a, b in zip(w0, w1)]  # type: ignore[assignment]
            with anyio.fail_after(30):  # their counters reach us within a quarter second
                while True:
                    got = pool.counters()
                    if sum(int(c.get("sent", 0)) for c in got) >= gw.count() and all(got):
                        await anyio.sleep(0.3)
                        counters.extend(pool.counters())
                        break
                    await anyio.sleep(0.05)
            if any(s.starts != 1 for s in pool.statistics()):
                raise RuntimeError(f"a flow worker was restarted during the bench: {pool.health()}")
            tg.cancel_scope.cancel()
        return total_s

    try:
        total_s = anyio.run(main)
    finally:
        store.close()

    def total(f: str) -> float:
        return sum(float(c.get(f, 0)) for c in counters)

    inputs, started, advanced, sent = (int(total(f)) for f in ("inputs", "started", "advanced", "sent"))
    messages, _posts = gw.record()
    keys = [m["key"] for m in messages]
    processed = inputs + advanced + sent
    flow_s = total_s - cpu["exits_ingest_s"]
    worker_cpu = cpu.pop("worker_cpu_s", [])
    return {"events": n + len(exits), "inputs": inputs, "runs_started": started, "runs_advanced": advanced,
            "sends": sent, "gateway_messages": len(messages), "gateway_duplicate_keys": len(keys) - len(set(keys)),
            "ingest_s": cpu["ingest_s"], "events_phase_s": total_s, "workers": workers,
            "runtime": f"{workers} worker processes (serve's FlowWorkers)" if workers else "in the bench process (serve's flow_workers = 0)",
            "events_per_s": processed / total_s, "flow_events_per_s": processed / flow_s,
            **cpu,
            # CPU per unit of work: the runtime's processes (drains, timers and sends, which overlap
            # as in serve); with the orders' ingest (this process) for events_cpu_us
            "flow_events_cpu_us": cpu["flows_cpu_s"] / max(processed, 1) * 1e6,
            "events_cpu_us": (cpu["flows_cpu_s"] + cpu["exits_ingest_cpu_s"]) / max(processed, 1) * 1e6,
            "input_cpu_us": cpu["flows_cpu_s"] / max(inputs, 1) * 1e6,
            "gateway_send_cpu_us": cpu["gateway_send_cpu_s"] / max(sent, 1) * 1e6,
            # PostgreSQL: the server's CPU an event, all of it and without the bench's own backend
            **({"server_cpu_us": cpu["server_cpu_s"] / max(processed, 1) * 1e6,
                "server_flows_cpu_us": (cpu["server_cpu_s"] - cpu["bench_backend_cpu_s"]) / max(processed, 1) * 1e6}
               if "server_cpu_s" in cpu else {}),
            # SQLite: batches decided in a read snapshot and written as planned / found stale and redone
            "batches_planned": int(total("planned")), "batches_redone": int(total("redone")),
            "write_lock_cpu_share": total("write_cpu_s") / max(cpu["flows_cpu_s"], 1e-9),
            "write_wait_s": total("write_wait_s"), "write_hold_s": total("write_hold_s"),
            # each worker process's CPU per input it applied, and its inputs
            "worker_input_cpu_us": [w / max(int(c.get("inputs", 0)), 1) * 1e6 for w, c in zip(worker_cpu, counters)],
            "worker_inputs": [int(c.get("inputs", 0)) for c in counters] if workers else []}  # fmt: skip


def timers_phase(url: str, timers: int, due: int, window: float) -> dict[str, Any]:
    import anyio

    from campaigns.service.flow_runtime import FlowRuntime, TenantFlows

    store = open_store(url)
    now = time.time()
    install(store, TIMER_FLOW, {}, now)
    t0 = time.perf_counter()
    sql_text = ("INSERT INTO flow_runs (tenant, run_key, flow_id, version, subscriber_id, node, visit, state, "
                "started_at, updated_at, due, run) VALUES (?, ?, 'timer', 1, ?, 'w', 1, 'active', ?, ?, ?, ?)")

    def load(ids: range, due_of: Any) -> None:
        with store._tx() as tx:  # type: ignore[attr-defined]
            sql, batch = tx._sql(sql_text), []
            for i in ids:
                d = due_of(i)
                run = F.Run(id=f"timer:{i}:t", flow_id="timer", version=1, subscriber_id=i, started_at=now, node="w",
                            visit=1, timer_due=d, waiting_since=now)  # fmt: skip
                batch.append((TENANT, run.id, i, now, now, d, _enc.encode(run).decode()))
                if len(batch) == 20_000:
                    tx._cur.executemany(sql, batch)
                    batch = []
            if batch:
                tx._cur.executemany(sql, batch)

    load(range(due, timers), lambda i: now + 86_400 + i)  # the pending mass: due tomorrow and later
    if store.engine == "postgres":
        with store._tx() as tx:  # type: ignore[attr-defined]
            tx.run("ANALYZE flow_runs")
    start = time.time() + 3.0  # then the ones that fall due during the run, from 3 s after loading
    load(range(due), lambda i: start + i * window / due)
    load_s = time.perf_counter() - t0

    async def fire() -> list[float]:
        rt = FlowRuntime(store, {}, {TENANT: TenantFlows(sender="BENCH")}, time.time, batch=1000)
        rt.tenant_names = [TENANT]
        deadline = time.time() + window + 3.0 + max(0.0, start - time.time())
        while time.time() < deadline:
            did = await rt.round()
            if not did:
                await anyio.sleep(0.02)
        return rt.lags

    lags = anyio.run(fire)
    store.close()
    return {"timers": timers, "timers_due": due, "timers_fired": len(lags), "window_s": window, "load_s": load_s,
            "timer_lag_p99_s": _pct(lags, 0.99), "timer_lag_p50_s": _pct(lags, 0.50),
            "timer_lag_max_s": max(lags) if lags else 0.0}  # fmt: skip


@contextlib.contextmanager
def _engine_url(engine: str, workdir: str | None, name: str) -> Iterator[str]:
    if engine == "postgres":
        from bench.audience import throwaway_postgres

        with throwaway_postgres(durable=True) as url:  # fsync and commits as a user's server
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix=f"sluice-bench-flows-{name}-", dir=workdir) as tmp:
            yield f"sqlite:///{tmp}/campaigns.db"


def run(engine: str, n: int, timers: int, due: int, window: float, workdir: str | None,
        crash: str | None, phase: str = "all", workers: int | None = None) -> dict[str, Any]:  # fmt: skip
    ev: dict[str, Any] = {}
    tm: dict[str, Any] = {}
    if phase in ("all", "events"):
        with gateway_process() as gw, _engine_url(engine, workdir, "events") as url:
            ev = events_phase(url, n, gw, serve_default_workers() if workers is None else workers)
    if phase in ("all", "timers"):
        with _engine_url(engine, workdir, "timers") as url:
            tm = timers_phase(url, timers, due, window)
    out: dict[str, Any] = {"scenario": "flows", "engine": engine, "subscribers": n, "gateway": "fake (tests/campaigns/fake_gateway.py, own process, HTTP on loopback)",
                           **ev, **tm, "load": os.getloadavg()[0], "machine": describe()}  # fmt: skip
    if crash:  # the crash test's figures (tests/campaigns/test_flow_crash.py writes them)
        data = msgspec.json.decode(Path(crash).read_bytes())
        out.update({k: data[k] for k in ("lost", "duplicates", "kills", "runs") if k in data})
    return out


@click.group("flows", invoke_without_command=True)
@click.option("--subscribers", "n", default=100_000, show_default=True, help="Subscribers (one checkout each).")
@click.option("--engine", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--timers", default=1_000_000, show_default=True, help="Pending timers in the due-time index.")
@click.option("--due", default=10_000, show_default=True, help="How many of them fall due during the run.")
@click.option("--window", default=20.0, show_default=True, help="Seconds over which those fall due.")
@click.option("--phase", type=click.Choice(["all", "events", "timers"]), default="all", show_default=True)
@click.option("--workers", default="auto", show_default=True,
              help="The flows as serve's campaigns.flow_workers runs them: 0, in the bench process; N, N worker "
                   "processes (serve's supervisor, each its share of the subscribers); auto, serve's default here.")
@click.option("--crash-json", "crash", default=None, type=click.Path(dir_okay=False),
              help="The crash test's result (lost, duplicates) to include.")
@click.option("--workdir", default=None, type=click.Path(file_okay=False), help="Where the SQLite files go.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
@click.pass_context
def bench_flows(ctx: click.Context, n: int, engine: str, timers: int, due: int, window: float, phase: str, workers: str,
                crash: str | None, workdir: str | None, json_path: str | None, out_dir: str | None) -> None:  # fmt: skip
    """Flow runtime: events/s through triggers, exits and sends; timer lag with 1M pending timers."""
    if ctx.invoked_subcommand is not None:
        return
    count = serve_default_workers() if workers == "auto" else int(workers) if workers.isdigit() else -1
    if not 0 <= count <= 64:
        raise click.BadParameter("0 to 64, or auto", param_hint="--workers")
    if n < 1 or timers < 1 or not 1 <= due <= timers or window <= 0:
        raise click.BadParameter("--subscribers >= 1, --timers >= 1, 1 <= --due <= --timers, --window > 0")
    r = run(engine, n, timers, due, window, workdir, crash, phase, count)
    click.echo(f"sluice bench flows: {engine}, {n:,} subscribers, {timers:,} timers ({due:,} due in {window:g} s)")
    for key in ("events_per_s", "inputs_per_s", "sends_per_s", "events_cpu_us", "input_cpu_us", "send_cpu_us",
                "flow_events_per_s", "drain_inputs_per_s", "flow_events_cpu_us", "drain_input_cpu_us",
                "gateway_send_cpu_us", "server_cpu_us", "server_flows_cpu_us", "runs_started", "runs_advanced", "sends",
                "gateway_duplicate_keys", "timer_lag_p50_s", "timer_lag_p99_s", "timers_fired"):  # fmt: skip
        if key in r:
            click.echo(f"  {key:<28} {r[key]:>14,.3f}")
    if r.get("worker_input_cpu_us"):
        click.echo(f"  {'worker_input_cpu_us':<28} {' / '.join(f'{v:,.1f}' for v in r['worker_input_cpu_us'])}")
    if any(r.get("worker_server_cpu_us") or ()):
        click.echo(f"  {'worker_server_cpu_us':<28} {' / '.join(f'{v:,.1f}' for v in r['worker_server_cpu_us'])}")
    save(r, json_path, out_dir)


@bench_flows.command("fake-gateway")
@click.option("--port", type=int, required=True)
def fake_gateway_cmd(port: int) -> None:
    """Serve tests/campaigns/fake_gateway.py over HTTP on 127.0.0.1:PORT until killed."""
    import uvicorn

    uvicorn.run(fake_gateway().asgi(), host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")


@bench_flows.command("worker")
@click.option("--store", "store_url", required=True)
@click.option("--gateway", "gateway_url", required=True)
@click.option("--part", type=int, default=0, show_default=True)
@click.option("--parts", type=int, default=1, show_default=True)
def worker(store_url: str, gateway_url: str, part: int, parts: int) -> None:
    """Run the flow runtime alone until killed (the crash test's process; worker ``part`` of ``parts``)."""
    worker_main(store_url, gateway_url, part, parts)


if __name__ == "__main__":
    bench_flows()
