"""A receipt read straight from the buffer (``receipt_pdu``, the ESME session's deliver_sm hook)
says what ``parse_receipt`` says of the decoded ``DeliverSm``, or declines (None) and the codec
decodes it as before: random receipts, TLVs in any order, repeated, missing, malformed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carriers.smpp import pdu as P
from carriers.smpp.receipts import parse_receipt, receipt_pdu
from carriers.smpp.session import Session

_TAGS = [int(P.TLV.receipted_message_id), int(P.TLV.message_state), int(P.TLV.network_error_code),
         int(P.TLV.message_payload), 0x1403]  # fmt: skip

_tlv = st.tuples(st.sampled_from(_TAGS), st.binary(max_size=12) | st.sampled_from([b"\x02", b"abc123\x00", b"\x03\x00\x01", b"\x09"]))
_text = st.sampled_from([b"", b"id:abc123 sub:001 dlvrd:001 submit date:2612080000 done date:2612080000 stat:DELIVRD err:000 text:",
                         b"id:0ABC123 stat:UNDELIV err:0x1f", b"err:12 id:", b"hello"]) | st.binary(max_size=40)  # fmt: skip


def _body(src: bytes, esm: int, text: bytes, tlvs: list[tuple[int, bytes]]) -> bytes:
    head = b"\0\0\0%b\0\0\0SLUICE\0%c\0\0\0\0\0\0\0\0%c" % (src, esm, len(text))
    return head + text + b"".join(t.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v for t, v in tlvs)


@settings(max_examples=400, deadline=None)
@given(src=st.sampled_from([b"447911000001", b"", b"1"]), esm=st.sampled_from([0x04, 0x20, 0x00, 0x40]),
       text=_text, tlvs=st.lists(_tlv, max_size=5), cut=st.integers(0, 3))  # fmt: skip
def test_what_the_hook_reads_is_what_the_parser_reads(src, esm, text, tlvs, cut) -> None:
    body = _body(src, esm, text, tlvs)
    if cut:
        body = body[:-cut] if len(body) > cut else body
    wire = P.header(P.CommandId.DELIVER_SM, 0, 7, len(body)) + body
    slow, used = P.decode_stream(wire)
    assert used == len(wire)
    got = receipt_pdu(b"xx" + wire, 2, 2 + len(wire), 7, 0)
    if got is None:
        return
    (pdu,) = slow
    assert isinstance(pdu, P.DeliverSm)
    assert got.sequence == 7 and got.receipt == parse_receipt(pdu)


@given(mid=st.binary(min_size=1, max_size=20).filter(lambda b: 0 not in b), state=st.integers(0, 9),
       err=st.integers(0, 999), mode=st.sampled_from(["both", "tlv"]))  # fmt: skip
def test_the_simulators_receipts_are_read_by_the_hook(mid, state, err, mode) -> None:
    from carriers.smpp.simulator import encode_receipt

    body = encode_receipt(mode, mid, b"id:%b stat:DELIVRD err:%03d" % (mid, err) if mode == "both" else b"",
                          b"447911000001", b"SLUICE", state, err)  # fmt: skip
    wire = P.header(P.CommandId.DELIVER_SM, 0, 9, len(body)) + body
    (pdu,), _ = P.decode_stream(wire)
    got = receipt_pdu(wire, 0, len(wire), 9, 0)
    expected = parse_receipt(pdu)
    if expected is not None and expected.id_from_tlv and expected.state is not None and 1 <= state <= 8:
        assert got is not None and got.receipt == expected
    else:
        assert got is None


def test_an_esme_session_with_the_hook_hands_out_receipts_and_answers_nothing_itself() -> None:
    esme, smsc = Session("esme", deliver=receipt_pdu), Session("smsc")
    esme.send(P.BindTransceiver(system_id=b"s", password=b"x"), 0.0)
    (req,) = smsc.receive_data(esme.data_to_send(), 0.0)
    smsc.send(P.BindTransceiverResp(sequence=req.sequence, system_id=b"smsc"), 0.0)
    esme.receive_data(smsc.data_to_send(), 0.0)
    tlvs = {P.TLV.receipted_message_id: b"abc\0", P.TLV.message_state: b"\x02"}
    smsc.send(P.DeliverSm(source_addr=b"447911000001", destination_addr=b"S", esm_class=4, tlvs=tlvs), 0.0)
    smsc.send(P.DeliverSm(source_addr=b"447911000001", destination_addr=b"S", short_message=b"an MO"), 0.0)
    receipt, mo = esme.receive_data(smsc.data_to_send(), 0.0)
    assert isinstance(receipt, P.DeliverReceipt) and receipt.receipt.message_id == "abc"
    assert isinstance(mo, P.DeliverSm) and mo.short_message == b"an MO"
    assert esme.data_to_send() == b""
