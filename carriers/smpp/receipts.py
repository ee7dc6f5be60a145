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
    "receipt_pdu",
    "STAT_WORDS",
    "decode_text",
    "is_receipt",
    "parse_receipt",
    "parse_receipt_date",
    "receipt_excerpt",
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

_STATE_WORDS = {code: f"message_state={code}" for code in MESSAGE_STATES}
_RECEIPT_TYPES = (0x04, 0x20)  # esm_class bits 2-5: SMSC delivery receipt, intermediate notification
# Plain ints: a TLV dict is keyed by the tags read off the wire, and looking one up by an IntEnum
# member compares through the enum each time (every receipt looks up four).
_TAG_ID = int(P.TLV.receipted_message_id)
_TAG_STATE = int(P.TLV.message_state)
_TAG_NETERR = int(P.TLV.network_error_code)
_TAG_PAYLOAD = int(P.TLV.message_payload)

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
_ID_FIELD, _ERR_FIELD = _FIELDS["id"], _FIELDS["err"]


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """One receipt. ``message_id`` is the id it names: the ``receipted_message_id`` TLV's if there
    is one (``id_from_tlv``), else the text's ``id:``. ``text_id`` is the text's id when it differs
    from the TLV's: the reconciler tries every id with every configured normalisation, since
    either may be in another base than the submit_sm_resp id.

    ``state`` is None when the receipt says no state we know (no ``stat:`` word and no valid
    ``message_state`` TLV, or a word we do not know): ``gateway.core.receipts.stateless_state``
    decides what it means. ``word`` is what it said (``"DELIVRD"``, ``"message_state=5"``, or
    ``None``), for the message's history."""

    message_id: str
    state: ReceiptState | None
    error_code: int | None
    id_from_tlv: bool
    submit_date: str | None = None
    done_date: str | None = None
    text_id: str | None = None
    word: str | None = None

    @property
    def ids(self) -> tuple[str, ...]:
        """Every id it carries, the TLV's first."""
        return (self.message_id,) if self.text_id is None else (self.message_id, self.text_id)


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """A whole MO message."""

    sender: str
    recipient: str
    text: str
    data_coding: int
    parts: int = 1
    missing: int = 0  # parts that never came (``MoAssembler.expire``)
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
    """The receipt in ``pdu``, or None if it names no message (no id TLV and no ``id:`` in the
    text): that one is unparsable. A receipt with an id but no state is kept (state None).

    Where the TLVs and the text disagree, the TLVs win (SMPP 3.4 §5.3.2.35: they are the
    receipt; the text is informational): the TLV state, then the TLV ``network_error_code``."""
    tlvs = pdu.tlvs
    text = _payload(pdu)
    raw_id = tlvs.get(_TAG_ID)
    tlv_id = _cstr(raw_id) if raw_id is not None else None
    err = None
    neterr = tlvs.get(_TAG_NETERR)
    if neterr is not None and len(neterr) == 3:
        err = neterr[1] << 8 | neterr[2]  # §5.3.2.31: network type, then the error code (2 octets)
    raw_state = tlvs.get(_TAG_STATE)
    tlv_state = MESSAGE_STATES.get(raw_state[0]) if raw_state is not None and len(raw_state) == 1 else None
    if tlv_id and tlv_state is not None:
        # The TLVs say it all (the common case, on the hot path): from the text only its id (one
        # more id to try) and, without a network_error_code, its err.
        m = _ID_FIELD.search(text) if text else None
        text_id = m.group(1).decode("latin-1") if m else None
        if err is None and text:
            m = _ERR_FIELD.search(text)
            err = _err(m.group(1)) if m else None
        return Receipt(message_id=tlv_id, state=tlv_state, error_code=err, id_from_tlv=True,
                       text_id=text_id if text_id != tlv_id else None, word=_STATE_WORDS[raw_state[0]])  # type: ignore[index]  # fmt: skip
    m = _COMMON.search(text)
    if m is not None:
        mid, submit, done, stat, err_word = m.groups()
    else:
        found = {k: r.search(text) for k, r in _FIELDS.items()}
        mid, submit, done, stat, err_word = (
            (f.group(1) if f else None) for f in (found[k] for k in ("id", "submit", "done", "stat", "err"))
        )
    text_id = mid.decode("latin-1") if mid else None
    if not tlv_id and not text_id:
        return None
    state = STAT_WORDS.get(stat.upper()) if stat else None
    word = stat.decode("latin-1")[:16] if stat else None
    if err is None:
        err = _err(err_word)
    if tlv_id:
        message_id, other = tlv_id, (text_id if text_id and text_id != tlv_id else None)
    else:
        message_id, other = text_id, None  # type: ignore[assignment]
    return Receipt(
        message_id=message_id,  # type: ignore[arg-type]
        state=state,
        error_code=err,
        id_from_tlv=bool(tlv_id),
        submit_date=submit.decode() if submit else None,
        done_date=done.decode() if done else None,
        text_id=other,
        word=word,
    )


