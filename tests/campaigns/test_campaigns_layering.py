"""The campaign core never reads a clock (import-linter checks it imports no `time`; this checks the
calls an import rule cannot see, e.g. `datetime.now()`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
PURE = sorted((ROOT / "campaigns" / "core").glob("*.py"))
CLOCKS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"}


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_campaign_core_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in CLOCKS, f"{path.name}:{node.lineno} reads a clock"
        if isinstance(node, ast.ImportFrom) and node.module in {"time", "datetime"}:
            assert not {a.name for a in node.names} & CLOCKS, f"{path.name}:{node.lineno} imports a clock"
