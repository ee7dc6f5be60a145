import msgspec
import pytest

from gateway.core.model import Recipient
from gateway.errors import ConfigError
from gateway.store import open_store
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from gateway.store.base import Change, OutboxStats
from gateway.testing.store_conformance import HOOK, JOB, PEOPLE, StoreConformance, drain


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


def _row_writes(s: SqliteStore) -> int:
    """How many times a message's row has been written since ``_count_row_writes``."""
    return s._db.execute("SELECT n FROM temp.row_writes").fetchone()[0]


def _count_row_writes(s: SqliteStore) -> None:
    s._db.executescript("CREATE TEMP TABLE row_writes (n INTEGER); INSERT INTO temp.row_writes VALUES (0);"
                        " CREATE TEMP TRIGGER row_written AFTER UPDATE ON main.messages"
                        " BEGIN UPDATE row_writes SET n = n + 1; END;")  # fmt: skip


def test_sqlite_writes_a_late_receipts_row_once(tmp_path):
    # Issue 16: with receipts some writes after their submits (100 ms at a carrier), each
    # message's row was written twice (submitted, then delivered); the lone submits wait in
    # ``submits`` and the receipt's write applies both, so each row is written once, while every
    # reader sees the submit at once.
    s = SqliteStore(str(tmp_path / "once.db"))
    s.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
    _count_row_writes(s)
    s.record([Change(message_id=1000 + i, state="submitted", at=11.0, carrier="c", carrier_ids=(f"x{i}",))
              for i in range(5)])  # fmt: skip
    assert s.message("acme", 1003).state == "submitted" and s.job("acme", "j1").counts == {"submitted": 5}
    s.record([Change(message_id=1000 + i, state="delivered", at=11.1, reason="receipt") for i in range(5)])
    assert _row_writes(s) == 5
    assert [e.state for e in drain(s) if e.message_id == 1003] == ["submitted", "delivered"]
    m = s.message("acme", 1003)
    assert (m.state, m.attempts, m.carrier_ids, [c.state for c in m.history]) == (
        "delivered", 1, ("x3",), ["queued", "submitted", "delivered"])
    s.close()


def test_sqlite_held_submits_survive_a_crash_and_are_applied_once(tmp_path):
    # kill -9 with submits held: they are committed in ``submits`` with the write that took
    # them, so the next process applies them at open (awaiting their receipts, not sent again);
    # one already applied with its receipt (final) or with an intermediate change is not applied
    # twice. A store not closed (the first one here) is what a killed process leaves.
    path = str(tmp_path / "crash.db")
    s = SqliteStore(path)
    s.add_job(JOB, 1000, PEOPLE, 10.0)
    s.record([Change(message_id=1000 + i, state="submitted", at=11.0, carrier="c", carrier_ids=(f"x{i}",))
              for i in range(4)])  # fmt: skip
    s.record([Change(message_id=1000, state="delivered", at=11.1, reason="receipt"),
              Change(message_id=1001, state="accepted", at=11.1, reason="receipt ENROUTE")])  # fmt: skip
    again = SqliteStore(path)  # s is never closed: killed
    assert again.awaiting_receipts() == [(1001, "c", ("x1",)), (1002, "c", ("x2",)), (1003, "c", ("x3",))]
    assert again.job("acme", "j1").counts == {"delivered": 1, "accepted": 1, "submitted": 2, "queued": 1}
    for i, states in [(0, ["queued", "submitted", "delivered"]), (1, ["queued", "submitted", "accepted"]),
                      (2, ["queued", "submitted"])]:  # fmt: skip
        m = again.message("acme", 1000 + i)
        assert [c.state for c in m.history] == states and m.attempts == 1
    assert again._db.execute("SELECT count(*) FROM submits").fetchone() == (0,)
    again.close()


