"""The serve tests run the gateway and the simulator as child processes, on asyncio+uvloop."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})
