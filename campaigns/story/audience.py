"""Chapter 1, the audience: who may be texted, with what proof, and which of them a segment holds.

Over the campaigns API only: a CSV of the shop's customers with consent columns (rows claiming
consent without proof are imported as not marketable), their order history as NDJSON shop events,
a keyword sign-up (JOIN to the short code, "reply Y" double opt-in, by SMS through the gateway), a
hosted-form sign-up with its evidence, one subscriber's consent proof, live shop events (a checkout,
orders), and three segments from the seeds counted live."""

from __future__ import annotations

import csv
import io
import random
import time
from typing import Any

import msgspec

from campaigns.story.context import Story

CUSTOMERS = 150  # imported from the shop's old tool
UNPROVEN = 15  # of them: "confirmed" in the old tool, but no time nor text of the consent
FIRST = ("Ana", "Ben", "Chloé", "Dev", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kai", "Lena", "Mia",
         "Noah", "Olu", "Priya", "Quinn", "Rosa", "Sam", "Tomás", "Uma", "Vik", "Wen", "Yara", "Zoe")  # fmt: skip
LAST = ("Okafor", "Schmidt", "Dubois", "Patel", "Yilmaz", "Haddad", "Kim", "Moreau", "Silva", "Berg", "Tanaka")
CATEGORIES = {"plants": ("Monstera", "Fiddle leaf fig", "Snake plant"), "pots": ("Terracotta pot", "Glazed planter"),
              "tools": ("Pruning shears", "Watering can"), "seeds": ("Tomato seeds", "Wildflower mix")}  # fmt: skip
DISCLOSURE = ("By ticking this box you agree to receive recurring automated marketing texts from Maple & Moss. "
              "Consent is not a condition of purchase. Msg & data rates may apply. Reply STOP to cancel.")  # fmt: skip
SEGMENTS = {
    # seed 002's "more than 2 orders and more than $100 spent" (here £, minor units), not clicked lately, textable: the campaign's audience
    "Loyal, not clicked in 30 days": {"all": [
        {"field": "orders_count", "op": "gt", "value": 2}, {"field": "total_spent", "op": "gt", "value": 10000},
        {"not": {"event": "activity", "kind": "clicked", "within_days": 30}},
        {"field": "consent", "op": "eq", "value": "confirmed"}]},
    # seed 003's preferred category, with a windowed sum: over £60 on plants in the last year
    "Plant lovers (> £60 on plants, 365 days)": {"event": "item", "within_days": 365, "where": {"category": ["plants"]},
                                                  "measure": "sum", "op": "gt", "value": 6000},
    # seed 002's order payment status
    "Last order's payment pending": {"field": "last_order_payment_status", "op": "eq", "value": "pending"},
}  # fmt: skip


def phone(i: int) -> str:
    """The story's i-th customer, canonical E.164 (UK mobile numbers)."""
    return f"+447911{100000 + i:06d}"


def customers_csv(now: float, zone: str) -> str:
    """The old tool's export: some numbers in national format, the last UNPROVEN rows without proof."""
    rnd = random.Random(17)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["phone", "first_name", "last_name", "gender", "country", "time_zone", "tags", "consent", "consent_at",
                "consent_source", "disclosure_text", "disclosure_version", "page_url"])  # fmt: skip
    for i in range(CUSTOMERS):
        number = phone(i) if i % 3 else "0" + phone(i)[3:]  # 07911 ...: read with the shop's default_region GB
        proven = i < CUSTOMERS - UNPROVEN
        w.writerow([number, FIRST[i % len(FIRST)], rnd.choice(LAST), rnd.choice(("female", "male", "")), "GB", zone,
                    "vip" if i % 11 == 0 else "", "confirmed",
                    int(now - rnd.uniform(30, 700) * 86400) if proven else "", "checkout" if proven else "",
                    DISCLOSURE if proven else "", "checkout-2025" if proven else "",
                    "https://mapleandmoss.example/checkout" if proven else ""])  # fmt: skip
    return out.getvalue()