# A receipt's deliver_sm (SMPP 3.4 §4.6.1) up to its short_message: five C-strings and the fixed
# octets between them, esm_class (group 1) a receipt's, sm_length (group 2) the last octet.
_RECEIPT_HEAD = re.compile(rb"[^\x00]*\x00..[^\x00]*\x00..[^\x00]*\x00(.)..[^\x00]*\x00[^\x00]*\x00....(.)", re.S)
_TL = P._TL


def receipt_pdu(data: bytes, start: int, end: int, sequence: int, status: int) -> P.DeliverReceipt | None:
    """The receipt in the deliver_sm at ``data[start:end]``, read in one pass over the buffer
    (``decode_stream``'s ``deliver`` hook, on the ESME's hot path), when it is the common kind
    that ``parse_receipt`` reads from its TLVs alone: a ``receipted_message_id`` and a valid
    ``message_state``. None for every other deliver_sm (an MO, a receipt stated in text only, a
    malformed one): the codec decodes those as usual, so they are read as before. What it returns
    is what ``parse_receipt`` returns for the decoded ``DeliverSm`` (a property test holds it)."""
    m = _RECEIPT_HEAD.match(data, start + 16, end)
    if m is None:
        return None
    text_at = m.end()
    text_end = text_at + m.group(2)[0]
    if text_end > end:
        return None
    raw_id = raw_state = neterr = payload = None
    pos = text_end
    unpack = _TL.unpack_from
    while pos < end:
        if pos + 4 > end:
            return None
        tag, length = unpack(data, pos)
        pos += 4
        value_end = pos + length
        if value_end > end:
            return None
        if tag == _TAG_ID:
            raw_id = data[pos:value_end]
        elif tag == _TAG_STATE:
            raw_state = data[pos:value_end]
        elif tag == _TAG_NETERR:
            neterr = data[pos:value_end]
        elif tag == _TAG_PAYLOAD:
            payload = data[pos:value_end]
        pos = value_end
    if raw_id is None or raw_state is None or len(raw_state) != 1:
        return None
    state = MESSAGE_STATES.get(raw_state[0])
    tlv_id = _cstr(raw_id)
    if state is None or not tlv_id:
        return None
    text = data[text_at:text_end] or payload or b""
    err = neterr[1] << 8 | neterr[2] if neterr is not None and len(neterr) == 3 else None
    text_id = None
    if text:
        found = _ID_FIELD.search(text)
        text_id = found.group(1).decode("latin-1") if found else None
        if err is None:
            found = _ERR_FIELD.search(text)
            err = _err(found.group(1)) if found else None
    return P.DeliverReceipt(sequence, status, Receipt(
        message_id=tlv_id, state=state, error_code=err, id_from_tlv=True,
        text_id=text_id if text_id != tlv_id else None, word=_STATE_WORDS[raw_state[0]]))  # fmt: skip


def _cstr(raw: bytes) -> str:
    return (raw[:-1] if raw.endswith(b"\0") else raw).decode("latin-1").strip()


