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
import logging
import os
import signal
import time
from collections.abc import Callable

import anyio
import msgspec
import prometheus_client as prom

from carriers.base import ConnectorEvent
from carriers.smpp.connector import SmppConnector
from gateway.api.app import Api, Response, hash_key
from gateway.config import Config, Tenant
from gateway.core.scheduler import Scheduler
from gateway.errors import ConfigError
from gateway.runtime.dispatcher import Dispatcher
from gateway.runtime.service import Gateway
from gateway.store import open_store
from gateway.store.sqlite import SqliteStore

__all__ = ["serve", "tenant_table"]

log = logging.getLogger(__name__)


def tenant_table(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, Tenant]:
    """SHA-256 of each tenant's key -> tenant. Keys from the environment are hashed at once."""
    env = os.environ if environ is None else environ
    table: dict[str, Tenant] = {}
    for i, t in enumerate(cfg.api.tenants):
        digest = t.key_sha256
        if digest is None:
            key = env.get(t.key_env or "")
            if not key:
                raise ConfigError(f"environment variable {t.key_env!r} is not set", key=f"api.tenants[{i}].key_env")
            digest = hash_key(key)
        table[digest] = t
    return table


class Metrics:
    def __init__(self, core: Scheduler, dispatcher: Dispatcher, clock: Callable[[], float]) -> None:
        self.registry = prom.CollectorRegistry()
        self._core, self._disp, self._clock = core, dispatcher, clock
        self.ready = prom.Gauge("sluice_queue_ready", "Messages ready to send", ["carrier"], registry=self.registry)
        self.waiting = prom.Gauge("sluice_queue_deferred", "Messages held (quiet hours, caps, scheduled)",
                                  registry=self.registry)  # fmt: skip
        self.inflight = prom.Gauge("sluice_inflight", "Messages handed to carriers, not answered", registry=self.registry)
        self.counters = prom.Gauge("sluice_dispatcher_total", "Dispatcher counters", ["what"], registry=self.registry)
        self.rate = prom.Gauge("sluice_carrier_rate", "Current adaptive rate (segments/s)", ["carrier"],
                               registry=self.registry)  # fmt: skip

    async def endpoint(self) -> Response:
        stats = self._core.statistics(self._clock())
        for carrier, n in stats.ready.items():
            self.ready.labels(carrier).set(n)
            self.rate.labels(carrier).set(stats.buckets[carrier].rate)
        self.waiting.set(stats.waiting)
        self.inflight.set(stats.inflight)
        for what in self._disp.stats.__slots__:
            self.counters.labels(what).set(getattr(self._disp.stats, what))
        return Response(200, prom.generate_latest(self.registry), [(b"content-type", prom.CONTENT_TYPE_LATEST.encode())])


async def serve(cfg: Config, *, on_ready: Callable[[int], None] | None = None) -> None:
    clock = time.time
    tenants = tenant_table(cfg)
    store = open_store(cfg.store.url) if not cfg.store.url.startswith("sqlite:///") else \
        SqliteStore(cfg.store.url.removeprefix("sqlite:///"), synchronous=cfg.store.synchronous)  # fmt: skip
    core = Scheduler(cfg.core, clock())
    gateway = Gateway(core, store)
    recovered = await gateway.recover(clock(), carriers={link.name for link in cfg.carriers.smpp})
    log.info("serve.recovered queued=%d awaiting_receipts=%d", recovered.queued, len(recovered.awaiting))
    send, receive = anyio.create_memory_object_stream[ConnectorEvent](max_buffer_size=100_000)
    async with contextlib.AsyncExitStack() as stack:
        connectors = {}
        for link in cfg.carriers.smpp:
            connectors[link.name] = await stack.enter_async_context(SmppConnector(link, send.clone()))
        send.close()
        for mid, carrier, ids in recovered.awaiting:
            connectors[carrier].expect_receipts(mid, ids)
        dispatcher = Dispatcher(core, connectors, receive, store, clock=clock)
        gateway.on_admitted = dispatcher.poke
        metrics = Metrics(core, dispatcher, clock)
        extra = {
            "/metrics": metrics.endpoint,
            "/healthz": _static(b'{"status":"ok"}'),
            "/readyz": _static(b'{"status":"ready"}'),
            "/v1/carriers": _carriers(core, connectors, clock),
        }
        api = Api(gateway, tenants, clock=clock, max_body=cfg.api.max_body_bytes, extra=extra)
        await _run(api, dispatcher, cfg, on_ready)
        await dispatcher.flush()
    store.close()


async def _run(api: Api, dispatcher: Dispatcher, cfg: Config, on_ready) -> None:
    import uvicorn

    config = uvicorn.Config(api, host=cfg.api.host, port=cfg.api.port, loop="none", lifespan="off",
                            log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # we handle signals: stop in order
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)

        async def web() -> None:
            await server.serve()
            tg.cancel_scope.cancel()

        tg.start_soon(web)
        while not server.started:
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        log.info("serve.listening host=%s port=%d", cfg.api.host, port)
        if on_ready:
            on_ready(port)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                log.info("serve.stopping signal=%s", sig)
                server.should_exit = True
                break


def _static(body: bytes):
    async def handler() -> Response:
        return Response(200, body)

    return handler


def _carriers(core: Scheduler, connectors, clock):
    async def handler() -> Response:
        now = clock()
        stats = core.statistics(now)
        out = {}
        for name, bucket in stats.buckets.items():
            conn = connectors.get(name)
            out[name] = {"ready": stats.ready.get(name, 0), "bucket": bucket,
                         "link": conn.statistics() if conn is not None else None}  # fmt: skip
        return Response(200, msgspec.json.encode(out))

    return handler
