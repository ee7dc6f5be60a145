"""The flow definition (validation with stable codes and paths) and the engine, rule by rule.

The invariants over random event sequences are in test_flow_properties.py."""

from __future__ import annotations

import copy
import datetime as dt
import zoneinfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import flows as F
from campaigns.core.flow_library import LIBRARY_TEMPLATES, library

T0 = 1_780_000_000.0  # 2026-05-28
TEMPLATES = {"a", "b", "c"}


def flow(nodes: dict, entry: str = "n1", **kw) -> dict:
    return {"id": "f", "version": 1, "name": "F", "trigger": {"type": "checkout_abandoned"}, "entry": entry,
            "nodes": nodes, **kw}


def refused(obj, code: str, path: str, templates=TEMPLATES) -> F.FlowError:
    with pytest.raises(F.FlowError) as info:
        F.parse_flow(obj, templates=templates)
    assert info.value.code == code, info.value
    assert info.value.path == path, info.value
    return info.value


def cart(value: int = 15_000, eid: str = "e1", object_id: str = "c1") -> F.ShopEvent:
    return F.ShopEvent(id=eid, kind="checkout_abandoned", object_id=object_id, payload={"value": value})


def fire(f: F.Flow, run: F.Run, now: float | None = None) -> tuple[F.Run, list[F.Action]]:
    assert run.timer_due is not None
    return F.step(f, run, F.TimerFired(id=f"t{run.visit}", due=run.timer_due, visit=run.visit),
                  run.timer_due if now is None else now)


def sends(actions) -> list[F.Send]:
    return [a for a in actions if isinstance(a, F.Send)]


SUB = F.FlowSubscriber(id=7, time_zone="America/New_York")

# ---- validation -----------------------------------------------------------------------------------


def test_a_valid_flow_parses_from_objects_and_json() -> None:
    obj = flow({"n1": {"type": "wait", "seconds": 60, "next": "n2"}, "n2": {"type": "send", "template": "a"}})
    f = F.parse_flow(obj, templates=TEMPLATES)
    assert F.parse_flow(msgspec.json.encode(obj), templates=TEMPLATES) == f
    assert F.parse_flow(F.dump_flow(f), templates=TEMPLATES) == f


def test_unreachable_node() -> None:
    refused(flow({"n1": {"type": "send", "template": "a"}, "lost": {"type": "end"}}), "flow.unreachable", "$.nodes.lost")


def test_loop_without_a_wait_is_refused_and_with_a_wait_accepted() -> None:
    loop = flow({"n1": {"type": "send", "template": "a", "next": "n2"},
                 "n2": {"type": "update", "add_tags": ["x"], "next": "n3"},
                 "n3": {"type": "branch", "condition": {"op": "has_tag", "tag": "y"}, "then": None, "else": "n1"}})
    with pytest.raises(F.FlowError) as info:
        F.parse_flow(loop, templates=TEMPLATES)
    assert info.value.code == "flow.loop_without_wait"
    assert info.value.path in {"$.nodes.n1", "$.nodes.n2", "$.nodes.n3"}
    ok = copy.deepcopy(loop)
    ok["nodes"]["n3"]["else"] = "w"
    ok["nodes"]["w"] = {"type": "wait", "seconds": 3600, "next": "n1"}
    F.parse_flow(ok, templates=TEMPLATES)
    # a self-loop on a split arm, with no wait, too
    refused(flow({"n1": {"type": "split", "arms": [{"weight": 1, "next": "n1"}, {"weight": 1, "next": None}]}}),
            "flow.loop_without_wait", "$.nodes.n1")
    # a clicked node can pass at once (already clicked): it is not a wait
    refused(flow({"n1": {"type": "send", "template": "a", "next": "n2"},
                  "n2": {"type": "clicked", "send": "n1", "wait_seconds": 60, "yes": "n1", "no": None}}),
            "flow.loop_without_wait", "$.nodes.n1")


def test_unknown_template() -> None:
    refused(flow({"n1": {"type": "send", "template": "nope"}}), "flow.unknown_template", "$.nodes.n1.template")
    refused(flow({"n1": {"type": "send", "template": "a"}}), "flow.unknown_template", "$.nodes.n1.template",
            templates=set())
    assert F.parse_flow(flow({"n1": {"type": "send", "template": "nope"}})).nodes["n1"].template == "nope"  # a draft


