"""Hypothesis profiles for the suite.

- ``fast`` (default): a quick pass for development.
- ``thorough``: several hundred examples per property; CI selects it with
  ``--hypothesis-profile=thorough`` (or ``HYPOTHESIS_PROFILE=thorough``).
"""

import os

import torch
from hypothesis import HealthCheck, settings

# The suite's tensors are tiny: torch's thread pool costs 10-60x more than it saves on 2 shared
# cores (and pytest-xdist already runs one worker per core).
torch.set_num_threads(1)

_common = dict(
    deadline=None,  # torch's first call and BLAS warm-up make per-example timing meaningless
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints the @reproduce_failure blob next to the drawn configuration
)
settings.register_profile("fast", max_examples=25, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
