"""Hypothesis on virtual time: the engine's promises over random event sequences.

- a node visit sends at most once: replays of the same event or timer change nothing, and every
  Send key (run id + visit, the gateway Idempotency-Key) appears once in a run's whole life;
- an exit that arrives before a due send, even 1 ms before, prevents it; after an end, nothing;
- timers never fire early: a timer event before its due is ignored;
- a new version of a flow does not corrupt runs of the old one (they keep their definition, and
  survive being stored as JSON and read back)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import flows as F
from campaigns.core.flow_library import LIBRARY_TEMPLATES, library

T0 = 1_780_000_000.0
TEMPLATES = LIBRARY_TEMPLATES | {"a", "b"}

NAG = {  # a loop (with a wait), a split, an event wait, an update and a webhook
    "id": "nag", "version": 1, "name": "Nag", "trigger": {"type": "checkout_abandoned"}, "entry": "split",
    "nodes": {
        "split": {"type": "split", "arms": [{"weight": 1, "next": "a"}, {"weight": 1, "next": "ev"}]},
        "ev": {"type": "wait_event", "event": "custom", "name": "viewed", "timeout_seconds": 1800, "next": "tag",
               "timeout_next": "a"},
        "tag": {"type": "update", "add_tags": ["viewed"], "next": "hook"},
        "hook": {"type": "webhook", "url": "https://shop.example/h", "next": "a"},
        "a": {"type": "send", "template": "a", "next": "w"},
        "w": {"type": "wait", "seconds": 3600, "next": "c"},
        "c": {"type": "clicked", "send": "a", "wait_seconds": 0, "yes": "b", "no": "a"},
        "b": {"type": "send", "template": "b"},
    },
    "exits": [{"event": "order_placed"}],
    "reentry": {"rule": "always"},
}  # fmt: skip

FLOWS = {name: F.parse_flow(obj, templates=TEMPLATES) for name, obj in {**library(), "nag": NAG}.items()}
RUN_DECODER = msgspec.json.Decoder(F.Run)


def trigger_for(f: F.Flow) -> F.Event:
    match f.trigger:
        case F.KeywordTrigger():
            return F.Reply(id="trig", text=f.trigger.keywords[0])
        case F.Subscribed():
            return F.ShopEvent(id="trig", kind="subscribed", name="popup")
        case F.OrderStatus():
            return F.ShopEvent(id="trig", kind=f"order_{f.trigger.status}", object_id="o1")  # type: ignore[arg-type]
        case F.Birthday():
            return F.ShopEvent(id="trig", kind="birthday", payload={"days_before": f.trigger.days_before})
        case F.NoOrder():
            return F.ShopEvent(id="trig", kind="no_order", payload={"days": f.trigger.days})
    return F.ShopEvent(id="trig", kind="checkout_abandoned", object_id="c1", payload={"value": 20_000})


def answers(f: F.Flow) -> list[str]:
    out = ["hello?", "STOP maybe", ""]
    for n in f.nodes.values():
        if isinstance(n, F.ReplyNode):
            out += [k for c in n.choices for k in c.keywords]
    return out


op_st = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.001, 1.0, 59.0, 1800.0, 3599.999, 3600.0, 86_400.0])),
    st.tuples(st.just("timer"), st.floats(-1.0, 1.0)),  # fire the pending timer, up to 1 s early or late
    st.tuples(st.just("replay_timer"), st.integers(0, 50)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("exit"), st.integers(0, 3)),
    st.tuples(st.just("optout"), st.integers(0, 3)),
    st.tuples(st.just("reply"), st.integers(0, 60)),
    st.tuples(st.just("click"), st.integers(0, 20)),
    st.tuples(st.just("viewed"), st.integers(0, 3)),
)


class Driver:
    """Feeds events to one run and checks the invariants after every step."""

    def __init__(self, f: F.Flow, now: float) -> None:
        self.f, self.now = f, now
        self.run, actions = F.start(f, F.FlowSubscriber(id=1, time_zone="Europe/Paris"), trigger_for(f), now)
        assert self.run is not None
        self.keys: dict[str, tuple[str, str]] = {}
        self.events: list[F.Event] = []
        self.timers: list[F.TimerFired] = []
        self.ended = False
        self.n = 0
        self.check(actions, None)

    def check(self, actions: list[F.Action], event: F.Event | None) -> None:
        if self.ended:
            assert actions == [], "after an end, nothing"
        for a in actions:
            if isinstance(a, F.Send):
                assert a.key not in self.keys, f"sent twice: {a.key}"
                self.keys[a.key] = (a.node, a.template)
            if isinstance(a, F.SetTimer):
                assert a.due > self.now and a.visit == self.run.visit
        if any(isinstance(a, F.Ended) for a in actions):
            self.ended = True
            assert self.run.node is None and self.run.timer_due is None
        assert (self.run.node is None) == self.ended
        # the run survives the store: JSON out and back is the same run
        assert RUN_DECODER.decode(msgspec.json.encode(self.run)) == self.run

    def feed(self, event: F.Event) -> list[F.Action]:
        before = self.run
        self.run, actions = F.step(self.f, before, event, self.now)
        if isinstance(event, F.TimerFired) and (before.timer_due is None or self.now < before.timer_due):
            assert (self.run, actions) == (before, []), "a timer fired early"
        self.check(actions, event)
        if not isinstance(event, F.TimerFired):
            self.events.append(event)
            # the same event again, at once or later: nothing changes
            assert F.step(self.f, self.run, event, self.now) == (self.run, [])
        return actions

    def do(self, op: str, arg) -> None:
        self.n += 1
        match op:
            case "advance":
                self.now += arg
            case "timer" if self.run.timer_due is not None:
                self.now = max(self.now, self.run.timer_due + arg)
                ev = F.TimerFired(id=f"timer{self.run.visit}", due=self.run.timer_due, visit=self.run.visit)
                self.timers.append(ev)
                self.feed(ev)
            case "replay_timer" if self.timers:
                self.feed(self.timers[arg % len(self.timers)])
            case "replay" if self.events:
                assert self.feed(self.events[arg % len(self.events)]) == []
            case "exit":
                self.feed(F.ShopEvent(id=f"x{self.n}", kind="order_placed", object_id="o9"))
            case "optout" if arg == 0:
                self.feed(F.OptOut(id=f"s{self.n}"))
            case "reply":
                texts = answers(self.f)
                self.feed(F.Reply(id=f"r{self.n}", text=texts[arg % len(texts)]))
            case "click" if self.keys:
                keys = sorted(self.keys)
                self.feed(F.Click(id=f"k{self.n}", key=keys[arg % len(keys)]))
            case "viewed":
                self.feed(F.ShopEvent(id=f"v{self.n}", kind="custom", name="viewed"))


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(sorted(FLOWS)), st.lists(op_st, max_size=60))
def test_sends_at_most_once_per_visit_replays_change_nothing_timers_never_early(name, ops) -> None:
    d = Driver(FLOWS[name], T0)
    for op, arg in ops:
        d.do(op, arg)
    # keys are run id + visit number, and each visit number is used by one node only
    visits = [int(k.rsplit(":", 1)[1]) for k in d.keys]
    assert len(visits) == len(set(visits)) and all(k.startswith(d.run.id + ":") for k in d.keys)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["abandoned_cart", "win_back", "nag", "welcome", "post_delivery_survey"]),
       st.lists(op_st, max_size=20), st.floats(0.001, 3600.0), st.floats(0.0, 86_400.0),
       st.sampled_from(["exit", "optout"]))  # fmt: skip
def test_an_exit_before_a_due_send_prevents_it(name, ops, before, lag, kind) -> None:
    f = FLOWS[name]
    if kind == "exit" and not f.exits:
        kind = "optout"
    d = Driver(f, T0)
    for op, arg in ops:
        d.do(op, arg)
    if d.run.timer_due is None or d.run.timer_due - before <= d.now:
        return
    due = d.run.timer_due
    d.now = due - before
    d.do(kind, 0)
    assert d.ended and d.run.ended in ("opted_out", "exit:order_placed")
    d.now = due + lag
    sent_before = set(d.keys)
    d.feed(F.TimerFired(id="late", due=due, visit=d.run.visit))
    assert set(d.keys) == sent_before


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FLOWS)), st.lists(op_st, max_size=30), st.floats(0.0005, 86_400.0))
def test_timers_never_fire_early(name, ops, early) -> None:
    d = Driver(FLOWS[name], T0)
    for op, arg in ops:
        d.do(op, arg)
    if d.run.timer_due is None:
        return
    ev = F.TimerFired(id="t", due=d.run.timer_due, visit=d.run.visit)
    assert F.step(d.f, d.run, ev, d.run.timer_due - early) == (d.run, [])


def _v2(obj: dict) -> dict:
    """A new version that renames every node, changes templates and waits: nothing of v1 fits it."""
    new = msgspec.json.decode(msgspec.json.encode(obj))
    ren = {nid: f"v2_{nid}" for nid in new["nodes"]}
    for node in new["nodes"].values():
        for ref in ("next", "timeout_next", "other", "then", "else", "yes", "no", "send"):
            if node.get(ref) is not None:
                node[ref] = ren[node[ref]]
        for arm in node.get("choices", []) + node.get("arms", []):
            if arm.get("next") is not None:
                arm["next"] = ren[arm["next"]]
    new["nodes"] = {ren[k]: v for k, v in new["nodes"].items()}
    new["entry"] = ren[new["entry"]]
    new["version"] = 2
    for node in new["nodes"].values():
        if node.get("type") == "send":
            node["template"] = "b"
        for key in ("seconds", "timeout_seconds"):
            if key in node:
                node[key] = node[key] // 2 + 1
    return new


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["abandoned_cart", "nag", "post_delivery_survey", "sms_quiz"]),
       st.lists(st.tuples(st.integers(0, 5), op_st), max_size=60))  # fmt: skip
def test_a_new_version_does_not_corrupt_runs_of_the_old_one(name, ops) -> None:
    v1 = FLOWS[name]
    v2 = F.parse_flow(_v2(library().get(name, NAG)), templates=TEMPLATES)
    versions = {1: v1, 2: v2}
    # world A: three v1 runs, then v2 is published and three v2 runs start; runs are stored as JSON
    # between steps and stepped with the definition of *their* version
    world = [Driver(v1, T0) for _ in range(3)]
    control = [Driver(v1, T0) for _ in range(3)]  # world B: v2 never published
    for i, (who, (op, arg)) in enumerate(ops):
        if i == len(ops) // 2:
            world += [Driver(v2, T0) for _ in range(3)]
        d = world[who % len(world)]
        d.run = RUN_DECODER.decode(msgspec.json.encode(d.run))
        d.f = versions[d.run.version]
        d.do(op, arg)
        if who % len(world) < 3:
            control[who % len(world)].do(op, arg)
    for a, b in zip(world[:3], control):
        assert a.run == b.run and a.keys == b.keys
        assert all(template != "b" or name == "nag" for _, template in a.keys.values())
        if a.run.node is not None:
            with pytest.raises(F.FlowError) as info:
                F.step(v2, a.run, F.OptOut(id="x"), a.now)
            assert info.value.code == "flow.version_mismatch"
