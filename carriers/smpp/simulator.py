"""`sluice sim smsc`: an SMSC simulator on anyio, built on the same ``Session`` class as the ESME.

It accepts binds (any credentials unless ``system_id``/``password`` are set), answers submit_sm
with message ids (decimal, or hex with the receipt text in decimal: the classic mismatch), and
sends delivery receipts (TLVs and text) ``dlr_delay`` seconds later to any receiver-capable bind
of the same system_id, at most ``window`` unanswered per bind. It enforces ``tps`` (all binds)
and ``bind_tps`` exactly: never more accepted submits than that in any 1-second window; the
excess is answered ESME_RTHROTTLED (0x58).

Misbehaviour on demand, for tests: throttling storms (``throttle_burst``), a fraction of
undeliverable receipts, generic_nack to a fraction of submits, receipts before the response,
duplicate receipts, unbind after N submits, stop answering after N PDUs, drop the connection
after N PDUs (unanswered receipts are then redelivered on the next bind). It can also originate
MO messages (``mo_rate``), every ``mo_long_every``-th one long, its parts sent out of order.

Counters (``counters()``) include the largest number of submits received, and accepted, in any
1-second window. Run as a process it prints ``{"listening": port}`` when ready, and its counters
as one JSON line on SIGUSR1 and on exit (SIGINT/SIGTERM), and to ``--stats-file`` if given.

One read is one batch: every PDU in it is handled before one write goes back (a per-PDU await
costs ~4x throughput, see PERF-NOTES).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections import deque
from typing import Any, Literal

import anyio
import anyio.abc
import click
import msgspec
from anyio.streams.tls import TLSListener

from carriers.simulating import parse_burst, serve_until_signalled
from carriers.smpp import pdu as P
from carriers.smpp.pdu import CommandId as C
from carriers.smpp.receipts import STATE_CODES, format_receipt_date, receipt_text
from carriers.smpp.session import Closed, PeerError, ResponseTimeout, Session
from gateway.core.receipts import ReceiptState

__all__ = ["SimSettings", "SmscSimulator", "run_simulator", "sim_smsc"]

log = logging.getLogger(__name__)

_THROTTLED = P.Status.ESME_RTHROTTLED
_SUBMIT_RESP = C.SUBMIT_SM_RESP
_SYSERR = P.Status.ESME_RSYSERR


class ReceiptVariant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One receipt as a real carrier may shape it, for ``SimSettings.receipt_script``. The text
    and the TLV id are templates on the message's number n: ``{dec}`` (31), ``{dec10}``
    (0000000031), ``{hex}`` (1f), ``{HEX}`` (1F), ``{hex8}`` (0000001f). Each TLV is sent only
    if given. ``pdu`` "data_sm" sends it as a data_sm (text in message_payload); ``payload`` puts
    a deliver_sm's text in message_payload. Dates in the text are the carrier's business: write
    them as wanted (10 or 12 digits)."""

    text: str = ""
    tlv_id: str | None = None
    tlv_state: int | None = None
    tlv_neterr: int | None = None  # network_error_code: GSM (3) + this code
    esm_class: int = 0x04
    pdu: Literal["deliver_sm", "data_sm"] = "deliver_sm"
    payload: bool = False

    def render(self, n: int, src: bytes = b"", dst: bytes = b"") -> P.DeliverSm | P.DataSm:
        ids = {"dec": str(n), "dec10": "%010d" % n, "hex": "%x" % n, "HEX": "%X" % n, "hex8": "%08x" % n}
        text = self.text.format(**ids).encode("latin-1")
        tlvs: dict[int, bytes] = {}
        if self.tlv_id is not None:
            tlvs[P.TLV.receipted_message_id] = self.tlv_id.format(**ids).encode("latin-1") + b"\0"
        if self.tlv_state is not None:
            tlvs[P.TLV.message_state] = bytes((self.tlv_state,))
        if self.tlv_neterr is not None:
            tlvs[P.TLV.network_error_code] = b"\x03" + self.tlv_neterr.to_bytes(2, "big")
        if self.pdu == "data_sm" or self.payload:
            tlvs[P.TLV.message_payload] = text
            text = b""
        if self.pdu == "data_sm":
            return P.DataSm(source_addr=dst, destination_addr=src, esm_class=self.esm_class, tlvs=tlvs)
        return P.DeliverSm(source_addr=dst, destination_addr=src, esm_class=self.esm_class, short_message=text,
                           tlvs=tlvs)  # fmt: skip


class SimSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 2775
    tps: float | None = None  # accepted submits per second over all binds (None: no limit)
    # ((after s, tps), ...): the limit changes at these offsets from the start, unannounced
    tps_schedule: tuple[tuple[float, float], ...] = ()
    bind_tps: float | None = None  # per bind
    window: int = 100  # unanswered deliver_sm per bind
    dlr_delay: float = 1.0
    undeliv_rate: float = 0.0
    id_format: Literal["dec", "hex"] = "dec"
    receipts: Literal["both", "tlv", "text", "none"] = "both"
    receipt_first: bool = False  # the receipt goes out before the submit_sm_resp
    duplicate_receipts: bool = False
    # The receipts of the n-th accepted submit are ``receipt_script[(n - 1) % len]`` instead of the
    # standard one: each a list of variants, sent ``dlr_delay`` apart (e.g. ENROUTE, then DELIVRD).
    receipt_script: tuple[tuple[ReceiptVariant, ...], ...] = ()
    nack_rate: float = 0.0  # generic_nack (ESME_RSYSERR) instead of submit_sm_resp
    drop_after: int | None = None  # PDUs received per connection, then close abruptly
    mute_after: int | None = None  # PDUs received per connection, then answer nothing
    unbind_after: int | None = None  # submits per connection, then send unbind
    throttle_burst: tuple[float, float] | None = None  # (every s, for s): answer all with 0x58
    mo_rate: float = 0.0  # MO messages per second
    mo_long_every: int = 0  # every Nth MO is a 3-part message sent out of order (0: never)
    mo_text: str | None = None  # what every (short) MO says; None: "MO <n>"
    mo_limit: int | None = None  # stop after this many MOs
    mo_to: str = "SLUICE"  # the short code / sender id MOs are addressed to
    mo_from: str | None = None  # every MO's source_addr as written (e.g. national "2125550191"); None: 4479<n>
    mo_ton: int = 0  # source_addr_ton of MOs (SMPP 3.4 §5.2.5: 0 unknown, 1 international, 2 national, 5 alnum)
    mo_twice: bool = False  # deliver every MO twice (an SMSC redelivering, e.g. after a lost deliver_sm_resp)
    mo_udh_in_payload: bool = False  # long MOs' UDH and text in message_payload, short_message empty (SMPP 3.4 §5.3.2.32)
    mo_lose_part: int = 0  # long MOs' part of this number is never sent (a part lost on the way; 0: none)
    system_id: str | None = None
    password: str | None = None
    enquire_link_interval: float | None = 30.0
    response_timeout: float = 10.0
    seed: int | None = None
    tls_cert: str | None = None  # PEM certificate chain: serve SMPP over TLS
    tls_key: str | None = None


# A standard receipt's deliver_sm body (SMPP 3.4 §4.6.1), what ``P.encode_body`` makes of
# ``DeliverSm(source_addr=dst, destination_addr=src, esm_class=0x04, short_message=text, tlvs=...)``
# with the TLVs receipted_message_id (§5.3.2.12), message_state (§5.3.2.35), network_error_code
# (§5.3.2.31: GSM, then the code), in that order, spliced into one format: building the struct and
# encoding it field by field was a third of the simulator's CPU, and the simulator shares the
# cores with the gateway it is measuring (docs/BENCHMARKS.md). Every field but the addresses, the
# text and the TLVs' values is constant. ``tests/smpp/test_simulator_receipts.py`` holds it to the
# struct's encoding.
_HEAD = b"\0\0\0%b\0\0\0%b\0\x04\0\0\0\0\0\0\0\0"  # service_type..sm_default_msg_id
_WITH_TLVS = _HEAD + b"%c%b\x00\x1e%b%b\0\x04\x27\x00\x01%c\x04\x23\x00\x03\x03%b"  # "tlv": text b""


def encode_receipt(mode: str, message_id: bytes, text: bytes, source_addr: bytes, destination_addr: bytes,
                   state_code: int, error_code: int) -> bytes:  # fmt: skip
    """The body of a receipt's deliver_sm (``mode``: ``SimSettings.receipts``, not "none")."""
    if len(source_addr) > 20 or len(destination_addr) > 20 or len(text) > 254 or len(message_id) > 64:
        # out of the template's reach: the struct's checks raise, or encode it as it may
        return P.encode_body(_receipt_struct(mode, message_id, text, source_addr, destination_addr, state_code,
                                             error_code))  # fmt: skip
    if mode == "text":
        return _HEAD % (source_addr, destination_addr) + bytes((len(text),)) + text
    return _WITH_TLVS % (source_addr, destination_addr, len(text), text,
                         (len(message_id) + 1).to_bytes(2, "big"), message_id, state_code,
                         error_code.to_bytes(2, "big"))  # fmt: skip


