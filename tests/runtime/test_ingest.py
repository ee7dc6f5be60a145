"""Large streamed jobs are checked in worker processes (gateway/runtime/ingest.py)."""

import json
import threading

import pytest
from anyio import BrokenWorkerProcess
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api import schemas
from gateway.api.app import decode_lines
from gateway.config import default_text, loads
from gateway.core.model import Job
from gateway.core.scheduler import Scheduler
from gateway.errors import InvalidInput, StorageError
from gateway.runtime.app import _ready
from gateway.runtime.ingest import POOL_MIN, CheckPool, RecipientLines, check_chunk
from gateway.runtime.numbers import NumberCheck
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore

pytestmark = pytest.mark.anyio
CFG = loads(default_text())
NOW = 1_795_546_800.0
HEAD = schemas.JobIn(sender="ACME", template="Hi {name}", category="marketing")


def _lines(n: int) -> list[bytes]:
    return [b'{"to":"+1415555%04d","vars":{"name":"n%d"}}' % (i, i) for i in range(n)]


async def _chunks(*chunks: list[bytes]):
    for lines in chunks:
        yield RecipientLines(lines, decode_lines)


async def _submit(gw: Gateway, *chunks: list[bytes]) -> dict:
    body, _ = await gw.submit_job_stream("acme", HEAD, _chunks(*chunks), NOW, digest=lambda: "")
    return json.loads(body)


async def test_chunks_are_checked_in_a_worker_process_and_admitted_in_order():
    gw = Gateway(Scheduler(CFG.core, NOW), MemoryStore(), pool=CheckPool(CFG.core, 1))
    first, second = _lines(POOL_MIN), _lines(POOL_MIN + 10)
    second[7] = b'{"to":"+1"}'
    answer = await _submit(gw, first, second, _lines(5))  # the last one is too small for the pool
    assert gw.pool.chunks == 2
    assert answer["accepted"] == 2 * POOL_MIN + 14
    assert [e["index"] for e in answer["rejected"]] == [POOL_MIN + 7]
    assert gw.store.job("acme", answer["id"]).job.size == answer["accepted"]


async def test_the_loop_admits_the_next_chunks_while_a_chunk_is_written():
    """The store's write of a chunk overlaps the loop's admission of the next ones, which are
    then written together: the loop does not stand still behind the store (branch ingest5)."""
    writes: list[int] = []
    released_by_admission: list[bool] = []
    release = threading.Event()

    class SlowStore(MemoryStore):
        def add_jobs(self, items):
            writes.append(len(items))
            if len(writes) == 1:  # held until the loop has admitted the third chunk (or 2 s: failed)
                released_by_admission.append(release.wait(2.0))
            return super().add_jobs(items)

    gw = Gateway(Scheduler(CFG.core, NOW), SlowStore())
    admit = gw._admit_checked

    def admitting(job, cc, now):
        out = admit(job, cc, now)
        if cc.index[0] == 10:  # the third chunk
            release.set()
        return out

    gw._admit_checked = admitting
    lines = _lines(15)
    answer = await _submit(gw, lines[:5], lines[5:10], lines[10:])
    assert released_by_admission == [True]
    assert writes == [1, 2]  # the chunks queued meanwhile, in one transaction
    assert answer["accepted"] == 15 and gw.store.job("acme", answer["id"]).job.size == 15


async def test_a_failed_chunk_write_drops_the_job():
    class FailingStore(MemoryStore):
        def add_job(self, *args, **kwargs):
            raise StorageError("disk full")

        def add_jobs(self, items):
            raise StorageError("disk full")

    store = FailingStore()
    gw = Gateway(Scheduler(CFG.core, NOW), store)
    with pytest.raises(StorageError, match="disk full"):
        await _submit(gw, _lines(5), _lines(5))
    assert list(store.unfinished()) == [] and gw.core.statistics(NOW).parked == 0


async def test_the_loop_checks_a_chunk_whose_worker_broke():
    class Broken(CheckPool):
        async def check(self, job, lines, first_index):
            raise BrokenWorkerProcess  # as when a worker is killed

    gw = Gateway(Scheduler(CFG.core, NOW), MemoryStore(), pool=Broken(CFG.core, 1))
    assert (await _submit(gw, _lines(POOL_MIN)))["accepted"] == POOL_MIN


async def test_readyz_answers_503_until_the_workers_have_started():
    pool = CheckPool(CFG.core, 1)
    ready = _ready(pool)
    assert (await ready()).status == 503
    await pool.warm()
    assert (await ready()).status == 200
    assert (await _ready(None)()).status == 200  # no pool: nothing to wait for


async def test_a_body_too_long_for_every_recipient_is_refused_from_the_worker_too():
    gw = Gateway(Scheduler(CFG.core, NOW), MemoryStore(), pool=CheckPool(CFG.core, 1))
    head = schemas.JobIn(sender="ACME", template="x" * 1600, category="marketing")  # 11 segments, 10 allowed
    with pytest.raises(InvalidInput, match="segments") as caught:
        await gw.submit_job_stream("acme", head, _chunks(_lines(POOL_MIN)), NOW, digest=lambda: "")
    assert caught.value.field == "template"
    assert list(gw.store.unfinished()) == []  # nothing of it kept


