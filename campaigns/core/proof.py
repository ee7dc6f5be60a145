"""A subscriber's consent proof, for a dispute: every ledger entry with the disclosure text shown, its
version and SHA-256 (re-checked here against the text), the evidence, and the resulting state.

Pure: the caller passes the subscriber, the ledger and ``now`` (the export's time)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import msgspec

from campaigns.core import consent
from campaigns.core.consent import ConsentEntry, Evidence, State
from campaigns.core.model import Subscriber

CSV_COLUMNS = ("entry_id", "at_utc", "at", "action", "source", "phone", "disclosure_version", "disclosure_sha256",
               "disclosure_verified", "disclosure_text", *Evidence.__struct_fields__)  # fmt: skip


class ProofEntry(msgspec.Struct, frozen=True, kw_only=True):
    entry: ConsentEntry
    at_utc: str  # ISO 8601, for people reading the export
    disclosure_verified: bool | None  # the stored SHA-256 is the text's (None: no text recorded)


class Proof(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    subscriber_id: int
    phone: str
    state: State
    marketable: bool
    exported_at: float
    entries: tuple[ProofEntry, ...]


def _iso(at: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def build(subscriber: Subscriber, entries: Sequence[ConsentEntry], now: float) -> Proof:
    state, _ = consent.fold((e.at, e.id, e.action) for e in entries)
    rows = tuple(ProofEntry(entry=e, at_utc=_iso(e.at), disclosure_verified=None if e.disclosure_text is None else
                            consent.disclosure_sha256(e.disclosure_text) == e.disclosure_sha256)
                 for e in sorted(entries, key=lambda e: (e.at, e.id)))  # fmt: skip
    return Proof(tenant=subscriber.tenant, subscriber_id=subscriber.id, phone=subscriber.phone, state=state,
                 marketable=consent.marketable(state), exported_at=now, entries=rows)  # fmt: skip


def to_json(proof: Proof) -> bytes:
    return msgspec.json.encode(proof)


def to_csv(proof: Proof) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for p in proof.entries:
        e = p.entry
        ev = msgspec.structs.asdict(e.evidence)
        w.writerow([e.id, p.at_utc, repr(e.at), e.action, e.source, e.phone, e.disclosure_version or "",
                    e.disclosure_sha256 or "", "" if p.disclosure_verified is None else str(p.disclosure_verified).lower(),
                    e.disclosure_text or "", *(ev[f] or "" for f in Evidence.__struct_fields__)])  # fmt: skip
    return out.getvalue()
