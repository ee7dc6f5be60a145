"""Running the campaign layer: the store, the API (uvicorn on asyncio), the gateway link, together.

``serve(settings)`` runs until cancelled; ``gateway_url`` overrides ``settings.gateway_url`` (the
embedded host passes the gateway's bound port). Keys and secrets come from the environment, read
here at start (never at import)."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Mapping

import anyio
import anyio.abc
import uvicorn

from campaigns.config import CampaignSettings
from campaigns.errors import ConfigError
from campaigns.core.attribution import Windows
from campaigns.service.app import body_deadline, create_app, tenant_keys, webhook_secrets
from campaigns.service.audience import Audience
from campaigns.service.campaign_api import campaign_handlers, redirect_front
from campaigns.service.flow_api import FlowService, flow_handlers
from campaigns.service.flow_runtime import FlowRuntime, install_state, runtime_tenants
from campaigns.service.flow_workers import FlowWorkers
from campaigns.service.launch import Launcher, TenantLinks, freeze_chunk_for, stream_chunk_for
from campaigns.service.short_http import ShortLinkServer, serve_short_links
from campaigns.service.store_lock import hold_store
from campaigns.service.tracking import Tracker
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.inbox import Inbox
from campaigns.service.link import GatewayLink
from campaigns.store import open_store
from gateway.http_guard import connection_caps, guarded_httptools

log = logging.getLogger(__name__)


def gateway_clients(settings: CampaignSettings, gateway_url: str, environ: Mapping[str, str]) -> dict[str, GatewayClient]:
    out = {}
    for t in settings.tenants:
        key = environ.get(t.gateway_key_env or "")
        if key:
            out[t.name] = GatewayClient(gateway_url, key)
        else:
            log.warning("campaigns.tenant.no_gateway_key tenant=%s env=%s (no gateway link)", t.name, t.gateway_key_env)
    return out


def tenant_links(settings: CampaignSettings, environ: Mapping[str, str]) -> dict[str, TenantLinks]:
    """Tenants that can send campaigns with links: a short domain and the key their codes are minted with."""
    out = {}
    for t in settings.tenants:
        key = environ.get(t.link_key_env or "")
        if t.short_domain and key:
            windows = Windows(click=t.click_window_s, view=t.view_window_s, opt_out=t.opt_out_window_s,
                              opt_out_alert=t.opt_out_alert)  # fmt: skip
            out[t.name] = TenantLinks(domain=t.short_domain, key=key.encode(), zone=t.time_zone, windows=windows,
                                      click_min_delay=t.click_min_delay_s)  # fmt: skip
        else:
            log.warning("campaigns.tenant.no_short_links tenant=%s (set short_domain and link_key_env)", t.name)
    return out


def callback_urls(settings: CampaignSettings) -> dict[str, str]:
    """Where the gateway posts each tenant's message states (needs ``public_url``)."""
    if not settings.public_url:
        return {}
    base = settings.public_url.rstrip("/")
    return {t.name: f"{base}/v1/gateway/{t.name}/events" for t in settings.tenants}


class RepliesHere:
    """The ReplyRouter of a serve whose flow rounds run in worker processes: a reply is applied by
    this process (``FlowRuntime.offer_reply``: one store transaction, as a worker's), then the
    subscriber's worker is poked, so a send the reply recorded is posted at once, not at its next poll."""

    def __init__(self, flows: FlowRuntime, workers: FlowWorkers) -> None:
        self.flows, self.workers = flows, workers

    async def offer_reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool:
        taken = await self.flows.offer_reply(tenant, subscriber_id, message_id, text, now)
        if taken:
            self.workers.wake(subscriber_id)
        return taken


