"""Chapter: the inbox. A subscriber asks something no flow waits for; it lands in the shop's inbox
(``needs reply``), an agent takes it and answers through the campaigns API, the answer goes through
the gateway as a transactional reply (sent once, even when the agent's client retries), its delivery
comes back into the conversation's history, and the response-time figures are shown. A second
subscriber's "thanks!" is closed without an answer (it leaves the queue, no response time counted).

Over HTTP only, through ``Story`` (``campaigns/story/context.py``): ``reply`` is the subscriber's SMS
as the carrier delivers it to the gateway, which forwards it to the campaigns webhook."""

from __future__ import annotations

import time
from typing import Any

from campaigns.story.context import Story, StoryError

QUESTION = "Hi! Will the linen shirt be back in size M before Friday?"
ANSWER = "Hi! Yes: size M is back on Thursday morning, we'll keep one for you. Maya at Maple & Moss"
THANKS = "Thanks, got it!"
AGENT = "maya"


async def _get(story: Story, path: str, **params: Any) -> Any:
    r = await story.campaigns.get(path, params=params or None)
    if r.status_code != 200:
        raise StoryError(f"GET {path}: HTTP {r.status_code} {r.text[:300]}")
    return r.json()


async def _post(story: Story, path: str, body: Any = None, headers: dict[str, str] | None = None,
                expect: tuple[int, ...] = (200, 202)) -> Any:  # fmt: skip
    r = await story.campaigns.post(path, json=body, headers=headers)
    if r.status_code not in expect:
        raise StoryError(f"POST {path}: HTTP {r.status_code} {r.text[:300]}")
    return r.json()


async def _conversation_of(story: Story, number: str) -> dict[str, Any] | None:
    items = (await _get(story, "/v1/inbox/conversations", phone=number))["items"]
    return items[0] if items else None


async def _ask(story: Story, text: str, candidates: list[str]) -> dict[str, Any]:
    """Text ``text`` from the first candidate whose reply no flow run takes; its conversation."""
    for number in candidates:
        before = await _conversation_of(story, number)
        seen = len((await _get(story, f"/v1/inbox/conversations/{before['id']}/messages", limit=1000))["items"]) if before else 0
        await story.reply(number, text)
        got: dict[str, Any] = {}

        async def arrived() -> bool:
            conv = await _conversation_of(story, number)
            if conv is None:
                return False
            items = (await _get(story, f"/v1/inbox/conversations/{conv['id']}/messages", limit=1000))["items"]
            new = [m for m in items[seen:] if m["direction"] == "in" and m["text"] == text]
            if new:
                got.update(conversation=conv, message=new[-1])
            return bool(new)

        await story.wait_for(f"{number}'s message in the campaigns layer", arrived)
        if got["message"]["route"] == "inbox":
            return await _get(story, f"/v1/inbox/conversations/{got['conversation']['id']}")
        # A flow run was waiting for this subscriber's reply and took it: ask with someone else.
    raise StoryError("every subscriber the story tried had a flow waiting for their reply")


async def chapter(story: Story) -> None:
    if len(story.numbers) < 2:
        raise StoryError("the inbox chapter needs the audience chapter's subscribers (story.numbers)")
    candidates = list(reversed(story.numbers[:-2] or story.numbers))  # the last ones joined by SMS: keep them out

    story.step("A subscriber asks a question no flow waits for: it lands in the inbox")
    asked_at = time.time()
    conv = await _ask(story, QUESTION, candidates)
    cid, number = conv["conversation"]["id"], conv["conversation"]["phone"]
    queue = (await _get(story, "/v1/inbox/conversations", status="needs_reply"))["items"]
    if cid not in [c["id"] for c in queue]:
        raise StoryError(f"conversation {cid} is not in the needs-reply queue")
    story.table("Needs reply (the longest wait first)", ["conversation", "phone", "waiting (s)", "assignee"],
                [[c["id"], c["phone"], round(time.time() - c["waiting_since"], 1), c["assignee"]] for c in queue])  # fmt: skip

    story.step(f"Agent {AGENT!r} takes it and answers through the API (the request is retried: sent once)")
    await _post(story, f"/v1/inbox/conversations/{cid}/assign", {"agent": AGENT})
    key = f"story-answer-{cid}"
    first = await _post(story, f"/v1/inbox/conversations/{cid}/answers", {"text": ANSWER, "agent": AGENT},
                        headers={"idempotency-key": key})  # fmt: skip
    again = await _post(story, f"/v1/inbox/conversations/{cid}/answers", {"text": ANSWER, "agent": AGENT},
                        headers={"idempotency-key": key})  # fmt: skip
    if not again["replayed"] or again["message"]["message_id"] != first["message"]["message_id"]:
        raise StoryError("a retried answer was not recognised as the same answer")

    delivered: dict[str, Any] = {}

    async def answer_delivered() -> bool:
        items = (await _get(story, f"/v1/inbox/conversations/{cid}/messages", limit=1000))["items"]
        done = [m for m in items if m["kind"] == "answer" and m["state"] == "delivered"]
        if done:
            delivered.update(done[-1])
        return bool(done)

    await story.wait_for("the answer's delivery receipt in the conversation's history", answer_delivered)
    gw = await story.gateway.get(f"/v1/messages/{delivered['gateway_id']}")
    if gw.status_code != 200:
        raise StoryError(f"the gateway does not know the answer {delivered['gateway_id']}: HTTP {gw.status_code}")
    history = (await _get(story, f"/v1/inbox/conversations/{cid}/messages", limit=1000))["items"]
    story.table(f"The conversation with {number}", ["direction", "kind", "text", "state", "by"],
                [[m["direction"], m["kind"], m["text"][:48] + ("…" if len(m["text"]) > 48 else ""), m["state"],
                  m["by"]] for m in history[-6:]])  # fmt: skip

    story.step("Another subscriber just says thanks: closed without an answer")
    thanks = await _ask(story, THANKS, [n for n in candidates if n != number])
    closed = await _post(story, f"/v1/inbox/conversations/{thanks['conversation']['id']}/close")
    if closed["status"] != "closed":
        raise StoryError(f"closing conversation {closed['id']} left it {closed['status']}")

    story.step("Response-time figures")
    f = await _get(story, "/v1/inbox/figures")
    story.table("Inbox", ["answered", "first response p50 (s)", "p90 (s)", "open", "needs reply", "closed"],
                [[f["answered"], f["first_response_p50_s"], f["first_response_p90_s"], f["open"], f["needs_reply"],
                  f["closed"]]])  # fmt: skip
    facts = getattr(story, "facts", None)
    if isinstance(facts, dict):
        facts["inbox"] = {"conversation": cid, "answer_state": delivered["state"], "answered": f["answered"],
                          "first_response_p50_s": f["first_response_p50_s"], "needs_reply": f["needs_reply"],
                          "asked_to_delivered_s": round(time.time() - asked_at, 2)}  # fmt: skip
