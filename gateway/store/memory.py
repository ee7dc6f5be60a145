"""The in-memory store: the fake the tests use, with exactly the semantics of the real ones
(``gateway.testing.store_conformance`` runs against both). Nothing survives the process."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from gateway.core.model import Job, Recipient
from gateway.errors import Conflict
from gateway.store.base import FINAL, Change, JobCounts, MessageRecord, Page, StoredJob, Suppression

__all__ = ["MemoryStore"]


class _Msg:
    __slots__ = ("id", "tenant", "job_id", "recipient", "state", "carrier", "carrier_ids", "attempts", "events")

    def __init__(self, mid: int, job: Job, recipient: Recipient) -> None:
        self.id, self.tenant, self.job_id, self.recipient = mid, job.tenant, job.id, recipient
        self.state, self.carrier, self.carrier_ids, self.attempts = "queued", None, (), 0
        self.events: list[Change] = []


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], StoredJob] = {}
        self._msgs: dict[int, _Msg] = {}
        self._idem: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._supp: dict[tuple[str, str], Suppression] = {}

    def add_job(self, job: Job, first_id: int, recipients: Sequence[tuple[int, Recipient]], now: float,
                *, callback_url: str | None = None,
                idempotency: tuple[str, str, bytes] | None = None) -> None:  # fmt: skip
        with self._lock:
            ids = [first_id + i for i, _ in recipients]
            if any(i in self._msgs for i in ids) or (
                idempotency is not None and (job.tenant, idempotency[0]) in self._idem
            ):
                raise Conflict("message id or idempotency key already stored")
            key = (job.tenant, job.id)
            old = self._jobs.get(key)
            if old is None:
                self._jobs[key] = StoredJob(job=job, first_id=first_id, size=len(recipients), status="active",
                                            created_at=now, callback_url=callback_url)  # fmt: skip
            else:
                self._jobs[key] = StoredJob(job=old.job, first_id=old.first_id, size=old.size + len(recipients),
                                            status=old.status, created_at=old.created_at,
                                            callback_url=old.callback_url)  # fmt: skip
            for (_, r), mid in zip(recipients, ids):
                self._msgs[mid] = _Msg(mid, job, r)
            if idempotency is not None:
                self._idem[(job.tenant, idempotency[0])] = (idempotency[1], idempotency[2])

    def record(self, changes: Sequence[Change]) -> None:
        with self._lock:
            for c in changes:
                m = self._msgs.get(c.message_id)
                if m is None or m.state in FINAL:
                    continue
                m.state = c.state
                m.carrier = c.carrier or m.carrier
                m.carrier_ids = c.carrier_ids or m.carrier_ids
                m.attempts += c.state == "submitted"
                m.events.append(c)

    def set_job_status(self, tenant: str, job_id: str, status: str) -> bool:
        with self._lock:
            old = self._jobs.get((tenant, job_id))
            if old is None:
                return False
            self._jobs[(tenant, job_id)] = StoredJob(job=old.job, first_id=old.first_id, size=old.size,
                                                     status=status, created_at=old.created_at,
                                                     callback_url=old.callback_url)  # fmt: skip
            return True

    def job(self, tenant: str, job_id: str) -> JobCounts | None:
        with self._lock:
            stored = self._jobs.get((tenant, job_id))
            if stored is None:
                return None
            counts: dict[str, int] = {}
            for m in self._msgs.values():
                if m.tenant == tenant and m.job_id == job_id:
                    counts[m.state] = counts.get(m.state, 0) + 1
            return JobCounts(job=stored, counts=counts)

    def message(self, tenant: str, message_id: int) -> MessageRecord | None:
        with self._lock:
            m = self._msgs.get(message_id)
            if m is None or m.tenant != tenant:
                return None
            created = self._jobs[(m.tenant, m.job_id)].created_at
            history = [Change(message_id=m.id, state="queued", at=created, reason="accepted"), *m.events]
            return MessageRecord(id=m.id, job_id=m.job_id, tenant=m.tenant, recipient=m.recipient,
                                 state=m.state, carrier=m.carrier, carrier_ids=tuple(m.carrier_ids),
                                 attempts=m.attempts, history=history)  # fmt: skip

    def messages(self, tenant: str, job_id: str, *, state: str | None, after: int, limit: int) -> Page:
        with self._lock:
            hits = sorted(
                (m.id, m.state) for m in self._msgs.values()
                if m.tenant == tenant and m.job_id == job_id and m.id > after and (state is None or m.state == state)
            )  # fmt: skip
        more = len(hits) > limit
        hits = hits[:limit]
        return Page(ids=hits, next_after=hits[-1][0] if more else None)

    def unfinished(self) -> Iterator[tuple[StoredJob, list[tuple[int, Recipient, str]]]]:
        with self._lock:
            by_job: dict[tuple[str, str], list[_Msg]] = {}
            for m in sorted(self._msgs.values(), key=lambda m: m.id):
                if m.state not in FINAL:
                    by_job.setdefault((m.tenant, m.job_id), []).append(m)
            out = [(self._jobs[k], [(m.id - self._jobs[k].first_id, m.recipient, m.state) for m in ms])
                   for k, ms in by_job.items()]  # fmt: skip
        out.sort(key=lambda item: item[0].created_at)
        yield from out

    def awaiting_receipts(self) -> list[tuple[int, str, tuple[str, ...]]]:
        with self._lock:
            return [(m.id, m.carrier, tuple(m.carrier_ids)) for m in sorted(self._msgs.values(), key=lambda m: m.id)
                    if m.state == "submitted" and m.carrier and m.carrier_ids]  # fmt: skip

    def remembered(self, tenant: str, key: str, digest: str) -> bytes | None:
        with self._lock:
            hit = self._idem.get((tenant, key))
        if hit is None:
            return None
        if hit[0] != digest:
            raise Conflict(f"idempotency key {key!r} was used with another request body")
        return hit[1]

    def suppress(self, tenant: str, number: str, now: float, source: str = "api") -> None:
        with self._lock:
            self._supp.setdefault((tenant, number), Suppression(number=number, at=now, source=source))

    def unsuppress(self, tenant: str, number: str) -> bool:
        with self._lock:
            return self._supp.pop((tenant, number), None) is not None

    def suppressions(self, tenant: str | None = None) -> list[tuple[str, Suppression]]:
        with self._lock:
            return sorted(((t, s) for (t, _), s in self._supp.items() if tenant is None or t == tenant),
                          key=lambda x: (x[0], x[1].number))  # fmt: skip

    def close(self) -> None:
        pass
