"""schemathesis against ``/openapi.json`` of a running ``sluice serve`` (real HTTP on loopback):
generated valid and invalid requests to every operation; no response may be a 5xx, and every
response must match the document (status codes, content type, body schema, headers, 405 with
Allow). Run as schemathesis's own CLI in a child process, so its Hypothesis settings and
reporting are exactly what a user running ``st run`` would get.

One check is left out: ``positive_data_acceptance`` (a schema-valid request must be accepted).
The document cannot say everything the API checks: that a number is in use in its country's
numbering plan, or that a JSON job has at least one recipient (its recipients may instead come
as NDJSON lines). Those get a 422 naming the field, which the document declares.
"""

from __future__ import annotations

import json
import sys

import anyio
import pytest

from gateway.testing.serving import KEYS, open_served


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    """Child processes observed over HTTP: asyncio+uvloop is enough here."""
    return ("asyncio", {"use_uvloop": True})

pytestmark = pytest.mark.anyio


async def schemathesis_run(tmp_path, examples: int, timeout: float) -> dict:
    """``st run`` with ``examples`` per operation and phase; returns its JSON report."""
    async with open_served(tmp_path, "--dlr-delay", "0.01", rps=1e6, burst=1_000_000) as (_, gw):
        report = tmp_path / "schemathesis.json"
        cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{gw.url}/openapi.json",
               "-H", f"Authorization: Bearer {KEYS['acme']}", "--generation-with-security-parameters", "false",
               "--checks", "all", "--exclude-checks", "positive_data_acceptance",
               "--max-examples", str(examples), "--seed", "20240601",
               "--generation-database", "none", "--no-color", "--workers", "1",
               "--report", "json", "--report-json-path", str(report)]  # fmt: skip
        with anyio.fail_after(timeout):
            done = await anyio.run_process(cmd, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stdout.decode(errors="replace")[-8000:]
        assert gw.proc.returncode is None  # the server is still up
    result = json.loads(report.read_text())
    assert result["failures"] == [] and result["errors"] == [], result["failures"]
    print(f"schemathesis: {result['test_cases']['generated']} cases in {result['running_time']:.1f} s")
    return result


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path) -> None:
    # 30 per operation and phase keeps make test's budget (80 took ~100 s on a loaded host); the slow
    # run below generates ten thousand and more.
    result = await schemathesis_run(tmp_path, examples=30, timeout=240)
    assert result["test_cases"]["generated"] >= 1000


@pytest.mark.slow
async def test_schemathesis_long_run(tmp_path) -> None:
    result = await schemathesis_run(tmp_path, examples=1000, timeout=1200)
    assert result["test_cases"]["generated"] >= 10_000
