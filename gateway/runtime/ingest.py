"""Checking a streamed job's recipients, in worker processes when the job is large.

Before the 202 every recipient of a job is checked (number, variables, segments, zone, route),
because the answer lists the rejected ones by index. That is ~5 µs of Python a recipient and it
needs nothing but the job and the configuration, so a job of a million recipients is checked in
chunks by ``CheckPool``'s worker processes (``anyio.to_process``: asyncio or trio alike) while
the event loop admits the previous chunk to the core and the store writes the one before.

A worker decodes the chunk's NDJSON lines itself, checks the numbers (``NumberCheck.sure``: one
match of the country's table a number; the others one by one) and asks a scheduler of the same
settings (``Scheduler.check``, pure, column by column for an ordinary chunk) for the rest; it answers with one
msgpack ``ChunkChecked``: the core's columns, and the accepted recipients' own JSON lines in the
order of their ids, which the store writes as they are. Zone keys are numbered per resolver, so its answer names the zone
sets (``Checked.zones``) and the loop's scheduler maps them to its own keys. A chunk that does
not decode as a whole comes back as ``None`` and is decoded again in the loop, line by line,
to name the line that is wrong (``RecipientLines.decode``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_process
import msgspec

from gateway.api import schemas
from gateway.core.model import Job, Recipient
from gateway.core.scheduler import Checked, Scheduler
from gateway.core.settings import CoreSettings
from gateway.core.shard import PackedRun
from gateway.runtime.numbers import NumberCheck

__all__ = ["ChunkChecked", "CheckPool", "RecipientLines", "check_chunk"]

log = logging.getLogger(__name__)

# Below this many recipients a chunk is checked in the loop: a worker's round trip (pipe,
# pickle, a process switch) costs more than the checking. Small, so that the loop is never held
# long by a check (~5 µs a recipient, much more on a loaded machine): chunks are ~1,000.
POOL_MIN = 256
_NICE = 10  # the workers' niceness, added to the server's


class ChunkChecked(msgspec.Struct, array_like=True, gc=False):
    index: list[int]  # the core checked people[k] = the job's recipient index[k]
    errors: list[tuple[int, str]]  # (the job's index, why): numbers that failed
    checked: Checked  # the core's check of the rest
    # Those the core accepted, in the order admission gives them ids (``Checked.order``):
    # a JSON array of recipients, what the store writes (``RecipientRows``).
    rows: bytes


@dataclass(frozen=True, slots=True)
class RecipientLines:
    """A chunk of a streamed job not decoded yet: its non-blank NDJSON lines, and how to decode
    them here (``decode(lines, first_index)``, raising ``InvalidInput`` that names the line)."""

    lines: list[bytes]
    decode: Callable[[list[bytes], int], list[schemas.RecipientIn]]

    def __len__(self) -> int:
        return len(self.lines)


def check_chunk(core: Scheduler, numbers: NumberCheck, job: Job, chunk: Sequence[schemas.RecipientIn],
                first_index: int, *, lines: Sequence[bytes] | None = None, portable: bool = False,
                ) -> ChunkChecked:  # fmt: skip
    """Check one chunk (recipient k is the job's ``first_index + k``); admits nothing.
    ``lines``: the chunk's JSON text, one recipient each, kept as the stored rows (else encoded)."""
    errors: list[tuple[int, str]] = []
    respelt: set[int] = set()  # people not written as stored (number not canonical, `zone`): rows re-encoded
    sure = numbers.sure([r.to for r in chunk])  # valid E.164 as written: one regex each
    if all(sure) and [r.zone for r in chunk].count(None) == len(chunk):  # the usual chunk: all of it
        people = list(chunk)
        index = list(range(first_index, first_index + len(chunk)))
    else:
        people, index = _numbers_checked(numbers, chunk, first_index, sure, errors, respelt)
    checked = core.check(job, people, portable=portable)  # reads to, vars and tz, as of a Recipient
    order = checked.order()  # people, in the order of their ids
    if lines is None:
        rows = _encode_json([Recipient(to=people[k].to, vars=people[k].vars, tz=people[k].tz, index=index[k])
                             for k in order])  # fmt: skip
    else:  # the text as it came (decoded and checked already: a JSON object), with its index first;
        # a number not written canonically is stored re-encoded
        rows = b"[" + b",".join([_encode_json(Recipient(to=people[k].to, vars=people[k].vars, tz=people[k].tz,
                                                        index=index[k])) if k in respelt
                                 else b'{"index":%d,' % index[k] + lines[index[k] - first_index].lstrip()[1:]
                                 for k in order]) + b"]"  # fmt: skip
    return ChunkChecked(index=index, errors=errors, checked=checked, rows=rows)


def _numbers_checked(numbers: NumberCheck, chunk: Sequence[schemas.RecipientIn], first_index: int,
                     sure: list[bool], errors: list[tuple[int, str]], respelt: set[int],
                     ) -> tuple[list[schemas.RecipientIn], list[int]]:  # fmt: skip
    """The chunk's recipients whose number (made canonical) and ``zone`` are good, and their
    indexes in the job; the others' reasons added to ``errors``, the respelt ones to ``respelt``."""
    people: list[schemas.RecipientIn] = []
    index: list[int] = []
    canonical = numbers.canonical
    for i, r, ok in zip(range(first_index, first_index + len(chunk)), chunk, sure):
        if ok and r.zone is None:
            index.append(i)
            people.append(r)
            continue
        to, err = canonical(r.to)
        if err is not None:
            errors.append((i, err))
            continue
        if r.zone is not None:  # given as `zone`: stored as `tz`, so its row is encoded, not copied
            try:
                r = msgspec.structs.replace(r, tz=schemas.local_zone(r), zone=None)
            except ValueError as exc:
                errors.append((i, str(exc)))
                continue
            respelt.add(len(people))
        if to != r.to:
            r = msgspec.structs.replace(r, to=to)
            respelt.add(len(people))
        index.append(i)
        people.append(r)
    return people, index


# A worker's answer on the wire: ``ChunkChecked`` with each shard's columns of numbers as the
# bytes of the arrays ``Shard.add_parked`` writes them to (``_TYPECODES``), so the loop makes
# each column with one ``frombytes`` instead of decoding a list of ints and converting it.
_TYPECODES = ("q", "q", None, "B", "H", "B")  # indexes, numbers, (packed values), segments, zones, carriers
# indexes, numbers, packed values (one text), their lengths (``array("I")``), segments, zones, carriers
WireColumns = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]


