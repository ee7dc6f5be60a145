"""What the service benchmarks share: a config for `sluice serve` in a temp dir, a raw HTTP/1.1
client for many small requests, and the server's memory and CPU time as the kernel counts them.

The small-request client is raw asyncio streams with keep-alive, not httpx: an httpx request
costs the client about as much CPU as the server spends answering it, and on a 2-core machine
the client would then measure itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import anyio
import httpx
import msgspec

from gateway.testing import workload

KEY = "bench-key-0123456789abcdef"
ENV = {"SLUICE_BENCH_KEY": KEY}
AUTH = {"authorization": f"Bearer {KEY}"}


def config(directory: Path, *, smpp_port: int | None = None, synchronous: str = "FULL",
           binds: int = 2, window: int = 100, answer_receipts: str = "after_write",
           store: str = "sqlite", ingest_workers: int | str = "auto") -> Path:  # fmt: skip
    """A config for the bench: one carrier "alpha" with no rate limit worth the name, one
    tenant without a request limit, the store in ``directory`` (``store="memory"``: nothing on
    disk, to see what durability costs). With ``smpp_port`` the carrier has an SMPP link to it;
    without, nothing drains the queue. ``ingest_workers``: as ``api.ingest_workers`` (0: large
    jobs are checked in the server's event loop)."""
    workers = f'"{ingest_workers}"' if isinstance(ingest_workers, str) else ingest_workers
    url = "memory://" if store == "memory" else f"sqlite:///{directory / 'sluice.db'}"
    link = "" if smpp_port is None else f"""
[[carriers.smpp]]
name = "alpha"
port = {smpp_port}
binds = {binds}
window = {window}
answer_receipts = "{answer_receipts}"
"""
    path = directory / "sluice.toml"
    path.write_text(f"""
[api]
host = "127.0.0.1"
max_body_bytes = {1 << 30}
ingest_workers = {workers}

[[api.tenants]]
name = "bench"
key_env = "SLUICE_BENCH_KEY"
requests_per_second = 1e9
burst = 1000000000

[[api.operators]]  # the same key reads the full /v1/carriers and /metrics
name = "bench"
key_env = "SLUICE_BENCH_KEY"

[store]
url = "{url}"
synchronous = "{synchronous}"

[[core.carriers]]
name = "alpha"
rate = 1e9
burst = 1000000

[[core.routes]]
prefix = ""
carriers = ["alpha"]
{link}""")
    return path


WEBHOOK_SECRET_ENV = "SLUICE_BENCH_HOOKS"
WEBHOOK_ENV = {**ENV, WEBHOOK_SECRET_ENV: "bench-webhook-secret-0123456789"}


def with_webhooks(path: Path) -> Path:
    """The bench config at ``path``, its tenant signing webhooks (secret in ``WEBHOOK_ENV``),
    loopback receivers allowed. Returns ``path``."""
    tenant = 'key_env = "SLUICE_BENCH_KEY"\nrequests_per_second'
    signed = f'key_env = "SLUICE_BENCH_KEY"\nwebhook_secret_env = "{WEBHOOK_SECRET_ENV}"\nrequests_per_second'
    path.write_text(path.read_text().replace(tenant, signed, 1) + '\n[webhooks]\nallow_private = ["127.0.0.0/8"]\n')
    return path


def with_callback(pieces: list[bytes], url: str) -> list[bytes]:
    """An NDJSON job (``ndjson_job``) whose job line names ``callback_url`` (every state)."""
    head, rest = pieces[0].split(b"\n", 1)
    line = {**msgspec.json.decode(head), "callback_url": url}
    return [_line.encode(line) + b"\n" + rest, *pieces[1:]]


_line = msgspec.json.Encoder()


def ndjson_pieces(head: dict, lines: Iterable[dict]) -> list[bytes]:
    """``head`` then each of ``lines`` as NDJSON, in ~1 MB pieces (a streamed body's chunks)."""
    pieces, buf = [], bytearray(_line.encode(head) + b"\n")
    for line in lines:
        buf += _line.encode(line)
        buf += b"\n"
        if len(buf) >= 1 << 20:
            pieces.append(bytes(buf))
            buf.clear()
    if buf:
        pieces.append(bytes(buf))
    return pieces


def ndjson_job(recipients: int, *, seed: int = 1, category: str = "marketing") -> list[bytes]:
    """A job as NDJSON, in ~1 MB pieces: the job line, then one line per recipient (numbers
    spread over 14 countries and time zones, two template variables each)."""
    head = {"from": "SLUICE", "category": category, "template": workload.TEMPLATES[category]}
    recipients_ = workload.recipients(recipients, seed, vars_for=category)
    return ndjson_pieces(head, ({"to": r.to, "vars": r.vars} for r in recipients_))


async def until_ready(url: str, *, within: float = 60.0) -> None:
    """Wait for ``GET /readyz`` to answer 200 (the ingest workers have started), as a load
    balancer would before sending traffic."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        with anyio.fail_after(within):
            while (await client.get("/readyz")).status_code != 200:
                await anyio.sleep(0.05)


def cpu_seconds(pid: int, *, main_thread: bool = False) -> float:
    """CPU time (user + system) a process has used so far; ``main_thread``: only its main
    thread's (where the event loop runs; the store's worker threads are left out)."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    with open(path, encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``sluice serve``'s ingest workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(k) for k in f.read().split()]
    except FileNotFoundError:
        return []


