"""The flow workers: ``serve``'s flow runtime in child processes, supervised (``flow_workers = N``).

Why processes: the runtime's work (a batch of inputs decided by the pure engine, its rows written,
its sends posted) is Python, and in the serve process it shares one GIL with the API, the events'
ingest and the membership passes. Worker ``p`` of ``N`` is a whole ``FlowRuntime(part=p, parts=N)``
(``campaigns/service/flow_runtime.py``): it drains the inputs, fires the timers, posts the sends and
runs the scans of the subscribers ``id % N == p`` only, so one subscriber's work is always one
process's, in order (docs/CAMPAIGNS-FLOWS.md, "Several workers"). Replies are not theirs: the serve
process applies a reply as it receives it (``FlowRuntime.offer_reply``, the inbox's
``ReplyRouter``), in one store transaction like any worker's, and pokes the subscriber's worker so
the sends it recorded go at once.

The conversation with each child is three pipes, as the gateway's webhook delivery process
(``gateway/runtime/webhook_process.py``, whose shape this follows; the campaign layer does not
import it):

- **stdin**: one JSON line first (``WorkerStart``: the campaigns settings, the gateway's URL, the
  few environment variables they name, the worker's part), then any bytes: "look now" (a reply
  recorded a send, or new inputs). End of file means serve is gone (stopped, or killed with
  SIGKILL): the worker stops at once. What it had not committed is redone by the next one.
- **stdout**: a ``Statistics`` JSON line when its counters changed (at most one a second):
  serve's ``/healthz`` shows each worker's, and the bench reads them.
- **stderr**: the log, as serve's.

``FlowWorkers`` is serve's side: ``run`` starts the N processes and starts one again when it dies
(kill -9 included), after a backoff that doubles while they die young (``restart_initial`` to
``restart_max``); ``aclose`` stops them by PID; ``statistics`` says which are alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio
import msgspec

from campaigns.config import CampaignSettings
from gateway.child_process import read_status, stop as _stop, until_parent_gone

__all__ = ["FlowWorkers", "WorkerStart", "WorkerState", "main", "open_runtime", "worker_environ"]

log = logging.getLogger(__name__)


class WorkerStart(msgspec.Struct, frozen=True, kw_only=True):
    settings: CampaignSettings
    gateway_url: str
    environ: dict[str, str]  # only the variables the settings name (gateway and link keys)
    part: int
    parts: int


class WorkerState(msgspec.Struct, frozen=True, kw_only=True):
    """One worker as serve sees it (``/healthz``)."""

    part: int
    pid: int | None  # None while it is being restarted
    alive: bool  # running and connected to the store (it has reported since it started)
    starts: int  # processes started for this part (1 + restarts)
    last_exit: int | None = None  # the return code of the last one that ended (-9: killed)
    inputs: int = 0  # the current process's counters (its last Statistics line)
    timers: int = 0
    sent: int = 0


def worker_environ(settings: CampaignSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a worker needs: each tenant's gateway key and link key (named by the settings)."""
    names = {n for t in settings.tenants for n in (t.gateway_key_env, t.link_key_env) if n}
    return {n: environ[n] for n in sorted(names) if environ.get(n)}


_line = msgspec.json.Encoder().encode


class _Slot:
    def __init__(self, part: int) -> None:
        self.part = part
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.last_exit: int | None = None
        self.stats: dict[str, Any] = {}
        self.ready = anyio.Event()  # its process has said its first line (connected)


