"""Local time through the service: a recipient's own zone wins on every path in (single, JSON
job, NDJSON job checked in the loop or in a worker process, and after a restart), and a
marketing message sent on a public holiday waits for the next working morning."""

from __future__ import annotations

import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.core.model import Deferred
from gateway.core.scheduler import Scheduler
from gateway.runtime.ingest import POOL_MIN
from gateway.runtime.service import Gateway

pytestmark = pytest.mark.anyio

# Tuesday 2026-12-01 01:00 UTC: 11:00 in Vladivostok, 04:00 in Moscow, 03:00 in Kaliningrad.
# (After FakeClock's start: the carriers' token buckets only refill as time goes forward.)
NIGHT_IN_MOSCOW = datetime(2026, 12, 1, 1, 0, tzinfo=ZoneInfo("UTC")).timestamp()
HEAD = {"from": "ACME", "template": "Hi {name}, 20% off today", "category": "marketing"}


def _mobile(i: int, zone: bool) -> str:
    return f"+79{1 if zone else 2}6{i:07d}"  # +7 916 ... carry a zone, +7 926 ... do not


def _people(n: int, name: str = "tz") -> list[dict]:
    """Every other recipient carries its zone, as ``tz`` or as its synonym ``zone``."""
    return [{"to": _mobile(i, zone=i % 2 == 0), "vars": {"name": f"n{i}"}, **({name: "Asia/Vladivostok"} if i % 2 == 0 else {})}
            for i in range(n)]  # fmt: skip


def _take_all(gw: Gateway, now: float, *, within: float = 60.0) -> tuple[set[str], list[Deferred]]:
    """Everything the carriers may take from ``now`` on, for ``within`` seconds of virtual time
    (their token buckets pace large batches)."""
    sent: set[str] = set()
    deferred: list[Deferred] = []
    t = now
    while t <= now + within:
        for c in gw.core.settings.carriers:
            batch = gw.core.take(c.name, 5000, t)
            sent |= {d.recipient for d in batch.dispatches}
            deferred += [o for o in batch.outcomes if isinstance(o, Deferred)]
        t += 1.0
    return sent, deferred


def _expect_zone_wins(gw: Gateway, people: list[dict], now: float) -> None:
    sent, deferred = _take_all(gw, now)
    with_zone = {p["to"] for p in people if "tz" in p or "zone" in p}
    assert sent == with_zone  # open in Vladivostok: out now
    assert len(deferred) == len(people) - len(with_zone)  # the rest: every Russian zone must be open
    assert all(d.reason == "quiet_hours" and d.until > now for d in deferred)


NAMES = pytest.mark.parametrize("name", ["tz", "zone"])


@NAMES
async def test_a_single_message_with_its_recipients_zone(client, gateway, clock, name):
    clock.now = NIGHT_IN_MOSCOW
    people = _people(2, name)
    for p in people:
        body = {"to": p["to"], "body": "20% off today", "from": "ACME", "category": "marketing"}
        r = await client.post("/v1/messages", json={**body, **({name: p[name]} if name in p else {})})
        assert r.status_code == 202, r.text
    _expect_zone_wins(gateway, people, clock())


@NAMES
async def test_a_json_job_whose_recipients_carry_zones(client, gateway, clock, name):
    clock.now = NIGHT_IN_MOSCOW
    people = _people(10, name)
    r = await client.post("/v1/jobs", json={**HEAD, "recipients": people})
    assert r.status_code == 202 and r.json()["accepted"] == 10, r.text
    _expect_zone_wins(gateway, people, clock())


@pytest.mark.parametrize(("name", "gateway"), [("tz", "loop"), ("zone", "loop"), ("zone", "pool")],
                         indirect=["gateway"])  # the pool once: `zone` is the rows' re-encoded case
