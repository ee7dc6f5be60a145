"""Hypothesis profiles for the whole suite.

``make test`` (and CI) runs the ``ci`` profile: each property test draws the same examples on every
run (``derandomize``: seeded from the test itself), so a green suite here is a green suite on a fresh
clone, and a failure is reproduced by running the test again. The search for new counterexamples is
its own bounded command, ``make test-hunt``: the property tests again with fresh random seeds
(profile ``hunt``), several rounds. Choose with ``SLUICE_HYPOTHESIS=ci|hunt``."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("hunt", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("SLUICE_HYPOTHESIS", "ci"))
