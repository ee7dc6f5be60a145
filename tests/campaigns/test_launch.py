"""Campaign launch through the store seam (both engines) against a fake gateway that keeps
Idempotency-Keys like the real one: the frozen audience (consent, smart sending, A/B, schedule,
templates, short links, discount codes), and a crash mid-launch never sending anyone twice."""

from __future__ import annotations

import json
import threading
from collections import Counter

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.events import Profile
from campaigns.errors import Conflict, GatewayError, InvalidInput
from campaigns.service.gateway_client import GatewayClient
from campaigns.service.launch import ANSWERS_AHEAD, Launcher, TenantLinks, parse_spec
from campaigns.store import Store, open_store
from campaigns.store.base import NewConsent
from fake_gateway import FakeGateway

pytestmark = pytest.mark.anyio
T0 = 1_767_000_000.0  # 2025-12-29 09:20 UTC
TL = TenantLinks(domain="sl.ui", key=b"k" * 32, zone="Europe/Paris")


def subscriber(store: Store, i: int, *, consent: str = "confirmed", zone: str | None = None, name: str | None = "Ana",
               language: str | None = None) -> int:  # fmt: skip
    phone = f"+4479111{i:05d}"
    sub, _ = store.put_subscriber("acme", Profile(phone=phone, first_name=name, time_zone=zone, language=language),
                                  phone=phone, at=T0 - 1000, now=T0 - 1000)  # fmt: skip
    steps = {"none": [], "pending": ["opt_in"], "confirmed": ["opt_in", "confirm"],
             "revoked": ["opt_in", "confirm", "opt_out"]}[consent]  # fmt: skip
    for k, action in enumerate(steps):
        store.record_consent("acme", NewConsent(phone=phone, action=action, source="api", at=T0 - 900 + k),
                             now=T0 - 900)  # fmt: skip
    return sub.id


def launcher(store: Store, gw: FakeGateway, now: float = T0) -> Launcher:
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    return Launcher(store, {"acme": client}, {"acme": TL}, lambda: now)


async def test_only_confirmed_subscribers_get_a_rendered_text_with_short_links(store: Store) -> None:
    ids = {c: subscriber(store, n, consent=c) for n, c in enumerate(["none", "pending", "confirmed", "revoked"])}
    nameless = subscriber(store, 9, name=None)
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "Spring", {
        "sender": "ACME", "template": "Hi {first_name|there}, {discount_code} at https://shop.example/sale?x=1",
        "audience": {"subscribers": list(ids.values()) + [nameless]},
        "discount": {"pattern": "SPRING-######"}, "rules": {"brand": "Acme"}, "utm": {"utm_campaign": "spring"}})
    out = await la.launch("acme", camp.id)
    assert (out.status, out.recipients, out.accepted, out.batches) == ("launched", 2, 2, 1)
    [job] = gw.jobs.values()
    assert job["head"]["category"] == "marketing" and job["head"]["template"] == "{body}"
    texts = {r["to"]: r["vars"]["body"] for r in job["recipients"]}
    assert set(texts) == {"+447911100002", "+447911100009"}
    ana = texts["+447911100002"]
    assert ana.startswith("Acme: Hi Ana, SPRING-") and "Reply STOP to opt out" in ana
    assert "shop.example" not in ana and "https://sl.ui/" in ana  # every URL shortened
    assert texts["+447911100009"].startswith("Acme: Hi there,")
    # The link of each recipient leads to the original URL, and is theirs.
    code = ana.split("https://sl.ui/")[1].split()[0]
    link = store.link(code)
    assert link is not None and link.target == "https://shop.example/sale?x=1" and link.subscriber_id == ids["confirmed"]
    assert len(code) == 8 and len(f"https://sl.ui/{code}") <= 22


