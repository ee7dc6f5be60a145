"""The report's reads (issue 18), set-based, shared by both engines: a mixin of ``CampaignSql``.

A message is a campaign recipient (``campaign_recipients``) or a flow step's send (``flow_messages``);
docs/CAMPAIGNS-SENDING.md, "Message sources". ``report_facts`` returns what ``core.attribution.tally``
needs: the sends in scope counted by one GROUP BY (campaign, variant, step, 15-minute slice), and the
full histories (every campaign and flow step of the tenant) of the few subscribers whose orders or
opt-outs are to be attributed. The work is proportional to the messages in scope for the counts
(one pass in SQL) and to the orders and opt-outs for the rest (indexed reads per subscriber)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from campaigns.core import attribution as A
from campaigns.store.campaign_rows import SENT

#: A campaign recipient that was sent (the store's rule, ``campaign_sql.SENT``; the same for flow messages).
_SENT = SENT
_FLOW_SENT = "state NOT IN ('planned', 'rejected', 'canceled')"
_CHUNK = 500
#: A message's cost as message_costs holds it (params: tenant, message id): copied onto the message's
#: row whenever its gateway id or its price arrives, whichever comes last.
_COST_OF = "(SELECT mc.cost FROM message_costs mc WHERE mc.tenant = ? AND mc.message_id = ?)"


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """What a report covers: one campaign, or (``campaign`` None) the tenant's campaigns and flows."""

    campaign: int | None = None
    since: float = 0.0


class ReportFacts(msgspec.Struct, frozen=True, kw_only=True):
    groups: list[A.Group]
    history: list[A.Event]


