"""One SMPP 3.4 session, sans-I/O: bytes in, events out; the same class for ESME and SMSC.

Theory of operation
-------------------
A ``Session`` owns no socket and reads no clock. The shell feeds it what arrived
(``receive_data(data, now)``), asks what to write (``data_to_send()``), tells it what to send
(``send(pdu, now)``) and when time passes (``get_timer()`` / ``handle_timer(now)``). Everything
it decides comes back as events: the peer's PDUs (``SubmitSm`` at the SMSC, ``SubmitSmResp`` and
``DeliverSm`` at the ESME...) plus the few session-level facts below. An ESME made with a
``deliver`` hook (the connector's: ``carriers.smpp.receipts.receipt_pdu``) gets its common
receipts as ``DeliverReceipt`` events instead, read straight from the buffer; the session treats
them as the deliver_sm they are.

The session's life is a table, ``_TRANSITIONS``, of ``(state, input) -> state`` (the shape of
h11's ``_state.py``)::

    OPEN --bind--> BINDING --accepted--> BOUND_TX | BOUND_RX | BOUND_TRX
                      \\--refused--> OPEN
    BOUND_* --we unbind--> UNBINDING --unbind_resp--> CLOSED
    BOUND_* | UNBINDING --peer unbinds (we answer)--> CLOSED
    any --fatal error / link dead / connection lost / close()--> CLOSED

A missing entry is a protocol error. Which requests may be *originated* in which state is the
second table, ``_ORIGINATE`` (SMPP 3.4 §2.3, table 2-1): submit_sm only by the ESME when bound
as transmitter or transceiver, deliver_sm only by the SMSC to a receiver or transceiver, and so
on; responses are always allowed and are matched to our outstanding requests by sequence number.

The session answers the housekeeping itself: enquire_link gets its resp, unbind gets its resp and
closes, a request in the wrong state gets its resp with ESME_RINVBNDSTS (§5.1.3; a bind while
bound gets ESME_RALYBND), an unknown command_id gets generic_nack ESME_RINVCMDID, an undecodable
PDU gets generic_nack with the decoder's status (§3.3), and an impossible command_length gets generic_nack and closes (the framing
is lost). Nothing the peer sends raises: it becomes a ``PeerError`` event.

Timers: each request we send has a response deadline (``response_timeout``); an unanswered
request comes back as ``ResponseTimeout`` (for bind, unbind and enquire_link it also closes the
session: the link is dead). When nothing has arrived for ``enquire_link_interval`` the session
sends an enquire_link itself (§4.11). Deadlines are kept in send order in a deque, so
``get_timer`` is O(1) amortised at any window size.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Literal

import msgspec

from carriers.errors import LocalProtocolError, PduError
from carriers.smpp import pdu as P
from carriers.smpp.pdu import CommandId as C
from carriers.smpp.pdu import Status

__all__ = [
    "BindRefused",
    "Bound",
    "Closed",
    "Event",
    "Input",
    "PeerError",
    "ResponseTimeout",
    "Session",
    "State",
    "Unbound",
    "UnexpectedResponse",
]

Role = Literal["esme", "smsc"]


class State(enum.Enum):
    OPEN = "open"
    BINDING = "binding"
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBINDING = "unbinding"
    CLOSED = "closed"


class Input(enum.Enum):
    BIND_REQUESTED = "bind requested"  # ESME sent / SMSC received a bind
    BIND_ACCEPTED_TX = "bind accepted (transmitter)"
    BIND_ACCEPTED_RX = "bind accepted (receiver)"
    BIND_ACCEPTED_TRX = "bind accepted (transceiver)"
    BIND_REFUSED = "bind refused"
    UNBIND_SENT = "we sent unbind"
    UNBIND_RECEIVED = "peer sent unbind"  # answered with unbind_resp
    UNBIND_DONE = "unbind_resp received"
    CLOSE = "close"


_BOUND = (State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX)

_TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.OPEN, Input.BIND_REQUESTED): State.BINDING,
    (State.BINDING, Input.BIND_ACCEPTED_TX): State.BOUND_TX,
    (State.BINDING, Input.BIND_ACCEPTED_RX): State.BOUND_RX,
    (State.BINDING, Input.BIND_ACCEPTED_TRX): State.BOUND_TRX,
    (State.BINDING, Input.BIND_REFUSED): State.OPEN,
    (State.UNBINDING, Input.UNBIND_DONE): State.CLOSED,
    (State.UNBINDING, Input.UNBIND_RECEIVED): State.CLOSED,
    **{(s, Input.UNBIND_SENT): State.UNBINDING for s in _BOUND},
    **{(s, Input.UNBIND_RECEIVED): State.CLOSED for s in _BOUND},
    **{(s, Input.CLOSE): State.CLOSED for s in State},
}

_ACCEPTED = {
    "transmitter": Input.BIND_ACCEPTED_TX,
    "receiver": Input.BIND_ACCEPTED_RX,
    "transceiver": Input.BIND_ACCEPTED_TRX,
}

_TX = (State.BOUND_TX, State.BOUND_TRX)
_RX = (State.BOUND_RX, State.BOUND_TRX)
_ALIVE = (State.OPEN, State.BINDING, *_BOUND)

#: Who may originate each request, in which states (SMPP 3.4 §2.3 table 2-1).
_ORIGINATE: dict[int, dict[str, tuple[State, ...]]] = {
    C.BIND_TRANSMITTER: {"esme": (State.OPEN,)},
    C.BIND_RECEIVER: {"esme": (State.OPEN,)},
    C.BIND_TRANSCEIVER: {"esme": (State.OPEN,)},
    C.SUBMIT_SM: {"esme": _TX},
    C.SUBMIT_MULTI: {"esme": _TX},
    C.DELIVER_SM: {"smsc": _RX},
    C.DATA_SM: {"esme": _TX, "smsc": _RX},
    C.UNBIND: {"esme": _BOUND, "smsc": _BOUND},
    C.ENQUIRE_LINK: {"esme": _ALIVE, "smsc": _ALIVE},
}

_CLASS_BY_ID: dict[int, type[P.Pdu]] = {cls.command_id: cls for cls in P._ENCODERS if cls is not P.UnknownPdu}


def _permissions(role: str, state: State, bound_as: State | None) -> tuple[frozenset[int], frozenset[int]]:
    """(requests we may send, requests the peer may send) in ``state``. While unbinding we send
    no new requests but still accept what the peer had in flight under the bound mode."""
    peer = "smsc" if role == "esme" else "esme"
    effective = bound_as if state is State.UNBINDING and bound_as is not None else state
    may_send = frozenset(cid for cid, who in _ORIGINATE.items() if state in who.get(role, ()))
    may_receive = frozenset(cid for cid, who in _ORIGINATE.items() if effective in who.get(peer, ()))
    return may_send, may_receive


# ---------------------------------------------------------------------------------------------
# Session-level events (the peer's PDUs are events too).


class Bound(msgspec.Struct, frozen=True, kw_only=True):
    """The bind is up. ``system_id`` is the peer's."""

    mode: str
    system_id: bytes


