"""Receipt reconciliation on explicit time: ids, ordering, multi-part, holds and horizons."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import FinalState
from gateway.core.receipts import (
    Answer,
    Progressed,
    ReceiptState,
    Receipted,
    Reconciler,
    Unmatched,
    normalise_id,
)

R = ReceiptState


def final(results: list, ref: int) -> Receipted:
    (r,) = [x for x in results if isinstance(x, Receipted) and x.ref == ref]
    return r


def test_receipt_after_submit() -> None:
    rc = Reconciler(hold_unmatched_s=10, horizon_s=100)
    assert rc.submitted(1, "c", ["abc"], 1, now=2.0) == []
    (r,) = rc.receipt("c", "ABC", R.DELIVERED, 0, now=5.0)
    assert r == Receipted(ref=1, carrier="c", state=FinalState.DELIVERED, error_code=0, reason="receipt", at=5.0,
                          submitted_at=2.0)  # fmt: skip
    assert rc.statistics().pending == 0


def test_receipt_before_submit_response_is_held_then_matched() -> None:
    rc = Reconciler(hold_unmatched_s=10, horizon_s=100)
    assert rc.receipt("c", "77", R.UNDELIVERABLE, 0x0B, now=1.0) == []
    assert rc.statistics().held == 1
    (r,) = rc.submitted(9, "c", ["77"], 1, now=1.5)
    assert (r.ref, r.state, r.error_code) == (9, FinalState.UNDELIVERED, 0x0B)
    assert rc.statistics().held == 0


def test_unmatched_receipt_expires_and_is_reported() -> None:
    rc = Reconciler(hold_unmatched_s=10, horizon_s=100)
    rc.receipt("c", "nope", R.DELIVERED, None, now=1.0)
    assert rc.tick(10.9) == []
    assert rc.tick(11.0) == [Unmatched(carrier="c", message_id="nope", state=R.DELIVERED, at=1.0)]
    assert rc.statistics().unmatched == 1 and rc.statistics().held == 0
    assert rc.submitted(1, "c", ["nope"], 1, now=12.0) == []  # too late: it waits for its own


def test_ids_are_scoped_by_carrier_not_bind() -> None:
    rc = Reconciler()
    rc.submitted(1, "a", ["5"], 1, now=0)
    rc.submitted(2, "b", ["5"], 1, now=0)
    assert final(rc.receipt("b", "5", R.DELIVERED, 0, now=1), 2).carrier == "b"
    assert final(rc.receipt("a", "5", R.EXPIRED, 0, now=1), 1).state is FinalState.EXPIRED


@pytest.mark.parametrize(
    ("fmt", "submitted", "receipted"),
    [
        ("dec", "000123", "123"),
        ("hex", "00ff", "FF"),
        ("hex", "0x1F", "1f"),
        ("str", "AbC-0", "abc-0"),
        ("str", "00a1", "A1"),
        (("hex", "dec"), "1F", "31"),
        (("dec", "hex"), "255", "0000ff"),
    ],
)
def test_id_normalisation(fmt, submitted: str, receipted: str) -> None:
    rc = Reconciler(id_formats={"c": fmt})
    rc.submitted(1, "c", [submitted], 1, now=0)
    assert final(rc.receipt("c", receipted, R.DELIVERED, 0, now=1), 1).state is FinalState.DELIVERED


def test_normalise_falls_back_to_text() -> None:
    assert normalise_id(" 0042 ", "dec") == 42
    assert normalise_id("12ab", "dec") == "12ab"
    assert normalise_id("zz", "hex") == "zz"
    assert normalise_id("000", "str") == "0"
    with pytest.raises(ValueError):
        Reconciler(id_formats={"c": "octal"})  # type: ignore[dict-item]


def test_multipart_delivered_only_when_all_parts_are() -> None:
    rc = Reconciler()
    rc.submitted(1, "c", ["a", "b", "c"], 3, now=0)
    assert rc.receipt("c", "a", R.DELIVERED, 0, now=1) == []
    assert rc.receipt("c", "c", R.DELIVERED, 0, now=2) == []
    assert final(rc.receipt("c", "b", R.DELIVERED, 0, now=3), 1).state is FinalState.DELIVERED


def test_multipart_any_undeliverable_part_makes_it_undelivered() -> None:
    rc = Reconciler()
    rc.submitted(1, "c", ["a", "b"], 2, now=0)
    rc.receipt("c", "a", R.UNDELIVERABLE, 0x22, now=1)
    r = final(rc.receipt("c", "b", R.DELIVERED, 0, now=2), 1)
    assert (r.state, r.error_code) == (FinalState.UNDELIVERED, 0x22)


def test_multipart_worst_state_wins() -> None:
    rc = Reconciler()
    rc.submitted(1, "c", ["a", "b", "c"], 3, now=0)
    rc.receipt("c", "a", R.EXPIRED, 1, now=1)
    rc.receipt("c", "b", R.REJECTED, 2, now=1)
    assert final(rc.receipt("c", "c", R.DELIVERED, 0, now=1), 1).state is FinalState.REJECTED


def test_one_part_arrives_before_the_response() -> None:
    rc = Reconciler(hold_unmatched_s=5)
    rc.receipt("c", "b", R.DELIVERED, 0, now=0.5)
    assert rc.submitted(1, "c", ["a", "b"], 2, now=1) == []
    assert final(rc.receipt("c", "a", R.DELIVERED, 0, now=2), 1).state is FinalState.DELIVERED


def test_intermediate_receipts_move_the_message_to_accepted_once() -> None:
    rc = Reconciler(horizon_s=10)
    rc.submitted(1, "c", ["a"], 1, now=0)
    assert rc.receipt("c", "a", R.ENROUTE, None, now=1) == [
        Progressed(ref=1, carrier="c", reason="receipt ENROUTE", error_code=None, at=1)]
    assert rc.receipt("c", "a", R.ACCEPTED, None, now=2) == []  # already accepted: nothing new
    assert rc.statistics().intermediate == 2 and rc.statistics().pending == 1
    (r,) = rc.receipt("c", "a", R.DELIVERED, 0, now=3)  # a final receipt still ends it
    assert r.state is FinalState.DELIVERED
    assert rc.receipt("c", "a", R.ENROUTE, None, now=4) == []  # late: never backwards
    assert rc.statistics().duplicates == 1


def test_duplicate_receipts_are_counted_not_reported() -> None:
    rc = Reconciler(hold_unmatched_s=10)
    rc.submitted(1, "c", ["a", "b"], 2, now=0)
    rc.receipt("c", "a", R.DELIVERED, 0, now=1)
    assert rc.receipt("c", "a", R.UNDELIVERABLE, 0, now=1) == []  # first answer stands
    rc.receipt("c", "b", R.DELIVERED, 0, now=2)
    assert rc.receipt("c", "b", R.DELIVERED, 0, now=3) == []  # after the end
    assert rc.statistics().duplicates == 2
    assert rc.tick(20) == []  # duplicates are not held as unmatched
    assert rc.statistics().held == 0


def test_horizon_ends_silent_messages_unknown() -> None:
    rc = Reconciler(horizon_s=100)
    rc.submitted(1, "c", ["a"], 1, now=0)
    rc.submitted(2, "c", ["b"], 1, now=50)
    assert rc.tick(99.9) == []
    (r,) = rc.tick(100)
    assert (r.ref, r.state, r.reason) == (1, FinalState.UNKNOWN, "no receipt within horizon")
    assert rc.statistics().horizon_expired == 1
    assert rc.next_deadline() is not None


def test_horizon_can_mean_expired() -> None:
    rc = Reconciler(horizon_s=1, on_horizon=FinalState.EXPIRED)
    rc.submitted(1, "c", ["a", "b"], 2, now=0)
    rc.receipt("c", "a", R.DELIVERED, 0, now=0.5)
    (r,) = rc.tick(1)
    assert r.state is FinalState.EXPIRED  # half delivered is not delivered


def test_horizon_keeps_a_known_failure() -> None:
    rc = Reconciler(horizon_s=1)
    rc.submitted(1, "c", ["a", "b"], 2, now=0)
    rc.receipt("c", "a", R.UNDELIVERABLE, 9, now=0.5)
    (r,) = rc.tick(1)
    assert (r.state, r.error_code) == (FinalState.UNDELIVERED, 9)


def test_finished_messages_leave_no_trace() -> None:
    rc = Reconciler(hold_unmatched_s=1, horizon_s=5)
    for i in range(100):
        rc.submitted(i, "c", [str(i)], 1, now=0)
        rc.receipt("c", str(i), R.DELIVERED, 0, now=0)
    rc.tick(10)
    c = rc._carriers["c"]
    assert not c.by_id and not c.held and not c.done
    assert not rc._horizon and not rc._held_expiry and not rc._done_at and not rc._done_key


def test_finished_messages_do_not_wait_for_the_horizon() -> None:
    # Receipts come within seconds, the horizon is days: what finished must not stay queued
    # for it (memory, and a garbage collector scanning it), and late ones still end on time.
    rc = Reconciler(hold_unmatched_s=1, horizon_s=3 * 86400)
    rc.submitted(-1, "c", ["silent"], 1, now=0)
    for i in range(20_000):
        rc.submitted(i, "c", [str(i)], 1, now=1)
        rc.receipt("c", str(i), R.DELIVERED, 0, now=1)
    assert len(rc._horizon) < 3000
    assert rc.statistics().pending == 1
    (r,) = rc.tick(3 * 86400 + 1)
    assert (r.ref, r.state) == (-1, FinalState.UNKNOWN)
    assert not rc._horizon and rc._horizon_done == 0


_EVENTS = st.lists(
    st.tuples(
        st.integers(0, 5),  # message
        st.integers(0, 2),  # part
        st.sampled_from(list(ReceiptState)),
        st.floats(0, 3),  # time step
        st.booleans(),  # receipt (True) or a duplicate submit attempt of the message (ignored)
    ),
    max_size=40,
)


def test_duplicate_receipts_before_the_submit_response_end_the_message_once() -> None:
    rc = Reconciler(hold_unmatched_s=2, horizon_s=10)
    assert rc.receipt("c", "0-0", R.DELIVERED, None, 0.0) == []
    assert rc.receipt("c", "0-0", R.DELIVERED, None, 0.0) == []  # the carrier sent it twice
    (r,) = rc.submitted(0, "c", ["0-0"], 1, 0.5)
    assert r.state is FinalState.DELIVERED
    assert rc.statistics().duplicates == 1 and rc.statistics().held == 0


@settings(max_examples=300, deadline=None)
@given(_EVENTS, st.lists(st.integers(1, 3), min_size=6, max_size=6))
def test_every_submitted_message_ends_exactly_once(events, parts) -> None:
    rc = Reconciler(hold_unmatched_s=2, horizon_s=10)
    now = 0.0
    submitted: set[int] = set()
    ended: list[int] = []
    for msg, part, state, step, is_receipt in events:
        now += step
        if is_receipt:
            out = rc.receipt("c", f"{msg}-{part}", state, None, now)
        elif msg not in submitted:
            submitted.add(msg)
            out = rc.submitted(msg, "c", [f"{msg}-{p}" for p in range(parts[msg])], parts[msg], now)
        else:
            out = []
        out += rc.tick(now)
        ended += [r.ref for r in out if isinstance(r, Receipted)]
    ended += [r.ref for r in rc.tick(now + 11) if isinstance(r, Receipted)]
    assert sorted(ended) == sorted(submitted)
    stats = rc.statistics()
    assert stats.pending == 0 and stats.held == 0


def test_memory_follows_the_messages_awaiting_receipts_not_the_horizon() -> None:
    """A long horizon (days) must not keep every finished message until its deadline."""
    rc = Reconciler(hold_unmatched_s=1, horizon_s=3 * 86400)
    for i in range(20_000):
        rc.submitted(i, "c", [f"id{i}"], 1, now=i * 0.01)
        rc.receipt("c", f"id{i}", R.DELIVERED, 0, now=i * 0.01 + 0.005)
        rc.tick(i * 0.01 + 0.005)
    assert rc.statistics().pending == 0
    assert len(rc._horizon) <= 1024 + 1  # compacted: not 20,000 finished entries
    # and messages still awaiting their receipt are kept and end at the horizon
    rc.submitted(99_999, "c", ["late"], 1, now=200.0)
    (r,) = [x for x in rc.tick(200.0 + 3 * 86400) if isinstance(x, Receipted)]
    assert r.ref == 99_999 and r.state is FinalState.UNKNOWN


# -- acknowledgement tokens: a receipt is answered once what it made is written -----------------


def test_a_final_receipt_hands_back_the_tokens_of_every_part() -> None:
    rc = Reconciler(hold_unmatched_s=10, horizon_s=100)
    rc.submitted(1, "c", ["a", "b"], 2, now=0.0)
    assert rc.receipt("c", "a", R.DELIVERED, 0, now=1.0, ack=11) == []  # kept with the part
    (r,) = rc.receipt("c", "b", R.DELIVERED, 0, now=2.0, ack=12)
    assert r.acks == (11, 12)


def test_tokens_of_receipts_that_change_nothing_come_back_at_once() -> None:
    rc = Reconciler(hold_unmatched_s=10, horizon_s=100)
    rc.submitted(1, "c", ["a"], 1, now=0.0)
    (p,) = rc.receipt("c", "a", R.ENROUTE, None, now=0.5, ack=1)
    assert p.acks == (1,)  # answered once ``accepted`` is written
    assert rc.receipt("c", "a", R.ENROUTE, None, now=0.6, ack=4) == [Answer(acks=(4,))]  # changes nothing
    (r,) = rc.receipt("c", "a", R.DELIVERED, 0, now=1.0, ack=2)
    assert r.acks == (2,)
    assert rc.receipt("c", "a", R.DELIVERED, 0, now=1.5, ack=3) == [Answer(acks=(3,))]  # duplicate


def test_a_held_receipt_is_answered_at_once() -> None:
    """Its id is unknown: it may wait ``hold_unmatched_s`` for nothing (a copy of a message sent
    twice), and must not hold a slot of the carrier's window all that time."""
    rc = Reconciler(hold_unmatched_s=10, horizon_s=100)
    assert rc.receipt("c", "x", R.DELIVERED, 0, now=1.0, ack=5) == [Answer(acks=(5,))]
    (r,) = rc.submitted(1, "c", ["x"], 1, now=2.0)
    assert r.acks == () and r.state is FinalState.DELIVERED


