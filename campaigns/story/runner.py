"""The shop's story (``sluice demo``'s second part): one ``sluice serve`` hosting both layers, an SMSC
simulator, and the chapters told over HTTP only.

1. An SMSC simulator (receipts after a fraction of a second) carries the shop's outgoing texts. The
   shop's short code is on an HTTP carrier (``shortcode``): ``Story.reply`` posts a subscriber's MO to
   the gateway as that carrier does, signed with its callback secret.
2. ``sluice serve`` on the embedded gateway config plus what a local run needs (the simulator's port,
   the tenant with its short code and webhook secret, private webhooks allowed on loopback) and a
   ``[campaigns]`` table (the shop, its short-link domain and keys, and the story's short waits:
   ``abandon_after`` and ``click_min_delay_s`` in seconds, honest settings anyone can edit). Keys and
   secrets are fresh for each run and passed in environment variables; stores in a temporary directory.
3. The chapters of ``CHAPTERS`` in order; then the figures each recorded, as JSON (``--json``).

Everything is bounded: one overall deadline, and the children are stopped by their PIDs."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import shutil
import socket
import sys
import tempfile
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
from rich.console import Console

from campaigns.host import split_config
from campaigns.story import audience, campaign, flows, inbox
from campaigns.story.context import Story, StoryError
from gateway.config import default_text
from gateway.testing.processes import Child, simulator, start

__all__ = ["CHAPTERS", "main", "run_story"]

Chapter = Callable[[Story], Awaitable[None]]

#: The story, in order.
CHAPTERS: list[tuple[str, Chapter]] = [
    ("audience", audience.chapter),
    ("campaign", campaign.chapter),
    ("flows", flows.chapter),
    ("inbox", inbox.chapter),
]

SHOP = "shop"
SHORT_CODE = "73100"
MO_CARRIER = "shortcode"
ENV = {"gateway_key": "SLUICE_STORY_GATEWAY_KEY", "campaigns_key": "SLUICE_STORY_CAMPAIGNS_KEY",
       "webhook": "SLUICE_STORY_WEBHOOK_SECRET", "links": "SLUICE_STORY_LINK_KEY", "mo": "SLUICE_STORY_MO_SECRET"}  # fmt: skip
# Zones the shop's customers may live in; the story picks one where it is daytime now, so that the
# gateway's quiet hours (08:00-21:00 local by default) do not hold the campaign until morning.
ZONES = ("Europe/London", "Europe/Berlin", "Europe/Athens", "Asia/Dubai", "Asia/Kolkata", "Asia/Bangkok",
         "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland", "Pacific/Honolulu",
         "America/Anchorage", "America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York",
         "America/Sao_Paulo", "Atlantic/Azores")  # fmt: skip


def daytime_zone(now: float, zones: tuple[str, ...] = ZONES) -> str:
    """The first zone whose local time at ``now`` is between 10:00 and 17:00 (always one of ZONES): the
    story, which takes a minute, is over well before 18:00 there."""
    for name in zones:
        hour = dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(name)).hour
        if 10 <= hour < 17:
            return name
    raise StoryError("no zone of ZONES is in daytime now")  # pragma: no cover: the zones cover the clock


def free_port() -> int:
    """A free loopback port, for the campaign service: its public URL is in the config it starts with."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def story_config(tmp: Path, *, sim_ports: tuple[int, int], campaigns_port: int, zone: str) -> str:
    """The embedded gateway config plus the story's additions, checked by parsing it before use."""
    c = f"http://127.0.0.1:{campaigns_port}"
    text = f"""{_priced(default_text())}

# -- added by the shop's story (`sluice demo`) --
[api]
host = "127.0.0.1"
ingest_workers = 0  # the shop's jobs are small: their recipients are checked in-process (no worker start-up)

[[api.tenants]]
name = "{SHOP}"
key_env = "{ENV['gateway_key']}"
webhook_secret_env = "{ENV['webhook']}"
senders = ["{SHORT_CODE}"]
inbound_url = "{c}/v1/gateway/{SHOP}/inbound"
requests_per_second = 1000.0
burst = 1000

[store]
url = "sqlite:///{(tmp / 'sluice.db').as_posix()}"
synchronous = "NORMAL"

[webhooks]
allow_private = ["127.0.0.0/8"]
poll_interval = 0.2
backoff_initial = 0.2

[[core.carriers]]
name = "{MO_CARRIER}"
rate = 50.0
burst = 10

[[carriers.smpp]]
name = "alpha"
port = {sim_ports[0]}
[[carriers.smpp]]
name = "beta"
port = {sim_ports[1]}

[[carriers.http]]
name = "{MO_CARRIER}"
url = "http://127.0.0.1:9/the-short-code-carrier-only-brings-mos"
callback_secret_env = "{ENV['mo']}"

[campaigns]
store_url = "sqlite:///{(tmp / 'campaigns.db').as_posix()}"
port = {campaigns_port}
public_url = "{c}"
sync_interval = 0.2
abandon_after = 2

[[campaigns.tenants]]
name = "{SHOP}"
key_env = "{ENV['campaigns_key']}"
gateway_key_env = "{ENV['gateway_key']}"
webhook_secret_env = "{ENV['webhook']}"
link_key_env = "{ENV['links']}"
short_domain = "mm.sl"
time_zone = "{zone}"
default_region = "GB"
click_min_delay_s = 1

[campaigns.tenants.signup]
sender = "{SHORT_CODE}"
shop_name = "Maple & Moss"
welcome_text = "{{shop}}: you're in! Here is 10% off your next order: WELCOME10. Reply STOP to cancel."
"""
    split_config(text)  # raises ConfigError naming the key if the story's own config is wrong
    return text


