"""The torch twins of ``scratch_rnn.RNN`` / ``LSTM`` / ``GRU``: same weights, same inputs, same cotangents, autograd.

Everything runs in float64 unless asked otherwise, and comes back as NumPy arrays keyed by the
names the scratch model uses (``output``, ``h_n``, ``grad_x``, ``grad_h0``, and for the LSTM ``c_n``
and ``grad_c0``; ``grads[name]``). States go in and out in the scratch model's form: ``h0`` for
RNN/GRU, ``(h0, c0)`` for the LSTM; likewise the final state's cotangent.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

TORCH_CLASSES = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


def _options(model) -> dict:
    """The torch constructor options of ``model``'s configuration (nonlinearity / proj_size where they exist)."""
    opts = dict(
        bias=model.bias, batch_first=model.batch_first, dropout=model.dropout, bidirectional=model.bidirectional
    )
    if model.NAME == "RNN":
        opts["nonlinearity"] = model.nonlinearity
    if getattr(model, "proj_size", 0):
        opts["proj_size"] = model.proj_size
    return opts


def torch_twin(model, dtype=torch.float64) -> torch.nn.Module:
    """A ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` with ``model``'s configuration and a copy of its weights."""
    twin = TORCH_CLASSES[model.NAME](
        model.input_size, model.hidden_size, num_layers=model.num_layers, dtype=dtype, **_options(model)
    )
    with torch.no_grad():
        for name, value in model.state_dict().items():
            getattr(twin, name).copy_(torch.from_numpy(np.asarray(value, dtype=np.float64)))
    twin.train(model.training)
    return twin


def load_torch_state(model, torch_module) -> None:
    """The other direction: a (trained) torch module's weights into the scratch model."""
    model.load_state_dict({k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()})


