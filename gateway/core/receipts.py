"""Delivery-receipt reconciliation: which message a carrier's receipt is about, and how it ended.

Theory of operation
-------------------
Pure and synchronous; every method takes ``now``. A connector tells the ``Reconciler`` two
things, in whatever order the network delivers them:

- ``submitted(ref, carrier, carrier_ids, segments, now)``: the carrier accepted every segment of
  message ``ref`` and gave these ids (one per submitted PDU; one for a message_payload send).
- ``receipt(carrier, raw_id, state, error_code, now)``: the carrier reported on one id.

Ids are compared after normalisation per carrier (``id_format``): ``"dec"`` and ``"hex"`` compare
numbers (so ``"000123"`` is ``"123"``, ``"0x1F"``/``"1f"``/``"1F"`` are 31), ``"str"`` compares
case-folded strings without leading zeros. A carrier that answers submit_sm in hex and reports in
decimal is ``("hex", "dec")``: the first format is for submit responses, the second for receipts.
The receipt side may be several formats, ``("hex", ("dec", "hex"))``: every id a receipt carries
(an SMPP receipt may carry two, the ``receipted_message_id`` TLV and the text's ``id:``, each in
either base) is tried with each format in order, and the first key that names a message waiting
for receipts wins (then one already finished: a duplicate; else the receipt is held under all of
its keys). Ids are scoped by carrier, never by bind, so a receipt on another bind matches.

A receipt whose id is not (yet) known is *held*: it may have overtaken its submit_sm_resp. When
the id is submitted within ``hold_unmatched_s`` the held receipt is applied; otherwise ``tick``
drops it and reports it as ``Unmatched``. A receipt for an id already finished within that time is
a duplicate and is counted, not reported.

A message of several parts is final when every part has a final receipt: ``delivered`` only if
all were delivered; otherwise the worst of them (undelivered > rejected > expired > unknown).
An intermediate receipt (ENROUTE, ACCEPTED: the carrier's network took it) moves a waiting
message to ``accepted`` once (``Progressed``); it is not final, and a later final receipt still
ends the message. States never go backwards: an intermediate receipt for a finished message is a
duplicate and changes nothing. A receipt that states nothing we know (no ``stat:``, no valid
``message_state``; ``state=None``) follows ``stateless_state``: a non-zero error code makes it
``undeliverable``, otherwise it counts as intermediate. A message with no final answer
``horizon_s`` after it was submitted ends as ``on_horizon`` (``unknown`` by default), or as the
worst failure among the parts that did answer.

Acknowledgements. A carrier forgets a receipt once we answer it, so a connector that must not
lose one answers only after the message's final state is on disk. It passes an opaque ``ack``
token with each receipt; the reconciler keeps the token with whatever remembers the receipt (a
part of a pending message) and hands it back: on ``Receipted.acks`` (every part's receipt of the
finished message: answer after writing the state), or at once in ``Answer`` when the receipt is
remembered by nothing that a write will make durable (a repeated intermediate, duplicate, and held: a
receipt whose id is unknown may wait ``hold_unmatched_s`` for a match that never comes, e.g.
for a copy of a message sent twice, and the carrier's window of unanswered receipts must not fill
with those). Without tokens (``ack=0``) nothing of this is reported.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from gateway.core.model import FinalState

__all__ = [
    "Answer",
    "IdFormat",
    "Progressed",
    "ReceiptState",
    "Receipted",
    "Reconciler",
    "ReconcilerStatistics",
    "Result",
    "Unmatched",
    "normalise_id",
    "stateless_state",
]

IdFormat = Literal["dec", "hex", "str"]
_COMPACT_MIN = 1024  # below this many finished entries the horizon queue is not worth sweeping


class ReceiptState(enum.StrEnum):
    """What a receipt says (SMPP message_state / the ``stat:`` word of the receipt text)."""

    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    DELETED = "deleted"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    ACCEPTED = "accepted"  # intermediate for us: carriers use it for "taken in", not "read"
    ENROUTE = "enroute"


_FINAL: dict[ReceiptState, FinalState] = {
    ReceiptState.DELIVERED: FinalState.DELIVERED,
    ReceiptState.UNDELIVERABLE: FinalState.UNDELIVERED,
    ReceiptState.DELETED: FinalState.UNDELIVERED,
    ReceiptState.EXPIRED: FinalState.EXPIRED,
    ReceiptState.REJECTED: FinalState.REJECTED,
    ReceiptState.UNKNOWN: FinalState.UNKNOWN,
}
# Worst first: a multi-part message ends as its worst part.
_SEVERITY = {
    FinalState.UNDELIVERED: 4,
    FinalState.REJECTED: 3,
    FinalState.EXPIRED: 2,
    FinalState.UNKNOWN: 1,
    FinalState.DELIVERED: 0,
}


class Receipted(msgspec.Struct, frozen=True, kw_only=True, tag="receipted"):
    """Message ``ref`` has its final state. ``error_code`` is the first failing part's code."""

    ref: int
    carrier: str
    state: FinalState
    error_code: int | None
    reason: str
    at: float
    submitted_at: float  # when the carrier accepted it: ``at - submitted_at`` is the receipt latency
    acks: tuple[int, ...] = ()  # tokens of the receipts that made this state (see the module doc)


