"""`sluice bench kannel`: Kannel, the C gateway, and Sluice on the path a user sees, same run.

What is measured is how fast an upstream system learns each message's fate: messages / (first
byte of the submission -> last final state *received by an HTTP receiver*). The receiver
(``bench/status_receiver.py``) runs in its own process on loopback, counts each message's final
event once (duplicates and missing ones are reported) and keeps the time the last one arrived.

Each run measures these sides, interleaved (the order rotates from run to run), each against a
fresh ``sluice sim smsc`` (no TPS limit, two binds with a window of 100, receipts
``--dlr-delay`` seconds after the submit), on the same messages (the e2e job's recipients that
Sluice accepts, its template rendered):

- ``kannel``: Debian's ``kannel`` (``bearerbox`` + ``smsbox``) set up as it is fastest: its queue
  and receipt (DLR) store in memory (``dlr-storage = internal``, no ``store-file``), the sendsms
  HTTP interface one message per request (it has no bulk API) from ``--clients`` keep-alive
  clients, each with a ``dlr-url`` to the receiver and ``dlr-mask`` 19 (delivered, failed,
  rejected: every final state).
- ``sluice-hooks``: one NDJSON job with a ``callback_url`` to the receiver, webhooks for every
  state (signed, batched), SQLite with ``synchronous=FULL``, receipts answered after their state
  is written. Before the clock one message goes to the same receiver and its final event is
  awaited, so whatever delivers webhooks is up (as Kannel's boxes are before its clock starts).
- ``sluice-poll``: the same job without a ``callback_url``; the final states are read where they
  are, in the store (the job's counts over the API, polled every 50 ms).
- ``sluice-poll-at-once`` and ``sluice-hooks-at-once``: the same with receipts right behind the
  submit (``--dlr-delay 0``), so the cost of receipts that come later, as at a real carrier, is
  seen by difference.

Per run: the ratios Sluice (every state reported) / Kannel, webhooks on / off, receipts later /
at once; the figures are medians of the runs. Each side has a deadline (``--deadline``) and
stops waiting once nothing came for 15 s; one that misses either is reported with what
arrived. The server's peak RSS (VmHWM, and its child processes') and CPU per message are read
from /proc. Before the runs the
receiver's own ceiling is measured (``ceiling``: both kinds of request, as fast as this
process can send them) so it can be seen not to be the limit. Needs ``bearerbox`` and
``smsbox`` on the PATH for the Kannel side (``apt-get install kannel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import anyio
import anyio.abc
import click
import httpx
import msgspec

from bench.e2e import _bound
from bench.machine import describe
from bench.output import out_option, save
from bench.service import (
    AUTH,
    WEBHOOK_ENV,
    _response,
    children,
    cpu_seconds,
    config,
    memory,
    ndjson_job,
    until_ready,
    with_callback,
    with_webhooks,
)
from bench.status_receiver import KANNEL_FINAL
from gateway.core.template import Template
from gateway.runtime.numbers import NumberCheck
from gateway.store.base import FINAL
from gateway.testing import workload
from gateway.testing.processes import Child, gateway, simulator, start

SIDES = ("kannel", "sluice-hooks", "sluice-poll", "sluice-poll-at-once", "sluice-hooks-at-once")

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



# -- the receiver ---------------------------------------------------------------------------


class Receiver:
    """``bench/status_receiver.py`` in its own process, driven over its own port."""

    def __init__(self, child: Child, client: httpx.AsyncClient) -> None:
        self.child = child
        self._client = client

    @property
    def port(self) -> int:
        return self.child.port

    @property
    def url(self) -> str:
        return self.child.url

    def cpu(self) -> float:
        return cpu_seconds(self.child.pid)

    async def reset(self, keys: int, want: int) -> None:
        (await self._client.post("/reset", json={"keys": keys, "want": want})).raise_for_status()

    async def stats(self) -> dict:
        return (await self._client.get("/stats")).json()

    async def wait_done(self, quiet: float = 15.0) -> dict:
        """Until every wanted key was heard final, or nothing came for ``quiet`` seconds (a
        report that never comes: Kannel loses some, see docs/BENCHMARKS.md); the caller bounds
        the wait as a whole."""
        last, since = None, time.monotonic()
        while True:
            stats = await self.stats()
            if stats["done_at"] is not None:
                return stats
            if stats["events"] != last:
                last, since = stats["events"], time.monotonic()
            elif time.monotonic() - since > quiet:
                return stats
            await anyio.sleep(0.05)

    async def settle(self, quiet: float = 0.5, bound: float = 5.0) -> dict:
        """The counts once nothing more came for ``quiet`` seconds (late duplicates, retries)."""
        stats = await self.stats()
        with anyio.move_on_after(bound):
            while True:
                await anyio.sleep(quiet)
                now = await self.stats()
                if now["events"] == stats["events"] and now["requests"] == stats["requests"]:
                    break
                stats = now
        return await self.stats()


@contextlib.asynccontextmanager
async def open_receiver():
    cmd = [sys.executable, "-m", "bench.status_receiver", "--port", "0"]
    async with start(cmd, name="receiver") as child, \
            httpx.AsyncClient(base_url=child.url, timeout=30) as client:  # fmt: skip
        yield Receiver(child, client)


async def _hammer(port: int, requests: Sequence[bytes], clients: int, seconds: float) -> int:
    """``clients`` keep-alive connections send ``requests`` (cycled) one after another for
    ``seconds``; returns how many were answered."""
    done = 0
    stop_at = time.monotonic() + seconds

    async def one(k: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while time.monotonic() < stop_at:
                writer.write(requests[i % len(requests)])
                i += clients
                await _response(reader)
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(one(k) for k in range(clients)))
    return done


def _hook_event(i: int) -> dict:
    return {"message_id": f"01jf3k5x9n{i:05d}", "job_id": "job_01jf3k5x9n2qq", "state": "delivered",
            "at": 1795532398.52, "reason": "receipt", "carrier": "alpha", "error_code": None,
            "to": "+14155550123", "index": i, "reference": None}  # fmt: skip


async def receiver_ceiling(receiver: Receiver, seconds: float, clients: int) -> dict:
    """The receiver's ceiling for both kinds of request: Kannel's (one GET per report, from
    ``clients`` connections) and Sluice's (POSTs of 100 events, signed-size bodies, from 16
    connections, as `webhooks.concurrency`). The sender runs in this process on the same cores,
    so the rates are lower bounds (``receiver_cpu_share`` under 1: the sender was the limit);
    ``*_events_per_receiver_cpu_s`` is what the receiver answers per second of its own CPU."""
    out: dict[str, float] = {}
    keys = 1 << 22
    dlr = [f"GET /dlr?id={i}&t=1 HTTP/1.1\r\nhost: bench\r\n\r\n".encode() for i in range(4096)]
    hooks = []
    for k in range(256):
        body = msgspec.json.encode({"events": [_hook_event(k * 100 + j) for j in range(100)]})
        hooks.append(b"POST /hooks HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                     b"sluice-signature: t=1795532400,v1=%s\r\ncontent-length: %d\r\n\r\n%s"
                     % (b"0" * 64, len(body), body))  # fmt: skip
    for kind, requests, conns, per in (("dlr", dlr, clients, 1), ("hooks", hooks, 16, 100)):
        await receiver.reset(keys, keys)
        cpu0, t0 = receiver.cpu(), time.monotonic()
        answered = await _hammer(receiver.port, requests, conns, seconds)
        wall, cpu = time.monotonic() - t0, receiver.cpu() - cpu0
        out[f"{kind}_requests_per_s"] = answered / wall
        out[f"{kind}_events_per_s"] = answered * per / wall
        out[f"{kind}_receiver_cpu_share"] = cpu / wall
        # what it would answer with a core to itself: the sender here shares the cores with it
        out[f"{kind}_events_per_receiver_cpu_s"] = answered * per / max(cpu, 1e-9)
    return out


# -- Kannel ---------------------------------------------------------------------------------


async def _send_all(port: int, msgs: list[tuple[str, str]], dlr_url: str, clients: int, tally: dict) -> None:
    """Every message as one sendsms GET, ``clients`` keep-alive connections at once; its report
    (final states only: ``dlr-mask`` 19) to ``dlr_url?id=<index>&t=<type>``."""
    queue = iter(range(len(msgs)))
    mask = KANNEL_FINAL

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in queue:
                to, text = msgs[i]
                url = quote(dlr_url + f"?id={i}&t=%d", safe="")
                writer.write(f"GET /cgi-bin/sendsms?username=bench&password=bench&from=SLUICE&to={quote(to)}"
                             f"&text={quote(text)}&dlr-mask={mask}&dlr-url={url} HTTP/1.1\r\nhost: bench\r\n\r\n"
                             .encode())  # fmt: skip
                status, _ = await _response(reader)
                tally["accepted" if status == 202 else "refused"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))


async def kannel_side(msgs: list[tuple[str, str]], receiver: Receiver, dlr_delay: float, binds: int, window: int,
                      clients: int, deadline: float) -> dict:  # fmt: skip
    await receiver.reset(len(msgs), len(msgs))
    tally = {"accepted": 0, "refused": 0}
    sent_at = None
    with tempfile.TemporaryDirectory(prefix="sluice-kannel-") as tmp:
        d = Path(tmp)
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
                        cpu0, sim_cpu0 = receiver.cpu(), cpu_seconds(sim.pid)
                        t0 = time.monotonic()
                        with anyio.move_on_after(deadline) as scope:
                            await _send_all(ports["sendsms"], msgs, f"{receiver.url}/dlr", clients, tally)
                            sent_at = time.monotonic()
                            await receiver.wait_done()
                        end = time.monotonic()
                        stats = await receiver.settle()
                        receiver_cpu, sim_cpu = receiver.cpu() - cpu0, cpu_seconds(sim.pid) - sim_cpu0
                        peaks = {"bearerbox": memory(bearer.pid)["peak_rss"], "smsbox": memory(box.pid)["peak_rss"]}
                    finally:
                        if box is not None:
                            await _stop(box)
                        await _stop(bearer)
                counters = await sim.counters()
    result = _heard(stats, t0, end, scope.cancelled_caught, receiver_cpu)
    return {**result, "messages": len(msgs), "submit_seconds": None if sent_at is None else sent_at - t0,
            "sendsms_accepted": tally["accepted"], "sendsms_refused": tally["refused"],
            "sim_accepted": counters["accepted"], "peak_rss": peaks,
            "simulator_cpu_us": sim_cpu / len(msgs) * 1e6}  # fmt: skip


def _heard(stats: dict, t0: float, end: float, timed_out: bool, receiver_cpu: float) -> dict:
    """A side's figures from what the receiver heard: the clock stops at the last final state
    received (all of them; or, past the deadline, the last one that came)."""
    done = stats["done_at"] or stats["last_final_at"] or end
    seconds = done - t0
    return {"seconds": seconds, "messages_per_s": stats["final"] / seconds, "timed_out": timed_out,
            "final_heard": stats["final"], "missing": stats["missing"], "duplicates": stats["duplicates"],
            "out_of_range": stats["out_of_range"], "events_heard": stats["events"], "requests": stats["requests"],
            "bad_requests": stats["bad"], "receiver_cpu_us": receiver_cpu / max(1, stats["final"]) * 1e6,
            "receiver_cpu_share": receiver_cpu / max(seconds, 1e-9)}  # fmt: skip


# -- Sluice ---------------------------------------------------------------------------------


async def _until_final(client: httpx.AsyncClient, job_id: str, total: int) -> tuple[float, dict]:
    """Polls the job's counts (kept by the store, a few rows) until every message is final."""
    while True:
        counts = (await client.get(f"/v1/jobs/{job_id}")).json()["counts"]
        if sum(n for s, n in counts.items() if s in FINAL) >= total:
            return time.monotonic(), counts
        await anyio.sleep(0.05)