@pytest.mark.parametrize(("obj", "path"), [
    (flow({"n1": {"type": "send", "template": "a"}}, entry="zz"), "$.entry"),
    (flow({"n1": {"type": "send", "template": "a", "next": "zz"}}), "$.nodes.n1.next"),
    (flow({"n1": {"type": "branch", "condition": {"op": "exists", "field": "trigger.value"}, "then": None,
                  "else": "zz"}}), "$.nodes.n1.else"),
    (flow({"n1": {"type": "reply", "timeout_seconds": 60, "choices": [{"keywords": ["1"], "next": "zz"}]}}),
     "$.nodes.n1.choices[0].next"),
    (flow({"n1": {"type": "wait", "seconds": 5, "next": "n2"},
           "n2": {"type": "clicked", "send": "n1", "yes": None, "no": None}}), "$.nodes.n2.send"),
])  # fmt: skip
def test_bad_references(obj, path) -> None:
    refused(obj, "flow.bad_reference", path)


@pytest.mark.parametrize(("obj", "code", "path"), [
    (flow({"n1": {"type": "wait", "seconds": 0}}), "flow.schema", "$.nodes.n1.seconds"),
    (flow({"n1": {"type": "teleport"}}), "flow.schema", "$.nodes.n1.type"),
    (flow({"n1": {"type": "send", "template": "a", "colour": "red"}}), "flow.schema", "$.nodes.n1.colour"),
    (flow({"n1": {"type": "wait_until", "time": "25:00"}}), "flow.schema", "$.nodes.n1.time"),
    ({**flow({"n1": {"type": "end"}}), "trigger": {"type": "birthday", "days_before": -1}}, "flow.schema",
     "$.trigger.days_before"),
    ({**flow({"n1": {"type": "end"}}), "version": 0}, "flow.schema", "$.version"),
    (flow({"n1": {"type": "end"}}, time_zone="Mars/Olympus"), "flow.bad_value", "$.time_zone"),
    (flow({"n1": {"type": "end"}}, reentry={"rule": "once_per_days"}), "flow.bad_value", "$.reentry.days"),
    (flow({"n1": {"type": "branch", "condition": {"op": "gt", "field": "trigger.value", "value": "ten"}}}),
     "flow.bad_value", "$.nodes.n1.condition.value"),
    (flow({"n1": {"type": "branch", "condition": {"op": "all", "items": [{"op": "eq", "field": "cart"}]}}}),
     "flow.bad_value", "$.nodes.n1.condition.items[0].field"),
    (flow({"n1": {"type": "reply", "timeout_seconds": 9, "choices": []}}), "flow.bad_value", "$.nodes.n1.choices"),
    (flow({"n1": {"type": "reply", "timeout_seconds": 9, "choices": [{"keywords": [" . "]}]}}), "flow.bad_value",
     "$.nodes.n1.choices[0].keywords"),
    (b"{not json", "flow.schema", "$"),
    ([], "flow.schema", "$"),
])  # fmt: skip
def test_bad_values_name_their_path(obj, code, path) -> None:
    refused(obj, code, path)


def test_checkout_completed_is_a_kind_of_exits_waits_and_triggers_and_unknown_kinds_are_refused() -> None:
    ok = F.parse_flow({**flow({"n1": {"type": "wait_event", "event": "checkout_completed", "timeout_seconds": 60}}),
                       "trigger": {"type": "checkout_completed"},
                       "exits": [{"event": "checkout_completed", "same_object": True}]}, templates=TEMPLATES)  # fmt: skip
    assert isinstance(ok.trigger, F.CheckoutCompleted) and ok.exits[0].event == "checkout_completed"
    paid = F.ShopEvent(id="checkout_completed:c1", kind="checkout_completed", object_id="c1")
    assert F.matches_trigger(ok.trigger, paid) and not F.matches_trigger(ok.trigger, cart())
    err = refused(flow({"n1": {"type": "end"}}, exits=[{"event": "checkout_paid"}]), "flow.schema", "$.exits[0].event")
    assert "checkout_paid" in str(err)
    refused(flow({"n1": {"type": "wait_event", "event": "cart_paid", "timeout_seconds": 60}}), "flow.schema",
            "$.nodes.n1.event")  # fmt: skip
    refused({**flow({"n1": {"type": "end"}}), "trigger": {"type": "checkout_paid"}}, "flow.schema", "$.trigger.type")


