"""No secret leaves ``sluice serve``: run it (a child process) with known API keys, a webhook
signing secret and an SMPP password, all from the environment; bind to a simulator that checks
the password; fail authentication every way we can think of; make webhooks fail; then look for
each secret (and each key's SHA-256) in every error body and in the whole stderr log."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from gateway.testing.processes import gateway, simulator
from gateway.testing.serving import ENV, KEYS, client, wait_final, write_config


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    """Child processes observed over HTTP: asyncio+uvloop is enough here."""
    return ("asyncio", {"use_uvloop": True})


pytestmark = pytest.mark.anyio

HOOK_SECRET = "whsec-test-5b1e9c0f7a2d"
SMPP_PASSWORD = "pw7c3d9x"  # SMPP 3.4 passwords are at most 8 octets


async def test_no_secret_in_logs_or_error_bodies(tmp_path) -> None:
    env = {**ENV, "SLUICE_HOOK_ACME": HOOK_SECRET, "SLUICE_SMPP_PW": SMPP_PASSWORD}
    log_path = tmp_path / "serve.stderr"
    bodies: list[str] = []
    async with simulator("--dlr-delay", "0.01", "--system-id", "sluice", "--password", SMPP_PASSWORD) as sim:
        cfg = write_config(tmp_path, sim.port, smpp_extra='system_id = "sluice"\npassword_env = "SLUICE_SMPP_PW"\n')
        text = open(cfg).read().replace('key_env = "SLUICE_KEY_ACME"',
                                         'key_env = "SLUICE_KEY_ACME"\nwebhook_secret_env = "SLUICE_HOOK_ACME"')  # fmt: skip
        open(cfg, "w").write(text)
        assert all(s not in text for s in (*KEYS.values(), HOOK_SECRET, SMPP_PASSWORD))  # names, not values
        with open(log_path, "wb") as log:
            async with gateway(cfg, env=env, stderr=log) as gw, client(gw.url) as acme, \
                    httpx.AsyncClient(base_url=gw.url) as anon:  # fmt: skip
                key = KEYS["acme"]
                attempts = [
                    {"authorization": f"Bearer {key}x"},  # one character off
                    {"authorization": f"Bearer {key[:-1]}"},
                    {"authorization": f"Basic {key}"},
                    {"authorization": key},
                    {"x-api-key": key},
                    {"authorization": f"Bearer {KEYS['beta'][::-1]}"},
                ]
                for headers in attempts:
                    for method, path in (("GET", "/v1/suppressions"), ("POST", "/v1/messages"), ("GET", "/v1/jobs/x")):
                        r = await anon.request(method, path, headers=headers, json={"to": key})
                        assert r.status_code == 401, r.text
                        bodies.append(r.text)
                r = await anon.get("/v1/suppressions", params={"api_key": key})
                bodies.append(r.text)
                # Carrier binds with the password; webhooks that fail (nothing listens on port 9).
                job = {"from": "Shop", "category": "transactional", "template": "Hi {n}",
                       "callback_url": "http://127.0.0.1:9/hook",
                       "recipients": [{"to": "+4479111%05d" % i, "vars": {"n": str(i)}} for i in range(5)]}  # fmt: skip
                r = await acme.post("/v1/jobs", json=job)
                assert r.status_code == 202, r.text
                assert await wait_final(acme, r.json()["id"], 5) == {"delivered": 5}  # the bind worked
                bodies.append((await acme.get(f"/v1/jobs/{r.json()['id']}")).text)
                bodies.append((await acme.get("/v1/carriers")).text)
                bodies.append((await anon.get("/metrics")).text)
        assert (await sim.counters())["bind_failures"] == 0
    log_text = log_path.read_text(errors="replace")
    assert "serve.listening" in log_text and "bind.up" in log_text  # the log was captured
    secrets = [*KEYS.values(), HOOK_SECRET, SMPP_PASSWORD, *(hashlib.sha256(k.encode()).hexdigest() for k in KEYS.values())]
    for secret in secrets:
        assert secret not in log_text, f"a secret is in the log: {secret[:4]}..."
        for body in bodies:
            assert secret not in body, f"a secret is in an error body: {secret[:4]}..."
