"""A range code answered without a read (docs/ARCHITECTURE.md, "A range code answered without a
read"): the redirect's in-memory link table (``core.link_table``) answers a code of a written slot
with its campaign's URL and no store read, and hands everything else to the store's one exact
resolution (``resolve_codes``); the recipient and the too-soon verdict are settled when the click
is written. Both engines."""

from __future__ import annotations

import re

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import link_table, links
from campaigns.core.events import Profile
from campaigns.core.link_table import LinkTable, RangeSlots
from campaigns.service.launch import Launcher, TenantLinks
from campaigns.service.tracking import Tracker
from campaigns.store import Store, open_store
from campaigns.store.campaign_rows import LinkRow
from fake_gateway import FakeGateway
from test_launch import T0, TL, launcher, subscriber

pytestmark = pytest.mark.anyio
CODE = re.compile(r"https://sl\.ui/([0-9A-Za-z]+)")
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"


def codes_of(text: str) -> list[str]:
    return CODE.findall(text)


class _CountingReader:
    """The store's link reader, counting the codes asked of it."""

    def __init__(self, store: Store) -> None:
        self.inner, self.asked = store.open_link_reader(), []  # type: ignore[var-annotated]
        self.on_loop = self.inner.on_loop

    def read(self, codes):  # type: ignore[no-untyped-def]
        self.asked += list(codes)
        return self.inner.read(codes)

    def close(self) -> None:
        self.inner.close()


def _tracker(store: Store, now: float) -> tuple[Tracker, _CountingReader]:
    tracker = Tracker(launcher(store, FakeGateway(), now=now))
    reader = _CountingReader(store)
    tracker._reader = reader  # type: ignore[assignment]
    return tracker, reader


def _deliver(store: Store, campaign_id: int, at: float) -> None:
    with store._tx() as tx:  # type: ignore[attr-defined]
        tx.run("UPDATE campaign_recipients SET state = 'delivered', state_at = ? WHERE tenant = 'acme' AND campaign_id = ?",
               (at, campaign_id))  # fmt: skip


async def _launch(store: Store, ids: list[int], template: str = "Hi https://s.io/a bye", **more: object) -> int:
    la = launcher(store, FakeGateway())
    camp = await la.create("acme", f"c{len(ids)}-{template[:8]}", {"sender": "A", "template": template, "batch_size": 3,
                                                                  "smart_sending_hours": 0,
                                                                  "audience": {"subscribers": ids}, **more})  # fmt: skip
    await la.launch("acme", camp.id)
    return camp.id


async def test_a_launched_code_is_answered_without_a_read_and_its_click_is_its_recipients(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 6)]
    cid = await _launch(store, ids)
    _deliver(store, cid, T0 + 10)
    by_sid = {r.subscriber_id: codes_of(r.text)[0] for r in store.campaign_recipients("acme", cid)}
    tracker, reader = _tracker(store, T0 + 15)  # 5 s after delivery: too soon for a click
    await tracker.load_link_table()
    location = links.with_utm("https://s.io/a", {"utm_source": "sms", "utm_medium": "sms", "utm_campaign": f"campaign-{cid}"})
    soon = await tracker.redirect(by_sid[ids[0]], method="GET", user_agent=UA)
    assert soon is not None and soon.location == location
    tracker.la.clock = lambda: T0 + 100
    for _ in range(2):
        hit = await tracker.redirect(by_sid[ids[1]], method="GET", user_agent=UA)
        assert hit is not None and hit.location == location
    assert (await tracker.redirect(by_sid[ids[2]], method="HEAD", user_agent=UA)) is not None
    assert (await tracker.redirect(by_sid[ids[3]], method="GET", user_agent="Twitterbot/1.0")) is not None
    assert reader.asked == []  # not one read
    assert await tracker.flush() == 5
    counts = store.click_counts("acme", cid)
    assert (counts.unique, counts.total, counts.ignored) == (1, 2, 3)
    assert store.human_clicks("acme", cid) == [(ids[1], T0 + 100), (ids[1], T0 + 100)]
    with store._tx() as tx:  # type: ignore[attr-defined]
        verdicts = dict(tx.rows("SELECT code, verdict FROM clicks"))
    assert verdicts[by_sid[ids[0]]] == "too_soon" and verdicts[by_sid[ids[2]]] == "head"
    assert verdicts[by_sid[ids[3]]] == "bot" and verdicts[by_sid[ids[1]]] == "click"
    link = store.link(by_sid[ids[1]])  # the clicked code's row, as the read path would have written it
    assert link is not None and (link.subscriber_id, link.campaign_id, link.target) == (ids[1], cid, "https://s.io/a")
    tracker.close()


