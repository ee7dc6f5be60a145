"""Batches (``apply_events``: bulk NDJSON, group commit) as a property: a batch leaves exactly the state,
and answers exactly the outcomes, that ``apply_event`` on each of its events in turn does, on both
engines, whatever the mix (new and updated orders, fulfilments before their orders, checkouts, clicks,
custom events, customers, ids repeated inside a batch and across batches)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.events import (ActivityEvent, CheckoutEvent, CustomerEvent, CustomEvent, FulfillmentEvent, Item,
                                   OrderEvent, Profile, ShopEvent)  # fmt: skip
from campaigns.store import Store

PHONES = ("+33612345678", "+33612345679", "+33612345670")
T0 = 1_760_000_000.0


@st.composite
def events(draw: st.DrawFn) -> list[ShopEvent]:
    n = draw(st.integers(1, 25))
    times = draw(st.lists(st.integers(0, 100_000) | st.integers(0, 3), min_size=n, max_size=n))  # some instants tie
    out: list[ShopEvent] = []
    for i, t in enumerate(times):
        at, phone = T0 + t, draw(st.sampled_from(PHONES))
        eid = f"e{draw(st.integers(0, n + 3))}" if draw(st.booleans()) else f"u{i}"  # some ids repeat
        kind = draw(st.sampled_from(["order", "order", "order", "fulfillment", "checkout", "click", "custom", "customer"]))
        oid, cid = draw(st.sampled_from(["o1", "o2", "o3", "o4", "o5"])), draw(st.sampled_from(["c1", "c2"]))
        if kind == "order":
            items = tuple(Item(product=f"p{k}", category=draw(st.sampled_from(["shoes", "hats", None])),
                               price=draw(st.integers(0, 9000)), quantity=draw(st.integers(1, 3)))
                          for k in range(draw(st.integers(0, 2))))  # fmt: skip
            out.append(OrderEvent(id=eid, at=at, order_id=oid, phone=phone, total=draw(st.integers(0, 50_000)),
                                  currency="EUR", payment_status=draw(st.sampled_from(["paid", "pending", "refunded"])),
                                  fulfillment_status=draw(st.none() | st.just("unfulfilled")), items=items,
                                  created_at=draw(st.none() | st.just(at - 500)),
                                  checkout_id=draw(st.none() | st.none() | st.just(cid))))  # fmt: skip
        elif kind == "fulfillment":
            out.append(FulfillmentEvent(id=eid, at=at, order_id=oid, status=draw(st.sampled_from(["shipped", "delivered"]))))
        elif kind == "checkout":
            out.append(CheckoutEvent(id=eid, at=at, checkout_id=cid, phone=phone, value=draw(st.integers(0, 9999)),
                                     status=draw(st.sampled_from(["started", "completed", "abandoned"]))))  # fmt: skip
        elif kind == "click":
            out.append(ActivityEvent(id=eid, at=at, phone=phone, kind=draw(st.sampled_from(["clicked", "replied", "delivered"]))))
        elif kind == "custom":
            out.append(CustomEvent(id=eid, at=at, phone=phone, name="quiz.answered", properties={"n": i}))
        else:
            out.append(CustomerEvent(id=eid, at=at, profile=Profile(phone=phone, first_name=f"N{i}", tags=(f"t{i % 2}",))))
    return out


def state(store: Store, tenant: str) -> dict[str, tuple]:
    out = {}
    for phone in PHONES:
        sub = store.subscriber_by_phone(tenant, phone)
        if sub is None:
            continue
        v = store.view(tenant, sub.id)
        assert v is not None
        out[phone] = (sub.first_name, sub.consent, v.tags, v.stats,
                      tuple((o.order_id, o.total, o.payment_status, o.fulfillment_status, o.created_at,
                             tuple(sorted((i.product, i.category, i.price, i.quantity) for i in o.items))) for o in v.orders),
                      tuple((c.checkout_id, c.value, c.url, c.started_at, c.completed_at, c.abandoned_at) for c in v.checkouts),
                      tuple(sorted((a.kind, a.at) for a in v.activities)))  # fmt: skip
    return out


_n = iter(range(10**9))


def ends(store: Store, tenant: str, results: list) -> list[tuple[str, str] | None]:
    """Each outcome's ``checkout_end``, its subscriber as a phone (ids differ between tenants)."""
    return [None if r.checkout_end is None else (r.checkout_end[0], store.subscriber(tenant, r.checkout_end[1]).phone)  # type: ignore[union-attr]
            for r in results]


