"""The codec against smpplib (the reference) on generated PDUs, and against garbage.

For every PDU both sides support, hypothesis draws the fields (mandatory ones and the optional
TLVs whose type both sides agree on) and checks: our encoder produces smpplib's bytes, our
decoder reads smpplib's bytes back to the drawn fields, and smpplib reads ours back too.
"""

from __future__ import annotations

import random

import pytest
import smpplib.command
import smpplib.consts
import smpplib.smpp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smpplib.ptypes import flag, ostr

from carriers.errors import LocalProtocolError, PduError
from carriers.smpp import pdu as P

OURS: dict[str, type[P.Pdu]] = {
    "bind_transmitter": P.BindTransmitter,
    "bind_receiver": P.BindReceiver,
    "bind_transceiver": P.BindTransceiver,
    "bind_transmitter_resp": P.BindTransmitterResp,
    "bind_receiver_resp": P.BindReceiverResp,
    "bind_transceiver_resp": P.BindTransceiverResp,
    "unbind": P.Unbind,
    "unbind_resp": P.UnbindResp,
    "enquire_link": P.EnquireLink,
    "enquire_link_resp": P.EnquireLinkResp,
    "generic_nack": P.GenericNack,
    "submit_sm": P.SubmitSm,
    "submit_sm_resp": P.SubmitSmResp,
    "deliver_sm": P.DeliverSm,
    "deliver_sm_resp": P.DeliverSmResp,
    "data_sm": P.DataSm,
    "data_sm_resp": P.DataSmResp,
}


class _Client:
    """smpplib wants a client to number requests; the test sets the sequence itself."""

    sequence = 0

    def next_sequence(self) -> int:
        return 0


def _smpplib_class(name: str) -> type:
    return type(smpplib.smpp.make_pdu(name, client=_Client(), sequence=1))


def _kind(param: smpplib.command.Param) -> str | None:
    if param.type is int:
        return {1: "u8", 2: "u16", 4: "u32"}[param.size]
    if param.type is str:
        return "cstr"
    if param.type is ostr:
        return "ostr"
    assert param.type is flag
    return None


_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _fields(name: str) -> tuple[list[tuple[str, smpplib.command.Param]], list[tuple[str, int]]]:
    """(mandatory fields, TLVs both sides type alike) of a PDU, in smpplib's order."""
    cls = _smpplib_class(name)
    mandatory, optional = [], []
    for field in cls.params_order:
        param = cls.params[field]
        is_optional = field in smpplib.consts.OPTIONAL_PARAMS and field not in getattr(
            cls, "mandatory_fields", ()
        )
        if not is_optional:
            if field != "sm_length":
                mandatory.append((field, param))
            continue
        tag = smpplib.consts.OPTIONAL_PARAMS[field]
        if _kind(param) is not None and _kind(param) == P.tlv_kind(tag):
            optional.append((field, tag))
    return mandatory, optional


def _value(field: str, param: smpplib.command.Param, kind: str, tlv: bool) -> st.SearchStrategy:
    if kind in ("u8", "u16", "u32"):
        size = {"u8": 1, "u16": 2, "u32": 4}[kind]
        if field == "interface_version":
            return st.just(0x34)  # smpplib forces SMPP 3.4
        return st.integers(0, 256**size - 1)
    if kind == "cstr":
        limit = getattr(param, "max", 17)
        # smpplib drops an empty string TLV, and keeps max-1 characters of a mandatory one
        return st.text(_ASCII, min_size=1 if tlv else 0, max_size=limit - 1)
    if field == "network_error_code":
        return st.binary(min_size=3, max_size=3)
    if field == "short_message":
        return st.binary(max_size=254)
    return st.binary(min_size=1, max_size=getattr(param, "max", 64))


