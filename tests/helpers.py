"""The one comparison helper of the suite, with its per-dtype tolerance table, and the small helpers
several test modules share (finite differences, a model's random batch and biases).

Every cross-validation in ``tests/`` goes through :func:`assert_close`, so that a failure always
names the quantity, the configuration that produced it and the error reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scratch_rnn.gradcheck import rel_error  # noqa: F401 (the one relative error, re-exported)

if TYPE_CHECKING:
    from scratch_rnn.models import ModelConfig, SequenceModel

# (rtol, atol) per dtype. float64 is the cross-validation dtype: the scratch model and torch
# compute the same sums in a possibly different order, which costs a few ulps per operation, so
# 1e-10 relative is tight yet reachable for the sizes the suite draws. float32 is for speed only.
TOLERANCES = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): dict(rtol=2e-4, atol=1e-5),
}
# Finite differences (central, eps ~1e-6 in float64) carry a truncation + rounding error of ~1e-8.
FD_TOLERANCE = dict(rtol=1e-6, atol=1e-8)


def assert_close(actual, expected, *, name: str, config=None, dtype=None, rtol=None, atol=None):
    """Assert ``actual`` matches ``expected`` elementwise: |a - e| <= atol + rtol * max|e|.

    The tolerance is scaled by the largest magnitude of the expected array (not elementwise), so a
    near-zero entry of a large gradient is held to the same absolute standard as its neighbours.
    Raises AssertionError naming ``name``, ``config``, the worst error and where it sits.
    """
    a = np.asarray(actual)
    e = np.asarray(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}; config={config}")
    dt = np.dtype(dtype) if dtype is not None else (a.dtype if a.dtype.kind == "f" else np.dtype(np.float64))
    tol = dict(TOLERANCES.get(dt, TOLERANCES[np.dtype(np.float64)]))
    if rtol is not None:
        tol["rtol"] = rtol
    if atol is not None:
        tol["atol"] = atol
    a64 = a.astype(np.float64)
    e64 = e.astype(np.float64)
    if not np.all(np.isfinite(a64) == np.isfinite(e64)):
        raise AssertionError(
            f"{name}: finiteness differs (actual has {np.sum(~np.isfinite(a64))} "
            f"non-finite, expected {np.sum(~np.isfinite(e64))}); config={config}"
        )
    if a.size == 0:
        return
    scale = float(np.max(np.abs(e64))) if e64.size else 0.0
    err = np.abs(a64 - e64)
    bound = tol["atol"] + tol["rtol"] * scale
    worst = int(np.argmax(err))
    if err.flat[worst] > bound:
        idx = np.unravel_index(worst, a.shape)
        raise AssertionError(
            f"{name} mismatch: max |diff| {err.flat[worst]:.3e} at {idx} (actual {a64[idx]!r}, expected "
            f"{e64[idx]!r}) > {bound:.3e} = atol {tol['atol']:g} + rtol {tol['rtol']:g} * max|expected| "
            f"{scale:.3e}; relative error {rel_error(a64, e64):.3e}; config={config}"
        )


def examples(fast: int, thorough: int) -> int:
    """max_examples for an expensive property: ``fast`` under the fast profile, ``thorough`` under
    the thorough one (read when the test module is collected, after the profile is loaded)."""
    from hypothesis import settings

    return thorough if settings.default.max_examples >= 100 else fast


def numerical_grad(f, arr: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``arr`` (perturbed in place)."""
    grad = np.zeros_like(arr, dtype=np.float64)
    for idx in np.ndindex(*arr.shape):
        orig = arr[idx]
        arr[idx] = orig + eps
        f_plus = f()
        arr[idx] = orig - eps
        f_minus = f()
        arr[idx] = orig
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def random_batch(rng, cfg: ModelConfig, B: int, T: int, variable: bool):
    """(x, y, lengths): tokens or dense input, targets for the task and loss, lengths or None.

    Padded steps hold random tokens/values and targets, so that a leak through padding shows.
    """
    x = (
        rng.integers(0, cfg.vocab_size, (B, T))
        if cfg.vocab_size is not None
        else rng.standard_normal((B, T, cfg.input_size))
    )
    lengths = rng.integers(1, T + 1, B) if variable else None
    shape = (B,) if cfg.task == "sequence" else (B, T)
    if cfg.loss == "cross_entropy":
        y = rng.integers(0, cfg.out_features, shape)
    else:
        y = rng.random(shape + (cfg.out_features,))
    return x, y, lengths


def randomize_biases(model: SequenceModel, rng) -> None:
    """torch's init is already random, but make sure no parameter is zero (padding row aside)."""
    state = model.state_dict()
    for k, v in state.items():
        if "bias" in k:
            state[k] = rng.uniform(-1, 1, v.shape)
    model.load_state_dict(state)


class WorstErrors:
    """assert_close that also records the worst error reached per (quantity, dtype), for a report.

    kind "rel" is max|diff| / max|expected|; where max|expected| is below 1e3 * atol (e.g. a
    saturated softmax whose gradient is pure rounding noise) the relative error means nothing and
    kind "abs" records max|diff| instead.
    """

    def __init__(self, label: str):
        self.label = label
        self.worst: dict[tuple[str, str, str], float] = {}

    def check(self, actual, expected, *, name, config, dtype):
        e = np.asarray(expected, dtype=np.float64)
        if e.size and np.isfinite(e).all():
            diff = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - e)))
            meaningful = np.max(np.abs(e)) > 1e3 * TOLERANCES[np.dtype(dtype)]["atol"]
            key = (name, np.dtype(dtype).name, "rel" if meaningful else "abs")
            self.worst[key] = max(self.worst.get(key, 0.0), rel_error(actual, e) if meaningful else diff)
        assert_close(actual, expected, name=name, config=config, dtype=dtype)

    def report(self) -> None:
        for (name, dt, kind), err in sorted(self.worst.items()):
            print(f"[{self.label}] worst {kind} error vs torch: {name:<44} {dt:<8} {err:.2e}")
