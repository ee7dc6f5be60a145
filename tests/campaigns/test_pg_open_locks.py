"""Opening a PostgreSQL store that is in use takes no table lock when its schema is there: a flow
worker restarted after a kill -9 opened the store while the other worker's transaction held ROW
EXCLUSIVE on the flow tables, and the opener's ``CREATE INDEX IF NOT EXISTS`` (a SHARE lock per
table, in one transaction) deadlocked with it (tests/campaigns/test_flow_crash.py, two workers)."""

from __future__ import annotations

import threading

from campaigns.store import open_store


def test_opening_a_store_in_use_waits_on_no_writer(pg_url: str) -> None:
    first = open_store(pg_url)
    try:
        with first._tx() as tx:  # type: ignore[attr-defined]
            # a writer in the middle of a transaction on two of the flow tables
            tx.run("INSERT INTO flow_inputs (tenant, subscriber_id, event) VALUES ('acme', 1, '{}')")
            tx.run("DELETE FROM flow_runs WHERE tenant = 'nobody'")
            opened: list[object] = []
            t = threading.Thread(target=lambda: opened.append(open_store(pg_url)), daemon=True)
            t.start()
            t.join(20)  # a deadline, not a sleep: done as soon as it opens
            blocked = t.is_alive()
            tx.run("DELETE FROM flow_inputs WHERE tenant = 'acme'")
        t.join(20)
        for store in opened:
            store.close()  # type: ignore[attr-defined]
        assert not blocked, "opening the store waited for a writer's transaction (a table lock)"
    finally:
        first.close()
