"""Hypothesis profiles for the suite.

- ``fast`` (default): a quick pass for development.
- ``thorough``: several hundred examples per property; CI selects it with
  ``--hypothesis-profile=thorough`` (or ``HYPOTHESIS_PROFILE=thorough``).
"""
import os

from hypothesis import HealthCheck, settings

_common = dict(
    deadline=None,  # torch's first call and BLAS warm-up make per-example timing meaningless
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints the @reproduce_failure blob next to the drawn configuration
)
settings.register_profile("fast", max_examples=25, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
