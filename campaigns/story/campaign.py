"""Chapter 2, the campaign: an A/B test of two texts to the loyal segment, with shortcodes, a
per-recipient discount code and short link, and smart sending; launched through the gateway; clicks
on the short links (a link-preview bot and a HEAD among them, which do not count) and orders
attributed; the winner sent to the rest; and the analytics table.

The subscribers' side is simulated from outside, as their phones and the shop would do it: each one's
text is read back from the campaigns API (``GET /v1/campaigns/{id}/recipients``: what was sent, with
their own short link), a click is a GET of that link on the campaign service, an order is a shop event,
a STOP is an MO through the gateway (``Story.reply``)."""

from __future__ import annotations

import re
import time
from typing import Any

from campaigns.story.context import Story, StoryError

PHONE_UA = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36"
BOT_UA = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
SMART_SKIPPED = 6  # loyal customers the shop's old tool texted three hours ago
CTR = {"a": 0.12, "b": 0.45}  # who clicks, per variant (of its delivered recipients, deterministic)
ORDER_SHARE = {"a": 0.34, "b": 0.5}  # of the clickers, who then order
VIEW_ORDERS = 2  # delivered, did not click, ordered within a day (view-through)
FINAL = ("delivered", "failed", "expired", "canceled")
DEFINITION: dict[str, Any] = {
    "variants": [
        {"name": "a", "template": "{first_name|Hello}, {product_offered} are in at {shop_name}. "
                                  "15% off with {discount_code}: {product_offered_url}"},
        {"name": "b", "template": "{first_name|Hello}, your 15% off {product_offered} ends Sunday: "
                                  "code {discount_code} at {product_offered_url}"},
    ],
    "ab": {"test_share": 0.6, "metric": "ctr", "period_s": 3, "min_per_variant": 10, "fallback": "best"},
    "smart_sending_hours": 16,
    "values": {"shop_name": "Maple & Moss", "product_offered": "spring bulbs",
               "product_offered_url": "https://mapleandmoss.example/spring-bulbs"},
    "rules": {"brand": "Maple & Moss", "signature": "always", "footer": "always"},
    "utm": {"utm_campaign": "spring-bulbs"},
    "discount": {"pattern": "BULBS-######"},
}  # fmt: skip


async def chapter(story: Story) -> None:
    facts: dict[str, Any] = story.facts.setdefault("campaign", {})
    segment = await _loyal_segment(story)
    skipped = await _texted_recently(story, segment)
    cid = await _create(story, segment, facts)
    await _launch(story, cid, segment, skipped, facts)
    rows = await _delivered(story, cid, "the test's messages to be delivered")
    story.step("Subscribers open their texts: link previews, clicks, orders")
    await _clicks_and_orders(story, cid, rows, facts, round_="test")
    await _opt_out(story, cid, rows, facts)
    await _winner(story, cid, facts)
    tested = {r["subscriber_id"] for r in rows}
    rest = [r for r in await _delivered(story, cid, "the winner's messages to the rest to be delivered")
            if r["subscriber_id"] not in tested]  # fmt: skip
    await _clicks_and_orders(story, cid, rest, facts, round_="rest")
    await _analytics(story, cid, facts)


async def _loyal_segment(story: Story) -> int:
    known = story.facts.get("audience", {}).get("loyal_segment")
    if known:
        return int(known)
    for s in (await story.api("GET", "/v1/segments"))["items"]:
        if s["name"].startswith("Loyal"):
            return int(s["id"])
    raise StoryError("the campaign chapter needs the audience chapter's loyal segment")


async def _members(story: Story, segment: int) -> list[int]:
    out: list[int] = []
    after = 0
    while True:
        page = await story.api("GET", f"/v1/segments/{segment}/members", params={"after": after, "limit": 500})
        out += page["items"]
        if page["next"] is None:
            return out
        after = page["next"]


