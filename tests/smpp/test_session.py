"""The session state machine: an ESME and an SMSC session joined in memory, on explicit time,
and a catalogue of misbehaving peers (raw bytes a correct session would never send)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carriers.errors import LocalProtocolError
from carriers.smpp import pdu as P
from carriers.smpp.pdu import CommandId as C
from carriers.smpp.session import (
    _TRANSITIONS,
    BindRefused,
    Bound,
    Closed,
    Input,
    PeerError,
    ResponseTimeout,
    Session,
    State,
    Unbound,
    UnexpectedResponse,
)


def submit(n: int = 0) -> P.SubmitSm:
    return P.SubmitSm(source_addr=b"Sluice", destination_addr=b"447911%06d" % n, short_message=b"hi %d" % n)


def decode_all(data: bytes) -> list[P.Pdu]:
    pdus, used = P.decode_stream(data)
    assert used == len(data)
    return pdus


# -- binding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "state"),
    [("transmitter", State.BOUND_TX), ("receiver", State.BOUND_RX), ("transceiver", State.BOUND_TRX)],
)
def test_bind_each_mode(pair, mode: str, state: State) -> None:
    assert pair.esme.state is State.OPEN
    pair.bind(mode)
    assert pair.esme.state is state and pair.smsc.state is state
    assert pair.esme.bound and pair.smsc.bound


def test_bind_refused_then_retried(pair) -> None:
    pair.esme.send(P.BindTransceiver(system_id=b"sluice", password=b"wrong"))
    (req,) = pair.to_smsc()
    assert pair.smsc.state is State.BINDING
    pair.smsc.send(pair.bind_resp(req, status=P.Status.ESME_RINVPASWD))
    assert pair.to_esme() == [BindRefused(status=0x0E, name="ESME_RINVPASWD")]
    assert pair.esme.state is State.OPEN and pair.smsc.state is State.OPEN
    pair.bind()
    assert pair.esme.state is State.BOUND_TRX


def test_generic_nack_to_bind_is_a_refusal(pair) -> None:
    seq = pair.esme.send(P.BindTransmitter(system_id=b"s"))
    pair.esme.receive_data(P.encode(P.GenericNack(sequence=seq, status=P.Status.ESME_RINVCMDID)))
    assert pair.esme.state is State.OPEN


def test_nothing_but_bind_before_binding(pair) -> None:
    with pytest.raises(LocalProtocolError):
        pair.esme.send(submit())
    with pytest.raises(LocalProtocolError):
        pair.smsc.send(P.DeliverSm())
    with pytest.raises(LocalProtocolError):
        pair.esme.send(P.Unbind())


def test_direction_rules(make_pair) -> None:
    tx = make_pair()
    tx.bind("transmitter")
    with pytest.raises(LocalProtocolError):
        tx.smsc.send(P.DeliverSm())  # no deliver_sm to a transmitter
    rx = make_pair()
    rx.bind("receiver")
    with pytest.raises(LocalProtocolError):
        rx.esme.send(submit())  # no submit_sm from a receiver
    rx.smsc.send(P.DeliverSm(short_message=b"mo"))
    (mo,) = rx.to_esme()
    assert isinstance(mo, P.DeliverSm)
    with pytest.raises(LocalProtocolError):
        rx.smsc.send(submit())  # the SMSC never submits


def test_state_table_has_no_exit_from_closed_but_close() -> None:
    assert {i for (s, i) in _TRANSITIONS if s is State.CLOSED} == {Input.CLOSE}
    s = Session("esme")
    s.close()
    with pytest.raises(LocalProtocolError):
        s._apply(Input.BIND_REQUESTED)


# -- submits and the window ----------------------------------------------------------------------


def test_window_of_submits_matched_by_sequence(bound_pair) -> None:
    p = bound_pair
    seqs = [p.esme.send(submit(i), p.now) for i in range(100)]
    assert p.esme.outstanding == 100
    reqs = p.to_smsc()
    assert [r.sequence for r in reqs] == seqs
    assert [r.destination_addr for r in reqs] == [b"447911%06d" % i for i in range(100)]
    for r in reversed(reqs):  # answered out of order
        p.smsc.send(P.SubmitSmResp(sequence=r.sequence, message_id=b"id%d" % r.sequence))
    resps = p.to_esme()
    assert sorted(r.sequence for r in resps) == seqs
    assert all(r.message_id == b"id%d" % r.sequence for r in resps)
    assert p.esme.outstanding == 0


def test_many_pdus_per_write_and_any_split(bound_pair) -> None:
    p = bound_pair
    for i in range(20):
        p.esme.send(submit(i))
    data = p.esme.data_to_send()
    got = []
    for i in range(0, len(data), 7):  # a read boundary in the middle of every PDU
        got += p.smsc.receive_data(data[i : i + 7])
    assert [g.sequence for g in got] == list(range(2, 22))


def test_response_timeout_and_late_response(make_pair) -> None:
    p = make_pair(response_timeout=5.0, enquire_link_interval=None)
    p.bind()
    p.now = 100.0
    seq = p.esme.send(submit(), p.now)
    assert p.esme.get_timer() == 105.0
    assert p.esme.handle_timer(104.9) == []
    assert p.esme.handle_timer(105.0) == [ResponseTimeout(sequence=seq, command_id=C.SUBMIT_SM)]
    assert p.esme.get_timer() is None and p.esme.bound  # a submit time-out does not kill the link
    late = P.SubmitSmResp(sequence=seq, message_id=b"x")
    assert p.esme.receive_data(P.encode(late), 106.0) == [UnexpectedResponse(pdu=late)]


def test_answered_requests_leave_the_timer(make_pair) -> None:
    p = make_pair(response_timeout=5.0, enquire_link_interval=None)
    p.bind()
    a = p.esme.send(submit(1), 0.0)
    p.esme.send(submit(2), 1.0)
    p.smsc.receive_data(p.esme.data_to_send())
    p.esme.receive_data(P.encode(P.SubmitSmResp(sequence=a, message_id=b"1")), 2.0)
    assert p.esme.get_timer() == 6.0


def test_wrong_kind_of_response_keeps_waiting(bound_pair) -> None:
    p = bound_pair
    seq = p.esme.send(submit())
    bogus = P.DeliverSmResp(sequence=seq)
    assert p.esme.receive_data(P.encode(bogus)) == [UnexpectedResponse(pdu=bogus)]
    assert p.esme.outstanding == 1
    good = P.SubmitSmResp(sequence=seq, message_id=b"1")
    assert p.esme.receive_data(P.encode(good)) == [good]


# -- link housekeeping -----------------------------------------------------------------------


def test_enquire_link_when_quiet_and_answered_automatically(make_pair) -> None:
    p = make_pair(response_timeout=10.0, enquire_link_interval=30.0)
    p.bind()
    assert p.esme.get_timer() == 30.0
    p.now = 30.0
    assert p.esme.handle_timer(30.0) == []
    (ping,) = decode_all(p.esme.data_to_send())
    assert isinstance(ping, P.EnquireLink)
    assert p.smsc.receive_data(P.encode(ping, ping.sequence), 30.0) == []  # answered, not surfaced
    assert p.to_esme() == []
    assert p.esme.outstanding == 0 and p.esme.get_timer() == 60.0


def test_traffic_postpones_enquire_link(make_pair) -> None:
    p = make_pair(enquire_link_interval=30.0)
    p.bind()
    p.smsc.send(P.DeliverSm(short_message=b"mo"))
    p.now = 20.0
    p.to_esme()
    assert p.esme.get_timer() == 50.0


def test_unanswered_enquire_link_means_link_dead(make_pair) -> None:
    p = make_pair(response_timeout=10.0, enquire_link_interval=30.0)
    p.bind()
    p.esme.handle_timer(30.0)
    p.esme.data_to_send()  # the SMSC never answers
    assert p.esme.get_timer() == 40.0
    events = p.esme.handle_timer(40.0)
    assert isinstance(events[0], ResponseTimeout) and events[0].command_id == C.ENQUIRE_LINK
    assert isinstance(events[1], Closed) and p.esme.closed


def test_unbind_by_esme(bound_pair) -> None:
    p = bound_pair
    p.esme.send(P.Unbind())
    assert p.esme.state is State.UNBINDING
    with pytest.raises(LocalProtocolError):
        p.esme.send(submit())
    assert p.to_smsc() == [Unbound(by_peer=True), Closed(reason="unbound by peer")]
    assert p.to_esme() == [Unbound(by_peer=False), Closed(reason="unbound")]
    assert p.esme.closed and p.smsc.closed


def test_unbind_by_smsc_mid_window(bound_pair) -> None:
    p = bound_pair
    for i in range(10):
        p.esme.send(submit(i))
    p.to_smsc()
    p.smsc.send(P.Unbind())
    events = p.to_esme()
    assert events == [Unbound(by_peer=True), Closed(reason="unbound by peer")]
    assert p.esme.outstanding == 0  # the connector requeues its own in-flight list
    (resp,) = decode_all(p.esme.data_to_send())
    assert isinstance(resp, P.UnbindResp)


def test_deliver_sm_accepted_while_unbinding(bound_pair) -> None:
    p = bound_pair
    p.esme.send(P.Unbind())
    p.smsc.send(P.DeliverSm(esm_class=4, short_message=b"id:1 stat:DELIVRD"))
    (dlr,) = p.to_esme()
    assert isinstance(dlr, P.DeliverSm)
    p.esme.send(P.DeliverSmResp(sequence=dlr.sequence))


def test_sequence_numbers_wrap(bound_pair) -> None:
    p = bound_pair
    p.esme._seq = 0x7FFFFFFE
    assert p.esme.send(submit()) == 0x7FFFFFFF
    assert p.esme.send(submit()) == 1


def test_a_window_sent_in_one_pass_is_the_same_as_one_by_one(make_pair) -> None:
    """``send_requests`` (the connector's window of submit_sm in one pass) puts on the wire,
    numbers, times and matches exactly what ``send_request`` does for each body in turn."""
    bodies = [P.encode_body(submit(i)) for i in range(50)]
    one = make_pair(response_timeout=5.0, enquire_link_interval=None)
    many = make_pair(response_timeout=5.0, enquire_link_interval=None)
    for p in (one, many):
        p.bind()
    seqs_one = [one.esme.send_request(C.SUBMIT_SM, b, now=10.0) for b in bodies]
    seqs_many = many.esme.send_requests(C.SUBMIT_SM, bodies, 10.0)
    assert list(seqs_many) == seqs_one
    data = many.esme.data_to_send()
    assert data == one.esme.data_to_send()
    assert many.esme.outstanding == 50 and many.esme.get_timer() == one.esme.get_timer() == 15.0
    reqs = many.smsc.receive_data(data, 10.0)
    assert [r.sequence for r in reqs] == seqs_one and [r.destination_addr for r in reqs] == [b"447911%06d" % i for i in range(50)]
    answers = [P.SubmitSmResp(sequence=s, message_id=b"id%d" % s) for s in seqs_one[::2]]
    for a in answers:
        many.smsc.send(a)
    assert [r.sequence for r in many.to_esme()] == seqs_one[::2]
    assert many.esme.outstanding == 25
    timed_out = many.esme.handle_timer(15.0)
    assert [t.sequence for t in timed_out] == seqs_one[1::2] and many.esme.outstanding == 0


def test_a_window_in_one_pass_wraps_its_sequence_numbers(bound_pair) -> None:
    p = bound_pair
    p.esme._seq = 0x7FFFFFFE
    assert list(p.esme.send_requests(C.SUBMIT_SM, [P.encode_body(submit(i)) for i in range(3)], 1.0)) == [0x7FFFFFFF, 1, 2]
    assert [r.sequence for r in p.to_smsc()] == [0x7FFFFFFF, 1, 2]


def test_a_window_in_one_pass_keeps_the_state_rules(make_pair) -> None:
    p = make_pair()
    with pytest.raises(LocalProtocolError):  # not bound yet
        p.esme.send_requests(C.SUBMIT_SM, [P.encode_body(submit())], 0.0)
    assert p.esme.data_to_send() == b"" and p.esme.outstanding == 0
    p.bind()
    with pytest.raises(ValueError):  # the link's own requests change its state: one at a time
        p.esme.send_requests(C.ENQUIRE_LINK, [b""], 0.0)


def test_receipts_answered_in_one_pass(bound_pair) -> None:
    p = bound_pair
    for i in range(3):
        p.smsc.send(P.DeliverSm(source_addr=b"447911%06d" % i, destination_addr=b"Sluice", esm_class=0x04,
                                short_message=b"id:%d stat:DELIVRD" % i))  # fmt: skip
    seqs = [d.sequence for d in p.to_esme()]
    p.esme.send_responses(C.DELIVER_SM_RESP, seqs, 0, b"\0")
    answers = p.to_smsc()
    assert answers == [P.DeliverSmResp(sequence=s) for s in seqs]
    assert p.smsc.outstanding == 0


# -- a catalogue of misbehaving peers (raw bytes) --------------------------------------------------


def test_submit_before_bind_gets_invalid_bind_status(pair) -> None:
    events = pair.smsc.receive_data(P.encode(submit(), 7))
    assert [type(e) for e in events] == [PeerError]
    (resp,) = decode_all(pair.smsc.data_to_send())
    assert resp == P.SubmitSmResp(sequence=7, status=P.Status.ESME_RINVBNDSTS)


def test_a_read_that_changes_the_state_judges_each_deliver_sm_by_the_state_it_finds(make_pair) -> None:
    """A receipt in the same read as the bind_resp is taken (the state it finds is bound), and
    one after the bind_resp of a transmitter is refused: the hot path's check follows the state."""
    for mode, taken in (("transceiver", True), ("transmitter", False)):
        p = make_pair()
        cls = {"transmitter": P.BindTransmitter, "transceiver": P.BindTransceiver}[mode]
        p.esme.send(cls(system_id=b"sluice", password=b"secret"), p.now)
        (req,) = p.to_smsc()
        dlr = P.DeliverSm(esm_class=4, short_message=b"id:1 stat:DELIVRD")
        before = P.encode(dlr, 7)  # before the bind_resp: not yet bound, refused either way
        events = p.esme.receive_data(before + P.encode(p.bind_resp(req)) + P.encode(dlr, 8), p.now)
        assert isinstance(events[0], PeerError) and isinstance(events[1], Bound)
        if taken:
            assert events[2:] == [P.DeliverSm(sequence=8, esm_class=4, short_message=b"id:1 stat:DELIVRD")]
        else:
            assert isinstance(events[2], PeerError) and len(events) == 3


def test_deliver_sm_to_a_transmitter_is_refused(make_pair) -> None:
    p = make_pair()
    p.bind("transmitter")
    events = p.esme.receive_data(P.encode(P.DeliverSm(short_message=b"x"), 9))
    assert isinstance(events[0], PeerError)
    (resp,) = decode_all(p.esme.data_to_send())
    assert resp == P.DeliverSmResp(sequence=9, status=P.Status.ESME_RINVBNDSTS)


def test_bind_twice_is_already_bound(bound_pair) -> None:
    bound_pair.smsc.receive_data(P.encode(P.BindTransceiver(system_id=b"x"), 50))
    (resp,) = decode_all(bound_pair.smsc.data_to_send())
    assert resp.status == P.Status.ESME_RALYBND and resp.sequence == 50


def test_unknown_command_gets_generic_nack(bound_pair) -> None:
    events = bound_pair.esme.receive_data(P.header(0x00000102, 0, 33, 0))
    assert events[0].command_status == P.Status.ESME_RINVCMDID
    (nack,) = decode_all(bound_pair.esme.data_to_send())
    assert nack == P.GenericNack(sequence=33, status=P.Status.ESME_RINVCMDID)


def test_malformed_request_gets_generic_nack_and_link_goes_on(bound_pair) -> None:
    p = bound_pair
    bad = P.header(C.DELIVER_SM, 0, 44, 3) + b"abc"
    good = P.encode(P.DeliverSm(short_message=b"ok"), 45)
    events = p.esme.receive_data(bad + good)
    assert isinstance(events[0], PeerError) and not events[0].fatal and events[0].sequence == 44
    assert isinstance(events[1], P.DeliverSm) and events[1].sequence == 45
    (nack,) = decode_all(p.esme.data_to_send())
    assert nack == P.GenericNack(sequence=44, status=P.Status.ESME_RINVCMDLEN)
    assert p.esme.bound


def test_malformed_response_is_not_answered(bound_pair) -> None:
    p = bound_pair
    seq = p.esme.send(submit())
    p.esme.data_to_send()
    bad = P.header(C.SUBMIT_SM_RESP, 0, seq, 3) + b"abc"  # no NUL
    events = p.esme.receive_data(bad)
    assert isinstance(events[0], PeerError)
    assert p.esme.data_to_send() == b""  # never answer a response


def test_impossible_length_closes(bound_pair) -> None:
    p = bound_pair
    events = p.esme.receive_data(b"\x00\x00\x00\x08" + b"\x00" * 12 + P.encode(P.EnquireLink(), 3))
    assert events[0].fatal and isinstance(events[1], Closed)
    assert p.esme.closed
    (nack,) = decode_all(p.esme.data_to_send())
    assert nack.status == P.Status.ESME_RINVCMDLEN
    assert p.esme.receive_data(P.encode(P.EnquireLink(), 4)) == []  # nothing after close


def test_generic_nack_to_a_submit(bound_pair) -> None:
    p = bound_pair
    seq = p.esme.send(submit())
    nack = P.GenericNack(sequence=seq, status=P.Status.ESME_RSYSERR)
    assert p.esme.receive_data(P.encode(nack)) == [nack]
    assert p.esme.outstanding == 0


def test_generic_nack_for_nothing(bound_pair) -> None:
    nack = P.GenericNack(sequence=0, status=P.Status.ESME_RINVCMDLEN)
    assert bound_pair.esme.receive_data(P.encode(nack)) == [UnexpectedResponse(pdu=nack)]


def test_duplicate_response(bound_pair) -> None:
    p = bound_pair
    seq = p.esme.send(submit())
    resp = P.SubmitSmResp(sequence=seq, message_id=b"a")
    assert p.esme.receive_data(P.encode(resp) + P.encode(resp)) == [resp, UnexpectedResponse(pdu=resp)]


def test_connection_lost(bound_pair) -> None:
    p = bound_pair
    p.esme.send(submit())
    assert p.esme.connection_lost() == [Closed(reason="connection lost")]
    assert p.esme.data_to_send() == b"" and p.esme.get_timer() is None


# -- properties ----------------------------------------------------------------------------------

_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 5)),
        st.tuples(st.just("deliver"), st.integers(0, 3)),
        st.tuples(st.just("answer"), st.integers(0, 10)),
        st.tuples(st.just("tick"), st.floats(0, 20)),
        st.tuples(st.just("unbind"), st.sampled_from(["esme", "smsc"])),
        st.tuples(st.just("garbage"), st.binary(max_size=40)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=_ACTIONS, mode=st.sampled_from(["transmitter", "receiver", "transceiver"]))
