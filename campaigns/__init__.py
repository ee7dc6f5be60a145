"""Sluice's campaign layer: subscribers, consent with proof, shop events, live segments.

A layer *above* the gateway, as ``carriers`` is below it: it reaches the gateway only through the
gateway's public HTTP API (``campaigns.service.gateway_client``), never its core, runtime or store
(import-linter contracts in pyproject.toml). ``campaigns.core`` is pure (``now`` passed in),
``campaigns.store`` is the storage seam (SQLite embedded default, PostgreSQL), ``campaigns.service``
the async shell."""
