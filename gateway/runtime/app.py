"""`sluice serve`: one process, one anyio task group: HTTP API, dispatcher, carrier connectors.

Start-up: open the store, recover every accepted message that is not final, open the connectors,
give them back the carrier ids of messages they took before (their receipts may still come), then
serve. Messages that may have been on the wire when the process died go again: docs/ARCHITECTURE.md,
"Recovery".
Shutdown on SIGTERM/SIGINT: stop accepting HTTP, stop dispatching, let the connectors finish
what is in flight and unbind, write the last state changes, close the store.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

import anyio
import anyio.abc
import sniffio
import msgspec

from carriers.base import ConnectorEvent
from carriers.http.connector import HttpConnector
from carriers.smpp.connector import SmppConnector
from gateway.api.app import Api, Response, hash_key
from gateway.config import Config, Operator, Tenant, target_policy
from gateway.core import zones
from gateway.core.scheduler import Scheduler
from gateway.errors import ConfigError, ListenError
from gateway.runtime.dispatcher import Dispatcher
from gateway.runtime.health import watch_carriers
from gateway.runtime.inbound import InboundPipeline, InboundSender
from gateway.runtime.ingest import CheckPool
from gateway.runtime.metrics import GcTimes, Metrics
from gateway.runtime.service import Gateway
from gateway.runtime.store_lock import hold_store
from gateway.runtime.webhook_process import DeliveryProcess, Start
from gateway.runtime.webhooks import WebhookSender
from gateway.store import open_store
from gateway.store.sqlite import SqliteStore

__all__ = ["operator_table", "serve", "tenant_table", "webhook_secrets"]

log = logging.getLogger(__name__)

_Keyed = TypeVar("_Keyed", Tenant, Operator)  # a config entry with key_sha256 / key_env


def tenant_table(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, Tenant]:
    """SHA-256 of each tenant's key -> tenant. Keys from the environment are hashed at once."""
    return _key_table(cfg.api.tenants, "api.tenants", environ)


def operator_table(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, Operator]:
    """SHA-256 of each operator's key -> operator (as ``tenant_table``)."""
    return _key_table(cfg.api.operators, "api.operators", environ)


def _key_table(entries: Sequence[_Keyed], section: str, environ: dict[str, str] | None) -> dict[str, _Keyed]:
    env = os.environ if environ is None else environ
    table: dict[str, _Keyed] = {}
    for i, entry in enumerate(entries):
        digest = entry.key_sha256
        if digest is None:
            key = env.get(entry.key_env or "")
            if not key:
                raise ConfigError(f"environment variable {entry.key_env!r} is not set", key=f"{section}[{i}].key_env")
            digest = hash_key(key)
        if digest in table:  # two variables holding one key: each client its own
            raise ConfigError(f"the same key as {table[digest].name!r}'s (each client its own key)",
                              key=f"{section}[{i}].key_env")  # fmt: skip
        table[digest] = entry
    return table


