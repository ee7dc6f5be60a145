"""The gateway's use cases: submit, query, control. Between the API and the core and store.

Ordering that makes a 202 honest: a job is admitted to the core *paused* (so the core validates
each recipient and assigns ids), written to the store in one transaction, and only then resumed.
If the store fails, the paused messages are canceled in the core and the caller gets a 503:
nothing was promised, nothing is sent.

Every method takes ``now`` from the caller (the runtime's clock), like the core. Core calls run
on the event loop's thread (the core is not thread-safe); store calls run in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from functools import partial
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
from anyio import BrokenWorkerProcess
import msgspec

from gateway.api import schemas
from gateway.core.ids import format_id, parse_id
from gateway.core.model import Final, Job, Outcome, Recipient
from gateway.core.scheduler import Scheduler
from gateway.errors import Conflict, InvalidInput, NotFound, SluiceError
from gateway.runtime.ingest import POOL_MIN, CheckPool, ChunkChecked, RecipientLines, check_chunk
from gateway.runtime.numbers import NumberCheck
from gateway.store.base import (
    AWAITING, JOB_STATUSES, Change, InboundPage, InboundRecord, NewJob, RecipientRows, Store, StoredJob, job_status,
)  # fmt: skip

__all__ = ["AllRejected", "Gateway", "Recovery"]


class AllRejected(InvalidInput):
    """A job none of whose recipients could be accepted: nothing is stored, no id is given."""

    code = "all_recipients_rejected"

    def __init__(self, rejected: Rejections) -> None:
        super().__init__(f"every recipient was rejected ({rejected.count})", field="recipients",
                         index=rejected.first[0].index if rejected.first else None)  # fmt: skip
        self.rejected = rejected.first  # the first ones in full; all of them counted
        self.rejected_count = rejected.count
        self.rejected_by_reason = rejected.by_reason


class JobFinished(Conflict):
    """pause/resume/cancel of a job that can no longer change that way (canceled or completed)."""

    code = "job_finished"

_json = msgspec.json.Encoder()


class Recovery(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Gateway.recover`` found: ``queued`` messages are in the core again; ``awaiting``
    are (message id, carrier, carrier ids) of messages a carrier took, waiting for receipts."""

    queued: int
    awaiting: list[tuple[int, str, tuple[str, ...]]]
    capped_sends: int = 0  # sends counted against the weekly caps again