def heard(store: Store, tenant: str) -> list[tuple[str, str]]:
    """The flow inputs queued, in order: (the subscriber's phone, the event id)."""
    with store.flow_tx(tenant) as ftx:
        taken = ftx.take_inputs(10_000)
    return [(store.subscriber(tenant, sid).phone, ev.id) for _, sid, ev in taken]  # type: ignore[union-attr]


def check_checkout_ends(store: Store, tenant: str, inputs: list[tuple[str, str]]) -> None:
    """Every completed checkout was heard ended once, by its own subscriber; an open one never; no
    checkout is heard abandoned after it was heard completed."""
    done: dict[str, str] = {}
    for phone in PHONES:
        sub = store.subscriber_by_phone(tenant, phone)
        v = store.view(tenant, sub.id) if sub is not None else None
        done |= {c.checkout_id: phone for c in (v.checkouts if v else ()) if c.completed_at is not None}
    completed = [(p, e.removeprefix("checkout_completed:")) for p, e in inputs if e.startswith("checkout_completed:")]
    assert sorted((c, p) for p, c in completed) == sorted(done.items())
    for cid in done:
        kinds = [e.split(":")[0] for _, e in inputs if e.endswith(f":{cid}") and e.startswith("checkout_")]
        assert "checkout_abandoned" not in kinds[kinds.index("checkout_completed"):], (cid, kinds)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(evs=events(), cuts=st.lists(st.integers(0, 30), max_size=3), flows=st.booleans())
