"""The one inbound pipeline: every MO message, from SMPP (``deliver_sm``) or an HTTP carrier's
callback, arrives here as a ``carriers.base.Inbound`` event (through the dispatcher's
``on_inbound``) and is handled the same way.

Theory of operation
-------------------
0. *Who sent it?* ``sender_of``: the sender as one canonical E.164 (``NumberCheck.canonical``),
   read in the carrier's numbering context: SMPP's ``source_addr_ton`` (international, national
   in the carrier's ``default_region``, alphanumeric) or, without one, the region's reading and
   then the international one. A sender that cannot be made canonical is kept as given and
   flagged (``sender_canonical`` False): stored and listed, never put on a list or answered.
   *Seen before?* ``key_of``: the carrier's id of the MO, or a digest of carrier, sender,
   address, TON and text (within ``inbound.dedupe_window``); a redelivery is answered to the
   carrier and nothing else (``Store.add_inbound_once``, durable: it holds across a restart).
1. *Whose is it?* ``route``: the tenant whose ``senders`` (sender ids, short codes, long
   numbers) include the address the MO was sent to (``Inbound.recipient``); if only one tenant
   is configured, that one. Otherwise it is unroutable: stored under tenant "" (operators list
   it: ``GET /v1/inbound?unrouted=1`` with an ``operator`` key), and an opt-out in it
   suppresses the sender for every tenant that messaged that number in the last
   ``inbound.unrouted_opt_out_days`` (a store scan, only for such an opt-out).
2. *What does it ask?* ``gateway.core.keywords`` (pure) on the text, with the tenant's keyword
   set for the sender's locale, then the opt-out classifier (``gateway.core.optout``): opt out
   (certain or unsure), opt in, help, yes, or a message. ``Yes`` is an opt-in only when it
   answers a pending question (``Store.question_pending``), else a message. An unsure opt-out
   of a tenant with ``opt_out_uncertain = "ask"`` suppresses as any opt-out and opens a question
   (the reply is the question, not the confirmation); a YES re-subscribes, a STOP settles it.
3. *Do it.* Opt-out: the number is suppressed in the core at once (queued marketing to it ends
   ``suppressed`` when its turn comes), then the record is stored, which puts it on the
   tenant's suppression list in the same transaction (the audit: keyword, time, carrier, raw
   text). Opt-in: the reverse. Then the configured reply (one per keyword message) is
   submitted like any message, in ``inbound.reply_category`` (transactional by default: no
   quiet hours, no cap, not suppressible) from the address the MO was sent to. Help: the help
   text. A message: stored, and forwarded to the tenant's ``inbound_url`` by ``InboundSender``
   (the webhook sender's rounds, signatures and retries, over the store's inbound queue).

MOs are handled one at a time in arrival order (``feed`` never waits; ``run`` drains), so an
opt-out followed by an opt-in from the same number ends opted in. An MO is answered to its
carrier (``acknowledge`` with ``Inbound.acks``) only once its record is stored, so a crash in
between loses no opt-out: the carrier sends it again (at least once: it may then be stored twice).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import anyio
import msgspec

from carriers.base import Inbound
from gateway.api import schemas
from gateway.config import InboundSettings, Tenant
from gateway.core.keywords import Help, Keywords, OptIn, OptOut, Other, Yes
from gateway.errors import SluiceError
from gateway.runtime.service import Gateway
from gateway.runtime.webhooks import LeasedSender
from gateway.store.base import InboundItem, InboundRecord

__all__ = ["InboundPipeline", "InboundSender", "InboundStats"]

log = logging.getLogger(__name__)


class InboundStats(msgspec.Struct, frozen=True, kw_only=True):
    received: int
    opt_outs: int
    opt_ins: int
    help: int
    messages: int
    replies: int
    unroutable: int
    failed: int  # stored or replied to only in part (logged)
    duplicates: int = 0  # a carrier's redelivery of an MO already stored: answered, not acted on
    questions: int = 0  # clarifying questions sent for unsure opt-outs
    not_canonical: int = 0  # senders that could not be made a canonical number (kept, flagged)


# SMPP 3.4 §5.2.5: type of number.
TON_UNKNOWN, TON_INTERNATIONAL, TON_NATIONAL, TON_ALPHANUMERIC = 0, 1, 2, 5


class InboundPipeline:
    def __init__(self, gateway: Gateway, tenants: Sequence[Tenant], *, clock: Callable[[], float],
                 reply_category: str = "transactional",
                 on_forward: Callable[[], None] | None = None,
                 acknowledge: Callable[[str, Sequence[int]], None] | None = None,
                 regions: Mapping[str, str] | None = None,
                 settings: InboundSettings | None = None) -> None:  # fmt: skip
        """``regions``: carrier name -> its ``default_region`` (the numbering context of its MOs)."""
        self._gw = gateway
        self._acknowledge = acknowledge  # (carrier, Inbound.acks): answer the carrier, it is stored
        self._clock = clock
        self._category = reply_category
        self._on_forward = on_forward
        self._regions = dict(regions or {})
        self._settings = settings or InboundSettings(reply_category=reply_category)
        self._tenants = list(tenants)
        self._by_sender = {s.lstrip("+").casefold(): t for t in self._tenants for s in t.senders}
        self._by_number: dict[str, Tenant] = {}  # senders that are numbers, canonical
        for t in self._tenants:
            for s in t.senders:
                number, _ = gateway.numbers.canonical(s if s.startswith("+") else "+" + s)
                if number is not None:
                    self._by_number.setdefault(number, t)
        self._keywords = {t.name: Keywords(t.keywords) for t in self._tenants}
        self._unrouted_keywords = Keywords()
        self._queue: deque[Inbound] = deque()
        self._more = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._counts = dict.fromkeys(InboundStats.__struct_fields__, 0)

    def statistics(self) -> InboundStats:
        return InboundStats(**self._counts)

    # -- the shell ---------------------------------------------------------------------------

    def feed(self, mo: Inbound) -> None:
        """Take one MO (the dispatcher's ``on_inbound``). Never waits, never drops."""
        self._queue.append(mo)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._more.set()

    async def run(self) -> None:
        while True:
            while self._queue:
                await self.handle(self._queue.popleft())
            self._idle.set()
            await self._more.wait()
            self._more = anyio.Event()

    async def wait_idle(self) -> None:
        """Every MO fed so far is handled (tests, shutdown)."""
        await self._idle.wait()

    # -- one message -------------------------------------------------------------------------

    def route(self, mo: Inbound) -> Tenant | None:
        tenant = self._by_sender.get(mo.recipient.lstrip("+").casefold())
        if tenant is None and any(c.isdigit() for c in mo.recipient):
            # A long number written otherwise than in the config ("2125550100" for "+12125550100"):
            # the same number once both are canonical, read in the carrier's numbering context.
            address, ok = self._number_of(mo.recipient, mo.carrier, None)
            if ok:
                tenant = self._by_number.get(address)
        if tenant is None and len(self._tenants) == 1:
            tenant = self._tenants[0]
        return tenant

    def sender_of(self, mo: Inbound) -> tuple[str, bool]:
        """(the sender's canonical E.164, True), or (the sender as given, False). Read with the
        carrier's numbering context: SMPP's TON says international (digits without '+'),
        national (read in the carrier's ``default_region``) or alphanumeric (never a number);
        unknown (or an HTTP carrier) tries the region's reading, then the international one."""
        return self._number_of(mo.sender, mo.carrier, mo.sender_ton)

    def _number_of(self, address: str, carrier: str, ton: int | None) -> tuple[str, bool]:
        raw = address.strip()
        region = self._regions.get(carrier)
        canonical = self._gw.numbers.canonical
        if ton == TON_ALPHANUMERIC:
            return raw, False
        if ton == TON_INTERNATIONAL:
            tries = [(raw if raw.startswith("+") else "+" + raw, None)]
        elif ton == TON_NATIONAL:
            tries = [(raw, region)] if region else []
        else:
            tries = [(raw, region)] if region else []
            tries.append((raw if raw.startswith("+") else "+" + raw, None))
        for text, reg in tries:
            number, err = canonical(text, reg)
            if number is not None:
                return number, True
        return raw, False

    @staticmethod
    def key_of(mo: Inbound, sender: str) -> tuple[str, bool]:
        """The MO's de-duplication key, and whether it is the carrier's own id (else a digest
        of what it says, which only counts within ``dedupe_window``)."""
        if mo.carrier_id:
            return f"{mo.carrier}:id:{mo.carrier_id}", True
        h = hashlib.blake2b(digest_size=16)
        for part in (sender, mo.recipient, str(mo.sender_ton), mo.text):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        return f"{mo.carrier}:sha:{h.hexdigest()}", False

    async def handle(self, mo: Inbound) -> InboundRecord | None:
        now = self._clock()
        self._counts["received"] += 1
        sender, canonical = self.sender_of(mo)
        if not canonical:
            self._counts["not_canonical"] += 1
        key, by_id = self.key_of(mo, sender)
        since = 0.0 if by_id else now - self._settings.dedupe_window
        tenant = self.route(mo)
        if tenant is None:
            return await self._unrouted(mo, sender, canonical, key, since, now)
        intent = self._keywords[tenant.name].classify(mo.text, sender if canonical else "")
        if isinstance(intent, Yes):  # an opt-in only as the answer to our question
            pending = canonical and await self._gw.question_pending(tenant.name, sender,
                                                                    now - self._settings.question_ttl)  # fmt: skip
            intent = OptIn(keyword=intent.keyword, reply=intent.reply) if pending else Other()
        kind = intent.__struct_config__.tag
        asks = isinstance(intent, OptOut) and bool(intent.question) and canonical
        record = InboundRecord(tenant=tenant.name, carrier=mo.carrier, sender=sender, recipient=mo.recipient,
                               text=mo.text, at=now, kind=kind, keyword=getattr(intent, "keyword", None),
                               sender_canonical=canonical, certain=getattr(intent, "certain", True),
                               asks=asks)  # fmt: skip
        stored = await self._store(mo, record, tenant.inbound_url if kind == "message" else None, key, since)
        if stored is None:
            return record
        record = stored
        log.info("inbound.%s tenant=%s carrier=%s keyword=%s canonical=%s", kind, tenant.name, mo.carrier,
                 record.keyword, canonical)  # fmt: skip
        match intent:
            case OptOut(reply=reply):
                self._counts["opt_outs"] += 1
                if asks:
                    reply = intent.question
                    self._counts["questions"] += 1
            case OptIn(reply=reply):
                self._counts["opt_ins"] += 1
            case Help(reply=reply):
                self._counts["help"] += 1
            case _:
                self._counts["messages"] += 1
                if record.id and tenant.inbound_url and self._on_forward:
                    self._on_forward()
                return record
        if reply and canonical:  # a sender that is not a number cannot be answered
            await self._reply(tenant, sender, mo.recipient, reply, now)
        return record

    async def _store(self, mo: Inbound, record: InboundRecord, url: str | None, key: str,
                     since: float) -> InboundRecord | None:  # fmt: skip
        """Keep the record (once per key) and then answer the carrier. Returns it with its id;
        None for a duplicate (answered, nothing else to do)."""
        try:
            rid, new = await self._gw.keep_inbound(record, url=url, key=key, since=since)
            self._answer(mo)  # stored: the carrier may forget it
        except SluiceError as exc:  # not answered: the carrier sends it again
            self._counts["failed"] += 1
            log.error("inbound.store_failed tenant=%s carrier=%s kind=%s error=%s", record.tenant, mo.carrier,
                      record.kind, exc)  # fmt: skip
            return msgspec.structs.replace(record, id=0)
        if not new:
            self._counts["duplicates"] += 1
            log.info("inbound.duplicate carrier=%s key=%s id=%d", mo.carrier, key, rid)
            return None
        return msgspec.structs.replace(record, id=rid)

    async def _unrouted(self, mo: Inbound, sender: str, canonical: bool, key: str, since: float,
                        now: float) -> InboundRecord | None:  # fmt: skip
        """An MO to an address no tenant lists: kept under tenant "" (operators list it), and an
        opt-out in it suppresses its sender for every tenant that messaged that number lately."""
        self._counts["unroutable"] += 1
        log.warning("inbound.unroutable carrier=%s to=%s", mo.carrier, mo.recipient)
        intent = self._unrouted_keywords.classify(mo.text, sender if canonical else "")
        kind = "opt_out" if isinstance(intent, OptOut) else "message"
        record = InboundRecord(tenant="", carrier=mo.carrier, sender=sender, recipient=mo.recipient, text=mo.text,
                               at=now, kind=kind, keyword=getattr(intent, "keyword", None) if kind == "opt_out" else None,
                               sender_canonical=canonical, certain=getattr(intent, "certain", True))  # fmt: skip
        stored = await self._store(mo, record, None, key, since)
        if stored is None or kind != "opt_out" or not canonical or not stored.id:
            return stored
        self._counts["opt_outs"] += 1
        days = self._settings.unrouted_opt_out_days
        known = {t.name for t in self._tenants}
        try:
            tenants = await self._gw.tenants_messaged(sender, now - days * 86_400.0)
            for name in tenants:
                if name in known:
                    await self._gw.suppress(name, sender, now, source=f"unrouted:{record.keyword}")
        except SluiceError as exc:
            self._counts["failed"] += 1
            log.error("inbound.unrouted_opt_out_failed carrier=%s error=%s", mo.carrier, exc)
        return stored

    def _answer(self, mo: Inbound) -> None:
        if mo.acks and self._acknowledge is not None:
            self._acknowledge(mo.carrier, mo.acks)

    async def _reply(self, tenant: Tenant, to: str, sender: str, text: str, now: float) -> None:
        """One reply, through the normal path (admitted, stored, routed, webhooks)."""
        body = schemas.MessageIn(to=to, body=text, sender=sender, category=self._category)
        try:
            await self._gw.submit_message(tenant.name, body, now)
        except SluiceError as exc:
            self._counts["failed"] += 1
            log.warning("inbound.reply_failed tenant=%s error=%s", tenant.name, exc)
            return
        self._counts["replies"] += 1


_encode = msgspec.json.Encoder().encode


def message_out(r: InboundRecord) -> schemas.InboundMessageOut:
    return schemas.InboundMessageOut(id=r.id, sender=r.sender, recipient=r.recipient, text=r.text, at=r.at,
                                     carrier=r.carrier, kind=r.kind, keyword=r.keyword,
                                     sender_canonical=r.sender_canonical, certain=r.certain)  # fmt: skip


class InboundSender(LeasedSender):
    """The webhook sender over the store's inbound queue: same batching per (tenant, url),
    signature (``Sluice-Signature``), retries and dead-lettering; body ``{"inbound": [...]}``."""

    def _take(self, now: float, limit: int, lease: float) -> Sequence[InboundItem]:  # type: ignore[override]
        return self._store.inbound_take(now, limit, lease)

    def _next_at(self) -> float | None:
        return self._store.inbound_next_at()

    def _apply(self, settled) -> None:
        done = [i for st in settled for i in st.done]
        if done:
            self._store.inbound_done(done)
        for st in settled:
            if st.retry:
                self._store.inbound_retry(st.retry, st.retry_at, st.error)
            if st.dead:
                self._store.inbound_dead(st.dead, st.error)

    def body(self, batch) -> bytes:  # type: ignore[override]
        return _encode(schemas.InboundPageOut(inbound=[message_out(i.record) for i in batch]))
