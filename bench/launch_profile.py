"""A launch's own work without `serve`: ``freeze`` and every batch's NDJSON body (built as a first
launch builds it: from the rows it planned, or read back when it froze set-based) on a seeded SQLite store (the audience of `sluice bench campaign`),
timed; ``--profile`` prints cProfile's top entries.

    python -m bench.launch_profile 100000 [--profile]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from bench import campaign as bc
from campaigns.service import launch
from campaigns.store import open_store
from campaigns.store.base import Store
from campaigns.store.campaign_rows import CampaignRow


def ready_campaign(tmp: str, n: int, url: str | None = None) -> tuple[Store, CampaignRow, launch.TenantLinks, float]:
    """A seeded store (SQLite in ``tmp``, or the empty PostgreSQL database ``url``; the audience of
    `sluice bench campaign`, ``n`` subscribers) and its campaign, ``launching``: the store, the
    campaign, the tenant's links and ``now``."""
    url = url or f"sqlite:///{Path(tmp) / 'campaigns.db'}"
    now = time.time()
    seg = bc.load_audience(url, n, now, 1, n)
    store = open_store(url)
    definition = {"sender": "SHOP", "template": bc.TEMPLATE, "values": {"shop_name": "CommerceCo"},
                  "audience": {"include": [seg]}, "schedule": {"kind": "at", "at": now + bc.DAY}, "batch_size": 5000}  # fmt: skip
    camp = store.put_campaign(bc.TENANT, "spring", definition, now=now)
    camp = store.set_campaign_status(bc.TENANT, camp.id, "launching", now=now)
    return store, camp, launch.TenantLinks(domain="sl.ui", key=bc.LINK_KEY.encode()), now


def main(n: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-launch-profile-") as tmp:
        store, camp, tl, now = ready_campaign(tmp, n)
        prof = cProfile.Profile() if profile else None
        t0, c0 = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        lines: dict[int, list[tuple[str, str, str]]] = {}
        launch.freeze(store, bc.TENANT, camp, tl, now, lines=lines)
        t1, c1 = time.perf_counter(), time.process_time()
        spec, sent = launch.parse_spec(camp.definition), 0
        for b in store.batches(bc.TENANT, camp.id):  # as a first launch builds them (``Launcher._body``)
            batch = lines.pop(b.batch, None)
            if batch is None:  # frozen set-based: the texts are in the rows only
                batch = store.batch_lines(bc.TENANT, camp.id, b.batch)
            launch.job_body_of(launch.head_line(camp, spec, b.batch, b.send_at, None), batch)
            sent += len(batch)
        t2, c2 = time.perf_counter(), time.process_time()
        if prof:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        store.close()
    print(f"n={n} freeze={t1 - t0:.2f}s bodies={t2 - t1:.2f}s recipients={sent} load={os.getloadavg()[0]:.1f} "
          f"cpu: freeze={c1 - c0:.2f}s bodies={c2 - c1:.2f}s ({(c2 - c0) * 1e6 / max(1, sent):.1f} us a recipient)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, "--profile" in sys.argv)
