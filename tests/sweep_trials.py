"""The trials the tests' sweeps run (tests/test_sweep_faults.py, test_gradient_experiments.py,
test_cli_exit_codes.py), in a module of their own: a sweep's worker process imports a trial's module to
unpickle it, and a worker should import these functions, not a test module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def sleepy_trial(spec: dict) -> dict:
    """Writes its worker's pid, then works (sleeps) far longer than the test waits."""
    Path(spec["dir"], f"worker-{spec['k']}.pid").write_text(str(os.getpid()))
    time.sleep(120)
    return dict(done=True)


def square_trial(spec: dict) -> dict:
    with open(spec["log"], "a") as f:
        f.write(f"{spec['k']}\n")
    return dict(square=spec["k"] ** 2)


def quick_or_slow_trial(spec: dict) -> dict:
    """Trials 0 and 1 finish at once; the others write their worker's pid and work for two minutes."""
    if spec["k"] >= 2:
        Path(spec["dir"], f"worker-{spec['k']}.pid").write_text(str(os.getpid()))
        time.sleep(120)
    return dict(square=spec["k"] ** 2)


def logged_trial(spec: dict) -> dict:
    """A trial that records each call and can be told to fail."""
    with open(spec["log"], "a") as f:
        f.write(f"{spec['k']}\n")
    if spec["k"] == spec.get("fail_at", -1) and Path(spec["log"] + ".fail").exists():
        raise RuntimeError(f"trial {spec['k']} interrupted")
    return dict(square=spec["k"] ** 2)


def killed_trial(spec, **_):
    """A worker that dies abruptly (as under the OOM killer)."""
    os._exit(9)
