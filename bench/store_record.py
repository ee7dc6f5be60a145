"""What ``Store.record`` costs for a batch of 10,000 state changes, with and without webhooks.

    python -m bench.store_record [--changes N] [--runs N]

Each run: a fresh SQLite file, one job of N recipients (with or without a ``callback_url``),
then ``record`` of N ``submitted`` changes and of N ``delivered`` changes, one batch each.
Prints one JSON line per case: the median seconds per batch and changes per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from gateway.core.model import Job, Recipient
from gateway.store.base import Change
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = ap.parse_args()
    for case, url in (("no_callback", None), ("callback", "https://example.invalid/hook")):
        runs = [one_run(args.changes, url, args.synchronous) for _ in range(args.runs)]
        med = statistics.median(t for r in runs for t in r)
        print(json.dumps({"bench": "store.record", "case": case, "changes": args.changes,
                          "synchronous": args.synchronous, "median_s": round(med, 5),
                          "changes_per_s": round(args.changes / med)}))  # fmt: skip


if __name__ == "__main__":
    main()
