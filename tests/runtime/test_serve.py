"""`sluice serve` as users run it: a child process on loopback, an SMSC simulator child behind it,
a job in over HTTP, every message delivered and its state readable over HTTP."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import ENV, wait_final, write_config
from gateway.testing.serving import client as client_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_a_job_goes_through_serve_and_the_simulator(tmp_path, backend) -> None:
    """The whole service on either event loop: uvicorn+uvloop, or Hypercorn on trio."""
    async with simulator("--dlr-delay", "0.05") as sim:
        async with gateway(write_config(tmp_path, sim.port), env=ENV, backend=backend) as gw:
            async with client_for(gw.url) as client:
                assert (await client.get("/healthz")).status_code == 200
                job = {"from": "Shop", "category": "transactional", "template": "Hi {name}, order {n} shipped",
                       "recipients": [{"to": "+4479111%05d" % i, "vars": {"name": "Ann", "n": str(i)}}
                                      for i in range(500)]}  # fmt: skip
                r = await client.post("/v1/jobs", json=job)
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                counts = await wait_final(client, job_id, 500)
                assert counts == {"delivered": 500}
                page = (await client.get(f"/v1/jobs/{job_id}/messages", params={"limit": 1})).json()
                msg = (await client.get(f"/v1/messages/{page['messages'][0]['id']}")).json()
                assert msg["state"] == "delivered" and msg["carrier"] == "alpha" and msg["carrier_ids"]
                assert [h["state"] for h in msg["history"]][-2:] == ["submitted", "delivered"]
            async with client_for(gw.url, "ops") as ops:  # queues and links: the operator's view
                carriers = (await ops.get("/v1/carriers")).json()
                assert carriers["alpha"]["link"]["bound"] == 2
                links = carriers["alpha"]["link"]["links"]  # per bind
                assert [(x["index"], x["mode"], x["up"]) for x in links] == [(0, "transceiver", True),
                                                                              (1, "transceiver", True)]
                assert {"rate", "tokens", "throttles"} <= set(carriers["alpha"]["bucket"])
                metrics = {(x.name, tuple(sorted(x.labels.items()))): x.value
                           for f in text_string_to_metric_families((await ops.get("/metrics")).text)
                           for x in f.samples}  # fmt: skip
                assert metrics[("sluice_receipt_latency_seconds_count", ())] == 500
                assert metrics[("sluice_messages_total", (("event", "submitted"),))] == 500
                assert metrics[("sluice_binds_up", (("carrier", "alpha"),))] == 2
                assert sum(v for (name, _), v in metrics.items() if name == "sluice_queue_depth") == 0
        counters = await sim.counters()
    assert counters["accepted"] == 500 and counters["receipts_acked"] == 500