class Progressed(msgspec.Struct, frozen=True, kw_only=True, tag="progressed"):
    """Message ``ref`` is ``accepted``: an intermediate receipt came (the first one for it).
    Not final: its final state comes later (from a receipt, or the horizon)."""

    ref: int
    carrier: str
    reason: str  # what the receipt said: "receipt ENROUTE", "receipt without state (err:0)"
    error_code: int | None
    at: float
    acks: tuple[int, ...] = ()


class Unmatched(msgspec.Struct, frozen=True, kw_only=True, tag="unmatched"):
    """A receipt held ``hold_unmatched_s`` that matched no submitted message."""

    carrier: str
    message_id: str
    state: ReceiptState | None  # None: it stated nothing we know
    at: float


class Answer(msgspec.Struct, frozen=True, kw_only=True, tag="answer"):
    """Receipts remembered by nothing (intermediate, duplicate): answer their tokens now."""

    acks: tuple[int, ...]


Result = Receipted | Progressed | Unmatched | Answer


class ReconcilerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    pending: int  # messages waiting for receipts
    held: int  # receipts waiting for their message
    matched: int  # receipts applied to a message
    matched_early: int  # ... of which had arrived before their message was submitted
    finished: int  # messages given a final state by receipts
    horizon_expired: int  # messages ended because no receipt came
    unmatched: int  # receipts dropped after being held
    duplicates: int
    intermediate: int  # intermediate receipts (and ones without a state) for a waiting message
    stateless: int  # receipts that stated nothing we know (decided by ``stateless_state``)


def stateless_state(error_code: int | None) -> ReceiptState | None:
    """What a receipt with no state we know means. A non-zero error code is the carrier saying it
    failed: ``undeliverable``. Otherwise it only says the carrier knows the message: intermediate
    (None here; the message moves to ``accepted`` and waits for a final receipt or its horizon)."""
    return ReceiptState.UNDELIVERABLE if error_code else None


def _answered(ack: int) -> list[Result]:
    """A receipt remembered by nothing: its token (if any) goes back at once."""
    return [Answer(acks=(ack,))] if ack else []


def normalise_id(raw: str, fmt: IdFormat) -> int | str:
    """The comparable form of a carrier message id. Unparsable numbers fall back to ``str``."""
    s = raw.strip()
    if fmt == "dec":
        if s.isdigit():
            return int(s)
    elif fmt == "hex":
        try:
            return int(s, 16)
        except ValueError:
            pass
    s = s.lower().lstrip("0")
    return s or "0"


class _Pending:
    __slots__ = ("ref", "carrier", "keys", "states", "errors", "remaining", "deadline", "submitted", "acks",
                 "accepted", "reason")  # fmt: skip

    def __init__(self, ref: int, carrier: str, keys: list[int | str], deadline: float, submitted: float) -> None:
        self.ref = ref
        self.carrier = carrier
        self.submitted = submitted
        self.keys = keys
        self.states: list[FinalState | None] = [None] * len(keys)
        self.errors: list[int | None] = [None] * len(keys)
        self.remaining = len(keys)
        self.deadline = deadline
        self.acks: list[int] | None = None  # tokens of the receipts applied so far
        self.accepted = False  # an intermediate receipt moved it to ``accepted``
        self.reason = "receipt"


