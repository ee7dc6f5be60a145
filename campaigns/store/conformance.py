"""The conformance suite every campaign store passes (``CHECKS``; tests/campaigns runs it on SQLite and
PostgreSQL). Each check takes a fresh store and uses its own tenants."""

from __future__ import annotations

import itertools

import msgspec
from collections.abc import Callable

from campaigns.core.consent import Evidence, disclosure_sha256
from campaigns.core.events import (ActivityEvent, CheckoutEvent, ConsentGrant, CustomerEvent, CustomEvent,
                                   FulfillmentEvent, Item, OrderEvent, Profile)  # fmt: skip
from campaigns.errors import Conflict, InvalidInput, NotFound
from campaigns.store.base import NewConsent, Store
from campaigns.store.campaign_rows import ClickIn, HitIn, LinkRow, PlannedRecipient
from campaigns.store.report_sql import Scope

A, B = "+33612345678", "+33612345679"
DAY = 86_400.0
T0 = 1_760_000_000.0


def _raises(exc: type[BaseException], fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"expected {exc.__name__}")


def check_subscribers(store: Store) -> None:
    s, created = store.put_subscriber("acme", Profile(phone=A, first_name="Ana", country="FR", tags=("vip",),
                                                      attributes={"size": "M"}), phone=A, at=T0, now=T0)  # fmt: skip
    assert created and s.phone == A and s.first_name == "Ana" and s.consent == "none" and s.created_at == T0
    s2, created = store.put_subscriber("acme", Profile(phone=A, last_name="Lopez", attributes={"pet": "cat"}),
                                       phone=A, at=T0 + 10, now=T0 + 10)  # fmt: skip
    assert not created and s2.id == s.id and s2.first_name == "Ana" and s2.last_name == "Lopez"
    assert s2.attributes == {"size": "M", "pet": "cat"}
    # An older profile change never overwrites a newer one.
    s3, _ = store.put_subscriber("acme", Profile(phone=A, first_name="Old"), phone=A, at=T0 + 5, now=T0 + 20)
    assert s3.first_name == "Ana"
    assert store.tags("acme", s.id) == {"vip"}
    assert store.set_tags("acme", s.id, add=["a", "b"], remove=["vip"]) == {"a", "b"}
    # Tenants are isolated: another shop neither sees nor touches this subscriber.
    assert store.subscriber("beta", s.id) is None and store.subscriber_by_phone("beta", A) is None
    _raises(NotFound, lambda: store.set_tags("beta", s.id, add=["x"]))
    other, created = store.put_subscriber("beta", Profile(phone=A), phone=A, at=T0, now=T0)
    assert created and other.id != s.id
    for i in range(5):
        store.put_subscriber("acme", Profile(phone=f"+3361234500{i}"), phone=f"+3361234500{i}", at=T0, now=T0)
    first = store.subscribers("acme", after=0, limit=3)
    rest = store.subscribers("acme", after=first[-1].id, limit=10)
    assert len(first) == 3 and len(rest) == 3 and first[-1].id < rest[0].id
    assert {x.tenant for x in first + rest} == {"acme"}
    ids = [x.id for x in first + rest]
    assert [x.id for x in store.subscribers_by_ids("acme", [*reversed(ids), 10**9] + list(range(10**6, 10**6 + 600)))] == ids
    assert store.subscribers_by_ids("beta", ids[:2]) == []
    # A launch's read of its audience: confirmed opt-ins only, in id order, each once, this tenant's.
    assert store.audience_rows("acme", []) == []
    for sub, actions in ((rest[0], ("opt_in", "confirm")), (rest[1], ("opt_in", "confirm", "opt_out")), (rest[2], ("opt_in",))):
        for k, action in enumerate(actions):
            store.record_consent("acme", NewConsent(phone=sub.phone, action=action, source="reply" if k else "form",
                                                    at=T0 + 30 + k, disclosure_text="Texts? Reply STOP to cancel."),
                                 now=T0 + 30 + k)  # fmt: skip
    got = store.audience_rows("acme", [rest[2].id, rest[1].id, rest[0].id, rest[0].id, first[0].id, 10**9])
    assert [(a.id, a.phone) for a in got] == [(rest[0].id, rest[0].phone)]
    assert store.audience_rows("beta", [rest[0].id]) == []


def check_consent_ledger(store: Store) -> None:
    text = "Yes, text me offers. Msg & data rates may apply. Reply STOP to cancel."
    ev = Evidence(ip="203.0.113.9", user_agent="UA", page_url="https://shop.example/", form_id="f1")
    e1, state = store.record_consent("acme", NewConsent(phone=A, action="opt_in", source="form", at=T0,
                                     disclosure_text=text, disclosure_version="v3", evidence=ev), now=T0)  # fmt: skip
    assert state == "pending" and e1.disclosure_sha256 == disclosure_sha256(text) and e1.evidence == ev
    sid = e1.subscriber_id
    assert store.subscriber("acme", sid).consent == "pending"  # type: ignore[union-attr]
    # A form opt-in without its disclosure text is refused, and nothing is stored.
    err = _raises(InvalidInput, lambda: store.record_consent("acme", NewConsent(phone=B, action="opt_in", source="popup",
                                                                                at=T0), now=T0))  # fmt: skip
    assert err.field == "disclosure_text" and store.subscriber_by_phone("acme", B) is None  # type: ignore[attr-defined]
    _, state = store.record_consent("acme", NewConsent(phone=A, action="confirm", source="reply", at=T0 + 60,
                                    evidence=Evidence(mo_id="mo-1")), now=T0 + 60)  # fmt: skip
    assert state == "confirmed" and store.sync_pending("acme") == []
    _, state = store.record_consent("acme", NewConsent(phone=A, action="opt_out", source="reply", at=T0 + 120), now=T0 + 120)
    assert state == "revoked"
    [item] = store.sync_pending("acme")
    assert (item.phone, item.action) == (A, "suppress")
    # After an opt-out, a confirmation alone is out of order: refused, the ledger unchanged.
    err = _raises(Conflict, lambda: store.record_consent("acme", NewConsent(phone=A, action="confirm", source="reply",
                                                                            at=T0 + 180), now=T0 + 180))  # fmt: skip
    assert err.code == "consent_out_of_order" and len(store.ledger("acme", sid)) == 3  # type: ignore[attr-defined]
    store.record_consent("acme", NewConsent(phone=A, action="re_opt_in", source="keyword", at=T0 + 200,
                                            evidence=Evidence(keyword="JOIN", mo_id="mo-2")), now=T0 + 200)  # fmt: skip
    _, state = store.record_consent("acme", NewConsent(phone=A, action="confirm", source="reply", at=T0 + 260), now=T0 + 260)
    assert state == "confirmed"
    [item] = store.sync_pending("acme")  # the newest wish for the number replaces the older one
    assert item.action == "unsuppress"
    store.sync_done(item)
    assert store.sync_pending("acme") == []
    ledger = store.ledger("acme", sid)
    assert [e.action for e in ledger] == ["opt_in", "confirm", "opt_out", "re_opt_in", "confirm"]
    assert [e.at for e in ledger] == sorted(e.at for e in ledger)
    assert store.ledger("beta", sid) == []
    # A STOP the gateway heard is recorded without echoing it back to the gateway.
    store.record_consent("acme", NewConsent(phone=B, action="opt_out", source="gateway", at=T0), now=T0)
    assert store.sync_pending("acme") == []
    assert store.subscriber_by_phone("acme", B).consent == "revoked"  # type: ignore[union-attr]
    # With an event id (an inbound message's), the same action is recorded once.
    n = len(store.ledger("acme", sid))
    first, _ = store.record_consent("acme", NewConsent(phone=A, action="opt_out", source="reply", at=T0 + 300),
                                    now=T0 + 300, event_id="mo:7")  # fmt: skip
    again, state = store.record_consent("acme", NewConsent(phone=A, action="opt_out", source="reply", at=T0 + 300),
                                        now=T0 + 300, event_id="mo:7")  # fmt: skip
    assert first is not None and again is None and state == "revoked" and len(store.ledger("acme", sid)) == n + 1
    assert store.cursor("acme", "inbound") == 0
    store.set_cursor("acme", "inbound", 9)
    store.set_cursor("acme", "inbound", 4)  # never backwards
    assert store.cursor("acme", "inbound") == 9 and store.cursor("beta", "inbound") == 0


