"""Fakes shipped with the carriers, for tests here and in the layers above.

- ``MockConnector``: a ``Connector`` that records every batch and answers each dispatch as a
  script says (delivered, rejected, throttled, timed out...), with the same events as a real one.
- ``memory_stream_pair()``: two connected in-memory ``ByteStream``s, so a connector and the SMSC
  simulator can talk without sockets (and on virtual time: trio's ``MockClock`` can then jump
  whenever every task waits, which is only safe when no real I/O is pending).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from carriers.base import (
    ConnectorEvent,
    ConnectorStats,
    ReceiptMatched,
    Requeue,
    SubmitFailed,
    Submitted,
    Throttled,
)
from carriers.errors import CarrierError
from gateway.core.model import Dispatch, FinalState

__all__ = ["MemoryByteStream", "MockConnector", "MockOutcome", "memory_stream_pair"]

MockOutcome = Literal["deliver", "undeliver", "silent", "reject", "retry", "throttle", "timeout"]


class MockConnector:
    """A scripted ``Connector``. ``script(dispatch)`` picks each outcome (default "deliver"):

    deliver / undeliver  ``Submitted`` then ``ReceiptMatched`` (delivered / undelivered)
    silent               ``Submitted`` only (no receipt ever)
    reject / retry       ``SubmitFailed`` permanent (0x0B) / temporary (0x08, retry_after 1 s)
    throttle / timeout   ``Throttled`` + ``Requeue(throttled)`` / ``Requeue(timeout)``
    """

    def __init__(
        self,
        name: str,
        events: MemoryObjectSendStream[ConnectorEvent],
        *,
        script: Callable[[Dispatch], MockOutcome] | None = None,
        capacity: int = 1000,
    ) -> None:
        self.name = name
        self.batches: list[list[Dispatch]] = []
        self.expected: list[tuple[int, tuple[str, ...]]] = []
        self.acknowledged: list[int] = []
        self._events = events
        self._script = script or (lambda d: "deliver")
        self._capacity = capacity
        self._closed = False
        self._counts = dict.fromkeys(("submitted", "failed", "requeued", "throttles", "matched"), 0)
        self._errors: dict[str, int] = {}

    @property
    def dispatched(self) -> list[Dispatch]:
        return [d for batch in self.batches for d in batch]

    async def submit(self, batch: Sequence[Dispatch]) -> None:
        if self._closed:
            raise CarrierError(f"connector {self.name} is closed")
        self.batches.append(list(batch))
        now = anyio.current_time()
        for d in batch:
            for event in self._answer(d, self._script(d), now):
                await self._events.send(event)
        await anyio.lowlevel.checkpoint()

    def _answer(self, d: Dispatch, outcome: MockOutcome, now: float) -> list[ConnectorEvent]:
        ref, name = d.ref, self.name
        if outcome in ("deliver", "undeliver", "silent"):
            self._counts["submitted"] += 1
            ids = tuple(f"{name}-{ref}-{i}" for i in range(max(1, d.segments)))
            out: list[ConnectorEvent] = [Submitted(ref=ref, carrier=name, carrier_ids=ids, at=now)]
            if outcome != "silent":
                self._counts["matched"] += 1
                state = FinalState.DELIVERED if outcome == "deliver" else FinalState.UNDELIVERED
                out.append(
                    ReceiptMatched(
                        message_id=d.message_id,
                        carrier=name,
                        state=state,
                        error_code=0 if outcome == "deliver" else 1,
                        reason="receipt",
                        at=now,
                        submitted_at=now,
                    )
                )
            return out
        if outcome in ("reject", "retry"):
            self._counts["failed"] += 1
            status, label = (0x0B, "ESME_RINVDSTADR") if outcome == "reject" else (0x08, "ESME_RSYSERR")
            self._errors[label] = self._errors.get(label, 0) + 1
            return [
                SubmitFailed(
                    ref=ref,
                    carrier=name,
                    command_status=status,
                    name=label,
                    permanent=outcome == "reject",
                    retry_after=None if outcome == "reject" else 1.0,
                    at=now,
                )
            ]
        self._counts["requeued"] += 1
        if outcome == "throttle":
            self._counts["throttles"] += 1
            return [
                Throttled(carrier=name, command_status=0x58, at=now),
                Requeue(ref=ref, carrier=name, reason="throttled", at=now),
            ]
        return [Requeue(ref=ref, carrier=name, reason="timeout", at=now)]

    def expect_receipts(self, message_id: int, carrier_ids: Sequence[str]) -> None:
        """Recorded in ``expected``; the script has no receipts to match them with."""
        self.expected.append((message_id, tuple(carrier_ids)))

    def acknowledge(self, acks: Sequence[int]) -> None:
        """Recorded in ``acknowledged`` (its receipts carry no tokens unless a test gives some)."""
        self.acknowledged.extend(acks)

    def statistics(self) -> ConnectorStats:
        return ConnectorStats(
            carrier=self.name,
            binds=1,
            bound=0 if self._closed else 1,
            window=self._capacity,
            in_flight=0,
            queued=0,
            submitted=self._counts["submitted"],
            failed=self._counts["failed"],
            requeued=self._counts["requeued"],
            throttles=self._counts["throttles"],
            errors=dict(self._errors),
            receipts_matched=self._counts["matched"],
            receipts_unmatched=0,
            receipts_pending=0,
            inbound=0,
        )

    async def aclose(self) -> None:
        self._closed = True
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> MockConnector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe (see ``memory_stream_pair``)."""

    def __init__(self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]) -> None:
        self._send = send
        self._receive = receive
        self._rest = b""

    async def send(self, item: bytes) -> None:
        if not item:
            return
        try:
            await self._send.send(bytes(item))
        except anyio.ClosedResourceError:
            raise anyio.ClosedResourceError from None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = self._rest or await self._receive.receive()
        self._rest = data[max_bytes:]
        return data[:max_bytes]

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def memory_stream_pair() -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected byte streams: what one sends, the other receives."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](math.inf)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](math.inf)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)