def order_history(now: float) -> list[dict[str, Any]]:
    """Orders over the last year: 0 to 6 per customer, paid (a few pending), one to three items each."""
    rnd = random.Random(18)
    events = []
    for i in range(CUSTOMERS):
        for k in range(rnd.choice((0, 1, 2, 3, 3, 4, 5, 6))):
            items = []
            for _ in range(rnd.randint(1, 3)):
                category = rnd.choice(tuple(CATEGORIES))
                items.append({"product": rnd.choice(CATEGORIES[category]), "category": category,
                              "price": rnd.choice((1200, 1900, 2500, 3400, 4500)), "quantity": rnd.randint(1, 2)})  # fmt: skip
            at = now - rnd.uniform(5, 360) * 86400
            events.append({"type": "order", "id": f"hist-{i}-{k}", "at": at, "order_id": f"H{i:03d}{k}",
                           "phone": phone(i), "total": sum(x["price"] * x["quantity"] for x in items), "currency": "GBP",
                           "payment_status": "pending" if rnd.random() < 0.04 else "paid", "items": items})  # fmt: skip
    return events


async def chapter(story: Story) -> None:
    now = time.time()
    zone = story.facts.get("setup", {}).get("zone", "Europe/London")
    facts: dict[str, Any] = story.facts.setdefault("audience", {})
    await _import(story, facts, now, zone)
    await _keyword(story, facts)
    await _form(story, facts)
    await _proof(story, facts)
    await _segments(story, facts)


async def _import(story: Story, facts: dict[str, Any], now: float, zone: str) -> None:
    story.step(f"Import: {CUSTOMERS} customers from the shop's old tool (CSV with consent columns)")
    res = await story.api("POST", "/v1/subscribers/import", params={"file_name": "old-tool-export.csv"},
                          content=customers_csv(now, zone).encode(), headers={"content-type": "text/csv"})  # fmt: skip
    story.say(f"{res['rows']} rows: {res['created']} subscribers created, {res['consented']} with proven consent "
              f"(time, disclosure text, page), [yellow]{res['unproven']} claiming consent without proof: imported, "
              f"not marketable[/]")  # fmt: skip
    unproven = await story.api("GET", "/v1/subscribers/{}".format(await _id(story, phone(CUSTOMERS - 1))))
    story.say(f"e.g. {phone(CUSTOMERS - 1)}: consent {unproven['subscriber']['consent']!r}, "
              f"marketable {unproven['marketable']}")  # fmt: skip
    history = order_history(now)
    body = b"\n".join(msgspec.json.encode(e) for e in history)
    bulk = await story.api("POST", "/v1/events/bulk", content=body, headers={"content-type": "application/x-ndjson"})
    story.say(f"Order history as NDJSON shop events: {bulk['applied']} orders applied (idempotent by id; "
              f"per-subscriber aggregates kept as they arrive)")  # fmt: skip
    again = await story.api("POST", "/v1/events/bulk", content=body, headers={"content-type": "application/x-ndjson"})
    story.say(f"Sent again (a retry): {again['applied']} applied, {again['duplicate']} duplicates")
    story.numbers[:] = [phone(i) for i in range(CUSTOMERS)]
    facts.update(imported=res["rows"], consented=res["consented"], unproven=res["unproven"],
                 unproven_marketable=unproven["marketable"], orders=bulk["applied"], orders_duplicate=again["duplicate"])  # fmt: skip


async def _id(story: Story, number: str) -> int:
    page = await story.api("GET", "/v1/subscribers", params={"phone": number})
    if not page["items"]:
        return 0
    return int(page["items"][0]["id"])


async def _state(story: Story, number: str) -> str:
    page = await story.api("GET", "/v1/subscribers", params={"phone": number})
    return page["items"][0]["consent"] if page["items"] else "none"


