"""The redirect's click flush on PostgreSQL as ONE statement (``record_link_hits``).

A flush is the hits of the last few milliseconds, each with the link it resolved to (``HitIn``).
On PostgreSQL every statement is a network round trip and a turn of psycopg's wait loop, so the
flush is one ``WITH`` of data-modifying parts over the hits bound as arrays (``unnest``), all seeing
the same snapshot taken before it:

- ``short_links``: a range code's row, written by its first hit (``ON CONFLICT DO NOTHING``);
- ``clicks``: every hit; a human click is unique when it is the first of its code in the batch (by
  instant, then arrival) and no human click of the code was stored before (``record_clicks``' rule);
- ``campaign_recipients``: each human click's recipient marked ``clicked`` (``mark_clicked``'s rule:
  once; the report counts unique clicks from the recipients' rows);
- ``activities``: each human click of a link with a recipient, a ``clicked`` activity of the
  subscriber the link names (what ``apply_event`` wrote for the event the flush used to build);
- ``subscriber_stats``: ``last_click_at`` moved forward and the scores recomputed as of ``now``
  (``event_batch._scores``: the arithmetic of ``campaigns.core.aggregates``), or a new row;
- ``flow_inputs``: a flow link's first human click, the run's ``Click`` input (clicked / not
  clicked branches), when the tenant has flows (``flow_sql.enqueue_inputs``' rule);
- and it answers how many clicks were unique.

One statement is atomic on its own: the store runs it on its autocommit connection without
``BEGIN``/``COMMIT`` (``PostgresStore.record_link_hits``): one round trip a flush.

What each part writes is the same as the per-table statements of SQLite (``CampaignSql``), and as
the events path before (tests/campaigns/test_click_flush.py compares the tables)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from campaigns.store.campaign_rows import HitIn
from campaigns.store.event_batch import _scores

_json = msgspec.json.Encoder()
_SCORED = ("avg_order_value", "rfm_r", "rfm_f", "rfm_m", "engagement")
_NULL = "CAST(NULL AS DOUBLE PRECISION)"
#: A new aggregates row (the subscriber had none): nothing but this click.
_FRESH = {"last_click_at": "MAX(h.at)", "last_reply_at": _NULL, "last_order_at": _NULL, "orders_count": "0",
          "total_spent": "0"}  # fmt: skip
_COLUMN = re.compile(r"\b(last_click_at|last_reply_at|last_order_at|orders_count|total_spent)\b")


#: ``now`` as ``_scores`` writes it, replaced by a parameter: the statement's text is the same for
#: every flush (psycopg converts it once and prepares it; the server plans it once).
_NOW = 1_234_567_890.0625


def _score_exprs(column: dict[str, str], pg: bool = True) -> dict[str, str]:
    """``_scores``' expressions (score column -> SQL) with the stored columns it reads replaced and
    ``now`` a parameter."""
    text = _COLUMN.sub(lambda m: column.get(m.group(1), m.group(1)), _scores(_Dialect(pg), _NOW))
    text = text.replace(f"CAST({_NOW!r} AS DOUBLE PRECISION)", "%s::float8" if pg else "CAST(? AS DOUBLE PRECISION)")
    parts = re.split(r"(?:^|, )(" + "|".join(_SCORED) + r") = ", text)[1:]
    return dict(zip(parts[0::2], parts[1::2], strict=True))


class _Dialect:
    def __init__(self, pg: bool) -> None:
        self.pg = pg


_LATER = {"last_click_at": "COALESCE(MAX(x.last_click_at, excluded.last_click_at), x.last_click_at, excluded.last_click_at)",
          **{c: f"x.{c}" for c in ("last_reply_at", "last_order_at", "orders_count", "total_spent")}}  # fmt: skip


@functools.cache
def stats_sql() -> tuple[str, int, int]:
    """SQLite: the clickers' aggregates in one upsert over the rowset ``(tenant, subscriber, at)``
    bound as one JSON parameter: ``last_click_at`` moved forward, the scores as of ``now``; the
    statement and how many ``now`` parameters come before and after the rowset."""
    fresh = _score_exprs(_FRESH, pg=False)
    merged = _score_exprs(_LATER, pg=False)
    head = (f"INSERT INTO subscriber_stats AS x (tenant, subscriber_id, last_click_at, {', '.join(_SCORED)}) "
            f"SELECT h.tenant, h.sid, MAX(h.at), {', '.join(fresh[c] for c in _SCORED)} FROM (SELECT value ->> 0 AS "
            f"tenant, value ->> 1 AS sid, value ->> 2 AS at FROM json_each(?)) AS h WHERE true GROUP BY h.tenant, h.sid ")  # fmt: skip
    tail = (f"ON CONFLICT (subscriber_id) DO UPDATE SET last_click_at = {_LATER['last_click_at']}, "
            f"{', '.join(f'{c} = {merged[c]}' for c in _SCORED)}")  # fmt: skip
    return head + tail, head.count("?") - 1, tail.count("?")


def stats_params(rows: Sequence[tuple[str, int, float]], now: float) -> list[Any]:
    _sql, before, after = stats_sql()
    return [now] * before + [_json.encode(rows).decode()] + [now] * after


@functools.cache
def flush_sql() -> str:
    """The statement (its parameters: ``flush_params``)."""
    fresh = _score_exprs(_FRESH)
    merged = _score_exprs({**_LATER, "last_click_at": "GREATEST(x.last_click_at, excluded.last_click_at)"})
    upd = ", ".join(f"{c} = {merged[c]}" for c in _SCORED)
    return (
        "WITH h AS (SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
        "%s::bigint[], %s::text[], %s::text[], %s::float8[], %s::float8[]) WITH ORDINALITY AS h (code, at, ua, verdict, "
        "tenant, cid, sid, phone, target, created, expires, ord)), "
        "l AS (INSERT INTO short_links (code, tenant, campaign_id, subscriber_id, target, created_at, expires_at) "
        "SELECT DISTINCT ON (code) code, tenant, cid, sid, target, created, expires FROM h ORDER BY code, ord "
        "ON CONFLICT DO NOTHING), "
        "r AS (SELECT h.code, h.at, h.ord, h.ua, h.verdict, h.verdict = 'click' AND row_number() OVER (PARTITION BY "
        "h.code, h.verdict = 'click' ORDER BY h.at, h.ord) = 1 AND NOT EXISTS (SELECT 1 FROM clicks c WHERE c.code = "
        "h.code AND c.verdict = 'click') AS first FROM h), "
        "c AS (INSERT INTO clicks (code, at, user_agent, verdict, is_bot, is_unique) SELECT code, at, left(ua, 512), "
        "verdict, CASE WHEN verdict = 'click' THEN 0 ELSE 1 END, CASE WHEN first THEN 1 ELSE 0 END FROM r), "
        # the clicked recipients marked (``campaign_sql.mark_clicked``), in key order
        "m AS (UPDATE campaign_recipients x SET clicked = 1 FROM (SELECT DISTINCT tenant, cid, sid FROM h WHERE "
        "verdict = 'click' AND cid <> 0 ORDER BY tenant, cid, sid) k WHERE x.tenant = k.tenant AND x.campaign_id = "
        "k.cid AND x.subscriber_id = k.sid AND x.clicked = 0), "
        "a AS (INSERT INTO activities (tenant, subscriber_id, kind, at, properties) SELECT tenant, sid, 'clicked', at, "
        "'{\"campaign\":' || cid || ',\"code\":' || to_json(code)::text || '}' FROM h WHERE verdict = 'click' AND "
        "phone <> ''), "
        f"s AS (INSERT INTO subscriber_stats AS x (tenant, subscriber_id, last_click_at, {', '.join(_SCORED)}) "
        f"SELECT h.tenant, h.sid, MAX(h.at), {', '.join(fresh[c] for c in _SCORED)} FROM h WHERE h.verdict = 'click' "
        f"AND h.phone <> '' GROUP BY h.tenant, h.sid ON CONFLICT (subscriber_id) DO UPDATE SET last_click_at = "
        f"GREATEST(x.last_click_at, excluded.last_click_at), {upd}), "
        # a flow's link clicked (its first human click): the run hears it (``flow_sql.enqueue_inputs``'s
        # row: the ``Click`` input as ``flow_sql._event_encoder`` writes it), in click order
        "fi AS (INSERT INTO flow_inputs (tenant, subscriber_id, event) SELECT f.tenant, fr.subscriber_id, "
        "'{\"type\":\"click\",\"id\":' || to_json('click:' || r.code)::text || ',\"key\":' || to_json(f.send_key)::text "
        "|| '}' FROM r JOIN flow_run_links f ON f.code = r.code JOIN flow_runs fr ON fr.id = f.run_id WHERE r.first AND "
        "EXISTS (SELECT 1 FROM flow_heads WHERE tenant = f.tenant) ORDER BY r.at, r.ord) "
        "SELECT count(*) FROM r WHERE r.first"
    )  # fmt: skip


@functools.cache
def flush_raw_sql() -> str:
    """``flush_sql`` with the server's own ``$n`` placeholders, ``now`` one parameter (``$12``) where
    ``flush_sql`` repeats it: run on a raw cursor (``psycopg.RawCursor``), psycopg neither scans the
    12 kB text for placeholders per flush (it caches that only for statements up to 4 kB) nor dumps
    ``now`` 32 times. Parameters: ``flush_raw_params``."""
    parts = flush_sql().split("%s")
    return parts[0] + "".join(f"${min(i, 12)}{p}" for i, p in enumerate(parts[1:], start=1))


def flush_raw_params(hits: Sequence[HitIn], now: float) -> list[Any]:
    """The hits as eleven arrays, then ``now``."""
    return flush_params(hits, now)[:11] + [now]


def flush_params(hits: Sequence[HitIn], now: float) -> list[Any]:
    cols: list[Any] = [[] for _ in range(11)]
    for h in hits:
        for col, v in zip(cols, (h.code, h.at, h.user_agent, h.verdict, h.tenant, h.campaign_id, h.subscriber_id,
                                 h.phone, h.target, h.created_at, h.expires_at), strict=True):  # fmt: skip
            col.append(v)
    return cols + [now] * _now_params()


@functools.cache
def _now_params() -> int:
    return flush_sql().count("%s") - 11
