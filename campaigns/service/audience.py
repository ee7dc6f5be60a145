"""The audience service: the async shell around the store and the pure core. The HTTP API
(``app.py``) and the gateway link (``link.py``) call it; it reads the clock once per call and hands
that ``now`` to the core and the store (which runs in a worker thread)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from campaigns.config import CampaignSettings, TenantSettings
from campaigns.core import proof
from campaigns.core.forms import legal_text
from campaigns.core.imports import parse_csv
from campaigns.core.consent import Action, ConsentEntry, Evidence, Source, State, needs_disclosure
from campaigns.core.events import (CheckoutEvent, CustomerEvent, FulfillmentEvent, OrderEvent, Profile, ShopEvent, canonical_phone,
                                   check_textable, decode_event, event_phone, looks_canonical)  # fmt: skip
from campaigns.core.model import Stats, Subscriber
from campaigns.core.segments import Segment, affected_by, affected_each, dependencies, dump_segment, evaluate, next_change, parse_segment
from campaigns.errors import CampaignError, Conflict, InvalidInput, NotFound, no_nul
from campaigns.service.batching import GroupCommit
from campaigns.service.member_process import MemberProcess
from campaigns.store.base import Applied, ImportResult, MemberPlan, NewConsent, SegmentRow, Store
from campaigns.store.segment_sql import compile_edges, compile_segment, order_edges, order_shifts

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConsentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A consent action given through the API (in store, an import, a form the shop hosts itself)."""

    action: Action
    source: Source = "api"
    disclosure_text: str | None = None
    disclosure_version: str | None = None
    evidence: Evidence = Evidence()
    at: float | None = None  # when it happened (default: now); never in the future

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class SubscriberIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    profile: Profile
    consent: ConsentIn | None = None

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class FormIn(msgspec.Struct, frozen=True, kw_only=True):
    """What the hosted form and the pop-up post (JSON, or a urlencoded form)."""

    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    email: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)] | None = None
    form_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "hosted"
    legal_version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    page_url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None

    def __post_init__(self) -> None:
        no_nul(self)  # PostgreSQL cannot store a NUL: both engines refuse it, naming the field


class SubscriberOut(msgspec.Struct, frozen=True, kw_only=True):
    subscriber: Subscriber
    tags: list[str]
    stats: Stats
    marketable: bool


