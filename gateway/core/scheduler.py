"""The delivery core's front door: admit messages, take batches for carriers, hear what happened.

Theory of operation
-------------------
``Scheduler`` is pure and synchronous. The async shell reads the clock once per tick and passes
the same ``now`` to every call; nothing here sleeps, does I/O, or raises for an expected outcome.

- ``admit(job, recipients, now)`` validates each recipient (number, variables, segments, zone,
  route), stores the accepted ones compactly in the shard of their number, and answers with the
  ids, the rejected indices with reasons, and any immediate outcomes (opted out, expired).
- ``take(carrier, max_segments, now)`` is the dispatch decision. It releases due timers, then
  walks that carrier's lanes by priority (all of priority 0 in every shard before priority 1),
  deciding each message: dispatch, defer (quiet hours, weekly cap) or end. It stops when the
  batch is full or the carrier's token bucket is empty. Lanes are per carrier, so a carrier that
  is throttled or down never blocks another's messages (no head-of-line blocking).
- The shell reports back: ``complete(ref)`` when a dispatched message has left for good (the
  carrier answered, either way), ``requeue(ref, now)`` when it must go again (time-out, dropped
  bind, throttled), ``throttled(carrier, now)`` to slow a carrier down.
- Failover: ``carrier_down(name, now)`` / ``carrier_up(name, now)``. While a carrier is down,
  every ``take`` first moves the ready messages in its lanes to the next carrier of their route
  that is up (same priority, same order; requeued and released ones too, as they come back),
  so that carrier's pump takes them. A message whose route has no carrier up, or whose job
  names its carrier, stays where it is. A row is in exactly one lane before and after a move,
  so nothing is lost or sent twice. Messages moved stay moved when the carrier comes back.
"""

from __future__ import annotations

import math
import operator
import re
from array import array
from collections.abc import Iterable, Sequence
from itertools import chain

import msgspec

from gateway.core import segments
from gateway.core.bucket import BucketStatistics, TokenBucket
from gateway.core.caps import WeeklyCap
from gateway.core.ids import IdGenerator
from gateway.core.model import Dispatch, Final, FinalState, Job, Outcome, Recipient
from gateway.core.quiet_hours import QuietHours
from gateway.core.routing import NoRoute, Router
from gateway.core.settings import CategoryPolicy, CoreSettings
from gateway.core.shard import COUNT, DEAD, INFLIGHT, PARKED, READY, SMART, UCS2, WAITING, Shard, shard_of, shards_of
from gateway.core.template import Template
from gateway.core.zones import ZoneResolver, ZoneSet

__all__ = ["Admission", "Batch", "Checked", "CoreStatistics", "Scheduler", "UnknownCarrier"]

_TENANT_SHIFT = 50  # E.164 numbers are < 10**15 < 2**50
_INF = math.inf
_NUMBERS = re.compile(r"\+[0-9]{7,15}(?:\n\+[0-9]{7,15})*")  # a chunk's numbers, one a line: all E.164


class UnknownCarrier(KeyError):
    pass


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    first_id: int
    # recipient i's message id is first_id + offsets[i] (-1: rejected, no id). Ids are grouped
    # by shard within the call: the messages a shard sends together have neighbouring ids, so
    # the store rows a batch of results touches sit on a few pages, not one page each.
    offsets: list[int]
    accepted: int
    rejected: list[tuple[int, str]]
    outcomes: list[Outcome]


# lists, or arrays of the shard's column types (a chunk checked in a worker: ``gateway.runtime.ingest``)
ShardColumns = tuple[Sequence[int], Sequence[int], list[bytes], Sequence[int], Sequence[int], Sequence[int]]


