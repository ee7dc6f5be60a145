"""Flows (drips and automations): a versioned JSON definition and the pure engine that runs it.

Theory of operation. A ``Flow`` is a trigger, a graph of nodes and exit rules. A ``Run`` is one
subscriber's journey through one *version* of a flow: the node it waits at, a visit counter, the
due time of its one timer, and a snapshot of the subscriber and trigger payload that branches read.
The engine never reads a clock and does no I/O::

    start(flow, subscriber, trigger_event, now, past=()) -> (Run | None, [Action])
    step(flow, run, event, now)                         -> (Run, [Action])

Events: ``TimerFired`` (the shell's due-time index fired), ``ShopEvent`` (order placed, checkout
abandoned or completed, custom ...), ``Reply``, ``Click``, ``OptOut``. Actions: ``Send`` (its ``key`` =
run id + node visit is the gateway Idempotency-Key), ``SetTimer``, ``UpdateSubscriber``,
``CallWebhook``, ``Ended``, ``NotEntered``. Rules the property tests hold the engine to:

- every node visit has its own number, so a send is keyed once; a replayed event (same ``id``) or
  a replayed timer (an older ``visit``) changes nothing;
- a timer event before its due (``now < run.timer_due``) is ignored: timers never fire early;
- an exit event or an opt-out ends the run at once; the pending timer is dead with it;
- ``step`` refuses a flow whose id/version differ from the run's (``flow.version_mismatch``): a
  published new version never re-interprets a run of the old one; the shell keeps every version.

Errors: ``FlowError(code, path, message)`` (an ``InvalidInput``)::

    flow.schema | flow.bad_reference | flow.unknown_template | flow.unreachable |
    flow.loop_without_wait | flow.bad_value | flow.too_large | flow.too_deep | flow.version_mismatch
"""

from __future__ import annotations

import datetime as dt
import hashlib
import operator
import re
import unicodedata
import zoneinfo
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Annotated, Any, Literal, Union

import msgspec

from campaigns.errors import InvalidInput

__all__ = [
    "Action", "CallWebhook", "Click", "Ended", "Entry", "Event", "Flow", "FlowError", "FlowSubscriber",
    "NotEntered", "OptOut", "Reply", "Run", "Send", "SetTimer", "ShopEvent", "TimerFired", "UpdateSubscriber",
    "Compiled", "compile_condition", "compile_trigger", "compiled", "dump_flow", "match_reply", "matches_trigger", "next_local_time", "parse_flow", "start", "step",
]  # fmt: skip

DAY = 86_400.0
MAX_NODES = 200
MAX_DEPTH = 32  # JSON nesting of a whole definition (conditions are the deep part)
MAX_SEEN = 64  # event ids a run remembers, for replays
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")]
Seconds = Annotated[int, msgspec.Meta(ge=1, le=366 * 86_400)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
ShopKind = Literal["subscribed", "checkout_abandoned", "checkout_completed", "order_placed", "order_paid",
                   "order_fulfilled", "order_delivered", "birthday", "no_order", "segment_entered", "custom"]  # fmt: skip


class FlowError(InvalidInput):
    """A flow definition is invalid, or a run was stepped with another version; ``path`` names where."""

    def __init__(self, code: str, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}", code=code, field=path)
        self.path = path
        self.reason = message


# ``gc=False`` on the definitions, events, runs and actions: they hold only JSON values (no cycle can
# form) and a drain makes several per input; tracked, they were what set off the cyclic collector,
# 8 % of a drain's samples (py-spy --native, ``sluice bench flows --subscribers 20000``).
class _S(msgspec.Struct, frozen=True, gc=False, kw_only=True, forbid_unknown_fields=True):
    pass


# ---- triggers ---------------------------------------------------------------------------------


class Subscribed(_S, tag="subscribed", tag_field="type", kw_only=True):
    source: Name | None = None  # keyword, popup, checkout, social ...; None: any


class CheckoutAbandoned(_S, tag="checkout_abandoned", tag_field="type", kw_only=True):
    pass


class CheckoutCompleted(_S, tag="checkout_completed", tag_field="type", kw_only=True):
    pass  # the checkout was paid, by an order naming it (under any phone) or a completed checkout event


class OrderStatus(_S, tag="order", tag_field="type", kw_only=True):
    status: Literal["placed", "paid", "fulfilled", "delivered"]


class Birthday(_S, tag="birthday", tag_field="type", kw_only=True):
    days_before: Annotated[int, msgspec.Meta(ge=0, le=366)] = 0


class NoOrder(_S, tag="no_order", tag_field="type", kw_only=True):
    days: Annotated[int, msgspec.Meta(ge=1, le=3650)]


class SegmentEntered(_S, tag="segment_entered", tag_field="type", kw_only=True):
    segment: Name


class CustomTrigger(_S, tag="custom", tag_field="type", kw_only=True):
    name: Name


class KeywordTrigger(_S, tag="keyword", tag_field="type", kw_only=True):
    keywords: tuple[Name, ...] = ()  # empty: any reply


Trigger = Union[Subscribed, CheckoutAbandoned, CheckoutCompleted, OrderStatus, Birthday, NoOrder, SegmentEntered,
                CustomTrigger, KeywordTrigger]  # fmt: skip


# ---- conditions (branch) ------------------------------------------------------------------------


class _Cmp(_S, tag_field="op", kw_only=True):
    field: Name  # "trigger.value", "subscriber.country", "subscriber.attributes.size"
    value: str | int | float | bool | None = None


class Eq(_Cmp, tag="eq", kw_only=True):
    pass


class Ne(_Cmp, tag="ne", kw_only=True):
    pass


class Gt(_Cmp, tag="gt", kw_only=True):
    pass


class Gte(_Cmp, tag="gte", kw_only=True):
    pass


class Lt(_Cmp, tag="lt", kw_only=True):
    pass


class Lte(_Cmp, tag="lte", kw_only=True):
    pass


class Exists(_Cmp, tag="exists", kw_only=True):
    pass


class HasTag(_S, tag="has_tag", tag_field="op", kw_only=True):
    tag: Name


class All(_S, tag="all", tag_field="op", kw_only=True):
    items: tuple[Condition, ...]


class AnyOf(_S, tag="any", tag_field="op", kw_only=True):
    items: tuple[Condition, ...]


class Not(_S, tag="not", tag_field="op", kw_only=True):
    item: Condition


Condition = Union[Eq, Ne, Gt, Gte, Lt, Lte, Exists, HasTag, All, AnyOf, Not]


# ---- nodes --------------------------------------------------------------------------------------


class SendNode(_S, tag="send", tag_field="type", kw_only=True):
    template: Name  # a template id of campaigns/core/templates.py
    channel: Literal["sms", "mms"] = "sms"
    media_url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2000)] | None = None
    next: NodeId | None = None  # None: the run ends after this node


