"""A sequence model composed of the core layers: Embedding (or dense input) -> RNN -> pooling -> Linear -> loss.

Two tasks:

- ``task="sequence"``: one output per sequence (classification/regression). The RNN's last-layer
  output (B, T, D·H) is pooled over each sequence's valid steps: ``last`` = the output at the
  sequence's own last valid step (index ``length - 1``; for a bidirectional RNN its reverse half
  has seen one step only, exactly as ``out[b, length - 1]`` in torch), ``mean`` = the mean over
  valid steps, ``max`` = the max over valid steps. Then the head maps (B, D·H) -> (B, C).
- ``task="per_step"``: language-model style, an output at every step (B, T, C) and a loss at
  every valid step; padded steps are excluded from the loss and from its mean's denominator.

The loss is the mean over what is scored (sequences, or valid steps): ``cross_entropy`` with
integer targets (B,) / (B, T), or ``mse`` / ``bce`` (with logits) with float targets (B, C) /
(B, T, C).

Parameters form one flat dict under the names of the torch twin's ``state_dict()``
(``reference.models.TorchSequenceModel``, submodules ``embedding``, ``rnn``, ``head``):
``embedding.weight``, ``rnn.weight_ih_l0``, ..., ``head.weight``, ``head.bias``. The arrays are
the layers' own (live), so an optimizer given ``model.parameters()`` trains the model.

Inputs are batch-first: tokens (B, T) int, or dense (B, T, input_size) float; ``lengths`` (B,)
in 1..T (None: every sequence has length T); ``h0`` (num_layers·D, B, H) or None.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import losses as L
from ._checks import (
    as_float_array,
    as_index_array,
    check_dtype,
    check_positive_int,
    check_probability,
    check_shape,
)
from .layers import Embedding, Linear
from .rnn import RNN

__all__ = ["ModelConfig", "SequenceModel", "POOLINGS", "TASKS", "LOSSES", "valid_mask"]

POOLINGS = ("last", "mean", "max")
TASKS = ("sequence", "per_step")
LOSSES = ("cross_entropy", "mse", "bce")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a :class:`SequenceModel` (JSON-serialisable via :meth:`to_dict`).

    Give ``vocab_size`` and ``embedding_dim`` for token input (an Embedding layer first), or
    ``input_size`` for dense input (no embedding). ``out_features`` is the number of classes
    (cross_entropy) or outputs (mse/bce). ``seed`` seeds the initial weights and the dropout masks.
    """

    hidden_size: int
    out_features: int
    vocab_size: int | None = None
    embedding_dim: int | None = None
    input_size: int | None = None
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    bidirectional: bool = False
    dropout: float = 0.0
    pooling: str = "last"
    task: str = "sequence"
    loss: str = "cross_entropy"
    padding_idx: int | None = None
    dtype: str = "float32"
    seed: int | None = 0

    def __post_init__(self):
        check_positive_int("hidden_size", self.hidden_size)
        check_positive_int("out_features", self.out_features)
        check_positive_int("num_layers", self.num_layers)
        if (self.vocab_size is None) == (self.input_size is None):
            raise ValueError(f"vocab_size/input_size: give exactly one (tokens -> Embedding, or dense input), got "
                             f"vocab_size={self.vocab_size!r}, input_size={self.input_size!r}")
        if self.vocab_size is not None:
            check_positive_int("vocab_size", self.vocab_size)
            if self.embedding_dim is None:
                raise ValueError("embedding_dim: expected a positive integer with vocab_size, got None")
            check_positive_int("embedding_dim", self.embedding_dim)
        else:
            check_positive_int("input_size", self.input_size)
            if self.embedding_dim is not None or self.padding_idx is not None:
                raise ValueError(f"embedding_dim/padding_idx: only meaningful with vocab_size (token input), got "
                                 f"embedding_dim={self.embedding_dim!r}, padding_idx={self.padding_idx!r}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {self.nonlinearity!r}")
        check_probability("dropout", self.dropout)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {self.pooling!r}")
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {self.task!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {self.loss!r}")
        check_dtype(self.dtype)
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or self.seed < 0):
            raise ValueError(f"seed: expected a non-negative integer or None, got {self.seed!r}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def rnn_input_size(self) -> int:
        return self.embedding_dim if self.vocab_size is not None else self.input_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}")
        return cls(**d)