def test_absurd_nesting_is_refused_not_a_crash() -> None:
    cond: dict = {"op": "has_tag", "tag": "x"}
    for _ in range(100_000):
        cond = {"op": "not", "item": cond}
    obj = flow({"n1": {"type": "branch", "condition": cond}})
    with pytest.raises(F.FlowError) as info:
        F.parse_flow(obj, templates=TEMPLATES)
    assert info.value.code == "flow.too_deep" and info.value.path.startswith("$.nodes.n1.condition.item")
    with pytest.raises(F.FlowError) as info:
        F.parse_flow(b"[" * 100_000 + b"]" * 100_000, templates=TEMPLATES)
    assert info.value.code == "flow.too_deep"
    shallow = {"op": "has_tag", "tag": "x"}
    for _ in range(20):
        shallow = {"op": "not", "item": shallow}
    F.parse_flow(flow({"n1": {"type": "branch", "condition": shallow}}), templates=TEMPLATES)


def _mutations(draw_obj, data) -> object:
    """Random damage to a valid definition: drop a key, replace a value, retarget a reference."""
    obj = copy.deepcopy(draw_obj)
    for _ in range(data.draw(st.integers(1, 3))):
        stack = [obj]
        target = obj
        while True:
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            if not keys:
                break
            k = data.draw(st.sampled_from(keys))
            child = target[k]
            if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
                stack.append(child)
                target = child
                continue
            op = data.draw(st.sampled_from(["drop", "replace"]))
            if op == "drop" and isinstance(target, dict):
                del target[k]
            else:
                target[k] = data.draw(st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=5),
                                                st.sampled_from(["n1", "q1", "big", "wait1h", "send", "reply"]),
                                                st.lists(st.integers(), max_size=2), st.just({})))
            break
    return obj


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(library())), st.data())
def test_damaged_definitions_parse_or_fail_with_a_flow_error(name, data) -> None:
    """Whatever the damage, the answer is a Flow or a FlowError with a code and a JSON path."""
    obj = _mutations(library()[name], data)
    try:
        F.parse_flow(obj, templates=LIBRARY_TEMPLATES)
    except F.FlowError as exc:
        assert exc.code.startswith("flow.") and exc.path.startswith("$")


# ---- the engine -----------------------------------------------------------------------------------

CART = F.parse_flow(library()["abandoned_cart"], templates=LIBRARY_TEMPLATES)


def test_cart_over_100_dollars_gets_the_mms_after_an_hour() -> None:
    run, acts = F.start(CART, SUB, cart(15_000), T0)
    assert acts == [F.SetTimer(run_id=run.id, due=T0 + 3600, visit=1)]
    run, acts = fire(CART, run)
    (send,) = sends(acts)
    assert (send.template, send.channel, send.key) == ("cart_big_mms", "mms", f"{run.id}:3")
    run2, acts2 = F.start(CART, SUB, cart(10_000, "e2", "c2"), T0)  # exactly $100 is not over $100
    _, acts2 = fire(CART, run2)
    assert [s.template for s in sends(acts2)] == ["cart_reminder_sms"]


def test_an_order_placed_ends_the_cart_run_even_a_millisecond_before_the_send() -> None:
    run, _ = F.start(CART, SUB, cart(), T0)
    run, acts = F.step(CART, run, F.ShopEvent(id="o1", kind="order_placed", object_id="o1"), T0 + 3600 - 0.001)
    assert acts == [F.Ended(run_id=run.id, reason="exit:order_placed")] and run.node is None
    run, acts = F.step(CART, run, F.TimerFired(id="t", due=T0 + 3600, visit=1), T0 + 3600)
    assert acts == []


