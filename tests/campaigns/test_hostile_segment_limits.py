"""Segment trees at the language's limits (hunt12), on both engines, through the API: the widest
tree (MAX_NODES nodes) of the longest lists (MAX_LIST values each), the deepest nesting, windowed
event conditions at every node. Each is saved, counted and sampled (a 201 and 200s, never a 500:
the SQL stays within SQLite's and PostgreSQL's limits on variables and expression depth), or
refused naming the node."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from campaigns.core.segments import MAX_DEPTH, MAX_LIST, MAX_NODES
from tests.campaigns.test_campaigns_api import client, clock, h  # noqa: F401


def _widest_in_lists() -> dict:
    names = [f"name{i}" for i in range(MAX_LIST)]
    return {"any": [{"field": "first_name", "op": "in", "value": names} for _ in range(MAX_NODES - 1)]}


def _deepest() -> dict:
    tree: dict = {"field": "orders_count", "op": "gt", "value": 0}
    for i in range(MAX_DEPTH):
        tree = {"not": tree} if i % 2 else {"all": [tree, {"tag": f"t{i}"}]}
    return tree


def _widest_events() -> dict:
    conds = [{"event": "order", "within_days": 30 + i, "where": {"payment_status": ["paid"]}, "measure": "sum",
              "op": "gt", "value": i} for i in range(MAX_NODES // 2 - 1)]
    return {"any": [*conds, *({"event": "checkout", "state": "abandoned", "within_days": 1 + i} for i in range(MAX_NODES // 2 - 1))]}


TREES = {"widest in-lists": _widest_in_lists, "deepest": _deepest, "widest windowed events": _widest_events}


@pytest.mark.parametrize("name", sorted(TREES))
def test_a_segment_at_the_limits_is_counted_or_refused_never_a_500(client: TestClient, name: str) -> None:
    client.post("/v1/subscribers", json={"profile": {"phone": "+14155550100", "first_name": "name7"}}, headers=h("acme"))
    r = client.post("/v1/segments", json={"name": name, "definition": TREES[name]()}, headers=h("acme"))
    assert r.status_code == 201, r.text[:300]
    if r.status_code == 422:
        assert r.json()["code"].startswith("segment."), r.text[:300]
        return
    sid = r.json()["id"]
    for path in (f"/v1/segments/{sid}/count", f"/v1/segments/{sid}/members", f"/v1/segments/{sid}/sample"):
        got = client.get(path, headers=h("acme"))
        assert got.status_code == 200, (path, got.status_code, got.text[:300])
    r = client.post("/v1/segments/validate", json={"definition": TREES[name]()}, headers=h("acme"))
    assert r.status_code == 200, r.text[:300]
