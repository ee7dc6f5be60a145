"""What happens after a launch: clicks on short links, message states from the gateway's webhooks,
the analytics report, and the A/B winner sent to the rest of the audience.

The redirect is the hot path: one indexed read (the link with its recipient's delivery time), the
verdict from ``core.links.classify_hit``, one write (the click) and, for a human click, the
``clicked`` activity. The campaign's UTM parameters are cached per campaign (definitions do not
change after launch)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from campaigns.core import abtest, attribution, links, schedule, templates
from campaigns.core.events import ActivityEvent
from campaigns.errors import Conflict, InvalidInput
from campaigns.service.launch import HELD, Launcher, parse_spec, render_for
from campaigns.store.campaign_rows import CampaignRow, LinkRow, PlannedRecipient, RecipientRow

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
    unique: bool


class WinnerOut(msgspec.Struct, frozen=True, kw_only=True):
    decision: abtest.Decision
    released: int  # held recipients now sent the winner (0 when pending, or already released)


class Tracker:
    def __init__(self, launcher: Launcher) -> None:
        self.la = launcher
        self.store = launcher.store
        self._utm: dict[tuple[str, int], dict[str, str]] = {}

    # ---- short links -----------------------------------------------------------------------------
    async def redirect(self, code: str, *, method: str, user_agent: str | None) -> Redirect | None:
        """Where ``code`` leads (None: unknown or expired), the hit recorded with its verdict."""
        if not (5 <= len(code) <= 16) or not code.isalnum():
            return None
        link = await self.la._run(self.store.link, code)
        now = self.la.clock()
        if link is None or (link.expires_at is not None and now >= link.expires_at):
            return None
        tl = self.la.tenants.get(link.tenant)
        verdict = links.classify_hit(links.Hit(code=code, method=method, user_agent=user_agent, at=now), link.delivered_at,
                                     min_delay=tl.click_min_delay if tl is not None else 10.0)  # fmt: skip
        unique = await self.la._run(self.store.record_click, code, at=now, user_agent=user_agent or "", verdict=verdict)
        if verdict == "click" and link.phone:
            event = ActivityEvent(id=f"click:{code}:{now!r}", at=now, phone=link.phone, kind="clicked",
                                  properties={"campaign": link.campaign_id, "code": code})  # fmt: skip
            await self.la._run(self.store.apply_event, link.tenant, event, phone=link.phone, now=now)
        return Redirect(location=links.with_utm(link.target, await self._utm_of(link)), verdict=verdict, unique=unique)

    async def _utm_of(self, link: LinkRow) -> dict[str, str]:
        key = (link.tenant, link.campaign_id)
        if key not in self._utm:
            camp = await self.la._run(self.store.campaign, link.tenant, link.campaign_id)
            utm = {"utm_source": "sms", "utm_medium": "sms", "utm_campaign": f"campaign-{link.campaign_id}"}
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
            if state in _ACTIVITY:
                event = ActivityEvent(id=f"msg:{e.message_id}:{state}", at=e.at, phone=row.phone, kind=_ACTIVITY[state],  # type: ignore[arg-type]
                                      properties={"campaign": row.campaign_id, "variant": row.variant})  # fmt: skip
                await self.la._run(self.store.apply_event, tenant, event, phone=row.phone, now=self.la.clock())
        return moved

    # ---- analytics -------------------------------------------------------------------------------
    async def events(self, tenant: str, camp: CampaignRow) -> list[attribution.Event]:
        rows = await self._recipients(tenant, camp.id)
        since = camp.launched_at or camp.created_at
        clicks = await self.la._run(self.store.human_clicks, tenant, camp.id)
        outcomes = await self.la._run(self.store.campaign_outcomes, tenant, camp.id, since=since)
        sent = {r.subscriber_id: r for r in rows if r.batch != HELD and r.state not in ("planned", "rejected", "canceled")}
        ev: list[attribution.Event] = []
        for r in sent.values():
            mid = f"{camp.id}:{r.subscriber_id}"
            ev.append(attribution.Sent(message=mid, subscriber=r.subscriber_id, at=r.send_at, campaign=str(camp.id),
                                       variant=r.variant))  # fmt: skip
            if r.state == "delivered" and r.state_at is not None:
                ev.append(attribution.Delivered(message=mid, at=r.state_at))
        ev += [attribution.Clicked(message=f"{camp.id}:{s}", at=at) for s, at in clicks if s in sent]
        ev += [attribution.Ordered(order=o, subscriber=s, at=at, total=t, discount_code=d) for o, s, at, t, d in outcomes.orders]
        ev += [attribution.OptedOut(subscriber=s, at=at) for s, at in outcomes.opt_outs]
        return ev

    async def _recipients(self, tenant: str, campaign_id: int) -> list[RecipientRow]:
        out: list[RecipientRow] = []
        after = 0
        while page := await self.la._run(self.store.campaign_recipients, tenant, campaign_id, after=after, limit=5000):
            out += page
            after = page[-1].subscriber_id
        return out

    async def report(self, tenant: str, campaign_id: int, by: Sequence[str], zone: str | None = None) -> attribution.Report:
        camp = await self.la.campaign(tenant, campaign_id)
        tl = self.la.tenants.get(tenant)
        return attribution.report(await self.events(tenant, camp), by=by,  # type: ignore[arg-type]
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
        spec = parse_spec(camp.definition)
        test = spec.test(camp.id, camp.launched_at or camp.created_at)
        if test is None:
            raise InvalidInput("this campaign has no A/B test", code="no_ab_test")
        events = await self.events(tenant, camp)
        rep = attribution.report(events, by=("variant",))
        per_message: dict[str, int] = {}
        totals = {e.order: e.total for e in events if isinstance(e, attribution.Ordered)}
        for a in rep.attributions:
            if a.message is not None:
                per_message[a.message] = per_message.get(a.message, 0) + totals.get(a.order, 0)
        variant_of = {e.message: e.variant for e in events if isinstance(e, attribution.Sent)}
        delivered = {e.message for e in events if isinstance(e, attribution.Delivered)}
        results = {}
        for row in rep.rows:
            name = row.key.get("variant")
            if not isinstance(name, str):
                continue
            revenues = [per_message.get(m, 0) for m in delivered if variant_of.get(m) == name]
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
