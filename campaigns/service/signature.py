"""Checking the gateway's webhook signatures (``Sluice-Signature: t=<unix>,v1=<hex HMAC-SHA256>``).

The gateway documents the check in docs/WEBHOOKS.md and ships it as ``gateway.webhook_signature``
(standard library only, meant to be used by receivers): the campaign layer is such a receiver, and
uses the gateway's published module rather than a copy (it is not the gateway's core, runtime or store)."""

from gateway.webhook_signature import HEADER, sign, verify

__all__ = ["HEADER", "sign", "verify"]
