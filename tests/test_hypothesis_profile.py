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
