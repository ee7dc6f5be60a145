"""The report's unique clicks (issue 18) equal a brute-force count over random clicks, on both engines.

The report counts a campaign's unique clicks per (variant, 15-minute slice) from the recipients' own
rows (``campaign_recipients.clicked``, marked by each click's write), not by joining the stored clicks
to their recipients. Here random recipients (variants, slices, batches accepted or not, held, states
moved forward, rejected), several links each plus links of no recipient and a flow's, and random hits
(humans and bots, repeated, interleaved with the state changes) written through both of the store's
click writes (``record_link_hits``: the redirect's flush; ``record_clicks``); then every group's sent,
delivered and unique clicks, and each campaign's unique / total / ignored click counts, are compared
with a count over the model. A store made before the ``clicked`` column gets it, filled, when opened."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.store import Store, open_store
from campaigns.store.campaign_rows import ClickIn, HitIn, LinkRow, PlannedRecipient
from campaigns.store.report_sql import Scope

T0 = 1_767_000_000.0
SLICE = 900.0
_tenants = itertools.count()


@st.composite
def worlds(draw: st.DrawFn) -> dict:
    recipients = {}  # (campaign, subscriber) -> (variant, slice, batch, final state)
    for cid in (1, 2):
        for sid in range(1, draw(st.integers(1, 7)) + 1):
            recipients[(cid, sid)] = (draw(st.sampled_from(["a", "b", None])), draw(st.integers(0, 3)),
                                      draw(st.sampled_from([0, 0, 0, 1, -1])),
                                      draw(st.sampled_from(["planned", "sent", "delivered", "failed", "rejected"])))  # fmt: skip
    links = {}  # code -> (campaign, subscriber): 0-2 per recipient, one of nobody, one of a flow
    for (cid, sid) in recipients:
        for k in range(draw(st.integers(0, 2))):
            links[f"c{cid}s{sid}k{k}"] = (cid, sid)
    links["c1s99k0"] = (1, 99)  # a link whose subscriber is not a recipient
    links["flow0"] = (0, 1)  # a flow's link (campaign 0)
    codes = sorted(links) + ["nolink"]  # a hit on a code with no link
    hits = draw(st.lists(st.tuples(st.sampled_from(codes), st.integers(0, 500), st.sampled_from(["click", "click", "bot"]),
                                   st.sampled_from(["flush", "clicks"])), max_size=30))  # fmt: skip
    return {"recipients": recipients, "links": links, "hits": hits, "order": draw(st.randoms(use_true_random=False))}


def _write(store: Store, tenant: str, w: dict) -> dict[str, str]:
    """The world through the store's own writes; the codes as stored (prefixed: one store, many worlds)."""
    code = {c: f"{tenant}-{c}" for c in [*w["links"], "nolink"]}
    by_campaign: dict[int, list] = {1: [], 2: []}
    for (cid, sid), (variant, sl, batch, _state) in sorted(w["recipients"].items()):
        by_campaign[cid].append(PlannedRecipient(subscriber_id=sid, phone=f"+4479111{sid:05d}", variant=variant,
                                                 send_at=T0 + sl * SLICE + 1.0, tz="UTC", text="t", batch=batch,
                                                 idx=sid))  # fmt: skip
    for cid, rows in by_campaign.items():
        links = [LinkRow(code=code[c], tenant=tenant, campaign_id=cid, subscriber_id=s, target="https://x", created_at=T0)
                 for c, (lc, s) in sorted(w["links"].items()) if lc == cid]  # fmt: skip
        store.freeze_audience(tenant, cid, rows, links, now=T0)
        rejected = [sid for (c, sid), (_v, _s, b, st_) in w["recipients"].items() if c == cid and b == 0 and st_ == "rejected"]
        store.batch_submitted(tenant, cid, 0, job_id=f"{tenant}-job{cid}", accepted=len(rows), rejected=rejected, now=T0)
    store.record_flow_message(tenant, id="m1", flow_id="welcome", step="1", subscriber_id=1, sent_at=T0,
                              link_codes=[code["flow0"]])  # fmt: skip
    ops: list[tuple] = [("state", k, v) for k, v in w["recipients"].items() if v[2] == 0 and v[3] in ("sent", "delivered", "failed")]
    ops += [("hit", h) for h in w["hits"]]
    w["order"].shuffle(ops)
    for op in ops:
        if op[0] == "state":
            (cid, sid), (*_, state) = op[1], op[2]
            store.recipient_state(tenant, f"{tenant}-job{cid}", sid, state=state, message_id=f"gw{cid}-{sid}", at=T0 + 9)
            continue
        c, t, verdict, path = op[1]
        at = T0 + 60 + t
        if path == "clicks" or c == "nolink":
            store.record_clicks([ClickIn(code=code[c], at=at, user_agent="M", verdict=verdict)])
        else:
            cid, sid = w["links"][c]
            phone = f"+4479111{sid:05d}" if (cid, sid) in w["recipients"] else None
            store.record_link_hits([HitIn(code=code[c], at=at, user_agent="M", verdict=verdict, tenant=tenant, campaign_id=cid,
                                          subscriber_id=sid, phone=phone, target="https://x", created_at=T0,
                                          expires_at=None)], now=at)  # fmt: skip
    return code


