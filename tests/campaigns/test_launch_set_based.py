"""The set-based freeze (``Store.freeze_set``: the audience planned and its texts written in SQL)
stores exactly what the planned freeze (``launch._plan``, a recipient at a time in Python) stores:
the same recipients, send times, zones, batches, slots and texts byte for byte, the same link range,
the same error for a text that cannot be rendered. Each case is frozen twice in one store, once per
path, under two tenants holding the same subscribers (their ids interleaved, so id order agrees)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.core.events import Profile
from campaigns.errors import InvalidInput
from campaigns.service import launch
from campaigns.service.launch import TenantLinks, freeze
from campaigns.store import Store, open_store
from campaigns.store.base import NewConsent

T0 = 1_767_000_000.0  # 2025-12-29 09:20 UTC
TL = TenantLinks(domain="sl.ui", key=b"k" * 32, zone="Europe/Paris")
TENANTS = ("plan", "set")  # frozen by ``_plan`` / by ``freeze_set``

NAMES = [None, "", "Ana", "Zoë", "李雷", "Bob"]
LANGUAGES = [None, "", "en", "zh", "fr-CA"]
ZONES = [None, "", "UTC", "Europe/Paris", "Asia/Shanghai", "America/New_York", "Not/AZone"]
TEMPLATES = [
    "Hi {first_name|there}, sale at https://shop.example/sale?c=1 today",
    "Hi {first_name}, {shop_name} https://a.example/x and https://b.example/y?z=2",
    "{shop_name}: no link for {first_name|you}",
    "Deal https://shop.example/p/{first_name|x}",  # the URL differs per recipient: planned after all
    "https://shop.example/only",
]
SCHEDULES: list[dict[str, Any]] = [
    {"kind": "now"}, {"kind": "at", "at": T0 + 7200}, {"kind": "at", "at": T0 - 50},
    {"kind": "local", "date": "2025-12-29", "time": "10:00"},
    {"kind": "local", "date": "2025-12-29", "time": "10:00", "late": "skip"},
    {"kind": "local", "date": "2025-12-29", "time": "10:00", "late": "now"},
]

Sub = tuple[Any, Any, Any, str, float | None]
subs_st = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(LANGUAGES), st.sampled_from(ZONES),
                             st.sampled_from(["confirmed", "confirmed", "confirmed", "pending"]),
                             st.one_of(st.none(), st.floats(1, 40 * 3600))), max_size=16)  # fmt: skip


def _put(store: Store, tenant: str, i: int, sub: Sub) -> int:
    name, language, zone, consent, _hours_ago = sub
    phone = f"+4479111{i:05d}"
    row, _ = store.put_subscriber(tenant, Profile(phone=phone, first_name=name or None, time_zone=zone or None,
                                                  language=language or None), phone=phone, at=T0 - 9000, now=T0 - 9000)  # fmt: skip
    for k, action in enumerate(["opt_in", "confirm"] if consent == "confirmed" else ["opt_in"]):
        store.record_consent(tenant, NewConsent(phone=phone, action=action, source="api", at=T0 - 8000 + k), now=T0 - 8000)
    return row.id


def _stored(store: Store, tenant: str, cid: int) -> tuple[Any, ...]:
    """What a freeze stored, comparable across tenants: a recipient by its phone, a code of its own
    (a ``short_links`` row: keyed by campaign and subscriber id, which differ) by its target."""
    recipients = store.campaign_recipients(tenant, cid, limit=100_000)
    phone = {r.subscriber_id: r.phone for r in recipients}
    own = {k.code: k for k in _links(store, tenant, cid)}

    def text(t: str) -> str:
        return re.sub(r"https://sl\.ui/([0-9A-Za-z]+)", lambda m: f"<{own[m[1]].target}>" if m[1] in own else m[0], t)

    rows = sorted((phone[r.subscriber_id], r.variant, r.send_at, r.tz, text(r.text), r.batch, r.idx, r.state)
                  for r in recipients)  # fmt: skip
    batches = [(b.batch, b.send_at, b.size, b.job_id) for b in store.batches(tenant, cid)]
    rng = store.link_range(tenant, cid)
    ranged = None if rng is None else (rng.length, rng.start, rng.count, rng.stride, rng.batch_size, rng.targets,
                                       rng.created_at, rng.expires_at)  # fmt: skip
    links = sorted((k.target, phone.get(k.subscriber_id), k.expires_at) for k in own.values())
    return rows, batches, ranged, links


def _links(store: Store, tenant: str, cid: int) -> list[Any]:
    with store._tx() as tx:  # type: ignore[attr-defined]  # the rows of HMAC codes, by campaign
        codes = [c for (c,) in tx.rows("SELECT code FROM short_links WHERE tenant = ? AND campaign_id = ?", (tenant, cid))]
    return list(store.links(codes).values())


def _people(store: Store, subs: list[Sub], tenants: tuple[str, ...]) -> dict[str, list[int]]:
    """``subs`` stored under each tenant (the same people, the same ids order); tenant -> ids."""
    ids: dict[str, list[int]] = {t: [] for t in tenants}
    for i, sub in enumerate(subs):
        for t in tenants:
            ids[t].append(_put(store, t, i, sub))
    with store._tx() as tx:  # type: ignore[attr-defined]  # marketing sent outside campaigns (subscriber_stats)
        for i, sub in enumerate(subs):
            if sub[4] is not None:
                for t in tenants:
                    tx.run("UPDATE subscriber_stats SET last_message_at = ? WHERE tenant = ? AND subscriber_id = ?",
                           (T0 - sub[4], t, ids[t][i]))  # fmt: skip
    return ids


def _freeze_both(store: Store, subs: list[Sub], definition: dict[str, Any], prior: list[int],
                 monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:  # fmt: skip
    """Freeze ``definition`` under each tenant (by its path); what each stored, or the error each raised."""
    ids = _people(store, subs, TENANTS)
    out = []
    for t in TENANTS:
        if prior:  # an earlier campaign (smart sending, first message), frozen the planned way in both
            with monkeypatch.context() as m:
                m.setattr(launch, "set_based", lambda _spec: False)
                early = store.put_campaign(t, "early", {"sender": "S", "template": "Earlier https://e.example/1",
                                                        "audience": {"subscribers": [ids[t][i] for i in prior
                                                                                     if i < len(subs)]}}, now=T0 - 7200)  # fmt: skip
                freeze(store, t, store.set_campaign_status(t, early.id, "launching", now=T0 - 7200), TL, T0 - 7200)
        with monkeypatch.context() as m:
            if t == "plan":
                m.setattr(launch, "set_based", lambda _spec: False)
            camp = store.put_campaign(t, "spring", {**definition, "audience": {"subscribers": ids[t]}}, now=T0)
            camp = store.set_campaign_status(t, camp.id, "launching", now=T0)
            try:
                assert freeze(store, t, camp, TL, T0) is True
            except InvalidInput as exc:  # the same error, naming the same recipient (by position)
                named = re.sub(r"subscriber (\d+)", lambda g: f"subscriber #{ids[t].index(int(g[1]))}", str(exc))
                out.append(("error", exc.code, exc.field, named))
                continue
            assert freeze(store, t, camp, TL, T0 + 60) is False  # frozen once
            out.append(_stored(store, t, camp.id))
    return out[0], out[1]


def _definition(template: str, schedule: dict[str, Any], smart: float, batch_size: int, rules: dict[str, Any],
                ttl: float | None) -> dict[str, Any]:  # fmt: skip
    d: dict[str, Any] = {"sender": "ACME", "template": template, "schedule": schedule, "smart_sending_hours": smart,
                         "batch_size": batch_size, "values": {"shop_name": "CommerceCo"}, "rules": rules}  # fmt: skip
    if ttl is not None:
        d["link_ttl_days"] = ttl
    return d


RULES = [{}, {"brand": "Acme", "signature": "always", "footer": "first"},
         {"brand": "Acme", "footers": {"zh": "拒收请回复R"}, "signatures": {"zh": "【{brand}】"}}]


@pytest.fixture
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path_factory.mktemp('setfreeze') / 'c.db'}")
    yield s
    s.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subs=subs_st, template=st.sampled_from(TEMPLATES), schedule=st.sampled_from(SCHEDULES),
       smart=st.sampled_from([0.0, 16.0, 1.0]), batch_size=st.integers(1, 5), rules=st.sampled_from(RULES),
       ttl=st.sampled_from([None, 30.0]), prior=st.lists(st.integers(0, 15), max_size=5))  # fmt: skip
def test_set_based_freeze_stores_what_the_planned_freeze_stores(tmp_path_factory: pytest.TempPathFactory,
                                                                monkeypatch: pytest.MonkeyPatch, subs: list[Sub],
                                                                template: str, schedule: dict[str, Any], smart: float,
                                                                batch_size: int, rules: dict[str, Any], ttl: float | None,
                                                                prior: list[int]) -> None:  # fmt: skip
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('setfreeze') / 'c.db'}")
    try:
        planned, set_based = _freeze_both(store, subs, _definition(template, schedule, smart, batch_size, rules, ttl),
                                          prior, monkeypatch)  # fmt: skip
    finally:
        store.close()
    assert set_based == planned


@pytest.mark.parametrize("template", [TEMPLATES[0], TEMPLATES[1].replace("{first_name}", "{first_name|you}"), TEMPLATES[2]])
def test_set_based_freeze_on_both_engines(store: Store, monkeypatch: pytest.MonkeyPatch, template: str) -> None:
    """A fixed mixed audience on each engine (PostgreSQL's SQL differs: row_number, bytea, GREATEST)."""
    subs: list[Sub] = [(NAMES[i % len(NAMES)], LANGUAGES[i % len(LANGUAGES)], ZONES[i % len(ZONES)],
                        "pending" if i % 7 == 3 else "confirmed", None if i % 3 else float(i * 3600)) for i in range(30)]  # fmt: skip
    definition = _definition(template, SCHEDULES[3], 16.0, 4, RULES[2], 30.0)
    planned, set_based = _freeze_both(store, subs, definition, [1, 2, 5, 8], monkeypatch)
    assert set_based == planned and planned[0] != "error"


def test_a_launch_that_qualifies_is_frozen_set_based(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench's campaign (one text, a first name, one link) takes the set-based path: no recipient
    is planned in Python (``_plan`` is never called)."""
    def planned(*_a: object, **_k: object) -> None:
        raise AssertionError("planned in Python")

    monkeypatch.setattr(launch, "_plan", planned)
    store.set_link_keys({"acme": TL.key})
    ids = [_put(store, "acme", i, ("Ana" if i % 2 else None, "en", "Europe/Paris", "confirmed", None)) for i in range(7)]
    camp = store.put_campaign("acme", "spring", {**_definition(TEMPLATES[0], {"kind": "now"}, 16.0, 3, {}, None),
                                                 "audience": {"subscribers": ids}}, now=T0)  # fmt: skip
    assert freeze(store, "acme", store.set_campaign_status("acme", camp.id, "launching", now=T0), TL, T0)
    lines = [line for b in store.batches("acme", camp.id) for line in store.batch_lines("acme", camp.id, b.batch)]
    assert len(lines) == 7 and all(re.search(r"https://sl\.ui/[0-9A-Za-z]{8} today", text) for _p, text, _z in lines)
    assert {text.split(",")[0] for _p, text, _z in lines} == {"Hi Ana", "Hi there"}
    # Every code resolves to its recipient and the URL (the range read of the redirect).
    for phone, text, _z in lines:
        code = text.split("https://sl.ui/")[1].split()[0]
        link = store.link(code)
        assert link is not None and link.target == "https://shop.example/sale?c=1" and link.phone == phone


def test_concurrent_set_based_launches_take_consecutive_link_ranges(store_url: str) -> None:
    """Two launches of one tenant frozen at once (two connections, started together): both succeed,
    their link ranges do not overlap and each recipient's code resolves to that recipient."""
    import threading

    stores = [open_store(store_url) for _ in range(2)]
    try:
        for s in stores:
            s.set_link_keys({"acme": TL.key})
        ids = [_put(stores[0], "acme", i, ("Ana", "en", "UTC", "confirmed", None)) for i in range(12)]
        camps = [stores[0].set_campaign_status("acme", stores[0].put_campaign(
            "acme", f"c{k}", {**_definition(TEMPLATES[0], {"kind": "now"}, 0.0, 5, {}, None),
                              "audience": {"subscribers": ids}}, now=T0).id, "launching", now=T0) for k in range(2)]  # fmt: skip
        go, errors = threading.Barrier(2), []

        def run(k: int) -> None:
            go.wait(timeout=10)
            try:
                freeze(stores[k], "acme", camps[k], TL, T0)
            except Exception as exc:  # noqa: BLE001  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        ranges = sorted((r.start, r.start + r.count) for c in camps if (r := stores[0].link_range("acme", c.id)))
        assert len(ranges) == 2 and ranges[0][1] <= ranges[1][0]
        for c in camps:
            for b in stores[0].batches("acme", c.id):
                for phone, text, _z in stores[0].batch_lines("acme", c.id, b.batch):
                    link = stores[0].link(text.split("https://sl.ui/")[1].split()[0])
                    assert link is not None and link.campaign_id == c.id and link.phone == phone
    finally:
        for s in stores:
            s.close()
