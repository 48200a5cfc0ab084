"""A cell of your own, outside the project: the minimal gated unit (Zhou, Wu, Zhang & Zhou, 2016, "Minimal
Gated Unit for Recurrent Neural Networks"), written as docs/cells.md explains. The test suite copies this
file to a folder outside the repository and runs the whole battery on it.

    f_t  = σ(x_t W_ifᵀ + b_if + h_{t-1} W_hfᵀ + b_hf)                 forget gate     (B, H)
    n_t  = tanh(x_t W_inᵀ + b_in + (f_t ⊙ h_{t-1}) W_hnᵀ + b_hn)      candidate       (B, H)
    h_t  = (1 - f_t) ⊙ h_{t-1} + f_t ⊙ n_t

Parameters as torch lays out its gated cells, gates stacked in the order (f, n): weight_ih (2H, I),
weight_hh (2H, H), bias_ih (2H,), bias_hh (2H,).
"""

from __future__ import annotations

import numpy as np

from scratch_rnn.cells.generic import StepCell


def mgu_step(cell, x_t, states, p):
    """The torch twin of one step (torch is imported here only, so the NumPy cell never needs it)."""
    import torch

    h = states[0]
    H = cell.hidden_size
    gi = torch.nn.functional.linear(x_t, p["weight_ih"], p.get("bias_ih"))
    w_hf, w_hn = p["weight_hh"][:H], p["weight_hh"][H:]
    b_hf, b_hn = (p["bias_hh"][:H], p["bias_hh"][H:]) if "bias_hh" in p else (0.0, 0.0)
    f = torch.sigmoid(gi[:, :H] + h @ w_hf.T + b_hf)
    n = torch.tanh(gi[:, H:] + (f * h) @ w_hn.T + b_hn)
    return ((1 - f) * h + f * n,)


class MGU(StepCell):
    """The minimal gated unit: one gate, one state."""

    NAME = "MGU"
    TWIN = mgu_step

    def param_shapes(self, layer_input_size: int) -> dict:
        H = self.hidden_size
        return {
            "weight_ih": (2 * H, layer_input_size),
            "weight_hh": (2 * H, H),
            "bias_ih": (2 * H,),
            "bias_hh": (2 * H,),
        }

    def step_forward(self, x_t, states, p):
        """x_t (B, I), states (h_prev (B, H),) -> ((h (B, H),), cache)."""
        h_prev, H = states[0], self.hidden_size
        gi = x_t @ p["weight_ih"].T
        b_f = b_n = 0.0
        if self.bias:
            b = p["bias_ih"] + p["bias_hh"]
            b_f, b_n = b[:H], b[H:]
        f = 1.0 / (1.0 + np.exp(-(gi[:, :H] + h_prev @ p["weight_hh"][:H].T + b_f)))
        n = np.tanh(gi[:, H:] + (f * h_prev) @ p["weight_hh"][H:].T + b_n)
        h = (1 - f) * h_prev + f * n
        return (h,), (x_t, h_prev, f, n)

    def step_backward(self, d_states, cache, p):
        """d_states (dL/dh (B, H),), total -> (dx_t (B, I), (dL/dh_prev (B, H),), {kind: gradient})."""
        x_t, h_prev, f, n = cache
        dh, H = d_states[0], self.hidden_size
        w_hf, w_hn = p["weight_hh"][:H], p["weight_hh"][H:]
        dn = dh * f
        df = dh * (n - h_prev)
        dh_prev = dh * (1 - f)
        da_n = dn * (1 - n * n)
        d_fh = da_n @ w_hn  # dL/d(f ⊙ h_prev)
        dh_prev += d_fh * f
        df += d_fh * h_prev
        da_f = df * f * (1 - f)
        dh_prev += da_f @ w_hf
        da = np.concatenate([da_f, da_n], axis=1)  # (B, 2H), gates (f, n)
        dx = da @ p["weight_ih"]
        grads = {"weight_ih": da.T @ x_t, "weight_hh": np.concatenate([da_f.T @ h_prev, da_n.T @ (f * h_prev)], axis=0)}
        if self.bias:
            grads["bias_ih"] = grads["bias_hh"] = da.sum(axis=0)
        return dx, (dh_prev,), grads
