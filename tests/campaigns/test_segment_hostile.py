"""Segment trees mutated at every path with every kind of hostile JSON value (null, booleans,
numbers out of range, empty and huge strings, arrays, objects, nested arrays): ``parse_segment``
either accepts the tree or raises ``SegmentError`` whose path starts at ``$`` — never a TypeError
(``{"event": []}`` raised "unhashable type: 'list'": a 500 from ``POST /v1/segments``). And through
the API: a 422 naming the path, on both engines."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from campaigns.core.segments import SegmentError, parse_segment
from tests.campaigns.test_campaigns_api import client, clock, h  # noqa: F401

TREE = {"all": [
    {"field": "orders_count", "op": "gt", "value": 2},
    {"any": [{"attribute": "plan", "op": "in", "value": ["a", "b"]}, {"tag": "vip"}, {"rfm": "champions"}]},
    {"not": {"event": "order", "within_days": 365, "where": {"payment_status": ["paid"]}, "measure": "sum", "op": "gt", "value": 10000}},
    {"event": "activity", "kind": "clicked", "within_days": 30},
    {"event": "item", "where": {"category": ["shoes"]}, "measure": "quantity", "op": "gte", "value": 2},
    {"field": "birthday", "op": "in_next_days", "value": 7},
    {"field": "last_click_at", "op": "within_days", "value": 30},
    {"event": "checkout", "state": "abandoned", "within_days": 1},
]}  # fmt: skip
HOSTILE: list[Any] = [None, True, False, -1, 0, 1.5, 2**53 + 1, 10**30, 1e308, -0.0, "", "x" * 300, "NaN", "\u0000",
                      [], {}, [None], [[]], {"zz": 1}, {"all": []}]  # fmt: skip


def _paths(obj: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*path, i))


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(obj)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def test_every_mutation_is_accepted_or_a_segment_error_naming_a_path() -> None:
    parse_segment(TREE)
    wrong = []
    for path in _paths(TREE):
        for value in HOSTILE:
            try:
                parse_segment(_set(TREE, path, value))
            except SegmentError as exc:
                if not (exc.field or "").startswith("$"):
                    wrong.append((path, value, exc.field))
            except Exception as exc:  # noqa: BLE001 - any other exception is the defect
                wrong.append((path, repr(value)[:20], repr(exc)))
    assert not wrong, wrong[:10]


@pytest.mark.parametrize("bad", [[], {}, [None], {"zz": 1}])
def test_an_unhashable_event_source_is_a_422_through_the_api(client: TestClient, bad: Any) -> None:
    for key in ("event", "measure", "op", "state"):
        node = {"event": "checkout", "within_days": 1, key: bad}
        r = client.post("/v1/segments", json={"name": "s", "definition": {"all": [node]}}, headers=h("acme"))
        assert r.status_code == 422 and r.json()["field"] == f"$.all[0].{key}", (key, r.status_code, r.text)
    assert client.get("/v1/segments", headers=h("acme")).json()["items"] == []


def test_a_nul_in_a_segment_is_named_by_the_segment_validator_or_the_body(client: TestClient) -> None:
    r = client.post("/v1/segments", json={"name": "s", "definition": {"field": "city", "op": "eq", "value": "a\u0000"}},
                    headers=h("acme"))  # fmt: skip
    assert r.status_code == 422 and (r.json()["code"], r.json()["field"]) == ("segment.bad_value", "$.value"), r.text
    r = client.post("/v1/segments", json={"name": "s\u0000", "definition": {"tag": "vip"}}, headers=h("acme"))
    assert r.status_code == 422 and r.json()["field"] == "name", r.text
    assert client.get("/v1/segments", headers=h("acme")).json()["items"] == []