def test_a_batch_is_the_same_as_its_events_one_by_one(store: Store, evs: list[ShopEvent], cuts: list[int],
                                                      flows: bool) -> None:  # fmt: skip
    """... and queues the same flow inputs in the same order (a checkout's end to its own subscriber)."""
    k = next(_n)
    one, many = f"one{k}", f"many{k}"
    now = T0 + 200_000
    if flows:
        for tenant in (one, many):
            store.put_flow_version(tenant, "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
    singles = [store.apply_event(one, e, phone=getattr(e, "phone", None) or getattr(getattr(e, "profile", None), "phone", None),
                                 now=now) for e in evs]  # fmt: skip
    pairs = [(e, getattr(e, "phone", None) or getattr(getattr(e, "profile", None), "phone", None)) for e in evs]
    bounds = sorted({0, len(pairs), *(c for c in cuts if c < len(pairs))})
    batched = []
    for a, b in zip(bounds, bounds[1:]):
        batched += store.apply_events(many, pairs[a:b], now=now)
    assert [(r.outcome, r.changed, len(r.others)) for r in batched] == [(r.outcome, r.changed, len(r.others)) for r in singles]
    assert [r.subscriber_id is None for r in batched] == [r.subscriber_id is None for r in singles]
    assert state(store, many) == state(store, one)
    assert ends(store, many, batched) == ends(store, one, singles)
    if flows:
        inputs = heard(store, one)
        assert heard(store, many) == inputs
        check_checkout_ends(store, one, inputs)


@st.composite
def orders_and_touches(draw: st.DrawFn) -> list[ShopEvent]:
    """New orders and activities over two years before ``now`` (every RFM and engagement band), for a
    few subscribers, each with its own id and time: what the set-based path (one grouped upsert of the
    aggregates per batch) takes."""
    n = draw(st.integers(1, 30))
    out: list[ShopEvent] = []
    for i in range(n):
        at = NOW_WIDE - draw(st.integers(0, 800)) * 86_400.0 - draw(st.floats(0, 86_399, allow_nan=False))
        phone = draw(st.sampled_from(PHONES))
        if draw(st.integers(0, 3)):
            out.append(OrderEvent(id=f"w{i}", at=at, order_id=f"wo{i}", phone=phone, total=draw(st.integers(0, 120_000)),
                                  currency="EUR", payment_status=draw(st.sampled_from(["paid", "paid", "pending", "refunded"])),
                                  created_at=draw(st.none() | st.just(at - 30)),
                                  items=(Item(product="p", category="shoes", price=100),)))  # fmt: skip
        else:
            out.append(ActivityEvent(id=f"w{i}", at=at, phone=phone,
                                     kind=draw(st.sampled_from(["clicked", "replied", "message_sent", "delivered"]))))  # fmt: skip
    return out


NOW_WIDE = T0 + 400 * 86_400.0


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(evs=orders_and_touches(), data=st.data())
def test_a_batch_in_any_order_with_resent_events_is_its_events_one_by_one(store: Store, evs: list[ShopEvent],
                                                                          data: st.DataObject) -> None:  # fmt: skip
    """The aggregates of a batch are computed in SQL from its rows (count, total, first/last, AOV, the
    latest order's status, RFM, engagement): the same figures as the events applied one by one in their
    own order, whatever order the batches bring them in, cut anywhere, with events sent again."""
    k = next(_n)
    one, many = f"wone{k}", f"wmany{k}"
    for e in evs:
        store.apply_event(one, e, phone=e.phone, now=NOW_WIDE)  # type: ignore[union-attr]
    resent = data.draw(st.lists(st.sampled_from(evs), max_size=8))
    shuffled = data.draw(st.permutations([*evs, *resent]))
    cuts = data.draw(st.lists(st.integers(0, len(shuffled)), max_size=3))
    bounds = sorted({0, len(shuffled), *cuts})
    applied = []
    for a, b in zip(bounds, bounds[1:]):
        applied += store.apply_events(many, [(e, e.phone) for e in shuffled[a:b]], now=NOW_WIDE)  # type: ignore[union-attr]
    assert sum(r.outcome == "applied" for r in applied) == len(evs)
    assert state(store, many) == state(store, one)


# ---- SQLite's aggregates grouped in Python: the same groups as the SQL that PostgreSQL runs ----------
_KINDS = ("order", "order", "order", "clicked", "message_sent", "replied")


@st.composite
def aggregate_rows(draw: st.DrawFn) -> list[tuple[int, str, int, str, float, str]]:
    """A batch's aggregate rows (``EventBatch._restat_many``'s): few subscribers, instants and order
    ids that tie, every payment status, activity rows between the orders."""
    out = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(_KINDS))
        at = T0 + draw(st.integers(0, 5)) * draw(st.sampled_from([1.0, 0.5, 86_400.25]))
        if kind == "order":
            out.append((draw(st.integers(1, 4)), kind, draw(st.integers(0, 50_000)),
                        draw(st.sampled_from(["paid", "pending", "refunded"])), at, draw(st.sampled_from(["o1", "o2", "O3", "é4"]))))  # fmt: skip
        else:
            out.append((draw(st.integers(1, 4)), kind, 0, "", at, ""))
    return out


@settings(max_examples=30, deadline=None)
@given(rows=aggregate_rows())
def test_the_aggregates_grouped_in_python_are_the_sql_grouping(rows: list[tuple[int, str, int, str, float, str]]) -> None:
    """``grouped_in_python`` (SQLite's batch binds its groups) against ``_grouped_sql`` (PostgreSQL's
    grouping, kept as SQL) run by SQLite over the same rows: counts and sums without refunds, first and
    last instants, the latest order (by instant, then id by code point) whatever its status, each
    activity kind's latest instant, None where a subscriber has none."""
    import sqlite3

    from campaigns.store.event_batch import _grouped_sql, _latest_in_batch, _rowset, grouped_in_python
    from campaigns.store.sql import Tx

    tx = Tx(sqlite3.connect(":memory:").cursor(), "?")
    table, params = _rowset(tx, _latest_in_batch(rows))
    in_sql = [tuple(r) for r in tx.rows(_grouped_sql(tx, table) + " ORDER BY b.sid", params)]
    assert grouped_in_python(rows) == in_sql
