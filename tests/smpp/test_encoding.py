"""How the connector turns a Dispatch into submit_sm PDUs, per carrier setting (no I/O)."""

from __future__ import annotations

import math

import anyio
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from carriers.smpp import pdu as P
from carriers.smpp.connector import SmppConnector, SmppSettings, _gsm7_septets
from gateway.core import segments
from carriers.smpp.receipts import MoAssembler
from tests.smpp.conftest import make_dispatch_fn
from gateway.errors import ConfigError

LONG = "a long message that needs several parts " * 8  # 320 GSM characters: 3 parts


def pdus(d, **kw) -> list[P.SubmitSm]:
    send, _ = anyio.create_memory_object_stream(math.inf)
    c = SmppConnector(SmppSettings(name="c", **kw), send, password="pw")
    work = c._encode(d)
    return [P.decode(P.header(P.CommandId.SUBMIT_SM, 0, 1, len(b)) + b) for b in work.bodies]


def reassemble(parts: list[P.SubmitSm]) -> str:
    """Read our own parts back as an MO would be (any order): the handset's view."""
    a = MoAssembler()
    out = None
    for p in reversed(parts):
        out = a.add(P.DeliverSm(**{f: getattr(p, f) for f in p.__struct_fields__ if f not in ("sequence", "status")}), 0) or out
    return out.text


def test_single_part(make_dispatch) -> None:
    (p,) = pdus(make_dispatch(1, "hello"))
    assert (p.short_message, p.data_coding, p.esm_class, p.registered_delivery) == (b"hello", 0, 0, 1)
    assert (p.destination_addr, p.dest_addr_ton, p.dest_addr_npi) == (b"447911000001", 1, 1)
    assert (p.source_addr, p.source_addr_ton, p.source_addr_npi) == (b"Sluice", 5, 0)


def test_udh_8bit_reference(make_dispatch) -> None:
    parts = pdus(make_dispatch(1, LONG))
    assert len(parts) == 3
    (ref,) = {p.short_message[3] for p in parts}
    for seq, p in enumerate(parts, 1):
        assert p.esm_class == 0x40
        assert p.short_message[:6] == bytes((5, 0, 3, ref, 3, seq))
        assert len(p.short_message) <= 6 + 153
    assert reassemble(parts) == LONG


def test_udh_16bit_reference(make_dispatch) -> None:
    parts = pdus(make_dispatch(1, LONG), long_messages="udh16")
    assert all(p.short_message[:3] == bytes((6, 8, 4)) for p in parts)
    assert reassemble(parts) == LONG


def test_sar_tlvs(make_dispatch) -> None:
    parts = pdus(make_dispatch(1, LONG), long_messages="sar")
    assert all(p.esm_class == 0 for p in parts)
    named = [P.named_tlvs(p.tlvs) for p in parts]
    assert [n["sar_segment_seqnum"] for n in named] == [1, 2, 3]
    assert {n["sar_total_segments"] for n in named} == {3} and len({n["sar_msg_ref_num"] for n in named}) == 1
    assert reassemble(parts) == LONG


def test_message_payload(make_dispatch) -> None:
    (p,) = pdus(make_dispatch(1, LONG), long_messages="payload")
    assert p.short_message == b"" and p.tlvs[P.TLV.message_payload] == LONG.encode()


def test_ucs2(make_dispatch) -> None:
    text = "Привет 👋 " * 12  # UCS-2, several parts, with surrogate pairs
    d = make_dispatch(1, text)
    parts = pdus(d)
    assert len(parts) == d.segments and all(p.data_coding == 8 for p in parts)
    assert reassemble(parts) == text


@pytest.mark.parametrize(("alphabet", "expected"), [("gsm7", b"\x00 caf\x05"), ("latin1", "@ café".encode("latin-1"))])
def test_gsm_alphabet_per_carrier(make_dispatch, alphabet: str, expected: bytes) -> None:
    (p,) = pdus(make_dispatch(1, "@ café"), gsm_alphabet=alphabet, data_coding_gsm=0 if alphabet == "gsm7" else 3)
    assert p.short_message == expected


def test_numeric_senders(make_dispatch) -> None:
    import msgspec

    d = make_dispatch(1)
    (p,) = pdus(msgspec.structs.replace(d, sender="+447700900123"))
    assert (p.source_addr, p.source_addr_ton, p.source_addr_npi) == (b"447700900123", 1, 1)
    (p,) = pdus(msgspec.structs.replace(d, sender="12345"))
    assert (p.source_addr_ton, p.source_addr_npi) == (0, 1)
    (p,) = pdus(d, source_ton=2, source_npi=9)
    assert (p.source_addr_ton, p.source_addr_npi) == (2, 9)


