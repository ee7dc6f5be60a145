"""The inbox's part of the store conformance suite (``INBOX_CHECKS``, appended to ``conformance.CHECKS``):
conversations, their history and the figures, the same on every engine."""

from __future__ import annotations

from campaigns.core import conversations as C
from campaigns.core import flows as F
from campaigns.core.events import Profile
from campaigns.errors import NotFound
from campaigns.store.base import NewConsent, Store
from campaigns.store.campaign_rows import PlannedRecipient

A, B, U = "+33612345678", "+33612345679", "+33612345670"
T0 = 1_760_000_000.0


def _ask(store: Store, tenant: str, phone: str, mid: str, text: str, at: float, route: C.Route = C.ToInbox()):  # type: ignore[no-untyped-def]
    return store.conversation_apply(tenant, phone, lambda c: (C.receive(c, mid, text, at, route), []), now=at,
                                    message_id=mid, route=route, our_number="12345")  # fmt: skip


def check_conversations_once_per_phone(store: Store) -> None:
    sub, _ = store.put_subscriber("acme", Profile(phone=A), phone=A, at=T0, now=T0)
    first = _ask(store, "acme", A, "mo:1", "Do you ship to Lyon?", T0)
    assert first.new and first.conversation.status == "needs_reply" and first.conversation.subscriber_id == sub.id
    assert first.conversation.waiting_since == T0 and first.conversation.our_number == "12345"
    again = _ask(store, "acme", A, "mo:1", "Do you ship to Lyon?", T0 + 60)  # a redelivered webhook
    assert not again.new and again.conversation == first.conversation
    second = _ask(store, "acme", A, "mo:2", "and Paris?", T0 + 5)
    assert second.conversation.id == first.conversation.id and second.conversation.waiting_since == T0
    # A sender who is not a subscriber has a conversation too; the subscriber is found by phone.
    stranger = _ask(store, "acme", U, "mo:3", "who is this?", T0 + 1)
    assert stranger.conversation.subscriber_id is None and stranger.conversation.id != first.conversation.id
    store.put_subscriber("acme", Profile(phone=U), phone=U, at=T0 + 2, now=T0 + 2)
    assert store.conversation("acme", stranger.conversation.id).subscriber_id is not None  # type: ignore[union-attr]
    # Tenants are isolated: another shop neither sees nor changes these.
    assert store.conversation("beta", first.conversation.id) is None
    assert store.conversations("beta") == [] and store.conversation_history("beta", first.conversation.id) == []
    try:
        store.conversation_apply("beta", first.conversation.id, lambda c: (C.close(c), []), now=T0)
    except NotFound as exc:
        assert exc.code == "conversation_not_found"
    else:
        raise AssertionError("another shop changed a conversation")
    other = _ask(store, "beta", A, "mo:1", "same id, other shop", T0)  # message ids are per tenant
    assert other.new and other.conversation.id != first.conversation.id
    hist = [i for _, i in store.conversation_history("acme", first.conversation.id)]
    assert [(i.message_id, i.direction, i.kind, i.route) for i in hist] == [("mo:1", "in", "reply", "inbox"),
                                                                            ("mo:2", "in", "reply", "inbox")]


def check_routes_and_opt_outs(store: Store) -> None:
    flow = _ask(store, "acme", A, "mo:1", "2", T0, C.ToFlow())
    assert flow.conversation.status == "open" and flow.message is not None and flow.message.route == "flow"
    stop = _ask(store, "acme", A, "mo:2", "stop please", T0 + 1, C.EndRuns(run_ids=(), event=F.OptOut(id="mo:2")))
    assert stop.conversation.status == "open" and stop.conversation.opted_out  # not a subscriber: its own flag
    assert stop.message is not None and (stop.message.kind, stop.message.route) == ("opt_out", "opt_out")
    assert store.conversations("acme", status="needs_reply") == []
    # A subscriber's ledger decides: revoked -> opted out, whatever the conversation said before.
    store.put_subscriber("acme", Profile(phone=B), phone=B, at=T0, now=T0)
    conv = _ask(store, "acme", B, "mo:3", "hello", T0).conversation
    assert not conv.opted_out
    store.record_consent("acme", NewConsent(phone=B, action="opt_out", source="reply", at=T0 + 1), now=T0 + 1)
    assert store.conversation("acme", conv.id).opted_out  # type: ignore[union-attr]
    try:
        store.conversation_apply("acme", conv.id, lambda c: C.answer(c, "a1", "hi", "ann", T0 + 2), now=T0 + 2,
                                 message_id="a1", answer_request=b"{}")  # fmt: skip
    except C.ConversationError as exc:
        assert exc.code == "conversation.opted_out"
    else:
        raise AssertionError("answered a subscriber who opted out")
    assert [i.message_id for _, i in store.conversation_history("acme", conv.id)] == ["mo:3"]  # nothing half-stored


