"""Range codes (docs/ARCHITECTURE.md, "Campaign short links without a row per recipient"): a keyed
permutation of link numbers, one ``link_ranges`` row per launch, resolved through
``campaign_sql.resolve_codes`` by the store and every link reader, on both engines."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.events import Profile
from campaigns.core.links import ALPHABET, LinkCipher, LinkError, cipher_for, code_length
from campaigns.errors import Conflict, GatewayError
from campaigns.store import Store, open_store
from campaigns.store.campaign_rows import LinkRange
from fake_gateway import FakeGateway
from test_launch import T0, TL, launcher, subscriber

pytestmark = pytest.mark.anyio
CODE = re.compile(r"https://sl\.ui/([0-9A-Za-z]+)")


# ---- the permutation (pure) ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=1, max_size=40), length=st.integers(5, 8), data=st.data())
def test_codes_and_numbers_are_one_to_one(key: bytes, length: int, data: st.DataObject) -> None:
    c = LinkCipher(key, length)
    n = data.draw(st.integers(0, 62**length - 1))
    code = c.encode(n)
    assert len(code) == length and set(code) <= set(ALPHABET)
    assert c.decode(code) == n
    # Every code of the alphabet and length is some number's (a permutation, not only an injection).
    other = data.draw(st.text(alphabet=ALPHABET, min_size=length, max_size=length))
    m = c.decode(other)
    assert m is not None and 0 <= m < 62**length and c.encode(m) == other
    # The batch form is the same codes, distinct, in number order.
    start = data.draw(st.integers(0, 62**length - 50))
    codes = c.encode_range(start, 50)
    assert codes == [c.encode(k) for k in range(start, start + 50)] and len(set(codes)) == 50


def test_bad_codes_and_numbers() -> None:
    c = LinkCipher(b"k", 6)
    assert c.decode("abc") is None and c.decode("abc-ef") is None and c.decode("abcdefg") is None
    for bad in (-1, 62**6):
        with pytest.raises(LinkError) as e:
            c.encode(bad)
        assert e.value.code == "link_number_out_of_range"
    with pytest.raises(LinkError):
        c.encode_range(62**6 - 1, 2)
    with pytest.raises(LinkError) as e:
        LinkCipher(b"k", 9)
    assert e.value.code == "bad_code_length"


def test_neighbouring_numbers_give_unrelated_codes_and_keys_differ() -> None:
    """Without the key, a neighbour's code is not the next code: consecutive numbers share no more
    characters position by position than random codes would (1/62 each), and another key gives
    other codes for the same numbers."""
    a, b = LinkCipher(b"key-a", 8), LinkCipher(b"key-b", 8)
    codes = a.encode_range(10_000, 2000)
    same = sum(x == y for u, v in zip(codes, codes[1:]) for x, y in zip(u, v, strict=True))
    assert same < 2 * 8 * 2000 / 62  # about 258 expected by chance
    assert sum(x == y for x, y in zip(codes, b.encode_range(10_000, 2000), strict=True)) == 0


# ---- launches and resolution (both engines) ---------------------------------------------------------


def codes_of(text: str) -> list[str]:
    return CODE.findall(text)


async def test_a_launch_resolves_every_range_code_without_a_row_per_recipient(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 8)]
    odd = ids[3]  # a URL from their own attribute: HMAC codes and rows, as before
    store.put_subscriber("acme", Profile(phone="+447911100004", attributes={"url": "https://odd.io/me"}),
                         phone="+447911100004", at=T0 - 500, now=T0 - 500)  # fmt: skip
    gw = FakeGateway()
    la = launcher(store, gw)
    template = "Hi https://s.io/a and {attr.url|https://s.io/b} bye"
    camp = await la.create("acme", "R", {"sender": "A", "template": template, "batch_size": 3,
                                         "audience": {"subscribers": ids}})  # fmt: skip
    await la.launch("acme", camp.id)
    rng = store.link_range("acme", camp.id)
    assert rng is not None and rng.stride == 2 and rng.targets == ("https://s.io/a", "https://s.io/b")
    assert rng.length == code_length(TL.domain) and rng.start == 0
    recipients = {r.subscriber_id: r for r in store.campaign_recipients("acme", camp.id)}
    assert set(recipients) == set(ids)
    all_codes = [c for r in recipients.values() for c in codes_of(r.text)]
    assert len(all_codes) == 14 and len(set(all_codes)) == 14
    cipher = cipher_for(TL.key, rng.length)
    reader = store.open_link_reader()
    try:
        for sid, r in recipients.items():
            codes = codes_of(r.text)
            targets = ["https://s.io/a", "https://odd.io/me" if sid == odd else "https://s.io/b"]
            if sid != odd:
                assert codes == [cipher.encode(rng.number(r.batch, r.idx, p)) for p in range(2)]
                assert store.existing_links(codes) == set()  # no row per recipient
            else:
                assert store.existing_links(codes) == set(codes)
                # Their slot's range numbers resolve to nothing: the text holds other codes.
                assert store.links([cipher.encode(rng.number(r.batch, r.idx, 0))]) == {}
            read = reader.read(codes)
            ok, nowait = store.link_nowait(codes[0])  # SQLite: read on the calling thread; PostgreSQL: (False, None)
            assert nowait == (store.link(codes[0]) if ok else None)
            for via in (store.links(codes), read, {c: store.link(c) for c in codes}):
                assert [via[c].target for c in codes] == targets
                assert {(via[c].tenant, via[c].campaign_id, via[c].subscriber_id, via[c].phone) for c in codes} == \
                    {("acme", camp.id, sid, r.phone)}
    finally:
        reader.close()
    assert store.links(["zzzzzzzz", "00000000", "bad-code"]) == {}


async def test_a_second_launch_takes_the_next_numbers_and_a_taken_range_is_refused(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 5)]
    gw = FakeGateway()
    la = launcher(store, gw)
    camps = []
    for name in ("one", "two"):
        camp = await la.create("acme", name, {"sender": "A", "template": "x https://s.io/a", "batch_size": 2,
                                              "smart_sending_hours": 0, "audience": {"subscribers": ids}})  # fmt: skip
        await la.launch("acme", camp.id)
        camps.append(camp.id)
    one, two = (store.link_range("acme", c) for c in camps)
    assert one is not None and two is not None and two.start == one.start + one.count
    codes = {c: [k for r in store.campaign_recipients("acme", c) for k in codes_of(r.text)] for c in camps}
    assert not set(codes[camps[0]]) & set(codes[camps[1]])
    for c in camps:
        assert {link.campaign_id for link in store.links(codes[c]).values()} == {c}
    # A launch planned from numbers another launch took meanwhile writes nothing.
    late = store.put_campaign("acme", "late", {}, now=T0)
    taken = LinkRange(tenant="acme", campaign_id=late.id, length=one.length, start=one.start, count=2, stride=1,
                      batch_size=2, targets=("https://s.io/a",), created_at=T0)  # fmt: skip
    with pytest.raises(Conflict) as e:
        store.freeze_audience("acme", late.id, [], [], now=T0, link_range=taken)
    assert e.value.code == "link_range_taken"
    assert store.link_range("acme", late.id) is None and store.batches("acme", late.id) == []


async def test_a_clicked_range_code_gets_its_row_and_counts(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 4)]
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "C", {"sender": "A", "template": "x https://s.io/a", "audience": {"subscribers": ids}})
    await la.launch("acme", camp.id)
    by_sid = {r.subscriber_id: codes_of(r.text)[0] for r in store.campaign_recipients("acme", camp.id)}
    code = by_sid[ids[1]]
    assert not store.link_exists(code)
    assert store.record_click(code, at=T0 + 500, user_agent="Mozilla/5.0 (iPhone)", verdict="click") is True
    assert store.record_click(code, at=T0 + 600, user_agent="Mozilla/5.0 (iPhone)", verdict="click") is False
    store.record_click(by_sid[ids[2]], at=T0 + 700, user_agent="Twitterbot", verdict="bot")
    assert store.link_exists(code)  # written on its first hit: reports join clicks to short_links
    counts = store.click_counts("acme", camp.id)
    assert (counts.unique, counts.total, counts.ignored) == (1, 2, 1)
    assert store.human_clicks("acme", camp.id) == [(ids[1], T0 + 500), (ids[1], T0 + 600)]
    link = store.link(code)
    assert link is not None and link.subscriber_id == ids[1] and link.target == "https://s.io/a"


async def test_a_crash_mid_launch_keeps_the_range_and_its_codes(store: Store) -> None:
    """The range is frozen with the audience: a relaunch re-posts the same bytes (same codes), and
    every code resolves to its recipient; nobody is sent twice."""
    ids = [subscriber(store, n) for n in range(1, 8)]
    gw = FakeGateway()
    gw.lose_answer_of = {2}
    camp = await launcher(store, gw).create("acme", "Crash", {"sender": "A", "template": "x https://s.io/a",
                                                             "batch_size": 3, "audience": {"subscribers": ids}})
    with pytest.raises(GatewayError):
        await launcher(store, gw).launch("acme", camp.id)
    first = store.link_range("acme", camp.id)
    out = await launcher(store, gw, now=T0 + 60).launch("acme", camp.id)
    assert out.status == "launched" and out.accepted == 7 and store.link_range("acme", camp.id) == first
    sent = {r["to"]: r["vars"]["body"] for j in gw.jobs.values() for r in j["recipients"]}
    assert len(sent) == 7 and sum(len(j["recipients"]) for j in gw.jobs.values()) == 7
    found = store.links([codes_of(t)[0] for t in sent.values()])
    assert {link.phone for link in found.values()} == set(sent)


ZONES = [None, "Europe/Paris", "Asia/Tokyo", "America/New_York"]


@settings(max_examples=8, deadline=None)
@given(people=st.lists(st.tuples(st.sampled_from(ZONES), st.booleans()), min_size=1, max_size=10),
       batch_size=st.integers(1, 4), urls=st.integers(1, 3), local=st.booleans())  # fmt: skip
def test_every_code_of_any_launch_resolves_to_its_recipient_and_url(tmp_path_factory: pytest.TempPathFactory,
                                                                    people: list, batch_size: int, urls: int,
                                                                    local: bool) -> None:  # fmt: skip
    """Whatever the mix of zones (batches cut short by their send_at), batch sizes, URLs per text and
    recipients whose URL is their own (HMAC codes and rows): two launches in a row give distinct
    codes, and each code resolves, by the store and by a link reader, to its own recipient and the
    URL at its position; only the recipients whose URLs are not the range's have rows."""
    import anyio

    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('ranges') / 'c.db'}")
    try:
        ids, own = [], {}
        for n, (zone, personal) in enumerate(people, start=1):
            sid = subscriber(store, n, zone=zone)
            if personal:
                own[sid] = f"https://odd.io/{n}"
                store.put_subscriber("acme", Profile(phone=f"+4479111{n:05d}", attributes={"url": own[sid]}),
                                     phone=f"+4479111{n:05d}", at=T0 - 500, now=T0 - 500)  # fmt: skip
            ids.append(sid)
        fixed = [f"https://s.io/{k}" for k in range(urls - 1)]
        template = " ".join(["Hi", *fixed, "{attr.url|https://s.io/z}", "bye"])
        schedule = {"kind": "local", "date": "2025-12-29", "time": "10:00"} if local else {"kind": "now"}

        async def run() -> list[int]:
            la, out = launcher(store, FakeGateway()), []
            for name in ("one", "two"):
                camp = await la.create("acme", name, {"sender": "A", "template": template, "batch_size": batch_size,
                                                      "smart_sending_hours": 0, "schedule": schedule,
                                                      "audience": {"subscribers": ids}})  # fmt: skip
                await la.launch("acme", camp.id)
                out.append(camp.id)
            return out

        camps = anyio.run(run)
        reader = store.open_link_reader()
        seen: set[str] = set()
        try:
            for cid in camps:
                rng = store.link_range("acme", cid)
                assert rng is not None
                for r in store.campaign_recipients("acme", cid):
                    codes = codes_of(r.text)
                    targets = [*fixed, own.get(r.subscriber_id, "https://s.io/z")]
                    assert len(codes) == urls and not seen & set(codes)
                    seen.update(codes)
                    for via in (store.links(codes), reader.read(codes)):
                        assert [(via[c].campaign_id, via[c].subscriber_id, via[c].phone, via[c].target) for c in codes] \
                            == [(cid, r.subscriber_id, r.phone, t) for t in targets]
                    has_rows = store.existing_links(codes) == set(codes)
                    assert has_rows == (tuple(targets) != rng.targets) and (has_rows or not store.existing_links(codes))
        finally:
            reader.close()
    finally:
        store.close()