async def _short_links(short: ShortLinkServer, settings: CampaignSettings, on_ready: Callable[[int], None] | None,
                       *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    def ready(port: int) -> None:
        log.info("campaigns.short_links host=%s port=%d", settings.host, port)
        if on_ready is not None:
            on_ready(port)
        task_status.started()

    try:
        await serve_short_links(short, host=settings.host, port=settings.short_link_port or 0, on_ready=ready)
    except OSError as exc:  # cannot listen (the port is taken): one line at start-up, naming the key
        raise ConfigError(f"cannot listen on {settings.host}:{settings.short_link_port}: {exc.strerror or exc}",
                          key="campaigns.short_link_port") from exc  # fmt: skip


async def serve(settings: CampaignSettings, *, gateway_url: str | None = None, port: int | None = None,
                on_ready: Callable[[int], None] | None = None,
                environ: Mapping[str, str] | None = None,
                on_short_links: Callable[[int], None] | None = None) -> None:  # fmt: skip
    env = os.environ if environ is None else environ
    release = await anyio.to_thread.run_sync(hold_store, settings.store_url)  # one per store (store_lock.py)
    try:
        await _serve(settings, env, gateway_url=gateway_url, port=port, on_ready=on_ready, on_short_links=on_short_links)
    finally:
        release()


async def _serve(settings: CampaignSettings, env: Mapping[str, str], *, gateway_url: str | None, port: int | None,
                 on_ready: Callable[[int], None] | None, on_short_links: Callable[[int], None] | None) -> None:  # fmt: skip
    store = await anyio.to_thread.run_sync(open_store, settings.store_url)
    audience = Audience(store, settings, time.time)
    # The membership loop's passes stay in this process: the child process (service/member_process.py)
    # measured no gain on a quiet machine and a loss on a loaded one (docs/BENCHMARKS.md, issue 17, fifth pass).
    clients = gateway_clients(settings, gateway_url or settings.gateway_url, env)
    inbox = Inbox(store, clients, settings, time.time)
    link = GatewayLink(audience, clients, inbox=inbox)
    secrets = webhook_secrets(settings, env)
    for t in settings.tenants:  # states and replies come back signed: without a secret every one is refused (401)
        if settings.public_url and t.name not in secrets:
            log.warning("campaigns.tenant.no_webhook_secret tenant=%s: the gateway's webhooks to %s are refused "
                        "(set webhook_secret_env here and on the gateway's tenant, to the same secret)",
                        t.name, settings.public_url)  # fmt: skip
    # On PostgreSQL the launcher (launches, redirects, clicks, message states) has a connection of
    # its own: on the shared one a launch waited behind the gateway link's rounds and the segment
    # rebuilds (docs/BENCHMARKS.md). SQLite has one writer whatever the connections: it shares.
    own = getattr(store, "engine", "sqlite") != "sqlite"
    launch_store = await anyio.to_thread.run_sync(open_store, settings.store_url) if own else store
    links = tenant_links(settings, env)
    # The chunks of a freeze (PostgreSQL) on a connection of their own too: on the launcher's, each
    # chunk's transaction held up the batches' reads and answers being posted meanwhile.
    freeze_store = await anyio.to_thread.run_sync(open_store, settings.store_url) if own else None
    # And a stream's next chunk on a second one, started beside the chunk before (PostgreSQL).
    two = own and (settings.launch_stream_window or 2) == 2
    stream_store = await anyio.to_thread.run_sync(open_store, settings.store_url) if two else None
    chunk = freeze_chunk_for(settings.launch_freeze_chunk, getattr(store, "engine", "sqlite"))
    launcher = Launcher(launch_store, clients, links, time.time, callback_urls=callback_urls(settings),
                        freeze_chunk=chunk, freeze_store=freeze_store, post_window=settings.launch_post_window,
                        stream_chunk=stream_chunk_for(settings.launch_stream_chunk), stream_store=stream_store)  # fmt: skip
    tracker = Tracker(launcher)
    if launch_store is not store:  # range codes resolve on either connection (launch.py sets the launcher's)
        store.set_link_keys({name: t.key for name, t in links.items()})
    flows = FlowRuntime(store, clients, runtime_tenants(settings, links), time.time, inbox=inbox)
    # flow_workers = N: the runtime's rounds in N supervised child processes, each its share of the
    # subscribers (flow_workers.py); this process keeps ``flows`` for the replies it receives.
    n_workers = settings.flow_worker_count()
    workers = FlowWorkers(settings, gateway_url or settings.gateway_url, env, n_workers) if n_workers else None
    app = create_app(audience, tenant_keys(settings, env), link=link, secrets=secrets, inbox=inbox,
                     extra_handlers=[*campaign_handlers(launcher, tracker, secrets, inbox=inbox),
                                     *flow_handlers(FlowService(store, time.time))],
                     health=(lambda: {"flow_workers": workers.health()}) if workers is not None else None)  # fmt: skip
    # The inbox offers each reply to the runs waiting for one (ReplyRouter): applied here, by the
    # process that received it; with workers, the subscriber's worker is poked to post its sends.
    install_state(app, flows if workers is None else RepliesHere(flows, workers))
    front = body_deadline(redirect_front(app, tracker), settings.body_timeout_s)
    # uvicorn has no deadline for a request's head, no bound on its size and none on its connections:
    # the gateway's guard adds all three (the caps fitted into this process's open-files limit).
    wanted = {"max_connections": settings.max_connections}
    if settings.short_link_port is not None:
        wanted["short_link_max_connections"] = settings.short_link_max_connections
    caps = connection_caps(wanted)
    http = guarded_httptools(settings.header_timeout_s, settings.max_head_bytes, caps["max_connections"])
    server = uvicorn.Server(uvicorn.Config(front, host=settings.host, port=settings.port if port is None else port,
                                           log_config=None, lifespan="on", access_log=False, http=http))  # fmt: skip
    try:
        async with anyio.create_task_group() as tg:
            failed: list[SystemExit] = []

            async def http() -> None:
                try:
                    await server.serve()  # returns on SIGTERM/SIGINT (uvicorn's handlers): then stop the rest
                except SystemExit as exc:  # uvicorn's start-up failure (it logged why): the port is taken, say
                    failed.append(exc)
                    return
                tg.cancel_scope.cancel()

            tg.start_soon(http)
            with anyio.fail_after(30):
                while not server.started:
                    if failed:
                        raise ConfigError(f"cannot listen on {settings.host}:{server.config.port} (in use by another "
                                          "process?)", key="campaigns.port")  # fmt: skip
                    await anyio.sleep(0.01)
            bound = server.servers[0].sockets[0].getsockname()[1]
            log.info("campaigns.listening host=%s port=%d tenants=%d", settings.host, bound, len(settings.tenants))
            if on_ready is not None:
                on_ready(bound)
            tg.start_soon(lambda: link.run(interval=settings.sync_interval))
            tg.start_soon(audience.run_membership)  # bulk ingest answers at commit; membership follows
            if workers is None:
                tg.start_soon(lambda: flows.run(interval=settings.flows_interval))
            else:
                tg.start_soon(workers.run)
                log.info("campaigns.flow_workers workers=%d", n_workers)
            tg.start_soon(tracker.run_flusher)  # buffered clicks: written every few ms (tracking.py)
            if settings.short_link_port is not None:  # the short domains' own listener (short_http.py)
                short = ShortLinkServer(tracker, head_timeout=settings.short_link_head_timeout_s,
                                        max_connections=caps["short_link_max_connections"])  # fmt: skip
                await tg.start(_short_links, short, settings, on_short_links)
            # What start-up made (modules, settings, the stores, the apps) never becomes garbage: kept
            # out of every later full collection, which would otherwise walk it while the redirects
            # wait (the loop's longest stalls; the gateway's own start-up does the same, app.py).
            gc.collect()
            gc.freeze()
            await anyio.sleep_forever()
    finally:
        gc.unfreeze()
        if workers is not None:
            await workers.aclose()
        tracker.close()
        await flows.aclose()
        for c in clients.values():
            await c.aclose()
        if launch_store is not store:
            launch_store.close()
        if freeze_store is not None:
            freeze_store.close()
        if stream_store is not None:
            stream_store.close()
        store.close()
