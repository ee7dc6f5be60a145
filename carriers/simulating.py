"""What the carrier simulators share (``sluice sim smsc``, ``sluice sim http``): serving until
a signal with their counters as JSON lines, and the ``--throttle-burst`` option's parser."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any, Protocol

import anyio
import anyio.abc
import click

__all__ = ["parse_burst", "serve_until_signalled"]


class Simulator(Protocol):
    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = ...) -> None: ...
    def counters(self) -> dict[str, Any]: ...


async def serve_until_signalled(sim: Simulator, host: str, *, stats_file: str | None = None,
                                out: Any = None) -> dict[str, Any]:  # fmt: skip
    """Serve until SIGINT/SIGTERM: print ``{"listening": PORT}`` first, the counters as JSON on
    SIGUSR1 and on exit (also to ``stats_file``); returns the last counters."""
    out = out or sys.stdout

    def report() -> dict[str, Any]:
        counters = sim.counters()
        print(json.dumps(counters), file=out, flush=True)
        if stats_file:
            with open(stats_file, "w", encoding="utf-8") as f:
                json.dump(counters, f)
        return counters

    async with anyio.create_task_group() as tg:
        port = await tg.start(sim.serve)
        print(json.dumps({"listening": port, "host": host}), file=out, flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
            async for sig in signals:
                if sig == signal.SIGUSR1:
                    report()
                else:
                    break
        tg.cancel_scope.cancel()
    return report()


def parse_burst(value: str | None) -> tuple[float, float] | None:
    """``--throttle-burst EVERY:DURATION`` (seconds) -> (every, duration)."""
    if not value:
        return None
    try:
        every, duration = (float(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter("expected EVERY:DURATION in seconds, e.g. 10:2") from None
    return every, duration