def _kids(pid: int) -> list[tuple[int, str]]:
    """``sluice serve``'s live child processes: (pid, what: "webhooks" for the webhook delivery
    process, "ingest" for an ingest worker, else "other")."""
    out = []
    for kid in children(pid):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
            out.append((kid, "webhooks" if b"webhook_process" in cmd else "ingest" if b"to_process" in cmd else "other"))
    return out


def _peaks(pid: int) -> tuple[int, list[tuple[str, int]]]:
    """Peak RSS (VmHWM) of ``sluice serve`` and of each of its live child processes."""
    kids = []
    for kid, what in _kids(pid):
        with contextlib.suppress(FileNotFoundError, KeyError):
            kids.append((what, memory(kid)["peak_rss"]))
    return memory(pid)["peak_rss"], kids


def _kids_cpu(pid: int, kind: str) -> float:
    """CPU seconds so far of serve's live child processes of one ``kind`` (``_kids``): "webhooks"
    (the delivery process) or "ingest" (the workers that check a job's recipients); 0 if none."""
    total = 0.0
    for kid, what in _kids(pid):
        if what == kind:
            with contextlib.suppress(OSError):
                total += cpu_seconds(kid)
    return total


def _sluice_cpu(gw_pid: int, sim_pid: int, receiver: Receiver) -> tuple[float, ...]:
    """CPU seconds so far of every process of a Sluice side: serve's event loop, serve (all
    threads), the receiver, the webhook delivery process, the ingest workers, the simulator."""
    return (cpu_seconds(gw_pid, main_thread=True), cpu_seconds(gw_pid), receiver.cpu(), _kids_cpu(gw_pid, "webhooks"),
            _kids_cpu(gw_pid, "ingest"), cpu_seconds(sim_pid))  # fmt: skip


