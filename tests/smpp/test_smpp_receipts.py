"""Reading deliver_sm: receipts (TLVs, the informal text) and MO reassembly."""

from __future__ import annotations

import itertools

import pytest

from carriers.smpp import pdu as P
from carriers.smpp.receipts import (
    MoAssembler,
    decode_text,
    format_receipt_date,
    is_receipt,
    parse_receipt,
    parse_receipt_date,
    receipt_text,
)
from gateway.core.receipts import ReceiptState as R

TEXT = b"id:0123456789 sub:001 dlvrd:001 submit date:2401311259 done date:240131130005 stat:DELIVRD err:000 text:Hello"


def dlr(text: bytes = TEXT, esm: int = 0x04, **tlvs) -> P.DeliverSm:
    return P.DeliverSm(esm_class=esm, short_message=text, tlvs=P.make_tlvs(**tlvs) if tlvs else {})


def test_text_receipt() -> None:
    r = parse_receipt(dlr())
    assert (r.message_id, r.state, r.error_code, r.id_from_tlv) == ("0123456789", R.DELIVERED, 0, False)
    assert (r.submit_date, r.done_date) == ("2401311259", "240131130005")


def test_tlvs_win_over_text() -> None:
    r = parse_receipt(dlr(receipted_message_id=b"7b", message_state=5, network_error_code=b"\x01\x00\x0b"))
    assert (r.message_id, r.state, r.error_code, r.id_from_tlv) == ("7b", R.UNDELIVERABLE, 11, True)


def test_tlvs_without_text() -> None:
    r = parse_receipt(dlr(b"", receipted_message_id=b"99", message_state=3))
    assert (r.message_id, r.state, r.error_code) == ("99", R.EXPIRED, None)


def test_id_tlv_with_text_state() -> None:
    r = parse_receipt(dlr(TEXT.replace(b"DELIVRD", b"REJECTD"), receipted_message_id=b"abc"))
    assert (r.message_id, r.state, r.id_from_tlv) == ("abc", R.REJECTED, True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"stat:UNDELIV err:0x1f Id:55 submit date:2401311259", ("55", R.UNDELIVERABLE, 31)),
        (b"ID:AbC sub:1 dlvrd:0 SUBMIT DATE:2401311259 DONE DATE:2401311300 STAT:expired ERR:7", ("AbC", R.EXPIRED, 7)),
        (b"id:1 stat:ENROUTE", ("1", R.ENROUTE, None)),
        (b"id:2 stat:ACCEPTD err:000", ("2", R.ACCEPTED, 0)),
        (b"id:3 stat:DELETED", ("3", R.DELETED, None)),
        (b"id:4 stat:UNKNOWN", ("4", R.UNKNOWN, None)),
    ],
)
def test_text_variants(text: bytes, expected) -> None:
    r = parse_receipt(dlr(text))
    assert (r.message_id, r.state, r.error_code) == expected


@pytest.mark.parametrize("text", [b"", b"hello", b"id: stat:DELIVRD", b"sub:001 stat:DELIVRD err:000"])
def test_receipts_naming_no_message_are_unparsable(text: bytes) -> None:
    assert parse_receipt(dlr(text)) is None


@pytest.mark.parametrize(("text", "word", "err"), [(b"id:5 stat:BOGUS", "BOGUS", None), (b"id:5 err:011", None, 11),
                                                  (b"id:5 sub:001 dlvrd:001", None, None)])  # fmt: skip
def test_receipts_without_a_known_state_are_kept(text: bytes, word, err) -> None:
    r = parse_receipt(dlr(text))
    assert (r.message_id, r.state, r.word, r.error_code) == ("5", None, word, err)


def test_receipt_text_in_message_payload() -> None:
    r = parse_receipt(P.DeliverSm(esm_class=4, tlvs={P.TLV.message_payload: TEXT}))
    assert r.message_id == "0123456789"


def test_which_deliver_sm_are_receipts() -> None:
    assert is_receipt(dlr(esm=0x04)) and is_receipt(dlr(esm=0x20))  # receipt, intermediate
    assert not is_receipt(dlr(esm=0x00)) and not is_receipt(dlr(esm=0x40))
    assert is_receipt(dlr(esm=0, receipted_message_id=b"1"))


def test_dates() -> None:
    assert parse_receipt_date("2401311259") == 1706705940.0
    assert parse_receipt_date("240131125905") == 1706705945.0
    assert parse_receipt_date("2413311259") is None
    assert format_receipt_date(1706705945.0) == b"2401311259"
    assert format_receipt_date(1706705945.0, seconds=True) == b"240131125905"
    # cached by the second: fractions never round up, and the cache never mixes the two formats
    assert format_receipt_date(1706705945.999, seconds=True) == b"240131125905"
    assert format_receipt_date(1706705946.0, seconds=True) == b"240131125906"
    assert format_receipt_date(1706705999.9) == b"2401311259"
    assert format_receipt_date(1706706000.0) == b"2401311300"


def test_round_trip_of_our_own_text() -> None:
    text = receipt_text(b"42", R.UNDELIVERABLE, 12, b"2401311259", b"2401311300", b"hi")
    r = parse_receipt(dlr(text))
    assert (r.message_id, r.state, r.error_code) == ("42", R.UNDELIVERABLE, 12)


# -- MO ----------------------------------------------------------------------------------------


def udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes((5, 0, 3, ref, total, seq))


def udh16(ref: int, total: int, seq: int) -> bytes:
    return bytes((6, 8, 4, ref >> 8, ref & 0xFF, total, seq))


