"""Stores, chosen by URL: ``memory://`` or ``sqlite:///relative/or//absolute/path.db``."""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.store.base import Change, Store

__all__ = ["Change", "Store", "open_store"]


def open_store(url: str) -> Store:
    if url == "memory://":
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///") or ":memory:")
    raise ConfigError(f"unknown store URL {url!r} (use memory:// or sqlite:///path.db)", key="store.url")
