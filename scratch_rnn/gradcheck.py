"""Finite-difference gradient checks: an oracle that shares no code with the backward pass.

The check is directional: for a random direction v over *all* inputs (parameters, x, h0) at once,
the central difference (L(θ + εv) - L(θ - εv)) / 2ε must equal ⟨∇L, v⟩, where
L = ⟨output, G_out⟩ + ⟨h_n, G_h⟩ with random cotangents G. One forward pair checks the whole of
BPTT along v; several directions make a wrong entry anywhere vanishingly unlikely to hide.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def _rnn_loss(model, x, h0, lengths, g_out, g_hn, dropout_masks):
    out, h_n = model.forward(x, h0, lengths, dropout_masks=dropout_masks)
    return float(np.sum(out * g_out) + np.sum(h_n * g_hn))


def rnn_directional_checks(model, x, h0, lengths=None, *, n_directions=3, eps=1e-6, seed=0,
                           dropout_masks=None) -> list[DirectionalCheck]:
    """Central-difference checks of ``model``'s BPTT along random directions (use float64).

    Perturbs every parameter, ``x`` and ``h0`` together. Parameters are restored afterwards and
    the model's ``grads`` are left as they were.
    """
    rng = np.random.default_rng(seed)
    params = model.parameters()
    saved = {k: v.copy() for k, v in params.items()}
    saved_grads = {k: v.copy() for k, v in model.grads.items()}
    x = np.asarray(x, dtype=np.float64)
    h0 = np.asarray(h0, dtype=np.float64)
    out, h_n = model.forward(x, h0, lengths, dropout_masks=dropout_masks)
    g_out = rng.standard_normal(out.shape)
    g_hn = rng.standard_normal(h_n.shape)
    model.zero_grad()
    grad_x, grad_h0 = model.backward(g_out, g_hn)
    analytic_grads = {k: v.copy() for k, v in model.grads.items()}

    results = []
    try:
        for _ in range(n_directions):
            vp = {k: rng.standard_normal(v.shape) for k, v in params.items()}
            vx = rng.standard_normal(x.shape)
            vh = rng.standard_normal(h0.shape)
            analytic = (sum(float(np.sum(analytic_grads[k] * vp[k])) for k in params)
                        + float(np.sum(grad_x * vx)) + float(np.sum(grad_h0 * vh)))
            losses = []
            for sign in (1.0, -1.0):
                for k in params:
                    params[k][...] = saved[k] + sign * eps * vp[k]
                losses.append(_rnn_loss(model, x + sign * eps * vx, h0 + sign * eps * vh, lengths,
                                        g_out, g_hn, dropout_masks))
            results.append(DirectionalCheck((losses[0] - losses[1]) / (2 * eps), analytic))
    finally:
        for k in params:
            params[k][...] = saved[k]
        for k in model.grads:
            model.grads[k][...] = saved_grads[k]
    return results
