"""The store seam: what the gateway keeps durably, behind one small interface.

A 202 from the API means ``add_job`` returned: the messages are on disk. Everything else is a
batch (``record`` takes many state changes in one transaction) because the store is on the
hot path of every message. Implementations: ``MemoryStore`` (the fake for tests) and
``SqliteStore`` (the embedded default); both pass ``gateway.testing.store_conformance``.
Backends are chosen by URL (``memory://``, ``sqlite:///path/to.db``) with ``open_store``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import msgspec

from gateway.core.model import Job, Recipient

__all__ = [
    "Change",
    "JobCounts",
    "MessageRecord",
    "Page",
    "Store",
    "StoredJob",
    "Suppression",
]

#: Every state a message can be in. The final ones never change again.
STATES = (
    "accepted", "queued", "deferred", "submitted", "delivered", "undelivered", "expired",
    "rejected", "failed", "unknown", "capped", "suppressed", "canceled",
)  # fmt: skip
FINAL = frozenset(STATES[4:])


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One state change of one message, with when and why."""

    message_id: int
    state: str
    at: float
    reason: str = ""
    carrier: str | None = None
    carrier_ids: tuple[str, ...] = ()


class StoredJob(msgspec.Struct, frozen=True, kw_only=True):
    job: Job
    first_id: int
    size: int
    status: str  # active | paused | canceled
    created_at: float
    callback_url: str | None = None


class MessageRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    job_id: str
    tenant: str
    recipient: Recipient
    state: str
    carrier: str | None
    carrier_ids: tuple[str, ...]
    attempts: int
    history: list[Change]


class JobCounts(msgspec.Struct, frozen=True, kw_only=True):
    job: StoredJob
    counts: dict[str, int]


class Page(msgspec.Struct, frozen=True, kw_only=True):
    ids: list[tuple[int, str]]  # (message id, state)
    next_after: int | None


class Suppression(msgspec.Struct, frozen=True, kw_only=True):
    number: str
    at: float
    source: str = "api"


class Store(Protocol):
    def add_job(self, job: Job, first_id: int, recipients: Sequence[tuple[int, Recipient]], now: float,
                *, callback_url: str | None = None,
                idempotency: tuple[str, str, bytes] | None = None) -> None: ...  # fmt: skip
    def record(self, changes: Sequence[Change]) -> None: ...
    def set_job_status(self, tenant: str, job_id: str, status: str) -> bool: ...
    def job(self, tenant: str, job_id: str) -> JobCounts | None: ...
    def message(self, tenant: str, message_id: int) -> MessageRecord | None: ...
    def messages(self, tenant: str, job_id: str, *, state: str | None, after: int, limit: int) -> Page: ...
    def unfinished(self) -> Iterator[tuple[StoredJob, list[tuple[int, Recipient, str]]]]: ...
    def awaiting_receipts(self) -> list[tuple[int, str, tuple[str, ...]]]: ...
    def remembered(self, tenant: str, key: str, digest: str) -> bytes | None: ...
    def suppress(self, tenant: str, number: str, now: float, source: str = "api") -> None: ...
    def unsuppress(self, tenant: str, number: str) -> bool: ...
    def suppressions(self, tenant: str | None = None) -> list[tuple[str, Suppression]]: ...
    def close(self) -> None: ...
