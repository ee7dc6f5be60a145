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

__all__ = ["BETA_CALLBACKS", "ENV", "FINAL", "KEYS", "LOOPBACK_HOOKS", "OPERATOR_KEY", "client", "config_file", "job_counts",
           "open_served", "operator", "shop_config", "tenant", "wait_final", "write_config"]

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


def tenant(name: str, key_env: str, *, senders: tuple[str, ...] = (), rps: float | None = None,
           burst: int | None = None, extra: str = "") -> str:  # fmt: skip
    """One ``[[api.tenants]]`` table; ``extra``: its own sub-tables (e.g. ``[api.tenants.keywords]``)."""
    lines = [f'[[api.tenants]]\nname = "{name}"\nkey_env = "{key_env}"\n']
    if senders:
        lines.append("senders = [" + ", ".join(f'"{s}"' for s in senders) + "]\n")
    if rps is not None:
        lines.append(f"requests_per_second = {rps}\nburst = {burst if burst is not None else int(rps)}\n")
    return "".join(lines) + extra


def operator(name: str, key_env: str) -> str:
    """One ``[[api.operators]]`` table (reads /metrics and the full /v1/carriers)."""
    return f'[[api.operators]]\nname = "{name}"\nkey_env = "{key_env}"\n'


def config_file(tmp_path: Path, *, api: str, body: str, api_options: str = "") -> str:
    """Write ``tmp_path/sluice.toml``: ``[api]`` on loopback (``api_options``: more keys of it),
    then ``api`` (tenant and operator tables: ``tenant``, ``operator``), the SQLite store beside
    it, then ``body`` (carriers, routes, webhooks ...). Returns the path."""
    path = tmp_path / "sluice.toml"
    path.write_text(f"""
[api]
host = "127.0.0.1"
{api_options}
{api}
[store]
url = "sqlite:///{(tmp_path / 'sluice.db').as_posix()}"
synchronous = "NORMAL"
{body}""")
    return str(path)


def write_config(tmp_path: Path, sim_port: int, *, rate: float = 2000.0, window: int = 50, binds: int = 2,
                 horizon: float = 72 * 3600.0, rps: float = 1000.0, burst: int = 1000,
                 max_body: int = 64 * 1024 * 1024, api_extra: str = "", smpp_extra: str = "",
                 webhooks: str = LOOPBACK_HOOKS) -> str:  # fmt: skip
    """Two tenants (acme, beta) and an operator (ops), the store in tmp_path, carrier "alpha" at
    the simulator. ``api_extra`` / ``smpp_extra``: more TOML lines for ``[api]`` / the
    ``[[carriers.smpp]]`` link; ``webhooks``: the ``[webhooks]`` table (loopback receivers allowed)."""
    tenants = "".join(tenant(name, f"SLUICE_KEY_{name.upper()}", rps=rps, burst=burst) for name in KEYS)
    return config_file(tmp_path, api_options=f"max_body_bytes = {max_body}\n{api_extra}",
                       api=tenants + operator("ops", "SLUICE_KEY_OPS") + "\n" + webhooks, body=f"""
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


#: Carrier "beta" over HTTP, never sent to (routes go elsewhere): only its inbound/receipt
#: callbacks are used, signed with the secret in ``BETA_CB``.
BETA_CALLBACKS = ('[[carriers.http]]\nname = "beta"\nurl = "http://127.0.0.1:9/never-sent-to"\n'
                  'callback_secret_env = "BETA_CB"\n')  # fmt: skip


def shop_config(tmp_path: Path, sim_port: int, *, sender: str, rps: float | None = None,
                http_carrier: bool = False, beta_extra: str = "", tenant_extra: str = "",
                extra: str = "") -> str:  # fmt: skip
    """One shop (tenant "acme", key in ``SLUICE_KEY``, sending as ``sender``), the store in
    tmp_path, carrier "alpha" at the SMSC simulator; ``http_carrier`` adds carrier "beta"
    (``BETA_CALLBACKS``; ``beta_extra``: more keys of its ``[[core.carriers]]`` table);
    ``tenant_extra``: the tenant's sub-tables; ``extra``: more TOML (e.g. a ``[campaigns]`` table)."""
    beta = (f'[[core.carriers]]\nname = "beta"\n{beta_extra}', BETA_CALLBACKS) if http_carrier else ("", "")
    return config_file(tmp_path, api=tenant("acme", "SLUICE_KEY", senders=(sender,), rps=rps, extra=tenant_extra),
                       body=f"""[[core.carriers]]
name = "alpha"
{beta[0]}[[core.routes]]
prefix = ""
carriers = ["alpha"]
[[carriers.smpp]]
name = "alpha"
port = {sim_port}
{beta[1]}{extra}""")


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
