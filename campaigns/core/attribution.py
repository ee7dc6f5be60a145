"""Which message earned an order, and what each campaign, variant, flow step and hour earned.

A pure fold over events (``Sent``, ``Delivered``, ``Clicked``, ``Ordered``, ``OptedOut``); the shell
reads them from the store in any order and passes the tenant's ``Windows``.

**Attribution of an order** placed at ``t`` by subscriber ``s`` (first rule that matches wins):

1. *click*: the message of ``s`` with the latest human click at ``c`` with ``c <= t < c + click``
   (default 5 days);
2. *view*: else the message of ``s`` with the latest delivery at ``d`` with ``d <= t < d + view``
   (default 24 h);
3. *discount code*: else the message that carried the order's discount code (codes are unique per
   recipient), whenever it was sent, if it was sent at or before ``t``.

Windows are half-open: an order at the very instant of the click (or delivery) counts, one at exactly
``c + click`` does not. Events after the order never attribute it. Ties (two clicks at the same
instant) go to the later-sent message, then the larger message id, so the result never depends on
input order. Each order is attributed to at most one message.

**Opt-outs**: a STOP at ``t`` is charged to the subscriber's latest message sent in
``(t - 3 days, t]`` (half-open the same way: exactly 3 days after is not charged); a message is charged
at most once (STOP twice is one lost subscriber).

**Duplicates** (a retried webhook) change nothing: an order id counts once (its earliest report),
deliveries and clicks are sets of message ids.

**Metrics** per group (``sent`` is the denominator of per-message figures, ``delivered`` of rates):
delivery rate = delivered/sent; CTR = unique clickers/delivered; conversion rate =
conversions/delivered; revenue per message = revenue/sent; ROI = (revenue - cost)/cost; opt-out rate =
opt-outs/delivered, with ``opt_out_alert`` when it reaches the alert line (default 0.5 %, seed 003).
A rate whose denominator is 0 is None. Money is integer minor units. The hour of day is the hour of
``sent_at`` in the tenant's zone.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from campaigns.core.schedule import tenant_zone
from campaigns.errors import InvalidInput

__all__ = ["Attribution", "Clicked", "Delivered", "Event", "Group", "Metrics", "OptedOut", "Ordered", "Report",
           "Sent", "Windows", "attribute_orders", "groups_of", "report", "tally"]  # fmt: skip

DAY = 86_400.0


class Windows(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's attribution windows, in seconds."""

    click: float = 5 * DAY
    view: float = DAY
    opt_out: float = 3 * DAY
    opt_out_alert: float = 0.005


class Sent(msgspec.Struct, frozen=True, kw_only=True, tag="sent"):
    message: str
    subscriber: int
    at: float
    campaign: str | None = None
    variant: str | None = None
    step: str | None = None  # a flow step ("welcome/2")
    cost: int = 0  # minor units, what the gateway charged
    discount_code: str | None = None


class Delivered(msgspec.Struct, frozen=True, kw_only=True, tag="delivered"):
    message: str
    at: float


class Clicked(msgspec.Struct, frozen=True, kw_only=True, tag="clicked"):
    """A human click (links.classify_hit said "click")."""

    message: str
    at: float


class Ordered(msgspec.Struct, frozen=True, kw_only=True, tag="ordered"):
    order: str
    subscriber: int | None
    at: float
    total: int
    discount_code: str | None = None


class OptedOut(msgspec.Struct, frozen=True, kw_only=True, tag="opted_out"):
    subscriber: int
    at: float


Event = Sent | Delivered | Clicked | Ordered | OptedOut


class Attribution(msgspec.Struct, frozen=True, kw_only=True):
    order: str
    message: str | None
    via: Literal["click", "view", "discount_code"] | None


