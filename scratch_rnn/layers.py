"""Linear and Embedding layers in NumPy, parameter-for-parameter twins of torch.nn.Linear/Embedding.

Conventions shared by every layer of the package:

- parameters are named exactly as in torch (``weight``, ``bias``) so state dicts move both ways;
- ``forward`` caches what ``backward`` needs; ``backward(grad_out)`` returns the gradient with
  respect to the input and *accumulates* parameter gradients into ``self.grads`` (like torch's
  ``.grad``) until ``zero_grad()``;
- ``parameters()`` is the live name -> ndarray dict: optimizers update those arrays in place, and
  ``load_state_dict`` also writes in place, so references held elsewhere never go stale.

``backward`` uses the parameters as they are when it is called, so update parameters only after
the backward pass (torch would raise on an in-place change between forward and backward).
"""
from __future__ import annotations

import numbers

import numpy as np

from ._checks import as_float_array, as_index_array, check_dtype, check_positive_int, check_shape

__all__ = ["Linear", "Embedding"]


class _Layer:
    """Parameter bookkeeping shared by the layers: state dicts, gradients, the forward cache."""

    def __init__(self, dtype):
        self.dtype = check_dtype(dtype)
        self._params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._cache = None

    def _register(self, name: str, value: np.ndarray) -> None:
        self._params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self.grads[name] = np.zeros_like(self._params[name])

    def __getattr__(self, name):
        # ``layer.weight`` / ``layer.bias`` read the live parameter arrays, as in torch.
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in self.__dict__.get("_params", {}):
            raise AttributeError(f"{name}: parameters are not rebound (optimizers hold the arrays); "
                                 f"assign in place (layer.{name}[...] = value) or use load_state_dict")
        super().__setattr__(name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def parameters(self) -> dict[str, np.ndarray]:
        """The LIVE parameter dict (name -> ndarray); in-place updates change the layer."""
        return self._params

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, keyed as in torch."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state`` into the parameters (in place), after checking keys, shapes and values.

        Keys must match exactly; each value must be a finite floating-point array (or torch
        tensor) of the parameter's shape. Values are cast to the layer dtype. Nothing is written
        unless every entry passes.
        """
        if not hasattr(state, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state).__name__}")
        state = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state.items()}
        missing = sorted(set(self._params) - set(state))
        unexpected = sorted(set(state) - set(self._params))
        if missing or unexpected:
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}; "
                           f"{type(self).__name__} expects {sorted(self._params)}")
        staged = {}
        for name, param in self._params.items():
            value = np.asarray(state[name])
            if value.shape != param.shape:
                raise ValueError(f"state_dict[{name!r}]: shape {tuple(value.shape)} does not match the "
                                 f"parameter's shape {tuple(param.shape)}")
            staged[name] = as_float_array(f"state_dict[{name!r}]", value, self.dtype)
        for name, value in staged.items():
            self._params[name][...] = value

    def zero_grad(self) -> None:
        """Reset the accumulated gradients to zero (in place)."""
        for g in self.grads.values():
            g.fill(0)

    def _require_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward: there is no "
                               f"cached input to differentiate through")
        return self._cache


class Linear(_Layer):
    """y = x @ weight.T + bias, for x of shape (*, in_features).

    Init as torch.nn.Linear: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))
    (kaiming-uniform with a=sqrt(5)), drawn weight first from ``np.random.default_rng(seed)``;
    ``seed`` may also be a ``np.random.Generator``.
    """

    def __init__(self, in_features, out_features, bias: bool = True, *, dtype=np.float32, seed=None):
        super().__init__(dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.in_features)
        self._register("weight", rng.uniform(-bound, bound, (self.out_features, self.in_features)))
        if bias:
            self._register("bias", rng.uniform(-bound, bound, (self.out_features,)))

    @property
    def has_bias(self) -> bool:
        return "bias" in self._params

    def forward(self, x) -> np.ndarray:
        """x (*, in_features) -> y (*, out_features); caches x for backward."""
        x = as_float_array("x", x, self.dtype)
        check_shape("x", x, x.shape[:-1] + (self.in_features,) if x.ndim else (self.in_features,),
                    "(*, in_features)")
        y = x @ self._params["weight"].T  # (*, out)
        if self.has_bias:
            y = y + self._params["bias"]
        self._cache = x
        return y

    def backward(self, grad_y) -> np.ndarray:
        """grad_y (*, out_features) -> grad_x (*, in_features); accumulates weight/bias grads."""
        x = self._require_cache()  # (*, in)
        grad_y = as_float_array("grad_y", grad_y, self.dtype)
        check_shape("grad_y", grad_y, x.shape[:-1] + (self.out_features,), "(*, out_features)")
        g2 = grad_y.reshape(-1, self.out_features)  # (M, out)
        x2 = x.reshape(-1, self.in_features)  # (M, in)
        self.grads["weight"] += g2.T @ x2  # (out, in)
        if self.has_bias:
            self.grads["bias"] += g2.sum(axis=0)  # (out,)
        return grad_y @ self._params["weight"]  # (*, in)

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.has_bias}, dtype={self.dtype.name})")


class Embedding(_Layer):
    """A lookup table: integer indices (*) -> rows of ``weight`` (*, embedding_dim).

    Init as torch.nn.Embedding: weight ~ N(0, 1), with the ``padding_idx`` row zeroed. As in torch,
    a negative ``padding_idx`` counts from the end, the padding row receives no gradient, and
    indices must lie in [0, num_embeddings) (negative indices are an error, not wrap-around).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *, dtype=np.float32, seed=None):
        super().__init__(dtype)
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.padding_idx = _normalize_padding_idx(padding_idx, self.num_embeddings)
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0.0
        self._register("weight", weight)

    def forward(self, indices) -> np.ndarray:
        """indices (*) int -> (*, embedding_dim); caches the indices for backward."""
        idx = as_index_array("indices", indices)
        _check_index_range("indices", idx, self.num_embeddings)
        self._cache = idx
        return self._params["weight"][idx]  # (*, dim)

    def backward(self, grad_y) -> None:
        """Scatter-add grad_y (*, embedding_dim) into grads['weight'] (repeated indices add up).

        The padding row gets no gradient. Returns None: indices have no gradient.
        """
        idx = self._require_cache()  # (*)
        grad_y = as_float_array("grad_y", grad_y, self.dtype)
        check_shape("grad_y", grad_y, idx.shape + (self.embedding_dim,), "(*indices.shape, embedding_dim)")
        flat_idx = idx.reshape(-1)  # (M,)
        flat_g = grad_y.reshape(-1, self.embedding_dim)  # (M, dim)
        if self.padding_idx is not None:
            keep = flat_idx != self.padding_idx
            flat_idx, flat_g = flat_idx[keep], flat_g[keep]
        np.add.at(self.grads["weight"], flat_idx, flat_g)
        return None

    def __repr__(self):
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
                f"dtype={self.dtype.name})")


def _normalize_padding_idx(padding_idx, num_embeddings: int):
    """None, or padding_idx in [0, num_embeddings) (negative values count from the end, as torch)."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"padding_idx: expected an integer or None, got {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx: must be in [{-num_embeddings}, {num_embeddings}) "
                         f"(num_embeddings={num_embeddings}), got {padding_idx}")
    return int(padding_idx) % num_embeddings


def _check_index_range(name: str, idx: np.ndarray, size: int) -> None:
    """ValueError naming ``name``, the valid range [0, size) and the first offending value."""
    if idx.size == 0:
        return
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: values must be in [0, {size}), got {int(idx[where])} at index {where} "
                         f"({int(bad.sum())} out of range)")
