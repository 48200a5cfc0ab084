"""Torch twins of scratch_rnn.layers / scratch_rnn.losses, for cross-validation.

The twins run in float64 by default. Every ``run_*`` function evaluates the twin with autograd
under an explicit (random, in the tests) cotangent and returns NumPy arrays keyed by the same
names as the scratch layer, so a test compares dict to dict.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "linear_twin",
    "embedding_twin",
    "run_linear",
    "run_embedding",
    "run_loss",
    "load_torch_state",
    "LOSS_FUNCTIONS",
]

# name -> torch functional; the scratch functions of scratch_rnn.losses carry the same names.
LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mse_loss": F.mse_loss,
    "cross_entropy": F.cross_entropy,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
}


def _tensor(array, dtype=torch.float64, requires_grad: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.array(array, copy=True)).to(dtype)
    return t.requires_grad_(requires_grad)


def _numpy(t: torch.Tensor | None):
    return None if t is None else t.detach().cpu().numpy().copy()


def _copy_params(scratch_layer, module: torch.nn.Module, dtype) -> None:
    with torch.no_grad():
        for name, value in scratch_layer.state_dict().items():
            getattr(module, name).copy_(torch.from_numpy(np.asarray(value)).to(dtype))


def linear_twin(scratch_linear, dtype=torch.float64) -> torch.nn.Linear:
    """A torch.nn.Linear of the same sizes with the scratch layer's weight/bias copied in."""
    module = torch.nn.Linear(
        scratch_linear.in_features, scratch_linear.out_features, bias=scratch_linear.has_bias, dtype=dtype
    )
    _copy_params(scratch_linear, module, dtype)
    return module


def embedding_twin(scratch_embedding, dtype=torch.float64) -> torch.nn.Embedding:
    """A torch.nn.Embedding of the same sizes and padding_idx with the scratch weight copied in."""
    module = torch.nn.Embedding(
        scratch_embedding.num_embeddings,
        scratch_embedding.embedding_dim,
        padding_idx=scratch_embedding.padding_idx,
        dtype=dtype,
    )
    _copy_params(scratch_embedding, module, dtype)
    return module


def _run_module(module: torch.nn.Module, inp: torch.Tensor, grad_y) -> dict:
    out = module(inp)
    out.backward(_tensor(grad_y, dtype=out.dtype))
    grads = {name: _numpy(p.grad) for name, p in module.named_parameters()}
    return dict(output=_numpy(out), grad_input=_numpy(inp.grad) if inp.requires_grad else None, grads=grads)


def run_linear(scratch_linear, x, grad_y, dtype=torch.float64) -> dict:
    """Twin forward on x (*, in), backward with cotangent grad_y (*, out).

    Returns dict(output=(*, out), grad_input=(*, in), grads={"weight": (out, in), "bias": (out,)}).
    """
    module = linear_twin(scratch_linear, dtype)
    return _run_module(module, _tensor(x, dtype, requires_grad=True), grad_y)


def run_embedding(scratch_embedding, indices, grad_y, dtype=torch.float64) -> dict:
    """Twin forward on integer indices (*), backward with cotangent grad_y (*, dim).

    Returns dict(output=(*, dim), grad_input=None, grads={"weight": (num, dim)}).
    """
    module = embedding_twin(scratch_embedding, dtype)
    idx = torch.from_numpy(np.asarray(indices, dtype=np.int64).copy())
    return _run_module(module, idx, grad_y)


def run_loss(name: str, input, target, grad_loss, dtype=torch.float64, **kwargs) -> dict:
    """torch.nn.functional.<name>(input, target, **kwargs), back-propagated with grad_loss.

    ``name`` is one of LOSS_FUNCTIONS; cross_entropy takes integer targets (sent as int64), the
    others float targets. Returns dict(loss=ndarray (0-d for mean/sum), grad_input=input's shape).
    """
    if name not in LOSS_FUNCTIONS:
        raise ValueError(f"name: expected one of {sorted(LOSS_FUNCTIONS)}, got {name!r}")
    x = _tensor(input, dtype, requires_grad=True)
    if name == "cross_entropy":
        t = torch.from_numpy(np.asarray(target, dtype=np.int64).copy())
    else:
        t = _tensor(target, dtype)
    loss = LOSS_FUNCTIONS[name](x, t, **kwargs)
    loss.backward(_tensor(grad_loss, dtype=loss.dtype))
    return dict(loss=_numpy(loss), grad_input=_numpy(x.grad))


def load_torch_state(scratch_layer, torch_module: torch.nn.Module) -> None:
    """Load ``torch_module.state_dict()`` into the scratch layer (cast to the layer's dtype)."""
    scratch_layer.load_state_dict({k: _numpy(v) for k, v in torch_module.state_dict().items()})
