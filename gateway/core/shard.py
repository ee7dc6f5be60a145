"""One shard of the queue: the messages of the recipients whose number hashes to it.

Theory of operation
-------------------
A recipient's messages always land in the same shard (``shard_of``: a stable multiplicative
hash of the number, the same in every process), so the recipient's weekly-cap state lives in one
place and shards can later be spread over processes.

Messages are stored by column, one ``array`` per field, indexed by a *row* number; the per-job
fields (tenant, sender, template, category, expiry) live once in the job table. A queued
templated message costs about 60 bytes: the row (~42 B), its packed variables in a shared arena (the row's id is 8 of those),
and its entry in a lane or in the timers. Each live row is referenced by exactly one of: a lane,
the timers, or a dispatch in flight. A row that is canceled while queued is marked ``DEAD`` and
freed when its lane or timer entry comes up, so no stale reference ever reaches a reused row.

Per row, the lifecycle is::

    FREE -> READY (in a lane) <-> WAITING (in the timers)
              |  ^      \
              v  | requeue  PARKED (job paused; in the shard's parked list until resumed)
            INFLIGHT -> FREE (complete)          READY/WAITING -> DEAD -> FREE (cancel)

``drain`` walks one lane in order and decides each message: dispatch, defer (quiet hours,
weekly cap) or end (expired, suppressed, capped). Every decision is a value appended to the
caller's lists; nothing raises.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from gateway.core.caps import WeeklyCap
from gateway.core.model import Deferred, Dispatch, Final, FinalState
from gateway.core.queue import Lane, Timers

if TYPE_CHECKING:
    from gateway.core.scheduler import JobEntry, Policies

__all__ = ["Shard", "shard_of"]

FREE, READY, WAITING, INFLIGHT, DEAD, PARKED = range(6)
COUNT, SMART, UCS2 = 0x3F, 0x40, 0x80  # the segments byte: count, smart encoding applied, UCS-2
_GROW = 4096
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_INF = float("inf")


def shard_of(number: int, shards: int) -> int:
    """Stable across processes and runs (unlike ``hash(str)``, which is salted)."""
    return (((number * _GOLDEN) & _MASK64) >> 32) % shards


def shards_of(numbers: Sequence[int], shards: int) -> list[int]:
    """``shard_of`` of many numbers (a chunk of a large job)."""
    return [(((n * _GOLDEN) & _MASK64) >> 32) % shards for n in numbers]


def spread_offset(message_id: int, spread: float) -> float:
    """A deterministic, uniform offset in [0, spread) so held messages don't leave at once."""
    return ((message_id * 2654435761) & 0xFFFFFFFF) / 4294967296.0 * spread


class PackedRun:
    """A run of recipients' packed values as one text and their lengths (an ``array("I")``):
    what a check worker sends, so that ``Shard.add_parked`` appends the text to its arena as it
    is. Iterates as the values themselves, like the list of them it stands for."""

    __slots__ = ("blob", "lengths")

    def __init__(self, blob: bytes, lengths: array) -> None:
        self.blob, self.lengths = blob, lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        start = 0
        for n in self.lengths:
            yield self.blob[start : start + n]
            start += n

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (PackedRun, list, tuple)) else NotImplemented



