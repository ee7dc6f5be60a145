"""A flow version compiled once (``flows.compiled``) decides exactly as the interpreted forms.

The engine steps runs through closures made once per version (trigger, exit rules, branch
conditions); ``matches_trigger``, ``_exits`` and ``holds`` stay the reference. Hypothesis compares
them on generated conditions (nested all / any / not, every operator, fields that exist, are
missing, are null, are mistyped or are custom attributes), contexts, triggers and events; a test
also checks the cache: one compiled form per ``Flow`` object, a new version gets its own."""

from __future__ import annotations

import typing

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import flows as F

FIELDS = ["trigger.value", "trigger.url", "trigger.kind", "trigger.missing", "subscriber.country",
          "subscriber.size", "subscriber.attributes.size", "subscriber.orders_count", "subscriber.tags",
          "subscriber.nested.deep", "subscriber.attributes.x.y", "trigger.payload.a"]  # fmt: skip
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, 1.5, -2.5]),
                   st.sampled_from(["", "US", "M", "x"]))  # fmt: skip
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([0.0, 1.5, -2.5]))
TAGS = st.sampled_from(["vip", "sends", "none"])


def _cmp(op: type) -> st.SearchStrategy:
    return st.builds(op, field=st.sampled_from(FIELDS), value=NUMBERS if op in (F.Gt, F.Gte, F.Lt, F.Lte) else VALUES)


LEAVES = st.one_of(*[_cmp(op) for op in (F.Eq, F.Ne, F.Gt, F.Gte, F.Lt, F.Lte, F.Exists)], st.builds(F.HasTag, tag=TAGS))
CONDITIONS = st.recursive(LEAVES, lambda inner: st.one_of(
    st.builds(F.All, items=st.lists(inner, max_size=3).map(tuple)),
    st.builds(F.AnyOf, items=st.lists(inner, max_size=3).map(tuple)),
    st.builds(F.Not, item=inner)), max_leaves=8)  # fmt: skip

SCALARS = st.one_of(VALUES, st.just([1, 2]))
CONTEXTS = st.fixed_dictionaries({
    "trigger": st.dictionaries(st.sampled_from(["value", "url", "kind", "payload"]),
                               st.one_of(SCALARS, st.fixed_dictionaries({"a": VALUES}))),
    "subscriber": st.fixed_dictionaries(
        {"tags": st.lists(TAGS, max_size=2), "attributes": st.dictionaries(st.sampled_from(["size", "x"]),
                                                                            st.one_of(SCALARS, st.just({"y": 1})))},
        optional={"country": VALUES, "orders_count": VALUES, "size": VALUES, "nested": st.just({"deep": 1})}),
})  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(CONDITIONS, CONTEXTS)
def test_a_compiled_condition_holds_exactly_when_the_interpreted_one_does(cond, context) -> None:
    assert F.compile_condition(cond)(context) is F.holds(cond, context)


TRIGGERS = st.one_of(
    st.builds(F.Subscribed, source=st.sampled_from([None, "popup", "keyword"])), st.just(F.CheckoutAbandoned()),
    st.just(F.CheckoutCompleted()),
    st.builds(F.OrderStatus, status=st.sampled_from(["placed", "paid", "fulfilled", "delivered"])),
    st.builds(F.Birthday, days_before=st.integers(0, 2)), st.builds(F.NoOrder, days=st.integers(1, 2)),
    st.builds(F.SegmentEntered, segment=st.sampled_from(["s1", "s2"])),
    st.builds(F.CustomTrigger, name=st.sampled_from(["go", "t"])),
    st.builds(F.KeywordTrigger, keywords=st.lists(st.sampled_from(["JOIN", "quiz", "２"]), max_size=2).map(tuple)))  # fmt: skip
KINDS = st.sampled_from(typing.get_args(F.ShopKind))  # every kind, a new one included
NAMES = st.sampled_from([None, "popup", "keyword", "s1", "s2", "go", "t"])
SHOP_EVENTS = st.builds(
    F.ShopEvent, id=st.just("e"), kind=KINDS, name=NAMES, object_id=st.sampled_from([None, "c1", "c2"]),
    payload=st.fixed_dictionaries({}, optional={"days_before": st.integers(0, 2), "days": st.integers(1, 2)}))
EVENTS = st.one_of(
    SHOP_EVENTS,
    st.builds(F.Reply, id=st.just("r"), text=st.sampled_from(["join", " JOIN! ", "2", "quiz me", "", "hello"])),
    st.builds(F.Click, id=st.just("k"), key=st.just("x")), st.builds(F.OptOut, id=st.just("o")),
    st.builds(F.TimerFired, id=st.just("t"), due=st.just(1.0), visit=st.just(1)))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(TRIGGERS, EVENTS)
def test_a_compiled_trigger_matches_exactly_when_the_interpreted_one_does(trigger, event) -> None:
    assert F.compile_trigger(trigger)(event) is F.matches_trigger(trigger, event)


EXITS = st.lists(st.builds(F.ExitRule, event=KINDS, name=NAMES, same_object=st.booleans()), max_size=4).map(tuple)