def test_opt_out_ends_every_run_wherever_it_waits() -> None:
    f = F.parse_flow(library()["post_delivery_survey"], templates=LIBRARY_TEMPLATES)
    run, _ = F.start(f, SUB, F.ShopEvent(id="d", kind="order_delivered", object_id="o1"), T0)
    now = T0
    while run.node is not None:
        stopped, acts = F.step(f, run, F.OptOut(id="stop"), now)
        assert acts == [F.Ended(run_id=run.id, reason="opted_out")] and stopped.node is None
        late = F.TimerFired(id="t", due=run.timer_due or now, visit=run.visit)
        assert F.step(f, stopped, late, now + 10**7) == (stopped, [])  # its timer is dead
        if isinstance(f.nodes[run.node], F.ReplyNode):
            run, _ = F.step(f, run, F.Reply(id=f"r{run.visit}", text=f.nodes[run.node].choices[0].keywords[0]), now)
        else:
            now = run.timer_due
            run, _ = fire(f, run)


def test_timer_before_due_is_ignored_and_a_stale_timer_too() -> None:
    run, _ = F.start(CART, SUB, cart(), T0)
    assert F.step(CART, run, F.TimerFired(id="x", due=run.timer_due, visit=1), run.timer_due - 0.001) == (run, [])
    assert F.step(CART, run, F.TimerFired(id="x", due=run.timer_due, visit=0), run.timer_due + 5) == (run, [])
    run2, acts = fire(CART, run)
    assert sends(acts)
    assert F.step(CART, run2, F.TimerFired(id="x", due=run.timer_due, visit=1), run.timer_due + 9) == (run2, [])


def test_clicked_branch_before_and_after_the_node_is_reached() -> None:
    run, _ = F.start(CART, SUB, cart(), T0)
    run, acts = fire(CART, run)
    key = sends(acts)[0].key
    waiting = run
    assert waiting.node == "big_clicked"
    clicked, acts = F.step(CART, waiting, F.Click(id="k1", key=key), T0 + 4000)
    assert acts == [F.Ended(run_id=run.id, reason="completed")]
    _, acts = fire(CART, waiting)  # no click within a day: the last call
    assert [s.template for s in sends(acts)] == ["cart_last_call"]
    # a click on an unknown key changes nothing
    assert F.step(CART, waiting, F.Click(id="k2", key="other:1"), T0 + 4000)[1] == []


def test_clicked_node_reached_after_the_click_goes_yes_at_once() -> None:
    obj = flow({"n1": {"type": "send", "template": "a", "next": "w"}, "w": {"type": "wait", "seconds": 60, "next": "c"},
                "c": {"type": "clicked", "send": "n1", "yes": "y", "no": "n"},
                "y": {"type": "send", "template": "b"}, "n": {"type": "send", "template": "c"}})
    f = F.parse_flow(obj, templates=TEMPLATES)
    run, acts = F.start(f, SUB, cart(), T0)
    clicked, _ = F.step(f, run, F.Click(id="k", key=sends(acts)[0].key), T0 + 10)
    assert [s.template for s in sends(fire(f, clicked)[1])] == ["b"]
    assert [s.template for s in sends(fire(f, run)[1])] == ["c"]  # wait_seconds 0: no at once


def test_reentry_rules() -> None:
    per_object = CART
    run, _ = F.start(per_object, SUB, cart(object_id="c1"), T0)
    past = [F.Entry(started_at=T0, object_id="c1")]
    assert F.start(per_object, SUB, cart(eid="e2", object_id="c1"), T0 + 5, past) == (
        None, [F.NotEntered(reason="reentry.once_per_object")])
    assert F.start(per_object, SUB, cart(eid="e3", object_id="c2"), T0 + 5, past)[0] is not None
    once = F.parse_flow(library()["welcome"], templates=LIBRARY_TEMPLATES)
    sub_ev = F.ShopEvent(id="s2", kind="subscribed", name="popup")
    assert F.start(once, SUB, sub_ev, T0 + 10**8, [F.Entry(started_at=T0)])[1] == [F.NotEntered(reason="reentry.once_ever")]
    days = F.parse_flow(library()["win_back"], templates=LIBRARY_TEMPLATES)  # once per 180 days
    ev = F.ShopEvent(id="w2", kind="no_order", payload={"days": 90})
    past = [F.Entry(started_at=T0)]
    assert F.start(days, SUB, ev, T0 + 180 * 86_400 - 1, past)[0] is None
    assert F.start(days, SUB, ev, T0 + 180 * 86_400, past)[0] is not None
    assert F.start(CART, SUB, F.ShopEvent(id="x", kind="order_placed"), T0) == (None, [F.NotEntered(reason="trigger_mismatch")])


