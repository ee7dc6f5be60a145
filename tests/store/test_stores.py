import pytest

from gateway.core.model import Recipient
from gateway.errors import ConfigError
from gateway.store import open_store
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from gateway.testing.store_conformance import JOB, PEOPLE, StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self):
        return MemoryStore()


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path):
        s = SqliteStore(str(tmp_path / "sluice.db"))
        yield s
        s.close()


def test_sqlite_survives_reopen(tmp_path):
    path = str(tmp_path / "sluice.db")
    s = SqliteStore(path)
    s.add_job(JOB, 1000, PEOPLE, 10.0)
    s.close()
    again = SqliteStore(path)
    assert again.job("acme", "j1").counts == {"queued": 5}
    assert [len(rest) for _, rest in again.unfinished()] == [5]
    again.close()


def test_open_store_by_url(tmp_path):
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/x.db"), SqliteStore)
    with pytest.raises(ConfigError, match="store.url"):
        open_store("postgres://nope")


def test_unicode_and_tz_roundtrip(tmp_path):
    s = SqliteStore(str(tmp_path / "u.db"))
    r = Recipient(to="+33612345678", vars={"name": "Chloé 🎉"}, tz="Europe/Paris")
    s.add_job(JOB, 1, [(0, r)], 1.0)
    assert s.message("acme", 1).recipient == r
