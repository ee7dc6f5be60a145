"""kill -9 of ``sluice serve`` in the middle of a job, restart on the same store, repeat: every
accepted message ends in exactly one final state, none is lost, and the duplicates the carrier
saw are bounded by what can be in flight at a kill.

The SMSC simulator is one child for the whole run (it outlives every gateway), so its counters
cover every submit of every incarnation: ``accepted - job size`` is the number of duplicates.

Why the bound holds (what a kill can make us send twice): the dispatcher hands a carrier at
most its in-flight window (``binds x window``) of messages whose fate is not yet on disk (on the
wire, or taken by the carrier with their ``submitted`` state not yet written). Only those are
sent again after a restart, so duplicates <= ``kills x binds x window``.

Messages whose ``submitted`` state was on disk are not sent again: on restart their carrier ids
are given back to the connector's receipt reconciler, and the simulator delivers their receipts
(the ones it had not had answered, and the ones not yet due) to the new binds. A receipt is
answered only after the state it made is written, so none is lost to a kill: no message ends
``unknown`` (the receipt horizon is short here, so the test would see one end so).
"""

from __future__ import annotations

import random

import anyio
import pytest

from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import ENV, FINAL, client, job_counts, wait_final, write_config


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    """Child processes observed over HTTP: asyncio+uvloop is enough here."""
    return ("asyncio", {"use_uvloop": True})

pytestmark = pytest.mark.anyio

BINDS, WINDOW = 2, 50


async def crash_run(tmp_path, *, size: int, kills: int, rate: float, seed: int, timeout: float) -> dict:
    """One job of ``size``; ``kills`` SIGKILLs at seeded random moments while it is not done."""
    rng = random.Random(seed)
    job = {"from": "Shop", "category": "transactional", "template": "Order {n} shipped",
           "recipients": [{"to": "+4479%08d" % i, "vars": {"n": str(i)}} for i in range(size)]}  # fmt: skip
    done_kills = 0
    with anyio.fail_after(timeout):
        # tps above the gateway's rate: the simulator never throttles, it only paces receipts.
        async with simulator("--tps", str(int(rate * 1.2)), "--dlr-delay", "1.0", "--seed", str(seed)) as sim:
            cfg = write_config(tmp_path, sim.port, rate=rate, window=WINDOW, binds=BINDS, horizon=5.0)
            job_id = None
            while True:
                async with gateway(cfg, env=ENV) as gw, client(gw.url) as c:
                    if job_id is None:
                        r = await c.post("/v1/jobs", json=job)
                        assert r.status_code == 202, r.text
                        job_id = r.json()["id"]
                        assert r.json()["accepted"] == size
                    if done_kills == kills:
                        await wait_final(c, job_id, size, timeout=timeout)
                        final = await job_counts(c, job_id)
                        break
                    await anyio.sleep(rng.uniform(0.4, 1.5))  # a seeded moment mid-job
                    before = await job_counts(c, job_id)
                    assert sum(n for s, n in before.items() if s in FINAL) < size, "job ended before the kill"
                    await gw.kill()
                    done_kills += 1
            counters = await sim.counters()
    return {"final": final, "sim": counters, "kills": done_kills}


def check(result: dict, size: int, rate: float) -> int:
    counts, kills = result["final"], result["kills"]
    assert sum(counts.values()) == size, counts  # none lost, none counted twice
    assert set(counts) <= FINAL, counts  # every one in exactly one final state
    accepted = result["sim"]["accepted"]
    duplicates = accepted - size
    bound = kills * BINDS * WINDOW
    print(f"crash run: size={size} kills={kills} carrier_accepted={accepted} duplicates={duplicates} "
          f"bound={bound} final={counts}")  # fmt: skip
    assert accepted >= size  # every message reached the carrier at least once
    assert 0 <= duplicates <= bound, (duplicates, bound)
    # Receipts are answered only once written: a kill loses none, so none ends "unknown".
    assert counts.get("unknown", 0) == 0, counts
    return duplicates


async def test_kill_9_mid_job_loses_nothing(tmp_path) -> None:
    size, rate = 8000, 1000.0
    result = await crash_run(tmp_path, size=size, kills=3, rate=rate, seed=20240601, timeout=90.0)
    check(result, size, rate)


@pytest.mark.slow
async def test_ten_kills_during_a_100k_job(tmp_path) -> None:
    size, rate = 100_000, 5000.0
    result = await crash_run(tmp_path, size=size, kills=10, rate=rate, seed=7, timeout=600.0)
    check(result, size, rate)
