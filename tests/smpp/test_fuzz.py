"""Malformed SMPP, counted. Two levels:

- ``Session`` (sans-I/O): seeded mutations of valid PDUs (``smpp_fuzzing.mutate``), split at
  random, fed to a bound ESME with submits outstanding and to an SMSC session. Nothing raises;
  every event is one the session documents; every submit still ends exactly once (response,
  time-out or the link closing). 10,000 cases in the default run, 200,000 and a 10,000-example
  hypothesis run under ``slow``.
- A live ``SmppConnector`` over loopback against a fake SMSC (an anyio TCP listener in the test)
  that answers binds, then sends mutated and garbage PDUs and never answers a submit, for its
  first few connections; after that it behaves. The connector never crashes, gives back what was
  in flight, binds again, and every message is submitted once the garbage stops.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smpp_fuzzing import CORPUS_FOR_ESME, CORPUS_FOR_SMSC, mutate, split

from carriers.base import Requeue, SubmitFailed, Submitted
from carriers.errors import LocalProtocolError
from carriers.smpp import pdu as P
from carriers.smpp.connector import SmppConnector, SmppSettings
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


def _submit(n: int) -> P.SubmitSm:
    return P.SubmitSm(source_addr=b"Sluice", destination_addr=b"447911%06d" % n, short_message=b"hi")


def session_case(rng: random.Random, make_pair, tally: dict[str, int]) -> None:
    """One case: a bound pair, some submits in flight, 1-4 malformed inputs into one side."""
    p = make_pair(response_timeout=5.0, enquire_link_interval=7.0)
    role = "esme" if rng.random() < 0.7 else "smsc"
    if role == "smsc" and rng.random() < 0.3:
        target, corpus = p.smsc, CORPUS_FOR_SMSC  # not even bound yet
    else:
        p.bind()
        target, corpus = (p.esme, CORPUS_FOR_ESME) if role == "esme" else (p.smsc, CORPUS_FOR_SMSC)
    sent = {p.esme.send(_submit(i), p.now) for i in range(rng.randint(0, 5))} if p.esme.bound else set()
    p.to_smsc()
    ended: set[int] = set()

    def account(events: list) -> None:
        for e in events:
            assert isinstance(e, _EVENTS), e
            if role != "esme":
                continue
            seq = getattr(e, "sequence", None)
            if isinstance(e, (P.SubmitSmResp, P.GenericNack, ResponseTimeout)) and seq in sent:
                assert seq not in ended, f"submit {seq} ended twice"
                ended.add(seq)
            elif isinstance(e, PeerError):
                tally["peer_errors"] += 1

    for _ in range(rng.randint(1, 4)):
        for chunk in split(rng, mutate(rng, corpus)):
            account(target.receive_data(chunk, p.now))
        target.data_to_send()
        p.now += rng.choice((0.0, 0.5, 3.0))
        account(target.handle_timer(p.now))
    tally["closed" if target.closed else "survived"] += 1
    if role == "esme":
        for later in (100.0, 200.0):
            account(p.esme.handle_timer(p.now + later))
        assert p.esme.closed or ended == sent  # every submit ended once, unless the link is gone
    tally["cases"] += 1


def run_session_fuzz(make_pair, cases: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    tally = dict.fromkeys(("cases", "closed", "survived", "peer_errors"), 0)
    started = time.perf_counter()
    for _ in range(cases):
        session_case(rng, make_pair, tally)
    print(f"session fuzz: seed={seed} {tally} in {time.perf_counter() - started:.1f} s")
    return tally


def test_ten_thousand_malformed_inputs_into_sessions(make_pair) -> None:
    tally = run_session_fuzz(make_pair, 10_000, seed=20240601)
    assert tally["cases"] == 10_000 and tally["closed"] > 0 and tally["survived"] > 0


@pytest.mark.slow
def test_two_hundred_thousand_malformed_inputs_into_sessions(make_pair) -> None:
    tally = run_session_fuzz(make_pair, 200_000, seed=7)
    assert tally["cases"] == 200_000


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sample=st.sampled_from(CORPUS_FOR_ESME),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    cuts=st.lists(st.integers(0, 200), max_size=3),
    tail=st.binary(max_size=32),
)
def test_hypothesis_ten_thousand_mutated_pdus_into_a_bound_esme(make_pair, sample, edits, cuts, tail) -> None:
    p = make_pair(response_timeout=5.0)
    p.bind()
    sent = {p.esme.send(_submit(i), p.now) for i in range(3)}
    p.to_smsc()
    data = bytearray(sample)
    for where, value in edits:
        if where < len(data):
            data[where] = value
    data += tail
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    events = []
    for a, b in zip(bounds, bounds[1:]):
        events += p.esme.receive_data(bytes(data[a:b]), p.now)
    events += p.esme.handle_timer(p.now + 100)
    assert all(isinstance(e, _EVENTS) for e in events)
    ended = [e.sequence for e in events if isinstance(e, (P.SubmitSmResp, P.GenericNack, ResponseTimeout))
             and e.sequence in sent]  # fmt: skip
    assert len(ended) == len(set(ended))
    assert p.esme.closed or set(ended) == sent


# -- a live connector against a fake SMSC that sends garbage -----------------------------------------


class FuzzingSmsc:
    """Answers binds; for its first ``garbage_connections`` connections, once submits are in
    flight, it answers every read with 1-3 mutated PDUs (at most ``per_connection``, then
    silence) and never answers a submit; later connections are a correct SMSC."""

    def __init__(self, seed: int, garbage_connections: int, per_connection: int = 40) -> None:
        self.rng = random.Random(seed)
        self.garbage_connections = garbage_connections
        self.per_connection = per_connection
        self.counts = dict.fromkeys(("connections", "binds", "garbage_pdus", "accepted"), 0)

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        self.counts["connections"] += 1
        garbage = self.counts["connections"] <= self.garbage_connections
        s = Session("smsc", enquire_link_interval=None)
        sent, submits = 0, 0
        async with stream:
            while not s.closed:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                noise = b""
                try:
                    for ev in s.receive_data(data, anyio.current_time()):
                        if isinstance(ev, P.Bind):
                            self.counts["binds"] += 1
                            s.send(P.BindTransceiverResp(sequence=ev.sequence, system_id=b"fuzz"))
                        elif isinstance(ev, P.SubmitSm) and garbage:
                            submits += 1
                        elif isinstance(ev, P.SubmitSm):
                            self.counts["accepted"] += 1
                            s.send(P.SubmitSmResp(sequence=ev.sequence, message_id=b"%d" % self.counts["accepted"]))
                except LocalProtocolError:
                    return
                if garbage and s.bound and submits:  # garbage while submits are in flight
                    for _ in range(min(self.rng.randint(1, 3), self.per_connection - sent)):
                        noise += mutate(self.rng, CORPUS_FOR_ESME, keep_high=1.0)
                        sent += 1
                        self.counts["garbage_pdus"] += 1
                out = s.data_to_send() + noise
                if out:
                    try:
                        await stream.send(out)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        return


class _Driven:
    """What the ``drive`` fixture needs of a harness (no simulator here)."""

    def __init__(self, connector: SmppConnector, events) -> None:
        self.connector, self.events, self.seen = connector, events, []


async def connector_fuzz(make_dispatch, drive, *, garbage_connections: int, messages: int, seed: int) -> dict:
    smsc = FuzzingSmsc(seed, garbage_connections)
    async with anyio.create_task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, smsc.handle)
        link = SmppSettings(name="sim", host="127.0.0.1", port=port, window=10, response_timeout=0.3,
                            enquire_link_interval=0.5, reconnect_initial=0.01, reconnect_max=0.05,
                            carrier_down_after=30.0, tick_interval=0.05, connect_timeout=1.0)  # fmt: skip
        send, receive = anyio.create_memory_object_stream(math.inf)
        async with SmppConnector(link, send, password="pw") as connector:
            h = _Driven(connector, receive)
            final = await drive(h, [make_dispatch(i) for i in range(messages)], timeout=60.0)
            stats = connector.statistics()
        tg.cancel_scope.cancel()
    return {"final": final, "seen": h.seen, "smsc": smsc.counts, "stats": stats}


def check_connector_fuzz(result: dict, messages: int, garbage_connections: int) -> None:
    final, smsc, stats = result["final"], result["smsc"], result["stats"]
    submitted = [e for e in final.values() if isinstance(e, Submitted)]
    rejected = [e for e in final.values() if isinstance(e, SubmitFailed)]
    requeues = {}
    for e in result["seen"]:
        if isinstance(e, Requeue):
            requeues[e.reason] = requeues.get(e.reason, 0) + 1
    print(f"connector fuzz: garbage_pdus={smsc['garbage_pdus']} connections={smsc['connections']} "
          f"binds={smsc['binds']} submitted={len(submitted)} rejected={len(rejected)} requeues={requeues} "
          f"errors={stats.errors}")  # fmt: skip
    assert len(final) == messages  # each ended exactly once (drive fails on a second end)
    assert smsc["connections"] > garbage_connections and smsc["binds"] > garbage_connections  # bound again
    assert sum(requeues.values()) > 0  # what was in flight on a garbage link came back
    # Only a mutated PDU that happens to parse as the answer to a real submit can end one early.
    assert len(submitted) >= messages - max(1, messages // 100), (len(submitted), rejected)
    assert smsc["accepted"] >= len(submitted)


@pytest.mark.anyio
async def test_connector_survives_garbage_binds_again_and_delivers(make_dispatch, drive) -> None:
    result = await connector_fuzz(make_dispatch, drive, garbage_connections=6, messages=100, seed=11)
    check_connector_fuzz(result, 100, 6)


@pytest.mark.slow
@pytest.mark.anyio
async def test_connector_fuzz_long(make_dispatch, drive) -> None:
    result = await connector_fuzz(make_dispatch, drive, garbage_connections=80, messages=1000, seed=12)
    check_connector_fuzz(result, 1000, 80)


@pytest.mark.slow
def test_atheris_run(tmp_path) -> None:
    """Coverage-guided: ``fuzz_session_atheris.py`` for 200,000 inputs, seeded with the corpus
    (skipped unless atheris is installed: ``pip install -e '.[fuzz]'``)."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, pdu in enumerate(CORPUS_FOR_ESME):
        (corpus / f"seed{i}").write_bytes(b"\x00" + pdu)
    script = Path(__file__).with_name("fuzz_session_atheris.py")
    run = subprocess.run([sys.executable, str(script), "-runs=200000", "-max_len=512", "-seed=1", str(corpus)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    done = [line for line in run.stderr.splitlines() if line.startswith("Done ")]
    print(f"atheris: {done[-1] if done else run.stderr[-2000:]}")
    assert run.returncode == 0, run.stderr[-3000:]
