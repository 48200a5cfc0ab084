"""The torch twin of ``scratch_rnn.train``: the same loop, with torch.optim and autograd under it.

:class:`TorchTrainer` is :class:`scratch_rnn.train.Trainer` with its backend methods (the few that
touch the model and the optimizer) written in torch: the real ``torch.optim`` optimizer
(``torch_optimizer``, the oracle of ``scratch_rnn.optim``), ``loss.backward()``,
``torch.nn.utils.clip_grad_value_`` then ``clip_grad_norm_``, the same guard, epochs, learning-rate
schedule, evaluation, selection, patience and truncated BPTT (the carried state goes back as NumPy,
which is torch's ``h_n.detach()``). Dropout masks are drawn from a NumPy generator set to the
scratch model's dropout generator, so both sides apply the same ones. Checkpoints are the NumPy
trainer's business: a ``checkpoint_dir`` is refused here.

:func:`train_torch` runs it over explicit batches and records every step (the trajectory tests).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from scratch_rnn.models import StepOutput
from scratch_rnn.train import Trainer

from .models import TorchSequenceModel, draw_dropout_masks, to_tensor

__all__ = ["TORCH_OPTIMIZERS", "torch_optimizer", "TorchTrainer", "train_torch", "total_norm"]

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


class TorchTrainer(Trainer):
    """``Trainer`` over a :class:`~reference.models.TorchSequenceModel`; see the module docstring.

    ``dropout_rng_state``: the scratch model's ``rng.bit_generator.state`` at the start (the same masks).
    """

    def __init__(self, model: TorchSequenceModel, config=None, *, dropout_rng_state=None, **hooks):
        if config is not None and config.checkpoint_dir is not None:
            raise ValueError("checkpoint_dir: the torch twin does not write checkpoints (the NumPy Trainer does)")
        self.params = list(model.parameters())
        super().__init__(model, config, **hooks)
        self.rng = np.random.default_rng()
        if dropout_rng_state is not None:
            self.rng.bit_generator.state = dropout_rng_state
        self.last_clip_norm: float | None = None  # what clip_grad_norm_ returned at the last step

    # -- the backend, in torch ----------------------------------------------------------------------
    def _make_optimizer(self):
        return torch_optimizer(self.config.optimizer, self.params, **self.config.optimizer_kwargs)

    def _forward_backward(self, x, y, h0, lengths):
        self.optimizer.zero_grad()
        m = self.model
        x = np.asarray(x)
        masks = draw_dropout_masks(self.rng, m.config, x.shape[1], x.shape[0], m.training)
        out, h_n = m(to_tensor(x, m.tdtype), h0, lengths, masks)
        if not torch.isfinite(out).all():
            raise FloatingPointError("forward: the model output is not finite (NaN or inf)")
        loss = m.loss(out, y, lengths)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss is {loss.item()}")
        loss.backward()
        finals = tuple(f.detach().numpy() for f in h_n) if isinstance(h_n, tuple) else h_n.detach().numpy()
        return StepOutput(loss.item(), out.detach().numpy(), finals)

    def _measure_and_clip(self) -> float:
        norm = total_norm(self.params)
        if not math.isfinite(norm):
            raise FloatingPointError(f"the gradient norm is {norm}")
        cfg = self.config
        if cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, cfg.clip_value)
        self.last_clip_norm = None
        if cfg.clip_norm is not None:
            self.last_clip_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_norm, cfg.clip_norm_type))
        return norm

    def _update(self) -> None:
        self.optimizer.step()

    def _nonfinite_parameters(self) -> list[str]:
        return [k for k, p in self.model.named_parameters() if not torch.isfinite(p).all()]

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def model_state(self) -> dict:
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)).to(self.model.tdtype) for k, v in state.items()})

    def _state_dtype(self):
        return np.dtype(np.float64 if self.model.tdtype == torch.float64 else np.float32)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def twin_from_state(model_config, state_dict, dtype=torch.float64) -> TorchSequenceModel:
    """A TorchSequenceModel of ``model_config`` holding ``state_dict`` (NumPy arrays), in train mode."""
    model = TorchSequenceModel(model_config, dtype)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float64)).to(dtype) for k, v in state_dict.items()})
    return model.train()


def train_torch(
    model_config,
    state_dict,
    batches,
    train_config,
    *,
    dropout_rng_state=None,
    record_params: bool = True,
    dtype=torch.float64,
) -> dict:
    """Train the torch twin from ``state_dict`` over ``batches`` ((x, y, lengths) tuples) with TorchTrainer.

    Returns dict(losses, grad_norms, clip_norms (what clip_grad_norm_ returned, or None), params:
    list of {name: ndarray} after each step, skipped).
    """
    model = twin_from_state(model_config, state_dict, dtype)
    out: dict[str, list[Any]] = dict(params=[], clip_norms=[])

    def record(trainer, rec):
        out["clip_norms"].append(trainer.last_clip_norm if not rec.skipped else None)
        if record_params:
            out["params"].append(trainer.model_state())

    trainer = TorchTrainer(model, train_config, dropout_rng_state=dropout_rng_state, callback=record)
    trainer.run(batches)
    out.update(
        losses=list(trainer.losses), grad_norms=list(trainer.grad_norms), skipped=[r.skipped for r in trainer.history]
    )
    return out