class WaitNode(_S, tag="wait", tag_field="type", kw_only=True):
    seconds: Seconds
    next: NodeId | None = None


class WaitUntilNode(_S, tag="wait_until", tag_field="type", kw_only=True):
    time: Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]  # local, subscriber's zone
    next: NodeId | None = None


class WaitEventNode(_S, tag="wait_event", tag_field="type", kw_only=True):
    event: ShopKind
    name: Name | None = None  # custom event name / segment id, when the kind has one
    timeout_seconds: Seconds
    next: NodeId | None = None
    timeout_next: NodeId | None = None


class Choice(_S, kw_only=True):
    keywords: tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], ...]
    next: NodeId | None = None


class ReplyNode(_S, tag="reply", tag_field="type", kw_only=True):
    """Wait for a reply and branch on it (keyword branches, survey answers, quiz steps)."""

    timeout_seconds: Seconds
    choices: tuple[Choice, ...]
    other: NodeId | None = None  # a reply no choice matches; None: it goes to the inbox, keep waiting
    timeout_next: NodeId | None = None
    save_as: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] | None = None


class BranchNode(_S, tag="branch", tag_field="type", kw_only=True):
    condition: Condition
    then: NodeId | None = None
    otherwise: NodeId | None = msgspec.field(default=None, name="else")


class ClickedNode(_S, tag="clicked", tag_field="type", kw_only=True):
    """Branch on whether the subscriber clicked a link of the send node ``send`` (waiting up to
    ``wait_seconds`` for the click when it has not come yet)."""

    send: NodeId
    wait_seconds: Annotated[int, msgspec.Meta(ge=0, le=366 * 86_400)] = 0
    yes: NodeId | None = None
    no: NodeId | None = None


class Arm(_S, kw_only=True):
    weight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    next: NodeId | None = None


class SplitNode(_S, tag="split", tag_field="type", kw_only=True):
    arms: Annotated[tuple[Arm, ...], msgspec.Meta(min_length=2, max_length=26)]


Scalar = Union[str, int, float, bool, None]


class UpdateNode(_S, tag="update", tag_field="type", kw_only=True):
    add_tags: tuple[Name, ...] = ()
    remove_tags: tuple[Name, ...] = ()
    set_attributes: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], Scalar] = {}
    next: NodeId | None = None


class WebhookNode(_S, tag="webhook", tag_field="type", kw_only=True):
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=2000)]
    next: NodeId | None = None


class EndNode(_S, tag="end", tag_field="type", kw_only=True):
    pass


Node = Union[SendNode, WaitNode, WaitUntilNode, WaitEventNode, ReplyNode, BranchNode, ClickedNode, SplitNode,
             UpdateNode, WebhookNode, EndNode]  # fmt: skip
WAITING = (WaitNode, WaitUntilNode, WaitEventNode, ReplyNode)  # always wait >= 1 s before moving on
# A loop with a wait in it is a valid flow (a reminder every week until an order exits the run), but a
# run must not go on for ever: its stored ``sent`` map grows with every send and is rewritten at every
# step, and a loop of a send and a short wait would text a person without end. A run ends
# ``limit:sends`` at its MAX_RUN_SENDS + 1st send (not sent) and ``limit:visits`` at its
# MAX_RUN_VISITS + 1st node visit.
MAX_RUN_SENDS = 200
MAX_RUN_VISITS = 10_000


class ExitRule(_S, kw_only=True):
    event: ShopKind
    name: Name | None = None
    same_object: bool = False  # only the trigger's object (this checkout, this order) ends the run


