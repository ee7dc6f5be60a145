"""What comes back in a deliver_sm (or data_sm): delivery receipts, and MO messages.

Receipts (SMPP 3.4 §2.11, Appendix B). esm_class bits 2-5 say "SMSC delivery receipt" (0x04) or
"intermediate notification" (0x20). The state and id are read from the ``receipted_message_id``
and ``message_state`` TLVs when present, else from the informal text::

    id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E text:...

with 10- or 12-digit dates (some SMSCs add seconds). Field names are matched case-insensitively
and in any order; the common layout is tried first with one regex.

MO messages are every other deliver_sm. Long ones come in parts (UDH IE 0x00 / 0x08, or the
SAR TLVs), in any order; ``MoAssembler`` puts them back together and gives up on a message whose
parts stop coming after ``hold_s`` seconds. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

import msgspec

from carriers.smpp import pdu as P
from gateway.core import segments
from gateway.core.receipts import ReceiptState

__all__ = [
    "Inbound",
    "MoAssembler",
    "Receipt",
    "STAT_WORDS",
    "decode_text",
    "is_receipt",
    "parse_receipt",
    "parse_receipt_date",
    "receipt_text",
]

STAT_WORDS: dict[bytes, ReceiptState] = {
    b"DELIVRD": ReceiptState.DELIVERED,
    b"DELIVERED": ReceiptState.DELIVERED,
    b"UNDELIV": ReceiptState.UNDELIVERABLE,
    b"UNDELIVERABLE": ReceiptState.UNDELIVERABLE,
    b"EXPIRED": ReceiptState.EXPIRED,
    b"DELETED": ReceiptState.DELETED,
    b"REJECTD": ReceiptState.REJECTED,
    b"REJECTED": ReceiptState.REJECTED,
    b"UNKNOWN": ReceiptState.UNKNOWN,
    b"ACCEPTD": ReceiptState.ACCEPTED,
    b"ACCEPTED": ReceiptState.ACCEPTED,
    b"ENROUTE": ReceiptState.ENROUTE,
}
WORD_OF_STATE: dict[ReceiptState, bytes] = {
    ReceiptState.DELIVERED: b"DELIVRD",
    ReceiptState.UNDELIVERABLE: b"UNDELIV",
    ReceiptState.EXPIRED: b"EXPIRED",
    ReceiptState.DELETED: b"DELETED",
    ReceiptState.REJECTED: b"REJECTD",
    ReceiptState.UNKNOWN: b"UNKNOWN",
    ReceiptState.ACCEPTED: b"ACCEPTD",
    ReceiptState.ENROUTE: b"ENROUTE",
}
MESSAGE_STATES: dict[int, ReceiptState] = {
    P.MessageState.ENROUTE: ReceiptState.ENROUTE,
    P.MessageState.DELIVERED: ReceiptState.DELIVERED,
    P.MessageState.EXPIRED: ReceiptState.EXPIRED,
    P.MessageState.DELETED: ReceiptState.DELETED,
    P.MessageState.UNDELIVERABLE: ReceiptState.UNDELIVERABLE,
    P.MessageState.ACCEPTED: ReceiptState.ACCEPTED,
    P.MessageState.UNKNOWN: ReceiptState.UNKNOWN,
    P.MessageState.REJECTED: ReceiptState.REJECTED,
}
STATE_CODES: dict[ReceiptState, int] = {v: k for k, v in MESSAGE_STATES.items()}

_RECEIPT_TYPES = (0x04, 0x20)  # esm_class bits 2-5: SMSC delivery receipt, intermediate notification
_TAG_ID = P.TLV.receipted_message_id
_TAG_STATE = P.TLV.message_state
_TAG_NETERR = P.TLV.network_error_code
_TAG_PAYLOAD = P.TLV.message_payload

_COMMON = re.compile(
    rb"id:(\S+) sub:\S* dlvrd:\S* submit date:(\d{10}(?:\d{2})?) done date:(\d{10}(?:\d{2})?) "
    rb"stat:(\w+) err:(\w+)",
    re.I,
)
_FIELDS = {
    "id": re.compile(rb"\bid:(\S+)", re.I),
    "submit": re.compile(rb"\bsubmit date:\s*(\d{10,12})", re.I),
    "done": re.compile(rb"\bdone date:\s*(\d{10,12})", re.I),
    "stat": re.compile(rb"\bstat:\s*(\w+)", re.I),
    "err": re.compile(rb"\berr:\s*(\w+)", re.I),
}


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """One receipt. ``id_from_tlv`` says whether ``message_id`` came from receipted_message_id
    (formatted like submit_sm_resp's) or from the text (often formatted otherwise)."""

    message_id: str
    state: ReceiptState
    error_code: int | None
    id_from_tlv: bool
    submit_date: str | None = None
    done_date: str | None = None


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """A whole MO message."""

    sender: str
    recipient: str
    text: str
    data_coding: int
    parts: int = 1
    source_ton: int = 0
    source_npi: int = 0


def is_receipt(pdu: P.DeliverSm | P.DataSm) -> bool:
    return (pdu.esm_class & 0x3C) in _RECEIPT_TYPES or _TAG_ID in pdu.tlvs


def _payload(pdu: P.DeliverSm | P.DataSm) -> bytes:
    sm = getattr(pdu, "short_message", b"")
    return sm or pdu.tlvs.get(_TAG_PAYLOAD, b"")


def _err(word: bytes | None) -> int | None:
    if not word:
        return None
    try:
        return int(word, 10)
    except ValueError:
        try:
            return int(word, 16)
        except ValueError:
            return None


def parse_receipt(pdu: P.DeliverSm | P.DataSm) -> Receipt | None:
    """The receipt in ``pdu``, or None if it carries no usable id and state."""
    tlvs = pdu.tlvs
    raw_id = tlvs.get(_TAG_ID)
    raw_state = tlvs.get(_TAG_STATE)
    err = None
    neterr = tlvs.get(_TAG_NETERR)
    if neterr is not None and len(neterr) == 3:
        err = int.from_bytes(neterr[1:], "big")  # §5.3.2.31: network type, then the error code
    if raw_id is not None and raw_state is not None and len(raw_state) == 1:
        state = MESSAGE_STATES.get(raw_state[0])
        if state is not None:
            if err is None:
                m = _FIELDS["err"].search(_payload(pdu))
                err = _err(m.group(1)) if m else None
            mid = raw_id[:-1] if raw_id.endswith(b"\0") else raw_id
            return Receipt(message_id=mid.decode("latin-1"), state=state, error_code=err, id_from_tlv=True)
    return _parse_text(_payload(pdu), raw_id, err)


def _parse_text(text: bytes, raw_id: bytes | None, err: int | None) -> Receipt | None:
    m = _COMMON.search(text)
    if m is not None:
        mid, submit, done, stat, err_word = m.groups()
    else:
        found = {k: r.search(text) for k, r in _FIELDS.items()}
        mid, submit, done, stat, err_word = (
            (f.group(1) if f else None) for f in (found[k] for k in ("id", "submit", "done", "stat", "err"))
        )
    state = STAT_WORDS.get(stat.upper()) if stat else None
    from_tlv = False
    if raw_id is not None:  # an id TLV with a text state: trust the TLV's id
        mid = raw_id[:-1] if raw_id.endswith(b"\0") else raw_id
        from_tlv = True
    if not mid or state is None:
        return None
    return Receipt(
        message_id=mid.decode("latin-1"),
        state=state,
        error_code=err if err is not None else _err(err_word),
        id_from_tlv=from_tlv,
        submit_date=submit.decode() if submit else None,
        done_date=done.decode() if done else None,
    )


def parse_receipt_date(value: str) -> float | None:
    """'2401311259' or '240131125959' (YYMMDDhhmm[ss], taken as UTC) -> epoch seconds."""
    try:
        fmt = "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M"
        return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def format_receipt_date(epoch: float, *, seconds: bool = False) -> bytes:
    # A simulator sends thousands of receipts a second, all with the same few dates: formatting
    # each (datetime + strftime, twice per receipt) was a fifth of the simulator's CPU in
    # bench e2e. Cached by the whole second, which is all the format shows.
    return _receipt_date(int(epoch // 1), seconds)


@functools.lru_cache(maxsize=256)
def _receipt_date(second: int, seconds: bool) -> bytes:
    return datetime.fromtimestamp(second, UTC).strftime("%y%m%d%H%M%S" if seconds else "%y%m%d%H%M").encode()


def receipt_text(
    message_id: bytes,
    state: ReceiptState,
    error_code: int,
    submit_date: bytes,
    done_date: bytes,
    text: bytes = b"",
) -> bytes:
    """The informal receipt text of SMPP 3.4 Appendix B."""
    delivered = b"001" if state is ReceiptState.DELIVERED else b"000"
    return b"id:%b sub:001 dlvrd:%b submit date:%b done date:%b stat:%b err:%03d text:%b" % (
        message_id,
        delivered,
        submit_date,
        done_date,
        WORD_OF_STATE[state],
        error_code,
        text[:20],
    )


# ---------------------------------------------------------------------------------------------
# MO


def decode_text(data: bytes, data_coding: int) -> str:
    """Decode a short message by its data_coding: 0 GSM 03.38 (one septet per octet),
    1 IA5/ASCII, 3 Latin-1, 8 UCS-2 (UTF-16-BE, so surrogate pairs survive), else Latin-1."""
    dc = data_coding
    if dc == 0x08:
        return data.decode("utf-16-be", errors="replace")
    if dc == 0x00:
        return segments.decode_gsm7(data)
    if dc == 0x01:
        return data.decode("ascii", errors="replace")
    return data.decode("latin-1")


def _concat_info(pdu: P.DeliverSm) -> tuple[int, int, int, bytes] | None:
    """(reference, total, seq, payload without UDH) if ``pdu`` is one part of a long message."""
    sm = pdu.short_message
    if pdu.esm_class & 0x40 and sm:
        udhl = sm[0]
        udh, body = sm[1 : 1 + udhl], sm[1 + udhl :]
        i = 0
        while i + 2 <= len(udh):
            iei, iel = udh[i], udh[i + 1]
            ie = udh[i + 2 : i + 2 + iel]
            if iei == 0x00 and iel == 3 and len(ie) == 3:
                return ie[0], ie[1], ie[2], body
            if iei == 0x08 and iel == 4 and len(ie) == 4:
                return (ie[0] << 8) | ie[1], ie[2], ie[3], body
            i += 2 + iel
        return None
    tlvs = pdu.tlvs
    ref = tlvs.get(P.TLV.sar_msg_ref_num)
    total = tlvs.get(P.TLV.sar_total_segments)
    seq = tlvs.get(P.TLV.sar_segment_seqnum)
    if ref and total and seq and len(ref) == 2 and len(total) == 1 and len(seq) == 1:
        return int.from_bytes(ref, "big"), total[0], seq[0], sm
    return None


class MoAssembler:
    """Reassembles multi-part MO messages arriving in any order (and on any bind)."""

    def __init__(self, hold_s: float = 300.0) -> None:
        self.hold_s = hold_s
        self._parts: dict[tuple, tuple[float, dict[int, bytes]]] = {}
        self.incomplete_dropped = 0

    def add(self, pdu: P.DeliverSm, now: float) -> Inbound | None:
        """The whole message once this part completes it; None while parts are missing."""
        sender = pdu.source_addr.decode("latin-1")
        recipient = pdu.destination_addr.decode("latin-1")
        info = _concat_info(pdu)
        if info is None or info[1] <= 1:
            body = info[3] if info else _payload(pdu)
            return Inbound(sender=sender, recipient=recipient, text=decode_text(body, pdu.data_coding),
                           data_coding=pdu.data_coding, source_ton=pdu.source_addr_ton, source_npi=pdu.source_addr_npi)
        ref, total, seq, body = info
        key = (sender, recipient, ref, total)
        started, parts = self._parts.setdefault(key, (now, {}))
        parts[seq] = body
        if len(parts) < total or any(i not in parts for i in range(1, total + 1)):
            return None
        del self._parts[key]
        whole = b"".join(parts[i] for i in range(1, total + 1))
        return Inbound(
            sender=sender,
            recipient=recipient,
            text=decode_text(whole, pdu.data_coding),
            data_coding=pdu.data_coding,
            parts=total,
            source_ton=pdu.source_addr_ton,
            source_npi=pdu.source_addr_npi,
        )

    def expire(self, now: float) -> int:
        """Drop messages whose parts stopped coming; return how many."""
        old = [k for k, (started, _) in self._parts.items() if started + self.hold_s <= now]
        for k in old:
            del self._parts[k]
        self.incomplete_dropped += len(old)
        return len(old)

    @property
    def waiting(self) -> int:
        return len(self._parts)
