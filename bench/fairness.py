"""`sluice bench fairness`: does one large request stall every other tenant?

A `sluice serve` child (SQLite store, ``synchronous=NORMAL``, no carrier link: nothing drains the
queue, admission is measured alone) gets one large job from one tenant while another tenant
sends small requests at a fixed rate, each on its own schedule (open loop: a request due while
the server is stalled is late from its *scheduled* time, so a stall counts as many late
requests, not one). Scenarios, one after the other on the same server:

- ``json``: a job of N recipients (default 1,000,000) as one JSON body;
- ``ndjson``: the same job streamed as NDJSON;
- ``json_invalid``: a JSON job whose N recipients are all invalid (the answer's size matters).

For each: the small requests' latency p50 / p99 / max (ms) from the first byte of the large
request until 1 s after its answer, the large request's time to its answer, and that answer's
size. The small requests alternate ``POST /v1/messages`` and ``GET /v1/messages/{id}``. Prints
JSON. The client runs in this process on asyncio streams (as `bench ingest`): on a 2-core machine
it takes the other core, so figures are for a loaded machine.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import click
import msgspec

from bench.machine import describe
from bench.output import out_option, save
from bench.service import ENV, KEY, _response, config, until_ready
from gateway.testing import workload
from gateway.testing.processes import gateway

_enc = msgspec.json.Encoder()


def json_job(recipients: int, *, valid: bool = True) -> bytes:
    people = ([{"to": r.to, "vars": r.vars} for r in workload.recipients(recipients, 1, vars_for="marketing")]
              if valid else [{"to": "+999%09d" % i} for i in range(recipients)])  # fmt: skip
    return _enc.encode({"from": "SLUICE", "category": "marketing", "template": workload.TEMPLATES["marketing"],
                        "recipients": people})  # fmt: skip


def ndjson_job(recipients: int) -> bytes:
    head = {"from": "SLUICE", "category": "marketing", "template": workload.TEMPLATES["marketing"]}
    lines = [_enc.encode(head)]
    lines += [_enc.encode({"to": r.to, "vars": r.vars}) for r in workload.recipients(recipients, 1, vars_for="marketing")]
    return b"\n".join(lines) + b"\n"


class Prober:
    """Small requests at ``rate`` per second, each timed from when it was due."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.interval = port, 1.0 / rate
        self.samples: list[tuple[float, float]] = []  # (due, latency)
        self.errors = 0
        self._free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._known_id: bytes | None = None

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        tasks = set()
        k = 0
        while not stop.is_set():
            task = asyncio.create_task(self._one(due, k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            due += self.interval
            await asyncio.sleep(max(0.0, due - loop.time()))
        await asyncio.gather(*tasks)

    async def _one(self, due: float, k: int) -> None:
        loop = asyncio.get_running_loop()
        conn = self._free.pop() if self._free else await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = conn
        if k % 2 == 0 or self._known_id is None:
            body = _enc.encode({"to": "+4479111%05d" % (k % 100_000), "from": "SLUICE", "category": "transactional",
                                "body": "Your code is 123456."})  # fmt: skip
            head = b"POST /v1/messages HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        else:
            body, head = b"", b"GET /v1/messages/%s HTTP/1.1\r\n" % self._known_id
        writer.write(head + b"host: bench\r\nauthorization: Bearer %s\r\n\r\n%s" % (KEY.encode(), body))
        status, answer = await _response(reader)
        self.samples.append((due, loop.time() - due))
        if not 200 <= status < 300:
            self.errors += 1
        elif k % 2 == 0:
            self._known_id = msgspec.json.decode(answer)["id"].encode()
        self._free.append(conn)


async def _big(port: int, body: bytes, ndjson: bool) -> tuple[float, int, int]:
    """The large request on its own connection: (seconds to the answer, status, answer bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    kind = b"application/x-ndjson" if ndjson else b"application/json"
    t0 = time.perf_counter()
    writer.write(b"POST /v1/jobs HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer %s\r\ncontent-type: %s\r\n"
                 b"content-length: %d\r\n\r\n" % (KEY.encode(), kind, len(body)))  # fmt: skip
    view = memoryview(body)
    for i in range(0, len(body), 1 << 20):
        writer.write(view[i : i + (1 << 20)])
        await writer.drain()
    status, answer = await _response(reader)
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed, status, len(answer)


def _pct(values: list[float], q: float) -> float:
    return 1000 * values[min(len(values) - 1, int(len(values) * q))] if values else 0.0


async def _scenario(port: int, name: str, body: bytes, rate: float) -> dict:
    prober, stop = Prober(port, rate), asyncio.Event()
    loop = asyncio.get_running_loop()
    probing = asyncio.create_task(prober.run(stop))
    await asyncio.sleep(1.0)  # a baseline second first
    started = loop.time()
    seconds, status, size = await _big(port, body, ndjson=name == "ndjson")
    ended = loop.time()
    await asyncio.sleep(1.0)
    stop.set()
    await probing
    during = sorted(lat for due, lat in prober.samples if started <= due <= ended + 1.0)
    before = sorted(lat for due, lat in prober.samples if due < started)
    return {"scenario": name, "body_bytes": len(body), "status": status, "answer_bytes": size,
            "large_request_s": round(seconds, 2), "small_requests": len(during), "small_errors": prober.errors,
            "small_ms_p50": round(_pct(during, 0.5), 1), "small_ms_p99": round(_pct(during, 0.99), 1),
            "small_ms_max": round(_pct(during, 1.0), 1), "idle_ms_p99": round(_pct(before, 0.99), 1)}  # fmt: skip


async def _warm(port: int, rate: float) -> None:
    """Two seconds of small requests first, not counted: the number metadata phonenumbers loads
    lazily (~0.4 s for NANP) and the store's first writes belong to no large request."""
    prober, stop = Prober(port, rate), asyncio.Event()
    probing = asyncio.create_task(prober.run(stop))
    await asyncio.sleep(2.0)
    stop.set()
    await probing


async def run(recipients: int, rate: float, scenarios: list[str]) -> dict:
    bodies = {"json": lambda: json_job(recipients), "ndjson": lambda: ndjson_job(recipients),
              "json_invalid": lambda: json_job(recipients, valid=False)}  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as d:
        async with gateway(config(Path(d), synchronous="NORMAL"), env=ENV) as gw:
            await until_ready(gw.url)
            await _warm(gw.port, rate)
            for name in scenarios:
                body = bodies[name]()
                results.append(await _scenario(gw.port, name, body, rate))
                click.echo(msgspec.json.encode(results[-1]).decode(), err=True)
    return {"scenario": "fairness", "recipients": recipients, "small_rate_per_s": rate, "results": results,
            "machine": describe()}  # fmt: skip


@click.command("fairness")
@click.option("--recipients", default=1_000_000, show_default=True, help="recipients of the large job")
@click.option("--rate", default=50.0, show_default=True, help="small requests per second meanwhile")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(["json", "ndjson", "json_invalid"]),
              help="which large requests (default: all three)")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="also write the result here")
@out_option
def bench_fairness(recipients: int, rate: float, scenarios: tuple[str, ...], json_path: str | None,
                   out_dir: str | None) -> None:  # fmt: skip
    """Small requests' latency while one large job is admitted (JSON, NDJSON, all invalid)."""
    result = asyncio.run(run(recipients, rate, list(scenarios) or ["json", "ndjson", "json_invalid"]))
    click.echo(msgspec.json.encode(result).decode())
    save(result, json_path, out_dir)