def receipt_excerpt(pdu: P.DeliverSm | P.DataSm, limit: int = 200) -> str:
    """What a receipt said, for a log line: its text and TLVs, printable and at most ``limit``
    characters (a carrier's bytes go to our logs: never unbounded, never control characters)."""
    text = _payload(pdu).decode("latin-1")
    tlvs = " ".join(f"0x{tag:04x}={value.hex()}" for tag, value in sorted(pdu.tlvs.items()) if tag != _TAG_PAYLOAD)
    whole = (text + (" tlvs:" + tlvs if tlvs else "")).encode("unicode_escape").decode("ascii")
    return whole if len(whole) <= limit else whole[: limit - 3] + "..."


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
    """(reference, total, seq, payload without UDH) if ``pdu`` is one part of a long message. The
    UDH is at the start of the payload, in ``short_message`` or, when that is empty, in the
    ``message_payload`` TLV (SMPP 3.4 §5.2.12: UDHI says the payload starts with one, wherever it is)."""
    sm = _payload(pdu)
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


def _udh_stripped(pdu: P.DeliverSm) -> bytes:
    """The payload of a single-part message without its UDH (UDHI set, no concatenation IE: a port
    number, a national shift table, ...): the header is not text."""
    body = _payload(pdu)
    if pdu.esm_class & 0x40 and body:
        return body[1 + body[0] :]
    return body


class MoAssembler:
    """Reassembles multi-part MO messages arriving in any order (and on any bind).

    A message whose parts stop coming is not dropped: after ``hold_s`` (or when more than
    ``max_waiting`` messages are incomplete, the oldest first) the parts that came are handed out as
    one message, in order (``Inbound.missing`` > 0), as Kannel does after its
    ``sms-combine-concatenated-mo-timeout``: a reply is never lost for one lost part, and an
    opt-out in the parts that came is heard."""

    def __init__(self, hold_s: float = 300.0, *, max_waiting: int = 10_000) -> None:
        self.hold_s = hold_s
        self.max_waiting = max_waiting
        self._parts: dict[tuple, tuple[float, dict[int, bytes], int, int, int]] = {}
        self._overflow: list[Inbound] = []
        self.incomplete = 0  # messages handed out with parts missing

    def add(self, pdu: P.DeliverSm, now: float) -> Inbound | None:
        """The whole message once this part completes it; None while parts are missing."""
        sender = pdu.source_addr.decode("latin-1")
        recipient = pdu.destination_addr.decode("latin-1")
        info = _concat_info(pdu)
        if info is None or info[1] <= 1:
            body = info[3] if info else _udh_stripped(pdu)
            return Inbound(sender=sender, recipient=recipient, text=decode_text(body, pdu.data_coding),
                           data_coding=pdu.data_coding, source_ton=pdu.source_addr_ton, source_npi=pdu.source_addr_npi)
        ref, total, seq, body = info
        key = (sender, recipient, ref, total)
        entry = self._parts.get(key)
        if entry is None:
            if len(self._parts) >= self.max_waiting:  # the oldest waits no longer (dicts keep arrival order)
                self._overflow.append(self._incomplete(next(iter(self._parts))))
            entry = self._parts[key] = (now, {}, pdu.data_coding, pdu.source_addr_ton, pdu.source_addr_npi)
        parts = entry[1]
        if 1 <= seq <= total:
            parts[seq] = body
        if len(parts) < total:
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

    def expire(self, now: float) -> list[Inbound]:
        """The messages whose parts stopped coming (held ``hold_s``, or pushed out by newer ones),
        each as the parts that came, in order."""
        out, self._overflow = self._overflow, []
        old = [k for k, entry in self._parts.items() if entry[0] + self.hold_s <= now]
        out += [self._incomplete(k) for k in old]
        return out

    def _incomplete(self, key: tuple) -> Inbound:
        sender, recipient, _, total = key
        _, parts, data_coding, ton, npi = self._parts.pop(key)
        self.incomplete += 1
        whole = b"".join(parts[i] for i in sorted(parts))
        return Inbound(sender=sender, recipient=recipient, text=decode_text(whole, data_coding), data_coding=data_coding,
                       parts=total, missing=total - len(parts), source_ton=ton, source_npi=npi)  # fmt: skip

    @property
    def waiting(self) -> int:
        return len(self._parts)
