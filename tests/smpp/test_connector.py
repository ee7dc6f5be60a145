"""The SMPP connector against the simulator through in-memory streams, on virtual time under
trio (MockClock jumps whenever every task waits) and on asyncio+uvloop with short real times."""

from __future__ import annotations

import math

import anyio
import pytest
import trio.testing

from carriers.base import Inbound, LinkChanged, ReceiptMatched, Requeue, SubmitFailed, Submitted, Throttled
from carriers.smpp import pdu as P
from carriers.smpp.connector import SmppConnector, SmppSettings
from carriers.smpp.simulator import SimSettings
from carriers.testing import memory_stream_pair
from gateway.core.bucket import TokenBucket
from gateway.core.model import FinalState

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param("trio-virtual", id="trio+MockClock"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    if request.param == "trio-virtual":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return request.param


def fast(**kw) -> SmppSettings:
    """Short real times, so asyncio runs stay quick (trio's clock jumps anyway)."""
    base = dict(
        name="sim",
        system_id="sluice",
        window=10,
        response_timeout=0.5,
        enquire_link_interval=1.0,
        reconnect_initial=0.02,
        reconnect_max=0.2,
        throttle_pause=0.05,
        tick_interval=0.05,
        carrier_down_after=0.5,
        hold_unmatched_s=1.0,
        receipt_horizon_s=5.0,
        connect_timeout=0.5,
    )
    base.update(kw)
    return SmppSettings(**base)


def sim(**kw) -> SimSettings:
    base = dict(dlr_delay=0.01, response_timeout=0.5, enquire_link_interval=None, seed=1)
    base.update(kw)
    return SimSettings(**base)


async def test_submits_and_receipts(harness, make_dispatch) -> None:
    async with harness(sim(), fast(binds=2)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(200)])
        await h.until(lambda ev: sum(isinstance(e, ReceiptMatched) for e in ev) == 200)
        submitted = h.of(Submitted)
        assert sorted(e.ref for e in submitted) == list(range(200))
        assert all(len(e.carrier_ids) == 1 for e in submitted)
        assert {e.state for e in h.of(ReceiptMatched)} == {FinalState.DELIVERED}
        stats = h.connector.statistics()
        assert stats.bound == 2 and stats.submitted == 200 and stats.receipts_matched == 200
        assert len([e for e in h.of(LinkChanged) if e.up]) == 2


def receipts(n: int):
    """Until n receipts are in."""
    return lambda ev: sum(isinstance(e, ReceiptMatched) for e in ev) >= n


# -- the catalogue ------------------------------------------------------------------------------


async def test_transmitter_receiver_pairs(harness, make_dispatch) -> None:
    async with harness(sim(), fast(binds=2, bind_mode="transmitter+receiver")) as h:
        await h.connector.submit([make_dispatch(i) for i in range(100)])
        await h.until(receipts(100))
        assert h.connector.statistics().bound == 4
        assert len({e.bind for e in h.of(LinkChanged)}) == 4


async def test_throttling_storm_requeues_in_order_and_cuts_the_bucket(harness, make_dispatch, drive) -> None:
    bucket = TokenBucket(rate=100_000, burst=100_000, now=anyio.current_time())
    async with harness(sim(throttle_burst=(0.3, 0.1)), fast(window=10), bucket=bucket) as h:
        final = await drive(h, [make_dispatch(i) for i in range(300)])
        assert all(isinstance(e, Submitted) for e in final.values())
        throttled = [e.ref for e in h.of(Requeue) if e.reason == "throttled"]
        assert throttled and h.of(Throttled)
        first = list(dict.fromkeys(throttled))  # first throttle of each message
        assert first == sorted(first), "throttled messages came back out of order"
        assert bucket.rate < 100_000
        assert h.connector.statistics().errors["ESME_RTHROTTLED"] == len(throttled)


async def test_no_response_requeues_and_the_dead_link_is_dropped(harness, make_dispatch) -> None:
    async with harness(sim(mute_after=2), fast(window=10)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(10)])
        await h.until(lambda ev: any(isinstance(e, LinkChanged) and not e.up for e in ev))
        timeouts = {e.ref for e in h.of(Requeue) if e.reason == "timeout"}
        dropped = {e.ref for e in h.of(Requeue) if e.reason == "bind_dropped"}
        assert timeouts | dropped == set(range(10)) and not timeouts & dropped


