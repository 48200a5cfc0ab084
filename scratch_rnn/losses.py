"""Losses in NumPy: functional forms with their backward, and small torch-like classes.

Each ``*_loss``/``cross_entropy``/``binary_cross_entropy_with_logits`` returns the loss as torch
does: a NumPy scalar of the input dtype for ``reduction="mean"``/``"sum"``, the unreduced ndarray
for ``reduction="none"``. Each ``*_backward(grad_loss, ...)`` takes the cotangent of that loss
(a scalar, or an array of the unreduced shape for ``"none"``) and returns the gradient with
respect to the input (logits), of the input's shape and dtype. Targets get no gradient.

Numerics follow torch's own arrangement of each formula, so that float64 results agree with
torch to a few ulps:

- cross-entropy uses log-softmax with the max subtracted first, ``(x - max) - log(sum(exp(x - max)))``;
  it is finite for logits of any finite magnitude (e.g. +-1e4);
- BCE-with-logits is ``(1 - y) * x - log_sigmoid(x)`` with
  ``log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))``: algebraically the stable form
  ``max(x, 0) - x * y + log1p(exp(-|x|))``, never overflowing, arranged as torch arranges it
  (the two arrangements round differently, by up to ~1e-6 relative, for soft targets near 0/1).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from .checks import FLOAT_DTYPES, as_float_array, as_index_array, check_shape
from .module import Module

__all__ = [
    "mse_loss",
    "mse_loss_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
    "MSELoss",
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
]

REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------
# shared validation and reduction
# ----------------------------------------------------------------------------------------------


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _float_input(name: str, value: ArrayLike) -> np.ndarray:
    """``value`` as a finite float32/float64 array, keeping its dtype (the loss's dtype)."""
    arr = np.asarray(value) if value is not None else None
    if arr is not None and arr.dtype.kind == "f" and arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got dtype {arr.dtype}")
    dtype = arr.dtype if arr is not None and arr.dtype.kind == "f" else np.float64
    return as_float_array(name, value, dtype)


def _grad_loss(grad_loss: ArrayLike, loss_shape: tuple, dtype: np.dtype, reduction: str) -> np.ndarray:
    """The cotangent of the loss: a scalar for mean/sum, an array of ``loss_shape`` for none."""
    if isinstance(grad_loss, numbers.Real) and not isinstance(grad_loss, bool):
        grad_loss = float(grad_loss)  # accept a plain Python int/float as a scalar cotangent
    g = as_float_array("grad_loss", grad_loss, dtype)
    what = "(the unreduced loss's shape, reduction='none')" if reduction == "none" else "(a scalar)"
    check_shape("grad_loss", g, loss_shape, what)
    return g


def _reduce(loss: np.ndarray, reduction: str, count: int) -> np.ndarray | np.floating:
    """Reduce the elementwise ``loss``; "mean" divides by ``count`` (nan when count is 0, as torch)."""
    if reduction == "none":
        return loss
    total = loss.sum(dtype=loss.dtype)
    if reduction == "sum":
        return loss.dtype.type(total)
    if count == 0:
        return loss.dtype.type(np.nan)
    return loss.dtype.type(total / loss.dtype.type(count))


# ----------------------------------------------------------------------------------------------
# mean squared error
# ----------------------------------------------------------------------------------------------


def _mse_inputs(input: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = _float_input("input", input)
    t = as_float_array("target", target, x.dtype)
    check_shape("target", t, x.shape, "(the shape of input)")
    return x, t


def mse_loss(input: ArrayLike, target: ArrayLike, reduction: str = "mean") -> np.ndarray | np.floating:
    """mean/sum/none of (input - target)**2, input and target of the same shape (any)."""
    reduction = _check_reduction(reduction)
    x, t = _mse_inputs(input, target)
    d = x - t  # (*)
    return _reduce(d * d, reduction, x.size)


def mse_loss_backward(grad_loss: ArrayLike, input: ArrayLike, target: ArrayLike, reduction: str = "mean") -> np.ndarray:
    """d loss / d input = 2 (input - target) * grad_loss (/ numel for "mean")."""
    reduction = _check_reduction(reduction)
    x, t = _mse_inputs(input, target)
    g = _grad_loss(grad_loss, x.shape if reduction == "none" else (), x.dtype, reduction)
    norm = 2.0 / x.size if (reduction == "mean" and x.size) else 2.0
    return (x.dtype.type(norm) * (x - t) * g).astype(x.dtype, copy=False)  # (*)


# ----------------------------------------------------------------------------------------------
# cross-entropy over class logits
# ----------------------------------------------------------------------------------------------


def _ce_inputs(logits, target, ignore_index):
    """Validate and flatten: logits (C,) | (N, C, d1, ...) -> x2 (M, C); target -> t (M,).

    Returns (x2, t, valid, target_shape) where ``valid`` marks the non-ignored targets.
    """
    x = _float_input("logits", logits)
    if x.ndim == 0:
        raise ValueError("logits: expected shape (C,) or (N, C, d1, ...), got a scalar ()")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index: expected an integer, got {ignore_index!r}")
    t = as_index_array("target", target)
    n_classes = x.shape[0] if x.ndim == 1 else x.shape[1]
    if n_classes < 1:
        raise ValueError(f"logits: need at least one class, got shape {tuple(x.shape)}")
    target_shape = () if x.ndim == 1 else (x.shape[0],) + x.shape[2:]
    check_shape("target", t, target_shape, "(logits' shape without the class dimension)")
    valid = t != ignore_index  # (*)
    bad = valid & ((t < 0) | (t >= n_classes))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0]) if t.ndim else ()
        raise ValueError(
            f"target: class indices must be in [0, {n_classes}) or equal ignore_index="
            f"{ignore_index}, got {int(t[where])} at index {where}"
        )
    x2 = x.reshape(1, n_classes) if x.ndim == 1 else np.moveaxis(x, 1, -1).reshape(-1, n_classes)  # (M, C)
    return x2, t.reshape(-1), valid.reshape(-1), target_shape