def webhook_secrets(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Tenant name -> webhook signing secret, from the variables named by ``webhook_secret_env``.
    A tenant without ``webhook_secret_env`` gets unsigned webhooks (the sender warns once); a
    variable named but not set is a config error, as for API keys. Secrets are never logged."""
    env = os.environ if environ is None else environ
    secrets: dict[str, str] = {}
    for i, t in enumerate(cfg.api.tenants):
        if t.webhook_secret_env is None:
            continue
        secret = env.get(t.webhook_secret_env)
        if not secret:
            raise ConfigError(f"environment variable {t.webhook_secret_env!r} is not set",
                              key=f"api.tenants[{i}].webhook_secret_env")  # fmt: skip
        secrets[t.name] = secret
    return secrets


async def serve(cfg: Config, *, on_ready: Callable[[int], None] | None = None) -> None:
    clock = time.time
    tenants = tenant_table(cfg)
    operators = operator_table(cfg)
    if not cfg.api.tenants:  # the embedded config: nobody can call the API (README, "Try it on your machine")
        log.warning("serve.no_tenants: the config has no [[api.tenants]]: every /v1/ request is answered 401")
    unlinked = sorted({c.name for c in cfg.core.carriers} - {link.name for link in [*cfg.carriers.smpp, *cfg.carriers.http]})
    if unlinked:  # routed to, never sent: their messages wait in the queue
        log.warning("serve.carriers_without_link carriers=%s: no [[carriers.smpp]] or [[carriers.http]] for them",
                    ",".join(unlinked))  # fmt: skip
    secrets = webhook_secrets(cfg)
    path = cfg.store.url.removeprefix("sqlite:///") if cfg.store.url.startswith("sqlite:///") else None
    held = hold_store(path) if path and path != ":memory:" else None  # one serve per store (store_lock.py)
    try:
        await _serve_store(cfg, clock, tenants, operators, secrets, path, on_ready)
    finally:
        if held is not None:
            os.close(held)


async def _serve_store(cfg: Config, clock: Callable[[], float], tenants, operators, secrets: dict[str, str],
                       path: str | None, on_ready: Callable[[int], None] | None) -> None:  # fmt: skip
    store = open_store(cfg.store.url) if path is None else SqliteStore(path, synchronous=cfg.store.synchronous)
    core = Scheduler(cfg.core, clock())
    targets = target_policy(cfg)  # where callback_url and inbound_url may point (SSRF)
    async with contextlib.AsyncExitStack() as stack:
        webhooks = await _webhooks(stack, cfg, store, secrets, clock, targets)
        forwarder = await stack.enter_async_context(InboundSender(store, cfg.webhooks, secrets, clock=clock,
                                                                  targets=targets))  # fmt: skip

        gateway = Gateway(core, store, on_outbox=webhooks.poke, pool=_pool(cfg))
        # Every carrier's taken messages wait for their receipts (or their horizon), HTTP as
        # well as SMPP: both connectors match receipts of an earlier process (expect_receipts).
        links = [*cfg.carriers.smpp, *cfg.carriers.http]
        recovered = await gateway.recover(clock(), carriers={link.name for link in links})
        log.info("serve.recovered queued=%d awaiting_receipts=%d capped_sends=%d", recovered.queued,
                 len(recovered.awaiting), recovered.capped_sends)  # fmt: skip
        send, receive = anyio.create_memory_object_stream[ConnectorEvent](max_buffer_size=100_000)
        connectors = {}
        for link in cfg.carriers.smpp:
            connectors[link.name] = await stack.enter_async_context(SmppConnector(
                link, send.clone(), deferred_acks=link.answer_receipts == "after_write"))
        for link in cfg.carriers.http:
            connectors[link.name] = await stack.enter_async_context(HttpConnector(
                link, send.clone(), deferred_acks=link.answer_receipts == "after_write"))
        send.close()
        for mid, carrier, ids in recovered.awaiting:
            connectors[carrier].expect_receipts(mid, ids)
        # One inbound pipeline for SMPP MOs and HTTP carriers' inbound callbacks alike: both
        # arrive as Inbound events on the connectors' stream (gateway/runtime/inbound.py).
        inbound = InboundPipeline(gateway, cfg.api.tenants, clock=clock, reply_category=cfg.inbound.reply_category,
                                  on_forward=forwarder.poke, settings=cfg.inbound,
                                  regions={c.name: c.default_region for c in cfg.core.carriers if c.default_region},
                                  acknowledge=lambda carrier, acks: connectors[carrier].acknowledge(acks))  # fmt: skip
        dispatcher = Dispatcher(core, connectors, receive, store, clock=clock, on_outbox=webhooks.poke,
                                on_inbound=inbound.feed,
                                windows={link.name: link.window * link.binds for link in cfg.carriers.smpp})  # fmt: skip
        gateway.on_admitted = dispatcher.poke
        stack.enter_context(_tuned_interpreter())
        gc_times = stack.enter_context(GcTimes())
        metrics = Metrics(core, connectors, clock, lambda: dispatcher.stats, dispatcher.receipt_latency,
                          webhooks=webhooks.statistics, gc_times=gc_times)
        extra = {
            "/metrics": _metrics(metrics),
            "/healthz": _static(b'{"status":"ok"}'),
            "/readyz": _ready(gateway.pool),
            "/v1/carriers": _carriers(core, connectors, clock),
        }
        callbacks = {name: c.callback for name, c in connectors.items() if isinstance(c, HttpConnector)}
        api = Api(gateway, tenants, clock=clock, max_body=cfg.api.max_body_bytes, body_timeout=cfg.api.body_timeout,
                  extra=extra, callbacks=callbacks, targets=targets, operators=operators)  # fmt: skip
        probe = {name: c.settings.probe_after for name, c in connectors.items() if isinstance(c, HttpConnector)}
        background = [inbound.run, forwarder.run, partial(watch_carriers, core, connectors, clock=clock,
                                                          on_change=dispatcher.poke, probe_after=probe)]  # fmt: skip
        if gateway.pool is not None:
            background.append(gateway.pool.warm)  # the ingest workers start while we wait
        # Built before we listen, not on the event loop at the first US number (seconds, loaded).
        await anyio.to_thread.run_sync(zones.prepare)
        await _run(api, dispatcher, webhooks, cfg, _own_port(targets, cfg, on_ready), background)
        await dispatcher.flush()
    store.close()


async def _webhooks(stack: contextlib.AsyncExitStack, cfg: Config, store, secrets: dict[str, str],
                    clock: Callable[[], float], targets) -> WebhookSender | DeliveryProcess:  # fmt: skip
    """Webhook delivery: its own process for a SQLite file (``webhooks.delivery = "process"``,
    the default; gateway/runtime/webhook_process.py), else a task of this event loop."""
    if cfg.webhooks.delivery == "process" and isinstance(store, SqliteStore) and store.path != ":memory:":
        process = DeliveryProcess(Start(store_path=store.path, settings=cfg.webhooks, secrets=secrets, own=[]),
                                  own=lambda: sorted(targets.own))  # the API's port once bound  # fmt: skip
        # At once when webhooks are expected (events left by an earlier process, or a tenant that
        # signs them); else at the first event written (a server without webhooks runs none).
        if secrets or store.hook_next_at() is not None:
            process.spawn()
        stack.push_async_callback(process.aclose)  # never left behind, whatever happens next
        return process
    return await stack.enter_async_context(WebhookSender(store, cfg.webhooks, secrets, clock=clock, targets=targets))


def _own_port(targets, cfg: Config, on_ready: Callable[[int], None] | None) -> Callable[[int], None]:
    """Once bound (``--port 0`` picks one): the API's port is one of our own endpoints too."""
    def ready(port: int) -> None:
        targets.add_own(cfg.api.host, port)
        if on_ready:
            on_ready(port)

    return ready


def _pool(cfg: Config) -> CheckPool | None:
    n = cfg.api.ingest_workers
    if n == "auto":
        n = min(os.cpu_count() or 1, 8)
    return CheckPool(cfg.core, n) if n else None


@contextlib.contextmanager
def _tuned_interpreter():
    """Tune the interpreter for a long-running, high-rate service: the cyclic garbage collector
    made cheap, and the GIL handed to the store's writer thread sooner (below).

    Every message makes a few short-lived containers (a dispatch, its PDU bodies, two state
    changes) that live a few milliseconds. With the default thresholds (a young collection every
    700 allocations) many of them are caught alive, promoted, and trigger full collections every
    second or so; each full collection walks every long-lived object, including phonenumbers'
    metadata tables (a 287k-entry geocoder dict once a NANP number was seen): ~75 ms of CPU each,
    10-20% of the event loop's time at 10k messages/s (measured with gc.callbacks). A young
    generation of 50k allocations lets them die young (they are freed by reference counting, not
    by the collector), and freezing what start-up made (modules, config, recovered state) keeps
    it out of every later full collection. Cyclic garbage is still collected, only less often.
    Undone on the way out (``serve`` also runs inside test processes)."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
    # The store writes in a worker thread and releases the GIL inside SQLite; getting it back
    # while the event loop runs Python waits up to the switch interval (5 ms by default) each
    # time. A write of 200 changes with another thread busy: 7.1 ms at the default, 2.3 ms at
    # 0.5 ms (`python -m bench.store_record --contend --switch 0.005` / `0.0005`). Writes are on
    # the critical path (windows and receipts wait for them: gateway/runtime/dispatcher.py).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
        sys.setswitchinterval(switch)


async def _run(api: Api, dispatcher: Dispatcher, webhooks: WebhookSender | DeliveryProcess, cfg: Config, on_ready,
               background: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:  # fmt: skip
    """Dispatcher and HTTP server side by side until SIGTERM/SIGINT, then stop the server first
    (no new work), then everything else. uvicorn on asyncio (with uvloop), Hypercorn on trio."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        for task in background:  # the inbound pipeline, its forwarder, the carrier health watch
            tg.start_soon(task)
        web = _hypercorn if sniffio.current_async_library() == "trio" else _uvicorn
        port = await tg.start(web, api, cfg, stop, tg.cancel_scope)
        log.info("serve.listening host=%s port=%d", cfg.api.host, port)
        if on_ready:
            on_ready(port)
        # Its own process (or task): a slow receiver never holds up dispatch. Started once the
        # API's port is known (never a webhook's target); stopped with the rest at shutdown; a
        # round cut short is sent again (the cursors move only on a 2xx).
        tg.start_soon(webhooks.run)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                log.info("serve.stopping signal=%s", sig)
                stop.set()
                break


async def _uvicorn(api: Api, cfg: Config, stop: anyio.Event, scope: anyio.CancelScope, *,
                   task_status: anyio.abc.TaskStatus[int]) -> None:  # fmt: skip
    import uvicorn

    from gateway.runtime.http_guard import connection_caps, guarded_httptools

    # uvicorn has no deadline for a request's head, no bound on its size and none on its connections:
    # http_guard adds all three (the cap fitted into this process's open-files limit).
    cap = connection_caps({"api.max_connections": cfg.api.max_connections})["api.max_connections"]
    http = guarded_httptools(cfg.api.header_timeout, cfg.api.max_head_bytes, cap)
    config = uvicorn.Config(api, host=cfg.api.host, port=cfg.api.port, loop="none", lifespan="off",
                            log_level="warning", access_log=False, http=http)  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # we stop in order

    async def on_stop() -> None:
        await stop.wait()
        server.should_exit = True

    failed: list[SystemExit] = []

    async def run_server() -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn's start-up failure (it logged why): the port is taken, say
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_stop)
        tg.start_soon(run_server)
        while not server.started:
            if server.should_exit or failed:  # e.g. the port is taken: uvicorn gave up
                tg.cancel_scope.cancel()
                raise ListenError(f"cannot listen on {cfg.api.host}:{cfg.api.port} (in use by another process?)",
                                  key="api.port")  # fmt: skip
            await anyio.sleep(0.01)
        task_status.started(server.servers[0].sockets[0].getsockname()[1])
    scope.cancel()  # the server is done: so is everything else


