"""Ready-made flows, as editable JSON definitions (a shop copies one, edits texts, waits, values).

Each refers to its messages by template id only (the templates live in campaigns/core/templates.py;
a shop that installs a library flow installs its starter templates under these ids). ``library()``
returns fresh dicts, so editing one never changes another; ``parse_flow(d, templates=...)`` checks
each (tests/campaigns/test_flow_library.py).

- ``welcome``: thanks + code now; brand story the next day at noon; a recommendation two days later
  (seed 001's three steps).
- ``abandoned_cart``: wait 1 h; a cart over $100 gets an MMS and the bigger discount, else an SMS
  reminder; not clicked within a day: one last call. An order placed ends the run, and so does the
  checkout completed (paid under another phone, or a completed checkout event); one run per checkout.
- ``post_purchase_upsell``: 7 days after a paid order, at noon local time, a recommendation.
- ``shipping_notice`` / ``delivery_notice``: transactional (the gateway exempts them from caps).
- ``win_back``: after 90 days without an order; not clicked within 3 days: a last chance. An order ends it.
- ``birthday``: 7 days before, at 10:00 local time.
- ``post_delivery_survey``: a day after delivery, 3 questions at most: an emoji score (1-5 or
  the faces), what to improve (options), would you recommend us; answers saved as attributes (seed 003).
- ``sms_quiz``: keyword QUIZ; two questions; a product recommendation by the answers (seed 000).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["LIBRARY_TEMPLATES", "STARTER_TEXTS", "library"]

HOUR = 3600
DAY = 86_400

#: Template ids the library flows refer to (part 2's starter templates).
LIBRARY_TEMPLATES = frozenset({
    "welcome_thanks_code", "welcome_brand_story", "welcome_recommendation",
    "cart_reminder_sms", "cart_big_mms", "cart_last_call",
    "upsell_recommendation", "shipping_update", "delivery_confirmation",
    "winback_offer", "winback_last_chance", "birthday_offer",
    "survey_q1_score", "survey_q2_improve", "survey_q3_recommend", "survey_thanks",
    "quiz_q1", "quiz_q2", "quiz_reco_short", "quiz_reco_long", "quiz_reco_sensitive",
})  # fmt: skip


#: Starter texts of those templates (installing a library flow installs the missing ones; edit them).
STARTER_TEXTS: dict[str, str] = {
    "welcome_thanks_code": "Thanks for joining {shop_name}, {first_name|friend}! Here is 10% off: WELCOME10",
    "welcome_brand_story": "{shop_name}: a little about us, and why we make what we make.",
    "welcome_recommendation": "{first_name|Hi}, picked for you at {shop_name}: {product_offered|our bestsellers}",
    "cart_reminder_sms": "{first_name|Hi}, you left something in your cart: {checkout_url|our shop}. Use SAVE10 for 10% off.",
    "cart_big_mms": "{first_name|Hi}, your cart is waiting: {checkout_url|our shop}. Take 20% off with SAVE20.",
    "cart_last_call": "Last call: your cart at {shop_name} expires soon.",
    "upsell_recommendation": "{first_name|Hi}, customers who bought that also love {product_offered|our new arrivals}.",
    "shipping_update": "{shop_name}: your order {order_id|} has shipped. Track it: {tracking_url|in your account}",
    "delivery_confirmation": "{shop_name}: your order {order_id|} was delivered. Enjoy!",
    "winback_offer": "We miss you at {shop_name}! 15% off with BACK15.",
    "winback_last_chance": "Last chance: BACK15 expires tonight at {shop_name}.",
    "birthday_offer": "Happy birthday from {shop_name}, {first_name|friend}! A gift: BDAY20 for 20% off.",
    "survey_q1_score": "{shop_name}: how did we do? Reply 1-5 or an emoji (😍 🙂 😐 🙁 😞).",
    "survey_q2_improve": "What should we improve? A) speed B) packaging C) product D) nothing",
    "survey_q3_recommend": "Would you recommend us to a friend? Y/N",
    "survey_thanks": "Thank you for your answers!",
    "quiz_q1": "Quiz: short or long hair? Reply 1 (short) or 2 (long).",
    "quiz_q2": "Normal or sensitive skin? Reply 1 (normal) or 2 (sensitive).",
    "quiz_reco_short": "Our pick for you: the Light Cream.",
    "quiz_reco_long": "Our pick for you: the Rich Oil.",
    "quiz_reco_sensitive": "Our pick for you: the Gentle Balm.",
}


def _send(template: str, next_: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "send", "template": template, "next": next_, **extra}


_FLOWS: dict[str, dict[str, Any]] = {
    "welcome": {
        "id": "welcome", "version": 1, "name": "Welcome series",
        "trigger": {"type": "subscribed"},
        "entry": "thanks",
        "nodes": {
            "thanks": _send("welcome_thanks_code", "day1"),
            "day1": {"type": "wait", "seconds": DAY, "next": "noon1"},
            "noon1": {"type": "wait_until", "time": "12:00", "next": "story"},
            "story": _send("welcome_brand_story", "day3"),
            # the story went at noon: wait a bit under 2 days, so "the next noon" is 2 days later
            "day3": {"type": "wait", "seconds": 2 * DAY - HOUR, "next": "noon3"},
            "noon3": {"type": "wait_until", "time": "12:00", "next": "reco"},
            "reco": _send("welcome_recommendation"),
        },
        "exits": [],
        "reentry": {"rule": "once_ever"},
    },
    "abandoned_cart": {
        "id": "abandoned_cart", "version": 1, "name": "Abandoned cart",
        "trigger": {"type": "checkout_abandoned"},
        "entry": "wait1h",
        "nodes": {
            "wait1h": {"type": "wait", "seconds": HOUR, "next": "value"},
            "value": {"type": "branch", "condition": {"op": "gt", "field": "trigger.value", "value": 10_000},
                      "then": "big", "else": "small"},
            "big": _send("cart_big_mms", "big_clicked", channel="mms",
                         media_url="https://example.com/cart.png"),
            "small": _send("cart_reminder_sms", "small_clicked"),
            "big_clicked": {"type": "clicked", "send": "big", "wait_seconds": DAY, "yes": None, "no": "last"},
            "small_clicked": {"type": "clicked", "send": "small", "wait_seconds": DAY, "yes": None, "no": "last"},
            "last": _send("cart_last_call"),
        },
        # an order ends it; so does this checkout paid (under another phone, or reported completed
        # by the shop before or instead of the order: flow_inputs.checkout_end)
        "exits": [{"event": "order_placed"}, {"event": "checkout_completed", "same_object": True}],
        "reentry": {"rule": "once_per_object"},
    },
    "post_purchase_upsell": {
        "id": "post_purchase_upsell", "version": 1, "name": "Post-purchase upsell",
        "trigger": {"type": "order", "status": "paid"},
        "entry": "week",
        "nodes": {
            "week": {"type": "wait", "seconds": 7 * DAY, "next": "noon"},
            "noon": {"type": "wait_until", "time": "12:00", "next": "upsell"},
            "upsell": _send("upsell_recommendation"),
        },
        "exits": [],
        "reentry": {"rule": "once_per_days", "days": 30},
    },
    "shipping_notice": {
        "id": "shipping_notice", "version": 1, "name": "Shipping notification",
        "trigger": {"type": "order", "status": "fulfilled"}, "transactional": True,
        "entry": "notice", "nodes": {"notice": _send("shipping_update")},
        "reentry": {"rule": "once_per_object"},
    },
    "delivery_notice": {
        "id": "delivery_notice", "version": 1, "name": "Delivery notification",
        "trigger": {"type": "order", "status": "delivered"}, "transactional": True,
        "entry": "notice", "nodes": {"notice": _send("delivery_confirmation")},
        "reentry": {"rule": "once_per_object"},
    },
    "win_back": {
        "id": "win_back", "version": 1, "name": "Win-back after 90 days",
        "trigger": {"type": "no_order", "days": 90},
        "entry": "offer",
        "nodes": {
            "offer": _send("winback_offer", "clicked"),
            "clicked": {"type": "clicked", "send": "offer", "wait_seconds": 3 * DAY, "yes": None, "no": "last"},
            "last": _send("winback_last_chance"),
        },
        "exits": [{"event": "order_placed"}],
        "reentry": {"rule": "once_per_days", "days": 180},
    },
    "birthday": {
        "id": "birthday", "version": 1, "name": "Birthday",
        "trigger": {"type": "birthday", "days_before": 7},
        "entry": "ten",
        "nodes": {
            "ten": {"type": "wait_until", "time": "10:00", "next": "offer"},
            "offer": _send("birthday_offer"),
        },
        "reentry": {"rule": "once_per_days", "days": 300},
    },
    "post_delivery_survey": {
        "id": "post_delivery_survey", "version": 1, "name": "Post-delivery survey",
        "trigger": {"type": "order", "status": "delivered"},
        "entry": "day",
        "nodes": {
            "day": {"type": "wait", "seconds": DAY, "next": "noon"},
            "noon": {"type": "wait_until", "time": "12:00", "next": "q1"},
            "q1": _send("survey_q1_score", "a1"),
            "a1": {"type": "reply", "timeout_seconds": 2 * DAY, "save_as": "survey_score", "timeout_next": None,
                   "choices": [{"keywords": ["5", "😍", "🤩"], "next": "q2"},
                               {"keywords": ["4", "🙂", "😊"], "next": "q2"},
                               {"keywords": ["3", "😐"], "next": "q2"},
                               {"keywords": ["2", "🙁", "😕"], "next": "q2"},
                               {"keywords": ["1", "😞", "😡"], "next": "q2"}]},
            "q2": _send("survey_q2_improve", "a2"),
            "a2": {"type": "reply", "timeout_seconds": 2 * DAY, "save_as": "survey_improve", "timeout_next": None,
                   "choices": [{"keywords": ["A", "speed"], "next": "q3"},
                               {"keywords": ["B", "packaging"], "next": "q3"},
                               {"keywords": ["C", "product"], "next": "q3"},
                               {"keywords": ["D", "nothing"], "next": "q3"}]},
            "q3": _send("survey_q3_recommend", "a3"),
            "a3": {"type": "reply", "timeout_seconds": 2 * DAY, "save_as": "survey_recommend", "timeout_next": None,
                   "choices": [{"keywords": ["Y", "yes"], "next": "thanks"},
                               {"keywords": ["N", "no"], "next": "thanks"}]},
            "thanks": _send("survey_thanks"),
        },
        "reentry": {"rule": "once_per_days", "days": 30},
    },
    "sms_quiz": {
        "id": "sms_quiz", "version": 1, "name": "SMS quiz: find your product",
        "trigger": {"type": "keyword", "keywords": ["QUIZ"]},
        "entry": "q1",
        "nodes": {
            "q1": _send("quiz_q1", "a1"),
            "a1": {"type": "reply", "timeout_seconds": DAY, "save_as": "quiz_length", "timeout_next": None,
                   "choices": [{"keywords": ["1", "short"], "next": "q2"},
                               {"keywords": ["2", "long"], "next": "q2"}]},
            "q2": _send("quiz_q2", "a2"),
            "a2": {"type": "reply", "timeout_seconds": DAY, "save_as": "quiz_skin", "timeout_next": None,
                   "choices": [{"keywords": ["1", "normal"], "next": "by_length"},
                               {"keywords": ["2", "sensitive"], "next": "sensitive"}]},
            "by_length": {"type": "branch",
                          "condition": {"op": "eq", "field": "subscriber.attributes.quiz_length", "value": "2"},
                          "then": "long", "else": "short"},
            "sensitive": _send("quiz_reco_sensitive", "tag"),
            "long": _send("quiz_reco_long", "tag"),
            "short": _send("quiz_reco_short", "tag"),
            "tag": {"type": "update", "add_tags": ["quiz_taken"]},
        },
        "reentry": {"rule": "once_per_days", "days": 1},
    },
}


def library() -> dict[str, dict[str, Any]]:
    """Every ready-made flow by id, as fresh (deep-copied) JSON objects to edit."""
    return copy.deepcopy(_FLOWS)
