"""What ``Store.record`` costs for a batch of 10,000 state changes, with and without webhooks.

    python -m bench.store_record [--changes N] [--runs N]
    python -m bench.store_record --contend [--batch N] [--switch SECONDS]
    python -m bench.store_record --pages [--changes N]
    python -m bench.store_record --later LAG [--changes N]
    python -m bench.store_record --window [--batch N] [--lag N] [--changes N] [--runs N] [--drop WHAT]

Each run: a fresh SQLite file, one job of N recipients (with or without a ``callback_url``),
then ``record`` of N ``submitted`` changes and of N ``delivered`` changes, one batch each.
Prints one JSON line per case: the median seconds per batch and changes per second.

``--contend``: the dispatcher's case under load. Writes of ``--batch`` changes (half
``submitted``, half ``delivered``, as in the e2e scenario) from a worker thread while another
thread runs Python without pause (as a busy event loop does), with the interpreter's switch
interval set to ``--switch`` (``serve`` uses 0.0005; CPython's default is 0.005). Prints the
median and p90 milliseconds per write.

``--pages``: what the order of message ids does to a write. A transactional job of N recipients
(default 200,000; the e2e job's) is admitted by the real core (16 shards, one carrier with no rate
limit) and stored; then the core hands its messages out (``take``, 100 at a time) and each batch's
``submitted`` + ``delivered`` are recorded as one write, as the dispatcher does. Twice: with the
ids the core gives (grouped by shard within each 10,000-recipient chunk), and with ids in
recipient order (what it gave before). Prints WAL frames (pages written) per write, from
``PRAGMA wal_checkpoint``, and microseconds of ``record`` per message.

``--later LAG``: what receipts that come later cost the store (issue 16). The same job and core
ids (default 50,000 recipients), writes of 100 messages' ``submitted``: with each message's
receipt in the same write (receipts at once), and with the receipts of the messages submitted
LAG writes before (receipts 100 ms later at a few thousand messages/s are several writes later),
so that each message's row is written twice. Both with and without a ``callback_url``; WAL frames,
wall and CPU microseconds of ``record`` per message; alternated, twice.

``--window``: a write at the shape of `sluice bench kannel`'s run (issue 16): ``--batch`` changes
(default 230), half ``submitted`` for new messages (with a carrier id) and half ``delivered``
for the messages submitted ``--lag`` writes before (default 3), over a job of ``--changes``
recipients (default 30,000), with and without a ``callback_url`` (so the change sequence's rows
are written), ``synchronous=FULL`` as ``serve`` runs it; the changes' times as at 10,000 messages
a second (the store holds a lone ``submitted`` for its receipt up to ``hold`` seconds by them). Per case, the median over every write of
``--runs`` runs: CPU microseconds of ``record`` a change (the calling thread's), wall milliseconds
a write (sync included) and WAL frames (pages) a write; and this disk's ``fdatasync`` of an 8 KB
write alone (median of 200), to compare the write with its floor. ``--drop counts_trigger``,
``--drop open_index`` (repeatable): the same without that part of the schema, to see what it
costs (diagnostic: the store is not correct without them). ``--open-rows skip|append|noop``
(diagnostic, issue 16: what a late receipt's second write of the row costs): the rows that stay
open (the ``submitted`` of the write's new messages) are not written at all (``skip``: the floor
of any design that writes the row once), appended to a narrow rowid table instead (``append``:
what a journal of submits costs, no reader seeing it), or written by an UPDATE that only sets
``updated_at`` (``noop``: the row's lookup and rewrite without the state, its history and the
counts' trigger); ``update`` (the default) is the store as it is. The diagnostics run the store
with ``hold=0`` (every lone ``submitted`` written to its row, as before ``submits``), which is
what they take apart; ``update`` with the default hold (a message's row written once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.core.model import Job, Recipient
from gateway.store.base import Change
from gateway.store import sqlite as sqlite_store
from gateway.store.sqlite import SqliteStore

JOB = Job(id="job_bench", tenant="acme", sender="ACME", template="Hi {name}", category="marketing")


def one_run(n: int, callback: str | None, synchronous: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(str(Path(tmp) / "bench.db"), synchronous=synchronous)
        people = [(i, Recipient(to=f"+1212{i:07d}", vars={"name": "x"})) for i in range(n)]
        store.add_job(JOB, 1 << 40, people, 1.0, callback_url=callback)
        out = []
        for state in ("submitted", "delivered"):
            changes = [Change(message_id=(1 << 40) + i, state=state, at=2.0, carrier="alpha") for i in range(n)]
            t0 = time.perf_counter()
            store.record(changes)
            out.append(time.perf_counter() - t0)
        store.close()
        return out


def contended(batch: int, switch: float, writes: int = 150) -> dict:
    """Milliseconds per write of ``batch`` changes while another thread keeps the GIL busy."""
    half = batch // 2
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(str(Path(tmp) / "bench.db"))
        first = 1 << 40
        store.add_job(JOB, first, [(i, Recipient(to=f"+1212{i:07d}", vars={"name": "x"})) for i in range(half * writes)], 1.0)
        batches = [[Change(message_id=first + i, state="submitted", at=2.0, carrier="alpha", carrier_ids=(str(i),))
                    for i in range(k, k + half)]
                   + [Change(message_id=first + i, state="delivered", at=2.1, carrier="alpha", reason="receipt")
                      for i in range(k, k + half)] for k in range(0, half * writes, half)]  # fmt: skip
        stop = threading.Event()

        def busy() -> None:  # pure Python, never blocking: what a saturated event loop looks like
            x = 0
            while not stop.is_set():
                for i in range(1000):
                    x += i

        before = sys.getswitchinterval()
        sys.setswitchinterval(switch)
        spinner = threading.Thread(target=busy)
        spinner.start()
        times = []
        try:
            for changes in batches:
                t0 = time.perf_counter()
                store.record(changes)
                times.append(time.perf_counter() - t0)
        finally:
            stop.set()
            spinner.join()
            sys.setswitchinterval(before)
            store.close()
    times.sort()
    return {"bench": "store.record contended", "batch": batch, "switch_interval": switch,
            "median_ms": round(statistics.median(times) * 1e3, 2), "p90_ms": round(times[int(len(times) * 0.9)] * 1e3, 2)}  # fmt: skip


def pages(n: int, ids: str, lag: int = 0, callback: str | None = None) -> dict:
    """WAL frames and time per write of 100 messages' results; ``ids``: "core" or "recipient".
    ``lag``: each write holds 100 ``submitted`` and the receipts of the messages submitted
    ``lag`` writes before (receipts that come later than the next write, as at a real carrier);
    0: a message's ``submitted`` and its receipt in the same write (receipts at once)."""
    from gateway.core.scheduler import Scheduler
    from gateway.core.settings import CarrierSettings, CoreSettings, Route
    from gateway.testing import workload

    now = 1795532400.0
    core = Scheduler(CoreSettings(carriers=[CarrierSettings(name="a", rate=1e9, burst=10**9)],
                                  routes=[Route(carriers=["a"])]), now)  # fmt: skip
    job = workload.job("job_pages", "transactional")
    people = list(workload.recipients(n, 1, vars_for="transactional"))
    rename: dict[int, int] = {}  # the core's id -> the id used here
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(str(Path(tmp) / "bench.db"))
        for k in range(0, n, 10_000):
            chunk = people[k : k + 10_000]
            adm = core.admit(job, chunk, now)
            kept = [(o, r) for o, r in zip(adm.offsets, chunk) if o >= 0]
            if ids == "recipient":  # ranks in recipient order instead of the core's offsets
                for rank, (o, _) in enumerate(kept):
                    rename[adm.first_id + o] = adm.first_id + rank
                kept = [(rank, r) for rank, (_, r) in enumerate(kept)]
            kept.sort(key=lambda item: item[0])
            store.add_job(job, adm.first_id, kept, now, callback_url=callback)
        db = store._db
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA wal_autocheckpoint=0")  # counted here instead, between writes
        frames = writes = messages = 0
        elapsed = cpu = 0.0
        sent: list[list[int]] = []  # the ids of each write's submits, for the receipts ``lag`` writes later
        answered = 0  # writes whose receipts are in
        while True:
            batch = core.take("a", 100, now).dispatches
            mids = [rename.get(d.message_id, d.message_id) for d in batch]
            if mids:
                sent.append(mids)
            due = len(sent) - lag if mids else len(sent)  # at the end, the receipts still out come in
            later = sent[answered] if answered < due else []
            answered += bool(later)
            if not mids and not later:
                break
            changes = [Change(message_id=m, state="submitted", at=now, carrier="a", carrier_ids=(str(m),)) for m in mids]
            changes += [Change(message_id=m, state="delivered", at=now, carrier="a", reason="receipt") for m in later]
            for d in batch:
                core.complete(d.ref)
            t0, c0 = time.perf_counter(), time.thread_time()
            store.record(changes)
            elapsed += time.perf_counter() - t0
            cpu += time.thread_time() - c0
            frames += db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]  # frames in the WAL
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            writes += 1
            messages += len(batch)
        store.close()
    return {"bench": "store.record pages", "ids": ids, "lag": lag, "callback": callback is not None,
            "messages": messages, "writes": writes, "wal_frames_per_write": round(frames / writes, 1),
            "record_us_per_message": round(elapsed / messages * 1e6, 1),
            "record_cpu_us_per_message": round(cpu / messages * 1e6, 1)}  # fmt: skip


