"""`sluice campaigns ...`, and the `sluice` entry point that composes the two layers.

The ``sluice`` script points here (pyproject ``[project.scripts]``): this module takes the gateway's
click group (``gateway.cli.main``, which knows nothing of campaigns), adds the ``campaigns`` group,
and wraps ``serve`` so that a config with a ``[campaigns]`` table hosts both in one process
(``campaigns.host``). ``python -m gateway.cli`` stays the gateway alone."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from campaigns.errors import CampaignError, ConfigError
from gateway.cli import main

__all__ = ["main"]


@click.group("campaigns")
def campaigns() -> None:
    """The campaign layer: subscribers, consent, shop events, segments."""


def _quiet_httpx() -> None:
    """The gateway link polls ``GET /v1/inbound`` every couple of seconds and the flows post sends:
    httpx's INFO line per request filled a new user's terminal with ``HTTP Request: GET
    http://127.0.0.1 "HTTP/1.1 200 OK"`` for ever. Its warnings stay; our own loggers say what failed."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _settings(config_path: str | None):  # type: ignore[no-untyped-def]
    from campaigns import config

    try:
        settings = config.load(config_path) if config_path else None
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if settings is None:
        click.echo("error: the config has no [campaigns] table", err=True)
        sys.exit(2)
    return settings


def _check_env(settings, gateway_cfg=None) -> None:  # type: ignore[no-untyped-def]
    """Exit 2 naming every ``*_env`` key whose variable is unset (what serving would meet later)."""
    import os

    from campaigns.config import missing_environment

    missing: list[Exception] = list(missing_environment(settings, os.environ))
    if gateway_cfg is not None:
        from gateway.config import missing_environment as gateway_missing

        missing = [*gateway_missing(gateway_cfg, os.environ), *missing]
    for exc in missing:
        click.echo(f"error: {exc}", err=True)
    if missing:
        sys.exit(2)


@campaigns.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--skip-env", is_flag=True, help="Do not check the environment variables the *_env keys name.")
def check_config(path: str, skip_env: bool) -> None:
    """Validate the [campaigns] table of a config file (and that its *_env variables are set)."""
    settings = _settings(path)
    if not skip_env:
        _check_env(settings)
    click.echo(f"{path}: ok ({len(settings.tenants)} tenants, store {settings.store_url.split(':', 1)[0]})")


@campaigns.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--port", type=int, default=None, help="HTTP port (overrides campaigns.port; 0 picks a free one).")
def serve_alone(config_path: str, port: int | None) -> None:
    """Run the campaign layer alone (the gateway elsewhere, at campaigns.gateway_url).

    When it is ready it prints one JSON line on stdout, {"campaigns": PORT} (then {"short_links": PORT}
    when ``short_link_port`` is set)."""
    import anyio

    from campaigns.service.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _quiet_httpx()
    settings = _settings(config_path)
    _check_env(settings)
    try:
        anyio.run(lambda: serve(settings, port=port, on_ready=lambda p: print(json.dumps({"campaigns": p}), flush=True),
                                on_short_links=lambda p: print(json.dumps({"short_links": p}), flush=True)),
                  backend="asyncio", backend_options={"use_uvloop": True})  # fmt: skip
    except (ConfigError, BaseExceptionGroup) as exc:  # found at start-up (store in use, port taken): one line
        if (cause := _startup_error(exc)) is None:
            raise
        click.echo(f"error: {cause}", err=True)
        sys.exit(2)


@campaigns.command("abandon")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", default=None, help="one shop (default: all)")
def abandon(config_path: str, tenant: str | None) -> None:
    """Mark checkouts older than campaigns.abandon_after as abandoned now (the server does it itself)."""
    import time

    from campaigns.store import open_store

    settings = _settings(config_path)
    store = open_store(settings.store_url)
    try:
        for name in [tenant] if tenant else [t.name for t in settings.tenants]:
            ids = store.abandon_checkouts(name, after_s=settings.abandon_after, now=time.time())
            click.echo(f"{name}: {len(ids)} subscribers with newly abandoned checkouts")
    except CampaignError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        store.close()


def _audience(config_path: str):  # type: ignore[no-untyped-def]
    import time

    from campaigns.service.audience import Audience
    from campaigns.store import open_store

    settings = _settings(config_path)
    return Audience(open_store(settings.store_url), settings, time.time)


