"""schemathesis against the campaigns API's OpenAPI, on a running `sluice campaigns serve` child (real
HTTP on loopback): no request it generates may answer 5xx. Slow (`make test-slow`)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from gateway.testing.processes import start

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.slow
async def test_campaigns_api_never_answers_5xx(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[campaigns]\nstore_url = "sqlite:///{tmp_path / "c.db"}"\nport = 0\n'
                   '[[campaigns.tenants]]\nname = "acme"\nkey_env = "CK"\n')
    cmd = [sys.executable, "-m", "campaigns.cli", "campaigns", "serve", "--config", str(cfg)]
    # `campaigns serve` announces {"campaigns": PORT}; `start` waits for {"listening": ...}: wrap it.
    wrapper = [sys.executable, "-c", (
        "import json,subprocess,sys\n"
        f"p=subprocess.Popen({cmd!r},stdout=subprocess.PIPE,text=True)\n"
        "line=json.loads(p.stdout.readline()); print(json.dumps({'listening': line['campaigns']}), flush=True)\n"
        "import signal\nsignal.signal(signal.SIGTERM, lambda *a: (p.terminate(), p.wait(), sys.exit(0)))\n"
        "p.wait()\n")]
    async with start(wrapper, name="campaigns", env={"CK": "st-key"}) as child:
        st = [sys.executable, "-m", "schemathesis.cli", "run", f"{child.url}/schema/openapi.json",
              "-H", "Authorization: Bearer st-key", "--generation-with-security-parameters", "false",
              "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "20261206",
              "--generation-database", "none", "--no-color", "--workers", "1", "--phases", "examples,fuzzing"]  # fmt: skip
        with anyio.fail_after(300):
            done = await anyio.run_process(st, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stdout.decode(errors="replace")[-6000:]
        assert child.proc.returncode is None
