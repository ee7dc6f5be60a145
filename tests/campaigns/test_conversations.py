"""Conversations: a reply goes to the run that waits for it, else to the inbox; opt-out words never
reach a flow; the inbox as pure state transitions (needs-reply queue, assignment, response times).

The classifier is the gateway's own opt-out classifier, passed in as a function."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import conversations as C
from campaigns.core import flows as F
from campaigns.core.flow_library import LIBRARY_TEMPLATES, library
from gateway.core import optout

T0 = 1_780_000_000.0
SUB = F.FlowSubscriber(id=5)


def classify(text: str) -> C.Intent:
    folded = text.strip().casefold()
    if folded in ("start", "unstop"):
        return "opt_in"
    if folded in ("help", "info"):
        return "help"
    verdict, _ = optout.classify(text)
    return "other" if verdict is optout.OptOutVerdict.NO else "opt_out"


SURVEY = F.parse_flow(library()["post_delivery_survey"], templates=LIBRARY_TEMPLATES)
QUIZ = F.parse_flow(library()["sms_quiz"], templates=LIBRARY_TEMPLATES)
OPEN = F.parse_flow({"id": "open", "version": 1, "name": "Open question", "trigger": {"type": "custom", "name": "ask"},
                     "entry": "q", "nodes": {"q": {"type": "send", "template": "a", "next": "r"},
                                             "r": {"type": "reply", "timeout_seconds": 3600, "save_as": "said",
                                                   "choices": [{"keywords": ["yes"]}], "other": "done"},
                                             "done": {"type": "end"}}},
                    templates={"a"})  # fmt: skip


def waiting_survey(at: float = T0) -> F.Run:
    run, _ = F.start(SURVEY, SUB, F.ShopEvent(id="d", kind="order_delivered", object_id="o"), at)
    while not isinstance(SURVEY.nodes[run.node], F.ReplyNode):
        run, _ = F.step(SURVEY, run, F.TimerFired(id="t", due=run.timer_due, visit=run.visit), run.timer_due)
    return run


def test_the_classifier_adapter_sees_what_the_gateway_sees() -> None:
    assert classify("stop please") == "opt_out" and classify("STOP") == "opt_out"
    assert classify("don't stop the deals") == "other" and classify("2") == "other"


def test_an_answer_goes_to_the_waiting_run() -> None:
    run = waiting_survey()
    route = C.route_reply("m1", "2", [(SURVEY, run)], classify)
    assert route == C.ToRun(run_id=run.id, event=F.Reply(id="m1", text="2"))
    new, acts = F.step(SURVEY, run, route.event, run.waiting_since + 5)
    assert any(isinstance(a, F.UpdateSubscriber) and a.set_attributes == {"survey_score": "2"} for a in acts)


@pytest.mark.parametrize("text", ["stop please", "STOP", "Stop.", "unsubscribe", "please stop texting me", "TD",
                                  "退订", "arrêt"])  # fmt: skip
def test_opt_out_words_never_reach_a_flow_even_one_that_takes_any_text(text) -> None:
    runs = [(SURVEY, waiting_survey()), (OPEN, F.start(OPEN, SUB, F.ShopEvent(id="x", kind="custom", name="ask"), T0)[0])]
    route = C.route_reply("m", text, runs, classify)
    assert isinstance(route, C.EndRuns) and set(route.run_ids) == {r.id for _, r in runs}
    for f, r in runs:
        ended, acts = F.step(f, r, route.event, T0 + 1)
        assert acts == [F.Ended(run_id=r.id, reason="opted_out")]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_whatever_the_text_an_opt_out_goes_nowhere_but_end_runs(text) -> None:
    runs = [(OPEN, F.start(OPEN, SUB, F.ShopEvent(id="x", kind="custom", name="ask"), T0)[0])]
    route = C.route_reply("m", text, runs, classify)
    intent = classify(text)
    assert isinstance(route, C.EndRuns) == (intent == "opt_out")
    if intent == "other":
        assert isinstance(route, C.ToRun)  # OPEN takes any text


def test_no_waiting_run_or_not_an_answer_goes_to_the_inbox() -> None:
    run = waiting_survey()
    assert C.route_reply("m", "where is my parcel?", [(SURVEY, run)], classify) == C.ToInbox()
    assert C.route_reply("m", "2", [], classify) == C.ToInbox()
    ended, _ = F.step(SURVEY, run, F.OptOut(id="s"), T0)
    assert C.route_reply("m", "2", [(SURVEY, ended)], classify) == C.ToInbox()
    assert C.route_reply("m", "help", [(SURVEY, run)], classify) == C.Handled(intent="help")


def test_the_most_recently_waiting_run_wins_and_keywords_start_a_quiz() -> None:
    older, newer = waiting_survey(T0), waiting_survey(T0 + 86_400)
    newer = F.Run(**{**{f: getattr(newer, f) for f in newer.__struct_fields__}, "id": "other-run"})
    route = C.route_reply("m", "4", [(SURVEY, older), (SURVEY, newer)], classify)
    assert route.run_id == "other-run"
    route = C.route_reply("m", "quiz", [], classify, keyword_flows=[SURVEY, QUIZ])
    assert route == C.StartFlow(flow_id="sms_quiz", event=F.Reply(id="m", text="quiz"))
    run, acts = F.start(QUIZ, SUB, route.event, T0)
    assert run is not None and C.route_reply("m2", "1", [(QUIZ, run)], classify).run_id == run.id


# ---- the inbox -------------------------------------------------------------------------------------


def test_inbox_story_needs_reply_answer_response_time() -> None:
    conv = C.Conversation(subscriber_id=5)
    conv = C.record_sent(conv, "s1", "Your order shipped", T0, by="flow:shipping_notice")
    conv = C.receive(conv, "m1", "can I change the address?", T0 + 10, C.ToInbox())
    conv = C.receive(conv, "m2", "hello??", T0 + 70, C.ToInbox())
    assert conv.needs_reply and conv.waiting_since == T0 + 10
    assert C.receive(conv, "m2", "hello??", T0 + 90, C.ToInbox()) == conv  # webhook replay
    conv = C.assign(conv, "ana")
    conv, out = C.answer(conv, "a1", "Yes, reply with the new one", "ana", T0 + 310)
    assert out == [C.AnswerSend(key="answer:5:a1", subscriber_id=5, text="Yes, reply with the new one")]
    assert not conv.needs_reply and conv.response_times == (300.0,)
    assert C.answer(conv, "a1", "Yes, reply with the new one", "ana", T0 + 999) == (conv, [])
    conv, _ = C.answer(conv, "a2", "Anything else?", "ana", T0 + 400)  # nobody waited: no time counted
    assert conv.response_times == (300.0,)
    assert [m.direction for m in conv.messages] == ["out", "in", "in", "out", "out"]


def test_opt_out_in_the_inbox_stops_answers_and_start_allows_them_again() -> None:
    conv = C.receive(C.Conversation(subscriber_id=5), "m1", "question", T0, C.ToInbox())
    conv = C.receive(conv, "m2", "stop please", T0 + 5, C.EndRuns(run_ids=(), event=F.OptOut(id="m2")))
    assert conv.opted_out and not conv.needs_reply
    with pytest.raises(C.ConversationError) as info:
        C.answer(conv, "a", "sorry", "ana", T0 + 9)
    assert info.value.code == "conversation.opted_out"
    conv = C.receive(conv, "m3", "START", T0 + 20, C.Handled(intent="opt_in"))
    assert not conv.opted_out and not conv.needs_reply
    for text, code in [("  ", "conversation.empty_answer"), ("x" * 1601, "conversation.too_long")]:
        with pytest.raises(C.ConversationError) as info:
            C.answer(conv, "b", text, "ana", T0)
        assert info.value.code == code


def test_queue_and_figures() -> None:
    convs = []
    for sub, (asked, answered) in enumerate([(0, 60), (10, 610), (20, None), (30, None), (5, 3605)]):
        c = C.receive(C.Conversation(subscriber_id=sub), f"m{sub}", "?", T0 + asked, C.ToInbox())
        if answered is not None:
            c, _ = C.answer(c, f"a{sub}", "!", "bo" if sub % 2 else "ana", T0 + answered)
        convs.append(c)
    convs[3] = C.assign(convs[3], "bo")
    assert [c.subscriber_id for c in C.needs_reply_queue(convs)] == [2, 3]
    assert [c.subscriber_id for c in C.needs_reply_queue(convs, assignee="bo")] == [3]
    s = C.response_stats(convs, T0 + 1000)
    assert (s.answered, s.waiting, s.median_s, s.p90_s, s.max_s, s.oldest_wait_s) == (3, 2, 600.0, 3600.0, 3600.0, 980.0)
    assert s.mean_s == pytest.approx((60 + 600 + 3600) / 3)
    closed = C.close(convs[2])
    assert not closed.needs_reply and closed.response_times == ()


inbox_op = st.one_of(st.tuples(st.just("in"), st.integers(0, 8), st.sampled_from(["inbox", "flow", "stop", "start"])),
                     st.tuples(st.just("answer"), st.integers(0, 8), st.just("")),
                     st.tuples(st.just("close"), st.integers(0, 8), st.just("")))  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(inbox_op, st.integers(0, 600)), max_size=40))
def test_inbox_model(ops) -> None:
    """needs_reply iff an inbox message came after the last answer/close/opt-out; one response time per
    answered wait, equal to answer time minus the first unanswered message's time."""
    conv, now = C.Conversation(subscriber_id=1), T0
    first_unanswered, opted, expected_times, seen = None, False, [], set()
    routes = {"inbox": C.ToInbox(), "flow": C.ToRun(run_id="r", event=F.Reply(id="x", text="1")),
              "stop": C.EndRuns(run_ids=(), event=F.OptOut(id="x")), "start": C.Handled(intent="opt_in")}
    for i, ((op, n, kind), gap) in enumerate(ops):
        now += gap
        if op == "in":
            conv = C.receive(conv, f"m{n}", "text", now, routes[kind])  # ids repeat: webhook replays
            if f"m{n}" not in seen:
                seen.add(f"m{n}")
                if kind == "inbox" and first_unanswered is None:
                    first_unanswered = now
                if kind == "stop":
                    opted, first_unanswered = True, None
                if kind == "start":
                    opted = False
        elif op == "answer":
            if opted:
                with pytest.raises(C.ConversationError):
                    C.answer(conv, f"a{i}", "hi", "ana", now)
                continue
            conv, _ = C.answer(conv, f"a{i}", "hi", "ana", now)
            assert C.answer(conv, f"a{i}", "hi", "ana", now + 5) == (conv, [])  # a replayed answer: nothing
            if first_unanswered is not None:
                expected_times.append(now - first_unanswered)
            first_unanswered = None
        else:
            conv, first_unanswered = C.close(conv), None
        assert conv.needs_reply == (first_unanswered is not None)
        assert conv.waiting_since == first_unanswered
        assert list(conv.response_times) == expected_times
        assert len({m.id for m in conv.messages}) == len(conv.messages)


def test_status_closed_reopened_by_a_new_question_or_an_answer_not_by_a_flow_reply() -> None:
    conv = C.receive(C.Conversation(subscriber_id=1), "m1", "thanks!", T0, C.ToInbox())
    assert C.status(conv) == "needs_reply"
    closed = C.close(conv)
    assert C.status(closed) == "closed" and not closed.needs_reply and closed.response_times == ()
    assert C.status(C.receive(closed, "m2", "2", T0 + 1, C.ToFlow())) == "closed"  # a flow's answer: nobody asked us
    assert C.status(C.receive(closed, "m3", "one more thing", T0 + 2, C.ToInbox())) == "needs_reply"
    answered, _ = C.answer(closed, "a1", "anything else?", "ann", T0 + 3)
    assert C.status(answered) == "open" and answered.response_times == ()  # no wait was open: no time counted
    assert C.status(C.reopen(closed)) == "open" and not C.reopen(closed).needs_reply