def _machine_idle() -> tuple[float, float, float]:
    """(idle, total, steal) jiffies of the whole machine so far (/proc/stat's first line).
    Steal: time the hypervisor ran something else while this VM's vCPUs wanted to run; a run
    slow in every process's CPU a message with steal is the host's, not the code's."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8]), fields[7]


async def _sample(gw_pid: int, sim: Child, receiver: Receiver, into: list[dict], every: float = 0.1) -> None:
    """Every ``every`` seconds until canceled: the CPU seconds so far of each process of a
    Sluice side (``_sluice_cpu``), the simulator's submits accepted and receipts answered, what
    the receiver heard, and the machine's idle jiffies: one side's timeline (``--timeline``)."""
    t0 = time.monotonic()
    while True:
        cpu = _sluice_cpu(gw_pid, sim.pid, receiver)
        sim_c = await sim.counters()
        heard = await receiver.stats()
        idle, total, steal = _machine_idle()
        into.append({"t": round(time.monotonic() - t0, 3), "cpu": [round(c, 3) for c in cpu],
                     "accepted": sim_c["accepted"], "receipts_acked": sim_c["receipts_acked"],
                     "events": heard["events"], "final": heard["final"], "idle": idle, "jiffies": total,
                     "steal": steal})  # fmt: skip
        await anyio.sleep(every)


def timeline_per_second(samples: list[dict]) -> list[dict]:
    """A timeline's rates and CPU shares per second (from the 100 ms samples): submits accepted,
    receipts answered, events and final events heard, each process's share of a core (serve's
    loop, serve, receiver, webhooks, ingest, simulator), and the machine's idle share."""
    out, k = [], 0
    while k + 10 < len(samples):
        a, b = samples[k], samples[k + 10]
        dt = b["t"] - a["t"]
        out.append({"t": round(b["t"], 1), "accepted": round((b["accepted"] - a["accepted"]) / dt),
                    "receipts": round((b["receipts_acked"] - a["receipts_acked"]) / dt),
                    "events": round((b["events"] - a["events"]) / dt), "final": round((b["final"] - a["final"]) / dt),
                    "cpu": [round((y - x) / dt, 2) for x, y in zip(a["cpu"], b["cpu"])],
                    "machine_idle": round((b["idle"] - a["idle"]) / max(1.0, b["jiffies"] - a["jiffies"]), 2),
                    "machine_steal": round((b["steal"] - a["steal"]) / max(1.0, b["jiffies"] - a["jiffies"]), 3)})  # fmt: skip
        k += 10
    return out