async def _hypercorn(api: Api, cfg: Config, stop: anyio.Event, scope: anyio.CancelScope, *,
                     task_status: anyio.abc.TaskStatus[int]) -> None:  # fmt: skip
    import trio
    from hypercorn.config import Config as HyperConfig

    from gateway.runtime.http_guard import connection_caps
    from gateway.runtime.hyper_serve import serve as hyper_serve

    config = HyperConfig()
    host = f"[{cfg.api.host}]" if ":" in cfg.api.host else cfg.api.host
    config.bind = [f"{host}:{cfg.api.port}"]
    config.accesslog = None
    # Hypercorn's idle timer runs from the connection (and from each response) until a request's
    # head is complete, and h11 bounds the head at 16 KiB: so this is the head deadline here.
    config.keep_alive_timeout = cfg.api.header_timeout
    config.h11_max_incomplete_size = cfg.api.max_head_bytes  # the head's bound, as http_guard's
    config.loglevel = "WARNING"

    # Hypercorn bounds no connections either: hyper_serve caps them by http_guard's rule.
    cap = connection_caps({"api.max_connections": cfg.api.max_connections})["api.max_connections"]

    async def started() -> None:
        binds = await nursery.start(partial(hyper_serve, api, config, cap, shutdown_trigger=stop.wait))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))

    async with trio.open_nursery() as nursery:
        await started()
    scope.cancel()


