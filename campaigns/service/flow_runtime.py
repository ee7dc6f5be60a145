"""The flow runtime: the shell around the pure engine (``campaigns.core.flows``).

Theory of operation. Three kinds of work, each one store transaction (``Store.flow_tx``) in which
runs are read, the engine decides (``start`` / ``step``, given ``now``), and the new runs, their
next timers and the records of their actions are written together:

1. **inputs** (``FlowWorker.drain``): the ``flow_inputs`` queue, filled in the very transaction
   that recorded an order, a fulfilment, a custom event, an abandoned checkout, a consent change,
   a segment entry or a flow link's click (``campaigns/core/flow_inputs.py``). Each input is first
   applied to the subscriber's active runs (exits end them at once; an opt-out ends them all;
   ``wait_event`` nodes move on), then starts the enabled flows whose trigger it matches (re-entry
   rules read the subscriber's past runs). An input id is applied once (``flow_events``). A batch
   is applied as one: its ids marked and its subscribers' runs, values, tags and stats read with
   one statement each (``FlowTx.first_times``, ``FlowTx.prefetch``), the engine called per input in
   queue order, the new runs and run updates written together at the commit (``FlowTx.flush``).
   On SQLite a batch of inputs is planned in a read snapshot and written under the write lock after
   checks (``Store.flow_plan``; a stale batch is redone under the lock): several workers decide at
   once, only their writes take turns.
2. **timers** (``FlowWorker.fire``): runs whose ``due`` is past, claimed in batches, earliest
   first (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: several workers take disjoint batches).
3. **replies** (``FlowWorker.reply``, behind ``FlowRuntime.offer_reply``, the inbox's
   ``ReplyRouter``): a subscriber's reply goes to the run that waits for it, or starts a keyword flow.

A ``Send`` action is rendered at once (the tenant's template, the subscriber's values, short links)
and recorded in ``flow_outbox`` as ``pending`` with key ``flow-{run id}-{visit}``; the sender
(``FlowRuntime.send_pending``) posts each pending row to the gateway's ``POST /v1/messages`` with
that ``Idempotency-Key`` and the same bytes every time, then marks it ``sent``. A kill -9 anywhere
loses nothing (the run, its timer and its outbox row commit together; an uncommitted step is
redone) and sends nothing twice (a re-post of a key the gateway stored returns its stored answer).

A flow's ``webhook`` node calls the shop's receiver, which may be dead, slow or redirecting: webhook
calls are posted apart from the sends (``post_webhooks``: at most ``WEBHOOK_BATCH`` a round, each
within ``WEBHOOK_TIMEOUT`` in all, DNS included), so a receiver never holds up the SMS behind it.
A 2xx is ``sent``; a 3xx is ``failed`` (redirects are not followed: a redirect could lead into our
own network); other 4xx are ``failed``; a 5xx, 408, 425, 429, a time-out or a refused connection is
tried again after as long as the call has been failing (at least ``WEBHOOK_RETRY_MIN_S``, at most
``WEBHOOK_RETRY_MAX_S``: a back-off that doubles), and ``failed`` once ``WEBHOOK_GIVE_UP_S`` have
passed since it was recorded.

Marketing flows only take subscribers whose consent is confirmed (``NotEntered: not_marketable``);
a marketing send to someone who opted out meanwhile is recorded ``skipped``. Quiet hours and caps
are the gateway's job; transactional flows are sent with ``category: transactional``."""

from __future__ import annotations

import contextlib
import functools
import gc
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import msgspec

from campaigns.core import flow_inputs, links, templates
from campaigns.core import flows as F
from campaigns.core.conversations import StartFlow, ToRun, route_reply
from campaigns.errors import CampaignError, GatewayError, GatewayRefused
from campaigns.service.gateway_client import BatchResult, GatewayClient, message_bytes
from campaigns.service.launch import TenantLinks
from campaigns.store.base import Store
from campaigns.store.flow_rows import FlowMessage
from campaigns.store.flow_sql import FlowStale, FlowTx

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()

WEBHOOK_BATCH = 64  # webhook calls per round, WEBHOOK_CONCURRENCY at once
WEBHOOK_CONCURRENCY = 16
WEBHOOK_TIMEOUT = 10.0  # seconds for one call in all: resolving, connecting, sending, the answer
WEBHOOK_RETRY_MIN_S, WEBHOOK_RETRY_MAX_S = 30.0, 3600.0
WEBHOOK_GIVE_UP_S = 86_400.0
_RETRIED = frozenset({408, 425, 429})

__all__ = ["FlowRuntime", "FlowWorker", "ReplyRouter", "Statistics", "TenantFlows", "idempotency_key"]