def check_answers_and_states(store: Store) -> None:
    conv = _ask(store, "acme", A, "mo:1", "Where is my order?", T0).conversation
    body = b'{"to":"+33612345678","body":"On its way","from":"12345","category":"transactional"}'
    done = store.conversation_apply("acme", conv.id, lambda c: C.answer(c, "answer:1:k", "On its way", "ann", T0 + 90),
                                    now=T0 + 90, message_id="answer:1:k", answer_request=body)  # fmt: skip
    assert done.new and done.conversation.status == "open" and done.conversation.assignee == "ann"
    assert done.message is not None and done.message.state == "sending" and done.message.response_s == 90.0
    [pending] = store.answers_unsettled("acme")
    assert pending.request == body and pending.gateway_key == done.actions[0].key and pending.gateway_id is None
    assert store.answer_pending("acme", "answer:1:k") == pending and store.answer_pending("beta", "answer:1:k") is None
    replay = store.conversation_apply("acme", conv.id, lambda c: C.answer(c, "answer:1:k", "On its way", "ann", T0 + 99),
                                      now=T0 + 99, message_id="answer:1:k", answer_request=b"other")  # fmt: skip
    assert not replay.new and replay.actions == [] and store.answers_unsettled("acme") == [pending]
    assert store.answer_state("acme", "answer:1:k", state="queued", at=T0 + 91, gateway_id="G1")
    assert not store.answer_state("acme", "answer:1:k", state="sending", at=T0 + 92)  # never backwards
    assert store.answer_state_by_gateway_id("acme", "G1", state="delivered", at=T0 + 95)
    assert not store.answer_state_by_gateway_id("acme", "G1", state="submitted", at=T0 + 96)
    assert not store.answer_state_by_gateway_id("beta", "G1", state="failed", at=T0 + 97)
    item = store.conversation_message("acme", "answer:1:k")
    assert item is not None and (item.state, item.state_at, item.gateway_id) == ("delivered", T0 + 95, "G1")
    assert store.answers_unsettled("acme") == []
    figures = store.inbox_figures("acme", since=T0)
    assert figures.response_times == [90.0] and (figures.open, figures.needs_reply, figures.closed) == (1, 0, 0)
    assert store.inbox_figures("acme", since=T0 + 91).response_times == []


def check_queue_listing(store: Store) -> None:
    phones = [f"+3361234560{i}" for i in range(6)]
    waits = [T0 + 50, T0 + 10, T0 + 30, T0 + 10, T0 + 40, T0 + 20]
    ids = [_ask(store, "acme", p, f"mo:{i}", "?", w).conversation.id for i, (p, w) in enumerate(zip(phones, waits))]
    store.conversation_apply("acme", ids[4], lambda c: (C.close(c), []), now=T0 + 60)
    store.conversation_apply("acme", ids[2], lambda c: (C.assign(c, "bob"), []), now=T0 + 60)
    expect = sorted((w, i) for i, w in zip(ids, waits) if i != ids[4])
    page1 = store.conversations("acme", status="needs_reply", limit=3)
    page2 = store.conversations("acme", status="needs_reply", after=(page1[-1].waiting_since, page1[-1].id), limit=3)
    assert [(c.waiting_since, c.id) for c in page1 + page2] == expect  # the longest wait first, ties by id
    assert [c.id for c in store.conversations("acme", status="closed")] == [ids[4]]
    assert [c.id for c in store.conversations("acme", assignee="bob")] == [ids[2]]
    assert [c.id for c in store.conversations("acme", after=ids[1], limit=2)] == ids[2:4]
    waits_now = sorted(store.inbox_figures("acme", since=T0).waiting_since)
    assert waits_now == sorted(w for i, w in zip(ids, waits) if i != ids[4])
    reopened = store.conversation_apply("acme", ids[4], lambda c: (C.reopen(c), []), now=T0 + 70).conversation
    assert reopened.status == "open"
    # A new question to a closed conversation puts it back in the queue.
    store.conversation_apply("acme", ids[4], lambda c: (C.close(c), []), now=T0 + 71)
    assert _ask(store, "acme", phones[4], "mo:9", "one more thing", T0 + 80).conversation.status == "needs_reply"


