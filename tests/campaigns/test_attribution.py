"""Attribution and analytics (campaigns/core/attribution.py): windows exactly at their edges, the rule
order click > view > discount code, an independent brute-force oracle on random histories, input
order not mattering, and the report's figures (rates, revenue per message, ROI, opt-out alert)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.attribution import (
    DAY,
    Clicked,
    Delivered,
    OptedOut,
    Ordered,
    Sent,
    Windows,
    attribute_orders,
    report,
)
from campaigns.errors import InvalidInput

H = 3600.0
T0 = 1_780_000_000.0


def one(events: list, **kw: object) -> tuple[str | None, str | None]:
    [a] = attribute_orders(events, **kw)  # type: ignore[arg-type]
    return a.message, a.via


def base() -> list:
    return [Sent(message="m1", subscriber=1, at=T0, campaign="c"), Delivered(message="m1", at=T0 + 5)]


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0.0, "click"), (5 * DAY - 0.001, "click"), (5 * DAY, None), (-0.001, "view")],
)
def test_click_window_is_half_open(offset: float, expected: str | None) -> None:
    click_at = T0 + 10 * H
    ev = [*base(), Clicked(message="m1", at=click_at), Ordered(order="o", subscriber=1, at=click_at + offset, total=100)]
    # -0.001: ordered just before the click, inside the view window of the delivery.
    assert one(ev)[1] == expected


@pytest.mark.parametrize(("offset", "expected"), [(0.0, "view"), (DAY - 0.001, "view"), (DAY, None), (-1.0, None)])
def test_view_window_is_half_open(offset: float, expected: str | None) -> None:
    ev = [*base(), Ordered(order="o", subscriber=1, at=T0 + 5 + offset, total=100)]
    assert one(ev)[1] == expected


def test_tenant_windows_apply() -> None:
    w = Windows(click=7 * DAY, view=12 * H)
    ev = [*base(), Clicked(message="m1", at=T0 + H), Ordered(order="o", subscriber=1, at=T0 + H + 6 * DAY, total=1)]
    assert one(ev) == (None, None)
    assert one(ev, windows=w) == ("m1", "click")
    ev2 = [*base(), Ordered(order="o", subscriber=1, at=T0 + 5 + 13 * H, total=1)]
    assert one(ev2) == ("m1", "view")
    assert one(ev2, windows=w) == (None, None)


def test_click_beats_a_later_delivery_and_the_last_click_wins() -> None:
    ev = [
        Sent(message="a", subscriber=1, at=T0), Delivered(message="a", at=T0 + 1), Clicked(message="a", at=T0 + H),
        Sent(message="b", subscriber=1, at=T0 + 2 * H), Delivered(message="b", at=T0 + 2 * H + 1),
        Ordered(order="o", subscriber=1, at=T0 + 3 * H, total=500),
    ]  # fmt: skip
    assert one(ev) == ("a", "click")
    ev.append(Clicked(message="b", at=T0 + 2.5 * H))
    assert one(ev) == ("b", "click")
    ev.append(Clicked(message="a", at=T0 + 2.7 * H))
    assert one(ev) == ("a", "click")


def test_discount_code_is_the_last_resort_and_only_after_the_send() -> None:
    ev = [
        Sent(message="m", subscriber=1, at=T0, discount_code="X7Q"),
        Ordered(order="o", subscriber=None, at=T0 + 30 * DAY, total=100, discount_code="X7Q"),
    ]
    assert one(ev) == ("m", "discount_code")
    early = [ev[0], Ordered(order="o", subscriber=2, at=T0 - 1, total=1, discount_code="X7Q")]
    assert one(early) == (None, None)


def test_events_of_other_subscribers_and_unknown_messages_never_attribute() -> None:
    ev = [
        Sent(message="m", subscriber=2, at=T0), Delivered(message="m", at=T0), Clicked(message="m", at=T0),
        Clicked(message="ghost", at=T0), Ordered(order="o", subscriber=1, at=T0 + 1, total=1),
    ]  # fmt: skip
    assert one(ev) == (None, None)


# ---- an independent oracle on random histories ------------------------------------------------


def oracle(events: list, w: Windows) -> dict[str, tuple[str | None, str | None]]:
    sent = {e.message: e for e in events if isinstance(e, Sent)}
    out = {}
    for o in (e for e in events if isinstance(e, Ordered)):
        best: dict[str, tuple] = {}
        for kind, cls, window in (("click", Clicked, w.click), ("view", Delivered, w.view)):
            cands = [
                (e.at, sent[e.message].at, e.message)
                for e in events
                if isinstance(e, cls) and e.message in sent and sent[e.message].subscriber == o.subscriber
                and e.at <= o.at < e.at + window
            ]  # fmt: skip
            if cands:
                best[kind] = max(cands)
        if "click" in best:
            out[o.order] = (best["click"][2], "click")
        elif "view" in best:
            out[o.order] = (best["view"][2], "view")
        else:
            coded = [s for s in sent.values() if o.discount_code and s.discount_code == o.discount_code and s.at <= o.at]
            out[o.order] = (coded[0].message, "discount_code") if coded else (None, None)
    return out


@st.composite
def histories(draw: st.DrawFn) -> list:
    n_msgs = draw(st.integers(1, 6))
    events: list = []
    t = st.integers(0, 10 * 24).map(lambda h: T0 + h * H)  # on the hour: edges are hit often
    for i in range(n_msgs):
        sub = draw(st.integers(1, 3))
        at = draw(t)
        events.append(Sent(message=f"m{i}", subscriber=sub, at=at, discount_code=f"D{i}" if draw(st.booleans()) else None))
        if draw(st.booleans()):
            events.append(Delivered(message=f"m{i}", at=at + draw(st.sampled_from([0, H, 24 * H]))))
        for _ in range(draw(st.integers(0, 2))):
            events.append(Clicked(message=f"m{i}", at=at + draw(st.integers(0, 8 * 24)) * H))
    for j in range(draw(st.integers(1, 4))):
        code = draw(st.sampled_from([None, *[f"D{i}" for i in range(n_msgs)]]))
        events.append(Ordered(order=f"o{j}", subscriber=draw(st.integers(1, 3)), at=draw(t), total=draw(st.integers(0, 10_000)), discount_code=code))
    for _ in range(draw(st.integers(0, 3))):
        events.append(OptedOut(subscriber=draw(st.integers(1, 3)), at=draw(t)))
    return events


@settings(max_examples=150, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_attribution_matches_the_oracle_in_any_input_order(events: list, rnd: random.Random) -> None:
    w = Windows(click=2 * DAY, view=DAY)
    expected = oracle(events, w)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    got = {a.order: (a.message, a.via) for a in attribute_orders(shuffled, w)}
    assert got == expected


@settings(max_examples=80, deadline=None)
@given(histories())
def test_report_conserves_orders_revenue_and_sends(events: list) -> None:
    r = report(events, by=("campaign", "hour"))
    attributed = [a for a in r.attributions if a.message is not None]
    totals = {e.order: e.total for e in events if isinstance(e, Ordered)}
    assert sum(m.conversions for m in r.rows) == len(attributed)
    assert sum(m.revenue for m in r.rows) == sum(totals[a.order] for a in attributed)
    assert sum(m.sent for m in r.rows) == len([e for e in events if isinstance(e, Sent)])
    for m in r.rows:
        assert m.unique_clicks <= m.sent and m.delivered <= m.sent and m.opt_outs <= m.sent
    assert sum(m.opt_outs for m in r.rows) <= len([e for e in events if isinstance(e, OptedOut)])


@settings(max_examples=80, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_replayed_events_change_no_figure(events: list, rnd: random.Random) -> None:
    """Webhooks are retried: every event delivered twice, in any order, gives the same report."""
    twice = events + [e for e in events if rnd.random() < 0.7]
    rnd.shuffle(twice)
    assert report(twice, by=("campaign", "variant")).rows == report(events, by=("campaign", "variant")).rows


# ---- the report's figures ---------------------------------------------------------------------


def test_report_figures_per_campaign_variant_and_opt_out_alert() -> None:
    ev: list = []
    for i in range(200):
        variant = "A" if i % 2 == 0 else "B"
        ev += [Sent(message=f"m{i}", subscriber=i, at=T0, campaign="spring", variant=variant, cost=8)]
        if i % 10:  # 180 delivered: 80 of A (even), 100 of B
            ev.append(Delivered(message=f"m{i}", at=T0 + 60))
    ev += [Clicked(message="m2", at=T0 + H), Clicked(message="m2", at=T0 + 2 * H), Clicked(message="m4", at=T0 + H)]
    ev += [Ordered(order="o1", subscriber=2, at=T0 + 3 * H, total=4_000)]
    ev += [Ordered(order="o2", subscriber=3, at=T0 + 3 * H, total=1_000)]  # view-through, variant B
    ev += [OptedOut(subscriber=5, at=T0 + 3 * DAY - 1), OptedOut(subscriber=7, at=T0 + 3 * DAY)]  # the second is too late
    ev += [OptedOut(subscriber=5, at=T0 + 3 * DAY - 0.5)]  # STOP twice: one lost subscriber
    r = report(ev, by=("campaign", "variant"))
    a, b = r.rows
    assert a.key == {"campaign": "spring", "variant": "A"}
    assert (a.sent, a.delivered, a.unique_clicks, a.conversions, a.revenue, a.cost) == (100, 80, 2, 1, 4_000, 800)
    assert a.ctr == pytest.approx(2 / 80) and a.delivery_rate == pytest.approx(0.8)
    assert a.revenue_per_message == pytest.approx(40.0)
    assert a.roi == pytest.approx((4_000 - 800) / 800)
    assert (b.conversions, b.revenue, b.opt_outs) == (1, 1_000, 1)
    assert b.opt_out_rate == pytest.approx(1 / 100)
    assert b.opt_out_alert and not a.opt_out_alert


def test_opt_out_alert_line_is_inclusive_at_half_a_percent() -> None:
    ev: list = [Sent(message=f"m{i}", subscriber=i, at=T0, campaign="c") for i in range(1000)]
    ev += [Delivered(message=f"m{i}", at=T0) for i in range(1000)]
    ev += [OptedOut(subscriber=i, at=T0 + H) for i in range(4)]
    assert not report(ev).rows[0].opt_out_alert
    ev.append(OptedOut(subscriber=999, at=T0 + H))
    assert report(ev).rows[0].opt_out_alert  # 5 / 1000 = 0.5 %


def test_hour_of_day_is_on_the_tenant_clock() -> None:
    ev = [Sent(message="m", subscriber=1, at=1_782_036_000.0, campaign="c")]  # 2026-06-21 10:00 UTC
    assert report(ev, by=("hour",), zone="UTC").rows[0].key == {"hour": 10}
    assert report(ev, by=("hour",), zone="Asia/Shanghai").rows[0].key == {"hour": 18}
    assert report(ev, by=("hour",), zone="Asia/Kolkata").rows[0].key == {"hour": 15}
    assert report(ev, by=("campaign", "hour", "variant"), zone="Asia/Kathmandu").rows[0].key == {
        "campaign": "c", "hour": 15, "variant": None,
    }  # +05:45: a quarter-hour offset
    assert report(ev, by=("hour", "campaign")).rows[0].key == {"hour": 10, "campaign": "c"}


def test_empty_denominators_are_none_not_errors() -> None:
    [m] = report([Sent(message="m", subscriber=1, at=T0, campaign="c")]).rows
    assert m.ctr is None and m.roi is None and m.opt_out_rate is None and not m.opt_out_alert
    with pytest.raises(InvalidInput) as err:
        report([], by=("country",))  # type: ignore[arg-type]
    assert err.value.code == "unknown_dimension"
    with pytest.raises(InvalidInput) as err:
        report([], zone="Europe")
    assert err.value.code == "unknown_time_zone"


def test_an_order_reported_twice_counts_once() -> None:
    ev = [*base(), Ordered(order="o", subscriber=1, at=T0 + H, total=700), Ordered(order="o", subscriber=1, at=T0 + H, total=700)]
    assert len(attribute_orders(ev)) == 1
    [row] = report(ev).rows
    assert (row.conversions, row.revenue) == (1, 700)
