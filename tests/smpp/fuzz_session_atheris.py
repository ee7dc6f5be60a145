"""Coverage-guided fuzzing of the SMPP session with atheris (optional: ``pip install atheris``).

    .venv/bin/python tests/smpp/fuzz_session_atheris.py -runs=100000 -max_len=512 -seed=1

Each input is cut into reads (the first bytes say where) and fed to an ESME session bound as a
transceiver with three submits outstanding, then time passes. Anything but the documented events
(an exception, an unknown event, a submit ending twice) is a crash, which atheris reports with
the input that caused it. ``tests/smpp/test_fuzz.py::test_atheris_run`` (slow) runs this for a
fixed number of inputs when atheris is installed. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["carriers"]):
    from carriers.smpp import pdu as P
    from carriers.smpp.session import (
        BindRefused,
        Bound,
        Closed,
        PeerError,
        ResponseTimeout,
        Session,
        Unbound,
        UnexpectedResponse,
    )

_EVENTS = (P.Pdu, PeerError, Closed, UnexpectedResponse, Bound, BindRefused, Unbound, ResponseTimeout)


def _bound_esme() -> tuple[Session, set[int]]:
    esme, smsc = Session("esme", response_timeout=5.0), Session("smsc")
    esme.send(P.BindTransceiver(system_id=b"sluice", password=b"pw"), 0.0)
    (req,) = smsc.receive_data(esme.data_to_send(), 0.0)
    smsc.send(P.BindTransceiverResp(sequence=req.sequence, system_id=b"smsc"))
    esme.receive_data(smsc.data_to_send(), 0.0)
    assert esme.bound
    sent = {esme.send(P.SubmitSm(destination_addr=b"447911%06d" % i, short_message=b"hi"), 0.0) for i in range(3)}
    esme.data_to_send()
    return esme, sent


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntInRange(0, 512) for _ in range(fdp.ConsumeIntInRange(0, 3)))
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    esme, sent = _bound_esme()
    events = []
    bounds = [0, *(c for c in cuts if c < len(body)), len(body)]
    for a, b in zip(bounds, bounds[1:]):
        events += esme.receive_data(body[a:b], 1.0)
        esme.data_to_send()
    events += esme.handle_timer(100.0)
    for e in events:
        if not isinstance(e, _EVENTS):
            raise AssertionError(f"undocumented event {e!r}")
    ended = [e.sequence for e in events if isinstance(e, (P.SubmitSmResp, P.GenericNack, ResponseTimeout))
             and e.sequence in sent]  # fmt: skip
    if len(ended) != len(set(ended)):
        raise AssertionError(f"a submit ended twice: {ended}")
    if not esme.closed and set(ended) != sent:
        raise AssertionError(f"a submit never ended: {sent - set(ended)}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
