"""What the async shells of all carrier connectors share (SMPP, HTTP): leaving the task group,
handing events out, turning the receipt reconciler's results into events, and learning a
restarted gateway's messages that still await receipts.

Receipt answers: a connector made with ``deferred_acks`` answers a receipt only once the
dispatcher has written the state it ended (``acknowledge``), so a crash in between leaves the
receipt with the carrier, which sends it again. ``_owe(payload)`` files a receipt's answer under a
token; ``acknowledge(tokens)`` (or ``Answer``/``Unmatched`` from the reconciler) sends each
through the connector's ``_answer(payload)``.

A connector using it keeps ``name``, ``_events`` (the send side of its event stream),
``_outbox`` (events not yet handed out), ``_counts`` (with "matched" and "unmatched"),
``_reconciler`` (``gateway.core.receipts.Reconciler``), ``_scope`` and ``_tg`` (its task group,
entered by its own ``__aenter__``), and an ``aclose``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio

from carriers.base import ReceiptCounts, ReceiptMatched, ReceiptProgress, SubmitFailed
from gateway.core.model import Dispatch
from gateway.core.receipts import Answer, Progressed, Receipted, ReconcilerStatistics, Result

__all__ = ["MEDIA_UNSUPPORTED", "ConnectorShell"]

MEDIA_UNSUPPORTED = 415  # SubmitFailed code for media (MMS) sent to a carrier that takes none

log = logging.getLogger("carriers")


class ConnectorShell:
    name: str
    _events: Any
    _outbox: list[Any]
    _counts: dict[str, int]
    _errors: dict[str, int]
    _reconciler: Any
    _scope: anyio.CancelScope
    _tg: Any
    deferred_acks: bool = False
    _owed: dict[int, Any]  # ack token -> what answering that receipt needs (made by _owe)
    _ack_seq: int = 0

    async def aclose(self, timeout: float | None = None) -> None:  # pragma: no cover - each connector's own
        raise NotImplementedError

    async def __aexit__(self, *exc_info: object) -> bool | None:
        try:
            if exc_info[0] is None:
                await self.aclose()
        finally:
            self._scope.cancel()
            assert self._tg is not None
            result = await self._tg.__aexit__(*exc_info)
        return result

    def expect_receipts(self, message_id: int, carrier_ids: Sequence[str]) -> None:
        """A message the carrier took before a restart: its receipts may still come (an SMSC
        redelivers those left unacknowledged; an HTTP carrier posts them), so the reconciler
        learns its ids again; it ends with one ``ReceiptMatched``, as if submitted here."""
        now = anyio.current_time()
        for result in self._reconciler.submitted(message_id, self.name, carrier_ids, len(carrier_ids), now):
            self._on_result(result)

    def _without_media(self, batch: Sequence[Dispatch]) -> list[Dispatch]:
        """Media for a carrier that takes none: refuse those now (permanently), keep the rest."""
        keep, now = [], anyio.current_time()
        for d in batch:
            if d.media:
                self._counts["failed"] += 1
                self._errors["MEDIA_UNSUPPORTED"] = self._errors.get("MEDIA_UNSUPPORTED", 0) + 1
                self._outbox.append(SubmitFailed(ref=d.ref, carrier=self.name, command_status=MEDIA_UNSUPPORTED,
                                                 name="MEDIA_UNSUPPORTED", permanent=True, retry_after=None, at=now))  # fmt: skip
            else:
                keep.append(d)
        return keep

    def _on_result(self, result: Result) -> None:
        kind = type(result)
        if kind is Receipted:
            self._counts["matched"] += 1
            self._outbox.append(
                ReceiptMatched(message_id=result.ref,  # the reconciler is keyed by message id
                               carrier=result.carrier, state=result.state, error_code=result.error_code,
                               reason=result.reason, at=result.at, submitted_at=result.submitted_at,
                               acks=result.acks)  # fmt: skip
            )
        elif kind is Progressed:
            self._outbox.append(
                ReceiptProgress(message_id=result.ref, carrier=result.carrier, error_code=result.error_code,
                                reason=result.reason, at=result.at, acks=result.acks)  # fmt: skip
            )
        elif kind is Answer:
            self.acknowledge(result.acks)
        else:
            self._counts["unmatched"] += 1
            log.warning("receipt.unmatched carrier=%s id=%.64r state=%s", result.carrier, result.message_id, result.state)

    def _receipt_counts(self, rs: ReconcilerStatistics) -> ReceiptCounts:
        return ReceiptCounts(matched=rs.matched, intermediate=rs.intermediate, duplicate=rs.duplicates,
                             unmatched=rs.unmatched, unparsable=self._counts.get("unparsable", 0),
                             stateless=rs.stateless)  # fmt: skip

    # -- receipt answers ---------------------------------------------------------------

    def _owe(self, payload: Any) -> int:
        """File the answer to one receipt; returns its token (never 0)."""
        self._ack_seq += 1
        self._owed[self._ack_seq] = payload
        return self._ack_seq

    def acknowledge(self, acks: Sequence[int]) -> None:
        """The states these receipts made are on disk: answer the carrier for each."""
        owed = self._owed
        for token in acks:
            payload = owed.pop(token, None)
            if payload is not None:
                self._answer(payload)

    def _answer(self, payload: Any) -> None:  # pragma: no cover - each connector's own
        raise NotImplementedError

    def owed_answers(self) -> int:
        """Receipts waiting for ``acknowledge``."""
        return len(self._owed)

    async def _flush_events(self) -> None:
        """Hand the events out: without an await each, unless the consumer's buffer is full."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        send_nowait = self._events.send_nowait
        for i, event in enumerate(outbox):
            try:
                send_nowait(event)
            except anyio.WouldBlock:
                for rest in outbox[i:]:
                    await self._events.send(rest)
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.error("connector.events_closed carrier=%s dropped=%d", self.name, len(outbox) - i)
                return
