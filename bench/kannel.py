"""`sluice bench kannel`: Kannel, the C gateway, and Sluice on the same path in the same run.

Each run measures Kannel (Debian's ``kannel`` package: ``bearerbox`` + ``smsbox``), then Sluice
(the e2e scenario of `sluice bench e2e`), each against a fresh ``sluice sim smsc`` with no TPS
limit and receipts right after the submit (``--dlr-delay``), two binds with a window of 100. The
same messages go to both: the e2e job's recipients that Sluice accepts, its template rendered.

Kannel, set up the way it is fastest: its queue and its receipt (DLR) store in memory
(``dlr-storage = internal``, no ``store-file``), the sendsms HTTP interface one message per
request (it has no bulk API), from 16 keep-alive clients; each receipt is reported by a request
to a ``dlr-url`` on a local sink. Its time is from the first sendsms request to the last
delivered report at the sink.

Sluice, as in `sluice bench e2e`: one NDJSON job, SQLite with ``synchronous=FULL``, receipts
answered after their state is written. Its time here is from the start of the job POST to every
message final in the store (the job's upload and validation included, as Kannel's submissions
are), so the two are compared on the same span: messages / (first byte in -> last fate known).

The ratio (Sluice / Kannel) is per run, both measured minutes apart on the same machine; the
figures are medians. Needs ``bearerbox`` and ``smsbox`` on the PATH (``apt-get install kannel``).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import anyio
import click

from bench.e2e import one_run as sluice_run
from bench.machine import describe
from bench.output import out_option, save
from bench.service import _response, ndjson_job
from gateway.core.template import Template
from gateway.runtime.numbers import NumberCheck
from gateway.testing import workload
from gateway.testing.processes import simulator

_SMSC = """
group = smsc
smsc = smpp
smsc-id = sim
host = 127.0.0.1
port = {sim_port}
transceiver-mode = true
smsc-username = kannel
smsc-password = pw
system-type = ""
max-pending-submits = {window}
msg-id-type = 0x00
log-level = 4
"""

_CONF = """
group = core
admin-port = {admin}
admin-password = bench
admin-interface = 127.0.0.1
smsbox-port = {box}
box-allow-ip = 127.0.0.1
log-level = 4
log-file = "{dir}/bearerbox.log"
dlr-storage = internal
{smscs}
group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {box}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
log-level = 4
log-file = "{dir}/smsbox.log"

group = sendsms-user
username = bench
password = bench
max-messages = 10
"""


def messages(n: int, seed: int) -> list[tuple[str, str]]:
    """(number, text) of the e2e job's recipients that Sluice accepts, in job order."""
    check, template = NumberCheck(), Template(workload.TEMPLATES["transactional"])
    out = []
    for r in workload.recipients(n, seed, vars_for="transactional"):
        if check.error(r.to) is None:
            out.append((r.to, template.fill(r.vars)[0]))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Sink:
    """The dlr-url's server: counts delivered reports (``t=1``) and the others."""

    def __init__(self) -> None:
        self.delivered = 0
        self.other = 0
        self.enough = asyncio.Event()
        self.want = 0
        self.last_at = time.perf_counter()

    async def settle(self, quiet: float = 5.0) -> float:
        """When the last report came: once all are in, or none came for ``quiet`` seconds."""
        while not self.enough.is_set():
            with anyio.move_on_after(1.0):
                await self.enough.wait()
            if time.perf_counter() - self.last_at > quiet:
                break
        return self.last_at

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                if b"t=1 " in line or line.endswith(b"t=1"):
                    self.delivered += 1
                else:
                    self.other += 1
                self.last_at = time.perf_counter()
                if self.delivered >= self.want:
                    self.enough.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _send_all(port: int, msgs: list[tuple[str, str]], dlr_url: str, clients: int) -> tuple[int, int]:
    """Every message as one sendsms GET, ``clients`` keep-alive connections at once."""
    accepted = refused = 0
    queue = iter(range(len(msgs)))

    async def one() -> None:
        nonlocal accepted, refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in queue:
                to, text = msgs[i]
                url = quote(dlr_url + f"?id={i}&t=%d", safe="")
                writer.write(f"GET /cgi-bin/sendsms?username=bench&password=bench&from=SLUICE&to={quote(to)}"
                             f"&text={quote(text)}&dlr-mask=1&dlr-url={url} HTTP/1.1\r\nhost: bench\r\n\r\n"
                             .encode())  # fmt: skip
                status, _ = await _response(reader)
                if status == 202:
                    accepted += 1
                else:
                    refused += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return accepted, refused


async def _wait_ready(admin: int, sendsms: int, binds: int, timeout: float = 30.0) -> None:
    """Until every bind is online, smsbox connected and its sendsms port open."""
    with anyio.fail_after(timeout):
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", admin)
                writer.write(b"GET /status.txt?password=bench HTTP/1.0\r\n\r\n")
                body = await reader.read()
                writer.close()
                if body.count(b"(online") >= binds and b"smsbox:" in body:
                    _, probe = await asyncio.open_connection("127.0.0.1", sendsms)
                    probe.close()
                    return
            except OSError:
                pass
            await anyio.sleep(0.1)


