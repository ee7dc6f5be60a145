"""What a benchmark ran on, recorded with every result."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def describe(event_loop: str = "asyncio+uvloop") -> dict[str, object]:
    """The machine, the interpreter, the event loop the measured code ran on (``"none"`` for
    the pure core on virtual time), and the Sluice version."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        version = metadata.version("sluice")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "event_loop": event_loop,
        "sluice": version,
    }