class BindRefused(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    name: str


class Unbound(msgspec.Struct, frozen=True, kw_only=True):
    by_peer: bool


class ResponseTimeout(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    command_id: int


class UnexpectedResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A response matching none of our outstanding requests (late, after its time-out, or bogus)."""

    pdu: P.Pdu


class PeerError(msgspec.Struct, frozen=True, kw_only=True):
    """The peer broke the protocol; the session has already answered (or is closing)."""

    command_status: int
    name: str
    sequence: int
    command_id: int
    message: str
    fatal: bool = False


class Closed(msgspec.Struct, frozen=True, kw_only=True):
    """The session is over: flush ``data_to_send()`` and close the connection."""

    reason: str


Event = P.Pdu | Bound | BindRefused | Unbound | ResponseTimeout | UnexpectedResponse | PeerError | Closed

_SEQ_MAX = 0x7FFFFFFF
_RESP = P.RESPONSE_BIT
_LINK_REQUESTS = (C.BIND_TRANSMITTER, C.BIND_RECEIVER, C.BIND_TRANSCEIVER, C.UNBIND, C.ENQUIRE_LINK)


class Session:
    """An SMPP session as ``role`` ("esme" or "smsc"). See the module docstring."""

    def __init__(
        self,
        role: Role = "esme",
        *,
        response_timeout: float = 10.0,
        enquire_link_interval: float | None = 30.0,
        max_pdu_length: int = P.MAX_PDU_LENGTH,
        now: float = 0.0,
        deliver: Callable[[bytes, int, int, int, int], P.Pdu | None] | None = None,
    ) -> None:
        if role not in ("esme", "smsc"):
            raise ValueError(f"role must be 'esme' or 'smsc', got {role!r}")
        self.role: Role = role
        self.response_timeout = response_timeout
        self.enquire_link_interval = enquire_link_interval
        self._max_pdu_length = max_pdu_length
        self._deliver = deliver  # ``decode_stream``'s deliver_sm hook (the ESME's receipts)
        self._state = State.OPEN
        self._bound_as: State | None = None
        self._may_send, self._may_receive = _permissions(role, State.OPEN, None)
        self._seq = 0
        self._outstanding: dict[int, tuple[int, float]] = {}  # seq -> (command_id, deadline)
        self._deadlines: deque[tuple[float, int]] = deque()  # (deadline, seq), send order
        self._out: list[bytes] = []
        self._rest = b""
        self._now = now
        self._last_rx = now
        self._peer_system_id = b""
        self._ping = 0  # sequence of our last enquire_link (0: none yet)

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def bound(self) -> bool:
        return self._state in _BOUND

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered (nor timed out)."""
        return len(self._outstanding)

    def _apply(self, event: Input) -> None:
        try:
            new = _TRANSITIONS[(self._state, event)]
        except KeyError:
            raise LocalProtocolError(f"{event.value} is not allowed in state {self._state.value}") from None
        if new in _BOUND:
            self._bound_as = new
        self._state = new
        self._may_send, self._may_receive = _permissions(self.role, new, self._bound_as)
        if new is State.CLOSED:
            self._outstanding.clear()
            self._deadlines.clear()

    # -- sending -------------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        seq = self._seq + 1
        if seq > _SEQ_MAX:
            seq = 1
        self._seq = seq
        return seq

    def send(self, pdu: P.Pdu, now: float | None = None) -> int:
        """Queue ``pdu`` for sending and return its sequence number. Requests are numbered by
        the session (their ``sequence`` is ignored) and get a response deadline; responses keep
        the sequence of the request they answer."""
        if now is not None:
            self._now = now
        cid = pdu.command_id
        if cid & _RESP:
            self._out.append(P.encode(pdu))
            if isinstance(pdu, P.BindResp):
                self._on_bind_resp_sent(pdu)
            return pdu.sequence
        return self.send_request(cid, P.encode_body(pdu), pdu=pdu)

    def send_request(self, command_id: int, body: bytes, *, pdu: P.Pdu | None = None, now: float | None = None) -> int:
        """Queue a request whose body is already encoded (the connector's hot path)."""
        if now is not None:
            self._now = now
        if command_id not in self._may_send:
            raise LocalProtocolError(
                f"{C(command_id).name.lower()} may not be sent by the {self.role} in state {self._state.value}"
            )
        if command_id in _LINK_REQUESTS:
            self._on_link_request_sent(command_id, pdu)
        seq = self._next_sequence()
        self._out.append(P.header(command_id, 0, seq, len(body)) + body)
        deadline = self._now + self.response_timeout
        self._outstanding[seq] = (command_id, deadline)
        self._deadlines.append((deadline, seq))
        return seq

    def send_requests(self, command_id: int, bodies: list[bytes], now: float) -> range | list[int]:
        """Queue requests of one kind whose bodies are already encoded, in order; returns their
        sequence numbers (``send_request`` for each, in one pass: the connector's window of
        submit_sm, where a call and a permission check per PDU were a sizeable part of the
        writer's turn). Not for the link's own requests (bind, unbind, enquire_link)."""
        if command_id in _LINK_REQUESTS:
            raise ValueError("send_requests is for the link's traffic, not its own requests")
        self._now = now
        if command_id not in self._may_send:
            raise LocalProtocolError(
                f"{C(command_id).name.lower()} may not be sent by the {self.role} in state {self._state.value}"
            )
        n = len(bodies)
        first = self._seq + 1
        if first + n - 1 > _SEQ_MAX:  # wraps inside the batch: one at a time
            return [self.send_request(command_id, body, now=now) for body in bodies]
        self._seq = first + n - 1
        seqs = range(first, first + n)
        pack = P.HEADER.pack
        self._out += [pack(16 + len(body), command_id, 0, seq) + body for seq, body in zip(seqs, bodies)]
        deadline = now + self.response_timeout
        entry = (command_id, deadline)
        self._outstanding.update(dict.fromkeys(seqs, entry))
        self._deadlines.extend([(deadline, seq) for seq in seqs])
        return seqs

    def send_response(self, command_id: int, sequence: int, status: int, body: bytes = b"") -> None:
        """Queue a response whose body is already encoded (submit_sm_resp at the SMSC,
        deliver_sm_resp at the ESME: the hot paths). Not for bind responses (use ``send``)."""
        self._out.append(P.header(command_id, status, sequence, len(body)) + body)

    def send_responses(self, command_id: int, sequences: list[int], status: int, body: bytes = b"") -> None:
        """``send_response`` for each of ``sequences``, in order, in one pass (the receipts a
        write lets go are answered together)."""
        pack, length = P.HEADER.pack, 16 + len(body)
        self._out += [pack(length, command_id, status, seq) + body for seq in sequences]

    def _on_link_request_sent(self, command_id: int, pdu: P.Pdu | None) -> None:
        if command_id == C.UNBIND:
            self._apply(Input.UNBIND_SENT)
        elif command_id != C.ENQUIRE_LINK:
            self._apply(Input.BIND_REQUESTED)

    def _on_bind_resp_sent(self, pdu: P.BindResp) -> None:
        if self._state is not State.BINDING:
            return  # an error answer to a bind in the wrong state: no change
        self._apply(_ACCEPTED[pdu.mode] if pdu.status == 0 else Input.BIND_REFUSED)

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one write."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def close(self, reason: str = "closed locally") -> list[Event]:
        if self._state is State.CLOSED:
            return []
        self._apply(Input.CLOSE)
        return [Closed(reason=reason)]

    def connection_lost(self, now: float | None = None) -> list[Event]:
        """The transport is gone. Outstanding requests are forgotten (the caller knows which)."""
        self._out.clear()
        return self.close("connection lost")

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> list[Event]:
        """Feed bytes from the peer; return what happened, in order."""
        if self._state is State.CLOSED:
            return []
        if now is not None:
            self._now = now
        if self._rest:
            data = self._rest + data
        pdus, used = P.decode_stream(data, self._max_pdu_length, self._deliver)
        self._rest = data[used:] if used < len(data) else b""
        if not pdus:
            return []
        self._last_rx = self._now
        events: list[Event] = []
        outstanding = self._outstanding
        # The ESME's two hottest paths inlined: a submit_sm_resp, and a deliver_sm (a receipt)
        # in a state that may receive one (``_on_request``'s first case, without the call).
        deliver_ok = C.DELIVER_SM in self._may_receive
        for p in pdus:
            t = type(p)
            if t is P.SubmitSmResp:
                entry = outstanding.pop(p.sequence, None)
                if entry is not None and entry[0] == C.SUBMIT_SM:
                    events.append(p)
                else:
                    self._on_stray_response(p, entry, events)
            elif (t is P.DeliverReceipt or t is P.DeliverSm) and deliver_ok:
                events.append(p)
            else:
                if isinstance(p, PduError):
                    self._on_bad_pdu(p, events)
                    if p.fatal:
                        break
                elif p.command_id & _RESP:
                    self._on_response(p, events)
                else:
                    self._on_request(p, events)
                # Only these may change the state (an unbind, a bind_resp): ask again.
                deliver_ok = C.DELIVER_SM in self._may_receive
            if self._state is State.CLOSED:
                break
        return events

    def _on_stray_response(self, p: P.Pdu, entry: tuple[int, float] | None, events: list[Event]) -> None:
        if entry is not None:  # right sequence, wrong kind of response: keep waiting for the right one
            self._outstanding[p.sequence] = entry
        events.append(UnexpectedResponse(pdu=p))

    def _on_response(self, p: P.Pdu, events: list[Event]) -> None:
        entry = self._outstanding.pop(p.sequence, None)
        cid = p.command_id
        if entry is None or (cid != C.GENERIC_NACK and entry[0] != cid & ~_RESP):
            self._on_stray_response(p, entry, events)
            return
        request = entry[0]
        if request in _LINK_REQUESTS:
            self._on_link_response(request, p, events)
        else:
            events.append(p)

    def _on_link_response(self, request: int, p: P.Pdu, events: list[Event]) -> None:
        if request == C.ENQUIRE_LINK:
            return  # the link is alive; _last_rx already moved
        if request == C.UNBIND:
            self._apply(Input.UNBIND_DONE)
            events += [Unbound(by_peer=False), Closed(reason="unbound")]
            return
        # a bind_resp (or a generic_nack to our bind)
        if p.status == 0 and isinstance(p, P.BindResp):
            self._peer_system_id = p.system_id
            self._apply(_ACCEPTED[p.mode])
            events.append(Bound(mode=p.mode, system_id=p.system_id))
        else:
            self._apply(Input.BIND_REFUSED)
            events.append(BindRefused(status=p.status, name=P.status_name(p.status)))

    def _on_request(self, p: P.Pdu, events: list[Event]) -> None:
        cid = p.command_id
        if cid in self._may_receive:
            if cid == C.ENQUIRE_LINK:
                self._out.append(P.encode(P.EnquireLinkResp(sequence=p.sequence)))
            elif cid == C.UNBIND:
                self._out.append(P.encode(P.UnbindResp(sequence=p.sequence)))
                self._apply(Input.UNBIND_RECEIVED)
                events += [Unbound(by_peer=True), Closed(reason="unbound by peer")]
            else:
                if isinstance(p, P.Bind):
                    self._apply(Input.BIND_REQUESTED)
                    self._peer_system_id = p.system_id
                events.append(p)
            return
        if isinstance(p, P.UnknownPdu) or cid not in _ORIGINATE:
            self._reject(p, Status.ESME_RINVCMDID, "unknown or unsupported command", events, nack=True)
        elif isinstance(p, P.Bind) and self._state is not State.OPEN:
            self._reject(p, Status.ESME_RALYBND, "bind while already bound", events)
        else:
            self._reject(p, Status.ESME_RINVBNDSTS, f"not allowed in state {self._state.value}", events)

    def _reject(self, p: P.Pdu, status: int, why: str, events: list[Event], *, nack: bool = False) -> None:
        resp_cls = None if nack else _CLASS_BY_ID.get(p.command_id | _RESP)
        answer = (resp_cls or P.GenericNack)(sequence=p.sequence, status=status)
        self._out.append(P.encode(answer))
        events.append(
            PeerError(
                command_status=status,
                name=P.status_name(status),
                sequence=p.sequence,
                command_id=p.command_id,
                message=f"0x{p.command_id:08X}: {why}",
            )
        )

    def _on_bad_pdu(self, err: PduError, events: list[Event]) -> None:
        # SMPP 3.4 §3.3: answer what cannot be decoded with generic_nack, never a response.
        if not err.command_id & _RESP:
            self._out.append(P.encode(P.GenericNack(sequence=err.sequence, status=err.command_status)))
        events.append(
            PeerError(
                command_status=err.command_status,
                name=P.status_name(err.command_status),
                sequence=err.sequence,
                command_id=err.command_id,
                message=str(err),
                fatal=err.fatal,
            )
        )
        if err.fatal:
            self._apply(Input.CLOSE)
            events.append(Closed(reason=f"framing lost: {err}"))

    # -- timers --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` next has something to do (None: nothing pending)."""
        if self._state is State.CLOSED:
            return None
        deadlines, outstanding = self._deadlines, self._outstanding
        while deadlines:
            deadline, seq = deadlines[0]
            entry = outstanding.get(seq)
            if entry is not None and entry[1] == deadline:
                break
            deadlines.popleft()  # answered already
        first = deadlines[0][0] if deadlines else None
        if self.enquire_link_interval is not None and self._state in _BOUND:
            ping = self._last_rx + self.enquire_link_interval
            if first is None or ping < first:
                first = ping
        return first

    def handle_timer(self, now: float) -> list[Event]:
        """Expire response deadlines and send enquire_link when the link has been quiet."""
        if self._state is State.CLOSED:
            return []
        self._now = now
        events: list[Event] = []
        deadlines, outstanding = self._deadlines, self._outstanding
        while deadlines and deadlines[0][0] <= now:
            deadline, seq = deadlines.popleft()
            entry = outstanding.get(seq)
            if entry is None or entry[1] != deadline:
                continue
            del outstanding[seq]
            events.append(ResponseTimeout(sequence=seq, command_id=entry[0]))
            if entry[0] in _LINK_REQUESTS:
                name = C(entry[0]).name.lower()
                self._apply(Input.CLOSE)
                events.append(Closed(reason=f"{name} timed out: link dead"))
                return events
        if (
            self.enquire_link_interval is not None
            and self._state in _BOUND
            and now >= self._last_rx + self.enquire_link_interval
            and self._ping not in outstanding
        ):
            self._ping = self.send_request(C.ENQUIRE_LINK, b"")
            self._last_rx = now  # next ping one interval from now unless answered sooner
        return events