async def test_a_crash_mid_launch_sends_nobody_twice(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 8)] + [subscriber(store, 1000)]  # ...000: refused by the gateway
    gw = FakeGateway()
    gw.lose_answer_of = {2}  # batch 1 is stored by the gateway, its answer is lost
    definition = {"sender": "ACME", "template": "Sale at https://s.io/x", "batch_size": 3,
                  "audience": {"subscribers": ids}}  # fmt: skip
    camp = await launcher(store, gw).create("acme", "Crash", definition)
    with pytest.raises(GatewayError):
        await launcher(store, gw).launch("acme", camp.id)
    assert (store.campaign("acme", camp.id) or camp).status == "launching"
    # Restarted: a new launcher, same store; the frozen rows give the same bytes, the key the same answer.
    out = await launcher(store, gw, now=T0 + 120).launch("acme", camp.id)
    assert out.status == "launched" and out.batches == 3 and out.recipients == 8
    assert out.accepted == 7 and out.rejected == 1
    assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, 8)})
    assert len(gw.jobs) == 3  # one job per batch, none twice
    # And launching a launched campaign again sends nothing new.
    posts = gw.posts
    await launcher(store, gw, now=T0 + 999).launch("acme", camp.id)
    assert gw.posts == posts and len(gw.jobs) == 3
    rejected = [r for r in store.campaign_recipients("acme", camp.id) if r.state == "rejected"]
    assert [r.phone for r in rejected] == ["+447911101000"]


async def test_a_batch_is_submitted_by_its_job_id_across_a_crash(store: Store) -> None:
    """No state is written per recipient at submit: a batch whose answer was lost reads ``planned``
    and counts as not sent until the relaunch stores its job id (the gateway's stored answer to the
    same key), then every recipient of it reads ``submitted`` and counts as sent, once."""
    from campaigns.store.report_sql import Scope

    ids = [subscriber(store, n) for n in range(1, 7)]
    gw = FakeGateway()
    gw.lose_answer_of = {2}  # batch 1: stored by the gateway, the answer lost
    camp = await launcher(store, gw).create("acme", "Crash", {"sender": "ACME", "template": "Sale https://s.io/x",
                                                             "batch_size": 2, "audience": {"subscribers": ids}})
    with pytest.raises(GatewayError):
        await launcher(store, gw).launch("acme", camp.id)

    def states() -> list[str]:
        return [r.state for r in sorted(store.campaign_recipients("acme", camp.id), key=lambda r: (r.batch, r.idx))]

    def sent() -> int:
        return sum(g.sent for g in store.report_facts("acme", Scope(campaign=camp.id)).groups)

    assert states() == ["submitted", "submitted", "planned", "planned", "planned", "planned"] and sent() == 2
    out = await launcher(store, gw, now=T0 + 60).launch("acme", camp.id)
    assert out.status == "launched" and out.accepted == 6
    assert states() == ["submitted"] * 6 and sent() == 6
    assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, 7)})
    # A state from the gateway moves a recipient on from the derived ``submitted``.
    job = store.batches("acme", camp.id)[0].job_id
    assert job is not None
    moved = store.recipient_state("acme", job, 1, state="delivered", message_id="m-1", at=T0 + 90)
    assert moved is not None and moved.state == "delivered" and states()[:2] == ["submitted", "delivered"]


async def test_custom_attributes_reach_the_launched_text(store: Store) -> None:
    gold = subscriber(store, 1)
    plain = subscriber(store, 2)
    store.put_subscriber("acme", Profile(phone="+447911100001", attributes={"tier": "gold"}), phone="+447911100001",
                         at=T0 - 500, now=T0 - 500)  # fmt: skip
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "Tiers", {"sender": "ACME", "template": "Your {attr.tier|member} perks",
                                            "audience": {"subscribers": [gold, plain]}})
    await la.launch("acme", camp.id)
    [job] = gw.jobs.values()
    texts = {r["to"]: r["vars"]["body"] for r in job["recipients"]}
    assert texts["+447911100001"].startswith("Your gold perks") and texts["+447911100002"].startswith("Your member perks")


async def test_smart_sending_skips_who_got_marketing_within_16_hours(store: Store) -> None:
    a, b = subscriber(store, 1), subscriber(store, 2)
    gw = FakeGateway()
    first = await launcher(store, gw).create("acme", "One", {"sender": "ACME", "template": "one",
                                                             "audience": {"subscribers": [a]}})  # fmt: skip
    await launcher(store, gw).launch("acme", first.id)
    second = await launcher(store, gw).create("acme", "Two", {"sender": "ACME", "template": "two",
                                                              "audience": {"subscribers": [a, b]}})  # fmt: skip
    out = await launcher(store, gw, now=T0 + 16 * 3600 - 1).launch("acme", second.id)
    assert out.recipients == 1 and [r["to"] for r in gw.jobs["job-2"]["recipients"]] == ["+447911100002"]
    third = await launcher(store, gw).create("acme", "Three", {"sender": "ACME", "template": "three",
                                                               "audience": {"subscribers": [a]}})  # fmt: skip
    out = await launcher(store, gw, now=T0 + 16 * 3600).launch("acme", third.id)  # exactly 16 h: sent
    assert out.recipients == 1