def _log_softmax(x2: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (M, C), max-subtracted: finite for any finite logits."""
    z = x2 - x2.max(axis=1, keepdims=True)  # (M, C)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (M, C)


def cross_entropy(
    logits: ArrayLike, target: ArrayLike, reduction: str = "mean", ignore_index: int = -100
) -> np.ndarray | np.floating:
    """Softmax cross-entropy of integer class targets, as torch.nn.functional.cross_entropy.

    Shapes: logits (C,) with target (); logits (N, C) with target (N,); logits (N, C, d1, ...) with
    target (N, d1, ...). Targets equal to ``ignore_index`` contribute 0 (a 0 entry for "none")
    and are excluded from the "mean" denominator; if every target is ignored, "mean" is nan,
    as in torch (0 / 0), while its gradient is all zeros (again as torch).
    """
    reduction = _check_reduction(reduction)
    x2, t, valid, target_shape = _ce_inputs(logits, target, ignore_index)
    logp = _log_softmax(x2)  # (M, C)
    rows = np.arange(t.size)
    picked = logp[rows, np.where(valid, t, 0)]  # (M,)
    losses = np.where(valid, -picked, 0).astype(x2.dtype, copy=False)  # (M,)
    out = _reduce(losses, reduction, int(valid.sum()))
    return out.reshape(target_shape) if reduction == "none" else out


def cross_entropy_backward(
    grad_loss: ArrayLike, logits: ArrayLike, target: ArrayLike, reduction: str = "mean", ignore_index: int = -100
) -> np.ndarray:
    """d loss / d logits = w * (softmax(logits) - onehot(target)), w = per-target cotangent.

    w is grad_loss (/ number of non-ignored targets for "mean"), 0 for ignored targets.
    """
    reduction = _check_reduction(reduction)
    x2, t, valid, target_shape = _ce_inputs(logits, target, ignore_index)
    dt = x2.dtype
    g = _grad_loss(grad_loss, target_shape if reduction == "none" else (), dt, reduction)
    count = int(valid.sum())
    if reduction == "none":
        w = g.reshape(-1)  # (M,)
    elif reduction == "sum":
        w = np.full(t.size, g, dtype=dt)
    else:
        w = np.full(t.size, g / dt.type(count) if count else 0, dtype=dt)
    w = np.where(valid, w, 0).astype(dt, copy=False)  # (M,)
    grad2 = np.exp(_log_softmax(x2)) * w[:, None]  # (M, C)
    rows = np.arange(t.size)
    grad2[rows[valid], t[valid]] -= w[valid]
    logits_shape = np.shape(logits)
    if len(logits_shape) == 1:
        return grad2.reshape(logits_shape)  # (C,)
    moved = (logits_shape[0],) + logits_shape[2:] + (logits_shape[1],)  # (N, d1, ..., C)
    return np.ascontiguousarray(np.moveaxis(grad2.reshape(moved), -1, 1))  # (N, C, d1, ...)


# ----------------------------------------------------------------------------------------------
# binary cross-entropy with logits
# ----------------------------------------------------------------------------------------------


def _bce_inputs(input: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = _float_input("input", input)
    t = as_float_array("target", target, x.dtype)
    check_shape("target", t, x.shape, "(the shape of input)")
    return x, t


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): no overflow for any finite x."""
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), evaluated as exp(x) / (1 + exp(x)) for x < 0 so exp never overflows."""
    e = np.exp(-np.abs(x))  # in (0, 1]
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def binary_cross_entropy_with_logits(
    input: ArrayLike, target: ArrayLike, reduction: str = "mean"
) -> np.ndarray | np.floating:
    """-[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], computed stably from the logits x.

    ``target`` is a float array of input's shape (probabilities; values are not range-checked,
    as in torch).
    """
    reduction = _check_reduction(reduction)
    x, t = _bce_inputs(input, target)
    loss = (1 - t) * x - _log_sigmoid(x)  # (*) == max(x,0) - x*y + log1p(exp(-|x|))
    return _reduce(loss.astype(x.dtype, copy=False), reduction, x.size)


def binary_cross_entropy_with_logits_backward(
    grad_loss: ArrayLike, input: ArrayLike, target: ArrayLike, reduction: str = "mean"
) -> np.ndarray:
    """d loss / d input = (sigmoid(x) - y) * grad_loss (/ numel for "mean")."""
    reduction = _check_reduction(reduction)
    x, t = _bce_inputs(input, target)
    g = _grad_loss(grad_loss, x.shape if reduction == "none" else (), x.dtype, reduction)
    grad = (_sigmoid(x) - t) * g  # (*)
    if reduction == "mean" and x.size:
        grad = grad / x.dtype.type(x.size)
    return grad.astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# torch-like classes
# ----------------------------------------------------------------------------------------------


class _Loss(Module):
    """forward(input, target) -> loss; backward(grad_loss=1.0) -> grad_input, under Module's lifecycle.

    No parameters: the base gives the rules (a backward consumes its forward, the inputs are the
    module's own copies, nothing survives a raising forward).
    """

    # set by subclasses (staticmethod of the functional form)
    _loss_fn: ClassVar[Callable[..., np.ndarray | np.floating]]
    _loss_backward_fn: ClassVar[Callable[..., np.ndarray]]

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(dtype=None)
        self.reduction = _check_reduction(reduction)

    def _options(self) -> dict[str, Any]:
        return dict(reduction=self.reduction)

    def _forward(self, input, target):
        loss = type(self)._loss_fn(input, target, **self._options())
        return loss, (np.array(input, copy=True), np.array(target, copy=True))

    def _backward(self, cache, grad_loss=1.0):
        """Gradient of the forward's loss with respect to its input.

        ``grad_loss`` defaults to 1.0 (d loss / d loss) for "mean"/"sum"; "none" needs an array
        of the unreduced loss's shape.
        """
        return type(self)._loss_backward_fn(grad_loss, *cache, **self._options()), {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({opts})"


class MSELoss(_Loss):
    """Mean squared error, as torch.nn.MSELoss."""

    _loss_fn = staticmethod(mse_loss)
    _loss_backward_fn = staticmethod(mse_loss_backward)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy over integer class targets, as torch.nn.CrossEntropyLoss."""

    _loss_fn = staticmethod(cross_entropy)
    _loss_backward_fn = staticmethod(cross_entropy_backward)
    ignore_index: int

    def __init__(self, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__(reduction)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"ignore_index: expected an integer, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)

    def _options(self) -> dict[str, Any]:
        return dict(reduction=self.reduction, ignore_index=self.ignore_index)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits, as torch.nn.BCEWithLogitsLoss (no weight/pos_weight)."""

    _loss_fn = staticmethod(binary_cross_entropy_with_logits)
    _loss_backward_fn = staticmethod(binary_cross_entropy_with_logits_backward)