_OPEN_ROWS = {  # ``--open-rows``: what a write does with its rows that stay open (diagnostic)
    "append": "INSERT INTO open_rows (id, state, at, carrier, carrier_ids, attempts, history)"
              " SELECT column1, column2, column4, column5, column6, column7, column8 FROM (VALUES {})"
              " WHERE column1 IS NOT NULL",
    "noop": "UPDATE messages SET updated_at = u.column4 FROM (VALUES {}) AS u"
            " WHERE messages.id = u.column1 AND +messages.final = 0",
}


@contextlib.contextmanager
def _open_rows(how: str):
    """``record`` with its rows that stay open skipped, appended or barely updated (``--open-rows``)."""
    if how == "update":
        yield
        return
    real = sqlite_store._apply

    def apply(db, template: str, params: list, width: int) -> None:
        if template is not sqlite_store._UPDATE:
            real(db, template, params, width)
        elif how != "skip":
            db.execute("CREATE TABLE IF NOT EXISTS open_rows (seq INTEGER PRIMARY KEY, id INTEGER, state TEXT,"
                       " at REAL, carrier TEXT, carrier_ids TEXT, attempts INTEGER, history TEXT)")
            real(db, _OPEN_ROWS[how], params, width)

    sqlite_store._apply = apply
    try:
        yield
    finally:
        sqlite_store._apply = real


