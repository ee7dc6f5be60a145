"""Webhook delivery in its own process: ``sluice serve`` starts it, restarts it, stops it.

Why a process: encoding, signing and POSTing events (httpx's CPU per request most of all) cost
more than the state changes they report, and on the event loop that drives the carriers they
came straight off the message rate (docs/ARCHITECTURE.md, "Webhooks"). Here they run on another
core, on their own SQLite connection to the store's file (WAL: its reads never wait for the
server's writes, nor the writes for them; its few writes, the cursors, are short and use
``synchronous=NORMAL``: a cursor lost to a power cut only sends events again, at least once).

The conversation is three pipes, nothing else:

- **stdin**: one JSON line first (``Start``: the store's path, the settings, the tenants'
  secrets, the gateway's own endpoints for the SSRF rule), then any bytes: "look now" (the server
  writes one when ``record`` added sequence rows, so delivery does not wait for the poll). End of
  file means the server is gone (exited, or killed with SIGKILL): the process stops at once. What
  it had not acknowledged is still after the cursors on disk, sent again by the next one.
- **stdout**: a ``WebhookStats`` JSON line after each round that did something (at most a few a
  second): ``/metrics`` of the server shows the counters of all the processes it ran.
- **stderr**: the log, as the server's.

``DeliveryProcess`` is the server's side: ``run`` starts the process and starts it again when it
dies (backing off), ``poke`` writes to its stdin without ever blocking, ``statistics`` adds up.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # The delivery process runs on asyncio only: httpcore imports trio when it can (~0.4 s of
    # the process's start, before its first webhook). A None entry makes that import fail.
    # Likewise httpx's command line (pygments, rich): httpx only imports it if it can.
    for _unused in ("trio", "pygments"):
        sys.modules.setdefault(_unused, None)  # type: ignore[arg-type]

import contextlib
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import anyio
import msgspec

from gateway.child_process import read_status, stop as _stop, until_parent_gone
from gateway.webhook_settings import WebhookSettings
from gateway.core.targets import TargetPolicy
from gateway.runtime.webhooks import WebhookSender, WebhookStats

__all__ = ["DeliveryProcess", "Start", "main"]

log = logging.getLogger(__name__)


class Start(msgspec.Struct, frozen=True, kw_only=True):
    store_path: str
    settings: WebhookSettings
    secrets: dict[str, str]
    own: list[tuple[str, int]]  # the gateway's own endpoints: never a webhook's target


_NICE = 5  # added to serve's niceness: the carriers' work first when the cores are short
_stats_line = msgspec.json.Encoder().encode
_stats_dec = msgspec.json.Decoder(WebhookStats).decode


class DeliveryProcess:
    """The server's side of the delivery process (module docstring)."""

    def __init__(self, start: Start, *, own: Callable[[], list[tuple[str, int]]] | None = None,
                 restart_initial: float = 0.5, restart_max: float = 30.0) -> None:  # fmt: skip
        """``own``: the gateway's own endpoints, asked at each start (the API's port is known
        only once bound); else ``start.own``."""
        self._start, self._own = start, own
        self._wanted = anyio.Event()  # set by the first poke (or spawn): no webhooks, no process
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned: subprocess.Popen[bytes] | None = None
        self._base = WebhookStats(requests=0, delivered=0, retried=0, dead=0)  # processes that ended
        self._last = self._base
        self._restart_initial, self._restart_max = restart_initial, restart_max
        self._poked_at = -math.inf  # when a poke was last written (the event loop's clock)
        self._held = anyio.Event()  # a poke came within ``linger`` of the last one written
        self.starts = 0  # how many processes were started (tests, logs)
        self.pokes_written = 0  # (tests, the bench's counts)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def poke(self) -> None:
        """New sequence rows: tell the process to look. Never blocks: a full pipe already holds a
        poke, and a process that is gone is being restarted (it reads from the start).

        At most one poke every ``webhooks.linger``: ``record`` calls this after each write (a
        hundred and more a second under load), and each poke wakes the process for a round (a
        read, its POSTs, the receiver's wake-ups), on the cores that drive the carriers. A poke
        within ``linger`` of the last one is held and written once ``linger`` has passed
        (``_pump``), for every write that came meanwhile: their events go in one round."""
        if not self._wanted.is_set():
            self._wanted.set()
        if self._proc is None:
            return
        if anyio.current_time() - self._poked_at >= self._start.settings.linger:
            self._write_poke()
        else:
            self._held.set()

    def _write_poke(self) -> None:
        self._poked_at = anyio.current_time()
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        self.pokes_written += 1
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError, ValueError):
            os.write(proc.stdin.fileno(), b".")

    async def _pump(self) -> None:
        """The pokes ``poke`` held, each written ``linger`` after the one before (the writes
        that came while it waited are covered by it: the process reads after them)."""
        while True:
            await self._held.wait()
            await anyio.sleep(max(0.0, self._poked_at + self._start.settings.linger - anyio.current_time()))
            self._held = anyio.Event()
            self._write_poke()

    def statistics(self) -> WebhookStats:
        b, last = self._base, self._last
        return WebhookStats(requests=b.requests + last.requests, delivered=b.delivered + last.delivered,
                            retried=b.retried + last.retried, dead=b.dead + last.dead)  # fmt: skip

    async def run(self) -> None:
        """Start the process; when it dies, start another (after a backoff that grows while
        they die young). Canceled: close its stdin (it stops), then make sure it is gone."""
        await self._wanted.wait()  # a server whose jobs have no callback_url never starts one
        delay = self._restart_initial
        while True:
            began = time.monotonic()
            rc = await self._run_one()
            log.warning("webhook.process_exited rc=%s restarting_in=%.1fs", rc, delay)
            await anyio.sleep(delay)
            lived = time.monotonic() - began
            delay = self._restart_initial if lived > 60 else min(self._restart_max, delay * 2)

    def spawn(self) -> None:
        """Start the process ahead of ``run`` (it imports its modules, about a second, while the
        server recovers and binds); ``run`` then tells it where to deliver. Without it, ``run``
        starts one at the first ``poke`` (the first sequence row written)."""
        self._wanted.set()
        if self._spawned is None:
            self._spawned = subprocess.Popen([sys.executable, "-m", "gateway.runtime.webhook_process"],  # noqa: S603
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    async def aclose(self) -> None:
        """Stop whatever process is left (one spawned but never run, e.g. start-up failed)."""
        for proc in (self._spawned, self._proc):
            if proc is not None:
                with anyio.CancelScope(shield=True):
                    await _stop(proc)
        self._spawned = self._proc = None

    async def _run_one(self) -> int | None:
        self.spawn()
        proc, self._spawned = self._spawned, None
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self.starts += 1
        try:
            start = self._start if self._own is None else msgspec.structs.replace(self._start, own=self._own())
            proc.stdin.write(msgspec.json.encode(start) + b"\n")
            proc.stdin.flush()
            os.set_blocking(proc.stdin.fileno(), False)  # pokes never wait for the process
        except OSError:
            pass
        log.info("webhook.process_started pid=%d", proc.pid)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump)
                await self._read_stats(proc.stdout.fileno())
                tg.cancel_scope.cancel()
            return await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        finally:
            self._proc = None
            self._base, self._last = self.statistics(), WebhookStats(requests=0, delivered=0, retried=0, dead=0)
            with anyio.CancelScope(shield=True):
                await _stop(proc)

    async def _read_stats(self, fd: int) -> None:
        """The process's ``WebhookStats`` lines until end of file, read on the event loop."""
        def take(line: bytes) -> None:
            self._last = _stats_dec(line)

        await read_status(fd, take)


