"""Out-of-order tolerance as a property: any arrival order of the same shop events (orders updated,
fulfilled, checkouts started/completed/abandoned, clicks), duplicates included, leaves the same state
and the same aggregates as the events in time order. (Events of one entity at the very same instant
are resolved by arrival; the generator keeps instants distinct.)"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.events import ActivityEvent, CheckoutEvent, FulfillmentEvent, OrderEvent, ShopEvent
from campaigns.store import open_store

A = "+33612345678"
PHONES = (A, "+33612345679")
T0 = 1_760_000_000.0


@st.composite
def shop_events(draw: st.DrawFn) -> list[ShopEvent]:
    """Events of two shoppers on two orders and two checkouts (an order may be named under both
    phones; a checkout, only under one), with what an event may carry beside its state: when the order was placed
    (``created_at``, at or before ``at``), a fulfilment status, a checkout's url (not every event)."""
    n = draw(st.integers(1, 12))
    times = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    out: list[ShopEvent] = []
    for i, t in enumerate(times):
        at = T0 + t
        kind = draw(st.sampled_from(["order", "fulfillment", "checkout", "click"]))
        oid = draw(st.sampled_from(["o1", "o2"]))
        cid = draw(st.sampled_from(["c1", "c2"]))
        # a checkout named under two phones belongs to the first to arrive (a known arrival dependence)
        # (an order naming a checkout too: its orders are A's alone, "o3")
        cart_order = kind == "order" and draw(st.booleans())
        phone = draw(st.sampled_from(PHONES)) if kind in ("order", "click") and not cart_order else A
        oid = "o3" if cart_order else oid
        if kind == "order":
            out.append(OrderEvent(id=f"e{i}", at=at, order_id=oid, phone=phone, total=draw(st.integers(0, 50_000)),
                                  currency="EUR", payment_status=draw(st.sampled_from(["paid", "pending", "refunded"])),
                                  created_at=draw(st.none() | st.integers(0, 20).map(lambda d: at - d)),
                                  fulfillment_status=draw(st.none() | st.sampled_from(["unfulfilled", "partial"])),
                                  checkout_id=cid if cart_order else None))  # fmt: skip
        elif kind == "fulfillment":
            out.append(FulfillmentEvent(id=f"e{i}", at=at, order_id=oid,
                                        status=draw(st.sampled_from(["shipped", "delivered"]))))  # fmt: skip
        elif kind == "checkout":
            out.append(CheckoutEvent(id=f"e{i}", at=at, checkout_id=cid, phone=phone, value=draw(st.integers(0, 9999)),
                                     url=draw(st.none() | st.just(f"https://s/{cid}/{i}")),
                                     status=draw(st.sampled_from(["started", "completed", "abandoned"]))))  # fmt: skip
        else:
            out.append(ActivityEvent(id=f"e{i}", at=at, phone=phone, kind="clicked"))
    return out


def final_state(events: list[ShopEvent], tenant: str, store) -> dict:  # type: ignore[no-untyped-def]
    for e in events:
        store.apply_event(tenant, e, phone=getattr(e, "phone", None), now=T0 + 20_000)
    out = {}
    for phone in PHONES:
        sub = store.subscriber_by_phone(tenant, phone)
        if sub is None:
            continue
        view = store.view(tenant, sub.id)
        orders = tuple((o.order_id, o.total, o.payment_status, o.fulfillment_status, o.created_at) for o in view.orders)
        checkouts = tuple((c.checkout_id, c.value, c.url, c.started_at, c.completed_at, c.abandoned_at)
                          for c in view.checkouts)  # fmt: skip
        out[phone] = orders, checkouts, view.stats
    return out


@settings(max_examples=30, deadline=None)
@given(shop_events(), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_state(events: list[ShopEvent], rnd: random.Random) -> None:
    store = open_store("sqlite:///:memory:")
    in_order = final_state(sorted(events, key=lambda e: e.at), "sorted", store)
    shuffled = events + rnd.sample(events, k=min(3, len(events)))  # and some delivered twice
    rnd.shuffle(shuffled)
    assert final_state(shuffled, "shuffled", store) == in_order
    store.close()


def test_a_store_made_before_url_at_keeps_the_newest_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``checkouts.url_at`` is added at open and filled from ``updated_at``: an older url arriving
    late does not replace the stored one, a newer one does."""
    import sqlite3

    path = tmp_path / "old.db"
    store = open_store(f"sqlite:///{path}")
    cart = lambda i, at, url: CheckoutEvent(id=f"k{i}", at=T0 + at, checkout_id="c", phone=A, url=url)  # noqa: E731
    store.apply_event("acme", cart(1, 10, "https://s/new"), phone=A, now=T0 + 100)
    store.close()
    conn = sqlite3.connect(path)  # what a store of before the column looks like
    conn.execute("ALTER TABLE checkouts DROP COLUMN url_at")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        def url() -> str | None:
            sub = store.subscriber_by_phone("acme", A)
            return store.view("acme", sub.id).checkouts[0].url  # type: ignore[union-attr]

        store.apply_event("acme", cart(2, 5, "https://s/old"), phone=A, now=T0 + 100)
        assert url() == "https://s/new"
        store.apply_event("acme", cart(3, 20, "https://s/newer"), phone=A, now=T0 + 100)
        assert url() == "https://s/newer"
    finally:
        store.close()