def mo(sm: bytes, esm: int = 0x40, dc: int = 0, **tlvs) -> P.DeliverSm:
    return P.DeliverSm(
        source_addr=b"447911", destination_addr=b"SLUICE", esm_class=esm, data_coding=dc, short_message=sm,
        tlvs=P.make_tlvs(**tlvs) if tlvs else {},
    )


def test_single_mo() -> None:
    m = MoAssembler().add(mo(b"hello", esm=0), now=0)
    assert (m.sender, m.recipient, m.text, m.parts) == ("447911", "SLUICE", "hello", 1)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("header", [udh8, udh16])
def test_udh_parts_in_any_order(order, header) -> None:
    a = MoAssembler()
    chunks = [b"one ", b"two ", b"three"]
    out = [a.add(mo(header(300 % 256 if header is udh8 else 300, 3, i + 1) + chunks[i]), now=i) for i in order]
    assert out[:2] == [None, None]
    assert out[2].text == "one two three" and out[2].parts == 3
    assert a.waiting == 0


def test_sar_parts() -> None:
    a = MoAssembler()
    assert a.add(mo(b"world", esm=0, sar_msg_ref_num=9, sar_total_segments=2, sar_segment_seqnum=2), now=0) is None
    m = a.add(mo(b"hello ", esm=0, sar_msg_ref_num=9, sar_total_segments=2, sar_segment_seqnum=1), now=0)
    assert m.text == "hello world"


def test_ucs2_parts_keep_surrogate_pairs() -> None:
    text = "héllo 👋 wörld"
    raw = text.encode("utf-16-be")
    a = MoAssembler()
    a.add(mo(udh8(1, 2, 2) + raw[10:], dc=8), now=0)
    assert a.add(mo(udh8(1, 2, 1) + raw[:10], dc=8), now=0).text == text


def test_incomplete_mo_is_heard_after_the_hold() -> None:
    """A part that never comes does not lose the reply: after ``hold_s`` the parts that came, in
    order (an opt-out in them is heard). hunt12: before, the whole message was dropped."""
    a = MoAssembler(hold_s=10)
    a.add(mo(udh8(1, 3, 3) + b" please"), now=0)
    a.add(mo(udh8(1, 3, 1) + b"STOP"), now=0)
    assert a.expire(9.9) == []
    [m] = a.expire(10)
    assert (m.text, m.parts, m.missing, m.sender) == ("STOP please", 3, 1, "447911")
    assert a.incomplete == 1 and a.waiting == 0 and a.expire(20) == []


def test_incomplete_mos_are_bounded() -> None:
    """More than ``max_waiting`` incomplete messages: the oldest is handed out, not kept for ever."""
    a = MoAssembler(hold_s=300, max_waiting=2)
    for ref in range(3):
        assert a.add(mo(udh8(ref, 2, 1) + b"part of %d" % ref), now=ref) is None
    assert a.waiting == 2
    assert [m.text for m in a.expire(3)] == ["part of 0"]


# hunt12: what peers send that the catalogue above did not (each was garbage text or a lost reply).
def test_udh_in_message_payload_parts_in_any_order() -> None:
    """UDHI set, short_message empty, the UDH and text in message_payload (SMPP 3.4 §5.3.2.32)."""
    for header in (udh8, udh16):
        a = MoAssembler()
        assert a.add(mo(b"", message_payload=header(7, 2, 2) + b"world"), now=0) is None
        m = a.add(mo(b"", message_payload=header(7, 2, 1) + b"hello "), now=0)
        assert (m.text, m.parts) == ("hello world", 2)


def test_a_udh_without_concatenation_is_not_text() -> None:
    """UDHI with other IEs only (application port addressing, IEI 0x05): one message, header cut."""
    port_udh = bytes((6, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0))
    assert MoAssembler().add(mo(port_udh + b"hello"), now=0).text == "hello"
    assert MoAssembler().add(mo(b"", message_payload=port_udh + b"hi"), now=0).text == "hi"


def test_parts_numbered_outside_the_message_are_ignored() -> None:
    a = MoAssembler()
    assert a.add(mo(udh8(3, 2, 0) + b"zero"), now=0) is None
    assert a.add(mo(udh8(3, 2, 9) + b"nine"), now=0) is None
    assert a.add(mo(udh8(3, 2, 1) + b"one "), now=0) is None
    assert a.add(mo(udh8(3, 2, 2) + b"two"), now=0).text == "one two"


def test_same_ref_from_different_senders_do_not_mix() -> None:
    a = MoAssembler()
    other = P.DeliverSm(source_addr=b"33611", destination_addr=b"SLUICE", esm_class=0x40, short_message=udh8(1, 2, 2) + b"B2")
    assert a.add(mo(udh8(1, 2, 2) + b"A2"), now=0) is None
    assert a.add(other, now=0) is None
    assert a.add(mo(udh8(1, 2, 1) + b"A1"), now=0).text == "A1A2"


def test_decode_text() -> None:
    assert decode_text(b"abc", 1) == "abc"
    assert decode_text("é".encode("latin-1"), 3) == "é"
    assert decode_text("☃".encode("utf-16-be"), 8) == "☃"


def test_the_log_excerpt_of_a_receipt_is_bounded_and_printable() -> None:
    from carriers.smpp.receipts import receipt_excerpt

    pdu = dlr(b"stat:DELIVRD \x1b[31m\r\nforged log line " + b"x" * 500, network_error_code=b"\x03\x00\x0b")
    line = receipt_excerpt(pdu)
    assert len(line) <= 200 and line.endswith("...")
    assert line.isprintable() and "\n" not in line and "\x1b" not in line
    assert line.startswith("stat:DELIVRD \\x1b[31m\\r\\nforged")
    assert receipt_excerpt(dlr(b"", receipted_message_id=b"7b")).endswith("tlvs:0x001e=376200")