class Checked(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Recipients checked for one job, not yet admitted (``check`` -> ``admit_checked``)."""

    count: int  # recipients looked at
    rejected: list[tuple[int, str]]  # (index, why)
    # per shard, in id order: (index, number, packed values, segments byte, zone key, carrier)
    by_shard: list[list[tuple]]
    zones: list[ZoneSet] | None = None  # when checked in another process: zone key k is zones[k]
    # The same as ``by_shard`` (then empty) a column at a time: per shard (indexes, numbers,
    # packed values, segments, zone keys, carriers), as a chunk checked by columns gives them
    # and ``Shard.add_parked`` takes them: no tuple a row to build, encode, decode, transpose.
    columns: list[ShardColumns] | None = None

    def rows(self) -> list[list[tuple]]:
        """``by_shard``, whichever form this was checked in."""
        if self.columns is None:
            return self.by_shard
        return [list(zip(*c)) for c in self.columns]

    def order(self) -> list[int]:
        """The accepted recipients' indexes in the order admission gives them ids."""
        if self.columns is None:
            return [row[0] for rows in self.by_shard for row in rows]
        return [i for c in self.columns for i in c[0]]


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    dispatches: list[Dispatch]
    outcomes: list[Outcome]


class CoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    ready: dict[str, int]  # per carrier
    waiting: int
    parked: int  # messages of paused jobs
    inflight: int
    jobs: int
    buckets: dict[str, BucketStatistics]
    shards: list[dict[str, int]]  # per shard: rows by state (ready, waiting, inflight, parked)
    down: list[str] = []  # carriers marked down: their traffic goes to the next of each route


class JobEntry:
    """What all messages of one job share, kept once."""

    __slots__ = ("slot", "job", "tenant_key", "policy", "priority", "template", "not_before",
                 "expires_at", "carrier", "live", "paused")  # fmt: skip

    def __init__(self, slot: int, job: Job, tenant_key: int, policy: CategoryPolicy,
                 carrier: int | None) -> None:  # fmt: skip
        self.slot = slot
        self.job = job
        self.tenant_key = tenant_key
        self.policy = policy
        self.priority = policy.priority if job.priority is None else job.priority
        self.template = Template(job.template)
        # The job's due time and its end, kept with the job rather than per row: every path
        # that puts a row back in a lane (unpark, release, requeue, failover, recovery) meets
        # them again in ``Shard.drain``, so none of them can lose a row's schedule.
        self.not_before = -_INF if job.not_before is None else job.not_before
        self.expires_at = _INF if job.expires_at is None else job.expires_at
        self.carrier = carrier
        self.live = 0  # messages of this job still queued or in flight
        self.paused = False


class Policies:
    """Everything a shard needs to decide, bundled once so the hot loop reads locals."""

    __slots__ = ("jobs", "suppressed", "quiet_hours", "cap_wait", "spread", "carrier_names", "smart")

    def __init__(self, settings: CoreSettings, quiet_hours: QuietHours) -> None:
        self.jobs: list[JobEntry] = []
        self.suppressed: set[int] = set()
        self.quiet_hours = quiet_hours
        self.cap_wait = settings.weekly_cap.policy == "wait"
        self.spread = settings.quiet_hours.spread
        self.carrier_names = [c.name for c in settings.carriers]
        # What dispatch sends of a text planned as UCS-2: its NFC form always (lossless), look-alikes
        # replaced too with smart encoding (gateway/core/segments.py).
        self.smart = segments.smart if settings.smart_encoding else segments.composed


class Scheduler:
    def __init__(
        self, settings: CoreSettings, now: float, *, resolver: ZoneResolver | None = None
    ) -> None:
        self.settings = settings
        qh = settings.quiet_hours
        self.resolver = resolver or ZoneResolver(default_zone=qh.default_zone, country_zones=dict(qh.country_zones))
        quiet = QuietHours(self.resolver, start=qh.start, end=qh.end, overrides=dict(qh.overrides), rules=dict(qh.rules))
        self._p = Policies(settings, quiet)
        self._carrier_index = {c.name: i for i, c in enumerate(settings.carriers)}
        self._buckets = [TokenBucket(c.rate, c.burst, now) for c in settings.carriers]
        self._router = Router(settings.routes, self._carrier_index)
        cap = settings.weekly_cap
        self._shards = [Shard(i, WeeklyCap(cap.limit, cap.window_days * 86400.0))
                        for i in range(settings.shards)]  # fmt: skip
        self._priorities = sorted({c.priority for c in settings.categories.values()} | set(range(10)))
        self._rr = [0] * len(settings.carriers)
        self._jobs: dict[str, JobEntry] = {}
        self._free_slots: list[int] = []
        self._tenants: dict[str, int] = {}
        self._ids = IdGenerator()
        self._down: dict[int, float] = {}  # carrier index -> since when it is down
        # Jobs paused by ``pause_job``: their parked rows sit in no timer, so their expiry is
        # watched here (``_expire_parked``). Not the jobs admitted paused while the store writes
        # them: those are not on disk yet, so nothing of them may end before ``resume_job``.
        self._paused: dict[str, JobEntry] = {}

    # -- admission ------------------------------------------------------------------------

    def admit(
        self, job: Job, recipients: Sequence[Recipient], now: float, *, first_id: int | None = None,
        paused: bool = False,
    ) -> Admission:
        """Admit a job's recipients (all of them, or one chunk of a streamed job): ``check``
        then ``admit_checked``.

        ``paused``: hold the job until ``resume_job`` (the shell admits paused, stores the job
        durably, then resumes, so nothing is sent that is not on disk)."""
        return self.admit_checked(job, self.check(job, recipients), now, first_id=first_id, paused=paused)

    def check(self, job: Job, recipients: Sequence[Recipient], *, portable: bool = False) -> Checked:
        """Validate recipients (number, variables, segments, zone, route) without admitting them:
        changes nothing but caches, so it may run anywhere, e.g. in a worker process with a
        scheduler of the same settings. ``portable``: the answer carries the zone sets its
        keys refer to (keys are numbered per resolver), for a scheduler in another process."""
        entry = self._jobs.get(job.id) or self._describe(job, slot=-1, tenant_key=0)
        fixed = self._fixed_plan(entry)
        columns = self._check_columns(entry, fixed, recipients)
        by_shard, rejected = self._check_rows(entry, fixed, recipients) if columns is None else ([], [])
        # after the check, which may have interned new zone sets
        zones = [self.resolver.zone_set(k) for k in range(len(self.resolver))] if portable else None
        return Checked(count=len(recipients), rejected=rejected, by_shard=by_shard, zones=zones, columns=columns)

    def _check_columns(self, entry: JobEntry, fixed: int, recipients: Sequence[Recipient]) -> list[ShardColumns] | None:
        """``check`` of a chunk in which every recipient is accepted and ordinary (E.164 in ASCII
        digits, known zones if explicit, plain GSM-7 values, a route): column by column, each a C-level
        ``map`` or one comprehension, not a Python loop per recipient calling a dozen functions.
        The same answer as ``_check_rows``, which decides every other chunk (and says who is
        wrong); None: not such a chunk."""
        n = len(recipients)
        tos = [r.to for r in recipients]
        text = "\n".join(tos)
        if not n or _NUMBERS.fullmatch(text) is None or text.count("\n") != n - 1:
            return None  # a number that is not '+' and 7-15 ASCII digits
        tzs = [r.tz for r in recipients]  # explicit zones (a campaign's, each recipient's own) map as a column too
        numbers = list(map(int, tos))  # int() reads the "+" as a sign; _NUMBERS allowed only "+" and digits
        if fixed:
            packed, segs = [b""] * n, [fixed] * n
        else:
            measured = entry.template.measure_all([r.vars for r in recipients])
            if measured is None:
                return None
            packed, units = measured
            if max(units) <= 160 and min(units) >= 0:
                segs = [1] * n
            else:
                try:  # bodies not plain GSM-7 rendered and planned, as _check_rows does
                    fill, plan = entry.template.fill, self._plan
                    segs = [segments.plain_count(u) if u >= 0 else plan(fill(r.vars)[0])
                            for u, r in zip(units, recipients)]  # fmt: skip
                except ValueError:
                    return None
                if max(segs) > self.settings.max_segments:
                    return None
        try:
            if tzs.count(None) == n:  # by prefix class, as text: no int arithmetic a number
                zones = self.resolver.keys_for(tos)
            else:  # a zone not known: ValueError, the rows say who
                zones = self.resolver.keys_with_zones(tos, tzs)
            if entry.carrier is None:
                carriers = self._router.primaries(tos)
            else:
                carriers = [entry.carrier] * n
        except (ValueError, LookupError):
            return None
        if max(zones) > 0xFFFF:
            return None
        return _by_shard(shards_of(numbers, len(self._shards)), len(self._shards), numbers, packed, segs, zones,
                         carriers)  # fmt: skip

    def _check_rows(self, entry: JobEntry, fixed: int, recipients: Sequence[Recipient],
                    ) -> tuple[list[list[tuple]], list[tuple[int, str]]]:  # fmt: skip
        """``check``, one recipient at a time."""
        nshards = len(self._shards)
        rejected: list[tuple[int, str]] = []
        by_shard: list[list[tuple]] = [[] for _ in range(nshards)]
        # The hot loop of a large job (a million recipients): what it calls, bound once.
        fill, measure, plan, zone_of = entry.template.fill, entry.template.measure, self._plan, self.resolver.key_for
        most = self.settings.max_segments
        route = self._router.carriers_for if entry.carrier is None else None
        for i, r in enumerate(recipients):
            try:
                to = r.to
                digits = to[1:]
                if to[:1] != "+" or not digits.isdigit() or not 7 <= len(digits) <= 15:
                    raise ValueError(f"invalid number {to!r}")
                number = int(digits)
                if fixed:
                    packed, seg = b"", fixed
                else:
                    packed, units = measure(r.vars)  # plain GSM-7 (the common case): counted, not rendered
                    if units < 0:
                        body, packed = fill(r.vars)
                        seg = plan(body)
                    elif (seg := segments.plain_count(units)) > most:
                        raise ValueError(_too_long(seg, most))
                zone = zone_of(number, r.tz)
                if zone > 0xFFFF:
                    raise ValueError("too many distinct time-zone sets")
                carrier = entry.carrier if route is None else route(digits)[0]
            except (ValueError, LookupError) as exc:
                rejected.append((i, _reason(exc)))
                continue
            by_shard[shard_of(number, nshards)].append((i, number, packed, seg, zone, carrier))
        return by_shard, rejected

    def admit_checked(self, job: Job, checked: Checked, now: float, *, first_id: int | None = None,
                      paused: bool = False) -> Admission:  # fmt: skip
        """Admit what ``check`` accepted: ids (grouped by shard), opt-outs and expiry, queues."""
        nshards = len(checked.by_shard if checked.columns is None else checked.columns)
        if nshards != len(self._shards):
            raise ValueError(f"checked for {nshards} shards, this core has {len(self._shards)}")
        entry = self._entry_for(job)
        if paused and entry.live == 0:
            entry.paused = True  # held while the store writes it: resumed right after
        park = entry.paused
        rejected = list(checked.rejected)
        base = self._ids.reserve(checked.count - len(rejected), now) if first_id is None else first_id
        outcomes: list[Outcome] = []
        p = self._p
        policy, tenant_key, slot, priority = entry.policy, entry.tenant_key, entry.slot, entry.priority
        expired = now >= entry.expires_at
        not_before = job.not_before if job.not_before is not None and job.not_before > now else None
        keys = None
        if checked.zones is not None:  # checked elsewhere: that resolver's keys -> this one's
            keys = [self.resolver.key_for_set(zs) for zs in checked.zones]
        columns = checked.columns
        if park and not expired and columns is None:
            columns = [tuple(zip(*rows)) if rows else None for rows in checked.by_shard]
        if park and not expired and self._admit_parked(entry, columns, keys, base):
            order = checked.order()
            if len(order) == checked.count:  # every recipient: offsets are order's inverse
                offsets = sorted(range(len(order)), key=order.__getitem__)
            else:
                offsets = [-1] * checked.count
                for offset, i in enumerate(order):
                    offsets[i] = offset
            return Admission(job_id=job.id, first_id=base, offsets=offsets, accepted=len(order), rejected=rejected,
                             outcomes=[])  # fmt: skip
        offsets = [-1] * checked.count
        offset = 0
        for shard, rows in zip(self._shards, checked.rows()):
            add = shard.add
            for i, number, packed, seg, zone, carrier in rows:
                if keys is not None:
                    zone = keys[zone]
                    if zone > 0xFFFF:
                        rejected.append((i, "too many distinct time-zone sets"))
                        continue
                offsets[i] = offset
                mid = base + offset
                offset += 1
                if expired or (policy.suppressible and tenant_key | number in p.suppressed):
                    why = (FinalState.EXPIRED, "validity ended") if expired else (FinalState.SUPPRESSED, "opted out")
                    outcomes.append(Final(message_id=mid, job_id=job.id, state=why[0], reason=why[1], at=now))
                    continue
                add(number, slot, mid, packed, zone, carrier, seg, priority, not_before, park)
                entry.live += 1
        if len(rejected) > len(checked.rejected):
            rejected.sort()
        if entry.live == 0:
            self._drop(entry)
        return Admission(job_id=job.id, first_id=base, offsets=offsets, accepted=offset, rejected=rejected,
                         outcomes=outcomes)  # fmt: skip

    def _admit_parked(self, entry: JobEntry, columns: Sequence[Sequence | None], keys: list[int] | None,
                      base: int) -> bool:  # fmt: skip
        """``admit_checked``'s loop for a chunk of a paused job in which every row is admitted
        (none opted out, every zone key mapped): shard by shard, a column at a time
        (``Shard.add_parked``; ``columns``: per shard, ``Checked.columns``' six, or None when
        it has none). False, having changed nothing: the loop decides."""
        if not any(c and c[1] for c in columns):
            return False
        suppressed = self._p.suppressed
        if suppressed and entry.policy.suppressible:
            tenant_key = entry.tenant_key
            if any(not suppressed.isdisjoint([tenant_key | n for n in c[1]]) for c in columns if c):
                return False
        if keys is not None:
            if max(keys, default=0) > 0xFFFF:
                return False
            columns = [None if not (c and c[1]) else (*c[:4], array("H", map(keys.__getitem__, c[4])), c[5])
                       for c in columns]  # fmt: skip
        offset = 0
        for shard, c in zip(self._shards, columns):
            if c and c[1]:
                _, numbers, packed, segs, zones, carriers = c
                shard.add_parked(entry.slot, base + offset, numbers, packed, segs, zones, carriers)
                offset += len(numbers)
        entry.live += offset
        return True

    def reserve_ids(self, n: int, now: float, *, floor: int = 0) -> int:
        """A block of ``n`` fresh message ids; ``floor``: never hand out ids below it again
        (after a restart, the ids already in the store)."""
        self._ids.bump(floor)
        return self._ids.reserve(n, now)

    def segments_of(self, template: str, values: dict[str, str]) -> tuple[int, str]:
        """How many segments a message of ``template`` with these variables takes, and in which
        encoding ("gsm7" or "ucs2"), exactly as dispatch will plan it."""
        _, count, encoding = self.planned(template, values)
        return count, encoding

    def planned(self, template: str, values: dict[str, str]) -> tuple[str, int, str]:
        """The body dispatch sends for ``template`` with these variables (composed, smart encoding
        applied where it plans so), its segments and its encoding: what ``POST /v1/preview``
        shows, so a preview and its send never disagree."""
        body, _ = Template(template).fill(values)
        byte = self._plan(body)
        if byte & SMART:
            body = self._p.smart(body)
        return body, byte & COUNT, "ucs2" if byte & UCS2 else "gsm7"

    def _plan(self, body: str) -> int:
        """The segments byte: count (bits 0-5), smart encoding applied (bit 6), UCS-2 (bit 7)."""
        n = segments.plain_segments(body)  # the common case, without building a Plan
        if 0 < n <= self.settings.max_segments:
            return n
        plan = segments.plan(body)
        flags = 0
        if plan.encoding == segments.UCS2:
            better = self._p.smart(body)
            if better is not body:
                plan, flags = segments.plan(better), SMART
        if plan.segments > self.settings.max_segments:
            raise ValueError(_too_long(plan.segments, self.settings.max_segments))
        return plan.segments | flags | (UCS2 if plan.encoding == segments.UCS2 else 0)

    def _fixed_plan(self, entry: JobEntry) -> int:
        """A body without placeholders is planned once per job; 0 means 'plan per recipient'."""
        if entry.template.fields:
            return 0
        return self._plan(entry.template.source)

    def _entry_for(self, job: Job) -> JobEntry:
        entry = self._jobs.get(job.id)
        if entry is not None:
            return entry
        entry = self._describe(job, slot=-1, tenant_key=0)  # raises before anything is taken
        entry.tenant_key = self._tenants.setdefault(job.tenant, len(self._tenants)) << _TENANT_SHIFT
        jobs = self._p.jobs
        slot = entry.slot = self._free_slots.pop() if self._free_slots else len(jobs)
        if slot == len(jobs):
            jobs.append(entry)
        else:
            jobs[slot] = entry
        self._jobs[job.id] = entry
        return entry

    def _describe(self, job: Job, *, slot: int, tenant_key: int) -> JobEntry:
        policy = self.settings.categories.get(job.category)
        if policy is None:
            raise ValueError(f"unknown category {job.category!r}")
        carrier = None
        if job.carrier is not None:
            if job.carrier not in self._carrier_index:
                raise UnknownCarrier(job.carrier)
            carrier = self._carrier_index[job.carrier]
        return JobEntry(slot, job, tenant_key, policy, carrier)

    def _drop(self, entry: JobEntry) -> None:
        if self._jobs.get(entry.job.id) is entry:
            del self._jobs[entry.job.id]
            self._paused.pop(entry.job.id, None)
            self._free_slots.append(entry.slot)

    def _set_paused(self, entry: JobEntry, paused: bool) -> None:
        entry.paused = paused
        if paused:
            self._paused[entry.job.id] = entry
        else:
            self._paused.pop(entry.job.id, None)

    # -- dispatch -------------------------------------------------------------------------

    def take(self, carrier: str, max_segments: int, now: float) -> Batch:
        """Decide what ``carrier`` may be sent now: at most ``max_segments`` segments (one larger
        message alone if the batch is empty) and never more than its bucket holds."""
        c = self._carrier(carrier)
        p, shards = self._p, self._shards
        for shard in shards:
            shard.release(now, p.jobs)
        expired = self._expire_parked(now) if self._paused else []
        if self._down:
            self._fail_over()
        bucket = self._buckets[c]
        tokens = int(bucket.available(now))
        budget = min(max_segments, tokens)
        out: list[Dispatch] = []
        outcomes: list[Outcome] = []
        if budget > 0:
            n = len(shards)
            start = self._rr[c]
            self._rr[c] = (start + 1) % n
            for prio in self._priorities:
                key = c << 4 | prio
                for k in range(n):
                    shard = shards[(start + k) % n]
                    lane = shard.lanes.get(key)
                    if lane:
                        budget = shard.drain(lane, budget, tokens, now, p, out, outcomes)
                        if budget <= 0:
                            break
                if budget <= 0:
                    break
            used = sum(d.segments for d in out)
            if used and not bucket.try_take(used, now):
                raise AssertionError("bucket gave fewer tokens than it said it had")
        if expired:
            outcomes[:0] = expired
        self._settle(outcomes)
        return Batch(dispatches=out, outcomes=outcomes)

    def _expire_parked(self, now: float) -> list[Outcome]:
        """End the parked rows of paused jobs whose validity is over: a paused job keeps its
        ``validity`` (pausing never extends it), and its messages end ``expired`` on time."""
        ended: list[Outcome] = []
        for entry in [e for e in self._paused.values() if now >= e.expires_at]:
            for shard in self._shards:
                ended += shard.end_parked(entry, FinalState.EXPIRED, "validity ended", now)
        return ended

    def _settle(self, outcomes: list[Outcome]) -> None:
        """Forget jobs whose last message just ended."""
        for o in outcomes:
            if isinstance(o, Final):
                entry = self._jobs.get(o.job_id)
                if entry is not None and entry.live == 0:
                    self._drop(entry)

    def complete(self, ref: int, now: float | None = None) -> None:
        """A dispatched message has left the queue for good (accepted or refused by the carrier).
        With ``now``, it was *accepted* then: its segments count towards the carrier's accepted
        rate, which is what the bucket falls back to when the carrier throttles."""
        shard, row = self._inflight(ref)
        if now is not None:
            self._buckets[shard.carrier[row]].accepted(shard.segments[row] & COUNT, now)
        entry = self._p.jobs[shard.job[row]]
        entry.live -= 1
        shard.inflight -= 1
        shard.free(row)
        if entry.live == 0:
            self._drop(entry)

    def complete_accepted(self, refs: Sequence[int], now: float) -> None:
        """``complete(ref, now)`` for each of ``refs``, all accepted at ``now``, in one pass:
        each carrier's bucket told its accepted segments once, not once a message (the
        dispatcher hands a drain's ``Submitted`` here together)."""
        shards, jobs, buckets = self._shards, self._p.jobs, self._buckets
        accepted: dict[int, int] = {}
        for ref in refs:
            shard_no, row = ref >> 32, ref & 0xFFFFFFFF
            if not 0 <= shard_no < len(shards):
                raise ValueError(f"no such dispatch ref {ref}")
            shard = shards[shard_no]
            if row >= len(shard.state) or shard.state[row] != INFLIGHT:
                raise ValueError(f"dispatch ref {ref} is not in flight")
            carrier = shard.carrier[row]
            accepted[carrier] = accepted.get(carrier, 0) + (shard.segments[row] & COUNT)
            entry = jobs[shard.job[row]]
            entry.live -= 1
            shard.inflight -= 1
            shard.free(row)
            if entry.live == 0:
                self._drop(entry)
        for carrier, segments in accepted.items():
            buckets[carrier].accepted(segments, now)

    def requeue(self, ref: int, now: float, *, delay: float = 0.0, refund_cap: bool = True) -> None:
        """Send it again: ahead of everything that arrived after it, or after ``delay`` seconds.

        ``refund_cap``: the carrier never took it, so it does not count against the weekly cap.
        """
        shard, row = self._inflight(ref)
        entry = self._p.jobs[shard.job[row]]
        shard.inflight -= 1
        if refund_cap and entry.policy.weekly_cap:
            shard.cap.refund(entry.tenant_key | shard.number[row], shard.due[row])
        shard.attempt[row] = min(255, shard.attempt[row] + 1)
        if delay > 0:
            shard.wait(row, min(now + delay, entry.expires_at))  # a retry never outlives validity
        else:
            shard.state[row] = READY
            shard.lane(shard.carrier[row], entry.priority).push_front(row)

    # -- failover -------------------------------------------------------------------------

    def carrier_down(self, carrier: str, now: float) -> None:
        """``carrier`` cannot send (no bind, repeated errors): its routes' next carriers take its
        traffic, from the next ``take`` on."""
        self._down.setdefault(self._carrier(carrier), now)

    def carrier_up(self, carrier: str, now: float) -> None:
        self._down.pop(self._carrier(carrier), None)

    def is_down(self, carrier: str) -> bool:
        return self._carrier(carrier) in self._down

    def _fail_over(self) -> None:
        """Move the ready rows of down carriers' lanes to the next carrier up on their route."""
        down, jobs, carriers_for = self._down, self._p.jobs, self._router.carriers_for
        for shard in self._shards:
            for key, lane in list(shard.lanes.items()):
                c = key >> 4
                if c not in down or not lane:
                    continue
                prio, state, number, carrier = key & 0xF, shard.state, shard.number, shard.carrier
                kept: list[int] = []
                for _ in range(len(lane)):
                    row = lane.pop()
                    if state[row] == DEAD:
                        shard.free(row)
                        continue
                    target = None
                    if jobs[shard.job[row]].carrier is None:
                        target = next((t for t in carriers_for(str(number[row])) if t not in down), None)
                    if target is None:
                        kept.append(row)
                    else:
                        carrier[row] = target
                        shard.lane(target, prio).push(row)
                for row in kept:
                    lane.push(row)

    def throttled(self, carrier: str, now: float) -> None:
        self._buckets[self._carrier(carrier)].throttled(now)

    def bucket(self, carrier: str) -> TokenBucket:
        return self._buckets[self._carrier(carrier)]

    def _carrier(self, name: str) -> int:
        try:
            return self._carrier_index[name]
        except KeyError:
            raise UnknownCarrier(name) from None

    def _inflight(self, ref: int) -> tuple[Shard, int]:
        shard_no, row = ref >> 32, ref & 0xFFFFFFFF
        if not 0 <= shard_no < len(self._shards):
            raise ValueError(f"no such dispatch ref {ref}")
        shard = self._shards[shard_no]
        if row >= len(shard.state) or shard.state[row] != INFLIGHT:
            raise ValueError(f"dispatch ref {ref} is not in flight")
        return shard, row

    # -- control --------------------------------------------------------------------------

    def cancel_job(self, job_id: str, now: float) -> list[Final]:
        """End every queued (not in-flight) message of a job as ``canceled``."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return []
        ended: list[Final] = []
        slot = entry.slot
        for shard in self._shards:
            jobcol, state, ids = shard.job, shard.state, shard.ids
            for row in shard.parked.pop(slot, ()):
                state[row] = DEAD  # nothing else refers to a parked row: free it at once
                entry.live -= 1
                ended.append(Final(message_id=ids[row], job_id=job_id,
                                   state=FinalState.CANCELED, reason="job canceled", at=now))  # fmt: skip
                shard.free(row)
            for row in range(len(state)):
                if jobcol[row] == slot and state[row] in (READY, WAITING):
                    state[row] = DEAD  # freed when its lane or timer entry comes up
                    entry.live -= 1
                    ended.append(Final(message_id=ids[row], job_id=job_id,
                                       state=FinalState.CANCELED, reason="job canceled", at=now))  # fmt: skip
        if entry.live == 0:
            self._drop(entry)
        return ended

    def pause_job(self, job_id: str) -> bool:
        """Hold a job's queued messages (in flight ones go on). False if the job has none.
        A paused job keeps its schedule: ``send_at`` and validity still hold when it resumes,
        and its messages end ``expired`` at the end of their validity, paused or not."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return False
        self._set_paused(entry, True)
        return True

    def resume_job(self, job_id: str, *, limit: int | None = None) -> bool:
        """Let a paused job's messages go. ``limit``: make at most that many ready now, and the
        rest with ``resume_more`` in steps (a job of a million: its caller serves others between
        steps). False if the job has no queued messages."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return False
        self._set_paused(entry, False)
        self.resume_more(job_id, limit)
        return True

    def resume_more(self, job_id: str, limit: int | None = None) -> int:
        """Up to ``limit`` more parked messages of a resumed job made ready; returns how many
        are still parked (0: done; also 0 if it was paused again meanwhile: they stay parked)."""
        entry = self._jobs.get(job_id)
        if entry is None or entry.paused:
            return 0
        left, remaining = limit, 0
        for shard in self._shards:
            if left is None or left > 0:
                n = shard.unpark(entry.slot, self._p.jobs, left)
                left = None if left is None else left - n
            remaining += shard.parked_count(entry.slot)
        return remaining

    def suppress(self, tenant: str, number: str) -> None:
        self._p.suppressed.add(self._tenant_key(tenant) | int(number.lstrip("+")))

    def unsuppress(self, tenant: str, number: str) -> None:
        self._p.suppressed.discard(self._tenant_key(tenant) | int(number.lstrip("+")))

    def restore_sends(self, sends: Iterable[tuple[str, str, float]]) -> int:
        """Count (tenant, number, when) sends a carrier took before a restart against the
        weekly caps, so a restart never resets them. Returns how many were counted."""
        nshards, counted = len(self._shards), 0
        for tenant, number, at in sorted(sends, key=lambda s: s[2]):  # each key's times in order
            digits = number[1:] if number[:1] == "+" else number
            if not digits.isdigit():
                continue  # never a number the core could send to
            n = int(digits)
            self._shards[shard_of(n, nshards)].cap.record(self._tenant_key(tenant) | n, at)
            counted += 1
        return counted

    def capped_categories(self) -> list[str]:
        return [name for name, policy in self.settings.categories.items() if policy.weekly_cap]

    def _tenant_key(self, tenant: str) -> int:
        return self._tenants.setdefault(tenant, len(self._tenants)) << _TENANT_SHIFT

    def next_wakeup(self) -> float | None:
        """The earliest instant a deferred message becomes due (for the shell's sleep)."""
        dues = [d for s in self._shards if (d := s.timers.next_due()) is not None]
        dues += [e.expires_at for e in self._paused.values()
                 if e.expires_at < _INF and any(e.slot in s.parked for s in self._shards)]  # fmt: skip
        return min(dues) if dues else None

    def statistics(self, now: float) -> CoreStatistics:
        names = self._p.carrier_names
        ready = dict.fromkeys(names, 0)
        for shard in self._shards:
            for key, lane in shard.lanes.items():
                ready[names[key >> 4]] += sum(1 for row in lane if shard.state[row] != DEAD)
        return CoreStatistics(
            ready=ready,
            waiting=sum(1 for s in self._shards for row in s.timers if s.state[row] == WAITING),
            parked=sum(len(rows) for s in self._shards for rows in s.parked.values()),
            inflight=sum(s.inflight for s in self._shards),
            jobs=len(self._jobs),
            buckets={n: b.statistics(now) for n, b in zip(names, self._buckets)},
            shards=[{name: s.state.count(code) for name, code in _STATE_NAMES} for s in self._shards],
            down=[names[c] for c in sorted(self._down)],
        )


_STATE_NAMES = (("ready", READY), ("waiting", WAITING), ("inflight", INFLIGHT), ("parked", PARKED))


def _by_shard(shards: list[int], nshards: int, *columns: list) -> list[ShardColumns]:
    """Columns (recipient k's values at k) dealt to the shards, each shard's in index order:
    the indexes dealt (one append each), then each column taken in that order with one
    ``itemgetter`` call and cut at the shards' bounds."""
    dealt: list[list[int]] = [[] for _ in range(nshards)]
    add = [d.append for d in dealt]
    for s, i in zip(shards, range(len(shards))):
        add[s](i)
    order = list(chain.from_iterable(dealt))
    if len(order) == 1:
        taken = [order, *([c[0]] for c in columns)]
    else:
        get = operator.itemgetter(*order)
        taken = [order, *(list(get(c)) for c in columns)]
    out: list[ShardColumns] = []
    start = 0
    for d in dealt:
        end = start + len(d)
        out.append(tuple(c[start:end] for c in taken))  # type: ignore[arg-type]
        start = end
    return out


def _too_long(count: int, most: int) -> str:
    return f"message needs {count} segments, more than the maximum {most}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NoRoute | KeyError):
        return str(exc.args[0]) if exc.args else type(exc).__name__
    return str(exc)

