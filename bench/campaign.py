"""`sluice bench campaign`: a campaign launched, its links clicked and its orders attributed, through a
real `sluice serve` hosting both layers (the path a shop sees), on SQLite or PostgreSQL.

1. Setup (not timed): N subscribers bulk-loaded into the campaign store (95 % with a confirmed
   opt-in, 5 % revoked; 5 % sent marketing an hour ago, so smart sending skips them), one segment
   holding all of them. Then `sluice serve` starts (the gateway and the campaign layer, one process).
2. ``launch_to_accepted_s``: ``POST /v1/campaigns`` + ``POST /v1/campaigns/{id}/launch`` over HTTP,
   until the launch answers, i.e. the gateway answered 202 to every batch: the audience resolved
   from the segment, consent and smart-send filtering, one ``send_at`` each, every text rendered
   (first name with a fallback, shop name) with its per-recipient short link, all of it frozen in the
   store, then NDJSON jobs with an Idempotency-Key each. The send is scheduled a day ahead, so the
   gateway's dispatch does not compete with the rest of the bench. The launch starts once `serve`
   is idle (its start-up tick, every score refreshed and every segment rebuilt, is not the
   launch's: ``startup_settle_s`` is the wait). ``launch_server_cpu_s``: the
   `serve` process's CPU time over the launch (both layers; /proc), ``launch_cpu_us_per_recipient``
   the same per recipient launched: the figures a loaded machine cannot inflate. On PostgreSQL,
   ``launch_pg_server_cpu_s`` / ``launch_pg_cpu_us_per_recipient``: the server's processes' CPU
   over the launch (the freeze's statements run there).
3. Outcomes (not timed): every recipient delivered (and priced), N/10 human clicks, N/50 orders and
   N/1000 opt-outs written straight into the store, then ANALYZE (a live store has its statistics).
4. ``redirects_per_s`` / ``redirect_p99_ms``: ``bench.redirect_load`` in its own process, keep-alive
   connections sending ``GET /{code}`` for random codes of the campaign's (delivered) messages against
   the running service, closed loop, ``--redirect-seconds`` per run (bounded); the medians over
   ``--runs``. ``redirect_server_cpu_us``: the server's CPU time per redirect (from /proc).
5. ``attribution_s``: ``GET /v1/campaigns/{id}/report?by=variant,hour`` over HTTP, timed, on the
   outcomes of 3 (before the redirect phase adds its clicks); the median over ``--runs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import click
import httpx

from bench import postgres as pgbench
from bench.audience import throwaway_postgres
from bench.machine import describe
from bench.output import out_option, save
from campaigns.core.links import cipher_for, code_length
from campaigns.store import open_store
from campaigns.store.schema import CLICKED_FILL
from gateway.testing.processes import start

TENANT = "shop"
GW_KEY, C_KEY, LINK_KEY = "bench-gateway-key-0123456789", "bench-campaigns-key-0123456789", "bench-link-key-0123456789"
TEMPLATE = "Hi {first_name|there}, {shop_name} spring sale: 20% off today only https://shop.example/sale?c=spring"
NAMES = ["Ana", "Bob", "Chloé", "Dan", "Eve", "Farid", "Grace", "Hugo", None]
SUB_COLS = ("tenant", "id", "phone", "first_name", "created_at", "consent", "consent_at", "attributes")
DAY = 86_400.0


# ---- setup ----------------------------------------------------------------------------------------


def phone(i: int) -> str:
    """A valid UK mobile number per subscriber (the gateway refuses numbers that cannot exist):
    +44 74{10+}: every number of those ranges is valid (+44 7911 4xxxxx is not: a 1M launch had
    half its recipients refused)."""
    return f"+4474{10 + i // 1_000_000}{i % 1_000_000:06d}"


def _subscribers(n: int, now: float, seed: int) -> Iterator[tuple]:
    r = random.Random(seed)
    for i in range(1, n + 1):
        consent = "revoked" if r.random() < 0.05 else "confirmed"
        yield (TENANT, i, phone(i), r.choice(NAMES), now - 400 * DAY, consent, now - 300 * DAY, "{}")


def _recent(n: int, now: float, seed: int) -> Iterator[tuple]:
    r = random.Random(seed + 1)
    for i in range(1, n + 1):
        if r.random() < 0.05:
            yield (TENANT, i, now - 3600.0)


def load_audience(url: str, n: int, now: float, seed: int, m: int) -> int:
    """N subscribers and one segment of the first M of them; the segment's id."""
    store = open_store(url)  # the schema
    seg = store.put_segment(TENANT, "spring", {"tag": "spring"}, now=now)
    store.close()
    members = ((TENANT, seg.id, i, now) for i in range(1, min(n, m) + 1))
    tags = ((TENANT, i, "spring") for i in range(1, min(n, m) + 1))
    stats = _recent(n, now, seed)
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO subscribers ({', '.join(SUB_COLS)}) VALUES ({', '.join('?' * len(SUB_COLS))})",
                         _subscribers(n, now, seed))  # fmt: skip
        conn.executemany("INSERT INTO segment_members (tenant, segment_id, subscriber_id, since) VALUES (?, ?, ?, ?)", members)
        conn.executemany("INSERT INTO subscriber_tags (tenant, subscriber_id, tag) VALUES (?, ?, ?)", tags)
        conn.executemany("INSERT INTO subscriber_stats (tenant, subscriber_id, last_message_at) VALUES (?, ?, ?)", stats)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as conn, conn.cursor() as cur:
            for table, cols, rows in (("subscribers", SUB_COLS, _subscribers(n, now, seed)),
                                      ("segment_members", ("tenant", "segment_id", "subscriber_id", "since"), members),
                                      ("subscriber_tags", ("tenant", "subscriber_id", "tag"), tags),
                                      ("subscriber_stats", ("tenant", "subscriber_id", "last_message_at"), stats)):  # fmt: skip
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            cur.execute(f"SELECT setval(pg_get_serial_sequence('subscribers', 'id'), {n})")
            conn.commit()
            conn.autocommit = True
            cur.execute("VACUUM ANALYZE")
    return seg.id


