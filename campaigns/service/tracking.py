"""What happens after a launch: clicks on short links, message states from the gateway's webhooks,
the analytics report, and the A/B winner sent to the rest of the audience.

The redirect is the hot path (served by ``short_http``'s listener, or ``redirect_front`` on the API's
port). A delivered message's link is kept in memory with its ``Location`` (a bounded LRU of atomic
tuples: nothing about it changes once delivered, and the collector has nothing in it to walk); a
launched campaign's range code is answered from the link table (``core.link_table``: its campaign
and URL, no read; the recipient and the too-soon verdict are read for the whole buffer when it is
written, ``_resolve``); any other is read on the store's ``LinkReader``, a connection of its own that never waits behind the
store's writes: on the event loop for SQLite (WAL readers do not wait for the writer), in rounds for
PostgreSQL (every code missed while a read is in flight is read by the next one, one query, in a
worker thread; a waiting request is a callback of its round, ``redirect_later``: no task or event
per request). A ``Location`` (target + the campaign's UTM) is built once per campaign and URL, not per
hit. Then the verdict from ``core.links.verdict``, and the hit appended to an in-memory buffer as a
tuple with its link (the store's rows are built when the buffer is written, off the loop).
``run_flusher`` writes the buffer when its oldest hit has waited ``flush_interval`` (5 ms) and the
last write ended that long ago (or ``flush_batch`` hits are buffered), in one transaction: the hits,
each human click's ``clicked`` activity and its subscriber's aggregates, derived from the hits and
their links (``record_link_hits``, in a worker thread: one statement per table; PostgreSQL one in
all). **What is promised**:
a hit is stored within the flush interval plus one write after its 302 was answered; a kill -9 loses at most the hits answered since the last
committed flush began (never a hit already stored; tests/campaigns/test_click_crash.py); a clean stop
flushes; and every read of click figures (the report, ``/clicks``, the A/B decision) flushes first,
so a figure never misses a click answered before the read. The campaign's UTM parameters are cached
per campaign (definitions do not change after launch).

**Cost** is read back from the gateway: a state event naming the carrier prices the message with the
gateway's own preview of its text (``POST /v1/preview``: segments x that carrier's
``price_per_segment``). Previews are cached by the text's *shape* (ASCII letters and digits mapped to
``a``): those characters are single GSM-7 septets and single UTF-16 units that smart encoding never
touches, so two texts of one shape have the same encoding and segments (a few previews per campaign)."""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections.abc import Callable, Sequence

import anyio
import msgspec

from campaigns.core import abtest, attribution, links, schedule, templates
from campaigns.core.link_table import LinkTable
from campaigns.core.events import ActivityEvent
from campaigns.errors import CampaignError, Conflict, InvalidInput, StorageError
from campaigns.service.gateway_client import Preview
from campaigns.service.launch import HELD, Launcher, parse_spec, render_for
from campaigns.store.campaign_rows import CampaignRow, HitIn, LinkRow, PlannedRecipient, RecipientRow
from campaigns.store.base import LinkReader
from campaigns.store.campaign_sql import SharedLinkReader
from campaigns.store.report_sql import Scope

log = logging.getLogger(__name__)

#: The gateway's message states (docs/WEBHOOKS.md) as a campaign recipient's state.
GATEWAY_STATES = {"submitted": "sent", "delivered": "delivered", "canceled": "canceled", "expired": "expired",
                  "undelivered": "failed", "rejected": "failed", "failed": "failed", "unknown": "failed",
                  "capped": "failed", "suppressed": "failed"}  # fmt: skip
_ACTIVITY = {"sent": "message_sent", "delivered": "delivered"}