class Audience:
    def __init__(self, store: Store, settings: CampaignSettings, clock: Callable[[], float]) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.tenants: dict[str, TenantSettings] = {t.name: t for t in settings.tenants}
        self._segments: dict[str, list[tuple[int, Segment, frozenset[str]]]] = {}  # per tenant, parsed
        self._last_rebuild: dict[str, float] = {}
        self._last_scores: dict[str, float] = {}
        self._groups: dict[str, GroupCommit[tuple[ShopEvent, str | None], Applied]] = {}
        self._currency: dict[str, str] = {}  # per tenant, once configured or stored (``shop_currency``)
        self.batch_size = 1000  # events per transaction (bulk ingest, group commit)
        self.membership_chunk = 2000  # subscribers per membership transaction (the membership loop)
        self.on_membership: Callable[[list[float]], None] | None = None  # lags, for the bench
        self._pending: dict[str, dict[int, tuple[set[str], float]]] = {}
        self._wake: anyio.Event | None = None  # made in the loop (an Event belongs to one event loop)
        self._settled: anyio.Event | None = None
        self._taken: anyio.Event | None = None  # set when the loop takes a tenant's deferred subscribers
        self._membership_live = False
        self._busy = 0  # membership passes running
        # The loop's reads in a child process (``member_process``); off by default and in ``serve`` (it
        # measured no gain: docs/BENCHMARKS.md, issue 17 fifth pass); ``bench audience --membership-process``.
        self.membership_process = False
        self.member_process: MemberProcess | None = None

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kw))

    def phone(self, tenant: str, raw: str, *, field: str = "phone", country: str | None = None) -> str:
        t = self.tenants.get(tenant)
        return canonical_phone(raw, region=country or (t.default_region if t else None), field=field)

    async def store_call(self, name: str, *args: Any, **kw: Any) -> Any:
        """A store method by name, in a worker thread (for the API's plain reads and deletes)."""
        return await self._run(getattr(self.store, name), *args, **kw)

    # ---- subscribers ---------------------------------------------------------------------------
    async def put_subscriber(self, tenant: str, body: SubscriberIn) -> tuple[SubscriberOut, bool]:
        now = self.clock()
        phone = self.phone(tenant, body.profile.phone, field="profile.phone", country=body.profile.country)
        new = self._consent(phone, body.consent, now, field="consent") if body.consent else None
        try:  # one transaction: a refused consent stores nothing
            sub, created = await self._run(self.store.put_subscriber, tenant, body.profile, phone=phone, at=now, now=now,
                                           consent=new)  # fmt: skip
        except Conflict as exc:
            raise Conflict(str(exc), code=exc.code, field=f"consent.{exc.field}" if exc.field else "consent") from None
        # a new subscriber: every segment (those over the aggregates too: "no orders yet" may hold)
        await self.refresh_membership(tenant, sub.id, None if created else frozenset({"subscribers", "subscriber_tags"}), now)
        return await self.subscriber_out(tenant, sub.id), created

    def _consent(self, phone: str, c: ConsentIn, now: float, *, field: str) -> NewConsent:
        at = now if c.at is None else c.at
        prefix = f"{field}." if field else ""
        if at > now + 300:
            raise InvalidInput("consent time is in the future", code="invalid_field", field=f"{prefix}at")
        if needs_disclosure(c.action, c.source) and not c.disclosure_text:
            raise InvalidInput(f"an opt-in from {c.source} must record the disclosure text shown",
                               code="disclosure_required", field=f"{prefix}disclosure_text")  # fmt: skip
        return NewConsent(phone=phone, action=c.action, source=c.source, at=at, disclosure_text=c.disclosure_text,
                          disclosure_version=c.disclosure_version, evidence=c.evidence)  # fmt: skip

    async def subscriber_out(self, tenant: str, subscriber_id: int) -> SubscriberOut:
        def read() -> SubscriberOut:
            sub = self.store.subscriber(tenant, subscriber_id)
            if sub is None:
                raise NotFound(f"no subscriber {subscriber_id}", code="subscriber_not_found")
            return SubscriberOut(subscriber=sub, tags=sorted(self.store.tags(tenant, subscriber_id)),
                                 stats=self.store.stats(tenant, subscriber_id), marketable=sub.consent == "confirmed")
        return await self._run(read)

    async def subscribers(self, tenant: str, *, after: int, limit: int) -> list[Subscriber]:
        return await self._run(self.store.subscribers, tenant, after=after, limit=limit)

    async def set_tags(self, tenant: str, subscriber_id: int, add: Sequence[str], remove: Sequence[str]) -> list[str]:
        tags = sorted(await self._run(self.store.set_tags, tenant, subscriber_id, add=add, remove=remove))
        await self.refresh_membership(tenant, subscriber_id, frozenset({"subscriber_tags"}), self.clock())
        return tags

    # ---- consent -------------------------------------------------------------------------------
    async def record_consent(self, tenant: str, subscriber_id: int, body: ConsentIn) -> tuple[ConsentEntry, State]:
        sub = await self._subscriber(tenant, subscriber_id)
        entry, state = await self._run(self.store.record_consent, tenant,
                                       self._consent(sub.phone, body, self.clock(), field=""), now=self.clock())
        assert entry is not None
        await self.refresh_membership(tenant, subscriber_id, frozenset({"subscribers"}), self.clock())
        return entry, state

    async def _subscriber(self, tenant: str, subscriber_id: int) -> Subscriber:
        sub = await self._run(self.store.subscriber, tenant, subscriber_id)
        if sub is None:
            raise NotFound(f"no subscriber {subscriber_id}", code="subscriber_not_found")
        return sub

    async def ledger(self, tenant: str, subscriber_id: int) -> list[ConsentEntry]:
        await self._subscriber(tenant, subscriber_id)
        return await self._run(self.store.ledger, tenant, subscriber_id)

    async def proof(self, tenant: str, subscriber_id: int) -> proof.Proof:
        sub = await self._subscriber(tenant, subscriber_id)
        return proof.build(sub, await self._run(self.store.ledger, tenant, subscriber_id), self.clock())

    async def import_csv(self, tenant: str, text: str, *, file_name: str = "") -> ImportResult:
        t = self.tenants.get(tenant)
        rows = parse_csv(text, file_name=file_name, region=t.default_region if t else None)  # all checked first
        return await self._run(self.store.import_rows, tenant, rows, now=self.clock())

    async def subscribe_form(self, tenant: str, body: FormIn, evidence: Evidence) -> tuple[str, ConsentEntry | None]:
        """An opt-in through the hosted form or the pop-up: the disclosure recorded is the shop's own
        legal text for the version the page showed. Returns (state, the new entry or None)."""
        t = self.tenants.get(tenant)
        if t is None:
            raise NotFound(f"no shop {tenant!r}", code="shop_not_found")
        if body.legal_version != t.form.legal_version:
            raise InvalidInput("the form is out of date: reload the page", code="stale_form", field="legal_version")
        phone = check_textable(self.phone(tenant, body.phone))  # a person types it: a landline is a typo or a bot
        now = self.clock()
        profile = Profile(phone=phone, email=body.email, signup_source="popup" if body.form_id == "popup" else "form")

        def run() -> tuple[str, ConsentEntry | None]:
            sub = self.store.subscriber_by_phone(tenant, phone)
            state = sub.consent if sub else "none"
            if state in ("pending", "confirmed"):
                self.store.put_subscriber(tenant, msgspec.structs.replace(profile, signup_source=None), phone=phone,
                                          at=now, now=now)  # fmt: skip
                return state, None
            entry = NewConsent(phone=phone, action="re_opt_in" if state == "revoked" else "opt_in",
                               source="popup" if body.form_id == "popup" else "form", at=now,
                               disclosure_text=legal_text(t.form, t.signup.shop_name),
                               disclosure_version=t.form.legal_version, evidence=evidence)  # fmt: skip
            self.store.put_subscriber(tenant, profile if sub is None else msgspec.structs.replace(profile, signup_source=None),
                                      phone=phone, at=now, now=now, consent=entry)  # fmt: skip
            return "pending", self.store.ledger(tenant, self.store.subscriber_by_phone(tenant, phone).id)[-1]  # type: ignore[union-attr]
        return await self._run(run)

    # ---- shop events ---------------------------------------------------------------------------
    def check_event(self, tenant: str, event: ShopEvent, prefix: str = "") -> str | None:
        """The event's canonical phone (None for a fulfilment), or InvalidInput naming the field."""
        grant = getattr(event, "consent", None)
        if isinstance(event, CheckoutEvent) and grant is not None and grant.accepted and not grant.disclosure_text:
            raise InvalidInput("a checkout opt-in must record the disclosure text shown", code="disclosure_required",
                               field=f"{prefix}consent.disclosure_text")  # fmt: skip
        raw = event_phone(event)
        if raw is None:
            return None
        field = "profile.phone" if isinstance(event, CustomerEvent) else "phone"
        country = event.profile.country if isinstance(event, CustomerEvent) else None
        return self.phone(tenant, raw, field=prefix + field, country=country)

    def shop_currency(self, tenant: str, events: Sequence[ShopEvent] = ()) -> str | None:
        """The tenant's currency: ``currency`` in its config, else its earliest stored order's, else
        (no order stored yet) the first order among ``events``. Sync (a store read): run it in a thread."""
        known = self._currency.get(tenant)
        if known is None:
            t = self.tenants.get(tenant)
            known = (t.currency if t is not None else None) or self.store.claim_currency(tenant, None)
            if known is None:  # provisional: ``claim_currency`` decides it when the first orders are stored
                return next((e.currency for e in events if isinstance(e, OrderEvent)), None)
            self._currency[tenant] = known
        return known

    def _claim_currency(self, tenant: str, events: Sequence[ShopEvent], prefixes: Sequence[str]) -> None:
        """Before the first orders of a shop without a configured currency are stored: claim theirs in
        the store (first claim wins, ``Store.claim_currency``) and refuse the batch if another upload's
        won meanwhile (the checks before ran on a provisional answer). Once known, a dict lookup."""
        if tenant in self._currency:
            return
        first = next((e.currency for e in events if isinstance(e, OrderEvent)), None)
        if first is None:
            return
        t = self.tenants.get(tenant)
        self._currency[tenant] = (t.currency if t is not None else None) or self.store.claim_currency(tenant, first)  # type: ignore[assignment]
        bad = next((e for e in self.check_currency(tenant, events, prefixes) if e is not None), None)
        if bad is not None:
            raise bad

    def check_currency(self, tenant: str, events: Sequence[ShopEvent], prefixes: Sequence[str]) -> list[InvalidInput | None]:
        """Per event, a ``foreign_currency`` error for an order not in the shop's currency, else None:
        aggregates (``total_spent``, RFM), segments and revenue never add two currencies."""
        if not any(isinstance(e, OrderEvent) for e in events):
            return [None] * len(events)
        shop = self.shop_currency(tenant, events)
        return [InvalidInput(f"the order is in {e.currency} and the shop counts in {shop}: convert the amounts "
                             f"(or set the tenant's currency)", code="foreign_currency", field=f"{prefix}currency")
                if isinstance(e, OrderEvent) and e.currency != shop else None
                for e, prefix in zip(events, prefixes, strict=True)]  # fmt: skip

    def check_events(self, tenant: str, events: Sequence[ShopEvent], prefixes: Sequence[str]) -> list[str | None]:
        """``check_event`` for many (the store answers in one query which numbers, already canonical
        E.164, belong to a subscriber: those need no phonenumbers check), and ``check_currency``.
        Sync: run it in a thread."""
        bad = next((e for e in self.check_currency(tenant, events, prefixes) if e is not None), None)
        if bad is not None:
            raise bad
        raws = [event_phone(e) for e in events]
        known = self.store.known_phones(tenant, [r for r in raws if r is not None and looks_canonical(r)])
        out = []
        for e, raw, prefix in zip(events, raws, prefixes, strict=True):
            if raw is not None and raw in known and not (isinstance(e, CheckoutEvent) and e.consent is not None):
                out.append(raw)
            else:
                out.append(self.check_event(tenant, e, prefix))
        return out

    def _check_time(self, events: Sequence[ShopEvent], now: float, prefixes: Sequence[str]) -> None:
        for e, prefix in zip(events, prefixes, strict=True):
            if e.at > now + 300:
                raise InvalidInput("event time is in the future", code="invalid_field", field=f"{prefix}at")

    async def apply(self, tenant: str, event: ShopEvent, phone: str | None) -> Applied:
        """One event whose phone was checked (``check_event``), through the tenant's group commit."""
        return await self._submit(tenant, event, phone, checked=True)

    async def post_event(self, tenant: str, event: ShopEvent) -> Applied:
        """``POST /v1/events``: one event, checked with the others of its group (a number a subscriber
        already has needs no phonenumbers check: one query for the group), then group-committed."""
        return await self._submit(tenant, event, None, checked=False)

    async def _submit(self, tenant: str, event: ShopEvent, phone: str | None, *, checked: bool) -> Applied:
        """Events arriving while a transaction runs share the next one (``GroupCommit``); each caller is
        answered once its transaction is committed and, unless the membership loop runs (then it
        follows from there, as for bulk), the membership changes it causes are stored."""
        self._check_time([event], self.clock(), [""])
        group = self._groups.get(tenant)
        if group is None:
            group = self._groups[tenant] = GroupCommit(partial(self._flush_group, tenant), max_items=self.batch_size)
        return await group.submit((event, phone, checked))

    async def _flush_group(self, tenant: str, items: list[tuple[ShopEvent, str | None, bool]]) -> list[Applied | BaseException]:
        out: list[Applied | BaseException | None] = [None] * len(items)
        todo = [i for i, (_, _, checked) in enumerate(items) if not checked]
        phones = dict(zip(todo, await self._run(self._check_each, tenant, [items[i][0] for i in todo]), strict=True))
        ready: list[tuple[int, tuple[ShopEvent, str | None]]] = []
        for i, (event, phone, checked) in enumerate(items):
            p = phone if checked else phones[i]
            if isinstance(p, BaseException):
                out[i] = p
            else:
                ready.append((i, (event, p)))
        try:
            done = await self.apply_many(tenant, [e for _, e in ready], defer=self._membership_live,
                                         prefixes=[""] * len(ready))  # fmt: skip
            for (i, _), r in zip(ready, done, strict=True):
                out[i] = r
        except CampaignError as exc:
            if len(ready) == 1:
                out[ready[0][0]] = exc
            else:  # one event failed the batch: each alone, so only it fails
                for i, e in ready:
                    try:
                        out[i] = (await self.apply_many(tenant, [e], prefixes=[""]))[0]
                    except CampaignError as exc1:
                        out[i] = exc1
        return out  # type: ignore[return-value]

    def _check_each(self, tenant: str, events: list[ShopEvent]) -> list[str | None | BaseException]:
        """``check_events``, with each bad event's error in its place."""
        try:
            return list(self.check_events(tenant, events, [""] * len(events)))
        except InvalidInput:
            out: list[str | None | BaseException] = []
            for e, foreign in zip(events, self.check_currency(tenant, events, [""] * len(events)), strict=True):
                try:
                    if foreign is not None:
                        raise foreign
                    out.append(self.check_event(tenant, e))
                except InvalidInput as exc:
                    out.append(exc)
            return out

    async def ingest_ndjson(self, tenant: str, body: bytes) -> list[Applied]:
        """``POST /v1/events/bulk``: NDJSON, one event per line. Every line is checked first: a bad line
        raises InvalidInput naming it (``lines[3].total``) and nothing is stored. Answered once every
        event is committed with its aggregates; the membership changes follow from the membership
        loop (``run_membership``) when it runs, else before answering."""
        events, prefixes = [], []
        bad: list[tuple[int, InvalidInput]] = []
        if body.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (a file saved on Windows): not content
            body = body[3:]
        for i, line in enumerate(body.splitlines()):
            if not line.strip():
                continue
            try:
                events.append(decode_event(line))
            except InvalidInput as exc:
                bad.append((i, exc))
            prefixes.append(f"lines[{i}].")
        if bad:  # the first names its field; the message lists every bad line
            i, exc = bad[0]
            more = f" ({len(bad)} bad lines: {', '.join(str(j) for j, _ in bad[:20])}{', ...' if len(bad) > 20 else ''})"
            field = f"lines[{i}]" + (f".{exc.field}" if exc.field else "")
            raise InvalidInput(f"line {i}: {exc}{more if len(bad) > 1 else ''}", code=exc.code, field=field)
        self._check_time(events, self.clock(), prefixes)
        phones = await self._run(self.check_events, tenant, events, prefixes)
        return await self.apply_many(tenant, list(zip(events, phones, strict=True)), defer=self._membership_live,
                                     prefixes=prefixes)  # fmt: skip

    async def apply_many(self, tenant: str, events: Sequence[tuple[ShopEvent, str | None]], *,
                         defer: bool = False, prefixes: Sequence[str] | None = None) -> list[Applied]:  # fmt: skip
        """Checked events, ``batch_size`` per transaction (``Store.apply_events``); after each, the
        membership of the segments whose dependencies it touched, for the subscribers it touched (or,
        ``defer``, handed to the membership loop). ``prefixes``: each event's place in errors
        (default ``lines[i].``)."""
        now = self.clock()
        prefixes = [f"lines[{i}]." for i in range(len(events))] if prefixes is None else prefixes
        self._check_time([e for e, _ in events], now, prefixes)
        if tenant not in self._currency:  # a shop's first orders: their currency claimed before they are stored
            await self._run(self._claim_currency, tenant, [e for e, _ in events], prefixes)
        results: list[Applied] = []
        for i in range(0, len(events), self.batch_size):
            if defer:
                await self._wait_taken(tenant)
            done = await self._run(self.store.apply_events, tenant, events[i:i + self.batch_size], now=now)
            results += done
            if defer:
                self._defer(tenant, done)
            else:
                await self.refresh_batch(tenant, done, now)
        return results

    async def _wait_taken(self, tenant: str) -> None:
        """Pipelined, not unbounded: a batch's transaction may run while the membership loop refreshes
        the previous batch (PostgreSQL: on another connection), not while earlier batches still wait
        for the loop to take them. Without this an ingest flood runs ahead of the membership and its
        lag grows with the flood (PostgreSQL, 20k subscribers: membership p99 44 s)."""
        while self._membership_live and tenant in self._pending:
            if self._taken is None:
                self._taken = anyio.Event()
            await self._taken.wait()

    # ---- the membership loop: bulk ingest answers at its commit, membership follows ---------------
    def _defer(self, tenant: str, applied: Sequence[Applied]) -> None:
        pending = self._pending.setdefault(tenant, {})
        arrived = time.monotonic()
        for sid, changed in _touched(applied).items():
            if sid in pending:
                pending[sid][0].update(changed)
            else:
                pending[sid] = (changed, arrived)
        if self._wake is not None:
            self._wake.set()

    async def run_membership(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep membership current after bulk ingest, until cancelled (``serve`` runs it): whatever was
        ingested while a pass ran is done in the next, ``membership_chunk`` subscribers a transaction."""
        if self.membership_process and self.member_process is None:
            self.member_process = await anyio.to_thread.run_sync(MemberProcess.start, self.store)
        self._membership_live = True
        task_status.started()
        try:
            while True:
                self._wake = anyio.Event()
                if not self._pending:
                    await self._wake.wait()
                await self.settle_membership()
        finally:
            self._membership_live = False
            self._wake = None
            self._release_taken()
            proc, self.member_process = self.member_process, None
            if proc is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(proc.close)

    def _release_taken(self) -> None:
        if self._taken is not None:
            self._taken.set()
            self._taken = None

    async def settle_membership(self) -> int:
        """Refresh now the membership of every subscriber deferred so far. Returns the changes made; the
        lag of each subscriber (its first deferred event to now, seconds) goes to ``on_membership``."""
        changes = 0
        self._busy += 1
        try:
            changes = await self._settle()
        finally:
            self._busy -= 1
        if self._settled is not None and not self._busy:
            self._settled.set()
            self._settled = None
        return changes

    async def _settle(self) -> int:
        changes = 0
        while self._pending:
            tenant, pending = self._pending.popitem()
            self._release_taken()  # the next batch of that tenant may commit while this one is refreshed
            items = list(pending.items())
            for i in range(0, len(items), self.membership_chunk):
                chunk = items[i:i + self.membership_chunk]
                changes += await self._refresh_touched(tenant, {sid: changed for sid, (changed, _) in chunk}, self.clock())
                if self.on_membership is not None:
                    done = time.monotonic()
                    self.on_membership([done - arrived for _, (_, arrived) in chunk])
        return changes

    async def wait_membership(self) -> None:
        """Until nothing deferred is left (the membership loop caught up)."""
        while self._pending or self._busy:
            if self._settled is None:
                self._settled = anyio.Event()
            await self._settled.wait()

    async def tick(self, tenant: str | None = None) -> list[int]:
        """The periodic work: checkouts past ``abandon_after`` become abandoned, due segment timers
        move people in or out, time-windowed segments are rebuilt every ``segment_rebuild_s`` and the
        time-relative scores refreshed every ``scores_refresh_s``. Returns the subscribers whose
        checkouts were abandoned."""
        now, out = self.clock(), []
        for name in [tenant] if tenant else list(self.tenants):
            sids = await self._run(self.store.abandon_checkouts, name, after_s=self.settings.abandon_after, now=now)
            for sid in sids:
                await self.refresh_membership(name, sid, frozenset({"checkouts", "subscriber_stats"}), now)
            out += sids
            if now - self._last_scores.get(name, now - self.settings.scores_refresh_s - 1) >= self.settings.scores_refresh_s:
                self._last_scores[name] = now
                await self._run(self.store.refresh_scores, name, now=now)
                await self.rebuild(name, lambda deps: True)
            elif now - self._last_rebuild.get(name, 0.0) >= self.settings.segment_rebuild_s:
                self._last_rebuild[name] = now
                await self.rebuild(name, lambda deps: "clock" in deps)
        for t, seg_id, sid in await self._run(self.store.due_timers, now):
            if tenant is None or t == tenant:
                await self.refresh_membership(t, sid, None, now, only=seg_id)
        return out

    # ---- live membership (segments' dependencies decide what an event re-evaluates) ----------
    async def segments_of(self, tenant: str) -> list[tuple[int, Segment, frozenset[str]]]:
        if tenant not in self._segments:
            rows, after = [], 0
            while page := await self._run(self.store.segments, tenant, after=after, limit=500):
                rows += page
                after = page[-1].id
            parsed = []
            for r in rows:
                seg = parse_segment(r.definition)
                parsed.append((r.id, seg, dependencies(seg)))
            self._segments[tenant] = parsed
        return self._segments[tenant]

    async def refresh_batch(self, tenant: str, applied: Sequence[Applied], now: float) -> int:
        """Membership after a batch, set-based: per segment whose dependencies the batch touched, its SQL
        restricted to the subscribers whose changes touch them (``compile_segment(..., only=...)``), the
        difference written, timers set to the next window edge. Returns the memberships changed."""
        return await self._refresh_touched(tenant, _touched(applied), now)

    async def _refresh_touched(self, tenant: str, touched: dict[int, set[str]], now: float) -> int:
        if not touched:
            return 0
        by_change: dict[frozenset[str], list[int]] = {}
        for sid, changed in touched.items():
            by_change.setdefault(frozenset(changed), []).append(sid)
        ids_of: dict[frozenset[str], list[int]] = {}  # segments with the same dependencies share one id list
        chosen: dict[tuple[int, ...], list[tuple[int, Segment, bool]]] = {}  # by their ids: one statement a group
        segments = await self.segments_of(tenant)
        all_deps = tuple(deps for _, _, deps in segments)
        hit = {changed: affected_each(all_deps, changed) for changed in by_change}
        for k, (seg_id, seg, deps) in enumerate(segments):
            if deps not in ids_of:
                ids_of[deps] = sorted(sid for changed, sids in by_change.items() if hit[changed][k] for sid in sids)
            if ids_of[deps]:
                chosen.setdefault(tuple(ids_of[deps]), []).append((seg_id, seg, "clock" in deps))
        plans = [p for ids, group in chosen.items() for p in _plans(self.store.engine, tenant, list(ids), group, now)]
        writer = self.member_process or self.store
        return await self._run(writer.refresh_members, tenant, plans, now=now) if plans else 0

    async def refresh_membership(self, tenant: str, sid: int, changed: frozenset[str] | None, now: float,
                                 *, only: int | None = None) -> None:  # fmt: skip
        """Re-evaluate, for one subscriber, the segments that depend on what changed (``None``: all, or
        ``only`` that one), write their membership, and set the timer for when time alone changes it."""
        touched = [(i, seg, deps) for i, seg, deps in await self.segments_of(tenant)
                   if (only is None or i == only) and (changed is None or affected_by(deps, changed))]  # fmt: skip
        if not touched:
            return

        def run() -> None:
            view = self.store.view(tenant, sid)
            if view is None:
                return
            for i, seg, deps in touched:
                self.store.set_member(tenant, i, sid, evaluate(seg, view, now), now=now)
                if "clock" in deps:
                    self.store.set_timer(tenant, i, sid, next_change(seg, view, now))
        await self._run(run)

    async def rebuild(self, tenant: str, which: Callable[[frozenset[str]], bool]) -> None:
        now = self.clock()
        for i, seg, deps in await self.segments_of(tenant):
            if which(deps):
                where, params = compile_segment(seg, self.store.engine, tenant, now)  # type: ignore[arg-type]
                await self._run(self.store.rebuild_members, tenant, i, where, params, now=now)

    async def member_segments(self, tenant: str, subscriber_id: int) -> list[tuple[int, float]]:
        await self._subscriber(tenant, subscriber_id)
        return await self._run(self.store.member_segments, tenant, subscriber_id)

    # ---- segments (the language and its SQL: campaigns.core.segments, campaigns.store.segment_sql) ---
    @staticmethod
    def parse(definition: Any) -> Segment:
        return parse_segment(definition)

    async def put_segment(self, tenant: str, name: str, definition: Any, segment_id: int | None = None) -> SegmentRow:
        seg = parse_segment(definition)
        now = self.clock()
        row = await self._run(self.store.put_segment, tenant, name, dump_segment(seg), now=now, segment_id=segment_id)
        self._segments.pop(tenant, None)
        where, params = compile_segment(seg, self.store.engine, tenant, now)  # type: ignore[arg-type]
        await self._run(self.store.rebuild_members, tenant, row.id, where, params, now=now)
        return row

    async def delete_segment(self, tenant: str, segment_id: int) -> None:
        await self._run(self.store.delete_segment, tenant, segment_id)
        self._segments.pop(tenant, None)

    async def segment(self, tenant: str, segment_id: int) -> tuple[SegmentRow, Segment]:
        row = await self._run(self.store.segment, tenant, segment_id)
        if row is None:
            raise NotFound(f"no segment {segment_id}", code="segment_not_found")
        return row, parse_segment(row.definition)

    async def count(self, tenant: str, seg: Segment) -> int:
        where, params = compile_segment(seg, self.store.engine, tenant, self.clock())  # type: ignore[arg-type]
        return await self._run(self.store.count_where, tenant, where, params)

    async def members(self, tenant: str, seg: Segment, *, after: int, limit: int) -> list[int]:
        where, params = compile_segment(seg, self.store.engine, tenant, self.clock())  # type: ignore[arg-type]
        return await self._run(self.store.ids_where, tenant, where, params, after=after, limit=limit)


def _plans(engine: Any, tenant: str, ids: list[int], group: list[tuple[int, Segment, bool]], now: float) -> list[MemberPlan]:
    """A pass's plans for segments over the same ``ids``: each one's restricted ``where`` (the pass's
    statement restricts the subscribers to ``ids`` once: ``SqlStore._read_group``) and window edges;
    the order and item window edges of two segments or more read by one scan of the orders
    (``order_edges``, carried by the first plan), the rest of each one's edges its own."""
    shifts = [(seg_id, ss) for seg_id, seg, timed in group if timed and (ss := order_shifts(seg))]
    shared = order_edges(shifts, engine, tenant, now, ids) if len(shifts) > 1 else None
    merged = {seg_id for seg_id, _ in shifts} if shared is not None else set()
    plans = []
    for seg_id, seg, timed in group:
        where, params = compile_segment(seg, engine, tenant, now, only=ids, caller_restricts=True)
        edges = compile_edges(seg, engine, tenant, now, ids, orders=seg_id not in merged) if timed else None
        plans.append(MemberPlan(segment_id=seg_id, ids=ids, where=where, params=params, edges=edges, timed=timed,
                                shared_edges=shared if not plans else None))  # fmt: skip
    return plans


def _touched(applied: Sequence[Applied]) -> dict[int, set[str]]:
    """subscriber -> what the batch changed of it (duplicates changed nothing)."""
    touched: dict[int, set[str]] = {}
    for r in applied:
        if r.subscriber_id is not None and r.outcome != "duplicate":
            touched.setdefault(r.subscriber_id, set()).update(r.changed)
            for other in r.others:
                touched.setdefault(other, set()).update(r.changed)
    return touched


def is_fulfillment(event: ShopEvent) -> bool:
    return isinstance(event, FulfillmentEvent)
