"""The flow simulation: deterministic, counts that add up, the real engine's rules on virtual time
(exit at the due instant wins; timers exactly at due; `until` leaves runs waiting)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import flows as F
from campaigns.core.flow_library import LIBRARY_TEMPLATES, library
from campaigns.core.flow_sim import SimEvent, generate_events, simulate

T0 = 1_780_000_000.0
CART = F.parse_flow(library()["abandoned_cart"], templates=LIBRARY_TEMPLATES)
FLOWS = {n: F.parse_flow(o, templates=LIBRARY_TEMPLATES) for n, o in library().items()}


def abandon(sub: int, at: float, value: int, cid: str | None = None) -> SimEvent:
    return SimEvent(at=at, subscriber_id=sub, event=F.ShopEvent(id=f"a{sub}{cid}", kind="checkout_abandoned",
                                                                 object_id=cid or f"c{sub}", payload={"value": value}))


def order(sub: int, at: float) -> SimEvent:
    return SimEvent(at=at, subscriber_id=sub, event=F.ShopEvent(id=f"o{sub}{at}", kind="order_placed"))


def test_a_small_cart_story_by_hand() -> None:
    events = [
        abandon(1, T0, 25_000),  # big cart: MMS at T0+1h, no click, last call a day later
        abandon(2, T0, 5_000),  # small cart: SMS at T0+1h, orders 2 h later: no last call
        order(2, T0 + 3 * 3600),
        abandon(3, T0, 25_000),  # orders 1 ms before the MMS is due: nothing sent
        order(3, T0 + 3600 - 0.001),
        abandon(4, T0, 25_000),  # orders at the very instant the MMS falls due: the exit wins
        order(4, T0 + 3600),
        abandon(5, T0, 25_000),  # orders 1 ms after: the MMS went
        order(5, T0 + 3600 + 0.001),
        abandon(1, T0 + 60, 25_000),  # the same checkout again: once per object
    ]
    r = simulate(CART, {}, events)
    assert r.entered == 5 and r.not_entered == {"reentry.once_per_object": 1}
    n = r.nodes
    assert (n["wait1h"].reached, n["wait1h"].exited) == (5, 2)
    assert (n["big"].sent, n["small"].sent, n["last"].sent) == (2, 1, 1)
    assert (n["big_clicked"].exited, n["small_clicked"].exited) == (1, 1)
    assert r.ended == {"exit:order_placed": 4, "completed": 1} and r.sends == 4
    assert n["last"].completed == 1


def test_until_leaves_runs_waiting_and_timers_fire_exactly_at_due() -> None:
    events = [abandon(1, T0, 25_000)]
    assert simulate(CART, {}, events, until=T0 + 3600 - 0.001).nodes["wait1h"].waiting == 1
    r = simulate(CART, {}, events, until=T0 + 3600)
    assert r.nodes["big"].sent == 1 and r.nodes["big_clicked"].waiting == 1


def _check_totals(flow: F.Flow, r) -> None:
    waiting = sum(n.waiting for n in r.nodes.values())
    assert r.entered == sum(r.ended.values()) + waiting
    assert r.sends == sum(n.sent for n in r.nodes.values())
    assert sum(n.exited for n in r.nodes.values()) == sum(v for k, v in r.ended.items() if k != "completed")
    assert sum(n.completed for n in r.nodes.values()) == r.ended.get("completed", 0)
    for nid, node in flow.nodes.items():
        rep = r.nodes[nid]
        assert rep.sent == (rep.reached if isinstance(node, F.SendNode) else 0)
    assert r.nodes[flow.entry].reached == r.entered


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(FLOWS)), st.integers(1, 60), st.integers(0, 2**32), st.booleans())
def test_generated_traffic_adds_up_and_is_deterministic(name, n, seed, cut) -> None:
    flow = FLOWS[name]
    events = generate_events(flow, n, seed=seed, start=T0, exit_rate=0.4, opt_out_rate=0.2)
    assert events == generate_events(flow, n, seed=seed, start=T0, exit_rate=0.4, opt_out_rate=0.2)
    until = T0 + 2 * 86_400 if cut else None
    r = simulate(flow, {}, events, until=until)
    assert r == simulate(flow, {}, list(reversed(events)), until=until)  # order of the list does not matter
    _check_totals(flow, r)
    if until is None:
        assert all(node.waiting == 0 for node in r.nodes.values())


def test_simulation_matches_stepping_the_engine_by_hand() -> None:
    events = generate_events(CART, 30, seed=7, start=T0, exit_rate=0.5)
    r = simulate(CART, {}, events)
    # by hand: one run per subscriber, a timer at a time
    sent = 0
    for sub in range(1, 31):
        mine = sorted((e for e in events if e.subscriber_id == sub), key=lambda e: e.at)
        run, acts = F.start(CART, F.FlowSubscriber(id=sub), mine[0].event, mine[0].at)
        others = mine[1:]
        while run.node is not None:
            due = run.timer_due
            nxt = next((e for e in others if e.at <= due), None)
            if nxt is not None:
                others.remove(nxt)
                run, acts = F.step(CART, run, nxt.event, nxt.at)
            else:
                run, acts = F.step(CART, run, F.TimerFired(id="t", due=due, visit=run.visit), due)
            sent += sum(isinstance(a, F.Send) for a in acts)
    assert sent == r.sends


def test_a_survey_simulation_counts_answers_per_question() -> None:
    survey = FLOWS["post_delivery_survey"]
    events = []
    for sub in range(1, 5):
        events.append(SimEvent(at=T0, subscriber_id=sub, event=F.ShopEvent(id=f"d{sub}", kind="order_delivered",
                                                                           object_id=f"o{sub}")))  # fmt: skip
    # q1 goes out the next day at noon UTC at the latest (T0 + 1 day + < 1 day); answers after 3 days
    for sub, texts in {1: ["5", "B", "yes"], 2: ["😞", "A"], 3: ["stop spamming me"]}.items():
        for i, text in enumerate(texts):
            events.append(SimEvent(at=T0 + (2 + i / 10) * 86_400, subscriber_id=sub,
                                   event=F.Reply(id=f"r{sub}{i}", text=text)))  # fmt: skip
    r = simulate(survey, {}, events)
    assert [r.nodes[q].sent for q in ("q1", "q2", "q3", "thanks")] == [4, 2, 2, 1]
    assert r.updates == 5 and r.ended == {"completed": 4}


def test_click_rate_drives_the_clicked_branches_deterministically() -> None:
    events = generate_events(CART, 200, seed=3, start=T0, exit_rate=0.0, opt_out_rate=0.0)
    none = simulate(CART, {}, events)
    every = simulate(CART, {}, events, click_rate=1.0)
    half = simulate(CART, {}, events, click_rate=0.5)
    assert none.nodes["last"].sent == 200 and every.nodes["last"].sent == 0
    assert 60 < half.nodes["last"].sent < 140 and half == simulate(CART, {}, events, click_rate=0.5)
    assert every.ended == {"completed": 200}
    late = simulate(CART, {}, events, click_rate=1.0, click_delay=2 * 86_400)  # after the 1-day window: too late
    assert late.nodes["last"].sent == 200