async def test_generic_nack_is_a_temporary_failure(harness, make_dispatch) -> None:
    async with harness(sim(nack_rate=1.0), fast()) as h:
        await h.connector.submit([make_dispatch(i, attempt=i % 3) for i in range(6)])
        await h.until(lambda ev: len([e for e in ev if isinstance(e, SubmitFailed)]) == 6)
        for e in h.of(SubmitFailed):
            assert (e.command_status, e.name, e.permanent) == (8, "ESME_RSYSERR", False)
            assert e.retry_after == 2.0 * 2 ** (e.ref % 3)


async def test_permanent_error_ends_rejected_with_code_and_name(make_dispatch, scripted) -> None:
    def answer(pdu, s):
        return P.SubmitSmResp(sequence=pdu.sequence, status=P.Status.ESME_RINVDSTADR)

    async with scripted(fast(), answer) as h:
        await h.connector.submit([make_dispatch(1)])
        (failed,) = [e for e in await h.until(lambda ev: any(isinstance(e, SubmitFailed) for e in ev)) if isinstance(e, SubmitFailed)]
        assert (failed.command_status, failed.name, failed.permanent, failed.retry_after) == (0x0B, "ESME_RINVDSTADR", True, None)


async def test_unbind_mid_window_loses_nothing(harness, make_dispatch, drive) -> None:
    async with harness(sim(unbind_after=7), fast(window=10)) as h:
        final = await drive(h, [make_dispatch(i) for i in range(60)])
        assert sorted(final) == list(range(60)) and all(isinstance(e, Submitted) for e in final.values())
        assert h.sim.counters()["unbinds_sent"] >= 2
        assert any(not e.up for e in h.of(LinkChanged))


async def test_connection_drop_mid_window_loses_nothing(harness, make_dispatch, drive) -> None:
    async with harness(sim(drop_after=25), fast(window=10, binds=2)) as h:
        final = await drive(h, [make_dispatch(i) for i in range(150)])
        assert sorted(final) == list(range(150)) and all(isinstance(e, Submitted) for e in final.values())
        assert any(e.reason == "bind_dropped" for e in h.of(Requeue))
        assert h.sim.counters()["dropped_connections"] >= 2


async def test_receipt_before_response(harness, make_dispatch) -> None:
    async with harness(sim(receipt_first=True), fast()) as h:
        await h.connector.submit([make_dispatch(i) for i in range(50)])
        await h.until(receipts(50))
        assert {e.message_id for e in h.of(ReceiptMatched)} == set(range(50))
        # every receipt overtook its response, so the reconciler held each one first
        stats = h.connector._reconciler.statistics()
        assert stats.matched == 50 and stats.matched_early == 50


@pytest.mark.parametrize(
    ("sim_kw", "conn_kw"),
    [
        ({"id_format": "hex", "receipts": "text"}, {"id_format": "hex", "receipt_id_format": "dec"}),
        ({"id_format": "hex", "receipts": "tlv"}, {"id_format": "hex", "receipt_id_format": "dec"}),
        ({"id_format": "hex", "receipts": "both"}, {"id_format": "hex", "receipt_id_format": "dec"}),
        ({"id_format": "dec", "receipts": "text"}, {"id_format": "dec"}),  # zero-padded in the text
    ],
    ids=["hex-text", "hex-tlv", "hex-both", "dec-zeros"],
)
async def test_id_formats(harness, make_dispatch, sim_kw, conn_kw) -> None:
    async with harness(sim(**sim_kw), fast(**conn_kw)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(30)])
        await h.until(receipts(30))
        assert h.connector._reconciler.statistics().held == 0


async def test_duplicate_receipts_end_each_message_once(harness, make_dispatch) -> None:
    async with harness(sim(duplicate_receipts=True), fast()) as h:
        await h.connector.submit([make_dispatch(i) for i in range(40)])
        await h.until(receipts(40))
        await anyio.sleep(0.2)
        while True:  # drain what is left
            try:
                h.seen.append(h.events.receive_nowait())
            except anyio.WouldBlock:
                break
        assert sorted(e.message_id for e in h.of(ReceiptMatched)) == list(range(40))
        assert h.connector._reconciler.statistics().duplicates == 40
        assert h.sim.counters()["receipts_acked"] == 80  # every receipt answered


async def test_undeliverable_receipts(harness, make_dispatch) -> None:
    async with harness(sim(undeliv_rate=1.0), fast()) as h:
        await h.connector.submit([make_dispatch(i) for i in range(10)])
        await h.until(receipts(10))
        assert {(e.state, e.error_code) for e in h.of(ReceiptMatched)} == {(FinalState.UNDELIVERED, 1)}


