"""The campaign store seam (``base.Store``) and its engines, chosen by URL (``open_store``)."""

from __future__ import annotations

from campaigns.errors import ConfigError
from campaigns.store.base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str) -> Store:
    """``sqlite:///path`` (``sqlite:///:memory:`` for a throwaway) or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        from campaigns.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from campaigns.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"unknown store URL {url!r}: use sqlite:///path or postgresql://...", key="store")
