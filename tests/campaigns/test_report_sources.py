"""The report read from the store (counts in SQL, attribution over every campaign and flow step of
the tenant) equals the pure core's report over the same history, on random histories whose times sit
on an hour grid (so orders land exactly on window edges); an order counts for at most one message
across every campaign's report."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core import attribution as A
from campaigns.store import Store, open_store
from campaigns.store.campaign_rows import ClickIn
from campaigns.store.report_sql import Scope

T0 = 1_767_000_000.0
H = 3600.0
TENANT = "acme"


class Msg(msgspec.Struct, frozen=True):
    source: str  # "c1", "c2" (campaigns 1 and 2) or "f" (a flow step)
    subscriber: int
    sent: int  # hours after T0
    delivered: int | None
    clicks: tuple[int, ...]
    cost: int
    code: str | None


def _messages(draw: st.DrawFn) -> list[Msg]:
    out: list[Msg] = []
    for sub in (1, 2, 3):
        for source in ("c1", "c2", "f", "f"):
            if not draw(st.booleans()):
                continue
            sent = draw(st.integers(0, 150))
            delivered = draw(st.one_of(st.none(), st.integers(sent, sent + 30)))
            clicks = tuple(draw(st.lists(st.integers(sent, sent + 160), max_size=2)))
            code = f"D{len(out)}" if draw(st.booleans()) else None
            out.append(Msg(source, sub, sent, delivered, clicks, draw(st.integers(0, 9)), code))
    return out


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Msg], list[tuple], list[tuple]]:
    msgs = _messages(draw)
    codes = [m.code for m in msgs if m.code] + ["NOPE"]
    orders = [(f"o{i}", draw(st.integers(1, 3)), draw(st.integers(0, 320)), draw(st.integers(1, 9000)),
               draw(st.one_of(st.none(), st.sampled_from(codes)))) for i in range(draw(st.integers(0, 6)))]  # fmt: skip
    outs = [(draw(st.integers(1, 3)), draw(st.integers(0, 320))) for _ in range(draw(st.integers(0, 3)))]
    return msgs, orders, outs


def _key(m: Msg, i: int) -> str:
    return f"flow:m{i}" if m.source == "f" else f"{m.source[1]}:{m.subscriber}"


def events_of(msgs: list[Msg], orders: list[tuple], outs: list[tuple]) -> list[A.Event]:
    ev: list[A.Event] = []
    for i, m in enumerate(msgs):
        k = _key(m, i)
        ev.append(A.Sent(message=k, subscriber=m.subscriber, at=T0 + m.sent * H, cost=m.cost, discount_code=m.code,
                         campaign=None if m.source == "f" else m.source[1], variant=None if m.source == "f" else "a",
                         step="welcome/2" if m.source == "f" else None))  # fmt: skip
        if m.delivered is not None:
            ev.append(A.Delivered(message=k, at=T0 + m.delivered * H))
        ev += [A.Clicked(message=k, at=T0 + c * H) for c in m.clicks]
    ev += [A.Ordered(order=o, subscriber=s, at=T0 + h * H, total=t, discount_code=d) for o, s, h, t, d in orders]
    ev += [A.OptedOut(subscriber=s, at=T0 + h * H) for s, h in outs]
    return ev


def store_history(store: Store, msgs: list[Msg], orders: list[tuple], outs: list[tuple]) -> None:
    """The same history as the store keeps it (campaign recipients, flow messages, links, clicks ...)."""
    hits: list[ClickIn] = []
    with store._tx() as tx:  # type: ignore[attr-defined]
        for s in (1, 2, 3):
            tx.run("INSERT INTO subscribers (tenant, id, phone, created_at) VALUES (?, ?, ?, ?)", (TENANT, s, f"+4479111000{s:02d}", T0))
        for i, m in enumerate(msgs):
            gw = f"gw{i}"
            state = "delivered" if m.delivered is not None else "submitted"
            state_at = T0 + (m.delivered if m.delivered is not None else m.sent) * H
            if m.source == "f":  # the flow runtime's own calls, after this transaction
                tx.run("INSERT INTO short_links (code, tenant, campaign_id, subscriber_id, target, created_at) VALUES "
                       "(?, ?, 0, ?, 'https://x', ?)", (f"L{i}", TENANT, m.subscriber, T0))  # fmt: skip
            else:
                cid = int(m.source[1])
                tx.run("INSERT INTO campaign_recipients (tenant, campaign_id, subscriber_id, phone, variant, send_at, tz, "
                       "text, batch, idx, message_id, state, state_at) VALUES (?, ?, ?, 'p', 'a', ?, 'UTC', 't', 0, ?, ?, ?, ?)",
                       (TENANT, cid, m.subscriber, T0 + m.sent * H, m.subscriber, gw, state, state_at))  # fmt: skip
                tx.run("INSERT INTO short_links (code, tenant, campaign_id, subscriber_id, target, created_at) VALUES "
                       "(?, ?, ?, ?, 'https://x', ?)", (f"L{i}", TENANT, cid, m.subscriber, T0))  # fmt: skip
                if m.code:
                    tx.run("INSERT INTO discount_codes (tenant, pool, code, campaign_id, subscriber_id, reserved_at) "
                           "VALUES (?, 'p', ?, ?, ?, ?)", (TENANT, m.code, cid, m.subscriber, T0))  # fmt: skip
            hits += [ClickIn(code=f"L{i}", at=T0 + c * H, user_agent="M", verdict="click") for c in m.clicks]
            hits.append(ClickIn(code=f"L{i}", at=T0 + m.sent * H, user_agent="bot", verdict="bot"))  # never a click
            tx.run("INSERT INTO message_costs (tenant, message_id, carrier, segments, cost) VALUES (?, ?, 'alpha', 1, ?)",
                   (TENANT, gw, m.cost))  # fmt: skip
        for o, s, h, t, d in orders:
            tx.run("INSERT INTO orders (tenant, order_id, subscriber_id, total, currency, payment_status, discount_code, "
                   "created_at, updated_at) VALUES (?, ?, ?, ?, 'EUR', 'paid', ?, ?, ?)",
                   (TENANT, o, s, t, d, T0 + h * H, T0 + h * H))  # fmt: skip
        for s, h in outs:
            tx.run("INSERT INTO consent_ledger (tenant, subscriber_id, phone, action, source, at) VALUES "
                   "(?, ?, 'p', 'opt_out', 'keyword', ?)", (TENANT, s, T0 + h * H))  # fmt: skip
    store.record_clicks(hits)  # through the store: the click's write marks its recipient clicked
    for i, m in enumerate(msgs):
        if m.source != "f":  # the price, as the state webhook records it (the flow messages' below)
            store.record_cost(TENANT, f"gw{i}", carrier="alpha", segments=1, cost=m.cost,
                              recipient=(int(m.source[1]), m.subscriber))  # fmt: skip
        if m.source == "f":
            assert store.record_flow_message(TENANT, id=f"m{i}", flow_id="welcome", step="2", subscriber_id=m.subscriber,
                                             sent_at=T0 + m.sent * H, message_id=f"gw{i}", discount_code=m.code,
                                             link_codes=[f"L{i}"])  # fmt: skip
            if m.delivered is not None:
                store.flow_message_state(TENANT, f"m{i}", state="delivered", at=T0 + m.delivered * H)
                store.flow_message_state(TENANT, f"m{i}", state="sent", at=T0 + 999 * H)  # late: never backwards


BY = ("campaign", "step", "variant", "hour")


def store_report(store: Store, campaign: int | None) -> A.Report:
    facts = store.report_facts(TENANT, Scope(campaign=campaign))
    in_scope = None if campaign is None else (lambda s: s.campaign == str(campaign))
    return A.tally(facts.groups, facts.history, by=BY, in_scope=in_scope)


def check(store: Store, msgs: list[Msg], orders: list[tuple], outs: list[tuple]) -> None:
    whole = A.report(events_of(msgs, orders, outs), by=BY)
    mine = store_report(store, None)
    assert mine.rows == whole.rows
    assert sorted(mine.attributions, key=lambda a: a.order) == sorted(whole.attributions, key=lambda a: a.order)
    truth = {a.order: a for a in whole.attributions}
    per_campaign = []
    for cid in (1, 2):
        rep = store_report(store, cid)
        assert rep.rows == tuple(r for r in whole.rows if r.key["campaign"] == str(cid))
        for a in rep.attributions:  # the same message as the whole history picks, whichever campaign it is
            assert a == truth[a.order]
        per_campaign.append(rep)
    # An order counts once across every report: campaigns' conversions plus the flow's = the whole's.
    flows = sum(r.conversions for r in whole.rows if r.key["campaign"] is None)
    assert sum(r.conversions for rep in per_campaign for r in rep.rows) + flows == sum(r.conversions for r in whole.rows)


@pytest.fixture
def fresh_store() -> Iterator[callable]:  # type: ignore[valid-type]
    opened: list[Store] = []

    def make() -> Store:
        d = tempfile.mkdtemp(prefix="report-sources-")
        s = open_store(f"sqlite:///{d}/c.db")
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=histories())
def test_store_report_equals_the_core_over_every_source(fresh_store, h) -> None:  # type: ignore[no-untyped-def]
    msgs, orders, outs = h
    store = fresh_store()
    store_history(store, msgs, orders, outs)
    check(store, msgs, orders, outs)


def edge_history() -> tuple[list[Msg], list[tuple], list[tuple]]:
    """Subscriber 1: campaign 1 clicked at hour 0, campaign 2 delivered at 100 and clicked at 101, a flow
    step delivered at 130 with a code. Orders exactly on each window's edge."""
    msgs = [Msg("c1", 1, 0, 0, (0,), 3, None), Msg("c2", 1, 99, 100, (101,), 3, None),
            Msg("f", 1, 129, 130, (), 2, "WELCOME-1"), Msg("c1", 2, 0, 1, (), 3, None)]  # fmt: skip
    orders = [("at-click", 1, 101, 100, None),  # the instant of campaign 2's click: it, not campaign 1's
              ("last-instant", 1, 101 + 119.99, 150, None),  # just inside campaign 2's 5-day click window
              ("edge-click", 1, 101 + 120, 200, None),  # exactly 5 days after: not the click (the flow's view ended at 154)
              ("code", 1, 300, 400, "WELCOME-1"),  # only the discount code, long after
              ("view-in", 2, 24, 500, None),  # 23 h after subscriber 2's delivery at hour 1
              ("view-end", 2, 25, 300, None)]  # exactly 24 h after it: nothing
    # Opt-outs: exactly 3 days after the flow's send (not charged), exactly 3 days after subscriber 2's
    # send (not charged), and a minute less than 3 days after it (charged to campaign 1).
    return msgs, orders, [(1, 129 + 72), (2, 72), (2, 71.99)]