class ReplyRouter(Protocol):
    """What the inbound handler asks before a reply goes to the inbox (True: a waiting run took it,
    or it started a keyword flow). The caller passes only replies the gateway did not classify as an
    opt-out, opt-in or help word: an opt-out word never reaches a flow as an answer."""

    async def offer_reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool: ...


class TenantFlows(msgspec.Struct, frozen=True, kw_only=True):
    """What a tenant's flow sends need: the sender, the shop name, its short links and text rules."""

    sender: str
    shop_name: str = "our shop"
    links: TenantLinks | None = None
    rules: templates.MessageRules = templates.MessageRules()


class Statistics(msgspec.Struct, kw_only=True):
    """Counts since start (``FlowRuntime.statistics()``)."""

    inputs: int = 0  # input events applied (triggers, exits, replies, clicks, scans)
    started: int = 0  # runs started
    advanced: int = 0  # run steps that changed a run (timers included)
    timers: int = 0  # due timers fired
    recorded: int = 0  # sends / webhook calls recorded
    planned: int = 0  # batches of inputs decided in a read snapshot and written as planned (SQLite)
    redone: int = 0  # planned batches found stale at the write (a run of theirs changed): redone under the lock
    write_wait_s: float = 0.0  # planned batches: time waiting for the write lock (another worker writing)
    write_hold_s: float = 0.0  # ... holding it (checks, writes, commit)
    write_cpu_s: float = 0.0  # ... and the CPU this process spent holding it
    sent: int = 0  # handed to the gateway and answered
    failed: int = 0


_gc_lock = threading.Lock()
_gc_holders = 0  # batches running with the cyclic collector paused (by any thread)
_gc_paused = False  # whether they paused it (it was enabled when the first began)


@contextlib.contextmanager
def _batch_without_cyclic_gc() -> Iterator[None]:
    """Run one batch with the cyclic garbage collector paused, and resume it after.

    A batch makes tens of thousands of containers that live until its end (the decoded runs, their
    contexts, the subscribers' fields, the rows to write): each allocation counts towards the next
    collection, which then walks them all, and the survivors are promoted and walked again by the
    older generations: 12 % of a drain's samples (py-spy --native, ``sluice bench flows
    --subscribers 20000 --phase events``) went to ``gc_collect_main``. They are JSON values and
    rows, freed by reference counting when the batch ends; the cyclic collector has nothing to find
    in them. Paused per batch, not for good: a cycle made meanwhile (by anything in the process) is
    collected by the first collection after it, when the counts carried over set it off."""
    global _gc_holders, _gc_paused
    with _gc_lock:
        if _gc_holders == 0:
            _gc_paused = gc.isenabled()
            if _gc_paused:
                gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_paused:
                _gc_paused = False
                gc.enable()


def idempotency_key(run_id: int, visit: int) -> str:
    return f"flow-{run_id}-{visit}"


def _visit(send_key: str) -> int:
    return int(send_key.rsplit(":", 1)[1])


