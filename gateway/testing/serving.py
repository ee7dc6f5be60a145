"""Helpers for tests and benchmarks that run ``sluice serve`` as a child process (see
``processes``): a config file (tenant keys from the environment, an SQLite store beside it, one
SMPP carrier pointing at a simulator child), API clients, and a bounded poll of a job's counts
over HTTP (the child is observed through its API; nothing in-process is waited on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from gateway.testing.processes import Child, gateway, simulator

__all__ = ["ENV", "FINAL", "KEYS", "LOOPBACK_HOOKS", "OPERATOR_KEY", "client", "job_counts", "open_served", "wait_final", "write_config"]

#: The states a message never leaves (gateway.store.base.FINAL, as the API names them).
FINAL = frozenset({"delivered", "undelivered", "expired", "rejected", "failed", "unknown", "capped",
                   "suppressed", "canceled"})  # fmt: skip

#: Test-only API keys, handed to the child in its environment (never in the config file).
KEYS = {"acme": "acme-serve-key-0123456789", "beta": "beta-serve-key-9876543210"}
#: The operator's key (``api.operators``): /metrics and the full /v1/carriers. ``client(url, "ops")``.
OPERATOR_KEY = "ops-serve-key-5647382910"
ENV = {"SLUICE_KEY_ACME": KEYS["acme"], "SLUICE_KEY_BETA": KEYS["beta"], "SLUICE_KEY_OPS": OPERATOR_KEY}
#: Webhook receivers in tests listen on loopback: open it (webhooks.allow_private).
LOOPBACK_HOOKS = '[webhooks]\nallow_private = ["127.0.0.0/8", "::1/128"]\n'


def write_config(tmp_path: Path, sim_port: int, *, rate: float = 2000.0, window: int = 50, binds: int = 2,
                 horizon: float = 72 * 3600.0, rps: float = 1000.0, burst: int = 1000,
                 max_body: int = 64 * 1024 * 1024, api_extra: str = "", smpp_extra: str = "",
                 webhooks: str = LOOPBACK_HOOKS) -> str:  # fmt: skip
    """Two tenants (acme, beta) and an operator (ops), the store in tmp_path, carrier "alpha" at
    the simulator. ``api_extra`` / ``smpp_extra``: more TOML lines for ``[api]`` / the
    ``[[carriers.smpp]]`` link; ``webhooks``: the ``[webhooks]`` table (loopback receivers allowed)."""
    path = tmp_path / "sluice.toml"
    tenants = "".join(
        f'\n[[api.tenants]]\nname = "{name}"\nkey_env = "SLUICE_KEY_{name.upper()}"\n'
        f"requests_per_second = {rps}\nburst = {burst}\n"
        for name in KEYS
    )
    path.write_text(f"""
[api]
host = "127.0.0.1"
max_body_bytes = {max_body}
{api_extra}
{tenants}
[[api.operators]]
name = "ops"
key_env = "SLUICE_KEY_OPS"

{webhooks}
[store]
url = "sqlite:///{tmp_path / 'sluice.db'}"
synchronous = "NORMAL"

[[core.carriers]]
name = "alpha"
rate = {rate}
burst = 200

[[core.routes]]
prefix = ""
carriers = ["alpha"]

[[carriers.smpp]]
name = "alpha"
port = {sim_port}
window = {window}
binds = {binds}
receipt_horizon_s = {horizon}
{smpp_extra}
""")
    return str(path)



def shop_config(tmp_path: Path, sim_port: int, *, sender: str, rps: float | None = None,
                http_carrier: bool = False, extra: str = "") -> str:  # fmt: skip
    """One shop (tenant "acme", key in ``SLUICE_KEY``, sending as ``sender``), the store in
    tmp_path, carrier "alpha" at the SMSC simulator; ``http_carrier`` adds carrier "beta" (HTTP,
    never sent to: routes go to alpha) whose inbound callbacks are signed with ``BETA_CB``;
    ``extra``: more TOML (e.g. a ``[campaigns]`` table)."""
    path = tmp_path / "sluice.toml"
    limits = f"requests_per_second = {rps}\nburst = {int(rps)}\n" if rps is not None else ""
    beta = ('[[core.carriers]]\nname = "beta"\n', '[[carriers.http]]\nname = "beta"\n'
            'url = "http://127.0.0.1:9/never-sent-to"\ncallback_secret_env = "BETA_CB"\n') if http_carrier else ("", "")
    path.write_text(f"""
[api]
host = "127.0.0.1"
[[api.tenants]]
name = "acme"
key_env = "SLUICE_KEY"
senders = ["{sender}"]
{limits}[store]
url = "sqlite:///{tmp_path / 'sluice.db'}"
synchronous = "NORMAL"
[[core.carriers]]
name = "alpha"
{beta[0]}[[core.routes]]
prefix = ""
carriers = ["alpha"]
[[carriers.smpp]]
name = "alpha"
port = {sim_port}
{beta[1]}{extra}""")
    return str(path)

def client(url: str, tenant: str = "acme") -> httpx.AsyncClient:
    """A tenant's client (``"ops"``: the operator's)."""
    key = OPERATOR_KEY if tenant == "ops" else KEYS[tenant]
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30.0)


async def job_counts(c: httpx.AsyncClient, job_id: str) -> dict[str, int]:
    r = await c.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()["counts"]


async def wait_final(c: httpx.AsyncClient, job_id: str, total: int, timeout: float = 60.0) -> dict[str, int]:
    """Polls a child process's job counts (bounded) until every message is final."""
    with anyio.fail_after(timeout):
        while True:
            counts = await job_counts(c, job_id)
            if sum(n for s, n in counts.items() if s in FINAL) >= total:
                return counts
            await anyio.sleep(0.05)


@asynccontextmanager
async def open_served(tmp_path: Path, *sim_args: str, backend: str = "asyncio",
                      **config: Any) -> AsyncIterator[tuple[Child, Child]]:  # fmt: skip
    """A simulator child and a ``sluice serve --backend BACKEND`` child in front of it: yields
    (simulator, gateway)."""
    async with simulator(*sim_args) as sim:
        async with gateway(write_config(tmp_path, sim.port, **config), env=ENV, backend=backend) as gw:
            yield sim, gw
