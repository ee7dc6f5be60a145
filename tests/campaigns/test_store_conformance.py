"""The campaign store conformance suite, on SQLite and on a real PostgreSQL."""

from collections.abc import Callable

import pytest

from campaigns.store import Store, open_store
from campaigns.store.conformance import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_conformance(store: Store, check: Callable[[Store], None]) -> None:
    check(store)


def test_schema_is_idempotent(store_url: str) -> None:
    open_store(store_url).close()
    open_store(store_url).close()