def test_cross_campaign_attribution_at_the_window_edges(store_url: str) -> None:
    store = open_store(store_url)
    msgs, orders, outs = edge_history()
    store_history(store, msgs, orders, outs)
    whole = {a.order: (a.message, a.via) for a in store_report(store, None).attributions}
    assert whole == {"at-click": ("2:1", "click"), "last-instant": ("2:1", "click"), "edge-click": (None, None),
                     "code": ("flow:m2", "discount_code"), "view-in": ("1:2", "view"), "view-end": (None, None)}
    c1 = store_report(store, 1)
    assert sum(r.conversions for r in c1.rows) == 1 and sum(r.revenue for r in c1.rows) == 500  # only "view-in"
    assert sum(r.opt_outs for r in c1.rows) == 1 and sum(r.opt_outs for r in store_report(store, None).rows) == 1
    c2 = store_report(store, 2)
    assert sum(r.conversions for r in c2.rows) == 2 and sum(r.revenue for r in c2.rows) == 250
    check(store, msgs, orders, outs)
    store.close()


def test_a_tenants_windows_come_from_its_config() -> None:
    from campaigns.config import loads
    from campaigns.service.server import tenant_links

    settings = loads('[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "K"\nshort_domain = "sl.ui"\n'
                     'link_key_env = "L"\nclick_window_s = 86400\nview_window_s = 0\nopt_out_alert = 0.01\n')  # fmt: skip
    assert settings is not None
    tl = tenant_links(settings, {"L": "secret"})["acme"]
    assert tl.windows == A.Windows(click=86400.0, view=0.0, opt_out=3 * 86400.0, opt_out_alert=0.01)
    with pytest.raises(Exception, match="click_window_s"):
        loads('[campaigns]\n[[campaigns.tenants]]\nname = "acme"\nkey_env = "K"\nclick_window_s = -1\n')
    # The windows decide: with a one-day click window, campaign 2's click no longer earns "last-instant".
    store = open_store(f"sqlite:///{tempfile.mkdtemp()}/c.db")
    msgs, orders, outs = edge_history()
    store_history(store, msgs, orders, outs)
    facts = store.report_facts(TENANT, Scope())
    got = {a.order: a.via for a in A.tally(facts.groups, facts.history, windows=tl.windows).attributions}
    assert got["at-click"] == "click" and got["last-instant"] is None and got["view-in"] is None
    store.close()