_REGIONS = ("GB", "US", "DE", "FR", "IN", "BR", "JP", "AU", "AR", "IT", "MG")


def _some_numbers(rnd) -> list[str]:
    """Numbers as senders write them: valid E.164 (example numbers of many countries with their last
    digits changed, so some are valid and some not), formatted, with a national prefix, garbage."""
    import phonenumbers
    from phonenumbers import PhoneNumberType

    out = []
    for _ in range(POOL_MIN + 44):
        region = rnd.choice(_REGIONS)
        ex = phonenumbers.example_number_for_type(region, rnd.choice([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE]))
        e164 = phonenumbers.format_number(ex, phonenumbers.PhoneNumberFormat.E164)
        cut = rnd.randint(0, 5)
        text = e164[: len(e164) - cut] + "".join(rnd.choice("0123456789") for _ in range(rnd.choice([cut, cut, cut + 1])))
        form = rnd.random()
        if form < 0.1:
            text = phonenumbers.format_number(ex, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        elif form < 0.15:
            text = text[:3] + "0" + text[3:]  # a national prefix after the country code
        elif form < 0.18:
            text = rnd.choice(["+1", "+0123456789", "12125550100", "+44 ", "+٤٤٧٩١١١٢٣٤٥٦"])
        out.append(text)
    return out


_TABLES = NumberCheck(tables=True)  # compiled once for the module: a country's table takes 0.05-0.3 s


@settings(max_examples=12, deadline=None)
@given(st.randoms(use_true_random=False))
def test_a_large_chunk_checked_by_prefix_class_answers_as_canonical_does(rnd) -> None:
    """A large chunk's numbers decided by prefix class (``sure``, as the loop now does without a
    pool) and by ``canonical`` one by one (small chunks, single messages): the same recipients
    accepted in the same order, the same ones rejected for the same reasons, the same rows."""
    numbers = _some_numbers(rnd)
    people = [schemas.RecipientIn(to=t, vars={"name": "n"}, tz=rnd.choice([None, "Europe/London"])) for t in numbers]
    job = Job(id="j", tenant="acme", sender="ACME", template="Hi {name}", category="marketing")
    core = Scheduler(CFG.core, NOW)
    by_class = check_chunk(core, _TABLES, job, people, 7)
    one_by_one = check_chunk(core, NumberCheck(), job, people, 7)
    assert by_class.errors == one_by_one.errors and by_class.index == one_by_one.index
    assert by_class.rows == one_by_one.rows
    assert by_class.checked.order() == one_by_one.checked.order()


async def test_the_loop_decides_a_large_chunks_numbers_by_prefix_class_only() -> None:
    """Without a pool, a large job's chunk is checked on the loop by prefix class; a small job's
    (and a single message's) numbers by ``canonical``: no country table compiled for them."""
    gw = Gateway(Scheduler(CFG.core, NOW), MemoryStore())
    assert (await _submit(gw, _lines(POOL_MIN - 1)))["accepted"] == POOL_MIN - 1
    assert not gw._chunk_numbers._tables
    assert (await _submit(gw, _lines(POOL_MIN)))["accepted"] == POOL_MIN
    assert gw._chunk_numbers._tables


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["+1415555%04d", "+4479111%05d", "+4915112%06d", "+99912%03d", "12"]),
                          st.integers(0, 9999), st.sampled_from(["Ann", "Zoë", "x" * 300, ""])),
                min_size=1, max_size=60))  # fmt: skip
def test_a_workers_answer_admits_as_the_loops_own_check(people) -> None:
    """A worker sends its columns of numbers as the arrays' bytes and the values as one text
    (``_to_wire``); admitted, they give the shards the loop's own check of the chunk gives."""
    from gateway.runtime.ingest import _decode_wire, _encode, _from_wire, _to_wire

    lines = [json.dumps({"to": to % n if "%" in to else to, "vars": {"name": name}}).encode() for to, n, name in people]
    chunk = decode_lines(lines, 0)
    job = Job(id="job_1", tenant="acme", sender="ACME", template="Hi {name}", category="marketing")
    numbers = NumberCheck(tables=True)
    here = check_chunk(Scheduler(CFG.core, NOW), numbers, job, chunk, 0, lines=lines)
    there = _from_wire(_decode_wire(_encode(_to_wire(check_chunk(Scheduler(CFG.core, NOW), numbers, job, chunk, 0,
                                                                  lines=lines, portable=True)))))  # fmt: skip
    assert (there.index, there.errors, there.rows) == (here.index, here.errors, here.rows)
    assert there.checked.order() == here.checked.order()
    cores = [Scheduler(CFG.core, NOW), Scheduler(CFG.core, NOW)]
    for core, cc in zip(cores, (here, there)):
        core.admit_checked(job, cc.checked, NOW, first_id=1000, paused=True)
    a, b = (c._shards for c in cores)
    for s, t in zip(a, b):
        for col in ("number", "ids", "vars_at", "zone", "carrier", "segments", "state", "job", "attempt"):
            assert getattr(s, col) == getattr(t, col), col
        assert s.arena == t.arena and s.parked == t.parked