class _Index:
    """Per subscriber, (instant, sent_at, message) sorted, for clicks, deliveries and sends."""

    def __init__(self, events: Iterable[Event]) -> None:
        kinds: dict[type, list] = {Sent: [], Delivered: [], Clicked: [], Ordered: [], OptedOut: []}
        for e in events:  # by exact type: a fold over millions of events, kept to one dict lookup each
            kinds[type(e)].append(e)
        sends: list[Sent] = kinds[Sent]
        self.sent: dict[str, Sent] = {s.message: s for s in sends}
        # An order reported twice (a webhook retried, an update) counts once: its earliest report.
        first: dict[str, Ordered] = {}
        for o in kinds[Ordered]:
            seen = first.get(o.order)
            if seen is None or (o.at, o.total) < (seen.at, seen.total):
                first[o.order] = o
        self.orders: list[Ordered] = list(first.values())
        self.opt_outs: list[OptedOut] = kinds[OptedOut]
        delivered: list[Delivered] = kinds[Delivered]
        clicked: list[Clicked] = kinds[Clicked]
        self.codes = {s.discount_code: s for s in sends if s.discount_code}
        # Only the histories of subscribers who ordered or opted out are ever looked up: index those.
        self.wanted = {o.subscriber for o in self.orders} | {o.subscriber for o in self.opt_outs}
        self.clicks = self._by_subscriber([(c.at, c.message) for c in clicked])
        self.clicked_ids = {c.message for c in clicked} & self.sent.keys()
        self.deliveries = self._by_subscriber([(d.at, d.message) for d in delivered])
        self.sends = self._by_subscriber([(s.at, s.message) for s in sends if s.subscriber in self.wanted])
        self.delivered_ids = {d.message for d in delivered}

    def _by_subscriber(self, pairs: Iterable[tuple[float, str]]) -> dict[int, list[tuple[float, float, str]]]:
        out: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
        sent, wanted = self.sent, self.wanted
        for at, message in pairs:
            s = sent.get(message)
            if s is not None and s.subscriber in wanted:  # an unknown message is not ours to count
                out[s.subscriber].append((at, s.at, message))
        for rows in out.values():
            rows.sort()
        return out


def _latest(rows: Sequence[tuple[float, float, str]] | None, t: float, window: float) -> str | None:
    """The message of the latest row with ``at <= t < at + window``."""
    if not rows:
        return None
    i = bisect_right(rows, (t, float("inf"), "\U0010ffff"))
    if i and t < rows[i - 1][0] + window:
        return rows[i - 1][2]
    return None


def _attribute(ix: _Index, o: Ordered, w: Windows) -> Attribution:
    if o.subscriber is not None:
        m = _latest(ix.clicks.get(o.subscriber), o.at, w.click)
        if m is not None:
            return Attribution(order=o.order, message=m, via="click")
        m = _latest(ix.deliveries.get(o.subscriber), o.at, w.view)
        if m is not None:
            return Attribution(order=o.order, message=m, via="view")
    s = ix.codes.get(o.discount_code) if o.discount_code else None
    if s is not None and s.at <= o.at:
        return Attribution(order=o.order, message=s.message, via="discount_code")
    return Attribution(order=o.order, message=None, via=None)


def attribute_orders(events: Iterable[Event], windows: Windows = Windows()) -> list[Attribution]:
    """Each order's attribution, one per order id, in the order the orders first came."""
    ix = _Index(events)
    return [_attribute(ix, o, windows) for o in ix.orders]


# ---- the report -----------------------------------------------------------------------------

Dimension = Literal["campaign", "variant", "step", "hour"]


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    key: dict[str, str | int | None]
    sent: int
    delivered: int
    delivery_rate: float | None
    unique_clicks: int
    ctr: float | None
    conversions: int
    conversion_rate: float | None
    revenue: int
    revenue_per_message: float | None
    cost: int
    roi: float | None
    opt_outs: int
    opt_out_rate: float | None
    opt_out_alert: bool


class Report(msgspec.Struct, frozen=True, kw_only=True):
    by: tuple[str, ...]
    rows: tuple[Metrics, ...]
    attributions: tuple[Attribution, ...]


class _Acc:
    __slots__ = ("clicked", "conversions", "cost", "delivered", "opt_outs", "revenue", "sent")

    def __init__(self) -> None:
        self.sent = self.delivered = self.conversions = self.revenue = self.cost = self.opt_outs = 0
        self.clicked = 0  # messages with at least one human click


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