@st.composite
def generated(draw: st.DrawFn, name: str) -> tuple[dict, dict]:
    mandatory, optional = _fields(name)
    values: dict = {}
    for field, param in mandatory:
        values[field] = draw(_value(field, param, _kind(param) or "ostr", tlv=False))
    tlvs: dict = {}
    for field, tag in optional:
        if draw(st.booleans()):
            param = _smpplib_class(name).params[field]
            tlvs[field] = draw(_value(field, param, P.tlv_kind(tag), tlv=True))
    if "message_payload" in tlvs and "short_message" in values:
        values["short_message"] = b""  # smpplib refuses both at once (and so does SMPP 3.4)
    header = {
        "sequence": draw(st.integers(1, 0x7FFFFFFF)),
        "status": draw(st.integers(0, 0xFFFFFFFF)) if name.endswith(("_resp", "nack")) else 0,
    }
    return header, {"values": values, "tlvs": tlvs}


def _as_bytes(v: object) -> object:
    return v.encode("ascii") if isinstance(v, str) else v


def _smpplib_bytes(name: str, header: dict, body: dict) -> bytes:
    kwargs = dict(body["values"])
    kwargs.update(body["tlvs"])
    pdu = smpplib.smpp.make_pdu(name, client=_Client(), sequence=header["sequence"], **kwargs)
    pdu.sequence = header["sequence"]
    pdu.status = header["status"]
    return pdu.generate()


def _ours(name: str, header: dict, body: dict) -> P.Pdu:
    fields = {k: _as_bytes(v) for k, v in body["values"].items()}
    tlvs = {k: _as_bytes(v) for k, v in body["tlvs"].items()}
    if tlvs:
        fields["tlvs"] = P.make_tlvs(**tlvs)
    return OURS[name](sequence=header["sequence"], status=header["status"], **fields)


@pytest.mark.parametrize("name", sorted(OURS))
def test_same_bytes_as_smpplib_both_ways(name: str) -> None:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(generated(name))
    def check(case: tuple[dict, dict]) -> None:
        header, body = case
        reference = _smpplib_bytes(name, header, body)
        ours = _ours(name, header, body)
        assert P.encode(ours) == reference
        back = P.decode(reference)
        assert type(back) is OURS[name]
        assert (back.sequence, back.status) == (header["sequence"], header["status"])
        for field, value in body["values"].items():
            assert getattr(back, field) == _as_bytes(value), field
        if hasattr(back, "tlvs"):
            assert P.named_tlvs(back.tlvs) == {k: _as_bytes(v) for k, v in body["tlvs"].items()}
        theirs = smpplib.smpp.parse_pdu(P.encode(ours), client=_Client())
        assert (theirs.command, theirs.sequence, theirs.status) == (name, header["sequence"], header["status"])
        for field, value in {**body["values"], **body["tlvs"]}.items():
            got = _as_bytes(getattr(theirs, field))
            if got is None:  # smpplib stops reading at the end of the data: trailing fields unset
                assert not value, field
            else:
                assert got == _as_bytes(value), field

    check()


def test_every_pdu_type_is_covered() -> None:
    assert set(OURS.values()) | {P.SubmitMulti, P.SubmitMultiResp, P.UnknownPdu} == set(P._ENCODERS)


@settings(max_examples=200, deadline=None)
@given(
    dests=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=20).filter(lambda b: 0 not in b)),
            st.tuples(st.none(), st.none(), st.binary(max_size=20).filter(lambda b: 0 not in b)),
        ),
        min_size=1,
        max_size=5,
    ),
    sm=st.binary(max_size=254),
    failed=st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.just(b"4479"), st.integers(0, 2**32 - 1)),
        max_size=3,
    ),
)
def test_submit_multi_round_trip(dests: list, sm: bytes, failed: list) -> None:
    pdu = P.SubmitMulti(sequence=3, source_addr=b"Sluice", destinations=tuple(dests), short_message=sm)
    assert P.decode(P.encode(pdu)) == pdu
    resp = P.SubmitMultiResp(sequence=3, message_id=b"abc", unsuccess=tuple(failed))
    assert P.decode(P.encode(resp)) == resp


