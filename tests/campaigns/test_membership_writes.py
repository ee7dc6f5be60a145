"""A membership pass's writes (``Store.write_members``), on both engines: whatever is stored before, the
members of the pass's segments among its subscribers become exactly what it found (joiners ``since``
now, those who stay keep theirs), their timers exactly its window edges, and nothing else moves:
other subscribers, other segments, other tenants. PostgreSQL writes the differences in one statement
each (``PostgresStore._write_group``), SQLite from Python (``SqlStore._write_group``). A whole pass
(``refresh_members``) compares with the stored members in its read statement and writes only the
differences (``_write_found``): the last test."""

from __future__ import annotations

import itertools
import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.store import open_store
from campaigns.core.events import Profile
from campaigns.store.base import MemberPlan, MembersFound, Store

T0 = 1_760_000_000.0
SIDS = range(1, 7)
SEGS = range(1, 4)
_tenants = itertools.count()

pairs = st.sets(st.tuples(st.sampled_from(SEGS), st.sampled_from(SIDS)), max_size=18)
instants = st.sampled_from([T0 + 10.0, T0 + 20.0, T0 + 86_400.5])


@st.composite
def passes(draw: st.DrawFn) -> tuple:
    stored = draw(pairs)
    timers = draw(st.dictionaries(st.tuples(st.sampled_from(SEGS), st.sampled_from(SIDS)), instants, max_size=18))
    ids = sorted(draw(st.sets(st.sampled_from(SIDS), min_size=1)))
    segs = sorted(draw(st.sets(st.sampled_from(SEGS), min_size=1)))
    inside = {seg: sorted(draw(st.sets(st.sampled_from(ids)))) for seg in segs}
    timed = draw(st.sets(st.sampled_from(segs)))
    edges = {seg: draw(st.dictionaries(st.sampled_from(ids), instants)) for seg in sorted(timed)}
    return stored, timers, ids, inside, edges


def _state(store: Store, tenant: str) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
    with store._tx() as tx:  # type: ignore[attr-defined]
        members = {(int(g), int(s)): float(t) for g, s, t in tx.rows(
            "SELECT segment_id, subscriber_id, since FROM segment_members WHERE tenant = ?", (tenant,))}  # fmt: skip
        timers = {(int(g), int(s)): float(t) for g, s, t in tx.rows(
            "SELECT segment_id, subscriber_id, at FROM segment_timers WHERE tenant = ?", (tenant,))}  # fmt: skip
    return members, timers


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=passes())
def test_a_pass_writes_exactly_the_differences(store: Store, case: tuple) -> None:
    stored, timers, ids, inside, edges = case
    tenant, other = f"w{next(_tenants)}", f"o{next(_tenants)}"
    for t in (tenant, other):  # another shop's rows, the same ids: never touched
        for seg, sid in sorted(stored):
            store.set_member(t, seg, sid, True, now=T0 + seg)
        for (seg, sid), at in sorted(timers.items()):
            store.set_timer(t, seg, sid, at)
    members_before, timers_before = _state(store, tenant)
    changed = store.write_members(tenant, [MembersFound(ids=ids, inside=inside, edges=edges)], now=T0 + 50)

    members, timers_after = _state(store, tenant)
    want = {k: v for k, v in members_before.items() if not (k[0] in inside and k[1] in ids)}
    for seg, sids in inside.items():
        for sid in sids:
            want[(seg, sid)] = members_before.get((seg, sid), T0 + 50)
    assert members == want
    assert changed == sum(1 for seg in inside for sid in ids if ((seg, sid) in members_before) != (sid in inside[seg]))
    want_timers = {k: v for k, v in timers_before.items() if not (k[0] in edges and k[1] in ids)}
    want_timers.update({(seg, sid): at for seg, by_sid in edges.items() for sid, at in by_sid.items()})
    assert timers_after == want_timers
    assert _state(store, other) == (members_before, timers_before)  # the other shop's rows are the same


# ---- SQLite's layout of the two tables a pass writes ----------------------------------------------
_OLD_LAYOUT = """
CREATE TABLE segment_members (tenant TEXT NOT NULL, segment_id INTEGER NOT NULL, subscriber_id INTEGER NOT NULL,
    since REAL NOT NULL, PRIMARY KEY (tenant, segment_id, subscriber_id));
CREATE TABLE segment_timers (tenant TEXT NOT NULL, segment_id INTEGER NOT NULL, subscriber_id INTEGER NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (tenant, segment_id, subscriber_id));
"""


def _clustered(path: str) -> dict[str, bool]:
    with sqlite3.connect(path) as c:
        return {n: "WITHOUT ROWID" in sql.upper() for n, sql in c.execute(
            "SELECT name, sql FROM sqlite_schema WHERE name IN ('segment_members', 'segment_timers')")}  # fmt: skip


