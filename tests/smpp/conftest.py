"""Shared helpers for the SMPP tests: both anyio backends, and an ESME and an SMSC session
joined in memory (the shape of h11's ``tests/helpers.py::ConnectionPair``)."""

from __future__ import annotations

import pytest

from carriers.smpp import pdu as P
from carriers.smpp.session import Session


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param


class SessionPair:
    """An ESME and an SMSC session, and the wire between them (moved by ``pump``)."""

    def __init__(self, *, now: float = 0.0, **kwargs: object) -> None:
        self.now = now
        self.esme = Session("esme", now=now, **kwargs)  # type: ignore[arg-type]
        self.smsc = Session("smsc", now=now, **kwargs)  # type: ignore[arg-type]

    def to_smsc(self) -> list:
        return self.smsc.receive_data(self.esme.data_to_send(), self.now)

    def to_esme(self) -> list:
        return self.esme.receive_data(self.smsc.data_to_send(), self.now)

    @staticmethod
    def bind_resp(req: P.Bind, status: int = 0) -> P.BindResp:
        cls = {
            "transmitter": P.BindTransmitterResp,
            "receiver": P.BindReceiverResp,
            "transceiver": P.BindTransceiverResp,
        }[req.mode]
        return cls(sequence=req.sequence, status=status, system_id=b"smsc")

    def bind(self, mode: str = "transceiver") -> None:
        cls = {"transmitter": P.BindTransmitter, "receiver": P.BindReceiver, "transceiver": P.BindTransceiver}[mode]
        self.esme.send(cls(system_id=b"sluice", password=b"secret"), self.now)
        (req,) = self.to_smsc()
        assert isinstance(req, cls)
        self.smsc.send(self.bind_resp(req), self.now)
        (bound,) = self.to_esme()
        assert bound.mode == mode


@pytest.fixture
def pair() -> SessionPair:
    return SessionPair()


@pytest.fixture
def bound_pair() -> SessionPair:
    p = SessionPair()
    p.bind()
    return p


@pytest.fixture
def make_pair() -> type[SessionPair]:
    return SessionPair
