"""The redirect's click flush (``record_link_hits``) writes what the events path wrote.

Before, a flush stored the hits (``record_hits``) and sent each human click's ``clicked`` activity
through ``apply_events`` (an id claim, the subscriber looked up by number, the activity, the
aggregates). Now the activity and the aggregates are derived from the hit and the link it resolved
to, one statement per table. The oracle is the old path: two stores given the same history, one
flushed the old way and one the new, hold the same rows in every table a reader of clicks reads
(``clicks``, ``short_links``, ``activities``, ``subscriber_stats``, ``flow_inputs``, ``subscribers``, and
the recipients' ``clicked`` mark the report counts),
whatever the batches (range codes, ``short_links`` rows, links without a recipient, bots, repeats,
codes clicked before), on both engines. ``processed_events`` is the one table that differs: the
new path claims no id for a click's activity (it is written once, with its click row)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.events import ActivityEvent, Profile
from campaigns.store import Store, open_store
from campaigns.store.campaign_rows import ClickIn, HitIn, LinkRow
from fake_gateway import FakeGateway
from test_launch import T0, launcher, subscriber

CODE = re.compile(r"https://sl\.ui/([0-9A-Za-z]+)")
TABLES = {"clicks": "code, at, user_agent, verdict, is_bot, is_unique",
          "short_links": "code, tenant, campaign_id, subscriber_id, target, created_at, expires_at",
          "activities": "tenant, subscriber_id, kind, at, properties",
          "subscriber_stats": "*", "flow_inputs": "tenant, subscriber_id, event", "subscribers": "id, phone",
          "campaign_recipients": "tenant, campaign_id, subscriber_id, clicked"}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def twins(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[Store, Store]]:  # type: ignore[no-untyped-def]
    """Two empty stores of one engine."""
    if request.param == "sqlite":
        stores = (open_store(f"sqlite:///{tmp_path / 'a.db'}"), open_store(f"sqlite:///{tmp_path / 'b.db'}"))
        yield stores
        for s in stores:
            s.close()
        return
    import psycopg

    server = request.getfixturevalue("pg_server")
    schemas = [f"t_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    with psycopg.connect(server.url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"CREATE SCHEMA {schema}")
    stores = tuple(open_store(f"{server.url}?options={quote(f'-csearch_path={s}')}") for s in schemas)
    yield stores  # type: ignore[misc]
    for s in stores:
        s.close()
    with psycopg.connect(server.url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


async def _history(store: Store) -> list[LinkRow]:
    """A launched range campaign (one recipient with their own URL: row codes), a link without a
    recipient: the same ids and codes in every store it is run on."""
    ids = [subscriber(store, n) for n in range(1, 6)]
    store.put_subscriber("acme", Profile(phone="+447911100004", attributes={"url": "https://odd.io/me"}),
                         phone="+447911100004", at=T0 - 500, now=T0 - 500)  # fmt: skip
    la = launcher(store, FakeGateway())
    camp = await la.create("acme", "R", {"sender": "A", "template": "Hi https://s.io/a and {attr.url|https://s.io/b}",
                                         "batch_size": 2, "audience": {"subscribers": ids}})  # fmt: skip
    await la.launch("acme", camp.id)
    codes = [c for r in store.campaign_recipients("acme", camp.id) for c in CODE.findall(r.text)]
    other = store.put_campaign("acme", "flowish", {}, now=T0)
    store.freeze_audience("acme", other.id, [], [LinkRow(code="NoRecip1", tenant="acme", campaign_id=other.id,
                                                         subscriber_id=ids[0], target="https://s.io/f", created_at=T0)],
                          now=T0)  # fmt: skip
    with store._tx() as tx:  # type: ignore[attr-defined]  # one clicker without an aggregates row: the flush makes it
        tx.run("DELETE FROM subscriber_stats WHERE subscriber_id = ?", (ids[1],))
    found = store.links([*codes, "NoRecip1"])
    assert len(found) == len(codes) + 1 and found["NoRecip1"].phone is None
    return [found[c] for c in sorted(found)]


def _old_flush(store: Store, hits: list[HitIn], now: float) -> int:
    """The flush as it was: the hits, then each human click's ``clicked`` activity as an event."""
    clicks = [ClickIn(code=h.code, at=h.at, user_agent=h.user_agent, verdict=h.verdict) for h in hits]
    events = [(ActivityEvent(id=f"click:{h.code}:{h.at!r}", at=h.at, phone=h.phone, kind="clicked",
                             properties={"campaign": h.campaign_id, "code": h.code}), h.phone)
              for h in hits if h.verdict == "click" and h.phone]  # fmt: skip
    return store.record_hits(clicks, {"acme": events} if events else {}, now=now)


def _state(store: Store) -> dict[str, list[tuple]]:
    out = {}
    with store._tx() as tx:  # type: ignore[attr-defined]
        for table, cols in TABLES.items():
            out[table] = sorted((tuple(r) for r in tx.rows(f"SELECT {cols} FROM {table}")), key=repr)
    return out


_hit = st.tuples(st.integers(0, 10_000), st.floats(0, 3 * 86_400, allow_nan=False),
                 st.sampled_from(["click", "click", "click", "bot", "head", "too_soon"]), st.sampled_from(["M", "Slackbot", ""]))


@pytest.mark.anyio
async def test_the_set_based_flush_writes_what_the_events_path_wrote(twins: tuple[Store, Store]) -> None:
    old, new = twins
    links = [await _history(s) for s in twins][0]
    assert _state(old) == _state(new)
    seen_at: set[tuple[str, float]] = set()

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(_hit, min_size=1, max_size=12), later=st.floats(0, 30 * 86_400, allow_nan=False))
    def flush_both(batch: list[tuple[int, float, str, str]], later: float) -> None:
        hits = []
        for pick, dt, verdict, ua in batch:
            link = links[pick % len(links)]
            at = T0 + dt
            if (link.code, at) in seen_at:  # one clock reading per hit of a code (see the docstring)
                continue
            seen_at.add((link.code, at))
            hits.append(HitIn(code=link.code, at=at, user_agent=ua, verdict=verdict, tenant=link.tenant,
                              campaign_id=link.campaign_id, subscriber_id=link.subscriber_id, phone=link.phone,
                              target=link.target, created_at=link.created_at, expires_at=link.expires_at))  # fmt: skip
        now = T0 + later
        assert _old_flush(old, hits, now) == (new.record_link_hits(hits, now=now) if hits else 0)
        assert _state(old) == _state(new)

    flush_both()
    state = _state(new)
    assert state["activities"] and state["clicks"] and any(r[-1] for r in state["clicks"])  # it wrote something
    assert any(s[0] == "NoRecip1" for s in state["short_links"])
