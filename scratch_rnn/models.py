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
in 1..T (None: every sequence has length T); ``h0`` the cell's initial state or None: an array
(num_layers·D, B, H) for ``cell="rnn"`` / ``"gru"``, a pair (h0, c0) for ``cell="lstm"`` (h0's last
dimension is proj_size when the LSTM projects). ``h_n`` comes back in the same form.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from . import losses as L
from .cells import cell_names, cell_spec, module_options
from .checks import (
    as_float_array,
    as_index_array,
    check_bool,
    check_choice,
    check_dtype,
    check_index_range,
    check_lengths,
    check_non_negative_int,
    check_positive_int,
    check_probability,
    check_shape,
)
from .layers import Embedding, Linear
from .module import Module

__all__ = ["ModelConfig", "SequenceModel", "StepOutput", "POOLINGS", "TASKS", "LOSSES", "valid_mask"]

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
    nonlinearity: str = "tanh"  # of a cell that has one (Elman, IndRNN); LSTM and GRU have their own gates
    cell: str = cell_names(builtin=True)[0]  # a registered cell (default: the first built-in, the Elman "rnn") or
    # "module:Class"
    proj_size: int = 0  # LSTM only: h_t = W_hr (o ⊙ tanh c_t), P < hidden_size
    bias: bool = True
    bidirectional: bool = False
    dropout: float = 0.0
    pooling: str = "last"
    task: str = "sequence"
    loss: str = "cross_entropy"
    padding_idx: int | None = None
    dtype: str = "float32"
    seed: int | None = 0

    def __post_init__(self) -> None:
        # every check returns a plain Python value and the field keeps it (np.int64 -> int, np.bool_ ->
        # bool): a NumPy scalar given here never reaches a checkpoint's JSON
        def keep(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        for name in ("bias", "bidirectional"):
            keep(name, check_bool(name, getattr(self, name)))
        for name in ("hidden_size", "out_features", "num_layers"):
            keep(name, check_positive_int(name, getattr(self, name)))
        if (self.vocab_size is None) == (self.input_size is None):
            raise ValueError(
                f"vocab_size/input_size: give exactly one (tokens -> Embedding, or dense input), got "
                f"vocab_size={self.vocab_size!r}, input_size={self.input_size!r}"
            )
        if self.vocab_size is not None:
            keep("vocab_size", check_positive_int("vocab_size", self.vocab_size))
            if self.embedding_dim is None:
                raise ValueError("embedding_dim: expected a positive integer with vocab_size, got None")
            keep("embedding_dim", check_positive_int("embedding_dim", self.embedding_dim))
            if self.padding_idx is not None:
                if isinstance(self.padding_idx, (bool, np.bool_)) or not isinstance(self.padding_idx, numbers.Integral):
                    raise TypeError(f"padding_idx: expected an integer or None, got {self.padding_idx!r}")
                keep("padding_idx", int(self.padding_idx))  # its range is the Embedding's check
        else:
            keep("input_size", check_positive_int("input_size", self.input_size))
            if self.embedding_dim is not None or self.padding_idx is not None:
                raise ValueError(
                    f"embedding_dim/padding_idx: only meaningful with vocab_size (token input), got "
                    f"embedding_dim={self.embedding_dim!r}, padding_idx={self.padding_idx!r}"
                )
        if not isinstance(self.cell, str):
            raise ValueError(
                f"cell: expected one of {', '.join(map(repr, cell_names()))} or 'module:Class', got {self.cell!r}"
            )
        nonlinearities = cell_spec(self.cell).options.get("nonlinearity")
        if nonlinearities is None and self.nonlinearity != "tanh":
            raise ValueError(
                f"nonlinearity: cell={self.cell!r} has none (its gates are its own), got "
                f"nonlinearity={self.nonlinearity!r}"
            )
        if nonlinearities is not None:
            check_choice("nonlinearity", self.nonlinearity, nonlinearities)
        keep("proj_size", check_non_negative_int("proj_size", self.proj_size))
        projecting = [n for n in cell_names() if "proj_size" in module_options(n)]
        if self.proj_size and ("proj_size" not in module_options(self.cell) or self.proj_size >= self.hidden_size):
            raise ValueError(
                f"proj_size: expected 0, or with a cell among {projecting} a number below hidden_size="
                f"{self.hidden_size}, got {self.proj_size} (cell={self.cell!r})"
            )
        keep("dropout", check_probability("dropout", self.dropout))
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("task", self.task, TASKS)
        check_choice("loss", self.loss, LOSSES)
        keep("dtype", check_dtype(self.dtype).name)
        keep("seed", check_non_negative_int("seed", self.seed, allow_none=True))

    def cell_options(self) -> dict[str, Any]:
        """The cell's own constructor options this config sets: nonlinearity where it has one, proj_size if set."""
        opts: dict[str, Any] = {}
        if "nonlinearity" in cell_spec(self.cell).options:
            opts["nonlinearity"] = self.nonlinearity
        if self.proj_size:
            opts["proj_size"] = self.proj_size
        return opts

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The size of h per direction: proj_size when the LSTM projects, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def rnn_input_size(self) -> int:
        size = self.embedding_dim if self.vocab_size is not None else self.input_size
        assert size is not None  # __post_init__: embedding_dim comes with vocab_size, input_size without
        return size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig: expected a JSON object (dict) of fields, got {type(d).__name__}")
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
def pool_forward(out: np.ndarray, lengths: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
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


def pool_backward(grad: np.ndarray, lengths: np.ndarray, T: int, mode: str, cache: np.ndarray | None) -> np.ndarray:
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
        assert cache is not None  # max pooling's forward kept its argmax steps
        np.put_along_axis(d_out, cache[:, None, :], grad[:, None, :], axis=1)
    return d_out


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
class StepOutput(NamedTuple):
    """What :meth:`SequenceModel.forward_backward` returns (nanoGPT's ``logits, loss = model(X, Y)``)."""

    loss: float
    output: np.ndarray  # (B, C) | (B, T, C): the head's output, before the loss
    h_n: object  # (L·D, B, H), or (h_n, c_n) for an LSTM


class SequenceModel(Module):
    """Embedding/dense input -> RNN -> pooling (sequence task) -> Linear head, with its loss.

    ``forward(x, h0=None, lengths=None)`` -> ``(out, h_n)``: out (B, C) or (B, T, C).
    ``backward(grad_output, grad_h_n=None)`` -> ``(grad_x or None, grad_h0)``, accumulating into
    ``grads`` (the lifecycle rules of :class:`~scratch_rnn.Module`). ``loss(out, target, lengths)`` /
    ``loss_backward(...)``, and ``forward_backward(x, y, h0=None, lengths=None)`` ->
    :class:`StepOutput` ``(loss, output, h_n)`` for the training loop.
    """

    dtype: np.dtype

    def __init__(self, config: ModelConfig) -> None:
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
        c = config
        super().__init__(dtype=c.dtype)
        self.config = c
        dtype = self.dtype
        s_emb, s_rnn, s_head, s_drop = np.random.SeedSequence(c.seed).spawn(4)
        embedding = None
        if c.vocab_size is not None:
            assert c.embedding_dim is not None  # ModelConfig: embedding_dim comes with vocab_size
            embedding = Embedding(c.vocab_size, c.embedding_dim, c.padding_idx, dtype=dtype, seed=s_emb)
        self.register_module("embedding", embedding)
        self.register_module(
            "rnn",
            cell_spec(c.cell).model_class()(
                c.rnn_input_size,
                c.hidden_size,
                num_layers=c.num_layers,
                bias=c.bias,
                batch_first=True,
                dropout=c.dropout,
                bidirectional=c.bidirectional,
                dtype=dtype,
                seed=s_rnn,
                **c.cell_options(),
            ),
        )
        self.register_module("head", Linear(c.num_directions * c.output_size, c.out_features, dtype=dtype, seed=s_head))
        # the generator of the dropout masks; its state is part of a checkpoint
        self.rng = np.random.default_rng(s_drop)

    def __repr__(self) -> str:
        return f"SequenceModel({self.config})"

    # -- forward / backward ---------------------------------------------------------------------
    def _check_x(self, x: ArrayLike) -> np.ndarray:
        c = self.config
        if c.vocab_size is not None:
            x = as_index_array("x", x)
            if x.ndim != 2:
                raise ValueError(f"x: expected token ids of shape (batch, time), got shape {x.shape}")
            check_index_range("x", x, 0, c.vocab_size, f"token ids below vocab_size={c.vocab_size}")
        else:
            x = as_float_array("x", x, self.dtype)
            if x.ndim != 3 or x.shape[2] != c.input_size:
                raise ValueError(
                    f"x: expected shape (batch, time, {c.input_size}) (input_size={c.input_size}), got {x.shape}"
                )
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x: expected at least one sequence and one step, got shape {x.shape}")
        return x

    def check_batch(self, x: ArrayLike, y: ArrayLike, lengths: ArrayLike | None = None) -> None:
        """Every check forward, loss and backward would make of ``(x, y, lengths)``, without computing.

        For a whole data set before training: token ids below vocab_size, finite dense values, lengths
        in 1..T, labels below out_features or float targets of the output's shape.
        """
        c = self.config
        x = self._check_x(x)
        B, T = x.shape[:2]
        self._lengths(lengths, B, T)
        if c.loss == "cross_entropy":
            y = as_index_array("y", y)
            check_shape(
                "y",
                y,
                (B,) if c.task == "sequence" else (B, T),
                "(class ids per sequence)" if c.task == "sequence" else "(class ids per step)",
            )
            check_index_range("y", y, 0, c.out_features, f"class ids below out_features={c.out_features}")
        else:
            y = as_float_array("y", y, self.dtype)
            check_shape(
                "y",
                y,
                (B, c.out_features) if c.task == "sequence" else (B, T, c.out_features),
                "(the shape of the model output)",
            )

    def _lengths(self, lengths, B, T):
        return np.full(B, T, dtype=np.int64) if lengths is None else check_lengths("lengths", lengths, B, T)

    def draw_dropout_masks(self, T: int, B: int) -> list[np.ndarray] | None:
        """Keep-masks (T, B, D·H) for layers 0..L-2 from the model's generator, or None when off."""
        c = self.config
        if not (self.training and c.dropout > 0 and c.num_layers > 1):
            return None
        shape = (T, B, c.num_directions * c.output_size)
        return [self.rng.random(shape) >= c.dropout for _ in range(c.num_layers - 1)]

    def _forward(self, x, h0=None, lengths=None):
        """x (B, T) int | (B, T, I) float -> (out (B, C) | (B, T, C), h_n (L·D, B, H))."""
        c = self.config
        x = self._check_x(x)
        B, T = x.shape[:2]
        lengths = self._lengths(lengths, B, T).copy()  # the model's own (pooling reads it in backward)
        if self.embedding is not None:
            emb, emb_cache = self.embedding._forward(x)  # (B, T, E)
        else:
            emb, emb_cache = x, None
        masks = self.draw_dropout_masks(T, B)
        (rnn_out, h_n), rnn_cache = self.rnn._forward(emb, h0, lengths, dropout_masks=masks)  # (B, T, D·H)
        pool_cache = None
        if c.task == "sequence":
            feats, pool_cache = pool_forward(rnn_out, lengths, c.pooling)  # (B, D·H)
        else:
            feats = rnn_out  # (B, T, D·H)
        out, head_cache = self.head._forward(feats)  # (B, C) | (B, T, C)
        cache = dict(B=B, T=T, lengths=lengths, pool=pool_cache, embedding=emb_cache, rnn=rnn_cache, head=head_cache)
        return (out, h_n), cache

    def _backward(self, cache, grad_output, grad_h_n=None):
        """Backward through the forward of ``cache``; returns ((grad_x (dense input) or None, grad_h0), grads)."""
        c = self.config
        d_feats, grads = self.head._backward(cache["head"], grad_output)  # (B, D·H) | (B, T, D·H)
        grads = self.prefixed("head", grads)
        if c.task == "sequence":
            d_rnn_out = pool_backward(d_feats, cache["lengths"], cache["T"], c.pooling, cache["pool"])
        else:
            d_rnn_out = d_feats * valid_mask(cache["lengths"], cache["B"], cache["T"])[:, :, None]
        (d_emb, d_h0), rnn_grads = self.rnn._backward(cache["rnn"], d_rnn_out, grad_h_n)
        grads.update(self.prefixed("rnn", rnn_grads))
        if self.embedding is not None:
            _, emb_grads = self.embedding._backward(cache["embedding"], d_emb)
            grads.update(self.prefixed("embedding", emb_grads))
            return (None, d_h0), grads
        return (d_emb, d_h0), grads

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
            mask = None
        else:
            T = out.shape[1]
            mask = valid_mask(self._lengths(lengths, B, T), B, T)  # (B, T)
            out, target = out[mask], target[mask]
        if c.loss == "cross_entropy":
            check_index_range("target", target, 0, c.out_features, f"class ids below out_features={c.out_features}")
        return out, target, mask

    def loss(self, out: np.ndarray, target: ArrayLike, lengths: ArrayLike | None = None) -> float:
        """The mean loss over scored items (sequences, or valid steps)."""
        o, t, _ = self._scored(out, target, lengths)
        return float(_LOSS_FNS[self.config.loss][0](o, t))

    def loss_backward(
        self, out: np.ndarray, target: ArrayLike, lengths: ArrayLike | None = None, grad_loss: ArrayLike = 1.0
    ) -> np.ndarray:
        """d loss / d out, of out's shape (zero at padded steps)."""
        o, t, mask = self._scored(out, target, lengths)
        g = _LOSS_FNS[self.config.loss][1](np.asarray(grad_loss, dtype=o.dtype), o, t)
        if mask is None:
            return g
        full = np.zeros_like(out)
        full[mask] = g
        return full

    def forward_backward(
        self, x: ArrayLike, y: ArrayLike, h0: Any = None, lengths: ArrayLike | None = None
    ) -> StepOutput:
        """Forward, loss, backward (grads accumulate); returns :class:`StepOutput` (loss, output, h_n).

        A non-finite output or loss raises FloatingPointError before anything is accumulated.
        """
        out, h_n = self.forward(x, h0, lengths)
        if not np.isfinite(out).all():
            raise FloatingPointError(
                "forward: the model output is not finite (NaN or inf): the head overflowed; "
                "nothing was accumulated into grads"
            )
        loss = self.loss(out, y, lengths)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss: the loss is not finite ({loss}); nothing was accumulated into grads")
        self.backward(self.loss_backward(out, y, lengths))
        return StepOutput(loss, out, h_n)


_LOSS_FNS: dict[str, tuple[Callable[..., np.ndarray | np.floating], Callable[..., np.ndarray]]] = {
    "cross_entropy": (L.cross_entropy, L.cross_entropy_backward),
    "mse": (L.mse_loss, L.mse_loss_backward),
    "bce": (L.binary_cross_entropy_with_logits, L.binary_cross_entropy_with_logits_backward),
}