# -- the process itself --------------------------------------------------------------------


async def _deliver(start: Start, stdin: int, report: Callable[[WebhookStats], None]) -> None:
    from gateway.store.sqlite import SqliteStore  # noqa: PLC0415 - the child's own imports

    store = SqliteStore(start.store_path, synchronous="NORMAL", writes_changes=False)
    targets = TargetPolicy(start.settings.allow_private, start.own)
    try:
        # serve's pokes come at most every ``linger`` already (``DeliveryProcess.poke``): a round
        # per poke, without lingering again here.
        settings = msgspec.structs.replace(start.settings, linger=0.0)
        async with WebhookSender(store, settings, start.secrets, clock=time.time, targets=targets,
                                 store_inline=True) as sender:  # fmt: skip
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pokes, stdin, sender, tg.cancel_scope)
                tg.start_soon(_rounds, sender, report)
    finally:
        store.close()


async def _pokes(stdin: int, sender: WebhookSender, scope: anyio.CancelScope) -> None:
    """Each read from the server wakes the sender (it pokes per write); end of file (the server is
    gone) stops all."""
    await until_parent_gone(stdin, sender.poke)
    log.info("webhook.process_stopping reason=server gone")
    scope.cancel()


async def _rounds(sender: WebhookSender, report: Callable[[WebhookStats], None], every: float = 0.25) -> None:
    """``sender.run``, reporting the counters when they changed: at most every ``every``
    seconds while busy, and before each wait (so an idle process's are current)."""
    last, reported = sender.statistics(), time.monotonic()

    def on_round(busy: bool) -> None:
        nonlocal last, reported
        now = sender.statistics()
        if now != last and (not busy or time.monotonic() - reported >= every):
            report(now)
            last, reported = now, time.monotonic()

    await sender.run(on_round)


def _read_start(stdin: int) -> Start:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(stdin, 1)
        if not chunk:
            raise SystemExit(0)  # the server went away before telling us anything
        line += chunk
    try:
        return msgspec.json.decode(line, type=Start)
    except msgspec.MsgspecError as exc:  # not started by serve: say so, no traceback
        log.error("webhook.process_bad_start error=%s", exc)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # A Ctrl-C at the terminal reaches the whole process group: serve stops in order and closes
    # our stdin, which is what stops us (as it does when serve dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, out = sys.stdin.fileno(), sys.stdout.buffer
    start = _read_start(stdin)
    # Reporting states is the work that may wait: when the cores are short, the process that drives
    # the carriers (serve's loop, whose window of unconfirmed messages bounds the rate) goes first,
    # as serve's ingest workers let its loop go first. The events are not late by design, only
    # behind the carriers' work (`sluice bench kannel`, docs/BENCHMARKS.md).
    with contextlib.suppress(OSError):
        os.nice(_NICE)

    def report(stats: WebhookStats) -> None:
        out.write(_stats_line(stats) + b"\n")
        out.flush()

    log.info("webhook.process_ready pid=%d store=%s", os.getpid(), os.path.basename(start.store_path))
    try:
        anyio.run(_deliver, start, stdin, report, backend="asyncio", backend_options={"use_uvloop": True})
    except BrokenPipeError:
        pass  # the server closed our stdout: it is gone


if __name__ == "__main__":
    main()
