"""``[webhooks]`` settings: how state changes reach each job's ``callback_url``.

A module of its own (``gateway.config`` re-exports it) so that the webhook delivery process
(gateway/runtime/webhook_process.py) can decode them without importing the whole config tree
and the carriers it names: that process starts when the first event is written, and every
import is time before the first webhook.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import msgspec

__all__ = ["WebhookSettings"]


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How state changes reach each job's ``callback_url`` (gateway/runtime/webhooks.py)."""

    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100  # events per POST at most
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16  # POSTs in flight (and connections)
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # a whole POST, connect to last byte
    backoff_initial: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    backoff_max: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 30
    max_age: Annotated[float, msgspec.Meta(gt=0)] = 86_400.0  # seconds after the change: then dead
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # sequence check when nothing wakes us
    # A round (read, POST, settle) begins at least this long after the one before, unless that
    # one left events behind: serve pokes the sender at every write (100-150 a second under
    # load), and each round costs the sender and the receiver a wake-up, two queries and a
    # cursor's bookkeeping whatever it carries. Events wait at most this long for more to join.
    linger: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.02
    # The cursor written at most this often while the sender is busy (and whenever a round finds
    # nothing to send, or one fails): each write takes the store's write lock, which serve's
    # writes then wait for. A kill -9 sends at most this long's delivered events again.
    ack_every: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    # "process": delivered by a process of their own that serve starts and restarts (SQLite
    # store); "task": by a task of serve's event loop (always so for the memory store).
    delivery: Literal["process", "task"] = "process"
    # Networks (CIDRs) that callback_url and inbound_url may reach although they are not public
    # (loopback, private, link-local...): for tests and private deployments. gateway/core/targets.py
    allow_private: list[str] = []

    def __post_init__(self) -> None:
        for cidr in self.allow_private:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"allow_private: {cidr!r} is not a network (e.g. 127.0.0.0/8, 10.1.0.0/16)") from None