class Reentry(_S, kw_only=True):
    rule: Literal["always", "once_ever", "once_per_days", "once_per_object"] = "once_per_object"
    days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class Flow(_S, kw_only=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
    version: Annotated[int, msgspec.Meta(ge=1)]
    name: Name
    trigger: Trigger
    entry: NodeId
    nodes: dict[NodeId, Node]
    exits: tuple[ExitRule, ...] = ()  # an opt-out always ends every run; it need not be listed
    reentry: Reentry = Reentry()
    transactional: bool = False  # shipping/delivery notices: the gateway exempts them from caps
    time_zone: Name = "UTC"  # for wait_until when the subscriber has no zone


# ---- parse and validate -------------------------------------------------------------------------

_PATH = re.compile(r"at `(\$[^`]*)`")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def parse_flow(obj: Any, templates: Collection[str] | None = None) -> Flow:
    """A validated ``Flow`` from its JSON object (or JSON bytes). ``templates``: the tenant's known
    template ids; every send must use one of them (``None`` skips that one check, e.g. for a draft
    whose templates are not written yet; a flow is switched on only after a check with them)."""
    if isinstance(obj, (bytes, str)):
        try:
            obj = msgspec.json.decode(obj)
        except msgspec.DecodeError as exc:
            raise FlowError("flow.schema", "$", f"not JSON: {exc}") from exc
        except RecursionError as exc:
            raise FlowError("flow.too_deep", "$", f"JSON nests more than {MAX_DEPTH} deep") from exc
    _depth_guard(obj)
    if isinstance(obj, dict) and isinstance(obj.get("nodes"), dict):
        for nid, raw in obj["nodes"].items():  # first node by node, so an error names the node id
            _convert(raw, Node, f"$.nodes.{nid}")
    flow = _convert(obj, Flow, "$")
    _validate(flow, None if templates is None else frozenset(templates))
    return flow


def _depth_guard(obj: Any) -> None:
    """Refuse absurd nesting before anything recurses over it (conditions nest; nothing else deeply)."""
    todo: list[tuple[Any, str, int]] = [(obj, "$", 0)]
    while todo:
        value, path, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise FlowError("flow.too_deep", path, f"JSON nests more than {MAX_DEPTH} deep")
        if isinstance(value, dict):
            todo.extend((v, f"{path}.{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))


def _convert(obj: Any, type_: Any, prefix: str) -> Any:
    try:
        return msgspec.convert(obj, type_)
    except msgspec.ValidationError as exc:
        m = _PATH.search(str(exc))
        path = prefix + (m.group(1)[1:] if m else "")
        unknown = _UNKNOWN.search(str(exc))
        if unknown:
            path += f".{unknown.group(1)}"
        raise FlowError("flow.schema", path, _PATH.sub(f"at `{path}`", str(exc))) from exc


def dump_flow(flow: Flow) -> Any:
    return msgspec.to_builtins(flow)


def successors(node: Node) -> list[tuple[str, str | None]]:
    """(field, target) pairs of a node's outgoing edges; ``None`` targets end the run."""
    match node:
        case WaitEventNode():
            return [("next", node.next), ("timeout_next", node.timeout_next)]
        case ReplyNode():
            choices = [(f"choices[{i}].next", c.next) for i, c in enumerate(node.choices)]
            return [*choices, ("other", node.other), ("timeout_next", node.timeout_next)]
        case BranchNode():
            return [("then", node.then), ("else", node.otherwise)]
        case ClickedNode():
            return [("yes", node.yes), ("no", node.no)]
        case SplitNode():
            return [(f"arms[{i}].next", a.next) for i, a in enumerate(node.arms)]
        case EndNode():
            return []
        case _:
            return [("next", node.next)]


def _validate(flow: Flow, templates: frozenset[str] | None) -> None:
    if len(flow.nodes) > MAX_NODES:
        raise FlowError("flow.too_large", "$.nodes", f"a flow has at most {MAX_NODES} nodes")
    try:
        zoneinfo.ZoneInfo(flow.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise FlowError("flow.bad_value", "$.time_zone", f"unknown time zone {flow.time_zone!r}") from exc
    if flow.entry not in flow.nodes:
        raise FlowError("flow.bad_reference", "$.entry", f"no node {flow.entry!r}")
    for nid, node in flow.nodes.items():
        path = f"$.nodes.{nid}"
        for field, target in successors(node):
            if target is not None and target not in flow.nodes:
                raise FlowError("flow.bad_reference", f"{path}.{field}", f"no node {target!r}")
        match node:
            case SendNode() if templates is not None and node.template not in templates:
                raise FlowError("flow.unknown_template", f"{path}.template", f"unknown template {node.template!r}")
            case ClickedNode() if not isinstance(flow.nodes.get(node.send), SendNode):
                raise FlowError("flow.bad_reference", f"{path}.send", f"{node.send!r} is not a send node")
            case ReplyNode() if not node.choices:
                raise FlowError("flow.bad_value", f"{path}.choices", "at least one choice")
            case ReplyNode():
                for i, c in enumerate(node.choices):
                    if not c.keywords or any(not _norm(k) for k in c.keywords):
                        raise FlowError("flow.bad_value", f"{path}.choices[{i}].keywords", "non-blank keywords")
            case BranchNode():
                _check_condition(node.condition, f"{path}.condition")
    _check_reachable(flow)
    _check_loops(flow)
    if flow.reentry.rule == "once_per_days" and flow.reentry.days is None:
        raise FlowError("flow.bad_value", "$.reentry.days", "once_per_days needs days")


_FIELD = re.compile(r"^(trigger|subscriber)(\.[A-Za-z0-9_]{1,64}){1,3}$")


def _check_condition(cond: Condition, path: str) -> None:
    match cond:
        case All() | AnyOf():
            for i, c in enumerate(cond.items):
                _check_condition(c, f"{path}.items[{i}]")
        case Not():
            _check_condition(cond.item, f"{path}.item")
        case HasTag():
            pass
        case _:
            if not _FIELD.match(cond.field):
                raise FlowError("flow.bad_value", f"{path}.field",
                                "expected trigger.<key> or subscriber.<field> (dotted, up to 3 keys)")  # fmt: skip
            if isinstance(cond, (Gt, Gte, Lt, Lte)) and (isinstance(cond.value, bool) or not isinstance(cond.value, (int, float))):
                raise FlowError("flow.bad_value", f"{path}.value", "an ordering comparison needs a number")


def _check_reachable(flow: Flow) -> None:
    seen = {flow.entry}
    todo = [flow.entry]
    while todo:
        for _, target in successors(flow.nodes[todo.pop()]):
            if target is not None and target not in seen:
                seen.add(target)
                todo.append(target)
    for nid in flow.nodes:
        if nid not in seen:
            raise FlowError("flow.unreachable", f"$.nodes.{nid}", f"node {nid!r} cannot be reached from the entry")


def _check_loops(flow: Flow) -> None:
    """A cycle through nodes none of which waits would run forever in one step: refuse it."""
    graph = {nid: [t for _, t in successors(n) if t is not None and not isinstance(flow.nodes[t], WAITING)]
             for nid, n in flow.nodes.items() if not isinstance(n, WAITING)}  # fmt: skip
    state: dict[str, int] = {}
    for root in graph:
        if state.get(root):
            continue
        stack = [(root, iter(graph[root]))]
        state[root] = 1
        while stack:
            nid, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[nid] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise FlowError("flow.loop_without_wait", f"$.nodes.{nxt}",
                                f"a loop through {nxt!r} has no wait node in it")  # fmt: skip
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))


# ---- runs, events, actions ----------------------------------------------------------------------


class FlowSubscriber(_S, kw_only=True):
    """What a run snapshots of its subscriber when it starts (branches read it; updates change it)."""

    id: int
    time_zone: str | None = None
    tags: tuple[str, ...] = ()
    fields: dict[str, Any] = {}  # profile fields, stats, and ``attributes`` (a dict)

    @classmethod
    def from_model(cls, sub: Any, tags: Iterable[str] = (), stats: Any = None) -> FlowSubscriber:
        fields = {k: v for k, v in msgspec.structs.asdict(sub).items() if k not in ("tenant", "id")}
        if stats is not None:
            fields.update(msgspec.structs.asdict(stats))
        return cls(id=sub.id, time_zone=sub.time_zone, tags=tuple(sorted(set(tags))), fields=fields)


class Entry(_S, kw_only=True):
    """A past run of this flow for this subscriber (for re-entry rules)."""

    started_at: float
    object_id: str | None = None


class _E(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag_field="type"):
    id: str  # idempotency: a run applies one id once


class TimerFired(_E, tag="timer", kw_only=True):
    due: float
    visit: int


class ShopEvent(_E, tag="shop", kw_only=True):
    kind: ShopKind
    name: str | None = None  # custom event name, segment id, signup source
    object_id: str | None = None  # checkout id, order id
    payload: dict[str, Any] = {}


class Reply(_E, tag="reply", kw_only=True):
    text: str


class Click(_E, tag="click", kw_only=True):
    key: str  # the Send key whose link was clicked


class OptOut(_E, tag="opt_out", kw_only=True):
    pass


Event = Union[TimerFired, ShopEvent, Reply, Click, OptOut]


class Run(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """A run, as stored (JSON, in ``flow_runs.run``). ``omit_defaults``: a field at its default is not
    written (an empty ``sent``, no ``ended`` ...); decoding fills it in, so rows written before decode alike."""

    id: str
    flow_id: str
    version: int
    subscriber_id: int
    started_at: float
    object_id: str | None = None
    node: str | None  # None once ended
    visit: int = 0  # node visits so far; a Send's key is ``{id}:{visit}``
    timer_due: float | None = None
    waiting_since: float | None = None
    ended: str | None = None  # reason
    context: dict[str, Any] = {}  # {"subscriber": {...}, "trigger": {...}}
    sent: dict[str, str] = {}  # send key -> node id
    clicked: tuple[str, ...] = ()  # node ids of sends clicked
    seen: tuple[str, ...] = ()


class Send(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="send"):
    key: str
    run_id: str
    subscriber_id: int
    node: str
    template: str
    channel: str
    media_url: str | None
    transactional: bool
    context: dict[str, Any]


class SetTimer(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="set_timer"):
    run_id: str
    due: float
    visit: int


class UpdateSubscriber(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="update_subscriber"):
    key: str
    subscriber_id: int
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    set_attributes: dict[str, Any] = {}


class CallWebhook(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="call_webhook"):
    key: str
    url: str
    payload: dict[str, Any]


class Ended(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="ended"):
    run_id: str
    reason: str  # completed | opted_out | exit:<kind> | timeout


class NotEntered(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="not_entered"):
    reason: str  # trigger_mismatch | reentry.once_ever | reentry.once_per_days | reentry.once_per_object


Action = Union[Send, SetTimer, UpdateSubscriber, CallWebhook, Ended, NotEntered]


# ---- triggers and re-entry ----------------------------------------------------------------------


def matches_trigger(trigger: Trigger, event: Event) -> bool:
    match trigger, event:
        case KeywordTrigger(), Reply():
            return not trigger.keywords or _norm(event.text) in {_norm(k) for k in trigger.keywords}
        case _, ShopEvent():
            pass
        case _:
            return False
    match trigger:
        case Subscribed():
            return event.kind == "subscribed" and trigger.source in (None, event.name)
        case CheckoutAbandoned():
            return event.kind == "checkout_abandoned"
        case CheckoutCompleted():
            return event.kind == "checkout_completed"
        case OrderStatus():
            return event.kind == f"order_{trigger.status}"
        case Birthday():
            return event.kind == "birthday" and event.payload.get("days_before", 0) == trigger.days_before
        case NoOrder():
            return event.kind == "no_order" and event.payload.get("days") == trigger.days
        case SegmentEntered():
            return event.kind == "segment_entered" and event.name == trigger.segment
        case CustomTrigger():
            return event.kind == "custom" and event.name == trigger.name
    return False


def _reentry_refusal(flow: Flow, object_id: str | None, now: float, past: Sequence[Entry]) -> str | None:
    rule = flow.reentry
    match rule.rule:
        case "always":
            return None
        case "once_ever":
            return "reentry.once_ever" if past else None
        case "once_per_days":
            assert rule.days is not None
            return "reentry.once_per_days" if any(now - e.started_at < rule.days * DAY for e in past) else None
        case _:
            if object_id is None:  # nothing to be "per": at most one run at all
                return "reentry.once_per_object" if past else None
            return "reentry.once_per_object" if any(e.object_id == object_id for e in past) else None


def start(flow: Flow, subscriber: FlowSubscriber, trigger_event: Event, now: float,
          past: Sequence[Entry] = (), *, trace: list[str] | None = None) -> tuple[Run | None, list[Action]]:  # fmt: skip
    """Enter ``subscriber`` into ``flow`` for ``trigger_event`` (``past``: their earlier runs of it).

    The run id is derived from the flow, subscriber and trigger event id, so a replayed trigger
    yields the same run (the shell's insert is idempotent on it). ``trace``, when given, collects
    the node ids visited (the simulation counts them)."""
    if not compiled(flow).trigger(trigger_event):
        return None, [NotEntered(reason="trigger_mismatch")]
    object_id = trigger_event.object_id if isinstance(trigger_event, ShopEvent) else None
    refusal = _reentry_refusal(flow, object_id, now, past)
    if refusal:
        return None, [NotEntered(reason=refusal)]
    trigger: dict[str, Any] = {"id": trigger_event.id, "object_id": object_id}
    if isinstance(trigger_event, ShopEvent):  # the payload cannot shadow the event's own fields
        trigger = trigger_event.payload | trigger | {"kind": trigger_event.kind, "name": trigger_event.name}
    elif isinstance(trigger_event, Reply):
        trigger |= {"kind": "reply", "text": trigger_event.text}
    keep, fields = compiled(flow).snapshot, subscriber.fields  # only what this version can read (``snapshot_fields``)
    snap = (dict(fields) if keep is None else {k: fields[k] for k in keep if k in fields}) | {
        "tags": list(subscriber.tags), "time_zone": subscriber.time_zone}
    snap["attributes"] = dict(snap.get("attributes") or {})
    run = Run(id=f"{flow.id}:{subscriber.id}:{trigger_event.id}", flow_id=flow.id, version=flow.version,
              subscriber_id=subscriber.id, started_at=now, object_id=object_id, node=flow.entry,
              context={"subscriber": snap, "trigger": trigger}, seen=(trigger_event.id,))  # fmt: skip
    actions: list[Action] = []
    return _advance(flow, run, flow.entry, now, actions, trace), actions


# ---- the engine ---------------------------------------------------------------------------------


def step(flow: Flow, run: Run, event: Event, now: float, *, trace: list[str] | None = None) -> tuple[Run, list[Action]]:
    """Apply ``event`` at ``now`` to ``run``; ``flow`` must be the version the run started on."""
    if flow.id != run.flow_id or flow.version != run.version:
        raise FlowError("flow.version_mismatch", "$.version",
                        f"run {run.id} belongs to {run.flow_id} v{run.version}, not {flow.id} v{flow.version}")  # fmt: skip
    if run.node is None or (not isinstance(event, TimerFired) and event.id in run.seen):
        return run, []
    if isinstance(event, TimerFired):
        if event.visit != run.visit or run.timer_due is None or now < run.timer_due:
            return run, []  # stale (a replay, an older timer) or early: never fire before due
    else:
        run = msgspec.structs.replace(run, seen=(run.seen + (event.id,))[-MAX_SEEN:])
    actions: list[Action] = []
    node = flow.nodes[run.node]
    match event:
        case OptOut():
            return _end(run, "opted_out", actions), actions
        case ShopEvent() if compiled(flow).exits(run, event):
            return _end(run, f"exit:{event.kind}", actions), actions
        case TimerFired():
            target = _on_timeout(node)
            return _go(flow, run, target, now, actions, trace), actions
        case ShopEvent() if isinstance(node, WaitEventNode) and event.kind == node.event and node.name in (None, event.name):
            return _go(flow, run, node.next, now, actions, trace), actions
        case Reply() if isinstance(node, ReplyNode):
            return _on_reply(flow, run, node, event, now, actions, trace), actions
        case Click() if event.key in run.sent:
            sent_node = run.sent[event.key]
            if sent_node not in run.clicked:
                run = msgspec.structs.replace(run, clicked=run.clicked + (sent_node,))
            if isinstance(node, ClickedNode) and node.send == sent_node:
                return _go(flow, run, node.yes, now, actions, trace), actions
    return run, actions


def _exits(flow: Flow, run: Run, event: ShopEvent) -> bool:
    return any(r.event == event.kind and r.name in (None, event.name)
               and (not r.same_object or event.object_id == run.object_id) for r in flow.exits)  # fmt: skip


def _on_timeout(node: Node) -> str | None:
    match node:
        case WaitEventNode() | ReplyNode():
            return node.timeout_next
        case ClickedNode():
            return node.no
        case WaitNode() | WaitUntilNode():
            return node.next
    return None  # pragma: no cover - only waiting nodes set timers


def _on_reply(flow: Flow, run: Run, node: ReplyNode, event: Reply, now: float, actions: list[Action],
              trace: list[str] | None) -> Run:  # fmt: skip
    index = match_reply(node, event.text)
    if index is None and node.other is None:
        return run  # not an answer: the inbox gets it (conversations.route_reply); keep waiting
    if node.save_as:
        answer = event.text.strip()[:200] if index is None else node.choices[index].keywords[0]
        actions.append(UpdateSubscriber(key=f"{run.id}:{run.visit}:answer", subscriber_id=run.subscriber_id,
                                        set_attributes={node.save_as: answer}))  # fmt: skip
        sub = run.context["subscriber"]
        ctx = run.context | {"subscriber": sub | {"attributes": sub["attributes"] | {node.save_as: answer}}}
        run = msgspec.structs.replace(run, context=ctx)
    return _go(flow, run, node.other if index is None else node.choices[index].next, now, actions, trace)


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().replace("\ufe0f", "")
    return text.strip(" \t\r\n.,!?;:'\"()[]")


def match_reply(node: ReplyNode, text: str) -> int | None:
    """Index of the choice a reply picks: its whole text, or its first word, equals a keyword
    (case, width, spaces and end punctuation ignored: "2", " 2. ", "２", "Yes!" and "yes please")."""
    t = _norm(text)
    if not t:
        return None
    first = _norm(t.split()[0])
    for i, c in enumerate(node.choices):
        keys = {_norm(k) for k in c.keywords}
        # an emoji answer may come repeated or unspaced ("😍😍", "😍thanks")
        if t in keys or first in keys or any(not k[0].isalnum() and t.startswith(k) for k in keys):
            return i
    return None


def _end(run: Run, reason: str, actions: list[Action]) -> Run:
    actions.append(Ended(run_id=run.id, reason=reason))
    return msgspec.structs.replace(run, node=None, timer_due=None, waiting_since=None, ended=reason)


def _go(flow: Flow, run: Run, target: str | None, now: float, actions: list[Action],
        trace: list[str] | None) -> Run:  # fmt: skip
    if target is None:
        return _end(run, "completed", actions)
    return _advance(flow, run, target, now, actions, trace)


def _advance(flow: Flow, run: Run, nid: str, now: float, actions: list[Action], trace: list[str] | None) -> Run:
    """Visit nodes from ``nid`` until one waits or the run ends. Validation forbids wait-less loops,
    so this visits each node at most once. What the visits change (the visit counter, the sends, the
    context) is kept in locals and the run rebuilt once, where it waits or ends: one struct per
    step, not three to five (the same run as rebuilding it at every visit)."""
    rid, sid, clicked = run.id, run.subscriber_id, run.clicked
    visit, sent, context = run.visit, run.sent, run.context
    nodes = flow.nodes
    for _ in range(len(nodes) + 1):
        node = nodes[nid]
        if visit >= MAX_RUN_VISITS or (isinstance(node, SendNode) and len(sent) >= MAX_RUN_SENDS):
            reason = "limit:visits" if visit >= MAX_RUN_VISITS else "limit:sends"
            actions.append(Ended(run_id=rid, reason=reason))
            return msgspec.structs.replace(run, node=None, visit=visit, sent=sent, context=context, timer_due=None,
                                           waiting_since=None, ended=reason)  # fmt: skip
        visit += 1
        if trace is not None:
            trace.append(nid)
        due: float | None = None
        target: str | None
        match node:
            case WaitNode():
                due = now + node.seconds
            case BranchNode():
                target = node.then if compiled(flow).conditions[nid](context) else node.otherwise
            case SendNode():
                key = f"{rid}:{visit}"
                actions.append(Send(key=key, run_id=rid, subscriber_id=sid, node=nid, template=node.template,
                                    channel=node.channel, media_url=node.media_url, transactional=flow.transactional,
                                    context=context))  # fmt: skip
                sent = sent | {key: nid}
                target = node.next
            case WaitUntilNode():
                zone = context["subscriber"].get("time_zone") or flow.time_zone
                due = next_local_time(now, node.time, zone, flow.time_zone)
            case WaitEventNode() | ReplyNode():
                due = now + node.timeout_seconds
            case ClickedNode() if node.send in clicked:
                target = node.yes
            case ClickedNode() if node.wait_seconds == 0:
                target = node.no
            case ClickedNode():
                due = now + node.wait_seconds
            case SplitNode():
                target = _pick_arm(node, f"{rid}:{nid}")
            case UpdateNode():
                actions.append(UpdateSubscriber(key=f"{rid}:{visit}", subscriber_id=sid, add_tags=node.add_tags,
                                                remove_tags=node.remove_tags, set_attributes=dict(node.set_attributes)))  # fmt: skip
                context = _apply_update(context, node)
                target = node.next
            case WebhookNode():
                actions.append(CallWebhook(key=f"{rid}:{visit}", url=node.url,
                                           payload={"run_id": rid, "flow_id": flow.id, "version": flow.version,
                                                    "node": nid, "subscriber_id": sid,
                                                    "trigger": context.get("trigger", {})}))  # fmt: skip
                target = node.next
            case EndNode():
                target = None
        if due is not None:
            actions.append(SetTimer(run_id=rid, due=due, visit=visit))
            return msgspec.structs.replace(run, node=nid, visit=visit, sent=sent, context=context, timer_due=due,
                                           waiting_since=now)  # fmt: skip
        if target is None:
            actions.append(Ended(run_id=rid, reason="completed"))
            return msgspec.structs.replace(run, node=None, visit=visit, sent=sent, context=context, timer_due=None,
                                           waiting_since=None, ended="completed")  # fmt: skip
        nid = target
    raise FlowError("flow.loop_without_wait", f"$.nodes.{nid}", "a loop ran without waiting")  # pragma: no cover


def _pick_arm(node: SplitNode, seed: str) -> str | None:
    """Deterministic by run id and node: the same run always takes the same arm."""
    total = sum(a.weight for a in node.arms)
    point = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") % total
    for arm in node.arms:
        if point < arm.weight:
            return arm.next
        point -= arm.weight
    return node.arms[-1].next  # pragma: no cover


def _apply_update(context: dict[str, Any], node: UpdateNode) -> dict[str, Any]:
    sub = context["subscriber"]
    tags = sorted((set(sub.get("tags", ())) | set(node.add_tags)) - set(node.remove_tags))
    return context | {"subscriber": sub | {"tags": tags, "attributes": sub["attributes"] | node.set_attributes}}


# ---- conditions ---------------------------------------------------------------------------------

_MISSING = object()


def _lookup(context: dict[str, Any], dotted: str) -> Any:
    head, *rest = dotted.split(".")
    value: Any = context.get(head, _MISSING)
    for i, key in enumerate(rest):
        if head == "subscriber" and i == 0 and key not in value and key in value.get("attributes", {}):
            value = value["attributes"]  # "subscriber.size" reads a custom attribute too
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def holds(cond: Condition, context: dict[str, Any]) -> bool:
    """Two-valued: a comparison with a missing or mistyped value is false, ``ne`` is ``not eq``."""
    match cond:
        case All():
            return all(holds(c, context) for c in cond.items)
        case AnyOf():
            return any(holds(c, context) for c in cond.items)
        case Not():
            return not holds(cond.item, context)
        case HasTag():
            return cond.tag in context.get("subscriber", {}).get("tags", ())
    v = _lookup(context, cond.field)
    match cond:
        case Exists():
            return v is not _MISSING and v is not None
        case Eq():
            return v is not _MISSING and v == cond.value and _num(v) == _num(cond.value)
        case Ne():
            return not (v is not _MISSING and v == cond.value and _num(v) == _num(cond.value))
    if not _num(v):
        return False
    match cond:
        case Gt():
            return v > cond.value
        case Gte():
            return v >= cond.value
        case Lt():
            return v < cond.value
        case Lte():
            return v <= cond.value
    return False  # pragma: no cover


# ---- a flow version compiled once -------------------------------------------------------------
# A published version never changes, and a drain steps thousands of runs of the same few versions:
# its trigger, exit rules and branch conditions are turned into closures once (``compiled``), so a
# step walks no condition tree, splits no dotted field and matches no trigger class per event. The
# closures have the interpreted forms' exact semantics (``matches_trigger``, ``_exits``, ``holds``;
# the property tests compare them on generated conditions, contexts and events).

Predicate = Callable[[dict[str, Any]], bool]


class Compiled:
    """A flow version's decisions as closures (``compiled(flow)``)."""

    __slots__ = ("conditions", "exits", "snapshot", "trigger")

    def __init__(self, flow: Flow) -> None:
        self.trigger: Callable[[Event], bool] = compile_trigger(flow.trigger)
        self.exits: Callable[[Run, ShopEvent], bool] = _compile_exits(flow.exits)
        self.conditions: dict[str, Predicate] = {nid: compile_condition(n.condition) for nid, n in flow.nodes.items()
                                                 if isinstance(n, BranchNode)}  # fmt: skip
        self.snapshot: tuple[str, ...] | None = snapshot_fields(flow)


# What a run's snapshot of its subscriber keeps whatever the version: the shell renders a send from
# ``first_name``, ``language`` and ``attributes`` (``campaigns.service.flow_runtime._render``; the
# templates may change, so every attribute), a ``wait_until`` reads ``time_zone``, ``has_tag`` and
# ``update`` nodes ``tags`` (and ``update`` the attributes).
SNAPSHOT_ALWAYS = ("attributes", "first_name", "language", "tags", "time_zone")


def snapshot_fields(flow: Flow) -> tuple[str, ...] | None:
    """The subscriber fields a run of ``flow`` can read: ``SNAPSHOT_ALWAYS`` and the first name after
    ``subscriber.`` of every branch condition's field; None (every field) if a condition reads
    ``subscriber`` itself. A run started on this version snapshots only these (``start``): a version
    never changes, so nothing else of the snapshot could ever be read, and a run row carried its
    subscriber's ~20 fields (~450 bytes of its ~900) for the sake of none of them."""
    names = set(SNAPSHOT_ALWAYS)
    todo: list[Condition] = [n.condition for n in flow.nodes.values() if isinstance(n, BranchNode)]
    while todo:
        match cond := todo.pop():
            case All() | AnyOf():
                todo.extend(cond.items)
            case Not():
                todo.append(cond.item)
            case HasTag():
                pass
            case _:
                head, _, rest = cond.field.partition(".")
                if head == "subscriber":
                    if not rest:
                        return None
                    names.add(rest.partition(".")[0])
    return tuple(sorted(names))


_COMPILED: dict[int, tuple[Flow, Compiled]] = {}  # id(flow) -> (that flow, held so its id is not reused; compiled)
_COMPILED_MAX = 1024


def compiled(flow: Flow) -> Compiled:
    """The flow's compiled form, made once per ``Flow`` object (the runtime caches one per version)."""
    hit = _COMPILED.get(id(flow))
    if hit is not None and hit[0] is flow:
        return hit[1]
    if len(_COMPILED) >= _COMPILED_MAX:  # bounded: flows parsed ad hoc (tests, the simulation, the API)
        _COMPILED.clear()
    made = Compiled(flow)
    _COMPILED[id(flow)] = (flow, made)
    return made


def compile_trigger(trigger: Trigger) -> Callable[[Event], bool]:
    """``matches_trigger(trigger, ·)`` as a closure."""
    match trigger:
        case KeywordTrigger():
            keys = frozenset(_norm(k) for k in trigger.keywords)
            if not keys:
                return lambda e: isinstance(e, Reply)
            return lambda e: isinstance(e, Reply) and _norm(e.text) in keys
        case Subscribed():
            source = trigger.source
            return lambda e: isinstance(e, ShopEvent) and e.kind == "subscribed" and source in (None, e.name)
        case CheckoutAbandoned():
            return lambda e: isinstance(e, ShopEvent) and e.kind == "checkout_abandoned"
        case CheckoutCompleted():
            return lambda e: isinstance(e, ShopEvent) and e.kind == "checkout_completed"
        case OrderStatus():
            kind = f"order_{trigger.status}"
            return lambda e: isinstance(e, ShopEvent) and e.kind == kind
        case Birthday():
            before = trigger.days_before
            return lambda e: isinstance(e, ShopEvent) and e.kind == "birthday" and e.payload.get("days_before", 0) == before
        case NoOrder():
            days = trigger.days
            return lambda e: isinstance(e, ShopEvent) and e.kind == "no_order" and e.payload.get("days") == days
        case SegmentEntered():
            segment = trigger.segment
            return lambda e: isinstance(e, ShopEvent) and e.kind == "segment_entered" and e.name == segment
        case CustomTrigger():
            name = trigger.name
            return lambda e: isinstance(e, ShopEvent) and e.kind == "custom" and e.name == name
    return lambda e: False  # pragma: no cover - every trigger type is above


def _compile_exits(rules: Sequence[ExitRule]) -> Callable[[Run, ShopEvent], bool]:
    """``_exits(flow, ·, ·)`` as a closure: the rules by event kind, one dict lookup for most events."""
    by_kind: dict[str, list[tuple[str | None, bool]]] = {}
    for r in rules:
        by_kind.setdefault(r.event, []).append((r.name, r.same_object))

    def exits(run: Run, event: ShopEvent) -> bool:
        found = by_kind.get(event.kind)
        if not found:
            return False
        return any(name in (None, event.name) and (not same or event.object_id == run.object_id) for name, same in found)

    return exits


def _compile_lookup(dotted: str) -> Callable[[dict[str, Any]], Any]:
    """``_lookup(·, dotted)`` as a closure (the path split once)."""
    head, *rest_ = dotted.split(".")
    rest = tuple(rest_)
    sub = head == "subscriber"
    if len(rest) == 1 and not sub:  # "trigger.value": the common case
        key = rest[0]

        def one(context: dict[str, Any]) -> Any:
            value = context.get(head, _MISSING)
            if not isinstance(value, dict) or key not in value:
                return _MISSING
            return value[key]

        return one

    def get(context: dict[str, Any]) -> Any:
        value: Any = context.get(head, _MISSING)
        for i, key in enumerate(rest):
            if sub and i == 0 and key not in value and key in value.get("attributes", {}):
                value = value["attributes"]
            if not isinstance(value, dict) or key not in value:
                return _MISSING
            value = value[key]
        return value

    return get


def compile_condition(cond: Condition) -> Predicate:
    """``holds(cond, ·)`` as a closure: the tree walked once, here."""
    match cond:
        case All():
            alls = tuple(compile_condition(c) for c in cond.items)
            return lambda ctx: all(f(ctx) for f in alls)
        case AnyOf():
            anys = tuple(compile_condition(c) for c in cond.items)
            return lambda ctx: any(f(ctx) for f in anys)
        case Not():
            inner = compile_condition(cond.item)
            return lambda ctx: not inner(ctx)
        case HasTag():
            tag = cond.tag
            return lambda ctx: tag in ctx.get("subscriber", {}).get("tags", ())
    get = _compile_lookup(cond.field)
    want, want_num = cond.value, _num(cond.value)
    match cond:
        case Exists():
            def exists(ctx: dict[str, Any]) -> bool:
                v = get(ctx)
                return v is not _MISSING and v is not None
            return exists
        case Eq():
            def eq(ctx: dict[str, Any]) -> bool:
                v = get(ctx)
                return v is not _MISSING and v == want and _num(v) == want_num
            return eq
        case Ne():
            def ne(ctx: dict[str, Any]) -> bool:
                v = get(ctx)
                return not (v is not _MISSING and v == want and _num(v) == want_num)
            return ne
    op = {Gt: operator.gt, Gte: operator.ge, Lt: operator.lt, Lte: operator.le}.get(type(cond))
    if op is None:  # pragma: no cover - every condition type is above
        return lambda ctx: False

    def order(ctx: dict[str, Any]) -> bool:
        v = get(ctx)
        return _num(v) and op(v, want)

    return order


# ---- local time of day --------------------------------------------------------------------------


def _zone(name: str | None, fallback: str) -> zoneinfo.ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return zoneinfo.ZoneInfo(candidate)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
    return zoneinfo.ZoneInfo("UTC")  # pragma: no cover


def next_local_time(now: float, hhmm: str, zone_name: str | None, fallback: str = "UTC") -> float:
    """The first instant strictly after ``now`` whose wall clock in the zone reads ``hhmm``.

    DST: a wall time skipped by a spring-forward gap happens the moment it would have (02:30 in a
    02:00->03:00 gap is 03:30, by the pre-gap offset, PEP 495 fold=0); a wall time that occurs twice
    in the autumn is its first occurrence."""
    zone = _zone(zone_name, fallback)
    hour, minute = int(hhmm[:2]), int(hhmm[3:])
    day = dt.datetime.fromtimestamp(now, zone).date() - dt.timedelta(days=1)
    for _ in range(4):
        at = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone).timestamp()
        if at > now:
            return at
        day += dt.timedelta(days=1)
    raise AssertionError("unreachable: a wall time recurs within 3 days")  # pragma: no cover
