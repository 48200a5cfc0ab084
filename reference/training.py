"""The torch twin of ``scratch_rnn.train``: the same training loop written with torch.optim and autograd.

``torch_optimizer(name, params, **kwargs)`` builds the real ``torch.optim`` optimizer (the oracle
of ``scratch_rnn.optim``), and :func:`train_torch` runs a float64 ``TorchSequenceModel`` over the
same batches with the same hyperparameters, clipping (``torch.nn.utils.clip_grad_value_`` then
``clip_grad_norm_``) and truncated BPTT (``h_n.detach()`` between chunks of k steps), recording at
every step the loss, the pre-clip global L2 gradient norm and, optionally, every parameter.
"""
from __future__ import annotations

import numpy as np
import torch

from .models import TorchSequenceModel, draw_dropout_masks, to_tensor

__all__ = ["TORCH_OPTIMIZERS", "torch_optimizer", "train_torch", "total_norm"]

TORCH_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


def torch_optimizer(name: str, params, **kwargs) -> torch.optim.Optimizer:
    """torch.optim's optimizer ``name``, single-tensor (foreach=False) as torch uses on CPU."""
    kwargs = dict(kwargs)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return TORCH_OPTIMIZERS[name.lower()](params, foreach=False, **kwargs)


def total_norm(params, norm_type=2.0) -> float:
    """Global gradient norm as clip_grad_norm_ computes it, without clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads])
    return float(torch.linalg.vector_norm(norms, norm_type))


def _chunks(T, lengths, k):
    """Chunks [s, e) of k steps; the rows still running and their valid steps inside the chunk."""
    s = 0
    while s < T:
        e = min(s + k, T)
        rows = [b for b in range(len(lengths)) if lengths[b] > s]
        if not rows:
            break
        yield s, e, rows, [min(int(lengths[b]) - s, e - s) for b in rows]
        s = e


def train_torch(model_config, state_dict, batches, train_config, *, dropout_rng_state=None,
                record_params: bool = True, dtype=torch.float64) -> dict:
    """Train the torch twin from ``state_dict`` over ``batches`` ((x, y, lengths) tuples).

    ``train_config``: a ``scratch_rnn.train.TrainConfig`` (optimizer, optimizer_kwargs, clip_norm,
    clip_norm_type, clip_value, tbptt_k are used). ``dropout_rng_state``: the scratch model's
    ``rng.bit_generator.state`` at the start, so the same dropout masks are drawn.
    Returns dict(losses, grad_norms, clip_norms (what clip_grad_norm_ returned, or None), params:
    list of {name: ndarray} after each step).
    """
    model = TorchSequenceModel(model_config, dtype)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float64)).to(dtype)
                           for k, v in state_dict.items()})
    model.train()
    rng = np.random.default_rng()
    if dropout_rng_state is not None:
        rng.bit_generator.state = dropout_rng_state
    params = list(model.parameters())
    opt = torch_optimizer(train_config.optimizer, params, **train_config.optimizer_kwargs)
    out = dict(losses=[], grad_norms=[], clip_norms=[], params=[])
    D = 2 if model_config.bidirectional else 1

    def step(x, y, lengths, h0):
        opt.zero_grad()
        B, T = np.shape(x)[:2]
        masks = draw_dropout_masks(rng, model_config, T, B)
        o, h_n = model(to_tensor(x, dtype), lengths, h0, masks)
        loss = model.loss(o, y, lengths)
        loss.backward()
        out["grad_norms"].append(total_norm(params))
        if train_config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, train_config.clip_value)
        clip = None
        if train_config.clip_norm is not None:
            clip = float(torch.nn.utils.clip_grad_norm_(params, train_config.clip_norm,
                                                        train_config.clip_norm_type))
        out["clip_norms"].append(clip)
        opt.step()
        out["losses"].append(loss.item())
        if record_params:
            out["params"].append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
        return h_n.detach()

    for x, y, lengths in batches:
        x, y = np.asarray(x), np.asarray(y)
        if train_config.tbptt_k is None:
            step(x, y, lengths, None)
            continue
        B, T = x.shape[:2]
        lens = [T] * B if lengths is None else [int(v) for v in lengths]
        h = torch.zeros(model_config.num_layers * D, B, model_config.hidden_size, dtype=dtype)
        for s, e, rows, cl in _chunks(T, lens, train_config.tbptt_k):
            h_n = step(x[rows, s:e], y[rows, s:e], np.array(cl), h[:, rows])
            h = h.clone()
            h[:, rows] = h_n
    return out
