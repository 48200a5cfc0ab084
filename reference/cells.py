"""The torch twin of any step-function cell (:class:`scratch_rnn.cells.generic.StepCell`): the cell's torch step
unrolled over layers, directions and time here, differentiated by autograd.

:class:`TorchStepRNN` is the twin as a ``torch.nn.Module`` with the scratch cell's parameter names, shapes and
options (what ``torch.nn.RNN`` is to ``scratch_rnn.RNN``); :func:`run_step_twin` runs it forward and backward
on given cotangents, as :func:`reference.rnn.run_torch` does for the built-in cells.

The unroll is written independently of the NumPy loop: it keeps the batch in the caller's order and masks
inactive steps (``torch.where``) instead of sorting rows by length, runs the reverse direction of each
sequence from its own last valid step, and applies given inter-layer dropout keep-masks. A twin step is
``step(cell, x_t, states, p) -> new_states``: x_t (B, I_layer), states a tuple of (B, ·) tensors (one per name
in the cell's STATES), p the layer's and direction's parameter tensors by kind, ``cell`` the scratch cell (its
options, e.g. ``cell.nonlinearity``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from scratch_rnn.cells import cell_spec

__all__ = ["TorchStepRNN", "run_step_twin"]


def _tensor(a, dtype, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=dtype, requires_grad=grad)


class TorchStepRNN(torch.nn.Module):
    """The twin of the scratch step cell ``cell`` (its configuration and a copy of its weights).

    ``forward(x, hx=None, lengths=None, dropout_masks=None) -> (output, h_n)`` for a one-state cell, else
    ``(output, (h_n, c_n, ...))``, in the cell's layout (``batch_first``, unbatched 2-D input); dropout only
    through the given time-major keep-masks (T, B, D·out), one per layer but the last, in training mode.
    """

    def __init__(self, cell, step=None, dtype=torch.float64):
        super().__init__()
        self.cell = cell
        self.step = step or cell_spec(type(cell)).twin_function()
        self.tdtype = dtype
        for name, value in cell.state_dict().items():
            self.register_parameter(name, torch.nn.Parameter(_tensor(value, dtype)))
        self.train(cell.training)

    def forward(self, x, hx=None, lengths=None, dropout_masks=None):
        cell, dtype = self.cell, self.tdtype
        n_states = len(cell.STATES)
        batched = x.dim() == 3
        x_tm = x if not batched else (x.transpose(0, 1) if cell.batch_first else x)
        if not batched:
            x_tm = x_tm.unsqueeze(1)
        T, B = x_tm.shape[0], x_tm.shape[1]
        D = 2 if cell.bidirectional else 1
        LD = cell.num_layers * D
        given = (hx,) if n_states == 1 else (tuple(hx) if hx is not None else (None,) * n_states)
        states0 = []
        for g, s in zip(given, cell.STATES):
            size = cell.output_size if s == "h" else cell.hidden_size
            if g is None:
                g = torch.zeros((LD, B, size), dtype=dtype)
            states0.append(g if batched else g.unsqueeze(1))
        lens = torch.full((B,), T) if lengths is None else torch.as_tensor(np.asarray(lengths).reshape(-1))
        scale = 0.0 if cell.dropout >= 1 else 1.0 / (1.0 - cell.dropout)
        params = dict(self.named_parameters())
        self.step_states = {}  # (layer·D + d, t) -> (h_t as carried, active rows): read for hidden_grads
        finals: list[list[Any]] = [[None] * LD for _ in range(n_states)]  # each slot filled below
        layer_in = x_tm
        for layer in range(cell.num_layers):
            outs = []
            for d in range(D):
                sfx = f"_l{layer}{'_reverse' if d else ''}"
                p = {
                    k[: -len(sfx)]: v
                    for k, v in params.items()
                    if k.endswith(sfx) and (d or not k.endswith("_reverse"))
                }
                states = tuple(s[layer * D + d] for s in states0)
                out_t: list[Any] = [None] * T  # each step filled below
                for t in range(T - 1, -1, -1) if d else range(T):
                    active = (t < lens).reshape(B, 1)
                    new = self.step(cell, layer_in[t], states, p)
                    states = tuple(torch.where(active, n, s) for n, s in zip(new, states))
                    out_t[t] = torch.where(active, states[0], torch.zeros_like(new[0]))
                    if states[0].requires_grad:  # dL/dh_t, total, for hidden_grads
                        states[0].retain_grad()
                        self.step_states[layer * D + d, t] = (states[0], active)
                outs.append(torch.stack(out_t))
                for i, s in enumerate(states):
                    finals[i][layer * D + d] = s
            out = torch.cat(outs, dim=-1)
            if layer < cell.num_layers - 1 and dropout_masks is not None and self.training:
                keep = torch.as_tensor(np.array(dropout_masks[layer], dtype=np.float64), dtype=dtype)
                out = out * keep.reshape(out.shape) * scale
            layer_in = out
        out, fin = layer_in, [torch.stack(f) for f in finals]
        if not batched:
            out, fin = out[:, 0], [f[:, 0] for f in fin]
        elif cell.batch_first:
            out = out.transpose(0, 1)
        return out, (fin[0] if n_states == 1 else tuple(fin))


def run_step_twin(
    model,
    x,
    hx=None,
    lengths=None,
    grad_output=None,
    grad_final=None,
    *,
    dropout_masks=None,
    step=None,
    dtype=torch.float64,
) -> dict:
    """Forward and backward of ``model``'s twin; NumPy results keyed like :func:`reference.rnn.run_torch`'s
    (``output``, ``h_n``, ``grad_x``, ``grad_h0``, ``grads``; ``c_n``/``grad_c0`` for a second state; ``finals`` and
    ``grad_states0`` hold all of them). ``step``: the twin's step (default: the registered one or the class's TWIN)."""
    twin = TorchStepRNN(model, step, dtype)
    n_states = len(model.STATES)
    xt = _tensor(x, dtype, grad=True)
    given = (hx,) if n_states == 1 else (hx if hx is not None else (None,) * n_states)
    batched = np.ndim(x) == 3
    B = (xt.shape[0] if model.batch_first else xt.shape[1]) if batched else None
    LD = model.num_layers * (2 if model.bidirectional else 1)
    states0 = []
    for g, s in zip(given, model.STATES):
        size = model.output_size if s == "h" else model.hidden_size
        states0.append(_tensor(np.zeros((LD, B, size) if batched else (LD, size)) if g is None else g, dtype, True))
    out, finals = twin(xt, states0[0] if n_states == 1 else tuple(states0), lengths, dropout_masks)
    finals = (finals,) if n_states == 1 else finals
    loss = (out * _tensor(grad_output, dtype)).sum() if grad_output is not None else out.sum() * 0
    g_fin = (grad_final,) if n_states == 1 else (grad_final if grad_final is not None else (None,) * n_states)
    for f, g in zip(finals, g_fin):
        if g is not None:
            loss = loss + (f * _tensor(g, dtype)).sum()
    loss.backward()

    def grad_of(t):
        return t.grad.numpy().copy() if t.grad is not None else np.zeros(tuple(t.shape))

    grad_states0 = [grad_of(s) for s in states0]
    LD = model.num_layers * (2 if model.bidirectional else 1)
    T = max((t for _, t in twin.step_states), default=-1) + 1
    hidden = np.zeros((LD, T) + tuple(twin.step_states[0, 0][0].shape)) if T else None
    for (ld, t), (h, active) in twin.step_states.items():
        if h.grad is not None:
            assert hidden is not None  # there are steps, so T > 0
            hidden[ld, t] = (h.grad * active).numpy()
    res = dict(
        output=out.detach().numpy().copy(),
        h_n=finals[0].detach().numpy().copy(),
        grad_x=grad_of(xt),
        grad_h0=grad_states0[0],
        grads={k: grad_of(v) for k, v in twin.named_parameters()},
        finals=[f.detach().numpy().copy() for f in finals],
        grad_states0=grad_states0,
        hidden_grads=hidden,
    )  # (L·D, T, B, out) time-major, zero at padded steps, as the scratch model's
    if n_states == 2:  # a cell state beside h, under the LSTM's names
        res.update(c_n=res["finals"][1], grad_c0=grad_states0[1])
    return res