class _WireChecked(msgspec.Struct, array_like=True, gc=False):
    index: list[int]
    errors: list[tuple[int, str]]
    checked: Checked  # its ``columns`` None: they are ``columns`` below
    columns: list[WireColumns] | None
    rows: bytes


def _to_wire(cc: ChunkChecked) -> _WireChecked:
    checked, columns = cc.checked, cc.checked.columns
    if columns is not None:
        columns = [(*(array(code, c).tobytes() for code, c in zip(_TYPECODES[:2], cols[:2])),
                    b"".join(cols[2]), array("I", map(len, cols[2])).tobytes(),
                    *(array(code, c).tobytes() for code, c in zip(_TYPECODES[3:], cols[3:])))
                   for cols in columns]  # fmt: skip
        checked = msgspec.structs.replace(checked, columns=None)
    return _WireChecked(index=cc.index, errors=cc.errors, checked=checked, columns=columns, rows=cc.rows)


def _from_wire(w: _WireChecked | None) -> ChunkChecked | None:
    if w is None:
        return None
    checked = w.checked
    if w.columns is not None:
        checked = msgspec.structs.replace(checked, columns=[
            (_array_of("q", c[0]), _array_of("q", c[1]), PackedRun(c[2], _array_of("I", c[3])),
             _array_of("B", c[4]), _array_of("H", c[5]), _array_of("B", c[6]))
            for c in w.columns])  # fmt: skip
    return ChunkChecked(index=w.index, errors=w.errors, checked=checked, rows=w.rows)