async def test_local_time_gives_one_job_per_instant_and_each_recipient_its_zone(store: Store) -> None:
    paris, tokyo, none = subscriber(store, 1, zone="Europe/Paris"), subscriber(store, 2, zone="Asia/Tokyo"), subscriber(store, 3)
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "Local", {"sender": "ACME", "template": "hello",
                                             "schedule": {"kind": "local", "date": "2025-12-30", "time": "10:00"},
                                             "audience": {"subscribers": [paris, tokyo, none]}})  # fmt: skip
    await la.launch("acme", camp.id)
    jobs = sorted(gw.jobs.values(), key=lambda j: j["head"]["send_at"])
    # Tokyo's 10:00 comes first; Paris and the zoneless subscriber (tenant zone: Paris) share an instant.
    assert [[r["tz"] for r in j["recipients"]] for j in jobs] == [["Asia/Tokyo"], ["Europe/Paris", "Europe/Paris"]]
    assert jobs[0]["head"]["send_at"] == 1767056400.0  # 2025-12-30 10:00 JST
    assert jobs[1]["head"]["send_at"] == 1767085200.0  # 2025-12-30 10:00 CET


async def test_ab_variants_and_the_held_rest(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 41)]
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "AB", {"sender": "ACME", "variants": [{"name": "a", "template": "A text"},
                                                                         {"name": "b", "template": "B text"}],
                                          "ab": {"test_share": 0.5}, "audience": {"subscribers": ids}})  # fmt: skip
    out = await la.launch("acme", camp.id)
    rows = store.campaign_recipients("acme", camp.id)
    sent = [r for r in rows if r.batch >= 0]
    assert out.recipients == len(sent) and out.held == len(rows) - len(sent) and 0 < len(sent) < 40
    assert {r.text.split()[0] for r in sent if r.variant == "a"} == {"A"}
    assert {r.text.split()[0] for r in sent if r.variant == "b"} == {"B"}
    assert all(r.state == "planned" and r.variant is None for r in rows if r.batch < 0)


async def test_bad_definitions_and_states_are_coded_errors(store: Store) -> None:
    gw = FakeGateway()
    la = launcher(store, gw)
    for bad, code in [({"sender": "A"}, "template_required"), ({"sender": "A", "template": "{nope}"}, "unknown_shortcode"),
                      ({"sender": "A", "template": "x", "discount": {"pattern": "AB"}}, None),
                      ({"sender": "A", "template": "x", "schedule": {"kind": "local", "date": "x", "time": "10:00"}}, None)]:
        with pytest.raises(InvalidInput) as e:
            await la.create("acme", "bad", bad)
        assert code is None or e.value.code == code
    sid = subscriber(store, 1, name=None)
    camp = await la.create("acme", "Missing", {"sender": "A", "template": "Hi {first_name}", "audience": {"subscribers": [sid]}})
    with pytest.raises(InvalidInput) as e:
        await la.launch("acme", camp.id)
    assert e.value.code == "missing_value" and gw.posts == 0
    await la.control("acme", camp.id, "cancel")
    with pytest.raises(Conflict):
        await la.launch("acme", camp.id)


async def test_pause_and_cancel_reach_every_job(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 5)]
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "P", {"sender": "A", "template": "x", "batch_size": 2, "audience": {"subscribers": ids}})
    await la.launch("acme", camp.id)
    assert (await la.control("acme", camp.id, "pause")).status == "paused"
    assert (await la.control("acme", camp.id, "resume")).status == "launched"
    assert (await la.control("acme", camp.id, "cancel")).status == "canceled"
    assert gw.actions == [("job-1", "pause"), ("job-2", "pause"), ("job-1", "resume"), ("job-2", "resume"),
                          ("job-1", "cancel"), ("job-2", "cancel")]  # fmt: skip


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.integers(1, 4))
def test_any_sequence_of_lost_answers_sends_each_recipient_once(tmp_path_factory: pytest.TempPathFactory,
                                                                lost: list[int], batch_size: int) -> None:  # fmt: skip
    import anyio

    path = tmp_path_factory.mktemp("launch") / "c.db"
    store = open_store(f"sqlite:///{path}")
    try:
        ids = [subscriber(store, n) for n in range(1, 8)]
        gw = FakeGateway()
        gw.lose_answer_of = set(lost)

        async def run() -> None:
            camp = await launcher(store, gw).create("acme", "P", {"sender": "A", "template": "x https://s.io",
                                                                  "batch_size": batch_size, "audience": {"subscribers": ids}})
            for attempt in range(20):
                try:
                    await launcher(store, gw, now=T0 + attempt).launch("acme", camp.id)
                    return
                except GatewayError:
                    continue
            raise AssertionError("never finished")

        anyio.run(run)
        assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, 8)})
    finally:
        store.close()


