"""What the flow engine hears from the shop's real inputs: pure mappings from what the store
recorded (a shop event, a consent change, an abandoned checkout, a segment entry, a click, a
periodic scan at ``now``) to the engine's events (``campaigns.core.flows``).

Each event id is derived from the *object* it is about (``order_placed:<order id>``,
``consent:<ledger id>``), not from the delivery, so a shop event sent twice under two ids, or an
order updated three times, triggers and exits flows once.

A checkout's inputs go to the checkout's *own* subscriber (the first to store it), who may not be
the phone of the event that ended it (an order paid under another phone): the abandoned-cart run is
that subscriber's, keyed to the checkout, and must hear the end. The store decides when a checkout
ends and whose it is (``Applied.checkout_end``); ``checkout_end`` here builds the event.

| input | flow event (kind, name, object_id, payload) |
|---|---|
| order event | ``order_placed`` (object: the order); also ``order_paid`` when paid, ``order_fulfilled`` / ``order_delivered`` from its fulfillment status |
| fulfillment event | ``order_fulfilled`` (shipped), ``order_delivered`` (delivered) |
| checkout event with status abandoned (the checkout not completed), or abandoned by the timer | ``checkout_abandoned`` (object: the checkout; payload ``value``, ``url``), to the checkout's own subscriber |
| checkout completed the first time: an order naming it (under any phone), a checkout event with status completed | ``checkout_completed`` (object: the checkout; payload ``checkout_id``), to the checkout's own subscriber |
| custom event | ``custom`` (name: its name; payload: its properties) |
| consent now confirmed (from any source) | ``subscribed`` (name: the source: keyword, form, popup, checkout, import, api) |
| consent now revoked | ``OptOut`` (ends every run of the subscriber) |
| entered a segment | ``segment_entered`` (name: the segment id, as text) |
| birthday in N days, no order for N days | ``birthday`` / ``no_order`` (payload ``days_before`` / ``days``) from the worker's scan |
| a flow short link clicked | ``Click`` (key: the send it came from) |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Literal

from campaigns.core import flows as F
from campaigns.core.events import CheckoutEvent, CustomEvent, FulfillmentEvent, OrderEvent, ShopEvent

__all__ = ["abandoned", "birthday_due", "checkout_end", "completed", "consent_change", "from_shop_event", "no_order_due",
           "segment_entered"]  # fmt: skip

CheckoutEnd = Literal["abandoned", "completed"]
_FULFILLED = {"fulfilled": "order_fulfilled", "shipped": "order_fulfilled", "delivered": "order_delivered"}


def from_shop_event(event: ShopEvent) -> list[F.ShopEvent]:
    """The flow events a shop event carries for its own subscriber (none for profiles, activities and
    checkouts: a checkout's end is ``checkout_end``'s, for the checkout's own subscriber)."""
    match event:
        case OrderEvent():
            payload = {"order_id": event.order_id, "total": event.total, "value": event.total, "currency": event.currency,
                       "checkout_id": event.checkout_id, "discount_code": event.discount_code}  # fmt: skip
            out = [F.ShopEvent(id=f"order_placed:{event.order_id}", kind="order_placed", object_id=event.order_id,
                               payload=payload)]  # fmt: skip
            if event.payment_status == "paid":
                out.append(F.ShopEvent(id=f"order_paid:{event.order_id}", kind="order_paid", object_id=event.order_id,
                                       payload=payload))  # fmt: skip
            kind = _FULFILLED.get((event.fulfillment_status or "").lower())
            if kind is not None:
                out.append(F.ShopEvent(id=f"{kind}:{event.order_id}", kind=kind, object_id=event.order_id,  # type: ignore[arg-type]
                                       payload=payload))  # fmt: skip
            return out
        case FulfillmentEvent() if event.status != "canceled":
            kind = _FULFILLED[event.status]
            return [F.ShopEvent(id=f"{kind}:{event.order_id}", kind=kind, object_id=event.order_id,  # type: ignore[arg-type]
                                payload={"order_id": event.order_id, "tracking_url": event.tracking_url})]  # fmt: skip
        case CustomEvent():
            return [F.ShopEvent(id=f"custom:{event.id}", kind="custom", name=event.name, payload=dict(event.properties))]
    return []


def abandoned(checkout_id: str, value: int, url: str | None) -> F.ShopEvent:
    return F.ShopEvent(id=f"checkout_abandoned:{checkout_id}", kind="checkout_abandoned", object_id=checkout_id,
                       payload={"value": value, "url": url, "checkout_url": url})  # fmt: skip


def completed(checkout_id: str) -> F.ShopEvent:
    """The checkout was paid (one id per checkout: an order and a completed checkout event, or an
    order updated three times, end it once)."""
    return F.ShopEvent(id=f"checkout_completed:{checkout_id}", kind="checkout_completed", object_id=checkout_id,
                       payload={"checkout_id": checkout_id})  # fmt: skip


def checkout_end(event: OrderEvent | CheckoutEvent, end: CheckoutEnd) -> F.ShopEvent:
    """The input of a checkout ``event`` ended (the store says ``end``: the order or checkout event
    completed the checkout the first time, or a checkout event reported it abandoned unpaid)."""
    assert event.checkout_id is not None
    if end == "completed":
        return completed(event.checkout_id)
    assert isinstance(event, CheckoutEvent)
    return abandoned(event.checkout_id, event.value, event.url)


def consent_change(entry_id: int, source: str, old: str, new: str) -> F.Event | None:
    """A consent ledger entry that confirmed or revoked the subscriber's consent."""
    if new == "confirmed" and old != "confirmed":
        return F.ShopEvent(id=f"consent:{entry_id}", kind="subscribed", name=source)
    if new == "revoked" and old != "revoked":
        return F.OptOut(id=f"consent:{entry_id}")
    return None


def segment_entered(segment_id: int, subscriber_id: int, since: float) -> F.ShopEvent:
    return F.ShopEvent(id=f"segment:{segment_id}:{subscriber_id}:{since!r}", kind="segment_entered",
                       name=str(segment_id))  # fmt: skip


def birthday_due(birthday: str | None, days_before: int, now: float, zone: dt.tzinfo = dt.UTC) -> F.ShopEvent | None:
    """The ``birthday`` event when the subscriber's birthday (YYYY-MM-DD; 29 February counts on
    28 February in other years) is ``days_before`` days after ``now``'s date; else None."""
    if not birthday:
        return None
    try:
        month, day = int(birthday[5:7]), int(birthday[8:10])
    except ValueError:
        return None
    target = dt.datetime.fromtimestamp(now, zone).date() + dt.timedelta(days=days_before)
    if (month, day) == (2, 29) and not _leap(target.year):
        month, day = 2, 28
    if (target.month, target.day) != (month, day):
        return None
    return F.ShopEvent(id=f"birthday:{days_before}:{target.isoformat()}", kind="birthday",
                       payload={"days_before": days_before, "date": target.isoformat()})  # fmt: skip


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def no_order_due(last_order_at: float | None, days: int, now: float) -> F.ShopEvent | None:
    """The win-back event once ``days`` days have passed since the last order (one per last order)."""
    if last_order_at is None or now - last_order_at < days * F.DAY:
        return None
    return F.ShopEvent(id=f"no_order:{days}:{last_order_at!r}", kind="no_order", payload={"days": days})


def scan_triggers(flows: Iterable[F.Flow]) -> tuple[set[int], set[int]]:
    """The ``days_before`` of the birthday flows and the ``days`` of the win-back flows (what to scan)."""
    birthdays, no_orders = set(), set()
    for f in flows:
        if isinstance(f.trigger, F.Birthday):
            birthdays.add(f.trigger.days_before)
        elif isinstance(f.trigger, F.NoOrder):
            no_orders.add(f.trigger.days)
    return birthdays, no_orders
