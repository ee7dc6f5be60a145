"""Failover in the core: a carrier marked down gives its ready traffic to the next carrier of
each message's route, in priority order, never losing or duplicating a message; opt-outs act
on messages already queued."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import Final, FinalState, Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CapSettings, CarrierSettings, CoreSettings, QuietHoursSettings, Route

NOW = 1_795_546_800.0  # 14:00 in New York: marketing may go
CARRIERS = ("a", "b", "c")


def core() -> Scheduler:
    s = CoreSettings(
        carriers=[CarrierSettings(name=n, rate=1e6, burst=10_000) for n in CARRIERS],
        routes=[Route(prefix="", carriers=["a", "b"]), Route(prefix="44", carriers=["b", "c", "a"]),
                Route(prefix="33", carriers=["c"])],  # fmt: skip
        shards=4,
        # Quiet hours and caps have their own tests: here every message may go at once.
        quiet_hours=QuietHoursSettings(start="00:00", end="24:00", overrides={}, rules={}),
        weekly_cap=CapSettings(limit=1000),
    )
    return Scheduler(s, NOW)


def job(jid: str, category: str = "transactional", carrier: str | None = None) -> Job:
    return Job(id=jid, tenant="t", sender="S", template="hi", category=category, carrier=carrier)


def people(prefix: str, n: int, digits: int = 11) -> list[Recipient]:
    return [Recipient(to=f"+{prefix}{i:0{digits - len(prefix)}d}") for i in range(n)]


def test_down_carrier_traffic_goes_to_the_next_route_carrier_in_priority_order() -> None:
    c = core()
    c.admit(job("m", "marketing"), people("1212555", 3), NOW)
    c.admit(job("o", "otp"), people("1646555", 2), NOW)
    c.carrier_down("a", NOW)
    assert c.is_down("a") and c.statistics(NOW).down == ["a"]
    assert c.take("a", 100, NOW).dispatches == []  # everything it had has somewhere better to go
    got = c.take("b", 100, NOW).dispatches
    assert [d.job_id for d in got] == ["o", "o", "m", "m", "m"]
    assert {d.carrier for d in got} == {"b"}


def test_requeued_messages_of_a_down_carrier_move_too_and_stay_moved() -> None:
    c = core()
    c.admit(job("j"), people("1212555", 4), NOW)
    sent = c.take("a", 100, NOW).dispatches
    assert len(sent) == 4
    c.carrier_down("a", NOW)
    for d in sent[:2]:
        c.requeue(d.ref, NOW)  # the bind dropped with them in flight
    c.complete(sent[2].ref, NOW)
    c.complete(sent[3].ref, NOW)
    moved = c.take("b", 100, NOW).dispatches
    assert [d.message_id for d in moved] == [d.message_id for d in sent[:2]]
    c.carrier_up("a", NOW)
    assert not c.is_down("a")
    c.requeue(moved[0].ref, NOW)
    assert c.take("a", 100, NOW).dispatches == []
    assert [d.message_id for d in c.take("b", 100, NOW).dispatches] == [moved[0].message_id]


def test_no_carrier_up_or_a_named_carrier_keeps_the_message_where_it_is() -> None:
    c = core()
    c.admit(job("fr"), people("33612", 2), NOW)  # route: c only
    c.admit(job("pinned", carrier="a"), people("1212555", 1), NOW)
    c.carrier_down("c", NOW)
    c.carrier_down("a", NOW)
    assert c.take("b", 100, NOW).dispatches == []
    assert len(c.take("c", 100, NOW).dispatches) == 2
    assert [d.job_id for d in c.take("a", 100, NOW).dispatches] == ["pinned"]


def test_second_choice_down_too_goes_to_the_third() -> None:
    c = core()
    c.admit(job("uk"), people("44791", 3), NOW)  # route: b, c, a
    c.carrier_down("b", NOW)
    c.carrier_down("c", NOW)
    assert len(c.take("a", 100, NOW).dispatches) == 3


def test_opt_out_ends_queued_marketing_but_not_transactional() -> None:
    c = core()
    number = "+12125550001"
    c.admit(job("m", "marketing"), [Recipient(to=number)] * 3 + people("1212666", 2), NOW)
    c.admit(job("t"), [Recipient(to=number)], NOW)
    first = c.take("a", 1, NOW)  # the transactional one goes first (priority)
    assert [d.job_id for d in first.dispatches] == ["t"]
    c.suppress("t", number)  # STOP arrives mid-job
    rest = c.take("a", 100, NOW)
    assert {d.recipient for d in rest.dispatches} == {"+12126660000", "+12126660001"}
    ended = [o for o in rest.outcomes if isinstance(o, Final)]
    assert len(ended) == 3 and {o.state for o in ended} == {FinalState.SUPPRESSED}


ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from(["1212", "4479", "3361"]), st.integers(1, 5),
                  st.sampled_from(["otp", "transactional", "marketing"]), st.sampled_from([None, None, "a"])),  # fmt: skip
        st.tuples(st.just("down"), st.sampled_from(CARRIERS)),
        st.tuples(st.just("up"), st.sampled_from(CARRIERS)),
        st.tuples(st.just("take"), st.sampled_from(CARRIERS), st.integers(1, 8)),
        st.tuples(st.just("complete"), st.integers(0, 50)),
        st.tuples(st.just("requeue"), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_failover_never_loses_nor_duplicates_and_respects_health(script) -> None:
    c = core()
    routes = {"1": ["a", "b"], "44": ["b", "c", "a"], "33": ["c"]}
    admitted: set[int] = set()
    pinned: set[int] = set()
    inflight: dict[int, object] = {}
    done: set[int] = set()
    n = 0

    def check(carrier: str, batch) -> None:
        down = set(c.statistics(NOW).down)
        for d in batch.dispatches:
            assert d.message_id in admitted and d.message_id not in inflight and d.message_id not in done
            if carrier in down and d.message_id not in pinned:
                route = routes["44" if d.recipient.startswith("+44") else d.recipient[1:3] if d.recipient.startswith("+33") else "1"]
                assert all(r in down for r in route), (carrier, d.recipient, down)
            inflight[d.message_id] = d
        for o in batch.outcomes:
            assert isinstance(o, Final) and o.message_id not in done
            done.add(o.message_id)

    for op in script:
        match op:
            case ("admit", prefix, k, category, carrier):
                n += 1
                adm = c.admit(job(f"j{n}", category, carrier), [Recipient(to=f"+{prefix}{n:04d}{i:03d}") for i in range(k)], NOW)
                ids = set(range(adm.first_id, adm.first_id + adm.accepted))
                admitted |= ids
                if carrier:
                    pinned.update(ids)
            case ("down", name):
                c.carrier_down(name, NOW)
            case ("up", name):
                c.carrier_up(name, NOW)
            case ("take", name, size):
                check(name, c.take(name, size, NOW))
            case ("complete" | "requeue" as what, i) if inflight:
                mid = sorted(inflight)[i % len(inflight)]
                d = inflight.pop(mid)
                if what == "complete":
                    c.complete(d.ref, NOW)
                    done.add(mid)
                else:
                    c.requeue(d.ref, NOW)
    for name in CARRIERS:
        c.carrier_up(name, NOW)
    for d in list(inflight.values()):
        c.complete(d.ref, NOW)
        done.add(d.message_id)
    inflight.clear()
    for _ in range(100):
        for name in CARRIERS:
            batch = c.take(name, 1000, NOW)
            check(name, batch)
            for d in batch.dispatches:
                c.complete(d.ref, NOW)
                done.add(d.message_id)
            inflight.clear()
        if done == admitted:
            break
    assert done == admitted
    stats = c.statistics(NOW)
    assert (stats.inflight, sum(stats.ready.values()), stats.jobs) == (0, 0, 0)


def test_accepted_in_one_pass_is_the_same_as_one_at_a_time() -> None:
    """``complete_accepted`` (what the dispatcher calls with a drain's ``Submitted``) leaves the
    core as ``complete(ref, now)`` for each does: rows freed, jobs ended, the carriers' accepted
    rates (a long message's segments counted), and a ref not in flight refused."""
    one, batch = core(), core()
    for c in (one, batch):
        c.admit(job("short"), people("1212555", 5), NOW)
        c.admit(Job(id="long", tenant="t", sender="S", template="x" * 300, category="transactional"),
                people("44791", 3), NOW)  # fmt: skip
    for name in ("a", "b"):
        sent_one = one.take(name, 100, NOW).dispatches
        sent_batch = batch.take(name, 100, NOW).dispatches
        assert [d.message_id for d in sent_one] == [d.message_id for d in sent_batch] and sent_one
        for d in sent_one:
            one.complete(d.ref, NOW + 0.5)
        batch.complete_accepted([d.ref for d in sent_batch], NOW + 0.5)
        assert batch.bucket(name).accepted_rate(NOW + 0.6) == one.bucket(name).accepted_rate(NOW + 0.6) > 0
    assert batch.statistics(NOW) == one.statistics(NOW)
    assert batch.statistics(NOW).inflight == 0
    try:
        batch.complete_accepted([sent_batch[0].ref], NOW)
    except ValueError:
        pass
    else:
        raise AssertionError("a ref no longer in flight must be refused")
