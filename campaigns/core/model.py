"""The campaign layer's data, as msgspec Structs (one row of the store each; see campaigns/store/schema.py).

Amounts are integer minor units (cents); times are float epoch seconds (UTC), so SQL and Python agree
exactly. ``SubscriberView`` is what a segment is evaluated over for one subscriber (the row, tags,
aggregates, and their orders, items, checkouts and activities)."""

from __future__ import annotations

from typing import Literal

import msgspec

Gender = Literal["female", "male", "other"]
ConsentState = Literal["none", "pending", "confirmed", "revoked"]
PaymentStatus = Literal["paid", "pending", "refunded"]


class Subscriber(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    id: int
    phone: str  # canonical E.164
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    gender: Gender | None = None
    birthday: str | None = None  # YYYY-MM-DD
    country: str | None = None  # ISO 3166 alpha-2
    region: str | None = None
    city: str | None = None
    time_zone: str | None = None  # IANA name; the shop's address data wins over the number's zones
    language: str | None = None
    signup_source: str | None = None
    created_at: float
    consent: ConsentState = "none"
    consent_at: float | None = None
    attributes: dict[str, object] = msgspec.field(default_factory=dict)


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Per-subscriber aggregates, kept as events arrive (campaigns/core/aggregates.py)."""

    orders_count: int = 0
    total_spent: int = 0
    first_order_at: float | None = None
    last_order_at: float | None = None
    avg_order_value: int = 0
    last_order_payment_status: str | None = None
    last_abandoned_checkout_at: float | None = None  # None once recovered
    last_click_at: float | None = None
    last_message_at: float | None = None
    last_reply_at: float | None = None
    rfm_r: int | None = None  # 1..5
    rfm_f: int | None = None
    rfm_m: int | None = None
    engagement: int | None = None  # 1..5


class OrderItem(msgspec.Struct, frozen=True, kw_only=True):
    product: str
    category: str | None = None
    price: int = 0  # minor units, per unit
    quantity: int = 1


class Order(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    subscriber_id: int
    total: int
    currency: str
    payment_status: PaymentStatus
    fulfillment_status: str | None = None
    discount_code: str | None = None
    created_at: float
    items: tuple[OrderItem, ...] = ()


class Checkout(msgspec.Struct, frozen=True, kw_only=True):
    checkout_id: str
    subscriber_id: int
    url: str | None = None
    value: int = 0
    started_at: float
    completed_at: float | None = None
    abandoned_at: float | None = None


class Activity(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # 'clicked' | 'replied' | 'message_sent' | 'delivered' | a custom event name
    at: float
    properties: dict[str, object] = msgspec.field(default_factory=dict)


class SubscriberView(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a segment may read about one subscriber."""

    subscriber: Subscriber
    tags: frozenset[str] = frozenset()
    stats: Stats = Stats()
    orders: tuple[Order, ...] = ()
    checkouts: tuple[Checkout, ...] = ()
    activities: tuple[Activity, ...] = ()
