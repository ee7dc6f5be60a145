"""The one test suite every Store passes. Subclass ``StoreConformance`` and give it a
``store`` fixture (see tests/store/test_stores.py); every method is a pytest test."""

from __future__ import annotations

import random

import msgspec
import pytest

from gateway.core.model import Job, Recipient
from gateway.errors import Conflict
from gateway.store.base import (CALLBACK_STATES, JOBS_SCAN, NOTIFY, STATES, Change, HookEvent, InboundRecord, NewJob,
                                OutboxStats, RecipientRows, hook_rows_of, job_status)  # fmt: skip

JOB = Job(id="j1", tenant="acme", sender="ACME", template="Hi {name}", category="marketing")
PLAIN = Job(id="j2", tenant="acme", sender="ACME", template="Hi {name}", category="marketing")
HOOK = "https://example.invalid/cb"
PEOPLE = [(i, Recipient(to=f"+1212555{i:04d}", vars={"name": f"n{i}"})) for i in range(5)]


def drain(store) -> list[HookEvent]:
    """Every webhook event after its subscriber's cursor (subscribers in order, each in sequence
    order), acknowledged: what a reader that always gets a 2xx delivers next."""
    out: list[HookEvent] = []
    for sub in store.hook_due(float("inf")):
        events = store.hook_events(sub.id, 1 << 30)
        out += events
        if events:
            store.hook_ack([(sub.id, events[-1].seq)])
    return out


