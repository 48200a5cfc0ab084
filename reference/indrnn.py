"""The torch twin of :class:`scratch_rnn.cells.indrnn.IndRNN`: its step in torch, differentiated by autograd.

torch has no IndRNN module, so the twin is the step written again from the paper's equation,
h_t = σ(W_ih x_t + b_ih + u ⊙ h_{t-1} + b_hh), and unrolled by :func:`reference.cells.run_step_twin`.
"""

from __future__ import annotations

import torch


def indrnn_step(model, x_t: torch.Tensor, states: tuple, p: dict) -> tuple:
    """One step for a (B, I) input and the (B, H) state; ``p`` the layer's and direction's tensors by kind."""
    a = torch.nn.functional.linear(x_t, p["weight_ih"], p.get("bias_ih")) + p["weight_hh"] * states[0]
    if "bias_hh" in p:
        a = a + p["bias_hh"]
    return (torch.relu(a) if model.nonlinearity == "relu" else torch.tanh(a),)
