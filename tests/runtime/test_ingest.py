"""Large streamed jobs are checked in worker processes (gateway/runtime/ingest.py)."""

import json

import pytest
from anyio import BrokenWorkerProcess

from gateway.api import schemas
from gateway.api.app import decode_lines
from gateway.config import default_text, loads
from gateway.core.scheduler import Scheduler
from gateway.errors import InvalidInput
from gateway.runtime.app import _ready
from gateway.runtime.ingest import POOL_MIN, CheckPool, RecipientLines
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