def test_without_tokens_nothing_changes() -> None:
    rc = Reconciler(hold_unmatched_s=10, horizon_s=100)
    rc.submitted(1, "c", ["a"], 1, now=0.0)
    assert [type(x) for x in rc.receipt("c", "a", R.ENROUTE, None, now=0.5)] == [Progressed]
    (r,) = rc.receipt("c", "a", R.DELIVERED, 0, now=1.0)
    assert r.acks == () and rc.receipt("c", "a", R.DELIVERED, 0, now=1.5) == []


@settings(max_examples=300, deadline=None)
@given(_EVENTS, st.lists(st.integers(1, 3), min_size=6, max_size=6))
def test_every_token_comes_back_exactly_once(events, parts) -> None:
    """Whatever the order (early, duplicate, intermediate, unmatched, past the horizon), each
    receipt's token is handed back once: no receipt is answered twice or left unanswered."""
    rc = Reconciler(hold_unmatched_s=2, horizon_s=10)
    now, token = 0.0, 0
    given_out: list[int] = []
    back: list[int] = []
    submitted: set[int] = set()

    def collect(results) -> None:
        for r in results:
            back.extend(getattr(r, "acks", ()))  # Unmatched carries none: answered when held

    for msg, part, state, step, is_receipt in events:
        now += step
        if is_receipt:
            token += 1
            given_out.append(token)
            collect(rc.receipt("c", f"{msg}-{part}", state, None, now, ack=token))
        elif msg not in submitted:
            submitted.add(msg)
            collect(rc.submitted(msg, "c", [f"{msg}-{p}" for p in range(parts[msg])], parts[msg], now))
        collect(rc.tick(now))
    collect(rc.tick(now + 11))
    assert sorted(back) == given_out