async def _texted_recently(story: Story, segment: int) -> int:
    """A few of the segment got a marketing text three hours ago (the shop's old tool, reported as
    ``message_sent`` activities): smart sending (16 h) will leave them out."""
    members = (await _members(story, segment))[:SMART_SKIPPED]
    at = time.time() - 3 * 3600
    for sid in members:
        sub = await story.api("GET", f"/v1/subscribers/{sid}")
        await story.api("POST", "/v1/events", json={"type": "activity", "id": f"old-tool-sent-{sid}", "at": at,
                                                    "phone": sub["subscriber"]["phone"], "kind": "message_sent",
                                                    "properties": {"tool": "old"}})  # fmt: skip
    return len(members)


async def _create(story: Story, segment: int, facts: dict[str, Any]) -> int:
    story.step("A campaign to the loyal segment: two texts A/B tested, shortcodes, a discount code and a short link each")
    definition = {**DEFINITION, "sender": story.short_code, "audience": {"include": [segment]}}
    camp = await story.api("POST", "/v1/campaigns", json={"name": "Spring bulbs", "definition": definition})
    cid = int(camp["id"])
    first = (await _members(story, segment))[-1]
    preview = await story.api("GET", f"/v1/campaigns/{cid}/preview", params={"subscriber": first})
    story.table(f"Preview for subscriber {first} (GET /v1/campaigns/{cid}/preview: the gateway's own rules)",
                ["variant", "text", "encoding", "segments", "price per carrier"],
                [[p["variant"], p["text"], p["encoding"], p["segments"],
                  ", ".join(f"{c} {v}" for c, v in sorted(p["prices"].items()) if v is not None) or "–"] for p in preview])  # fmt: skip
    facts.update(id=cid, preview_segments={p["variant"]: p["segments"] for p in preview})
    return cid


async def _launch(story: Story, cid: int, segment: int, skipped: int, facts: dict[str, Any]) -> None:
    count = (await story.api("GET", f"/v1/segments/{segment}/count"))["count"]
    out = await story.api("POST", f"/v1/campaigns/{cid}/launch")
    frozen = out["recipients"] + out["held"]
    story.say(f"Launched: the segment's {count} textable members frozen; {count - frozen} left out by smart sending "
              f"(texted 3 h ago by the old tool, within 16 h); {out['recipients']} in the test "
              f"({out['recipients'] / max(frozen, 1):.0%} of {frozen}: each recipient drawn with the definition's "
              f"test_share of {DEFINITION['ab']['test_share']:.0%}), {out['held']} held for the winner; {out['batches']} NDJSON "
              f"job(s) with an Idempotency-Key, {out['accepted']} accepted by the gateway")  # fmt: skip
    hours = (await story.api("GET", f"/v1/campaigns/{cid}/send-times", params={"clock": "recipient"}))["hours"]
    story.say("Send times in the recipients' own zones (GET .../send-times, seed 003's 时段分布): "
              + ", ".join(f"{n} at {h:02d}:00 their local time" for h, n in enumerate(hours) if n))  # fmt: skip
    again = await story.api("POST", f"/v1/campaigns/{cid}/launch")
    story.say(f"Launching again (a retry) sends nothing new: status {again['status']!r}, {again['accepted']} accepted in all")
    facts.update(segment_count=count, smart_skipped=count - frozen, smart_skipped_expected=skipped,
                 test_recipients=out["recipients"], held=out["held"], accepted=out["accepted"],
                 relaunch_accepted=again["accepted"], send_hours={h: n for h, n in enumerate(hours) if n})  # fmt: skip


