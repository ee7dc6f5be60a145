"""The carrier seam: the one small interface every carrier connector implements (SMPP now, HTTP
later), and the events connectors emit.

A connector is handed batches of ``Dispatch`` (already admitted, rate-checked and rendered by the
core) and reports what became of each one as events on the ``anyio`` memory object stream given
at construction. ``submit`` waits while the connector is full (its windows and a small queue),
and never raises for a per-message outcome; every dispatch it accepted ends in exactly one of:

- ``Submitted``     the carrier took it; ``carrier_ids`` are its ids (one per PDU sent)
- ``SubmitFailed``  the carrier refused it; ``permanent`` or with a ``retry_after``
- ``Requeue``       it must go again, through the core (response time-out, dropped bind,
                    throttled, carrier down, connector closing)

and, later, for a submitted one (or one given back with ``expect_receipts`` after a restart), at
most one ``ReceiptMatched`` (its final state from receipts, or
``unknown`` when none came within the horizon), before it at most one ``ReceiptProgress`` (an
intermediate receipt: the carrier's network took it, state ``accepted``). ``Throttled`` asks the core to slow the carrier
down, ``LinkChanged`` reports binds going up and down, ``Inbound`` is an MO message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

from gateway.core.model import Dispatch, FinalState

__all__ = [
    "Connector",
    "ConnectorEvent",
    "ConnectorStats",
    "Inbound",
    "LinkChanged",
    "LinkStats",
    "ReceiptCounts",
    "ReceiptMatched",
    "ReceiptProgress",
    "Requeue",
    "SubmitFailed",
    "Submitted",
    "Throttled",
]

RequeueReason = Literal["timeout", "bind_dropped", "throttled", "carrier_down", "closing"]


class Submitted(msgspec.Struct, frozen=True, kw_only=True, tag="submitted"):
    ref: int
    carrier: str
    carrier_ids: tuple[str, ...]
    at: float


class SubmitFailed(msgspec.Struct, frozen=True, kw_only=True, tag="submit_failed"):
    """The carrier answered with an error. ``name`` is the code's name (``ESME_RINVDSTADR``)."""

    ref: int
    carrier: str
    command_status: int
    name: str
    permanent: bool
    retry_after: float | None
    at: float


class Requeue(msgspec.Struct, frozen=True, kw_only=True, tag="requeue"):
    """Send it again. The carrier may or may not have it (after a time-out or a dropped bind)."""

    ref: int
    carrier: str
    reason: RequeueReason
    at: float


class Throttled(msgspec.Struct, frozen=True, kw_only=True, tag="throttled"):
    """The carrier said "too fast" (SMPP 0x58 / 0x14, HTTP 429): cut its rate."""

    carrier: str
    command_status: int
    at: float


class ReceiptMatched(msgspec.Struct, frozen=True, kw_only=True, tag="receipt"):
    """Message ``message_id`` ended as ``state`` according to the carrier's receipts (or their
    absence: ``reason`` is then "no receipt within horizon"). Keyed by the message id, not the
    core's ``ref``: a ref is released at ``Submitted`` and reused by later messages."""

    message_id: int
    carrier: str
    state: FinalState
    error_code: int | None
    reason: str
    at: float
    submitted_at: float | None = None  # when the carrier accepted it (receipt latency), if known
    # Receipts whose answer to the carrier waits until this state is written: give them to the
    # connector's ``acknowledge`` then (only a connector made with ``deferred_acks`` sets them).
    acks: tuple[int, ...] = ()


class ReceiptProgress(msgspec.Struct, frozen=True, kw_only=True, tag="receipt_progress"):
    """Message ``message_id`` is ``accepted``: its first intermediate receipt came (ENROUTE,
    ACCEPTD, or one with no state; ``reason`` says which). Not final: a ``ReceiptMatched`` follows.
    ``acks`` as in ``ReceiptMatched``."""

    message_id: int
    carrier: str
    error_code: int | None
    reason: str
    at: float
    state: Literal["accepted"] = "accepted"
    acks: tuple[int, ...] = ()


class Inbound(msgspec.Struct, frozen=True, kw_only=True, tag="inbound"):
    """An MO message, reassembled if it came in parts."""

    carrier: str
    sender: str
    recipient: str
    text: str
    at: float
    # Answered to the carrier (``Connector.acknowledge``) once the message is stored: a crash
    # before leaves it with the carrier, which sends it again (``deferred_acks`` connectors).
    acks: tuple[int, ...] = ()
    # How the carrier numbered the sender (SMPP 3.4 §5.2.5-6: source_addr_ton/npi; None: not
    # said, e.g. an HTTP carrier), and its own id for the MO, if it gives one: a redelivery of
    # the same MO carries the same id (or, without one, the same content) and is stored once.
    sender_ton: int | None = None
    sender_npi: int | None = None
    carrier_id: str | None = None


class LinkChanged(msgspec.Struct, frozen=True, kw_only=True, tag="link"):
    carrier: str
    bind: int
    up: bool
    reason: str
    at: float


ConnectorEvent = (
    Submitted | SubmitFailed | Requeue | Throttled | ReceiptMatched | ReceiptProgress | Inbound | LinkChanged
)


class LinkStats(msgspec.Struct, frozen=True, kw_only=True):
    """One link of a carrier (an SMPP bind; an HTTP carrier has one)."""

    index: int
    mode: str  # "transceiver" | "transmitter" | "receiver" | "http"
    up: bool
    in_flight: int  # sent, not yet answered on this link
    paused_for: float  # seconds this link still waits after a throttle (0: sending)


class ReceiptCounts(msgspec.Struct, frozen=True, kw_only=True):
    """A carrier's receipts since start, each counted once by what became of it."""

    matched: int = 0  # a final receipt applied to a message waiting for it
    intermediate: int = 0  # an intermediate one (or one with no state) for a waiting message
    duplicate: int = 0  # for a part or message already final (a late intermediate too)
    unmatched: int = 0  # held ``hold_unmatched_s`` for a message that never showed up
    unparsable: int = 0  # named no message (no id): logged with its text
    stateless: int = 0  # of the above, those that stated nothing we know (``stateless_state``)


class ConnectorStats(msgspec.Struct, frozen=True, kw_only=True):
    carrier: str
    binds: int  # configured sessions
    bound: int  # sessions bound now
    window: int  # per bind
    in_flight: int  # PDUs sent and not yet answered, all binds
    queued: int  # messages accepted by submit() and not yet sent
    submitted: int
    failed: int
    requeued: int
    throttles: int
    errors: dict[str, int]  # by command_status name
    receipts_matched: int
    receipts_unmatched: int
    receipts_pending: int
    inbound: int
    links: list[LinkStats] = []  # per bind, where the connector has several
    receipts: ReceiptCounts = ReceiptCounts()


@runtime_checkable
class Connector(Protocol):
    name: str

    async def submit(self, batch: Sequence[Dispatch]) -> None:
        """Take these dispatches; wait while full. Outcomes come as events."""
        ...

    def statistics(self) -> ConnectorStats: ...

    def expect_receipts(self, message_id: int, carrier_ids: Sequence[str]) -> None:
        """Message ``message_id`` was taken by this carrier before a restart, with these ids: match
        its receipts again (it ends with one ``ReceiptMatched``, as if submitted here)."""
        ...

    def acknowledge(self, acks: Sequence[int]) -> None:
        """The states of ``ReceiptMatched.acks`` are on disk: answer those receipts now."""
        ...

    async def aclose(self) -> None:
        """Stop: unsent messages come back as ``Requeue(reason="closing")``."""
        ...
