"""The in-memory store: the fake the tests use, with exactly the semantics of the real ones
(``gateway.testing.store_conformance`` runs against both). Nothing survives the process."""

from __future__ import annotations


import threading
from collections.abc import Collection, Iterator, Sequence
from functools import partial

import msgspec

from gateway.core.model import Job, Recipient
from gateway.errors import Conflict
from gateway.store.base import (
    AWAITING,
    FINAL,
    JOBS_SCAN,
    NOTIFY,
    HookRow,
    hook_rows_of,
    Change,
    InboundItem,
    InboundPage,
    InboundRecord,
    JobCounts,
    JobsPage,
    MessageRecord,
    NewJob,
    RecipientRows,
    HookEvent,
    OutboxStats,
    Page,
    StoredJob,
    Subscriber,
    Suppression,
    page_of_jobs,
)

__all__ = ["MemoryStore"]


class _Msg:
    __slots__ = ("id", "tenant", "job_id", "recipient", "state", "carrier", "carrier_ids", "attempts", "events")

    def __init__(self, mid: int, job: Job, recipient: Recipient) -> None:
        self.id, self.tenant, self.job_id, self.recipient = mid, job.tenant, job.id, recipient
        self.state, self.carrier, self.carrier_ids, self.attempts = "queued", None, (), 0
        self.events: list[Change] = []


class _Sub:
    """A webhook subscriber (tenant, url): its change sequence after the cursor, and backoff."""

    __slots__ = ("id", "tenant", "url", "log", "attempts", "next_at", "error")

    def __init__(self, sid: int, tenant: str, url: str) -> None:
        self.id, self.tenant, self.url = sid, tenant, url
        self.log: list[tuple[int, int, list[Change]]] = []  # (seq, message id, that batch's changes)
        self.attempts, self.next_at, self.error = 0, 0.0, ""


