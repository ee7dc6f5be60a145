"""Shop events as a real shop sends them, on both engines, through the API: orders in several currencies
(``total_spent``, the RFM scores, segments and revenue never add two: an order in another currency than
the shop's is a 422 ``foreign_currency`` naming the field, single or in a bulk line, and nothing of that
bulk is stored), the shop's currency pinned by config or fixed by the first order stored, partial and full
refunds, updates out of order, and an event id sent twice with another content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from campaigns.config import loads
from campaigns.service.app import create_app, tenant_keys
from campaigns.service.audience import Audience
from campaigns.store import open_store
from tests.campaigns.test_campaigns_api import CONFIG, KEYS, T0, Clock, h

EURO_KEY = "euro-campaigns-key-0123456789"
PINNED = CONFIG + f'[[campaigns.tenants]]\nname = "euro"\ncurrency = "EUR"\nkey_sha256 = "{hashlib.sha256(EURO_KEY.encode()).hexdigest()}"\n'


@pytest.fixture
def shop(store_url: str) -> Iterator[TestClient]:
    settings = loads(PINNED)
    assert settings is not None
    app = create_app(Audience(open_store(store_url), settings, Clock()), tenant_keys(settings, {"CK_ACME": KEYS["acme"]}))
    with TestClient(app) as c:
        yield c


def _h(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {EURO_KEY}"} if tenant == "euro" else h(tenant)


def order(eid: str, oid: str, total: int, currency: str = "USD", pay: str = "paid", at: float = T0 - 100,
          phone: str = "+14155550100") -> dict:  # fmt: skip
    return {"id": eid, "at": at, "type": "order", "order_id": oid, "phone": phone, "total": total, "currency": currency,
            "payment_status": pay}  # fmt: skip


def stats(c: TestClient, tenant: str) -> tuple[int, int]:
    [sub] = c.get("/v1/subscribers", headers=_h(tenant)).json()["items"]
    st = c.get(f"/v1/subscribers/{sub['id']}", headers=_h(tenant)).json()["stats"]
    return st["orders_count"], st["total_spent"]


def bulk(c: TestClient, tenant: str, events: list[dict]):
    return c.post("/v1/events/bulk", content="\n".join(json.dumps(e) for e in events).encode(), headers=_h(tenant))


def test_orders_in_another_currency_than_the_shops_are_refused_never_added(shop: TestClient) -> None:
    # No currency configured: the first order fixes it (acme: USD), each tenant its own (beta: JPY).
    assert shop.post("/v1/events", json=order("e1", "o1", 10_000), headers=_h("acme")).status_code == 202
    assert shop.post("/v1/events", json=order("b1", "o1", 500, "JPY"), headers=_h("beta")).status_code == 202
    for tenant, foreign in (("acme", "EUR"), ("acme", "JPY"), ("beta", "USD")):
        r = shop.post("/v1/events", json=order("x-" + foreign, "o2", 5_000, foreign), headers=_h(tenant))
        assert r.status_code == 422 and (r.json()["code"], r.json()["field"]) == ("foreign_currency", "currency"), r.text
    r = bulk(shop, "acme", [order("e2", "o2", 1_000), order("e3", "o3", 2_000, "GBP"), order("e4", "o4", 3_000)])
    assert r.status_code == 422 and (r.json()["code"], r.json()["field"]) == ("foreign_currency", "lines[1].currency")
    assert stats(shop, "acme") == (1, 10_000) and stats(shop, "beta") == (1, 500)  # nothing of the bulk stored
    r = bulk(shop, "acme", [order("e2", "o2", 1_000), order("e4", "o4", 3_000)])
    assert r.status_code == 202 and stats(shop, "acme") == (3, 14_000)


def test_a_first_bulk_in_two_currencies_and_a_pinned_currency(shop: TestClient) -> None:
    r = bulk(shop, "acme", [order("e1", "o1", 1_000, "CAD"), order("e2", "o2", 2_000, "USD")])
    assert r.status_code == 422 and r.json()["field"] == "lines[1].currency"
    assert shop.get("/v1/subscribers", headers=_h("acme")).json()["items"] == []
    # "euro" has currency = "EUR" in its config: its first order cannot fix another.
    r = shop.post("/v1/events", json=order("e1", "o1", 1_000, "USD"), headers=_h("euro"))
    assert r.status_code == 422 and r.json()["code"] == "foreign_currency" and "EUR" in r.json()["message"]
    assert shop.post("/v1/events", json=order("e2", "o1", 1_000, "EUR"), headers=_h("euro")).status_code == 202


def test_refunds_and_updates_out_of_order_and_an_id_sent_again(shop: TestClient) -> None:
    """A partial refund is the order again with its net total; a full refund its status; an older update
    arriving late is stale; an event id already applied is a duplicate whatever it holds."""
    steps = [  # (event, outcome, (orders_count, total_spent) after)
        (order("e1", "o1", 10_000), "applied", (1, 10_000)),
        (order("e2", "o2", 4_000, at=T0 - 90), "applied", (2, 14_000)),
        (order("e3", "o1", 7_000, at=T0 - 50), "applied", (2, 11_000)),  # partial refund of 30.00
        (order("e4", "o1", 9_999, at=T0 - 80), "stale", (2, 11_000)),  # older than e3
        (order("e3", "o1", 1, at=T0 - 40), "duplicate", (2, 11_000)),  # same id, other content
        (order("e5", "o1", 7_000, pay="refunded", at=T0 - 30), "applied", (1, 4_000)),
        (order("e6", "o1", 7_000, pay="paid", at=T0 - 60), "stale", (1, 4_000)),
    ]
    for event, outcome, after in steps:
        r = shop.post("/v1/events", json=event, headers=_h("acme"))
        assert r.status_code == 202 and r.json()["outcome"] == outcome, (event, r.text)
        assert stats(shop, "acme") == after, event


class _Interleaved:
    """A store that runs ``between`` once, after the checks of an upload read it (``known_phones``) and
    before that upload is stored: another process's upload landing in that gap."""

    def __init__(self, store, between) -> None:
        self._store, self._between = store, between

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def known_phones(self, tenant: str, phones):
        known = self._store.known_phones(tenant, phones)
        if self._between is not None:
            between, self._between = self._between, None
            between()
        return known