def test_stream_framing_keeps_partial_tail() -> None:
    one = P.encode(P.SubmitSmResp(sequence=1, message_id=b"a"))
    two = P.encode(P.DeliverSm(sequence=2, short_message=b"hi", tlvs=P.make_tlvs(message_state=2)))
    data = one + two + one[:10]
    pdus, used = P.decode_stream(data)
    assert [type(p) for p in pdus] == [P.SubmitSmResp, P.DeliverSm]
    assert used == len(one) + len(two)
    # byte by byte gives the same PDUs
    got, buf = [], b""
    for i in range(len(data)):
        buf += data[i : i + 1]
        found, used = P.decode_stream(buf)
        got += found
        buf = buf[used:]
    assert got == pdus and buf == one[:10]


def test_responses_without_body_are_accepted() -> None:
    # SMPP 3.4 §4.4.2: no body when command_status is non-zero
    bare = P.header(P.CommandId.SUBMIT_SM_RESP, 0x58, 9, 0)
    assert P.decode(bare) == P.SubmitSmResp(sequence=9, status=0x58)
    assert P.decode(P.header(P.CommandId.BIND_TRANSCEIVER_RESP, 0x0E, 1, 0)).status == 0x0E


def test_unknown_command_is_a_value_not_an_error() -> None:
    raw = P.header(0x00000102, 0, 4, 3) + b"abc"
    (pdu,), _ = P.decode_stream(raw)
    assert pdu == P.UnknownPdu(sequence=4, command_id=0x102, body=b"abc")
    assert P.encode(pdu) == raw


@pytest.mark.parametrize(
    ("data", "status", "fatal"),
    [
        (P.header(P.CommandId.SUBMIT_SM, 0, 7, 3) + b"abc", P.Status.ESME_RINVCMDLEN, False),  # no NULs
        (P.encode(P.DeliverSm(sequence=7, short_message=b"xyz"))[:-1], None, None),  # incomplete
        (b"\x00\x00\x00\x05" + b"\x00" * 12, P.Status.ESME_RINVCMDLEN, True),  # length < 16
        (b"\x7f\x00\x00\x00" + b"\x00" * 12, P.Status.ESME_RINVCMDLEN, True),  # absurd length
        (P.encode(P.SubmitSmResp(sequence=7, message_id=b"1")) + b"\x02\x0c\x00", P.Status.ESME_RINVOPTPARSTREAM, False),
    ],
)
def test_malformed_pdus_become_typed_errors(data: bytes, status: int | None, fatal: bool | None) -> None:
    if data[:4] != len(data).to_bytes(4, "big") and status is not None and not fatal:
        data = len(data).to_bytes(4, "big") + data[4:]
    pdus, used = P.decode_stream(data)
    if status is None:
        assert pdus == [] and used == 0
        return
    (err,) = pdus
    assert isinstance(err, PduError)
    assert err.command_status == status and err.fatal == fatal
    if not fatal:
        assert err.sequence == 7


def test_sm_length_past_the_end() -> None:
    good = P.encode(P.SubmitSm(sequence=5, short_message=b"hello"))
    bad = good[:-6] + b"\xff" + good[-5:]  # sm_length 255 but 5 octets follow
    with pytest.raises(PduError) as info:
        P.decode(bad)
    assert info.value.sequence == 5 and info.value.command_id == P.CommandId.SUBMIT_SM


@pytest.mark.parametrize(
    "pdu",
    [
        P.SubmitSm(source_addr=b"x" * 21),
        P.SubmitSm(destination_addr=b"12\x0034"),
        P.SubmitSm(short_message=b"x" * 255),
        P.SubmitSm(esm_class=256),
        P.SubmitSm(sequence=2**32),
        P.BindTransceiver(password=b"123456789"),
        P.SubmitSmResp(message_id=b"x" * 65),
    ],
)
def test_encoding_invalid_fields_is_a_local_error(pdu: P.Pdu) -> None:
    with pytest.raises(LocalProtocolError):
        P.encode(pdu)


