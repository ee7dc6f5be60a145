"""Shared helpers for the SMPP tests: both anyio backends, and an ESME and an SMSC session
joined in memory (the shape of h11's ``tests/helpers.py::ConnectionPair``)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from carriers.base import ConnectorEvent
from carriers.smpp import pdu as P
from carriers.smpp.session import Session


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param


class SessionPair:
    """An ESME and an SMSC session, and the wire between them (moved by ``pump``)."""

    def __init__(self, *, now: float = 0.0, **kwargs: object) -> None:
        self.now = now
        self.esme = Session("esme", now=now, **kwargs)  # type: ignore[arg-type]
        self.smsc = Session("smsc", now=now, **kwargs)  # type: ignore[arg-type]

    def to_smsc(self) -> list:
        return self.smsc.receive_data(self.esme.data_to_send(), self.now)

    def to_esme(self) -> list:
        return self.esme.receive_data(self.smsc.data_to_send(), self.now)

    @staticmethod
    def bind_resp(req: P.Bind, status: int = 0) -> P.BindResp:
        cls = {
            "transmitter": P.BindTransmitterResp,
            "receiver": P.BindReceiverResp,
            "transceiver": P.BindTransceiverResp,
        }[req.mode]
        return cls(sequence=req.sequence, status=status, system_id=b"smsc")

    def bind(self, mode: str = "transceiver") -> None:
        cls = {"transmitter": P.BindTransmitter, "receiver": P.BindReceiver, "transceiver": P.BindTransceiver}[mode]
        self.esme.send(cls(system_id=b"sluice", password=b"secret"), self.now)
        (req,) = self.to_smsc()
        assert isinstance(req, cls)
        self.smsc.send(self.bind_resp(req), self.now)
        (bound,) = self.to_esme()
        assert bound.mode == mode


@pytest.fixture
def pair() -> SessionPair:
    return SessionPair()


@pytest.fixture
def bound_pair() -> SessionPair:
    p = SessionPair()
    p.bind()
    return p


@pytest.fixture
def make_pair() -> type[SessionPair]:
    return SessionPair


class Harness:
    """A connector wired to a simulator (in memory or over loopback), and its event stream."""

    def __init__(self, sim: Any, connector: Any, events: Any) -> None:
        self.sim = sim
        self.connector = connector
        self.events = events
        self.seen: list[ConnectorEvent] = []

    async def until(self, done: Callable[[list[ConnectorEvent]], bool], timeout: float = 30.0) -> list[ConnectorEvent]:
        """Collect events until ``done(all events so far)``; fail after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            while not done(self.seen):
                self.seen.append(await self.events.receive())
        return self.seen

    def of(self, kind: type) -> list:
        return [e for e in self.seen if isinstance(e, kind)]


@asynccontextmanager
async def in_memory(sim_settings: Any, smpp_settings: Any, **kwargs: Any) -> AsyncIterator[Harness]:
    """An SmppConnector talking to an SmscSimulator through in-memory streams."""
    from carriers.smpp.connector import SmppConnector
    from carriers.smpp.simulator import SmscSimulator
    from carriers.testing import memory_stream_pair

    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    sim = SmscSimulator(sim_settings)
    async with anyio.create_task_group() as tg:
        await tg.start(sim.run)

        async def connect() -> Any:
            a, b = memory_stream_pair()
            tg.start_soon(sim.handle_connection, b)
            return a

        kwargs.setdefault("connect", connect)
        kwargs.setdefault("password", "pw")
        async with SmppConnector(smpp_settings, send, **kwargs) as connector:
            yield Harness(sim, connector, receive)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def over_loopback(sim_settings: Any, smpp_settings: Any, **kwargs: Any) -> AsyncIterator[Harness]:
    """The same over real sockets on 127.0.0.1 (the simulator on a free port)."""
    import msgspec

    from carriers.smpp.connector import SmppConnector
    from carriers.smpp.simulator import SmscSimulator

    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
    sim = SmscSimulator(msgspec.structs.replace(sim_settings, host="127.0.0.1", port=0))
    async with anyio.create_task_group() as tg:
        port = await tg.start(sim.serve)
        settings = msgspec.structs.replace(smpp_settings, host="127.0.0.1", port=port)
        kwargs.setdefault("password", "pw")
        async with SmppConnector(settings, send, **kwargs) as connector:
            yield Harness(sim, connector, receive)
        tg.cancel_scope.cancel()