class StoreConformance:
    def test_job_roundtrip_and_counts(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0, callback_url="https://example.invalid/cb")
        got = store.job("acme", "j1")
        assert got.job.job == JOB and got.job.first_id == 1000 and got.job.size == 5
        assert got.job.callback_url == "https://example.invalid/cb"
        assert got.counts == {"queued": 5}
        assert store.job("other-tenant", "j1") is None
        assert store.job_info("acme", "j1") == got.job
        assert store.job_info("other-tenant", "j1") is None

    def test_pages_carry_each_messages_recipient(self, store) -> None:
        people = [(i, Recipient(to=f"+1212555{i:04d}", index=4 - i)) for i in range(5)]
        store.add_job(msgspec.structs.replace(JOB, reference="order-7"), 1000, people, 10.0, callback_url=HOOK)
        page = store.messages("acme", "j1", state=None, after=0, limit=3)
        assert [i for i, _ in page.ids] == [1000, 1001, 1002]
        assert [r.index for r in page.recipients] == [4, 3, 2] and page.recipients[0].to == "+12125550000"
        store.record([Change(message_id=1003, state="delivered", at=11.0)])
        (item,) = drain(store)  # the webhook says whom it is about
        assert (item.to, item.index, item.reference) == ("+12125550003", 1, "order-7")

    def test_jobs_listed_paged_and_filtered_by_status(self, store) -> None:
        ids = [f"job_{k:02d}" for k in range(12)]
        for k, job_id in enumerate(ids):
            job = Job(id=job_id, tenant="acme", sender="ACME", template="Hi", category="otp")
            store.add_job(job, 1000 + 10 * k, PEOPLE[:2], float(k))
        store.add_job(Job(id="job_zz", tenant="beta", sender="B", template="Hi", category="otp"), 5000, PEOPLE[:1], 1.0)
        store.add_job(Job(id="job_up", tenant="acme", sender="A", template="Hi", category="otp"), 6000, PEOPLE[:1], 1.0,
                      incoming=True)  # an upload not finished: never listed  # fmt: skip
        store.record([Change(message_id=1000 + 10 * k + m, state="delivered", at=20.0) for k in (3, 7) for m in (0, 1)])
        store.record([Change(message_id=1000 + 10 * 5, state="delivered", at=20.0)])  # half done: active
        store.set_job_status("acme", ids[9], "canceled")
        seen, after = [], ""
        while True:
            page = store.jobs("acme", after=after, limit=5)
            assert len(page.jobs) <= 5
            seen += [j.job.job.id for j in page.jobs]
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == ids  # every job once, in id order, only the tenant's, never an incoming one
        done, after = [], ""
        for _ in range(len(ids) + 1):  # a filtered page may be short: follow next_after
            page = store.jobs("acme", after=after, limit=1, status="completed")
            done += [j.job.job.id for j in page.jobs]
            if page.next_after is None:
                break
            after = page.next_after
        assert done == [ids[3], ids[7]]
        assert [j.job.job.id for j in store.jobs("acme", after="", limit=50, status="canceled").jobs] == [ids[9]]
        assert len(store.jobs("acme", after="", limit=50, status="active").jobs) == 9
        assert store.jobs("acme", after=ids[-1], limit=5).jobs == []
        assert JOBS_SCAN >= 1

    def test_drop_incoming_removes_unfinished_uploads_only(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE[:2], 10.0, incoming=True)  # an upload a crash cut short
        store.add_job(PLAIN, 2000, PEOPLE[:2], 10.0, incoming=True)
        store.commit_job("acme", "j2", 11.0)  # this one was finished
        assert store.drop_incoming() == 1
        assert store.job("acme", "j1") is None and store.message("acme", 1000) is None
        assert store.job("acme", "j2") is not None and store.message("acme", 2000) is not None
        assert store.drop_incoming() == 0

    def test_add_jobs_each_item_commits_or_fails_alone(self, store) -> None:
        one = Job(id="j3", tenant="acme", sender="ACME", template="Hi", category="otp")
        two = Job(id="j4", tenant="acme", sender="ACME", template="Hi", category="otp")
        three = Job(id="j5", tenant="acme", sender="ACME", template="Hi", category="otp")
        errors = store.add_jobs([
            NewJob(job=one, first_id=2000, recipients=PEOPLE[:1], now=1.0, idempotency=("k1", "d", b"r1")),
            NewJob(job=two, first_id=2001, recipients=PEOPLE[:1], now=1.0, idempotency=("k1", "d", b"r2")),
            NewJob(job=three, first_id=2002, recipients=PEOPLE[:1], now=1.0, callback_url=HOOK),
        ])  # fmt: skip
        assert errors[0] is None and isinstance(errors[1], Conflict) and errors[2] is None
        assert store.job("acme", "j3") is not None and store.job("acme", "j5") is not None
        assert store.job("acme", "j4") is None and store.message("acme", 2001) is None
        assert store.remembered("acme", "k1", "d") == b"r1"
        store.record([Change(message_id=2002, state="delivered", at=2.0)])  # j5's callback is known
        assert store.outbox_statistics().pending == 1

    def test_chunks_extend_a_job(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE[:2], 10.0)
        store.add_job(JOB, 1000, PEOPLE[2:], 11.0)
        assert store.job("acme", "j1").job.size == 5

    def test_encoded_rows_are_stored_as_the_pairs_would_be(self, store) -> None:
        people = [Recipient(to="+12125550100", vars={"name": "Zoë"}, tz="Europe/Paris"),
                  Recipient(to="+12125550101")]  # fmt: skip
        # as a client may have sent them: spaces, CRLF, escapes (the text is kept as it came)
        rows = RecipientRows(json=b'[{"to": "+12125550100", "vars": {"name": "Zo\\u00eb"},\r\n "tz": "Europe/Paris"}\r'
                                  b' ,{"to":"+12125550101"}]', count=2)  # fmt: skip
        assert msgspec.json.decode(rows.json, type=list[Recipient]) == people
        store.add_job(JOB, 1000, rows, 10.0, callback_url=HOOK)
        store.add_job(PLAIN, 2000, list(enumerate(people)), 10.0)
        for k, person in enumerate(people):
            assert store.message("acme", 1000 + k).recipient == store.message("acme", 2000 + k).recipient == person
        assert store.job("acme", "j1").job.size == 2 and store.message("acme", 1002) is None
        store.record([Change(message_id=1001, state="failed", at=12.0)])  # the last row has the callback too
        assert [item.message_id for item in drain(store)] == [1001]

    def test_changes_history_and_final_states_stick(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0)
        store.record([Change(message_id=1000, state="submitted", at=11.0, carrier="alpha", carrier_ids=("a1",)),
                      Change(message_id=1001, state="capped", at=11.0, reason="weekly cap")])  # fmt: skip
        store.record([Change(message_id=1000, state="delivered", at=12.0, reason="DELIVRD"),
                      Change(message_id=1001, state="submitted", at=13.0)])  # fmt: skip
        m = store.message("acme", 1000)
        assert m.state == "delivered" and m.carrier == "alpha" and m.carrier_ids == ("a1",)
        assert m.attempts == 1
        assert [c.state for c in m.history] == ["queued", "submitted", "delivered"]
        assert m.recipient == PEOPLE[0][1]
        capped = store.message("acme", 1001)
        assert capped.state == "capped"  # a final state never changes, nor does its history grow
        assert [(c.state, c.at, c.reason) for c in capped.history] == [("queued", 10.0, "accepted"),
                                                                     ("capped", 11.0, "weekly cap")]  # fmt: skip
        assert store.message("intruder", 1000) is None
        assert store.job("acme", "j1").counts == {"delivered": 1, "capped": 1, "queued": 3}

    def test_many_changes_of_one_message_in_one_batch(self, store) -> None:
        """A batch applies in order: the last state before the first final one, the carrier and
        ids last given, attempts counting every ``submitted``; the job's counts agree."""
        store.add_job(JOB, 1000, PEOPLE, 10.0)
        store.record([
            Change(message_id=1000, state="submitted", at=11.0, carrier="alpha", carrier_ids=("a1",)),
            Change(message_id=1001, state="deferred", at=11.0, reason="quiet hours"),
            Change(message_id=1000, state="queued", at=11.1, reason="retried: bind_dropped", carrier="alpha"),
            Change(message_id=1000, state="submitted", at=11.2, carrier="beta", carrier_ids=("b1", "b2")),
            Change(message_id=1000, state="delivered", at=11.3, reason="receipt", carrier="beta"),
            Change(message_id=1000, state="submitted", at=11.4, carrier="gamma", carrier_ids=("g1",)),  # after final
            Change(message_id=1001, state="queued", at=11.5),
        ])  # fmt: skip
        m = store.message("acme", 1000)
        assert (m.state, m.carrier, m.carrier_ids, m.attempts) == ("delivered", "beta", ("b1", "b2"), 2)
        assert [(c.state, c.at, c.reason, c.carrier) for c in m.history] == [
            ("queued", 10.0, "accepted", None),
            ("submitted", 11.0, "", "alpha"),
            ("queued", 11.1, "retried: bind_dropped", "alpha"),
            ("submitted", 11.2, "", "beta"),
            ("delivered", 11.3, "receipt", "beta"),  # the change after the final one is not history
        ]  # fmt: skip
        assert store.message("acme", 1001).state == "queued"
        assert store.job("acme", "j1").counts == {"delivered": 1, "queued": 4}
        assert [a[0] for a in store.awaiting_receipts()] == []

    def test_a_submit_is_read_at_once_and_its_receipt_later_ends_it(self, store) -> None:
        """A message's lone ``submitted`` (its receipt in a later write, as at a real carrier):
        every reader sees it at once (the message, the job's counts, the webhook, what awaits a
        receipt), and its receipt ends the message with both changes in its history, once."""
        store.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
        store.record([Change(message_id=1000, state="submitted", at=11.0, carrier="c1", carrier_ids=("a1",)),
                      Change(message_id=1001, state="submitted", at=11.0, carrier="c1", carrier_ids=("b1",)),
                      Change(message_id=1002, state="deferred", at=11.0, reason="quiet_hours")])  # fmt: skip
        m = store.message("acme", 1000)
        assert (m.state, m.carrier, m.carrier_ids, m.attempts) == ("submitted", "c1", ("a1",), 1)
        assert [c.state for c in m.history] == ["queued", "submitted"]
        assert store.job("acme", "j1").counts == {"queued": 2, "submitted": 2, "deferred": 1}
        assert [(e.message_id, e.state) for e in drain(store)] == [(1000, "submitted"), (1001, "submitted"),
                                                                   (1002, "deferred")]  # fmt: skip
        store.record([Change(message_id=1002, state="submitted", at=11.5, carrier="c1", carrier_ids=("d1",))])
        assert store.job("acme", "j1").counts == {"queued": 2, "submitted": 3}
        store.record([Change(message_id=1000, state="delivered", at=11.6, reason="receipt", carrier="c1"),
                      Change(message_id=1001, state="accepted", at=11.6, reason="receipt ENROUTE")])  # fmt: skip
        m = store.message("acme", 1000)
        assert (m.state, m.carrier, m.carrier_ids, m.attempts) == ("delivered", "c1", ("a1",), 1)
        assert [(c.state, c.at) for c in m.history] == [("queued", 10.0), ("submitted", 11.0), ("delivered", 11.6)]
        assert store.message("acme", 1001).state == "accepted"
        assert store.job("acme", "j1").counts == {"queued": 2, "submitted": 1, "accepted": 1, "delivered": 1}
        assert store.awaiting_receipts() == [(1001, "c1", ("b1",)), (1002, "c1", ("d1",))]
        assert [(e.message_id, e.state) for e in drain(store)] == [(1002, "submitted"), (1000, "delivered"),
                                                                   (1001, "accepted")]  # fmt: skip
        store.record([Change(message_id=1001, state="delivered", at=12.0, reason="receipt"),
                      Change(message_id=1002, state="delivered", at=12.0, reason="receipt"),
                      Change(message_id=1003, state="submitted", at=12.0, carrier="c1", carrier_ids=("e1",))])
        store.record([Change(message_id=1003, state="queued", at=12.1, reason="retried: bind_dropped"),
                      Change(message_id=1004, state="canceled", at=12.1)])  # fmt: skip
        store.record([Change(message_id=1003, state="submitted", at=12.2, carrier="c2", carrier_ids=("e2",))])
        store.record([Change(message_id=1003, state="expired", at=99.0, reason="validity")])
        m = store.message("acme", 1003)
        assert (m.state, m.carrier, m.carrier_ids, m.attempts) == ("expired", "c2", ("e2",), 2)
        assert [c.state for c in m.history] == ["queued", "submitted", "queued", "submitted", "expired"]
        assert [c.state for c in store.message("acme", 1001).history] == ["queued", "submitted", "accepted",
                                                                          "delivered"]  # fmt: skip
        assert store.job("acme", "j1").counts == {"delivered": 3, "expired": 1, "canceled": 1}
        assert store.awaiting_receipts() == [] and list(store.unfinished()) == []

    def test_paging_and_filter(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0)
        store.record([Change(message_id=1002, state="expired", at=11.0)])
        p1 = store.messages("acme", "j1", state=None, after=0, limit=2)
        assert p1.ids == [(1000, "queued"), (1001, "queued")] and p1.next_after == 1001
        p2 = store.messages("acme", "j1", state=None, after=p1.next_after, limit=10)
        assert [i for i, _ in p2.ids] == [1002, 1003, 1004] and p2.next_after is None
        assert store.messages("acme", "j1", state="expired", after=0, limit=10).ids == [(1002, "expired")]
        assert store.messages("other", "j1", state=None, after=0, limit=10).ids == []

    def test_unfinished_lists_what_must_be_recovered(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0)
        store.record([Change(message_id=1000, state="delivered", at=11.0),
                      Change(message_id=1001, state="submitted", at=11.0)])  # fmt: skip
        [(stored, rest)] = list(store.unfinished())
        assert stored.job == JOB
        assert [(i, st) for i, _, st in rest] == [(1, "submitted"), (2, "queued"), (3, "queued"), (4, "queued")]
        assert rest[0][1] == PEOPLE[1][1]

    def test_awaiting_receipts_lists_what_carriers_took(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0)
        store.record([Change(message_id=1000, state="submitted", at=11.0, carrier="c1", carrier_ids=("a1",)),
                      Change(message_id=1001, state="submitted", at=11.0, carrier="c1", carrier_ids=("b1", "b2")),
                      Change(message_id=1001, state="delivered", at=12.0, carrier="c1"),
                      Change(message_id=1002, state="queued", at=11.0, carrier="c1")])  # fmt: skip
        assert store.awaiting_receipts() == [(1000, "c1", ("a1",))]
        store.record([Change(message_id=1002, state="submitted", at=13.0, carrier="c2", carrier_ids=("x", "y"))])
        assert store.awaiting_receipts() == [(1000, "c1", ("a1",)), (1002, "c2", ("x", "y"))]

    def test_sends_since_lists_what_carriers_took_of_capped_categories(self, store) -> None:
        otp = Job(id="j3", tenant="beta", sender="ACME", template="Code", category="otp")
        store.add_job(JOB, 1000, PEOPLE, 10.0)  # marketing
        store.add_job(otp, 2000, PEOPLE[:1], 10.0)
        store.record([
            Change(message_id=1000, state="submitted", at=20.0, carrier="a", carrier_ids=("x",)),
            Change(message_id=1001, state="submitted", at=30.0, carrier="a", carrier_ids=("y",)),
            Change(message_id=1002, state="submitted", at=5.0, carrier="a", carrier_ids=("z",)),  # before `since`
            Change(message_id=1003, state="deferred", at=31.0, reason="quiet_hours"),  # never taken
            Change(message_id=2000, state="submitted", at=25.0, carrier="a", carrier_ids=("o",)),  # otp: not capped
        ])  # fmt: skip
        store.record([Change(message_id=1000, state="delivered", at=40.0, carrier="a"),
                      Change(message_id=1001, state="queued", at=41.0, reason="retried"),
                      Change(message_id=1002, state="delivered", at=42.0)])  # fmt: skip
        store.record([Change(message_id=1001, state="submitted", at=45.0, carrier="a", carrier_ids=("y2",))])
        assert store.sends_since(10.0, ["marketing"]) == [(1000, "acme", "+12125550000", 20.0),
                                                         (1001, "acme", "+12125550001", 45.0)]  # its last submit
        assert store.sends_since(10.0, ["marketing", "otp"])[1] == (2000, "beta", "+12125550000", 25.0)
        assert store.sends_since(44.0, ["marketing"]) == [(1001, "acme", "+12125550001", 45.0)]
        assert store.sends_since(10.0, []) == []

    def test_job_status(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0)
        assert store.set_job_status("acme", "j1", "paused")
        assert store.job("acme", "j1").job.status == "paused"
        assert not store.set_job_status("acme", "nope", "paused")

    def test_idempotency(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0, idempotency=("k1", "digest-a", b'{"id":"j1"}'))
        assert store.remembered("acme", "k1", "digest-a") == b'{"id":"j1"}'
        assert store.remembered("acme", "k2", "digest-a") is None
        assert store.remembered("other", "k1", "digest-a") is None
        with pytest.raises(Conflict):
            store.remembered("acme", "k1", "digest-b")
        with pytest.raises(Conflict):  # same key again: nothing is stored twice
            store.add_job(Job(id="j2", tenant="acme", sender="A", template="x"), 2000, PEOPLE, 11.0,
                          idempotency=("k1", "digest-a", b"{}"))  # fmt: skip
        assert store.job("acme", "j2") is None

    def test_duplicate_ids_rejected_atomically(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0)
        with pytest.raises(Conflict):
            store.add_job(Job(id="j3", tenant="acme", sender="A", template="x"), 1003, PEOPLE, 11.0)
        assert store.job("acme", "j3") is None

    def test_suppressions_per_tenant(self, store) -> None:
        store.suppress("acme", "+12125550000", 5.0, "keyword:STOP")
        store.suppress("acme", "+12125550000", 6.0)  # already there: kept as first recorded
        store.suppress("beta", "+12125550001", 7.0)
        [(t, s)] = store.suppressions("acme")
        assert t == "acme" and s.number == "+12125550000" and s.at == 5.0 and s.source == "keyword:STOP"
        assert len(store.suppressions()) == 2
        assert store.unsuppress("acme", "+12125550000")
        assert not store.unsuppress("acme", "+12125550000")
        assert store.suppressions("acme") == []

    # -- webhooks: the change sequence ---------------------------------------------------------------

    def test_outbox_rows_only_for_jobs_with_a_callback(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
        store.add_job(PLAIN, 2000, PEOPLE, 10.0)
        store.record([Change(message_id=1000, state="submitted", at=11.0, carrier="alpha"),
                      Change(message_id=2000, state="submitted", at=11.0, carrier="alpha"),
                      Change(message_id=2001, state="delivered", at=11.0)])  # fmt: skip
        [item] = drain(store)
        assert (item.tenant, item.url, item.message_id, item.job_id) == ("acme", HOOK, 1000, "j1")
        assert (item.state, item.at, item.carrier, item.attempts) == ("submitted", 11.0, "alpha", 0)

    def test_accepted_waits_for_its_receipt_and_error_codes_are_kept(self, store) -> None:
        """An intermediate receipt's ``accepted``: in the history, in the webhook outbox, still
        awaiting its receipt (recovered as such), never after a final state; the carrier's error
        code beside each change that had one, and on the message (its last)."""
        store.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
        store.record([Change(message_id=1000, state="submitted", at=11.0, carrier="c1", carrier_ids=("a1",)),
                      Change(message_id=1001, state="submitted", at=11.0, carrier="c1", carrier_ids=("b1",))])
        store.record([Change(message_id=1000, state="accepted", at=12.0, reason="receipt ENROUTE", carrier="c1",
                             error_code=0)])  # fmt: skip
        assert store.awaiting_receipts() == [(1000, "c1", ("a1",)), (1001, "c1", ("b1",))]
        assert store.message("acme", 1000).state == "accepted"
        assert store.job("acme", "j1").counts == {"queued": 3, "submitted": 1, "accepted": 1}
        store.record([Change(message_id=1000, state="undelivered", at=13.0, reason="receipt", carrier="c1",
                             error_code=11),
                      Change(message_id=1000, state="accepted", at=14.0, reason="receipt ENROUTE", carrier="c1")])
        store.record([Change(message_id=1000, state="accepted", at=15.0, reason="late", carrier="c1")])  # fmt: skip
        m = store.message("acme", 1000)
        assert m.state == "undelivered" and m.error_code == 11
        assert [(c.state, c.error_code) for c in m.history] == [("queued", None), ("submitted", None),
                                                                ("accepted", 0), ("undelivered", 11)]  # fmt: skip
        assert store.message("acme", 1001).error_code is None
        assert store.awaiting_receipts() == [(1001, "c1", ("b1",))]
        got = [(i.message_id, i.state, i.error_code) for i in drain(store)]
        assert got == [(1000, "submitted", None), (1001, "submitted", None), (1000, "accepted", 0),
                       (1000, "undelivered", 11)]  # fmt: skip

    def test_outbox_states_upstream_cares_about(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
        store.record([Change(message_id=1000, state="deferred", at=11.0, reason="quiet hours"),
                      Change(message_id=1000, state="queued", at=12.0, reason="released"),
                      Change(message_id=1000, state="submitted", at=13.0),
                      Change(message_id=1000, state="queued", at=14.0, reason="retried: bind down"),
                      Change(message_id=1000, state="delivered", at=15.0, reason="DELIVRD"),
                      Change(message_id=1000, state="expired", at=16.0),  # final already: ignored
                      Change(message_id=1001, state="capped", at=17.0, reason="weekly cap")])  # fmt: skip
        store.record([Change(message_id=1000, state="undelivered", at=18.0)])  # still final: no row
        got = [(i.message_id, i.state, i.reason) for i in drain(store)]
        assert got == [(1000, "deferred", "quiet hours"), (1000, "submitted", ""), (1000, "delivered", "DELIVRD"),
                       (1001, "capped", "weekly cap")]  # fmt: skip

    def test_callback_states_filter_exactly_what_all_states_would_write(self, store) -> None:
        """A job with ``callback_states`` S gets the outbox rows a job hearing every state would
        get, restricted to S: the same changes replayed on two jobs, for many random S and
        change sequences (repeated states, changes after a final one, several batches)."""
        rng = random.Random(16)
        for k in range(40):
            chosen = frozenset(rng.sample(CALLBACK_STATES, rng.randint(1, len(CALLBACK_STATES))))
            some, every = 10_000 * (2 * k + 1), 10_000 * (2 * k + 2)
            store.add_job(msgspec.structs.replace(JOB, id=f"s{k}"), some, PEOPLE, 10.0, callback_url=HOOK,
                          callback_states=chosen)  # fmt: skip
            store.add_job(msgspec.structs.replace(JOB, id=f"e{k}"), every, PEOPLE, 10.0, callback_url=HOOK)
            for _ in range(rng.randint(1, 4)):
                batch = [(rng.randrange(len(PEOPLE)), rng.choice(STATES), 11.0 + rng.random()) for _ in range(8)]
                store.record([Change(message_id=some + i, state=st, at=at) for i, st, at in batch])
                store.record([Change(message_id=every + i, state=st, at=at) for i, st, at in batch])
            got = [(i.message_id, i.state, i.at) for i in drain(store)]
            for i in got:
                assert some <= i[0] < some + len(PEOPLE) or every <= i[0] < every + len(PEOPLE)
            mine = [(m - some, s, at) for m, s, at in got if m < every]
            all_of = [(m - every, s, at) for m, s, at in got if m >= every]
            assert mine == [x for x in all_of if x[1] in chosen], (k, sorted(chosen))
            assert store.job_info("acme", f"s{k}").callback_states == chosen
            assert store.job_info("acme", f"e{k}").callback_states is None

    def test_callback_states_final_only_and_a_later_chunk_keeps_them(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE[:2], 10.0, callback_url=HOOK, callback_states=frozenset({"delivered"}))
        store.add_job(JOB, 1000, PEOPLE[2:], 11.0, callback_url=HOOK)  # a later chunk: the job's choice stays
        store.record([Change(message_id=1000 + i, state="submitted", at=12.0) for i in range(5)])
        store.record([Change(message_id=1000 + i, state="delivered" if i % 2 else "undelivered", at=13.0)
                      for i in range(5)])  # fmt: skip
        got = [(i.message_id, i.state) for i in drain(store)]
        assert got == [(1001, "delivered"), (1003, "delivered")]

    def test_outbox_a_later_chunk_keeps_the_jobs_callback(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE[:2], 10.0, callback_url=HOOK)
        store.add_job(JOB, 1000, PEOPLE[2:], 11.0, callback_url="https://example.invalid/other")
        store.record([Change(message_id=1004, state="failed", at=12.0)])
        [item] = drain(store)
        assert (item.message_id, item.url) == (1004, HOOK)

    def test_cursor_moves_only_when_acknowledged_retry_and_dead_letters(self, store) -> None:
        store.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
        store.add_job(PLAIN, 2000, PEOPLE, 10.0, callback_url="https://example.invalid/other")
        store.record([Change(message_id=1000 + i, state="submitted", at=11.0) for i in range(5)]
                     + [Change(message_id=2000, state="submitted", at=11.0)])  # fmt: skip
        assert store.hook_next_at() == 0.0
        one, other = store.hook_due(20.0)
        assert (one.tenant, one.url, one.attempts, other.url) == ("acme", HOOK, 0, "https://example.invalid/other")
        first = store.hook_events(one.id, 2)
        assert [i.message_id for i in first] == [1000, 1001]
        assert [i.message_id for i in store.hook_events(one.id, 100)] == [1000, 1001, 1002, 1003, 1004]  # not leased
        store.hook_ack([(one.id, first[-1].seq)])
        assert [i.message_id for i in store.hook_events(one.id, 100)] == [1002, 1003, 1004]
        store.hook_ack([(one.id, first[0].seq)])  # a cursor never goes back
        assert [i.message_id for i in store.hook_events(one.id, 100)] == [1002, 1003, 1004]
        assert store.outbox_statistics() == OutboxStats(pending=4, dead=0)
        store.hook_retry(one.id, 100.0, "HTTP 500")
        assert [s.id for s in store.hook_due(99.0)] == [other.id] and store.hook_next_at() == 0.0
        [again] = store.hook_due(100.0)[:1]
        assert (again.id, again.attempts) == (one.id, 1)
        rest = store.hook_events(one.id, 100)
        assert {i.attempts for i in rest} == {1}
        store.hook_dead(one.id, rest[:2], "gave up", rest[1].seq)
        assert [i.message_id for i in store.hook_events(one.id, 100)] == [1004]
        assert store.outbox_statistics() == OutboxStats(pending=2, dead=2)
        assert [s.attempts for s in store.hook_due(100.0)] == [0, 0]  # the cursor moved: attempts forgotten
        drain(store)
        assert store.outbox_statistics() == OutboxStats(pending=0, dead=2)
        assert store.hook_due(1e9) == [] and store.hook_next_at() is None

    def test_sequence_delivers_every_state_in_order_once_whatever_the_acks(self, store) -> None:
        """Model check: random batches of changes (repeats, changes after a final one) for
        messages of two jobs on one subscriber, read in random chunks, acknowledged up to a
        random point of each read: the events delivered, deduplicated by the cursor, are every
        change that applied (the message's history) of a state it hears, in order per message,
        each exactly once."""
        rng = random.Random(1616)
        store.add_job(JOB, 1000, PEOPLE, 10.0, callback_url=HOOK)
        store.add_job(msgspec.structs.replace(JOB, id="j9"), 3000, PEOPLE, 10.0, callback_url=HOOK,
                      callback_states=frozenset({"submitted", "delivered", "undelivered"}))  # fmt: skip
        ids = [1000 + i for i in range(len(PEOPLE))] + [3000 + i for i in range(len(PEOPLE))]
        got: dict[int, list[tuple[str, float]]] = {i: [] for i in ids}
        at = 11.0
        for _ in range(60):
            batch = []
            for _ in range(rng.randint(1, 6)):
                at += 1.0
                batch.append(Change(message_id=rng.choice(ids), state=rng.choice(STATES), at=at))
            store.record(batch)
            for sub in store.hook_due(at) if rng.random() < 0.5 else ():
                read = store.hook_events(sub.id, rng.randint(1, 4))
                if not read:
                    continue
                upto = read[rng.randrange(len(read))].seq
                for e in read:
                    if e.seq <= upto:
                        got[e.message_id].append((e.state, e.at))
                store.hook_ack([(sub.id, upto)])
        for sub in store.hook_due(1e9):
            for e in store.hook_events(sub.id, 10_000):
                got[e.message_id].append((e.state, e.at))
        for mid in ids:
            hears = NOTIFY if mid < 3000 else {"submitted", "delivered", "undelivered"}
            want = [(c.state, c.at) for c in store.message("acme", mid).history[1:] if c.state in hears]
            assert got[mid] == want, mid


    def test_rows_are_the_events_in_the_wires_form_whatever_the_reads(self, store) -> None:
        """``hook_rows`` (what the sender reads) against ``hook_events``: random batches with
        awkward text (quotes, backslashes, non-ASCII, error codes), a job hearing only some
        states, read in random chunks (and after a point a sender delivered up to) and acknowledged
        at random points: each read's rows with
        events are ``hook_events``' events, in the wire's form, row by row; rows without events
        (a state nobody hears) hold nothing; and delivered through rows, every heard change
        arrives once, in order per message."""
        rng = random.Random(1617)
        people = [(i, Recipient(to=f"+1212555{i:04d}", index=i * 7)) for i in range(4)]
        store.add_job(msgspec.structs.replace(JOB, reference='ref "q" \\ é'), 1000, people, 10.0, callback_url=HOOK)
        store.add_job(msgspec.structs.replace(JOB, id="j9"), 3000, people, 10.0, callback_url=HOOK,
                      callback_states=frozenset({"delivered", "undelivered"}))  # fmt: skip
        ids = [1000 + i for i, _ in people] + [3000 + i for i, _ in people]
        got: dict[int, list[tuple[str, float]]] = {i: [] for i in ids}
        reasons = ["DELIVRD", 'say "hi"', "back\\slash", "ünïcode ✓", "ctl\x01"]
        at = 11.0
        for _ in range(50):
            batch = []
            for _ in range(rng.randint(1, 5)):
                at += 0.25
                batch.append(Change(message_id=rng.choice(ids), state=rng.choice(STATES), at=at,
                                    reason=rng.choice(reasons), carrier=rng.choice([None, "alpha"]),
                                    error_code=rng.choice([None, 0, 11])))  # fmt: skip
            store.record(batch)
            for sub in store.hook_due(at) if rng.random() < 0.5 else ():
                limit = rng.randint(1, 4)
                rows = store.hook_rows(sub.id, limit)
                want = hook_rows_of(store.hook_events(sub.id, limit))
                assert [(r.seq, r.message_id, r.events) for r in rows if r.events] == \
                       [(r.seq, r.message_id, r.events) for r in want]  # fmt: skip
                assert [r.id for r in rows] == list(range(len(rows)))
                if not rows:
                    continue
                after = rows[len(rows) // 2].seq  # what a sender delivered and has not acknowledged
                assert [(r.seq, r.events) for r in store.hook_rows(sub.id, limit, after)] == \
                       [(r.seq, r.events) for r in store.hook_rows(sub.id, 10_000) if r.seq > after][:limit]  # fmt: skip
                upto = rows[rng.randrange(len(rows))].seq
                for r in rows:
                    if r.seq <= upto:
                        got[r.message_id] += [(e["state"], e["at"]) for e in r.events]
                store.hook_ack([(sub.id, upto)])
        for sub in store.hook_due(1e9):
            for r in store.hook_rows(sub.id, 10_000):
                got[r.message_id] += [(e["state"], e["at"]) for e in r.events]
        for mid in ids:
            hears = NOTIFY if mid < 3000 else {"delivered", "undelivered"}
            want_events = [(c.state, c.at) for c in store.message("acme", mid).history[1:] if c.state in hears]
            assert got[mid] == want_events, mid


    # -- inbound messages -------------------------------------------------------------------

    def test_inbound_kept_listed_per_tenant_and_paged(self, store) -> None:
        for i in range(5):
            store.add_inbound(_mo(f"hello {i}", tenant="acme" if i != 2 else "beta"))
        page = store.inbound("acme", after=0, limit=3)
        assert [r.text for r in page.items] == ["hello 0", "hello 1", "hello 3"]
        assert page.items[0] == _mo("hello 0", id=page.items[0].id)
        rest = store.inbound("acme", after=page.next_after, limit=3)
        assert [r.text for r in rest.items] == ["hello 4"] and rest.next_after is None
        assert [r.text for r in store.inbound("beta", after=0, limit=10).items] == ["hello 2"]

    def test_opt_out_record_is_the_suppression_audit(self, store) -> None:
        store.add_inbound(_mo("Stop.", kind="opt_out", keyword="STOP", at=5.0))
        store.add_inbound(_mo("STOP ALL", kind="opt_out", keyword="STOPALL", at=6.0))  # already there: kept
        [(tenant, s)] = store.suppressions("acme")
        assert (tenant, s.number, s.at, s.source) == ("acme", "+447911100001", 5.0, "keyword:STOP")
        audit = store.inbound("acme", after=0, limit=10, kind="opt_out").items
        assert [(r.keyword, r.at, r.carrier, r.text) for r in audit] == [("STOP", 5.0, "alpha", "Stop."),
                                                                          ("STOPALL", 6.0, "alpha", "STOP ALL")]
        assert store.inbound("acme", after=0, limit=10, kind="message").items == []
        store.add_inbound(_mo("start", kind="opt_in", keyword="START", at=7.0))
        assert store.suppressions("acme") == []
        assert store.suppressions("beta") == []

    def test_inbound_forwarding_lease_retry_done_dead(self, store) -> None:
        a = store.add_inbound(_mo("one"), url=HOOK)
        store.add_inbound(_mo("kept, not forwarded"))
        b = store.add_inbound(_mo("two", tenant="beta"), url=HOOK)
        assert store.inbound_next_at() == 0.0
        items = store.inbound_take(20.0, 10, 30.0)
        assert [(i.id, i.tenant, i.url, i.attempts, i.record.text) for i in items] == [
            (a, "acme", HOOK, 0, "one"), (b, "beta", HOOK, 0, "two")]  # fmt: skip
        assert store.inbound_take(49.0, 10, 30.0) == []  # leased
        store.inbound_retry([a], 100.0, "HTTP 503")
        store.inbound_dead([b], "HTTP 404")
        assert store.inbound_next_at() == 100.0
        [again] = store.inbound_take(100.0, 10, 30.0)
        assert (again.id, again.attempts) == (a, 1)
        store.inbound_done([a])
        assert store.inbound_next_at() is None
        assert store.inbound_take(1e12, 10, 30.0) == []
        assert len(store.inbound("acme", after=0, limit=10).items) == 2  # forwarded or not, still listed

    def test_an_mo_is_stored_once_per_key(self, store) -> None:
        first = store.add_inbound_once(_mo("STOP", kind="opt_out", keyword="STOP", at=10.0), key="alpha:id-1")
        again = store.add_inbound_once(_mo("STOP", kind="opt_out", keyword="STOP", at=11.0), key="alpha:id-1", since=0.0)
        assert first[1] is True and again == (first[0], False)
        assert len(store.inbound("acme", after=0, limit=10).items) == 1
        other = store.add_inbound_once(_mo("STOP", at=12.0), key="alpha:id-2")
        assert other[1] is True and other[0] != first[0]
        # a digest key seen before the window: a new message (the same words sent again later)
        late = store.add_inbound_once(_mo("STOP", at=1000.0), key="alpha:id-1", since=500.0)
        assert late[1] is True and late[0] not in (first[0], other[0])

    def test_a_question_is_pending_until_settled(self, store) -> None:
        n = "+447911100001"
        asked = _mo("leave me alone", kind="opt_out", keyword="LEAVE ME ALONE", at=10.0)
        store.add_inbound_once(msgspec.structs.replace(asked, certain=False, asks=True))
        assert store.question_pending("acme", n, since=0.0)
        assert not store.question_pending("acme", n, since=11.0)  # asked before the window
        assert not store.question_pending("beta", n, since=0.0)
        assert [s.number for _, s in store.suppressions("acme")] == [n]  # suppressed meanwhile
        store.add_inbound(_mo("yes", kind="opt_in", keyword="YES", at=12.0))
        assert not store.question_pending("acme", n, since=0.0)
        assert store.suppressions("acme") == []

    def test_an_opt_out_from_a_sender_not_canonical_is_kept_not_listed(self, store) -> None:
        rec = InboundRecord(tenant="acme", carrier="alpha", sender="SHOPINFO", recipient="12345", text="STOP",
                            at=1.0, kind="opt_out", keyword="STOP", sender_canonical=False)  # fmt: skip
        rid = store.add_inbound(rec)
        [got] = store.inbound("acme", after=0, limit=10, kind="opt_out").items
        assert got == msgspec.structs.replace(rec, id=rid)
        assert store.suppressions("acme") == []

    def test_tenants_messaged_a_number_recently(self, store) -> None:
        for tenant, first, to, now in (("acme", 100, "+447911100001", 10.0), ("beta", 200, "+447911100001", 50.0),
                                       ("gamma", 300, "+447911100002", 50.0)):  # fmt: skip
            job = Job(id=f"job_{tenant}", tenant=tenant, sender="S", template="x", category="marketing")
            store.add_job(job, first, [(0, Recipient(to=to))], now)
        assert store.tenants_messaged("+447911100001", since=0.0) == ["acme", "beta"]
        assert store.tenants_messaged("+447911100001", since=40.0) in (["beta"], ["acme", "beta"])
        assert store.tenants_messaged("+447911100009", since=0.0) == []


def _mo(text: str, *, tenant: str = "acme", kind: str = "message", keyword: str | None = None, at: float = 1.0,
        id: int = 0) -> InboundRecord:  # fmt: skip
    return InboundRecord(id=id, tenant=tenant, carrier="alpha", sender="+447911100001", recipient="12345",
                         text=text, at=at, kind=kind, keyword=keyword)  # fmt: skip