def test_spec_round_trips() -> None:
    spec = parse_spec({"sender": "A", "template": "x", "schedule": {"kind": "at", "at": T0}})
    assert spec.schedule.at == T0  # type: ignore[union-attr]
    assert json.loads(json.dumps({"sender": "A", "template": "x"})) == {"sender": "A", "template": "x"}


async def test_a_code_another_campaign_holds_is_never_reused(store: Store) -> None:
    """Codes are checked against the store in bulk after minting: a clash gets the next code."""
    from campaigns.core.links import code_length, mint_code
    from campaigns.store.campaign_rows import LinkRow

    sid = subscriber(store, 1)
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "Clash", {"sender": "A", "template": "x https://s.io/a", "audience": {"subscribers": [sid]}})
    squatted = mint_code(TL.key, f"{camp.id}:{sid}:0", code_length(TL.domain))
    other = store.put_campaign("acme", "Other", {}, now=T0)
    store.freeze_audience("acme", other.id, [], [LinkRow(code=squatted, tenant="acme", campaign_id=other.id,
                                                         subscriber_id=99, target="https://other.io", created_at=T0)], now=T0)
    await la.launch("acme", camp.id)
    [row] = store.campaign_recipients("acme", camp.id)
    code = row.text.split("https://sl.ui/")[1].split()[0]
    assert code != squatted
    link = store.link(code)
    assert link is not None and link.campaign_id == camp.id and link.target == "https://s.io/a"
    squat = store.link(squatted)
    assert squat is not None and squat.campaign_id == other.id  # untouched


ZONES = [None, "Europe/Paris", "Asia/Tokyo", "America/New_York", "Not/AZone"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(st.tuples(st.sampled_from(["none", "pending", "confirmed", "revoked"]), st.sampled_from(ZONES),
                                 st.sampled_from([None, 1.0, 15.99, 16.0, 40.0]), st.booleans()), min_size=1, max_size=12),
       local=st.booleans(), batch_size=st.integers(1, 5))  # fmt: skip
def test_the_frozen_audience_obeys_every_rule(tmp_path_factory: pytest.TempPathFactory, people: list, local: bool,
                                              batch_size: int) -> None:  # fmt: skip
    """Whatever the mix: only confirmed subscribers of the audience, smart sending by each one's own
    send_at, one slot each, one send_at per batch, slots numbered from 0 in order."""
    import anyio

    from campaigns.core.events import ActivityEvent

    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('rules') / 'c.db'}")
    try:
        audience, expected_ok = [], {}
        for n, (consent, zone, hours_ago, listed) in enumerate(people, start=1):
            sid = subscriber(store, n, consent=consent, zone=zone)
            if hours_ago is not None:
                phone = f"+4479111{n:05d}"
                store.apply_event("acme", ActivityEvent(id=f"m{n}", at=T0 - hours_ago * 3600, phone=phone, kind="message_sent"),
                                  phone=phone, now=T0)  # fmt: skip
            if listed:
                audience.append(sid)
                expected_ok[sid] = (consent, hours_ago)
        gw = FakeGateway()
        schedule = {"kind": "local", "date": "2025-12-29", "time": "10:00"} if local else {"kind": "now"}

        async def run() -> None:
            la = launcher(store, gw)
            camp = await la.create("acme", "R", {"sender": "A", "template": "x", "schedule": schedule,
                                                 "batch_size": batch_size, "audience": {"subscribers": audience}})
            await la.launch("acme", camp.id)

        anyio.run(run)
        rows = store.campaign_recipients("acme", 1)
        for r in rows:
            consent, hours_ago = expected_ok[r.subscriber_id]
            assert consent == "confirmed" and r.send_at >= T0
            assert hours_ago is None or r.send_at - (T0 - hours_ago * 3600) >= 16 * 3600
        kept = {r.subscriber_id for r in rows}
        for sid, (consent, hours_ago) in expected_ok.items():
            if consent == "confirmed" and sid not in kept:  # skipped: only by smart sending
                assert hours_ago is not None
        assert len({(r.batch, r.idx) for r in rows}) == len(rows)
        for b in store.batches("acme", 1):
            members = store.batch_recipients("acme", 1, b.batch)
            assert {m.send_at for m in members} == {b.send_at} and [m.idx for m in members] == list(range(len(members)))
            assert 0 < len(members) <= batch_size
        assert Counter(gw.sent()) == Counter(r.phone for r in rows)
    finally:
        store.close()