def _metrics(metrics: Metrics):
    async def handler(operator: bool = True) -> Response:
        body, content_type = metrics.render()
        return Response(200, body, [(b"content-type", content_type.encode())])

    return handler


def _static(body: bytes):
    async def handler() -> Response:
        return Response(200, body)

    return handler


def _ready(pool: CheckPool | None):
    """503 until the ingest workers have started (a large job sent earlier waits for them)."""
    async def handler() -> Response:
        if pool is not None and not pool.ready:
            return Response(503, b'{"status":"starting","waiting_for":"ingest workers"}')
        return Response(200, b'{"status":"ready"}')

    return handler


def _carriers(core: Scheduler, connectors, clock):
    """An operator sees every carrier's queue, bucket and links; a tenant only whether each is
    up (queues and links count every tenant's traffic)."""
    async def handler(operator: bool = True) -> Response:
        now = clock()
        stats = core.statistics(now)
        out = {}
        for name, bucket in stats.buckets.items():
            if not operator:
                out[name] = {"health": "down" if name in stats.down else "up"}
                continue
            conn = connectors.get(name)
            out[name] = {"health": "down" if name in stats.down else "up", "ready": stats.ready.get(name, 0),
                         "bucket": bucket, "link": conn.statistics() if conn is not None else None}  # fmt: skip
        return Response(200, msgspec.json.encode(out))

    return handler
