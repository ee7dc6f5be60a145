"""Moved to ``gateway.http_guard`` (the campaign layer's API server uses it too); kept for imports."""

from gateway.http_guard import connection_caps, guarded_httptools

__all__ = ["connection_caps", "guarded_httptools"]