def test_sqlite_held_submits_are_written_alone_after_the_hold(tmp_path):
    # A receipt that does not come within ``hold`` (by the changes' times): the submit is written
    # to its row by a later write, its ``submits`` row deleted; dead rows are trimmed by range.
    s = SqliteStore(str(tmp_path / "hold.db"), hold=1.0)
    mem = MemoryStore()
    people = [(i, Recipient(to=f"+1212555{i:04d}")) for i in range(6000)]
    for store in (s, mem):
        store.add_job(JOB, 1000, people, 10.0)
    batches = [[Change(message_id=1000, state="submitted", at=11.0, carrier="c", carrier_ids=("x",))],
               [Change(message_id=1001, state="submitted", at=12.5)]]  # fmt: skip
    for k in range(2, 5900, 100):  # submits and their receipts a write later: rows of finals left behind
        batches.append([Change(message_id=1000 + i, state="submitted", at=13.0) for i in range(k, k + 100)]
                       + [Change(message_id=1000 + i, state="delivered", at=13.0) for i in range(k - 100, k) if i > 0])
    for k, batch in enumerate(batches):
        for store in (s, mem):
            store.record(batch)
        if k == 0:
            assert s._db.execute("SELECT state FROM messages WHERE id = 1000").fetchone() == ("queued",)
        if k == 1:  # 1000 held for more than a second by the changes' times: written alone
            assert s._db.execute("SELECT state, attempts FROM messages WHERE id = 1000").fetchone() == ("submitted", 1)
            assert s._db.execute("SELECT message_id FROM submits").fetchall() == [(1001,)]
        assert s.job("acme", "j1").counts == mem.job("acme", "j1").counts
    assert s._db.execute("SELECT count(*) FROM submits").fetchone()[0] < 4096 + 200  # trimmed
    for mid in (1000, 1001, 6800, 6900):
        mine, theirs = s.message("acme", mid), mem.message("acme", mid)
        assert (mine.state, mine.attempts, [(c.state, c.at) for c in mine.history]) == (
            theirs.state, theirs.attempts, [(c.state, c.at) for c in theirs.history])
    s.close()


def test_sqlite_submits_trimmed_whichever_write_trims(tmp_path):
    # The dead ``submits`` rows are trimmed by range; seqs start again at 1 only once the table is
    # empty. A trim in a write that applies the last held submits leaves the dead rows from the
    # oldest held one on: their seqs must not be given again (4,096 submits, their receipts, then
    # writes of 100 and their receipts: the second of those receipts' writes trims).
    s = SqliteStore(str(tmp_path / "trim.db"))
    s.add_job(JOB, 1000, [(i, Recipient(to=f"+1212{i:07d}")) for i in range(20_000)], 1.0)
    m = 1000
    for k, size in enumerate([4096] + [100] * 60):
        ids = range(m, m + size)
        m += size
        s.record([Change(message_id=i, state="submitted", at=2.0 + k * 0.01) for i in ids])
        assert s.job("acme", "j1").counts["submitted"] == size
        s.record([Change(message_id=i, state="delivered", at=2.0 + k * 0.01) for i in ids])
    assert s.job("acme", "j1").counts == {"delivered": m - 1000, "queued": 21_000 - m}
    assert s._db.execute("SELECT count(*) FROM submits").fetchone()[0] <= 4096 + 200
    s.close()


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


def test_sqlite_outbox_and_callbacks_survive_reopen(tmp_path):
    path = str(tmp_path / "sluice.db")
    s = SqliteStore(path)
    s.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
    s.record([Change(message_id=1000, state="delivered", at=11.0)])
    s.close()
    again = SqliteStore(path)  # a new instance: its job -> callback cache is rebuilt from the file
    again.record([Change(message_id=1004, state="submitted", at=12.0)])
    assert [(i.message_id, i.state, i.url) for i in drain(again)] == [
        (1000, "delivered", HOOK), (1004, "submitted", HOOK)]  # fmt: skip
    again.close()


