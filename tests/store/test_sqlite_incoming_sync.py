"""A streamed job's chunks are written without a sync to disk each; the commit that makes the
job active is synced (``synchronous=FULL``) and so makes every chunk before it durable: one
sync a job, not one a chunk of 1,000 (docs/BENCHMARKS.md, Ingest, branch ``ingest5``)."""

import json
import re

import pytest

from gateway.api import schemas
from gateway.api.app import decode_lines
from gateway.config import default_text, loads
from gateway.core.model import Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.runtime.ingest import RecipientLines
from gateway.runtime.service import Gateway
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio
CFG = loads(default_text())
NOW = 1_795_546_800.0
HEAD = schemas.JobIn(sender="ACME", template="Hi {name}", category="marketing")


async def _chunks(*chunks: list[bytes]):
    for lines in chunks:
        yield RecipientLines(lines, decode_lines)


def _lines(first: int, n: int) -> list[bytes]:
    return [b'{"to":"+44791110%04d","vars":{"name":"n%d"}}' % (i, i) for i in range(first, first + n)]


def _sync_of_each_write(statements: list[str]) -> list[tuple[str, str]]:
    """(the synchronous level in force, what the transaction wrote) for each write transaction."""
    level, out, wrote = "FULL", [], None
    for s in map(str.strip, statements):
        if m := re.fullmatch(r"PRAGMA synchronous=(\w+)", s):
            level = m.group(1)
        elif s.startswith("INSERT INTO messages"):
            wrote = "chunk"
        elif s.startswith("UPDATE jobs SET status = 'active'"):
            wrote = "commit"
        elif s == "COMMIT" and wrote is not None:
            out.append((level, wrote))
            wrote = None
    return out


async def test_a_streamed_jobs_chunks_are_synced_once_by_its_commit(tmp_path):
    store = SqliteStore(str(tmp_path / "sluice.db"))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    gw = Gateway(Scheduler(CFG.core, NOW), store)

    body, _ = await gw.submit_job_stream("acme", HEAD, _chunks(_lines(0, 3), _lines(3, 4)), NOW, digest=lambda: "")

    assert _sync_of_each_write(statements) == [("NORMAL", "chunk"), ("NORMAL", "chunk"), ("FULL", "commit")]
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again for every other write
    answer = json.loads(body)
    assert answer["accepted"] == 7 and store.job("acme", answer["id"]).job.size == 7


def test_a_job_written_at_once_is_synced_and_so_is_the_next_write(tmp_path):
    store = SqliteStore(str(tmp_path / "sluice.db"))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    job = Job(id="job_1", tenant="acme", sender="Shop", template="hi", category="transactional")
    store.add_job(job, 1000, [(0, Recipient(to="+447911100000"))], NOW, incoming=True)
    store.add_job(Job(id="job_2", tenant="acme", sender="Shop", template="hi", category="transactional"),
                  2000, [(0, Recipient(to="+447911100001"))], NOW)  # fmt: skip
    assert _sync_of_each_write(statements) == [("NORMAL", "chunk"), ("FULL", "chunk")]


def test_a_store_opened_normal_stays_normal(tmp_path):
    store = SqliteStore(str(tmp_path / "sluice.db"), synchronous="NORMAL")
    job = Job(id="job_1", tenant="acme", sender="Shop", template="hi", category="transactional")
    store.add_job(job, 1000, [(0, Recipient(to="+447911100000"))], NOW, incoming=True)
    assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)