class _Held:
    """A receipt waiting for its message, filed under every key it may mean."""

    __slots__ = ("raw", "state", "err", "at", "keys", "live", "reason")

    def __init__(self, raw: str, state: ReceiptState | None, err: int | None, at: float,
                 keys: list[int | str], reason: str) -> None:  # fmt: skip
        self.raw, self.state, self.err, self.at, self.keys, self.reason = raw, state, err, at, keys, reason
        self.live = True


_FORMATS = ("dec", "hex", "str")


class _Carrier:
    __slots__ = ("submit_format", "receipt_formats", "by_id", "held", "done")

    def __init__(self, fmt: IdFormat | tuple[IdFormat, IdFormat | Sequence[IdFormat]]) -> None:
        if isinstance(fmt, tuple):
            self.submit_format, receipt = fmt
            self.receipt_formats: tuple[IdFormat, ...] = (receipt,) if isinstance(receipt, str) else tuple(receipt)
        else:
            self.submit_format, self.receipt_formats = fmt, (fmt,)
        for f in (self.submit_format, *self.receipt_formats):
            if f not in _FORMATS:
                raise ValueError(f"id_format must be 'dec', 'hex' or 'str', got {f!r}")
        if not self.receipt_formats:
            raise ValueError("at least one receipt id format is needed")
        self.by_id: dict[int | str, tuple[_Pending, int]] = {}
        self.held: dict[int | str, list[_Held]] = {}
        self.done: dict[int | str, float] = {}  # finished id -> until when a repeat is a duplicate

    def keys(self, ids: Sequence[str], formats: Sequence[IdFormat], tlv_first: bool = False) -> list[int | str]:
        """Every key the ids may mean, in the order to try them. With ``tlv_first`` the first id is
        SMPP's ``receipted_message_id``, tried in the submit's own format first (SMPP 3.4
        §5.3.2.35 says it is the submit_sm_resp id). Keys that every id agrees on come first: a
        TLV "10" and a text "16" (formats hex and dec) both mean 16, and nothing else."""
        if len(ids) == 1 and len(formats) == 1:
            return [normalise_id(ids[0], formats[0])]
        per_id: list[list[int | str]] = []
        for n, raw in enumerate(ids):
            fs = formats
            if n == 0 and tlv_first and self.submit_format in formats:
                fs = (self.submit_format, *(f for f in formats if f != self.submit_format))
            ks: list[int | str] = []
            for f in fs:
                k = normalise_id(raw, f)
                if k not in ks:
                    ks.append(k)
            per_id.append(ks)
        keys = [k for k in per_id[0] if all(k in other for other in per_id[1:])] if len(per_id) > 1 else []
        for ks in per_id:
            keys += [k for k in ks if k not in keys]
        return keys

    def unhold(self, h: _Held) -> None:
        h.live = False
        for k in h.keys:
            waiting = self.held.get(k)
            if waiting is not None:
                if h in waiting:
                    waiting.remove(h)
                if not waiting:
                    del self.held[k]


def _reason(state: ReceiptState | None, word: str | None, error_code: int | None) -> str:
    """The history's reason: "receipt ENROUTE", "receipt without state (stat:BOGUS) err:11"."""
    said = word or ""
    if state is None:
        said = f"without state (stat:{said})" if said else "without state"
    err = f" err:{error_code}" if error_code else ""
    return f"receipt {said}{err}"