class FlowWorker:
    """The synchronous part (worker threads): each public method is one store transaction."""

    def __init__(self, store: Store, tenants: Mapping[str, TenantFlows], stats: Statistics | None = None, *,
                 part: int = 0, parts: int = 1) -> None:  # fmt: skip
        self.store, self.tenants = store, dict(tenants)
        # Several workers: worker ``part`` of ``parts`` drains the inputs and fires the timers of the
        # subscribers ``id % parts == part`` (a stable hash): one subscriber's inputs and timers are
        # applied by one worker, in order, as with a single worker; an exit queued before a due timer
        # is applied before it (``fire``). Every part needs its worker (a killed one is restarted).
        self.part, self.parts = part, parts
        self.stats = stats or Statistics()
        self._flows: dict[tuple[str, str, int], F.Flow] = {}  # published versions never change: cached

    def _flow(self, ftx: FlowTx, flow_id: str, version: int) -> F.Flow:
        key = (ftx.tenant, flow_id, version)
        flow = self._flows.get(key)
        if flow is None:
            flow = F.parse_flow(ftx.definition(flow_id, version))
            self._flows[key] = flow
        return flow

    # ---- the three kinds of work ---------------------------------------------------------------
    def drain(self, tenant: str, now: float, limit: int = 1000) -> int:
        """Apply up to ``limit`` queued inputs (this worker's share); returns how many were taken.
        The batch runs with the cyclic collector paused (``_batch_without_cyclic_gc``).

        On SQLite the batch is decided in a read snapshot and only written under the write lock
        (``Store.flow_plan``), so several workers decide at once; if what it read changed before the
        write (``FlowStale``: nothing of it stored), it is redone the old way, all under the lock."""
        with _batch_without_cyclic_gc():
            return self._drain(tenant, now, limit)

    def _drain(self, tenant: str, now: float, limit: int) -> int:
        if self.store.flow_plan_supported():
            counts = self._counts()
            try:
                with self.store.flow_plan(tenant, part=self.part, parts=self.parts) as ftx:
                    taken = ftx.take_inputs(limit, part=self.part, parts=self.parts)
                    if taken:
                        self._inputs(ftx, [(sid, event) for _id, sid, event in taken], now)
                if taken:
                    self.stats.planned += 1
                    wait, hold, cpu = ftx.write_times
                    self.stats.write_wait_s += wait
                    self.stats.write_hold_s += hold
                    self.stats.write_cpu_s += cpu
                return len(taken)
            except FlowStale as exc:
                self._restore(counts)
                self.stats.redone += 1
                log.info("flow.batch.redo tenant=%s reason=%s", tenant, exc)
        with self.store.flow_tx(tenant) as ftx:
            taken = ftx.take_inputs(limit, part=self.part, parts=self.parts)
            if taken:
                self._inputs(ftx, [(sid, event) for _id, sid, event in taken], now)
        return len(taken)

    _COUNTS = ("inputs", "started", "advanced", "recorded")  # what a batch counts (the sender's own are apart)

    def _counts(self) -> tuple[int, ...]:
        return tuple(getattr(self.stats, f) for f in self._COUNTS)

    def _restore(self, counts: tuple[int, ...]) -> None:
        for f, v in zip(self._COUNTS, counts):
            setattr(self.stats, f, v)

    def feed(self, tenant: str, inputs: Sequence[tuple[int, F.Event]], now: float) -> None:
        """Apply inputs directly (the periodic scans), in one transaction."""
        with self.store.flow_tx(tenant) as ftx:
            self._inputs(ftx, inputs, now)

    def fire(self, tenant: str, now: float, limit: int = 1000) -> list[float]:
        """Fire up to ``limit`` due timers; returns their due times (the caller measures the lag).
        Inputs already queued for those subscribers are applied first, in the same transaction: an
        exit that arrived before the timer is acted on ends the run before it can send."""
        with _batch_without_cyclic_gc():
            return self._fire(tenant, now, limit)

    def _fire(self, tenant: str, now: float, limit: int) -> list[float]:
        with self.store.flow_tx(tenant) as ftx:
            claimed = ftx.claim_due(now, limit, part=self.part, parts=self.parts)
            if not claimed:
                return []
            queued = ftx.take_inputs_of([r.subscriber_id for _, r in claimed])
            if queued:
                self._inputs(ftx, [(sid, event) for _id, sid, event in queued], now)
            dues = []
            for rid, run in claimed:
                assert run.timer_due is not None
                dues.append(run.timer_due)
                if queued:
                    current = ftx.run_by_id(rid)
                    if current is None or current.visit != run.visit or current.timer_due is None:
                        continue  # the queued input moved or ended it
                    run = current
                flow = self._flow(ftx, run.flow_id, run.version)
                new, actions = F.step(flow, run, F.TimerFired(id=f"timer:{run.visit}", due=run.timer_due,
                                                              visit=run.visit), now)  # fmt: skip
                if new is run:  # cannot happen for a due timer of the current visit; never spin on it
                    new = msgspec.structs.replace(run, timer_due=None)
                self._save(ftx, flow, rid, new, actions, now)
            self.stats.timers += len(claimed)
        return dues

    def reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool:
        with self.store.flow_tx(tenant) as ftx:
            marker = f"{subscriber_id}:reply:{message_id}"
            if not ftx.first_time(marker):
                return True  # taken before (a redelivered webhook): not the inbox's either
            runs = ftx.active_runs(subscriber_id)
            pairs = [(self._flow(ftx, r.flow_id, r.version), r) for _, r in runs]
            keyword = [f for f in self._enabled(ftx) if isinstance(f.trigger, F.KeywordTrigger)]
            route = route_reply(message_id, text, pairs, lambda _t: "other", keyword)
            event = F.Reply(id=message_id, text=text)
            match route:
                case ToRun():
                    rid, run = next((i, r) for i, r in runs if r.id == route.run_id)
                    flow = self._flow(ftx, run.flow_id, run.version)
                    new, actions = F.step(flow, run, event, now)
                    self._save(ftx, flow, rid, new, actions, now)
                    self.stats.inputs += 1
                    return True
                case StartFlow():
                    flow = next(f for f in keyword if f.id == route.flow_id)
                    started = self._start(ftx, flow, subscriber_id, event, now)
                    self.stats.inputs += 1
                    if started:
                        return True
            ftx.tx.run("DELETE FROM flow_events WHERE tenant = ? AND event_id = ?", (tenant, marker))
            return False

    # ---- inputs --------------------------------------------------------------------------------
    def _enabled(self, ftx: FlowTx) -> list[F.Flow]:
        return [self._flow(ftx, fid, v) for fid, v in ftx.enabled_flows()]

    def _inputs(self, ftx: FlowTx, inputs: Sequence[tuple[int, F.Event]], now: float) -> None:
        """Apply a batch of inputs in their order (so each subscriber's in order): their ids marked
        applied and their subscribers' runs and values read up front, one statement each per chunk;
        the run updates are written together when the transaction ends (``FlowTx.flush``)."""
        if not inputs:
            return
        enabled = self._enabled(ftx)
        fresh = ftx.first_times([f"{sid}:{event.id}" for sid, event in inputs])
        ftx.prefetch([sid for sid, _ in inputs])
        for sid, event in inputs:
            marker = f"{sid}:{event.id}"
            if marker in fresh:  # applied before (a redelivery), or earlier in this batch: nothing to do
                fresh.discard(marker)
                self._input(ftx, enabled, sid, event, now)

    def _input(self, ftx: FlowTx, enabled: Sequence[F.Flow], sid: int, event: F.Event, now: float) -> None:
        self.stats.inputs += 1
        if isinstance(event, F.OptOut):  # nothing marketing goes to them any more, even what is queued
            ftx.cancel_pending(sid, "opted_out")
        for rid, run in ftx.active_runs(sid):
            flow = self._flow(ftx, run.flow_id, run.version)
            new, actions = F.step(flow, run, event, now)
            if new is not run:
                self._save(ftx, flow, rid, new, actions, now)
        if isinstance(event, (F.ShopEvent, F.Reply)):
            for flow in enabled:
                if F.compiled(flow).trigger(event):
                    self._start(ftx, flow, sid, event, now)

    def _start(self, ftx: FlowTx, flow: F.Flow, sid: int, event: F.Event, now: float) -> bool:
        found = ftx.subscriber_fields(sid)
        if found is None:
            return False
        sub, tags, stats = found
        if not flow.transactional and sub["consent"] != "confirmed":
            return False  # marketing flows take marketable subscribers only
        fsub = F.FlowSubscriber(id=sid, time_zone=sub["time_zone"], tags=tags, fields=sub | stats)
        run, actions = F.start(flow, fsub, event, now, ftx.entries(flow.id, sid))
        if run is None:
            return False
        rid = ftx.insert_run(run, now)
        if rid is None:
            return False  # the same trigger again: that run exists
        self.stats.started += 1
        self._actions(ftx, flow, rid, run, actions, now)
        return True

    def _save(self, ftx: FlowTx, flow: F.Flow, rid: int, run: F.Run, actions: Sequence[F.Action], now: float) -> None:
        ftx.save_run(rid, run, now)
        self.stats.advanced += 1
        self._actions(ftx, flow, rid, run, actions, now)

    # ---- actions -------------------------------------------------------------------------------
    def _actions(self, ftx: FlowTx, flow: F.Flow, rid: int, run: F.Run, actions: Sequence[F.Action], now: float) -> None:
        for action in actions:
            match action:
                case F.Send():
                    self._send(ftx, flow, rid, action, now)
                case F.UpdateSubscriber():
                    ftx.update_subscriber(action.subscriber_id, action.add_tags, action.remove_tags,
                                          dict(action.set_attributes))  # fmt: skip
                case F.CallWebhook():
                    visit = _visit(action.key)
                    self._record(ftx, FlowMessage(
                        tenant=ftx.tenant, key=idempotency_key(rid, visit), run_id=rid, flow_id=flow.id,
                        version=flow.version, step=run.node or "", visit=visit, subscriber_id=run.subscriber_id,
                        kind="webhook", category="webhook", recipient=action.url,
                        body=_json.encode(action.payload).decode(), created_at=now))  # fmt: skip
                case _:
                    pass  # SetTimer, Ended: the run row holds them (due, state)

    def _record(self, ftx: FlowTx, m: FlowMessage) -> None:
        if ftx.add_message(m):
            self.stats.recorded += 1

    def _send(self, ftx: FlowTx, flow: F.Flow, rid: int, send: F.Send, now: float) -> None:
        visit = _visit(send.key)
        key = idempotency_key(rid, visit)
        tf = self.tenants.get(ftx.tenant) or TenantFlows(sender="sluice")
        found = ftx.subscriber(send.subscriber_id)
        base = dict(tenant=ftx.tenant, key=key, run_id=rid, flow_id=flow.id, version=flow.version, step=send.node,
                    visit=visit, subscriber_id=send.subscriber_id, kind=send.channel,
                    category="transactional" if send.transactional else "marketing", sender=tf.sender,
                    media_url=send.media_url, created_at=now)  # fmt: skip
        if found is None:
            self._record(ftx, FlowMessage(**base, recipient="", body="", state="skipped", detail="no_subscriber"))
            return
        sub = found[0]
        if not send.transactional and sub.consent != "confirmed":
            self._record(ftx, FlowMessage(**base, recipient=sub.phone, body="", state="skipped", detail="not_marketable"))
            return
        source = ftx.template(send.template)
        if source is None:
            self._record(ftx, FlowMessage(**base, recipient=sub.phone, body="", state="skipped",
                                          detail=f"unknown_template:{send.template}"))  # fmt: skip
            return
        try:
            text = _render(source, send, sub.first_name, tf)
        except templates.TemplateError as exc:
            self._record(ftx, FlowMessage(**base, recipient=sub.phone, body="", state="skipped", detail=exc.code))
            return
        if tf.links is not None:
            short = links.shorten(text, domain=tf.links.domain, key=tf.links.key, scope=f"flow:{rid}:{visit}",
                                  exists=lambda c: links.in_range_half(tf.links.key, c) or ftx.link_taken(c))  # fmt: skip
            for link in short.links:
                ftx.add_link(link.code, rid, send.key, link.target, now, message_key=key)
            text = short.text
        self._record(ftx, FlowMessage(**base, recipient=sub.phone, body=text))


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> templates.Template:
    return templates.compile_template(source)


