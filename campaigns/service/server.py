"""Running the campaign layer: the store, the API (uvicorn on asyncio), the gateway link, together.

``serve(settings)`` runs until cancelled; ``gateway_url`` overrides ``settings.gateway_url`` (the
embedded host passes the gateway's bound port). Keys and secrets come from the environment, read
here at start (never at import)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

import anyio
import uvicorn

from campaigns.config import CampaignSettings
from campaigns.service.app import create_app, tenant_keys, webhook_secrets
from campaigns.service.audience import Audience
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.link import GatewayLink
from campaigns.store import open_store

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


async def serve(settings: CampaignSettings, *, gateway_url: str | None = None, port: int | None = None,
                on_ready: Callable[[int], None] | None = None,
                environ: Mapping[str, str] | None = None) -> None:  # fmt: skip
    env = os.environ if environ is None else environ
    store = await anyio.to_thread.run_sync(open_store, settings.store_url)
    audience = Audience(store, settings, time.time)
    clients = gateway_clients(settings, gateway_url or settings.gateway_url, env)
    link = GatewayLink(audience, clients)
    app = create_app(audience, tenant_keys(settings, env), link=link, secrets=webhook_secrets(settings, env))
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port if port is None else port,
                                           log_config=None, lifespan="on", access_log=False))  # fmt: skip
    try:
        async with anyio.create_task_group() as tg:
            async def http() -> None:
                await server.serve()  # returns on SIGTERM/SIGINT (uvicorn's handlers): then stop the rest
                tg.cancel_scope.cancel()

            tg.start_soon(http)
            with anyio.fail_after(30):
                while not server.started:
                    await anyio.sleep(0.01)
            bound = server.servers[0].sockets[0].getsockname()[1]
            log.info("campaigns.listening host=%s port=%d tenants=%d", settings.host, bound, len(settings.tenants))
            if on_ready is not None:
                on_ready(bound)
            tg.start_soon(lambda: link.run(interval=settings.sync_interval))
            await anyio.sleep_forever()
    finally:
        for c in clients.values():
            await c.aclose()
        store.close()
