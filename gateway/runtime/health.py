"""The shell of carrier failover: watch each SMPP connector's binds, tell the core.

Every ``interval`` seconds the number of links up of each connector goes to
``gateway.core.health.LinkHealth`` (pure), and its verdicts to ``Scheduler.carrier_down`` /
``carrier_up``. SMPP connectors reconnect by themselves, so a bind coming back ends the failover.
An HTTP connector learns it is back only from a request that succeeds, which a carrier marked
down would never get: those carriers (``probe_after``) are let up again after a growing
cool-off, a half-open circuit breaker (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio

from carriers.base import Connector
from gateway.core.health import LinkHealth
from gateway.core.scheduler import Scheduler

__all__ = ["watch_carriers"]

log = logging.getLogger(__name__)


async def watch_carriers(core: Scheduler, connectors: Mapping[str, Connector], *, clock: Callable[[], float],
                         on_change: Callable[[], None] | None = None, interval: float = 0.25,
                         probe_after: Mapping[str, float] | None = None) -> None:  # fmt: skip
    down_after = {c.name: c.down_after for c in core.settings.carriers}
    health = LinkHealth({name: down_after[name] for name in connectors}, probe_after=probe_after)
    while True:
        now = clock()
        for name, connector in connectors.items():
            verdict = health.observe(name, connector.statistics().bound, now)
            if verdict == "down":
                core.carrier_down(name, now)
                log.warning("carrier.down carrier=%s (no link up for %.1fs): its traffic fails over", name,
                            down_after[name])  # fmt: skip
            elif verdict == "up":
                core.carrier_up(name, now)
                log.info("carrier.up carrier=%s%s", name, "" if connector.statistics().bound else " (probe)")
            if verdict and on_change:
                on_change()
        await anyio.sleep(interval)