PRICES = {"alpha": 4, "beta": 5}  # the carriers' price per segment, minor units (the preview and the cost)


def _priced(base: str) -> str:
    """The embedded config with each carrier's ``price_per_segment`` (inserted after its name; checked)."""
    for name, price in PRICES.items():
        line = f'name = "{name}"\n'
        if base.count(line) != 1:
            raise StoryError(f"the embedded config has no single carrier {name!r} to price")
        base = base.replace(line, f"{line}price_per_segment = {price}\n")
    return base


class Summary(msgspec.Struct, kw_only=True):
    """What the run saw, written as JSON (``--json``): each chapter's figures, and the wall time."""

    shop: str
    zone: str
    chapters: list[str]
    facts: dict[str, dict[str, Any]]
    seconds: dict[str, float]  # start-up, then each chapter
    wall_seconds: float


async def run_story(console: Console, *, timeout: float = 90.0, chapters: list[tuple[str, Chapter]] | None = None,
                    workdir: Path | None = None) -> Summary:  # fmt: skip
    """Start everything, tell the chapters, stop everything; raises StoryError on failure."""
    started = time.monotonic()
    todo = CHAPTERS if chapters is None else chapters
    try:
        with anyio.fail_after(timeout), _directory(workdir) as tmp:
            return await _run(console, tmp, todo, started)
    except TimeoutError:
        raise StoryError(f"the story did not finish within {timeout:.0f} s; children were stopped (on a slow or busy "
                         f"machine: `sluice demo --part shop --story-timeout {timeout * 3:.0f}`)") from None
    except RuntimeError as exc:  # a child did not start
        raise StoryError(str(exc)) from exc


@contextlib.contextmanager
def _directory(workdir: Path | None):  # type: ignore[no-untyped-def]
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("sluice.db", "campaigns.db"):
            (workdir / name).unlink(missing_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="sluice-story-") as tmp:
        yield Path(tmp)