def test_finished_messages_leave_the_horizon_queue_as_they_finish():
    # In-order receipts: the queue holds the messages still waiting, not everything since the
    # last sweep (which took ~0.5 µs a message more and held up to 2x the entries).
    r = Reconciler(id_formats={"a": "dec"})
    for i in range(5000):
        r.submitted(i, "a", (str(i),), 1, 1.0)
        if i >= 50:
            [done] = r.receipt("a", str(i - 50), ReceiptState.DELIVERED, None, 1.1)
            assert done.ref == i - 50
        assert len(r._horizon) <= 51
    # a straggler keeps the finished ones behind it until a sweep
    late = Reconciler(id_formats={"a": "dec"})
    late.submitted(10**6, "a", ("999999",), 1, 1.0)
    for i in range(5000):
        late.submitted(i, "a", (str(i),), 1, 1.0)
        late.receipt("a", str(i), ReceiptState.DELIVERED, None, 1.1)
    assert len(late._horizon) < 2 * 1024 + 10 and late.statistics().pending == 1


# -- intermediate receipts, receipts without a state, ids in several bases ---------------------------

_STATES = st.one_of(st.sampled_from(list(ReceiptState)), st.none())  # None: a receipt with no state we know


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), _STATES, st.sampled_from([None, 0, 11]),
                          st.floats(0, 3), st.booleans()), max_size=40),
       st.lists(st.integers(1, 3), min_size=6, max_size=6))  # fmt: skip
