"""`sluice demo` (what `make run` runs): the real gateway end to end, on loopback, from outside.

1. One SMSC simulator per carrier of the embedded config, each enforcing that carrier's limit:
   ``rate + burst`` (the most its token bucket lets through in any second) plus ``HEADROOM``,
   because submits reach the carrier with some jitter after the bucket let them go (a window
   that starts 10 ms late at 1,000/s holds 10 more). Then ``sluice serve``
   on the embedded config plus only what a local run needs: the simulators' ports, a fresh API
   key (passed in an environment variable, ``key_env``), a store in a temporary directory.
2. Over the HTTP API, as a client would: opt-outs, three earlier marketing sends to some
   recipients (so the big job's message to them ends ``capped``), then a marketing job across
   many time zones as NDJSON (some zones in quiet hours *now*, some invalid numbers, some long
   or Unicode bodies), a transactional job, and one-time codes sent behind the backlog.
3. Live progress from ``GET /v1/jobs/{id}`` and ``GET /v1/carriers`` until every message is
   final or deferred; then a summary from the API and the simulators' own counters.

Everything is bounded: one overall deadline, and the children are stopped by their PIDs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import random
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.config import Config, default_text, loads
from gateway.core.quiet_hours import QuietHours
from gateway.core.zones import ZoneResolver
from gateway.runtime.numbers import NumberCheck
from gateway.testing import workload
from gateway.testing.processes import Child, gateway, simulator

__all__ = ["Report", "ShowcaseError", "run_showcase"]

KEY_ENV = "SLUICE_DEMO_KEY"
HEADROOM = 0.05
TENANT = "shop"
SENT = ("submitted", "delivered", "undelivered", "unknown")
UNSENT = ("capped", "suppressed", "rejected", "failed", "expired", "canceled")
OPEN = ("queued", "accepted", "submitted")  # not final, not deferred: the run waits for these
TEMPLATE = "Hi {name}, our winter sale is on: {pct}% off everything until Sunday.{note} Reply STOP to opt out."
LONG_NOTE = (" Members also get free delivery on every order over 20 EUR, free gift wrapping, and an extra"
             " 5% off anything ordered before midnight on Saturday; the full list of offers is on the shop's"
             " home page, together with our opening hours for the holidays.")  # fmt: skip
UNICODE_NOTES = (" 🎁 Подарок к каждому заказу!", " 冬のセール開催中！", " Δώρο σε κάθε παραγγελία 🎄")
INVALID = ("+1212555", "+99912345678", "+4412", "+33123")


class ShowcaseError(Exception):
    """The run could not show what it should (a child did not start, a deadline passed)."""


class SimFacts(msgspec.Struct, kw_only=True):
    carrier: str
    limit: int
    accepted: int
    throttled: int
    max_submits_1s: int
    max_accepted_1s: int
    receipts: int
    messages: int  # messages the gateway's connector had accepted by the carrier (GET /v1/carriers)


class Report(msgspec.Struct, kw_only=True):
    """What the run saw; printed as tables, and written as JSON for tests (``--json``)."""

    recipients: int
    rejected_at_submission: int
    jobs: dict[str, dict[str, int]]  # label -> state -> messages
    carriers: list[SimFacts]
    send_seconds: float  # from the big job's POST until nothing was left to hand to a carrier
    sent_in_phase: int  # messages handed to carriers in that time
    otp_latency_ms: list[float]
    deferred_sample: list[tuple[str, float]]  # (number, release time) for a sample of deferred
    deferred_total: int
    wall_seconds: float


# -- the scenario -------------------------------------------------------------------------------


class Scenario(msgspec.Struct, kw_only=True):
    lines: list[dict[str, Any]]  # the marketing job's recipients, in order
    regulars: list[str]  # open now, and sent three times already this week: capped
    opted_out: list[str]
    transactional: list[dict[str, Any]]
    otp: list[str]


def scenario(n: int, cfg: Config, now: float, seed: int = 11) -> Scenario:
    """The job and its history, deterministic for a seed; the regulars are chosen among numbers
    whose zone is open *now* (else their earlier sends would be held, not counted)."""
    rnd = random.Random(seed)
    numbers = list(workload.numbers(n, seed=seed))
    resolver = ZoneResolver(default_zone=cfg.core.quiet_hours.default_zone,
                            country_zones=dict(cfg.core.quiet_hours.country_zones))
    qh = cfg.core.quiet_hours
    quiet = QuietHours(resolver, start=qh.start, end=qh.end, overrides=dict(qh.overrides), rules=dict(qh.rules))
    check = NumberCheck()
    valid = [t for t in numbers if check.error(t) is None]
    want = max(5, n // 100)
    regulars = [t for t in valid if quiet.next_open(resolver.key_for(int(t[1:])), now) == now][:want]
    taken = set(regulars)
    opted_out = [t for t in valid if t not in taken][: max(5, min(250, n // 200))]
    special = taken | set(opted_out)
    lines = []
    for i, to in enumerate(numbers):
        note = ""
        if i % 20 == 7:
            note = LONG_NOTE
        elif i % 20 == 13:
            note = UNICODE_NOTES[i % len(UNICODE_NOTES)]
        if i % 200 == 199 and to not in special:
            to = INVALID[(i // 200) % len(INVALID)]
        lines.append({"to": to, "vars": {"name": rnd.choice(workload.NAMES), "pct": str(rnd.choice((10, 20, 30))),
                                         "note": note}})  # fmt: skip
    tx = [{"to": r.to, "vars": r.vars} for r in workload.recipients(max(20, n // 25), seed=6, vars_for="transactional")]
    otp = [t for t in workload.numbers(40, seed=5) if check.error(t) is None][:20]
    return Scenario(lines=lines, regulars=regulars, opted_out=opted_out, transactional=tx, otp=otp)


def local_config(base: str, ports: dict[str, int], store: Path) -> str:
    """The embedded config plus what a local run needs. Checked by loading it before use."""
    links = "".join(f'\n[[carriers.smpp]]\nname = "{name}"\nport = {port}\nwindow = 100\nbinds = 2\n'
                    for name, port in ports.items())  # fmt: skip
    text = (f'{base}\n\n# -- added by `sluice demo` for a local run --\n[api]\nhost = "127.0.0.1"\n\n'
            f'[[api.tenants]]\nname = "{TENANT}"\nkey_env = "{KEY_ENV}"\n\n'
            f'[[api.operators]]\nname = "demo"\nkey_env = "{KEY_ENV}"\n\n'  # reads the full /v1/carriers
            f'[store]\nurl = "sqlite:///{store.as_posix()}"\nsynchronous = "NORMAL"\n{links}')  # fmt: skip
    loads(text)
    return text


# -- the run --------------------------------------------------------------------------------------


async def run_showcase(n: int, console: Console, *, timeout: float = 110.0, workdir: Path | None = None) -> Report:
    """Start everything, run the scenario, stop everything; raises ShowcaseError on failure."""
    started = time.monotonic()
    base = default_text()
    cfg = loads(base)
    try:
        with anyio.fail_after(timeout), _directory(workdir) as tmp:
            return await _run(n, cfg, base, tmp, console, started)
    except TimeoutError:
        raise ShowcaseError(f"the run did not finish within {timeout:.0f} s; children were stopped (on a slow or "
                            f"busy machine: `sluice demo --timeout {timeout * 3:.0f}`, or fewer recipients with "
                            f"`--recipients 10000`)") from None
    except RuntimeError as exc:  # a child did not start
        raise ShowcaseError(str(exc)) from exc


@contextlib.contextmanager
def _directory(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "sluice.db").unlink(missing_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="sluice-demo-") as tmp:
        yield Path(tmp)


async def _run(n: int, cfg: Config, base: str, tmp: Path, console: Console, started: float) -> Report:
    limits = {c.name: math.ceil((c.rate + c.burst) * (1 + HEADROOM)) for c in cfg.core.carriers}
    key = secrets.token_urlsafe(24)
    console.print(f"[bold]Starting[/] {len(limits)} SMSC simulators "
                  f"({', '.join(f'{c} at {t}/s' for c, t in limits.items())}) and `sluice serve` ...")  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        sims: dict[str, Child] = {}
        for i, (name, tps) in enumerate(limits.items()):
            sims[name] = await stack.enter_async_context(simulator(
                "--tps", str(tps), "--dlr-delay", "0.5", "--undeliv-rate", "0.02", "--seed", str(i + 1)))  # fmt: skip
        path = tmp / "sluice.toml"
        path.write_text(local_config(base, {c: s.port for c, s in sims.items()}, tmp / "sluice.db"))
        log = stack.enter_context((tmp / "gateway.log").open("wb"))
        try:
            gw = await stack.enter_async_context(gateway(path, env={KEY_ENV: key}, cwd=tmp, stderr=log))
        except RuntimeError as exc:
            raise ShowcaseError(f"{exc}\n{_tail(tmp / 'gateway.log')}") from None
        console.print(f"  gateway on {gw.url} (pid {gw.pid}); simulators on ports "
                      f"{', '.join(str(s.port) for s in sims.values())}; store and log in a temporary directory")  # fmt: skip
        client = await stack.enter_async_context(httpx.AsyncClient(
            base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30.0))  # fmt: skip
        sc = scenario(n, cfg, time.time())
        return await _scenario(client, sc, sims, limits, console, n, started)
    raise AssertionError("unreachable")  # pragma: no cover


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the scenario over the API ------------------------------------------------------------------


async def _scenario(client: httpx.AsyncClient, sc: Scenario, sims: dict[str, Child], limits: dict[str, int],
                    console: Console, n: int, started: float) -> Report:  # fmt: skip
    await _seed(client, sc, console)
    before = await _carrier_counts(client)
    t0 = time.monotonic()
    head = {"from": "SLUICE", "category": "marketing", "template": TEMPLATE}
    body = b"\n".join(msgspec.json.encode(x) for x in [head, *sc.lines])
    big = await _post(client, "/v1/jobs", content=body, headers={"content-type": "application/x-ndjson"})
    tx = await _post(client, "/v1/jobs", json={"from": "SLUICE", "category": "transactional",
                                               "template": workload.TEMPLATES["transactional"],
                                               "recipients": sc.transactional})  # fmt: skip
    otp_ids = [(await _post(client, "/v1/messages", json={
        "from": "SLUICE", "category": "otp", "to": to, "body": f"Your Sluice code is {100000 + k * 7919}."}))["id"]
        for k, to in enumerate(sc.otp)]  # fmt: skip
    console.print(f"[bold]Submitted[/] the winter-sale job as NDJSON in {time.monotonic() - t0:.1f} s: {big['accepted']:,} accepted, "
                  f"{big['rejected_count']:,} rejected at submission (invalid numbers, each reported by its index, "
                  f"e.g. {big['rejected'][0]['index'] if big['rejected'] else '-'}; the answer lists the first "
                  f"{len(big['rejected']):,} and counts them all); an order-shipped job of "
                  f"{tx['accepted']:,}; {len(otp_ids)} one-time codes behind the backlog")  # fmt: skip
    jobs = {"winter sale (marketing)": (big["id"], big["accepted"]),
            "order shipped (transactional)": (tx["id"], tx["accepted"])}  # fmt: skip
    counts, sent_at, after = await _watch(client, jobs, limits, console, t0, before)
    otp_states, latency = await _otp(client, otp_ids)
    counts["one-time codes (otp)"] = otp_states
    sample, deferred = await _deferred(client, big["id"])
    facts = []
    links = await _carrier_counts(client)
    for name, sim in sims.items():
        c = await sim.counters()
        facts.append(SimFacts(carrier=name, limit=limits[name], accepted=c["accepted"], throttled=c["throttled"],
                              max_submits_1s=c["max_submits_1s"], max_accepted_1s=c["max_accepted_1s"],
                              receipts=c["receipts_acked"], messages=links[name]))  # fmt: skip
    return Report(recipients=n, rejected_at_submission=big.get("rejected_count", len(big["rejected"])), jobs=counts, carriers=facts,
                  send_seconds=sent_at - t0, sent_in_phase=sum(after[c] - before[c] for c in before),
                  otp_latency_ms=latency, deferred_sample=sample, deferred_total=deferred,
                  wall_seconds=time.monotonic() - started)  # fmt: skip


async def _post(client: httpx.AsyncClient, path: str, **kw: Any) -> dict[str, Any]:
    r = await client.post(path, **kw)
    if r.status_code >= 300:
        raise ShowcaseError(f"POST {path}: HTTP {r.status_code} {r.text[:300]}")
    return r.json()


async def _get(client: httpx.AsyncClient, path: str, **kw: Any) -> Any:
    r = await client.get(path, **kw)
    if r.status_code != 200:
        raise ShowcaseError(f"GET {path}: HTTP {r.status_code} {r.text[:300]}")
    return r.json()


async def _seed(client: httpx.AsyncClient, sc: Scenario, console: Console) -> None:
    """A week of history: opt-outs, and three marketing sends to the regulars, waited for until
    each has left the queue (the weekly cap counts a message when it is sent)."""
    for number in sc.opted_out:
        await _post(client, "/v1/suppressions", json={"number": number})
    people = [{"to": t, "vars": {"name": "again", "pct": "10", "note": ""}} for t in sc.regulars]
    ids = [(await _post(client, "/v1/jobs", json={"from": "SLUICE", "category": "marketing", "template": TEMPLATE,
                                                  "recipients": people}))["id"] for _ in range(3)]  # fmt: skip
    for job_id in ids:
        while any(s in ("queued", "accepted") for s in (await _get(client, f"/v1/jobs/{job_id}"))["counts"]):
            await anyio.sleep(0.1)
    console.print(f"[bold]Seeded[/] {len(sc.opted_out)} opted-out numbers and {len(sc.regulars)} recipients "
                  f"already sent 3 marketing messages this week (the weekly cap)")  # fmt: skip


async def _carrier_counts(client: httpx.AsyncClient) -> dict[str, int]:
    """Messages each carrier's connector has had accepted by the carrier so far."""
    return {name: c["link"]["submitted"] for name, c in (await _get(client, "/v1/carriers")).items()}


