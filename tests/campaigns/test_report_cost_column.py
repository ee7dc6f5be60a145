"""The report sums a message's cost from its own row (no join to message_costs): the cost lands there
whichever of the gateway's id and the price arrives first, the first price wins on both, and a store
made before the column gets it (and the report's index) when opened."""

from __future__ import annotations

import pytest

from campaigns.store import open_store
from campaigns.store.campaign_rows import PlannedRecipient
from campaigns.store.report_sql import Scope

T0 = 1_767_000_000.0


def _cost(store, cid: int) -> int:  # type: ignore[no-untyped-def]
    return sum(g.cost for g in store.report_facts("acme", Scope(campaign=cid)).groups)


@pytest.mark.parametrize("price_first", [False, True])
def test_cost_reaches_the_row_whatever_comes_first(store_url: str, price_first: bool) -> None:
    store = open_store(store_url)
    rows = [PlannedRecipient(subscriber_id=s, phone=f"+4479111000{s:02d}", variant=None, send_at=T0, tz="UTC", text="t",
                             batch=0, idx=s) for s in (1, 2)]  # fmt: skip
    store.freeze_audience("acme", 7, rows, [], now=T0)
    store.batch_submitted("acme", 7, 0, job_id="job-7", accepted=2, rejected=[], now=T0)
    if price_first:  # the price known before the state event that carries the gateway's id
        store.record_cost("acme", "gw-1", carrier="alpha", segments=2, cost=8)
    for s in (1, 2):
        store.recipient_state("acme", "job-7", s, state="delivered", message_id=f"gw-{s}", at=T0 + 5)
    store.record_cost("acme", "gw-1", carrier="alpha", segments=2, cost=8, recipient=(7, 1))
    store.record_cost("acme", "gw-1", carrier="beta", segments=2, cost=99, recipient=(7, 1))  # later: the first wins
    assert _cost(store, 7) == 8
    store.record_cost("acme", "gw-2", carrier="alpha", segments=1, cost=None, recipient=(7, 2))  # price unknown
    assert _cost(store, 7) == 8
    store.record_cost("acme", "gw-2", carrier="alpha", segments=1, cost=4, recipient=(7, 2))
    assert _cost(store, 7) == 12
    store.close()


def test_a_store_made_before_the_column_is_upgraded(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    open_store(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX campaign_recipients_report_clicked")
    conn.execute("ALTER TABLE campaign_recipients DROP COLUMN cost")
    conn.execute("ALTER TABLE campaign_recipients DROP COLUMN clicked")
    conn.execute("ALTER TABLE flow_messages DROP COLUMN cost")
    conn.execute("CREATE INDEX campaign_recipients_report ON campaign_recipients (tenant, campaign_id, variant, send_at, "
                 "state, batch, message_id)")  # the index as it was
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    store.close()
    conn = sqlite3.connect(path)
    assert "cost" in {c[1] for c in conn.execute("PRAGMA table_info(campaign_recipients)")}
    assert "cost" in {c[1] for c in conn.execute("PRAGMA table_info(flow_messages)")}
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "campaign_recipients_report_clicked" in names
    assert not names & {"campaign_recipients_report", "campaign_recipients_report_cost"}
    conn.close()
