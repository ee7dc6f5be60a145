"""An activity is written to the indexes its reads need: ``activities_segment (tenant, kind, at,
subscriber_id)`` answers every read by kind and time, so ``activities_kind (tenant, kind, at)``, its
prefix, is not made, and a store made before loses it at open (both engines); a windowed activity
count still reads the index alone."""

from __future__ import annotations

from campaigns.core.events import ActivityEvent
from campaigns.core.segments import parse_segment
from campaigns.store import open_store
from campaigns.store.segment_sql import compile_segment

NOW = 1_800_000_000.0


def _indexes(store: object) -> set[str]:
    with store._tx() as tx:  # type: ignore[attr-defined]
        if tx.pg:
            return {r[0] for r in tx.rows("SELECT indexname FROM pg_indexes WHERE tablename = 'activities' "
                                          "AND schemaname = current_schema()")}  # fmt: skip
        return {r[0] for r in tx.rows("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'activities'")}


def test_activities_kind_is_dropped_and_windows_still_count(store_url: str) -> None:
    store = open_store(store_url)
    try:
        with store._tx() as tx:  # type: ignore[attr-defined]  # a store made before: the old index
            tx.run("CREATE INDEX IF NOT EXISTS activities_kind ON activities (tenant, kind, at)")
        assert "activities_kind" in _indexes(store)
    finally:
        store.close()
    store = open_store(store_url)
    try:
        assert "activities_kind" not in _indexes(store) and "activities_segment" in _indexes(store)
        for k in range(5):
            store.apply_event("acme", ActivityEvent(id=f"a{k}", at=NOW - k * 86400 * 10, phone=f"+3361234567{k}",
                                                    kind="clicked"), phone=f"+3361234567{k}", now=NOW)  # fmt: skip
        seg = parse_segment({"event": "activity", "kind": "clicked", "within_days": 25})
        where, params = compile_segment(seg, store.engine, "acme", NOW)  # type: ignore[arg-type]
        assert store.count_where("acme", where, params) == 3
    finally:
        store.close()
