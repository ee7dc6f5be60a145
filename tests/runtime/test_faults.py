"""Carrier faults through the whole service: ``sluice serve`` as a child process in front of an
SMSC simulator child that misbehaves (binds dropped every N PDUs, throttling storms, silence,
receipts lost or duplicated, the carrier dead for a while). Whatever the carrier does, every
message of the job ends in exactly one final state, none is lost, the duplicates the carrier saw
stay within what can be in flight, and the gateway's memory stays bounded (its peak RSS, VmHWM
from /proc/<pid>/status of our own child).

The child is observed only through its API (a short bounded poll) and the simulator's counters.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import ENV, FINAL, client, job_counts, wait_final, write_config


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    """Child processes observed over HTTP: asyncio+uvloop is enough here."""
    return ("asyncio", {"use_uvloop": True})


pytestmark = pytest.mark.anyio

BINDS, WINDOW = 2, 20
# A link that notices faults quickly: short response timeout and keep-alive, a reconnect backoff
# capped at 1 s (so a carrier that comes back is used within about a second), and the queue given
# back to the core after 1 s without any bind.
FAST_LINK = """response_timeout = 0.5
enquire_link_interval = 0.5
reconnect_initial = 0.05
reconnect_max = 1.0
carrier_down_after = 1.0
tick_interval = 0.1
"""
# Peak resident memory of the gateway child: ~160 MB here for these jobs, most of it the
# interpreter and its imports; anything that grew with retries, reconnects or duplicate
# receipts would blow through this.
RSS_BOUND_KB = 256 * 1024


def job(size: int) -> dict:
    return {"from": "Shop", "category": "transactional", "template": "Code {n}",
            "recipients": [{"to": "+4479%08d" % i, "vars": {"n": str(i)}} for i in range(size)]}  # fmt: skip


def check_job(counts: dict[str, int], size: int) -> None:
    assert sum(counts.values()) == size, counts  # none lost, none counted twice
    assert set(counts) <= FINAL, counts  # each in exactly one final state


async def wait_progress(c, job_id: str, n: int, timeout: float = 20.0) -> dict[str, int]:
    """Bounded poll of the child's counts until at least ``n`` messages are past the queue."""
    with anyio.fail_after(timeout):
        while True:
            counts = await job_counts(c, job_id)
            if sum(v for s, v in counts.items() if s != "queued") >= n:
                return counts
            await anyio.sleep(0.05)