async def _run(console: Console, tmp: Path, chapters: list[tuple[str, Chapter]], started: float) -> Summary:
    env = {var: secrets.token_urlsafe(24) for var in ENV.values()}
    zone = daytime_zone(time.time())
    console.rule("[bold]The shop's story: Maple & Moss on Sluice's campaign layer")
    async with contextlib.AsyncExitStack() as stack:
        # One SMSC simulator per carrier of the embedded config (each carrier's receipts come back on its own binds).
        sims = await _enter_together(stack, [simulator("--tps", "2000", "--dlr-delay", "0.2", "--seed", str(i)) for i in (1, 2)])
        t_sims = time.monotonic() - started
        cport = free_port()
        path = tmp / "sluice.toml"
        path.write_text(story_config(tmp, sim_ports=(sims[0].port, sims[1].port), campaigns_port=cport, zone=zone))
        log = stack.enter_context((tmp / "sluice.log").open("wb"))
        cmd = [sys.executable, "-m", "campaigns.cli", "serve", "--config", str(path), "--port", "0"]
        try:
            sluice = await stack.enter_async_context(start(cmd, name="sluice serve", env=env, cwd=tmp, stderr=log))
            t_gateway = time.monotonic() - started
            announced = (await sluice.line(30.0)).get("campaigns")
        except (RuntimeError, TimeoutError, anyio.EndOfStream) as exc:
            raise StoryError(f"`sluice serve` did not start: {exc}\n{_tail(tmp / 'sluice.log')}") from None
        if announced != cport:
            raise StoryError(f"the campaign service announced port {announced}, configured {cport}")
        console.print(f"  `sluice serve` (pid {sluice.pid}) hosts the gateway on {sluice.url} and the campaign layer on "
                      f"http://127.0.0.1:{cport}; two SMSC simulators (pids {sims[0].pid}, {sims[1].pid}) deliver; the shop's customers "
                      f"live in {zone} (their time_zone, which the gateway's quiet hours use), where it is daytime now")  # fmt: skip
        gw = await stack.enter_async_context(httpx.AsyncClient(
            base_url=sluice.url, headers={"authorization": f"Bearer {env[ENV['gateway_key']]}"}, timeout=30.0))  # fmt: skip
        cc = await stack.enter_async_context(httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{cport}", headers={"authorization": f"Bearer {env[ENV['campaigns_key']]}"},
            timeout=30.0))  # fmt: skip
        story = Story(console=console, campaigns=cc, gateway=gw, shop=SHOP, short_code=SHORT_CODE,
                      mo_carrier=MO_CARRIER, mo_secret=env[ENV["mo"]])  # fmt: skip
        story.facts["setup"] = {"zone": zone}
        seconds = {"start_simulators": round(t_sims, 2), "start_gateway": round(t_gateway, 2),
                   "start": round(time.monotonic() - started, 2)}
        try:
            for name, chapter in chapters:
                console.rule(f"[bold]{name}")
                t0 = time.monotonic()
                await chapter(story)
                seconds[name] = round(time.monotonic() - t0, 2)
        except StoryError as exc:
            raise StoryError(f"{exc}\n(last lines of the server's log)\n{_tail(tmp / 'sluice.log')}") from None
        return Summary(shop=SHOP, zone=zone, chapters=[n for n, _ in chapters], facts=story.facts, seconds=seconds,
                       wall_seconds=round(time.monotonic() - started, 2))  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover


async def _enter_together(stack: contextlib.AsyncExitStack, managers: list[Any]) -> list[Child]:
    """Enter child-process context managers at once (each child's start-up is mostly its imports);
    each one entered is left by ``stack``, also when another failed to start."""
    children: list[Child | None] = [None] * len(managers)

    async def enter(i: int) -> None:
        children[i] = await managers[i].__aenter__()
        stack.push_async_exit(managers[i].__aexit__)

    async with anyio.create_task_group() as tg:
        for i in range(len(managers)):
            tg.start_soon(enter, i)
    return [c for c in children if c is not None]


def _tail(path: Path, lines: int = 15) -> str:
    """The log's last lines, without the HTTP client's request lines (the link polls the gateway)."""
    try:
        text = path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if " INFO httpx " not in line][-lines:])
    except OSError:
        return ""


def select(names: str | None) -> list[tuple[str, Chapter]]:
    """The chapters named (comma-separated, told in the story's order), or all; StoryError naming an unknown one."""
    if names is None:
        return list(CHAPTERS)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = dict(CHAPTERS)
    if unknown := [n for n in wanted if n not in known]:
        raise StoryError(f"no chapter {', '.join(unknown)} (the chapters: {', '.join(known)})")
    return [(n, c) for n, c in CHAPTERS if n in wanted]


def main(json_path: str | None, timeout: float, chapters: str | None = None) -> int:
    """The CLI's body: tell the story, write its JSON; 0 on success, 1 with a message on failure."""
    console = Console(width=max(120, shutil.get_terminal_size().columns))
    try:
        todo = select(chapters)
        summary = anyio.run(lambda: run_story(console, timeout=timeout, chapters=todo), backend="asyncio",
                            backend_options={"use_uvloop": True})  # fmt: skip
    except StoryError as exc:
        console.print(f"[red]error:[/] the shop's story: {exc}")
        return 1
    console.print(f"The shop's story done in {summary.wall_seconds:.1f} s; `sluice serve` and the simulators stopped.")
    if json_path:
        Path(json_path).write_bytes(msgspec.json.encode(summary))
    return 0
