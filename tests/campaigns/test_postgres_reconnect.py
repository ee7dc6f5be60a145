"""The PostgreSQL store survives its connection being cut (a server restart, a failover): the call that
meets the cut fails as a StorageError (HTTP 503: retry), nothing half-committed, and the next call
reconnects on its own."""

from __future__ import annotations

import psycopg
import pytest

from campaigns.core.events import Profile
from campaigns.errors import StorageError
from campaigns.store import open_store

A = "+33612345678"


def test_reconnects_after_the_connection_is_cut(pg_url: str) -> None:
    store = open_store(pg_url)
    store.put_subscriber("acme", Profile(phone=A), phone=A, at=1.0, now=1.0)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                               "AND datname = current_database() AND backend_type = 'client backend'").fetchall()
    assert killed
    with pytest.raises(StorageError):
        store.subscriber_by_phone("acme", A)
    sub = store.subscriber_by_phone("acme", A)  # reconnected
    assert sub is not None and sub.phone == A
    store.close()
