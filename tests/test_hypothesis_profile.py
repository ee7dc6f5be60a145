"""The suite's hypothesis profile (tests/conftest.py) is in force for every property test, also
those whose ``@settings`` name only ``max_examples``: no wall-clock judgement of an example."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@settings(max_examples=5)
@given(st.integers())
def test_a_property_with_its_own_settings_inherits_the_profile(n: int) -> None:
    assert isinstance(n, int)


def test_no_deadline_and_no_too_slow_check() -> None:
    for s in (settings.default, test_a_property_with_its_own_settings_inherits_the_profile._hypothesis_internal_use_settings):
        assert s.deadline is None
        assert HealthCheck.too_slow in s.suppress_health_check


def test_make_test_draws_the_same_examples_every_run() -> None:
    """``make test`` and CI run the ``ci`` profile (derandomized); ``make test-hunt`` the ``hunt`` one."""
    import os

    want = os.environ.get("SLUICE_HYPOTHESIS", "ci") == "ci"
    assert settings.default.derandomize is want
    assert test_a_property_with_its_own_settings_inherits_the_profile._hypothesis_internal_use_settings.derandomize is want
