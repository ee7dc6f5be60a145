"""The shop's story, chapter "flows": automations running by themselves, over the campaigns API only.

1. The shop installs two ready-made flows, edits their waits to seconds (a new version each: honest,
   editable flows, no clock tricks) and switches them on: the abandoned cart (a cart over £100 gets
   an MMS and the bigger discount, else an SMS; no click: a last call; an order ends it) and the
   post-delivery survey.
2. Two customers leave their checkouts; the shop's abandonment logic (``abandon_after``) marks them
   abandoned, the flow sends each its branch's message; one of them then orders (the run ends at once,
   no last call), the other gets the last call.
3. A delivered order starts the survey; the customer answers the first question by SMS ("5"), the
   answer is saved on their profile and the next question goes out.
4. They then text "stop please": the gateway's opt-out classifier takes it (never a survey answer),
   and the run ends (``opted_out``)."""

from __future__ import annotations

import time
from typing import Any

from campaigns.story.context import Story, StoryError

CART_BIG, CART_SMALL = 18_000, 4_500  # pence: £180 and £45 (the shop sells in GBP)


async def _ok(story: Story, method: str, path: str, **kw: Any) -> Any:
    r = await story.campaigns.request(method, path, **kw)
    if r.status_code >= 300:
        raise StoryError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


async def _install(story: Story, flow: str, edit: Any) -> int:
    """Install a library flow, publish an edited version, switch it on; returns the version."""
    existing = await story.campaigns.get(f"/v1/flows/{flow}")
    if existing.status_code == 404:
        await _ok(story, "POST", "/v1/flows/install", json={"flow": flow})
    definition = (await _ok(story, "GET", f"/v1/flows/{flow}"))["definition"]
    edit(definition["nodes"])
    out = await _ok(story, "POST", f"/v1/flows/{flow}/versions", json={"definition": definition})
    await _ok(story, "POST", f"/v1/flows/{flow}/enable")
    return int(out["version"])


def _cart_edit(nodes: dict[str, Any]) -> None:
    nodes["wait1h"]["seconds"] = 2
    nodes["big_clicked"]["wait_seconds"] = nodes["small_clicked"]["wait_seconds"] = 4


def _survey_edit(nodes: dict[str, Any]) -> None:
    nodes["day"]["seconds"] = 1
    nodes["day"]["next"] = "q1"
    nodes.pop("noon", None)
    for a in ("a1", "a2", "a3"):
        nodes[a]["timeout_seconds"] = 120


async def _subscriber(story: Story, number: str) -> dict[str, Any]:
    page = await _ok(story, "GET", "/v1/subscribers", params={"phone": number})
    if not page["items"]:
        raise StoryError(f"no subscriber {number}")
    return page["items"][0]


async def _marketable(story: Story, count: int) -> list[tuple[str, int]]:
    out = []
    for number in reversed(story.numbers):  # the chapters before used the first customers most
        sub = await _subscriber(story, number)
        if sub["consent"] == "confirmed":
            out.append((number, int(sub["id"])))
        if len(out) == count:
            return out
    raise StoryError(f"the flows chapter needs {count} marketable customers")


async def _messages(story: Story, flow: str) -> list[dict[str, Any]]:
    return (await _ok(story, "GET", f"/v1/flows/{flow}/messages", params={"limit": 1000}))["items"]


async def _runs(story: Story, flow: str) -> list[dict[str, Any]]:
    return (await _ok(story, "GET", f"/v1/flows/{flow}/runs", params={"limit": 1000}))["items"]


async def _sent(story: Story, flow: str, sid: int, step: str) -> bool:
    return any(m["subscriber_id"] == sid and m["step"] == step and m["state"] == "sent" for m in await _messages(story, flow))


async def _ended(story: Story, flow: str, sid: int, reason: str) -> bool:
    return any(r["subscriber_id"] == sid and r["ended"] == reason for r in await _runs(story, flow))