def _order(eid: str, at: float, order_id: str = "o1", total: int = 5000, status: str = "paid", **kw: object) -> OrderEvent:
    return OrderEvent(id=eid, at=at, order_id=order_id, phone=A, total=total, currency="EUR", payment_status=status,  # type: ignore[arg-type]
                      **kw)  # fmt: skip


def check_events_idempotent_and_aggregates(store: Store) -> None:
    e = _order("e1", T0, items=(Item(product="Tee", category="shirts", price=2500, quantity=2),))
    first = store.apply_event("acme", e, phone=A, now=T0)
    assert first.outcome == "applied" and "subscriber_stats.orders_count" in first.changed
    assert store.apply_event("acme", e, phone=A, now=T0).outcome == "duplicate"
    store.apply_event("acme", _order("e2", T0 + DAY, "o2", 12000), phone=A, now=T0 + DAY)
    store.apply_event("acme", _order("e3", T0 + 2 * DAY, "o3", 999, "refunded"), phone=A, now=T0 + 2 * DAY)
    st = store.stats("acme", first.subscriber_id)  # type: ignore[arg-type]
    assert (st.orders_count, st.total_spent, st.avg_order_value) == (2, 17000, 8500)
    assert (st.first_order_at, st.last_order_at, st.last_order_payment_status) == (T0, T0 + DAY, "refunded")
    assert st.rfm_r == 5 and st.rfm_f == 2 and st.engagement == 5
    # The order's newer update (paid -> refunded) applies; an older one arriving late does not.
    store.apply_event("acme", _order("e4", T0 + 3 * DAY, "o2", 12000, "refunded"), phone=A, now=T0 + 3 * DAY)
    late = store.apply_event("acme", _order("e5", T0 + DAY + 1, "o2", 12000, "paid"), phone=A, now=T0 + 3 * DAY)
    assert late.outcome == "stale"
    st = store.stats("acme", first.subscriber_id)  # type: ignore[arg-type]
    assert (st.orders_count, st.total_spent) == (1, 5000)
    assert store.stats("beta", first.subscriber_id).orders_count == 0  # type: ignore[arg-type]
    view = store.view("acme", first.subscriber_id)  # type: ignore[arg-type]
    assert view is not None and [o.order_id for o in view.orders] == ["o1", "o2", "o3"]
    assert view.orders[0].items[0].category == "shirts" and view.orders[0].items[0].quantity == 2
    assert store.view("beta", first.subscriber_id) is None  # type: ignore[arg-type]


def check_events_out_of_order(store: Store) -> None:
    """Every arrival order of the same events leaves the same state."""
    events = [
        _order("a", T0, "o1", 4000, "pending", checkout_id="c1"),
        _order("b", T0 + 50, "o1", 4000, "paid"),
        FulfillmentEvent(id="c", at=T0 + 100, order_id="o1", status="shipped", tracking_url="https://t/1"),
        FulfillmentEvent(id="d", at=T0 + 200, order_id="o1", status="delivered"),
        CheckoutEvent(id="e", at=T0 - 100, checkout_id="c1", phone=A, url="https://shop/c1", value=4000),
        ActivityEvent(id="f", at=T0 + 300, phone=A, kind="clicked"),
        ActivityEvent(id="g", at=T0 + 10, phone=A, kind="clicked"),
    ]
    results = set()
    for n, perm in enumerate(itertools.islice(itertools.permutations(events), 0, 5040, 97)):
        tenant = f"shop{n}"
        for ev in perm:
            store.apply_event(tenant, ev, phone=getattr(ev, "phone", None), now=T0 + 1000)
        sub = store.subscriber_by_phone(tenant, A)
        assert sub is not None
        view = store.view(tenant, sub.id)
        assert view is not None
        o, c = view.orders[0], view.checkouts[0]
        results.add((o.payment_status, o.fulfillment_status, c.url, c.completed_at, view.stats.last_click_at,
                     view.stats.total_spent, view.stats.last_abandoned_checkout_at))  # fmt: skip
    assert results == {("paid", "delivered", "https://shop/c1", T0, T0 + 300, 4000, None)}, results


def check_checkouts(store: Store) -> None:
    grant = ConsentGrant(accepted=True, disclosure_text="Text me", disclosure_version="c1",
                         evidence=Evidence(checkout_id="k1"))  # fmt: skip
    r = store.apply_event("acme", CheckoutEvent(id="s1", at=T0, checkout_id="k1", phone=A, value=15000, consent=grant),
                          phone=A, now=T0)  # fmt: skip
    assert r.consent is not None and r.consent.source == "checkout" and r.consent.evidence.checkout_id == "k1"
    sid = r.subscriber_id
    assert store.subscriber("acme", sid).consent == "pending"  # type: ignore[arg-type, union-attr]
    store.apply_event("acme", CheckoutEvent(id="s2", at=T0 + 10, checkout_id="k2", phone=A, value=100), phone=A, now=T0)
    assert store.abandon_checkouts("acme", after_s=3600, now=T0 + 3599) == []
    assert store.abandon_checkouts("acme", after_s=3600, now=T0 + 3605) == [sid]
    assert store.stats("acme", sid).last_abandoned_checkout_at == T0 + 3600  # type: ignore[arg-type]
    assert store.abandon_checkouts("acme", after_s=3600, now=T0 + 9000) == [sid]  # k2 now too
    assert store.stats("acme", sid).last_abandoned_checkout_at == T0 + 3610  # type: ignore[arg-type]
    # Recovered: an order completing k2, then k1 completed: nothing abandoned is left.
    store.apply_event("acme", _order("o", T0 + 9100, "o9", 100, checkout_id="k2"), phone=A, now=T0 + 9100)
    assert store.stats("acme", sid).last_abandoned_checkout_at == T0 + 3600  # type: ignore[arg-type]
    store.apply_event("acme", CheckoutEvent(id="s3", at=T0 + 9200, checkout_id="k1", phone=A, status="completed"),
                      phone=A, now=T0 + 9200)  # fmt: skip
    assert store.stats("acme", sid).last_abandoned_checkout_at is None  # type: ignore[arg-type]
    # An explicit abandoned event counts as well.
    store.apply_event("acme", CheckoutEvent(id="s4", at=T0 + 9300, checkout_id="k3", phone=A, status="abandoned"),
                      phone=A, now=T0 + 9300)  # fmt: skip
    assert store.stats("acme", sid).last_abandoned_checkout_at == T0 + 9300  # type: ignore[arg-type]