async def test_codes_outside_every_written_slot_and_junk_are_the_stores_to_answer(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 5)]
    store.put_subscriber("acme", Profile(phone="+447911100002", attributes={"url": "https://odd.io/me"}),
                         phone="+447911100002", at=T0 - 500, now=T0 - 500)  # fmt: skip
    cid = await _launch(store, ids, "Hi {attr.url|https://s.io/a} bye")  # planned path: a hole for ids[1]
    rng = store.link_range("acme", cid)
    assert rng is not None and rng.holes is not None
    rows = {r.subscriber_id: r for r in store.campaign_recipients("acme", cid)}
    odd = rows[ids[1]]
    assert odd.batch * rng.batch_size + odd.idx in rng.holes
    tracker, reader = _tracker(store, T0 + 100)
    await tracker.load_link_table()
    cipher = links.cipher_for(TL.key, rng.length)
    hole = cipher.encode(rng.number(odd.batch, odd.idx, 0))
    gap = cipher.encode(rng.number(1, 2, 0))  # batch 1 holds one recipient: its slot 2 is nobody's
    beyond = cipher.encode(rng.start + rng.count + 5)  # no range yet
    for code in (hole, gap, beyond, "zzzzzzzz", "Zz9"):
        assert await tracker.redirect(code, method="GET", user_agent=UA) is None
    assert set(reader.asked) == {hole, gap, beyond, "zzzzzzzz"}  # each asked of the store, found nowhere
    own = codes_of(odd.text)[0]  # the hole's recipient's own (row) code resolves
    hit = await tracker.redirect(own, method="GET", user_agent=UA)
    assert hit is not None and hit.location.startswith("https://odd.io/me?")
    tracker.close()


async def test_a_row_with_a_range_code_wins(store: Store) -> None:
    """A ``short_links`` row whose code is also a range code (written as is, or another tenant's)
    is listed as a shadow when written: the table hands it to the store, whose row wins."""
    ids = [subscriber(store, n) for n in range(1, 4)]
    cid = await _launch(store, ids)
    code = codes_of(store.campaign_recipients("acme", cid)[0].text)[0]
    tracker, reader = _tracker(store, T0 + 100)
    await tracker.load_link_table()
    assert (await tracker.redirect(code, method="GET", user_agent=UA)).location.startswith("https://s.io/a?")  # type: ignore[union-attr]
    other = store.put_campaign("acme", "rows", {"sender": "A", "template": "x"}, now=T0)
    store.freeze_audience("acme", other.id, [], [LinkRow(code=code, tenant="acme", campaign_id=other.id, subscriber_id=ids[0],
                                                         target="https://row.io/x", created_at=T0)], now=T0)  # fmt: skip
    hit = await tracker.redirect(code, method="GET", user_agent=UA)  # the table is older than the row: not used
    assert hit is not None and hit.location.startswith("https://row.io/x?")
    await tracker.load_link_table()
    reader.asked.clear()
    hit = await tracker.redirect(code, method="GET", user_agent=UA)
    assert hit is not None and hit.location.startswith("https://row.io/x?") and reader.asked in ([], [code])
    tracker.close()


async def test_a_campaign_launched_after_the_table_was_loaded_resolves(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 4)]
    await _launch(store, ids)
    tracker, _reader = _tracker(store, T0 + 100)
    await tracker.load_link_table()
    stale = tracker._table
    later = await _launch(store, ids, "New https://s.io/new here")
    code = codes_of(store.campaign_recipients("acme", later)[0].text)[0]
    # Another process launched it: this tracker's store object did not see it (the table looks current).
    tracker._table = (store.link_table_version, stale[1], stale[2])  # type: ignore[index]
    hit = await tracker.redirect(code, method="GET", user_agent=UA)  # past the table's end: read
    assert hit is not None and hit.location.startswith("https://s.io/new?")
    await tracker.load_link_table()
    assert tracker._table is not None and tracker._table[2].find(code) is not None
    tracker.close()