GROUPS = {
    "sent to a carrier": SENT,
    "delivered (receipt)": ("delivered",),
    "deferred: quiet hours": ("deferred",),
    "ended unsent (cap, opt-out)": UNSENT,
}


async def _watch(client: httpx.AsyncClient, jobs: dict[str, tuple[str, int]], limits: dict[str, int],
                 console: Console, t0: float, before: dict[str, int]):  # fmt: skip
    """Poll until no message of the jobs is queued or awaiting its receipt. Returns the counts
    per job, when the last message was handed to a carrier, and the carriers' counts then."""
    total = sum(size for _, size in jobs.values())
    bar = Progress(TextColumn("{task.description:<30}"), BarColumn(bar_width=36), MofNCompleteColumn(),
                   TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console)  # fmt: skip
    tasks = {label: bar.add_task(label, total=total, note="") for label in GROUPS}
    lanes = {c: bar.add_task(f"carrier {c}", total=1, note="") for c in limits}
    history: list[tuple[float, dict[str, int]]] = []
    sent_at, after = None, before
    with bar:
        while True:
            counts = {label: (await _get(client, f"/v1/jobs/{jid}"))["counts"] for label, (jid, _) in jobs.items()}
            carriers = await _get(client, "/v1/carriers")
            now = time.monotonic()
            merged: dict[str, int] = {}
            for c in counts.values():
                for state, k in c.items():
                    merged[state] = merged.get(state, 0) + k
            for label, states in GROUPS.items():
                bar.update(tasks[label], completed=sum(merged.get(s, 0) for s in states))
            sent = {c: carriers[c]["link"]["submitted"] for c in limits}
            history = [(t, s) for t, s in history if now - t <= 1.0] + [(now, sent)]
            t_old, s_old = history[0]
            for c, task in lanes.items():
                link = carriers[c]["link"]
                done = sent[c] - before[c]
                rate = (sent[c] - s_old[c]) / (now - t_old) if now > t_old else 0.0
                bar.update(task, completed=done, total=max(1, done + carriers[c]["ready"] + link["in_flight"] + link["queued"]),
                           note=f"{rate:,.0f} msg/s (limit {limits[c]:,} seg/s)")  # fmt: skip
            if sent_at is None and not any(merged.get(s, 0) for s in ("queued", "accepted")):
                sent_at, after = now, sent
            if not any(merged.get(s, 0) for s in OPEN):
                return counts, sent_at or now, after
            await anyio.sleep(0.25)


