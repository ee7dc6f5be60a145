"""Which thread of `serve` wants a core when, over a launch: run a `sluice bench campaign` command and
sample every thread of the `serve` it starts (``/proc/PID/task/TID/schedstat``: the nanoseconds a
thread ran and the nanoseconds it waited on a run queue), then split by the launch's stage logs
(``campaign.frozen``: the freeze, or a chunked freeze's first transaction; ``campaign.submitted``).

    python -m bench.launch_threads OUT -- python -m campaigns.cli bench campaign --recipients 200000 --runs 1 --redirect-seconds 1

For each stage and each thread that ran: ``run`` (its CPU), ``runqueue`` (ready, waiting for a
core: the machine's other load) and ``wanted`` = run + runqueue as a share of the stage's wall clock.
A thread's ``wanted`` is what a loaded machine does not hide: 99 % is a thread never blocked (the
stage is that thread's, serial), 80 % a thread blocked a fifth of the time (on the GIL, a lock, or
another thread's answer); the sum over threads is the cores the stage could use on an idle machine.
Writes ``OUT.out`` / ``OUT.err`` (the command's), ``OUT.threads.json`` (the samples) and prints the table.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

STAGE = re.compile(r"(\S+ \S+) INFO campaigns\.service\.launch campaign\.(frozen|submitted) .*?seconds=([\d.]+)")


def _serve_of(parent: int) -> int | None:
    """The `serve` process the bench started (a child of ``parent``), once it exists."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = open(f"/proc/{name}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            ppid = int(open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "campaigns.cli serve" in cmd and ppid == parent:
            return int(name)
    return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _threads(pid: int) -> dict[str, tuple[str, int, int]]:
    """tid -> (name, ns run, ns waited on a run queue), for `serve` and its child processes (the
    gateway's check workers, the membership and webhook processes): "loop" is `serve`'s main thread
    (its event loop), "thread" another of its threads, "child PID" a child process's thread."""
    out = {}
    for proc in (pid, *_children(pid)):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                run, wait, _slices = map(int, open(f"/proc/{proc}/task/{tid}/schedstat").read().split())
            except (OSError, ValueError):
                continue
            name = ("loop" if tid == str(pid) else "thread") if proc == pid else f"child {proc}"
            out[tid] = (name, run, wait)
    return out


def sample(cmd: list[str], out: str, *, every: float = 0.05, limit_s: float = 1800.0) -> list[tuple[float, dict]]:
    """Run ``cmd`` (bounded by ``limit_s``) and sample `serve`'s threads every ``every`` seconds."""
    with open(f"{out}.out", "w") as so, open(f"{out}.err", "w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        deadline = time.monotonic() + limit_s
        pid, samples = None, []
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if pid is None:
                    pid = _serve_of(proc.pid)
                else:
                    try:
                        samples.append((time.time(), _threads(pid)))
                    except OSError:  # serve has stopped
                        pid = None
                time.sleep(every)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    with open(f"{out}.threads.json", "w") as f:
        json.dump(samples, f)
    return samples


def stages(err: str) -> dict[str, tuple[float, float]]:
    """{"freeze": (start, end), "submit": (start, end)} from the launch's stage log lines (UTC)."""
    found: dict[str, tuple[float, float]] = {}
    for stamp, what, seconds in STAGE.findall(err):
        end = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=datetime.timezone.utc).timestamp()
        found["freeze" if what == "frozen" else "submit"] = (end - float(seconds), end)
    return found


def table(samples: list[tuple[float, dict]], spans: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    rows = []
    for stage, (a, b) in spans.items():
        s0 = min(samples, key=lambda s: abs(s[0] - a))
        s1 = min(samples, key=lambda s: abs(s[0] - b))
        wall = s1[0] - s0[0]
        for tid, (name, run, wait) in s1[1].items():
            _n, run0, wait0 = s0[1].get(tid, (name, 0, 0))
            ran, waited = (run - run0) / 1e9, (wait - wait0) / 1e9
            if ran > 0.01 and wall > 0:
                rows.append({"stage": stage, "wall_s": wall, "tid": tid, "thread": name, "run_s": ran,
                             "runqueue_s": waited, "wanted": (ran + waited) / wall})  # fmt: skip
    return sorted(rows, key=lambda r: (r["stage"] != "freeze", -r["run_s"]))


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(__doc__)
    out, cmd = argv[0], argv[2:]
    samples = sample(cmd, out)
    with open(f"{out}.err") as f:
        spans = stages(f.read())
    for r in table(samples, spans):
        print(f"{r['stage']:7s} wall {r['wall_s']:6.2f} s  {r['thread']:15s} {r['tid']:>8s}  run {r['run_s']:6.2f} s  "
              f"runqueue {r['runqueue_s']:6.2f} s  wanted {100 * r['wanted']:4.0f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
