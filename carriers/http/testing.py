"""Shipped for tests here and in the layers above: an ``HttpConnector`` wired to the HTTP carrier
simulator over loopback, with a receiver for the simulator's callbacks (receipts, inbound) that
hands each one to ``connector.callback`` as the gateway's endpoint does.

    async with loopback_carrier(HttpSimSettings(tps=100), HttpSettings(name="h1")) as lb:
        await lb.connector.submit(dispatches)
        event = await lb.events.receive()
        lb.sim.counters()
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from carriers.base import ConnectorEvent
from carriers.http.connector import HttpConnector
from carriers.http.settings import HttpSettings
from carriers.http.simulator import HttpCarrierSimulator, HttpSimSettings
from carriers.http.wire import Incoming, Reply, serve_http

__all__ = ["Loopback", "loopback_carrier"]


class Loopback:
    def __init__(self, sim: HttpCarrierSimulator, connector: HttpConnector,
                 events: MemoryObjectReceiveStream[ConnectorEvent]) -> None:  # fmt: skip
        self.sim = sim
        self.connector = connector
        self.events = events
        self.callback_statuses: list[int] = []  # what the connector answered each callback


@asynccontextmanager
async def loopback_carrier(sim_settings: HttpSimSettings, settings: HttpSettings, **kwargs: Any) -> AsyncIterator[Loopback]:
    """The simulator and a callback receiver on free loopback ports, and the connector (its
    ``url`` pointed at the simulator; token and callback secret taken from the simulator's)."""
    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    box: dict[str, Any] = {}

    async def receiver(req: Incoming) -> Reply:
        lb: Loopback = box["lb"]
        status = await lb.connector.callback(box["url"] + req.target, req.headers, req.body)
        lb.callback_statuses.append(status)
        return status, [], b""

    async with anyio.create_task_group() as tg:
        rport = await tg.start(serve_http, receiver, "127.0.0.1", 0)
        box["url"] = url = f"http://127.0.0.1:{rport}"
        sim_settings = msgspec.structs.replace(
            sim_settings, host="127.0.0.1", port=0, receipt_url=f"{url}/receipts",
            inbound_url=f"{url}/inbound" if sim_settings.mo_rate else None,
        )  # fmt: skip
        sim = HttpCarrierSimulator(sim_settings)
        port = await tg.start(sim.serve)
        path = "/messages" if settings.profile == "generic" else ""
        settings = msgspec.structs.replace(settings, url=f"http://127.0.0.1:{port}{path}")
        secret = sim_settings.auth_token if sim_settings.profile == "twilio" else sim_settings.receipt_secret
        kwargs.setdefault("token", sim_settings.auth_token or "")
        kwargs.setdefault("callback_secret", secret or "")
        async with HttpConnector(settings, send, **kwargs) as connector:
            box["lb"] = lb = Loopback(sim, connector, receive)
            yield lb
        tg.cancel_scope.cancel()
