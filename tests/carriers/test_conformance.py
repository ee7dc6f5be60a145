"""One conformance suite for every Connector: the shipped MockConnector, the SmppConnector (against
the SMSC simulator, in memory) and the HttpConnector (against the HTTP carrier simulator over
loopback, generic and Twilio-style profiles). What the layers above may rely on, and nothing more."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from carriers.base import (
    Connector,
    ConnectorEvent,
    ConnectorStats,
    ReceiptMatched,
    Requeue,
    SubmitFailed,
    Submitted,
)
from carriers.errors import CarrierError
from carriers.http.settings import HttpSettings
from carriers.http.simulator import HttpSimSettings
from carriers.http.testing import loopback_carrier
from carriers.smpp.connector import SmppConnector, SmppSettings
from carriers.smpp.simulator import SimSettings, SmscSimulator
from carriers.testing import MockConnector, memory_stream_pair

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def mock(name: str) -> AsyncIterator[tuple[Connector, object]]:
    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    async with MockConnector(name, send) as c:
        yield c, receive


@asynccontextmanager
async def smpp(name: str) -> AsyncIterator[tuple[Connector, object]]:
    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    sim = SmscSimulator(SimSettings(dlr_delay=0.01))
    async with anyio.create_task_group() as tg:
        await tg.start(sim.run)

        async def connect():
            a, b = memory_stream_pair()
            tg.start_soon(sim.handle_connection, b)
            return a

        settings = SmppSettings(name=name, window=20, tick_interval=0.05, response_timeout=1.0)
        async with SmppConnector(settings, send, connect=connect, password="pw") as c:
            yield c, receive
        tg.cancel_scope.cancel()


def http(profile: str):
    @asynccontextmanager
    async def make(name: str) -> AsyncIterator[tuple[Connector, object]]:
        sim = HttpSimSettings(profile=profile, receipt_delay=0.01, receipt_secret="k", auth_token="tok")
        settings = HttpSettings(name=name, profile=profile, batch_size=20, tick_interval=0.05)
        async with loopback_carrier(sim, settings) as lb:
            yield lb.connector, lb.events

    return make


OPENERS = {"mock": mock, "smpp": smpp, "http-generic": http("generic"), "http-twilio": http("twilio")}


@pytest.fixture(params=list(OPENERS))
def open_connector(request):
    return OPENERS[request.param]


async def collect(receive, done, timeout: float = 10.0) -> list[ConnectorEvent]:
    seen: list[ConnectorEvent] = []
    with anyio.fail_after(timeout):
        while not done(seen):
            seen.append(await receive.receive())
    return seen


async def test_is_a_connector(open_connector) -> None:
    async with open_connector("c1") as (c, _):
        assert isinstance(c, Connector)
        assert c.name == "c1"
        stats = c.statistics()
        assert isinstance(stats, ConnectorStats) and stats.carrier == "c1"


async def test_every_dispatch_ends_once_then_gets_one_receipt(open_connector, make_dispatch) -> None:
    async with open_connector("c1") as (c, events):
        # Message ids differ from refs: receipts must name the message, refs are reused once submitted.
        batch = [make_dispatch(i, carrier="c1", message_id=1000 + i) for i in range(50)]
        batch.append(make_dispatch(50, "x" * 300, carrier="c1", message_id=1050))
        await c.submit(batch)
        seen = await collect(events, lambda ev: sum(isinstance(e, ReceiptMatched) for e in ev) == 51)
        ends = [e for e in seen if isinstance(e, (Submitted, SubmitFailed, Requeue))]
        assert sorted(e.ref for e in ends) == list(range(51))  # exactly one outcome each
        for e in ends:
            assert isinstance(e, Submitted) and e.carrier == "c1"
            assert e.carrier_ids and all(isinstance(i, str) and i for i in e.carrier_ids)
        assert len(next(e for e in ends if e.ref == 50).carrier_ids) >= 1
        receipts = [e for e in seen if isinstance(e, ReceiptMatched)]
        assert sorted(e.message_id for e in receipts) == list(range(1000, 1051))
        assert c.statistics().submitted == 51


async def test_closed_connector_refuses_work(open_connector, make_dispatch) -> None:
    async with open_connector("c1") as (c, _):
        await c.aclose()
        await c.aclose()  # idempotent
        with pytest.raises(CarrierError):
            await c.submit([make_dispatch(1, carrier="c1")])
