"""Errors raised by carriers and their links, split by whose fault they are.

    SluiceError                     (gateway.errors)
    └── CarrierError                the carrier, its link, or our use of them
        ├── ConnectError            could not reach the carrier (refused, TLS, DNS); retry later
        ├── LinkError               an established link failed; in-flight messages go back
        │   ├── ConnectionLost      the peer closed the connection or the socket broke
        │   └── LinkTimeout         the peer stopped answering (enquire_link or response time-out)
        ├── BindError               the carrier refused our bind; ``command_status`` says why
        ├── ProtocolError           the *peer* broke SMPP; ``command_status`` is what we answer
        │   └── PduError            one PDU could not be decoded (``sequence``, ``command_id``;
        │                           ``fatal`` when the framing itself is lost)
        └── LocalProtocolError      *we* asked for something SMPP or the state does not allow
                                    (also a ``ValueError``: the caller's bug, never the peer's)

Per-message outcomes (rejected, throttled, timed out) are not errors: connectors report them as
events (``carriers.base``). Wire codes travel as attributes, never only in the message text.
"""

from __future__ import annotations

from gateway.errors import SluiceError

__all__ = [
    "BindError",
    "CarrierError",
    "ConnectError",
    "ConnectionLost",
    "LinkError",
    "LinkTimeout",
    "LocalProtocolError",
    "PduError",
    "ProtocolError",
]


class CarrierError(SluiceError):
    """The root of every carrier-side error."""


class ConnectError(CarrierError):
    """The carrier could not be reached."""


class LinkError(CarrierError):
    """A link that was up went down."""


class ConnectionLost(LinkError):
    pass


class LinkTimeout(LinkError):
    pass


class BindError(CarrierError):
    """The carrier answered our bind with a non-zero ``command_status``."""

    def __init__(self, message: str, *, command_status: int) -> None:
        super().__init__(message)
        self.command_status = command_status


class ProtocolError(CarrierError):
    """The peer sent something SMPP does not allow here. ``command_status`` is the SMPP error
    code we answer with (in a generic_nack or the matching response)."""

    def __init__(self, message: str, *, command_status: int) -> None:
        super().__init__(message)
        self.command_status = command_status


class PduError(ProtocolError):
    """One PDU could not be decoded. ``sequence`` and ``command_id`` are what the header said
    (0 when it could not be read). ``fatal`` means the byte stream can no longer be framed
    (the command_length is impossible), so the link must close."""

    def __init__(
        self,
        message: str,
        *,
        command_status: int,
        sequence: int = 0,
        command_id: int = 0,
        fatal: bool = False,
    ) -> None:
        super().__init__(message, command_status=command_status)
        self.sequence = sequence
        self.command_id = command_id
        self.fatal = fatal


class LocalProtocolError(CarrierError, ValueError):
    """We tried to encode or send something invalid (too long a field, a submit_sm while not
    bound). A bug in the caller, never the peer's fault."""