async def test_another_tenants_codes_and_rows(store: Store) -> None:
    """Two tenants: each code is its own tenant's; a row another tenant wrote before a range took
    its number stays that row's (the launch lists it as a shadow)."""
    beta = TenantLinks(domain="sl.ui", key=b"b" * 32, zone="Europe/Paris")
    store.set_link_keys({"acme": TL.key, "beta": beta.key})
    ids = [subscriber(store, n) for n in range(1, 4)]
    first_acme_code = links.cipher_for(TL.key, 8).encode(0)  # the next acme range's first code
    store.freeze_audience("beta", 9, [], [LinkRow(code=first_acme_code, tenant="beta", campaign_id=9, subscriber_id=1,
                                                  target="https://beta.io/row", created_at=T0)], now=T0)  # fmt: skip
    cid = await _launch(store, ids)
    texts = {codes_of(r.text)[0] for r in store.campaign_recipients("acme", cid)}
    assert first_acme_code in texts  # (the collision is real)
    tracker, _reader = _tracker(store, T0 + 100)
    await tracker.load_link_table()
    table = tracker._table[2]  # type: ignore[index]
    assert table.find(first_acme_code) is None  # shadowed: the store's
    hit = await tracker.redirect(first_acme_code, method="GET", user_agent=UA)
    assert hit is not None and hit.location.startswith("https://beta.io/row?")
    for code in texts - {first_acme_code}:
        found = table.find(code)
        assert found is not None and found[0].tenant == "acme"
    beta_code = links.cipher_for(beta.key, 8).encode(1)  # beta has no range: not a beta code, not acme's
    assert table.find(beta_code) is None and await tracker.redirect(beta_code, method="GET", user_agent=UA) is None
    tracker.close()


async def test_row_codes_are_minted_in_the_row_half() -> None:
    """Within a tenant a code is a range code or a row code by construction: row codes decode
    at or above ``range_limit``."""
    key = b"k" * 32
    sk = links.skeleton("a https://x.io/1 b https://x.io/2")
    for i in range(300):
        for code in links.mint_codes(sk, key, f"7:{i}", 8, set(), exists=lambda c: links.in_range_half(key, c)):
            n = links.cipher_for(key, 8).decode(code)
            assert n is not None and n >= links.range_limit(8)


# ---- the table against the store's resolution (SQLite; the SQL is shared with PostgreSQL) ---------

ZONES = [None, "Europe/Paris", "Asia/Tokyo"]


@settings(max_examples=10, deadline=None)
@given(people=st.lists(st.tuples(st.sampled_from(ZONES), st.booleans()), min_size=1, max_size=9),
       batch_size=st.integers(1, 4), urls=st.integers(1, 2), extra=st.lists(st.integers(0, 80), max_size=12),
       collide=st.booleans())  # fmt: skip