async def test_multipart_message_final_state_from_all_parts(harness, make_dispatch) -> None:
    long = "part of a long message " * 20  # 460 GSM chars: 4 parts
    async with harness(sim(), fast()) as h:
        d = make_dispatch(1, long)
        assert d.segments == 4
        await h.connector.submit([d])
        await h.until(receipts(1))
        (sub,) = h.of(Submitted)
        assert len(sub.carrier_ids) == 4 and len(set(sub.carrier_ids)) == 4
        assert h.of(ReceiptMatched)[0].state is FinalState.DELIVERED
        assert h.sim.counters()["receipts_sent"] == 4


async def test_missing_receipts_end_unknown_after_the_horizon(harness, make_dispatch) -> None:
    async with harness(sim(receipts="none"), fast(receipt_horizon_s=0.3)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(5)])
        await h.until(receipts(5))
        assert {(e.state, e.reason) for e in h.of(ReceiptMatched)} == {(FinalState.UNKNOWN, "no receipt within horizon")}


async def test_mo_messages_reassembled_in_any_order(harness) -> None:
    async with harness(sim(mo_rate=50, mo_long_every=2), fast()) as h:
        await h.until(lambda ev: sum(isinstance(e, Inbound) for e in ev) >= 4)
        inbound = h.of(Inbound)
        long = [e for e in inbound if e.text.startswith("long MO")]
        assert long and all(e.text == f"long MO {e.text.split()[2]} " * 30 for e in long)  # 2 parts, last first
        assert any(e.text.startswith("MO ") for e in inbound)


async def test_mo_parts_in_message_payload_reassembled(harness) -> None:
    """hunt12: a peer putting each part's UDH and text in message_payload (short_message empty)."""
    async with harness(sim(mo_rate=50, mo_long_every=2, mo_udh_in_payload=True), fast()) as h:
        await h.until(lambda ev: sum(isinstance(e, Inbound) and e.text.startswith("long") for e in ev) >= 2)
        long = [e for e in h.of(Inbound) if e.text.startswith("long MO")]
        assert all(e.text == f"long MO {e.text.split()[2]} " * 30 for e in long)


async def test_mo_with_a_lost_part_is_heard_after_the_hold(harness) -> None:
    """hunt12: a long MO whose second part never comes reaches the gateway after ``mo_hold_s`` as the
    parts that came, in order (before: dropped, an opt-out in it unheard)."""
    async with harness(sim(mo_rate=50, mo_long_every=2, mo_lose_part=2, mo_limit=4), fast(mo_hold_s=0.2)) as h:
        await h.until(lambda ev: sum(isinstance(e, Inbound) and e.text.startswith("long") for e in ev) >= 2)
        long = [e.text for e in h.of(Inbound) if e.text.startswith("long MO")]
        n = long[0].split()[2]
        text = (f"long MO {n} " * 30).encode()
        assert long[0] == (text[:153] + text[306:459]).decode()  # parts 1 and 3


async def test_bind_refused_then_queue_given_back(harness, make_dispatch) -> None:
    async with harness(sim(password="right"), fast(), password="wrong") as h:
        await h.connector.submit([make_dispatch(i) for i in range(3)])
        await h.until(lambda ev: len([e for e in ev if isinstance(e, Requeue)]) == 3)
        assert {e.reason for e in h.of(Requeue)} == {"carrier_down"}
        assert h.connector.statistics().bound == 0
        assert h.sim.counters()["bind_failures"] >= 2  # it kept trying, with backoff


async def test_reconnect_backoff_is_exponential_capped_and_jittered(anyio_backend, make_dispatch) -> None:
    attempts: list[float] = []
    send, receive = anyio.create_memory_object_stream(math.inf)
    from carriers.smpp.simulator import SmscSimulator

    s = SmscSimulator(sim())
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)

        async def connect():
            attempts.append(anyio.current_time())
            if len(attempts) <= 6:
                raise OSError("connection refused")
            a, b = memory_stream_pair()
            tg.start_soon(s.handle_connection, b)
            return a

        settings = fast(reconnect_initial=0.01, reconnect_max=0.08)
        async with SmppConnector(settings, send, connect=connect, password="pw") as c:
            with anyio.fail_after(5):
                while c.statistics().bound == 0:
                    await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
        # The waits themselves, drawn as the reconnect loop draws them: within [cap/2, cap], the cap
        # doubling from reconnect_initial up to reconnect_max, and jittered (not all the same).
        caps = [min(0.08, 0.01 * 2**i) for i in range(12)]
        waits = [c._backoff(i) for i in range(12)]
        assert all(0.5 * cap <= w <= cap for w, cap in zip(waits, caps)), (waits, caps)
        assert len({round(w / cap, 6) for w, cap in zip(waits, caps)}) > 1
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert len(gaps) >= 6
    for gap, cap in zip(gaps, caps):
        # a sleep never ends early; how late it ends is the scheduler's (a loaded machine's), not
        # the connector's, so only the lower bound is the connector's promise on the real clock
        assert gap >= 0.5 * cap - 0.005, (gaps, caps)


