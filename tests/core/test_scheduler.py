from gateway.core.model import FinalState, Job, Recipient
from gateway.core.scheduler import Scheduler
from gateway.core.settings import CarrierSettings, CoreSettings, Route

NOW = 1_795_546_800.0  # 2026-11-24 19:00 UTC: 14:00 in New York


def core(**kw) -> Scheduler:
    s = CoreSettings(carriers=[CarrierSettings(name="a", rate=1000, burst=100)], routes=[Route(carriers=["a"])], **kw)
    return Scheduler(s, NOW)


def job(template: str, category: str = "transactional", **kw) -> Job:
    return Job(id=kw.pop("id", "j"), tenant="t", sender="S", template=template, category=category, **kw)


def test_smart_encoding_is_applied_at_dispatch():
    c = core()
    c.admit(job("Don’t miss it — “today”"), [Recipient(to="+12125550101")], NOW)
    [d] = c.take("a", 10, NOW).dispatches
    assert d.body == "Don't miss it - \"today\"" and d.encoding == "gsm7" and d.segments == 1


def test_unicode_stays_ucs2():
    c = core()
    c.admit(job("Merci 🎉 {name}"), [Recipient(to="+33612345678", vars={"name": "Zoë"})], NOW)
    [d] = c.take("a", 10, NOW).dispatches
    assert d.body == "Merci 🎉 Zoë" and d.encoding == "ucs2"


def test_pause_resume_cancel():
    c = core()
    adm = c.admit(job("x"), [Recipient(to=f"+1212555{i:04d}") for i in range(5)], NOW, paused=True)
    assert adm.accepted == 5
    assert c.take("a", 10, NOW).dispatches == []
    assert c.statistics(NOW).parked == 5
    c.resume_job("j")
    batch = c.take("a", 2, NOW)
    assert len(batch.dispatches) == 2
    c.pause_job("j")
    assert c.take("a", 10, NOW).dispatches == []
    ended = c.cancel_job("j", NOW)
    assert len(ended) == 3 and {f.state for f in ended} == {FinalState.CANCELED}
    for d in batch.dispatches:
        c.complete(d.ref)
    stats = c.statistics(NOW)
    assert (stats.parked, stats.waiting, stats.inflight, sum(stats.ready.values()), stats.jobs) == (0, 0, 0, 0, 0)


def test_too_many_segments_is_rejected_not_truncated():
    c = core(max_segments=2)
    adm = c.admit(job("{x}"), [Recipient(to="+12125550101", vars={"x": "a" * 400}),
                               Recipient(to="+12125550102", vars={"x": "ok"})], NOW)  # fmt: skip
    assert adm.accepted == 1 and adm.rejected[0][0] == 0 and "segments" in adm.rejected[0][1]


def test_a_long_message_goes_alone_through_a_small_window():
    c = core()
    c.admit(job("a" * 500), [Recipient(to="+12125550101")], NOW)  # 4 segments
    [d] = c.take("a", 1, NOW).dispatches
    assert d.segments == 4


def test_ids_are_grouped_by_shard_within_an_admission():
    # The messages a shard hands out together get neighbouring ids (their store rows share
    # pages); every accepted recipient has its own offset in the block, rejected ones none.
    from gateway.core.shard import shard_of

    c = core(shards=4)
    people = [Recipient(to=f"+1212555{i:04d}") for i in range(200)]
    people[7] = Recipient(to="+1")  # rejected
    adm = c.admit(job("x"), people, NOW)
    assert adm.offsets[7] == -1 and adm.rejected[0][0] == 7
    kept = [i for i in range(200) if i != 7]
    assert sorted(adm.offsets[i] for i in kept) == list(range(199)) == list(range(adm.accepted))
    for k in range(4):
        mine = sorted(adm.offsets[i] for i in kept if shard_of(int(people[i].to[1:]), 4) == k)
        assert mine == list(range(mine[0], mine[0] + len(mine)))  # one run per shard
    sent = c.take("a", 200, NOW).dispatches  # as many as the carrier's burst allows
    by_number = {people[i].to: adm.first_id + adm.offsets[i] for i in kept}
    assert sent and all(d.message_id == by_number[d.recipient] for d in sent)


def test_recipients_checked_by_another_scheduler_keep_their_zones():
    # A worker process checks with its own scheduler, whose zone keys are numbered in the order
    # it met the zones; the answer names its zone sets, and admission maps them to its own keys.
    here, there = core(), core()
    new_york, tokyo = Recipient(to="+12125550101"), Recipient(to="+81312345678")
    here.check(job("x"), [new_york])  # here New York's zones got the first key,
    there.check(job("x"), [tokyo])  # there Tokyo's
    checked = there.check(job("sale", "marketing"), [tokyo, new_york], portable=True)
    adm = here.admit_checked(job("sale", "marketing"), checked, NOW)
    assert adm.accepted == 2 and adm.rejected == []
    # 14:00 in New York, 04:00 in Tokyo: only New York's message may go now
    [d] = here.take("a", 10, NOW).dispatches
    assert d.recipient == new_york.to and d.message_id == adm.first_id + adm.offsets[1]


def test_check_changes_nothing_admission_does():
    c = core()
    checked = c.check(job("Hi {name}"), [Recipient(to="+12125550101", vars={"name": "Ann"}), Recipient(to="+1")])
    assert checked.count == 2 and [i for i, _ in checked.rejected] == [0 + 1]
    assert c.statistics(NOW).jobs == 0 and c.take("a", 10, NOW).dispatches == []
    adm = c.admit_checked(job("Hi {name}"), checked, NOW)
    assert adm.accepted == 1 and adm.offsets == [0, -1]
    [d] = c.take("a", 10, NOW).dispatches
    assert d.body == "Hi Ann" and d.message_id == adm.first_id