class Shard:
    __slots__ = (
        "index",
        "number",
        "job",
        "ids",
        "vars_at",
        "due",
        "zone",
        "carrier",
        "segments",
        "state",
        "attempt",
        "arena",
        "arena_dead",
        "free_rows",
        "lanes",
        "timers",
        "inflight",
        "parked",
        "cap",
        "_columns",
    )

    def __init__(self, index: int, cap: WeeklyCap) -> None:
        self.index = index
        self.cap = cap
        self.number = array("q")  # E.164 digits as int
        self.job = array("i")  # slot in the job table
        self.ids = array("q")  # the message's sortable id
        self.vars_at = array("q")  # arena offset << 16 | length
        self.due = array("d")  # when WAITING: due time; when INFLIGHT: dispatch time
        self.zone = array("H")  # interned zone-set key (gateway.core.zones)
        self.carrier = array("B")
        self.segments = array("B")  # see COUNT, SMART, UCS2
        self.state = array("B")
        self.attempt = array("B")
        self._columns = (
            self.number, self.job, self.ids, self.vars_at, self.due,
            self.zone, self.carrier, self.segments, self.state, self.attempt,
        )  # fmt: skip
        self.arena = bytearray()
        self.arena_dead = 0
        self.free_rows = array("q")
        self.lanes: dict[int, Lane] = {}  # carrier << 4 | priority -> Lane
        self.timers = Timers()
        self.inflight = 0
        self.parked: dict[int, array] = {}  # job slot -> rows of that paused job

    # -- rows -----------------------------------------------------------------------------

    def alloc(self) -> int:
        if not self.free_rows:
            start = len(self.state)
            for col in self._columns:
                col.frombytes(bytes(_GROW * col.itemsize))
            self.free_rows.extend(range(start + _GROW - 1, start - 1, -1))
        return self.free_rows.pop()

    def free(self, row: int) -> None:
        self.state[row] = FREE
        self.arena_dead += self.vars_at[row] & 0xFFFF
        self.free_rows.append(row)
        if self.arena_dead > 1 << 20 and self.arena_dead * 2 > len(self.arena):
            self._compact_arena()

    def add(
        self, number: int, job_slot: int, message_id: int, packed: bytes, zone: int,
        carrier: int, seg: int, priority: int, not_before: float | None, park: bool = False,
    ) -> int:  # fmt: skip
        """Store one admitted message; it is ready now, or waits until ``not_before``."""
        row = self.free_rows.pop() if self.free_rows else self.alloc()
        self.number[row] = number
        self.job[row] = job_slot
        self.ids[row] = message_id
        self.store_vars(row, packed)
        self.zone[row] = zone
        self.carrier[row] = carrier
        self.segments[row] = seg
        self.attempt[row] = 0
        if park:
            self.park(row, job_slot)
        elif not_before is None:
            self.state[row] = READY
            lane = self.lanes.get(carrier << 4 | priority)
            (lane if lane is not None else self.lane(carrier, priority)).push(row)
        else:
            self.wait(row, not_before)
        return row

    def add_parked(self, job_slot: int, first_id: int, numbers: Sequence[int], packed: Sequence[bytes] | PackedRun,
                   segs: Sequence[int], zones: Sequence[int], carriers: Sequence[int]) -> None:  # fmt: skip
        """``add(..., park=True)`` of many messages of one job at once, ids ``first_id``,
        ``first_id + 1``...: a chunk of a large job. Fresh rows are consecutive, so each column
        is then written with one slice assignment."""
        k = len(numbers)
        if type(packed) is PackedRun:
            lengths, blob = packed.lengths, packed.blob
        else:
            lengths, blob = list(map(len, packed)), b"".join(packed)
        if k and max(lengths) > 0xFFFF:
            raise ValueError("a recipient's variables may take at most 65535 bytes")
        free = self.free_rows
        if len(free) < k:  # grown at the bottom: rows already free are taken first, as by add
            start = len(self.state)
            grow = -(-(k - len(free)) // _GROW) * _GROW
            for col in self._columns:
                col.frombytes(bytes(grow * col.itemsize))
            free[0:0] = array("q", range(start + grow - 1, start - 1, -1))
        rows = free[len(free) - k :]
        del free[len(free) - k :]
        rows.reverse()  # the order add pops them in
        at = [offset << 16 | n for offset, n in zip(accumulate(lengths, initial=len(self.arena)), lengths)]
        self.arena += blob
        columns = ((self.number, numbers), (self.ids, range(first_id, first_id + k)), (self.vars_at, at),
                   (self.zone, zones), (self.carrier, carriers), (self.segments, segs))  # fmt: skip
        if k and rows[-1] - rows[0] == k - 1 and rows == array("q", range(rows[0], rows[0] + k)):
            lo, hi = rows[0], rows[0] + k
            for col, values in columns:  # an array of the column's type as it is (a worker's answer)
                col[lo:hi] = values if type(values) is array and values.typecode == col.typecode else array(col.typecode, values)
            self.job[lo:hi] = array(self.job.typecode, [job_slot]) * k
            self.attempt[lo:hi] = array("B", bytes(k))
            self.state[lo:hi] = array("B", [PARKED]) * k
        else:
            for col, values in columns:
                for row, v in zip(rows, values):
                    col[row] = v
            job, attempt, state = self.job, self.attempt, self.state
            for row in rows:
                job[row] = job_slot
                attempt[row] = 0
                state[row] = PARKED
        parked = self.parked.get(job_slot)
        if parked is None:
            parked = self.parked[job_slot] = array("q")
        parked.extend(rows)

    def store_vars(self, row: int, packed: bytes) -> None:
        n = len(packed)
        if n > 0xFFFF:
            raise ValueError("a recipient's variables may take at most 65535 bytes")
        self.vars_at[row] = len(self.arena) << 16 | n
        self.arena += packed

    def vars_of(self, row: int) -> bytes:
        at = self.vars_at[row]
        off = at >> 16
        return bytes(self.arena[off : off + (at & 0xFFFF)])

    def _compact_arena(self) -> None:
        """Rewrite the arena with only live rows' variables (amortised: runs when half is dead)."""
        old, new = self.arena, bytearray()
        state, vars_at = self.state, self.vars_at
        for row in range(len(state)):
            if state[row] != FREE:
                at = vars_at[row]
                off, n = at >> 16, at & 0xFFFF
                vars_at[row] = len(new) << 16 | n
                new += old[off : off + n]
            else:
                vars_at[row] = 0
        self.arena, self.arena_dead = new, 0

    # -- queueing -------------------------------------------------------------------------

    def lane(self, carrier: int, priority: int) -> Lane:
        key = carrier << 4 | priority
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane()
        return lane

    def make_ready(self, row: int, jobs: list[JobEntry]) -> None:
        self.state[row] = READY
        self.lane(self.carrier[row], jobs[self.job[row]].priority).push(row)

    def park(self, row: int, job_slot: int) -> None:
        self.state[row] = PARKED
        rows = self.parked.get(job_slot)
        if rows is None:
            rows = self.parked[job_slot] = array("q")
        rows.append(row)

    def unpark(self, job_slot: int, jobs: list[JobEntry], limit: int | None = None) -> int:
        """A resumed job's rows go back to a lane, or to the timers while the job is not due
        yet (``send_at`` ahead: admission parks every row while the store writes them); at most
        ``limit`` of them (oldest first: a large job is resumed in steps). Returns how many."""
        rows = self.parked.get(job_slot)
        if rows is None:
            return 0
        if limit is None or limit >= len(rows):
            del self.parked[job_slot]
            take = rows
        else:
            take = rows[:limit]
            del rows[:limit]
        due = jobs[job_slot].not_before
        if due > -_INF:  # a past due time is released by the next ``take``, in id order
            self._wait_rows(take, due)
        else:
            self._ready_rows(take, jobs[job_slot].priority)
        return len(take)

    def _ready_rows(self, rows: array, priority: int) -> None:
        """``make_ready`` of many rows of one job (so one priority), in their order: each
        carrier's lane gets its rows in one ``extend`` (a 1M-recipient job is resumed before
        its 202 is answered: a Python call a row was ~1 µs of the event loop a recipient)."""
        k = len(rows)
        if not k:
            return
        state, carrier = self.state, self.carrier
        lo = rows[0]
        if _consecutive(rows):  # fresh rows
            state[lo : lo + k] = array("B", [READY]) * k
            carriers = carrier[lo : lo + k]
        else:
            for row in rows:
                state[row] = READY
            carriers = array(carrier.typecode, [carrier[row] for row in rows])
        first = carriers[0]
        if carriers.count(first) == k:  # the usual case: one carrier for the whole job
            self.lane(first, priority).extend(rows)
            return
        for c in dict.fromkeys(carriers):  # each carrier's rows, in their order
            self.lane(c, priority).extend(array("q", [row for row, x in zip(rows, carriers) if x == c]))

    def _wait_rows(self, rows: array, until: float) -> None:
        """``wait(row, until)`` of many rows, in their order: a scheduled job (a campaign's batch,
        ``send_at`` ahead) is resumed before its 202 is answered, and a Python call a row was
        ~1 µs of the event loop a recipient. Every row shares ``until``, so one timer bucket
        takes them all in one ``extend``."""
        k = len(rows)
        if not k:
            return
        state, due = self.state, self.due
        lo = rows[0]
        if _consecutive(rows):  # fresh rows
            state[lo : lo + k] = array("B", [WAITING]) * k
            due[lo : lo + k] = array("d", [until]) * k
        else:
            for row in rows:
                state[row] = WAITING
                due[row] = until
        self.timers.extend(rows, until)

    def parked_count(self, job_slot: int) -> int:
        return len(self.parked.get(job_slot, ()))

    def end_parked(self, entry: JobEntry, state: FinalState, reason: str, now: float) -> list[Final]:
        """End every parked row of ``entry``'s job (e.g. its validity ran out while paused)."""
        return [self._end(row, entry, state, reason, now) for row in self.parked.pop(entry.slot, ())]

    def wait(self, row: int, until: float) -> None:
        self.state[row] = WAITING
        self.due[row] = until
        self.timers.add(row, until)

    def release(self, now: float, jobs: list[JobEntry]) -> None:
        """Move every timer that is due at ``now`` to its lane."""
        timers, state = self.timers, self.state
        while (rows := timers.pop_due(now)) is not None:
            for row in rows:
                if state[row] == DEAD:
                    self.free(row)
                else:
                    self.make_ready(row, jobs)

    # -- deciding -------------------------------------------------------------------------

    def drain(
        self,
        lane: Lane,
        budget: int,
        tokens: int,
        now: float,
        p: Policies,
        out: list[Dispatch],
        outcomes: list[Deferred | Final],
    ) -> int:
        """Decide messages from the head of ``lane`` until ``budget`` segments are used.

        Returns the budget left, or -1 when the head message does not fit (the caller stops:
        a lower priority never overtakes a higher one that is waiting for tokens).
        """
        jobs, state, number, seg_col = p.jobs, self.state, self.number, self.segments
        suppressed, quiet, cap = p.suppressed, p.quiet_hours, self.cap
        pop = lane.pop
        count = len(lane)  # nothing joins this lane while we drain it
        while budget > 0 and count:
            count -= 1
            row = pop()
            if state[row] == DEAD:
                self.free(row)
                continue
            entry = jobs[self.job[row]]
            if now >= entry.expires_at:
                outcomes.append(self._end(row, entry, FinalState.EXPIRED, "validity ended", now))
                continue
            if entry.paused:
                self.park(row, entry.slot)
                continue
            if now < entry.not_before:  # not due yet, whichever way it came back to a lane
                outcomes.append(self._hold(row, entry, entry.not_before, "scheduled"))
                continue
            policy = entry.policy
            key = entry.tenant_key | number[row]
            if policy.suppressible and key in suppressed:
                outcomes.append(self._end(row, entry, FinalState.SUPPRESSED, "opted out", now))
                continue
            if policy.quiet_hours:
                opens = quiet.next_open(self.zone[row], now)
                if opens > now:
                    window = quiet.next_window(self.zone[row], now)
                    outcomes.append(self._hold_quiet(row, entry, window, now, p.spread))
                    continue
            seg = seg_col[row] & COUNT
            if seg > budget and (out or seg > tokens):
                lane.unpop(row)
                return -1
            if policy.weekly_cap:
                slot = cap.take(key, now)  # counts the send when a slot is free
                if slot > now:
                    outcomes.append(self._over_cap(row, entry, slot, now, p.cap_wait))
                    continue
            budget -= seg
            out.append(self._dispatch(row, entry, now, p))
        return budget

    def _dispatch(self, row: int, entry: JobEntry, now: float, p: Policies) -> Dispatch:
        self.state[row] = INFLIGHT
        self.due[row] = now
        self.inflight += 1
        seg = self.segments[row]
        template = entry.template
        if template.fields:
            at = self.vars_at[row]
            off = at >> 16
            body = template.render(self.arena[off : off + (at & 0xFFFF)])
        else:
            body = template.source
        return Dispatch(
            ref=self.index << 32 | row,
            message_id=self.ids[row],
            job_id=entry.job.id,
            tenant=entry.job.tenant,
            carrier=p.carrier_names[self.carrier[row]],
            recipient="+" + str(self.number[row]),
            sender=entry.job.sender,
            body=p.smart(body) if seg & SMART and p.smart else body,
            encoding="ucs2" if seg & UCS2 else "gsm7",
            segments=seg & COUNT,
            category=entry.job.category,
            priority=entry.priority,
            attempt=self.attempt[row],
            media=entry.job.media,
        )

    def _end(self, row: int, entry: JobEntry, state: FinalState, reason: str, now: float) -> Final:
        entry.live -= 1
        message_id = self.ids[row]
        self.free(row)
        return Final(message_id=message_id, job_id=entry.job.id, state=state, reason=reason, at=now)

    def _hold(self, row: int, entry: JobEntry, until: float, reason: str) -> Deferred:
        until = min(until, entry.expires_at)  # wake up at expiry to end it then, not later
        self.wait(row, until)
        return Deferred(
            message_id=self.ids[row], job_id=entry.job.id, until=until, reason=reason
        )

    def _hold_quiet(
        self, row: int, entry: JobEntry, window: tuple[float, float], now: float, spread: float
    ) -> Deferred | Final:
        opens, closes = window
        if opens == float("inf"):  # the windows of the recipient's zones never overlap
            if entry.expires_at == float("inf"):
                return self._end(row, entry, FinalState.REJECTED, "quiet hours never open", now)
            return self._hold(row, entry, entry.expires_at, "quiet_hours")
        # Spread over at most half the opening: a short window (a 30-minute overlap of a
        # multi-zone number's windows) must not see its messages released after it closed.
        spread = min(spread, (closes - opens) / 2)
        return self._hold(
            row, entry, opens + spread_offset(self.ids[row], spread), "quiet_hours"
        )

    def _over_cap(
        self, row: int, entry: JobEntry, slot: float, now: float, wait: bool
    ) -> Deferred | Final:
        if wait:
            return self._hold(row, entry, slot, "weekly_cap")
        return self._end(row, entry, FinalState.CAPPED, "weekly cap reached", now)


def _consecutive(rows: array) -> bool:
    """Whether ``rows`` (not empty) are ``rows[0], rows[0] + 1, ...``: a fresh job's rows."""
    lo, k = rows[0], len(rows)
    return rows[-1] - lo == k - 1 and rows == array("q", range(lo, lo + k))
