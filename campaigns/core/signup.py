"""Sign-up by SMS, decided purely: what an inbound message means for a subscriber's consent, and what
to answer. The shell records the ledger entry and sends the reply through the gateway.

Keyword opt-in with double opt-in (seed 002 "keywords"; CTIA): "JOIN" to the shop's number -> an
``opt_in`` (pending) and the confirmation request, whose text is the disclosure recorded with its
SHA-256; "Y" (or the gateway's own opt-in keyword YES/START) while pending -> ``confirm`` and the
welcome message (optionally MMS). STOP and its family are the gateway's opt-out keywords: they reach
us as ``kind == "opt_out"`` and become ``opt_out``. START after an opt-out -> ``re_opt_in`` and a new
confirmation request (a revocation stands until the subscriber confirms again).
"""

from __future__ import annotations

import unicodedata
from typing import Literal

import msgspec

from campaigns.core.consent import Action, State

InboundKind = Literal["opt_out", "opt_in", "help", "message"]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    action: Action | None = None  # the ledger entry to append, if any
    reply: Literal["confirm", "welcome"] | None = None  # which configured text to send back
    keyword: str | None = None


def normalise(text: str) -> str:
    """Folded as the gateway folds its keywords: compatibility forms (full-width ``ＪＯＩＮ``) and
    accents taken apart (NFKD, marks dropped), only letters and digits kept (spaces, punctuation,
    emoji: "Join 😀", "J O I N", "Y!" ), upper case: "join!" -> "JOIN"."""
    folded = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN").upper()


def decide_inbound(*, kind: InboundKind, text: str, state: State, keywords: tuple[str, ...] | list[str],
                   confirm_words: tuple[str, ...] | list[str]) -> Decision:  # fmt: skip
    word = normalise(text)
    if kind == "opt_out":
        return Decision(action="opt_out", keyword=word)
    if kind == "help":
        return Decision()
    if kind == "message" and word in {normalise(k) for k in keywords}:
        if state in ("none", "revoked"):
            return Decision(action="opt_in" if state == "none" else "re_opt_in", reply="confirm", keyword=word)
        if state == "pending":
            return Decision(reply="confirm", keyword=word)  # asked again: the request again, no new entry
        return Decision()
    confirming = kind == "opt_in" or word in {normalise(w) for w in confirm_words}
    if confirming and state == "pending":
        return Decision(action="confirm", reply="welcome", keyword=word)
    if kind == "opt_in" and state == "revoked":
        return Decision(action="re_opt_in", reply="confirm", keyword=word)
    return Decision()
