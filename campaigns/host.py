"""One process hosting both the gateway and the campaign layer (the embedded default of ``sluice serve``
when the config has a ``[campaigns]`` table).

This is the only module of ``campaigns`` allowed to import the gateway's runtime (an explicit
``ignore_imports`` of the layering contract in pyproject.toml): it *composes* the two, and the
campaign layer still reaches the gateway only through its HTTP API (on the gateway's bound port)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec

from campaigns.config import CampaignSettings, from_table
from campaigns.errors import ConfigError


def split_config(text: str, *, path: str | None = None) -> tuple[object, CampaignSettings | None]:
    """A Sluice config text -> (the gateway's Config, the campaigns settings or None)."""
    from gateway.config import Config
    from gateway.errors import ConfigError as GatewayConfigError

    try:
        raw = tomllib.loads(text.removeprefix("\ufeff"))  # a byte order mark (saved by Notepad): not TOML's
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path + ': ' if path else ''}not valid TOML: {exc}") from exc
    table = raw.pop("campaigns", None)
    try:
        gw = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:  # as gateway.config.loads words it: the message, then the key
        from gateway.config import _split_path

        message, key = _split_path(str(exc))
        raise GatewayConfigError(message, key=key, path=path) from exc
    return gw, (from_table(table, path=path) if table is not None else None)


def read(path: str | None) -> tuple[object, CampaignSettings | None]:
    from gateway.config import default_text

    if not path:
        return split_config(default_text())
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # as the gateway's load() says it: one line, no traceback
        raise ConfigError(f"{path}: cannot read config: {getattr(exc, 'strerror', None) or exc}") from exc
    return split_config(text, path=path)


async def serve_both(gateway_cfg: object, settings: CampaignSettings, *, on_ready: Callable[[str, int], None]) -> None:
    """The gateway, then the campaign layer pointed at the gateway's bound port."""
    from gateway.runtime.app import serve as serve_gateway

    from campaigns.service.server import serve as serve_campaigns

    bound = anyio.Event()
    port: list[int] = []

    def gateway_ready(p: int) -> None:
        port.append(p)
        on_ready("listening", p)
        bound.set()

    async with anyio.create_task_group() as tg:
        async def gateway() -> None:
            await serve_gateway(gateway_cfg, on_ready=gateway_ready)  # type: ignore[arg-type]
            tg.cancel_scope.cancel()  # the gateway stopped (SIGTERM): so does the campaign layer

        tg.start_soon(gateway)
        await bound.wait()
        host = getattr(getattr(gateway_cfg, "api", None), "host", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        tg.start_soon(lambda: serve_campaigns(settings, gateway_url=f"http://{host}:{port[0]}",
                                              on_ready=lambda p: on_ready("campaigns", p),
                                              on_short_links=lambda p: on_ready("short_links", p)))  # fmt: skip
