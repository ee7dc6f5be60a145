"""`python -m bench.sim_cost`: the SMSC simulator's own CPU per message, nothing else's.

``sluice sim smsc`` runs as a process (as in every bench); a lean ESME (raw asyncio, PDUs
pre-encoded, no ``Session``) binds ``--binds`` transceivers, keeps ``--window`` submit_sm in
flight on each, answers every deliver_sm at once and stops when every message's receipt came.
The simulator's CPU (user + system, /proc) from the first submit to the last receipt, over the
messages, is the figure: what the simulator takes out of the two cores that the gateway and
Kannel share with it in ``sluice bench kannel`` and ``sluice bench e2e``. The driver's own CPU
is reported beside it (it is not the simulator's). Best of ``--repeat`` passes, each against a
fresh simulator.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time

import click

from bench.service import cpu_seconds
from carriers.smpp import pdu as P
from gateway.testing.processes import simulator

_HDR = struct.Struct(">IIII")


class _Esme(asyncio.Protocol):
    def __init__(self, submits: list[bytes], window: int, done: asyncio.Future, counts: dict) -> None:
        self.submits, self.window, self.done, self.counts = submits, window, done, counts
        self.buf = b""
        self.inflight = 0
        self.bound = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(P.encode(P.BindTransceiver(sequence=1, system_id=b"bench", password=b"pw")))

    def pump(self) -> None:
        out = []
        while self.inflight < self.window and self.submits:
            out.append(self.submits.pop())
            self.inflight += 1
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        data = self.buf + data
        off, n, answers = 0, len(data), []
        while n - off >= 16:
            length, cid, status, seq = _HDR.unpack_from(data, off)
            if n - off < length:
                break
            if cid == P.CommandId.SUBMIT_SM_RESP:
                self.inflight -= 1
                self.counts["accepted"] += status == 0
            elif cid == P.CommandId.DELIVER_SM:
                answers.append(_HDR.pack(17, P.CommandId.DELIVER_SM_RESP, 0, seq) + b"\0")
                self.counts["receipts"] += 1
            elif cid == P.CommandId.BIND_TRANSCEIVER_RESP:
                self.bound.set_result(status)
            elif cid == P.CommandId.ENQUIRE_LINK:
                answers.append(_HDR.pack(16, P.CommandId.ENQUIRE_LINK_RESP, 0, seq))
            off += length
        self.buf = data[off:]
        if answers:
            assert self.transport is not None
            self.transport.write(b"".join(answers))
        self.pump()
        if self.counts["receipts"] >= self.counts["want"] and not self.done.done():
            self.done.set_result(None)


def _submits(n: int, seq0: int) -> list[bytes]:
    out = []
    for k in range(n):
        body = P.encode_body(P.SubmitSm(source_addr=b"SLUICE", dest_addr_ton=1, dest_addr_npi=1,
                                        destination_addr=b"4479%08d" % k, registered_delivery=1,
                                        short_message=b"Hello %d, your order has shipped." % k))  # fmt: skip
        out.append(P.header(P.CommandId.SUBMIT_SM, 0, seq0 + k, len(body)) + body)
    out.reverse()  # popped from the end: sent in order
    return out


class _There:
    """A simulator started by someone else (``--port``/``--pid``: e.g. under py-spy)."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.pid = port, pid

    async def __aenter__(self) -> _There:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def one_pass(messages: int, binds: int, window: int, dlr_delay: float, port: int = 0, pid: int = 0) -> dict:
    loop = asyncio.get_running_loop()
    async with (simulator("--dlr-delay", str(dlr_delay)) if not port else _There(port, pid)) as sim:
        done = loop.create_future()
        counts = {"accepted": 0, "receipts": 0, "want": messages}
        per = messages // binds
        esmes = []
        for b in range(binds):
            mine = per if b < binds - 1 else messages - per * (binds - 1)
            proto = _Esme(_submits(mine, 2), window, done, counts)
            await loop.create_connection(lambda p=proto: p, "127.0.0.1", sim.port)
            esmes.append(proto)
        for e in esmes:
            if await asyncio.wait_for(e.bound, 10) != 0:
                raise click.ClickException("bind refused")
        sim_cpu0, me0, t0 = cpu_seconds(sim.pid), time.process_time(), time.monotonic()
        for e in esmes:
            e.pump()
        await asyncio.wait_for(done, max(60.0, messages / 500))
        wall = time.monotonic() - t0
        sim_cpu, me = cpu_seconds(sim.pid) - sim_cpu0, time.process_time() - me0
        for e in esmes:
            assert e.transport is not None
            e.transport.close()
    return {"messages": messages, "accepted": counts["accepted"], "receipts": counts["receipts"],
            "seconds": wall, "messages_per_s": messages / wall,
            "simulator_cpu_us": sim_cpu / messages * 1e6, "driver_cpu_us": me / messages * 1e6}  # fmt: skip


@click.command()
@click.option("--messages", default=50_000, show_default=True)
@click.option("--binds", default=2, show_default=True)
@click.option("--window", default=100, show_default=True)
@click.option("--dlr-delay", default=0.1, show_default=True)
@click.option("--repeat", default=3, show_default=True)
@click.option("--port", default=0, help="a simulator already listening here (its --dlr-delay is its own)")
@click.option("--pid", default=0, help="that simulator's process id (for its CPU)")
def main(messages: int, binds: int, window: int, dlr_delay: float, repeat: int, port: int, pid: int) -> None:
    """The simulator's CPU per message (submit_sm in, submit_sm_resp and receipt out)."""
    runs = [asyncio.run(one_pass(messages, binds, window, dlr_delay, port, pid)) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["simulator_cpu_us"])
    json.dump({"runs": runs, "best_simulator_cpu_us": best["simulator_cpu_us"]}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
