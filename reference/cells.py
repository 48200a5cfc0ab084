"""The torch twin of any step-function cell (:class:`scratch_rnn.cells.generic.StepCell`): the cell's torch step
unrolled over layers, directions and time here, differentiated by autograd.

The unroll is written independently of the NumPy loop: it keeps the batch in the caller's order and masks
inactive steps (``torch.where``) instead of sorting rows by length, runs the reverse direction of each
sequence from its own last valid step, and applies the given inter-layer dropout keep-masks. A twin step is
``step(model, x_t, states, p) -> new_states``: x_t (B, I_layer), states a tuple of (B, ·) tensors (one per name in
the cell's STATES), p the layer's and direction's parameter tensors by kind.
"""
from __future__ import annotations

import numpy as np
import torch

from scratch_rnn.cells import cell_spec


def _tensor(a, dtype, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=dtype, requires_grad=grad)


def run_step_twin(model, x, hx=None, lengths=None, grad_output=None, grad_final=None, *, dropout_masks=None,
                  step=None, dtype=torch.float64) -> dict:
    """Forward and backward of ``model``'s twin; NumPy results keyed like :func:`reference.rnn.run_torch`'s
    (``output``, ``h_n``, ``grad_x``, ``grad_h0``, ``grads``; for a cell with more states ``finals`` and
    ``grad_states0`` hold all of them). ``step``: the twin's step (default: the registered or the class's TWIN)."""
    step = step or cell_spec(type(model)).twin_function()
    n_states = len(model.STATES)
    batched = np.ndim(x) == 3
    xt = _tensor(x, dtype, grad=True)
    x_tm = xt if not batched else (xt.transpose(0, 1) if model.batch_first else xt)
    if not batched:
        x_tm = x_tm.unsqueeze(1)
    T, B = x_tm.shape[0], x_tm.shape[1]
    D = 2 if model.bidirectional else 1
    LD = model.num_layers * D
    sizes = [model.output_size if s == "h" else model.hidden_size for s in model.STATES]
    given = (hx,) if n_states == 1 else (hx if hx is not None else (None,) * n_states)
    states0 = []
    for g, size in zip(given, sizes):
        s = _tensor(np.zeros((LD, B, size)) if g is None else (g if batched else np.asarray(g)[:, None]), dtype, True)
        states0.append(s)
    params = {k: _tensor(v, dtype, True) for k, v in model.state_dict().items()}
    lens = torch.full((B,), T) if lengths is None else torch.as_tensor(np.asarray(lengths).reshape(-1))
    scale = 0.0 if model.dropout >= 1 else 1.0 / (1.0 - model.dropout)

    layer_in, finals = x_tm, [[None] * LD for _ in range(n_states)]
    for layer in range(model.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            p = {k[:-len(sfx)]: v for k, v in params.items() if k.endswith(sfx) and
                 (d or not k.endswith("_reverse"))}
            states = tuple(s[layer * D + d] for s in states0)
            out_t = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                active = (t < lens).reshape(B, 1)
                new = step(model, layer_in[t], states, p)
                states = tuple(torch.where(active, n, s) for n, s in zip(new, states))
                out_t[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
            outs.append(torch.stack(out_t))
            for i, s in enumerate(states):
                finals[i][layer * D + d] = s
        out = torch.cat(outs, dim=-1)
        if layer < model.num_layers - 1 and dropout_masks is not None and model.training:
            out = out * torch.as_tensor(np.array(dropout_masks[layer], dtype=np.float64), dtype=dtype) * scale
        layer_in = out
    finals = [torch.stack(f) for f in finals]
    out = layer_in
    if not batched:
        out, finals = out[:, 0], [f[:, 0] for f in finals]
    elif model.batch_first:
        out = out.transpose(0, 1)

    loss = (out * _tensor(grad_output, dtype)).sum() if grad_output is not None else out.sum() * 0
    g_fin = (grad_final,) if n_states == 1 else (grad_final if grad_final is not None else (None,) * n_states)
    for f, g in zip(finals, g_fin):
        if g is not None:
            loss = loss + (f * _tensor(g, dtype)).sum()
    loss.backward()

    def grad_of(t):
        return t.grad.numpy().copy() if t.grad is not None else np.zeros(tuple(t.shape))

    grad_states0 = [grad_of(s) if batched else grad_of(s)[:, 0] for s in states0]
    res = dict(output=out.detach().numpy().copy(), h_n=finals[0].detach().numpy().copy(), grad_x=grad_of(xt),
               grad_h0=grad_states0[0], grads={k: grad_of(v) for k, v in params.items()},
               finals=[f.detach().numpy().copy() for f in finals], grad_states0=grad_states0)
    if n_states == 2:  # a cell state beside h, under the LSTM's names
        res.update(c_n=res["finals"][1], grad_c0=grad_states0[1])
    return res