async def _recipients(story: Story, cid: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await story.api("GET", f"/v1/campaigns/{cid}/recipients", params={"after": after, "limit": 1000})
        out += page["items"]
        if page["next"] is None:
            return out
        after = page["next"]


async def _delivered(story: Story, cid: int, what: str) -> list[dict[str, Any]]:
    """Waits until every sent recipient's state is final (the gateway's state webhooks); returns them."""
    rows: list[dict[str, Any]] = []

    async def done() -> bool:
        nonlocal rows
        rows = [r for r in await _recipients(story, cid) if r["batch"] >= 0]
        return all(r["state"] in FINAL for r in rows)

    await story.wait_for(what, done, timeout=30.0)
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    story.say("Message states back by the gateway's signed webhooks: "
              + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    return rows


def _code(text: str) -> str:
    m = re.search(r"https://[a-z0-9.-]+/([A-Za-z0-9]{5,16})\b", text)
    if m is None:
        raise StoryError(f"no short link in {text!r}")
    return m.group(1)


async def _hit(story: Story, code: str, *, method: str = "GET", ua: str = PHONE_UA) -> str:
    r = await story.campaigns.request(method, f"/{code}", headers={"user-agent": ua})
    if r.status_code != 302:
        raise StoryError(f"{method} /{code}: HTTP {r.status_code}, not the redirect")
    return r.headers["location"]


async def _clicks_and_orders(story: Story, cid: int, rows: list[dict[str, Any]], facts: dict[str, Any], *,
                             round_: str) -> None:  # fmt: skip
    """The delivered ``rows`` open their texts: per variant, its CTR's share click (a quarter of them
    twice), some of those order, and a couple who did not click order anyway (view-through)."""
    delivered = [r for r in rows if r["state"] == "delivered"]
    if not delivered:
        return
    if round_ == "test":
        first = delivered[0]
        await _hit(story, _code(first["text"]), ua=BOT_UA)  # the messenger's link preview
        await _hit(story, _code(first["text"]), method="HEAD")  # a phone's HEAD before opening
        story.say(f"{first['phone']}'s link fetched by a preview bot and by a HEAD: redirected, not counted as clicks")
    settle = max(r["state_at"] or 0.0 for r in delivered) + 1.05  # the shop's click_min_delay_s (1 s): preview fetches
    await story.wait_for("1 s after the last delivery (preview fetches come sooner)", lambda: _after(settle), timeout=10.0)
    clickers: list[dict[str, Any]] = []
    location = ""
    for variant, share in CTR.items():
        mine = [r for r in delivered if r["variant"] == variant]
        clickers += mine[: round(share * len(mine))]
    for k, r in enumerate(clickers):
        location = await _hit(story, _code(r["text"]))
        if k % 4 == 0:
            await _hit(story, _code(r["text"]))  # opened twice: one unique click, two clicks
    buyers = [r for v, share in ORDER_SHARE.items()
              for r in [c for c in clickers if c["variant"] == v][: round(share * sum(c["variant"] == v for c in clickers))]]  # fmt: skip
    viewers = [r for r in delivered if r not in clickers][-VIEW_ORDERS:]
    revenue, offset = 0, facts.get("orders", 0)
    for k, r in enumerate(buyers + viewers, start=offset):
        total = 2400 + 700 * (k % 5)
        revenue += total
        await story.api("POST", "/v1/events", json={
            "type": "order", "id": f"bulbs-order-{k}", "at": time.time(), "order_id": f"B{k:04d}", "phone": r["phone"],
            "total": total, "currency": "GBP", "payment_status": "paid",
            "items": [{"product": "Tulip bulbs (20)", "category": "seeds", "price": total}]})  # fmt: skip
    story.say(f"{len(clickers)} of {len(delivered)} clicked ({len(clickers[::4])} twice; the redirect: {location}); "
              f"{len(buyers)} of them ordered, and {len(viewers)} who did not click: £{revenue / 100:,.2f}")  # fmt: skip
    for key, n in (("clickers", len(clickers)), ("double_clicks", len(clickers[::4])), ("buyers_after_click", len(buyers)),
                   ("buyers_after_view", len(viewers)), ("orders", len(buyers) + len(viewers)), ("order_revenue", revenue)):  # fmt: skip
        facts[key] = facts.get(key, 0) + n
    clicks = await story.api("GET", f"/v1/campaigns/{cid}/clicks")
    story.say(f"GET /v1/campaigns/{cid}/clicks: {clicks['unique']} unique, {clicks['total']} total, "
              f"{clicks['ignored']} ignored (bot, HEAD)")  # fmt: skip
    facts["clicks"] = clicks


async def _after(t: float) -> bool:
    return time.time() >= t


async def _opt_out(story: Story, cid: int, rows: list[dict[str, Any]], facts: dict[str, Any]) -> None:
    leaver = [r for r in rows if r["state"] == "delivered"][1]
    await story.reply(leaver["phone"], "STOP")

    async def revoked() -> bool:
        page = await story.api("GET", "/v1/subscribers", params={"phone": leaver["phone"]})
        return page["items"][0]["consent"] == "revoked"

    await story.wait_for(f"{leaver['phone']}'s STOP to reach the consent ledger", revoked)
    story.say(f"{leaver['phone']} replied STOP: the gateway suppressed the number and the ledger has the opt-out")
    facts["opted_out"] = leaver["phone"]


async def _winner(story: Story, cid: int, facts: dict[str, Any]) -> None:
    story.step(f"The A/B test's period ({DEFINITION['ab']['period_s']} s in this story) ends: the winner by CTR")
    decision: dict[str, Any] = {}

    async def decided() -> bool:
        nonlocal decision
        decision = await story.api("POST", f"/v1/campaigns/{cid}/winner")
        return decision["decision"]["status"] != "pending"

    await story.wait_for("the A/B decision", decided, timeout=15.0)
    d = decision["decision"]
    story.table("POST /v1/campaigns/{id}/winner", ["variant", "delivered", "CTR", "95 % interval", "p-value vs leader"],
                [[e["variant"], e["n"], f"{e['value']:.1%}", f"{e['low']:.1%} – {e['high']:.1%}",
                  "leader" if e["p_value"] is None else f"{e['p_value']:.4f}"] for e in d["estimates"]])  # fmt: skip
    story.say(f"{d['status']}: [bold]{d['winner']}[/] ({d['reason']}); {decision['released']} held recipients sent {d['winner']}")
    facts.update(decision=d["status"], winner=d["winner"], released=decision["released"])


async def _analytics(story: Story, cid: int, facts: dict[str, Any]) -> None:
    story.step("Analytics: what the campaign earned (GET /v1/campaigns/{id}/report?by=variant)")
    by_variant = await story.api("GET", f"/v1/campaigns/{cid}/report", params={"by": "variant"})
    total = (await story.api("GET", f"/v1/campaigns/{cid}/report", params={"by": "campaign"}))["rows"]
    rows = [(f"variant {m['key'].get('variant')}", m) for m in by_variant["rows"]] + [("campaign", m) for m in total]
    story.table("Per variant (the winner's row includes the rest of the audience) and for the campaign",
                ["", "sent", "delivered", "unique clicks (CTR)", "conversions (rate)", "revenue", "revenue / message",
                 "cost", "ROI", "opt-outs (rate)"],
                [[name, m["sent"], f"{m['delivered']:,} ({_pct(m['delivery_rate'])})",
                  f"{m['unique_clicks']:,} ({_pct(m['ctr'])})", f"{m['conversions']:,} ({_pct(m['conversion_rate'])})",
                  _money(m["revenue"]), _money(m["revenue_per_message"]), _money(m["cost"]),
                  "–" if m["roi"] is None else f"{m['roi']:.1f}×",
                  f"{m['opt_outs']} ({_pct(m['opt_out_rate'])}){' ⚠' if m['opt_out_alert'] else ''}"] for name, m in rows])  # fmt: skip
    via: dict[str, int] = {}
    for a in by_variant["attributions"]:
        via[str(a["via"])] = via.get(str(a["via"]), 0) + 1
    words = {"click": "by a click (within 5 days)", "view": "by a delivery without a click (within 24 h)",
             "None": "not attributed (neither in its windows)"}
    story.say("Orders attributed to the campaign: "
              + ", ".join(f"{n} {words.get(how, f'by {how}')}" for how, n in sorted(via.items())) + "; the ⚠ marks an "
              "opt-out rate at or over the tenant's alert line (opt_out_alert, 0.5 % by default)")  # fmt: skip
    keys = ("sent", "delivered", "unique_clicks", "ctr", "conversions", "conversion_rate", "revenue",
            "revenue_per_message", "cost", "roi", "opt_outs", "opt_out_rate")  # fmt: skip
    facts["report"] = {str(m["key"].get("variant")): {k: m.get(k) for k in keys} for m in by_variant["rows"]}
    facts["totals"] = {k: total[0].get(k) for k in keys} if total else {}
    facts["attributed_via"] = via


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _money(cents: float | None) -> str:
    return "–" if cents is None else f"£{cents / 100:,.2f}"
