"""The consent ledger's rules: what a subscriber's consent is, and whether they are marketable.

The ledger is append-only: each entry is an action (``opt_in``, ``confirm``, ``opt_out``,
``re_opt_in``) with its source, the exact disclosure text shown (its version and SHA-256) and the
evidence (IP, user agent, page, form, keyword and MO id, checkout id). The state is a fold of the
entries in time order over this table; a missing (state, action) pair leaves the state unchanged
when folding and is refused (``consent_out_of_order``) when appending:

    state      opt_in   re_opt_in  confirm    opt_out
    none       pending  pending    -          revoked
    pending    pending  pending    confirmed  revoked
    confirmed  confirmed confirmed confirmed  revoked
    revoked    pending  pending    -          revoked

So marketing is sendable only after a *confirmed* opt-in (double opt-in: "Reply Y") that no later
opt-out revoked; after an opt-out, only a new opt-in *and* a new confirmation make the number
marketable again (TCPA / CTIA: a revocation stands until the consumer opts in again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import msgspec

Action = Literal["opt_in", "confirm", "opt_out", "re_opt_in"]
State = Literal["none", "pending", "confirmed", "revoked"]
Source = Literal["keyword", "form", "popup", "social", "checkout", "in_store", "import", "api", "reply",
                 "gateway"]  # fmt: skip

ACTIONS: tuple[Action, ...] = ("opt_in", "confirm", "opt_out", "re_opt_in")
SOURCES: tuple[Source, ...] = ("keyword", "form", "popup", "social", "checkout", "in_store", "import", "api",
                               "reply", "gateway")  # fmt: skip

TRANSITIONS: dict[tuple[State, Action], State] = {
    ("none", "opt_in"): "pending",
    ("none", "re_opt_in"): "pending",
    ("none", "opt_out"): "revoked",
    ("pending", "opt_in"): "pending",
    ("pending", "re_opt_in"): "pending",
    ("pending", "confirm"): "confirmed",
    ("pending", "opt_out"): "revoked",
    ("confirmed", "opt_in"): "confirmed",
    ("confirmed", "re_opt_in"): "confirmed",
    ("confirmed", "confirm"): "confirmed",
    ("confirmed", "opt_out"): "revoked",
    ("revoked", "opt_in"): "pending",
    ("revoked", "re_opt_in"): "pending",
    ("revoked", "opt_out"): "revoked",
}


class Evidence(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What proves the action: whichever of these the source has."""

    ip: str | None = None
    user_agent: str | None = None
    page_url: str | None = None
    form_id: str | None = None
    keyword: str | None = None
    mo_id: str | None = None  # the gateway's inbound message id (keyword, "Y", STOP)
    checkout_id: str | None = None
    import_file: str | None = None
    note: str | None = None


class ConsentEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the ledger, as stored."""

    id: int
    tenant: str
    subscriber_id: int
    phone: str
    action: Action
    source: Source
    disclosure_text: str | None = None
    disclosure_version: str | None = None
    disclosure_sha256: str | None = None
    evidence: Evidence = Evidence()
    at: float


def disclosure_sha256(text: str) -> str:
    """The SHA-256 (hex) of the disclosure text exactly as shown, UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def step(state: State, action: Action) -> State | None:
    """The state after ``action``, or None when the action is out of order in ``state``."""
    return TRANSITIONS.get((state, action))


def fold(entries: Iterable[tuple[float, int, Action]], now: float | None = None) -> tuple[State, float | None]:
    """The consent state after ``(at, seq, action)`` entries in time order (seq breaks ties), and when it
    was reached. Entries after ``now`` (if given) do not count yet; out-of-order actions change nothing."""
    state: State = "none"
    since: float | None = None
    for at, _seq, action in sorted(entries, key=lambda e: (e[0], e[1])):
        if now is not None and at > now:
            break
        nxt = TRANSITIONS.get((state, action))
        if nxt is not None and nxt != state:
            state, since = nxt, at
    return state, since


def marketable(state: State) -> bool:
    """Marketing may be sent only to a confirmed opt-in that no opt-out revoked."""
    return state == "confirmed"


def needs_disclosure(action: Action, source: Source) -> bool:
    """Opt-ins the subscriber gave on a page or at checkout must record the text they were shown."""
    return action in ("opt_in", "re_opt_in") and source in ("form", "popup", "checkout")