def _receipt_struct(mode: str, message_id: bytes, text: bytes, source_addr: bytes, destination_addr: bytes,
                    state_code: int, error_code: int) -> P.DeliverSm:  # fmt: skip
    """The same receipt as a struct (the reference ``encode_receipt`` is held to)."""
    tlvs = {}
    if mode != "text":
        tlvs = {
            P.TLV.receipted_message_id: message_id + b"\0",
            P.TLV.message_state: bytes((state_code,)),
            P.TLV.network_error_code: b"\x03" + error_code.to_bytes(2, "big"),
        }
    return P.DeliverSm(source_addr=source_addr, destination_addr=destination_addr, esm_class=0x04,
                       short_message=text, tlvs=tlvs)  # fmt: skip


class _ReceiptDates:
    """A receipt's dates (``format_receipt_date``), the last of each kind kept: receipts come
    in order of time, so nearly every one has the same two as the one before."""

    __slots__ = ("_m", "_mb", "_s", "_sb")

    def __init__(self) -> None:
        self._m = self._s = -1
        self._mb = self._sb = b""

    def minute(self, epoch: float) -> bytes:
        second = int(epoch // 1)
        if second != self._m:
            self._m, self._mb = second, format_receipt_date(epoch)
        return self._mb

    def second(self, epoch: float) -> bytes:
        second = int(epoch // 1)
        if second != self._s:
            self._s, self._sb = second, format_receipt_date(epoch, seconds=True)
        return self._sb


class _Counters:
    FIELDS = (
        "connections",
        "binds",
        "bind_failures",
        "submits",
        "accepted",
        "throttled",
        "nacked",
        "receipts_sent",
        "receipts_acked",
        "receipts_failed",
        "receipts_redelivered",
        "mos_sent",
        "mos_acked",
        "dropped_connections",
        "unbinds_sent",
        "protocol_errors",
        "max_submits_1s",
        "max_accepted_1s",
        "receipts_window_full_ms",  # due receipts waited this long, every receiver's window full
    )

    def __init__(self) -> None:
        for f in self.FIELDS:
            setattr(self, f, 0)

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.FIELDS}


class _Receipt:
    __slots__ = ("due", "system_id", "message_id", "text_id", "src", "dst", "submitted", "kind", "body", "variant",
                 "wire", "command")

    def __init__(self, due: float, system_id: bytes, message_id: bytes, text_id: bytes, src: bytes, dst: bytes, submitted: float) -> None:
        self.due = due
        self.system_id = system_id
        self.message_id = message_id
        self.text_id = text_id
        self.src = src
        self.dst = dst
        self.submitted = submitted
        self.kind = "receipt"
        self.body: P.DeliverSm | P.DataSm | None = None  # filled for MOs, and for receipts once built
        self.variant: tuple[int, ReceiptVariant] | None = None  # (n, variant) of a scripted receipt
        self.wire: bytes | None = None  # the PDU's body as sent, once built
        self.command = C.DELIVER_SM


class _Conn:
    __slots__ = ("session", "stream", "wake", "system_id", "mode", "pdus", "submits", "muted", "inflight", "accepted_1s", "closing", "dropped")

    def __init__(self, session: Session, stream: anyio.abc.ByteStream) -> None:
        self.session = session
        self.stream = stream
        self.wake = anyio.Event()  # the writer's: the session has something to send
        self.system_id = b""
        self.mode = ""
        self.pdus = 0
        self.submits = 0
        self.muted = False
        self.inflight: dict[int, _Receipt] = {}  # deliver_sm seq -> what it carried
        self.accepted_1s: deque[float] = deque()
        self.closing = False
        self.dropped = False

    def kick(self) -> None:
        self.wake.set()


class SmscSimulator:
    """The simulator's state. ``serve`` runs it; ``counters`` reads it at any time."""

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = s = settings or SimSettings()
        self.port: int | None = None
        self._c = _Counters()
        self._rng = random.Random(s.seed)
        self._next_id = 0
        self._submits_1s: deque[float] = deque()
        self._accepted_1s: deque[float] = deque()
        self._due: deque[_Receipt] = deque()
        self._backlog: dict[bytes, deque[_Receipt]] = {}
        self._receivers: dict[bytes, list[_Conn]] = {}
        self._rr = 0
        self._wake = anyio.Event()
        self._blocked = False
        self._blocked_at = self._blocked_s = 0.0  # since when / how long in all due receipts waited for a window
        self._t0 = 0.0
        self._wall = 0.0
        self._per_second: list[int] = []
        self._dates = _ReceiptDates()

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = self._c.as_dict()
        out["receipts_pending"] = len(self._due) + sum(len(b) for b in self._backlog.values())
        out["accepted_per_s"] = list(self._per_second)  # [i]: accepted in second i since start
        out["tps_per_s"] = [self._tps_at(self._t0 + i) for i in range(len(self._per_second))]
        return out

    def _tps_at(self, now: float) -> float | None:
        tps = self.settings.tps
        for after, value in self.settings.tps_schedule:
            if now - self._t0 >= after:
                tps = value
        return tps

    # -- serving -------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the simulator's own tasks (receipts, MOs) without a listener: connections are
        then handed in with ``handle_connection`` (in-memory tests)."""
        self._t0 = anyio.current_time()
        self._wall = time.time() - self._t0  # receipt dates are wall-clock; scheduling is not
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._dispatch_receipts)
            if self.settings.mo_rate > 0:
                tg.start_soon(self._originate_mos)
            task_status.started()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``settings.host:port`` (0: any free port, reported through ``task_status``)."""
        s = self.settings
        listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(local_host=s.host, local_port=s.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        if s.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
            listener = TLSListener(listener, ctx, standard_compatible=False)
        async with listener, anyio.create_task_group() as tg:
            await tg.start(self.run)
            task_status.started(self.port)
            await listener.serve(self.handle_connection, task_group=tg)

    async def handle_connection(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one ESME connection until it ends."""
        s = self.settings
        session = Session(
            "smsc",
            response_timeout=s.response_timeout,
            enquire_link_interval=s.enquire_link_interval,
            now=anyio.current_time(),
        )
        conn = _Conn(session, stream)
        self._c.connections += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._timers, conn, tg.cancel_scope)
                tg.start_soon(self._write, conn)
                await self._read(conn)
                tg.cancel_scope.cancel()
            last = session.data_to_send()  # e.g. the unbind_resp that ended it
            if last and not conn.dropped and not conn.muted:
                with anyio.move_on_after(1.0, shield=True):
                    await stream.send(last)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._forget(conn)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read(self, conn: _Conn) -> None:
        """Read, handle every PDU of the read, wake the writer; never waits on a write, so a
        slow reader at the other end never stops this one."""
        s = self.settings
        session = conn.session
        while not conn.closing:
            try:
                data = await conn.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            now = anyio.current_time()
            events = session.receive_data(data, now)
            if events:
                if s.drop_after is not None and conn.pdus + len(events) >= s.drop_after:
                    self._handle_events(conn, events[: max(0, s.drop_after - conn.pdus)], now)
                    self._c.dropped_connections += 1
                    conn.dropped = True
                    return  # abruptly: what was answered in this batch is never written
                if s.mute_after is not None and conn.pdus + len(events) >= s.mute_after:
                    conn.muted = True
                conn.pdus += len(events)
                if not conn.muted:
                    self._handle_events(conn, events, now)
            if conn.muted:
                session.data_to_send()
                continue
            conn.kick()
            if session.closed:
                return

    async def _write(self, conn: _Conn) -> None:
        session, stream = conn.session, conn.stream
        while True:
            data = session.data_to_send()
            if data and not conn.muted:
                try:
                    await stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    conn.closing = True
                    return
                continue
            await conn.wake.wait()
            conn.wake = anyio.Event()

    async def _timers(self, conn: _Conn, scope: anyio.CancelScope) -> None:
        session = conn.session
        while True:
            timer = session.get_timer()
            now = anyio.current_time()
            await anyio.sleep(1.0 if timer is None else min(1.0, max(0.0, timer - now)))
            now = anyio.current_time()
            events = session.handle_timer(now)
            if conn.muted:
                session.data_to_send()
                continue
            if events:
                self._handle_events(conn, events, now)
            conn.kick()
            if session.closed:  # link dead: end the reader and writer; what is left gets flushed
                conn.closing = True
                scope.cancel()
                return

    def _forget(self, conn: _Conn) -> None:
        """The connection is gone: stop routing receipts to it and redeliver what it left unanswered."""
        receivers = self._receivers.get(conn.system_id)
        if receivers and conn in receivers:
            receivers.remove(conn)
        if conn.inflight:
            for item in sorted(conn.inflight.values(), key=lambda r: r.due, reverse=True):
                if item.kind == "receipt":
                    self._c.receipts_redelivered += 1
                    self._due.appendleft(item)
            conn.inflight.clear()
            self._wake.set()

    # -- what the ESME sends ---------------------------------------------------------------------

    def _handle_events(self, conn: _Conn, events: list, now: float) -> None:
        submit = P.SubmitSm
        for ev in events:
            t = type(ev)
            if t is submit:
                self._on_submit(conn, ev, now)
            elif t is P.DeliverSmResp or t is P.DataSmResp or t is P.GenericNack:
                self._on_deliver_resp(conn, ev)
            elif isinstance(ev, P.Bind):
                self._on_bind(conn, ev)
            elif t is P.DataSm:
                conn.session.send(P.DataSmResp(sequence=ev.sequence, message_id=self._new_id()[0]))
            elif t is P.SubmitMulti:
                conn.session.send(P.SubmitMultiResp(sequence=ev.sequence, message_id=self._new_id()[0]))
            elif t is ResponseTimeout and ev.command_id == C.DELIVER_SM:
                item = conn.inflight.pop(ev.sequence, None)
                if item is not None and item.kind == "receipt":
                    self._c.receipts_failed += 1
            elif t is PeerError:
                self._c.protocol_errors += 1
            elif t is Closed:
                conn.closing = True

    def _on_bind(self, conn: _Conn, req: P.Bind) -> None:
        s = self.settings
        status = 0
        if s.system_id is not None and req.system_id != s.system_id.encode():
            status = P.Status.ESME_RINVSYSID
        elif s.password is not None and req.password != s.password.encode():
            status = P.Status.ESME_RINVPASWD
        resp_cls = {"transmitter": P.BindTransmitterResp, "receiver": P.BindReceiverResp, "transceiver": P.BindTransceiverResp}
        conn.session.send(resp_cls[req.mode](sequence=req.sequence, status=status, system_id=b"sluicesim"))
        if status:
            self._c.bind_failures += 1
            return
        self._c.binds += 1
        conn.system_id, conn.mode = req.system_id, req.mode
        if req.mode in ("receiver", "transceiver"):
            self._receivers.setdefault(req.system_id, []).append(conn)
            backlog = self._backlog.pop(req.system_id, None)
            if backlog:
                self._due.extendleft(reversed(backlog))
            self._wake.set()

    def _new_id(self) -> tuple[bytes, bytes]:
        """(id for submit_sm_resp and the TLV, id for the receipt text)."""
        self._next_id += 1
        n = self._next_id
        if self.settings.id_format == "hex":
            return b"%x" % n, b"%d" % n  # hex in the response, decimal in the text
        return b"%d" % n, b"%010d" % n  # leading zeros in the text

    def _on_submit(self, conn: _Conn, req: P.SubmitSm, now: float) -> None:
        s = self.settings
        c = self._c
        c.submits += 1
        conn.submits += 1
        cutoff = now - 1.0
        window = self._submits_1s
        window.append(now)
        while window[0] <= cutoff:
            window.popleft()
        if len(window) > c.max_submits_1s:
            c.max_submits_1s = len(window)
        session = conn.session
        if s.nack_rate and self._rng.random() < s.nack_rate:
            c.nacked += 1
            session.send_response(C.GENERIC_NACK, req.sequence, _SYSERR)
            return
        if self._throttling(conn, now, cutoff):
            c.throttled += 1
            session.send_response(_SUBMIT_RESP, req.sequence, _THROTTLED, b"\0")
            return
        accepted = self._accepted_1s
        accepted.append(now)
        conn.accepted_1s.append(now)
        if len(accepted) > c.max_accepted_1s:
            c.max_accepted_1s = len(accepted)
        c.accepted += 1
        second = int(now - self._t0)
        per_second = self._per_second
        if second >= len(per_second):
            per_second.extend([0] * (second + 1 - len(per_second)))
        per_second[second] += 1
        mid, text_id = self._new_id()
        wants_receipt = req.registered_delivery & 0x03 and s.receipts != "none"
        if wants_receipt and s.receipt_script:
            n = self._next_id
            for k, variant in enumerate(s.receipt_script[(n - 1) % len(s.receipt_script)]):
                item = _Receipt(now + s.dlr_delay * (k + 1), conn.system_id, mid, text_id, req.source_addr,
                                req.destination_addr, now)  # fmt: skip
                item.variant = (n, variant)
                if not self._due:
                    self._wake.set()
                self._due.append(item)
        elif wants_receipt:
            item = _Receipt(now + s.dlr_delay, conn.system_id, mid, text_id, req.source_addr, req.destination_addr, now)
            if s.receipt_first:
                self._send_receipt_now(item, now)
            else:
                if not self._due:
                    self._wake.set()
                self._due.append(item)
        session.send_response(_SUBMIT_RESP, req.sequence, 0, mid + b"\0")
        if s.unbind_after is not None and conn.submits == s.unbind_after:
            session.send(P.Unbind(), now)
            c.unbinds_sent += 1

    def _throttling(self, conn: _Conn, now: float, cutoff: float) -> bool:
        s = self.settings
        if s.throttle_burst is not None:
            every, duration = s.throttle_burst
            if (now - self._t0) % every < duration:
                return True
        tps = self._tps_at(now) if s.tps_schedule else s.tps
        if tps is not None:
            accepted = self._accepted_1s
            while accepted and accepted[0] <= cutoff:
                accepted.popleft()
            if len(accepted) >= tps:
                return True
        elif self._accepted_1s and self._accepted_1s[0] <= cutoff:
            accepted = self._accepted_1s
            while accepted and accepted[0] <= cutoff:
                accepted.popleft()
        mine = conn.accepted_1s
        while mine and mine[0] <= cutoff:
            mine.popleft()
        return s.bind_tps is not None and len(mine) >= s.bind_tps

    def _on_deliver_resp(self, conn: _Conn, resp: P.Pdu) -> None:
        item = conn.inflight.pop(resp.sequence, None)
        if item is None:
            return
        ok = resp.status == 0 and (type(resp) is P.DeliverSmResp or type(resp) is P.DataSmResp)
        if item.kind == "receipt":
            if ok:
                self._c.receipts_acked += 1
            else:
                self._c.receipts_failed += 1
        elif ok:
            self._c.mos_acked += 1
        if self._blocked:
            self._blocked = False
            self._blocked_s += anyio.current_time() - self._blocked_at
            self._c.receipts_window_full_ms = round(self._blocked_s * 1000)
            self._wake.set()

    # -- what the SMSC sends --------------------------------------------------------------------

    def _receipt_wire(self, item: _Receipt, now: float) -> bytes:
        """A standard receipt's deliver_sm body, encoded (``encode_receipt``)."""
        s = self.settings
        failed = s.undeliv_rate > 0 and self._rng.random() < s.undeliv_rate
        state = ReceiptState.UNDELIVERABLE if failed else ReceiptState.DELIVERED
        err = 1 if failed else 0
        text = b""
        if s.receipts != "tlv":
            dates = self._dates
            text = receipt_text(item.text_id, state, err, dates.minute(item.submitted + self._wall),
                                dates.second(now + self._wall))  # fmt: skip
        return encode_receipt(s.receipts, item.message_id, text, item.dst, item.src, STATE_CODES[state], err)

    def _receiver_for(self, system_id: bytes) -> _Conn | None | Literal[False]:
        """A bound receiver of ``system_id`` with window to spare; None if there is none at all,
        False if all are full."""
        conns = self._receivers.get(system_id)
        if not conns:
            return None
        n = len(conns)
        limit = self.settings.window
        for i in range(n):
            conn = conns[(self._rr + i) % n]
            if len(conn.inflight) < limit and not conn.closing and conn.session.bound and not conn.muted:
                self._rr = (self._rr + i + 1) % n
                return conn
        return False

    def _deliver(self, conn: _Conn, item: _Receipt, now: float) -> None:
        wire = item.wire
        if wire is None:  # built once: a redelivery (after a drop) sends the same bytes
            if item.body is None and item.variant is None:
                wire = self._receipt_wire(item, now)
            else:
                if item.body is None:
                    assert item.variant is not None
                    item.body = item.variant[1].render(item.variant[0], item.src, item.dst)
                wire = P.encode_body(item.body)
                item.command = C.DATA_SM if type(item.body) is P.DataSm else C.DELIVER_SM
            item.wire = wire
        copies = 2 if self.settings.duplicate_receipts and item.kind == "receipt" else 1
        command = item.command
        for _ in range(copies):
            seq = conn.session.send_request(command, wire, now=now)
            conn.inflight[seq] = item
            if item.kind == "receipt":
                self._c.receipts_sent += 1
            else:
                self._c.mos_sent += 1

    def _send_receipt_now(self, item: _Receipt, now: float) -> None:
        conn = self._receiver_for(item.system_id)
        if conn:
            self._deliver(conn, item, now)
            conn.kick()
        else:
            self._due.append(item)
            self._wake.set()

    async def _dispatch_receipts(self) -> None:
        while True:
            now = anyio.current_time()
            touched: set[_Conn] = set()
            due = self._due
            while due and due[0].due <= now:
                item = due[0]
                conn = self._receiver_for(item.system_id)
                if conn is None:  # nobody to tell yet: keep it for when a receiver binds
                    self._backlog.setdefault(item.system_id, deque()).append(due.popleft())
                    continue
                if conn is False:
                    if not self._blocked:
                        self._blocked, self._blocked_at = True, now
                    break
                due.popleft()
                self._deliver(conn, item, now)
                touched.add(conn)
            for conn in touched:
                conn.kick()
            timeout = None if (self._blocked or not due) else max(0.0, due[0].due - anyio.current_time())
            if timeout is None or timeout > 0:
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _originate_mos(self) -> None:
        s = self.settings
        n = 0
        while s.mo_limit is None or n < s.mo_limit:
            await anyio.sleep(1.0 / s.mo_rate)
            now = anyio.current_time()
            conns = [c for cs in self._receivers.values() for c in cs if c.session.bound and not c.muted]
            if not conns:
                continue
            conn = conns[n % len(conns)]
            n += 1
            for pdu in self._mo_pdus(n) * (2 if s.mo_twice else 1):
                item = _Receipt(now, conn.system_id, b"", b"", b"", b"", now)
                item.kind, item.body = "mo", pdu
                if len(conn.inflight) < s.window:
                    self._deliver(conn, item, now)
            conn.kick()

    def _mo_pdus(self, n: int) -> list[P.DeliverSm]:
        s = self.settings
        sender, to = b"4479%08d" % (n % 10**8), s.mo_to.encode()
        if s.mo_from is not None:
            sender = s.mo_from.encode("latin-1")
        pdus = self._mo_parts(n, sender, to)
        if s.mo_ton:
            pdus = [msgspec.structs.replace(p, source_addr_ton=s.mo_ton) for p in pdus]
        return pdus

    def _mo_parts(self, n: int, sender: bytes, to: bytes) -> list[P.DeliverSm]:
        s = self.settings
        if not (s.mo_long_every and n % s.mo_long_every == 0):
            if s.mo_text is not None:  # UTF-16 when it is not plain ASCII (e.g. 退订)
                if s.mo_text.isascii():
                    return [P.DeliverSm(source_addr=sender, destination_addr=to, short_message=s.mo_text.encode())]
                return [P.DeliverSm(source_addr=sender, destination_addr=to, data_coding=8,
                                    short_message=s.mo_text.encode("utf-16-be"))]  # fmt: skip
            return [P.DeliverSm(source_addr=sender, destination_addr=to, short_message=b"MO %d" % n)]
        text = (b"long MO %d " % n) * 30
        chunks = [text[i : i + 153] for i in range(0, len(text), 153)][:3]
        ref = n % 256
        payloads = [bytes((5, 0, 3, ref, len(chunks), i + 1)) + chunk for i, chunk in enumerate(chunks)]
        if s.mo_udh_in_payload:
            parts = [P.DeliverSm(source_addr=sender, destination_addr=to, esm_class=0x40,
                                 tlvs=P.make_tlvs(message_payload=p)) for p in payloads]  # fmt: skip
        else:
            parts = [P.DeliverSm(source_addr=sender, destination_addr=to, esm_class=0x40, short_message=p) for p in payloads]
        if s.mo_lose_part:
            del parts[s.mo_lose_part - 1]
        return parts[::-1]  # last part first: the ESME must reassemble in any order


async def run_simulator(settings: SimSettings, *, stats_file: str | None = None, out: Any = None) -> dict[str, Any]:
    """Serve until SIGINT/SIGTERM; print counters as JSON on SIGUSR1 and on exit."""
    return await serve_until_signalled(SmscSimulator(settings), settings.host, stats_file=stats_file, out=out)


def _schedule(value: str | None) -> tuple[tuple[float, float], ...]:
    if not value:
        return ()
    try:
        steps = tuple((float(a), float(t)) for a, t in (item.split(":") for item in value.split(",")))
    except ValueError:
        raise click.BadParameter("expected AFTER:TPS,... e.g. 10:250,40:500") from None
    return tuple(sorted(steps))


@click.command("smsc")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2775, show_default=True, help="0 picks a free port (printed on start)")
@click.option("--tps", type=float, default=None, help="accepted submits/s over all binds (default: no limit)")
@click.option("--tps-schedule", default=None,
              help="AFTER:TPS,... change the limit unannounced, e.g. 10:250,40:500 (seconds from start)")
@click.option("--bind-tps", type=float, default=None, help="accepted submits/s per bind")
@click.option("--window", default=100, show_default=True, help="unanswered deliver_sm per bind")
@click.option("--dlr-delay", default=1.0, show_default=True, help="seconds from submit to receipt")
@click.option("--undeliv-rate", default=0.0, show_default=True, help="fraction of receipts UNDELIV")
@click.option("--id-format", type=click.Choice(["dec", "hex"]), default="dec", show_default=True)
@click.option("--receipts", type=click.Choice(["both", "tlv", "text", "none"]), default="both", show_default=True)
@click.option("--receipt-first", is_flag=True, help="send each receipt before its submit_sm_resp")
@click.option("--duplicate-receipts", is_flag=True)
@click.option("--receipt-script", "receipt_script_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON list (one item per message, in turn) of lists of receipt variants (ReceiptVariant)")
@click.option("--nack-rate", default=0.0, show_default=True, help="fraction of submits answered generic_nack")
@click.option("--drop-after", type=int, default=None, help="close each connection after N PDUs")
@click.option("--mute-after", type=int, default=None, help="stop answering after N PDUs per connection")
@click.option("--unbind-after", type=int, default=None, help="send unbind after N submits per connection")
@click.option("--throttle-burst", default=None, help="EVERY:DURATION seconds of answering everything 0x58")
@click.option("--mo-rate", default=0.0, show_default=True, help="MO messages per second")
@click.option("--mo-text", default=None, help="what every MO says (default: 'MO <n>'), e.g. STOP")
@click.option("--mo-limit", type=int, default=None, help="stop after this many MOs")
@click.option("--mo-to", default="SLUICE", show_default=True, help="the short code MOs are addressed to")
@click.option("--mo-long-every", default=0, show_default=True, help="every Nth MO in 3 parts, out of order")
@click.option("--mo-from", default=None, help="every MO's source_addr as written (default: 4479<n>)")
@click.option("--mo-ton", default=0, show_default=True, help="MOs' source_addr_ton (1 intl, 2 national, 5 alnum)")
@click.option("--mo-twice", is_flag=True, default=False, help="deliver every MO twice (a redelivery)")
@click.option("--system-id", default=None, help="require this system_id (default: any)")
@click.option("--password", default=None, help="require this password (default: any)")
@click.option("--seed", type=int, default=None)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, help="serve over TLS (PEM)")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--stats-file", type=click.Path(dir_okay=False), default=None, help="write counters JSON here on exit")
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio", show_default=True)
def sim_smsc(stats_file: str | None, backend: str, throttle_burst: str | None, tps_schedule: str | None,
             receipt_script_file: str | None, **options: Any) -> None:  # fmt: skip
    """An SMSC simulator: SMPP 3.4 server with TPS limits, receipts, MOs and misbehaviour."""
    script: tuple[tuple[ReceiptVariant, ...], ...] = ()
    if receipt_script_file:
        try:
            with open(receipt_script_file, "rb") as f:
                script = msgspec.json.decode(f.read(), type=tuple[tuple[ReceiptVariant, ...], ...])
        except msgspec.ValidationError as exc:
            raise click.BadParameter(f"{receipt_script_file}: {exc}", param_hint="--receipt-script") from None
    settings = SimSettings(throttle_burst=parse_burst(throttle_burst), tps_schedule=_schedule(tps_schedule),
                           receipt_script=script, **options)  # fmt: skip
    backend_options = {"use_uvloop": True} if backend == "asyncio" else {}
    anyio.run(lambda: run_simulator(settings, stats_file=stats_file), backend=backend, backend_options=backend_options)


if __name__ == "__main__":
    sim_smsc()