def write_config(tmp: Path, store_url: str, workers: int | str = 0, short_port: bool = True,
                 freeze_chunk: int | None = None, post_window: int | None = None, stream_chunk: int | None = None,
                 stream_window: int | None = None) -> Path:
    path = tmp / "sluice.toml"
    path.write_text(f"""
[api]
host = "127.0.0.1"
ingest_workers = {json.dumps(workers)}
[[api.tenants]]
name = "{TENANT}"
key_env = "BENCH_GW_KEY"
senders = ["SHOP"]
requests_per_second = 100000.0
burst = 100000
[store]
url = "sqlite:///{tmp / 'gateway.db'}"
synchronous = "NORMAL"
[[core.carriers]]
name = "alpha"
price_per_segment = 4
[[core.routes]]
prefix = ""
carriers = ["alpha"]
[[carriers.http]]
name = "alpha"
url = "http://127.0.0.1:9/never-sent-to"

[campaigns]
store_url = "{store_url}"
port = 0
sync_interval = 5.0
{"short_link_port = 0" if short_port else ""}
{f"launch_freeze_chunk = {freeze_chunk}" if freeze_chunk else ""}
{f"launch_post_window = {post_window}" if post_window else ""}
{f"launch_stream_chunk = {stream_chunk}" if stream_chunk is not None else ""}
{f"launch_stream_window = {stream_window}" if stream_window is not None else ""}
[[campaigns.tenants]]
name = "{TENANT}"
key_env = "BENCH_C_KEY"
gateway_key_env = "BENCH_GW_KEY"
short_domain = "sl.ui"
link_key_env = "BENCH_LINK_KEY"
""")
    return path


