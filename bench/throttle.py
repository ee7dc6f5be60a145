"""`sluice bench throttle`: two carriers with different limits, a backlog, and one carrier that
lowers its accepted rate mid-run without telling the gateway.

Real processes on loopback: two `sluice sim smsc` (alpha enforces 500/s, then from ``--drop-at``
seconds only ``--lowered``/s; beta enforces 200/s throughout) and `sluice serve` configured with
alpha 500/s and beta 200/s (bursts 50 and 20). A transactional backlog larger than both can carry
in ``--seconds`` is submitted over HTTP; the run is then watched for ``--seconds``.

Reported per carrier, from the simulators' own counters: utilisation = accepted / what the
carrier allowed, per second summed over the run after the first two seconds (goal >= 95 %;
Kannel reaches 18 % in this situation on this machine, per the issue); the largest number of
submits the carrier saw in any 1-s window against the configured limit + burst (goal: never
above); how many submits it answered "throttled".
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio
import click
import httpx

from bench.machine import describe
from bench.output import out_option, save
from gateway.testing.processes import gateway, simulator

KEY = "bench-throttle-key-0123456789"
LIMITS = {"alpha": (500.0, 50), "beta": (200.0, 20)}
PREFIX = {"alpha": "+447910", "beta": "+33612"}  # + 6 digits: valid UK and French mobiles


def _config(directory: Path, ports: dict[str, int]) -> Path:
    lines = [
        '[api]\nhost = "127.0.0.1"\n',
        '[[api.tenants]]\nname = "bench"\nkey_env = "SLUICE_BENCH_KEY"\nrequests_per_second = 1000.0\nburst = 1000\n',
        '[[api.operators]]\nname = "bench"\nkey_env = "SLUICE_BENCH_KEY"\n',  # reads the full /v1/carriers
        f'[store]\nurl = "sqlite:///{directory / "sluice.db"}"\n',
    ]
    for name, (rate, burst) in LIMITS.items():
        lines.append(f'[[core.carriers]]\nname = "{name}"\nrate = {rate}\nburst = {burst}\n')
    for name in LIMITS:
        lines.append(f'[[core.routes]]\nprefix = "{PREFIX[name][1:]}"\ncarriers = ["{name}"]\n')
    lines.append('[[core.routes]]\nprefix = ""\ncarriers = ["alpha"]\n')
    for name, port in ports.items():
        lines.append(f'[[carriers.smpp]]\nname = "{name}"\nport = {port}\nwindow = 50\n')
    path = directory / "throttle.toml"
    path.write_text("\n".join(lines))
    return path


async def run_once(seconds: float, drop_at: float, lowered: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        d = Path(tmp)
        alpha_args = ("--tps", "500", "--tps-schedule", f"{drop_at}:{lowered}", "--dlr-delay", "0.2")
        async with simulator(*alpha_args) as sim_a, simulator("--tps", "200", "--dlr-delay", "0.2") as sim_b:
            sims = {"alpha": sim_a, "beta": sim_b}
            cfg = _config(d, {n: s.port for n, s in sims.items()})
            async with gateway(cfg, env={"SLUICE_BENCH_KEY": KEY}) as gw:
                start = {n: len((await s.counters())["accepted_per_s"]) for n, s in sims.items()}
                async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {KEY}"},
                                             timeout=60) as client:  # fmt: skip
                    for name, (rate, _) in LIMITS.items():
                        n = int(rate * (seconds + 5))
                        job = {"from": "Shop", "category": "transactional", "template": "Your order {n} shipped",
                               "recipients": [{"to": f"{PREFIX[name]}{i:06d}", "vars": {"n": str(i)}}
                                              for i in range(n)]}  # fmt: skip
                        r = await client.post("/v1/jobs", json=job)
                        r.raise_for_status()
                        if r.json()["accepted"] != n:
                            raise RuntimeError(f"job for {name}: {r.json()['rejected'][:3]}")
                    await anyio.sleep(seconds)
                    carriers = (await client.get("/v1/carriers")).json()
                counters = {n: await s.counters() for n, s in sims.items()}
    out: dict[str, Any] = {}
    for name, c in counters.items():
        per_s = c["accepted_per_s"]
        # From the second after the carrier first accepted anything (the process start and the
        # binds are not what this measures) to the last whole second.
        first = next((i for i in range(start[name], len(per_s)) if per_s[i]), len(per_s)) + 1
        accepted = c["accepted_per_s"][first:-1]  # the last second is partial
        allowed = c["tps_per_s"][first:-1]
        rate, burst = LIMITS[name]
        out[name] = {
            "utilisation": sum(accepted) / sum(allowed) if allowed else 0.0,
            "accepted": c["accepted"],
            "throttled": c["throttled"],
            "max_submits_1s": c["max_submits_1s"],
            "max_accepted_1s": c["max_accepted_1s"],
            "limit_plus_burst": rate + burst,
            "accepted_per_s": c["accepted_per_s"][start[name]:],
            "allowed_per_s": c["tps_per_s"][start[name]:],
            "gateway_rate_at_end": carriers[name]["bucket"]["rate"],
        }
    return out


@click.command("throttle")
@click.option("--seconds", default=30.0, show_default=True, help="How long each run watches the carriers.")
@click.option("--drop-at", default=10.0, show_default=True, help="When alpha lowers its limit (s from start).")
@click.option("--lowered", default=300.0, show_default=True, help="alpha's limit after the drop.")
@click.option("--runs", default=3, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_throttle(seconds: float, drop_at: float, lowered: float, runs: int, json_path: str | None, out_dir: str | None) -> None:
    """Utilisation and peak rate when a carrier lowers its limit unannounced."""
    results = [anyio.run(run_once, seconds, drop_at, lowered, backend="asyncio", backend_options={"use_uvloop": True})
               for _ in range(runs)]  # fmt: skip
    summary: dict[str, Any] = {"scenario": "throttle", "runs": runs, "seconds": seconds, "drop_at": drop_at,
                               "lowered": lowered, "carriers": {}, "per_run": results, "machine": describe()}  # fmt: skip
    click.echo(f"sluice bench throttle: alpha 500/s lowered to {lowered:g}/s at {drop_at:g} s, beta 200/s;"
               f" {seconds:g} s per run, median of {runs}")  # fmt: skip
    click.echo("  carrier   utilisation   max submits/1s   limit+burst   throttled")
    for name in LIMITS:
        med = {k: statistics.median(r[name][k] for r in results)
               for k in ("utilisation", "max_submits_1s", "throttled")}  # fmt: skip
        summary["carriers"][name] = {**med, "limit_plus_burst": results[0][name]["limit_plus_burst"]}
        click.echo(f"  {name:<9} {med['utilisation']:>10.1%} {med['max_submits_1s']:>16,.0f}"
                   f" {results[0][name]['limit_plus_burst']:>13,.0f} {med['throttled']:>11,.0f}")  # fmt: skip
    click.echo("  goals: utilisation >= 95 %; max submits in any 1 s <= limit + burst")
    save(summary, json_path, out_dir)