async def test_a_cancel_during_the_launch_stops_it_and_cancels_the_batches_in_flight(store: Store) -> None:
    ids = [subscriber(store, n) for n in range(1, 7)]
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "C", {"sender": "A", "template": "x", "batch_size": 2, "audience": {"subscribers": ids}})
    inner = gw.handle

    def cancel_on_first_job(request):  # the operator cancels while the first job is being answered
        resp = inner(request)
        if request.url.path == "/v1/jobs" and len(gw.jobs) == 1:
            store.set_campaign_status("acme", camp.id, "canceled", now=T0)
        return resp

    gw.handle = cancel_on_first_job  # type: ignore[method-assign]
    la = launcher(store, gw)
    out = await la.launch("acme", camp.id)
    # At most the window's two batches were posted (never the third), and every job posted is canceled.
    assert out.status == "canceled" and 1 <= len(gw.jobs) <= 2
    assert sorted(gw.actions) == [(job, "cancel") for job in sorted(gw.jobs)]


@pytest.mark.parametrize("window", [1, 2, 3])
async def test_the_next_batches_are_posted_while_the_gateway_answers_within_the_window(store: Store, window: int) -> None:
    """``post_window`` batches in flight at once: with 2 or more the gateway receives batch 1 before it
    has answered batch 0 (it reads and checks the next job while it writes and answers this one),
    never more than the window at once, posts started in batch order, each recipient sent once."""
    ids = [subscriber(store, n) for n in range(1, 8)]
    gw = FakeGateway()
    camp = await launcher(store, gw).create("acme", "W", {"sender": "A", "template": "x https://s.io/x", "batch_size": 2,
                                         "audience": {"subscribers": ids}})  # fmt: skip
    inner, arrived, flight = gw.handle, [], [0, 0]  # references in arrival order; in flight now, at most
    second = anyio.Event()

    async def handle(request):
        if request.method != "POST" or request.url.path != "/v1/jobs":
            return inner(request)
        arrived.append(json.loads(request.content.split(b"\n", 1)[0])["reference"])
        flight[0] += 1
        flight[1] = max(flight)
        try:
            if len(arrived) == 2:
                second.set()
            if len(arrived) == 1 and window > 1:  # batch 0 is answered only once batch 1 has arrived (bounded)
                with anyio.fail_after(10):
                    await second.wait()
            await anyio.lowlevel.checkpoint()
            return inner(request)
        finally:
            flight[0] -= 1

    gw.handle = handle  # type: ignore[method-assign]
    client = GatewayClient("http://gateway.test", "key", transport=gw.transport())
    la = Launcher(store, {"acme": client}, {"acme": TL}, lambda: T0, post_window=window)
    out = await la.launch("acme", camp.id)
    assert out.status == "launched" and out.batches == 4 and out.accepted == 7
    assert arrived == [f"campaign:{camp.id}:batch:{b}" for b in range(4)]
    assert flight[1] == min(window, 2) if window > 1 else flight[1] == 1
    assert Counter(gw.sent()) == Counter(f"+4479111{i:05d}" for i in range(1, 8))