@pytest.mark.parametrize("path", ["bulk", "single"])
def test_two_first_uploads_in_two_currencies_racing_one_wins(store_url: str, path: str) -> None:
    """Two processes (two apps on one database), no currency configured, no order stored: each first
    upload's check finds nothing to compare with. The second upload is checked, then the first lands
    before the second is stored: the second is a 422 foreign_currency, and the shop holds one currency
    (on the base both were stored: total_spent added USD and EUR)."""
    settings = loads(PINNED)
    assert settings is not None
    keys = tenant_keys(settings, {"CK_ACME": KEYS["acme"]})
    first_store, second_store = open_store(store_url), open_store(store_url)
    with TestClient(create_app(Audience(first_store, settings, Clock()), keys)) as first:
        def first_lands() -> None:
            assert bulk(first, "acme", [order("u1", "o1", 1_000, "USD"), order("u2", "o2", 2_000, "USD")]).status_code == 202

        racing = _Interleaved(second_store, first_lands)
        with TestClient(create_app(Audience(racing, settings, Clock()), keys)) as second:  # type: ignore[arg-type]
            if path == "bulk":
                r = bulk(second, "acme", [order("e1", "o3", 5_000, "EUR", phone="+14155550101"),
                                          order("e2", "o4", 5_000, "EUR", phone="+14155550101")])  # fmt: skip
                want = "lines[0].currency"
            else:
                r = second.post("/v1/events", json=order("e1", "o3", 5_000, "EUR", phone="+14155550101"),
                                headers=_h("acme"))  # fmt: skip
                want = "currency"
            assert r.status_code == 422 and (r.json()["code"], r.json()["field"]) == ("foreign_currency", want), r.text
            assert "USD" in r.json()["message"]
            # Both processes now agree, and a restarted one too (the claim is stored, not cached).
            assert second.post("/v1/events", json=order("e3", "o5", 700, "USD", phone="+14155550101"),
                               headers=_h("acme")).status_code == 202  # fmt: skip
        subs = {s["phone"]: s["id"] for s in first.get("/v1/subscribers", headers=_h("acme")).json()["items"]}
        st = first.get(f"/v1/subscribers/{subs['+14155550100']}", headers=_h("acme")).json()["stats"]
        assert (st["orders_count"], st["total_spent"]) == (2, 3_000)
        st = first.get(f"/v1/subscribers/{subs['+14155550101']}", headers=_h("acme")).json()["stats"]
        assert (st["orders_count"], st["total_spent"]) == (1, 700)
    restarted = Audience(open_store(store_url), settings, Clock())
    assert restarted.shop_currency("acme") == "USD"
    restarted.store.close()
    first_store.close()
    second_store.close()


def test_a_shop_event_file_in_two_currencies_through_the_cli(tmp_path, sqlite_url: str) -> None:
    """``sluice campaigns events``: the file's orders are checked together (each line alone passed a first
    file in USD and EUR on the base) and the error names the line."""
    from click.testing import CliRunner

    from campaigns.cli import campaigns as cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(PINNED.replace("[campaigns]", f'[campaigns]\nstore_url = "{sqlite_url}"', 1))
    f = tmp_path / "e.ndjson"
    f.write_text(json.dumps(order("e1", "o1", 1_000, "USD")) + "\n\n" + json.dumps(order("e2", "o2", 2_000, "EUR")) + "\n")
    r = CliRunner().invoke(cli, ["events", "--config", str(cfg), "--tenant", "acme", str(f)],
                           env={"CK_ACME": KEYS["acme"]})  # fmt: skip
    assert r.exit_code == 1 and "lines[2].currency" in r.output, r.output
    f.write_text(json.dumps(order("e1", "o1", 1_000, "USD")) + "\n")
    r = CliRunner().invoke(cli, ["events", "--config", str(cfg), "--tenant", "acme", str(f)], env={"CK_ACME": KEYS["acme"]})
    assert r.exit_code == 0 and '"applied": 1' in r.output, r.output
