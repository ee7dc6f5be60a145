"""`sluice ...`: the command line. Thin: parse options, call into the library, print."""

from __future__ import annotations

import os
import sys

import click

from gateway.config import load, missing_environment
from gateway.errors import ConfigError, startup_error


@click.group()
@click.version_option(package_name="sluice")
def main() -> None:
    """Sluice: a high-throughput SMS send gateway."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--skip-env", is_flag=True,
              help="Do not check the environment variables the *_env keys name (on a machine without the secrets).")
def check_config(path: str, skip_env: bool) -> None:
    """Validate a config file, and that every variable its *_env keys name is set; errors name
    the key (and the variable)."""
    try:
        cfg = load(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not skip_env and (missing := missing_environment(cfg, os.environ)):  # what serve needs from it
        for exc in missing:
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
        if missing := missing_environment(cfg, os.environ):
            raise missing[0]
    except ConfigError as exc:  # one line, no traceback: the user's to fix
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if port is not None:
        cfg = msgspec.structs.replace(cfg, api=msgspec.structs.replace(cfg.api, port=port))

    def ready(bound: int) -> None:
        print(json.dumps({"listening": bound}), flush=True)

    options = {"use_uvloop": True} if backend == "asyncio" else {}
    try:
        anyio.run(lambda: run(cfg, on_ready=ready), backend=backend, backend_options=options)
    except (ConfigError, BaseExceptionGroup) as exc:  # found at start-up (a carrier's settings, the port taken,
        if (cause := startup_error(exc)) is None:  # the store in use): one line too, however deep its task group
            raise
        click.echo(f"error: {cause}", err=True)
        sys.exit(2)


@main.command("demo")
@click.option("--recipients", default=50_000, show_default=True, help="recipients of the marketing job")
@click.option("--timeout", default=110.0, show_default=True, help="hard limit for the whole run, in seconds")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="also write the facts here")
@click.option("--virtual", is_flag=True, help="instead: the delivery core alone, one day on virtual time")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="with --virtual only")
def demo(recipients: int, timeout: float, json_path: str | None, virtual: bool, config_path: str | None) -> None:
    """What `make run` runs: two SMSC simulators and `sluice serve` on loopback, a realistic job
    through the HTTP API, live progress and a summary. Exits 0 when all went as it should."""
    if virtual:
        from gateway.demo import run_demo

        run_demo(recipients, config_path)
        return
    from gateway.showcase import main as showcase

    sys.exit(showcase(recipients, json_path, timeout))


@main.group()
def bench() -> None:
    """Benchmarks (not tests): print a table, optionally write JSON."""


@main.group()
def sim() -> None:
    """Carrier simulators for tests and benchmarks."""


def _register() -> None:
    # Direct imports: a broken benchmark or simulator is an error here, not a missing command.
    from bench.audience import bench_audience
    from bench.campaign import bench_campaign
    from bench.core import bench_core
    from bench.e2e import bench_e2e
    from bench.fairness import bench_fairness
    from bench.flows import bench_flows
    from bench.ingest import bench_ingest
    from bench.kannel import bench_kannel
    from bench.priority import bench_priority
    from bench.quiet_hours import bench_quiet_hours
    from bench.report import bench_report
    from bench.scaling import bench_scaling
    from bench.smpp import bench_smpp
    from bench.soak import bench_soak
    from bench.throttle import bench_throttle
    from carriers.http.simulator import sim_http
    from carriers.smpp.simulator import sim_smsc

    for command in (bench_core, bench_smpp, bench_ingest, bench_e2e, bench_kannel, bench_throttle, bench_priority,
                    bench_quiet_hours, bench_soak, bench_scaling, bench_report, bench_audience,
                    bench_flows, bench_fairness, bench_campaign):  # fmt: skip
        bench.add_command(command)
    sim.add_command(sim_smsc)
    sim.add_command(sim_http)


_register()


if __name__ == "__main__":
    main()