async def chapter(story: Story) -> None:
    facts = story.facts.setdefault("flows", {})
    story.step("Flows: the abandoned cart and the post-delivery survey, from the library, edited, switched on")
    cart_v = await _install(story, "abandoned_cart", _cart_edit)
    survey_v = await _install(story, "post_delivery_survey", _survey_edit)
    story.say(f"abandoned_cart v{cart_v}: wait 2 s (was 1 h); over £100 -> MMS + 20% off, else SMS + 10%; "
              f"no click in 4 s -> last call; an order ends it")  # fmt: skip
    story.say(f"post_delivery_survey v{survey_v}: a second after delivery, 3 questions, answers saved on the profile")
    (big, big_id), (small, small_id), (surveyed, surveyed_id) = await _marketable(story, 3)

    story.step("Two customers leave their checkouts")
    now = time.time()
    for number, value, tag in ((big, CART_BIG, "big"), (small, CART_SMALL, "small")):
        await _ok(story, "POST", "/v1/events", json={
            "type": "checkout", "id": f"story-flow-checkout-{tag}-{int(now)}", "at": now,
            "checkout_id": f"story-cart-{tag}-{int(now)}", "phone": number, "status": "started", "value": value,
            "url": f"https://shop.example/cart/{tag}"})
    story.say(f"{big}: £{CART_BIG / 100:.0f} cart, {small}: £{CART_SMALL / 100:.0f} cart; "
              "the shop's abandonment logic will mark them abandoned")  # fmt: skip
    await story.wait_for("the MMS to the £180 cart", lambda: _sent(story, "abandoned_cart", big_id, "big"), timeout=40)
    await story.wait_for("the SMS to the £45 cart", lambda: _sent(story, "abandoned_cart", small_id, "small"), timeout=40)
    await _ok(story, "POST", "/v1/events", json={
        "type": "order", "id": f"story-flow-order-{int(now)}", "at": time.time(), "order_id": f"story-order-{int(now)}",
        "phone": small, "total": CART_SMALL, "currency": "GBP", "payment_status": "paid",
        "checkout_id": f"story-cart-small-{int(now)}"})
    story.say(f"{small} orders: the cart is recovered")
    await story.wait_for("the recovered cart's run to end", lambda: _ended(story, "abandoned_cart", small_id, "exit:order_placed"))
    await story.wait_for("the last call to the other cart", lambda: _ended(story, "abandoned_cart", big_id, "completed"),
                         timeout=30)  # fmt: skip
    msgs = [m for m in await _messages(story, "abandoned_cart") if m["subscriber_id"] in (big_id, small_id)]
    runs = {r["subscriber_id"]: r for r in await _runs(story, "abandoned_cart")}
    rows = []
    for number, sid in ((big, big_id), (small, small_id)):
        steps = [f"{m['step']} ({m['kind']})" for m in msgs if m["subscriber_id"] == sid]
        rows.append([number, ", ".join(steps), runs[sid]["ended"]])
    story.table("Abandoned cart runs", ["customer", "sent (step, channel)", "run ended"], rows)
    facts.update(cart_sends=len(msgs), cart_recovered=1, cart_exit=runs[small_id]["ended"],
                 cart_big_channel=next(m["kind"] for m in msgs if m["subscriber_id"] == big_id))  # fmt: skip

    story.step("A delivered order starts the survey; the customer answers by SMS")
    await _ok(story, "POST", "/v1/events", json={
        "type": "order", "id": f"story-flow-survey-order-{int(now)}", "at": time.time(),
        "order_id": f"story-survey-{int(now)}", "phone": surveyed, "total": 3200, "currency": "GBP",
        "payment_status": "paid"})
    await _ok(story, "POST", "/v1/events", json={
        "type": "fulfillment", "id": f"story-flow-delivered-{int(now)}", "at": time.time(),
        "order_id": f"story-survey-{int(now)}", "status": "delivered"})
    await story.wait_for("the survey's first question", lambda: _sent(story, "post_delivery_survey", surveyed_id, "q1"))
    await story.reply(surveyed, "5")
    await story.wait_for("the survey's second question", lambda: _sent(story, "post_delivery_survey", surveyed_id, "q2"))
    sub = await _subscriber(story, surveyed)
    story.say(f"{surveyed} answered \"5\": saved as survey_score = {sub['attributes'].get('survey_score')!r}; "
              "the second question went out")  # fmt: skip

    story.step("\"stop please\": an opt-out, never a survey answer")
    await story.reply(surveyed, "stop please")
    await story.wait_for("the survey run to end on the opt-out",
                         lambda: _ended(story, "post_delivery_survey", surveyed_id, "opted_out"))  # fmt: skip
    nodes = (await _ok(story, "GET", "/v1/flows/post_delivery_survey/nodes"))["items"]
    story.table("Post-delivery survey, per node (this version)", ["node", "sent", "waiting", "completed", "exited"],
                [[n["node"], n["sent"], n["waiting"], n["completed"], n["exited"]] for n in nodes
                 if n["version"] == survey_v])  # fmt: skip
    facts.update(survey_score=sub["attributes"].get("survey_score"), survey_ended="opted_out")
