"""A membership pass's reads for the trees evaluated in Python (campaigns/core/segment_pass.py).

``read_facts`` reads, in the pass's snapshot, the facts of the changed subscribers once for every
tree of the pass: a few set-based statements (profiles, aggregates, tags, the rollups of the keys the
trees name, the orders in a window's straddling part and their items, checkouts, activities of the
kinds named), each driven by the ids (one index seek per subscriber). ``evaluate_plans`` runs each
plan's compiled tree over them and reads its window edges (``compile_edges``, unchanged): the same
``MembersFound`` the SQL plans give, written the same way (``SqlStore.write_members``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from campaigns.core.model import Activity, Checkout, Stats, SubscriberView
from campaigns.core.segment_pass import Closure, Facts, Needs, compile_tree, needs_of
from campaigns.core.segments import Segment, parse_segment
from campaigns.store.base import MemberPlan, MembersFound

if TYPE_CHECKING:
    from campaigns.store.sql import Tx

__all__ = ["compiled", "evaluate_plans", "read_facts"]

_SUB_COLS = ("id", "phone", "first_name", "last_name", "email", "gender", "birthday", "country", "region", "city",
             "time_zone", "language", "signup_source", "created_at", "consent", "consent_at", "attributes")  # fmt: skip
_STATS = tuple(Stats.__struct_fields__)
_CACHE: dict[bytes, tuple[Segment, Closure | None]] = {}
_enc = msgspec.json.Encoder()


def compiled(definition: Any) -> tuple[Segment, Closure | None]:
    """A tree's JSON -> (the tree, its closure or None), compiled once per process per definition."""
    key = _enc.encode(definition)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        seg = parse_segment(definition)
        hit = _CACHE[key] = (seg, compile_tree(seg))
    return hit


def _ids(tx: Tx) -> str:
    """The ids bound as one parameter, as a table ``j`` of one column ``value``."""
    return "unnest(?::bigint[]) AS j(value)" if tx.pg else "json_each(?) AS j"