class FlowWorkers:
    """serve's side of the flow worker processes (module docstring)."""

    def __init__(self, settings: CampaignSettings, gateway_url: str, environ: Mapping[str, str], parts: int, *,
                 restart_initial: float = 0.5, restart_max: float = 30.0,
                 command: Sequence[str] | None = None) -> None:  # fmt: skip
        if parts < 1:
            raise ValueError("parts >= 1")
        self.parts = parts
        self._start = [WorkerStart(settings=settings, gateway_url=gateway_url, environ=worker_environ(settings, environ),
                                   part=p, parts=parts) for p in range(parts)]  # fmt: skip
        self._slots = [_Slot(p) for p in range(parts)]
        self._restart_initial, self._restart_max = restart_initial, restart_max
        self._command = list(command or [sys.executable, "-m", "campaigns.service.flow_workers"])

    # ---- what serve and the bench see --------------------------------------------------------------
    @property
    def pids(self) -> list[int | None]:
        return [None if s.proc is None else s.proc.pid for s in self._slots]

    def statistics(self) -> list[WorkerState]:
        out = []
        for s in self._slots:
            # alive: running, and connected (its first line came after it opened the store)
            alive = s.proc is not None and s.proc.poll() is None and bool(s.stats)
            out.append(WorkerState(part=s.part, pid=s.proc.pid if s.proc is not None else None, alive=alive,
                                   starts=s.starts, last_exit=s.last_exit, inputs=int(s.stats.get("inputs", 0)),
                                   timers=int(s.stats.get("timers", 0)), sent=int(s.stats.get("sent", 0))))  # fmt: skip
        return out

    def counters(self) -> list[dict[str, Any]]:
        """Each worker's last ``Statistics`` line (its current process's counters), as decoded."""
        return [dict(s.stats) for s in self._slots]

    def health(self) -> dict[str, Any]:
        states = self.statistics()
        return {"configured": self.parts, "alive": sum(s.alive for s in states),
                "restarts": sum(max(0, s.starts - 1) for s in states),
                "workers": [msgspec.to_builtins(s) for s in states]}  # fmt: skip

    def wake(self, subscriber_id: int | None = None) -> None:
        """New work (a reply's send, new inputs): tell the subscriber's worker (or all) to look now.
        Never blocks: a full pipe already holds a poke; a worker being restarted reads from the start."""
        slots = self._slots if subscriber_id is None else [self._slots[subscriber_id % self.parts]]
        for s in slots:
            proc = s.proc
            if proc is not None and proc.stdin is not None:
                with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError, ValueError):
                    os.write(proc.stdin.fileno(), b".")

    async def wait_ready(self) -> None:
        """Until every worker has connected to the store and said so (its first stats line)."""
        for s in self._slots:
            await s.ready.wait()

    # ---- the processes --------------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start the processes ahead of ``run`` (each imports its modules, about a second, meanwhile)."""
        for s in self._slots:
            if s.spawned is None:
                s.spawned = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603

    async def run(self) -> None:
        """Run every part; a process that ends is started again (after the backoff). Canceled: each
        process's stdin is closed (it stops), then it is killed by PID if it has not."""
        self.spawn()
        try:
            async with anyio.create_task_group() as tg:
                for s in self._slots:
                    tg.start_soon(self._keep, s)
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def _keep(self, slot: _Slot) -> None:
        delay = self._restart_initial
        while True:
            began = time.monotonic()
            rc = await self._run_one(slot)
            lived = time.monotonic() - began
            log.warning("flow.worker.exited part=%d rc=%s lived=%.1fs restarting_in=%.1fs", slot.part, rc, lived, delay)
            await anyio.sleep(delay)
            # A worker that ran a while before dying starts the backoff over; one that dies young
            # (a broken store URL, a crash at start) waits twice as long each time, up to restart_max.
            delay = self._restart_initial if lived > 60 else min(self._restart_max, delay * 2)

    async def _run_one(self, slot: _Slot) -> int | None:
        if slot.spawned is None:
            slot.spawned = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603
        proc, slot.spawned = slot.spawned, None
        assert proc.stdin is not None and proc.stdout is not None
        slot.proc, slot.stats = proc, {}
        slot.starts += 1
        with contextlib.suppress(OSError):
            proc.stdin.write(_line(self._start[slot.part]) + b"\n")
            proc.stdin.flush()
            os.set_blocking(proc.stdin.fileno(), False)  # pokes never wait for the process
        log.info("flow.worker.started part=%d of=%d pid=%d", slot.part, self.parts, proc.pid)
        try:
            await self._read_stats(slot, proc.stdout.fileno())
            rc = await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
            slot.last_exit = rc
            return rc
        finally:
            slot.proc = None
            with anyio.CancelScope(shield=True):
                await _stop(proc)

    async def _read_stats(self, slot: _Slot, fd: int) -> None:
        """The worker's ``Statistics`` lines until end of file (watched by the event loop)."""
        def take(line: bytes) -> None:
            slot.stats = msgspec.json.decode(line)
            slot.ready.set()

        await read_status(fd, take)

    async def aclose(self) -> None:
        """Stop every process left (running or spawned ahead), by PID."""
        procs = [p for s in self._slots for p in (s.proc, s.spawned) if p is not None]
        for s in self._slots:
            s.proc = s.spawned = None
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for p in procs:
                    tg.start_soon(_stop, p)


