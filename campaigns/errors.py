"""The campaign layer's errors, split by whose fault they are.

    CampaignError
    ├── CallerError          the request was wrong: fix the input (HTTP 4xx); ``code`` is stable
    │   ├── InvalidInput     a field is malformed; ``field`` names it (``items[2].price``)
    │   ├── NotFound         no such subscriber/segment for this tenant (404)
    │   └── Conflict         the request contradicts stored state (409), e.g. a consent step out of order
    ├── ConfigError          the ``[campaigns]`` configuration is wrong; ``key`` is its path
    ├── StorageError         the store failed; the request may be retried (HTTP 503)
    └── GatewayError         the gateway's API answered badly or not at all
        └── GatewayRefused   it answered 4xx (not 408/429): this request will never be taken

Expected outcomes (a duplicate event, an older event that changes nothing) are return values.
"""

from __future__ import annotations

import re

__all__ = ["CallerError", "CampaignError", "ConfigError", "Conflict", "GatewayError", "GatewayRefused", "InvalidInput",
           "NotFound", "StorageError", "no_nul", "nul_path", "schema_field"]  # fmt: skip

_AT = re.compile(r" - at `\$\.?(.*)`$", re.S)
_NAMED = re.compile(r"(?:missing required|unknown|NUL character \(U\+0000\) in) field `([^`]+)`")


def nul_path(value: object, path: str = "") -> str | None:
    """The path (``first_name``, ``attributes.k``, ``tags[1]``) of the first string in ``value`` (a
    Struct, dict, list or tuple, nested) that holds a NUL character, else None. PostgreSQL cannot
    store one in text and SQLite would keep it: both engines refuse it the same way, at decode."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and "\x00" in k:
                return sub
            if (hit := nul_path(v, sub)) is not None:
                return hit
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if (hit := nul_path(v, f"{path}[{i}]")) is not None:
                return hit
        return None
    fields = getattr(value, "__struct_fields__", None)
    if fields is not None:
        for name in fields:
            if (hit := nul_path(getattr(value, name), f"{path}.{name}" if path else name)) is not None:
                return hit
    return None


def no_nul(struct: object) -> None:
    """A Struct's ``__post_init__``: a NUL character in any of its text is a ValueError naming the
    field, which msgspec reports as a ValidationError at the Struct's path (HTTP 422 naming
    ``profile.first_name``)."""
    hit = nul_path(struct)
    if hit is not None:
        raise ValueError(f"NUL character (U+0000) in field `{hit}`")


def schema_field(message: str) -> tuple[str, str | None]:
    """msgspec's validation message -> (the message without its " - at `$...`" tail, the field path).

    A missing or unknown field is named in the message, not in the path (msgspec's path stops at the
    object that holds it): it is appended, so ``Object missing required field `phone` - at `$.profile```
    names ``profile.phone`` and a missing top-level ``order_id`` names ``order_id``."""
    m = _AT.search(message)
    text, path = (message[: m.start()], m.group(1) or None) if m else (message, None)
    if (named := _NAMED.search(text)) is not None:
        name = named.group(1)
        path = f"{path}.{name}" if path else name
    return text, path


class CampaignError(Exception):
    """The root of every error the campaign layer raises on purpose."""


class CallerError(CampaignError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.field = field


class InvalidInput(CallerError):
    status = 422
    code = "invalid_input"


class NotFound(CallerError):
    status = 404
    code = "not_found"


class Conflict(CallerError):
    status = 409
    code = "conflict"


class ConfigError(CampaignError):
    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{message} (at {key})" if key else message)
        self.key = key


class StorageError(CampaignError):
    status = 503
    code = "storage_unavailable"


class GatewayError(CampaignError):
    status = 502
    code = "gateway_error"


class GatewayRefused(GatewayError):
    """The gateway refused the request itself (4xx other than 408 and 429): retrying it is useless."""

    code = "gateway_refused"

    def __init__(self, message: str, *, http_status: int, gateway_code: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.gateway_code = gateway_code
