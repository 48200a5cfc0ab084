"""The torch twin of ``scratch_rnn.RNN``: same weights, same inputs, same cotangents, autograd.

Everything runs in float64 unless asked otherwise, and comes back as NumPy arrays keyed by the
names the scratch model uses (``output``, ``h_n``, ``grad_x``, ``grad_h0``, ``grads[name]``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def torch_twin(model, dtype=torch.float64) -> torch.nn.RNN:
    """A ``torch.nn.RNN`` with ``model``'s configuration and a copy of its weights."""
    twin = torch.nn.RNN(model.input_size, model.hidden_size, num_layers=model.num_layers,
                        nonlinearity=model.nonlinearity, bias=model.bias, batch_first=model.batch_first,
                        dropout=model.dropout, bidirectional=model.bidirectional, dtype=dtype)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            getattr(twin, name).copy_(torch.from_numpy(np.asarray(value, dtype=np.float64)))
    twin.train(model.training)
    return twin


def load_torch_state(model, torch_module) -> None:
    """The other direction: a (trained) torch module's weights into the scratch model."""
    model.load_state_dict({k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()})


def _run_module(module, x, h0, lengths, batch_first):
    """Forward one torch RNN module, with packing when lengths are given."""
    if lengths is None:
        return module(x, h0)
    T = x.shape[1] if batch_first else x.shape[0]
    packed = pack_padded_sequence(x, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
                                  batch_first=batch_first, enforce_sorted=False)
    out, h_n = module(packed, h0)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return out, h_n


def _layerwise(model, twin, x, h0, lengths, masks, batch_first):
    """torch.nn.RNN's stack unrolled one layer at a time, with the given dropout keep-masks
    (time-major (T, B, D*H)) applied between layers exactly as nn.RNN's inter-layer dropout."""
    D = 2 if model.bidirectional else 1
    scale = 0.0 if model.dropout >= 1 else 1.0 / (1.0 - model.dropout)
    layer_in, h_ns = x, []
    for layer in range(model.num_layers):
        single = torch.nn.RNN(layer_in.shape[-1], model.hidden_size, nonlinearity=model.nonlinearity,
                              bias=model.bias, batch_first=batch_first, bidirectional=model.bidirectional,
                              dtype=x.dtype)
        for name, _ in single.named_parameters():
            src = name.replace("_l0", f"_l{layer}")
            setattr(single, name, getattr(twin, src))  # share the twin's leaves: grads land on the twin
        out, h_n = _run_module(single, layer_in, h0[layer * D:(layer + 1) * D], lengths, batch_first)
        h_ns.append(h_n)
        if layer < model.num_layers - 1 and masks is not None:
            m = torch.as_tensor(np.asarray(masks[layer], dtype=np.float64), dtype=x.dtype)
            if batch_first:
                m = m.transpose(0, 1)
            out = out * m * scale
        layer_in = out
    return layer_in, torch.cat(h_ns, dim=0)


def run_torch(model, x, h0=None, lengths=None, grad_output=None, grad_h_n=None, *, dropout_masks=None,
              dtype=torch.float64) -> dict:
    """Forward and backward of ``model``'s torch twin; NumPy results keyed like the scratch model.

    x, h0, grad_output, grad_h_n are in the caller's layout, as given to the scratch model. With
    ``dropout_masks`` (time-major keep-masks, one per layer but the last) the stack is unrolled
    layer by layer so that the same masks are applied; otherwise nn.RNN runs whole (in eval mode
    when the scratch model is, so that torch draws no dropout of its own).
    """
    twin = torch_twin(model, dtype)
    batched = np.ndim(x) == 3
    xt = torch.tensor(np.asarray(x, dtype=np.float64), dtype=dtype, requires_grad=True)
    D = 2 if model.bidirectional else 1
    LD = model.num_layers * D
    if h0 is None:
        h0 = np.zeros((LD, xt.shape[0 if model.batch_first else 1], model.hidden_size) if batched
                      else (LD, model.hidden_size))
    h0t = torch.tensor(np.asarray(h0, dtype=np.float64), dtype=dtype, requires_grad=True)

    x_in, h_in = xt, h0t
    if not batched and (lengths is not None or dropout_masks is not None):
        # packing needs a batch dimension: run as a batch of one, in nn.RNN's own layout
        x_in = xt.unsqueeze(0 if model.batch_first else 1)
        h_in = h0t.unsqueeze(1)
        lengths = None if lengths is None else np.asarray(lengths).reshape(1)
    if dropout_masks is not None and model.training and model.num_layers > 1:
        out, h_n = _layerwise(model, twin, x_in, h_in, lengths, dropout_masks, model.batch_first)
    else:
        if model.training and model.dropout > 0:
            twin.eval()  # no masks given: compare without dropout
        out, h_n = _run_module(twin, x_in, h_in, lengths, model.batch_first)
    if x_in is not xt:
        out = out.squeeze(0 if model.batch_first else 1)
        h_n = h_n.squeeze(1)

    loss = 0
    if grad_output is not None:
        loss = loss + (out * torch.as_tensor(np.asarray(grad_output, dtype=np.float64), dtype=dtype)).sum()
    if grad_h_n is not None:
        loss = loss + (h_n * torch.as_tensor(np.asarray(grad_h_n, dtype=np.float64), dtype=dtype)).sum()
    params = dict(twin.named_parameters())
    if torch.is_tensor(loss):
        loss.backward()
    grads = {k: (p.grad.numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape)))
             for k, p in params.items()}
    return dict(
        output=out.detach().numpy().copy(),
        h_n=h_n.detach().numpy().copy(),
        grad_x=xt.grad.numpy().copy() if xt.grad is not None else np.zeros(tuple(xt.shape)),
        grad_h0=h0t.grad.numpy().copy() if h0t.grad is not None else np.zeros(tuple(h0t.shape)),
        grads=grads,
    )