def window(n: int, batch: int, lag: int, callback: str | None, drop: Sequence[str] = (), open_rows: str = "update") -> dict:
    """Medians over the writes of one run: see ``--window`` in the module docstring."""
    with _open_rows(open_rows):
        return _window(n, batch, lag, callback, drop, hold=2.0 if open_rows == "update" else 0.0)


def _window(n: int, batch: int, lag: int, callback: str | None, drop: Sequence[str], hold: float = 2.0) -> dict:
    per = batch // 2
    cpu, wall, frames, sizes = [], [], [], []
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # the disk the store would be on, not a tmpfs
        store = SqliteStore(str(Path(tmp) / "bench.db"), hold=hold)
        first = 1 << 40
        store.add_job(JOB, first, [(i, Recipient(to=f"+1212{i:07d}", vars={"name": "x"})) for i in range(n)], 1.0,
                      callback_url=callback)  # fmt: skip
        db = store._db
        for what in drop:
            db.execute({"counts_trigger": "DROP TRIGGER messages_count", "open_index": "DROP INDEX messages_open"}[what])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpointed here instead, after each write
        sent: list[range] = []
        for k in range(0, n, per):
            sent.append(range(first + k, first + min(n, k + per)))
            later = sent[-1 - lag] if len(sent) > lag else range(0)
            # Times as at 10,000 messages a second (the store holds a lone submit for its receipt
            # up to ``hold`` seconds by the changes' times; before it, they were not read).
            at = 2.0 + k / 10_000
            changes = [Change(message_id=m, state="submitted", at=at, carrier="alpha", carrier_ids=(f"c{m}",))
                       for m in sent[-1]]  # fmt: skip
            changes += [Change(message_id=m, state="delivered", at=at, carrier="alpha", reason="receipt") for m in later]
            t0, c0 = time.perf_counter(), time.thread_time()
            store.record(changes)
            wall.append(time.perf_counter() - t0)
            cpu.append((time.thread_time() - c0) / len(changes))
            # A whole checkpoint, so the next write starts the WAL again at its start (the file
            # overwritten in place, as in ``serve``): the frames in the WAL are this write's.
            frames.append(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
            sizes.append(len(changes))
        store.close()
    return {"cpu": cpu, "wall": wall, "frames": frames, "sizes": sizes}


def fdatasync_ms(writes: int = 200) -> float:
    """The median ``fdatasync`` of an 8 KB write appended to a file in the current directory."""
    times = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        fd = os.open(Path(tmp) / "sync", os.O_RDWR | os.O_CREAT, 0o644)
        block = os.urandom(8192)
        for k in range(writes):
            os.pwrite(fd, block, k * len(block))
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
        os.close(fd)
    return round(statistics.median(times) * 1e3, 2)


def windows(args: argparse.Namespace) -> None:
    n = args.changes if args.changes != 10_000 else 30_000
    for case, url in (("no_callback", None), ("callback", "https://example.invalid/hook")):
        runs = [window(n, args.batch, args.lag, url, args.drop, args.open_rows) for _ in range(args.runs)]
        med = {key: statistics.median(v for r in runs for v in r[key]) for key in ("cpu", "wall", "frames", "sizes")}
        print(json.dumps({"bench": "store.record window", "case": case, "changes_per_write": med["sizes"],
                          "lag": args.lag, "drop": args.drop, "open_rows": args.open_rows,
                          "writes": sum(len(r["cpu"]) for r in runs),
                          "cpu_us_per_change": round(med["cpu"] * 1e6, 2),
                          "cpu_ms_per_write": round(med["cpu"] * med["sizes"] * 1e3, 3),
                          "wall_ms_per_write": round(med["wall"] * 1e3, 2), "wal_frames_per_write": med["frames"]}))  # fmt: skip
    print(json.dumps({"bench": "fdatasync 8 KB", "median_ms": fdatasync_ms()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    ap.add_argument("--contend", action="store_true", help="writes of --batch changes with the GIL contended")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--switch", type=float, default=0.0005, help="the interpreter's switch interval (s)")
    ap.add_argument("--pages", action="store_true", help="WAL frames per write: ids by shard vs in recipient order")
    ap.add_argument("--later", type=int, default=0, metavar="LAG",
                    help="WAL frames and CPU per write, receipts at once vs LAG writes later (issue 16)")
    ap.add_argument("--window", action="store_true", help="writes of --batch mixed changes, as in bench kannel's run")
    ap.add_argument("--lag", type=int, default=3, help="--window: receipts this many writes after their submits")
    ap.add_argument("--drop", action="append", default=[], choices=["counts_trigger", "open_index"],
                    help="--window: without this part of the schema (diagnostic)")
    ap.add_argument("--open-rows", default="update", choices=["update", "skip", "append", "noop"],
                    help="--window: the rows that stay open written as they are, or not, appended, barely (diagnostic)")
    args = ap.parse_args()
    if args.window:
        args.batch = args.batch if args.batch != 200 else 230
        args.runs = args.runs if args.runs != 7 else 3
        windows(args)
        return
    if args.later:
        n = args.changes if args.changes != 10_000 else 50_000
        for _ in range(2):  # alternated, twice
            for lag in (0, args.later):
                for url in (None, "https://example.invalid/hook"):
                    print(json.dumps(pages(n, "core", lag, url)))
        return
    if args.pages:
        n = args.changes if args.changes != 10_000 else 200_000
        for ids in ("core", "recipient"):
            print(json.dumps(pages(n, ids)))
        return
    if args.contend:
        print(json.dumps(contended(args.batch, args.switch)))
        return
    for case, url in (("no_callback", None), ("callback", "https://example.invalid/hook")):
        runs = [one_run(args.changes, url, args.synchronous) for _ in range(args.runs)]
        med = statistics.median(t for r in runs for t in r)
        print(json.dumps({"bench": "store.record", "case": case, "changes": args.changes,
                          "synchronous": args.synchronous, "median_s": round(med, 5),
                          "changes_per_s": round(args.changes / med)}))  # fmt: skip


if __name__ == "__main__":
    main()