def check_checkout_of_another_phone(store: Store) -> None:
    """A checkout abandoned under one phone and paid or abandoned under another (the shopper switched
    numbers): the checkout stays its first subscriber's, and their ``last_abandoned_checkout_at``
    follows it at once, named in ``Applied.others`` so their segments are re-evaluated; the same
    whether the events come one by one or in one batch, and whether the order is new or an update."""
    def owner_abandoned(tenant: str) -> float | None:
        sub = store.subscriber_by_phone(tenant, A)
        assert sub is not None
        return store.stats(tenant, sub.id).last_abandoned_checkout_at

    for tenant, batched in (("sw1", False), ("sw2", True)):
        def send(*evs: object, now: float = T0 + 100) -> list[object]:
            pairs = [(e, getattr(e, "phone")) for e in evs]
            if batched:
                return store.apply_events(tenant, pairs, now=now)  # type: ignore[arg-type]
            return [store.apply_event(tenant, e, phone=p, now=now) for e, p in pairs]  # type: ignore[arg-type]

        send(CheckoutEvent(id="k1", at=T0, checkout_id="sk1", phone=A, status="abandoned"))
        owner = store.subscriber_by_phone(tenant, A)
        assert owner is not None and owner_abandoned(tenant) == T0
        paid = send(OrderEvent(id="o1", at=T0 + 5, order_id="so1", phone=B, total=900, currency="EUR",
                               payment_status="paid", checkout_id="sk1"))[0]  # fmt: skip
        assert paid.outcome == "applied" and paid.others == (owner.id,), paid  # type: ignore[attr-defined]
        assert owner_abandoned(tenant) is None
        payer = store.subscriber_by_phone(tenant, B)
        assert payer is not None and store.stats(tenant, payer.id).last_abandoned_checkout_at is None
        # abandoned again under B's phone: the checkout is A's, A's aggregate moves; completed stays final
        send(CheckoutEvent(id="k2", at=T0 + 9, checkout_id="sk2", phone=A, status="started"),
             CheckoutEvent(id="k3", at=T0 + 20, checkout_id="sk2", phone=B, status="abandoned"))
        assert owner_abandoned(tenant) == T0 + 20
        done = send(CheckoutEvent(id="k4", at=T0 + 30, checkout_id="sk2", phone=B, status="completed"))[0]
        assert done.others == (owner.id,) and owner_abandoned(tenant) is None  # type: ignore[attr-defined]
        # an update of a stored order that names A's abandoned checkout late
        send(CheckoutEvent(id="k5", at=T0 + 40, checkout_id="sk3", phone=A, status="abandoned"),
             OrderEvent(id="o2", at=T0 + 41, order_id="so2", phone=B, total=1, currency="EUR", payment_status="paid"))
        assert owner_abandoned(tenant) == T0 + 40
        late = send(OrderEvent(id="o3", at=T0 + 45, order_id="so2", phone=B, total=1, currency="EUR",
                               payment_status="paid", checkout_id="sk3"))[0]  # fmt: skip
        assert late.others == (owner.id,) and owner_abandoned(tenant) is None  # type: ignore[attr-defined]