def _expected(w: dict) -> tuple[dict[tuple, tuple[int, int, int]], dict[int, tuple[int, int, int]]]:
    """Brute force: per (campaign, variant, slice) the sent, delivered and clicked recipients; per
    campaign its codes with a human click, its human clicks, its ignored hits."""
    clicked = {w["links"][c] for c, _t, v, _p in w["hits"] if v == "click" and c in w["links"]}
    groups: dict[tuple, list[int]] = {}
    for (cid, sid), (variant, sl, batch, state) in w["recipients"].items():
        if batch == -1 or state == "rejected" and batch == 0 or batch == 1:  # held, rejected, never accepted
            continue
        g = groups.setdefault((str(cid), variant, None, int((T0 + sl * SLICE + 1.0) // SLICE)), [0, 0, 0])
        g[0] += 1
        g[1] += state == "delivered"
        g[2] += (cid, sid) in clicked
    counts = {}
    for cid in (1, 2):
        mine = [(c, v) for c, _t, v, _p in w["hits"] if c in w["links"] and w["links"][c][0] == cid]
        counts[cid] = (len({c for c, v in mine if v == "click"}), sum(v == "click" for _c, v in mine),
                       sum(v == "bot" for _c, v in mine))  # fmt: skip
    return {k: tuple(v) for k, v in groups.items()}, counts  # type: ignore[misc]


def _check(store: Store, tenant: str, w: dict) -> None:
    groups, counts = _expected(w)
    for scope in (Scope(), Scope(campaign=1), Scope(campaign=2)):
        got = {(g.campaign, g.variant, g.step, g.slice): (g.sent, g.delivered, g.clicked)
               for g in store.report_facts(tenant, scope).groups if g.campaign is not None}  # fmt: skip
        want = {k: v for k, v in groups.items() if scope.campaign is None or k[0] == str(scope.campaign)}
        assert got == want
    for cid, (unique, total, ignored) in counts.items():
        c = store.click_counts(tenant, cid)
        assert (c.unique, c.total, c.ignored) == (unique, total, ignored)


@pytest.fixture
def one_store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=worlds())
def test_report_clicks_equal_a_brute_force_count(one_store: Store, w: dict) -> None:
    tenant = f"t{next(_tenants)}"
    _write(one_store, tenant, w)
    _check(one_store, tenant, w)


def test_a_store_made_before_the_clicked_column_gets_it_filled(store_url: str) -> None:
    """Clicks stored before the column existed are counted once the store is opened again."""
    w = {"recipients": {(1, 1): ("a", 0, 0, "delivered"), (1, 2): ("a", 0, 0, "sent"), (2, 1): ("b", 1, 0, "sent")},
         "links": {"c1s1k0": (1, 1), "c1s1k1": (1, 1), "c1s2k0": (1, 2), "c2s1k0": (2, 1), "flow0": (0, 1)},
         "hits": [("c1s1k0", 5, "click", "flush"), ("c1s1k1", 6, "click", "clicks"), ("c1s2k0", 7, "bot", "flush"),
                  ("c2s1k0", 8, "click", "clicks"), ("flow0", 9, "click", "flush")],
         "order": random.Random(1)}  # fmt: skip
    store = open_store(store_url)
    _write(store, "old", w)
    with store._tx() as tx:  # type: ignore[attr-defined]  # as a store made before the column was
        tx.run("DROP INDEX IF EXISTS campaign_recipients_report_clicked")
        tx.run("ALTER TABLE campaign_recipients DROP COLUMN clicked")
    store.close()
    store = open_store(store_url)
    try:
        _check(store, "old", w)
        assert sum(g.clicked for g in store.report_facts("old", Scope()).groups if g.campaign is not None) == 2
    finally:
        store.close()