def test_triggers_match_their_events() -> None:
    t = F.Subscribed(source="keyword")
    assert F.matches_trigger(t, F.ShopEvent(id="1", kind="subscribed", name="keyword"))
    assert not F.matches_trigger(t, F.ShopEvent(id="1", kind="subscribed", name="popup"))
    assert F.matches_trigger(F.Subscribed(), F.ShopEvent(id="1", kind="subscribed", name="popup"))
    assert F.matches_trigger(F.OrderStatus(status="delivered"), F.ShopEvent(id="1", kind="order_delivered"))
    assert not F.matches_trigger(F.OrderStatus(status="delivered"), F.ShopEvent(id="1", kind="order_paid"))
    assert F.matches_trigger(F.Birthday(days_before=7), F.ShopEvent(id="1", kind="birthday", payload={"days_before": 7}))
    assert not F.matches_trigger(F.Birthday(days_before=7), F.ShopEvent(id="1", kind="birthday"))
    assert F.matches_trigger(F.SegmentEntered(segment="vip"), F.ShopEvent(id="1", kind="segment_entered", name="vip"))
    assert F.matches_trigger(F.CustomTrigger(name="quiz_done"), F.ShopEvent(id="1", kind="custom", name="quiz_done"))
    assert F.matches_trigger(F.KeywordTrigger(keywords=("QUIZ",)), F.Reply(id="1", text=" quiz! "))
    assert not F.matches_trigger(F.KeywordTrigger(keywords=("QUIZ",)), F.Reply(id="1", text="quiz me later"))
    assert F.matches_trigger(F.KeywordTrigger(), F.Reply(id="1", text="anything"))
    assert not F.matches_trigger(F.CheckoutAbandoned(), F.Reply(id="1", text="x"))


def test_wait_event_next_or_timeout_and_same_object_exits() -> None:
    obj = flow({"n1": {"type": "wait_event", "event": "custom", "name": "viewed", "timeout_seconds": 600,
                       "next": "yes", "timeout_next": "no"},
                "yes": {"type": "send", "template": "a"}, "no": {"type": "send", "template": "b"}},
               exits=[{"event": "order_placed", "same_object": True}])
    f = F.parse_flow(obj, templates=TEMPLATES)
    run, _ = F.start(f, SUB, cart(object_id="c1"), T0)
    assert F.step(f, run, F.ShopEvent(id="v0", kind="custom", name="other"), T0 + 1)[1] == []
    assert [s.template for s in sends(F.step(f, run, F.ShopEvent(id="v", kind="custom", name="viewed"), T0 + 1)[1])] == ["a"]
    assert [s.template for s in sends(fire(f, run)[1])] == ["b"]
    assert F.step(f, run, F.ShopEvent(id="o", kind="order_placed", object_id="c9"), T0 + 1)[1] == []
    assert F.step(f, run, F.ShopEvent(id="p", kind="order_placed", object_id="c1"), T0 + 1)[1] == [
        F.Ended(run_id=run.id, reason="exit:order_placed")]


