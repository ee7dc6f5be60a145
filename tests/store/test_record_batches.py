"""``SqliteStore.record`` binds a batch's rows as multi-row VALUES, in statements of at most
``_MAX_ROWS`` rows padded with NULL rows to a multiple of ``_ROWS``: whatever a batch's size
(across those bounds), its repeats and its changes to messages already final, the file must
end as the memory store does (states, histories, carriers, attempts, job counts) and the
change sequence must hold the same events, each once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import Job, Recipient
from gateway.store.base import Change
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import _MAX_ROWS, _ROWS, SqliteStore
from gateway.testing.store_conformance import HOOK, drain

N = _MAX_ROWS + 2 * _ROWS  # messages of the job: a batch may cover more than one statement
JOB = Job(id="jb", tenant="acme", sender="ACME", template="Hi", category="transactional")
PEOPLE = [(i, Recipient(to=f"+1212{i:07d}")) for i in range(N)]
STATES = ["queued", "deferred", "submitted", "accepted", "delivered", "undelivered", "failed"]
SIZES = st.sampled_from([1, _ROWS - 1, _ROWS, _ROWS + 1, _MAX_ROWS - 1, _MAX_ROWS, _MAX_ROWS + 1, N + 40])


@st.composite
def batches(draw):
    out = []
    for k in range(draw(st.integers(1, 3))):
        size = draw(SIZES)
        start = draw(st.integers(0, N - 1))
        state = draw(st.sampled_from(STATES))
        # a run of ids (wrapping, so a batch larger than the job repeats messages), one state,
        # a few changes of other states mixed in
        batch = [Change(message_id=1000 + (start + i) % N, state=state, at=20.0 + k, carrier="alpha",
                        carrier_ids=(f"c{i}",) if state == "submitted" else ()) for i in range(size)]  # fmt: skip
        for _ in range(draw(st.integers(0, 5))):
            batch.insert(draw(st.integers(0, len(batch))),
                         Change(message_id=1000 + draw(st.integers(0, N - 1)), state=draw(st.sampled_from(STATES)),
                                at=20.5 + k, reason="mixed"))  # fmt: skip
        out.append(batch)
    return out


@settings(max_examples=12, deadline=None)
@given(batches())
def test_record_at_any_batch_size_ends_as_the_memory_store(tmp_path_factory, batches) -> None:
    path = tmp_path_factory.mktemp("rb") / "s.db"
    sq, mem = SqliteStore(str(path), synchronous="NORMAL"), MemoryStore()
    for s in (sq, mem):
        s.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
    for batch in batches:
        sq.record(batch)
        mem.record(batch)
    for mid in range(1000, 1000 + N):
        a, b = sq.message("acme", mid), mem.message("acme", mid)
        assert (a.state, a.carrier, a.carrier_ids, a.attempts) == (b.state, b.carrier, b.carrier_ids, b.attempts)
        assert [(c.state, c.at, c.reason) for c in a.history] == [(c.state, c.at, c.reason) for c in b.history]
    assert sq.job("acme", "jb").counts == mem.job("acme", "jb").counts
    key = lambda e: (e.message_id, e.state, e.at, e.reason)  # noqa: E731
    assert sorted(map(key, drain(sq))) == sorted(map(key, drain(mem)))
    sq.close()


@settings(max_examples=12, deadline=None)
@given(batches(), st.sampled_from([frozenset({"delivered", "failed"}), frozenset({"submitted"}),
                                   frozenset({"deferred", "accepted", "undelivered"})]))  # fmt: skip
def test_record_with_callback_states_hooks_what_the_memory_store_does(tmp_path_factory, batches, states) -> None:
    """A subscriber that chose some states: a batch's hooked rows are found a message at a time
    (``SqliteStore._rows``), from the changes it applies; the events heard, and the job's end,
    are the memory store's."""
    path = tmp_path_factory.mktemp("rs") / "s.db"
    sq, mem = SqliteStore(str(path), synchronous="NORMAL"), MemoryStore()
    for s in (sq, mem):
        s.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK, callback_states=states)
    for batch in batches:
        sq.record(batch)
        mem.record(batch)
    key = lambda e: (e.message_id, e.state, e.at, e.reason)  # noqa: E731
    assert sorted(map(key, drain(sq))) == sorted(map(key, drain(mem)))
    assert all(e.state in states for e in drain(sq))
    assert sq.job("acme", "jb").counts == mem.job("acme", "jb").counts
    sq.close()
