"""The one inbound pipeline: every MO message, from SMPP (``deliver_sm``) or an HTTP carrier's
callback, arrives here as a ``carriers.base.Inbound`` event (through the dispatcher's
``on_inbound``) and is handled the same way.

Theory of operation
-------------------
1. *Whose is it?* ``route``: the tenant whose ``senders`` (sender ids, short codes, long
   numbers) include the address the MO was sent to (``Inbound.recipient``); if only one tenant
   is configured, that one. Otherwise it is unroutable: logged and counted, not stored. (No
   guessing from "who last messaged this number": the store keeps recipients as encoded blobs
   without an index, so that would be a scan per MO, and a wrong guess would put a number on
   the wrong tenant's suppression list.)
2. *What does it ask?* ``gateway.core.keywords`` (pure) on the text, with the tenant's keyword
   set for the sender's locale: opt out, opt in, help, or a message.
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

import logging
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import msgspec

from carriers.base import Inbound
from gateway.api import schemas
from gateway.config import Tenant
from gateway.core.keywords import Help, Keywords, OptIn, OptOut
from gateway.errors import SluiceError
from gateway.runtime.service import Gateway
from gateway.runtime.webhooks import WebhookSender
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


class InboundPipeline:
    def __init__(self, gateway: Gateway, tenants: Sequence[Tenant], *, clock: Callable[[], float],
                 reply_category: str = "transactional",
                 on_forward: Callable[[], None] | None = None,
                 acknowledge: Callable[[str, Sequence[int]], None] | None = None) -> None:  # fmt: skip
        self._gw = gateway
        self._acknowledge = acknowledge  # (carrier, Inbound.acks): answer the carrier, it is stored
        self._clock = clock
        self._category = reply_category
        self._on_forward = on_forward
        self._tenants = list(tenants)
        self._by_sender = {s.lstrip("+").casefold(): t for t in self._tenants for s in t.senders}
        self._keywords = {t.name: Keywords(t.keywords) for t in self._tenants}
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
        if tenant is None and len(self._tenants) == 1:
            tenant = self._tenants[0]
        return tenant

    async def handle(self, mo: Inbound) -> InboundRecord | None:
        now = self._clock()
        self._counts["received"] += 1
        tenant = self.route(mo)
        if tenant is None:
            self._counts["unroutable"] += 1
            log.warning("inbound.unroutable carrier=%s to=%s", mo.carrier, mo.recipient)
            self._answer(mo)  # nothing to keep: sending it again would not change that
            return None
        sender = _e164(mo.sender)
        intent = self._keywords[tenant.name].classify(mo.text, sender)
        kind = intent.__struct_config__.tag
        record = InboundRecord(tenant=tenant.name, carrier=mo.carrier, sender=sender, recipient=mo.recipient,
                               text=mo.text, at=now, kind=kind, keyword=getattr(intent, "keyword", None))  # fmt: skip
        try:
            rid = await self._gw.keep_inbound(record, url=tenant.inbound_url if kind == "message" else None)
            self._answer(mo)  # stored: the carrier may forget it
        except SluiceError as exc:  # not answered: the carrier sends it again
            self._counts["failed"] += 1
            log.error("inbound.store_failed tenant=%s carrier=%s kind=%s error=%s", tenant.name, mo.carrier, kind, exc)
            rid = 0
        record = msgspec.structs.replace(record, id=rid)
        log.info("inbound.%s tenant=%s carrier=%s keyword=%s", kind, tenant.name, mo.carrier, record.keyword)
        match intent:
            case OptOut(reply=reply):
                self._counts["opt_outs"] += 1
            case OptIn(reply=reply):
                self._counts["opt_ins"] += 1
            case Help(reply=reply):
                self._counts["help"] += 1
            case _:
                self._counts["messages"] += 1
                if rid and tenant.inbound_url and self._on_forward:
                    self._on_forward()
                return record
        if reply:
            await self._reply(tenant, sender, mo.recipient, reply, now)
        return record

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


def _e164(number: str) -> str:
    """SMPP's international numbers come without '+' (TON 1): '447911123456' -> '+447911123456'."""
    number = number.strip()
    if number[:1] != "+" and number.isdigit() and len(number) >= 8:
        return "+" + number
    return number


_encode = msgspec.json.Encoder().encode


def message_out(r: InboundRecord) -> schemas.InboundMessageOut:
    return schemas.InboundMessageOut(id=r.id, sender=r.sender, recipient=r.recipient, text=r.text, at=r.at,
                             carrier=r.carrier, kind=r.kind, keyword=r.keyword)  # fmt: skip


class InboundSender(WebhookSender):
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
