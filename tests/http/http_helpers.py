"""Helpers for the HTTP carrier tests: dispatches (with media too), the simulator in-process on a
loopback port with a receiver for its callbacks that hands them to the connector, and a driver
that sends back what comes back, as the core would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from carriers.base import ConnectorEvent, Requeue, SubmitFailed, Submitted
from carriers.http.connector import HttpConnector
from carriers.http.testing import loopback_carrier
from carriers.http.settings import HttpSettings
from carriers.http.simulator import HttpSimSettings
from gateway.core import segments
from gateway.core.model import Dispatch


def make_dispatch(ref: int, body: str = "hello", *, recipient: str | None = None, attempt: int = 0,
                  carrier: str = "h1", message_id: int | None = None, media: tuple[str, ...] = ()) -> Dispatch:  # fmt: skip
    split = segments.split(body)
    fields: dict[str, Any] = dict(
        ref=ref, message_id=ref if message_id is None else message_id, job_id="job", tenant="t", carrier=carrier,
        recipient=recipient or "+4479110%05d" % ref, sender="Sluice", body=body, encoding=split.encoding,
        segments=len(split.parts), category="transactional", priority=1, attempt=attempt,
    )  # fmt: skip
    return Dispatch(media=media, **fields)


class Harness:
    """A connector wired to a simulator over loopback, its events, and its callbacks."""

    def __init__(self, sim: Any, connector: HttpConnector, events: Any) -> None:
        self.sim = sim
        self.connector = connector
        self.events = events
        self.seen: list[ConnectorEvent] = []
        self.callback_statuses: list[int] = []

    async def until(self, done: Callable[[list[ConnectorEvent]], bool], timeout: float = 30.0) -> list[ConnectorEvent]:
        with anyio.fail_after(timeout):
            while not done(self.seen):
                self.seen.append(await self.events.receive())
        return self.seen

    def of(self, kind: type) -> list:
        return [e for e in self.seen if isinstance(e, kind)]

    async def drive(self, dispatches: list[Dispatch], timeout: float = 60.0) -> dict[int, Any]:
        """Submit; send back what comes back (Requeue, temporary SubmitFailed) with attempt+1 as the
        core would (requeues first, in the order they came), until each message is Submitted or
        permanently failed. Returns ref -> its last event; fails if any message ends twice."""
        current = {d.ref: d for d in dispatches}
        final: dict[int, Any] = {}
        await self.connector.submit(dispatches)
        with anyio.fail_after(timeout):
            while len(final) < len(current):
                again = []
                ev = await self.events.receive()
                while True:
                    self.seen.append(ev)
                    if isinstance(ev, Submitted) or (isinstance(ev, SubmitFailed) and ev.permanent):
                        assert ev.ref not in final, f"{ev.ref} ended twice"
                        final[ev.ref] = ev
                    elif isinstance(ev, (Requeue, SubmitFailed)):
                        assert ev.ref not in final
                        d = current[ev.ref] = msgspec.structs.replace(current[ev.ref], attempt=current[ev.ref].attempt + 1)
                        again.append(d)
                    try:
                        ev = self.events.receive_nowait()
                    except anyio.WouldBlock:
                        break
                if again:
                    await self.connector.submit(again)
        return final


@asynccontextmanager
async def in_process(sim_settings: HttpSimSettings, settings: HttpSettings, **kwargs: Any) -> AsyncIterator[Harness]:
    """``carriers.http.testing.loopback_carrier`` with the driver above."""
    async with loopback_carrier(sim_settings, settings, **kwargs) as lb:
        h = Harness(lb.sim, lb.connector, lb.events)
        h.callback_statuses = lb.callback_statuses
        yield h
