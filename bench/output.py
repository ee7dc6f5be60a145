"""Where a scenario's results go: ``--json PATH`` and/or ``--out DIR`` (as ``DIR/<scenario>.json``,
what `sluice bench report DIR` reads). Each result carries the command that produced it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["out_option", "save"]

out_option = click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default=None,
    help="Also write DIR/<scenario>.json (for `sluice bench report DIR`).",
)  # fmt: skip


def _command() -> str:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ""
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    args = []
    for name, value in ctx.params.items():
        if name in ("json_path", "out_dir") or value is None or value is False:
            continue
        flag = flags.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, (tuple, list)):  # a repeated option: the flag once per value
            args.extend(f"{flag} {v}" for v in value)
        else:
            args.append(flag if value is True else f"{flag} {value}")
    return " ".join(["sluice", *ctx.command_path.split()[1:], *args])


def save(result: dict[str, Any], json_path: str | None, out_dir: str | None) -> None:
    result.setdefault("command", _command())
    text = json.dumps(result, indent=2)
    if json_path:
        Path(json_path).write_text(text)
        click.echo(f"wrote {json_path}")
    if out_dir:
        path = Path(out_dir) / f"{result['scenario']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        click.echo(f"wrote {path}")