def test_the_table_never_answers_otherwise_than_the_store(tmp_path_factory: pytest.TempPathFactory, people: list,
                                                           batch_size: int, urls: int, extra: list[int],
                                                           collide: bool) -> None:  # fmt: skip
    """Whatever the launches (zones cutting batches short, recipients whose URL is their own: holes
    and rows, one or two URLs, two launches), every link number around the ranges: where the table
    answers, its answer is the store's (campaign, slot's recipient, URL); every code a recipient
    got from a range is answered by the table; a row written with a range code is the store's."""
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('table') / 'c.db'}")
    try:
        ids = []
        for n, (zone, personal) in enumerate(people, start=1):
            ids.append(subscriber(store, n, zone=zone))
            if personal:
                store.put_subscriber("acme", Profile(phone=f"+4479111{n:05d}", attributes={"url": f"https://odd.io/{n}"}),
                                     phone=f"+4479111{n:05d}", at=T0 - 500, now=T0 - 500)  # fmt: skip
        template = " ".join(["Hi", *(["https://s.io/0"] if urls == 2 else []), "{attr.url|https://s.io/z}", "bye"])

        async def run() -> list[int]:
            out = []
            for _ in range(2):
                la = launcher(store, FakeGateway())
                camp = await la.create("acme", f"c{len(out)}", {"sender": "A", "template": template, "batch_size": batch_size,
                                                               "smart_sending_hours": 0, "audience": {"subscribers": ids}})  # fmt: skip
                await la.launch("acme", camp.id)
                out.append(camp.id)
            return out

        camps = anyio.run(run)
        cipher = links.cipher_for(TL.key, 8)
        if collide and extra:
            code = cipher.encode(extra[0] % max(1, store.link_range_end("acme", 8)))
            store.freeze_audience("acme", 99, [], [LinkRow(code=code, tenant="acme", campaign_id=99, subscriber_id=ids[0],
                                                           target="https://row.io/", created_at=T0)], now=T0)  # fmt: skip
        table = store.link_table()
        end = store.link_range_end("acme", 8)
        probe = [cipher.encode(n) for n in range(end + 3)] + [cipher.encode(links.range_limit(8) + x) for x in extra]
        truth = store.links(probe)
        for code in probe:
            found = table.find(code)
            if found is None:
                continue
            g, b, i, p = found
            link = truth.get(code)
            assert link is not None and (link.campaign_id, link.target) == (g.campaign_id, g.targets[p])
            rec = [r for r in store.campaign_recipients("acme", g.campaign_id, limit=100) if (r.batch, r.idx) == (b, i)]
            assert len(rec) == 1 and rec[0].subscriber_id == link.subscriber_id
        shadows = table.shadows
        for cid in camps:
            rng = store.link_range("acme", cid)
            for r in store.campaign_recipients("acme", cid, limit=100):
                for code in codes_of(r.text):
                    if store.existing_links([code]) and code not in shadows:
                        continue  # the recipient's own row code
                    assert (table.find(code) is None) == (code in shadows), (code, rng)
    finally:
        store.close()


def test_a_range_without_its_holes_recorded_is_always_read() -> None:
    g = RangeSlots(tenant="acme", campaign_id=1, length=8, start=0, count=10, stride=1, batch_size=5,
                   targets=("https://s.io/a",), created_at=T0, sizes=(5, 5), holes=None)  # fmt: skip
    table = LinkTable([g], [], {"acme": TL.key})
    cipher = links.cipher_for(TL.key, 8)
    assert all(table.find(cipher.encode(n)) is link_table.READ for n in range(10))
    known = LinkTable([RangeSlots(**{**{f: getattr(g, f) for f in g.__struct_fields__}, "holes": frozenset({3}),
                                     "pending": 5})], [], {"acme": TL.key})  # fmt: skip
    assert [known.find(cipher.encode(n)) is not None for n in range(10)] == [True] * 3 + [False, True] + [False] * 5


async def test_slots_of_a_chunked_freeze_are_answered_once_written(store: Store) -> None:
    """A freeze in chunks: the slots not written yet are the store's (which knows no recipient there
    yet), and each chunk's are the table's once it is committed."""
    from campaigns.service.launch import freeze, freeze_step

    ids = [subscriber(store, n) for n in range(1, 8)]
    camp = await launcher(store, FakeGateway()).create("acme", "chunks", {
        "sender": "A", "template": "x https://s.io/a", "batch_size": 2, "smart_sending_hours": 0,
        "audience": {"subscribers": ids}})  # fmt: skip
    assert freeze(store, "acme", camp, TL, T0, chunk=2) is True
    rng = store.link_range("acme", camp.id)
    assert rng is not None
    cipher = links.cipher_for(TL.key, rng.length)
    codes = [cipher.encode(rng.number(b, i, 0)) for b in range(4) for i in range(2)][:7]
    table = store.link_table()
    assert [table.find(c) is not None for c in codes] == [True, True] + [False] * 5
    assert store.links(codes[2:]) == {}  # (the store knows nobody there either)
    while freeze_step(store, "acme", camp, TL, 2) is not None:
        pass
    table = store.link_table()
    assert all(table.find(c) is not None for c in codes) and table.find(cipher.encode(rng.number(3, 1, 0))) is None
    assert {link.subscriber_id for link in store.links(codes).values()} == set(ids)
