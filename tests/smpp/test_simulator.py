"""The SMSC simulator on its own, driven by a bare ESME session through in-memory streams
(virtual time under trio's MockClock; short real times under asyncio)."""

from __future__ import annotations

import math

import anyio
import pytest
import trio.testing

from carriers.smpp import pdu as P
from carriers.smpp.receipts import parse_receipt
from carriers.smpp.session import Bound, Session
from carriers.smpp.simulator import SimSettings, SmscSimulator
from carriers.testing import memory_stream_pair
from gateway.core.receipts import ReceiptState

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param("trio-virtual", id="trio+MockClock"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest):
    if request.param == "trio-virtual":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return request.param


class Esme:
    def __init__(self, stream) -> None:
        self.stream = stream
        self.session = Session("esme", enquire_link_interval=None)
        self.events: list = []

    async def flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            await self.stream.send(data)

    async def read(self) -> list:
        events = self.session.receive_data(await self.stream.receive(), anyio.current_time())
        self.events += events
        return events

    async def bind(self, system_id: bytes = b"sluice", password: bytes = b"pw"):
        self.session.send(P.BindTransceiver(system_id=system_id, password=password), anyio.current_time())
        await self.flush()
        while True:
            for ev in await self.read():
                return ev

    async def submit(self, n: int, registered: int = 1) -> None:
        for i in range(n):
            self.session.send(
                P.SubmitSm(source_addr=b"S", destination_addr=b"4479%06d" % i, short_message=b"x", registered_delivery=registered),
                anyio.current_time(),
            )
        await self.flush()

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


async def _with_sim(settings: SimSettings, body) -> dict:
    sim = SmscSimulator(settings)
    async with anyio.create_task_group() as tg:
        await tg.start(sim.run)
        a, b = memory_stream_pair()
        tg.start_soon(sim.handle_connection, b)
        await body(Esme(a), sim)
        tg.cancel_scope.cancel()
    return sim.counters()


async def test_tps_is_never_exceeded_in_any_second() -> None:
    async def body(esme: Esme, sim) -> None:
        assert isinstance(await esme.bind(), Bound)
        for _ in range(6):  # 6 bursts of 40, 0.25 s apart: 160/s offered against 50/s
            await esme.submit(40, registered=0)
            with anyio.move_on_after(0.25):
                while True:
                    await esme.read()

    counters = await _with_sim(SimSettings(tps=50, response_timeout=5, enquire_link_interval=None), body)
    assert counters["max_accepted_1s"] == 50
    assert counters["max_submits_1s"] == 160
    assert counters["accepted"] + counters["throttled"] == 240 and counters["throttled"] > 0


async def test_tps_schedule_lowers_the_limit_unannounced() -> None:
    async def body(esme: Esme, sim) -> None:
        assert isinstance(await esme.bind(), Bound)
        for _ in range(12):  # 60/s offered for 3 s; the limit is 40/s, then 10/s from 1.5 s on
            await esme.submit(15, registered=0)
            with anyio.move_on_after(0.25):
                while True:
                    await esme.read()

    settings = SimSettings(tps=40, tps_schedule=((1.5, 10.0),), response_timeout=5, enquire_link_interval=None)
    counters = await _with_sim(settings, body)
    per_s, tps = counters["accepted_per_s"], counters["tps_per_s"]
    assert tps[:3] == [40, 40, 10]
    assert per_s[0] == 40 and per_s[2] <= 10
    assert sum(per_s) == counters["accepted"]


async def test_bind_tps_is_per_bind() -> None:
    async def body(esme: Esme, sim) -> None:
        await esme.bind()
        await esme.submit(30, registered=0)
        with anyio.move_on_after(0.1):
            while len(esme.of(P.SubmitSmResp)) < 30:
                await esme.read()
        statuses = [r.status for r in esme.of(P.SubmitSmResp)]
        assert statuses.count(0) == 10 and statuses.count(P.Status.ESME_RTHROTTLED) == 20

    await _with_sim(SimSettings(bind_tps=10, enquire_link_interval=None), body)


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [(b"other", b"pw", P.Status.ESME_RINVSYSID), (b"sluice", b"bad", P.Status.ESME_RINVPASWD)],
)
async def test_credentials_are_checked_when_set(system_id, password, status) -> None:
    async def body(esme: Esme, sim) -> None:
        refused = await esme.bind(system_id, password)
        assert refused.status == status

    counters = await _with_sim(SimSettings(system_id="sluice", password="pw", enquire_link_interval=None), body)
    assert counters["bind_failures"] == 1 and counters["binds"] == 0


