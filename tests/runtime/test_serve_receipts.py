"""Receipts as carriers shape them, through the whole service: `sluice serve` in front of the
SMSC simulator child playing variants of the receipt corpus (tests/data/receipt_corpus.toml)
over SMPP. Each message's state, history and carrier error code are read over HTTP, and the
receipt counters from /metrics."""

from __future__ import annotations

import json

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from carriers.smpp.simulator import ReceiptVariant
from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import ENV, job_counts, write_config
from gateway.testing.serving import client as client_for
from tests.smpp.test_receipt_corpus import load


CASES = load()  # the corpus as tests/smpp/test_receipt_corpus.py reads it

pytestmark = pytest.mark.anyio

# Decimal submit ids and the default id settings: what the simulator and `serve` run with here.
PLAYED = [c for c in CASES if (c.submit_id, c.id_format, c.formats, c.legacy) == ("{dec}", "dec", None, None)]
# And two messages told more than once: intermediate then final, final then a late intermediate.
SEQUENCES = [("ENROUTE", "UNDELIV"), ("DELIVRD", "ACCEPTD")]


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


def _script() -> list[list[dict]]:
    def enc(v: ReceiptVariant) -> dict:
        return {f: getattr(v, f) for f in v.__struct_fields__}

    script = [[enc(c.variant())] for c in PLAYED]
    script += [[enc(ReceiptVariant(text=f"id:{{dec}} stat:{w} err:{'007' if w == 'UNDELIV' else '000'}"))
                for w in steps] for steps in SEQUENCES]  # fmt: skip
    return script


async def test_receipt_variants_through_serve(tmp_path) -> None:
    script = tmp_path / "receipts.json"
    script.write_text(json.dumps(_script()))
    total = len(PLAYED) + len(SEQUENCES)
    expected: dict[str, int] = {}
    for c in PLAYED:
        expected[c.expect] = expected.get(c.expect, 0) + 1
    expected["undelivered"] = expected.get("undelivered", 0) + 1
    expected["delivered"] = expected.get("delivered", 0) + 1
    async with simulator("--dlr-delay", "0.05", "--receipt-script", str(script)) as sim:
        async with gateway(write_config(tmp_path, sim.port, binds=1), env=ENV) as gw:
            async with client_for(gw.url) as client:
                job = {"from": "Shop", "category": "transactional", "template": "Your code is 1234",
                       "recipients": [{"to": "+4479111%05d" % i} for i in range(total)]}  # fmt: skip
                r = await client.post("/v1/jobs", json=job)
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                counts: dict[str, int] = {}
                with anyio.move_on_after(30):
                    while (counts := await job_counts(client, job_id)) != expected:
                        await anyio.sleep(0.05)
                assert counts == expected
                with anyio.fail_after(30):  # the unparsable ones are answered too, and the late intermediate came
                    while (await sim.counters())["receipts_acked"] < len(PLAYED) + 4:
                        await anyio.sleep(0.05)
                page = (await client.get(f"/v1/jobs/{job_id}/messages", params={"limit": 1000})).json()
                by_n = {}
                for m in page["messages"]:
                    msg = (await client.get(f"/v1/messages/{m['id']}")).json()
                    by_n[int(msg["carrier_ids"][0])] = msg
                for k, c in enumerate(PLAYED, start=1):  # the simulator numbers submits from 1
                    msg = by_n[k]
                    assert (msg["state"], msg["error_code"]) == (c.expect, c.error_code), c.name
                    states = [h["state"] for h in msg["history"]]
                    assert states[-1] == c.expect and "submitted" in states, c.name
                    if c.expect == "accepted":
                        assert msg["history"][-1]["reason"].startswith("receipt "), c.name
                first, second = by_n[len(PLAYED) + 1], by_n[len(PLAYED) + 2]
                assert [h["state"] for h in first["history"]][-3:] == ["submitted", "accepted", "undelivered"]
                assert first["error_code"] == 7 and first["history"][-1]["error_code"] == 7
                assert [h["state"] for h in second["history"]][-2:] == ["submitted", "delivered"]  # not backwards
                async with client_for(gw.url, "ops") as ops:  # /metrics is the operator's
                    text = (await ops.get("/metrics")).text
                metrics = {(x.name, tuple(sorted(x.labels.items()))): x.value
                           for f in text_string_to_metric_families(text) for x in f.samples}  # fmt: skip

                def receipts(outcome: str) -> float:
                    return metrics[("sluice_receipts_total", (("carrier", "alpha"), ("outcome", outcome)))]

                assert receipts("unparsable") == sum(c.parsed == "unparsable" for c in PLAYED)
                assert receipts("intermediate") == sum(c.expect == "accepted" for c in PLAYED) + 1
                assert receipts("matched") == sum(c.expect not in ("accepted", "submitted") for c in PLAYED) + 2
                assert receipts("duplicate") == 1  # the late ACCEPTD
                assert receipts("stateless") == sum(c.parsed == "none" for c in PLAYED)