def check_checkout_ends_reach_flows(store: Store) -> None:
    """Every end of a checkout reaches the flows of the checkout's *own* subscriber (its first
    phone), once: an order naming it under another phone, a completed checkout event with no order,
    either after the other, re-sent, or updated; a paid checkout reported abandoned later starts no
    flow; an abandonment reported under another phone goes to the owner too (so the run it starts
    hears the end). The same one by one and in one batch (both engines' batch paths)."""
    for tenant, batched in (("ce1", False), ("ce2", True)):
        store.put_flow_version(tenant, "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)  # the shop has a flow

        def send(*evs: object) -> None:
            pairs = [(e, getattr(e, "phone")) for e in evs]
            if batched:
                store.apply_events(tenant, pairs, now=T0 + 100)  # type: ignore[arg-type]
            else:
                for e, p in pairs:
                    store.apply_event(tenant, e, phone=p, now=T0 + 100)  # type: ignore[arg-type]

        def heard() -> list[tuple[str, str]]:
            phone = {}
            for ph in (A, B):
                sub = store.subscriber_by_phone(tenant, ph)
                if sub is not None:
                    phone[sub.id] = "A" if ph == A else "B"
            with store.flow_tx(tenant) as ftx:
                return [(phone[sid], ev.id) for _, sid, ev in ftx.take_inputs(1000)]

        def order(eid: str, oid: str, phone: str, at: float, cid: str | None) -> OrderEvent:
            return OrderEvent(id=eid, at=at, order_id=oid, phone=phone, total=900, currency="EUR", payment_status="pending",
                              checkout_id=cid)  # fmt: skip

        send(CheckoutEvent(id="k1", at=T0, checkout_id="c1", phone=A, status="abandoned", value=5000))
        assert heard() == [("A", "checkout_abandoned:c1")]
        # paid under B's phone: B's order, A's checkout ended (A's abandoned-cart run exits on it)
        send(order("o1", "so1", B, T0 + 5, "c1"))
        assert heard() == [("B", "order_placed:so1"), ("A", "checkout_completed:c1")]
        # the order updated, the shop's completed checkout, a late abandoned report: nothing ends twice
        send(order("o1b", "so1", B, T0 + 6, "c1"),
             CheckoutEvent(id="k1b", at=T0 + 7, checkout_id="c1", phone=A, status="completed"),
             CheckoutEvent(id="k1c", at=T0 + 8, checkout_id="c1", phone=A, status="abandoned"))
        assert heard() == [("B", "order_placed:so1")]
        # completed by a checkout event alone (no order), then its order: one end
        send(CheckoutEvent(id="k2", at=T0 + 10, checkout_id="c2", phone=A, status="abandoned"))
        send(CheckoutEvent(id="k2b", at=T0 + 11, checkout_id="c2", phone=A, status="completed"))
        send(order("o2", "so2", A, T0 + 12, "c2"))
        assert heard() == [("A", "checkout_abandoned:c2"), ("A", "checkout_completed:c2"), ("A", "order_placed:so2")]
        # the same in one call: started under A, abandoned under B, paid under B in one go
        send(CheckoutEvent(id="k3", at=T0 + 20, checkout_id="c3", phone=A),
             CheckoutEvent(id="k3b", at=T0 + 21, checkout_id="c3", phone=B, status="abandoned"),
             order("o3", "so3", B, T0 + 22, "c3"))
        assert heard() == [("A", "checkout_abandoned:c3"), ("B", "order_placed:so3"), ("A", "checkout_completed:c3")]
        # an order naming a checkout never seen: the checkout is the order's subscriber's
        send(order("o4", "so4", B, T0 + 30, "c4"))
        assert heard() == [("B", "order_placed:so4"), ("B", "checkout_completed:c4")]


def check_details_whatever_the_arrival_order(store: Store) -> None:
    """What an event carries beside its state, whatever the arrival order, one by one or in a batch:
    an order's ``created_at`` is the earliest the shop gave or event seen; a fulfilment status in an
    order event older than the order's state still counts if newer than the stored one; a checkout's
    url is the newest that was given."""
    order = lambda i, at, phone, **kw: OrderEvent(id=f"d{i}", at=T0 + at, order_id="do1", phone=phone, total=100,  # noqa: E731
                                                  currency="EUR", payment_status="paid", **kw)  # fmt: skip
    cart = lambda i, at, phone, **kw: CheckoutEvent(id=f"dk{i}", at=T0 + at, checkout_id="dk1", phone=phone, **kw)  # noqa: E731
    evs = [order(1, 10, A), order(2, 5, A, created_at=T0 + 3, fulfillment_status="unfulfilled"),
           cart(1, 20, A, url="https://s/1"), cart(2, 30, A), cart(3, 25, A, status="abandoned"),
           order(3, 40, B, created_at=T0 + 20), order(4, 41, A, created_at=T0 + 21)]
    seen = []
    for k, arrival in enumerate((evs, evs[::-1], [evs[3], evs[1], evs[4], evs[0], evs[6], evs[2], evs[5]])):
        for batched in (False, True):
            tenant = f"arrival{k}{int(batched)}"
            pairs = [(e, e.phone) for e in arrival]
            if batched:
                store.apply_events(tenant, pairs, now=T0 + 100)  # type: ignore[arg-type]
            else:
                for e, p in pairs:
                    store.apply_event(tenant, e, phone=p, now=T0 + 100)
            got = {}
            for phone in (A, B):
                sub = store.subscriber_by_phone(tenant, phone)
                assert sub is not None
                v = store.view(tenant, sub.id)
                assert v is not None
                got[phone] = ([(o.order_id, o.created_at, o.fulfillment_status) for o in v.orders],
                              [(c.checkout_id, c.url, c.started_at, c.abandoned_at) for c in v.checkouts],
                              v.stats.last_abandoned_checkout_at)  # fmt: skip
            seen.append(got)
    assert seen[0][A][0] == [("do1", T0 + 3, "unfulfilled")] and seen[0][B][0] == [], seen[0]  # the newest event's phone
    assert seen[0][A][1] == [("dk1", "https://s/1", T0 + 20, T0 + 25)] and seen[0][A][2] == T0 + 25, seen[0]
    assert all(s == seen[0] for s in seen), seen


def check_activities_and_customers(store: Store) -> None:
    r = store.apply_event("acme", CustomerEvent(id="c1", at=T0, profile=Profile(phone=A, first_name="Zoe", tags=("new",)),
                          consent=ConsentGrant(accepted=False)), phone=A, now=T0)  # fmt: skip
    sid = r.subscriber_id
    assert r.consent is None and store.subscriber("acme", sid).first_name == "Zoe"  # type: ignore[arg-type, union-attr]
    for i, kind in enumerate(["message_sent", "replied", "clicked", "delivered"]):
        store.apply_event("acme", ActivityEvent(id=f"a{i}", at=T0 + i, phone=A, kind=kind), phone=A, now=T0 + 10)  # type: ignore[arg-type]
    store.apply_event("acme", CustomEvent(id="q", at=T0 + 5, phone=A, name="quiz.answered", properties={"score": 2}),
                      phone=A, now=T0 + 10)  # fmt: skip
    st = store.stats("acme", sid)  # type: ignore[arg-type]
    assert (st.last_message_at, st.last_reply_at, st.last_click_at) == (T0, T0 + 1, T0 + 2)
    view = store.view("acme", sid)  # type: ignore[arg-type]
    assert view is not None and view.tags == {"new"}
    assert [(a.kind, a.properties) for a in view.activities][-1] == ("quiz.answered", {"score": 2})


def check_segments_storage(store: Store) -> None:
    ph = "?" if store.engine == "sqlite" else "%s"
    ids = [store.put_subscriber("acme", Profile(phone=p, country=c), phone=p, at=T0, now=T0)[0].id
           for p, c in ((A, "FR"), (B, "DE"), ("+33612345670", "FR"))]  # fmt: skip
    store.put_subscriber("beta", Profile(phone=A, country="FR"), phone=A, at=T0, now=T0)
    where, params = f"s.tenant = {ph} AND s.country = {ph}", ["acme", "FR"]
    assert store.count_where("acme", where, params) == 2
    assert store.ids_where("acme", where, params, after=0, limit=1) == [ids[0]]
    assert store.ids_where("acme", where, params, after=ids[0], limit=5) == [ids[2]]
    seg = store.put_segment("acme", "French", {"all": []}, now=T0)
    assert store.segment("acme", seg.id) == seg and store.segment("beta", seg.id) is None
    assert store.set_member("acme", seg.id, ids[0], True, now=T0) is True
    assert store.set_member("acme", seg.id, ids[0], True, now=T0) is False
    store.set_member("acme", seg.id, ids[2], True, now=T0)
    assert store.members("acme", seg.id, after=0, limit=10) == [ids[0], ids[2]]
    assert store.set_member("acme", seg.id, ids[0], False, now=T0) is True
    assert store.members("acme", seg.id, after=0, limit=10) == [ids[2]]
    upd = store.put_segment("acme", "FR", {"any": []}, now=T0 + 1, segment_id=seg.id)
    assert upd.name == "FR" and upd.created_at == T0 and store.members("acme", seg.id, after=0, limit=10) == []
    _raises(NotFound, lambda: store.put_segment("beta", "x", {}, now=T0, segment_id=seg.id))
    assert [s.id for s in store.segments("acme")] == [seg.id] and store.segments("beta") == []
    assert store.delete_segment("beta", seg.id) is False and store.delete_segment("acme", seg.id) is True


def check_import(store: Store) -> None:
    from campaigns.core.imports import parse_csv

    store.record_consent("acme", NewConsent(phone="+33612345603", action="opt_out", source="reply", at=T0), now=T0)
    text = ("phone,first_name,tags,consent,consent_at,disclosure_text,ip\n"
            "+33612345601,Ana,vip;club,confirmed,2025-01-02T03:04:05Z,Join us,198.51.100.1\n"
            "+33612345602,Bo,,confirmed,,,\n"  # claimed without proof: not marketable
            "+33612345603,Cy,,confirmed,1700000000,Join us,\n")  # opted out earlier: never re-subscribed
    res = store.import_rows("acme", parse_csv(text, file_name="shop.csv"), now=T0)
    assert (res.rows, res.created, res.consented, res.unproven, res.skipped_revoked) == (3, 2, 1, 1, 1)
    a, b, c = (store.subscriber_by_phone("acme", f"+3361234560{i}") for i in (1, 2, 3))
    assert a is not None and b is not None and c is not None
    assert (a.consent, b.consent, c.consent) == ("confirmed", "none", "revoked")
    assert store.tags("acme", a.id) == {"vip", "club"}
    ledger = store.ledger("acme", a.id)
    assert [(e.action, e.source, e.evidence.import_file, e.evidence.ip) for e in ledger] == [
        ("opt_in", "import", "shop.csv", "198.51.100.1"), ("confirm", "import", "shop.csv", "198.51.100.1")]
    assert ledger[0].at == 1735787045.0 and ledger[0].disclosure_text == "Join us"
    # Importing the same file again changes nothing in the ledger.
    store.import_rows("acme", parse_csv(text, file_name="shop.csv"), now=T0 + 1)
    assert len(store.ledger("acme", a.id)) == 2


def check_campaigns(store: Store) -> None:
    c = store.put_campaign("acme", "Spring", {"template": "Hi"}, now=T0)
    assert c.status == "draft" and c.definition == {"template": "Hi"} and c.launched_at is None
    assert store.campaign("beta", c.id) is None  # tenants are isolated
    _raises(NotFound, lambda: store.set_campaign_status("beta", c.id, "launching", now=T0))
    c = store.set_campaign_status("acme", c.id, "launching", now=T0 + 1)
    assert c.status == "launching" and c.launched_at == T0 + 1
    assert store.set_campaign_status("acme", c.id, "launching", now=T0 + 2).launched_at == T0 + 1
    _raises(Conflict, lambda: store.set_campaign_status("acme", c.id, "draft", now=T0 + 2))
    recs = [PlannedRecipient(subscriber_id=10 + i, phone=f"+3361234501{i}", variant="a" if i % 2 else "b",
                             send_at=T0 + 100 * (i // 2), tz="Europe/Paris", text=f"hello {i}", batch=i // 2,
                             idx=i % 2) for i in range(5)]  # fmt: skip
    links = [LinkRow(code=f"code{i}", tenant="acme", campaign_id=c.id, subscriber_id=10 + i, target="https://s.io/p",
                     created_at=T0) for i in range(5)]  # fmt: skip
    assert store.freeze_audience("acme", c.id, recs, links, now=T0)
    # A relaunch keeps the first frozen audience: nothing is written twice.
    assert not store.freeze_audience("acme", c.id, recs[:1], [], now=T0 + 5)
    batches = store.batches("acme", c.id)
    assert [(b.batch, b.size, b.send_at, b.job_id) for b in batches] == [(0, 2, T0, None), (1, 2, T0 + 100, None),
                                                                          (2, 1, T0 + 200, None)]  # fmt: skip
    assert [r.text for r in store.batch_recipients("acme", c.id, 1)] == ["hello 2", "hello 3"]
    assert store.batch_lines("acme", c.id, 1) == [(r.phone, r.text, r.tz) for r in store.batch_recipients("acme", c.id, 1)]
    assert store.batch_lines("beta", c.id, 1) == [] and store.batch_lines("acme", c.id, 9) == []
    assert {r.state for r in store.campaign_recipients("acme", c.id)} == {"planned"}
    store.batch_submitted("acme", c.id, 1, job_id="job-1", accepted=1, rejected=[1], now=T0 + 3)
    assert [r.state for r in store.batch_recipients("acme", c.id, 1)] == ["submitted", "rejected"]
    # Submitted is the batch's job id, read with every row (not written per recipient).
    assert [(r.subscriber_id, r.state) for r in store.campaign_recipients("acme", c.id)] == [
        (10, "planned"), (11, "planned"), (12, "submitted"), (13, "rejected"), (14, "planned")]
    assert sum(g.sent for g in store.report_facts("acme", Scope(campaign=c.id)).groups) == 1
    assert store.batches("acme", c.id)[1].job_id == "job-1"
    # States from the gateway: by job and slot, forward only; unknown jobs/slots are None.
    r = store.recipient_state("acme", "job-1", 0, state="delivered", message_id="m-9", at=T0 + 50)
    assert r is not None and r.subscriber_id == 12 and r.state == "delivered" and r.message_id == "m-9"
    r = store.recipient_state("acme", "job-1", 0, state="sent", message_id=None, at=T0 + 60)
    assert r is not None and r.state == "delivered" and r.state_at == T0 + 50
    assert store.recipient_state("acme", "job-1", 7, state="sent", message_id=None, at=T0) is None
    assert store.recipient_state("beta", "job-1", 0, state="sent", message_id=None, at=T0) is None
    assert len(store.campaign_recipients("acme", c.id, after=11, limit=10)) == 3
    # A link reads its recipient's number and delivery time with it (the redirect's one read).
    got = store.link("code2")
    assert got is not None and (got.phone, got.delivered_at) == ("+33612345012", T0 + 50)
    got = store.link("code3")
    assert got is not None and (got.phone, got.delivered_at) == ("+33612345013", None)
    # Smart sending reads the frozen sends.
    assert store.last_marketing_at("acme", [10, 12, 99]) == {10: T0, 12: T0 + 100}
    # An empty audience is frozen as well.
    e = store.put_campaign("acme", "Empty", {}, now=T0)
    assert store.freeze_audience("acme", e.id, [], [], now=T0) and not store.freeze_audience("acme", e.id, [], [], now=T0)
    assert store.batches("acme", e.id) == []


def check_held_and_outcomes(store: Store) -> None:
    c = store.put_campaign("acme", "AB", {}, now=T0)
    held = [PlannedRecipient(subscriber_id=s, phone=f"+3361234502{s}", variant=None, send_at=T0, tz="UTC", text="",
                             batch=-1, idx=s) for s in (1, 2)]  # fmt: skip
    test = [PlannedRecipient(subscriber_id=3, phone="+33612345023", variant="a", send_at=T0, tz="UTC", text="A",
                             batch=0, idx=0)]  # fmt: skip
    assert store.freeze_audience("acme", c.id, held + test, [], now=T0)
    assert [b.batch for b in store.batches("acme", c.id)] == [0]
    released = [PlannedRecipient(subscriber_id=s, phone="", variant="a", send_at=T0 + 10, tz="UTC", text="won",
                                 batch=1, idx=i) for i, s in enumerate((1, 2))]  # fmt: skip
    link = LinkRow(code="HeLd01", tenant="acme", campaign_id=c.id, subscriber_id=1, target="https://x.io", created_at=T0)
    assert store.release_held("acme", c.id, released, [link]) == 2
    assert store.release_held("acme", c.id, released, [link]) == 0  # released once
    assert [(b.batch, b.size) for b in store.batches("acme", c.id)] == [(0, 1), (1, 2)]
    assert [r.text for r in store.batch_recipients("acme", c.id, 1)] == ["won", "won"]
    assert store.batch_recipients("acme", c.id, -1) == [] and store.link_exists("HeLd01")
    # Outcomes: the recipients' orders and opt-outs since the send, not before, not other people's.
    for phone, sid_at in ((A, T0 + 5), (B, T0 - 5)):
        store.apply_event("acme", OrderEvent(id=f"o-{phone}", at=sid_at, order_id=f"o-{phone}", phone=phone, total=1500,
                                             currency="EUR", payment_status="paid"), phone=phone, now=T0 + 20)  # fmt: skip
    a = store.subscriber_by_phone("acme", A)
    assert a is not None
    c2 = store.put_campaign("acme", "Out", {}, now=T0)
    store.freeze_audience("acme", c2.id, [PlannedRecipient(subscriber_id=a.id, phone=A, variant=None, send_at=T0,
                                                            tz="UTC", text="x", batch=0, idx=0)], [], now=T0)  # fmt: skip
    store.record_consent("acme", NewConsent(phone=A, action="opt_in", source="api", at=T0 + 1), now=T0 + 1)
    store.record_consent("acme", NewConsent(phone=A, action="opt_out", source="api", at=T0 + 30), now=T0 + 30)
    out = store.campaign_outcomes("acme", c2.id, since=T0)
    assert out.orders == [(f"o-{A}", a.id, T0 + 5, 1500, None)] and out.opt_outs == [(a.id, T0 + 30)]
    assert store.campaign_outcomes("acme", c2.id, since=T0 + 6).orders == []


def check_links_and_clicks(store: Store) -> None:
    c = store.put_campaign("acme", "Links", {}, now=T0)
    link = LinkRow(code="Ab3dE9", tenant="acme", campaign_id=c.id, subscriber_id=5, target="https://s.io/x?a=1",
                   created_at=T0)  # fmt: skip
    store.freeze_audience("acme", c.id, [], [link], now=T0)
    assert store.link("Ab3dE9") == link and store.link("ab3dE9") is None  # codes are case-sensitive
    assert store.link_exists("Ab3dE9") and not store.link_exists("nope")
    assert store.existing_links(["nope", "Ab3dE9", "ab3dE9"] + [f"x{i}" for i in range(600)]) == {"Ab3dE9"}
    assert not store.record_click("Ab3dE9", at=T0 + 1, user_agent="Slackbot", verdict="bot")
    assert store.record_click("Ab3dE9", at=T0 + 60, user_agent="Mozilla/5.0", verdict="click")
    assert not store.record_click("Ab3dE9", at=T0 + 70, user_agent="Mozilla/5.0", verdict="click")
    counts = store.click_counts("acme", c.id)
    assert (counts.unique, counts.total, counts.ignored) == (1, 2, 1)
    assert store.human_clicks("acme", c.id) == [(5, T0 + 60), (5, T0 + 70)]
    assert store.click_counts("beta", c.id).total == 0
    # A batch (the redirect's buffer): a code's first human click is unique, whatever the order the
    # batch holds them in; one already stored makes none of the batch unique; bots never are.
    link2 = LinkRow(code="Zz9yX8", tenant="acme", campaign_id=c.id, subscriber_id=6, target="https://s.io/y",
                    created_at=T0)  # fmt: skip
    store.freeze_audience("acme", c.id + 1000, [], [link2], now=T0)
    batch = [ClickIn(code="Zz9yX8", at=T0 + 90, user_agent="M", verdict="click"),
             ClickIn(code="Zz9yX8", at=T0 + 80, user_agent="M", verdict="click"),
             ClickIn(code="Zz9yX8", at=T0 + 70, user_agent="bot", verdict="bot"),
             ClickIn(code="Ab3dE9", at=T0 + 95, user_agent="M", verdict="click")]  # fmt: skip
    assert store.record_clicks(batch) == 1 and store.record_clicks([]) == 0
    assert store.human_clicks("acme", c.id) == [(5, T0 + 60), (5, T0 + 70), (6, T0 + 80), (6, T0 + 90), (5, T0 + 95)]
    assert (store.click_counts("acme", c.id).unique, store.click_counts("acme", c.id).ignored) == (2, 2)
    assert store.link_nowait("Zz9yX8") in ((True, link2), (False, None))  # SQLite reads at once; others say "use link()"
    assert store.link_nowait("nope") in ((True, None), (False, None))
    # The redirect's reader (a connection of its own): the same rows as link(), many codes at once.
    reader = store.open_link_reader()
    try:
        many = [f"q{i}" for i in range(700)] + ["Zz9yX8", "Ab3dE9"]
        assert reader.read(many) == {"Zz9yX8": store.link("Zz9yX8"), "Ab3dE9": store.link("Ab3dE9")}
        assert reader.read(["Zz9yX8"]) == {"Zz9yX8": link2} and reader.read(["nope"]) == {}
    finally:
        reader.close()
    # The redirect's flush: hits and their clicked activities in one transaction.
    act = ActivityEvent(id="click:Zz9yX8:1", at=T0 + 99, phone="+447911100999", kind="clicked", properties={"code": "Zz9yX8"})
    stored = store.click_counts("acme", c.id).total
    assert store.record_hits([ClickIn(code="Zz9yX8", at=T0 + 100, user_agent="M", verdict="click")],
                             {"acme": [(act, act.phone)]}, now=T0 + 100) == 0  # fmt: skip
    assert store.click_counts("acme", c.id).total == stored + 1
    assert store.record_hits([], {"acme": [(act, act.phone)]}, now=T0 + 100) == 0  # the same activity: a duplicate
    sub = store.subscriber_by_phone("acme", "+447911100999")
    assert sub is not None and store.stats("acme", sub.id).last_click_at == T0 + 99
    # The redirect's flush derived from the hits' links: the click, its activity, the aggregates.
    hit = HitIn(code="Zz9yX8", at=T0 + 200, user_agent="M", verdict="click", tenant="acme", campaign_id=c.id,
                subscriber_id=sub.id, phone=sub.phone, target="https://s.io/y", created_at=T0, expires_at=None)  # fmt: skip
    assert store.record_link_hits([hit, msgspec.structs.replace(hit, at=T0 + 150, verdict="bot")], now=T0 + 200) == 0
    assert store.click_counts("acme", c.id).total == stored + 2
    assert store.stats("acme", sub.id).last_click_at == T0 + 200 and store.record_link_hits([], now=T0) == 0


def check_discount_pools(store: Store) -> None:
    assert store.add_discount_codes("acme", "spring", ["B-2", "A-1", "A-1"]) == 2
    assert store.reserve_discount("acme", "spring", 1, 10, now=T0) == "A-1"
    assert store.reserve_discount("acme", "spring", 1, 10, now=T0 + 1) == "A-1"  # idempotent per recipient
    assert store.reserve_discount("acme", "spring", 1, 11, now=T0) == "B-2"
    assert store.reserve_discount("acme", "spring", 1, 12, now=T0) is None  # the pool is empty
    assert store.reserve_discount("beta", "spring", 1, 10, now=T0) is None  # pools are per tenant
    store.record_pattern_code("acme", "pattern", "SAVE-XYZ", 1, 13, now=T0)
    assert store.discount_code_taken("acme", "SAVE-XYZ") and not store.discount_code_taken("beta", "SAVE-XYZ")


def check_event_batches(store: Store) -> None:
    """``apply_events``: one transaction with the outcomes and the state of ``apply_event`` on each in
    turn: an id twice in a batch or seen before is a duplicate; a fulfilment before its order in the
    same batch, updates of a stored order, an older event after a newer one; aggregates included."""
    events = [
        _order("b1", T0, "p1", 4000, items=(Item(product="Tee", category="shirts", price=2000, quantity=2),)),
        FulfillmentEvent(id="b2", at=T0 + 50, order_id="p2", status="shipped"),
        _order("b3", T0 + 10, "p2", 6000, "pending"),
        _order("b1", T0, "p1", 4000),  # the same id again in the batch
        ActivityEvent(id="b4", at=T0 + 20, phone=B, kind="clicked"),
        ActivityEvent(id="b5", at=T0 + 5, phone=B, kind="clicked"),
        CustomEvent(id="b6", at=T0 + 6, phone=B, name="quiz.answered"),
    ]
    one = [store.apply_event("one", e, phone=getattr(e, "phone", None), now=T0 + 100) for e in events]
    many = store.apply_events("many", [(e, getattr(e, "phone", None)) for e in events], now=T0 + 100)
    assert [(r.outcome, r.changed) for r in many] == [(r.outcome, r.changed) for r in one]
    assert [r.outcome for r in many] == ["applied", "applied", "applied", "duplicate", "applied", "applied", "applied"]
    again = store.apply_events("many", [(events[0], A), (_order("b7", T0 + 1, "p2", 6000, "paid"), A)], now=T0 + 100)
    assert [r.outcome for r in again] == ["duplicate", "stale"]  # p2's newer state (T0 + 10) stays
    for tenant in ("one", "many"):
        if tenant == "one":
            store.apply_event("one", _order("b7", T0 + 1, "p2", 6000, "paid"), phone=A, now=T0 + 100)
        a = store.subscriber_by_phone(tenant, A)
        b = store.subscriber_by_phone(tenant, B)
        assert a is not None and b is not None
        va, vb = store.view(tenant, a.id), store.view(tenant, b.id)
        assert va is not None and vb is not None
        assert [(o.order_id, o.payment_status, o.fulfillment_status) for o in va.orders] == [("p1", "paid", None),
                                                                                             ("p2", "pending", "shipped")]
        assert (va.stats.orders_count, va.stats.total_spent, va.stats.last_order_payment_status) == (2, 10000, "pending")
        assert va.orders[0].items[0].quantity == 2
        assert vb.stats.last_click_at == T0 + 20 and [x.kind for x in vb.activities].count("clicked") == 2
    assert store.known_phones("many", [A, B, "+33699999999"]) == {A, B}
    assert store.known_phones("nobody", [A]) == set()
    assert (store.first_order_currency("many"), store.first_order_currency("nobody")) == ("EUR", None)
    # claim_currency: a store with orders answers its first order's (and keeps it); else the first claim wins
    assert (store.claim_currency("many", "USD"), store.claim_currency("many", None)) == ("EUR", "EUR")
    assert store.claim_currency("nobody", None) is None
    assert (store.claim_currency("nobody", "JPY"), store.claim_currency("nobody", "USD")) == ("JPY", "JPY")


def check_refresh_members(store: Store) -> None:
    """``refresh_members``: the stored membership of ``ids`` becomes what the plan's SQL selects
    (joiners since ``now``, leavers removed, others untouched); timers replaced for those ids."""
    from campaigns.core.segments import parse_segment
    from campaigns.store.base import MemberPlan
    from campaigns.store.segment_sql import compile_edges, compile_segment

    sids = [store.apply_event("acme", _order(f"r{i}", T0 + i, f"r{i}", 1000 * (i + 1)), phone=p, now=T0).subscriber_id
            for i, p in enumerate((A, B, "+33612345670"))]  # fmt: skip
    seg = parse_segment({"event": "order", "within_days": 1, "measure": "sum", "op": "gte", "value": 2000})
    row = store.put_segment("acme", "two", {"x": 1}, now=T0)
    store.set_member("acme", row.id, sids[0], True, now=T0 - 5)  # stale: must leave
    store.set_member("acme", row.id, sids[2], True, now=T0 - 5)  # stays, keeps its since
    ids = [sids[0], sids[1]] + [sids[2]]
    where, params = compile_segment(seg, store.engine, "acme", T0 + 10, only=ids)  # type: ignore[arg-type]
    edges = compile_edges(seg, store.engine, "acme", T0 + 10, ids)  # type: ignore[arg-type]
    plan = MemberPlan(segment_id=row.id, ids=ids, where=where, params=params, edges=edges)
    assert store.refresh_members("acme", [plan], now=T0 + 10) == 2
    assert store.members("acme", row.id, after=0, limit=10) == sorted([sids[1], sids[2]])
    assert dict(store.member_segments("acme", sids[2]))[row.id] == T0 - 5
    assert dict(store.member_segments("acme", sids[1]))[row.id] == T0 + 10
    assert store.refresh_members("acme", [plan], now=T0 + 20) == 0  # nothing left to change
    due = store.due_timers(T0 + DAY + 100)  # each order leaves the window a day after it was placed
    assert sorted(sub for t, seg_id, sub in due if t == "acme" and seg_id == row.id) == sorted(sids)
def check_flow_definitions(store: Store) -> None:
    """Versions are kept for ever, the head names the latest, tenants are isolated."""
    d = {"id": "f", "version": 1, "name": "F", "trigger": {"type": "custom", "name": "x"}, "entry": "e",
         "nodes": {"e": {"type": "end"}}}  # fmt: skip
    head = store.put_flow_version("acme", "f", "F", d, now=T0, new=True)
    assert (head.latest, head.enabled) == (1, False)
    _raises(Conflict, lambda: store.put_flow_version("acme", "f", "F", d, now=T0, new=True))
    _raises(NotFound, lambda: store.put_flow_version("beta", "f", "F", d, now=T0, new=False))
    head = store.put_flow_version("acme", "f", "F2", {**d, "name": "F2"}, now=T0 + 1, new=False)
    assert head.latest == 2 and head.name == "F2"
    assert store.flow_version("acme", "f", 1)["name"] == "F" and store.flow_version("acme", "f", 2)["version"] == 2
    assert store.flow_head("beta", "f") is None and store.flow_heads("beta") == []
    _raises(NotFound, lambda: store.set_flow_enabled("beta", "f", True, now=T0))
    assert store.set_flow_enabled("acme", "f", True, now=T0).enabled
    store.put_flow_template("acme", "t", "hello", now=T0)
    store.put_flow_template("acme", "t", "hi", now=T0)
    assert store.flow_templates("acme") == {"t": "hi"} and store.flow_templates("beta") == {}


def check_flow_runs_timers_and_outbox(store: Store) -> None:
    """Runs insert once by key; due timers come earliest first, at most ``limit``, only due ones, only
    the tenant's; inputs come in order and leave the queue with the transaction; a message key is
    recorded once."""
    from campaigns.core import flows as F
    from campaigns.store.flow_rows import FlowMessage

    store.put_flow_version("acme", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
    store.put_flow_version("beta", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
    ids = []
    with store.flow_tx("acme") as ftx:
        for i, due in enumerate([T0 + 30, T0 + 10, T0 + 20, None]):
            run = F.Run(id=f"f:{i}:e", flow_id="f", version=1, subscriber_id=i, started_at=T0, node="w", visit=1,
                        timer_due=due)  # fmt: skip
            ids.append(ftx.insert_run(run, T0))
        assert ftx.insert_run(F.Run(id="f:0:e", flow_id="f", version=1, subscriber_id=0, started_at=T0, node="w"), T0) is None
        assert ftx.first_time("e1") and not ftx.first_time("e1")
        ftx.queue(1, [F.ShopEvent(id="a", kind="custom", name="x"), F.OptOut(id="b")])
    with store.flow_tx("beta") as ftx:
        ftx.insert_run(F.Run(id="f:9:e", flow_id="f", version=1, subscriber_id=9, started_at=T0, node="w",
                             timer_due=T0), T0)  # fmt: skip
        assert ftx.first_time("e1")  # ids are per tenant
    with store.flow_tx("acme") as ftx:
        assert [r.timer_due for _, r in ftx.claim_due(T0 + 25, 10)] == [T0 + 10, T0 + 20]
        assert [r.timer_due for _, r in ftx.claim_due(T0 + 100, 1)] == [T0 + 10]
        # several workers: each claims the timers of its share of the subscribers (id % parts)
        assert [r.subscriber_id for _, r in ftx.claim_due(T0 + 100, 10, part=0, parts=2)] == [2, 0]
        assert [r.subscriber_id for _, r in ftx.claim_due(T0 + 100, 10, part=1, parts=2)] == [1]
        assert ftx.take_inputs(10, part=0, parts=2) == []
        assert [e.id for _, _, e in ftx.take_inputs(10)] == ["a", "b"]
    with store.flow_tx("acme") as ftx:
        assert ftx.take_inputs(10) == []
        _, run = ftx.claim_due(T0 + 100, 1)[0]
        ftx.save_run(ids[1], msgspec.structs.replace(run, node=None, timer_due=None, ended="completed"), T0 + 11)
        assert [r.timer_due for _, r in ftx.claim_due(T0 + 100, 10)] == [T0 + 20, T0 + 30]
        assert [e.started_at for e in ftx.entries("f", 1)] == [T0]
        m = FlowMessage(tenant="acme", key="flow-1-1", run_id=ids[0], flow_id="f", version=1, step="s", visit=1,
                        subscriber_id=0, kind="sms", category="marketing", recipient=A, sender="S", body="hi",
                        created_at=T0)  # fmt: skip
        assert ftx.add_message(m) and not ftx.add_message(m)
        ftx.add_message(msgspec.structs.replace(m, key="flow-1-2", subscriber_id=5))
        assert ftx.cancel_pending(5, "opted_out") == 1
        hook = msgspec.structs.replace(m, key="flow-1-9", kind="webhook", category="webhook", recipient="https://x.example/h",
                                       body="{}", created_at=T0 - 1)  # fmt: skip
        ftx.add_message(hook)
    # Webhook calls apart from sends; one whose receiver failed waits until its next_at.
    assert [x.key for x in store.pending_flow_messages()] == ["flow-1-9", "flow-1-1"]
    assert [x.key for x in store.pending_flow_messages(kind="sends")] == ["flow-1-1"]
    assert [x.key for x in store.pending_flow_messages(kind="webhooks", now=T0)] == ["flow-1-9"]
    store.flow_messages_later([("acme", "flow-1-9", T0 + 60, "HTTP 503")])
    assert store.pending_flow_messages(kind="webhooks", now=T0 + 59) == []
    assert [(x.key, x.detail) for x in store.pending_flow_messages(kind="webhooks", now=T0 + 60)] == [("flow-1-9", "HTTP 503")]
    store.flow_messages_done([("acme", "flow-1-9", "failed", None, "gave up")], now=T0 + 61)
    try:  # an exception inside the transaction stores nothing of it
        with store.flow_tx("acme") as ftx:
            ftx.add_message(msgspec.structs.replace(m, key="flow-1-3"))
            raise RuntimeError("crash")
    except RuntimeError:
        pass
    assert [x.key for x in store.pending_flow_messages()] == ["flow-1-1"]
    assert [x.key for x in store.pending_flow_messages(part=0, parts=3)] == ["flow-1-1"]  # subscriber 0
    assert store.pending_flow_messages(part=1, parts=3) == []
    assert [x.key for x in store.pending_flow_messages(tenant="acme")] == ["flow-1-1"]
    assert store.pending_flow_messages(tenant="beta") == [] == store.pending_flow_messages(tenant="beta", part=0, parts=3)
    store.flow_messages_done([("acme", "flow-1-1", "sent", "m1", None)], now=T0 + 2)
    assert store.pending_flow_messages() == [] and store.flow_messages("beta") == []
    assert {(x.key, x.state) for x in store.flow_messages("acme")} == {("flow-1-1", "sent"), ("flow-1-2", "skipped"),
                                                                       ("flow-1-9", "failed")}
    rows = store.flow_run_rows("acme", flow_id="f")
    assert [r.subscriber_id for r in rows] == [0, 1, 2, 3] and rows[1].state == "ended"
    assert store.flow_run_rows("beta", subscriber_id=0) == []


CHECKS: list[Callable[[Store], None]] = [check_subscribers, check_consent_ledger, check_events_idempotent_and_aggregates,
                                         check_events_out_of_order, check_checkouts, check_checkout_of_another_phone,
                                         check_checkout_ends_reach_flows, check_details_whatever_the_arrival_order,
                                         check_activities_and_customers,
                                         check_segments_storage, check_import, check_campaigns,
                                         check_held_and_outcomes, check_links_and_clicks, check_discount_pools,
                                         check_event_batches, check_refresh_members,
                                         check_flow_definitions, check_flow_runs_timers_and_outbox]  # fmt: skip

from campaigns.store.conformance_inbox import INBOX_CHECKS  # noqa: E402  (the inbox's checks, issue 19)

CHECKS += INBOX_CHECKS
