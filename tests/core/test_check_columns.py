"""A large job's chunks are checked and admitted column by column (``Scheduler._check_columns``,
``Shard.add_parked``); every other chunk one recipient at a time. Both must give the same
answer for any chunk: the same rows, shards, packed values, segments, zones and carriers, the
same ids, and the same queues after admission."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CarrierSettings, CoreSettings, Route
from gateway.testing import workload

NUMBERS = [*workload.numbers(40, seed=3), "+12125550190", "+4479111234", "+999123", "+1212555019O",
           "+\u0661\u0662\u0661\u0662\u0665\u0665\u0665\u0660\u0661\u0669\u0660"]  # fmt: skip
VALUES = ["Ann", "Chloé", "Léa", "x" * 200, "a{b}", "ß", "😀", "tab\there", "nul\x00", "", "20", "[^]"]
TEMPLATES = ["Hi {name}, {pct}% off. Reply STOP to opt out.", "Code {name}", "Fixed body", "☃ {name}",
             "Sale " * 30 + "{name}"]  # fmt: skip


def _settings(*, everywhere: bool = False) -> CoreSettings:
    """Routes for a few countries only (others: no route), or ``everywhere``."""
    routes = [Route(carriers=["a"])] if everywhere else [Route(prefix=p, carriers=["a"]) for p in ("1", "44", "33", "49")]
    return CoreSettings(shards=4, max_segments=3, carriers=[CarrierSettings(name="a", rate=1000, burst=100)],
                        routes=routes)  # fmt: skip


recipient = st.builds(
    lambda to, name, pct, tz, drop: Recipient(
        to=to, vars={k: v for k, v in (("name", name), ("pct", pct)) if k != drop}, tz=tz),
    st.sampled_from(NUMBERS), st.sampled_from(VALUES), st.sampled_from(VALUES[::-1]),
    st.sampled_from([None, None, None, "Asia/Kolkata", "Mars/Base"]), st.sampled_from([None, None, None, "pct"]),
)  # fmt: skip
ordinary = st.builds(
    lambda to, name, pct, tz: Recipient(to=to, vars={"name": name, "pct": pct}, tz=tz),
    st.sampled_from(list(workload.numbers(40, seed=4))), st.sampled_from(["Ann", "Chloé", "Léa", "Bo"]),
    st.sampled_from(["10", "20", "35"]),
    st.sampled_from([None, None, "Asia/Kolkata", "Europe/London", "America/Los_Angeles"]),  # a campaign's own zones
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(TEMPLATES), st.lists(recipient, min_size=1, max_size=30) | st.lists(ordinary, min_size=1, max_size=30),
       st.booleans())  # fmt: skip
def test_columns_give_the_rows_answer(template: str, people: list[Recipient], everywhere: bool) -> None:
    core = Scheduler(_settings(everywhere=everywhere), 0.0)
    job = Job(id="j", tenant="t", sender="S", template=template, category="transactional")
    entry = core._describe(job, slot=-1, tenant_key=0)
    fixed = core._fixed_plan(entry)
    rows = core._check_rows(entry, fixed, people)
    columns = core._check_columns(entry, fixed, people)
    if columns is not None:  # decided by columns only when every recipient is accepted
        assert rows == ([list(zip(*c)) for c in columns], [])
        assert all(len(set(map(len, c))) == 1 for c in columns)  # each shard's columns one length


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(TEMPLATES[:2]), st.lists(ordinary, min_size=1, max_size=30))
def test_an_ordinary_chunk_is_decided_by_columns(template: str, people: list[Recipient]) -> None:
    """Plain values, known numbers with a route, zones absent or explicit and known (a campaign's
    jobs give each recipient's own): the column path decides it, with the rows' answer (a chunk
    with explicit zones once fell back to the rows: a campaign's 1M launch paid ~15 us a recipient)."""
    core = Scheduler(_settings(everywhere=True), 0.0)
    job = Job(id="j", tenant="t", sender="S", template=template, category="transactional")
    entry = core._describe(job, slot=-1, tenant_key=0)
    columns = core._check_columns(entry, core._fixed_plan(entry), people)
    assert columns is not None
    assert core._check_rows(entry, core._fixed_plan(entry), people) == ([list(zip(*c)) for c in columns], [])


@settings(max_examples=25, deadline=None)
@given(st.lists(ordinary, min_size=1, max_size=40), st.integers(0, 2))
def test_a_parked_chunk_is_queued_as_one_by_one(people: list[Recipient], chunks: int) -> None:
    job = Job(id="j", tenant="t", sender="S", template=TEMPLATES[0], category="transactional")
    cores = [Scheduler(_settings(everywhere=True), 0.0) for _ in range(2)]
    cores[1]._admit_parked = lambda *a: False  # the loop of add(), one row at a time
    answers = []
    for core in cores:
        assert core._check_columns(core._describe(job, slot=-1, tenant_key=0), 0, people) is not None
        for k in range(chunks + 1):  # more than one chunk: rows freed and grown in between
            answers.append(core.admit(job, people, 1.0, paused=True))
    half = len(answers) // 2
    assert answers[:half] == answers[half:]
    a, b = cores
    for sa, sb in zip(a._shards, b._shards):
        assert sa.parked.keys() == sb.parked.keys()
        for slot in sa.parked:
            ra, rb = list(sa.parked[slot]), list(sb.parked[slot])
            assert [(sa.number[r], sa.ids[r], sa.vars_of(r), sa.zone[r], sa.carrier[r], sa.segments[r], sa.state[r],
                     sa.job[r], sa.attempt[r]) for r in ra] == \
                   [(sb.number[r], sb.ids[r], sb.vars_of(r), sb.zone[r], sb.carrier[r], sb.segments[r], sb.state[r],
                     sb.job[r], sb.attempt[r]) for r in rb]  # fmt: skip
    for core in cores:
        core.resume_job("j")
    # The carrier's bucket holds 100 tokens (rate 1000/s): take a second apart until both are empty.
    taken: list[list[tuple]] = [[], []]
    for step in range(len(people) * (chunks + 1) // 100 + 2):
        for core, got in zip(cores, taken):
            got += [(d.message_id, d.recipient, d.body, d.segments) for d in core.take("a", 10_000, 2.0 + step).dispatches]
    assert taken[0] == taken[1] and len(taken[0]) == len(people) * (chunks + 1)
