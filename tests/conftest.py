"""Hypothesis profiles for the whole suite, loaded before any test module is imported (so every
``@settings(...)`` inherits them).

Outcomes must not depend on the machine's load or on the draw:

- No wall-clock judgement of an example: ``make test`` runs on two xdist workers, on CI beside other
  jobs, and hypothesis's default 200 ms ``deadline`` and its ``too_slow`` health check would fail a
  correct test whose example was preempted. Time is bounded by ``max_examples`` and each test's own
  bounds instead.
- ``make test`` (and CI) runs the ``ci`` profile: each property test draws the same examples on every
  run (``derandomize``: seeded from the test itself), so a green suite here is green on a fresh clone
  and a failure is reproduced by running the test again.
- The search for new counterexamples is its own bounded command, ``make test-hunt``: the property
  tests with fresh random seeds (profile ``hunt``), several rounds; ``print_blob`` puts the line that
  replays a failure (``@reproduce_failure``) in the report. Choose with ``SLUICE_HYPOTHESIS=ci|hunt``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "print_blob": True, "database": None}
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("hunt", derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("SLUICE_HYPOTHESIS", "ci"))