class ReportSql:
    """Needs ``self._tx()`` and ``self.engine``."""

    _tx: Any
    engine: str

    def _slice(self, col: str) -> str:
        # floor(at / 900): SQLite's CAST truncates (times are positive), PostgreSQL's would round.
        return f"CAST(FLOOR({col} / 900) AS BIGINT)" if self.engine == "postgres" else f"CAST({col} / 900 AS INTEGER)"

    def report_facts(self, tenant: str, scope: Scope) -> ReportFacts:
        with self._tx() as tx:
            groups = self._groups(tx, tenant, scope)
            orders, opt_outs, wanted = self._outcomes(tx, tenant, scope)
            history: list[A.Event] = [*orders, *opt_outs]
            if wanted:
                history += self._history(tx, tenant, sorted(wanted))
        return ReportFacts(groups=groups, history=history)

    # ---- the sends in scope, counted -------------------------------------------------------------
    def _groups(self, tx: Any, tenant: str, scope: Scope) -> list[A.Group]:
        counts: dict[tuple, list[int]] = {}
        where, params = ("AND r.campaign_id = ?", (scope.campaign,)) if scope.campaign is not None else ("", ())
        sl = self._slice("r.send_at")
        # Unique clicks too, in the same pass: a recipient's row says whether one of its links got a
        # human click (``clicked``, set by the click's own write: ``campaign_sql.mark_clicked``), so the
        # count costs nothing per stored click (it was a probe of the recipient per click: the report
        # grew with the clicks, docs/BENCHMARKS.md, "The report after live clicks").
        for c, v, s, n, d, cost, k in tx.rows(
                f"SELECT r.campaign_id, r.variant, {sl}, COUNT(*), SUM(CASE WHEN r.state = 'delivered' THEN 1 ELSE 0 END), "
                f"COALESCE(SUM(r.cost), 0), SUM(r.clicked) FROM campaign_recipients r "
                f"WHERE r.tenant = ? {where} AND {_SENT} "
                f"GROUP BY r.campaign_id, r.variant, {sl}", (tenant, *params)):  # fmt: skip
            counts[(str(c), v, None, int(s))] = [int(n), int(d), int(cost), int(k)]
        if scope.campaign is None:
            fl = self._slice("f.sent_at")
            for fid, step, s, n, d, cost in tx.rows(
                    f"SELECT f.flow_id, f.step, {fl}, COUNT(*), SUM(CASE WHEN f.state = 'delivered' THEN 1 ELSE 0 END), "
                    f"COALESCE(SUM(f.cost), 0) FROM flow_messages f WHERE f.tenant = ? AND f.{_FLOW_SENT} "
                    f"GROUP BY f.flow_id, f.step, {fl}", (tenant,)):  # fmt: skip
                counts[(None, None, f"{fid}/{step}", int(s))] = [int(n), int(d), int(cost), 0]
            for fid, step, s, k in tx.rows(
                    f"SELECT f.flow_id, f.step, {fl}, COUNT(*) FROM (SELECT DISTINCT fl.flow_message AS mid FROM clicks c "
                    f"CROSS JOIN flow_links fl WHERE fl.code = c.code AND c.verdict = 'click' AND fl.tenant = ?) k "
                    f"CROSS JOIN flow_messages f WHERE f.tenant = ? AND f.id = k.mid AND f.{_FLOW_SENT} "
                    f"GROUP BY f.flow_id, f.step, {fl}", (tenant, tenant)):  # fmt: skip
                counts[(None, None, f"{fid}/{step}", int(s))][3] = int(k)
        return [A.Group(campaign=k[0], variant=k[1], step=k[2], slice=k[3], sent=a[0], delivered=a[1], cost=a[2],
                        clicked=a[3]) for k, a in counts.items()]  # fmt: skip

    # ---- the orders and opt-outs to attribute, and whose histories they need -----------------------
    def _outcomes(self, tx: Any, tenant: str, scope: Scope) -> tuple[list[A.Ordered], list[A.OptedOut], set[int]]:
        if scope.campaign is None:
            rows = tx.rows("SELECT order_id, subscriber_id, created_at, total, discount_code FROM orders WHERE tenant = ? "
                           "AND created_at >= ?", (tenant, scope.since))  # fmt: skip
            outs = tx.rows("SELECT subscriber_id, at FROM consent_ledger WHERE tenant = ? AND action = 'opt_out' AND at >= ?",
                           (tenant, scope.since))  # fmt: skip
        else:
            # Orders of the campaign's recipients, and orders carrying one of its discount codes.
            # A recipient is probed by primary key per order (EXISTS), not listed: the orders since the
            # launch are far fewer than the recipients (an IN list materialised all 1M of them: 5x slower).
            rows = tx.rows("SELECT o.order_id, o.subscriber_id, o.created_at, o.total, o.discount_code FROM orders o "
                           "WHERE o.tenant = ? AND o.created_at >= ? AND (EXISTS (SELECT 1 FROM campaign_recipients r "
                           "WHERE r.tenant = o.tenant AND r.campaign_id = ? AND r.subscriber_id = o.subscriber_id) OR "
                           "o.discount_code IN (SELECT code FROM discount_codes WHERE tenant = ? AND campaign_id = ?))",
                           (tenant, scope.since, scope.campaign, tenant, scope.campaign))  # fmt: skip
            outs = tx.rows("SELECT c.subscriber_id, c.at FROM consent_ledger c WHERE c.tenant = ? AND c.action = 'opt_out' "
                           "AND c.at >= ? AND EXISTS (SELECT 1 FROM campaign_recipients r WHERE r.tenant = c.tenant AND "
                           "r.campaign_id = ? AND r.subscriber_id = c.subscriber_id)",
                           (tenant, scope.since, scope.campaign))  # fmt: skip
        orders = [A.Ordered(order=str(o), subscriber=int(s), at=float(at), total=int(t), discount_code=d)
                  for o, s, at, t, d in rows]  # fmt: skip
        opt_outs = [A.OptedOut(subscriber=int(s), at=float(at)) for s, at in outs]
        wanted = {o.subscriber for o in orders if o.subscriber is not None} | {o.subscriber for o in opt_outs}
        codes = sorted({o.discount_code for o in orders if o.discount_code})
        for i in range(0, len(codes), _CHUNK):  # the holders of the orders' codes (rule 3)
            chunk = codes[i:i + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            wanted.update(int(r[0]) for r in tx.rows(f"SELECT subscriber_id FROM discount_codes WHERE tenant = ? AND code "
                                                     f"IN ({marks}) AND subscriber_id IS NOT NULL", (tenant, *chunk)))
            wanted.update(int(r[0]) for r in tx.rows(f"SELECT subscriber_id FROM flow_messages WHERE tenant = ? AND "
                                                     f"discount_code IN ({marks})", (tenant, *chunk)))
        return orders, opt_outs, wanted

    def _history(self, tx: Any, tenant: str, ids: Sequence[int]) -> list[A.Event]:
        """Every message (any campaign, any flow step) of ``ids``: sends, deliveries, human clicks. One
        query per kind for all of them (the ids bound as one array parameter, ``Tx.values``)."""
        marks, arr = tx.values("bigint"), tx.array(ids)
        out: list[A.Event] = []
        for c, s, v, at, state, state_at, code in tx.rows(
                f"SELECT r.campaign_id, r.subscriber_id, r.variant, r.send_at, r.state, r.state_at, d.code FROM "
                f"campaign_recipients r LEFT JOIN discount_codes d ON d.tenant = r.tenant AND d.subscriber_id = "
                f"r.subscriber_id AND d.campaign_id = r.campaign_id WHERE r.tenant = ? AND r.subscriber_id IN {marks} "
                f"AND {_SENT}", (tenant, arr)):  # fmt: skip
            m = f"{c}:{s}"
            out.append(A.Sent(message=m, subscriber=int(s), at=float(at), campaign=str(c), variant=v, discount_code=code))
            if state == "delivered" and state_at is not None:
                out.append(A.Delivered(message=m, at=float(state_at)))
        for c, s, at in tx.rows(
                f"SELECT l.campaign_id, l.subscriber_id, c.at FROM short_links l JOIN clicks c ON c.code = l.code WHERE "
                f"l.tenant = ? AND l.subscriber_id IN {marks} AND l.campaign_id <> 0 AND c.verdict = 'click'",
                (tenant, arr)):  # fmt: skip
            out.append(A.Clicked(message=f"{c}:{s}", at=float(at)))
        for i, fid, step, s, at, state, state_at, code in tx.rows(
                f"SELECT id, flow_id, step, subscriber_id, sent_at, state, state_at, discount_code FROM flow_messages "
                f"WHERE tenant = ? AND subscriber_id IN {marks} AND {_FLOW_SENT}", (tenant, arr)):  # fmt: skip
            m = f"flow:{i}"
            out.append(A.Sent(message=m, subscriber=int(s), at=float(at), step=f"{fid}/{step}", discount_code=code))
            if state == "delivered" and state_at is not None:
                out.append(A.Delivered(message=m, at=float(state_at)))
        for i, at in tx.rows(
                f"SELECT f.id, c.at FROM flow_messages f JOIN flow_links fl ON fl.tenant = f.tenant AND fl.flow_message = "
                f"f.id JOIN clicks c ON c.code = fl.code WHERE f.tenant = ? AND f.subscriber_id IN {marks} AND "
                f"c.verdict = 'click'", (tenant, arr)):  # fmt: skip
            out.append(A.Clicked(message=f"flow:{i}", at=float(at)))
        return out

    # ---- flow messages and costs (written by the flow runtime and the state webhooks) --------------
    def record_flow_message(self, tenant: str, *, id: str, flow_id: str, step: str, subscriber_id: int, sent_at: float,
                            message_id: str | None = None, discount_code: str | None = None,
                            link_codes: Sequence[str] = ()) -> bool:  # fmt: skip
        """A flow step's send as a message source (idempotent by ``id``: False when already known)."""
        with self._tx() as tx:
            n = tx.run("INSERT INTO flow_messages (tenant, id, flow_id, step, subscriber_id, sent_at, message_id, "
                       f"discount_code, cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {_COST_OF}) ON CONFLICT DO NOTHING",
                       (tenant, id, flow_id, step, subscriber_id, sent_at, message_id, discount_code, tenant,
                        message_id))  # fmt: skip
            for code in link_codes:
                tx.run("INSERT INTO flow_links (code, tenant, flow_message) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                       (code, tenant, id))  # fmt: skip
        return n > 0

    def flow_message_state(self, tenant: str, id: str, *, state: str, at: float, message_id: str | None = None) -> None:
        """Move a flow message's state forward (the same order as a campaign recipient's)."""
        from campaigns.store.campaign_sql import _RANK

        with self._tx() as tx:
            row = tx.one("SELECT state FROM flow_messages WHERE tenant = ? AND id = ?", (tenant, id))
            if row is not None and _RANK.get(state, 0) > _RANK.get(row[0], 0):
                tx.run("UPDATE flow_messages SET state = ?, state_at = ?, message_id = COALESCE(?, message_id), "
                       f"cost = COALESCE(cost, {_COST_OF}) WHERE tenant = ? AND id = ?",
                       (state, at, message_id, tenant, message_id, tenant, id))  # fmt: skip

    def record_cost(self, tenant: str, message_id: str, *, carrier: str | None, segments: int, cost: int | None,
                    recipient: tuple[int, int] | None = None) -> None:  # fmt: skip
        """What the gateway says a message cost (the first answer with a carrier and a price wins),
        also set on the message's own row (``recipient``: the campaign recipient's (campaign id,
        subscriber id); a flow message is found by its gateway id), where the report sums it."""
        with self._tx() as tx:
            tx.run("INSERT INTO message_costs (tenant, message_id, carrier, segments, cost) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (tenant, message_id) DO UPDATE SET carrier = excluded.carrier, segments = "
                   "excluded.segments, cost = excluded.cost WHERE message_costs.cost IS NULL",
                   (tenant, message_id, carrier, segments, cost))  # fmt: skip
            if recipient is not None:
                tx.run(f"UPDATE campaign_recipients SET cost = {_COST_OF} WHERE tenant = ? AND campaign_id = ? AND "
                       "subscriber_id = ? AND message_id = ?", (tenant, message_id, tenant, *recipient, message_id))  # fmt: skip
            tx.run(f"UPDATE flow_messages SET cost = {_COST_OF} WHERE tenant = ? AND message_id = ?",
                   (tenant, message_id, tenant, message_id))  # fmt: skip