def read_facts(tx: Tx, tenant: str, ids: Sequence[int], needs: Needs) -> dict[int, Facts]:
    from campaigns.store.sql import _subscriber

    arr, j = tx.array(list(ids)), _ids(tx)
    subs = {int(r[0]): _subscriber(tenant, r) for r in tx.rows(
        f"SELECT {', '.join('s.' + c for c in _SUB_COLS)} FROM {j} CROSS JOIN subscribers s "
        "WHERE s.tenant = ? AND s.id = j.value", (arr, tenant))}  # fmt: skip
    stats = {int(r[0]): Stats(**dict(zip(_STATS, r[1:], strict=True))) for r in tx.rows(
        f"SELECT st.subscriber_id, {', '.join('st.' + c for c in _STATS)} FROM {j} CROSS JOIN subscriber_stats st "
        "WHERE st.tenant = ? AND st.subscriber_id = j.value", (arr, tenant))}  # fmt: skip
    tags: dict[int, set[str]] = {}
    if needs.tags:
        for sid, tag in tx.rows(f"SELECT t.subscriber_id, t.tag FROM {j} CROSS JOIN subscriber_tags t "
                                "WHERE t.tenant = ? AND t.subscriber_id = j.value", (arr, tenant)):  # fmt: skip
            tags.setdefault(int(sid), set()).add(tag)
    rolls: dict[int, list[tuple[str, int, int, int, int]]] = {}
    if needs.rollups:
        keys = needs.keys()
        # SQLite must seek (subscriber, key) in this index; left to itself it ranged over the primary
        # key on the tenant alone, every subscriber's rows for each id (the pass's CPU doubled)
        by_sub = "" if tx.pg else " INDEXED BY order_rollups_by_subscriber"
        where, params = "", [arr, tenant]
        if keys is not None:
            where = f" AND r.key IN ({', '.join('?' * len(keys))})"
            params += keys
        for sid, key, b, n, amount, qty in tx.rows(
                f"SELECT r.subscriber_id, r.key, r.bucket, r.n, r.amount, r.quantity FROM {j} CROSS JOIN order_rollups r{by_sub} "
                f"WHERE r.tenant = ? AND r.subscriber_id = j.value{where}", params):  # fmt: skip
            rolls.setdefault(int(sid), []).append((key, int(b), n, amount, qty))
    plus = "" if tx.pg else "+"  # SQLite: each subscriber's rows by its owner index, never the tenant's by time
    orders: dict[int, dict[str, tuple[float, int, list[tuple[str | None, int, int]]]]] = {}
    by_id: dict[str, list[tuple[str | None, int, int]]] = {}
    for lo, hi in sorted(needs.ranges):
        for sid, oid, total, at in tx.rows(
                f"SELECT o.subscriber_id, o.order_id, o.total, o.created_at FROM {j} CROSS JOIN orders o "
                f"WHERE o.tenant = ? AND o.subscriber_id = j.value AND {plus}o.created_at >= ? AND o.created_at < ?",
                (arr, tenant, lo, hi)):  # fmt: skip
            mine = orders.setdefault(int(sid), {})
            if oid not in mine:
                mine[oid] = (at, total, by_id.setdefault(oid, []))
    if needs.items and by_id:
        for oid, category, price, qty in tx.rows(
                f"SELECT i.order_id, i.category, i.price, i.quantity FROM {_ids_text(tx)} CROSS JOIN order_items i "
                "WHERE i.tenant = ? AND i.order_id = j.value", (tx.array(sorted(by_id)), tenant)):  # fmt: skip
            by_id[oid].append((category, price, qty))
    checkouts: dict[int, list[Checkout]] = {}
    if needs.checkouts:
        for r in tx.rows(f"SELECT c.subscriber_id, c.checkout_id, c.url, c.value, c.started_at, c.completed_at, "
                         f"c.abandoned_at FROM {j} CROSS JOIN checkouts c WHERE c.tenant = ? AND c.subscriber_id = j.value",
                         (arr, tenant)):  # fmt: skip
            checkouts.setdefault(int(r[0]), []).append(Checkout(
                checkout_id=r[1], subscriber_id=int(r[0]), url=r[2], value=r[3], started_at=r[4], completed_at=r[5],
                abandoned_at=r[6]))  # fmt: skip
    acts: dict[int, list[Activity]] = {}
    for kind, cutoff in sorted(needs.activities.items()):
        since, params = ("", (arr, tenant, kind)) if cutoff is None else (f" AND {plus}a.at >= ?", (arr, tenant, kind, cutoff))
        for sid, at in tx.rows(f"SELECT a.subscriber_id, a.at FROM {j} CROSS JOIN activities a WHERE a.tenant = ? "
                               f"AND a.subscriber_id = j.value AND a.kind = ?{since}", params):  # fmt: skip
            acts.setdefault(int(sid), []).append(Activity(kind=kind, at=at))
    empty = Stats()
    return {sid: Facts(view=SubscriberView(subscriber=sub, tags=frozenset(tags.get(sid, ())), stats=stats.get(sid, empty),
                                           checkouts=tuple(checkouts.get(sid, ())), activities=tuple(acts.get(sid, ()))),
                       rollups=rolls.get(sid, []), orders=list(orders.get(sid, {}).values()))
            for sid, sub in subs.items()}  # fmt: skip


def _ids_text(tx: Tx) -> str:
    return "unnest(?::text[]) AS j(value)" if tx.pg else "json_each(?) AS j"


def evaluate_plans(tx: Tx, tenant: str, plans: Sequence[MemberPlan]) -> list[MembersFound]:
    """The Python plans of a pass (``MemberPlan.definition`` set): facts read once for all their
    subscribers, each tree run over its own ``ids``; plans over the same ids share one
    ``MembersFound`` (one read of their stored members when written)."""
    if not plans:
        return []
    now = plans[0].now
    trees = [(p, *compiled(p.definition)) for p in plans]
    needs = needs_of([seg for _, seg, _ in trees], now)
    facts = read_facts(tx, tenant, sorted({sid for p in plans for sid in p.ids}), needs)
    groups: dict[tuple[int, ...], MembersFound] = {}
    for p, _, fn in trees:
        assert fn is not None, "a Python plan of a tree the facts cannot decide"
        found = groups.get(tuple(p.ids))
        if found is None:
            found = groups[tuple(p.ids)] = MembersFound(ids=list(p.ids), inside={}, edges={})
        found.inside[p.segment_id] = [sid for sid in p.ids if (f := facts.get(sid)) is not None and fn(f, now)]
        if p.edges is not None:
            found.edges[p.segment_id] = {int(sid): float(at) for sid, at in tx.raw_rows(*p.edges)}
    return list(groups.values())