def _plan_stats(path: str) -> set[tuple[str, str]]:
    with sqlite3.connect(path) as c:
        return {(t, i) for t, i in c.execute("SELECT tbl, idx FROM sqlite_stat1 WHERE tbl LIKE 'segment_%'")}


def test_a_new_sqlite_store_keys_members_and_timers_by_their_table(tmp_path) -> None:
    """A pass's joiners and timers are each one b-tree insert fewer (no rowid table beside the key):
    the write of a 1,000-event pass fell by a fifth (docs/BENCHMARKS.md, eighth pass). The planner's
    statistics for a new store reach the key under the name ANALYZE gives it (the table's)."""
    path = str(tmp_path / "new.db")
    store = open_store(f"sqlite:///{path}")
    store.close()
    assert _clustered(path) == {"segment_members": True, "segment_timers": True}
    assert {("segment_members", "segment_members"), ("segment_timers", "segment_timers")} <= _plan_stats(path)


def test_a_sqlite_store_made_before_keeps_its_layout_and_its_passes_write_the_same(tmp_path) -> None:
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as c:
        c.executescript(_OLD_LAYOUT)
    old = open_store(f"sqlite:///{path}")
    new = open_store(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert _clustered(path) == {"segment_members": False, "segment_timers": False}
        assert ("segment_members", "sqlite_autoindex_segment_members_1") in _plan_stats(path)
        for s in (old, new):
            s.set_member("t", 1, 1, True, now=T0)
            s.set_member("t", 2, 1, True, now=T0)
            s.set_timer("t", 1, 2, T0 + 10.0)
            s.write_members("t", [MembersFound(ids=[1, 2], inside={1: [2], 2: [1]}, edges={1: {1: T0 + 20.0}})], now=T0 + 5)
        assert _state(old, "t") == _state(new, "t") == (
            {(1, 2): T0 + 5, (2, 1): T0}, {(1, 1): T0 + 20.0})  # fmt: skip
    finally:
        old.close()
        new.close()


# ---- a whole pass (read, then write): the stored members compared where they are read -------------
NSUB = 8


def _plans(ph: str, tenant: str, sids: list[int], ids: list[int], wheres: dict[int, list[int]]) -> list[MemberPlan]:
    # each segment's `where` selects a fixed set of subscribers (by their ids), as a compiled segment would
    return [MemberPlan(segment_id=seg, ids=ids, where=f"s.tenant = {ph} AND s.id IN ({', '.join(str(sids[i]) for i in who) or 'NULL'})",
                       params=[tenant]) for seg, who in sorted(wheres.items())]  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nsegs=st.sampled_from([1, 3, 62, 63, 70]), data=st.data())
def test_a_pass_over_many_segments_leaves_exactly_what_it_found(store: Store, nsegs: int, data: st.DataObject) -> None:
    """``refresh_members`` end to end: whatever is stored before (members of the pass's segments and of
    others, for its subscribers and others), afterwards the pass's segments hold exactly what their SQL
    selects among its subscribers, joiners ``since`` now, stayers their own ``since``, the count of
    changes exact, nothing else moved, one ``segment_entered`` a joiner. More segments than one
    integer's bits (62: SQLite folds a statement's segments into one) split the statement."""
    tenant = f"p{next(_tenants)}"
    sids = [store.put_subscriber(tenant, Profile(phone=f"+336123456{k:02d}"), phone=f"+336123456{k:02d}", at=T0,
                                 now=T0)[0].id for k in range(NSUB)]  # fmt: skip
    segs = list(range(100, 100 + nsegs))
    others = [900, 901]  # segments the pass does not touch
    idx = st.sampled_from(range(NSUB))
    wheres = {seg: sorted(data.draw(st.sets(idx), label=f"selects{seg}")) for seg in segs}
    ids = sorted(sids[i] for i in data.draw(st.sets(idx, min_size=1), label="ids"))
    stored = data.draw(st.sets(st.tuples(st.sampled_from(segs + others), idx), max_size=40), label="stored")
    for seg, i in sorted(stored):
        store.set_member(tenant, seg, sids[i], True, now=T0 + 1)
    before, _ = _state(store, tenant)
    changed = store.refresh_members(tenant, _plans("%s" if store.engine == "postgres" else "?", tenant, sids, ids, wheres), now=T0 + 50)

    after, _ = _state(store, tenant)
    want = {k: v for k, v in before.items() if not (k[0] in wheres and k[1] in ids)}
    for seg, who in wheres.items():
        for i in who:
            if sids[i] in ids:
                want[(seg, sids[i])] = before.get((seg, sids[i]), T0 + 50)
    assert after == want
    assert changed == sum(1 for k in set(after) ^ set(before))
