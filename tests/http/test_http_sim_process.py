"""Throttling and retries against ``sluice sim http`` as a child process, over real loopback."""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec
import pytest

from carriers.base import ConnectorEvent, Submitted, Throttled
from carriers.http.connector import HttpConnector
from carriers.http.settings import HttpSettings
from gateway.core.bucket import TokenBucket
from gateway.testing.processes import Child, start
from http_helpers import Harness, make_dispatch

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def against_process(sim_args: list[str], settings: HttpSettings, **kwargs) -> AsyncIterator[tuple[Harness, Child]]:
    cmd = [sys.executable, "-m", "gateway.cli", "sim", "http", "--port", "0", *sim_args]
    async with start(cmd, name="sim-http") as child:
        send, receive = anyio.create_memory_object_stream[ConnectorEvent](math.inf)
        url = f"{child.url}/messages"
        async with HttpConnector(msgspec.structs.replace(settings, url=url), send, **kwargs) as connector:
            yield Harness(None, connector, receive), child


async def test_429_storm_throttles_cuts_the_bucket_loses_nothing_and_keeps_order() -> None:
    # The first second of every 3 is a storm (everything 429), and never more than 100 msgs/s.
    bucket = TokenBucket(200, 20, anyio.current_time())
    s = HttpSettings(name="h1", batch_size=10, concurrency=1, tick_interval=0.05)
    async with against_process(["--tps", "100", "--throttle-burst", "3:1"], s, bucket=bucket) as (h, sim):
        final = await h.drive([make_dispatch(i) for i in range(200)], timeout=30)
        assert all(isinstance(e, Submitted) for e in final.values())
        assert [e.ref for e in h.seen if isinstance(e, Submitted)] == list(range(200))  # order kept
        assert h.of(Throttled) and bucket.statistics(anyio.current_time()).throttles >= 1
        c = await sim.counters()
        assert c["throttled"] >= 1 and c["accepted"] == 200 and c["duplicates_accepted"] == 0
        assert c["max_accepted_1s"] <= 100


async def test_5xx_storm_retried_without_duplicates() -> None:
    s = HttpSettings(name="h1", batch_size=10, concurrency=8, retry_backoff=0.01, max_attempts=10)
    args = ["--error-rate", "0.4", "--error-when", "after", "--seed", "3"]
    async with against_process(args, s) as (h, sim):
        final = await h.drive([make_dispatch(i) for i in range(500)], timeout=30)
        assert all(isinstance(e, Submitted) for e in final.values())
        c = await sim.counters()
        assert c["errors_5xx"] > 10 and c["duplicates_avoided"] == c["errors_5xx"]
        assert c["accepted"] == 500 and c["duplicates_accepted"] == 0
