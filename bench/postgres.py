"""A throwaway PostgreSQL server for the tests and the benches.

Debian's ``postgresql`` package: ``initdb`` into a temporary directory, ``pg_ctl start`` on a free
loopback port (its socket in that directory), one database ``sluice``. initdb and postgres refuse
to run as root, so as root the server runs as the ``postgres`` system user (``runuser``).

The stop is a reaper's job: a small child process, in a session of its own, blocked on a pipe
from the process that started the server. When the pipe closes — the context manager's exit, or
the starting process killed (a timeout's SIGKILL) — it stops the server (``pg_ctl stop -m
immediate``) and removes the directory, so no server outlives its tests or its bench.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_REAPER = """
import ast, shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(ast.literal_eval(sys.argv[1]), capture_output=True, timeout=120)
shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    if which is None:
        raise RuntimeError("PostgreSQL binaries not found: `make test` installs Debian's `postgresql` package")
    return Path(which).parent


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def throwaway_postgres(settings: dict[str, str], prefix: str = "sluice-pg-") -> Iterator[str]:
    """Start a server with these ``-c`` settings (on top of loopback-only listening); yield the URL
    of its database ``sluice``; stop it and remove its files on exit (or when this process dies)."""
    bindir = pg_bin()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        os.chmod(root, 0o755)
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER") or "postgres"
    run = lambda cmd: subprocess.run(_as_server_user(cmd), check=True, capture_output=True, timeout=300)  # noqa: E731
    reaper = None
    try:
        run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "-E", "UTF8", "--no-sync"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        opts = " ".join([f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                         *(f"-c {k}={v}" for k, v in settings.items())])  # fmt: skip
        stop = _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"])
        reaper = subprocess.Popen([sys.executable, "-c", _REAPER, repr(stop), str(root)], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "120", "start"])
        run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "sluice"])
        yield f"postgresql://{user}@127.0.0.1:{port}/sluice"
    finally:
        if reaper is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            assert reaper.stdin is not None
            reaper.stdin.close()  # the reaper stops the server and removes its directory
            reaper.wait(timeout=180)


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def server_cpu(backend_pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every process of the server that runs ``backend_pid``: its
    postmaster and the postmaster's children (backends, WAL writer, checkpointer ...), by pid. Two
    readings subtracted pid by pid (``cpu_spent``) give the server's CPU in between (a process that
    ended in between, an autovacuum worker, is not counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    master = int(_stat(backend_pid)[1])
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = _stat(int(d))
        except OSError:
            continue
        if int(d) == master or int(f[1]) == master:
            out[int(d)] = (int(f[11]) + int(f[12])) / tick
    return out


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