async def test_the_next_batches_are_posted_while_the_answer_before_them_waits_for_the_store(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A batch's answer is stored beside the next posts, not before them (on SQLite a freeze chunk
    holds the store's one connection, and every post waited for it: docs/BENCHMARKS.md, launch10),
    at most ``ANSWERS_AHEAD`` posts ahead of the answers stored. Batch 0's answer is stored only once
    the gateway has received that many batches (bounded): never more, and the launch ends with every
    answer stored, in batch order, each recipient once."""
    ids = [subscriber(store, n) for n in range(1, 8)]
    gw = FakeGateway()
    camp = await launcher(store, gw).create("acme", "A", {"sender": "A", "template": "x https://s.io/x", "batch_size": 1,
                                         "audience": {"subscribers": ids}})  # fmt: skip
    inner, posted, stored, enough = gw.handle, [], [], threading.Event()

    def handle(request):
        if request.method == "POST" and request.url.path == "/v1/jobs":
            posted.append(json.loads(request.content.split(b"\n", 1)[0])["reference"])
            assert len(posted) - len(stored) <= ANSWERS_AHEAD
            if len(posted) == ANSWERS_AHEAD:
                enough.set()
        return inner(request)

    real = store.batch_submitted

    def held(tenant: str, campaign_id: int, batch: int, **kw) -> None:  # in a worker thread
        if batch == 0 and not enough.wait(10):
            raise AssertionError("the next batches were not posted while batch 0's answer waited for the store")
        real(tenant, campaign_id, batch, **kw)
        stored.append(batch)

    gw.handle = handle  # type: ignore[method-assign]
    monkeypatch.setattr(store, "batch_submitted", held)
    out = await launcher(store, gw).launch("acme", camp.id)
    assert out.status == "launched" and out.batches == 7 and out.accepted == 7
    assert stored == list(range(7)) and all(b.job_id for b in store.batches("acme", camp.id))
    assert posted == [f"campaign:{camp.id}:batch:{b}" for b in range(7)]
    assert Counter(gw.sent()) == Counter(f"+4479111{i:05d}" for i in range(1, 8))


async def test_a_cancel_while_an_answer_waits_for_the_store_still_cancels_that_job(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The operator cancels after the gateway answered batch 0 and before that answer is stored, so
    the cancel (``control``: the status, then the jobs it finds stored) cannot see its job: the
    launcher, which checks the status after storing each answer, cancels it, and every job posted
    (the posts go on while an answer is stored, up to ``ANSWERS_AHEAD`` of them) is canceled."""
    ids = [subscriber(store, n) for n in range(1, 7)]
    gw = FakeGateway()
    la = launcher(store, gw)
    camp = await la.create("acme", "C", {"sender": "A", "template": "x", "batch_size": 2, "audience": {"subscribers": ids}})
    real = store.batch_submitted

    def cancel_first(tenant: str, campaign_id: int, batch: int, **kw) -> None:
        if batch == 0:
            store.set_campaign_status(tenant, campaign_id, "canceled", now=T0)
            assert not [b.job_id for b in store.batches(tenant, campaign_id) if b.job_id]  # what control reads
        real(tenant, campaign_id, batch, **kw)

    monkeypatch.setattr(store, "batch_submitted", cancel_first)
    out = await la.launch("acme", camp.id)
    assert out.status == "canceled" and 1 <= len(gw.jobs) <= 3
    assert sorted(gw.actions) == [(job, "cancel") for job in sorted(gw.jobs)]


def test_a_campaigns_status_is_read_while_a_transaction_holds_the_sqlite_store(sqlite_url: str) -> None:
    """``campaign_status`` (the launch's check for a cancel between two posts) reads on a connection of
    its own: it answers the committed status while another thread's transaction (a freeze chunk)
    holds the store's connection, instead of waiting for it."""
    store = open_store(sqlite_url)
    try:
        camp = store.put_campaign("acme", "S", {"sender": "A", "template": "x", "audience": {"subscribers": [1]}}, now=T0)
        store.set_campaign_status("acme", camp.id, "launching", now=T0)
        seen: list[object] = []
        with store._tx() as tx:  # type: ignore[attr-defined]  # a chunk's transaction, open on this thread
            tx.run("UPDATE campaigns SET name = 'T' WHERE id = ?", (camp.id,))
            reader = threading.Thread(target=lambda: seen.append(store.campaign_status("acme", camp.id)), daemon=True)
            reader.start()
            reader.join(10)
            assert seen == ["launching"]
        assert store.campaign_status("acme", camp.id + 1) is None
    finally:
        store.close()


async def test_a_store_failure_building_the_next_body_stops_the_launch_and_a_relaunch_sends_each_once(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The next batch's body is built while the gateway answers this one: a failure there is raised
    as itself (not wrapped), nothing after it is posted, and launching again finishes the rest."""
    from campaigns.errors import StorageError

    ids = [subscriber(store, n) for n in range(1, 10)]
    gw = FakeGateway()
    definition = {"sender": "ACME", "template": "Sale at https://s.io/x", "batch_size": 3, "audience": {"subscribers": ids}}
    camp = await launcher(store, gw).create("acme", "Broken store", definition)
    real = store.batch_lines  # what a body is built from

    def flaky(tenant: str, campaign_id: int, batch: int) -> list:
        if batch == 1:
            raise StorageError("disk I/O error")
        return real(tenant, campaign_id, batch)

    monkeypatch.setattr(store, "batch_lines", flaky)
    # Frozen by an earlier launch that stopped there: the bodies are read back from the store (a
    # launch that froze them itself builds them from what it stored: the test below).
    from campaigns.service.launch import freeze

    freeze(store, "acme", store.set_campaign_status("acme", camp.id, "launching", now=T0), TL, T0)
    with pytest.raises(StorageError):
        await launcher(store, gw).launch("acme", camp.id)
    assert len(gw.jobs) == 1  # batch 0 only: never batch 2 before batch 1
    monkeypatch.setattr(store, "batch_lines", real)
    out = await launcher(store, gw, now=T0 + 60).launch("acme", camp.id)
    assert out.status == "launched" and out.batches == 3 and out.accepted == 9
    assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, 10)})


@pytest.mark.parametrize("template", ["Sale {attr.tier|at} https://s.io/x", "Sale at https://s.io/x"])
async def test_a_failure_building_a_body_from_the_just_frozen_rows_stops_the_launch_too(
        store: Store, monkeypatch: pytest.MonkeyPatch, template: str) -> None:  # fmt: skip
    """A launch that planned the audience in Python builds its bodies from the rows it stored (not
    read back; a set-based freeze, the second template, writes the texts in SQL: its bodies are read
    back): a failure building the second body stops it there, and the relaunch (bodies read back
    from the store, the same bytes: the fake gateway answers other bytes under a key with a 409)
    sends the rest once."""
    from campaigns.service import launch as launch_mod

    ids = [subscriber(store, n) for n in range(1, 10)]
    gw = FakeGateway()
    definition = {"sender": "ACME", "template": template, "batch_size": 3, "audience": {"subscribers": ids}}
    camp = await launcher(store, gw).create("acme", "Broken body", definition)
    real, calls = launch_mod.job_body_of, []

    def flaky(head: bytes, lines: list) -> bytes:
        calls.append(len(lines))
        if len(calls) == 2:
            raise MemoryError("no room for the body")
        return real(head, lines)

    def unread(*_a: object) -> list:
        raise AssertionError("the rows just frozen are not read back")

    assert launch_mod.set_based(parse_spec(definition)) == ("attr." not in template)
    monkeypatch.setattr(launch_mod, "job_body_of", flaky)
    if "attr." in template:
        monkeypatch.setattr(store, "batch_lines", unread)
    with pytest.raises(MemoryError):
        await launcher(store, gw).launch("acme", camp.id)
    assert len(gw.jobs) == 1
    monkeypatch.setattr(launch_mod, "job_body_of", real)
    monkeypatch.undo()
    out = await launcher(store, gw, now=T0 + 60).launch("acme", camp.id)
    assert out.status == "launched" and out.accepted == 9 and len(gw.jobs) == 3
    assert Counter(gw.sent()) == Counter({f"+4479111{i:05d}": 1 for i in range(1, 10)})


def test_the_post_window_is_a_setting_of_one_to_eight() -> None:
    """``campaigns.launch_post_window``: batches in flight at once (default 1: each posted once the
    one before is answered); 0 and more than 8 are refused, naming the key."""
    from campaigns.config import loads

    base = '[campaigns]\n{}[[campaigns.tenants]]\nname = "acme"\nkey_env = "K"\n'
    settings = loads(base.format(""))
    assert settings is not None and settings.launch_post_window == 1
    settings = loads(base.format("launch_post_window = 2\n"))
    assert settings is not None and settings.launch_post_window == 2
    for bad in (0, 9):
        with pytest.raises(Exception, match="launch_post_window"):
            loads(base.format(f"launch_post_window = {bad}\n"))