def test_branch_conditions_on_subscriber_and_trigger() -> None:
    cond = {"op": "all", "items": [{"op": "eq", "field": "subscriber.country", "value": "US"},
                                   {"op": "not", "item": {"op": "has_tag", "tag": "vip"}},
                                   {"op": "any", "items": [{"op": "gte", "field": "trigger.value", "value": 5000},
                                                           {"op": "eq", "field": "subscriber.size", "value": "L"}]}]}
    f = F.parse_flow(flow({"n1": {"type": "branch", "condition": cond, "then": "a", "else": "b"},
                           "a": {"type": "send", "template": "a"}, "b": {"type": "send", "template": "b"}}),
                     templates=TEMPLATES)
    def pick(sub: F.FlowSubscriber, value) -> str:
        payload = {} if value is None else {"value": value}
        _, acts = F.start(f, sub, F.ShopEvent(id="e", kind="checkout_abandoned", payload=payload), T0)
        return sends(acts)[0].template
    us = F.FlowSubscriber(id=1, fields={"country": "US", "attributes": {"size": "L"}})
    assert pick(us, 5000) == "a"
    assert pick(us, None) == "a"  # via the custom attribute
    assert pick(F.FlowSubscriber(id=1, fields={"country": "US"}), 4999) == "b"
    assert pick(F.FlowSubscriber(id=1, fields={"country": "US"}), "5000") == "b"  # a string is not a number
    assert pick(F.FlowSubscriber(id=1, fields={"country": "FR"}), 9000) == "b"
    assert pick(F.FlowSubscriber(id=1, tags=("vip",), fields={"country": "US"}), 9000) == "b"


def test_split_is_deterministic_by_run_and_follows_the_weights() -> None:
    f = F.parse_flow(flow({"n1": {"type": "split", "arms": [{"weight": 3, "next": "a"}, {"weight": 1, "next": "b"}]},
                           "a": {"type": "send", "template": "a"}, "b": {"type": "send", "template": "b"}}),
                     templates=TEMPLATES)
    picks = []
    for i in range(2000):
        ev = cart(eid=f"e{i}")
        first = F.start(f, F.FlowSubscriber(id=i), ev, T0)[1]
        again = F.start(f, F.FlowSubscriber(id=i), ev, T0 + 99)[1]
        assert sends(first)[0].template == sends(again)[0].template
        picks.append(sends(first)[0].template)
    assert 0.70 < picks.count("a") / 2000 < 0.80


def test_reply_node_saves_answers_and_routes_other_text() -> None:
    obj = flow({"n1": {"type": "send", "template": "a", "next": "r"},
                "r": {"type": "reply", "timeout_seconds": 600, "save_as": "score",
                      "choices": [{"keywords": ["5", "😍"], "next": "hi"}, {"keywords": ["1", "😞"], "next": "lo"}],
                      "timeout_next": None},
                "hi": {"type": "send", "template": "b"}, "lo": {"type": "send", "template": "c"}})
    f = F.parse_flow(obj, templates=TEMPLATES)
    run, _ = F.start(f, SUB, cart(), T0)
    for text, template in [("5", "b"), (" ５. ", "b"), ("😍😍", "b"), ("😍️", "b"), ("5 stars!", "b"), ("1", "c")]:
        new, acts = F.step(f, run, F.Reply(id="r", text=text), T0 + 5)
        assert [s.template for s in sends(acts)] == [template], text
        upd = [a for a in acts if isinstance(a, F.UpdateSubscriber)]
        assert upd and upd[0].set_attributes == {"score": "5" if template == "b" else "1"}
    assert F.step(f, run, F.Reply(id="r", text="where is my order?"), T0 + 5) == (
        msgspec.structs.replace(run, seen=run.seen + ("r",)), [])
    assert fire(f, run)[1] == [F.Ended(run_id=run.id, reason="completed")]


def test_update_and_webhook_nodes() -> None:
    f = F.parse_flow(flow({"n1": {"type": "update", "add_tags": ["cart"], "set_attributes": {"stage": 1}, "next": "h"},
                           "h": {"type": "webhook", "url": "https://shop.example/hook", "next": "b"},
                           "b": {"type": "branch", "condition": {"op": "has_tag", "tag": "cart"}, "then": "x"},
                           "x": {"type": "send", "template": "a"}}), templates=TEMPLATES)
    run, acts = F.start(f, SUB, cart(), T0)
    kinds = [type(a).__name__ for a in acts]
    assert kinds == ["UpdateSubscriber", "CallWebhook", "Send", "Ended"]
    assert acts[0].key == f"{run.id}:1" and acts[1].key == f"{run.id}:2" and acts[1].payload["node"] == "h"
    assert run.context["subscriber"]["attributes"] == {"stage": 1}