def test_sqlite_callback_cache_forgets_finished_jobs(tmp_path):
    s = SqliteStore(str(tmp_path / "sluice.db"))
    for j in range(6):
        s.add_job(msgspec.structs.replace(JOB, id=f"j{j}"), 1000 * (j + 1), PEOPLE[:2], 10.0, callback_url=HOOK)
    s.record([Change(message_id=1000 * (j + 1) + i, state="delivered", at=11.0) for j in range(5) for i in range(2)])
    assert len(s._hooks._by_job) == 1 and len(s._hooks._blocks) <= 3  # swept once half were dropped
    s.record([Change(message_id=6001, state="submitted", at=12.0)])
    assert [i.message_id for i in drain(s)][-1] == 6001
    s.close()


def _counted(s: SqliteStore, tenant: str, job_id: str) -> dict[str, int]:
    """The job's counts the slow way: every message row."""
    return dict(s._db.execute("SELECT state, count(*) FROM messages WHERE tenant = ? AND job_id = ? GROUP BY state",
                              (tenant, job_id)).fetchall())  # fmt: skip


def test_sqlite_job_counts_match_the_messages(tmp_path):
    # The counts are kept by a trigger: after any mix of changes (repeats, changes to final
    # messages, several changes of one message in one batch) they equal a count of the rows.
    import random

    rng = random.Random(7)
    s = SqliteStore(str(tmp_path / "c.db"))
    people = [(i, Recipient(to=f"+1212555{i:04d}")) for i in range(200)]
    s.add_job(JOB, 1000, people[:120], 10.0)
    s.add_job(JOB, 1000, people[120:], 10.0)  # a second chunk of the same job
    mem = MemoryStore()
    mem.add_job(JOB, 1000, people[:120], 10.0)
    mem.add_job(JOB, 1000, people[120:], 10.0)
    states = ["queued", "deferred", "submitted", "delivered", "undelivered", "unknown", "capped"]
    for k in range(30):
        batch = [Change(message_id=1000 + rng.randrange(200), state=rng.choice(states), at=11.0 + k)
                 for _ in range(rng.randrange(1, 60))]  # fmt: skip
        s.record(batch)
        mem.record(batch)
        # Lone submits may be held in ``submits`` (not in their rows yet): the counts say what
        # the rows will say, which is what the memory store says; folded, the rows say it too.
        assert s.job("acme", "j1").counts == mem.job("acme", "j1").counts
        if k % 4 == 3:
            s._fold_now()
            assert s.job("acme", "j1").counts == _counted(s, "acme", "j1") == mem.job("acme", "j1").counts
    s.close()


def test_sqlite_job_counts_are_built_for_an_older_store(tmp_path):
    path = str(tmp_path / "old.db")
    s = SqliteStore(path)
    s.add_job(JOB, 1000, PEOPLE, 10.0)
    s.record([Change(message_id=1000, state="delivered", at=11.0), Change(message_id=1001, state="submitted", at=11.0)])
    s._db.executescript("DROP TRIGGER messages_count; DROP TABLE job_counts;")  # as made before they existed
    s.close()
    again = SqliteStore(path)
    assert again.job("acme", "j1").counts == {"delivered": 1, "submitted": 1, "queued": 3} == _counted(again, "acme", "j1")
    again.record([Change(message_id=1001, state="delivered", at=12.0)])
    assert again.job("acme", "j1").counts == {"delivered": 2, "queued": 3}
    again.close()


def test_sqlite_history_of_an_older_store_is_kept(tmp_path):
    # Stores written before messages.history kept each change as a row of ``events``: a message's
    # history is those rows, then what its own row has gathered since.
    path = str(tmp_path / "old.db")
    s = SqliteStore(path)
    s.add_job(JOB, 1000, PEOPLE, 10.0)
    s._db.executescript("""
        ALTER TABLE messages DROP COLUMN history;
        INSERT INTO events VALUES (1000, 11.0, 'submitted', '', 'alpha');
        UPDATE messages SET state = 'submitted', carrier = 'alpha' WHERE id = 1000;
    """)
    s.close()
    again = SqliteStore(path)
    again.record([Change(message_id=1000, state="delivered", at=12.0, reason="receipt", carrier="alpha")])
    m = again.message("acme", 1000)
    assert [(c.state, c.at, c.reason, c.carrier) for c in m.history] == [
        ("queued", 10.0, "accepted", None), ("submitted", 11.0, "", "alpha"), ("delivered", 12.0, "receipt", "alpha")]
    again.close()


