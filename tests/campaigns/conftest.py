"""Fixtures of the campaign tests, shared by every file in tests/campaigns.

PostgreSQL: ``pg_server`` (session scope) starts a real server from Debian's ``postgresql``
package: ``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port (socket
directory inside the temporary directory), one database ``sluice``; it is stopped with
``pg_ctl stop -m immediate`` at the end of the session. initdb refuses to run as root, so as root
the server runs as the ``postgres`` system user (``runuser``), the data directory owned by it.
The stop is a reaper's job: a small child process blocked on a pipe from the test process; it
stops the server and removes its directory when the pipe closes, which happens at the end of the
session and also when the test process is killed (a timeout's SIGKILL), so no server outlives it.

``pg_url`` (function scope) hands each test a fresh, empty schema in that database (a
``postgresql://`` URL whose ``options`` set the ``search_path``), so tests never see each
other's rows and no server is started twice. ``store_url`` is parametrised over both engines
(``sqlite``, ``postgres``): a test that takes it runs once per engine.

Test files here must not share a basename with another test file in tests/ (there is no
``__init__.py``: a ``tests/campaigns/__init__.py`` would shadow the real ``campaigns`` package),
e.g. not ``test_segments.py`` (tests/core has one): use ``test_segment_*.py``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from campaigns.store import Store, open_store


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    database: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        which = shutil.which("initdb")
        if which is None:
            raise RuntimeError("PostgreSQL binaries not found: `make test` installs Debian's `postgresql` package")
        return Path(which).parent
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
        os.chmod(root, 0o755)
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER") or "postgres"
    run = lambda cmd: subprocess.run(_as_server_user(cmd), check=True, capture_output=True, timeout=120)  # noqa: E731
    run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "-E", "UTF8", "--no-sync"])
    port = _free_port()
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"])
    stop = _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"])
    reaper = subprocess.Popen([sys.executable, "-c", _REAPER, repr(stop), str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "sluice"])
        yield PgServer(host="127.0.0.1", port=port, user=user, database="sluice")
    finally:
        assert reaper.stdin is not None
        reaper.stdin.close()  # the reaper stops the server and removes its directory
        reaper.wait(timeout=120)


# Runs in its own session (so a signal to the test's process group does not stop it first): waits
# for EOF on stdin, i.e. the test process closed the pipe or died, then stops the server.
_REAPER = """
import ast, shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(ast.literal_eval(sys.argv[1]), capture_output=True, timeout=60)
shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A URL to a fresh, empty schema of the test server (dropped afterwards)."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{pg_server.url}?options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """One URL per engine: tests taking it run on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def anyio_backend() -> str:
    """The campaign tests run on asyncio (a file that wants uvloop defines its own)."""
    return "asyncio"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open store of ``store_url``'s engine (each test its own schema or file), closed after."""
    s = open_store(store_url)
    yield s
    s.close()