async def _keyword(story: Story, facts: dict[str, Any]) -> None:
    story.step(f"Keyword sign-up: two people text JOIN to {story.short_code} (double opt-in by SMS)")
    joiners = [phone(CUSTOMERS + 1), phone(CUSTOMERS + 2)]
    for number in joiners:
        await story.reply(number, "join")
    for number in joiners:
        await story.wait_for(f"{number}'s JOIN to be recorded as pending", lambda n=number: _is(story, n, "pending"))
    story.say("Both are [yellow]pending[/]: the shop texted each \"reply Y to confirm\" (the disclosure, recorded with its hash)")
    await story.reply(joiners[0], "Y")
    await story.wait_for(f"{joiners[0]}'s Y to confirm", lambda: _is(story, joiners[0], "confirmed"))
    story.say(f"{joiners[0]} replied Y: [green]confirmed[/] (and was sent the welcome); "
              f"{joiners[1]} never answered: still {await _state(story, joiners[1])!r}, not marketable")  # fmt: skip
    ledger = await story.api("GET", f"/v1/subscribers/{await _id(story, joiners[0])}/consent")
    story.table(f"{joiners[0]}'s consent ledger (append-only)", ["action", "source", "keyword", "MO id", "disclosure"],
                [[e["action"], e["source"], e["evidence"].get("keyword"), e["evidence"].get("mo_id"),
                  (e.get("disclosure_text") or "")[:48]] for e in ledger["entries"]])  # fmt: skip
    story.numbers.append(joiners[0])
    facts.update(keyword_confirmed=1, keyword_pending=1, keyword_ledger=[e["action"] for e in ledger["entries"]])


async def _is(story: Story, number: str, state: str) -> bool:
    return await _state(story, number) == state


async def _form(story: Story, facts: dict[str, Any]) -> None:
    story.step("Hosted form: a visitor signs up from the pop-up on the plants page")
    tools = await story.api("GET", "/v1/signup/tools")
    story.say(f"Sign-up tools: form {tools['form_url']}, social link {tools['sms_link']}")
    number = phone(CUSTOMERS + 3)
    ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
    res = await story.call(story.campaigns, "POST", f"/signup/{story.shop}/subscribe", headers={"user-agent": ua}, json={
        "phone": "07911 " + number[7:], "legal_version": "form-1", "form_id": "popup-plants",
        "page_url": "https://mapleandmoss.example/plants?utm_source=instagram"})  # fmt: skip
    story.say(f"The form answered {res['status']!r}: {res['message']}")
    await story.reply(number, "yes")
    await story.wait_for(f"{number}'s YES to confirm the form sign-up", lambda: _is(story, number, "confirmed"))
    story.say(f"{number} replied YES: [green]confirmed[/]")
    story.numbers.append(number)
    facts.update(form_status=res["status"], form_confirmed=True)


async def _proof(story: Story, facts: dict[str, Any]) -> None:
    number = phone(CUSTOMERS + 3)
    story.step(f"Consent proof for a dispute: {number}")
    proof = await story.api("GET", f"/v1/subscribers/{await _id(story, number)}/consent/proof")
    rows = []
    for p in proof["entries"]:
        e = p["entry"]
        ev = {k: v for k, v in e["evidence"].items() if v}
        rows.append([e["action"], e["source"], p["at_utc"], (e.get("disclosure_sha256") or "")[:12],
                     {True: "yes", False: "NO", None: "–"}[p["disclosure_verified"]],
                     ", ".join(f"{k}={str(v)[:34]}" for k, v in ev.items())])  # fmt: skip
    story.table("GET /v1/subscribers/{id}/consent/proof (also ?format=csv)",
                ["action", "source", "at (UTC)", "disclosure SHA-256", "hash ok", "evidence"], rows)  # fmt: skip
    entries = [p["entry"] for p in proof["entries"]]
    story.say(f"State {proof['state']!r}, marketable {proof['marketable']}: the form's legal text and the SMS "
              "confirmation are each stored verbatim with their version and hash")  # fmt: skip
    facts.update(proof_entries=len(entries), proof_actions=[e["action"] for e in entries],
                 proof_sources=[e["source"] for e in entries],
                 proof_verified=all(p["disclosure_verified"] is not False for p in proof["entries"]),
                 proof_has_ip=any(e["evidence"].get("ip") for e in entries),
                 proof_has_user_agent=any(e["evidence"].get("user_agent") for e in entries))  # fmt: skip