@pytest.fixture
def harness() -> Callable[..., Any]:
    return in_memory


@pytest.fixture
def loopback() -> Callable[..., Any]:
    return over_loopback




def make_dispatch_fn(ref: int, body: str = "hello", *, recipient: str | None = None, attempt: int = 0, carrier: str = "sim", message_id: int | None = None) -> Any:
    from gateway.core import segments
    from gateway.core.model import Dispatch

    split = segments.split(body)
    return Dispatch(
        ref=ref,
        message_id=ref if message_id is None else message_id,
        job_id="job",
        tenant="t",
        carrier=carrier,
        recipient=recipient or "+4479110%05d" % ref,
        sender="Sluice",
        body=body,
        encoding=split.encoding,
        segments=len(split.parts),
        category="transactional",
        priority=1,
        attempt=attempt,
    )


@pytest.fixture
def make_dispatch() -> Callable[..., Any]:
    return make_dispatch_fn


async def drive_fn(h: Harness, dispatches: list, timeout: float = 60.0) -> dict[int, Any]:
    """Submit; send again whatever comes back (Requeue, temporary SubmitFailed) with attempt+1,
    as the core would, until every message is Submitted or permanently failed.
    Returns ref -> the event that ended it; fails if any message ends twice."""
    import msgspec

    from carriers.base import Requeue, SubmitFailed, Submitted

    current = {d.ref: d for d in dispatches}
    final: dict[int, Any] = {}
    await h.connector.submit(dispatches)
    with anyio.fail_after(timeout):
        while len(final) < len(current):
            ev = await h.events.receive()
            h.seen.append(ev)
            if isinstance(ev, Submitted) or (isinstance(ev, SubmitFailed) and ev.permanent):
                assert ev.ref not in final, f"{ev.ref} ended twice"
                final[ev.ref] = ev
            elif isinstance(ev, (Requeue, SubmitFailed)):
                assert ev.ref not in final
                d = msgspec.structs.replace(current[ev.ref], attempt=current[ev.ref].attempt + 1)
                current[ev.ref] = d
                await h.connector.submit([d])
    return final


@pytest.fixture
def drive() -> Callable[..., Any]:
    return drive_fn


@asynccontextmanager
async def scripted_fn(
    settings: Any, on_submit: Callable[..., Any], *, after_bind: Callable[..., Any] | None = None, **kwargs: Any
) -> AsyncIterator[Harness]:
    """A connector against a hand-written SMSC: ``on_submit(pdu, session)`` answers each
    submit_sm with a PDU, raw bytes (anything at all), or nothing; ``after_bind(session)`` may
    queue more PDUs right behind the bind_resp (in the same write)."""
    from carriers.smpp.connector import SmppConnector
    from carriers.testing import memory_stream_pair

    send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)

    async def smsc(stream: Any) -> None:
        s = Session("smsc", enquire_link_interval=None)
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            raw = b""
            for ev in s.receive_data(data, anyio.current_time()):
                if isinstance(ev, P.Bind):
                    s.send(P.BindTransceiverResp(sequence=ev.sequence, system_id=b"scripted"))
                    if after_bind is not None:
                        after_bind(s)
                elif isinstance(ev, P.SubmitSm):
                    answer = on_submit(ev, s)
                    if isinstance(answer, bytes):
                        raw += answer
                    elif answer is not None:
                        s.send(answer)
            out = s.data_to_send() + raw
            if out:
                try:
                    await stream.send(out)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return

    async with anyio.create_task_group() as tg:

        async def connect() -> Any:
            a, b = memory_stream_pair()
            tg.start_soon(smsc, b)
            return a

        kwargs.setdefault("password", "pw")
        async with SmppConnector(settings, send, connect=connect, **kwargs) as connector:
            yield Harness(None, connector, receive)
        tg.cancel_scope.cancel()


@pytest.fixture
def scripted() -> Callable[..., Any]:
    return scripted_fn