async def test_aclose_requeues_unsent_and_unbinds(harness, make_dispatch) -> None:
    async with harness(sim(), fast(window=5)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(50)])
        await h.connector.aclose()
        await h.until(lambda ev: len({e.ref for e in ev if isinstance(e, (Submitted, Requeue))}) == 50)
        closing = {e.ref for e in h.of(Requeue) if e.reason == "closing"}
        sent = {e.ref for e in h.of(Submitted)}
        assert closing | sent == set(range(50)) and not closing & sent
        assert h.connector.statistics().bound == 0
        with pytest.raises(Exception):
            await h.connector.submit([make_dispatch(99)])


async def test_enquire_link_both_ways_keeps_a_quiet_link_up(harness) -> None:
    async with harness(sim(enquire_link_interval=0.2), fast(enquire_link_interval=0.3)) as h:
        await anyio.sleep(2.0)  # ten quiet intervals: both sides ping, both answer
        assert h.connector.statistics().bound == 1
        assert not [e for e in h.of(LinkChanged) if not e.up]
        assert h.sim.counters()["connections"] == 1


async def test_bucket_limits_the_send_rate(harness, make_dispatch) -> None:
    bucket = TokenBucket(rate=100, burst=10, now=anyio.current_time())
    async with harness(sim(), fast(), bucket=bucket) as h:
        start = anyio.current_time()
        await h.connector.submit([make_dispatch(i) for i in range(50)])
        await h.until(lambda ev: sum(isinstance(e, Submitted) for e in ev) == 50)
        assert anyio.current_time() - start >= 0.39  # (50 - 10 burst) / 100 per s
        assert h.sim.counters()["max_accepted_1s"] <= 110


async def test_malformed_response_is_a_peer_error_then_a_timeout(make_dispatch, scripted) -> None:
    def answer(pdu, s):
        return P.header(P.CommandId.SUBMIT_SM_RESP, 0, pdu.sequence, 3) + b"abc"  # no NUL

    async with scripted(fast(), answer) as h:
        await h.connector.submit([make_dispatch(1)])
        await h.until(lambda ev: any(isinstance(e, Requeue) for e in ev))
        assert h.of(Requeue)[0].reason == "timeout"
        assert h.connector.statistics().errors == {"ESME_RINVCMDLEN": 1}


async def test_garbage_framing_drops_the_bind_and_requeues(make_dispatch, scripted) -> None:
    def answer(pdu, s):
        return b"\x00\x00\x00\x03garbage"

    async with scripted(fast(), answer) as h:
        await h.connector.submit([make_dispatch(1)])
        await h.until(lambda ev: any(isinstance(e, Requeue) for e in ev))
        assert h.of(Requeue)[0].reason == "bind_dropped"


async def test_pdus_in_the_same_read_as_the_bind_resp_are_handled(make_dispatch, scripted) -> None:
    def after_bind(s) -> None:
        s.send(P.DeliverSm(source_addr=b"447911", destination_addr=b"SLUICE", short_message=b"early MO"))

    async with scripted(fast(), lambda pdu, s: None, after_bind=after_bind) as h:
        (mo,) = [e for e in await h.until(lambda ev: any(isinstance(e, Inbound) for e in ev)) if isinstance(e, Inbound)]
        assert (mo.sender, mo.recipient, mo.text) == ("447911", "SLUICE", "early MO")


async def test_a_new_connector_matches_receipts_of_what_an_earlier_one_submitted(make_dispatch) -> None:
    """A restart: the first connector's binds go away before the receipts are due; the second is
    told the carrier ids (``expect_receipts``, as ``serve`` does from the store) and matches the
    receipts the SMSC then delivers to it, without sending anything again."""
    from carriers.smpp.simulator import SmscSimulator

    smsc = SmscSimulator(sim(dlr_delay=1.0))
    async with anyio.create_task_group() as tg:
        await tg.start(smsc.run)

        async def connect():
            a, b = memory_stream_pair()
            tg.start_soon(smsc.handle_connection, b)
            return a

        send, receive = anyio.create_memory_object_stream(math.inf)
        async with SmppConnector(fast(), send, connect=connect, password="pw") as first:
            await first.submit([make_dispatch(i, message_id=500 + i) for i in range(5)])
            with anyio.fail_after(5):
                taken = []
                while len(taken) < 5:
                    if isinstance(ev := await receive.receive(), Submitted):
                        taken.append(ev)
        ids = {500 + e.ref: e.carrier_ids for e in taken}
        assert smsc.counters()["receipts_sent"] == 0  # none was due while the first one was up

        send, receive = anyio.create_memory_object_stream(math.inf)
        async with SmppConnector(fast(), send, connect=connect, password="pw") as second:
            for mid, cids in ids.items():
                second.expect_receipts(mid, cids)
            with anyio.fail_after(5):
                matched = []
                while len(matched) < 5:
                    if isinstance(ev := await receive.receive(), ReceiptMatched):
                        matched.append(ev)
            assert sorted(e.message_id for e in matched) == sorted(ids)
            assert {e.state for e in matched} == {FinalState.DELIVERED}
            assert second.statistics().submitted == 0
        assert smsc.counters()["accepted"] == 5
        tg.cancel_scope.cancel()