class StateEvent(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    job_id: str | None = None
    state: str
    at: float
    index: int | None = None
    reference: str | None = None
    to: str | None = None
    reason: str | None = None
    carrier: str | None = None


class StateBatch(msgspec.Struct, frozen=True, kw_only=True):
    events: list[StateEvent]


class Redirect(msgspec.Struct, frozen=True, kw_only=True):
    location: str
    verdict: links.HitVerdict
    unique: bool | None = None  # decided when the buffered click is written (see the module docstring)


_SHAPE = str.maketrans({c: "a" for c in string.ascii_letters + string.digits})


def text_shape(text: str) -> str:
    """``text`` with ASCII letters and digits as ``a``: the same encoding, length and segments."""
    return text.translate(_SHAPE)


_ASK = object()  # ``Tracker._table_hit``: the link table cannot tell, the store decides

#: What a round's waiter is told: the link (None: no such code), or the error that ended the read.
LinkCallback = Callable[[LinkRow | None, Exception | None], None]


class _Round:
    """Codes missed together, read in one query (``Tracker.want_link``): each code's waiters."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: dict[str, list[LinkCallback]] = {}


class WinnerOut(msgspec.Struct, frozen=True, kw_only=True):
    decision: abtest.Decision
    released: int  # held recipients now sent the winner (0 when pending, or already released)


#: A delivered message's link as the redirect keeps it in memory: only what a hit reads and what
#: its click writes, all atomic values (so the cache adds nothing for the cyclic GC to walk): tenant,
#: campaign, the recipient's number, delivered_at, expires_at, the ``Location`` (UTM'd target, built
#: once per campaign and URL), then the subscriber, target and created_at (the link's
#: ``short_links`` row and the click's activity are derived from them when the buffer is written).
#: A range code answered from the link table (``core.link_table``) carries two more: its batch and
#: slot (the recipient's phone, delivered_at and subscriber are read when the buffer is written).
_Known = tuple  # (tenant, campaign, phone, delivered_at, expires_at, Location, subscriber, target, created_at[, batch, idx])
#: A buffered hit: code, at, user agent, verdict, and its link (``_Known``): the click's rows are
#: built when the buffer is written (``HitIn``, off the loop), not per request.
_Buffered = tuple[str, float, str, str, _Known]


class Tracker:
    def __init__(self, launcher: Launcher, *, flush_interval: float = 0.005, flush_batch: int = 512,
                 link_cache: int = 200_000, location_cache: int = 100_000, table_ttl: float = 2.0) -> None:  # fmt: skip
        self.la = launcher
        self.link_cache = link_cache
        # code -> _Known: delivered messages only, least recently used evicted first
        self._links: dict[str, _Known] = {}
        # (tenant, campaign, target) -> Location: with_utm once per URL of a campaign, not per hit
        self._locations: dict[tuple[str, int, str], str] = {}
        self.location_cache = location_cache
        self._reader: LinkReader | None = None  # opened at the first miss (a connection of its own)
        self._collecting: _Round | None = None  # misses waiting for the next read
        self._in_flight: _Round | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.store = launcher.store
        self.flush_interval = flush_interval
        self._utm: dict[tuple[str, int], dict[str, str]] = {}
        self._min_delay: dict[str, float] = {}
        self._hits: list[_Buffered] = []
        self.flush_batch = flush_batch
        self._since = 0.0  # when the oldest buffered hit was buffered (time.monotonic: the loop's clock)
        self._wake: asyncio.Event | None = None  # set by the first hit buffered, or the flush_batch-th
        self._flushed_at = 0.0  # when the last write ended (time.monotonic)
        self._flushing: anyio.Lock | None = None
        self._shapes: dict[tuple[str, str], Preview] = {}
        # (store version, loaded at (monotonic), table): range codes answered without a read
        self._table: tuple[int, float, LinkTable] | None = None
        self._table_loading = False
        self.table_ttl = table_ttl
        # (tenant, campaign, batch, idx) -> (subscriber, phone, delivered_at): delivered slots' recipients,
        # read by a flush (``_resolve``; only the flush's thread touches it: flushes run one at a time)
        self._slots: dict[tuple[str, int, int, int], tuple[int, str, float | None]] = {}

    # ---- short links -----------------------------------------------------------------------------
    async def redirect(self, code: str, *, method: str, user_agent: str | None) -> Redirect | None:
        """Where ``code`` leads (None: unknown or expired), the hit buffered with its verdict."""
        done, hit = self.redirect_nowait(code, method=method, user_agent=user_agent)
        if done:
            return hit
        link = await self._link(code)
        if link is None:
            return None
        await self._utm_of(link)  # before the hit is kept: a failure keeps nothing
        return self._keep_link(code, link, method, user_agent)

    def redirect_nowait(self, code: str, *, method: str, user_agent: str | None) -> tuple[bool, Redirect | None]:
        """``redirect`` when it needs no wait (the link in memory, or read on the loop: SQLite):
        ``(True, hit or None)``; ``(False, None)``: call ``redirect`` (or ``redirect_later``).
        Raises nothing a wait would fix."""
        known = self._links.pop(code, None)
        if known is not None:
            self._links[code] = known  # most recently used last: the oldest is evicted first
            return True, self._keep(code, known, method, user_agent)
        if not (5 <= len(code) <= 16) or not code.isalnum():
            return True, None
        found = self._table_hit(code, method, user_agent)
        if found is not _ASK:
            return True, found  # type: ignore[return-value]
        reader = self._open_reader()
        if not reader.on_loop:
            return False, None
        try:
            link = reader.read((code,)).get(code)
        except CampaignError:  # its connection busy for a moment: the waiting path reads it off the loop
            return False, None
        if link is None:
            return True, None
        if (link.tenant, link.campaign_id) not in self._utm:  # the campaign's UTM not read yet: a store read
            return False, None
        return True, self._keep_link(code, link, method, user_agent)

    def redirect_later(self, code: str, *, method: str, user_agent: str | None,
                       done: Callable[[Redirect | None, Exception | None], None]) -> bool:  # fmt: skip
        """``redirect`` for a caller that cannot wait (the listener's protocol callbacks): the code
        joins the next round of reads (``want_link``) and ``done(hit, None)`` or ``done(None, error)``
        is called on the loop when it is read: no task per request. Call after ``redirect_nowait``
        said it must wait. False (nothing started): the reader reads on the loop (SQLite), so what
        made it wait was rare (its connection busy, a campaign's first hit): call ``redirect``."""
        if self._open_reader().on_loop:  # its connection is the loop's: never read from a thread
            return False

        def got(link: LinkRow | None, error: Exception | None) -> None:
            if error is not None or link is None:
                done(None, error)
            elif (link.tenant, link.campaign_id) in self._utm:
                done(self._keep_link(code, link, method, user_agent), None)
            else:  # the campaign's first hit: its UTM read from the store (once per campaign)
                self._spawn(self._later_with_utm(code, link, method, user_agent, done))

        self.want_link(code, got)
        return True

    async def _later_with_utm(self, code: str, link: LinkRow, method: str, user_agent: str | None,
                              done: Callable[[Redirect | None, Exception | None], None]) -> None:  # fmt: skip
        try:
            await self._utm_of(link)
        except Exception as exc:  # noqa: BLE001 - the waiter answers it (503 for storage)
            done(None, exc)
            return
        done(self._keep_link(code, link, method, user_agent), None)

    def _location(self, tenant: str, campaign_id: int, target: str) -> str:
        key = (tenant, campaign_id, target)
        location = self._locations.get(key)
        if location is None:
            if len(self._locations) >= self.location_cache:  # per-recipient targets: bounded
                self._locations.clear()
            location = self._locations[key] = links.with_utm(target, self._utm[key[:2]])
        return location

    def _table_hit(self, code: str, method: str, user_agent: str | None) -> Redirect | None | object:
        """A range code answered from the link table (``core.link_table``: its campaign and URL, no
        read), or ``_ASK``: the table cannot tell (or is not loaded, or older than the store's last
        change of links in this process): the store decides. The recipient's facts (who, the
        too-soon verdict) are settled when the hit is written (``_resolve``)."""
        table = self._table_now()
        if table is None:
            return _ASK
        found = table.find(code)
        if found is None:
            return _ASK
        g, batch, idx, position = found
        if (g.tenant, g.campaign_id) not in self._utm:  # (its campaign unreadable at the table's load)
            return _ASK
        target = g.targets[position]
        known = (g.tenant, g.campaign_id, None, None, g.expires_at, self._location(g.tenant, g.campaign_id, target), 0,
                 target, g.created_at, batch, idx)  # fmt: skip
        return self._keep(code, known, method, user_agent)

    def _table_now(self) -> LinkTable | None:
        """The link table if current: loaded from this store object's present state (its
        ``link_table_version``), reloaded in the background once ``table_ttl`` old (what another
        process changed is seen within that, plus a load), None while none is current."""
        version = getattr(self.store, "link_table_version", None)
        if version is None:
            return None
        t = self._table
        if t is None or t[0] != version or time.monotonic() - t[1] > self.table_ttl:
            self._start_table_load()
        return t[2] if t is not None and t[0] == version else None

    def _start_table_load(self) -> None:
        if self._table_loading:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._table_loading = True
        self._spawn(self.load_link_table())

    async def load_link_table(self) -> None:
        """Load the link table (``Store.link_table``, in a worker thread) and its campaigns' UTM."""
        self._table_loading = True
        try:
            version = self.store.link_table_version
            table = await self.la._run(self.store.link_table)
            for tenant, campaign_id in table.campaigns():
                await self._utm_for(tenant, campaign_id)
            self._table = (version, time.monotonic(), table)
        except CampaignError as exc:  # the store busy or down: codes are read meanwhile, tried again later
            log.warning("redirect.table_load_failed error=%s", exc)
        finally:
            self._table_loading = False

    def _keep_link(self, code: str, link: LinkRow, method: str, user_agent: str | None) -> Redirect | None:
        """A link read from the store: its ``Location`` (built once per campaign and URL), kept in
        memory when delivered (a delivered message's link never changes again: states only move
        forward, and delivered is final), then the hit."""
        location = self._location(link.tenant, link.campaign_id, link.target)
        known = (link.tenant, link.campaign_id, link.phone, link.delivered_at, link.expires_at, location,
                 link.subscriber_id, link.target, link.created_at)
        if link.delivered_at is not None:
            if len(self._links) >= self.link_cache:
                del self._links[next(iter(self._links))]
            self._links[code] = known
        return self._keep(code, known, method, user_agent)

    def _keep(self, code: str, known: _Known, method: str, user_agent: str | None) -> Redirect | None:
        """The hit's verdict (``links.verdict``), buffered as a tuple; the redirect."""
        tenant, _campaign_id, _phone, delivered_at, expires_at, location = known[:6]
        now = self.la.clock()
        if expires_at is not None and now >= expires_at:
            return None
        min_delay = self._min_delay.get(tenant)
        if min_delay is None:
            tl = self.la.tenants.get(tenant)
            min_delay = self._min_delay[tenant] = tl.click_min_delay if tl is not None else 10.0
        verdict = links.verdict(method, user_agent, now, delivered_at, min_delay)
        hits = self._hits
        hits.append((code, now, user_agent or "", verdict, known))
        if len(hits) == 1:  # the flusher's deadline starts with the oldest hit (``run_flusher``)
            self._since = time.monotonic()
            if self._wake is not None:
                self._wake.set()
        elif len(hits) == self.flush_batch and self._wake is not None:
            self._wake.set()
        return Redirect(location=location, verdict=verdict)

    def _open_reader(self) -> LinkReader:
        if self._reader is None:
            opener = getattr(self.store, "open_link_reader", None)
            self._reader = opener() if opener is not None else SharedLinkReader(self.store)
        return self._reader

    async def _link(self, code: str) -> LinkRow | None:
        """The link of a code not in memory: read on the loop when the reader never waits (SQLite's
        connection of its own), else in the next round (``want_link``)."""
        reader = self._open_reader()
        if reader.on_loop:
            try:
                return reader.read((code,)).get(code)
            except CampaignError:  # its connection busy for a moment: the store's own read, off the loop
                return await self.la._run(self.store.link, code)
        fut: asyncio.Future[LinkRow | None] = asyncio.get_running_loop().create_future()

        def got(link: LinkRow | None, error: Exception | None) -> None:
            if not fut.done():  # (the waiter may have been cancelled)
                fut.set_exception(error) if error is not None else fut.set_result(link)

        self.want_link(code, got)
        return await fut

    def want_link(self, code: str, got: LinkCallback) -> None:
        """Read ``code``'s link off the loop, in a round: every code missed while a read is in flight
        waits for the next one, read together in one query (PostgreSQL: one round trip for all, one
        thread hop per round, no task or event per request). ``got(link, error)`` is called on the
        loop; an error reaches every waiter of its round and nothing else."""
        rnd = self._collecting
        if rnd is None:
            rnd = self._collecting = _Round()
        rnd.waiters.setdefault(code, []).append(got)
        if self._in_flight is None:
            self._next_round()

    def _next_round(self) -> None:
        rnd, self._collecting = self._collecting, None
        if rnd is not None:
            self._in_flight = rnd
            self._spawn(self._read_round(rnd))

    async def _read_round(self, rnd: _Round) -> None:
        found: dict[str, LinkRow] = {}
        error: Exception | None = None
        rounds = [rnd]
        try:  # not abandoned on cancel: the round always ends, its waiters are answered
            found = await anyio.to_thread.run_sync(self._open_reader().read, list(rnd.waiters))
        except Exception as exc:  # noqa: BLE001 - every waiter of the round sees it
            error = exc
        except BaseException:  # cancelled (shutting down): every waiter hears it, no next round
            error = StorageError("the link read was cancelled")
            if self._collecting is not None:
                rounds.append(self._collecting)
                self._collecting = None
            raise
        finally:
            self._in_flight = None
            for r in rounds:
                for code, waiters in r.waiters.items():
                    link = found.get(code)
                    for got in waiters:
                        try:
                            got(link, error)
                        except Exception:  # noqa: BLE001 - one waiter's failure never strands the others
                            log.exception("redirect.waiter_failed code=%s", code)
            if self._collecting is not None and self._in_flight is None:  # (a waiter may have started it)
                self._next_round()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for t in list(self._tasks):
            t.cancel()

    def log_front_error(self, code: str) -> None:
        log.warning("redirect.front_failed code=%s (answered by the API's own route)", code, exc_info=True)

    @staticmethod
    def _rows(hits: Sequence[_Buffered]) -> list[HitIn]:
        """The buffered hits as the store's rows, each with the link it resolved to."""
        return [HitIn(code=code, at=at, user_agent=ua, verdict=verdict, tenant=k[0], campaign_id=k[1], phone=k[2],
                      subscriber_id=k[6], target=k[7], created_at=k[8], expires_at=k[4])
                for code, at, ua, verdict, k in hits]  # fmt: skip

    def _resolve(self, hits: Sequence[_Buffered]) -> list[_Buffered]:
        """The hits answered from the link table with their recipients (one read for all of a
        flush: ``Store.slot_recipients``) and their final verdict: a GET by a person within the
        tenant's ``click_min_delay`` of the delivery is ``too_soon``, as ``links.verdict`` decides it
        for a link read before the answer. A slot without a recipient row (cannot be: the table
        answers only written slots) is logged and dropped."""
        slots = {(k[0], k[1], k[9], k[10]) for _c, _a, _u, _v, k in hits if len(k) > 9}
        if not slots:
            return list(hits)
        known = self._slots  # delivered recipients seen by earlier flushes (delivered is final)
        found = {s: known[s] for s in slots if s in known}
        if len(found) < len(slots):
            read = self.store.slot_recipients(sorted(s for s in slots if s not in found))
            found.update(read)
            for s, r in read.items():
                if r[2] is not None:
                    if len(known) >= self.link_cache:
                        del known[next(iter(known))]
                    known[s] = r
        out: list[_Buffered] = []
        for code, at, ua, verdict, k in hits:
            if len(k) > 9:
                r = found.get((k[0], k[1], k[9], k[10]))
                if r is None:
                    log.error("clicks.no_recipient code=%s campaign=%s slot=%s/%s", code, k[1], k[9], k[10])
                    continue
                sid, phone, delivered = r
                if verdict == "click" and delivered is not None and abs(at - delivered) < self._min_delay.get(k[0], 10.0):
                    verdict = "too_soon"
                k = (k[0], k[1], phone, delivered, k[4], k[5], sid, k[7], k[8])
            out.append((code, at, ua, verdict, k))
        return out

    def _write(self, hits: Sequence[_Buffered], now: float) -> None:
        self.store.record_link_hits(self._rows(self._resolve(hits)), now=now)

    async def flush(self) -> int:
        """Write the buffered hits and their ``clicked`` activities in one transaction (all or none:
        on a failure they stay buffered, in order, for the next); how many hits. Flushes run one at a
        time, so a reader that flushed has seen every hit answered before it. The rows are built in
        the worker thread, off the loop."""
        if self._flushing is None:
            self._flushing = anyio.Lock()
        async with self._flushing:
            hits, self._hits = self._hits, []
            if not hits:
                return 0
            since, self._since = self._since, time.monotonic()  # hits buffered from now on: their own deadline
            try:
                await self.la._run(self._write, hits, self.la.clock())
            except BaseException:
                self._hits[:0] = hits  # kept for the next flush
                self._since = since
                raise
            finally:
                self._flushed_at = time.monotonic()
            return len(hits)

    async def run_flusher(self) -> None:
        """Write the buffer when its oldest hit has waited ``flush_interval`` and the last write
        ended that long ago, or as soon as ``flush_batch`` hits are buffered, whichever comes first
        (so a hit is stored within the interval plus the write under way and its own: docs/CAMPAIGNS.md;
        while writes are slow, each carries what came during the previous one and the interval after
        it, instead of one write right after another); asleep while nothing is buffered; a last
        flush on the way out."""
        try:
            loop = asyncio.get_running_loop()
            if getattr(self.store, "link_table_version", None) is not None:
                self._start_table_load()  # range codes answered from memory from the first hits on
            while True:
                wake = self._wake = asyncio.Event()
                if not self._hits:
                    await wake.wait()
                    continue
                wait = max(self._since, self._flushed_at) + self.flush_interval - time.monotonic()
                if wait > 0 and len(self._hits) < self.flush_batch:
                    timer = loop.call_later(wait, wake.set)  # (a timer handle: no cancel scope per wait)
                    try:
                        await wake.wait()
                    finally:
                        timer.cancel()
                    continue  # (the deadline, a full batch, or a reader's flush emptied the buffer: look again)
                self._wake = None
                if self._hits:
                    try:
                        await self.flush()
                    except CampaignError as exc:  # the store busy or down: kept, tried again next round
                        log.warning("clicks.flush_failed pending=%d error=%s", len(self._hits), exc)
                        await anyio.sleep(min(1.0, 100 * self.flush_interval))
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.flush()
                except CampaignError as exc:
                    log.error("clicks.lost_at_stop count=%d error=%s", len(self._hits), exc)

    async def _utm_of(self, link: LinkRow) -> dict[str, str]:
        return await self._utm_for(link.tenant, link.campaign_id)

    async def _utm_for(self, tenant: str, campaign_id: int) -> dict[str, str]:
        key = (tenant, campaign_id)
        if key not in self._utm:
            camp = await self.la._run(self.store.campaign, tenant, campaign_id)
            utm = {"utm_source": "sms", "utm_medium": "sms", "utm_campaign": f"campaign-{campaign_id}"}
            if camp is not None:
                utm.update(parse_spec(camp.definition).utm)
            self._utm[key] = utm
        return self._utm[key]

    # ---- message states --------------------------------------------------------------------------
    async def states(self, tenant: str, batch: StateBatch) -> int:
        """Apply the gateway's state events; how many moved a campaign recipient. A repeated event
        changes nothing (states only move forward; activities carry the message id and state)."""
        moved = 0
        for e in batch.events:
            state = GATEWAY_STATES.get(e.state)
            if state is None or e.job_id is None or e.index is None:
                continue
            row = await self.la._run(self.store.recipient_state, tenant, e.job_id, e.index, state=state,
                                     message_id=e.message_id, at=e.at)  # fmt: skip
            if row is None or row.state != state or row.state_at != e.at:
                continue
            moved += 1
            if e.carrier is not None:
                await self._price(tenant, e.message_id, e.carrier, row.text, (row.campaign_id, row.subscriber_id))
            if state in _ACTIVITY:
                event = ActivityEvent(id=f"msg:{e.message_id}:{state}", at=e.at, phone=row.phone, kind=_ACTIVITY[state],  # type: ignore[arg-type]
                                      properties={"campaign": row.campaign_id, "variant": row.variant})  # fmt: skip
                await self.la._run(self.store.apply_event, tenant, event, phone=row.phone, now=self.la.clock())
        return moved

    async def _price(self, tenant: str, message_id: str, carrier: str, text: str, recipient: tuple[int, int]) -> None:
        """The message's cost as the gateway prices it (its preview of this text's shape, per carrier)."""
        key = (tenant, text_shape(text))
        p = self._shapes.get(key)
        if p is None:
            try:
                p = await self.la._client(tenant).preview(key[1])
            except CampaignError as exc:  # the cost stays unknown; the next event of the message retries
                log.warning("campaign.cost.unknown tenant=%s message=%s error=%s", tenant, message_id, exc)
                return
            self._shapes[key] = p
        await self.la._run(self.store.record_cost, tenant, message_id, carrier=carrier, segments=p.segments,
                           cost=p.prices.get(carrier), recipient=recipient)  # fmt: skip

    # ---- analytics -------------------------------------------------------------------------------
    async def _recipients(self, tenant: str, campaign_id: int) -> list[RecipientRow]:
        out: list[RecipientRow] = []
        after = 0
        while page := await self.la._run(self.store.campaign_recipients, tenant, campaign_id, after=after, limit=5000):
            out += page
            after = page[-1].subscriber_id
        return out

    async def report(self, tenant: str, campaign_id: int | None, by: Sequence[str], zone: str | None = None,
                     *, since: float = 0.0) -> attribution.Report:  # fmt: skip
        """The campaign's figures (``campaign_id`` None: every campaign and flow step of the tenant).
        Orders and opt-outs go to the message the rules pick among *all* the tenant's messages, so an
        order counts once across every report. Counts in SQL, attribution in ``core.attribution``."""
        if campaign_id is not None:
            camp = await self.la.campaign(tenant, campaign_id)
            scope = Scope(campaign=camp.id, since=camp.launched_at or camp.created_at)
            mine = str(camp.id)
            in_scope = lambda s: s.campaign == mine  # noqa: E731
        else:
            scope, in_scope = Scope(since=since), None
        tl = self.la.tenants.get(tenant)
        await self.flush()
        facts = await self.la._run(self.store.report_facts, tenant, scope)
        return attribution.tally(facts.groups, facts.history, by=by, in_scope=in_scope,  # type: ignore[arg-type]
                                 windows=tl.windows if tl else attribution.Windows(),
                                 zone=zone or (tl.zone if tl else "UTC"))  # fmt: skip

    async def send_times(self, tenant: str, campaign_id: int, clock: str = "tenant") -> list[int]:
        """24 counts: the campaign's planned sends by hour of day (seed 003's 时段分布), on the shop's
        clock or each recipient's own."""
        if clock not in ("tenant", "recipient"):
            raise InvalidInput("clock: tenant or recipient", code="invalid_field", field="clock")
        await self.la.campaign(tenant, campaign_id)
        rows = [r for r in await self._recipients(tenant, campaign_id) if r.batch != HELD and r.state != "rejected"]
        tl = self.la.tenants.get(tenant)
        planned = [schedule.SendTime(subscriber=r.subscriber_id, send_at=r.send_at, zone=r.tz) for r in rows]
        return schedule.send_time_report(planned, clock=clock, tenant_zone_name=tl.zone if tl else "UTC")  # type: ignore[arg-type]

    # ---- A/B winner ------------------------------------------------------------------------------
    async def decide(self, tenant: str, camp: CampaignRow) -> abtest.Decision:
        await self.flush()
        spec = parse_spec(camp.definition)
        test = spec.test(camp.id, camp.launched_at or camp.created_at)
        if test is None:
            raise InvalidInput("this campaign has no A/B test", code="no_ab_test")
        # The same facts and rules as the report: an order another campaign's later click earned is
        # not this test's revenue.
        tl = self.la.tenants.get(tenant)
        mine = str(camp.id)
        facts = await self.la._run(self.store.report_facts, tenant, Scope(campaign=camp.id, since=camp.launched_at or camp.created_at))
        rep = attribution.tally(facts.groups, facts.history, by=("variant",), in_scope=lambda s: s.campaign == mine,
                                windows=tl.windows if tl else attribution.Windows())  # fmt: skip
        sent = {e.message: e for e in facts.history if isinstance(e, attribution.Sent) and e.campaign == mine}
        delivered = {e.message for e in facts.history if isinstance(e, attribution.Delivered)}
        totals = {e.order: e.total for e in facts.history if isinstance(e, attribution.Ordered)}
        per_variant: dict[str | None, list[int]] = {}
        per_message: dict[str, int] = {}
        for a in rep.attributions:
            if a.message in sent and a.message in delivered:
                per_message[a.message] = per_message.get(a.message, 0) + totals[a.order]
        for m, revenue in per_message.items():
            per_variant.setdefault(sent[m].variant, []).append(revenue)  # the others of the variant: 0
        results = {}
        for row in rep.rows:
            name = row.key.get("variant")
            if not isinstance(name, str):
                continue
            revenues = per_variant.get(name, [])
            results[name] = abtest.VariantResult(delivered=row.delivered, unique_clicks=min(row.unique_clicks, row.delivered),
                                                 conversions=min(row.conversions, row.delivered), revenue=sum(revenues),
                                                 revenue_sq=float(sum(r * r for r in revenues)))  # fmt: skip
        for v in test.variants:
            results.setdefault(v.name, abtest.VariantResult(delivered=0))
        return abtest.decide(test, results, self.la.clock())

    async def send_winner(self, tenant: str, campaign_id: int) -> WinnerOut:
        """Decide; with a winner (or the fallback's pick), render its text for the held rest and send it."""
        camp = await self.la.campaign(tenant, campaign_id)
        if camp.status not in ("launched",):
            raise Conflict(f"the campaign is {camp.status}", code="campaign_status", field="status")
        decision = await self.decide(tenant, camp)
        if decision.status == "pending" or decision.winner is None:
            return WinnerOut(decision=decision, released=0)
        moved = await self.la._run(self._release, tenant, camp, decision.winner)
        await self.la._submit(self.la._client(tenant), tenant, camp)
        return WinnerOut(decision=decision, released=moved)

    def _release(self, tenant: str, camp: CampaignRow, winner: str) -> int:
        spec = parse_spec(camp.definition)
        tl = self.la.tenants[tenant]
        held = self.store.batch_recipients(tenant, camp.id, HELD)
        if not held:
            return 0
        now = self.la.clock()
        template = templates.compile_template(spec.texts()[winner])
        first_batch = max((b.batch for b in self.store.batches(tenant, camp.id)), default=-1) + 1
        rows: list[PlannedRecipient] = []
        link_rows: list[LinkRow] = []
        taken: set[str] = set()
        for i, r in enumerate(held):
            sub = self.store.subscriber(tenant, r.subscriber_id)
            if sub is None or sub.consent != "confirmed":  # opted out since launch: not sent
                continue
            text, new_links = render_for(self.store, tenant, spec, camp.id, sub, template, tl, now, first=False, taken=taken)
            rows.append(PlannedRecipient(subscriber_id=sub.id, phone=sub.phone, variant=winner, send_at=now, tz=r.tz,
                                         text=text, batch=first_batch + len(rows) // spec.batch_size,
                                         idx=len(rows) % spec.batch_size))  # fmt: skip
            link_rows += new_links
        return self.store.release_held(tenant, camp.id, rows, link_rows)


__all__ = ["GATEWAY_STATES", "Redirect", "StateBatch", "StateEvent", "Tracker", "WinnerOut"]
