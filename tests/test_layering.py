"""The pure layers never read a clock. import-linter (run by `make test`) checks that they import
no event loop, socket or `time`; this checks the calls that an import rule cannot see."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PURE = sorted((ROOT / "gateway" / "core").glob("*.py")) + [
    p for p in (ROOT / "carriers" / "smpp" / "pdu.py", ROOT / "carriers" / "smpp" / "session.py") if p.exists()
]
CLOCKS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"}


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_read_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in CLOCKS, f"{path.name}:{node.lineno} reads a clock"
        if isinstance(node, ast.ImportFrom) and node.module in {"time", "datetime"}:
            names = {a.name for a in node.names}
            assert not names & CLOCKS, f"{path.name}:{node.lineno} imports a clock"