class Group(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Pre-aggregated sends (the store's GROUP BY): messages of one campaign, variant and flow step
    sent in one 15-minute slice of UTC (``slice = floor(sent_at / 900)``). Every UTC offset in use is
    a multiple of 15 minutes, so a slice has one local hour whatever the zone."""

    campaign: str | None
    variant: str | None
    step: str | None
    slice: int
    sent: int
    delivered: int
    cost: int
    clicked: int  # messages with at least one human click


def _hour_function(zone: ZoneInfo) -> Callable[[float], int]:
    hours: dict[int, int] = {}

    def hour(at: float) -> int:
        q = int(at // 900)
        h = hours.get(q)
        if h is None:
            h = hours[q] = datetime.fromtimestamp(q * 900, zone).hour
        return h

    return hour


def _key_function(by: Sequence[str], zone: ZoneInfo) -> Callable[[str | None, str | None, str | None, float], tuple]:
    hour = _hour_function(zone)
    picks = tuple(by)

    def key(campaign: str | None, variant: str | None, step: str | None, at: float) -> tuple[str | int | None, ...]:
        values = {"campaign": campaign, "variant": variant, "step": step}
        return tuple(hour(at) if d == "hour" else values[d] for d in picks)

    return key


def _check_by(by: Sequence[str]) -> None:
    for d in by:
        if d not in ("campaign", "variant", "step", "hour"):
            raise InvalidInput(f"unknown dimension {d!r} (campaign, variant, step, hour)", code="unknown_dimension", field="by")


def _opted_message(ix: _Index, e: OptedOut, window: float) -> str | None:
    return _latest(ix.sends.get(e.subscriber), e.at, window)


def groups_of(events: Iterable[Event]) -> list[Group]:
    """The ``Group`` rows of a list of events (what the store computes in SQL)."""
    ix = _Index(events)
    acc: dict[tuple, list[int]] = {}
    for m, s in ix.sent.items():
        k = (s.campaign, s.variant, s.step, int(s.at // 900))
        a = acc.setdefault(k, [0, 0, 0, 0])
        a[0] += 1
        a[1] += m in ix.delivered_ids
        a[2] += s.cost
        a[3] += m in ix.clicked_ids
    return [Group(campaign=k[0], variant=k[1], step=k[2], slice=k[3], sent=a[0], delivered=a[1], cost=a[2], clicked=a[3])
            for k, a in acc.items()]  # fmt: skip


def report(
    events: Iterable[Event],
    *,
    by: Sequence[Dimension] = ("campaign",),
    windows: Windows = Windows(),
    zone: str = "UTC",
) -> Report:
    """The figures per group of ``by`` (any of campaign, variant, step, hour), sorted by key."""
    events = list(events)
    return tally(groups_of(events), events, by=by, windows=windows, zone=zone)


def tally(
    groups: Iterable[Group],
    history: Iterable[Event],
    *,
    by: Sequence[Dimension] = ("campaign",),
    windows: Windows = Windows(),
    zone: str = "UTC",
    in_scope: Callable[[Sent], bool] | None = None,
) -> Report:
    """The report from the sends already counted (``groups``, the messages in scope) and the full
    history (every source: campaigns and flow steps) of the subscribers who ordered or opted out.
    Orders and opt-outs go to the message the rules pick among *all* of a subscriber's messages;
    only those landing on a message in scope (``in_scope``, default: all) count here. Each order
    counts for at most one message, each message loses at most one subscriber."""
    _check_by(by)
    key_of = _key_function(by, tenant_zone(zone))
    acc: dict[tuple[str | int | None, ...], _Acc] = defaultdict(_Acc)
    for g in groups:
        a = acc[key_of(g.campaign, g.variant, g.step, g.slice * 900.0)]
        a.sent += g.sent
        a.delivered += g.delivered
        a.cost += g.cost
        a.clicked += g.clicked
    ix = _Index(history)

    def group_of(message: str | None) -> _Acc | None:
        s = ix.sent.get(message) if message is not None else None
        if s is None or (in_scope is not None and not in_scope(s)):
            return None
        return acc[key_of(s.campaign, s.variant, s.step, s.at)]

    attributions = [_attribute(ix, o, windows) for o in ix.orders]
    totals = {o.order: o.total for o in ix.orders}
    for at in attributions:
        if (a := group_of(at.message)) is not None:
            a.conversions += 1
            a.revenue += totals[at.order]
    for m in {_opted_message(ix, e, windows.opt_out) for e in ix.opt_outs}:  # a message loses one subscriber at most
        if (a := group_of(m)) is not None:
            a.opt_outs += 1
    rows = [_metrics(dict(zip(by, k)), a, windows) for k, a in sorted(acc.items(), key=lambda kv: repr(kv[0]))]
    return Report(by=tuple(by), rows=tuple(rows), attributions=tuple(attributions))


def _metrics(key: dict[str, str | int | None], a: _Acc, w: Windows) -> Metrics:
    opt_rate = _ratio(a.opt_outs, a.delivered)
    return Metrics(
        key=key,
        sent=a.sent,
        delivered=a.delivered,
        delivery_rate=_ratio(a.delivered, a.sent),
        unique_clicks=a.clicked,
        ctr=_ratio(a.clicked, a.delivered),
        conversions=a.conversions,
        conversion_rate=_ratio(a.conversions, a.delivered),
        revenue=a.revenue,
        revenue_per_message=_ratio(a.revenue, a.sent),
        cost=a.cost,
        roi=_ratio(a.revenue - a.cost, a.cost),
        opt_outs=a.opt_outs,
        opt_out_rate=opt_rate,
        opt_out_alert=opt_rate is not None and opt_rate >= w.opt_out_alert,
    )