class Gateway:
    def __init__(self, scheduler: Scheduler, store: Store, *, numbers: NumberCheck | None = None,
                 on_changes: Callable[[list[Change]], None] | None = None,
                 on_outbox: Callable[[], None] | None = None, pool: CheckPool | None = None,
                 ) -> None:  # fmt: skip
        """``pool``: worker processes that check the recipients of large streamed jobs."""
        self.core = scheduler
        self.pool = pool
        self.store = store
        self.numbers = numbers or NumberCheck()
        # A large job's chunks checked here (no pool, or a worker lost) ask ``sure`` of the numbers'
        # prefix classes, as the workers do: one or two dict hits a number instead of ``canonical``.
        # Its tables compile at a country's first large chunk (0.05-0.3 s, once a process), never for
        # a single message or a small job, which keep ``self.numbers``.
        self._chunk_numbers = NumberCheck(tables=True)
        self._on_changes = on_changes
        self._on_outbox = on_outbox  # a write queued webhooks: wake their sender
        self.on_admitted: Callable[[], None] | None = None  # the dispatcher's wake-up
        # Awaited between the chunks of a large job: other requests go first (the API's ``Traffic``).
        self.give_way: Callable[[], Awaitable[None]] | None = None
        self._writes = _GroupCommit(store)
        self._idem_locks: dict[tuple[str, str], list] = {}  # (tenant, key) -> [lock, users]

    @staticmethod
    async def _io(fn, *args):
        """Store calls may block on disk: run them in a worker thread, never on the loop."""
        return await anyio.to_thread.run_sync(fn, *args)

    # -- submission ---------------------------------------------------------------------

    async def submit_message(self, tenant: str, body: schemas.MessageIn, now: float, *,
                       raw: bytes = b"", idempotency_key: str | None = None) -> tuple[bytes, bool]:  # fmt: skip
        """Returns (response JSON, replayed?). Raises InvalidInput naming the field."""
        async with self._once(tenant, idempotency_key):
            return await self._submit_message(tenant, body, now, raw, idempotency_key)

    async def _submit_message(self, tenant: str, body: schemas.MessageIn, now: float, raw: bytes,
                              idempotency_key: str | None) -> tuple[bytes, bool]:  # fmt: skip
        digest = _digest(raw)
        if idempotency_key and (prev := await self._io(self.store.remembered, tenant, idempotency_key, digest)) is not None:
            return prev, True
        one = self._admit_message(tenant, body, now)
        if await self._persist(one.job, one.first_id, [(0, one.person)], now, one.body,
                               (idempotency_key, digest, one.response) if idempotency_key else None):  # fmt: skip
            return await self._io(self.store.remembered, tenant, idempotency_key, digest), True
        await self._report(one.outcomes, now)
        return one.response, False

    def _admit_message(self, tenant: str, body: schemas.MessageIn, now: float) -> _Admitted:
        """The checks of one message (number, zone, category, then the core's: opt-outs, quiet
        hours, caps, segments), admitted *paused* to the core; InvalidInput naming the field."""
        to, err = self.numbers.canonical(body.to)
        if err is not None:
            raise InvalidInput(err, field="to")
        if to != body.to:
            body = msgspec.structs.replace(body, to=to)
        try:
            tz = schemas.local_zone(body)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="zone") from None
        job = self._job(tenant, body.sender, body.body, body.category, body.send_at, body.validity, now, body.media,
                        body.reference)  # fmt: skip
        person = Recipient(to=body.to, tz=tz, index=0)
        adm = self._admit(job, [person], now, "body")
        if adm.rejected:
            self.core.cancel_job(job.id, now)
            raise InvalidInput(adm.rejected[0][1], field=_field_of(adm.rejected[0][1], single=True))
        state = _status_of(adm.outcomes, adm.first_id)
        response = _json.encode(schemas.MessageAccepted(id=format_id(adm.first_id), state=state, status=state))
        return _Admitted(job, adm.first_id, person, body, adm.outcomes, response)

    async def submit_messages(self, tenant: str, items: Sequence[tuple[schemas.MessageIn, bytes, str]],
                              now: float) -> list[bytes | SluiceError]:  # fmt: skip
        """A batch of messages, each (body, its raw bytes, its idempotency key): answered one by
        one as ``submit_message`` answers each alone (the stored answer of a key seen before; the
        same checks; a CallerError of its own), but their keys looked up in one store call and
        the new ones written in one transaction (``_GroupCommit.add_all``). In the batch's order:
        the core admits them in that order. A key given twice in a batch is one message."""
        out: list[bytes | SluiceError | None] = [None] * len(items)
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted({k for _, _, k in items}):  # one order for every request: no deadlock
                await stack.enter_async_context(self._once(tenant, key))
            digests = [_digest(raw) for _, raw, _ in items]
            stored = await self._io(self._remembered_all, tenant, [(k, d) for (_, _, k), d in zip(items, digests)])
            firsts: dict[str, int] = {}
            fresh: list[tuple[int, _Admitted]] = []
            try:
                for i, ((body, _, key), prev) in enumerate(zip(items, stored)):
                    if prev is not None:
                        out[i] = prev
                    elif key in firsts:
                        continue  # answered below, as its first occurrence is
                    else:  # as if alone: a key whose message was refused is free for the next one
                        try:
                            fresh.append((i, self._admit_message(tenant, body, now)))
                            firsts[key] = i
                        except InvalidInput as exc:
                            out[i] = exc
            except BaseException:
                for _, a in fresh:  # admitted paused, never stored: never promised
                    self.core.cancel_job(a.job.id, now)
                raise
            await self._persist_all(tenant, fresh, [(items[i][2], digests[i]) for i, _ in fresh], out, now)
        for i, (_, _, key) in enumerate(items):
            if out[i] is None:  # the same key earlier in this batch: its answer, if the same bytes
                j = firsts[key]
                same = digests[i] == digests[j]
                out[i] = out[j] if same else Conflict(f"idempotency key {key!r} was used with another request body",
                                                      code="idempotency_key_reused")  # fmt: skip
        return out  # type: ignore[return-value]

    def _remembered_all(self, tenant: str, pairs: Sequence[tuple[str, str]]) -> list[bytes | Conflict | None]:
        found: list[bytes | Conflict | None] = []
        for key, digest in pairs:
            try:
                found.append(self.store.remembered(tenant, key, digest))
            except Conflict as exc:
                found.append(exc)
        return found

    async def _persist_all(self, tenant: str, fresh: Sequence[tuple[int, _Admitted]],
                           idems: Sequence[tuple[str, str]], out: list, now: float) -> None:  # fmt: skip
        """``_persist`` for a batch's new messages, all in one store transaction; each answer
        (or a Conflict of its own) at its index of ``out``. A failed transaction raises."""
        if not fresh:
            return
        items = [NewJob(job=a.job, first_id=a.first_id, recipients=[(0, a.person)], now=now,
                        callback_url=a.body.callback_url, callback_states=_states(a.body),
                        idempotency=(key, digest, a.response)) for (_, a), (key, digest) in zip(fresh, idems)]  # fmt: skip
        errors = await self._writes.add_all(items)  # shielded; a failed transaction fails every item
        outcomes: list[Outcome] = []
        taken: list[tuple[int, str, str]] = []
        bug: Exception | None = None
        for (i, a), (key, digest), err in zip(fresh, idems, errors):
            if err is None:
                self.core.resume_job(a.job.id)
                out[i] = a.response
                outcomes += a.outcomes
                continue
            self.core.cancel_job(a.job.id, now)  # not stored: never promised
            if isinstance(err, Conflict):
                taken.append((i, key, digest))  # another process stored this key meanwhile
            elif isinstance(err, SluiceError):
                out[i] = err  # a StorageError: this message alone answers 503
            else:
                bug = err
        if taken:
            answers = await self._io(self._remembered_all, tenant, [(k, d) for _, k, d in taken])
            for (i, key, _), answer in zip(taken, answers):
                out[i] = answer if answer is not None else Conflict(f"idempotency key {key!r} is taken",
                                                                    code="idempotency_key_reused")  # fmt: skip
        if self.on_admitted:
            self.on_admitted()
        await self._report(outcomes, now)
        if bug is not None:
            raise bug

    async def submit_job(self, tenant: str, body: schemas.JobIn, now: float, *,
                   raw: bytes = b"", idempotency_key: str | None = None) -> tuple[bytes, bool]:  # fmt: skip
        """Returns (response JSON, replayed?). Raises AllRejected if no recipient is accepted."""
        async with self._once(tenant, idempotency_key):
            return await self._submit_job(tenant, body, now, raw, idempotency_key)

    async def _submit_job(self, tenant: str, body: schemas.JobIn, now: float, raw: bytes,
                          idempotency_key: str | None) -> tuple[bytes, bool]:  # fmt: skip
        digest = _digest(raw)
        if idempotency_key and (prev := await self._io(self.store.remembered, tenant, idempotency_key, digest)) is not None:
            return prev, True
        if not body.recipients:
            raise InvalidInput("a job needs at least one recipient", field="recipients")
        job = self._job(tenant, body.sender, body.template, body.category, body.send_at, body.validity, now, body.media,
                        body.reference)  # fmt: skip
        people: list[Recipient] = []
        pre_rejected: list[schemas.RecipientError] = []
        index: list[int] = []  # position in the request of each recipient handed to the core
        for i, r in enumerate(body.recipients):
            to, err = self.numbers.canonical(r.to)
            if err is None:
                try:
                    tz = schemas.local_zone(r)
                except ValueError as exc:
                    err = str(exc)
            if err is not None:
                pre_rejected.append(schemas.RecipientError(index=i, error=err))
                continue
            index.append(i)
            people.append(Recipient(to=to, vars=r.vars, tz=tz, index=i))
        adm = self._admit(job, people, now, "template")
        rejected = pre_rejected + [schemas.RecipientError(index=index[k], error=e) for k, e in adm.rejected]
        rejected.sort(key=lambda e: e.index)
        kept = _in_id_order(adm.offsets, people)
        rejections = Rejections().add(rejected)
        if not kept:
            self.core.cancel_job(job.id, now)
            raise AllRejected(rejections)
        response = _json.encode(rejections.answer(job.id, len(kept)))
        if await self._persist(job, adm.first_id, kept, now, body,
                               (idempotency_key, digest, response) if idempotency_key else None):  # fmt: skip
            return await self._io(self.store.remembered, tenant, idempotency_key, digest), True
        await self._report(adm.outcomes, now)
        return response, False

    async def submit_job_stream(self, tenant: str, head: schemas.JobIn,
                                chunks: AsyncIterator[Sequence[schemas.RecipientIn]], now: float, *,
                                digest: Callable[[], str], idempotency_key: str | None = None,
                                release: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
                                ) -> tuple[bytes, bool]:  # fmt: skip
        """A job whose recipients arrive in chunks (NDJSON): memory stays bounded by a chunk.

        All or nothing. Each chunk is admitted to the core paused and written to the store as
        part of an *incoming* job, which is never recovered nor sent; after the last chunk one
        transaction makes it active (with its idempotency key) and only then is it resumed and
        the 202 sent. If the upload fails midway (the client goes away, a malformed line, the
        store fails) the job is canceled in the core and dropped from the store; if the process
        dies midway, ``recover`` drops the incoming job at the next start. ``digest`` gives the body's
        SHA-256 once the stream has been read (for the idempotency key).

        The committed job's parked messages are then made ready (``release_job``: ~0.1 µs a
        message, in steps). With ``release``, that is handed to it instead of being done before
        returning: the API runs it after the 202 is sent, which needs only the commit."""
        job = self._job(tenant, head.sender, head.template, head.category, head.send_at, head.validity, now, head.media,
                        head.reference)  # fmt: skip
        seen = accepted = 0
        rejected = Rejections()  # the first ones in full, then counted: the answer stays small
        outcomes: list[Outcome] = []
        writer = _ChunkWriter(partial(self._write_chunks, job, now, head))
        try:
            failure: Exception | None = None
            async with anyio.create_task_group() as tg:
                # Chunks are checked ahead (in the pool's processes, up to one per worker
                # waiting) and admitted here in order: the core and the ids stay in this thread.
                send, receive = anyio.create_memory_object_stream[_Checking](self.pool.workers if self.pool else 0)
                tg.start_soon(self._check_ahead, tg, job, chunks, send)
                try:
                    async with receive:
                        async for item in receive:
                            await item.done.wait()
                            await self._give_way()
                            if item.error is not None:
                                raise item.error
                            kept, errors, adm_outcomes = self._admit_checked(job, self._checked(job, item), now)
                            seen += len(item.chunk)
                            rejected.add(errors)
                            outcomes += adm_outcomes
                            if kept[1]:
                                # The store writes this chunk in a worker thread while the next one
                                # is admitted here (SQLite releases the GIL as it writes).
                                accepted += len(kept[1])
                                await writer.start(tg, kept[0], kept[1])
                    await writer.wait()
                except Exception as exc:  # raised as itself below, not in an exception group
                    failure = exc
                    tg.cancel_scope.cancel()  # the body is not read further
                    await writer.wait_quietly()
            if failure is not None:
                raise failure
            if not seen:
                raise InvalidInput("a job needs at least one recipient", field="recipients")
            if not accepted:
                raise AllRejected(rejected)
            response = _json.encode(rejected.answer(job.id, accepted))
            async with self._once(tenant, idempotency_key):
                prev = await self._commit_stream(tenant, job, now, idempotency_key, digest, response)
            if prev is not None:
                await self._abandon(job, now, accepted)
                return prev, True
        except BaseException:
            await self._abandon(job, now, accepted)
            raise
        if accepted:
            await self._report(outcomes, now)
            if release is None:
                await self.release_job(job.id)
            else:
                release(partial(self.release_job, job.id))
        return response, False

    async def release_job(self, job_id: str) -> None:
        """A committed streamed job's parked messages made ready for dispatch. A million of them
        in steps: other requests are served between, and a pause or cancel between two steps
        holds the rest (``Scheduler.resume_more``)."""
        self.core.resume_job(job_id, limit=_RESUME_STEP)
        while self.core.resume_more(job_id, _RESUME_STEP):
            await self._give_way()
        if self.on_admitted:
            self.on_admitted()

    def _write_chunks(self, job: Job, now: float, head: schemas.JobIn, chunks: list[tuple[int, Any]]) -> None:
        """Chunks of an incoming job in one transaction (a worker thread); the first error raised."""
        items = [NewJob(job=job, first_id=first_id, recipients=kept, now=now, callback_url=head.callback_url,
                        callback_states=_states(head), incoming=True) for first_id, kept in chunks]  # fmt: skip
        for error in self.store.add_jobs(items):
            if error is not None:
                raise error

    async def _give_way(self) -> None:
        if self.give_way is not None:
            await self.give_way()
        else:
            await anyio.lowlevel.checkpoint()

    async def _commit_stream(self, tenant: str, job: Job, now: float, key: str | None,
                             digest: Callable[[], str], response: bytes) -> bytes | None:  # fmt: skip
        """Make a streamed job active; or, if its idempotency key has an answer already (the
        same body, sent concurrently), that answer (the caller drops this job)."""
        if not key:
            await self._io(self.store.commit_job, tenant, job.id, now, None)
            return None
        if (prev := await self._io(self.store.remembered, tenant, key, digest())) is not None:
            return prev
        try:
            await self._io(self.store.commit_job, tenant, job.id, now, (key, digest(), response))
        except Conflict:  # another process took the key meanwhile: its answer, or 409 if another body
            if (prev := await self._io(self.store.remembered, tenant, key, digest())) is None:
                raise
            return prev
        return None

    @contextlib.asynccontextmanager
    async def _once(self, tenant: str, key: str | None):
        """Requests with the same idempotency key run one at a time (in this process), so a
        repeat waits for the first and gets its stored answer instead of racing it to the store."""
        if not key:
            yield
            return
        entry = self._idem_locks.setdefault((tenant, key), [anyio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._idem_locks[(tenant, key)]

    async def _check_ahead(self, tg, job: Job, chunks, send) -> None:
        """Read the chunks and start checking each large one in the pool; hand them on in order.
        A failure to read the body is handed on too, to be raised where the chunks are taken."""
        seen = 0
        async with send:
            try:
                async for chunk in chunks:
                    item = _Checking(chunk, seen)
                    seen += len(chunk)
                    if self.pool is not None and isinstance(chunk, RecipientLines) and len(chunk) >= POOL_MIN:
                        tg.start_soon(self._check_in_pool, job, item)
                    else:
                        item.done.set()  # checked where it is taken
                    await send.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the taker stopped (it failed): nothing more to check
            except Exception as exc:
                item = _Checking([], seen)
                item.error = exc
                item.done.set()
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await send.send(item)

    async def _check_in_pool(self, job: Job, item: _Checking) -> None:
        try:
            item.result = await self.pool.check(job, item.chunk.lines, item.first)
        except BrokenWorkerProcess:
            pass  # e.g. the worker was killed: checked in the loop instead
        except ValueError as exc:  # the body itself is wrong (e.g. too long), for every recipient
            item.error = InvalidInput(str(exc), field="template")
        except Exception as exc:
            item.error = exc
        finally:
            item.done.set()

    def _checked(self, job: Job, item: _Checking) -> ChunkChecked:
        """The chunk's check: from the pool, or done here (small chunks, no pool, or a chunk that
        did not decode as a whole, which decoding it here line by line explains)."""
        if item.result is not None:
            return item.result
        chunk = item.chunk
        lines = chunk.lines if isinstance(chunk, RecipientLines) else None
        people = chunk.decode(lines, item.first) if lines is not None else chunk
        try:
            numbers = self._chunk_numbers if len(people) >= POOL_MIN else self.numbers
            return check_chunk(self.core, numbers, job, people, item.first, lines=lines)
        except ValueError as exc:  # the body itself is wrong (e.g. too long), for every recipient
            raise InvalidInput(str(exc), field="template") from exc

    def _admit_checked(self, job: Job, cc: ChunkChecked, now: float):
        """Admit (paused) one checked chunk; returns ((first id, rows to store), errors, outcomes)."""
        checked = cc.checked
        adm = self.core.admit_checked(job, checked, now, paused=True)
        rows = RecipientRows(json=cc.rows, count=adm.accepted)
        if len(adm.rejected) > len(checked.rejected):  # rejected at admission too: rows without them
            order = checked.order()
            people = msgspec.json.decode(cc.rows, type=list[Recipient])
            kept = [r for i, r in zip(order, people) if adm.offsets[i] >= 0]
            rows = RecipientRows(json=_json.encode(kept), count=len(kept))
        errors = [schemas.RecipientError(index=i, error=e) for i, e in cc.errors]
        if adm.rejected:
            errors += [schemas.RecipientError(index=cc.index[k], error=e) for k, e in adm.rejected]
            errors.sort(key=lambda e: e.index)
        return (adm.first_id, rows), errors, adm.outcomes

    async def _abandon(self, job: Job, now: float, stored: int) -> None:
        """Undo an unfinished streamed job: nothing of it was promised."""
        self.core.cancel_job(job.id, now)
        if stored:
            with anyio.CancelScope(shield=True):
                await self._io(self.store.drop_job, job.tenant, job.id)

    def _job(self, tenant: str, sender: str, template: str, category: str, send_at: float | None,
             validity: int | None, now: float, media: Sequence[str] = (), reference: str | None = None) -> Job:  # fmt: skip
        if category not in self.core.settings.categories:
            raise InvalidInput(f"unknown category {category!r}", field="category")
        start = send_at if send_at is not None and send_at > now else now
        return Job(id="job_" + format_id(self.core.reserve_ids(1, now)), tenant=tenant, sender=sender,
                   template=template, category=category, not_before=send_at,
                   expires_at=None if validity is None else start + validity, media=tuple(media),
                   reference=reference)  # fmt: skip

    def _admit(self, job: Job, people: Sequence[Recipient], now: float, field: str):
        try:
            return self.core.admit(job, people, now, paused=True)
        except ValueError as exc:  # the body itself is wrong (e.g. too long), for every recipient
            raise InvalidInput(str(exc), field=field) from exc

    async def _persist(self, job: Job, first_id: int, kept, now: float,
                       body: schemas.MessageIn | schemas.JobIn, idem) -> bool:  # fmt: skip
        """Store the job, then let it go. True if not stored because its idempotency key was
        taken meanwhile (by another process on the same store) with the same body: the caller
        answers with the stored answer. Another body: Conflict (409)."""
        try:
            await self._writes.add(NewJob(job=job, first_id=first_id, recipients=kept, now=now,
                                          callback_url=body.callback_url, callback_states=_states(body),
                                          idempotency=idem))  # fmt: skip
        except Exception as exc:
            self.core.cancel_job(job.id, now)  # never promised: drop it from the queue
            if isinstance(exc, Conflict) and idem is not None:
                if await self._io(self.store.remembered, job.tenant, idem[0], idem[1]) is not None:
                    return True
            raise
        self.core.resume_job(job.id)
        if self.on_admitted:
            self.on_admitted()
        return False

    async def _report(self, outcomes: Sequence[Outcome], now: float) -> None:
        changes = [_change(o, now) for o in outcomes]
        if changes:
            if await self._io(self.store.record, changes) and self._on_outbox:
                self._on_outbox()
            if self._on_changes:
                self._on_changes(changes)

    # -- queries and control ------------------------------------------------------------

    async def job_status(self, tenant: str, job_id: str) -> schemas.JobStatus:
        got = await self._io(self.store.job, tenant, _job_id(job_id)) if _job_id(job_id) else None
        if got is None or got.job.status == "incoming":
            raise NotFound(f"no job {job_id!r}")
        return _job_out(got.job, got.counts)

    async def jobs(self, tenant: str, status: str | None, after: str | None, limit: int) -> schemas.JobPage:
        if status is not None and status not in JOB_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(JOB_STATUSES)}", field="status")
        if after is not None and not _job_id(after):
            raise InvalidInput("after must be a job id", field="after", code="invalid_cursor")
        page = await self._io(partial(self.store.jobs, tenant, after=after or "", limit=limit, status=status))
        return schemas.JobPage(jobs=[_job_out(j.job, j.counts) for j in page.jobs], next=page.next_after)

    async def control_job(self, tenant: str, job_id: str, action: str, now: float) -> schemas.JobStatus:
        """cancel, pause or resume. A canceled or completed job cannot be paused or resumed, and
        a completed one cannot be canceled (409 ``job_finished``, nothing changes); canceling a
        canceled job, pausing a paused one or resuming an active one is a no-op (200)."""
        current = await self.job_status(tenant, job_id)
        if current.status == "completed" or (current.status == "canceled" and action != "cancel"):
            raise JobFinished(f"job {job_id!r} is {current.status}: it cannot be {_DONE.get(action, action)}")
        if action == "cancel":
            ended = self.core.cancel_job(job_id, now)
            await self._report(ended, now)
            await self._io(self.store.set_job_status, tenant, job_id, "canceled")
        elif action == "pause":
            self.core.pause_job(job_id)
            await self._io(self.store.set_job_status, tenant, job_id, "paused")
        elif action == "resume":
            self.core.resume_job(job_id)
            await self._io(self.store.set_job_status, tenant, job_id, "active")
        else:
            raise NotFound(f"no action {action!r}")
        return await self.job_status(tenant, job_id)

    async def message(self, tenant: str, message_id: str) -> schemas.MessageOut:
        try:
            mid = parse_id(message_id)
        except ValueError:
            raise NotFound(f"no message {message_id!r}") from None
        m = await self._io(self.store.message, tenant, mid)
        if m is None:
            raise NotFound(f"no message {message_id!r}")
        stored = await self._io(self.store.job_info, tenant, m.job_id)
        if stored is not None and stored.status == "incoming":
            raise NotFound(f"no message {message_id!r}")
        count, encoding = 0, None
        if stored is not None:
            try:
                count, encoding = self.core.segments_of(stored.job.template, m.recipient.vars)
            except (ValueError, KeyError):  # e.g. over the maximum: it was rejected, never sent
                pass
        # A store written before numbers were made canonical at the door may hold other spellings.
        to = self.numbers.canonical(m.recipient.to)[0] or m.recipient.to
        return schemas.MessageOut(
            id=format_id(mid), job_id=m.job_id, to=to, index=m.recipient.index,
            reference=stored.job.reference if stored else None, state=m.state, carrier=m.carrier,
            segments=count, encoding=encoding, carrier_ids=list(m.carrier_ids), attempts=m.attempts,
            history=[schemas.StateChangeOut(state=c.state, at=c.at, reason=c.reason, carrier=c.carrier,
                                            error_code=c.error_code) for c in m.history],
            error_code=m.error_code,
        )  # fmt: skip

    async def job_messages(self, tenant: str, job_id: str, state: str | None, after: str | None,
                     limit: int) -> schemas.MessagePage:  # fmt: skip
        stored = await self._io(self.store.job_info, tenant, job_id) if _job_id(job_id) else None
        if stored is None or stored.status == "incoming":
            raise NotFound(f"no job {job_id!r}")
        try:
            start = parse_id(after) if after is not None else 0
        except ValueError:
            raise InvalidInput("after must be a message id", field="after", code="invalid_cursor") from None
        page = await self._io(partial(self.store.messages, tenant, job_id, state=state, after=start, limit=limit))
        ref = stored.job.reference
        return schemas.MessagePage(
            messages=[schemas.MessageSummary(id=format_id(i), state=s, status=s, to=r.to, index=r.index, reference=ref)
                      for (i, s), r in zip(page.ids, page.recipients, strict=True)],
            next=format_id(page.next_after) if page.next_after is not None else None,
        )  # fmt: skip

    async def suppress(self, tenant: str, number: str, now: float, source: str = "api") -> str:
        """Put ``number`` (any accepted spelling) on the tenant's list; returns it as kept."""
        canonical, err = self.numbers.canonical(number)
        if err is not None:
            raise InvalidInput(err, field="number")
        await self._io(self.store.suppress, tenant, canonical, now, source)
        self.core.suppress(tenant, canonical)
        return canonical

    async def unsuppress(self, tenant: str, number: str) -> bool:
        number, err = self.numbers.canonical(number)
        if err is not None:
            return False  # suppress() takes only valid numbers: this one cannot be on the list
        self.core.unsuppress(tenant, number)
        return await self._io(self.store.unsuppress, tenant, number)

    async def suppressions(self, tenant: str) -> list[schemas.SuppressionOut]:
        return [schemas.SuppressionOut(number=s.number, at=s.at, source=s.source)
                for _, s in await self._io(self.store.suppressions, tenant)]  # fmt: skip

    async def keep_inbound(self, record: InboundRecord, *, url: str | None = None, key: str | None = None,
                           since: float = 0.0) -> tuple[int, bool]:
        """Store an inbound message, once per ``key`` (``Store.add_inbound_once``). An opt-out
        suppresses its sender in the core first, at once (before any await: queued marketing to
        it is never taken again), then on disk with the record itself as the audit; an opt-in is
        the reverse. A sender that is not canonical (``sender_canonical`` False) is kept and
        listed with its kind, flagged, and suppresses nothing: it is not a number we send to.
        Returns (the record's id, stored now: False for a duplicate)."""
        number = record.sender
        if record.tenant and record.sender_canonical:
            if record.kind == "opt_out":
                self.core.suppress(record.tenant, number)
            elif record.kind == "opt_in":
                self.core.unsuppress(record.tenant, number)
        return await self._io(partial(self.store.add_inbound_once, record, url=url, key=key, since=since))

    async def question_pending(self, tenant: str, number: str, since: float) -> bool:
        return await self._io(self.store.question_pending, tenant, number, since)

    async def tenants_messaged(self, number: str, since: float) -> list[str]:
        return await self._io(self.store.tenants_messaged, number, since)

    async def inbound_messages(self, tenant: str, after: int, limit: int, kind: str | None) -> InboundPage:
        return await self._io(partial(self.store.inbound, tenant, after=after, limit=limit, kind=kind))

    async def inbound_page(self, tenant: str, after: int, limit: int, kind: str | None) -> schemas.InboundPageOut:
        page = await self.inbound_messages(tenant, after, limit, kind)
        return schemas.InboundPageOut(
            inbound=[schemas.InboundMessageOut(id=r.id, sender=r.sender, recipient=r.recipient, text=r.text, at=r.at,
                                               carrier=r.carrier, kind=r.kind, keyword=r.keyword,
                                               sender_canonical=r.sender_canonical, certain=r.certain)
                     for r in page.items],
            next=page.next_after,
        )  # fmt: skip

    async def recover(self, now: float, *, carriers: Collection[str] = ()) -> Recovery:
        """After a restart: queue again everything accepted and not final (see ``Recovery``).

        A message in state ``submitted`` or ``accepted`` on one of ``carriers`` (SMPP and HTTP
        alike) was taken by that carrier: it is not sent again but handed back
        (``Recovery.awaiting``) to wait for its receipt or its horizon. Every
        other unfinished message is queued again with its own id: those that were on the wire
        when the process died cannot be told from those never sent, so they go again (the
        duplicates are bounded by the carriers' windows). A ``submitted`` message whose carrier
        is gone is sent again and marked retried.

        The weekly caps are rebuilt from the store: every capped message a carrier took within
        the cap's window counts again (except those queued again here: they count when sent)."""
        await self._io(self.store.drop_incoming)  # uploads cut short by the crash: never promised
        for tenant, s in await self._io(self.store.suppressions):
            self.core.suppress(tenant, s.number)
        awaiting = [a for a in await self._io(self.store.awaiting_receipts) if a[1] in carriers]
        waits = {mid for mid, _, _ in awaiting}
        count, retried, again = 0, [], set()
        ended: list[Outcome] = []  # expired while we were down, or opted out since: end them now
        for stored, rest in await self._io(lambda: list(self.store.unfinished())):
            self.core.reserve_ids(0, now, floor=stored.first_id + stored.size)
            # Each message keeps its id: admit one by one with its own id (recovery is rare).
            for offset, person, state in rest:
                mid = stored.first_id + offset
                if mid in waits:
                    continue
                ended += self.core.admit(stored.job, [person], now, first_id=mid,
                                         paused=stored.status == "paused").outcomes  # fmt: skip
                count += 1
                again.add(mid)
                if state in AWAITING:
                    retried.append(Change(message_id=mid, state="queued", at=now, reason="retried: recovered"))
            if stored.status == "paused":  # still paused: its validity runs out on time
                self.core.pause_job(stored.job.id)
            if stored.status == "canceled":
                await self._report(self.core.cancel_job(stored.job.id, now), now)
        if retried:
            await self._io(self.store.record, retried)
        await self._report(ended, now)
        window = self.core.settings.weekly_cap.window_days * 86400.0
        sends = await self._io(self.store.sends_since, now - window, self.core.capped_categories())
        capped = self.core.restore_sends((tenant, to, at) for mid, tenant, to, at in sends if mid not in again)
        return Recovery(queued=count, awaiting=awaiting, capped_sends=capped)


_RESUME_STEP = 10_000  # parked messages made ready at a time (~5 ms)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class Rejections:
    """A job's rejected recipients as its answer carries them: the first ``REJECTED_IN_FULL`` in
    full (by index), every one counted by reason (the reason with quoted values, such as the
    number itself, left out). A job of a million bad numbers answers a few kB, not 100 MB."""

    def __init__(self, in_full: int = schemas.REJECTED_IN_FULL) -> None:
        self._in_full = in_full
        self.first: list[schemas.RecipientError] = []
        self.count = 0
        self.by_reason: dict[str, int] = {}

    def add(self, errors: Sequence[schemas.RecipientError]) -> Rejections:
        """Errors in index order (one chunk after the other)."""
        room = self._in_full - len(self.first)
        if room > 0:
            self.first += errors[:room]
        self.count += len(errors)
        by = self.by_reason
        for e in errors:
            key = _QUOTED.sub("…", e.error)
            by[key] = by.get(key, 0) + 1
        return self

    def answer(self, job_id: str, accepted: int) -> schemas.JobAccepted:
        return schemas.JobAccepted(id=job_id, accepted=accepted, rejected=self.first, rejected_count=self.count,
                                   rejected_by_reason=self.by_reason)  # fmt: skip


class _Checking:
    """A chunk of a streamed job on its way to admission: checked (``result``) or failed
    (``error``) once ``done`` is set; ``result`` None means "check it in the loop"."""

    __slots__ = ("chunk", "first", "done", "result", "error")

    def __init__(self, chunk, first: int) -> None:
        self.chunk = chunk
        self.first = first  # the job's index of the chunk's first recipient
        self.done = anyio.Event()
        self.result: ChunkChecked | None = None
        self.error: Exception | None = None


class _Slot:
    __slots__ = ("item", "ready", "done", "error")

    def __init__(self, item: NewJob) -> None:
        self.item = item
        self.ready = anyio.Event()  # set when written (done) or when it must lead the next write
        self.done = False
        self.error: Exception | None = None


class _Admitted(NamedTuple):
    """A message admitted (paused) to the core, not stored yet, and its answer once stored."""

    job: Job
    first_id: int
    person: Recipient
    body: schemas.MessageIn
    outcomes: Sequence[Outcome]
    response: bytes


class _GroupCommit:
    """Concurrent POSTs share one transaction and one sync to disk (``Store.add_jobs``).

    The first caller to find no write going on leads: it writes everything queued so far (its
    own item included) in a worker thread, answers every item of that batch, and hands the lead
    to the first item queued meanwhile, which writes the next batch. So a write takes whatever
    arrived during the last one: one fsync per batch instead of one per request, and no caller
    waits for more than its own batch plus the one before. Waiting and writing are shielded from
    cancellation: an item in a batch is written whatever happens to its request, and a lead is
    never dropped."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: list[_Slot] = []
        self._busy = False

    async def add(self, item: NewJob) -> None:
        slot = _Slot(item)
        self._queue.append(slot)
        with anyio.CancelScope(shield=True):
            if self._busy:
                await slot.ready.wait()
            if not slot.done:  # it leads: no write going on, or the last leader handed it over
                self._busy = True
                await self._write()
        if slot.error is not None:
            raise slot.error

    async def add_all(self, items: Sequence[NewJob]) -> list[Exception | None]:
        """``add`` for several items that go in the same transaction (queued together: whoever
        writes next writes them all); each one's error, None where written. An item never waits
        for more than the write going on and its own."""
        slots = [_Slot(item) for item in items]
        self._queue += slots
        with anyio.CancelScope(shield=True):
            if self._busy:
                await slots[0].ready.wait()
            if not slots[0].done:
                self._busy = True
                await self._write()
        assert all(s.done for s in slots)
        return [s.error for s in slots]

    async def _write(self) -> None:
        batch, self._queue = self._queue, []
        try:
            errors = await anyio.to_thread.run_sync(self._store.add_jobs, [s.item for s in batch])
        except Exception as exc:  # the transaction itself failed: every item with it
            errors = [exc] * len(batch)
        for s, err in zip(batch, errors):
            s.error, s.done = err, True
            s.ready.set()
        if self._queue:
            self._queue[0].ready.set()  # the next leader (not done: it writes the next batch)
        else:
            self._busy = False


class _ChunkWriter:
    """A streamed job's chunks written in order by one task, each write (a worker thread, one
    transaction) taking every chunk queued meanwhile: the loop goes on admitting the next chunks
    instead of waiting for the store, and waits only when ``depth`` chunks are queued (memory
    stays bounded). An error is raised by the next ``start`` or ``wait`` (as itself, not inside
    an exception group); the chunks queued after it are not written (the job is dropped)."""

    def __init__(self, write_all: Callable[[list[tuple[int, Any]]], None], depth: int = 8) -> None:
        self._write_all = write_all
        self._depth = depth
        self._queue: list[tuple[int, Any]] = []
        self._idle: anyio.Event | None = None  # set when the writing task ends (None: none)
        self._wrote: anyio.Event = anyio.Event()  # set when a write ends
        self._error: BaseException | None = None

    async def start(self, tg, first_id: int, kept) -> None:
        self._raise()
        self._queue.append((first_id, kept))
        if self._idle is None:
            self._idle = anyio.Event()
            tg.start_soon(self._run, self._idle)
        while len(self._queue) >= self._depth and self._idle is not None:
            with anyio.CancelScope(shield=True):
                await self._wrote.wait()
        self._raise()

    async def _run(self, idle: anyio.Event) -> None:
        try:
            while self._queue and self._error is None:
                batch, self._queue = self._queue, []
                try:
                    await anyio.to_thread.run_sync(self._write_all, batch)
                except Exception as exc:
                    self._error = exc
                finally:
                    self._wrote.set()
                    self._wrote = anyio.Event()
        finally:
            self._idle = None
            idle.set()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    async def wait_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.wait()

    async def wait(self) -> None:
        """Until every chunk queued is written (or a write failed: raised)."""
        if self._idle is not None:
            with anyio.CancelScope(shield=True):  # never leave a write running unwatched
                await self._idle.wait()
        self._raise()


def _in_id_order(offsets: list[int], people: Sequence[Recipient]) -> list[tuple[int, Recipient]]:
    """(offset of its id, recipient) for each admitted recipient, by id: the store then appends
    rows instead of inserting them in between (ids are grouped by shard, not in recipient order)."""
    kept: list = [None] * (len(offsets) - offsets.count(-1))
    for offset, person in zip(offsets, people):
        if offset >= 0:
            kept[offset] = (offset, person)
    return kept


_DONE = {"pause": "paused", "resume": "resumed", "cancel": "canceled"}


def _job_id(text: str) -> str | None:
    """``text`` if it is shaped like a job id (``job_`` and a message id), else None: a
    malformed id is simply not found, and never reaches the store."""
    try:
        parse_id(text.removeprefix("job_"))
    except ValueError:
        return None
    return text if text.startswith("job_") else None


def _job_out(s: StoredJob, counts: dict[str, int]) -> schemas.JobStatus:
    return schemas.JobStatus(id=s.job.id, status=job_status(s.status, counts), size=s.size, counts=counts,  # type: ignore[arg-type]
                             created_at=s.created_at, reference=s.job.reference)  # fmt: skip


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _status_of(outcomes: Sequence[Outcome], mid: int) -> str:
    for o in outcomes:
        if o.message_id == mid and isinstance(o, Final):
            return str(o.state)
    return "queued"


def _change(o: Outcome, now: float) -> Change:
    if isinstance(o, Final):
        return Change(message_id=o.message_id, state=str(o.state), at=o.at, reason=o.reason)
    return Change(message_id=o.message_id, state="deferred", at=now, reason=f"{o.reason} until {o.until:.0f}")


def _field_of(reason: str, *, single: bool) -> str:
    if "variable" in reason:
        return "vars"
    if "segments" in reason:
        return "body" if single else "template"
    if "zone" in reason:
        return "tz"
    return "to"


def _states(body: schemas.MessageIn | schemas.JobIn) -> frozenset[str] | None:
    """The states the body's callback_url hears about, as the store keeps them (None: all)."""
    return None if body.callback_states is None else frozenset(body.callback_states)