_SLOT = ("answer", "to_write", "write", "refill")
_WAITS = {"window_wait": 'sluice_dispatcher_seconds_total{what="window_wait"}',
          "wire_wait": 'sluice_dispatcher_seconds_total{what="wire_wait"}',
          "write": 'sluice_dispatcher_seconds_total{what="write"}', "writes": 'sluice_messages_total{event="writes"}',
          "changes": 'sluice_messages_total{event="changes_written"}',
          "rows": 'sluice_messages_total{event="rows_written"}',
          "record_cpu": 'sluice_dispatcher_seconds_total{what="record_cpu"}',
          **{f"slot_{part}": f'sluice_window_slot_seconds_total{{part="{part}"}}' for part in _SLOT},
          **{f"slots_{part}": f'sluice_window_slots_total{{part="{part}"}}' for part in _SLOT}}  # fmt: skip


async def _waits(client: httpx.AsyncClient) -> dict[str, float]:
    """Where ``serve``'s dispatcher spent its time so far (``DispatcherStats``, from /metrics):
    seconds its pumps waited for the unconfirmed window / the connectors' windows, seconds in
    the store's writes, and the writes and changes written."""
    text = (await client.get("/metrics")).text
    out = dict.fromkeys(_WAITS, 0.0)
    for line in text.splitlines():
        for key, name in _WAITS.items():
            if line.startswith(name + " "):
                out[key] = float(line.rsplit(" ", 1)[1])
    return out


def _critical(w0: dict[str, float], w1: dict[str, float], sim0: dict, sim1: dict, seconds: float) -> dict:
    """The side's waits as shares of its clock: the pump waiting for the unconfirmed window
    (``window_wait``; the write's latency holds it) or for the carrier's responses
    (``wire_wait``), ``serve``'s writes (``write``, wall: CPU and sync), and the simulator's due
    receipts waiting for a window of unanswered receipts (``receipts_window_full``: answered
    only after the write); with the writes' count and mean size; and a window slot's cycle, mean
    milliseconds a message (``DispatcherStats``): hand-over to answer, to its write, in the write,
    from the write's end to the next hand-over in the freed slot."""
    d = {k: w1[k] - w0[k] for k in w1}
    full = (sim1.get("receipts_window_full_ms", 0) - sim0.get("receipts_window_full_ms", 0)) / 1000
    s = max(seconds, 1e-9)
    return {"window_wait_share": d["window_wait"] / s, "wire_wait_share": d["wire_wait"] / s,
            "write_share": d["write"] / s, "receipts_window_full_share": full / s, "writes_per_s": d["writes"] / s,
            "changes_per_write": d["changes"] / max(1.0, d["writes"]),
            "rows_per_write": d["rows"] / max(1.0, d["writes"]), "record_cpu_s": d["record_cpu"],
            **{f"slot_{part}_ms": 1000 * d[f"slot_{part}"] / max(1.0, d[f"slots_{part}"]) for part in _SLOT}}  # fmt: skip