async def _stop(proc: anyio.abc.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        with anyio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def kannel_run(msgs: list[tuple[str, str]], dlr_delay: float, binds: int, window: int, clients: int,
                     timeout: float) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sluice-kannel-") as tmp:
        d = Path(tmp)
        sink = _Sink()
        sink.want = len(msgs)
        server = await asyncio.start_server(sink.serve, "127.0.0.1", 0)
        sink_port = server.sockets[0].getsockname()[1]
        with open(d / "sim.log", "wb") as sim_log:
            async with simulator("--dlr-delay", str(dlr_delay), stderr=sim_log) as sim:
                ports = {"admin": _free_port(), "box": _free_port(), "sendsms": _free_port()}
                conf = d / "kannel.conf"
                conf.write_text(_CONF.format(dir=d, smscs="".join(_SMSC.format(sim_port=sim.port, window=window)
                                                                   for _ in range(binds)), **ports))  # fmt: skip
                with open(d / "bearerbox.out", "wb") as bo, open(d / "smsbox.out", "wb") as so:
                    bearer = await anyio.open_process(["bearerbox", str(conf)], stdout=bo, stderr=bo)
                    box = None
                    try:
                        await anyio.sleep(0.5)
                        box = await anyio.open_process(["smsbox", str(conf)], stdout=so, stderr=so)
                        await _wait_ready(ports["admin"], ports["sendsms"], binds)
                        with anyio.fail_after(timeout):
                            t0 = time.perf_counter()
                            accepted, refused = await _send_all(ports["sendsms"], msgs,
                                                                f"http://127.0.0.1:{sink_port}/dlr", clients)  # fmt: skip
                            sent_at = time.perf_counter()
                            if accepted < len(msgs):
                                raise click.ClickException(f"Kannel refused {refused} of {len(msgs)} messages")
                            done_at = await sink.settle()
                    finally:
                        if box is not None:
                            await _stop(box)
                        await _stop(bearer)
                counters = await sim.counters()
        server.close()
    return {
        "messages": len(msgs),
        "seconds": done_at - t0,
        "messages_per_s": sink.delivered / (done_at - t0),
        "reports_missing": len(msgs) - sink.delivered - sink.other,
        "submit_seconds": sent_at - t0,
        "delivered_reports": sink.delivered,
        "other_reports": sink.other,
        "sim_accepted": counters["accepted"],
    }


def run(n: int, runs: int, dlr_delay: float, binds: int, window: int, clients: int, seed: int) -> dict[str, object]:
    if not (shutil.which("bearerbox") and shutil.which("smsbox")):
        raise click.ClickException("Kannel is not installed (bearerbox, smsbox): apt-get install kannel")
    msgs = messages(n, seed)
    pieces = ndjson_job(n, seed=seed, category="transactional")
    timeout = max(120.0, n / 1000)
    rows = []
    for _ in range(runs):
        k = anyio.run(kannel_run, msgs, dlr_delay, binds, window, clients, timeout, backend="asyncio",
                      backend_options={"use_uvloop": True})  # fmt: skip
        s = anyio.run(sluice_run, n, pieces, dlr_delay, binds, window, timeout, "after_write", backend="asyncio",
                      backend_options={"use_uvloop": True})  # fmt: skip
        if s["accepted"] != len(msgs) or s["delivered"] != s["accepted"]:
            raise click.ClickException(f"Sluice accepted {s['accepted']}, delivered {s['delivered']} of {len(msgs)}")
        sluice_rate = s["accepted"] / (s["ingest_seconds"] + s["seconds"])
        rows.append({"kannel": k, "sluice": s, "kannel_per_s": k["messages_per_s"], "sluice_per_s": sluice_rate,
                     "sluice_after_202_per_s": s["messages_per_s"], "ratio": sluice_rate / k["messages_per_s"]})  # fmt: skip
    med = {key: statistics.median(r[key] for r in rows)
           for key in ("kannel_per_s", "sluice_per_s", "sluice_after_202_per_s", "ratio")}  # fmt: skip
    return {"scenario": "kannel", "runs": runs, "messages": len(msgs), "dlr_delay": dlr_delay, "binds": binds,
            "window": window, "clients": clients, **med, "per_run": rows, "machine": describe()}  # fmt: skip


@click.command("kannel")
@click.option("--messages", "n", default=200_000, show_default=True, help="Recipients in the e2e job (the valid ones are sent).")
@click.option("--runs", default=3, show_default=True, help="Runs (Kannel then Sluice each); figures are medians.")
@click.option("--dlr-delay", default=0.2, show_default=True,
              help="Simulator: seconds from submit to receipt (at 0, Kannel loses the receipts that overtake "
                   "its DLR entry).")  # fmt: skip
@click.option("--binds", default=2, show_default=True)
@click.option("--window", default=100, show_default=True)
@click.option("--clients", default=16, show_default=True, help="Kannel: concurrent sendsms connections.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_kannel(n: int, runs: int, dlr_delay: float, binds: int, window: int, clients: int, seed: int,
                 json_path: str | None, out_dir: str | None) -> None:  # fmt: skip
    """Kannel and Sluice through the same SMPP simulator, same run: messages/s and the ratio."""
    r = run(n, runs, dlr_delay, binds, window, clients, seed)
    click.echo(f"sluice bench kannel: {r['messages']:,} messages, {binds} binds x window {window}, "
               f"dlr-delay {dlr_delay}s, median of {runs} runs")  # fmt: skip
    for label, value in (
        ("Kannel 1.4 (memory DLRs): first sendsms -> last report, messages/s", f"{r['kannel_per_s']:,.0f}"),
        ("Sluice (SQLite, FULL): first byte of the job -> all final, messages/s", f"{r['sluice_per_s']:,.0f}"),
        ("  Sluice from the 202 (as in bench e2e), messages/s", f"{r['sluice_after_202_per_s']:,.0f}"),
        ("  Kannel: reports that never came (last run)", f"{r['per_run'][-1]['kannel']['reports_missing']:,}"),
        ("Sluice / Kannel (per-run ratio, median)", f"{r['ratio']:.2f}"),
        ("  per run", " ".join(f"{x['ratio']:.2f}" for x in r["per_run"])),
    ):
        click.echo(f"  {label:<72} {value:>10}")
    save(r, json_path, out_dir)
