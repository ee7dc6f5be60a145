"""`sluice bench quiet-hours`: a marketing job across many zones on virtual time.

N recipients over 14 number ranges (New York to Vladivostok, Florida and Oklahoma with their
20:00 close, Australian and Russian mobiles that map to many zones) are admitted at midnight UTC.
Virtual time then jumps from one core wake-up to the next for two days, dispatching everything the
core hands out at once (carriers with no rate limit: any pacing seen is the core's own).

Checked against an oracle that shares no code with the core (phonenumbers' zones and geocoder,
zoneinfo, the holidays package): no message is dispatched outside the shipped window in *any*
zone of its number (08:00-21:00; 20:00 in Florida and Oklahoma; France 08:00-20:00 and nothing
on Sundays or public holidays; India 10:00-21:00; Texas 09:00-21:00, Sundays from 12:00); every
held message is dispatched in the end (held, not dropped). Reported:
how many were held, how long each opening's release lasted (the configured spread is 1800 s) and
the largest number released in any one second, against the even rate the spread allows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from functools import cache
from zoneinfo import ZoneInfo

import click
import phonenumbers
from phonenumbers import timezone

from bench.machine import describe
from bench.output import out_option, save
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CarrierSettings, CoreSettings, Route
from gateway.testing import workload

MIDNIGHT = datetime(2026, 11, 24, tzinfo=UTC).timestamp()
HORIZON = 48 * 3600.0


def settings() -> CoreSettings:
    big = 10**9
    return CoreSettings(carriers=[CarrierSettings(name="c1", rate=float(big), burst=big)],
                        routes=[Route(prefix="", carriers=["c1"])])  # fmt: skip


@cache
def oracle(number: str) -> tuple[tuple[ZoneInfo, ...], int]:
    """(the number's zones, closing hour) from phonenumbers, independently of the core."""
    # Imported here: its data is ~100 MB, and every `sluice` command imports this module.
    from phonenumbers import geocoder

    n = phonenumbers.parse(number)
    zones = tuple(ZoneInfo(z) for z in timezone.time_zones_for_number(n) if z != "Etc/Unknown")
    place = geocoder.description_for_number(n, "en")
    close = 20 if place in ("Florida", "Oklahoma") or place.endswith((", FL", ", OK")) else 21
    if phonenumbers.region_code_for_number(n) == "FR":
        close = 20
    return zones or (ZoneInfo("UTC"),), close


@cache
def _rule(number: str) -> tuple[int, str]:
    """(opening minute, special days) for the shipped rules: "FR" (no Sundays nor holidays),
    "TX" (Sundays from 12:00), else ""."""
    from phonenumbers import geocoder

    n = phonenumbers.parse(number)
    region = phonenumbers.region_code_for_number(n)
    place = geocoder.description_for_number(n, "en")
    if region == "FR":
        return 8 * 60, "FR"
    if region == "IN":
        return 10 * 60, ""
    if place == "Texas" or place.endswith(", TX"):
        return 9 * 60, "TX"
    return 8 * 60, ""


@cache
def _french_holidays():
    import holidays

    return holidays.country_holidays("FR")


def open_everywhere(number: str, at: float) -> bool:
    zones, close = oracle(number)
    start, special = _rule(number)
    for z in zones:
        local = datetime.fromtimestamp(at, z)
        minutes = local.hour * 60 + local.minute
        if special == "FR" and (local.weekday() == 6 or local.date() in _french_holidays()):
            return False
        opens = 12 * 60 if special == "TX" and local.weekday() == 6 else start
        if not opens <= minutes < close * 60:
            return False
    return True


def run(n: int, seed: int) -> dict[str, object]:
    core = Scheduler(settings(), MIDNIGHT)
    # Only numbers the API would accept (it rejects invalid ones with 400 before the core).
    people = [r for r in workload.recipients(n * 2, seed) if phonenumbers.is_valid_number(phonenumbers.parse(r.to))][:n]
    adm = core.admit(workload.job("sale", "marketing"), people, MIDNIGHT)
    number_of = {adm.first_id + adm.offsets[i]: r.to for i, r in enumerate(people) if adm.offsets[i] >= 0}
    held: set[int] = set()
    sent_at: dict[int, float] = {}
    violations = 0
    now = MIDNIGHT
    while now <= MIDNIGHT + HORIZON:
        while True:
            batch = core.take("c1", 10_000, now)
            for o in batch.outcomes:
                if getattr(o, "reason", "") == "quiet_hours":
                    held.add(o.message_id)
            for d in batch.dispatches:
                core.complete(d.ref)
                sent_at[d.message_id] = now
                if not open_everywhere(d.recipient, now):
                    violations += 1
            if not batch.dispatches and not batch.outcomes:
                break
        wake = core.next_wakeup()
        if wake is None:
            break
        now = max(wake, now + 1e-3)
    # Releases: held messages grouped by their number's zones and the day they went out.
    openings: dict[tuple, list[float]] = defaultdict(list)
    for mid in held:
        if mid in sent_at:
            zones, close = oracle(number_of[mid])
            openings[(tuple(z.key for z in zones), close, int((sent_at[mid] - MIDNIGHT) // 86400))].append(sent_at[mid])
    spans, peaks, evens = [], [], []
    for times in openings.values():
        if len(times) < 50:
            continue  # too few to say anything about a spread
        spans.append(max(times) - min(times))
        peaks.append(max(Counter(int(t) for t in times).values()))
        evens.append(len(times) / 1800.0)
    return {
        "scenario": "quiet-hours",
        "messages": n,
        "accepted": adm.accepted,
        "dispatched": len(sent_at),
        "held_for_quiet_hours": len(held),
        "held_then_sent": sum(1 for m in held if m in sent_at),
        "dispatched_out_of_window": violations,
        "openings": len(spans),
        "release_span_s_min": min(spans, default=0.0),
        "release_span_s_max": max(spans, default=0.0),
        "largest_release_in_1s": max(peaks, default=0),
        "even_rate_per_s_at_that_opening": round(evens[peaks.index(max(peaks))], 2) if peaks else 0.0,
        "machine": describe("none (pure core, virtual time)"),
    }


@click.command("quiet-hours")
@click.option("--messages", "n", default=100_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_quiet_hours(n: int, seed: int, json_path: str | None, out_dir: str | None) -> None:
    """A job across many zones on virtual time: nothing out of window, releases spread."""
    r = run(n, seed)
    click.echo(f"sluice bench quiet-hours: {n:,} marketing messages admitted at 00:00 UTC, 48 virtual hours")
    for key in ("accepted", "dispatched", "held_for_quiet_hours", "held_then_sent", "dispatched_out_of_window",
                "openings", "release_span_s_min", "release_span_s_max", "largest_release_in_1s",
                "even_rate_per_s_at_that_opening"):  # fmt: skip
        v = r[key]
        click.echo(f"  {key.replace('_', ' '):<40} {v:>12,.1f}" if isinstance(v, float) else f"  {key.replace('_', ' '):<40} {v:>12,}")
    ok = r["dispatched_out_of_window"] == 0 and r["held_then_sent"] == r["held_for_quiet_hours"]
    click.echo("  " + ("OK: nothing out of window, every held message sent" if ok else "FAILED"))
    save(r, json_path, out_dir)
    if not ok:
        raise SystemExit(1)