async def _warm(client: httpx.AsyncClient, receiver: Receiver) -> None:
    """One message with a callback to the receiver, its final event awaited before the clock
    starts: whatever delivers webhooks is up (a server in service has it running already), as
    Kannel's boxes are before its clock starts."""
    await receiver.reset(1, 1)
    r = await client.post("/v1/messages", json={"to": "+447911123456", "from": "SLUICE", "body": "warm",
                                                "category": "transactional", "callback_url": f"{receiver.url}/hooks"})  # fmt: skip
    if r.status_code != 202:
        raise click.ClickException(f"warm-up message answered {r.status_code}: {r.text[:300]}")
    with anyio.fail_after(120):
        await receiver.wait_done(quiet=120)


@contextlib.asynccontextmanager
async def _sampling(on: bool, gw_pid: int, sim: Child, receiver: Receiver, into: list[dict]):
    if not on:
        yield
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(_sample, gw_pid, sim, receiver, into)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def sluice_side(n: int, pieces: list[bytes], want: int, receiver: Receiver, dlr_delay: float, binds: int,
                      window: int, deadline: float, hooks: bool, timeline: bool = False) -> dict:  # fmt: skip
    """One NDJSON job; ``hooks``: with a ``callback_url`` to the receiver (every state), else
    the final states polled from the store."""
    job, counts, done = None, {}, None
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        d = Path(tmp)
        with open(d / "sim.log", "wb") as sim_log, open(d / "serve.log", "wb") as log:
            async with simulator("--dlr-delay", str(dlr_delay), stderr=sim_log) as sim:
                cfg = config(d, smpp_port=sim.port, binds=binds, window=window)
                if hooks:  # webhooks off: no tenant signs them either (serve then runs no delivery process)
                    with_webhooks(cfg)
                    pieces = with_callback(pieces, f"{receiver.url}/hooks")
                async with gateway(cfg, env=WEBHOOK_ENV, stderr=log) as gw, \
                        httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=300) as client:  # fmt: skip
                    await until_ready(gw.url)
                    await _bound(client, binds)
                    if hooks:
                        await _warm(client, receiver)
                    await receiver.reset(n, want)  # keys: the recipients' index in the job

                    async def body():
                        for p in pieces:
                            yield p

                    w0, sim0 = await _waits(client), await sim.counters()
                    cpu0 = _sluice_cpu(gw.pid, sim.pid, receiver)
                    idle0 = _machine_idle()
                    samples: list[dict] = []
                    t0 = time.monotonic()
                    with anyio.move_on_after(deadline) as scope:
                        async with _sampling(timeline, gw.pid, sim, receiver, samples):
                            r = await client.post("/v1/jobs", content=body(), headers={"content-type": "application/x-ndjson"})
                            accepted_at = time.monotonic()
                            if r.status_code != 202:
                                raise click.ClickException(f"job POST answered {r.status_code}: {r.text[:300]}")
                            job = r.json()
                            if job["accepted"] != want:
                                raise click.ClickException(f"Sluice accepted {job['accepted']} of {want} messages")
                            if hooks:
                                await receiver.wait_done()
                            else:
                                done, counts = await _until_final(client, job["id"], job["accepted"])
                    end = time.monotonic()
                    cpu1 = _sluice_cpu(gw.pid, sim.pid, receiver)
                    idle1 = _machine_idle()
                    w1, sim1 = await _waits(client), await sim.counters()
                    if job is not None:
                        counts = (await client.get(f"/v1/jobs/{job['id']}")).json()["counts"]
                    stats = await receiver.settle() if hooks else None
                    peak, kid_peaks = _peaks(gw.pid)
                sim_counters = await sim.counters()
    if job is None:
        raise click.ClickException(f"Sluice: the job was not accepted within {deadline:.0f} s")
    final = sum(v for s, v in counts.items() if s in FINAL)
    crit = _critical(w0, w1, sim0, sim1, end - t0)
    if hooks:
        result = _heard(stats, t0, end, scope.cancelled_caught, cpu1[2] - cpu0[2])
    else:
        seconds = (done or end) - t0
        result = {"seconds": seconds, "messages_per_s": final / seconds, "timed_out": scope.cancelled_caught}
    return {**result, "accepted": job["accepted"], "ingest_seconds": accepted_at - t0, "final_in_store": final,
            "delivered": counts.get("delivered", 0), "counts": counts,
            "server_loop_cpu_us": (cpu1[0] - cpu0[0]) / want * 1e6, "server_cpu_us": (cpu1[1] - cpu0[1]) / want * 1e6,
            "delivery_cpu_us": (cpu1[3] - cpu0[3]) / want * 1e6, "ingest_cpu_us": (cpu1[4] - cpu0[4]) / want * 1e6,
            "simulator_cpu_us": (cpu1[5] - cpu0[5]) / want * 1e6,
            "cores_busy": (sum(cpu1[1:]) - sum(cpu0[1:])) / max(end - t0, 1e-9),
            "machine_idle": (idle1[0] - idle0[0]) / max(1.0, idle1[1] - idle0[1]),
            "machine_steal": (idle1[2] - idle0[2]) / max(1.0, idle1[1] - idle0[1]),
            "server_peak_rss": peak, "children_peak_rss": kid_peaks, "sim_accepted": sim_counters["accepted"],
            "sim_receipts_acked": sim_counters["receipts_acked"], **crit,
            "record_cpu_us": crit["record_cpu_s"] / want * 1e6,
            **({"timeline": timeline_per_second(samples)} if timeline else {})}  # fmt: skip


