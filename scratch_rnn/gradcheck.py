"""Finite-difference gradient checks: an oracle that shares no code with the backward pass.

The check is directional: for a random direction v over *all* inputs (parameters, x, h0) at once,
the central difference (L(θ + εv) - L(θ - εv)) / 2ε must equal ⟨∇L, v⟩, where
L = ⟨output, G_out⟩ + ⟨h_n, G_h⟩ with random cotangents G. One forward pair checks the whole of
BPTT along v; several directions make a wrong entry anywhere vanishingly unlikely to hide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rel_error(actual, expected) -> float:
    """max |a - e| / max(max |e|, tiny): the project's one scale-aware error, 0 for equal arrays.

    Every report and test of agreement uses it (the suite, ``reference.crosscheck``, the benchmark's
    accuracy table). Arrays of different shapes have error inf.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(e))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - e))) / scale


class NonDifferentiableError(RuntimeError):
    """Every direction drawn crossed a relu kink (e.g. a pre-activation exactly 0): no oracle here."""


@dataclass
class DirectionalCheck:
    """One direction's result: the finite difference, the analytic value, and their errors."""

    numeric: float
    analytic: float

    @property
    def abs_error(self) -> float:
        return abs(self.numeric - self.analytic)

    @property
    def rel_error(self) -> float:
        return self.abs_error / max(abs(self.numeric), abs(self.analytic), 1e-300)


def activation_pattern(model) -> tuple:
    """Where the model's last forward sat relative to its kinks (empty for a smooth model).

    Finite differences are only an oracle where the function is smooth along the segment: a relu
    pre-activation that changes sign between θ - εv and θ + εv puts a kink inside it. The model says
    where its kinks are (``kink_pattern()``: the Elman RNN, every step cell); a model without one
    (the LSTM, the GRU) is smooth.
    """
    kinks = getattr(model, "kink_pattern", None)
    return kinks() if kinks is not None else ()


def _as_states(hx) -> tuple:
    return tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)


def _rnn_loss(model, x, states, lengths, g_out, g_finals, dropout_masks):
    hx = states if len(states) > 1 else states[0]
    out, finals = model.forward(x, hx, lengths, dropout_masks=dropout_masks)
    loss = float(np.sum(out * g_out)) + sum(float(np.sum(f * g)) for f, g in zip(_as_states(finals), g_finals))
    return loss, activation_pattern(model)


def rnn_directional_checks(
    model, x, h0, lengths=None, *, n_directions=3, eps=1e-6, seed=0, dropout_masks=None, restrict_to=None
) -> list[DirectionalCheck]:
    """Central-difference checks of ``model``'s BPTT along random directions (use float64).

    ``model``: an RNN, GRU or LSTM; ``h0`` its initial state as its forward takes it (an array, or
    (h0, c0) for the LSTM). Perturbs every parameter, ``x`` (named "input") and the initial states
    ("h0", "c0") together, or only the names in ``restrict_to`` (e.g. ``["weight_hh_l0"]`` or
    ``["input"]``) to check one gradient alone. Parameters are restored afterwards and the model's
    ``grads`` are left as they were.
    """
    rng = np.random.default_rng(seed)
    params = model.parameters()
    saved = {k: v.copy() for k, v in params.items()}
    saved_grads = {k: v.copy() for k, v in model.grads.items()}
    x = np.asarray(x, dtype=np.float64)
    states = tuple(np.asarray(s, dtype=np.float64) for s in _as_states(h0))
    names = ("h0", "c0")[: len(states)]
    out, finals = model.forward(x, states if len(states) > 1 else states[0], lengths, dropout_masks=dropout_masks)
    base_pattern = activation_pattern(model)
    g_out = rng.standard_normal(out.shape)
    g_finals = tuple(rng.standard_normal(f.shape) for f in _as_states(finals))
    model.zero_grad()
    grad_x, grad_states = model.backward(g_out, g_finals if len(g_finals) > 1 else g_finals[0])
    grad_states = _as_states(grad_states)
    analytic_grads = {k: v.copy() for k, v in model.grads.items()}

    results: list[DirectionalCheck] = []
    try:
        tries = 0
        while len(results) < n_directions:
            tries += 1
            if tries > 20 * n_directions:
                raise NonDifferentiableError(
                    "rnn_directional_checks: every direction drawn crosses a relu kink (a pre-activation "
                    "at or within eps of 0); finite differences cannot check this point"
                )

            def draw(name, shape):
                v = rng.standard_normal(shape)
                return v if restrict_to is None or name in restrict_to else np.zeros(shape)

            vp = {k: draw(k, v.shape) for k, v in params.items()}
            vx = draw("input", x.shape)
            vs = tuple(draw(n, s.shape) for n, s in zip(names, states))
            analytic = (
                sum(float(np.sum(analytic_grads[k] * vp[k])) for k in params)
                + float(np.sum(grad_x * vx))
                + sum(float(np.sum(g * v)) for g, v in zip(grad_states, vs))
            )
            losses, smooth = [], True
            for sign in (1.0, -1.0):
                for k in params:
                    params[k][...] = saved[k] + sign * eps * vp[k]
                loss, pattern = _rnn_loss(
                    model,
                    x + sign * eps * vx,
                    tuple(s + sign * eps * v for s, v in zip(states, vs)),
                    lengths,
                    g_out,
                    g_finals,
                    dropout_masks,
                )
                losses.append(loss)
                smooth &= pattern == base_pattern
            if not smooth:  # a relu kink lies on the segment: this direction proves nothing
                continue
            results.append(DirectionalCheck((losses[0] - losses[1]) / (2 * eps), analytic))
    finally:
        for k in params:
            params[k][...] = saved[k]
        for k in model.grads:
            model.grads[k][...] = saved_grads[k]
    return results
