"""The gateway link: consent changes both ways between the campaign layer and the gateway, through
the gateway's public HTTP API only, without loss across a restart of either side.

- Here -> gateway: an opt-out recorded here queues a ``suppress`` row in the store's outbox
  (``gateway_sync``, written in the same transaction as the ledger entry); ``push`` sends each with
  ``POST /v1/suppressions`` (a confirmed re-opt-in: ``DELETE``) and deletes the row only after the
  gateway answered. A crash between the two re-sends it: both calls are idempotent.
- Gateway -> here: the gateway acts on STOP itself (suppression) and keeps every inbound message;
  ``pull`` reads them with ``GET /v1/inbound?after=<cursor>`` (the cursor is stored and moves only
  after the messages are recorded; each is recorded once, by its id). The gateway may also POST
  non-keyword messages to the tenant's ``inbound_url`` (``/v1/gateway/{tenant}/inbound`` here,
  signed with the tenant's webhook secret): handled at once, the same way, idempotently.
- ``reconcile`` (at start-up) reads ``GET /v1/suppressions``: a number suppressed there and not
  revoked here gets an ``opt_out`` (source ``gateway``), whatever happened while we were down.

Replies (the double opt-in request, the welcome) are sent *before* the ledger entry is written,
with an Idempotency-Key derived from the inbound message: a retry after a crash never texts twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio

from campaigns.core.consent import Evidence
from campaigns.core.signup import decide_inbound
from campaigns.errors import CampaignError, CallerError, GatewayError
from campaigns.service.audience import Audience
from campaigns.service.gateway_client import GatewayClient, Inbound
from campaigns.store.base import NewConsent

if TYPE_CHECKING:
    from campaigns.service.inbox import Inbox

log = logging.getLogger(__name__)


class GatewayLink:
    def __init__(self, audience: Audience, clients: Mapping[str, GatewayClient], *, inbox: Inbox | None = None) -> None:
        self.audience = audience
        self.clients = dict(clients)
        self.inbox = inbox  # replies that are not consent go there (campaigns/service/inbox.py)

    async def push(self, tenant: str) -> int:
        """Send the tenant's queued suppress/unsuppress to the gateway; returns how many went."""
        store, client, sent = self.audience.store, self.clients[tenant], 0
        for item in await anyio.to_thread.run_sync(lambda: store.sync_pending(tenant)):
            try:
                if item.action == "suppress":
                    await client.suppress(item.phone)
                else:
                    await client.unsuppress(item.phone)
            except GatewayError as exc:
                log.warning("gateway.sync.failed tenant=%s action=%s error=%s", tenant, item.action, exc)
                break  # kept in the outbox: next round
            await anyio.to_thread.run_sync(store.sync_done, item)
            sent += 1
        return sent

    async def pull(self, tenant: str, *, limit: int = 500) -> int:
        """Read the gateway's inbound messages after the stored cursor; returns how many were handled."""
        store, client, handled = self.audience.store, self.clients[tenant], 0
        after = await anyio.to_thread.run_sync(store.cursor, tenant, "inbound")
        while True:
            page = await client.inbound(after=after, limit=limit)
            for msg in page.inbound:
                await self.handle(tenant, msg)
                handled += 1
            if page.inbound:
                after = max(m.id for m in page.inbound)
                await anyio.to_thread.run_sync(store.set_cursor, tenant, "inbound", after)
            if page.next is None or not page.inbound:
                return handled

    async def reconcile(self, tenant: str) -> int:
        """Every number suppressed at the gateway is revoked here; returns how many were added."""
        store, added = self.audience.store, 0
        for s in await self.clients[tenant].suppressions():
            try:
                phone = self.audience.phone(tenant, s.number, field="number")
            except CallerError:
                continue
            sub = await anyio.to_thread.run_sync(store.subscriber_by_phone, tenant, phone)
            if sub is not None and sub.consent == "revoked":
                continue
            entry, _ = await anyio.to_thread.run_sync(lambda: store.record_consent(
                tenant, NewConsent(phone=phone, action="opt_out", source="gateway", at=s.at,
                                   evidence=Evidence(note=f"gateway suppression ({s.source})")),
                now=self.audience.clock(), event_id=f"suppression:{phone}:{s.at!r}"))  # fmt: skip
            added += entry is not None
        return added

    async def handle(self, tenant: str, msg: Inbound) -> None:
        """One inbound message: decide (pure), reply (idempotent), then record (once, by its id)."""
        try:
            phone = self.audience.phone(tenant, msg.sender, field="from")
        except CallerError:
            log.info("inbound.ignored tenant=%s id=%s reason=sender", tenant, msg.id)
            return
        store = self.audience.store
        sub = await anyio.to_thread.run_sync(store.subscriber_by_phone, tenant, phone)
        signup = self.audience.tenants[tenant].signup
        decision = decide_inbound(kind=msg.kind, text=msg.text, state=sub.consent if sub else "none",  # type: ignore[arg-type]
                                  keywords=signup.keywords, confirm_words=signup.confirm_words)  # fmt: skip
        confirm_text = signup.confirm_text.format(shop=signup.shop_name)
        replied = None
        if decision.reply is not None:
            text = confirm_text if decision.reply == "confirm" else signup.welcome_text.format(shop=signup.shop_name)
            media = [signup.welcome_media_url] if decision.reply == "welcome" and signup.welcome_media_url else None
            await self.clients[tenant].send(to=phone, body=text, sender=signup.sender or msg.recipient, media=media,
                                            key=f"campaigns:{tenant}:{decision.reply}:{msg.id}")  # fmt: skip
            replied = text
        if decision.action is not None:
            await self._record(tenant, msg, phone, decision, confirm_text)
        if self.inbox is not None:  # after the consent: an opt-out is in the ledger before the history
            await self.inbox.receive(tenant, msg, phone, sub.id if sub is not None else None, decision, replied)

    async def _record(self, tenant: str, msg: Inbound, phone: str, decision, confirm_text: str) -> None:  # type: ignore[no-untyped-def]
        store, signup = self.audience.store, self.audience.tenants[tenant].signup
        source = "keyword" if decision.action in ("opt_in", "re_opt_in") else (
            "gateway" if msg.kind == "opt_out" else "reply")  # fmt: skip
        disclosure = confirm_text if decision.action != "opt_out" else None
        entry = NewConsent(phone=phone, action=decision.action, source=source, at=msg.at,  # type: ignore[arg-type]
                           disclosure_text=disclosure, disclosure_version=signup.disclosure_version if disclosure else None,
                           evidence=Evidence(keyword=decision.keyword, mo_id=str(msg.id)))  # fmt: skip
        try:
            await anyio.to_thread.run_sync(lambda: store.record_consent(tenant, entry, now=self.audience.clock(),
                                                                        event_id=f"mo:{msg.id}"))  # fmt: skip
        except CallerError as exc:  # e.g. out of order after a concurrent change: nothing stored
            log.info("inbound.consent.refused tenant=%s id=%s code=%s", tenant, msg.id, exc.code)

    async def request_confirmation(self, tenant: str, phone: str, *, key: str) -> bool:
        """Send the double opt-in request ("reply Y") after a form/pop-up opt-in; False if it could not go
        (the subscriber stays pending; a new submission asks again)."""
        client = self.clients.get(tenant)
        if client is None:
            return False
        signup = self.audience.tenants[tenant].signup
        try:
            await client.send(to=phone, body=signup.confirm_text.format(shop=signup.shop_name),
                              sender=signup.sender or signup.shop_name[:11], key=key)  # fmt: skip
        except GatewayError as exc:
            log.warning("signup.confirm.failed tenant=%s error=%s", tenant, exc)
            return False
        return True

    async def start(self) -> None:
        """At start-up: push what is queued, then catch up with everything the gateway heard."""
        for tenant in self.clients:
            try:
                await self.push(tenant)
                await self.reconcile(tenant)
                await self.pull(tenant)
            except CampaignError as exc:
                log.warning("gateway.link.start_failed tenant=%s error=%s", tenant, exc)

    async def run(self, *, interval: float = 2.0) -> None:
        """Forever: push, pull and the periodic work (abandoned checkouts), every ``interval`` s."""
        await self.start()
        while True:
            for tenant in self.clients:
                try:
                    await self.push(tenant)
                    await self.pull(tenant)
                    if self.inbox is not None:
                        await self.inbox.settle(tenant)
                except CampaignError as exc:
                    log.warning("gateway.link.round_failed tenant=%s error=%s", tenant, exc)
            try:
                await self.audience.tick()
            except CampaignError as exc:  # the store busy or down: the next round tries again, serve keeps running
                log.warning("audience.tick_failed error=%s", exc)
            await anyio.sleep(interval)