async def test_an_ndjson_job_whose_recipients_carry_zones(client, gateway, clock, name):
    clock.now = NIGHT_IN_MOSCOW
    people = _people(POOL_MIN + 50, name)  # large enough for a worker process to check it
    body = "\n".join([json.dumps(HEAD)] + [json.dumps(p) for p in people]) + "\n"
    r = await client.post("/v1/jobs", content=body, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["accepted"] == len(people), r.text
    assert (gateway.pool.chunks == 1) if gateway.pool else True
    _expect_zone_wins(gateway, people, clock())
    restarted = Gateway(Scheduler(gateway.core.settings, clock()), gateway.store)  # stored with the zone
    assert (await restarted.recover(clock())).queued == len(people)
    _expect_zone_wins(restarted, people, clock())


@NAMES
async def test_the_recipients_zone_survives_a_restart(client, gateway, clock, name):
    clock.now = NIGHT_IN_MOSCOW
    people = _people(6, name)
    r = await client.post("/v1/jobs", json={**HEAD, "recipients": people})
    assert r.status_code == 202, r.text
    restarted = Gateway(Scheduler(gateway.core.settings, clock()), gateway.store)
    assert (await restarted.recover(clock())).queued == 6
    _expect_zone_wins(restarted, people, clock())


async def test_tz_and_zone_must_agree(client):
    one = {"to": "+79161234567", "body": "x", "from": "ACME", "category": "marketing"}
    r = await client.post("/v1/messages", json={**one, "tz": "Asia/Omsk", "zone": "Asia/Vladivostok"})
    assert r.status_code == 422 and r.json()["field"] == "zone"
    assert (await client.post("/v1/messages", json={**one, "tz": "Asia/Omsk", "zone": "Asia/Omsk"})).status_code == 202
    people = [{"to": "+79161234567", "vars": {"name": "x"}, "tz": "Asia/Omsk", "zone": "Europe/Moscow"},
              {"to": "+79161234568", "vars": {"name": "y"}, "zone": "Europe/Moscow"}]  # fmt: skip
    for body, kind in ((json.dumps({**HEAD, "recipients": people}), "application/json"),
                       ("\n".join([json.dumps(HEAD)] + [json.dumps(p) for p in people]), "application/x-ndjson")):
        r = await client.post("/v1/jobs", content=body, headers={"content-type": kind})
        assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
        assert [e["index"] for e in r.json()["rejected"]] == [0] and "differ" in r.json()["rejected"][0]["error"]


async def test_an_unknown_zone_is_refused_naming_the_field(client, clock):
    r = await client.post("/v1/jobs", json={**HEAD, "recipients": [{"to": "+79161234567", "vars": {"name": "x"},
                                                                     "tz": "Europe/Atlantis"},
                                                                    {"to": "+79161234568", "vars": {"name": "y"}}]})  # fmt: skip
    assert r.status_code == 202 and r.json()["rejected"][0]["index"] == 0
    assert "Europe/Atlantis" in r.json()["rejected"][0]["error"]


async def test_marketing_on_a_french_public_holiday_waits_for_the_next_working_morning(client, gateway, clock):
    paris = ZoneInfo("Europe/Paris")
    clock.now = datetime(2026, 12, 25, 10, 0, tzinfo=paris).timestamp()  # Christmas Day, a Friday
    r = await client.post("/v1/messages", json={"to": "+33612345678", "body": "Soldes -20%", "from": "ACME",
                                                "category": "marketing"})  # fmt: skip
    assert r.status_code == 202, r.text
    sent, deferred = _take_all(gateway, clock())
    opens = datetime(2026, 12, 26, 8, 0, tzinfo=paris).timestamp()  # Saturday is a working day
    assert not sent and len(deferred) == 1
    until = deferred[0].until
    assert opens <= until < opens + gateway.core.settings.quiet_hours.spread  # released as the window opens
    clock.now = opens - 120
    assert _take_all(gateway, clock())[0] == set()  # 07:58 the next morning: still held
    clock.now = math.ceil(until)  # timers have one-second buckets, never early
    assert _take_all(gateway, clock(), within=0)[0] == {"+33612345678"}
    # an OTP is not marketing: it goes at once, holiday or not
    clock.now = until + 3600
    r = await client.post("/v1/messages", json={"to": "+33612345679", "body": "Code 123456", "from": "ACME",
                                                "category": "otp"})  # fmt: skip
    assert _take_all(gateway, clock())[0] == {"+33612345679"}