def test_step_refuses_another_version_of_the_flow() -> None:
    run, _ = F.start(CART, SUB, cart(), T0)
    v2 = F.parse_flow({**library()["abandoned_cart"], "version": 2}, templates=LIBRARY_TEMPLATES)
    with pytest.raises(F.FlowError) as info:
        F.step(v2, run, F.OptOut(id="s"), T0)
    assert info.value.code == "flow.version_mismatch"


# ---- local time of day -----------------------------------------------------------------------------

NY = zoneinfo.ZoneInfo("America/New_York")


def test_wait_until_dst_gap_and_overlap() -> None:
    before_gap = dt.datetime(2026, 3, 8, 0, 0, tzinfo=NY).timestamp()  # clocks jump 02:00 -> 03:00
    due = F.next_local_time(before_gap, "02:30", "America/New_York")
    assert dt.datetime.fromtimestamp(due, NY).strftime("%H:%M") == "03:30"
    assert due - before_gap == 2.5 * 3600
    before_overlap = dt.datetime(2026, 11, 1, 0, 0, tzinfo=NY).timestamp()  # 01:00-02:00 happens twice
    due = F.next_local_time(before_overlap, "01:30", "America/New_York")
    assert due - before_overlap == 1.5 * 3600  # the first 01:30
    # the subscriber's zone wins; an unknown zone falls back to the flow's, then UTC
    utc_noon = F.next_local_time(T0, "12:00", "Nowhere/Land", "Europe/Paris")
    assert dt.datetime.fromtimestamp(utc_noon, zoneinfo.ZoneInfo("Europe/Paris")).hour == 12


ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia", "UTC",
         "America/Santiago", "Asia/Tehran"]


@settings(max_examples=400, deadline=None)
@given(st.floats(1.6e9, 2.2e9), st.integers(0, 23), st.integers(0, 59), st.sampled_from(ZONES))
def test_wait_until_is_the_next_such_wall_time(now, h, m, zone) -> None:
    hhmm = f"{h:02d}:{m:02d}"
    due = F.next_local_time(now, hhmm, zone)
    tz = zoneinfo.ZoneInfo(zone)
    assert now < due <= now + 26 * 3600 + 1  # the next one: at most a day (plus a DST hour or so)
    wall = dt.datetime.fromtimestamp(due, tz)
    if (wall.hour, wall.minute) != (h, m):  # only in a gap: the skipped time, moved on by the gap
        naive = dt.datetime(wall.year, wall.month, wall.day, h, m)
        roundtrip = dt.datetime.fromtimestamp(naive.replace(tzinfo=tz).timestamp(), tz).replace(tzinfo=None)
        assert roundtrip != naive
    # no earlier instant after now has that wall time (checked minute by minute over the interval)
    t = due - 60
    while t > now and due - t < 27 * 3600:
        w = dt.datetime.fromtimestamp(t, tz)
        assert (w.hour, w.minute, w.second) != (h, m, 0) or t <= now
        t -= 3600


def test_a_subscriber_row_becomes_the_snapshot_branches_read() -> None:
    from campaigns.core.model import Stats, Subscriber

    row = Subscriber(tenant="t", id=9, phone="+15550100", country="US", time_zone="America/Chicago",
                     created_at=T0, attributes={"size": "M"})
    sub = F.FlowSubscriber.from_model(row, tags=["vip", "vip"], stats=Stats(orders_count=3, total_spent=42_000))
    assert (sub.id, sub.time_zone, sub.tags) == (9, "America/Chicago", ("vip",))
    f = F.parse_flow(flow({"n1": {"type": "branch", "then": "a", "else": "b", "condition": {"op": "all", "items": [
        {"op": "gt", "field": "subscriber.total_spent", "value": 40_000}, {"op": "has_tag", "tag": "vip"},
        {"op": "eq", "field": "subscriber.size", "value": "M"}, {"op": "eq", "field": "trigger.id", "value": "e1"}]}},
        "a": {"type": "send", "template": "a"}, "b": {"type": "send", "template": "b"}}), templates=TEMPLATES)
    shadow = F.ShopEvent(id="e1", kind="checkout_abandoned", payload={"id": "forged", "kind": "x"})
    run, acts = F.start(f, sub, shadow, T0)
    assert sends(acts)[0].template == "a" and run.context["trigger"]["kind"] == "checkout_abandoned"