@pytest.mark.parametrize("id_format", ["dec", "hex"])
async def test_receipts_carry_tlvs_and_text(id_format) -> None:
    async def body(esme: Esme, sim) -> None:
        await esme.bind()
        await esme.submit(20)
        with anyio.fail_after(5):
            while len(esme.of(P.DeliverSm)) < 20:
                for ev in await esme.read():
                    if isinstance(ev, P.DeliverSm):
                        esme.session.send(P.DeliverSmResp(sequence=ev.sequence))
                await esme.flush()
        ids = [r.message_id for r in esme.of(P.SubmitSmResp)]
        for dlr in esme.of(P.DeliverSm):
            assert dlr.esm_class == 0x04
            tlv = parse_receipt(dlr)
            assert tlv.id_from_tlv and tlv.message_id.encode() in ids
            text = parse_receipt(P.DeliverSm(esm_class=4, short_message=dlr.short_message))
            base = 16 if id_format == "hex" else 10
            assert int(text.message_id, 10) == int(tlv.message_id, base)  # decimal in the text
            assert text.state is tlv.state is ReceiptState.UNDELIVERABLE
        await anyio.sleep(0.05)

    counters = await _with_sim(SimSettings(id_format=id_format, dlr_delay=0.05, undeliv_rate=1.0, enquire_link_interval=None), body)
    assert counters["receipts_sent"] == 20 and counters["receipts_acked"] == 20


async def test_no_receipt_unless_asked() -> None:
    async def body(esme: Esme, sim) -> None:
        await esme.bind()
        await esme.submit(5, registered=0)
        with anyio.move_on_after(0.2):
            while True:
                await esme.read()
        assert not esme.of(P.DeliverSm)

    counters = await _with_sim(SimSettings(dlr_delay=0.01, enquire_link_interval=None), body)
    assert counters["accepted"] == 5 and counters["receipts_sent"] == 0


async def test_drop_after_closes_without_answering() -> None:
    async def body(esme: Esme, sim) -> None:
        await esme.bind()
        await esme.submit(10)
        with anyio.fail_after(5):
            while True:
                try:
                    await esme.read()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
        assert len(esme.of(P.SubmitSmResp)) == 0  # the batch that crossed the limit died unanswered

    counters = await _with_sim(SimSettings(drop_after=5, enquire_link_interval=None), body)
    assert counters["dropped_connections"] == 1


async def test_unanswered_receipts_are_redelivered_on_the_next_bind() -> None:
    sim = SmscSimulator(SimSettings(dlr_delay=0.01, enquire_link_interval=None))
    async with anyio.create_task_group() as tg:
        await tg.start(sim.run)
        a, b = memory_stream_pair()
        tg.start_soon(sim.handle_connection, b)
        first = Esme(a)
        await first.bind()
        await first.submit(3)
        with anyio.fail_after(5):
            while len(first.of(P.DeliverSm)) < 3:
                await first.read()  # read the receipts, never answer them
        await a.aclose()
        a2, b2 = memory_stream_pair()
        tg.start_soon(sim.handle_connection, b2)
        second = Esme(a2)
        await second.bind()
        with anyio.fail_after(5):
            while len(second.of(P.DeliverSm)) < 3:
                await second.read()
        assert sim.counters()["receipts_redelivered"] == 3
        tg.cancel_scope.cancel()


async def test_counters_as_json_fields() -> None:
    sim = SmscSimulator(SimSettings())
    counters = sim.counters()
    for key in ("accepted", "throttled", "receipts_sent", "receipts_acked", "max_submits_1s", "max_accepted_1s"):
        assert counters[key] == 0
    import json

    json.dumps(counters)
    assert math.isfinite(sum(v for v in counters.values() if not isinstance(v, list)))


async def test_time_receipts_wait_for_a_full_window_is_counted() -> None:
    # `sluice bench kannel` reads this to tell whether the ESME's answers (given only once a
    # receipt's state is on disk) held the simulator's receipts back.
    async def body(esme: Esme, sim) -> None:
        await esme.bind()
        await esme.submit(4)
        with anyio.fail_after(5):
            while len(esme.of(P.DeliverSm)) < 2:  # the window (2) full, nothing answered
                await esme.read()
            while not sim._blocked:  # the third receipt is due and has no window
                await anyio.sleep(0.001)
        assert sim.counters()["receipts_window_full_ms"] == 0  # counted once the window opens
        await anyio.sleep(0.05)  # the window stays full this long
        for ev in esme.of(P.DeliverSm):
            esme.session.send(P.DeliverSmResp(sequence=ev.sequence))
        await esme.flush()
        with anyio.fail_after(5):
            while len(esme.of(P.DeliverSm)) < 4:
                for ev in await esme.read():
                    if isinstance(ev, P.DeliverSm):
                        esme.session.send(P.DeliverSmResp(sequence=ev.sequence))
                await esme.flush()

    counters = await _with_sim(SimSettings(window=2, dlr_delay=0.01, enquire_link_interval=None), body)
    assert counters["receipts_acked"] == 4
    assert counters["receipts_window_full_ms"] >= 50
