"""Sluice's errors, split by whose fault they are.

    SluiceError
    ├── CallerError          the request was wrong: fix the input (HTTP 4xx)
    │   ├── InvalidInput     a field is malformed; ``field`` names it (and ``index`` in a job)
    │   ├── NotFound         no such job/message for this tenant
    │   └── Conflict         e.g. an idempotency key reused with another body
    ├── ConfigError          the configuration is wrong; ``key`` is its path (``carriers[0].rate``)
    │   └── ListenError      a server cannot listen where it says (``api.port`` taken)
    ├── StorageError         the store failed; the request may be retried (HTTP 503)
    └── CarrierError         (carriers.errors) the carrier or its link misbehaved

Expected outcomes of delivery (deferred for quiet hours, capped, suppressed, expired) are not
errors: the core returns them as values (``gateway.core.model.Outcome``).
"""

from __future__ import annotations

__all__ = [
    "CallerError",
    "ConfigError",
    "Conflict",
    "InvalidInput",
    "ListenError",
    "NotFound",
    "SluiceError",
    "StorageError",
    "startup_error",
]


class SluiceError(Exception):
    """The root of every error Sluice raises on purpose."""


class CallerError(SluiceError):
    """``status``: the HTTP status; ``code``: the stable machine-readable code of the error body
    (docs/API.md, "Errors"). An instance may carry a more precise ``code`` than its class."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidInput(CallerError):
    status = 422
    code = "invalid_field"

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message, code=code)
        self.field = field
        self.index = index


class NotFound(CallerError):
    status = 404
    code = "not_found"


class Conflict(CallerError):
    status = 409
    code = "conflict"


class ConfigError(SluiceError):
    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        at = f" (at {key})" if key else ""
        super().__init__(f"{where}{message}{at}")
        self.key = key
        self.path = path


class ListenError(ConfigError):
    """A server could not listen where the config says (the port is taken, the address is not
    this machine's): found at start-up, reported in one line like a config error."""


def startup_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError (ListenError included) that ended a start-up, found inside the exception
    groups its task groups wrapped it in; None if there is none (a bug: let its traceback show)."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := startup_error(inner)) is not None:
                return found
    return None


class StorageError(SluiceError):
    status = 503
