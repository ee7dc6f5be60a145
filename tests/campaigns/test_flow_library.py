"""The ready-made flows: each validates, refers to its own templates only, and behaves as described."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from campaigns.core import flows as F
from campaigns.core.flow_library import LIBRARY_TEMPLATES, library

T0 = 1_780_000_000.0  # Thu 2026-05-28 20:26:40 UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
SUB = F.FlowSubscriber(id=3, time_zone="Europe/Paris")
EXPECTED = {"welcome", "abandoned_cart", "post_purchase_upsell", "shipping_notice", "delivery_notice", "win_back",
            "birthday", "post_delivery_survey", "sms_quiz"}


def parsed(name: str) -> F.Flow:
    return F.parse_flow(library()[name], templates=LIBRARY_TEMPLATES)


def sends(actions) -> list[F.Send]:
    return [a for a in actions if isinstance(a, F.Send)]


def fire(f: F.Flow, run: F.Run) -> tuple[F.Run, list[F.Action]]:
    return F.step(f, run, F.TimerFired(id="t", due=run.timer_due, visit=run.visit), run.timer_due)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_library_flow_validates_and_uses_only_library_templates(name) -> None:
    f = parsed(name)
    assert f.id == name
    used = {n.template for n in f.nodes.values() if isinstance(n, F.SendNode)}
    assert used <= LIBRARY_TEMPLATES
    for template in used:  # and a missing template is refused
        with pytest.raises(F.FlowError) as info:
            F.parse_flow(library()[name], templates=LIBRARY_TEMPLATES - {template})
        assert info.value.code == "flow.unknown_template"


def test_the_library_is_complete_and_copies_are_independent() -> None:
    assert set(library()) == EXPECTED
    mine = library()
    mine["abandoned_cart"]["nodes"]["wait1h"]["seconds"] = 1800
    assert library()["abandoned_cart"]["nodes"]["wait1h"]["seconds"] == 3600
    assert F.parse_flow(mine["abandoned_cart"], templates=LIBRARY_TEMPLATES).nodes["wait1h"].seconds == 1800


def test_notifications_are_transactional_and_marketing_flows_are_not() -> None:
    for name in EXPECTED:
        assert parsed(name).transactional == (name in {"shipping_notice", "delivery_notice"})
    f = parsed("shipping_notice")
    _, acts = F.start(f, SUB, F.ShopEvent(id="f1", kind="order_fulfilled", object_id="o1"), T0)
    assert [(s.template, s.transactional) for s in sends(acts)] == [("shipping_update", True)]


def test_welcome_series_three_steps_at_local_noon() -> None:
    f = parsed("welcome")
    run, acts = F.start(f, SUB, F.ShopEvent(id="s", kind="subscribed", name="keyword"), T0)
    got = [(sends(acts)[0].template, T0)]
    while run.node is not None:
        now = run.timer_due
        run, acts = fire(f, run)
        got += [(s.template, now) for s in sends(acts)]
    assert [t for t, _ in got] == ["welcome_thanks_code", "welcome_brand_story", "welcome_recommendation"]
    story, reco = (dt.datetime.fromtimestamp(at, PARIS) for _, at in got[1:])
    assert (story.hour, story.minute, reco.hour) == (12, 0, 12)
    assert story.date() == dt.date(2026, 5, 30) and reco.date() == dt.date(2026, 6, 1)


def test_abandoned_cart_value_branch_and_exit() -> None:
    f = parsed("abandoned_cart")
    assert [(e.event, e.same_object) for e in f.exits] == [("order_placed", False), ("checkout_completed", True)]
    for value, template, channel in [(10_001, "cart_big_mms", "mms"), (10_000, "cart_reminder_sms", "sms")]:
        run, _ = F.start(f, SUB, F.ShopEvent(id="c", kind="checkout_abandoned", object_id="c", payload={"value": value}), T0)
        assert run.timer_due == T0 + 3600
        run, acts = fire(f, run)
        assert [(s.template, s.channel) for s in sends(acts)] == [(template, channel)]
        ended, acts = F.step(f, run, F.ShopEvent(id="o", kind="order_placed", object_id="o"), T0 + 7200)
        assert acts == [F.Ended(run_id=run.id, reason="exit:order_placed")]
        # another checkout paid leaves this run going; this checkout paid (another phone's order,
        # a completed checkout event) ends it
        other, acts = F.step(f, run, F.ShopEvent(id="checkout_completed:c2", kind="checkout_completed", object_id="c2"),
                             T0 + 7200)  # fmt: skip
        assert acts == [] and other.node == run.node
        ended, acts = F.step(f, other, F.ShopEvent(id="checkout_completed:c", kind="checkout_completed", object_id="c"),
                             T0 + 7200)  # fmt: skip
        assert acts == [F.Ended(run_id=run.id, reason="exit:checkout_completed")]


def test_post_delivery_survey_has_at_most_three_questions_with_emoji_scores() -> None:
    f = parsed("post_delivery_survey")
    questions = [n for n in f.nodes.values() if isinstance(n, F.ReplyNode)]
    assert 1 <= len(questions) <= 3
    score = questions[0]
    assert all(any(not k[0].isalnum() for k in c.keywords) for c in score.choices)  # every score has a face
    assert len(questions[1].choices) >= 2  # options
    run, acts = F.start(f, SUB, F.ShopEvent(id="d", kind="order_delivered", object_id="o1"), T0)
    while run.timer_due is not None and not isinstance(f.nodes[run.node], F.ReplyNode):
        run, acts = fire(f, run)
    assert [s.template for s in sends(acts)] == ["survey_q1_score"]
    saved = {}
    for text in ["🤩", "b", "Yes!"]:
        run, acts = F.step(f, run, F.Reply(id=text, text=text), run.waiting_since + 60)
        for a in acts:
            if isinstance(a, F.UpdateSubscriber):
                saved |= a.set_attributes
    assert saved == {"survey_score": "5", "survey_improve": "B", "survey_recommend": "Y"}
    assert run.ended == "completed"


def test_sms_quiz_ends_in_a_product_recommendation() -> None:
    f = parsed("sms_quiz")
    for answers, reco in [(["2", "1"], "quiz_reco_long"), (["short", "normal"], "quiz_reco_short"),
                          (["1", "2"], "quiz_reco_sensitive")]:
        run, acts = F.start(f, SUB, F.Reply(id="k", text="Quiz"), T0)
        assert [s.template for s in sends(acts)] == ["quiz_q1"]
        for i, text in enumerate(answers):
            run, acts = F.step(f, run, F.Reply(id=f"a{i}", text=text), T0 + 10 * (i + 1))
        assert [s.template for s in sends(acts)] == [reco]
        assert any(isinstance(a, F.UpdateSubscriber) and a.add_tags == ("quiz_taken",) for a in acts)


def test_win_back_birthday_and_upsell_timing() -> None:
    wb = parsed("win_back")
    run, acts = F.start(wb, SUB, F.ShopEvent(id="n", kind="no_order", payload={"days": 90}), T0)
    assert [s.template for s in sends(acts)] == ["winback_offer"] and run.timer_due == T0 + 3 * 86_400
    bd = parsed("birthday")
    run, _ = F.start(bd, SUB, F.ShopEvent(id="b", kind="birthday", payload={"days_before": 7}), T0)
    assert dt.datetime.fromtimestamp(run.timer_due, PARIS).strftime("%H:%M") == "10:00"
    up = parsed("post_purchase_upsell")
    run, _ = F.start(up, SUB, F.ShopEvent(id="p", kind="order_paid", object_id="o"), T0)
    run, _ = fire(up, run)
    local = dt.datetime.fromtimestamp(run.timer_due, PARIS)
    assert local.hour == 12 and run.timer_due - T0 >= 7 * 86_400
