"""Linear and Embedding layers in NumPy, parameter-for-parameter twins of torch.nn.Linear/Embedding.

Both are :class:`scratch_rnn.Module` subclasses: parameters are named exactly as in torch
(``weight``, ``bias``) so state dicts move both ways; ``backward(grad_output)`` returns the gradient
with respect to the input and *accumulates* parameter gradients into ``self.grads`` (like torch's
``.grad``) until ``zero_grad()``, under the Module's lifecycle rules.

A parameter the backward reads (``Linear.weight``) that changed in place between forward and backward
makes the backward raise, as torch's version counter does (``Module`` rule 5); the biases and the
embedding table are not read by backward, so changing them in between changes nothing.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import DTypeLike

from .checks import (
    as_float_array,
    as_index_array,
    check_bool,
    check_index_range,
    check_positive_int,
    check_shape,
    shares_memory,
)
from .module import Module, RowGrad, SeedLike

__all__ = ["Linear", "Embedding"]


class Linear(Module):
    """y = x @ weight.T + bias, for x of shape (*, in_features).

    Init as torch.nn.Linear: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))
    (kaiming-uniform with a=sqrt(5)), drawn weight first from ``np.random.default_rng(seed)``;
    ``seed`` may also be a ``np.random.Generator``.
    """

    dtype: np.dtype

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        seed: SeedLike = None,
    ) -> None:
        super().__init__(dtype=dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        bias = check_bool("bias", bias)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.in_features)
        self.register_parameter("weight", rng.uniform(-bound, bound, (self.out_features, self.in_features)))
        if bias:
            self.register_parameter("bias", rng.uniform(-bound, bound, (self.out_features,)))

    def _backward_reads(self) -> tuple[str, ...]:
        return ("weight",)  # grad_x = grad_output @ weight; the bias is not read

    @property
    def has_bias(self) -> bool:
        return "bias" in self._params

    def _forward(self, x):
        """x (*, in_features) -> y (*, out_features); the cache is a private copy of x."""
        x_given = x
        x = as_float_array("input", x, self.dtype)
        check_shape(
            "input", x, x.shape[:-1] + (self.in_features,) if x.ndim else (self.in_features,), "(*, in_features)"
        )
        y = x @ self._params["weight"].T  # (*, out)
        if self.has_bias:
            y = y + self._params["bias"]
        return y, (x.copy() if shares_memory(x, x_given) else x)

    def _backward(self, x, grad_output):
        """grad_output (*, out_features) -> grad_x (*, in_features); dW = gᵀx, db = Σ g."""
        grad_output = as_float_array("grad_output", grad_output, self.dtype)
        check_shape("grad_output", grad_output, x.shape[:-1] + (self.out_features,), "(*, out_features)")
        g2 = grad_output.reshape(-1, self.out_features)  # (M, out)
        x2 = x.reshape(-1, self.in_features)  # (M, in)
        grads = {"weight": g2.T @ x2}  # (out, in)
        if self.has_bias:
            grads["bias"] = g2.sum(axis=0)  # (out,)
        return grad_output @ self._params["weight"], grads  # (*, in)

    def __repr__(self) -> str:
        return (
            f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.has_bias}, dtype={self.dtype.name})"
        )


class Embedding(Module):
    """A lookup table: integer indices (*) -> rows of ``weight`` (*, embedding_dim).

    Init as torch.nn.Embedding: weight ~ N(0, 1), with the ``padding_idx`` row zeroed. As in torch,
    a negative ``padding_idx`` counts from the end, the padding row receives no gradient, and
    indices must lie in [0, num_embeddings) (negative indices are an error, not wrap-around).
    """

    dtype: np.dtype

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        dtype: DTypeLike = np.float32,
        seed: SeedLike = None,
    ) -> None:
        super().__init__(dtype=dtype)
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.padding_idx = _normalize_padding_idx(padding_idx, self.num_embeddings)
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0.0
        self.register_parameter("weight", weight)

    def _backward_reads(self) -> tuple[str, ...]:
        return ()  # the backward scatters into rows; it never reads the table

    def _forward(self, indices):
        """indices (*) int -> (*, embedding_dim); the cache is a private copy of the indices."""
        idx_given = indices
        idx = as_index_array("indices", indices)
        check_index_range("indices", idx, 0, self.num_embeddings, f"num_embeddings={self.num_embeddings}")
        if shares_memory(idx, idx_given):
            idx = idx.copy()
        return self._params["weight"][idx], idx  # (*, dim)

    def _backward(self, idx, grad_output):
        """Scatter-add grad_output (*, embedding_dim) into the rows of ``weight`` (repeats add up).

        The padding row gets no gradient. Returns None as the input gradient: indices have none.
        """
        grad_output = as_float_array("grad_output", grad_output, self.dtype)
        check_shape("grad_output", grad_output, idx.shape + (self.embedding_dim,), "(*indices.shape, embedding_dim)")
        flat_idx = idx.reshape(-1)  # (M,)
        flat_g = grad_output.reshape(-1, self.embedding_dim)  # (M, dim)
        if self.padding_idx is not None:
            keep = flat_idx != self.padding_idx
            flat_idx, flat_g = flat_idx[keep], flat_g[keep]
        return None, {"weight": RowGrad(flat_idx, flat_g)}

    def __repr__(self) -> str:
        return (
            f"Embedding({self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
            f"dtype={self.dtype.name})"
        )


def _normalize_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    """None, or padding_idx in [0, num_embeddings) (negative values count from the end, as torch)."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"padding_idx: expected an integer or None, got {padding_idx!r}")
    if not -num_embeddings <= int(padding_idx) < num_embeddings:
        raise ValueError(
            f"padding_idx: must be in [{-num_embeddings}, {num_embeddings}) "
            f"(num_embeddings={num_embeddings}), got {padding_idx}"
        )
    return int(padding_idx) % num_embeddings
