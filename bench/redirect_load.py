"""A closed-loop HTTP/1.1 load generator for short-link redirects, run as its own process
(``python -m bench.redirect_load``) so its CPU is not the server's.

``--concurrency`` keep-alive connections each send ``GET /{code}`` (a browser user agent), read the
302's head, and send the next, for ``--seconds`` (bounded) or until ``--max-requests``. Raw asyncio
streams, not an HTTP client library: the client must be cheaper than the server it measures.
Prints one JSON line: requests, errors, elapsed_s, per-request latencies' p50/p99/max in ms."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"


async def _worker(host: str, port: int, codes: list[str], deadline: float, budget: list[int], lat: list[float],
                  errors: list[int], seed: int) -> None:  # fmt: skip
    r = random.Random(seed)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            code = codes[r.randrange(len(codes))]
            req = f"GET /{code} HTTP/1.1\r\nHost: s\r\nUser-Agent: {UA}\r\n\r\n".encode()
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 302"):
                errors[0] += 1
    finally:
        writer.close()


async def run(host: str, port: int, codes: list[str], seconds: float, concurrency: int, max_requests: int) -> dict:
    lat: list[float] = []
    errors, budget = [0], [max_requests]
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(_worker(host, port, codes, deadline, budget, lat, errors, i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0  # noqa: E731
    return {"requests": len(lat), "errors": errors[0], "elapsed_s": elapsed, "per_s": len(lat) / elapsed,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000 if lat else 0.0,
            "concurrency": concurrency}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--codes", required=True, help="a file of short codes, one a line")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=10_000_000)
    a = ap.parse_args()
    with open(a.codes, encoding="ascii") as f:
        codes = [c.strip() for c in f if c.strip()]
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    out = asyncio.run(run(a.host, a.port, codes, min(a.seconds, 120.0), a.concurrency, a.max_requests))
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