async def test_media_is_refused_the_rest_is_sent(harness, make_dispatch) -> None:
    """SMPP carries no MMS: a dispatch with media ends permanently refused, the others go."""
    import msgspec

    mms = msgspec.structs.replace(make_dispatch(1), media=("https://example.invalid/a.jpg",))
    async with harness(sim(), fast()) as h:
        await h.connector.submit([make_dispatch(0), mms, make_dispatch(2)])
        await h.until(lambda ev: sum(isinstance(e, (Submitted, SubmitFailed)) for e in ev) == 3)
        (failed,) = h.of(SubmitFailed)
        assert failed.ref == 1 and failed.permanent and failed.name == "MEDIA_UNSUPPORTED"
        assert sorted(e.ref for e in h.of(Submitted)) == [0, 2]


async def test_deferred_answers_wait_for_acknowledge(harness, make_dispatch) -> None:
    """With ``deferred_acks`` a receipt's deliver_sm_resp waits for ``acknowledge`` (the state it
    made is written): the SMSC's window of unanswered receipts fills and it sends no more until
    answered; every receipt is answered exactly once in the end."""
    async with harness(sim(window=5), fast(binds=1), deferred_acks=True) as h:
        await h.connector.submit([make_dispatch(i) for i in range(20)])
        await h.until(receipts(5))
        matched = h.of(ReceiptMatched)
        assert all(len(e.acks) == 1 for e in matched)
        assert h.sim.counters()["receipts_acked"] == 0 and h.connector.owed_answers() == 5
        done = 0
        while done < 20:
            matched = h.of(ReceiptMatched)
            h.connector.acknowledge([a for e in matched[done:] for a in e.acks])
            done = len(matched)
            if done < 20:
                await h.until(receipts(done + 1))
        with anyio.fail_after(10):
            while h.sim.counters()["receipts_acked"] < 20:
                await anyio.sleep(0.01)
        assert h.connector.owed_answers() == 0
        assert h.sim.counters()["receipts_sent"] == 20  # none sent again: each answered once


async def test_answers_at_once_without_deferral(harness, make_dispatch) -> None:
    async with harness(sim(window=5), fast(binds=1)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(20)])
        await h.until(receipts(20))
        assert all(e.acks == () for e in h.of(ReceiptMatched)) and h.connector.owed_answers() == 0


async def test_deferred_mo_is_answered_once_acknowledged(harness) -> None:
    """An MO's deliver_sm waits for ``acknowledge`` (its record is stored); the parts of a long
    MO that do not complete it are answered at once."""
    from carriers.base import Inbound

    async with harness(sim(mo_rate=50.0, mo_limit=4, mo_long_every=2, mo_text="STOP"), fast(binds=1),
                       deferred_acks=True) as h:  # fmt: skip
        await h.until(lambda ev: sum(isinstance(e, Inbound) for e in ev) == 4)
        mos = h.of(Inbound)
        assert all(len(m.acks) == 1 for m in mos)
        # 2 short MOs and 2 long ones in parts: the parts that did not complete a message are
        # answered at once; the 4 that made an Inbound are owed
        sent = h.sim.counters()["mos_sent"]
        assert sent > 4
        with anyio.fail_after(10):
            while h.sim.counters()["mos_acked"] < sent - 4:
                await anyio.sleep(0.01)
        assert h.sim.counters()["mos_acked"] == sent - 4 and h.connector.owed_answers() == 4
        h.connector.acknowledge([a for m in mos for a in m.acks])
        with anyio.fail_after(10):
            while h.sim.counters()["mos_acked"] < sent:
                await anyio.sleep(0.01)
        assert h.connector.owed_answers() == 0 and h.sim.counters()["mos_sent"] == sent