def test_sqlite_callback_states_survive_reopen_and_finals_outside_them_end_the_job(tmp_path):
    """The job's choice is on disk (the cache is rebuilt from it), and a final state the job
    did not ask for still ends its messages: the cache forgets the job all the same."""
    path = str(tmp_path / "sluice.db")
    s = SqliteStore(path)
    s.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK, callback_states=frozenset({"submitted", "delivered"}))
    s.record([Change(message_id=1000, state="submitted", at=11.0), Change(message_id=1001, state="undelivered", at=11.0)])
    s.close()
    again = SqliteStore(path)
    assert again.job_info("acme", "j1").callback_states == frozenset({"submitted", "delivered"})
    again.record([Change(message_id=1000, state="delivered", at=12.0), Change(message_id=1002, state="expired", at=12.0),
                  Change(message_id=1003, state="accepted", at=12.0)])  # fmt: skip
    assert [(i.message_id, i.state) for i in drain(again)] == [
        (1000, "submitted"), (1000, "delivered")]  # fmt: skip
    assert again._hooks
    again.record([Change(message_id=1003, state="failed", at=13.0), Change(message_id=1004, state="canceled", at=13.0)])
    assert not again._hooks  # every message final: nothing left to hear about
    again.close()


def test_sqlite_store_made_before_callback_states_opens_and_hears_every_state(tmp_path):
    import sqlite3

    path = str(tmp_path / "old.db")
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE jobs DROP COLUMN callback_states")  # as a store written before the column
    db.commit()
    db.close()
    s = SqliteStore(path)
    s.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
    s.record([Change(message_id=1000, state="submitted", at=11.0)])
    assert [i.state for i in drain(s)] == ["submitted"]
    assert s.job_info("acme", "j1").callback_states is None
    s.close()


def test_sqlite_outbox_rows_of_a_store_made_before_are_delivered_first_and_in_order(tmp_path):
    """A store written by the outbox version (its hook tables absent, rows pending in the
    outbox, some dead): opened, its pending rows become the sequence's first events, in their
    order, with whom they are about; its dead rows stay dead letters; later changes follow."""
    import sqlite3

    path = str(tmp_path / "old.db")
    s = SqliteStore(path)
    s.add_job(msgspec.structs.replace(JOB, reference="r7"), 1000, PEOPLE, 10.0, callback_url=HOOK)
    s.close()
    db = sqlite3.connect(path)
    for table in ("hook_log", "hook_subscribers", "hook_seq"):
        db.execute(f"DROP TABLE {table}")
    rows = [(HOOK, 1001, "submitted", 11.0, None, 0), (HOOK, 1000, "submitted", 11.5, None, 0),
            (HOOK, 1001, "undelivered", 12.0, 11, 0), (HOOK, 1002, "failed", 9.0, None, 1),
            ("https://example.invalid/other", 1003, "delivered", 12.5, None, 0)]  # fmt: skip
    db.executemany("INSERT INTO outbox (tenant, url, message_id, job_id, state, at, reason, carrier, error_code, dead)"
                   " VALUES ('acme', ?, ?, 'j1', ?, ?, 'r', 'alpha', ?, ?)", rows)  # fmt: skip
    db.commit()
    db.close()
    again = SqliteStore(path)
    assert again.outbox_statistics() == OutboxStats(pending=4, dead=1)
    again.record([Change(message_id=1000, state="delivered", at=13.0)])
    got = drain(again)
    assert [(e.url, e.message_id, e.state, e.at, e.error_code) for e in got] == [
        (HOOK, 1001, "submitted", 11.0, None), (HOOK, 1000, "submitted", 11.5, None),
        (HOOK, 1001, "undelivered", 12.0, 11), (HOOK, 1000, "delivered", 13.0, None),
        ("https://example.invalid/other", 1003, "delivered", 12.5, None)]  # fmt: skip
    assert {(e.to, e.reference) for e in got if e.message_id == 1001} == {("+12125550001", "r7")}
    assert again.outbox_statistics() == OutboxStats(pending=0, dead=1)
    again.close()
    assert SqliteStore(path).outbox_statistics() == OutboxStats(pending=0, dead=1)  # moved once, not again


