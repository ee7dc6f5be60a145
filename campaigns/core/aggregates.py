"""Per-subscriber aggregates, computed from what the store holds (so the order events arrive in does
not matter: the same orders give the same figures).

Definitions (the segment language reads these; keep them in step with docs/CAMPAIGNS.md):
- ``orders_count``, ``total_spent``, ``avg_order_value`` (integer division), ``first_order_at``,
  ``last_order_at``: over the subscriber's orders that are not ``refunded``;
- ``last_order_payment_status``: the payment status of the most recent order (any status; latest
  ``created_at``, ties by order id);
- ``last_abandoned_checkout_at``: the latest ``abandoned_at`` of a checkout not completed (None once
  every abandoned checkout was recovered);
- RFM scores 1..5 on fixed, documented scales (``RfmScale``), recency measured at ``now``;
- ``engagement`` 1..5 ("traffic level"): from the days since the latest click, reply or order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from campaigns.core.model import Stats

DAY = 86_400.0


class RfmScale(msgspec.Struct, frozen=True, kw_only=True):
    """Upper bounds for scores 5, 4, 3, 2 (anything beyond scores 1), and lower bounds for F and M."""

    recency_days: tuple[float, float, float, float] = (30.0, 90.0, 180.0, 365.0)
    frequency: tuple[int, int, int, int] = (10, 5, 3, 2)  # orders at least this many: 5, 4, 3, 2
    monetary: tuple[int, int, int, int] = (100_000, 50_000, 20_000, 5_000)  # cents at least: 5, 4, 3, 2
    engagement_days: tuple[float, float, float, float] = (7.0, 30.0, 90.0, 180.0)


DEFAULT_SCALE = RfmScale()


def _score_at_most(value: float, bounds: Sequence[float]) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return 5 - i
    return 1


def _score_at_least(value: float, bounds: Sequence[float]) -> int:
    for i, bound in enumerate(bounds):
        if value >= bound:
            return 5 - i
    return 1


def order_stats(orders: Iterable[tuple[str, int, str, float]]) -> dict[str, object]:
    """``(order_id, total, payment_status, created_at)`` -> the order fields of ``Stats``."""
    orders = list(orders)
    latest = max(orders, key=lambda o: (o[3], o[0]), default=None)
    return add_orders(Stats(), orders, latest[2] if latest is not None else None)


def add_orders(stats: Stats, orders: Iterable[tuple[str, int, str, float]], latest_status: str | None) -> dict[str, object]:
    """The order fields of ``stats`` once ``orders`` (``(order_id, total, payment_status, created_at)``,
    none of them counted in ``stats`` yet) are added: what ``order_stats`` over all of them gives.
    ``latest_status`` is the status of the latest order of all (greatest ``(created_at, order_id)``)."""
    count, spent, first, last = stats.orders_count, stats.total_spent, stats.first_order_at, stats.last_order_at
    for _, total, status, created in orders:
        if status == "refunded":
            continue
        count += 1
        spent += total
        first = created if first is None else min(first, created)
        last = created if last is None else max(last, created)
    return {"orders_count": count, "total_spent": spent, "first_order_at": first, "last_order_at": last,
            "avg_order_value": spent // count if count else 0, "last_order_payment_status": latest_status}  # fmt: skip


def scores(stats: Stats, now: float, scale: RfmScale = DEFAULT_SCALE) -> Stats:
    """``stats`` with its RFM and engagement scores as of ``now`` (None when there is nothing to score)."""
    if stats.orders_count and stats.last_order_at is not None:
        r = _score_at_most(max(0.0, now - stats.last_order_at) / DAY, scale.recency_days)
        f = _score_at_least(stats.orders_count, scale.frequency)
        m = _score_at_least(stats.total_spent, scale.monetary)
    else:
        r = f = m = None
    touch = [t for t in (stats.last_click_at, stats.last_reply_at, stats.last_order_at) if t is not None]
    engagement = _score_at_most(max(0.0, now - max(touch)) / DAY, scale.engagement_days) if touch else None
    return msgspec.structs.replace(stats, rfm_r=r, rfm_f=f, rfm_m=m, engagement=engagement)


def latest(a: float | None, b: float | None) -> float | None:
    """The later of two optional instants (an older event never moves a 'last ...' back)."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