def valid_mask(lengths: np.ndarray | None, B: int, T: int) -> np.ndarray:
    """(B, T) bool: True at steps t < lengths[b] (all True without lengths)."""
    if lengths is None:
        return np.ones((B, T), dtype=bool)
    return np.arange(T)[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------------------------
# pooling: pure functions, (B, T, F) -> (B, F) and back
# ----------------------------------------------------------------------------------------------
def pool_forward(out: np.ndarray, lengths: np.ndarray, mode: str):
    """out (B, T, F), lengths (B,) -> (pooled (B, F), cache). Padded steps never contribute."""
    B, T, F = out.shape
    rows = np.arange(B)
    if mode == "last":
        return out[rows, lengths - 1], None
    mask = valid_mask(lengths, B, T)[:, :, None]  # (B, T, 1)
    if mode == "mean":
        return out.sum(axis=1) / lengths[:, None].astype(out.dtype), None  # padded outputs are zero
    masked = np.where(mask, out, -np.inf)  # (B, T, F)
    idx = masked.argmax(axis=1)  # (B, F): the first maximising step
    return np.take_along_axis(out, idx[:, None, :], axis=1)[:, 0], idx


def pool_backward(grad: np.ndarray, lengths: np.ndarray, T: int, mode: str, cache) -> np.ndarray:
    """grad (B, F) -> d out (B, T, F), zero at padded steps."""
    B, F = grad.shape
    d_out = np.zeros((B, T, F), dtype=grad.dtype)
    rows = np.arange(B)
    if mode == "last":
        d_out[rows, lengths - 1] = grad
    elif mode == "mean":
        d_out[...] = (grad / lengths[:, None].astype(grad.dtype))[:, None, :]
        d_out *= valid_mask(lengths, B, T)[:, :, None]
    else:
        np.put_along_axis(d_out, cache[:, None, :], grad[:, None, :], axis=1)
    return d_out


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
class SequenceModel:
    """Embedding/dense input -> RNN -> pooling (sequence task) -> Linear head, with its loss.

    ``forward(x, lengths, h0)`` -> ``(out, h_n)``: out (B, C) or (B, T, C). ``backward(grad_out,
    grad_h_n)`` -> ``(grad_x or None, grad_h0)``, accumulating into ``grads``.
    ``loss(out, target, lengths)`` / ``loss_backward(...)``, and ``forward_backward(x, target,
    lengths, h0)`` -> ``(loss, h_n)`` for the training loop (the loss's gradient, cotangent 1).
    """

    def __init__(self, config: ModelConfig):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
        self.config = c = config
        dtype = np.dtype(c.dtype)
        self.dtype = dtype
        s_emb, s_rnn, s_head, s_drop = np.random.SeedSequence(c.seed).spawn(4)
        self.embedding = (Embedding(c.vocab_size, c.embedding_dim, c.padding_idx, dtype=dtype, seed=s_emb)
                          if c.vocab_size is not None else None)
        self.rnn = RNN(c.rnn_input_size, c.hidden_size, num_layers=c.num_layers, nonlinearity=c.nonlinearity,
                       bias=c.bias, batch_first=True, dropout=c.dropout, bidirectional=c.bidirectional,
                       dtype=dtype, seed=s_rnn)
        self.head = Linear(c.num_directions * c.hidden_size, c.out_features, dtype=dtype, seed=s_head)
        # the generator of the dropout masks; its state is part of a checkpoint
        self.rng = np.random.default_rng(s_drop)
        self.training = True
        self._params = OrderedDict()
        self._grads = OrderedDict()
        for prefix, module in self._modules():
            for name, p in module.parameters().items():
                self._params[f"{prefix}.{name}"] = p
                self._grads[f"{prefix}.{name}"] = module.grads[name]
        self._cache = None

    def _modules(self):
        mods = [("embedding", self.embedding)] if self.embedding is not None else []
        return mods + [("rnn", self.rnn), ("head", self.head)]

    # -- parameters -----------------------------------------------------------------------------
    def parameters(self) -> OrderedDict:
        """The live flat parameter dict, torch twin's state_dict names -> ndarray."""
        return self._params

    @property
    def grads(self) -> OrderedDict:
        """The live flat gradient dict (same keys), accumulated by backward until zero_grad()."""
        return self._grads

    def zero_grad(self) -> None:
        for g in self._grads.values():
            g.fill(0)

    def state_dict(self) -> OrderedDict:
        return OrderedDict((k, v.copy()) for k, v in self._params.items())

    def load_state_dict(self, state) -> None:
        """Copy ``state`` (ndarrays or torch tensors) into the parameters, in place.

        Keys and shapes must match exactly and values be finite floats; everything is checked
        before anything is written.
        """
        if not hasattr(state, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state).__name__}")
        state = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state.items()}
        missing = [k for k in self._params if k not in state]
        unexpected = [k for k in state if k not in self._params]
        if missing or unexpected:
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        staged = {}
        for k, p in self._params.items():
            v = np.asarray(state[k])
            if v.shape != p.shape:
                raise ValueError(f"state_dict[{k!r}]: expected shape {p.shape}, got {v.shape}")
            staged[k] = as_float_array(f"state_dict[{k!r}]", v, self.dtype)
        for k, v in staged.items():
            self._params[k][...] = v

    def train(self, mode: bool = True) -> "SequenceModel":
        self.training = bool(mode)
        self.rnn.train(mode)
        return self

    def eval(self) -> "SequenceModel":
        return self.train(False)

    def __repr__(self) -> str:
        return f"SequenceModel({self.config})"

    # -- forward / backward ---------------------------------------------------------------------
    def _check_x(self, x):
        c = self.config
        if c.vocab_size is not None:
            x = as_index_array("x", x)
            if x.ndim != 2:
                raise ValueError(f"x: expected token ids of shape (batch, time), got shape {x.shape}")
        else:
            x = as_float_array("x", x, self.dtype)
            if x.ndim != 3 or x.shape[2] != c.input_size:
                raise ValueError(f"x: expected shape (batch, time, {c.input_size}) (input_size={c.input_size}), "
                                 f"got {x.shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x: expected at least one sequence and one step, got shape {x.shape}")
        return x

    def _check_lengths(self, lengths, B, T):
        if lengths is None:
            return np.full(B, T, dtype=np.int64)
        lengths = as_index_array("lengths", lengths)
        check_shape("lengths", lengths, (B,), "(one length per sequence)")
        if lengths.min() < 1 or lengths.max() > T:
            bad = lengths[(lengths < 1) | (lengths > T)]
            raise ValueError(f"lengths: expected every length in 1..{T} (the number of steps), got {bad.tolist()}")
        return lengths

    def draw_dropout_masks(self, T: int, B: int):
        """Keep-masks (T, B, D·H) for layers 0..L-2 from the model's generator, or None when off."""
        c = self.config
        if not (self.training and c.dropout > 0 and c.num_layers > 1):
            return None
        shape = (T, B, c.num_directions * c.hidden_size)
        return [self.rng.random(shape) >= c.dropout for _ in range(c.num_layers - 1)]

    def __call__(self, x, lengths=None, h0=None):
        return self.forward(x, lengths, h0)

    def forward(self, x, lengths=None, h0=None):
        """x (B, T) int | (B, T, I) float -> (out (B, C) | (B, T, C), h_n (L·D, B, H))."""
        c = self.config
        x = self._check_x(x)
        B, T = x.shape[:2]
        lengths = self._check_lengths(lengths, B, T)
        emb = self.embedding.forward(x) if self.embedding is not None else x  # (B, T, E)
        masks = self.draw_dropout_masks(T, B)
        rnn_out, h_n = self.rnn.forward(emb, h0, lengths, dropout_masks=masks)  # (B, T, D·H)
        pool_cache = None
        if c.task == "sequence":
            feats, pool_cache = pool_forward(rnn_out, lengths, c.pooling)  # (B, D·H)
        else:
            feats = rnn_out  # (B, T, D·H)
        out = self.head.forward(feats)  # (B, C) | (B, T, C)
        self._cache = dict(B=B, T=T, lengths=lengths, pool=pool_cache)
        return out, h_n

    def backward(self, grad_out, grad_h_n=None):
        """Backward through the last forward; returns (grad_x (dense input) or None, grad_h0)."""
        if self._cache is None:
            raise RuntimeError("backward: call forward first (backward runs through the last forward)")
        c, cache = self.config, self._cache
        d_feats = self.head.backward(grad_out)  # (B, D·H) | (B, T, D·H)
        if c.task == "sequence":
            d_rnn_out = pool_backward(d_feats, cache["lengths"], cache["T"], c.pooling, cache["pool"])
        else:
            d_rnn_out = d_feats * valid_mask(cache["lengths"], cache["B"], cache["T"])[:, :, None]
        d_emb, d_h0 = self.rnn.backward(d_rnn_out, grad_h_n)
        if self.embedding is not None:
            self.embedding.backward(d_emb)
            return None, d_h0
        return d_emb, d_h0

    # -- loss -----------------------------------------------------------------------------------
    def _scored(self, out, target, lengths):
        """The scored outputs and targets: (B, C) as is, or the valid steps of (B, T, C) as (M, C)."""
        c = self.config
        B = out.shape[0]
        if c.loss == "cross_entropy":
            target = as_index_array("target", target)
            expected = (B,) if c.task == "sequence" else out.shape[:2]
            what = "(class ids per sequence)" if c.task == "sequence" else "(class ids per step)"
        else:
            target = as_float_array("target", target, self.dtype)
            expected = out.shape
            what = "(the shape of the model output)"
        check_shape("target", target, expected, what)
        if c.task == "sequence":
            return out, target, None
        T = out.shape[1]
        lengths = self._check_lengths(lengths, B, T)
        mask = valid_mask(lengths, B, T)  # (B, T)
        return out[mask], target[mask], mask

    def loss(self, out, target, lengths=None) -> float:
        """The mean loss over scored items (sequences, or valid steps)."""
        o, t, _ = self._scored(out, target, lengths)
        return float(_LOSS_FNS[self.config.loss][0](o, t))

    def loss_backward(self, out, target, lengths=None, grad_loss=1.0) -> np.ndarray:
        """d loss / d out, of out's shape (zero at padded steps)."""
        o, t, mask = self._scored(out, target, lengths)
        g = _LOSS_FNS[self.config.loss][1](np.asarray(grad_loss, dtype=o.dtype), o, t)
        if mask is None:
            return g
        full = np.zeros_like(out)
        full[mask] = g
        return full

    def forward_backward(self, x, target, lengths=None, h0=None):
        """Forward, loss, backward (grads accumulate); returns (loss, h_n)."""
        out, h_n = self.forward(x, lengths, h0)
        if not np.isfinite(out).all():
            raise FloatingPointError("forward: the model output is not finite (NaN or inf): the head overflowed; "
                                     "nothing was accumulated into grads")
        loss = self.loss(out, target, lengths)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss: the loss is not finite ({loss}); nothing was accumulated into grads")
        self.backward(self.loss_backward(out, target, lengths))
        return loss, h_n


_LOSS_FNS = {
    "cross_entropy": (L.cross_entropy, L.cross_entropy_backward),
    "mse": (L.mse_loss, L.mse_loss_backward),
    "bce": (L.binary_cross_entropy_with_logits, L.binary_cross_entropy_with_logits_backward),
}
