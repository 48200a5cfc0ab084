"""Hypothesis profiles for the suite.

- ``fast`` (default): a quick pass for development.
- ``thorough``: several hundred examples per property; CI selects it with
  ``--hypothesis-profile=thorough`` (or ``HYPOTHESIS_PROFILE=thorough``).
"""

import os
import signal

import pytest
import torch
from hypothesis import HealthCheck, settings

# The suite's tensors are tiny: torch's thread pool costs 10-60x more than it saves on 2 shared
# cores (and pytest-xdist already runs one worker per core).
torch.set_num_threads(1)

# Several tests stop a child run with SIGINT (Ctrl-C) and expect its exit 130. A shell that starts the suite in the
# background (`bash .ci/run &`, nohup) leaves SIGINT ignored, every child inherits that, and a Python child then never
# installs its KeyboardInterrupt handler: those tests would wait out their timeouts. A handler here (not SIG_IGN)
# is reset to the default in each child at exec, so the children take SIGINT as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_common = dict(
    deadline=None,  # torch's first call and BLAS warm-up make per-example timing meaningless
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints the @reproduce_failure blob next to the drawn configuration
)
settings.register_profile("fast", max_examples=25, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(autouse=True)
def _sigint_left_as_found():
    """A test that leaves SIGINT's disposition changed (ignored, or a handler of its own) would make every later
    test's child runs deaf to Ctrl-C in this worker: it fails here, by name."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"SIGINT's handler was {before!r} before this test and {after!r} after it")
