"""Carrier profiles: pure request builders and answer parsers, one small module each.

A profile module exposes:

- ``NAME``, ``MAX_BATCH`` (messages per request), ``MEDIA`` (takes media URLs)
- ``build(dispatches, settings, token) -> list[Request]``
- ``parse(status, headers, body, n, now) -> Answer`` (``now``: Unix time, for HTTP-date Retry-After)
- ``parse_callback(headers, body) -> list[CallbackReceipt | CallbackInbound]``
- ``verify(url, headers, body, secret, now) -> bool`` and ``sign(url, body, secret, now) -> headers``

No I/O and no clock: adding a carrier API is one such module, unit-tested without a network.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["get"]


def get(name: str) -> ModuleType:
    """The profile module called ``name``."""
    if name == "generic":
        from carriers.http.profiles import generic

        return generic
    if name == "twilio":
        from carriers.http.profiles import twilio

        return twilio
    raise ValueError(f"unknown HTTP carrier profile {name!r}")
