"""The flow runtime's writes that go as one statement on PostgreSQL, and what they store (both engines).

- ``Store.flow_messages_done``: a sender's round of answers (four statements a send before: the
  outbox row marked, read back, its report row, its links) is one statement on PostgreSQL; what it
  stores is what the one-by-one path stores on SQLite: only pending rows move, the first answer of
  a key wins, a send that went becomes a report source (``flow_messages``) with its short links
  (``flow_links``), a failed send or a webhook call does not.
- ``FlowTx.flush``'s run updates: one statement on PostgreSQL (one ``UPDATE`` a run before)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from campaigns.core import flows as F
from campaigns.store import Store, open_store
from campaigns.store.flow_rows import FlowMessage

T0 = 1_700_000_000.0


def _outbox(store: Store) -> list[int]:
    """Runs 1..4 of subscribers 1..4 (tenant acme), a pending send each (run 4's a webhook call), the
    first two sends with short links (two on run 1's); a pending send of tenant beta with the same key
    as acme's first."""
    store.put_flow_version("acme", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
    store.put_flow_version("beta", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
    rids = []
    with store.flow_tx("acme") as ftx:
        for i in range(1, 5):
            rid = ftx.insert_run(F.Run(id=f"f:{i}:e", flow_id="f", version=1, subscriber_id=i, started_at=T0, node="w",
                                       visit=1), T0)  # fmt: skip
            assert rid is not None
            rids.append(rid)
            kind = "webhook" if i == 4 else "sms"
            ftx.add_message(FlowMessage(tenant="acme", key=f"k{i}", run_id=rid, flow_id="f", version=1, step=f"s{i}",
                                        visit=1, subscriber_id=i, kind=kind, category="webhook" if i == 4 else "marketing",
                                        recipient=f"+1555000000{i}", sender="S", body=f"b{i}", created_at=T0 + i))  # fmt: skip
        ftx.add_link("code1a", rids[0], "f:1:e:1", "https://shop.example/1", T0, "k1")
        ftx.add_link("code1b", rids[0], "f:1:e:1", "https://shop.example/1b", T0, "k1")
        ftx.add_link("code2", rids[1], "f:2:e:1", "https://shop.example/2", T0, "k2")
    with store.flow_tx("beta") as ftx:
        rid = ftx.insert_run(F.Run(id="f:9:e", flow_id="f", version=1, subscriber_id=9, started_at=T0, node="w"), T0)
        assert rid is not None
        ftx.add_message(FlowMessage(tenant="beta", key="k1", run_id=rid, flow_id="f", version=1, step="s", visit=1,
                                    subscriber_id=9, kind="sms", category="marketing", recipient="+15550000009",
                                    sender="S", body="b", created_at=T0))  # fmt: skip
    return rids


def _stored(store: Store) -> dict[str, Any]:
    with store._tx() as tx:  # type: ignore[attr-defined]
        return {
            "outbox": sorted(tx.rows("SELECT tenant, key, state, message_id, detail, sent_at FROM flow_outbox")),
            "messages": sorted(tx.rows("SELECT tenant, id, flow_id, step, subscriber_id, sent_at, message_id FROM flow_messages")),
            "links": sorted(tx.rows("SELECT code, tenant, flow_message FROM flow_links")),
        }  # fmt: skip


def test_a_round_of_answers_stores_what_one_by_one_stores(store: Store) -> None:
    _outbox(store)
    store.flow_messages_done([("acme", "k1", "sent", "m1", None)], now=T0 + 10)  # answered in an earlier round
    store.flow_messages_done([
        ("acme", "k1", "failed", None, "late"),  # not pending any more: unchanged
        ("acme", "k2", "sent", "m2", None),
        ("acme", "k2", "failed", None, "second answer"),  # the same key twice: the first wins
        ("acme", "k3", "failed", None, "HTTP 400 bad"),
        ("acme", "k4", "sent", None, None),  # a webhook call: no report source
        ("acme", "nope", "sent", "m9", None),  # no such send
    ], now=T0 + 20)  # fmt: skip
    got = _stored(store)
    assert got["outbox"] == [("acme", "k1", "sent", "m1", None, T0 + 10), ("acme", "k2", "sent", "m2", None, T0 + 20),
                             ("acme", "k3", "failed", None, "HTTP 400 bad", T0 + 20), ("acme", "k4", "sent", None, None, T0 + 20),
                             ("beta", "k1", "pending", None, None, None)]  # fmt: skip
    assert [m[:5] + m[6:] for m in got["messages"]] == [("acme", "k1", "f", "s1", 1, "m1"), ("acme", "k2", "f", "s2", 2, "m2")]
    assert [m[5] for m in got["messages"]] == [T0 + 10, T0 + 20]
    assert got["links"] == [("code1a", "acme", "k1"), ("code1b", "acme", "k1"), ("code2", "acme", "k2")]
    store.flow_messages_done([("beta", "k1", "sent", "mb", None), ("acme", "k2", "sent", "again", None)], now=T0 + 30)
    after = _stored(store)
    assert after["outbox"][-1] == ("beta", "k1", "sent", "mb", None, T0 + 30) and after["outbox"][1] == got["outbox"][1]
    assert ("beta", "k1", "f", "s", 9, T0 + 30, "mb") in after["messages"] and len(after["messages"]) == 3
    assert after["links"] == got["links"]
    store.flow_messages_done([], now=T0 + 40)
    assert _stored(store) == after


class _Counting:
    """Counts the statements a PostgreSQL store's connection executes (its cursors' ``execute`` and
    ``executemany`` calls: each a statement, executemany one per parameter row)."""

    def __init__(self, store: Store) -> None:
        import psycopg

        self.seen: list[str] = []
        seen = self.seen

        class Cursor(psycopg.Cursor):  # type: ignore[type-arg]
            def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
                seen.append(str(query)[:60])
                return super().execute(query, params, **kw)

            def executemany(self, query: Any, params_seq: Any, **kw: Any) -> Any:
                rows = list(params_seq)
                seen.extend([str(query)[:60]] * len(rows))
                return super().executemany(query, rows, **kw)

        store._conn.cursor_factory = Cursor  # type: ignore[attr-defined]


def test_a_round_of_answers_is_one_statement_on_postgres(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        _outbox(store)
        counting = _Counting(store)
        store.flow_messages_done([("acme", f"k{i}", "sent", f"m{i}", None) for i in range(1, 5)], now=T0 + 10)
        assert len(counting.seen) == 1, counting.seen
        got = _stored(store)
        assert [m[1] for m in got["messages"]] == ["k1", "k2", "k3"] and len(got["links"]) == 3
    finally:
        store.close()


@pytest.mark.parametrize("n", [1, 3])
def test_a_batch_s_run_updates_are_one_statement_on_postgres(pg_url: str, n: int) -> None:
    store = open_store(pg_url)
    try:
        store.put_flow_version("acme", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
        with store.flow_tx("acme") as ftx:
            rids = [ftx.insert_run(F.Run(id=f"f:{i}:e", flow_id="f", version=1, subscriber_id=i, started_at=T0,
                                         node="w", visit=1, timer_due=T0 + 60), T0) for i in range(n)]  # fmt: skip
        counting = _Counting(store)
        with store.flow_tx("acme") as ftx:
            ftx.prefetch(list(range(n)))
            for i, rid in enumerate(rids):
                assert rid is not None
                [(got, run)] = ftx.active_runs(i)
                assert got == rid
                ended = i % 2 == 1
                ftx.save_run(rid, msgspec.structs.replace(run, node=None if ended else "x", visit=2,
                                                          timer_due=None if ended else T0 + 90,
                                                          ended="completed" if ended else None), T0 + 5)  # fmt: skip
        assert sum(s.startswith("UPDATE flow_runs") for s in counting.seen) == 1, counting.seen
        rows = {r.id: r for r in store.flow_run_rows("acme")}
        for i, rid in enumerate(rids):
            r = rows[rid]
            want = ("w", "ended", "completed", None) if i % 2 else ("x", "active", None, T0 + 90)
            assert (r.node, r.state, r.ended, r.due, r.visit, r.updated_at) == (*want, 2, T0 + 5)
    finally:
        store.close()


_PG_RUN_INDEXES = {"flow_runs_pkey", "flow_runs_subscriber_key", "flow_runs_tenant_due", "flow_runs_flow"}


def _run_indexes(store: Store) -> set[str]:
    with store._tx() as tx:  # type: ignore[attr-defined]
        return {str(r[0]) for r in tx.rows("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND "
                                           "tablename = 'flow_runs'")}  # fmt: skip


def test_postgres_keys_a_run_by_its_subscriber_in_one_index_and_upgrades_a_store_made_before(pg_url: str) -> None:
    """Four index entries a run on PostgreSQL (five before: the run key's own unique index and the
    subscriber's); a store made with the two is moved to the one when opened, its runs kept, and a
    run key is still taken once (one by one: no row; in a batch: the batch is refused, nothing stored)."""
    from campaigns.errors import StorageError

    store = open_store(pg_url)
    try:
        assert _run_indexes(store) == _PG_RUN_INDEXES
        store.put_flow_version("acme", "f", "F", {"id": "f", "name": "F"}, now=T0, new=True)
        run = F.Run(id="f:1:e", flow_id="f", version=1, subscriber_id=1, started_at=T0, node="w", visit=1, timer_due=T0)
        with store.flow_tx("acme") as ftx:
            assert ftx.insert_run(run, T0) is not None
        with store._tx() as tx:  # type: ignore[attr-defined]  # the schema of a store made before
            tx.run("DROP INDEX flow_runs_subscriber_key")
            tx.run("ALTER TABLE flow_runs ADD CONSTRAINT flow_runs_tenant_run_key_key UNIQUE (tenant, run_key)")
            tx.run("CREATE INDEX flow_runs_subscriber ON flow_runs (tenant, subscriber_id, state)")
    finally:
        store.close()
    store = open_store(pg_url)
    try:
        assert _run_indexes(store) == _PG_RUN_INDEXES
        assert [r.run_key for r in store.flow_run_rows("acme")] == ["f:1:e"]
        with store.flow_tx("acme") as ftx:
            assert ftx.insert_run(run, T0) is None  # one by one: the key is taken
            assert ftx.insert_run(msgspec.structs.replace(run, id="f:1:e2"), T0) is not None
        with pytest.raises(StorageError):
            with store.flow_tx("acme") as ftx:
                ftx.prefetch([2])
                ftx.tx.run("INSERT INTO flow_runs (tenant, run_key, flow_id, version, subscriber_id, node, visit, state, "
                           "started_at, updated_at, run) VALUES ('acme', 'f:2:e', 'f', 1, 2, 'w', 1, 'active', ?, ?, '{}')",
                           (T0, T0))  # another transaction's, unseen by the batch  # fmt: skip
                assert ftx.insert_run(msgspec.structs.replace(run, id="f:2:e", subscriber_id=2), T0) is not None
        assert sorted(r.run_key for r in store.flow_run_rows("acme")) == ["f:1:e", "f:1:e2"]
    finally:
        store.close()


def _until_a_backend_waits_for_a_lock(url: str, deadline_s: float = 60.0) -> None:
    """Poll the server (bounded) until some backend of this database waits for a lock."""
    import time

    import psycopg

    end = time.monotonic() + deadline_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < end:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                               "wait_event_type = 'Lock'").fetchone()  # fmt: skip
            if row and row[0]:
                return
            time.sleep(0.005)
    raise AssertionError("no backend waited for a lock")


def test_an_input_marked_by_a_transaction_still_open_refuses_the_batch_on_postgres(pg_url: str) -> None:
    """The input ids' marks are a plain insert on PostgreSQL (no speculative insertion): an id another
    open transaction marked makes this batch wait for it, then refuse itself (a retryable
    ``StorageError``, nothing stored); redone, the id is seen as applied. An id marked and committed
    before is just not new (no error)."""
    import threading

    from campaigns.errors import StorageError

    store, other = open_store(pg_url), open_store(pg_url)
    try:
        with store.flow_tx("acme") as ftx:
            assert ftx.first_times(["1:a"]) == {"1:a"}
        with pytest.raises(RuntimeError):
            with store.flow_tx("acme") as ftx:
                assert ftx.first_times(["1:a", "2:b"]) == {"2:b"}
                raise RuntimeError("not kept: 2:b stays new")
        errors: list[BaseException] = []

        def batch() -> None:
            try:
                with store.flow_tx("acme") as ftx:
                    ftx.first_times(["2:b", "3:c"])
            except BaseException as exc:  # noqa: BLE001  (handed to the test's thread)
                errors.append(exc)

        with other._tx() as tx:  # type: ignore[attr-defined]
            tx.run("INSERT INTO flow_events (tenant, event_id) VALUES ('acme', '2:b')")
            t = threading.Thread(target=batch, daemon=True)
            t.start()
            _until_a_backend_waits_for_a_lock(pg_url)
        t.join(20)
        assert [type(e) for e in errors] == [StorageError] and "flow_event_race" in str(errors[0])
        with store.flow_tx("acme") as ftx:
            assert ftx.first_times(["2:b", "3:c"]) == {"3:c"}
    finally:
        store.close()
        other.close()
