"""Webhook signatures: how Sluice signs a webhook body and how a receiver checks it.

Header (Stripe-style)::

    Sluice-Signature: t=1795532400,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd

``v1`` is the hex HMAC-SHA256, keyed with the tenant's webhook secret (UTF-8), of the ASCII
Unix time ``t``, a dot, and the raw request body: ``f"{t}.".encode() + body``. Signing the time
with the body lets a receiver reject a replayed request by its age (``tolerance``) without
keeping state; a forged or altered body fails the HMAC. A header may carry several ``v1=``
values (one per secret while a secret is being rotated): any match is enough.

This module uses only the standard library so receivers can copy it as it is
(docs/WEBHOOKS.md shows the same check in ten lines).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HEADER", "sign", "verify"]

HEADER = "Sluice-Signature"


def _mac(secret: str | bytes, t: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, b"%d." % t + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, t: int) -> str:
    """The ``Sluice-Signature`` header value for ``body`` sent at Unix time ``t``."""
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(secret: str | bytes, header: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """True if ``header`` signs exactly ``body`` with ``secret`` and its time is within
    ``tolerance`` seconds of ``now`` (either way: clocks drift). Never raises on a bad header."""
    t: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():  # "²".isdigit() too, and int() refuses it
            t = int(value)
        elif key == "v1" and value.isascii():  # compare_digest raises on non-ASCII text: never a match anyway
            macs.append(value)
    if t is None or not macs or abs(now - t) > tolerance:
        return False
    expected = _mac(secret, t, body)
    return any(hmac.compare_digest(expected, m) for m in macs)
