"""Torch oracle for the gated cells' ``hidden_grads`` / ``cell_grads``: LSTM and GRU unrolled step by step.

The gated counterpart of :func:`reference.diagnostics.unrolled_hidden_grads`: each sequence of the batch
is unrolled on its own, over its own length only, in float64 autograd, every layer and direction, the
step written out from torch's documented equations (nn.LSTM with ``proj_size``, nn.GRU); every h_t and
c_t keeps its ``.grad``, the total derivative dL/dh_t (dL/dc_t) the scratch model must hold. Nothing
here calls ``torch.nn.LSTM`` / ``GRU``, the packing utilities or the scratch code: only the weights are
copied, so the scratch model's sorting by length, its packed loops and its reverse indexing are all
checked against sequences that never see a padded step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .diagnostics import _name, _params, _time_major


def _lstm_step(p, layer, d, x, h, c):
    w = lambda kind: p[_name(kind, layer, d)]  # noqa: E731
    a = w("weight_ih") @ x + w("weight_hh") @ h
    if _name("bias_ih", layer, d) in p:
        a = a + w("bias_ih") + w("bias_hh")
    i, f, g, o = a.chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if _name("weight_hr", layer, d) in p:
        h = w("weight_hr") @ h
    return h, c


def _gru_step(p, layer, d, x, h):
    w = lambda kind: p[_name(kind, layer, d)]  # noqa: E731
    gi, gh = w("weight_ih") @ x, w("weight_hh") @ h
    if _name("bias_ih", layer, d) in p:
        gi, gh = gi + w("bias_ih"), gh + w("bias_hh")
    i_r, i_z, i_n = gi.chunk(3)
    h_r, h_z, h_n = gh.chunk(3)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def _keep(t):
    if t.requires_grad:
        t.retain_grad()
    return t


def unrolled_gated_grads(
    model, x, hx=None, lengths=None, grad_output=None, grad_final=None, *, dropout_masks=None
) -> dict:
    """dL/dh_t (and dL/dc_t for the LSTM) of every layer, direction, step and sample of an LSTM or GRU.

    L = Σ output·grad_output + Σ h_n·grad_h_n (+ Σ c_n·grad_c_n). Arguments in the caller's layout and the
    model's form (``hx`` / ``grad_final``: h0 / grad_h_n for the GRU, pairs for the LSTM, any entry None);
    ``dropout_masks`` time-major keep-masks, applied when the model is in training mode. Returns float64
    NumPy arrays, time-major and batched, zero at padded steps: ``hidden_grads`` (L·D, T, B, out),
    ``cell_grads`` (L·D, T, B, H, LSTM only), ``output`` (T, B, D·out), ``h_n`` (and ``c_n``) (L·D, B, ·).
    """
    lstm = model.NAME == "LSTM"
    if model.NAME not in ("LSTM", "GRU"):
        raise TypeError(f"model: expected an LSTM or a GRU, got {model.NAME}")
    batched = np.ndim(x) == 3
    xt = _time_major(model, x, batched)
    T, B = xt.shape[:2]
    D, H = model.num_directions, model.hidden_size
    out = getattr(model, "output_size", H)
    LD = model.num_layers * D
    sizes = (out, H) if lstm else (out,)

    def states_of(given):
        given = (given if lstm else (given,)) if given is not None else (None,) * len(sizes)
        res = []
        for s, n in zip(given, sizes):
            s = np.zeros((LD, B, n)) if s is None else np.asarray(s, dtype=np.float64)
            res.append(s if batched or s.ndim == 3 else s[:, None])
        return res

    h0 = states_of(hx)
    gfin: list[Any] | None = None if grad_final is None else states_of(grad_final)
    if (
        gfin is not None and lstm
    ):  # (gfin is None exactly when grad_final is) an entry None in the pair: no loss on that state
        gfin = [None if g is None else s for g, s in zip(grad_final, gfin)]
    go = None if grad_output is None else _time_major(model, grad_output, batched)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths).reshape(-1)
    use_masks = dropout_masks is not None and model.training and model.num_layers > 1
    masks = [np.asarray(m, dtype=np.float64) for m in dropout_masks] if use_masks else None
    scale = 0.0 if model.dropout >= 1 else 1.0 / (1.0 - model.dropout)
    p = _params(model)
    res = dict(hidden_grads=np.zeros((LD, T, B, out)), output=np.zeros((T, B, D * out)), h_n=np.zeros((LD, B, out)))
    if lstm:
        res.update(cell_grads=np.zeros((LD, T, B, H)), c_n=np.zeros((LD, B, H)))
    for b in range(B):
        n = int(lengths[b])
        layer_in = [torch.tensor(xt[t, b]) for t in range(n)]
        hs: dict[int, list[Any]] = {}  # per layer and direction, each step filled below
        cs: dict[int, list[Any]] = {}
        finals: list[tuple[Any, Any]] = []
        for layer in range(model.num_layers):
            for d in range(D):
                ld = layer * D + d
                h = torch.tensor(h0[0][ld, b])
                c = torch.tensor(h0[1][ld, b]) if lstm else None
                hs[ld], cs[ld] = [None] * n, [None] * n
                for t in range(n) if d == 0 else range(n - 1, -1, -1):
                    if lstm:
                        h, c = _lstm_step(p, layer, d, layer_in[t], h, c)
                        cs[ld][t] = _keep(c)
                    else:
                        h = _gru_step(p, layer, d, layer_in[t], h)
                    hs[ld][t] = _keep(h)
                finals.append((h, c))
            layer_out = [torch.cat([hs[layer * D + d][t] for d in range(D)]) for t in range(n)]
            if masks is not None and layer < model.num_layers - 1:
                layer_out = [layer_out[t] * torch.tensor(masks[layer][t, b]) * scale for t in range(n)]
            layer_in = layer_out
        loss = torch.zeros((), dtype=torch.float64)
        if go is not None:
            loss = loss + sum((layer_in[t] * torch.tensor(go[t, b])).sum() for t in range(n))
        if gfin is not None:
            for ld, (h, c) in enumerate(finals):
                if gfin[0] is not None:
                    loss = loss + (h * torch.tensor(gfin[0][ld, b])).sum()
                if lstm and gfin[1] is not None:
                    loss = loss + (c * torch.tensor(gfin[1][ld, b])).sum()
        if loss.requires_grad:
            loss.backward()
        for ld in range(LD):
            for t in range(n):
                for key, seq in (("hidden_grads", hs), ("cell_grads", cs)):
                    if key in res and seq[ld][t].grad is not None:
                        res[key][ld, t, b] = seq[ld][t].grad.numpy()
        res["output"][:n, b] = torch.stack(layer_in).detach().numpy()
        res["h_n"][:, b] = torch.stack([h for h, _ in finals]).detach().numpy()
        if lstm:
            res["c_n"][:, b] = torch.stack([c for _, c in finals]).detach().numpy()
    return res
