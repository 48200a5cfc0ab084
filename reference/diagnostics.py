"""Torch oracles for :mod:`scratch_rnn.diagnostics`: an RNN unrolled step by step in float64 autograd.

Each sequence of the batch is unrolled on its own, over its own length only (the independent-sequence
oracle of torch's ``_test_variable_sequence``), so variable lengths need no masking: steps past a
sequence's length simply do not exist and their gradients are zero. Every hidden state keeps its
``.grad`` (``retain_grad``), which is the total derivative dL/dh_t that ``rnn.hidden_grads`` must hold.
Nothing here calls ``torch.nn.RNN`` or the scratch code: only the weights are copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_ACT = {"tanh": torch.tanh, "relu": torch.relu}


def _params(model) -> dict:
    return {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in model.state_dict().items()}


def _name(kind, layer, d):
    return f"{kind}_l{layer}{'_reverse' if d else ''}"


def _time_major(model, a, batched):
    """(caller layout) -> time-major (T, B, F) float64 numpy."""
    a = np.asarray(a, dtype=np.float64)
    if not batched:
        return a[:, None]
    return a.transpose(1, 0, 2) if model.batch_first else a


def _unroll_sample(model, p, xb, h0b, masks_b=None):
    """One sequence, every layer and direction, one step at a time.

    xb: (T, I) tensor; h0b: (LD, H) tensor; masks_b: per layer below the top, a (T, D*H) keep-mask.
    Returns states[ld] (list of T tensors, each retaining grad), layer_inputs[layer] (list of T
    tensors), h_n (list of LD tensors) and outputs (list of T tensors, the top layer).
    """
    act = _ACT[model.nonlinearity]
    D, T = model.num_directions, xb.shape[0]
    scale = 0.0 if model.dropout >= 1 else 1.0 / (1.0 - model.dropout)
    layer_in = [xb[t] for t in range(T)]
    states, layer_inputs, h_n = {}, [], []
    for layer in range(model.num_layers):
        layer_inputs.append(layer_in)
        for d in range(D):
            ld = layer * D + d
            w_ih, w_hh = p[_name("weight_ih", layer, d)], p[_name("weight_hh", layer, d)]
            h = h0b[ld]
            seq: list[Any] = [None] * T  # each step filled below
            for t in range(T) if d == 0 else range(T - 1, -1, -1):
                a = w_ih @ layer_in[t] + w_hh @ h
                if model.bias:
                    a = a + p[_name("bias_ih", layer, d)] + p[_name("bias_hh", layer, d)]
                h = act(a)
                if h.requires_grad:
                    h.retain_grad()
                seq[t] = h
            states[ld] = seq
            h_n.append(h)
        out = [torch.cat([states[layer * D + d][t] for d in range(D)]) for t in range(T)]
        if masks_b is not None and layer < model.num_layers - 1:
            out = [out[t] * masks_b[layer][t] * scale for t in range(T)]
        layer_in = out
    return states, layer_inputs, h_n, layer_in


def _prepare(model, x, h0, lengths, dropout_masks):
    batched = np.ndim(x) == 3
    xt = _time_major(model, x, batched)  # (T, B, I)
    T, B = xt.shape[:2]
    LD, H = model.num_layers * model.num_directions, model.hidden_size
    if h0 is None:
        h0 = np.zeros((LD, B, H))  # already (LD, B, H), also for unbatched input (B = 1)
    else:
        h0 = np.asarray(h0, dtype=np.float64)
        if not batched:
            h0 = h0[:, None]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths).reshape(-1)
    use_masks = dropout_masks is not None and model.training and model.num_layers > 1
    masks = [np.asarray(m, dtype=np.float64) for m in dropout_masks] if use_masks else None
    return batched, xt, h0, lengths, masks


def unrolled_hidden_grads(
    model, x, h0=None, lengths=None, grad_output=None, grad_h_n=None, *, dropout_masks=None
) -> dict:
    """dL/dh_t for every layer, direction, step and sample, with L = Σ output·grad_output + Σ h_n·grad_h_n.

    Arguments in the caller's layout, as given to the scratch model (``dropout_masks`` time-major
    keep-masks, used when the model is in training mode). Returns a dict of NumPy float64 arrays:
    ``hidden_grads`` (num_layers * D, T, B, H), time-major, zero at padded steps (B = 1 unbatched),
    and ``output`` / ``h_n`` (time-major, batched) for sanity checks.
    """
    batched, xt, h0, lengths, masks = _prepare(model, x, h0, lengths, dropout_masks)
    T, B = xt.shape[:2]
    D, H = model.num_directions, model.hidden_size
    LD = model.num_layers * D
    go = None if grad_output is None else _time_major(model, grad_output, batched)
    ghn = None if grad_h_n is None else np.asarray(grad_h_n, dtype=np.float64)
    if ghn is not None and not batched:
        ghn = ghn[:, None]
    p = _params(model)
    hidden = np.zeros((LD, T, B, H))
    output = np.zeros((T, B, D * H))
    h_n = np.zeros((LD, B, H))
    for b in range(B):
        n = int(lengths[b])
        masks_b = None if masks is None else [torch.tensor(m[:n, b]) for m in masks]
        states, _, hn, out = _unroll_sample(model, p, torch.tensor(xt[:n, b]), torch.tensor(h0[:, b]), masks_b)
        loss = torch.zeros((), dtype=torch.float64)
        if go is not None:
            loss = loss + sum((out[t] * torch.tensor(go[t, b])).sum() for t in range(n))
        if ghn is not None:
            loss = loss + sum((hn[ld] * torch.tensor(ghn[ld, b])).sum() for ld in range(LD))
        if loss.requires_grad:
            loss.backward()
        for ld in range(LD):
            for t in range(n):
                g = states[ld][t].grad
                if g is not None:
                    hidden[ld, t, b] = g.numpy()
        output[:n, b] = torch.stack(out).detach().numpy()
        h_n[:, b] = torch.stack(hn).detach().numpy()
    return dict(hidden_grads=hidden, output=output, h_n=h_n)


def jacobian_product(
    model, x, h0=None, lengths=None, *, index: int = 0, sample: int = 0, distance: int = 1
) -> np.ndarray:
    """∂h_end/∂h_{end-distance} of layer/direction ``index`` for one sample, by
    ``torch.autograd.functional.jacobian`` of the map h_{end-distance} -> h_end (the layer's inputs
    held at their values). "end" is the sequence's own last valid step (forward) or step 0
    (reverse); distance = length reaches h0. Eval semantics (no dropout). Returns (H, H) float64."""
    _, xt, h0, lengths, _ = _prepare(model, x, h0, lengths, None)
    D = model.num_directions
    layer, d = divmod(index, D)
    n = int(lengths[sample])
    if not 0 <= distance <= n:
        raise ValueError(f"distance: expected 0..{n} (the sample's length), got {distance}")
    p = _params(model)
    with torch.no_grad():
        states, layer_inputs, _, _ = _unroll_sample(model, p, torch.tensor(xt[:n, sample]), torch.tensor(h0[:, sample]))
    inputs = [v.detach() for v in layer_inputs[layer]]
    seq = states[index]
    if d == 0:  # steps n-distance .. n-1, starting from the state before step n-distance
        steps = list(range(n - distance, n))
        start = h0[index, sample] if distance == n else seq[n - distance - 1].detach().numpy()
    else:  # reverse: steps distance-1 .. 0, starting from the state before step distance-1
        steps = list(range(distance - 1, -1, -1))
        start = h0[index, sample] if distance == n else seq[distance].detach().numpy()
    act = _ACT[model.nonlinearity]
    w_ih, w_hh = p[_name("weight_ih", layer, d)], p[_name("weight_hh", layer, d)]
    bias = (p[_name("bias_ih", layer, d)] + p[_name("bias_hh", layer, d)]) if model.bias else 0.0

    def run(h):
        for t in steps:
            h = act(w_ih @ inputs[t] + w_hh @ h + bias)
        return h

    return torch.autograd.functional.jacobian(run, torch.tensor(np.asarray(start, dtype=np.float64))).numpy()


def linear_product_singular_values(w_hh: np.ndarray, steps: int) -> np.ndarray:
    """Singular values of ∂h_T/∂h_0 for the linear RNN h_t = W h_{t-1} + u_t, by autograd's Jacobian
    of the unrolled map (independent of any closed form)."""
    w = torch.tensor(np.asarray(w_hh, dtype=np.float64))
    u = torch.randn(steps, w.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def run(h):
        for t in range(steps):
            h = w @ h + u[t]
        return h

    jac = torch.autograd.functional.jacobian(run, torch.zeros(w.shape[0], dtype=torch.float64))
    return torch.linalg.svdvals(jac).numpy()