async def _otp(client: httpx.AsyncClient, ids: list[str]) -> tuple[dict[str, int], list[float]]:
    """Each code's final state (waited for: a busy machine may still hold a receipt when the jobs
    are done; the run's deadline bounds the wait), and how long it waited from acceptance to its
    carrier's answer."""
    states: dict[str, int] = {}
    latency = []
    for mid in ids:
        while (m := await _get(client, f"/v1/messages/{mid}"))["state"] in OPEN:
            await anyio.sleep(0.1)
        states[m["state"]] = states.get(m["state"], 0) + 1
        hist = m["history"]
        sent = [h["at"] for h in hist if h["state"] == "submitted"]
        if hist and sent:
            latency.append((sent[0] - hist[0]["at"]) * 1000)
    return states, latency


async def _deferred(client: httpx.AsyncClient, job_id: str, sample: int = 120) -> tuple[list[tuple[str, float]], int]:
    """(number, release time) for an even sample of the job's deferred messages, and how many
    are deferred. The release time is the one the gateway wrote: "quiet_hours until <epoch>"."""
    ids: list[str] = []
    after = None
    while True:
        params = {"status": "deferred", "limit": 1000, **({"after": after} if after else {})}
        page = await _get(client, f"/v1/jobs/{job_id}/messages", params=params)
        ids += [m["id"] for m in page["messages"]]
        if not (after := page["next"]):
            break
    step = max(1, len(ids) // sample)
    out = []
    for mid in ids[::step][:sample]:
        m = await _get(client, f"/v1/messages/{mid}")
        reasons = [h["reason"] for h in m["history"] if h["state"] == "deferred"]
        if reasons and " until " in reasons[-1]:
            out.append((m["to"], float(reasons[-1].rsplit(" until ", 1)[1])))
    return out, len(ids)


# -- the summary ----------------------------------------------------------------------------------


def print_summary(console: Console, r: Report) -> None:
    states = [s for s in ("delivered", "undelivered", "unknown", "submitted", "deferred", *UNSENT, "queued")
              if any(s in c for c in r.jobs.values())]  # fmt: skip
    t = Table(title="Messages by state (GET /v1/jobs/{id})")
    t.add_column("state")
    for label in r.jobs:
        t.add_column(label, justify="right")
    for s in states:
        t.add_row(s, *(f"{c.get(s, 0):,}" for c in r.jobs.values()))
    t.add_row("rejected at submission (invalid number)", f"{r.rejected_at_submission:,}", *([""] * (len(r.jobs) - 1)))
    console.print(t)
    c = Table(title="Carriers: each SMSC simulator's own counters against its limit")
    for col in ("carrier", "limit (seg/s)*", "messages sent", "segments accepted", "largest 1-s rate seen",
                "throttled", "receipts"):  # fmt: skip
        c.add_column(col, justify="right")
    for f in r.carriers:
        over = "[red]" if f.max_submits_1s > f.limit else "[green]"
        c.add_row(f.carrier, f"{f.limit:,}", f"{f.messages:,}", f"{f.accepted:,}",
                  f"{over}{f.max_submits_1s:,}[/] / {f.limit:,}", f"{f.throttled:,}", f"{f.receipts:,}")  # fmt: skip
    console.print(c)
    console.print(f"* the carrier's configured rate + burst, plus {HEADROOM:.0%} for jitter on the way; "
                  "the simulator answers anything above it 'throttled' (0x58).")
    rate = r.sent_in_phase / r.send_seconds if r.send_seconds > 0 else 0.0
    console.print(f"Throughput: {r.sent_in_phase:,} messages handed to carriers in {r.send_seconds:.1f} s "
                  f"from the job's POST = [bold]{rate:,.0f} msg/s[/] (bounded by the carriers' limits).")  # fmt: skip
    if r.otp_latency_ms:
        lat = sorted(r.otp_latency_ms)
        console.print(f"One-time codes sent behind the marketing backlog waited p50 {statistics.median(lat):.0f} ms, "
                      f"max {lat[-1]:.0f} ms, from acceptance to the carrier's answer.")  # fmt: skip
    _print_deferred(console, r)
    console.print(f"Done in {r.wall_seconds:.1f} s; everything not deferred is final; simulators and gateway stopped.")


def _print_deferred(console: Console, r: Report) -> None:
    if not r.deferred_total:
        console.print("No message is deferred: every recipient's zone is open now.")
        return
    when: dict[str, list[float]] = {}
    for number, at in r.deferred_sample:
        when.setdefault(workload.region_of(number), []).append(at)
    t = Table(title=f"Deferred for quiet hours: {r.deferred_total:,} messages, released as each zone's morning "
                    f"opens (from a sample of {len(r.deferred_sample)})")  # fmt: skip
    for col in ("recipients in", "sample", "first release (UTC)", "last release (UTC)", "in"):
        t.add_column(col, justify="right")
    now = time.time()
    for region, ats in sorted(when.items(), key=lambda kv: min(kv[1])):
        t.add_row(region, str(len(ats)), _utc(min(ats)), _utc(max(ats)), _hours(min(ats) - now))
    console.print(t)


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%a %H:%M")


def _hours(s: float) -> str:
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def main(n: int, json_path: str | None, timeout: float) -> int:
    """The CLI's body: run, print, write JSON; 0 on success, 1 with a message on failure."""
    console = Console(width=max(120, shutil.get_terminal_size().columns))
    try:
        report = anyio.run(lambda: run_showcase(n, console, timeout=timeout), backend="asyncio",
                           backend_options={"use_uvloop": True})  # fmt: skip
    except ShowcaseError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    print_summary(console, report)
    if json_path:
        Path(json_path).write_bytes(msgspec.json.encode(report))
    return 0