def children_cpu_seconds(pid: int) -> float:
    """CPU time the live child processes of ``pid`` have used so far."""
    total = 0.0
    for kid in children(pid):
        with contextlib.suppress(FileNotFoundError):  # ended meanwhile
            total += cpu_seconds(kid)
    return total


def memory(pid: int) -> dict[str, int]:
    """Resident memory of a process in bytes: now (VmRSS) and its peak so far (VmHWM)."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak_rss"] = int(value.split()[0]) * 1024
    return out


async def hammer(port: int, path: str, bodies: Sequence[bytes], *, clients: int, seconds: float,
                 method: str = "POST") -> dict[str, float]:  # fmt: skip
    """``clients`` keep-alive connections each send one request after another for ``seconds``.
    Returns requests/s (2xx only), the error count and the latency median / p99 in ms."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    stop_at = loop.time() + seconds

    async def one(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while loop.time() < stop_at:
                body = bodies[i % len(bodies)]
                i += clients
                t0 = loop.time()
                writer.write(b"%s %s HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer %s\r\n"
                             b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (method.encode(), path.encode(), KEY.encode(), len(body), body))  # fmt: skip
                status, _ = await _response(reader)
                if 200 <= status < 300:
                    latencies.append(loop.time() - t0)
                else:
                    errors += 1
        finally:
            writer.close()

    t0 = loop.time()
    await asyncio.gather(*(one(k) for k in range(clients)))
    elapsed = loop.time() - t0
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "ok": len(latencies),
        "errors": errors,
        "latency_ms_median": 1000 * statistics.median(latencies) if latencies else 0.0,
        "latency_ms_p99": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
    }


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if not chunked:
        return status, await reader.readexactly(length)
    parts = []
    while True:  # RFC 9112 §7.1: size line, data, CRLF; a zero size ends it
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return status, b"".join(parts)
        parts.append(data[:-2])


def single_messages(count: int, seed: int = 3) -> list[bytes]:
    return [_line.encode({"to": to, "from": "SLUICE", "category": "transactional",
                          "body": "Your code is 123456. It expires in 5 minutes."})
            for to in workload.numbers(count, seed)]  # fmt: skip


def medians(runs: Iterable[dict[str, object]], keys: Iterable[str]) -> dict[str, float]:
    runs = list(runs)
    return {k: statistics.median(float(r[k]) for r in runs) for k in keys}  # type: ignore[arg-type]