def _run(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` (async) and turn the layer's errors into a message and exit code 1."""
    import anyio

    try:
        return anyio.run(fn)
    except CampaignError as exc:
        field = getattr(exc, "field", None)
        click.echo(f"error: {exc}" + (f" (field {field})" if field else ""), err=True)
        sys.exit(1)


@campaigns.command("import")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--charset", default=None, help="the file's encoding when it has no byte order mark (default UTF-8), e.g. windows-1252")
@click.argument("csv_path", type=click.Path(dir_okay=False, exists=True))
def import_csv(config_path: str, tenant: str, csv_path: str, charset: str | None) -> None:
    """Import subscribers from a CSV file with consent columns (docs/CAMPAIGNS.md): all rows or none."""
    from pathlib import Path

    from campaigns.core.imports import decode_csv
    from campaigns.errors import InvalidInput

    audience = _audience(config_path)
    try:
        text = decode_csv(Path(csv_path).read_bytes(), charset)
    except InvalidInput as exc:
        click.echo(f"error: {exc} (field {exc.field})", err=True)
        sys.exit(1)
    res = _run(lambda: audience.import_csv(tenant, text, file_name=Path(csv_path).name))
    click.echo(json.dumps({f: getattr(res, f) for f in res.__struct_fields__}))


@campaigns.command("events")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.argument("ndjson_path", type=click.Path(dir_okay=False, exists=True))
def events(config_path: str, tenant: str, ndjson_path: str) -> None:
    """Apply shop events from an NDJSON file (one per line; idempotent by id: safe to run again)."""
    from pathlib import Path

    from campaigns.core.events import decode_event
    from campaigns.errors import InvalidInput

    audience = _audience(config_path)
    parsed, prefixes = [], []
    for i, line in enumerate(Path(ndjson_path).read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines()):
        if line.strip():
            try:
                ev = decode_event(line)
                parsed.append((ev, audience.check_event(tenant, ev, prefix=f"lines[{i}].")))
                prefixes.append(f"lines[{i}].")
            except InvalidInput as exc:
                click.echo(f"error: line {i}: {exc} (field {exc.field})", err=True)
                sys.exit(1)
    try:  # the file's orders together: a first file in two currencies is refused, as a bulk POST is
        if foreign := next((e for e in audience.check_currency(tenant, [e for e, _ in parsed], prefixes) if e), None):
            raise foreign
        results = _run(lambda: audience.apply_many(tenant, parsed, prefixes=prefixes))
    except InvalidInput as exc:
        click.echo(f"error: {exc} (field {exc.field})", err=True)
        sys.exit(1)
    outcomes = [r.outcome for r in results]
    click.echo(json.dumps({k: outcomes.count(k) for k in ("applied", "duplicate", "stale")}))


@campaigns.command("proof")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--phone", required=True)
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
def proof(config_path: str, tenant: str, phone: str, fmt: str) -> None:
    """Print a subscriber's consent proof (every ledger entry, disclosure text and hash, evidence)."""
    from campaigns.core import proof as proofs
    from campaigns.errors import NotFound

    audience = _audience(config_path)

    async def run():  # type: ignore[no-untyped-def]
        sub = audience.store.subscriber_by_phone(tenant, audience.phone(tenant, phone))
        if sub is None:
            raise NotFound(f"no subscriber {phone}", code="subscriber_not_found")
        return await audience.proof(tenant, sub.id)

    p = _run(run)
    click.echo(proofs.to_csv(p) if fmt == "csv" else proofs.to_json(p).decode(), nl=fmt == "json")


@campaigns.command("count")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.argument("segment_json")
def count(config_path: str, tenant: str, segment_json: str) -> None:
    """Count a segment now: SEGMENT_JSON is the tree, or @file.json."""
    from pathlib import Path

    import msgspec

    raw = Path(segment_json[1:]).read_text() if segment_json.startswith("@") else segment_json
    audience = _audience(config_path)

    async def run() -> int:
        try:
            tree = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
        return await audience.count(tenant, audience.parse(tree))

    click.echo(json.dumps({"count": _run(run)}))


@campaigns.command("inbox")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--status", type=click.Choice(["needs_reply", "open", "closed"]), default="needs_reply", show_default=True)
@click.option("--assignee", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def inbox(config_path: str, tenant: str, status: str, assignee: str | None, limit: int) -> None:
    """The shop's conversations, one JSON per line (needs_reply: the queue, the longest wait first)."""
    import msgspec

    audience = _audience(config_path)

    async def run():  # type: ignore[no-untyped-def]
        return await audience.store_call("conversations", tenant, status=status, assignee=assignee, limit=limit)

    for row in _run(run):
        click.echo(msgspec.json.encode(row).decode())


@campaigns.command("inbox-figures")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--since-days", type=click.FloatRange(min=0, min_open=True, max=366), default=30.0, show_default=True)
def inbox_figures(config_path: str, tenant: str, since_days: float) -> None:
    """First-response times (p50, p90, ...) and the open / needs-reply / closed counts, as JSON."""
    import msgspec

    from campaigns.service.inbox import Inbox

    audience = _audience(config_path)
    inbox = Inbox(audience.store, {}, audience.settings, audience.clock)
    figures = _run(lambda: inbox.figures(tenant, audience.clock() - since_days * 86400))
    click.echo(msgspec.json.encode(figures).decode())


@click.command("demo")
@click.option("--recipients", default=50_000, show_default=True, help="recipients of the gateway showcase's marketing job")
@click.option("--timeout", default=110.0, show_default=True, help="hard limit for the gateway showcase, in seconds")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="the gateway showcase's facts")
@click.option("--part", type=click.Choice(["all", "gateway", "shop"]), default="all", show_default=True,
              help="the gateway showcase, the shop's story (campaigns), or both in turn")
@click.option("--story-json", type=click.Path(dir_okay=False), default=None, help="the shop's story's figures")
@click.option("--story-timeout", default=90.0, show_default=True, help="hard limit for the shop's story, in seconds")
@click.option("--story-chapters", default=None, help="only these chapters, comma-separated (default: all, in order)")
@click.option("--virtual", is_flag=True, help="instead: the delivery core alone, one day on virtual time")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="with --virtual only")
def demo(recipients: int, timeout: float, json_path: str | None, part: str, story_json: str | None,
         story_timeout: float, story_chapters: str | None, virtual: bool, config_path: str | None) -> None:  # fmt: skip
    """What `make run` runs: the gateway showcase (two SMSC simulators and `sluice serve`, a 50,000-recipient
    job over HTTP), then the shop's story (`sluice serve` hosting both layers: sign-ups, segments, an A/B
    campaign with short links, clicks, orders and its analytics). Exits 0 when all went as it should."""
    if virtual:
        from gateway.demo import run_demo

        run_demo(recipients, config_path)
        return
    code = 0
    if part in ("all", "gateway"):
        from gateway.showcase import main as showcase

        code = showcase(recipients, json_path, timeout)
    if part in ("all", "shop"):  # told even when the showcase failed (its reason is printed above)
        from campaigns.story.runner import main as story

        code = max(code, story(story_json, story_timeout, story_chapters))
    sys.exit(code)


_gateway_serve = main.commands["serve"]


@campaigns.group("flows")
def flows_cli() -> None:
    """Flows (automations): create, install from the library, switch on/off, simulate, list."""


def _flow_service(config_path: str):  # type: ignore[no-untyped-def]
    import time

    from campaigns.service.flow_api import FlowService
    from campaigns.store import open_store

    return FlowService(open_store(_settings(config_path).store_url), time.time)


def _echo_json(value: object) -> None:
    import msgspec

    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


@flows_cli.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
def flows_list(config_path: str, tenant: str) -> None:
    svc = _flow_service(config_path)
    _echo_json(svc.store.flow_heads(tenant))


@flows_cli.command("create")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--new-version", is_flag=True, help="Publish as the next version of an existing flow.")
@click.argument("json_path", type=click.Path(dir_okay=False, exists=True))
def flows_create(config_path: str, tenant: str, new_version: bool, json_path: str) -> None:
    """Store a flow definition (JSON file); errors name the JSON path (``$.nodes.n1.next``)."""
    import msgspec

    svc = _flow_service(config_path)
    definition = msgspec.json.decode(Path(json_path).read_bytes())
    out = _run(lambda: svc.publish(tenant, definition, new=not new_version,
                                   flow_id=definition.get("id") if new_version else None))  # fmt: skip
    click.echo(f"{out.flow.id}: version {out.version} stored ({'on' if out.flow.enabled else 'off'})")


@flows_cli.command("install")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--as", "as_id", default=None, help="Install under another flow id.")
@click.argument("library_id")
def flows_install(config_path: str, tenant: str, as_id: str | None, library_id: str) -> None:
    """Install a ready-made flow (abandoned_cart, welcome, ...) and its starter templates."""
    from campaigns.service.flow_api import InstallIn

    svc = _flow_service(config_path)
    out = _run(lambda: svc.install(tenant, InstallIn(flow=library_id, id=as_id)))
    click.echo(f"{out.flow.id}: version {out.version} installed (off: `sluice campaigns flows enable`)")


@flows_cli.command("enable")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--off", is_flag=True, help="Switch the flow off instead.")
@click.argument("flow_id")
def flows_enable(config_path: str, tenant: str, off: bool, flow_id: str) -> None:
    svc = _flow_service(config_path)
    head = _run(lambda: svc.enable(tenant, flow_id, not off))
    click.echo(f"{head.id}: {'on' if head.enabled else 'off'} (version {head.latest})")


@flows_cli.command("simulate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True)
@click.option("--tenant", required=True)
@click.option("--history", is_flag=True, help="Over the shop's past 30 days instead of generated events.")
@click.option("--subscribers", default=1000, show_default=True, help="Generated traffic: how many subscribers.")
@click.argument("flow_id")
def flows_simulate(config_path: str, tenant: str, history: bool, subscribers: int, flow_id: str) -> None:
    """What the flow would do: entered, sends and per-node counts (JSON)."""
    from campaigns.service.flow_api import SimulateIn

    svc = _flow_service(config_path)
    body = SimulateIn(source="history" if history else "generated", subscribers=subscribers)
    _echo_json(_run(lambda: svc.simulate(tenant, flow_id, body)))


def _read_or_exit(path: str | None) -> tuple:
    """``host.read(path)``; a config error of either layer (the gateway's ConfigError too) is shown
    on one line and exits 2."""
    from campaigns import host

    try:
        return host.read(path)
    except (CampaignError, Exception) as exc:
        if not isinstance(exc, (CampaignError,)) and type(exc).__name__ != "ConfigError":
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: the embedded config/sluice.toml).")
@click.option("--port", type=int, default=None, help="HTTP port (overrides api.port; 0 picks a free one).")
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio", show_default=True,
              help="Event loop: asyncio with uvloop (HTTP by uvicorn), or trio (HTTP by Hypercorn).")
@click.pass_context
def serve(ctx: click.Context, config_path: str | None, port: int | None, backend: str) -> None:
    """Run the gateway (and the campaign layer too when the config has a [campaigns] table).

    When ready it prints {"listening": PORT} (and {"campaigns": PORT}, then {"short_links": PORT} when
    ``campaigns.short_link_port`` is set) on stdout, one JSON line each."""
    from campaigns import host

    gateway_cfg, settings = _read_or_exit(config_path)
    if settings is None:
        ctx.invoke(_gateway_serve, config_path=config_path, port=port, backend=backend)
        return
    if backend != "asyncio":
        click.echo("error: with [campaigns], serve runs on asyncio", err=True)
        sys.exit(2)
    _check_env(settings, gateway_cfg)
    import anyio
    import msgspec

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _quiet_httpx()
    if port is not None:
        gateway_cfg = msgspec.structs.replace(gateway_cfg, api=msgspec.structs.replace(gateway_cfg.api, port=port))  # type: ignore[type-var, attr-defined]
    from gateway.errors import ConfigError as GatewayConfigError

    try:
        anyio.run(lambda: host.serve_both(gateway_cfg, settings, on_ready=lambda k, p: print(json.dumps({k: p}), flush=True)),
                  backend="asyncio", backend_options={"use_uvloop": True})  # fmt: skip
    except (GatewayConfigError, ConfigError, BaseExceptionGroup) as exc:  # found at start-up: one line, no traceback
        if (cause := _startup_error(exc)) is None:
            raise
        click.echo(f"error: {cause}", err=True)
        sys.exit(2)


def _startup_error(exc: BaseException) -> Exception | None:
    """A config error of either layer (the gateway's port or store taken included) that ended a
    start-up, inside however many task groups; None for anything else (a bug: its traceback shows)."""
    from gateway.errors import ConfigError as GatewayConfigError

    if isinstance(exc, (GatewayConfigError, ConfigError)):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return next((found for inner in exc.exceptions if (found := _startup_error(inner)) is not None), None)
    return None


_gateway_check_config = main.commands["check-config"]


@click.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--skip-env", is_flag=True,
              help="Do not check the environment variables the *_env keys name (on a machine without the secrets).")
@click.pass_context
def check_config_both(ctx: click.Context, path: str, skip_env: bool) -> None:
    """Validate a config file (its [campaigns] table too, when it has one, as `sluice serve` reads it),
    and that every variable its *_env keys name is set; errors name the key (and the variable)."""
    gateway_cfg, settings = _read_or_exit(path)
    if settings is None:  # the gateway's own check (its wording, its summary)
        ctx.invoke(_gateway_check_config, path=path, skip_env=skip_env)
        return
    if not skip_env:
        _check_env(settings, gateway_cfg)
    cfg = gateway_cfg
    click.echo(f"{path}: ok ({len(cfg.core.carriers)} carriers, {len(cfg.core.routes)} routes; "  # type: ignore[attr-defined]
               f"[campaigns]: {len(settings.tenants)} tenants, store {settings.store_url.split(':', 1)[0]})")


main.add_command(campaigns)
main.add_command(serve)
main.add_command(check_config_both)
main.add_command(demo)

if __name__ == "__main__":
    main()