def _array_of(code: str, data: bytes) -> array:
    out = array(code)
    out.frombytes(data)
    return out


_encode = msgspec.msgpack.Encoder().encode
_encode_json = msgspec.json.Encoder().encode
_decode_wire = msgspec.msgpack.Decoder(_WireChecked | None).decode
_decode_recipients = msgspec.json.Decoder(list[schemas.RecipientIn]).decode
_decode_settings = msgspec.msgpack.Decoder(CoreSettings).decode
_worker: tuple[bytes, Scheduler, NumberCheck] | None = None  # in a worker process: kept between chunks
_niced = False
_WARM = ("+12125550100", "+447911123456", "+4915112345678")


def _check_in_worker(settings: bytes, job: Job, lines: list[bytes], first_index: int) -> bytes:
    """Runs in a worker process. The scheduler (and its zone and number caches) is kept for
    the next chunk as long as the settings are the same."""
    global _worker, _niced
    if lines and not _niced:  # real work (not the warm-up, which /readyz waits for)
        # Checking is bulk work: the server's event loop (other tenants' requests) goes first
        # when the CPUs are short (`sluice bench fairness`).
        _niced = True
        with contextlib.suppress(OSError):
            os.nice(_NICE)
    if _worker is None or _worker[0] != settings:
        _worker = (settings, Scheduler(_decode_settings(settings), 0.0), NumberCheck(tables=True))
        for number in _WARM:  # phonenumbers loads its data lazily (NANP's zones: ~0.4 s): now
            _worker[2].error(number)
            _worker[1].resolver.key_for(int(number[1:]))
        _worker[2].sure(_WARM)  # and these countries' tables and prefix patterns (NANP's: ~0.1 s)
    _, core, numbers = _worker
    try:
        chunk = _decode_recipients(b"[" + b",".join(lines) + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _encode(None)  # the loop decodes it line by line to say which line
    return _encode(_to_wire(check_chunk(core, numbers, job, chunk, first_index, lines=lines, portable=True)))


class CheckPool:
    """Up to ``workers`` processes that check chunks (started on first use, kept while busy)."""

    def __init__(self, settings: CoreSettings, workers: int) -> None:
        if workers < 1:
            raise ValueError("a check pool needs at least one worker")
        self.workers = workers
        self.ready = False  # set once ``warm`` has started the workers (or failed to)
        self.chunks = 0  # chunks checked in the workers so far
        self._settings = msgspec.msgpack.encode(settings)
        self._limiter = anyio.CapacityLimiter(workers)

    async def check(self, job: Job, lines: list[bytes], first_index: int) -> ChunkChecked | None:
        """The chunk checked in a worker, or None if it does not decode as a whole."""
        raw = await anyio.to_process.run_sync(_check_in_worker, self._settings, job, lines, first_index,
                                              limiter=self._limiter)  # fmt: skip
        if lines:
            self.chunks += 1
        return _from_wire(_decode_wire(raw))

    async def warm(self) -> None:
        """Start every worker now (imports, settings), so the first large job does not wait for
        them. A worker that fails to start is logged; checking falls back to the loop."""
        job = Job(id="warm-up", tenant="", sender="S", template="x", category=_any_category(self._settings))

        async def one() -> None:
            try:
                await self.check(job, [], 0)
            except Exception as exc:  # noqa: BLE001 - logged: the pool is an optimisation
                log.warning("ingest.worker_failed error=%r", exc)

        async with anyio.create_task_group() as tg:
            for _ in range(self.workers):
                tg.start_soon(one)
        self.ready = True


def _any_category(settings: bytes) -> str:
    return next(iter(_decode_settings(settings).categories))
