"""One hypothesis profile for the whole suite, loaded before any test module is imported (so
every ``@settings(...)`` inherits it).

Outcomes must not depend on the machine's load: ``make test`` runs on two xdist workers, on CI
beside other jobs. Hypothesis's default 200 ms ``deadline`` and its ``too_slow`` health check
both judge wall-clock time, so a preempted example fails a correct test (as a
``DeadlineExceeded``, or a ``Flaky`` "unreliable timings" when the replay is fast). Time is
bounded by ``max_examples`` and by each test's own bounds instead. Seeds stay random (a fresh
one each run, as CI does) so the properties keep hunting; ``print_blob`` puts the line that
replays a failure (``@reproduce_failure``) in the report.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("sluice", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("sluice")
