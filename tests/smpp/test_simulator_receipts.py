"""The simulator's receipts are spliced into a pre-encoded deliver_sm (``encode_receipt``):
byte for byte what encoding the ``DeliverSm`` struct makes of them, whatever the ids,
addresses, states and texts, and decoded by the ESME's own decoder and receipt parser as sent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carriers.smpp import pdu as P
from carriers.smpp.receipts import STATE_CODES, format_receipt_date, parse_receipt, receipt_text
from carriers.smpp.simulator import _receipt_struct, _ReceiptDates, encode_receipt
from carriers.errors import LocalProtocolError
from gateway.core.receipts import ReceiptState

_addr = st.binary(max_size=24).map(lambda b: b.replace(b"\0", b"x"))  # C-strings: past 20 the struct refuses
_mid = st.binary(min_size=1, max_size=80).map(lambda b: b.replace(b"\0", b"1"))
_modes = st.sampled_from(["both", "tlv", "text"])
_states = st.sampled_from(list(STATE_CODES))


def _reference(mode, mid, text, src, dst, code, err) -> bytes:
    return P.encode_body(_receipt_struct(mode, mid, text, src, dst, code, err))


@settings(max_examples=200, deadline=None)
@given(mode=_modes, mid=_mid, text=st.binary(max_size=260), src=_addr, dst=_addr, state=_states,
       err=st.integers(0, 0xFFFF))  # fmt: skip
def test_a_receipt_is_the_structs_encoding(mode, mid, text, src, dst, state, err) -> None:
    code = STATE_CODES[state]
    if mode == "tlv":
        text = b""
    try:
        want = _reference(mode, mid, text, src, dst, code, err)
    except LocalProtocolError:
        with pytest.raises(LocalProtocolError):
            encode_receipt(mode, mid, text, src, dst, code, err)
        return
    assert encode_receipt(mode, mid, text, src, dst, code, err) == want


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10**12), state=st.sampled_from([ReceiptState.DELIVERED, ReceiptState.UNDELIVERABLE]),
       submitted=st.floats(1.6e9, 2.0e9), later=st.floats(0, 3600), mode=st.sampled_from(["both", "text"]))  # fmt: skip
def test_a_receipt_decodes_and_parses_as_sent(n, state, submitted, later, mode) -> None:
    dates = _ReceiptDates()
    mid, text_id = b"%d" % n, b"%010d" % n
    err = 0 if state is ReceiptState.DELIVERED else 1
    text = receipt_text(text_id, state, err, dates.minute(submitted), dates.second(submitted + later))
    body = encode_receipt(mode, mid, text, b"447911123456", b"SLUICE", STATE_CODES[state], err)
    pdu = P.decode(P.header(P.CommandId.DELIVER_SM, 0, 7, len(body)) + body)
    assert isinstance(pdu, P.DeliverSm) and pdu.sequence == 7 and pdu.esm_class == 0x04
    assert (pdu.source_addr, pdu.destination_addr, pdu.short_message) == (b"447911123456", b"SLUICE", text)
    if mode == "both":
        assert pdu.tlvs[P.TLV.receipted_message_id] == mid + b"\0"
        assert pdu.tlvs[P.TLV.message_state] == bytes((STATE_CODES[state],))
    parsed = parse_receipt(pdu)
    assert parsed is not None and parsed.state is state


@given(epochs=st.lists(st.floats(1.6e9, 2.0e9), min_size=1, max_size=30))
def test_the_kept_dates_are_the_formatted_ones(epochs) -> None:
    dates = _ReceiptDates()
    for e in sorted(epochs) + epochs:  # in order of time, and not
        assert dates.minute(e) == format_receipt_date(e)
        assert dates.second(e) == format_receipt_date(e, seconds=True)