class MemoryStore:
    inline_record = 1 << 30  # a few dict updates: never worth a thread

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], StoredJob] = {}
        self._msgs: dict[int, _Msg] = {}
        self._idem: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._supp: dict[tuple[str, str], Suppression] = {}
        self._inbound_keys: dict[str, tuple[int, float]] = {}  # MO key -> (record id, at)
        self._questions: dict[tuple[str, str], float] = {}  # (tenant, number) -> asked at
        # only jobs that have a callback_url: (url, the states it hears about)
        self._callbacks: dict[tuple[str, str], tuple[str, frozenset[str]]] = {}
        self._subs: dict[tuple[str, str], _Sub] = {}
        self._subs_by_id: dict[int, _Sub] = {}
        self._seq = 0  # record batches with webhook rows so far (a row's seq: batch << 24 | place)
        self._dead: list[HookEvent] = []
        self._inbound: dict[int, InboundRecord] = {}
        self._forward: dict[int, _Forward] = {}  # inbound id -> its webhook delivery, until done

    def add_jobs(self, items: Sequence[NewJob]) -> list[Exception | None]:
        errors: list[Exception | None] = []
        for it in items:
            try:
                self.add_job(it.job, it.first_id, it.recipients, it.now, callback_url=it.callback_url,
                             callback_states=it.callback_states, idempotency=it.idempotency,
                             incoming=it.incoming)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - handed back in its place
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def add_job(self, job: Job, first_id: int, recipients: Sequence[tuple[int, Recipient]] | RecipientRows,
                now: float, *, callback_url: str | None = None, callback_states: frozenset[str] | None = None,
                idempotency: tuple[str, str, bytes] | None = None, incoming: bool = False) -> None:  # fmt: skip
        if isinstance(recipients, RecipientRows):
            recipients = recipients.decode()
        with self._lock:
            ids = [first_id + i for i, _ in recipients]
            if any(i in self._msgs for i in ids) or (
                idempotency is not None and (job.tenant, idempotency[0]) in self._idem
            ):
                raise Conflict("message id or idempotency key already stored")
            key = (job.tenant, job.id)
            old = self._jobs.get(key)
            if old is None:
                self._jobs[key] = StoredJob(job=job, first_id=first_id, size=len(recipients),
                                            status="incoming" if incoming else "active",
                                            created_at=now, callback_url=callback_url,
                                            callback_states=callback_states)  # fmt: skip
                if callback_url:
                    self._callbacks[key] = (callback_url, NOTIFY if callback_states is None else callback_states)
                    if (job.tenant, callback_url) not in self._subs:
                        sub = _Sub(len(self._subs) + 1, job.tenant, callback_url)
                        self._subs[(job.tenant, callback_url)] = self._subs_by_id[sub.id] = sub
            else:
                self._jobs[key] = StoredJob(job=old.job, first_id=old.first_id, size=old.size + len(recipients),
                                            status=old.status, created_at=old.created_at,
                                            callback_url=old.callback_url,
                                            callback_states=old.callback_states)  # fmt: skip
            for (_, r), mid in zip(recipients, ids):
                self._msgs[mid] = _Msg(mid, job, r)
            if idempotency is not None:
                self._idem[(job.tenant, idempotency[0])] = (idempotency[1], idempotency[2])

    def commit_job(self, tenant: str, job_id: str, now: float, idempotency: tuple[str, str, bytes] | None = None) -> None:
        with self._lock:
            if idempotency is not None and (tenant, idempotency[0]) in self._idem:
                raise Conflict("idempotency key already stored")
            old = self._jobs.get((tenant, job_id))
            if old is not None and old.status == "incoming":
                self._jobs[(tenant, job_id)] = msgspec.structs.replace(old, status="active")
            if idempotency is not None:
                self._idem[(tenant, idempotency[0])] = (idempotency[1], idempotency[2])

    def drop_job(self, tenant: str, job_id: str) -> None:
        with self._lock:
            self._jobs.pop((tenant, job_id), None)
            for mid in [m.id for m in self._msgs.values() if m.tenant == tenant and m.job_id == job_id]:
                del self._msgs[mid]

    def drop_incoming(self) -> int:
        with self._lock:
            left = [key for key, j in self._jobs.items() if j.status == "incoming"]
        for tenant, job_id in left:
            self.drop_job(tenant, job_id)
        return len(left)

    def record(self, changes: Sequence[Change]) -> int:
        rows: dict[int, tuple[_Sub, list[Change]]] = {}  # message id -> its subscriber, its changes here
        wanted: set[int] = set()
        with self._lock:
            callbacks = self._callbacks
            for c in changes:
                m = self._msgs.get(c.message_id)
                if m is None or m.state in FINAL:
                    continue
                m.state = c.state
                m.carrier = c.carrier or m.carrier
                m.carrier_ids = c.carrier_ids or m.carrier_ids
                m.attempts += c.state == "submitted"
                m.events.append(c)
                if callbacks and (hook := callbacks.get((m.tenant, m.job_id))):
                    rows.setdefault(m.id, (self._subs[(m.tenant, hook[0])], []))[1].append(c)
                    if c.state in hook[1]:
                        wanted.add(m.id)
            if wanted:  # one sequence row per message of the batch, as SqliteStore writes them
                self._seq += 1
                for k, mid in enumerate(m for m in rows if m in wanted):
                    sub, mine = rows[mid]
                    sub.log.append(((self._seq << 24) + k, mid, mine))
        return len(wanted)

    def hook_due(self, now: float) -> list[Subscriber]:
        with self._lock:
            return [Subscriber(id=s.id, tenant=s.tenant, url=s.url, attempts=s.attempts, next_at=s.next_at)
                    for s in sorted(self._subs.values(), key=lambda s: s.id) if s.log and s.next_at <= now]  # fmt: skip

    def hook_events(self, sub: int, limit: int, after: int = 0) -> list[HookEvent]:
        out: list[HookEvent] = []
        with self._lock:
            s = self._subs_by_id.get(sub)
            log = s.log if s is not None else []
            if after and log and log[0][0] <= after:
                log = [row for row in log if row[0] > after]
            for seq, mid, mine in log[:limit]:
                m = self._msgs.get(mid)
                if m is None:
                    continue
                stored = self._jobs.get((m.tenant, m.job_id))
                chosen = NOTIFY if stored is None or stored.callback_states is None else stored.callback_states
                for c in mine:
                    if c.state in NOTIFY and c.state in chosen:
                        out.append(HookEvent(
                            id=len(out), seq=seq, sub=sub, tenant=s.tenant, url=s.url, message_id=mid, job_id=m.job_id,
                            state=c.state, at=c.at, reason=c.reason, carrier=c.carrier, attempts=s.attempts,
                            error_code=c.error_code, to=m.recipient.to, index=m.recipient.index,
                            reference=stored.job.reference if stored else None))  # fmt: skip
        return out

    def hook_rows(self, sub: int, limit: int, after: int = 0) -> list[HookRow]:
        return hook_rows_of(self.hook_events(sub, limit, after))

    def _ack(self, sub: int, seq: int) -> None:
        s = self._subs_by_id.get(sub)
        if s is not None:
            s.log = [row for row in s.log if row[0] > seq]
            s.attempts, s.next_at, s.error = 0, 0.0, ""

    def hook_ack(self, acks: Sequence[tuple[int, int]]) -> None:
        with self._lock:
            for sub, seq in acks:
                self._ack(sub, seq)

    def hook_retry(self, sub: int, next_at: float, error: str) -> None:
        with self._lock:
            if (s := self._subs_by_id.get(sub)) is not None:
                s.attempts, s.next_at, s.error = s.attempts + 1, next_at, error

    def hook_dead(self, sub: int, events: Sequence[HookEvent], error: str, upto: int | None) -> None:
        with self._lock:
            self._dead.extend(events)
            if upto is not None:
                self._ack(sub, upto)

    def hook_next_at(self) -> float | None:
        with self._lock:
            return min((s.next_at for s in self._subs.values() if s.log), default=None)

    def outbox_statistics(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(pending=sum(len(s.log) for s in self._subs.values()), dead=len(self._dead))

    def set_job_status(self, tenant: str, job_id: str, status: str) -> bool:
        with self._lock:
            old = self._jobs.get((tenant, job_id))
            if old is None:
                return False
            self._jobs[(tenant, job_id)] = msgspec.structs.replace(old, status=status)
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

    def job_info(self, tenant: str, job_id: str) -> StoredJob | None:
        with self._lock:
            return self._jobs.get((tenant, job_id))

    def message(self, tenant: str, message_id: int) -> MessageRecord | None:
        with self._lock:
            m = self._msgs.get(message_id)
            if m is None or m.tenant != tenant:
                return None
            created = self._jobs[(m.tenant, m.job_id)].created_at
            history = [Change(message_id=m.id, state="queued", at=created, reason="accepted"), *m.events]
            return MessageRecord(id=m.id, job_id=m.job_id, tenant=m.tenant, recipient=m.recipient,
                                 state=m.state, carrier=m.carrier, carrier_ids=tuple(m.carrier_ids),
                                 attempts=m.attempts, history=history,
                                 error_code=next((c.error_code for c in reversed(m.events) if c.error_code is not None),
                                                 None))  # fmt: skip

    def messages(self, tenant: str, job_id: str, *, state: str | None, after: int, limit: int) -> Page:
        with self._lock:
            hits = sorted(
                (m.id, m.state, m.recipient) for m in self._msgs.values()
                if m.tenant == tenant and m.job_id == job_id and m.id > after and (state is None or m.state == state)
            )  # fmt: skip
        more = len(hits) > limit
        hits = hits[:limit]
        return Page(ids=[(i, s) for i, s, _ in hits], next_after=hits[-1][0] if more else None,
                    recipients=[r for _, _, r in hits])  # fmt: skip

    def jobs(self, tenant: str, *, after: str, limit: int, status: str | None = None) -> JobsPage:
        with self._lock:
            ids = sorted(j for (t, j), s in self._jobs.items() if t == tenant and j > after and s.status != "incoming")
        budget = len(ids) if status is None else JOBS_SCAN * limit
        return page_of_jobs(ids, limit=limit, scan=budget, status=status, job=partial(self.job, tenant))

    def unfinished(self) -> Iterator[tuple[StoredJob, list[tuple[int, Recipient, str]]]]:
        with self._lock:
            by_job: dict[tuple[str, str], list[_Msg]] = {}
            for m in sorted(self._msgs.values(), key=lambda m: m.id):
                if m.state not in FINAL and self._jobs[(m.tenant, m.job_id)].status != "incoming":
                    by_job.setdefault((m.tenant, m.job_id), []).append(m)
            out = [(self._jobs[k], [(m.id - self._jobs[k].first_id, m.recipient, m.state) for m in ms])
                   for k, ms in by_job.items()]  # fmt: skip
        out.sort(key=lambda item: item[0].created_at)
        yield from out

    def awaiting_receipts(self) -> list[tuple[int, str, tuple[str, ...]]]:
        with self._lock:
            return [(m.id, m.carrier, tuple(m.carrier_ids)) for m in sorted(self._msgs.values(), key=lambda m: m.id)
                    if m.state in AWAITING and m.carrier and m.carrier_ids]  # fmt: skip

    def sends_since(self, since: float, categories: Collection[str]) -> list[tuple[int, str, str, float]]:
        with self._lock:
            out = []
            for m in self._msgs.values():
                if not m.attempts or self._jobs[(m.tenant, m.job_id)].job.category not in categories:
                    continue
                at = max(c.at for c in m.events if c.state == "submitted")
                if at > since:
                    out.append((m.id, m.tenant, m.recipient.to, at))
        return sorted(out, key=lambda s: (s[3], s[0]))

    def remembered(self, tenant: str, key: str, digest: str) -> bytes | None:
        with self._lock:
            hit = self._idem.get((tenant, key))
        if hit is None:
            return None
        if hit[0] != digest:
            raise Conflict(f"idempotency key {key!r} was used with another request body", code="idempotency_key_reused")
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

    # -- inbound ---------------------------------------------------------------------------

    def add_inbound(self, record: InboundRecord, *, url: str | None = None) -> int:
        return self.add_inbound_once(record, url=url)[0]

    def add_inbound_once(self, record: InboundRecord, *, url: str | None = None, key: str | None = None,
                         since: float = 0.0) -> tuple[int, bool]:
        with self._lock:
            seen = self._inbound_keys.get(key) if key is not None else None
            if seen is not None and seen[1] >= since:
                return seen[0], False
            rid = max(self._inbound, default=0) + 1
            record = msgspec.structs.replace(record, id=rid)
            self._inbound[rid] = record
            if key is not None:
                self._inbound_keys[key] = (rid, record.at)
            pair = (record.tenant, record.sender)
            if record.kind == "opt_out" and record.sender_canonical:
                self._supp.setdefault(pair, Suppression(number=record.sender, at=record.at,
                                                        source=f"keyword:{record.keyword}"))  # fmt: skip
            elif record.kind == "opt_in":
                self._supp.pop(pair, None)
            if record.kind in ("opt_out", "opt_in"):
                self._questions.pop(pair, None)
            if record.asks:
                self._questions[pair] = record.at
            if url:
                self._forward[rid] = _Forward(url)
            return rid, True

    def question_pending(self, tenant: str, number: str, since: float) -> bool:
        with self._lock:
            at = self._questions.get((tenant, number))
        return at is not None and at >= since

    def tenants_messaged(self, number: str, since: float) -> list[str]:
        with self._lock:
            return sorted({m.tenant for m in self._msgs.values()
                           if m.recipient.to == number and (not m.events or m.events[-1].at >= since)})  # fmt: skip

    def inbound(self, tenant: str, *, after: int, limit: int, kind: str | None = None) -> InboundPage:
        with self._lock:
            hits = [r for i, r in sorted(self._inbound.items())
                    if i > after and r.tenant == tenant and (kind is None or r.kind == kind)]  # fmt: skip
        more = len(hits) > limit
        hits = hits[:limit]
        return InboundPage(items=hits, next_after=hits[-1].id if more else None)

    def inbound_take(self, now: float, limit: int, lease: float) -> list[InboundItem]:
        with self._lock:
            due = sorted((i for i, f in self._forward.items() if not f.dead and f.next_at <= now),
                         key=lambda i: (self._forward[i].next_at, i))[:limit]  # fmt: skip
            out = []
            for i in due:
                f, r = self._forward[i], self._inbound[i]
                f.next_at = now + lease
                out.append(InboundItem(id=i, tenant=r.tenant, url=f.url, at=r.at, attempts=f.attempts, record=r))
            return out

    def inbound_done(self, ids: Sequence[int]) -> None:
        with self._lock:
            for i in ids:
                self._forward.pop(i, None)

    def inbound_retry(self, ids: Sequence[int], next_at: float, error: str) -> None:
        with self._lock:
            for i in ids:
                if (f := self._forward.get(i)) is not None and not f.dead:
                    f.next_at, f.attempts, f.error = next_at, f.attempts + 1, error

    def inbound_dead(self, ids: Sequence[int], error: str) -> None:
        with self._lock:
            for i in ids:
                if (f := self._forward.get(i)) is not None:
                    f.dead, f.error = True, error

    def inbound_next_at(self) -> float | None:
        with self._lock:
            return min((f.next_at for f in self._forward.values() if not f.dead), default=None)

    def close(self) -> None:
        pass


class _Forward:
    __slots__ = ("url", "next_at", "attempts", "dead", "error")

    def __init__(self, url: str) -> None:
        self.url, self.next_at, self.attempts, self.dead, self.error = url, 0.0, 0, False, ""