def test_tlv_helpers() -> None:
    tlvs = P.make_tlvs(receipted_message_id=b"abc", message_state=2, alert_on_message_delivery=True)
    assert tlvs == {0x1E: b"abc\0", 0x427: b"\x02", 0x130C: b""}
    assert P.named_tlvs({**tlvs, 0x1401: b"v"}) == {
        "receipted_message_id": b"abc",
        "message_state": 2,
        "alert_on_message_delivery": True,
        "0x1401": b"v",
    }
    with pytest.raises(PduError):
        P.tlv_value(P.TLV.message_state, b"\x00\x02")
    with pytest.raises(LocalProtocolError):
        P.make_tlvs(no_such_tlv=1)
    with pytest.raises(LocalProtocolError):
        P.make_tlvs(sar_total_segments=256)


def test_status_names() -> None:
    assert P.status_name(0x58) == "ESME_RTHROTTLED"
    assert P.status_name(0x401) == "VENDOR_0x401"
    assert P.status_name(0x1234) == "UNKNOWN_0x1234"
    assert P.is_throttle(0x14) and P.is_temporary(0x08) and not P.is_temporary(0x0B)


# --- garbage in never crashes -------------------------------------------------------------

_SAMPLES = [
    P.encode(P.SubmitSm(sequence=1, source_addr=b"S", destination_addr=b"4479", short_message=b"hi there")),
    P.encode(P.DeliverSm(sequence=2, esm_class=4, short_message=b"id:1 stat:DELIVRD", tlvs=P.make_tlvs(message_state=2))),
    P.encode(P.SubmitSmResp(sequence=3, message_id=b"abc")),
    P.encode(P.BindTransceiver(sequence=4, system_id=b"sys", password=b"pw")),
    P.encode(P.BindTransceiverResp(sequence=4, system_id=b"smsc", tlvs=P.make_tlvs(sc_interface_version=0x34))),
    P.encode(P.DataSm(sequence=5, tlvs=P.make_tlvs(message_payload=b"x" * 300))),
    P.encode(P.SubmitMulti(sequence=6, destinations=((1, 1, b"44"), (None, None, b"dl")))),
    P.encode(P.SubmitMultiResp(sequence=7, message_id=b"m", unsuccess=((1, 1, b"44", 11),))),
    P.encode(P.EnquireLink(sequence=8)),
]


def _check_never_crashes(data: bytes) -> None:
    pdus, used = P.decode_stream(data)
    assert 0 <= used <= len(data)
    for p in pdus:
        assert isinstance(p, (P.Pdu, PduError))
        if isinstance(p, P.Pdu) and not isinstance(p, P.UnknownPdu):
            P.decode(P.encode(p))  # whatever we accept, we can write and read back
    try:
        P.decode(data)
    except PduError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    _check_never_crashes(data)


@settings(max_examples=500, deadline=None)
@given(
    sample=st.sampled_from(_SAMPLES),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 400),
)
def test_mutated_pdus_never_crash(sample: bytes, edits: list, cut: int) -> None:
    data = bytearray(sample)
    for where, value in edits:
        if where >= 4 and where < len(data):  # keep command_length so the body is what varies
            data[where] = value
    _check_never_crashes(bytes(data[: max(cut, 16)]))
    _check_never_crashes(bytes(data))


def test_random_streams_never_crash() -> None:
    rng = random.Random(7)
    for _ in range(300):
        chunks = [rng.choice(_SAMPLES) for _ in range(5)]
        data = bytearray(b"".join(chunks))
        for _ in range(rng.randint(0, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        _check_never_crashes(bytes(data))
