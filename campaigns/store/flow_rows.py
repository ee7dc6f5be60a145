"""Rows of the flow runtime's tables (``campaigns/store/flow_sql.py``), as the API returns them."""

from __future__ import annotations

from typing import Literal

import msgspec


class FlowHead(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    id: str
    name: str
    latest: int  # the version new runs start on
    enabled: bool
    created_at: float
    updated_at: float


class FlowRunRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    id: int  # the short id of the Idempotency-Key ``flow-{id}-{visit}``
    run_key: str  # the engine's run id: flow id : subscriber id : trigger event id
    flow_id: str
    version: int
    subscriber_id: int
    object_id: str | None
    node: str | None  # where it waits; once ended, the node it ended at
    visit: int
    state: Literal["active", "ended"]
    ended: str | None  # completed | opted_out | exit:<kind>
    started_at: float
    updated_at: float
    due: float | None  # its timer


class FlowMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One send (or webhook call) of a run, recorded in the transaction that advanced the run."""

    tenant: str
    key: str  # the gateway Idempotency-Key: flow-{run id}-{visit}
    run_id: int
    flow_id: str
    version: int
    step: str  # the send node
    visit: int
    subscriber_id: int
    kind: Literal["sms", "mms", "webhook"]
    category: str  # marketing | transactional (webhook: "webhook")
    recipient: str  # the phone, or the webhook URL
    sender: str = ""  # the "from" of the send (kept: a retry must post the same bytes)
    body: str  # the final text, or the webhook's JSON
    media_url: str | None = None
    state: Literal["pending", "sent", "failed", "skipped"] = "pending"
    detail: str | None = None  # why skipped / failed
    message_id: str | None = None  # the gateway's id
    created_at: float
    sent_at: float | None = None


class NodeCount(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    node: str
    waiting: int = 0
    completed: int = 0
    exited: int = 0
    pending: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
