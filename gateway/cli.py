"""`sluice ...`: the command line. Thin: parse options, call into the library, print."""

from __future__ import annotations

import sys

import click

from gateway.config import load
from gateway.errors import ConfigError


@click.group()
@click.version_option(package_name="sluice")
def main() -> None:
    """Sluice: a high-throughput SMS send gateway."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file; errors name the key."""
    try:
        cfg = load(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{path}: ok ({len(cfg.core.carriers)} carriers, {len(cfg.core.routes)} routes)")


@main.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: the embedded config/sluice.toml).")
@click.option("--port", type=int, default=None, help="HTTP port (overrides api.port; 0 picks a free one).")
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio", show_default=True,
              help="Event loop: asyncio with uvloop (HTTP by uvicorn), or trio (HTTP by Hypercorn).")
def serve(config_path: str | None, port: int | None, backend: str) -> None:
    """Run the gateway: HTTP API, dispatcher and carrier connectors, until SIGTERM.

    When it is ready it prints one JSON line on stdout, {"listening": PORT}."""
    import json
    import logging

    import anyio
    import msgspec

    from gateway.config import default_text, loads
    from gateway.runtime.app import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        cfg = load(config_path) if config_path else loads(default_text())
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if port is not None:
        cfg = msgspec.structs.replace(cfg, api=msgspec.structs.replace(cfg.api, port=port))

    def ready(bound: int) -> None:
        print(json.dumps({"listening": bound}), flush=True)

    options = {"use_uvloop": True} if backend == "asyncio" else {}
    anyio.run(lambda: run(cfg, on_ready=ready), backend=backend, backend_options=options)


@main.command("demo")
@click.option("--recipients", default=20_000, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
def demo(recipients: int, config_path: str | None) -> None:
    """Run the delivery core on virtual time over a realistic job and summarise what it decided."""
    from gateway.demo import run_demo

    run_demo(recipients, config_path)


@main.group()
def bench() -> None:
    """Benchmarks (not tests): print a table, optionally write JSON."""


@main.group()
def sim() -> None:
    """Carrier simulators for tests and benchmarks."""


def _register() -> None:
    from bench.core import bench_core

    bench.add_command(bench_core)
    for module, group, attr in _OPTIONAL:
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError:
            continue
        group.add_command(getattr(mod, attr))


_OPTIONAL = [
    ("bench.smpp", bench, "bench_smpp"),
    ("carriers.smpp.simulator", sim, "sim_smsc"),
    ("carriers.http.simulator", sim, "sim_http"),
]

_register()


if __name__ == "__main__":
    main()
