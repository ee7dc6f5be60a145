"""`python -m bench.webhooks_profile`: where `sluice serve`'s time goes when every state of a
job is reported to a ``callback_url`` (issue 16; findings in docs/ARCHITECTURE.md, "Where the
time of webhooks goes").

The `sluice bench e2e` scenario (simulator, one carrier, one NDJSON job of transactional
messages) with a webhook receiver on loopback in this process (h11, answers 200 at once,
counts events), the tenant's webhooks signed. The clock runs from the job's 202 to the last
final event received (``--no-callback``: to the last final state in the store). With ``--py-spy
FILE`` a ``py-spy record`` (raw collapsed stacks, one line per stack, per thread) samples the
server for the whole run. Prints one JSON line; a diagnosis tool, not a benchmark of record
(one run, no medians).

CPU per message: ``server_cpu_us`` is `sluice serve`'s process (all its threads; its event loop
alone: ``server_loop_cpu_us``), ``delivery_cpu_us`` the webhook delivery process serve runs beside
it (issue 16; none before it), ``total_cpu_us`` both. With a callback, one message to the same
receiver goes first and its event is awaited, so the delivery process has started (and imported
its modules) before the clock starts: its start-up is not charged to the job.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import click
import httpx
import msgspec

from bench.e2e import _bound, _until_final
from bench.service import AUTH, ENV, children, config, cpu_seconds, ndjson_job, until_ready
from gateway.store.base import FINAL
from gateway.testing import http_receiver
from gateway.testing.processes import gateway, simulator

_SECRET_ENV = "SLUICE_BENCH_HOOKS"


def _with_webhooks(text: str) -> str:
    """The bench config, its tenant signing webhooks, loopback receivers allowed."""
    tenant = 'key_env = "SLUICE_BENCH_KEY"\nrequests_per_second'
    signed = f'key_env = "SLUICE_BENCH_KEY"\nwebhook_secret_env = "{_SECRET_ENV}"\nrequests_per_second'
    return text.replace(tenant, signed, 1) + '\n[webhooks]\nallow_private = ["127.0.0.0/8"]\n'


async def profile(n: int, dlr_delay: float, callback: bool, spy_out: str | None, idle: bool = False) -> dict:
    heard = {"events": 0, "posts": 0, "final": 0, "last": 0.0}

    def answer(request, body):
        events = msgspec.json.decode(body)["events"]
        heard["posts"] += 1
        heard["events"] += len(events)
        heard["final"] += sum(e["state"] in FINAL for e in events)
        heard["last"] = time.perf_counter()
        return 200, [], b""

    async with anyio.create_task_group() as tg:
        port = await tg.start(http_receiver.serve, answer)
        with tempfile.TemporaryDirectory(prefix="sluice-hooks-") as tmp:
            d = Path(tmp)
            async with simulator("--dlr-delay", str(dlr_delay), stderr=subprocess.DEVNULL) as sim:
                cfg = config(d, smpp_port=sim.port)
                cfg.write_text(_with_webhooks(cfg.read_text()))
                env = {**ENV, _SECRET_ENV: "bench-webhook-secret-0123456789"}
                async with gateway(cfg, env=env, stderr=subprocess.DEVNULL) as gw, \
                        httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=300) as client:  # fmt: skip
                    await until_ready(gw.url)
                    await _bound(client, 2)
                    pieces = ndjson_job(n, category="transactional")
                    if callback:
                        head, rest = pieces[0].split(b"\n", 1)
                        line = {**json.loads(head), "callback_url": f"http://127.0.0.1:{port}/hooks"}
                        pieces[0] = json.dumps(line).encode() + b"\n" + rest
                        await _warm(client, line["callback_url"], heard)
                    spy = None
                    if spy_out:
                        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                        spy = subprocess.Popen([exe, "record", "-p", str(gw.pid), "-r", "50", "-f", "raw", "-o", spy_out,
                                                "--nonblocking", "-t", *(["--idle"] if idle else [])],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

                    async def body():
                        for p in pieces:
                            yield p

                    r = await client.post("/v1/jobs", content=body(), headers={"content-type": "application/x-ndjson"})
                    if r.status_code != 202:
                        raise click.ClickException(f"job POST answered {r.status_code}: {r.text[:300]}")
                    start, job = time.perf_counter(), r.json()
                    cpu0 = cpu_seconds(gw.pid, main_thread=True), cpu_seconds(gw.pid), _delivery_cpu(gw.pid)
                    done, _ = await _until_final(client, job["id"], job["accepted"], max(60.0, n / 500))
                    if callback:
                        with anyio.fail_after(max(60.0, n / 500)):
                            while heard["final"] < job["accepted"]:
                                await anyio.sleep(0.05)
                        done = heard["last"]
                    cpu1 = cpu_seconds(gw.pid, main_thread=True), cpu_seconds(gw.pid), _delivery_cpu(gw.pid)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
        tg.cancel_scope.cancel()
    accepted = job["accepted"]
    return {"accepted": accepted, "dlr_delay": dlr_delay, "callback": callback, "seconds": done - start,
            "messages_per_s": accepted / (done - start), "server_loop_cpu_us": (cpu1[0] - cpu0[0]) / accepted * 1e6,
            "server_cpu_us": (cpu1[1] - cpu0[1]) / accepted * 1e6, "delivery_cpu_us": (cpu1[2] - cpu0[2]) / accepted * 1e6,
            "total_cpu_us": (cpu1[1] - cpu0[1] + cpu1[2] - cpu0[2]) / accepted * 1e6, "events": heard["events"],
            "posts": heard["posts"]}  # fmt: skip


def _delivery_cpu(pid: int) -> float:
    """CPU seconds of serve's webhook delivery process (0 where there is none: before issue 16)."""
    total = 0.0
    for kid in children(pid):
        try:
            if b"webhook_process" in Path(f"/proc/{kid}/cmdline").read_bytes():
                total += cpu_seconds(kid)
        except OSError:
            pass
    return total


async def _warm(client: httpx.AsyncClient, url: str, heard: dict) -> None:
    """One message to ``url``, its final event awaited (then forgotten): whatever delivers
    webhooks is up before the clock starts."""
    r = await client.post("/v1/messages", json={"to": "+447911123456", "from": "Shop", "body": "warm",
                                                "category": "transactional", "callback_url": url})  # fmt: skip
    if r.status_code != 202:
        raise click.ClickException(f"warm-up message answered {r.status_code}: {r.text[:300]}")
    with anyio.fail_after(120):
        while heard["final"] < 1:
            await anyio.sleep(0.05)
    heard.update(events=0, posts=0, final=0)


@click.command()
@click.option("--messages", "n", default=50_000, show_default=True)
@click.option("--dlr-delay", default=0.0, show_default=True, help="Simulator: seconds from submit to receipt.")
@click.option("--callback/--no-callback", default=True, show_default=True, help="Every state to a loopback receiver.")
@click.option("--py-spy", "spy_out", type=click.Path(dir_okay=False), help="Sample the server into this file.")
@click.option("--idle", is_flag=True, help="py-spy: sample waiting threads too (where the wall-clock time goes).")
def main(n: int, dlr_delay: float, callback: bool, spy_out: str | None, idle: bool) -> None:
    r = anyio.run(profile, n, dlr_delay, callback, spy_out, idle, backend="asyncio",
                  backend_options={"use_uvloop": True})  # fmt: skip
    click.echo(json.dumps(r))


if __name__ == "__main__":
    main()