def test_a_message_is_accepted_at_most_once_and_never_after_its_end(events, parts) -> None:
    """Whatever comes in whatever order: per message at most one ``Progressed``, exactly one
    ``Receipted``, and no ``Progressed`` after it (states never go backwards)."""
    rc = Reconciler(hold_unmatched_s=2, horizon_s=10)
    now = 0.0
    said: dict[int, list[str]] = {}
    submitted: set[int] = set()

    def collect(results) -> None:
        for r in results:
            if isinstance(r, (Progressed, Receipted)):
                said.setdefault(r.ref, []).append("accepted" if isinstance(r, Progressed) else "final")

    for msg, part, state, err, step, is_receipt in events:
        now += step
        if is_receipt:
            collect(rc.receipt("c", f"{msg}-{part}", state, err, now))
        elif msg not in submitted:
            submitted.add(msg)
            collect(rc.submitted(msg, "c", [f"{msg}-{p}" for p in range(parts[msg])], parts[msg], now))
        collect(rc.tick(now))
    collect(rc.tick(now + 11))
    assert set(said) == submitted
    for seq in said.values():
        assert seq in (["final"], ["accepted", "final"]), seq


def test_receipts_without_a_state_follow_the_rule() -> None:
    rc = Reconciler()
    rc.submitted(1, "c", ["a"], 1, now=0)
    rc.submitted(2, "c", ["b"], 1, now=0)
    (p,) = rc.receipt("c", "a", None, 0, now=1, word="SENT")
    assert isinstance(p, Progressed) and p.reason == "receipt without state (stat:SENT)"
    (r,) = rc.receipt("c", "b", None, 11, now=1)
    assert (r.state, r.error_code, r.reason) == (FinalState.UNDELIVERED, 11, "receipt without state err:11")
    assert rc.statistics().stateless == 2