def _render(source: str, send: F.Send, first_name: str | None, tf: TenantFlows) -> str:
    """The final text: shortcodes from the subscriber's snapshot and the trigger's payload (the
    checkout URL, the order id, the tracking URL), the signature and footer for marketing sends."""
    snap = send.context.get("subscriber", {})
    trigger = send.context.get("trigger", {})
    values: dict[str, object] = {"shop_name": tf.shop_name}
    if first_name or snap.get("first_name"):
        values["first_name"] = first_name or snap.get("first_name")
    for name, value in (snap.get("attributes") or {}).items():
        values[f"attr.{name}"] = value
    for name, field in (("checkout_url", "checkout_url"), ("checkout_url", "url"), ("order_id", "order_id"),
                        ("tracking_url", "tracking_url"), ("discount_code", "discount_code")):  # fmt: skip
        if trigger.get(field) and name not in values:
            values[name] = trigger[field]
    rendered = templates.render(_compiled(source), values, rules=tf.rules,
                                locale=snap.get("language"), marketing=not send.transactional)  # fmt: skip
    return rendered.text


class FlowRuntime:
    """The async shell: drains inputs, fires due timers, posts the outbox, scans birthdays and
    win-backs, and answers ``offer_reply`` (the ``ReplyRouter`` on the app's state)."""

    def __init__(self, store: Store, clients: Mapping[str, GatewayClient], tenants: Mapping[str, TenantFlows],
                 clock: Callable[[], float], *, batch: int = 1000, send_concurrency: int = 32, send_batch: int = 500,
                 scan_interval: float = 3600.0, webhook_transport: httpx.AsyncBaseTransport | None = None,
                 allow_private_webhooks: bool = False, part: int = 0, parts: int = 1, inbox: Any = None) -> None:  # fmt: skip
        self.store, self.clients, self.clock = store, dict(clients), clock
        self.tenant_names = sorted(set(tenants) | set(clients))
        self.stats = Statistics()
        self.worker = FlowWorker(store, tenants, self.stats, part=part, parts=parts)
        self.batch, self.send_concurrency, self.scan_interval = batch, send_concurrency, scan_interval
        self.send_batch = max(1, min(send_batch, 1000))  # messages per POST /v1/messages/batch (the gateway's most: 1,000)
        self.lags: list[float] = []  # due -> acted, seconds (kept for the bench; bounded)
        self._wake = anyio.Event()
        self._sends = anyio.Event()
        self._last_scan: float | None = None
        self._webhooks = httpx.AsyncClient(transport=webhook_transport, timeout=10.0, follow_redirects=False)
        self.allow_private_webhooks = allow_private_webhooks  # tests only: a webhook node may not reach our network
        self.inbox = inbox  # campaigns.service.inbox.Inbox: each send goes into the conversation's history

    def statistics(self) -> Statistics:
        return msgspec.structs.replace(self.stats)

    async def aclose(self) -> None:
        await self._webhooks.aclose()

    # ---- ReplyRouter -----------------------------------------------------------------------------
    async def offer_reply(self, tenant: str, subscriber_id: int, message_id: str, text: str, now: float) -> bool:
        taken = await anyio.to_thread.run_sync(self.worker.reply, tenant, subscriber_id, message_id, text, now)
        if taken:
            self._wake.set()
        return taken

    def wake(self) -> None:
        """New inputs were queued, or sends recorded by another process (a reply applied by serve
        while this runtime is a worker process): run a round and post the outbox now."""
        self._wake.set()
        self._sends.set()

    # ---- one round ---------------------------------------------------------------------------------
    async def round(self) -> int:
        """Drain every queued input, fire every due timer, post the outbox; returns the work done."""
        done = 0
        for tenant in self.tenant_names:
            while (n := await anyio.to_thread.run_sync(self.worker.drain, tenant, self.clock(), self.batch)) > 0:
                done += n
            while True:
                dues = await anyio.to_thread.run_sync(self.worker.fire, tenant, self.clock(), self.batch)
                if not dues:
                    break
                acted = self.clock()
                if len(self.lags) < 2_000_000:
                    self.lags.extend(acted - d for d in dues)
                done += len(dues)
        done += await self.send_pending()
        return done

    async def send_pending(self) -> int:
        """Post pending sends to the gateway, ``send_batch`` messages per ``POST /v1/messages/batch``
        (each with its own Idempotency-Key), and meanwhile the due webhook calls (``post_webhooks``);
        mark them answered."""
        hooks = 0

        async def webhooks() -> None:
            nonlocal hooks
            hooks = await self.post_webhooks()

        async with anyio.create_task_group() as tg:
            tg.start_soon(webhooks)
            sends = await self._send_pending_sends()
        return sends + hooks

    async def post_webhooks(self) -> int:
        """One pass over the due webhook calls (module docstring): posted, then marked answered or
        given a time before which they are not tried again; returns how many were answered."""
        now = self.clock()
        due = await anyio.to_thread.run_sync(lambda: self.store.pending_flow_messages(
            WEBHOOK_BATCH, part=self.worker.part, parts=self.worker.parts, kind="webhooks", now=now))
        done: list[tuple[str, str, str, str | None, str | None]] = []
        later: list[tuple[str, str, float, str | None]] = []
        limiter = anyio.CapacityLimiter(WEBHOOK_CONCURRENCY)

        async def one(m: FlowMessage) -> None:
            async with limiter:
                state, detail = await self._post_webhook(m)
            at = self.clock()
            age = at - m.created_at
            if state != "later":
                done.append((m.tenant, m.key, state, None, detail))
            elif age >= WEBHOOK_GIVE_UP_S:
                done.append((m.tenant, m.key, "failed", None, f"gave up after {age / 3600:.0f} h: {detail}"))
            else:
                later.append((m.tenant, m.key, at + min(max(age, WEBHOOK_RETRY_MIN_S), WEBHOOK_RETRY_MAX_S), detail))

        async with anyio.create_task_group() as tg:
            for m in due:
                tg.start_soon(one, m)
        if done:
            await anyio.to_thread.run_sync(lambda: self.store.flow_messages_done(done, now=self.clock()))
        if later:
            await anyio.to_thread.run_sync(lambda: self.store.flow_messages_later(later))
        return len(done)

    async def _post_webhook(self, m: FlowMessage) -> tuple[str, str | None]:
        """("sent" | "failed" | "later", why): one call, within ``WEBHOOK_TIMEOUT`` in all."""
        resp = None
        try:
            with anyio.move_on_after(WEBHOOK_TIMEOUT):
                if not self.allow_private_webhooks and not await _public_target(m.recipient):
                    return "failed", "unsafe_target: the URL resolves to a loopback, private or link-local address"
                resp = await self._webhooks.post(m.recipient, content=m.body.encode(),
                                                 headers={"idempotency-key": m.key, "content-type": "application/json"})  # fmt: skip
        except httpx.HTTPError as exc:
            log.warning("flow.webhook.failed key=%s error=%r", m.key, exc)
            return "later", f"{type(exc).__name__}"
        if resp is None:
            return "later", f"no answer within {WEBHOOK_TIMEOUT:g} s"
        code = resp.status_code
        if code < 300:
            return "sent", None
        if code < 400:
            return "failed", f"HTTP {code}: redirects are not followed"
        return ("later" if code >= 500 or code in _RETRIED else "failed"), f"HTTP {code}"

    async def _send_pending_sends(self) -> int:
        total = 0
        while True:
            pending = await anyio.to_thread.run_sync(lambda: self.store.pending_flow_messages(
                self.batch, part=self.worker.part, parts=self.worker.parts, kind="sends"))
            if not pending:
                return total
            results: list[tuple[str, str, str, str | None, str | None]] = []
            limiter = anyio.CapacityLimiter(self.send_concurrency)

            async def one(m: FlowMessage) -> None:
                async with limiter:
                    outcome = await self._post(m)
                    if outcome is not None and outcome[0] == "sent" and m.kind != "webhook":
                        await self._to_history(m)  # before the row is marked: a crash re-posts and re-records
                if outcome is not None:
                    results.append((m.tenant, m.key, *outcome))

            async def batch(ms: list[FlowMessage]) -> None:
                async with limiter:
                    outcomes = await self._post_batch(ms)
                    if outcomes is None:  # the gateway refused the batch itself (an older one): one by one
                        for m in ms:
                            tg.start_soon(one, m)
                        return
                    # the batch's sends in their conversations' history, one transaction (before
                    # their rows are marked: a crash re-posts and re-records, idempotently)
                    await self._to_history_many([m for m, o in zip(ms, outcomes) if o is not None and o[0] == "sent"])
                for m, outcome in zip(ms, outcomes):
                    if outcome is not None:
                        results.append((m.tenant, m.key, *outcome))

            async with anyio.create_task_group() as tg:
                by_tenant: dict[str, list[FlowMessage]] = {}
                for m in pending:
                    if m.tenant not in self.clients:
                        tg.start_soon(one, m)
                    else:
                        by_tenant.setdefault(m.tenant, []).append(m)
                for ms in by_tenant.values():
                    for i in range(0, len(ms), self.send_batch):
                        tg.start_soon(batch, ms[i:i + self.send_batch])
            if results:
                await anyio.to_thread.run_sync(lambda: self.store.flow_messages_done(results, now=self.clock()))
            total += len(results)
            if len(results) < len(pending):
                return total  # some could not go (the gateway is away): next round

    async def _post_batch(self, ms: Sequence[FlowMessage]) -> list[tuple[str, str | None, str | None] | None] | None:
        """Each message's (state, message id, detail), or None to retry it later; None for all of
        them if the gateway refused the batch request itself (then they go one by one)."""
        client = self.clients[ms[0].tenant]
        items = [(m.key, message_bytes(to=m.recipient, body=m.body, sender=m.sender, category=m.category,
                                       media=[m.media_url] if m.kind == "mms" and m.media_url else None))
                 for m in ms]  # fmt: skip
        try:
            answers = await client.send_batch(items)
        except GatewayRefused as exc:
            log.warning("flow.send_batch.refused status=%s code=%s: one by one", exc.http_status, exc.gateway_code)
            return None
        except GatewayError as exc:
            log.warning("flow.send_batch.retry messages=%d error=%s", len(ms), str(exc)[:200])
            return [None] * len(ms)
        return [self._outcome(m, r) for m, r in zip(ms, answers)]

    def _outcome(self, m: FlowMessage, r: BatchResult) -> tuple[str, str | None, str | None] | None:
        """A batch result as ``_post`` reads a single answer."""
        if r.status < 300:
            self.stats.sent += 1
            return "sent", r.id, None
        if r.code == "idempotency_key_reused":  # the key was stored with this send before: it went
            return "sent", None, "idempotency_key_reused"
        if 400 <= r.status < 500 and r.status not in (408, 429):
            self.stats.failed += 1
            return "failed", None, f"gateway POST /v1/messages/batch: HTTP {r.status} {r.code}: {r.error}"[-300:]
        log.warning("flow.send.retry key=%s status=%s code=%s", m.key, r.status, r.code)
        return None

    async def _to_history(self, m: FlowMessage) -> None:
        """The send in the subscriber's conversation (the inbox's history; idempotent by the key)."""
        if self.inbox is None:
            return
        try:
            await self.inbox.record_sent(m.tenant, m.recipient, m.key, m.body, self.clock(), f"flow:{m.flow_id}")
        except CampaignError as exc:
            log.warning("flow.history.failed key=%s error=%s", m.key, exc)

    async def _to_history_many(self, ms: Sequence[FlowMessage]) -> None:
        """``_to_history`` of a batch's sends in one store transaction (one commit: one a send cost a
        durable commit each on PostgreSQL, docs/BENCHMARKS.md, "Flows: the workers serve runs")."""
        if self.inbox is None or not ms:
            return
        now = self.clock()
        try:
            await self.inbox.record_sent_many(ms[0].tenant, [(m.recipient, m.key, m.body, now, f"flow:{m.flow_id}")
                                                             for m in ms])  # fmt: skip
        except CampaignError as exc:
            log.warning("flow.history.failed keys=%s.. error=%s", ms[0].key, exc)

    async def _post(self, m: FlowMessage) -> tuple[str, str | None, str | None] | None:
        """(state, message id, detail), or None to retry later (an SMS or MMS: webhooks are ``_post_webhook``'s)."""
        try:
            client = self.clients.get(m.tenant)
            if client is None:
                return None
            mid = await client.send(to=m.recipient, body=m.body, sender=m.sender, key=m.key,
                                    media=[m.media_url] if m.kind == "mms" and m.media_url else None,
                                    category=m.category)  # fmt: skip
            self.stats.sent += 1
            return "sent", mid, None
        except httpx.HTTPError as exc:
            log.warning("flow.send.retry key=%s error=%r", m.key, exc)
            return None
        except GatewayError as exc:
            text = str(exc)
            if " HTTP 409 " in text:  # the key was stored with this send before: it went
                return "sent", None, "idempotency_key_reused"
            if " HTTP 4" in text and " HTTP 429 " not in text:
                self.stats.failed += 1
                return "failed", None, text[-300:]
            log.warning("flow.send.retry key=%s error=%s", m.key, text[:200])
            return None

    # ---- periodic scans (birthday, no order for N days) ------------------------------------------
    async def scan(self, now: float) -> int:
        """Apply today's birthday and win-back triggers of every tenant's enabled flows (this worker's
        share of the subscribers: with several workers, each scans for its own)."""
        fed = 0
        for tenant in self.tenant_names:
            fed += await anyio.to_thread.run_sync(self._scan_tenant, tenant, now)
        return fed

    def _scan_tenant(self, tenant: str, now: float) -> int:
        with self.store.flow_tx(tenant) as ftx:
            birthdays, no_orders = flow_inputs.scan_triggers(self.worker._enabled(ftx))
            if not birthdays and not no_orders:
                return 0
            rows = ftx.tx.rows("SELECT s.id, s.birthday, t.last_order_at FROM subscribers s LEFT JOIN subscriber_stats t "
                               "ON t.tenant = s.tenant AND t.subscriber_id = s.id WHERE s.tenant = ? AND "
                               "s.consent = 'confirmed'", (tenant,))  # fmt: skip
        inputs: list[tuple[int, F.Event]] = []
        part, parts = self.worker.part, self.worker.parts
        for sid, birthday, last_order in rows:
            if int(sid) % parts != part:
                continue  # another worker's subscriber: its inputs are that worker's to apply, in order
            for d in birthdays:
                if (e := flow_inputs.birthday_due(birthday, d, now)) is not None:
                    inputs.append((int(sid), e))
            for d in no_orders:
                if (e := flow_inputs.no_order_due(last_order, d, now)) is not None:
                    inputs.append((int(sid), e))
        for i in range(0, len(inputs), self.batch):
            self.worker.feed(tenant, inputs[i:i + self.batch], now)
        return len(inputs)

    async def run(self, *, interval: float = 0.5) -> None:
        """Forever, two tasks: the engine (a batch of inputs, then a batch of due timers, per tenant,
        again while there is work; the scans every ``scan_interval`` s) and the sender (the outbox
        to the gateway), so a backlog of one never starves the other. Idle: wait ``interval`` s, or
        less when woken (a reply, a recorded send)."""
        self._sends = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sender, interval)
            while True:
                try:
                    now = self.clock()
                    if self._last_scan is None or now - self._last_scan >= self.scan_interval:
                        self._last_scan = now
                        await self.scan(now)
                    busy = await self._engine_batch()
                except CampaignError as exc:
                    log.warning("flow.round.failed error=%s", exc)
                    busy = False
                if not busy:
                    with anyio.move_on_after(interval):
                        await self._wake.wait()
                    self._wake = anyio.Event()

    async def _engine_batch(self) -> bool:
        busy = False
        recorded = self.stats.recorded
        for tenant in self.tenant_names:
            if await anyio.to_thread.run_sync(self.worker.drain, tenant, self.clock(), self.batch):
                busy = True
            dues = await anyio.to_thread.run_sync(self.worker.fire, tenant, self.clock(), self.batch)
            if dues:
                busy = True
                acted = self.clock()
                if len(self.lags) < 2_000_000:
                    self.lags.extend(acted - d for d in dues)
        if self.stats.recorded != recorded:
            self._sends.set()
        return busy

    async def _sender(self, interval: float) -> None:
        while True:
            try:
                await self.send_pending()
            except CampaignError as exc:
                log.warning("flow.send_round.failed error=%s", exc)
            with anyio.move_on_after(interval):
                await self._sends.wait()
            self._sends = anyio.Event()