SCENARIOS = {
    # Binds dropped every 150 PDUs, 0.1 s of 0x58 every 0.5 s, every receipt sent twice. The
    # storms are timed from the simulator's start and the job takes ~1 s: a storm every 0.5 s
    # falls inside it wherever it starts (one every 1.5 s missed a fast enough job).
    "drops+throttling+duplicate_receipts": (
        ["--drop-after", "150", "--throttle-burst", "0.5:0.1", "--duplicate-receipts", "--dlr-delay", "0.05"],
        10.0,
    ),
    # The SMSC goes silent after 300 PDUs on each connection and never sends a receipt: every
    # message is still submitted (timeouts requeue, dead links are dropped and bound again) and
    # ends ``unknown`` once the receipt horizon passes.
    "silence+no_receipts": (["--mute-after", "300", "--receipts", "none"], 1.0),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_carrier_faults_end_every_message_once(tmp_path, scenario: str) -> None:
    sim_args, horizon = SCENARIOS[scenario]
    size, rate = 800, 1000.0
    with anyio.fail_after(60):
        async with simulator("--seed", "3", *sim_args) as sim:
            cfg = write_config(tmp_path, sim.port, rate=rate, window=WINDOW, binds=BINDS, horizon=horizon,
                               smpp_extra=FAST_LINK)  # fmt: skip
            async with gateway(cfg, env=ENV) as gw, client(gw.url) as c:
                r = await c.post("/v1/jobs", json=job(size))
                assert r.status_code == 202, r.text
                counts = await wait_final(c, r.json()["id"], size, timeout=45.0)
                mem = gw.memory_kb()
                sim_counts = await sim.counters()
    check_job(counts, size)
    duplicates = sim_counts["accepted"] - size
    print(f"carrier faults {scenario}: size={size} final={counts} carrier={sim_counts} "
          f"duplicates={duplicates} rss_kb={mem}")  # fmt: skip
    assert mem["VmHWM"] < RSS_BOUND_KB, mem
    if scenario == "silence+no_receipts":
        assert counts == {"unknown": size}  # submitted, never receipted: unknown, not lost
        assert sim_counts["receipts_sent"] == 0
    else:
        assert counts == {"delivered": size}  # duplicate receipts never end a message twice
        assert sim_counts["dropped_connections"] >= 3 and sim_counts["throttled"] > 0, sim_counts
        # A drop re-sends what was on the wire without a response: at most a window per bind per drop.
        assert 0 <= duplicates <= sim_counts["dropped_connections"] * WINDOW, (duplicates, sim_counts)


async def carrier_dead(tmp_path, *, outage: float, size: int, rate: float) -> dict:
    """Stop the simulator (our child) mid-job, leave the port dead for ``outage`` seconds, then
    start a new simulator on the same port. The receipts the first one still owed are gone with
    it: those messages end ``unknown`` at the (short) horizon; everything else is delivered."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(simulator("--dlr-delay", "0.05", "--seed", "5"))
        port = first.port
        cfg = write_config(tmp_path, port, rate=rate, window=WINDOW, binds=BINDS, horizon=3.0, smpp_extra=FAST_LINK)
        gw = await stack.enter_async_context(gateway(cfg, env=ENV))
        c = await stack.enter_async_context(client(gw.url))
        r = await c.post("/v1/jobs", json=job(size))
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        await wait_progress(c, job_id, size // 10)
        before = await first.stop()  # SIGTERM to our own simulator child: the carrier is gone
        assert before is not None
        mem_at_outage = gw.memory_kb()
        await anyio.sleep(outage)  # a fixed outage, not a wait for anything in-process
        during = await job_counts(c, job_id)
        assert sum(n for s, n in during.items() if s in FINAL) < size, during  # the outage was real
        assert gw.proc.returncode is None
        async with simulator("--port", str(port), "--dlr-delay", "0.05", "--seed", "6") as second:
            counts = await wait_final(c, job_id, size, timeout=outage + 40.0)
            after = await second.counters()
        mem = gw.memory_kb()
    return {"final": counts, "first": before, "second": after, "mem_at_outage": mem_at_outage, "mem": mem}


def check_dead(result: dict, size: int, rate: float, outage: float) -> None:
    counts = result["final"]
    check_job(counts, size)
    accepted = result["first"]["accepted"] + result["second"]["accepted"]
    duplicates = accepted - size
    print(f"carrier dead {outage:.0f}s: size={size} final={counts} accepted={accepted} duplicates={duplicates} "
          f"rss_kb_at_outage={result['mem_at_outage']} rss_kb_end={result['mem']}")  # fmt: skip
    assert accepted >= size - counts.get("unknown", 0)
    assert 0 <= duplicates <= BINDS * WINDOW, duplicates  # only what was on the wire when it died
    # Receipts owed by the dead simulator: those of the last dlr_delay (+ slack) of its traffic.
    assert counts.get("unknown", 0) <= int(rate * 0.5), counts
    assert set(counts) <= {"delivered", "unknown"}, counts
    assert result["mem"]["VmHWM"] < RSS_BOUND_KB, result["mem"]


async def test_carrier_dead_for_seconds_then_back_on_the_same_port(tmp_path) -> None:
    size, rate, outage = 1500, 1000.0, 2.0
    with anyio.fail_after(75):
        result = await carrier_dead(tmp_path, outage=outage, size=size, rate=rate)
    check_dead(result, size, rate, outage)


@pytest.mark.slow
async def test_carrier_dead_for_a_minute(tmp_path) -> None:
    size, rate, outage = 20_000, 1000.0, 60.0
    with anyio.fail_after(180):
        result = await carrier_dead(tmp_path, outage=outage, size=size, rate=rate)
    check_dead(result, size, rate, outage)