# -- the worker process itself ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_runtime(start: WorkerStart) -> AsyncIterator[Any]:
    """The ``FlowRuntime`` of one worker (its own store connection, gateway clients and inbox), as
    serve builds its in-process one; closed on exit. The bench's ``--workers 0`` uses it too."""
    from campaigns.service.flow_runtime import FlowRuntime, runtime_tenants
    from campaigns.service.inbox import Inbox
    from campaigns.service.server import gateway_clients, tenant_links
    from campaigns.store import open_store

    settings = start.settings
    store = await anyio.to_thread.run_sync(open_store, settings.store_url)
    clients = gateway_clients(settings, start.gateway_url, start.environ)
    links = tenant_links(settings, start.environ)
    inbox = Inbox(store, clients, settings, time.time)  # each send goes into its conversation's history
    flows = FlowRuntime(store, clients, runtime_tenants(settings, links), time.time, inbox=inbox,
                        part=start.part, parts=start.parts)  # fmt: skip
    try:
        yield flows
    finally:
        await flows.aclose()
        for c in clients.values():
            await c.aclose()
        store.close()


async def _work(start: WorkerStart, stdin: int, report: Callable[[bytes], None]) -> None:
    async with open_runtime(start) as flows, anyio.create_task_group() as tg:
        tg.start_soon(_pokes, stdin, flows, tg.cancel_scope)
        tg.start_soon(_report, flows, report)
        await flows.run(interval=start.settings.flows_interval)


async def _pokes(stdin: int, flows: Any, scope: anyio.CancelScope) -> None:
    """Each read from serve wakes the runtime; end of file (serve is gone) stops the worker."""
    await until_parent_gone(stdin, flows.wake)
    log.info("flow.worker.stopping reason=serve gone")
    scope.cancel()


async def _report(flows: Any, report: Callable[[bytes], None], every: float = 0.25) -> None:
    """The counters as a JSON line at once (serve learns the worker is up), then when they change
    (at most every ``every`` seconds: a small struct encoded a few times a second)."""
    last = None
    while True:
        now = flows.statistics()
        if now != last:
            report(_line(now))
            last = now
        await anyio.sleep(every)


def _read_start(stdin: int) -> WorkerStart:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(stdin, 1)
        if not chunk:
            raise SystemExit(0)  # serve went away before telling us anything
        line += chunk
    try:
        return msgspec.json.decode(line, type=WorkerStart)
    except msgspec.MsgspecError as exc:  # not started by serve: say so, no traceback
        log.error("flow.worker.bad_start error=%s", exc)
        raise SystemExit(2) from None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per send otherwise (campaigns/cli.py)
    # A Ctrl-C at the terminal reaches the whole process group: serve stops in order and closes our
    # stdin, which is what stops us (as it does when serve dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, out = sys.stdin.fileno(), sys.stdout.buffer
    # The runtime's modules before the start line: a process spawned ahead (``FlowWorkers.spawn``)
    # has them loaded when it is told to work.
    import campaigns.service.flow_runtime  # noqa: F401
    import campaigns.service.server  # noqa: F401

    start = _read_start(stdin)

    def report(line: bytes) -> None:
        out.write(line + b"\n")
        out.flush()

    log.info("flow.worker.ready pid=%d part=%d of=%d", os.getpid(), start.part, start.parts)
    try:
        anyio.run(_work, start, stdin, report, backend="asyncio", backend_options={"use_uvloop": True})
    except BrokenPipeError:
        pass  # serve closed our stdout: it is gone


if __name__ == "__main__":
    main()