def seed_frozen(url: str, n: int, now: float, seed: int) -> int:
    """A launched campaign of all N subscribers written straight into the store, as ``freeze`` and the
    gateway's answers leave it (recipients submitted, batches with jobs, one short link each, from a
    range of link numbers as a launch now gives them: a ``link_ranges`` row and the codes in the
    texts, no ``short_links`` row): for the redirect and attribution phases when
    ``--launch-recipients`` launches fewer. Its id."""
    store = open_store(url)
    camp = store.put_campaign(TENANT, "seeded", {"sender": "SHOP", "template": TEMPLATE}, now=now)
    for status in ("launching", "launched"):
        store.set_campaign_status(TENANT, camp.id, status, now=now)
    length = code_length("sl.ui")
    start = store.link_range_end(TENANT, length)
    store.close()
    size = 5000
    slots = (n // size + 1) * size
    cipher = cipher_for(LINK_KEY.encode(), length)
    block = cipher.encode_block(start, n).decode("ascii")  # subscriber i in slot i - 1
    target = "https://shop.example/sale?c=spring"
    send_at = now + DAY
    recipients = [(TENANT, camp.id, i, phone(i), None, send_at, "UTC",
                   f"Hi, spring sale https://sl.ui/{block[(i - 1) * length:i * length]}", (i - 1) // size, (i - 1) % size,
                   "submitted", now) for i in range(1, n + 1)]  # fmt: skip
    batches = [(TENANT, camp.id, b, send_at, min(size, n - b * size), f"job-{b}", min(size, n - b * size))
               for b in range(-(-n // size))]  # fmt: skip
    ranges = [(TENANT, camp.id, length, start, slots, 1, size, json.dumps([target]), now, "[]")]
    tables = (("campaign_recipients", ("tenant", "campaign_id", "subscriber_id", "phone", "variant", "send_at", "tz",
                                       "text", "batch", "idx", "state", "state_at"), recipients),
              ("campaign_batches", ("tenant", "campaign_id", "batch", "send_at", "size", "job_id", "accepted"), batches),
              ("link_ranges", ("tenant", "campaign_id", "length", "start", "count", "stride", "batch_size", "targets",
                               "created_at", "holes"), ranges))  # fmt: skip
    with _conn(url) as (conn, ph):
        cur = conn.cursor()
        for table, cols, rows in tables:
            if ph == "?":  # in slices, each its own transaction: the running service shares the file
                for i in range(0, len(rows), 50_000):
                    cur.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES "
                                    f"({', '.join('?' * len(cols))})", rows[i:i + 50_000])  # fmt: skip
                    conn.commit()
            else:
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        conn.commit()
    return camp.id


# ---- the outcomes the report attributes (written straight into the store, not timed) --------------


def seed_outcomes(url: str, campaign_id: int, n: int, seed: int) -> dict[str, int]:
    """Every recipient delivered and priced (its cost on its row and in message_costs, as the state
    webhook's ``record_cost`` leaves them); N/10 human clicks, N/50 orders, N/1000 opt-outs."""
    r = random.Random(seed + 2)
    with _conn(url) as (conn, ph):
        cur = conn.cursor()
        cur.execute(f"SELECT subscriber_id, send_at FROM campaign_recipients WHERE tenant = {ph} AND campaign_id = {ph} "
                    f"AND batch >= 0", (TENANT, campaign_id))  # fmt: skip
        sent = cur.fetchall()
        for lo in range(0, n + 1, 50_000):  # in slices, each its own transaction (the service shares the store)
            rng = (TENANT, campaign_id, lo, lo + 50_000)
            cur.execute(f"UPDATE campaign_recipients SET state = 'delivered', state_at = send_at + 5, cost = 4, message_id = "
                        f"'m{campaign_id}-' || CAST(subscriber_id AS TEXT) WHERE tenant = {ph} AND campaign_id = {ph} "
                        f"AND batch >= 0 AND subscriber_id >= {ph} AND subscriber_id < {ph}", rng)  # fmt: skip
            cur.execute(f"INSERT INTO message_costs (tenant, message_id, carrier, segments, cost) SELECT tenant, "
                        f"message_id, 'alpha', 1, 4 FROM campaign_recipients WHERE tenant = {ph} AND campaign_id = {ph} "
                        f"AND batch >= 0 AND subscriber_id >= {ph} AND subscriber_id < {ph}", rng)  # fmt: skip
            conn.commit()
        codes = _campaign_codes(cur, ph, campaign_id)
        at = {s: a for s, a in sent}
        clicks = [(c, at[s] + 60 + r.random() * 2 * DAY, "Mozilla/5.0", "click", 0, 1)
                  for c, s in r.sample(codes, min(len(codes), n // 10)) if s in at]  # fmt: skip
        # A range code's short_links row is written by its first hit (``record_hits``): so here too.
        cur.execute(f"SELECT targets FROM link_ranges WHERE tenant = {ph} AND campaign_id = {ph}", (TENANT, campaign_id))
        rng = cur.fetchone()
        if rng is not None:
            target = json.loads(rng[0])[0]
            sid_of = dict(codes)
            cur.executemany(f"INSERT INTO short_links (code, tenant, campaign_id, subscriber_id, target, created_at) "
                            f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}) ON CONFLICT DO NOTHING",
                            [(c, TENANT, campaign_id, sid_of[c], target, a) for c, a, *_ in clicks])  # fmt: skip
        cur.executemany(f"INSERT INTO clicks (code, at, user_agent, verdict, is_bot, is_unique) VALUES "
                        f"({ph}, {ph}, {ph}, {ph}, {ph}, {ph})", clicks)  # fmt: skip
        cur.execute(CLICKED_FILL)  # their recipients marked, as the click's own write marks them
        buyers = r.sample(sent, min(len(sent), n // 50))
        orders = [(TENANT, f"o{k}", s, r.randint(500, 20000), "USD", "paid", a + r.random() * 6 * DAY,
                   a + 6 * DAY) for k, (s, a) in enumerate(buyers)]  # fmt: skip
        cur.executemany(f"INSERT INTO orders (tenant, order_id, subscriber_id, total, currency, payment_status, "
                        f"created_at, updated_at) VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph})", orders)  # fmt: skip
        outs = [(TENANT, s, phone(s), "opt_out", "keyword", a + r.random() * 4 * DAY)
                for s, a in r.sample(sent, min(len(sent), max(1, n // 1000)))]  # fmt: skip
        cur.executemany(f"INSERT INTO consent_ledger (tenant, subscriber_id, phone, action, source, at) VALUES "
                        f"({ph}, {ph}, {ph}, {ph}, {ph}, {ph})", outs)  # fmt: skip
        conn.commit()
        cur.execute("ANALYZE")  # as a live store would have its statistics (autovacuum lags a bulk load)
        conn.commit()
    return {"deliveries": len(sent), "clicks": len(clicks), "orders": len(orders), "opt_outs": len(outs)}


@contextlib.contextmanager
def _conn(url: str) -> Iterator[tuple[Any, str]]:
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60)
        try:
            yield conn, "?"
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            yield conn, "%s"


_CODE = re.compile(r"https://[^/\s]+/([0-9A-Za-z]{5,8})")


def _campaign_codes(cur: Any, ph: str, campaign_id: int, limit: int | None = None) -> list[tuple[str, int]]:
    """(code, subscriber) of the campaign's links: the codes its recipients' texts carry when it has
    a range (range codes have no row until clicked: reading the rows would give only the clicked
    ones), else its ``short_links`` rows (HMAC codes)."""
    lim = f" LIMIT {int(limit)}" if limit is not None else ""
    cur.execute(f"SELECT 1 FROM link_ranges WHERE tenant = {ph} AND campaign_id = {ph}", (TENANT, campaign_id))
    if cur.fetchone() is None:
        cur.execute(f"SELECT code, subscriber_id FROM short_links WHERE tenant = {ph} AND campaign_id = {ph}{lim}",
                    (TENANT, campaign_id))  # fmt: skip
        rows = [(c, int(s)) for c, s in cur.fetchall()]
        if rows:
            return rows
    cur.execute(f"SELECT text, subscriber_id FROM campaign_recipients WHERE tenant = {ph} AND campaign_id = {ph} AND "
                f"batch >= 0{lim}", (TENANT, campaign_id))  # fmt: skip
    return [(m, int(s)) for t, s in cur.fetchall() for m in _CODE.findall(t)]


def codes_of(url: str, campaign_id: int, limit: int) -> list[str]:
    with _conn(url) as (conn, ph):
        return [c for c, _s in _campaign_codes(conn.cursor(), ph, campaign_id, limit)]


# ---- the measurement ------------------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants_cpu_s(pid: int) -> float:
    """The CPU time so far of ``pid``'s live descendants (the gateway's check workers, the webhook
    and membership processes), from /proc: the work `serve` hands to other processes."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    total = 0.0
    for p in found:
        try:
            total += _cpu_s(p)
        except (OSError, ValueError, IndexError):
            pass
    return total


@contextlib.contextmanager
def _pg_backend(url: str) -> Iterator[int | None]:
    """A backend pid of the PostgreSQL server at ``url``, its connection held open meanwhile (the
    server's processes' CPU is read through it); None on SQLite."""
    if url.startswith("sqlite:"):
        yield None
        return
    import psycopg

    with psycopg.connect(url) as conn:
        yield int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


async def _settled(pid: int, *, window: float = 0.5, idle: float = 0.1, windows: int = 4, deadline: float = 300.0) -> float:
    """Wait (bounded) until `serve` is idle: its start-up work (the audience's first tick refreshes
    every score and rebuilds every segment of the N subscribers: seconds at 1M) is not the launch's,
    and a launch started under it waited for it and counted its CPU. Idle: less than ``idle`` of a
    core used by `serve` and its processes over each of ``windows`` windows of ``window`` seconds in
    a row (one quiet window was not enough at 1M under load: a starved thread looks idle, and the
    tick's next statement came after it). The seconds waited."""
    t0, quiet = time.perf_counter(), 0
    while quiet < windows and time.perf_counter() - t0 < deadline:
        c0 = _cpu_s(pid) + _descendants_cpu_s(pid)
        await anyio.sleep(window)
        quiet = quiet + 1 if _cpu_s(pid) + _descendants_cpu_s(pid) - c0 < idle * window else 0
    return time.perf_counter() - t0


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _redirects(port: int, codes_file: Path, seconds: float, concurrency: int, server_pid: int) -> dict[str, Any]:
    cpu0, load0 = _cpu_s(server_pid), _children_cpu_s()
    cmd = [sys.executable, "-m", "bench.redirect_load", "--port", str(port), "--codes", str(codes_file),
           "--seconds", str(seconds), "--concurrency", str(concurrency)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # The server's CPU per redirect: what a loaded machine cannot hide (capacity = 1e6 / it per core).
    res["server_cpu_us"] = (_cpu_s(server_pid) - cpu0) * 1e6 / max(1, res["requests"])
    # The load generator's own CPU per request: it must stay well under the server's (else it is the limit).
    res["load_cpu_us"] = (_children_cpu_s() - load0) * 1e6 / max(1, res["requests"])
    return res


async def _measure(tmp: Path, store_url: str, seg: int, n: int, big: bool, runs: int, seconds: float,
                   concurrency: int, workers: int | str, seed: int, via: str, freeze_chunk: int | None = None,
                   post_window: int | None = None, stream_chunk: int | None = None,
                   stream_window: int | None = None) -> dict[str, Any]:  # fmt: skip
    env = {"BENCH_GW_KEY": GW_KEY, "BENCH_C_KEY": C_KEY, "BENCH_LINK_KEY": LINK_KEY,
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # fmt: skip
    config = write_config(tmp, store_url, workers, short_port=via == "short", freeze_chunk=freeze_chunk,
                          post_window=post_window, stream_chunk=stream_chunk, stream_window=stream_window)  # fmt: skip
    cmd = [sys.executable, "-m", "campaigns.cli", "serve", "--config", str(config), "--port", "0"]
    out: dict[str, Any] = {"redirects_via": via}
    async with start(cmd, name="sluice", env=env, timeout=120) as serve, contextlib.AsyncExitStack() as astack:
        stack = contextlib.ExitStack()
        astack.callback(stack.close)
        cport = int((await serve.line(120))["campaigns"])
        rport = cport
        if via == "short":  # the short domains' own listener (campaigns/service/short_http.py)
            while "short_links" not in (ready := await serve.line(120)):
                pass
            rport = int(ready["short_links"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cport}", timeout=None,
                                     headers={"authorization": f"Bearer {C_KEY}"}) as c:  # fmt: skip
            definition = {"sender": "SHOP", "template": TEMPLATE, "values": {"shop_name": "CommerceCo"},
                          "audience": {"include": [seg]}, "schedule": {"kind": "at", "at": time.time() + DAY},
                          "batch_size": 5000}  # fmt: skip
            out["startup_settle_s"] = await _settled(serve.pid)
            pg = stack.enter_context(_pg_backend(store_url))
            pg0 = pgbench.server_cpu(pg) if pg else {}
            t0, cpu0, kids0 = time.perf_counter(), _cpu_s(serve.pid), _descendants_cpu_s(serve.pid)
            r = await c.post("/v1/campaigns", json={"name": "spring", "definition": definition})
            r.raise_for_status()
            cid = r.json()["id"]
            r = await c.post(f"/v1/campaigns/{cid}/launch")
            out["launch_to_accepted_s"] = time.perf_counter() - t0
            out["launch_server_cpu_s"] = _cpu_s(serve.pid) - cpu0  # both layers: what a loaded machine cannot hide
            out["launch_workers_cpu_s"] = _descendants_cpu_s(serve.pid) - kids0  # its check workers (api.ingest_workers)
            if pg:  # the server's processes (a backend that ended in between is not counted)
                out["launch_pg_server_cpu_s"] = pgbench.cpu_spent(pg0, pgbench.server_cpu(pg))
            r.raise_for_status()
            launched = r.json()
            if launched["status"] != "launched" or launched["accepted"] != launched["recipients"]:
                raise click.ClickException(f"launch: {launched}")
            out.update(recipients=launched["recipients"], accepted=launched["accepted"], batches=launched["batches"])
            out["launch_cpu_us_per_recipient"] = out["launch_server_cpu_s"] * 1e6 / max(1, launched["recipients"])
            out["launch_workers_cpu_us_per_recipient"] = out["launch_workers_cpu_s"] * 1e6 / max(1, launched["recipients"])
            if pg:
                out["launch_pg_cpu_us_per_recipient"] = out["launch_pg_server_cpu_s"] * 1e6 / max(1, launched["recipients"])
            if big:  # the redirect and attribution phases on a campaign of all N, written straight in
                cid = await anyio.to_thread.run_sync(seed_frozen, store_url, n, time.time(), seed)
            out["outcomes"] = await anyio.to_thread.run_sync(seed_outcomes, store_url, cid, n, seed)
            # Attribution first, on exactly the seeded outcomes (the 1M deliveries, N/10 clicks,
            # N/50 orders): the redirect phase below stores its own clicks, tens of thousands more.
            times, cpus, rows = [], [], None
            for _ in range(runs):
                wall, cpu, rows = await _report(c, cid, serve.pid)
                times.append(wall)
                cpus.append(cpu)
            out["attribution_runs_s"] = times
            out["attribution_s"] = statistics.median(times)
            out["attribution_server_cpu_s"] = statistics.median(cpus)
            out["report_totals"] = {k: sum(x[k] for x in rows or []) for k in
                                    ("sent", "delivered", "unique_clicks", "conversions", "revenue", "cost", "opt_outs")}  # fmt: skip
            codes_file = tmp / "codes.txt"
            codes_file.write_text("\n".join(codes_of(store_url, cid, 100_000)) + "\n")
            loads = [await anyio.to_thread.run_sync(_redirects, rport, codes_file, seconds, concurrency, serve.pid)
                     for _ in range(runs)]  # fmt: skip
            out["redirect_runs"] = loads
            out["redirects_per_s"] = statistics.median(x["per_s"] for x in loads)
            out["redirect_p99_ms"] = statistics.median(x["p99_ms"] for x in loads)
            out["redirect_p50_ms"] = statistics.median(x["p50_ms"] for x in loads)
            out["redirect_errors"] = sum(x["errors"] for x in loads)
            out["redirect_server_cpu_us"] = statistics.median(x["server_cpu_us"] for x in loads)
            out["redirect_load_cpu_us"] = statistics.median(x["load_cpu_us"] for x in loads)
            # The report again with the redirect phase's clicks stored: once serve has worked off what
            # the redirect phase left it (its CPU meanwhile: work the old order's report competed with),
            # then a second time.
            cpu0 = _cpu_s(serve.pid) + _descendants_cpu_s(serve.pid)
            out["after_redirects_settle_s"] = await _settled(serve.pid)
            out["after_redirects_settle_cpu_s"] = _cpu_s(serve.pid) + _descendants_cpu_s(serve.pid) - cpu0
            out["attribution_after_redirects_s"], out["attribution_after_redirects_cpu_s"], _ = await _report(c, cid, serve.pid)
            out["attribution_settled_s"], out["attribution_settled_cpu_s"], _ = await _report(c, cid, serve.pid)
            out["clicks_after_redirects"] = await anyio.to_thread.run_sync(_click_rows, store_url)
    return out


async def _report(c: httpx.AsyncClient, cid: int, pid: int) -> tuple[float, float, list]:
    """One ``GET /v1/campaigns/{id}/report?by=variant,hour``: its wall time, serve's CPU meanwhile, its rows."""
    t0, cpu0 = time.perf_counter(), _cpu_s(pid) + _descendants_cpu_s(pid)
    r = await c.get(f"/v1/campaigns/{cid}/report", params={"by": "variant,hour"})
    wall, cpu = time.perf_counter() - t0, _cpu_s(pid) + _descendants_cpu_s(pid) - cpu0
    r.raise_for_status()
    return wall, cpu, r.json()["rows"]


def _click_rows(url: str) -> dict[str, int]:
    """The clicks table after the redirect phase: rows, human clicks, unique clicks."""
    with _conn(url) as (conn, _ph):
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*), SUM(CASE WHEN verdict = 'click' THEN 1 ELSE 0 END), SUM(is_unique) FROM clicks")
        n, human, unique = cur.fetchone()
        return {"rows": int(n), "human": int(human or 0), "unique": int(unique or 0)}


def run(engine: str, n: int, launch_n: int | None, runs: int, seconds: float, concurrency: int, workers: int | str, seed: int,
        pg_url: str | None, via: str = "short", freeze_chunk: int | None = None, post_window: int | None = None,
        stream_chunk: int | None = None, stream_window: int | None = None) -> dict:  # fmt: skip
    now = time.time()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-bench-campaign-")))
        if engine == "postgres":
            url = pg_url or stack.enter_context(throwaway_postgres())
        else:
            url = f"sqlite:///{tmp / 'campaigns.db'}"
        t0 = time.perf_counter()
        seg = load_audience(url, n, now, seed, launch_n or n)
        setup_s = time.perf_counter() - t0
        big = launch_n is not None and launch_n < n
        out = anyio.run(_measure, tmp, url, seg, n, big, runs, seconds, concurrency, workers, seed, via, freeze_chunk,
                        post_window, stream_chunk, stream_window)  # fmt: skip
    return {"scenario": "campaign", "engine": engine, "subscribers": n, "launched": launch_n or n, "setup_s": setup_s, **out,
            "load": os.getloadavg(), "machine": describe()}  # fmt: skip


TARGETS = {"launch_to_accepted_s": ("<=", 15.0), "redirects_per_s": (">=", 5000.0), "redirect_p99_ms": ("<=", 5.0),
           "attribution_s": ("<=", 10.0)}  # fmt: skip


@click.command("campaign")
@click.option("--recipients", "n", default=100_000, show_default=True, help="Subscribers in the audience.")
@click.option("--launch-recipients", "launch_n", type=int, default=None,
              help="Launch only the first M (default: all); redirects and attribution then run on a campaign of "
                   "all N written straight into the store.")
@click.option("--engine", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--pg-url", default=None, help="PostgreSQL to use (an empty database); default: start a throwaway one.")
@click.option("--runs", default=3, show_default=True, help="Redirect loads and reports; each figure is the median.")
@click.option("--redirect-seconds", default=5.0, show_default=True, help="Length of one redirect load (at most 120).")
@click.option("--concurrency", default=8, show_default=True, help="Keep-alive connections of the load generator.")
@click.option("--ingest-workers", type=click.Choice(["auto", *map(str, range(9))]), default="0", show_default=True,
              help="The gateway's api.ingest_workers (serve's default is auto: one per CPU, started with serve, "
                   "before the launch's clock; 0: checked on serve's event loop).")
@click.option("--redirects-via", "via", type=click.Choice(["short", "api"]), default="short", show_default=True,
              help="Redirects on the short-link listener (short_link_port) or on the API's port (/{code} there).")
@click.option("--freeze-chunk", type=click.IntRange(min=1), default=None,
              help="serve's campaigns.launch_freeze_chunk (default: its own, 20,000; at least the audience: one transaction).")
@click.option("--post-window", type=click.IntRange(min=1, max=8), default=None,
              help="serve's campaigns.launch_post_window (default: its own, 1 batch in flight).")
@click.option("--stream-chunk", type=click.IntRange(min=0), default=None,
              help="serve's campaigns.launch_stream_chunk (default: its own, 20,000; 0: no streamed freeze).")
@click.option("--stream-window", type=click.IntRange(min=1, max=2), default=None,
              help="serve's campaigns.launch_stream_window (default: its own, 2 chunks at once on PostgreSQL, 1 on SQLite).")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@out_option
def bench_campaign(n: int, launch_n: int | None, engine: str, pg_url: str | None, runs: int, redirect_seconds: float,
                   concurrency: int, ingest_workers: str, via: str, freeze_chunk: int | None, post_window: int | None,
                   stream_chunk: int | None, stream_window: int | None, seed: int, json_path: str | None,
                   out_dir: str | None) -> None:  # fmt: skip
    """Launch to the gateway's 202s, redirects per second and their p99, attribution of orders."""
    if n < 10 or runs < 1 or not 0 < redirect_seconds <= 120 or concurrency < 1:
        raise click.BadParameter("--recipients >= 10, --runs >= 1, 0 < --redirect-seconds <= 120, --concurrency >= 1")
    workers: int | str = ingest_workers if ingest_workers == "auto" else int(ingest_workers)
    r = run(engine, n, launch_n, runs, redirect_seconds, concurrency, workers, seed, pg_url, via, freeze_chunk,
            post_window, stream_chunk, stream_window)
    click.echo(f"sluice bench campaign: {engine}, {n:,} subscribers, {r['recipients']:,} recipients, "
               f"{r['batches']} batches, load {r['load'][0]:.2f}")  # fmt: skip
    for key, (op, target) in TARGETS.items():
        ok = r[key] <= target if op == "<=" else r[key] >= target
        click.echo(f"  {key:<24} {r[key]:>12,.3f}   target {op} {target:g}  {'ok' if ok else 'MISSED'}")
    click.echo(f"  server CPU for the launch {r['launch_server_cpu_s']:.2f} s ({r['launch_cpu_us_per_recipient']:.0f} us a recipient); "
               f"its child processes {r['launch_workers_cpu_s']:.2f} s ({r['launch_workers_cpu_us_per_recipient']:.0f} us)"
               + (f"; PostgreSQL's processes {r['launch_pg_server_cpu_s']:.2f} s ({r['launch_pg_cpu_us_per_recipient']:.0f} us)"
                  if "launch_pg_server_cpu_s" in r else ""))  # fmt: skip
    click.echo(f"  server CPU per redirect {r['redirect_server_cpu_us']:.0f} us (p50 {r['redirect_p50_ms']:.2f} ms; "
               f"via {r['redirects_via']}); load generator {r['redirect_load_cpu_us']:.0f} us")
    click.echo(f"  outcomes {r['outcomes']}  report totals {r['report_totals']}")
    click.echo(f"  report: seeded {r['attribution_s']:.2f} s (serve CPU {r['attribution_server_cpu_s']:.2f} s); after the "
               f"redirects serve busy {r['after_redirects_settle_s']:.1f} s (CPU {r['after_redirects_settle_cpu_s']:.2f} s), then "
               f"{r['attribution_after_redirects_s']:.2f} s (CPU {r['attribution_after_redirects_cpu_s']:.2f} s) and "
               f"{r['attribution_settled_s']:.2f} s (CPU {r['attribution_settled_cpu_s']:.2f} s); clicks {r['clicks_after_redirects']}")
    save(r, json_path, out_dir)
