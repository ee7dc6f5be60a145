"""Malformed SMPP for the fuzz tests: a corpus of valid PDUs each side may receive, and a seeded
mutator (bit flips, byte writes, lies in command_length, truncation, splices, insertions,
random command_ids, pure noise) in the spirit of a dumb mutational fuzzer."""

from __future__ import annotations

import random
import struct

from carriers.smpp import pdu as P
from carriers.smpp.pdu import CommandId as C

__all__ = ["CORPUS_FOR_ESME", "CORPUS_FOR_SMSC", "HIGH_SEQ", "mutate", "split"]

#: Sequence numbers of the unsolicited PDUs: far above anything a session numbers its own
#: requests with, so a mutated response cannot complete a real submit by accident.
HIGH_SEQ = 0x7F000000


def _enc(pdu: P.Pdu) -> bytes:
    return P.encode(pdu)


_RECEIPT = (b"id:123456 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
            b"stat:DELIVRD err:000 text:hello")  # fmt: skip

CORPUS_FOR_ESME: list[bytes] = [
    _enc(P.SubmitSmResp(sequence=HIGH_SEQ + 1, message_id=b"abc123")),
    _enc(P.SubmitSmResp(sequence=HIGH_SEQ + 2, status=P.Status.ESME_RTHROTTLED)),
    _enc(P.DeliverSm(sequence=HIGH_SEQ + 3, source_addr=b"447911", destination_addr=b"SLUICE", short_message=b"mo")),
    _enc(P.DeliverSm(sequence=HIGH_SEQ + 4, esm_class=0x04, short_message=_RECEIPT,
                     tlvs=P.make_tlvs(receipted_message_id=b"123456", message_state=2))),  # fmt: skip
    _enc(P.DeliverSm(sequence=HIGH_SEQ + 5, esm_class=0x40, short_message=bytes((5, 0, 3, 7, 2, 1)) + b"part")),
    _enc(P.DataSm(sequence=HIGH_SEQ + 6, source_addr=b"447911", destination_addr=b"SLUICE")),
    _enc(P.EnquireLink(sequence=HIGH_SEQ + 7)),
    _enc(P.EnquireLinkResp(sequence=HIGH_SEQ + 8)),
    _enc(P.GenericNack(sequence=HIGH_SEQ + 9, status=P.Status.ESME_RINVCMDID)),
    _enc(P.Unbind(sequence=HIGH_SEQ + 10)),
    _enc(P.BindTransceiverResp(sequence=HIGH_SEQ + 11, system_id=b"smsc")),
    _enc(P.DataSmResp(sequence=HIGH_SEQ + 12, message_id=b"x")),
]

CORPUS_FOR_SMSC: list[bytes] = [
    _enc(P.BindTransceiver(sequence=HIGH_SEQ + 1, system_id=b"sluice", password=b"pw")),
    _enc(P.SubmitSm(sequence=HIGH_SEQ + 2, source_addr=b"Shop", destination_addr=b"447911", short_message=b"hi")),
    _enc(P.DeliverSmResp(sequence=HIGH_SEQ + 3)),
    _enc(P.EnquireLink(sequence=HIGH_SEQ + 4)),
    _enc(P.Unbind(sequence=HIGH_SEQ + 5)),
    _enc(P.DataSm(sequence=HIGH_SEQ + 6, source_addr=b"Shop", destination_addr=b"447911")),
]

_COMMANDS = [int(c) for c in C]


def mutate(rng: random.Random, corpus: list[bytes], *, keep_high: float = 0.9) -> bytes:
    """One malformed input: 1-4 mutations of a corpus PDU (or of two spliced), or pure noise.
    ``keep_high``: how often the sequence stays above ``HIGH_SEQ``."""
    op = rng.random()
    if op < 0.05:
        return rng.randbytes(rng.randint(0, 64))
    data = bytearray(rng.choice(corpus))
    if op < 0.15:
        data += rng.choice(corpus)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        if kind == 0 and data:  # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # write a byte (often an interesting one)
            data[rng.randrange(len(data))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif kind == 2 and len(data) >= 4:  # command_length lies
            value = rng.choice((0, 1, 15, 16, 17, len(data) - 1, len(data) + 1, 0xFFFFFFFF, rng.randrange(1 << 32)))
            data[0:4] = struct.pack(">I", value)
        elif kind == 3 and len(data) >= 8:  # another command_id
            data[4:8] = struct.pack(">I", rng.choice(_COMMANDS) if rng.random() < 0.8 else rng.randrange(1 << 32))
        elif kind == 4 and len(data) >= 12:  # a wrong command_status
            data[8:12] = struct.pack(">I", rng.choice((0, 8, 0x14, 0x45, 0x58, rng.randrange(1 << 32))))
        elif kind == 5 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif kind == 6:  # insert noise
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif kind == 7 and len(data) > 16:  # drop a run of the body (NULs, TLV headers go missing)
            i = rng.randrange(16, len(data))
            del data[i : i + rng.randint(1, 8)]
    if len(data) >= 16 and rng.random() < 0.5:  # half the time the framing holds: the body is what is wrong
        data[0:4] = struct.pack(">I", len(data))
    if len(data) >= 16 and rng.random() < keep_high:  # keep the sequence out of the session's range
        data[12] = 0x7F
    return bytes(data)


def split(rng: random.Random, data: bytes) -> list[bytes]:
    """The bytes as a peer's writes might arrive: in 1-3 reads, cut anywhere."""
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 2)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