def check_history_includes_campaign_sends(store: Store) -> None:
    sub, _ = store.put_subscriber("acme", Profile(phone=A), phone=A, at=T0, now=T0)
    camp = store.put_campaign("acme", "Spring", {}, now=T0)
    recs = [PlannedRecipient(subscriber_id=sub.id, phone=A, variant=None, send_at=T0 + 5, tz="UTC", text="Spring sale!",
                             batch=0, idx=0)]  # fmt: skip
    store.freeze_audience("acme", camp.id, recs, [], now=T0)
    conv = _ask(store, "acme", A, "mo:1", "Is the sale on shoes too?", T0 + 10).conversation
    assert [i.kind for _, i in store.conversation_history("acme", conv.id)] == ["reply"]  # planned: not sent yet
    store.batch_submitted("acme", camp.id, 0, job_id="job-1", accepted=1, rejected=[], now=T0 + 6)
    store.conversation_apply("acme", conv.id, lambda c: C.answer(c, "a1", "Yes!", "ann", T0 + 20), now=T0 + 20,
                             message_id="a1", answer_request=b"{}")  # fmt: skip
    rows = store.conversation_history("acme", conv.id)
    assert [(i.kind, i.direction, i.text) for _, i in rows] == [("campaign", "out", "Spring sale!"),
                                                                ("reply", "in", "Is the sale on shoes too?"),
                                                                ("answer", "out", "Yes!")]  # fmt: skip
    assert rows[0][1].state == "submitted" and rows[0][1].by == f"campaign:{camp.id}"
    page = store.conversation_history("acme", conv.id, limit=1)
    rest = store.conversation_history("acme", conv.id, after=page[-1][0], limit=10)
    assert [r[1] for r in page + rest] == [r[1] for r in rows]
    assert store.conversation_history("beta", conv.id) == []


def check_flow_sends_recorded_in_one_transaction(store: Store) -> None:
    """``conversations_record`` (a batch of flow sends in their histories, one transaction) leaves
    what the same sends recorded one by one leave; a key recorded before adds nothing."""
    def sent(mid: str, text: str, at: float):  # type: ignore[no-untyped-def]
        return lambda c: (C.record_sent(c, mid, text, at, "flow:cart", kind="flow"), [])

    _ask(store, "acme", A, "mo:1", "hello?", T0)  # A's conversation exists (and waits for a reply); B's and U's do not
    store.conversation_apply("acme", B, sent("flow-1-1", "one", T0 + 1), now=T0 + 1, message_id="flow-1-1")
    batch = [(U, sent("flow-3-1", "three", T0 + 2), "flow-3-1"), (A, sent("flow-2-1", "two", T0 + 2), "flow-2-1"),
             (B, sent("flow-1-1", "one", T0 + 1), "flow-1-1"), (B, sent("flow-1-2", "one more", T0 + 3), "flow-1-2")]
    assert store.conversations_record("acme", batch, now=T0 + 5) == 3  # flow-1-1 was recorded before
    assert store.conversations_record("acme", batch, now=T0 + 6) == 0  # a re-post of the batch: nothing new
    assert store.conversations_record("acme", [], now=T0 + 6) == 0
    hist = {p: [(i.kind, i.text) for _, i in store.conversation_history("acme", store.conversation_by_phone("acme", p).id)]  # type: ignore[union-attr]
            for p in (A, B, U)}  # fmt: skip
    assert hist == {A: [("reply", "hello?"), ("flow", "two")], B: [("flow", "one"), ("flow", "one more")], U: [("flow", "three")]}
    assert store.conversation_by_phone("acme", A).status == "needs_reply"  # type: ignore[union-attr]  # a flow send answers nobody


INBOX_CHECKS = [check_conversations_once_per_phone, check_routes_and_opt_outs, check_answers_and_states,
                check_queue_listing, check_history_includes_campaign_sends,
                check_flow_sends_recorded_in_one_transaction]  # fmt: skip
