"""Fixtures for the connector conformance suite: both anyio backends, and dispatches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.core import segments
from gateway.core.model import Dispatch


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param


def _dispatch(ref: int, body: str = "hello", *, carrier: str = "sim", message_id: int | None = None) -> Dispatch:
    split = segments.split(body)
    return Dispatch(ref=ref, message_id=ref if message_id is None else message_id, job_id="job", tenant="t",
                    carrier=carrier, recipient="+4479110%05d" % ref, sender="Sluice", body=body,
                    encoding=split.encoding, segments=len(split.parts), category="transactional", priority=1)  # fmt: skip


@pytest.fixture
def make_dispatch() -> Callable[..., Any]:
    return _dispatch
