"""The connector over real loopback sockets against the simulator, in-process and as the
`sluice sim smsc` process, on both backends (real clock: no virtual time with real I/O)."""

from __future__ import annotations

import json
import signal
import sys

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from carriers.base import ReceiptMatched, Requeue, Submitted, Throttled
from carriers.smpp.connector import SmppSettings
from carriers.smpp.simulator import SimSettings

pytestmark = pytest.mark.anyio


def settings(**kw) -> SmppSettings:
    base = dict(name="sim", system_id="sluice", window=50, response_timeout=2.0, reconnect_initial=0.02, reconnect_max=0.2)
    base.update(kw)
    return SmppSettings(**base)


async def test_loopback_submits_and_receipts(loopback, make_dispatch) -> None:
    async with loopback(SimSettings(dlr_delay=0.0), settings(binds=2)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(1000)])
        await h.until(lambda ev: sum(isinstance(e, ReceiptMatched) for e in ev) == 1000)
        assert sorted(e.ref for e in h.of(Submitted)) == list(range(1000))
        counters = h.sim.counters()
        assert counters["accepted"] == 1000 and counters["binds"] == 2


async def test_loopback_drops_mid_window_lose_nothing(loopback, make_dispatch, drive) -> None:
    async with loopback(SimSettings(dlr_delay=0.0, drop_after=120), settings(window=20)) as h:
        final = await drive(h, [make_dispatch(i) for i in range(400)])
        assert sorted(final) == list(range(400))
        assert any(e.reason == "bind_dropped" for e in h.of(Requeue))


async def _line(stream: TextReceiveStream, buffer: list[str]) -> str:
    while "\n" not in buffer[0]:
        buffer[0] += await stream.receive()
    line, buffer[0] = buffer[0].split("\n", 1)
    return line


async def test_sluice_sim_smsc_process(make_dispatch) -> None:
    """`python -m carriers.smpp.simulator` (what `sluice sim smsc` runs): counters on request
    (SIGUSR1) and on exit, TPS enforced over any 1-second window."""
    import math

    from carriers.smpp.connector import SmppConnector

    cmd = [sys.executable, "-m", "carriers.smpp.simulator", "--port", "0", "--dlr-delay", "0", "--tps", "300"]
    async with await anyio.open_process(cmd) as proc:
        try:
            out = TextReceiveStream(proc.stdout)
            buf = [""]
            with anyio.fail_after(20):
                port = json.loads(await _line(out, buf))["listening"]
                send, receive = anyio.create_memory_object_stream(math.inf)
                async with SmppConnector(settings(port=port, window=100), send, password="pw") as c:
                    await c.submit([make_dispatch(i) for i in range(400)])
                    seen = []
                    while not any(isinstance(e, Throttled) for e in seen):  # 400 at once > 300/s
                        seen.append(await receive.receive())
                proc.send_signal(signal.SIGUSR1)
                on_request = json.loads(await _line(out, buf))
                proc.send_signal(signal.SIGTERM)
                on_exit = json.loads(await _line(out, buf))
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
    assert on_request["accepted"] >= 100 and on_request["throttled"] > 0
    assert on_exit["max_accepted_1s"] <= 300  # the simulator's own TPS limit, in any 1-s window
    assert set(on_exit) >= {"accepted", "throttled", "receipts_sent", "receipts_acked", "max_submits_1s"}


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl is on the test machines)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", key, "-out", cert,
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_loopback_over_tls(loopback, make_dispatch, certificate) -> None:
    cert, key = certificate
    sim = SimSettings(dlr_delay=0.0, tls_cert=cert, tls_key=key)
    async with loopback(sim, settings(tls=True, tls_ca_file=cert)) as h:
        await h.connector.submit([make_dispatch(i) for i in range(100)])
        await h.until(lambda ev: sum(isinstance(e, ReceiptMatched) for e in ev) == 100)
        assert h.connector.statistics().bound == 1


async def test_tls_with_an_untrusted_certificate_never_binds(loopback, make_dispatch, certificate) -> None:
    cert, key = certificate
    sim = SimSettings(tls_cert=cert, tls_key=key)
    async with loopback(sim, settings(tls=True, connect_timeout=0.5)) as h:  # system CAs only
        await anyio.sleep(0.3)
        assert h.connector.statistics().bound == 0 and h.sim.counters()["binds"] == 0