class Reconciler:
    """Matches receipts to submitted messages. See the module docstring."""

    def __init__(
        self,
        hold_unmatched_s: float = 60.0,
        horizon_s: float = 72 * 3600.0,
        *,
        id_formats: Mapping[str, IdFormat | tuple[IdFormat, IdFormat | Sequence[IdFormat]]] | None = None,
        default_id_format: IdFormat | tuple[IdFormat, IdFormat | Sequence[IdFormat]] = "str",
        on_horizon: FinalState = FinalState.UNKNOWN,
    ) -> None:
        if hold_unmatched_s < 0 or horizon_s <= 0:
            raise ValueError("hold_unmatched_s must be >= 0 and horizon_s > 0")
        self.hold_unmatched_s = hold_unmatched_s
        self.horizon_s = horizon_s
        self.on_horizon = on_horizon
        self._default_format = default_id_format
        _Carrier(default_id_format)  # checked now, not at the first receipt of an unnamed carrier
        self._carriers: dict[str, _Carrier] = {}
        for name, fmt in (id_formats or {}).items():
            self._carriers[name] = _Carrier(fmt)
        # Messages by deadline, and finished ids by when a repeat stops being a duplicate: columns
        # (the entry knows its deadline and carrier; three deques for the ids), not a tuple a
        # message, so a message leaves no container behind for the cyclic collector.
        self._horizon: deque[_Pending] = deque()
        self._horizon_done = 0  # entries of ``_horizon`` already finished (swept by ``_compact``)
        self._held_expiry: deque[tuple[float, str, _Held]] = deque()
        self._done_at: deque[float] = deque()
        self._done_carrier: deque[str] = deque()
        self._done_key: deque[int | str] = deque()
        self._pending = 0
        self._held = 0
        self._matched = self._finished = self._horizon_expired = self._early = 0
        self._unmatched = self._duplicates = self._intermediate = self._stateless = 0

    def _carrier(self, name: str) -> _Carrier:
        c = self._carriers.get(name)
        if c is None:
            c = self._carriers[name] = _Carrier(self._default_format)
        return c

    # -- inputs -----------------------------------------------------------------------------

    def submitted(
        self, ref: int, carrier: str, carrier_ids: Sequence[str], segments: int, now: float
    ) -> list[Result]:
        """All parts of ``ref`` were accepted with these ids. ``segments`` is informational when
        one id covers several segments (message_payload); each id is one part to hear about."""
        if not carrier_ids:
            raise ValueError("a submitted message needs at least one carrier id")
        c = self._carrier(carrier)
        fmt = c.submit_format
        keys = [normalise_id(i, fmt) for i in carrier_ids]
        entry = _Pending(ref, carrier, keys, now + self.horizon_s, now)
        self._pending += 1
        horizon = self._horizon
        # Receipts mostly come in the order of the submits: drop the finished head at once (a
        # popleft each), and sweep the whole queue only when stragglers keep finished ones behind.
        while horizon and horizon[0].remaining < 0:
            horizon.popleft()
            self._horizon_done -= 1
        if self._horizon_done * 2 > len(horizon) + _COMPACT_MIN:
            self._compact()
            horizon = self._horizon
        horizon.append(entry)
        if len(keys) == 1 and not c.held:  # the common case: one part, no receipt came before it
            c.by_id[keys[0]] = (entry, 0)
            return []
        results: list[Result] = []
        for part, key in enumerate(keys):
            c.by_id[key] = (entry, part)
        for part, key in enumerate(keys):
            held = c.held.get(key) if c.held else None
            if not held:
                continue
            for h in list(held):
                c.unhold(h)
                self._held -= 1
                if key not in c.by_id:  # an earlier held receipt already finished it
                    self._duplicates += 1
                    continue
                self._early += 1
                self._apply(c, carrier, key, h.state, h.err, now, results, reason=h.reason)
        return results

    def receipt(
        self,
        carrier: str,
        raw_id: str | Sequence[str],
        state: ReceiptState | None,
        error_code: int | None,
        now: float,
        *,
        id_format: IdFormat | None = None,
        ack: int = 0,
        word: str | None = None,
        tlv_first: bool = False,
    ) -> list[Result]:
        """A receipt arrived. Returns the message's final state when this completes it, or its
        move to ``accepted`` when this is its first intermediate receipt.
        ``raw_id``: the id it names, or every id it carries (tried in order, each with every
        receipt format of the carrier; ``id_format`` instead forces one format; ``tlv_first``:
        the first is SMPP's receipted_message_id, see ``_Carrier.keys``).
        ``state`` None: it stated nothing we know (see ``stateless_state``); ``word`` is what it
        said, for the reason in the message's history.
        ``ack``: the receipt's token, if its answer waits (see the module docstring)."""
        c = self._carrier(carrier)
        if isinstance(raw_id, str):
            ids: Sequence[str] = (raw_id,)
        else:
            ids = raw_id if all(raw_id) else tuple(i for i in raw_id if i)
        if not ids:
            raise ValueError("a receipt needs an id (one naming no message is unparsable, not a receipt)")
        formats = (id_format,) if id_format else c.receipt_formats
        if len(formats) == 1 and state is not None and ids:
            # The common case first: one format, the first id names a waiting message (with one
            # format, every other key is tried after it anyway).
            key = normalise_id(ids[0], formats[0])
            hit = c.by_id.get(key)
            if hit is not None and hit[0].remaining == 1 and len(hit[0].keys) == 1 and state in _FINAL:
                return self._finish_one(c, carrier, key, hit[0], _FINAL[state], error_code, now, ack)
            if hit is not None:
                results: list[Result] = []
                reason = "receipt" if state in _FINAL else _reason(state, word or state.name, error_code)
                self._apply(c, carrier, key, state, error_code, now, results, ack, reason)
                return results
        keys = c.keys(ids, formats, tlv_first)
        if state is None:
            self._stateless += 1
            reason = _reason(None, word, error_code)
            state = stateless_state(error_code)
        else:  # the history of a final state says "receipt" (the code is beside it); an intermediate says which
            reason = "receipt" if state in _FINAL else _reason(state, word or state.name, error_code)
        by_id = c.by_id
        for key in keys:
            if key in by_id:
                results = []
                self._apply(c, carrier, key, state, error_code, now, results, ack, reason)
                return results
        if any(key in c.done for key in keys):
            self._duplicates += 1
            return _answered(ack)
        h = _Held(ids[0] if ids else "", state, error_code, now, keys, reason)
        for key in keys:
            c.held.setdefault(key, []).append(h)
        self._held += 1
        self._held_expiry.append((now + self.hold_unmatched_s, carrier, h))
        return _answered(ack)

    def _finish_one(self, c: _Carrier, carrier: str, key: int | str, entry: _Pending, final: FinalState,
                    err: int | None, now: float, ack: int) -> list[Result]:  # fmt: skip
        """``_apply`` then ``_finish`` for the common receipt, in one call: the final receipt of a
        message of one part that has none yet (one a message, so its cost is the receipt's)."""
        self._matched += 1
        self._finished += 1
        entry.states[0] = final
        entry.errors[0] = err
        entry.remaining = -1  # finished: the horizon queue skips it
        self._pending -= 1
        self._horizon_done += 1
        del c.by_id[key]
        done_until = now + self.hold_unmatched_s
        c.done[key] = done_until
        self._done_at.append(done_until)
        self._done_carrier.append(carrier)
        self._done_key.append(key)
        return [Receipted(ref=entry.ref, carrier=carrier, state=final, error_code=err, reason=entry.reason, at=now,
                          submitted_at=entry.submitted, acks=(ack,) if ack else ())]  # fmt: skip

    def _apply(
        self,
        c: _Carrier,
        carrier: str,
        key: int | str,
        state: ReceiptState | None,
        err: int | None,
        now: float,
        results: list[Result],
        ack: int = 0,
        reason: str = "receipt",
    ) -> None:
        entry, part = c.by_id[key]
        if state not in _FINAL:  # intermediate: ``accepted`` once, never after a final state
            self._intermediate += 1
            if entry.accepted or entry.states[part] is not None:
                if ack:
                    results.append(Answer(acks=(ack,)))
                return
            entry.accepted = True
            results.append(Progressed(ref=entry.ref, carrier=carrier, reason=reason, error_code=err, at=now,
                                      acks=(ack,) if ack else ()))  # fmt: skip
            return
        if entry.states[part] is not None:
            self._duplicates += 1
            if ack:
                results.append(Answer(acks=(ack,)))
            return
        if ack:
            if entry.acks is None:
                entry.acks = [ack]
            else:
                entry.acks.append(ack)
        self._matched += 1
        entry.states[part] = _FINAL[state]
        entry.errors[part] = err
        if reason != "receipt":
            entry.reason = reason
        entry.remaining -= 1
        if entry.remaining == 0:
            self._finish(c, carrier, entry, now, results, reason=entry.reason if len(entry.keys) == 1 else "receipt")

    def _finish(
        self, c: _Carrier, carrier: str, entry: _Pending, now: float, results: list[Result], *, reason: str
    ) -> None:
        states = [s for s in entry.states if s is not None]
        if entry.remaining == 0:
            self._finished += 1
        if len(entry.states) == 1 and states:
            final = states[0]
            error = entry.errors[0]
        else:
            final, error = self._aggregate(entry, states)
        if entry.remaining and final is FinalState.DELIVERED:
            final = self.on_horizon  # some parts delivered, the rest never said
        done_until = now + self.hold_unmatched_s
        for key in entry.keys:
            if c.by_id.pop(key, None) is not None:
                c.done[key] = done_until
                self._done_at.append(done_until)
                self._done_carrier.append(carrier)
                self._done_key.append(key)
        entry.remaining = -1  # finished: the horizon queue skips it
        self._pending -= 1
        self._horizon_done += 1
        results.append(
            Receipted(ref=entry.ref, carrier=carrier, state=final, error_code=error, reason=reason, at=now,
                      submitted_at=entry.submitted, acks=tuple(entry.acks) if entry.acks else ())
        )

    def _aggregate(self, entry: _Pending, states: list[FinalState]) -> tuple[FinalState, int | None]:
        if not states:
            return self.on_horizon, None
        worst = max(states, key=_SEVERITY.__getitem__)
        error = None
        if worst is not FinalState.DELIVERED:
            error = next(e for s, e in zip(entry.states, entry.errors) if s is worst)
        return worst, error

    def _compact(self) -> None:
        """Drop finished entries from the horizon queue. Without this, every message would stay
        there (with its lists) for ``horizon_s`` (72 h) after its receipt: memory growing with the
        rate, and a garbage collector scanning hundreds of thousands of dead entries (measured:
        ~5 s of full collections in a 200k-message run). Runs when at least half the queue is
        finished, so each entry is swept at most once: amortised O(1) per message."""
        self._horizon = deque(entry for entry in self._horizon if entry.remaining >= 0)
        self._horizon_done = 0

    # -- time -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Result]:
        """Drop held receipts past ``hold_unmatched_s`` and end messages past the horizon."""
        results: list[Result] = []
        held = self._held_expiry
        while held and held[0][0] <= now:
            _, carrier, h = held.popleft()
            if not h.live:
                continue  # matched meanwhile
            self._carriers[carrier].unhold(h)
            self._held -= 1
            self._unmatched += 1
            results.append(Unmatched(carrier=carrier, message_id=h.raw, state=h.state, at=h.at))
        done_at, done_carrier, done_key = self._done_at, self._done_carrier, self._done_key
        while done_at and done_at[0] <= now:
            until, carrier, key = done_at.popleft(), done_carrier.popleft(), done_key.popleft()
            c = self._carriers[carrier]
            if c.done.get(key) == until:
                del c.done[key]
        horizon = self._horizon
        while horizon and horizon[0].deadline <= now:
            entry = horizon.popleft()
            carrier = entry.carrier
            if entry.remaining < 0:
                self._horizon_done -= 1
                continue
            self._horizon_expired += 1
            self._finish(self._carriers[carrier], carrier, entry, now, results, reason="no receipt within horizon")
            self._horizon_done -= 1  # counted by _finish, but already out of the queue
        return results

    def next_deadline(self) -> float | None:
        """The earliest time ``tick`` has work (possibly stale-early, never late)."""
        times = [q[0][0] for q in (self._held_expiry,) if q]
        times += [q[0] for q in (self._done_at,) if q]
        times += [q[0].deadline for q in (self._horizon,) if q]
        return min(times) if times else None

    def statistics(self) -> ReconcilerStatistics:
        return ReconcilerStatistics(
            pending=self._pending,
            held=self._held,
            matched=self._matched,
            matched_early=self._early,
            finished=self._finished,
            horizon_expired=self._horizon_expired,
            unmatched=self._unmatched,
            duplicates=self._duplicates,
            intermediate=self._intermediate,
            stateless=self._stateless,
        )
