"""Fixtures of the campaign tests, shared by every file in tests/campaigns.

PostgreSQL: ``pg_server`` (session scope) starts a real server from Debian's ``postgresql``
package: ``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port (socket
directory inside the temporary directory), one database ``sluice``; it is stopped with
``pg_ctl stop -m immediate`` at the end of the session, or by a reaper process if pytest is killed
(``bench/postgres.py``, shared with the benches).

``pg_url`` (function scope) hands each test a fresh, empty schema in that database (a
``postgresql://`` URL whose ``options`` set the ``search_path``), so tests never see each
other's rows and no server is started twice. ``store_url`` is parametrised over both engines
(``sqlite``, ``postgres``): a test that takes it runs once per engine.

Test files here must not share a basename with another test file in tests/ (there is no
``__init__.py``: a ``tests/campaigns/__init__.py`` would shadow the real ``campaigns`` package),
e.g. not ``test_segments.py`` (tests/core has one): use ``test_segment_*.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from bench.postgres import throwaway_postgres
from campaigns.store import Store, open_store


@dataclass(frozen=True)
class PgServer:
    url: str


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "200"}
    with throwaway_postgres(settings) as url:
        yield PgServer(url=url)


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