def test_random_conversations_never_crash_and_account_for_every_submit(make_pair, actions, mode) -> None:
    """Every submit_sm ends in exactly one of: a response, a time-out, or the link closing."""
    p = make_pair(response_timeout=5.0, enquire_link_interval=7.0)
    p.bind(mode)
    sent: set[int] = set()
    ended: set[int] = set()
    closed = False

    def account(events: list) -> None:
        nonlocal closed
        for e in events:
            if isinstance(e, (P.SubmitSmResp, P.GenericNack)) and e.sequence in sent:
                assert e.sequence not in ended
                ended.add(e.sequence)
            elif isinstance(e, ResponseTimeout) and e.command_id == C.SUBMIT_SM:
                assert e.sequence not in ended
                ended.add(e.sequence)
            elif isinstance(e, Closed):
                closed = True

    for action, arg in actions:
        try:
            if action == "submit":
                for _ in range(arg):
                    sent.add(p.esme.send(submit(), p.now))
            elif action == "deliver":
                for _ in range(arg):
                    p.smsc.send(P.DeliverSm(short_message=b"x"), p.now)
            elif action == "answer":
                for req in p.to_smsc():
                    if isinstance(req, P.SubmitSm) and arg % 3:
                        p.smsc.send(P.SubmitSmResp(sequence=req.sequence, message_id=b"m"))
                for ev in p.to_esme():
                    account([ev])
                    if isinstance(ev, P.DeliverSm):
                        p.esme.send(P.DeliverSmResp(sequence=ev.sequence))
            elif action == "tick":
                p.now += arg
                account(p.esme.handle_timer(p.now))
                p.smsc.handle_timer(p.now)
            elif action == "unbind":
                (p.esme if arg == "esme" else p.smsc).send(P.Unbind(), p.now)
            elif action == "garbage":
                account(p.esme.receive_data(arg, p.now))
        except LocalProtocolError:
            pass  # sending what the state does not allow: our (the test's) mistake, refused cleanly
        if p.esme.closed:
            closed = True
    if not closed:
        p.now += 100
        account(p.esme.handle_timer(p.now))
        account(p.esme.handle_timer(p.now + 100))
    assert closed or ended == sent


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.sampled_from(["esme", "smsc"]))
def test_random_bytes_into_a_session_never_crash(chunks: list[bytes], role: str) -> None:
    s = Session(role)  # type: ignore[arg-type]
    for chunk in chunks:
        for event in s.receive_data(chunk, 1.0):
            assert isinstance(event, (P.Pdu, PeerError, Closed, UnexpectedResponse, Bound, BindRefused, Unbound))
        s.data_to_send()
        s.handle_timer(2.0)


def test_bound_event_carries_peer_system_id(pair) -> None:
    pair.esme.send(P.BindTransceiver(system_id=b"sluice"))
    (req,) = pair.to_smsc()
    assert req.system_id == b"sluice"
    pair.smsc.send(pair.bind_resp(req))
    assert pair.to_esme() == [Bound(mode="transceiver", system_id=b"smsc")]
