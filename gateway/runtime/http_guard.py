"""Moved to ``gateway.http_guard`` (the campaign layer's API server uses it too); kept for imports."""

from gateway.http_guard import guarded_httptools

__all__ = ["guarded_httptools"]
