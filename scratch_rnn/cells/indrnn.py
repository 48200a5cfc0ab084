"""IndRNN (Li, Li, Cook, Zhu & Gao, CVPR 2018, "Independently Recurrent Neural Network (IndRNN): Building A
Longer and Deeper RNN"), as a plug-in cell of the generic loop (:mod:`scratch_rnn.cells.generic`).

One layer, one direction, each unit its own recurrent weight u_i (a vector u of shape (H,), not a matrix):

    a_t = x_t W_ihᵀ + b_ih + u ⊙ h_{t-1} + b_hh                  # (B, H)
    h_t = σ(a_t),  σ = relu (the paper's) or tanh                 # (B, H)

Backward, with g_t = dL/dh_t the total derivative (from the output and from h_{t+1}):

    δ_t = g_t ⊙ σ'(a_t)            σ'(a) = [h > 0] (relu), 1 - h² (tanh)
    dx_t = δ_t W_ih     dh_{t-1} = δ_t ⊙ u     (the per-unit factor u_i σ'(a_i) of the gradient through time)
    dW_ih = Σ δ_tᵀ x_t    du = Σ_b δ_t ⊙ h_{t-1}    db_ih = db_hh = Σ_b δ_t

Parameters, torch-style names: ``weight_ih_l{k}`` (H, I_k), ``weight_hh_l{k}`` (H,) the vector u,
``bias_ih_l{k}``, ``bias_hh_l{k}`` (H,), ``_reverse`` for the second direction.

Initialisation: W_ih and the biases U(-1/√H, 1/√H) as torch's RNN; u U(``recurrent_init``), (0, 1) by default.
The paper regulates u to keep the gradient through T steps bounded: |u| ≤ γ^(1/T) (and ≥ ε^(1/T) where long
memory is wanted); the authors' adding script (Sunnydreamrain/IndRNN_Theano_Lasagne, ``adding/adding.py``) takes
γ = MAG = 2, draws u U(0, 2^(1/T)) in the first layer and U(2^(-1/T), 2^(1/T)) in the last, W_ih N(0, 0.001²),
relu, and clips u to [-2^(1/T), 2^(1/T)] before every batch; :func:`paper_recurrent_range` gives those bounds,
:meth:`IndRNN.init_paper` that initialisation and :meth:`IndRNN.constrain` the clip.

``fast_loop = True`` (an attribute, off by default) runs a forward direction over full-length batches (no
``lengths``) as whole-sequence array operations: the input projection of every step in one product, then per step
only the elementwise recurrence (and in backward only δ_t = (g_t + δ_{t+1} ⊙ u) ⊙ σ'(a_t)), the weight gradients as
one product over all steps. The same arithmetic as the step functions, summed in another order (tests hold it to
the generic loop at 1e-12); everything else (lengths, the reverse direction) runs the generic loop. At T = 1,000,
2 layers of 128 units, batch 32 it is what makes the authors' adding setting affordable here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ..checks import check_choice, check_positive_float
from ..module import SeedLike
from .generic import StepCell

__all__ = ["IndRNN", "step_forward", "step_backward", "paper_recurrent_range"]

NONLINEARITIES = ("relu", "tanh")


def step_forward(x_t, h_prev, w_ih, u, b, nonlinearity):
    """h = σ(x_t W_ihᵀ + u ⊙ h_prev + b). x_t (B, I), h_prev (B, H), w_ih (H, I), u (H,), b (H,) or None.

    Returns (h (B, H), cache)."""
    a = x_t @ w_ih.T + u * h_prev
    if b is not None:
        a += b
    h = np.maximum(a, 0) if nonlinearity == "relu" else np.tanh(a)
    return h, (x_t, h_prev, h)


def step_backward(dh, cache, w_ih, u, nonlinearity):
    """(dx_t (B, I), dh_prev (B, H), dw_ih (H, I), du (H,), db (H,)) from dh = dL/dh (B, H), total."""
    x_t, h_prev, h = cache
    delta = dh * ((h > 0) if nonlinearity == "relu" else (1 - h * h))
    return delta @ w_ih, delta * u, delta.T @ x_t, (delta * h_prev).sum(axis=0), delta.sum(axis=0)


def paper_recurrent_range(
    seq_len: int, magnitude: float = 2.0, *, last_layer: bool = False, nonlinearity: str = "relu"
) -> tuple[float, float]:
    """(low, high) of the authors' u initialisation for sequences of ``seq_len`` steps (adding/adding.py):
    relu: (0, γ^(1/T)) for the first layers, (γ^(-1/T), γ^(1/T)) for the last; tanh: symmetric, with
    γ / 0.9^(T/10) in place of γ. The clip bound is the high end."""
    T = int(seq_len)
    high = magnitude ** (1.0 / T)
    if nonlinearity == "tanh":
        high = (magnitude / 0.9 ** (T / 10.0)) ** (1.0 / T)
        return -high, high
    return ((1.0 / magnitude) ** (1.0 / T) if last_layer else 0.0), high


class IndRNN(StepCell):
    """IndRNN layers with torch.nn.RNN's surface (layers, directions, lengths, dropout, layouts).

    ``nonlinearity``: "relu" (default, the paper's) or "tanh"; ``recurrent_init``: the (low, high) of u's uniform
    initialisation; ``recurrent_max``: the bound :meth:`constrain` clips |u| to (None: no bound).
    """

    NAME = "IndRNN"
    OPTIONS = {"nonlinearity": NONLINEARITIES}
    TWIN = "reference.indrnn:indrnn_step"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "relu",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        recurrent_init: tuple[float, float] = (0.0, 1.0),
        recurrent_max: float | None = None,
        dtype: DTypeLike = np.float32,
        seed: SeedLike = None,
    ) -> None:
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        low, high = _pair_range("recurrent_init", recurrent_init)
        self.recurrent_init = (low, high)
        self.recurrent_max = check_positive_float("recurrent_max", recurrent_max, allow_none=True)
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, dtype=dtype, seed=seed
        )

    def _extra_repr(self) -> list:
        return [f"nonlinearity={self.nonlinearity!r}"] if self.nonlinearity != "relu" else []

    def param_shapes(self, layer_input_size: int) -> dict[str, tuple[int, ...]]:
        H = self.hidden_size
        return {"weight_ih": (H, layer_input_size), "weight_hh": (H,), "bias_ih": (H,), "bias_hh": (H,)}

    def reset_parameters(self) -> None:
        """W_ih and biases U(±1/√H) (torch's RNN), u U(recurrent_init), in parameter order."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self._params.items():
            low, high = self.recurrent_init if name.startswith("weight_hh") else (-k, k)
            p[...] = self._rng.uniform(low, high, size=p.shape)

    def init_paper(self, seq_len: int, magnitude: float = 2.0, input_std: float = 1e-3) -> None:
        """The authors' adding-problem initialisation for ``seq_len`` steps (see the module docstring); sets
        ``recurrent_max`` to the clip bound."""
        for name, p in self._params.items():
            layer = int(name.split("_l")[1].split("_")[0])
            if name.startswith("weight_hh"):
                low, high = paper_recurrent_range(
                    seq_len,
                    magnitude,
                    last_layer=layer == self.num_layers - 1 and self.num_layers > 1,
                    nonlinearity=self.nonlinearity,
                )
                p[...] = self._rng.uniform(low, high, size=p.shape)
                self.recurrent_max = high
            elif name.startswith("weight_ih"):
                p[...] = self._rng.normal(0.0, input_std, size=p.shape)
            else:
                p[...] = 0.0

    def constrain(self) -> None:
        """Clip every u to [-recurrent_max, recurrent_max] in place (the paper's regulation; no-op without a bound)."""
        if self.recurrent_max is None:
            return
        for name, p in self._params.items():
            if name.startswith("weight_hh"):
                np.clip(p, -self.recurrent_max, self.recurrent_max, out=p)

    # the two step functions the generic loop runs
    def step_forward(
        self, x_t: np.ndarray, states: tuple[np.ndarray, ...], p: dict[str, np.ndarray]
    ) -> tuple[tuple[np.ndarray, ...], Any]:
        b = None
        if self.bias:
            b = p["bias_ih"] + p["bias_hh"]
        h, cache = step_forward(x_t, states[0], p["weight_ih"], p["weight_hh"], b, self.nonlinearity)
        return (h,), cache

    def step_backward(
        self, d_states: tuple[np.ndarray, ...], cache: Any, p: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...], dict[str, np.ndarray]]:
        dx, dh_prev, dw_ih, du, db = step_backward(
            d_states[0], cache, p["weight_ih"], p["weight_hh"], self.nonlinearity
        )
        grads = {"weight_ih": dw_ih, "weight_hh": du}
        if self.bias:
            grads["bias_ih"] = grads["bias_hh"] = db
        return dx, (dh_prev,), grads

    def step_kinks(self, cache: Any) -> np.ndarray | None:
        return cache[2] > 0 if self.nonlinearity == "relu" else None

    # the fast loop (``fast_loop``): a forward direction over full-length batches
    fast_loop = False

    def _fast(self, d, ctx) -> bool:
        return self.fast_loop and d == 0 and ctx["batch_sizes"] is None

    def _direction_forward(self, x, state0, layer, d, ctx):
        if not self._fast(d, ctx):
            return super()._direction_forward(x, state0, layer, d, ctx)
        T, B = ctx["T"], ctx["B"]
        p = self.layer_params(layer, d)
        a = (x.reshape(T * B, -1) @ p["weight_ih"].T).reshape(T, B, -1)
        if self.bias:
            a += p["bias_ih"] + p["bias_hh"]
        u, relu = p["weight_hh"], self.nonlinearity == "relu"
        hs = np.empty((T + 1, B, self.output_size), dtype=self.dtype)  # its own: the backward reads hs[:-1]
        hs[0] = state0[0]
        for t in range(T):
            a_t = a[t]
            a_t += u * hs[t]
            if relu:
                np.maximum(a_t, 0, out=hs[t + 1])
            else:
                np.tanh(a_t, out=hs[t + 1])
        out = hs[1:].copy()
        return out, (out[-1].copy() if T else np.array(state0[0]),), _FastSteps(x, hs[:-1], hs[1:])

    def _direction_backward(self, d_out, d_finals, steps, layer, d, ctx, out):
        if not isinstance(steps, _FastSteps):
            return super()._direction_backward(d_out, d_finals, steps, layer, d, ctx, out)
        T, B = ctx["T"], ctx["B"]
        p = self.layer_params(layer, d)
        u, h, relu = p["weight_hh"], steps.h, self.nonlinearity == "relu"
        hidden = out["hidden"]
        delta = np.empty_like(h)
        carry = np.array(d_finals[0], dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            total = hidden[t]
            np.add(carry, d_out[t], out=total)
            np.multiply(total, h[t] > 0 if relu else 1 - h[t] * h[t], out=delta[t])
            carry = delta[t] * u
        flat = delta.reshape(T * B, -1)
        dx = (flat @ p["weight_ih"]).reshape(T, B, -1)
        grads = {"weight_ih": flat.T @ steps.x.reshape(T * B, -1), "weight_hh": (delta * steps.h_prev).sum(axis=(0, 1))}
        if self.bias:
            grads["bias_ih"] = flat.sum(axis=0)
            grads["bias_hh"] = grads["bias_ih"].copy()
        return dx, (carry,), grads

    def kink_pattern(self) -> tuple:
        c = self._cache
        if c is None or not any(isinstance(s, _FastSteps) for _, dcaches, _ in c["layers"] for s in dcaches):
            return super().kink_pattern()
        pattern = []
        for _, dcaches, _ in c["layers"]:
            for steps in dcaches:
                if isinstance(steps, _FastSteps):
                    B = steps.h.shape[1]
                    pattern += [
                        (t, B, (steps.h[t] > 0).tobytes()) for t in range(len(steps.h)) if self.nonlinearity == "relu"
                    ]
                else:
                    pattern += [
                        (t, n, np.asarray(k, bool).tobytes())
                        for t, n, cache in steps
                        if (k := self.step_kinks(cache)) is not None
                    ]
        return tuple(pattern)


class _FastSteps:
    """What the fast loop keeps of a direction's forward: its input (T, B, I), the states before each step
    (T, B, H) and after (T, B, H)."""

    def __init__(self, x, h_prev, h):
        self.x, self.h_prev, self.h = x, h_prev, h


def _pair_range(name: str, value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a pair (low, high) of numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"{name}: expected finite low <= high, got {value!r}")
    return low, high