# -- the runs -------------------------------------------------------------------------------


def _ratios(row: dict) -> dict[str, float]:
    rate = {side: r["messages_per_s"] for side, r in row.items()}
    out = {}
    for name, a, b in (("hooks_vs_kannel", "sluice-hooks", "kannel"), ("poll_vs_kannel", "sluice-poll", "kannel"),
                       ("hooks_vs_poll", "sluice-hooks", "sluice-poll"),
                       ("delayed_vs_at_once", "sluice-poll", "sluice-poll-at-once"),
                       ("delayed_vs_at_once_hooks", "sluice-hooks", "sluice-hooks-at-once")):  # fmt: skip
        if a in rate and b in rate and rate[b] > 0:
            out[name] = rate[a] / rate[b]
    return out


async def _measure(sides: Sequence[str], runs: int, msgs: list[tuple[str, str]], n: int, pieces: list[bytes],
                   dlr_delay: float, binds: int, window: int, clients: int, deadline: float,
                   ceiling_seconds: float, on_run=None, timeline: bool = False) -> tuple[dict | None, list[dict]]:  # fmt: skip
    rows: list[dict] = []
    async with open_receiver() as receiver:
        ceiling = await receiver_ceiling(receiver, ceiling_seconds, clients) if ceiling_seconds > 0 else None
        for k in range(runs):
            order = [*sides[k % len(sides) :], *sides[: k % len(sides)]]  # interleaved: each run starts elsewhere
            row: dict[str, dict] = {}
            for side in order:
                if side == "kannel":
                    row[side] = await kannel_side(msgs, receiver, dlr_delay, binds, window, clients, deadline)
                else:
                    delay = 0.0 if side.endswith("at-once") else dlr_delay
                    row[side] = await sluice_side(n, pieces, len(msgs), receiver, delay, binds, window, deadline,
                                                  hooks="hooks" in side, timeline=timeline)  # fmt: skip
                click.echo(f"  run {k + 1} {side:<22} {row[side]['messages_per_s']:>10,.0f} messages/s", err=True)
            rows.append({"order": order, **row, "ratios": _ratios(row)})
            if on_run is not None:
                on_run(ceiling, rows)
    return ceiling, rows


def run(n: int, runs: int, dlr_delay: float, binds: int, window: int, clients: int, seed: int,
        sides: Sequence[str] = SIDES, deadline: float | None = None, ceiling_seconds: float = 2.0,
        on_run=None, timeline: bool = False) -> dict[str, object]:  # fmt: skip
    """``on_run(partial result)`` after each run (so a long measurement keeps what it has);
    ``timeline``: each Sluice side's per-second timeline in its figures (``_sample``)."""
    sides = [s for s in SIDES if s in sides]
    if "kannel" in sides and not (shutil.which("bearerbox") and shutil.which("smsbox")):
        raise click.ClickException("Kannel is not installed (bearerbox, smsbox): apt-get install kannel")
    msgs = messages(n, seed)
    pieces = ndjson_job(n, seed=seed, category="transactional")
    deadline = deadline or max(120.0, n / 400)
    settings = {"runs": runs, "messages": len(msgs), "recipients": n, "dlr_delay": dlr_delay, "binds": binds,
                "window": window, "clients": clients, "deadline": deadline, "sides": sides}  # fmt: skip
    partial = None if on_run is None else (lambda c, rows: on_run(_summary(settings, c, rows)))
    ceiling, rows = anyio.run(_measure, sides, runs, msgs, n, pieces, dlr_delay, binds, window, clients, deadline,
                              ceiling_seconds, partial, timeline, backend="asyncio", backend_options={"use_uvloop": True})  # fmt: skip
    return _summary(settings, ceiling, rows)