def _flow(exits: tuple = (), condition: F.Condition | None = None, version: int = 1) -> F.Flow:
    nodes: dict = {"w": F.WaitNode(seconds=60)}
    if condition is not None:
        nodes = {"b": F.BranchNode(condition=condition, then="w", otherwise=None), **nodes}
    return F.Flow(id="f", version=version, name="F", trigger=F.CheckoutAbandoned(), entry=next(iter(nodes)),
                  nodes=nodes, exits=exits)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(EXITS, SHOP_EVENTS, st.sampled_from([None, "c1", "c2"]))
def test_compiled_exit_rules_end_a_run_exactly_when_the_interpreted_ones_do(exits, event, object_id) -> None:
    flow = _flow(exits)
    run = F.Run(id="f:1:e", flow_id="f", version=1, subscriber_id=1, started_at=0.0, object_id=object_id, node="w")
    assert F.compiled(flow).exits(run, event) is F._exits(flow, run, event)


def test_one_compiled_form_per_flow_object_and_each_version_its_own() -> None:
    v1 = _flow(condition=F.Gt(field="trigger.value", value=100))
    v2 = _flow(condition=F.Lt(field="trigger.value", value=100), version=2)
    assert F.compiled(v1) is F.compiled(v1)
    assert F.compiled(v2) is not F.compiled(v1)
    # the same definition parsed again is another object: compiled again, deciding the same
    again = F.parse_flow(msgspec.json.encode(F.dump_flow(v1)))
    assert F.compiled(again) is not F.compiled(v1)
    ctx = {"trigger": {"value": 150}, "subscriber": {"tags": [], "attributes": {}}}
    assert F.compiled(again).conditions["b"](ctx) and F.compiled(v1).conditions["b"](ctx)
    assert not F.compiled(v2).conditions["b"](ctx)
    # and the engine branches by them: over 100 waits, else the run ends
    event = F.ShopEvent(id="c", kind="checkout_abandoned", payload={"value": 150})
    sub = F.FlowSubscriber(id=1)
    assert F.start(v1, sub, event, 0.0)[0].node == "w"
    assert F.start(v2, sub, event, 0.0)[0].node is None


# ---- a run's snapshot holds what its version reads ---------------------------------------------
PROFILE = st.fixed_dictionaries(
    {"attributes": st.dictionaries(st.sampled_from(["size", "x", "country"]), st.one_of(SCALARS, st.just({"y": 1})))},
    optional={f: VALUES for f in ("country", "city", "first_name", "language", "orders_count", "size", "email",
                                  "total_spent", "time_zone")} | {"nested": st.just({"deep": 1})})  # fmt: skip
SNAP_FIELDS = FIELDS + ["subscriber.city", "subscriber.first_name", "subscriber.email.x"]
SNAP_CONDITIONS = st.recursive(
    st.one_of(*[st.builds(op, field=st.sampled_from(SNAP_FIELDS), value=VALUES) for op in (F.Eq, F.Ne, F.Exists)],
              st.builds(F.HasTag, tag=TAGS)),
    lambda inner: st.one_of(st.builds(F.All, items=st.lists(inner, max_size=3).map(tuple)),
                            st.builds(F.Not, item=inner)), max_leaves=6)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(SNAP_CONDITIONS, PROFILE, st.lists(TAGS, max_size=2, unique=True))
def test_a_run_snapshots_every_field_its_version_can_read(cond, profile, tags) -> None:
    """The snapshot a run keeps (``snapshot_fields``) decides every branch as the whole subscriber
    would, and carries what a send is rendered from."""
    flow = F.parse_flow({"id": "f", "version": 1, "name": "f", "trigger": {"type": "custom", "name": "go"},
                         "entry": "b", "nodes": {"b": {"type": "branch", "condition": msgspec.to_builtins(cond),
                                                       "then": "yes", "else": "no"},
                                                 "yes": {"type": "send", "template": "y"},
                                                 "no": {"type": "send", "template": "n"}}})  # fmt: skip
    sub = F.FlowSubscriber(id=7, time_zone=profile.get("time_zone"), tags=tuple(tags), fields=profile)
    run, actions = F.start(flow, sub, F.ShopEvent(id="e", kind="custom", name="go"), 1.0)
    assert run is not None
    whole = {"subscriber": dict(profile) | {"tags": list(tags), "time_zone": sub.time_zone},
             "trigger": run.context["trigger"]}
    send = next(a for a in actions if isinstance(a, F.Send))
    assert send.template == ("y" if F.holds(cond, whole) else "n")
    snap = send.context["subscriber"]
    for name in F.SNAPSHOT_ALWAYS:
        assert snap.get(name) == whole["subscriber"].get(name)
    # and a run row is as small as that: nothing of the subscriber that no condition names
    named = {f.split(".")[1] for f in _fields(cond) if f.startswith("subscriber.")}
    assert set(snap) <= set(F.SNAPSHOT_ALWAYS) | named


def _fields(cond: F.Condition) -> list[str]:
    match cond:
        case F.All() | F.AnyOf():
            return [f for c in cond.items for f in _fields(c)]
        case F.Not():
            return _fields(cond.item)
        case F.HasTag():
            return []
    return [cond.field]