_BASES = {"dec": lambda n: str(n), "hex": lambda n: "%x" % n}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["dec", "hex"]), st.sampled_from(["dec", "hex"]), st.sampled_from(["dec", "hex"]),
       st.integers(1, 300), st.integers(0, 4), st.booleans(), st.booleans())  # fmt: skip
def test_a_receipt_finds_its_message_whatever_base_each_id_is_in(submit, tlv, text, n, zeros, upper, both) -> None:
    """The submit id in one base, the receipt's TLV id and text id each in one of the configured
    bases (zero-padded, any case), while every other message 1..300 waits too: a receipt with
    both ids always ends the right message; with one id, when only its base is configured."""
    def render(base: str, k: int) -> str:
        s = "0" * zeros + _BASES[base](k)
        return s.upper() if upper else s

    formats = tuple(dict.fromkeys((tlv, text))) if both else (tlv,)
    rc = Reconciler(hold_unmatched_s=10, id_formats={"c": (submit, formats)})  # type: ignore[dict-item]
    for k in range(1, 301):
        rc.submitted(k, "c", [_BASES[submit](k)], 1, now=0)
    ids = [render(tlv, n), render(text, n)] if both else [render(tlv, n)]
    (r,) = rc.receipt("c", ids, R.DELIVERED, 0, now=1, tlv_first=False)
    assert r.ref == n


def test_a_receipt_without_an_id_is_refused() -> None:
    with pytest.raises(ValueError):
        Reconciler().receipt("c", ["", ""], R.DELIVERED, 0, now=1)