def _summary(settings: dict, ceiling: dict | None, rows: list[dict]) -> dict[str, object]:
    sides = settings["sides"]
    rates = {side: statistics.median(r[side]["messages_per_s"] for r in rows) for side in sides}
    ratios = {name: statistics.median(r["ratios"][name] for r in rows) for name in rows[0]["ratios"]}
    peak = [r[s]["server_peak_rss"] for r in rows for s in sides if s != "kannel"]
    return {"scenario": "kannel", **settings, "runs_done": len(rows), "messages_per_s": rates, "ratios": ratios,
            "server_peak_rss_max": max(peak, default=None), "receiver_ceiling": ceiling, "per_run": rows,
            "machine": describe(), "load_average": list(os.getloadavg())}  # fmt: skip


_LABELS = {
    "kannel": "Kannel 1.4.5, sendsms + dlr-url per message (memory DLRs)",
    "sluice-hooks": "Sluice, NDJSON job + callback_url (every state)",
    "sluice-poll": "Sluice, same job, no callback_url (final state in the store)",
    "sluice-poll-at-once": "  same, receipts at once (--dlr-delay 0)",
    "sluice-hooks-at-once": "  with callback_url, receipts at once",
}
_CPU_KEYS = ("server_loop_cpu_us", "server_cpu_us", "delivery_cpu_us", "ingest_cpu_us", "simulator_cpu_us",
             "receiver_cpu_us")
_RATIO_LABELS = {
    "hooks_vs_kannel": "Sluice (every state reported) / Kannel",
    "poll_vs_kannel": "Sluice (store) / Kannel",
    "hooks_vs_poll": "webhooks on / off (cost = 1 - this)",
    "delayed_vs_at_once": "receipts later / at once, no callback (cost = 1 - this)",
    "delayed_vs_at_once_hooks": "receipts later / at once, with callback",
}


@click.command("kannel")
@click.option("--messages", "n", default=100_000, show_default=True, help="Recipients in the job (the valid ones are sent).")
@click.option("--runs", default=3, show_default=True, help="Runs (every side each, interleaved); figures are medians.")
@click.option("--dlr-delay", default=0.1, show_default=True,
              help="Simulator: seconds from submit to receipt (the at-once sides use 0; at 0 Kannel loses the "
                   "receipts that overtake its DLR entry).")  # fmt: skip
@click.option("--side", "sides", multiple=True, type=click.Choice(SIDES), default=SIDES, show_default=True,
              help="What to measure (repeat the option); all by default.")  # fmt: skip
