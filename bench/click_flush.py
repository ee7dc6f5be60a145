"""CPU per click of the redirect's click flush, the events path (``record_hits``: the hits, then each
human click's ``clicked`` activity through ``apply_events``) against the one derived from the hits'
links (``record_link_hits``), alternated in one process on one seeded store (N subscribers and a
campaign of N delivered recipients, as ``sluice bench campaign`` seeds them), by batch size. On
PostgreSQL the server backend's CPU too (/proc, same host).

    python -m bench.click_flush postgres 100000
    python -m bench.click_flush sqlite 100000
"""
import os
import random
import statistics
import sys
import time

from bench.campaign import load_audience, seed_frozen, seed_outcomes, TENANT
from bench.audience import throwaway_postgres
from campaigns.store import open_store
from campaigns.store.campaign_rows import ClickIn, HitIn
from campaigns.core.events import ActivityEvent

N = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
engine = sys.argv[1] if len(sys.argv) > 1 else "sqlite"

def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")

def old(store, hits, now):
    clicks = [ClickIn(code=h.code, at=h.at, user_agent=h.user_agent, verdict=h.verdict) for h in hits]
    ev = [(ActivityEvent(id=f"click:{h.code}:{h.at!r}", at=h.at, phone=h.phone, kind="clicked",
                         properties={"campaign": h.campaign_id, "code": h.code}), h.phone) for h in hits if h.verdict == "click" and h.phone]
    store.record_hits(clicks, {TENANT: ev}, now=now)

def new(store, hits, now):
    store.record_link_hits(hits, now=now)

def main(url):
    now = time.time()
    load_audience(url, N, now, 1, N)
    cid = seed_frozen(url, N, now, 1)
    seed_outcomes(url, cid, N, 1)
    store = open_store(url)
    with store._tx() as tx:
        codes = [r[0] for r in tx.rows("SELECT code FROM short_links WHERE campaign_id = ?", (cid,))]
    r = random.Random(5)
    links = store.links(r.sample(codes, 30000))
    pool = list(links.values())
    bpid = store._conn.info.backend_pid if engine == "postgres" else None
    res = {}
    t = now + 3600
    for batch in (10, 30, 100):
        for rnd in range(3):
            for name, fn in (("old", old), ("new", new)) if rnd % 2 == 0 else (("new", new), ("old", old)):
                c0, b0 = time.process_time(), (cpu_of(bpid) if bpid else 0)
                w0 = time.perf_counter()
                k = 0
                for _ in range(max(20, 3000 // batch)):
                    hits = []
                    for _ in range(batch):
                        link = r.choice(pool)
                        t += 0.001
                        k += 1
                        hits.append(HitIn(code=link.code, at=t, user_agent="Mozilla", verdict="click",
                                          tenant=link.tenant, campaign_id=link.campaign_id,
                                          subscriber_id=link.subscriber_id, phone=link.phone, target=link.target,
                                          created_at=link.created_at, expires_at=link.expires_at))
                    fn(store, hits, t)
                res.setdefault((batch, name), []).append(((time.process_time() - c0) * 1e6 / k,
                                                          ((cpu_of(bpid) - b0) * 1e6 / k) if bpid else 0,
                                                          (time.perf_counter() - w0) * 1e6 / k))
    print(f"{engine} N={N} load {os.getloadavg()[0]:.1f}")
    for (batch, name), v in sorted(res.items()):
        print(f"batch {batch:4d} {name}: client CPU {statistics.median(x[0] for x in v):6.1f} us/click, "
              f"server {statistics.median(x[1] for x in v):6.1f} us, wall {statistics.median(x[2] for x in v):6.1f} us")
    store.close()

if __name__ == "__main__" and engine == "postgres":
    with throwaway_postgres() as url:
        main(url)
elif __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        main(f"sqlite:///{d}/c.db")