async def _public_target(url: str) -> bool:
    """A flow's webhook URL must be http(s) and resolve to public addresses only (a shop's flow must
    not make this server call its own network: SSRF). Checked when posting; redirects are not followed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    try:
        infos = await anyio.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError:
        return False
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if addr.is_loopback or addr.is_private or addr.is_link_local or addr.is_multicast or addr.is_reserved \
                or addr.is_unspecified or (addr.version == 6 and addr.ipv4_mapped is not None and not addr.ipv4_mapped.is_global):  # fmt: skip
            return False
    return bool(infos)


def runtime_tenants(settings: Any, links_by_tenant: Mapping[str, TenantLinks]) -> dict[str, TenantFlows]:
    """Each tenant's flow send settings from the campaigns config (sender: ``signup.sender``)."""
    out = {}
    for t in settings.tenants:
        out[t.name] = TenantFlows(sender=t.signup.sender or t.signup.shop_name[:11], shop_name=t.signup.shop_name,
                                  links=links_by_tenant.get(t.name))  # fmt: skip
    return out


def install_state(app: Any, runtime: ReplyRouter) -> None:
    """Register the runtime (or serve's ``RepliesHere`` in front of it) as the app's ``reply_router``
    (the inbox's inbound handler asks it)."""
    app.state.reply_router = runtime