def test_password_from_the_environment(monkeypatch) -> None:
    send, _ = anyio.create_memory_object_stream(math.inf)
    monkeypatch.setenv("SLUICE_TEST_SMPP_PW", "s3cret")
    c = SmppConnector(SmppSettings(name="c", password_env="SLUICE_TEST_SMPP_PW"), send)
    assert c._password == b"s3cret"
    monkeypatch.delenv("SLUICE_TEST_SMPP_PW")
    with pytest.raises(ConfigError, match="SLUICE_TEST_SMPP_PW"):
        SmppConnector(SmppSettings(name="c", password_env="SLUICE_TEST_SMPP_PW"), send)


GSM_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€\f"
)


def test_fast_gsm7_path_covers_the_whole_alphabet() -> None:
    assert segments.is_gsm7(GSM_ALPHABET)
    assert _gsm7_septets(GSM_ALPHABET) == segments.encode_gsm7(GSM_ALPHABET)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=GSM_ALPHABET, max_size=200))
def test_fast_gsm7_path_agrees_with_segments(text: str) -> None:
    assert _gsm7_septets(text) == segments.encode_gsm7(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=[c for c in GSM_ALPHABET if c.isascii()] + ["`"], max_size=200))
def test_fast_gsm7_path_agrees_with_segments_on_ascii_texts(text: str) -> None:
    # ASCII texts take the bytes.translate path unless they hold an extension character (ESC + code)
    # "`" is not GSM-7 (the core never sends it this way): it must still go out as before, unmapped
    if "`" not in text:
        assert _gsm7_septets(text) == segments.encode_gsm7(text)
    assert _gsm7_septets(text) == text.translate(_slow_gsm7_table()).encode("latin-1")


def _slow_gsm7_table() -> dict[int, str]:
    table = {ord(segments.decode_gsm7(bytes((c,)))): chr(c) for c in range(128) if c != 0x1B}
    for c in range(128):
        table.setdefault(ord(segments.decode_gsm7(bytes((0x1B, c)))), "\x1b" + chr(c))
    return table


_GSM_ONE_PART = st.text(alphabet=GSM_ALPHABET, max_size=160).filter(lambda t: len(segments.split(t).parts) == 1)


@settings(max_examples=200, deadline=None)
@given(
    body=_GSM_ONE_PART,
    sender=st.one_of(st.text(alphabet="ABCxyz09 +", min_size=1, max_size=14), st.from_regex(r"\+?[0-9]{1,16}", fullmatch=True)),
    recipient=st.from_regex(r"\+[0-9]{1,22}", fullmatch=True),
    service_type=st.sampled_from(["", "CMT", "WAP"]),
    registered_delivery=st.integers(0, 255),
    data_coding_gsm=st.sampled_from([0, 1, 3]),
    dest=st.tuples(st.integers(0, 6), st.integers(0, 18)),
)
def test_one_part_submit_sm_from_prebuilt_parts_is_what_the_full_encoder_makes(
    body, sender, recipient, service_type, registered_delivery, data_coding_gsm, dest
) -> None:
    # The connector encodes a sender's fixed fields once; every message must still be exactly
    # the full encoder's submit_sm, and what the full encoder refuses is still refused.
    import msgspec

    send, _ = anyio.create_memory_object_stream(math.inf)
    s = SmppSettings(name="c", service_type=service_type, registered_delivery=registered_delivery,
                     data_coding_gsm=data_coding_gsm, dest_ton=dest[0], dest_npi=dest[1])  # fmt: skip
    c = SmppConnector(s, send, password="pw")
    d = msgspec.structs.replace(make_dispatch_fn(1, body), sender=sender, recipient=recipient)
    src_ton, src_npi, src = c._source(sender)
    dst = recipient.lstrip("+").encode()
    full = P.SubmitSm(0, 0, service_type.encode(), src_ton, src_npi, src, dest[0], dest[1], dst, 0, 0, 0, b"", b"",
                      registered_delivery, 0, data_coding_gsm, 0, segments.encode_gsm7(body), {})  # fmt: skip
    try:
        expected = P.encode_body(full)
    except P.LocalProtocolError:
        with pytest.raises(P.LocalProtocolError):
            c._encode(d)
        return
    for _ in range(2):  # the second from the cache
        (got,) = c._encode(d).bodies
        assert got == expected