def _run_module(module, x, hx, lengths, batch_first):
    """Forward one torch recurrent module, with packing when lengths are given."""
    if lengths is None:
        return module(x, hx)
    T = x.shape[1] if batch_first else x.shape[0]
    packed = pack_padded_sequence(
        x, torch.as_tensor(np.asarray(lengths), dtype=torch.int64), batch_first=batch_first, enforce_sorted=False
    )
    out, hn = module(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return out, hn


def _as_tuple(states):
    return states if isinstance(states, tuple) else (states,)


def _from_tuple(model, states):
    return states if model.NAME == "LSTM" else states[0]


def _layerwise(model, twin, x, states, lengths, masks, batch_first):
    """The stack unrolled one layer at a time, with the given dropout keep-masks (time-major
    (T, B, D*out)) applied between layers exactly as torch's inter-layer dropout."""
    D = 2 if model.bidirectional else 1
    scale = 0.0 if model.dropout >= 1 else 1.0 / (1.0 - model.dropout)
    finals: list[list[torch.Tensor]] = [[] for _ in states]
    layer_in = x
    opts = {k: v for k, v in _options(model).items() if k != "dropout"}
    for layer in range(model.num_layers):
        single = TORCH_CLASSES[model.NAME](layer_in.shape[-1], model.hidden_size, dtype=x.dtype, **opts)
        for name, _ in single.named_parameters():
            src = name.replace("_l0", f"_l{layer}")
            setattr(single, name, getattr(twin, src))  # share the twin's leaves: grads land on the twin
        hx = tuple(s[layer * D : (layer + 1) * D] for s in states)
        out, hn = _run_module(single, layer_in, _from_tuple(model, hx), lengths, batch_first)
        for f, h in zip(finals, _as_tuple(hn)):
            f.append(h)
        if layer < model.num_layers - 1 and masks is not None:
            m = torch.as_tensor(
                np.array(masks[layer], dtype=np.float64), dtype=x.dtype
            )  # a copy: masks may be read-only
            if batch_first:
                m = m.transpose(0, 1)
            out = out * m * scale
        layer_in = out
    return layer_in, tuple(torch.cat(f, dim=0) for f in finals)


def run_torch(
    model,
    x,
    hx=None,
    lengths=None,
    grad_output=None,
    grad_final=None,
    *,
    dropout_masks=None,
    dtype=torch.float64,
    twin=None,
) -> dict:
    """Forward and backward of ``model``'s torch twin; NumPy results keyed like the scratch model.

    x, hx, grad_output, grad_final are in the caller's layout, as given to the scratch model (hx and
    grad_final: h0 / grad_h_n for RNN and GRU, (h0, c0) / (grad_h_n, grad_c_n) for the LSTM, any entry
    None). With ``dropout_masks`` (time-major keep-masks, one per layer but the last) the stack is
    unrolled layer by layer so that the same masks are applied; otherwise the module runs whole (in
    eval mode when the scratch model is, so that torch draws no dropout of its own).

    A cell torch has no module for (a :class:`~scratch_rnn.cells.generic.StepCell`) runs its twin step
    unrolled by :func:`reference.cells.run_step_twin` instead (``twin``: that step, default the cell's own).
    """
    if model.NAME not in TORCH_CLASSES:
        from reference.cells import run_step_twin

        return run_step_twin(
            model, x, hx, lengths, grad_output, grad_final, dropout_masks=dropout_masks, step=twin, dtype=dtype
        )
    twin = torch_twin(model, dtype)
    lstm = model.NAME == "LSTM"
    batched = np.ndim(x) == 3
    xt = torch.tensor(np.asarray(x, dtype=np.float64), dtype=dtype, requires_grad=True)
    D = 2 if model.bidirectional else 1
    LD = model.num_layers * D
    B = xt.shape[0 if model.batch_first else 1] if batched else None
    sizes = (getattr(model, "output_size", model.hidden_size), model.hidden_size)[: 2 if lstm else 1]
    given = _as_tuple(hx) if hx is not None else (None,) * len(sizes)
    leaves = []
    for s, size in zip(given, sizes):
        if s is None:
            s = np.zeros((LD, B, size) if batched else (LD, size))
        leaves.append(torch.tensor(np.asarray(s, dtype=np.float64), dtype=dtype, requires_grad=True))
    states = tuple(leaves)

    x_in, s_in = xt, states
    if not batched and (lengths is not None or dropout_masks is not None):
        # packing needs a batch dimension: run as a batch of one, in the module's own layout
        x_in = xt.unsqueeze(0 if model.batch_first else 1)
        s_in = tuple(s.unsqueeze(1) for s in states)
        lengths = None if lengths is None else np.asarray(lengths).reshape(1)
    if dropout_masks is not None and model.training and model.num_layers > 1:
        out, finals = _layerwise(model, twin, x_in, s_in, lengths, dropout_masks, model.batch_first)
    else:
        if model.training and model.dropout > 0:
            twin.eval()  # no masks given: compare without dropout
        out, finals = _run_module(twin, x_in, _from_tuple(model, s_in), lengths, model.batch_first)
        finals = _as_tuple(finals)
    if x_in is not xt:
        out = out.squeeze(0 if model.batch_first else 1)
        finals = tuple(f.squeeze(1) for f in finals)

    loss = 0
    if grad_output is not None:
        loss = loss + (out * torch.as_tensor(np.asarray(grad_output, dtype=np.float64), dtype=dtype)).sum()
    grads_final = _as_tuple(grad_final) if grad_final is not None else (None,) * len(finals)
    for f, g in zip(finals, grads_final):
        if g is not None:
            loss = loss + (f * torch.as_tensor(np.asarray(g, dtype=np.float64), dtype=dtype)).sum()
    params = dict(twin.named_parameters())
    if torch.is_tensor(loss):
        loss.backward()
    grads = {k: (p.grad.numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape))) for k, p in params.items()}

    def grad_of(t):
        return t.grad.numpy().copy() if t.grad is not None else np.zeros(tuple(t.shape))

    res = dict(
        output=out.detach().numpy().copy(),
        h_n=finals[0].detach().numpy().copy(),
        grad_x=grad_of(xt),
        grad_h0=grad_of(states[0]),
        grads=grads,
    )
    if lstm:
        res.update(c_n=finals[1].detach().numpy().copy(), grad_c0=grad_of(states[1]))
    return res