def test_sqlite_a_repeated_final_change_does_not_make_the_cache_forget_a_running_job(tmp_path):
    """The cache counts a job's open messages down by the final changes it sees; a final change
    for a message already final (the write ignores it) must not make it drop the job early."""
    s = SqliteStore(str(tmp_path / "sluice.db"))
    s.add_job(JOB, 1000, PEOPLE[:2], 10.0, callback_url=HOOK)
    s.record([Change(message_id=1000, state="delivered", at=11.0)])
    s.record([Change(message_id=1000, state="undelivered", at=12.0)])  # ignored: 1000 is final
    assert s._hooks
    s.record([Change(message_id=1001, state="delivered", at=13.0)])
    assert [(e.message_id, e.state) for e in drain(s)] == [(1000, "delivered"), (1001, "delivered")]
    assert not s._hooks
    s.close()


def test_sqlite_a_write_with_webhooks_costs_the_same_however_many_messages_are_open(tmp_path):
    """The sequence rows are written per changed message (a primary-key lookup each), never by
    a pass over the open messages: the same 50 changes cost the same number of SQLite VM steps
    with 500 or 40,000 messages open (a bad plan once scanned them all for every write)."""

    def steps(open_count: int) -> int:
        s = SqliteStore(str(tmp_path / f"steps{open_count}.db"), synchronous="NORMAL")
        people = [(i, PEOPLE[0][1]) for i in range(open_count)]
        s.add_job(JOB, 1 << 30, people, 10.0, callback_url=HOOK)
        n = [0]

        def count() -> int:
            n[0] += 1
            return 0

        s._db.set_progress_handler(count, 100)
        s.record([Change(message_id=(1 << 30) + i, state="submitted", at=11.0) for i in range(50)])
        s._db.set_progress_handler(None, 0)
        assert len(drain(s)) == 50
        s.close()
        return n[0]

    small, large = steps(500), steps(40_000)
    assert large <= small * 1.5 + 10, (small, large)


def test_sqlite_rows_of_recipients_stored_by_older_versions_read_as_hook_events_does(tmp_path):
    """``hook_rows`` reads recipients its fast path does not vouch for (msgpack from before JSON
    text, a number not canonical, an index that is not a number) the way ``hook_events`` does."""
    from gateway.store.base import hook_rows_of

    store = SqliteStore(str(tmp_path / "s.db"))
    people = [(i, Recipient(to=f"+1212555{i:04d}", index=i)) for i in range(4)]
    store.add_job(JOB, 1000, people, 10.0, callback_url=HOOK)
    db = store._db  # noqa: SLF001 - writing rows as an older version left them
    db.execute("UPDATE messages SET recipient = ? WHERE id = 1000",
               (msgspec.msgpack.encode({"to": "+12125550000", "index": 0}),))  # fmt: skip
    db.execute("UPDATE messages SET recipient = ? WHERE id = 1001", ('{"to": "+1212555\u0661\u0662\u0663\u0664"}',))
    db.execute("UPDATE messages SET recipient = ? WHERE id = 1002", ('{"to": "+12125550002", "index": "2"}',))
    store.record([Change(message_id=1000 + i, state="delivered", at=11.0, reason="DELIVRD") for i in range(4)])
    [sub] = store.hook_due(1e9)
    rows = store.hook_rows(sub.id, 100)
    assert [(r.seq, r.message_id, r.events) for r in rows] == [
        (r.seq, r.message_id, r.events) for r in hook_rows_of(store.hook_events(sub.id, 100))]  # fmt: skip
    assert [r.events[0]["to"] for r in rows] == ["+12125550000", "+12125551234", "+12125550002", "+12125550003"]
    store.close()