@click.option("--binds", default=2, show_default=True)
@click.option("--window", default=100, show_default=True)
@click.option("--clients", default=16, show_default=True, help="Kannel: concurrent sendsms connections.")
@click.option("--deadline", type=float, default=None, help="Seconds per side at most [default: max(120, messages/400)].")
@click.option("--ceiling-seconds", default=2.0, show_default=True, help="Receiver ceiling: seconds per kind (0: skip).")
@click.option("--seed", default=1, show_default=True)
@click.option("--timeline", is_flag=True, help="Sample each Sluice side every 100 ms (CPU of each process, submits, "
              "receipts, events heard, the machine's idle) and keep it per second in the JSON.")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_kannel(n: int, runs: int, dlr_delay: float, sides: tuple[str, ...], binds: int, window: int, clients: int,
                 deadline: float | None, ceiling_seconds: float, seed: int, timeline: bool, json_path: str | None,
                 out_dir: str | None) -> None:  # fmt: skip
    """Kannel and Sluice through the same SMPP simulator, to the same HTTP receiver, same run."""
    keep = None
    if json_path:
        def keep(partial: dict) -> None:  # every run's figures on disk as soon as it ends
            Path(json_path).write_text(json.dumps(partial, indent=2))

    r = run(n, runs, dlr_delay, binds, window, clients, seed, sides, deadline, ceiling_seconds, keep, timeline)
    click.echo(f"sluice bench kannel: {r['messages']:,} messages, {binds} binds x window {window}, "
               f"dlr-delay {dlr_delay}s, median of {runs} runs (first byte -> last final state received)")  # fmt: skip
    last = r["per_run"][-1]
    for side, rate in r["messages_per_s"].items():
        x = last[side]
        heard = (f"missing {x['missing']:,}, duplicates {x['duplicates']:,}" if "missing" in x
                 else f"final in store {x['final_in_store']:,}")  # fmt: skip
        click.echo(f"  {_LABELS[side]:<64} {rate:>10,.0f} /s   (last run: {heard})")
    for name, value in r["ratios"].items():
        per = " ".join(f"{x['ratios'][name]:.2f}" for x in r["per_run"])
        click.echo(f"  {_RATIO_LABELS[name]:<64} {value:>10.2f}    (per run: {per})")
    click.echo(f"  CPU per message, median (µs): {'serve loop':>10} {'serve':>7} {'webhooks':>9} {'ingest':>7} "
               f"{'simulator':>10} {'receiver':>9}")  # fmt: skip
    for side in r["messages_per_s"]:
        cpu = {k: statistics.median(x[side].get(k, 0.0) for x in r["per_run"]) for k in _CPU_KEYS}
        click.echo(f"    {side:<26} " + " ".join(f"{cpu[k]:>{w},.1f}" for k, w in zip(_CPU_KEYS, (10, 7, 9, 7, 10, 9))))
    for side in r["messages_per_s"]:
        if side != "kannel":
            busy = statistics.median(x[side]["cores_busy"] for x in r["per_run"])
            idle = statistics.median(x[side]["machine_idle"] for x in r["per_run"])
            steal = statistics.median(x[side].get("machine_steal", 0.0) for x in r["per_run"])
            click.echo(f"  {side + ': cores busy with its processes, machine idle, steal':<64} {busy:>10.2f}    "
                       f"{idle:.0%} {steal:.1%}")  # fmt: skip
    keys = ("window_wait_share", "wire_wait_share", "write_share", "receipts_window_full_share")
    sluice = [side for side in r["messages_per_s"] if side != "kannel"]
    if sluice:
        click.echo(f"  share of the clock, median: {'pump waits window':>17} {'waits wire':>10} {'writing':>8} "
                   f"{'receipts held':>13} {'writes/s':>9} {'changes/write':>13}")  # fmt: skip
    for side in sluice:
        m = {k: statistics.median(x[side].get(k, 0.0) for x in r["per_run"])
             for k in (*keys, "writes_per_s", "changes_per_write")}  # fmt: skip
        click.echo(f"    {side:<26} " + " ".join(f"{m[k]:>{w}.0%}" for k, w in zip(keys, (17, 10, 8, 13)))
                   + f" {m['writes_per_s']:>9,.0f} {m['changes_per_write']:>13,.0f}")  # fmt: skip
    if sluice:  # the store's write on serve's loop: rows a message, and the loop's CPU in them
        click.echo(f"  the writes on serve's loop, median: {'rows/write':>10} {'rows/message':>12} "
                   f"{'record µs/message':>17} {'of the loop':>11}")  # fmt: skip
    for side in sluice:
        m = {k: statistics.median(x[side].get(k, 0.0) for x in r["per_run"])
             for k in ("rows_per_write", "changes_per_write", "record_cpu_us", "server_loop_cpu_us")}  # fmt: skip
        rows = 2 * m["rows_per_write"] / max(1.0, m["changes_per_write"])  # two changes a message
        share = m["record_cpu_us"] / max(1e-9, m["server_loop_cpu_us"])
        click.echo(f"    {side:<34} {m['rows_per_write']:>10,.0f} {rows:>12.2f} {m['record_cpu_us']:>17.1f} {share:>11.0%}")
    slot = tuple(f"slot_{part}_ms" for part in _SLOT)
    if sluice:
        click.echo(f"  a window slot's cycle, ms, median: {'to answer':>9} {'to write':>8} {'writing':>7} "
                   f"{'to next send':>12} {'sum':>6}")  # fmt: skip
    for side in sluice:
        m = {k: statistics.median(x[side].get(k, 0.0) for x in r["per_run"]) for k in slot}
        click.echo(f"    {side:<34} " + " ".join(f"{m[k]:>{w}.1f}" for k, w in zip(slot, (9, 8, 7, 12)))
                   + f" {sum(m.values()):>6.1f}")  # fmt: skip
    if r["server_peak_rss_max"]:
        click.echo(f"  {'sluice serve peak RSS, largest of all runs (MB)':<64} {r['server_peak_rss_max'] / (1 << 20):>10,.0f}")
    if r["receiver_ceiling"]:
        c = r["receiver_ceiling"]
        click.echo(f"  {'receiver, per second of its CPU: Kannel reports | webhook events':<64} "
                   f"{c['dlr_events_per_receiver_cpu_s']:>10,.0f} | {c['hooks_events_per_receiver_cpu_s']:,.0f}")
        share = max(x[s].get("receiver_cpu_share", 0.0) for x in r["per_run"] for s in r["sides"])
        click.echo(f"  {'receiver CPU share during a side, highest':<64} {share:>10.0%}")  # fmt: skip
    save(r, json_path, out_dir)
