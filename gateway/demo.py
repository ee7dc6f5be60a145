"""`sluice demo`: the delivery core on virtual time, over a realistic day of traffic.

A marketing job across many time zones (some in quiet hours, some recipients over their weekly
cap, some opted out, some invalid numbers, some long or Unicode bodies), transactional traffic,
and one-time codes that arrive while the marketing backlog is queued. Two carriers with their
embedded-default rates accept everything, except that one throttles for a moment. The clock is
virtual: 24 hours pass in seconds, and every figure comes from what the core decided.
"""

from __future__ import annotations

import bisect
import collections
import datetime as dt
import random
import shutil

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.config import default_text, load, loads
from gateway.core.model import Final, Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.testing import workload

START = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC).timestamp()  # 07:00 in New York
TICK = 0.05
WINDOW = 100  # segments a carrier link takes per tick at most (its in-flight window)


def _jobs(n: int, rnd: random.Random) -> list[tuple[float, Job, list[Recipient]]]:
    """(submit time, job, recipients): the day's traffic."""
    numbers = list(workload.numbers(n, seed=11))
    regulars = numbers[: n // 50]  # frequent recipients: they hit the weekly cap
    people = [Recipient(to=t, vars={"name": rnd.choice(workload.NAMES), "pct": "20"}) for t in numbers]
    people[5] = Recipient(to="+1212555", vars={"name": "Short", "pct": "1"})  # invalid number
    people[6] = Recipient(to="+14155550100", vars={"pct": "5"})  # missing variable
    long_body = "Hi {name}! " + "Our biggest sale of the year is here, with {pct}% off. " * 4
    out = [
        (0.0, workload.job("spring-sale", "marketing"), people),
        (1.0, Job(id="news-uni", tenant="shop", sender="SLUICE", category="marketing",
                  template="Bonjour {name} — les soldes d’hiver commencent ! 🎉 -{pct}%"),
         people[: n // 10]),
        (2.0, Job(id="long-letter", tenant="shop", sender="SLUICE", category="marketing",
                  template=long_body), people[n // 10 : n // 5]),
    ]  # fmt: skip
    for k in range(4):  # three earlier sends this week, then one more: the 4th is capped
        extra = [Recipient(to=t, vars={"name": "again", "pct": "10"}) for t in regulars]
        out.append((3.0 + k, workload.job(f"weekly-{k}", "marketing"), extra))
    otp = list(workload.recipients(300, seed=5, vars_for="otp"))
    out.append((20.0, workload.job("otp", "otp", expires_at=START + 20 + 300), otp))
    tx = list(workload.recipients(1000, seed=6, vars_for="transactional"))
    out.append((25.0, workload.job("shipping", "transactional"), tx))
    return out


def run_demo(n: int, config_path: str | None) -> None:
    console = Console(width=max(110, shutil.get_terminal_size().columns))
    cfg = load(config_path) if config_path else loads(default_text())
    rnd = random.Random(3)
    sched = Scheduler(cfg.core, START)
    carriers = [c.name for c in cfg.core.carriers]
    limits = {c.name: (c.rate, c.burst) for c in cfg.core.carriers}
    pending = _jobs(n, rnd)
    for t in list(workload.numbers(n, seed=11))[100:100 + n // 100]:
        sched.suppress("shop", t)  # opted out earlier
    sent: dict[str, list[tuple[float, int]]] = {c: [] for c in carriers}
    finals: collections.Counter[str] = collections.Counter()
    deferred: dict[str, int] = collections.Counter()
    released_at: list[float] = []
    rejected = accepted = 0
    otp_wait: list[float] = []
    submitted_at: dict[str, float] = {}
    now, horizon = START, START + 86400

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[clock]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:  # fmt: skip
        task = bar.add_task("virtual day", total=horizon - START, clock="")
        while now < horizon:
            while pending and START + pending[0][0] <= now:
                _, job, people = pending.pop(0)
                adm = sched.admit(job, people, now)
                accepted += adm.accepted
                rejected += len(adm.rejected)
                submitted_at[job.id] = now
                _count(adm.outcomes, finals, deferred)
            busy = False
            for c in carriers:
                if c == "alpha" and START + 40 <= now < START + 40 + TICK:
                    sched.throttled(c, now)  # the carrier says "too fast" once
                batch = sched.take(c, WINDOW, now)
                _count(batch.outcomes, finals, deferred)
                for d in batch.dispatches:
                    sent[c].append((now, d.segments))
                    finals["sent"] += 1
                    if d.attempt == 0 and d.category == "otp":
                        otp_wait.append(now - submitted_at[d.job_id])
                    if d.job_id not in ("otp", "shipping") and now - START > 60:
                        released_at.append(now)
                    sched.complete(d.ref)
                busy = busy or bool(batch.dispatches or batch.outcomes)
            nxt = sched.next_wakeup()
            if busy or (pending and START + pending[0][0] <= now + TICK):
                now += TICK
            else:
                cands = [x for x in (nxt, START + pending[0][0] if pending else None) if x is not None]
                now = max(now + TICK, min(cands)) if cands else horizon
            bar.update(task, completed=min(now, horizon) - START,
                       clock=dt.datetime.fromtimestamp(min(now, horizon), dt.UTC).strftime("%H:%M UTC"))  # fmt: skip
    _summary(console, sched, limits, sent, finals, deferred, released_at, accepted, rejected, otp_wait, now)


def _count(outcomes, finals, deferred) -> None:
    for o in outcomes:
        if isinstance(o, Final):
            finals[str(o.state)] += 1
        else:
            deferred[o.reason] += 1


def _max_per_second(events: list[tuple[float, int]]) -> int:
    times = [t for t, _ in events]
    segs = [0]
    for _, s in events:
        segs.append(segs[-1] + s)
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + 1.0)
        best = max(best, segs[j] - segs[i])
    return best


def _summary(console, sched, limits, sent, finals, deferred, released_at, accepted, rejected, otp_wait, now):
    t = Table(title="What the core decided over one virtual day")
    t.add_column("outcome")
    t.add_column("messages", justify="right")
    t.add_row("accepted", f"{accepted:,}")
    t.add_row("rejected at submission (bad number, missing variable)", f"{rejected:,}")
    for k in ("sent", "capped", "suppressed", "expired", "canceled"):
        t.add_row(k, f"{finals.get(k, 0):,}")
    for k, v in sorted(deferred.items()):
        t.add_row(f"deferrals ({k})", f"{v:,}")
    stats = sched.statistics(now)
    t.add_row("still queued at the end", f"{sum(stats.ready.values()) + stats.waiting:,}")
    console.print(t)
    c = Table(title="Carriers: nothing above its limit")
    for col in ("carrier", "segments sent", "rate (seg/s)", "burst", "allowed in any 1 s", "largest 1-s window"):
        c.add_column(col, justify="right")
    for name, events in sent.items():
        rate, burst = limits[name]
        c.add_row(name, f"{sum(s for _, s in events):,}", f"{rate:,.0f}", str(burst), f"{rate + burst:,.0f}",
                  f"{_max_per_second(events):,}")
    console.print(c)
    if otp_wait:
        otp_wait.sort()
        console.print(f"OTP codes submitted behind the marketing backlog waited p50 "
                      f"{otp_wait[len(otp_wait) // 2] * 1000:.0f} ms, max {otp_wait[-1] * 1000:.0f} ms (virtual).")  # fmt: skip
    if released_at:
        hours = collections.Counter(dt.datetime.fromtimestamp(x, dt.UTC).strftime("%H:00") for x in released_at)
        spread = ", ".join(f"{h} UTC: {n:,}" for h, n in sorted(hours.items()))
        console.print(f"Messages held for quiet hours went out as each zone opened: {spread}")
