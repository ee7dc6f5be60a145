"""Simulation: run a flow over past or generated events on virtual time, before switching it on.

Pure and deterministic: the same flow, subscribers and events give the same report. Events are
processed in time order; at one instant, shop events, replies and opt-outs come before timers
(an exit at the very instant a send falls due prevents it, as an exit 1 ms earlier does). Timers
fire exactly at their due. The engine is the real one (``flows.start`` / ``flows.step``), so what
the simulation reports is what the flow would do::

    report = simulate(flow, subscribers, events, until=now)
    report.entered, report.not_entered, report.ended
    report.nodes["big"].reached / .sent / .exited / .waiting / .completed

Per node: ``reached`` visits; ``sent`` messages it would send; ``exited`` runs ended by an exit
rule or an opt-out while waiting there; ``waiting`` runs still there at ``until``; ``completed``
runs that ended normally there. Clicks come from ``click_rate`` (a deterministic share of sends).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from campaigns.core import flows as F

__all__ = ["NodeReport", "SimEvent", "SimReport", "generate_events", "simulate"]


class SimEvent(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    subscriber_id: int
    event: F.Event


class NodeReport(msgspec.Struct, kw_only=True):
    reached: int = 0
    sent: int = 0
    exited: int = 0
    waiting: int = 0
    completed: int = 0


class SimReport(msgspec.Struct, kw_only=True):
    flow_id: str
    version: int
    entered: int = 0
    not_entered: dict[str, int] = {}
    ended: dict[str, int] = {}
    sends: int = 0
    webhooks: int = 0
    updates: int = 0
    nodes: dict[str, NodeReport] = {}


_EVENT, _TIMER = 0, 1  # at one instant, events before timers


def simulate(flow: F.Flow, subscribers: Mapping[int, F.FlowSubscriber], events: Iterable[SimEvent],
             until: float | None = None, past: Mapping[int, Sequence[F.Entry]] | None = None, *,
             click_rate: float = 0.0, click_delay: float = 600.0) -> SimReport:  # fmt: skip
    """Run ``flow`` over ``events``; timers due after ``until`` (when given) are left pending.

    ``click_rate``: the share of sends whose link is clicked ``click_delay`` seconds later (which
    sends: decided by a hash of the send key, so deterministic), for ``clicked`` branches."""
    report = SimReport(flow_id=flow.id, version=flow.version, nodes={nid: NodeReport() for nid in flow.nodes})
    heap: list[tuple[float, int, int, Any]] = []
    for seq, ev in enumerate(sorted(events, key=lambda e: e.at)):
        heap.append((ev.at, _EVENT, seq, ev))
    heapq.heapify(heap)
    seq = len(heap)
    runs: dict[str, F.Run] = {}
    by_subscriber: dict[int, list[str]] = {}
    entries: dict[int, list[F.Entry]] = {k: list(v) for k, v in (past or {}).items()}
    while heap:
        at, kind, _, item = heapq.heappop(heap)
        if until is not None and at > until:
            break
        if kind == _TIMER:
            run = runs[item.run_id]
            todo = [(run, F.TimerFired(id=f"timer:{item.run_id}:{item.visit}", due=item.due, visit=item.visit))]
        else:
            todo = [(runs[rid], item.event) for rid in by_subscriber.get(item.subscriber_id, ()) if runs[rid].node]
        for run, event in todo:
            trace: list[str] = []
            new, actions = F.step(flow, run, event, at, trace=trace)
            runs[run.id] = new
            seq = _account(report, run.node, trace, actions, heap, seq)
            seq = _clicks(actions, run.subscriber_id, at, click_rate, click_delay, heap, seq)
        if kind == _EVENT and F.matches_trigger(flow.trigger, item.event):
            sub = subscribers.get(item.subscriber_id) or F.FlowSubscriber(id=item.subscriber_id)
            mine = entries.setdefault(item.subscriber_id, [])
            trace = []
            run, actions = F.start(flow, sub, item.event, at, mine, trace=trace)
            if run is None:
                reason = actions[0].reason if actions and isinstance(actions[0], F.NotEntered) else "unknown"
                report.not_entered[reason] = report.not_entered.get(reason, 0) + 1
                continue
            if run.id in runs:  # a replayed trigger: the same run, already entered
                continue
            report.entered += 1
            mine.append(F.Entry(started_at=at, object_id=run.object_id))
            runs[run.id] = run
            by_subscriber.setdefault(item.subscriber_id, []).append(run.id)
            seq = _account(report, None, trace, actions, heap, seq)
            seq = _clicks(actions, run.subscriber_id, at, click_rate, click_delay, heap, seq)
    for run in runs.values():
        if run.node is not None:
            report.nodes[run.node].waiting += 1
    return report


def _account(report: SimReport, was_at: str | None, trace: list[str], actions: list[F.Action],
             heap: list, seq: int) -> int:  # fmt: skip
    for nid in trace:
        report.nodes[nid].reached += 1
    for action in actions:
        match action:
            case F.Send():
                report.sends += 1
                report.nodes[action.node].sent += 1
            case F.SetTimer():
                heapq.heappush(heap, (action.due, _TIMER, seq, action))
                seq += 1
            case F.CallWebhook():
                report.webhooks += 1
            case F.UpdateSubscriber():
                report.updates += 1
            case F.Ended():
                report.ended[action.reason] = report.ended.get(action.reason, 0) + 1
                if action.reason == "completed":
                    last = trace[-1] if trace else was_at
                    if last is not None:
                        report.nodes[last].completed += 1
                elif was_at is not None:
                    report.nodes[was_at].exited += 1
    return seq


def _clicks(actions: list[F.Action], sub: int, at: float, rate: float, delay: float, heap: list, seq: int) -> int:
    for action in actions:
        if isinstance(action, F.Send) and rate > 0:
            share = int.from_bytes(hashlib.sha256(action.key.encode()).digest()[:8], "big") / 2.0**64
            if share < rate:
                click = SimEvent(at=at + delay, subscriber_id=sub, event=F.Click(id=f"click:{action.key}", key=action.key))
                heapq.heappush(heap, (at + delay, _EVENT, seq, click))
                seq += 1
    return seq


def _trigger_event(flow: F.Flow, sub: int, n: int, rng: random.Random) -> F.Event:
    eid = f"gen:{sub}:{n}"
    match flow.trigger:
        case F.KeywordTrigger():
            return F.Reply(id=eid, text=flow.trigger.keywords[0] if flow.trigger.keywords else "hi")
        case F.Subscribed():
            return F.ShopEvent(id=eid, kind="subscribed", name=flow.trigger.source or "keyword")
        case F.CheckoutAbandoned():
            return F.ShopEvent(id=eid, kind="checkout_abandoned", object_id=f"c{sub}.{n}",
                               payload={"value": rng.randrange(500, 30_000)})  # fmt: skip
        case F.CheckoutCompleted():
            return F.ShopEvent(id=eid, kind="checkout_completed", object_id=f"c{sub}.{n}")
        case F.OrderStatus():
            return F.ShopEvent(id=eid, kind=f"order_{flow.trigger.status}", object_id=f"o{sub}.{n}",  # type: ignore[arg-type]
                               payload={"total": rng.randrange(500, 30_000)})  # fmt: skip
        case F.Birthday():
            return F.ShopEvent(id=eid, kind="birthday", payload={"days_before": flow.trigger.days_before})
        case F.NoOrder():
            return F.ShopEvent(id=eid, kind="no_order", payload={"days": flow.trigger.days})
        case F.SegmentEntered():
            return F.ShopEvent(id=eid, kind="segment_entered", name=flow.trigger.segment)
        case F.CustomTrigger():
            return F.ShopEvent(id=eid, kind="custom", name=flow.trigger.name)
    raise AssertionError(flow.trigger)  # pragma: no cover


def generate_events(flow: F.Flow, subscribers: int, *, seed: int, start: float, span: float = 86_400.0,
                    exit_rate: float = 0.2, opt_out_rate: float = 0.02, reply_rate: float = 0.5,
                    horizon: float = 7 * 86_400.0) -> list[SimEvent]:  # fmt: skip
    """Deterministic synthetic traffic for ``flow``: per subscriber a trigger in ``[start, start+span)``,
    then, with the given rates, one of each exit event, an opt-out, and replies picking a random
    choice of each reply node, at random instants within ``horizon`` after the trigger."""
    rng = random.Random(seed)
    answers = [k for n in flow.nodes.values() if isinstance(n, F.ReplyNode) for c in n.choices for k in c.keywords[:1]]
    out: list[SimEvent] = []
    for sub in range(1, subscribers + 1):
        t0 = start + rng.random() * span
        trig = _trigger_event(flow, sub, 0, rng)
        out.append(SimEvent(at=t0, subscriber_id=sub, event=trig))
        oid = trig.object_id if isinstance(trig, F.ShopEvent) else None
        for i, rule in enumerate(flow.exits):
            if rng.random() < exit_rate:
                ev = F.ShopEvent(id=f"gen:{sub}:exit{i}", kind=rule.event, name=rule.name, object_id=oid)
                out.append(SimEvent(at=t0 + rng.random() * horizon, subscriber_id=sub, event=ev))
        if rng.random() < opt_out_rate:
            out.append(SimEvent(at=t0 + rng.random() * horizon, subscriber_id=sub,
                                event=F.OptOut(id=f"gen:{sub}:stop")))  # fmt: skip
        for j in range(sum(isinstance(n, F.ReplyNode) for n in flow.nodes.values())):
            if answers and rng.random() < reply_rate:
                at = t0 + (j + rng.random()) * horizon / 4
                out.append(SimEvent(at=at, subscriber_id=sub, event=F.Reply(id=f"gen:{sub}:r{j}", text=rng.choice(answers))))
    out.sort(key=lambda e: e.at)
    return out