async def _segments(story: Story, facts: dict[str, Any]) -> None:
    story.step("Segments from the seeds, counted live")
    ids: dict[str, int] = {}
    before: dict[str, int] = {}
    for name, tree in SEGMENTS.items():
        ids[name] = (await story.api("POST", "/v1/segments", json={"name": name, "definition": tree}))["id"]
        before[name] = (await story.api("GET", f"/v1/segments/{ids[name]}/count"))["count"]
    story.say("Shop events stream in: the keyword subscriber starts a £120 checkout; a customer with two orders "
              "places a third (now over £100)")  # fmt: skip
    joiner = phone(CUSTOMERS + 1)
    now = time.time()
    await story.api("POST", "/v1/events", json={"type": "checkout", "id": "live-checkout-1", "at": now,
                                                "checkout_id": "C-live-1", "phone": joiner, "status": "started",
                                                "url": "https://mapleandmoss.example/cart/C-live-1", "value": 12000})  # fmt: skip
    mover = await _two_order_customer(story)
    if mover is not None:
        await story.api("POST", "/v1/events", json={"type": "order", "id": "live-order-1", "at": now,
                                                    "order_id": "L0001", "phone": mover, "total": 9900,
                                                    "currency": "GBP", "payment_status": "paid", "items": [
                                                        {"product": "Monstera", "category": "plants", "price": 9900}]})  # fmt: skip
    loyal = ids["Loyal, not clicked in 30 days"]
    await story.wait_for("the live order to reach the loyal segment's count",
                         lambda: _count_is(story, loyal, before["Loyal, not clicked in 30 days"] + (mover is not None)))
    rows = []
    for name, sid in ids.items():
        count = (await story.api("GET", f"/v1/segments/{sid}/count"))["count"]
        sample = (await story.api("GET", f"/v1/segments/{sid}/sample", params={"limit": 3}))["items"]
        rows.append([name, before[name], count, ", ".join(s["first_name"] or s["phone"] for s in sample)])
    story.table("Segments (GET /v1/segments/{id}/count, .../sample)", ["segment", "count before", "count now", "sample"], rows)
    facts["segments"] = {name: {"id": ids[name], "count": row[2], "before": row[1]} for name, row in zip(ids, rows, strict=True)}
    facts["loyal_segment"] = loyal


async def _two_order_customer(story: Story) -> str | None:
    """A marketable customer with exactly two orders and at most £100 spent (so a third moves them in)."""
    seg = {"all": [{"field": "orders_count", "op": "eq", "value": 2}, {"field": "total_spent", "op": "lte", "value": 10000},
                   {"field": "consent", "op": "eq", "value": "confirmed"}]}  # fmt: skip
    res = await story.api("POST", "/v1/segments/validate", json={"definition": seg})
    if not res["count"]:
        return None
    sid = (await story.api("POST", "/v1/segments", json={"name": "two orders, up to £100", "definition": seg}))["id"]
    members = (await story.api("GET", f"/v1/segments/{sid}/sample", params={"limit": 1}))["items"]
    await story.api("DELETE", f"/v1/segments/{sid}", expect=(204,))
    return members[0]["phone"] if members else None


async def _count_is(story: Story, segment_id: int, want: int) -> bool:
    return (await story.api("GET", f"/v1/segments/{segment_id}/count"))["count"] == want
