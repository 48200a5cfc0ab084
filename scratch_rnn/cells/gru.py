"""The GRU cell (torch's): its layout, its math one pure function per step, its sequence loops and the
``GRU`` layer, in NumPy alone.

One layer and one direction at a time; the layers, directions, layouts, dropout and validation are the
stack's (:class:`~scratch_rnn.cells.base.RecurrentBase`). Notation (torch's, not the textbook variants), x_t
the layer input, B the batch, H the hidden size.

Parameters (torch's names, per layer k and direction, ``_reverse`` for the second): gate order r, z, n, the
row blocks of ``weight_ih_l{k}`` (3H, I_k) and ``weight_hh_l{k}`` (3H, H); ``bias_ih_l{k}``, ``bias_hh_l{k}``
(3H,). The layout and torch's default initialisation, U(±1/√H), are the stack's (``GATES = 3``).

    gi_t = x_t W_ihᵀ + b_ih      gh_t = h_{t-1} W_hhᵀ + b_hh                 # (B, 3H) each
    r = σ(gi_r + gh_r)   z = σ(gi_z + gh_z)   n = tanh(gi_n + r ⊙ gh_n)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}                                           # (B, H)

r multiplies gh_n = h_{t-1} W_hnᵀ + b_hn *after* the product (torch's and cuDNN's form), so b_hn
cannot be folded into the input projection: the GRU's x_proj carries b_ih only.

Backpropagation through time, with g_t = dL/dh_t the *total* derivative (what reaches the state from the
output at step t plus what flows back from step t+1):

    g_t   = dL/dout_t + g_{t+1} ⊙ z_{t+1} + dgh_{t+1} W_hh
    da_n  = g_t ⊙ (1 - z) ⊙ (1 - n²)      dgi_n = da_n       dgh_n = da_n ⊙ r
    da_r  = da_n ⊙ gh_n ⊙ r(1 - r)        dgi_r = dgh_r = da_r
    da_z  = g_t ⊙ (h_{t-1} - n) ⊙ z(1 - z)  dgi_z = dgh_z = da_z
    dW_ih = Σ_t dgi_tᵀ x_t   dW_hh = Σ_t dgh_tᵀ h_{t-1}   db_ih = Σ_t dgi_t   db_hh = Σ_t dgh_t
    dx_t  = dgi_t W_ih       (db_ih and db_hh differ in the n block)

Packed lengths and the state buffer S (T + 1, B, H) follow :mod:`~scratch_rnn.cells.loops`' conventions.

Reading order: the step functions (:func:`gru_step_forward`, :func:`gru_step_backward`), then the readable
sequence loops built from them (:func:`gru_stepwise_forward`, :func:`gru_stepwise_backward`: the executed
reference, held to torch autograd by tests/test_gated_functional.py) and the weight gradients
(:func:`gru_weight_gradients`), then the loops the model runs (:func:`gru_sequence_forward`,
:func:`gru_sequence_backward`), then the layer :class:`GRU`.

The loops the model runs are the stepwise loops rewritten for speed as the LSTM's are (:mod:`scratch_rnn.cells.lstm`:
buffers written with ``out=``, ``ndarray.dot``, 0-d constants, the forward-only factors 1 - z, 1 - n², σ' and
h_{t-1} - n computed a block of steps at a time), the same operations on the same operands in the same order:
equal **bit for bit** (tests/test_gated_loops.py). Same signatures and dicts ("gh_n" there is a view of the
(T, B, 3H) buffer that holds every step's h_{t-1} W_hhᵀ + b_hh).
Every function takes float32 or float64 arrays (one dtype throughout) and returns that dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from ..module import SeedLike
from .base import _UNSET, DEFAULT_FLUSH_EVERY, RecurrentBase, torch_alias
from .loops import (
    alloc,
    block_steps,
    blocks,
    finals,
    flush,
    flush_now,
    forward_steps,
    forward_views,
    input_projection,
    read_slot,
    sigmoid,
    sigmoid_derivative,
    step_sizes,
    step_views,
    tanh_derivative,
    visit_order,
)

__all__ = [
    "GRU",
    "GRUStepCache",
    "gru_step_forward",
    "gru_step_backward",
    "gru_stepwise_forward",
    "gru_stepwise_backward",
    "gru_weight_gradients",
    "gru_sequence_forward",
    "gru_sequence_backward",
    "input_projection",
]


# --------------------------------------------------------------------------------------------
# GRU, one time step
# --------------------------------------------------------------------------------------------
class GRUStepCache(NamedTuple):
    """What one GRU step keeps for its backward (and for the weight gradients)."""

    h_prev: np.ndarray  # (B, H)
    gates: np.ndarray  # (B, 3H): r, z, n after their nonlinearities
    gh_n: np.ndarray  # (B, H), h_{t-1} W_hnᵀ + b_hn (what r multiplies)


def gru_step_forward(x_proj: np.ndarray, h_prev: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray | None):
    """One GRU step.

    x_proj: (B, 3H) = gi_t = x_t W_ihᵀ + b_ih; h_prev: (B, H); w_hh: (3H, H); b_hh: (3H,) or None.
    Returns (h (B, H), cache: GRUStepCache).
    """
    H = h_prev.shape[-1]
    gh = h_prev @ w_hh.T
    if b_hh is not None:
        gh += b_hh
    gates = np.empty_like(x_proj)
    gates[:, : 2 * H] = sigmoid(x_proj[:, : 2 * H] + gh[:, : 2 * H])  # r, z
    r, z = gates[:, :H], gates[:, H : 2 * H]
    gh_n = gh[:, 2 * H :]
    n = np.tanh(x_proj[:, 2 * H :] + r * gh_n)
    gates[:, 2 * H :] = n
    h = n + z * (h_prev - n)  # = (1 - z) ⊙ n + z ⊙ h_prev, in torch's order of operations
    return h, GRUStepCache(h_prev, gates, gh_n)


def gru_step_backward(dh: np.ndarray, cache: GRUStepCache, w_hh: np.ndarray):
    """Backward of :func:`gru_step_forward`.

    dh: (B, H), the total dL/dh_t; w_hh: (3H, H).
    Returns (dgi, dgh, dh_prev): dgi (B, 3H) = dL/dgi_t (dW_ih, db_ih and dx are built from it);
    dgh (B, 3H) = dL/dgh_t (dW_hh, db_hh), equal to dgi but in the n block, where dgh_n = dgi_n ⊙ r;
    dh_prev (B, H) = dh ⊙ z + dgh W_hh.
    """
    H = dh.shape[-1]
    r, z, n = (cache.gates[:, k * H : (k + 1) * H] for k in range(3))
    da_n = dh * (1 - z) * tanh_derivative(n)
    da_r = da_n * cache.gh_n * sigmoid_derivative(r)
    da_z = dh * (cache.h_prev - n) * sigmoid_derivative(z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)
    dh_prev = dh * z + dgh @ w_hh
    return dgi, dgh, dh_prev


# --------------------------------------------------------------------------------------------
# One layer, one direction, over the whole sequence: the readable loops (the executed reference)
# --------------------------------------------------------------------------------------------
def gru_stepwise_forward(
    x_proj: np.ndarray,
    h0: np.ndarray,
    w_hh: np.ndarray,
    b_hh: np.ndarray | None,
    batch_sizes: np.ndarray | None,
    reverse: bool,
) -> dict:
    """The GRU recurrence over all steps of one layer and direction.

    x_proj: (T, B, 3H) = x W_ihᵀ + b_ih (:func:`input_projection` with b_ih alone); h0: (B, H);
    w_hh: (3H, H); b_hh: (3H,) or None; batch_sizes: (T,) or None; reverse: bool.
    Returns the cache, a dict: "h": S (T + 1, B, H) (module docstring); "gates" (T, B, 3H) r, z, n and
    "gh_n" (T, B, H), zero at padded steps; "h_n" (B, H), each sequence's state at its own last valid step.
    """
    T, B, G = x_proj.shape
    H = G // 3
    dtype = x_proj.dtype
    S = np.zeros((T + 1, B, H), dtype=dtype)
    gates = np.zeros((T, B, G), dtype=dtype)
    gh_n = np.zeros((T, B, H), dtype=dtype)
    for t, n in forward_steps(T, batch_sizes, reverse, (S,), (h0,)):
        h, step = gru_step_forward(x_proj[t, :n], S[read_slot(t, reverse), :n], w_hh, b_hh)
        S[read_slot(t, not reverse), :n] = h
        gates[t, :n], gh_n[t, :n] = step.gates, step.gh_n
    return dict(h=S, gates=gates, gh_n=gh_n, h_n=finals((S,), batch_sizes, reverse)[0])


def gru_stepwise_backward(
    grad_out: np.ndarray,
    grad_h_last: np.ndarray | None,
    cache: dict,
    w_hh: np.ndarray,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    flush_below: float = 0.0,
    flush_every: int = 1,
) -> dict:
    """BPTT through :func:`gru_stepwise_forward`.

    grad_out: (T, B, H), dL/dh_t from above (any strides); grad_h_last: (B, H) = dL/dh_n (None: zero),
    entering each sequence at its own last valid step. flush_below, flush_every: the subnormal flush
    (:func:`~scratch_rnn.cells.loops.flush`), on g_t.
    Returns a dict, every (T, ...) entry zero at padded steps: "dgi" (T, B, 3H) = dL/dgi_t,
    "dgh" (T, B, 3H) = dL/dgh_t, "dh0" (B, H), "hidden_grads" (T, B, H) = g_t, the total dL/dh_t.
    """
    T, B, H = grad_out.shape
    S = cache["h"]
    dtype = S.dtype
    dh_run = np.zeros((B, H), dtype) if grad_h_last is None else np.array(grad_h_last, dtype=dtype)
    dgi_all = np.zeros((T, B, 3 * H), dtype)
    dgh_all = np.zeros((T, B, 3 * H), dtype)
    hidden = np.zeros((T, B, H), dtype)
    sizes = step_sizes(batch_sizes, T, B)
    for i, t in enumerate(reversed(visit_order(T, reverse))):
        n = sizes[t]
        g = grad_out[t, :n] + dh_run[:n]
        flush(g, flush_below, i, flush_every)
        step = GRUStepCache(S[read_slot(t, reverse), :n], cache["gates"][t, :n], cache["gh_n"][t, :n])
        dgi, dgh, dh_prev = gru_step_backward(g, step, w_hh)
        hidden[t, :n], dgi_all[t, :n], dgh_all[t, :n] = g, dgi, dgh
        dh_run[:n] = dh_prev
    return dict(dgi=dgi_all, dgh=dgh_all, dh0=dh_run, hidden_grads=hidden)


def gru_weight_gradients(
    dgi: np.ndarray, dgh: np.ndarray, x: np.ndarray, cache: dict, reverse: bool, bias: bool
) -> dict:
    """The GRU's weight gradients, one GEMM (or one sum) each over all steps.

    dgi, dgh: (T, B, 3H) from :func:`gru_sequence_backward` (or :func:`gru_stepwise_backward`); x: (T, B, I),
    the layer input.
    Returns dict(w_ih (3H, I) = Σ dgiᵀ x, w_hh (3H, H) = Σ dghᵀ h_prev,
    b_ih (3H,) = Σ dgi or None, b_hh (3H,) = Σ dgh or None).
    """
    T, B, G = dgi.shape
    S = cache["h"]
    h_prev = S[1:] if reverse else S[:-1]
    gi2, gh2 = dgi.reshape(T * B, G), dgh.reshape(T * B, G)
    return dict(
        w_ih=gi2.T @ x.reshape(T * B, x.shape[-1]),
        w_hh=gh2.T @ h_prev.reshape(T * B, S.shape[-1]),
        b_ih=gi2.sum(axis=0) if bias else None,
        b_hh=gh2.sum(axis=0) if bias else None,
    )


# --------------------------------------------------------------------------------------------
# The loops the model runs: the readable loops rewritten for speed, equal bit for bit
# --------------------------------------------------------------------------------------------
def gru_sequence_forward(
    x_proj: np.ndarray,
    h0: np.ndarray,
    w_hh: np.ndarray,
    b_hh: np.ndarray | None,
    batch_sizes: np.ndarray | None,
    reverse: bool,
) -> dict:
    """The loop the model runs: :func:`gru_stepwise_forward`, bit for bit (same arguments, same dict; "gh_n" is
    a view of the (T, B, 3H) buffer that holds every step's h_{t-1} W_hhᵀ + b_hh)."""
    T, B, G = x_proj.shape
    H = G // 3
    dtype, padded = x_proj.dtype, batch_sizes is not None
    S = alloc((T + 1, B, H), dtype, padded)
    gates = alloc((T, B, G), dtype, padded)
    GH = alloc((T, B, G), dtype, padded)
    rz, E, work = np.empty((B, 2 * H), dtype), np.empty((B, 2, 2 * H), dtype), np.empty((B, H), dtype)
    minus_one, zero, one = np.full((), -1, dtype), np.zeros((), dtype), np.ones((), dtype)
    w_t = w_hh.T
    add, subtract, multiply, divide, tanh, exp, minimum, copysign = (
        np.add,
        np.subtract,
        np.multiply,
        np.divide,
        np.tanh,
        np.exp,
        np.minimum,
        np.copysign,
    )
    S_read, S_write = (S[1:], S[:-1]) if reverse else (S[:-1], S[1:])  # [t]: the slot step t reads, writes
    rz_n = lambda A: (A[..., : 2 * H], A[..., 2 * H :])  # noqa: E731 (a (T, B, 3H) array's r, z blocks; its n block)
    per_step = (S_read, S_write, *rz_n(x_proj), GH, *rz_n(GH), *rz_n(gates), gates[..., :H], gates[..., H : 2 * H])
    scratch = (rz, E, E[:, 0], E[:, 1], work)
    steps = forward_views(T, batch_sizes, reverse, (S,), (h0,), per_step, scratch)
    for h_prev, h, xp_rz, xp_n, gh, gh_rz, gh_n, g_rz, nn, r, z, a, ee, e, num, w in steps:
        h_prev.dot(w_t, gh)  # gh_t = h_{t-1} W_hhᵀ + b_hh
        if b_hh is not None:
            add(gh, b_hh, gh)
        add(xp_rz, gh_rz, a)  # r, z = σ(gi + gh) (loops.sigmoid, five calls): -|a|, then e = exp(-|a|) ...
        copysign(a, minus_one, e)
        minimum(a, zero, out=num)  # ... and the numerator exp(min(a, 0)), both in one exp
        exp(ee, ee)
        add(e, one, g_rz)  # 1 + e
        divide(num, g_rz, g_rz)
        multiply(r, gh_n, w)  # n = tanh(gi_n + r ⊙ gh_n)
        add(xp_n, w, w)
        tanh(w, nn)
        subtract(h_prev, nn, h)  # h_t = n + z ⊙ (h_{t-1} - n)
        multiply(z, h, h)
        add(nn, h, h)
    return dict(h=S, gates=gates, gh_n=GH[..., 2 * H :], h_n=finals((S,), batch_sizes, reverse)[0])


def gru_sequence_backward(
    grad_out: np.ndarray,
    grad_h_last: np.ndarray | None,
    cache: dict,
    w_hh: np.ndarray,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    flush_below: float = 0.0,
    flush_every: int = 1,
) -> dict:
    """The loop the model runs: :func:`gru_stepwise_backward`, bit for bit (same arguments, same dict)."""
    T, B, H = grad_out.shape
    S, gates, gh_n = cache["h"], cache["gates"], cache["gh_n"]
    dtype, padded = S.dtype, batch_sizes is not None
    dh_run = np.zeros((B, H), dtype) if grad_h_last is None else np.array(grad_h_last, dtype=dtype)
    dgi_all = alloc((T, B, 3 * H), dtype, padded)
    dgh_all = alloc((T, B, 3 * H), dtype, padded)
    hidden = alloc((T, B, H), dtype, padded)
    # The forward-only factors, a block of steps at a time (_blocks): 1 - z, 1 - n², σ' = s ⊙ (1 - s) on r and z,
    # h_{t-1} - n.
    r_all, z_all, n_all = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :]
    S_prev = S[1:] if reverse else S[:-1]
    span = block_steps(T, B * 3 * H)
    OMZ, TDN, HMN = (np.empty((span, B, H), dtype) for _ in range(3))
    SD = np.empty((span, B, 2 * H), dtype)
    mm, one = np.empty((B, H), dtype), np.ones((), dtype)
    add, multiply = np.add, np.multiply
    dgi_blocks = (dgi_all[..., : 2 * H], dgi_all[..., :H], dgi_all[..., H : 2 * H], dgi_all[..., 2 * H :])
    dgh_blocks = (dgh_all, dgh_all[..., : 2 * H], dgh_all[..., 2 * H :])
    sizes = None if batch_sizes is None else step_sizes(batch_sizes, T, B)
    flushing, i = flush_below > 0.0, 0
    for lo, steps in blocks(T, reverse, span):
        hi, m = lo + len(steps), len(steps)
        np.subtract(one, z_all[lo:hi], out=OMZ[:m])
        np.multiply(n_all[lo:hi], n_all[lo:hi], out=TDN[:m])
        np.subtract(one, TDN[:m], out=TDN[:m])
        np.subtract(one, gates[lo:hi, :, : 2 * H], out=SD[:m])
        np.multiply(gates[lo:hi, :, : 2 * H], SD[:m], out=SD[:m])
        np.subtract(S_prev[lo:hi], n_all[lo:hi], out=HMN[:m])
        per_step = tuple(a[lo:hi] for a in (grad_out, hidden, *dgi_blocks, *dgh_blocks, gh_n, r_all, z_all))
        per_step += (OMZ[:m], TDN[:m], SD[:m], HMN[:m])
        descending = m > 1 and steps[0] > steps[1]
        views = step_views(per_step, (dh_run, mm), None if sizes is None else sizes[lo:hi], descending)
        for go, g, da_rz, da_r, da_z, da_n, dgh, dgh_rz, dgh_n, ghn, r, z, omz, tdn, sd, hmn, dh, w in views:
            add(go, dh, g)  # g_t
            if flushing and i % flush_every == 0:
                flush_now(g, flush_below)
            i += 1
            multiply(g, omz, da_n)  # da_n = (g ⊙ (1 - z)) ⊙ (1 - n²)
            multiply(da_n, tdn, da_n)
            multiply(da_n, ghn, da_r)  # da_r = (da_n ⊙ gh_n) ⊙ σ'_r ...
            multiply(g, hmn, da_z)  # ... da_z = (g ⊙ (h_{t-1} - n)) ⊙ σ'_z ...
            multiply(da_rz, sd, da_rz)  # ... the ⊙ σ' of both in one call
            dgh_rz[...] = da_rz  # dgh = dgi on the r, z blocks
            multiply(da_n, r, dgh_n)  # dgh_n = da_n ⊙ r
            dgh.dot(w_hh, w)  # dh_{t-1} = g ⊙ z + dgh W_hh
            multiply(g, z, dh)
            add(dh, w, dh)
    return dict(dgi=dgi_all, dgh=dgh_all, dh0=dh_run, hidden_grads=hidden)


class GRU(RecurrentBase):
    """GRU with the interface and semantics of ``torch.nn.GRU`` (gate order r, z, n).

    r, z = σ(x W_i·ᵀ + b_i· + h W_h·ᵀ + b_h·), n = tanh(x W_inᵀ + b_in + r ⊙ (h W_hnᵀ + b_hn)),
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}. ``forward(x, h0=None, lengths=None)`` -> ``output, h_n`` (or torch's
    names ``input=``, ``hx=``);
    ``backward(grad_output, grad_h_n=None)`` -> ``grad_x, grad_h0``; shapes, lengths, dropout and
    ``hidden_grads`` as :class:`RNN`. The math is this module's.
    """

    GATES, NAME = 3, "GRU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        dtype: DTypeLike = np.float32,
        seed: SeedLike = None,
        flush_below: float | None = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            dtype=dtype,
            seed=seed,
            flush_below=flush_below,
            flush_every=flush_every,
        )

    def _forward(self, x=_UNSET, h0=_UNSET, lengths=None, *, input=_UNSET, hx=_UNSET, dropout_masks=None):
        """Returns ``((output, h_n), cache)``; as :meth:`RNN._forward` (``input=`` / ``hx=``: torch's names)."""
        x, h0 = torch_alias("x", x, "input", input), torch_alias("h0", h0, "hx", hx, None)
        (output, (h_n,)), cache = self._run_forward(x, (h0,), lengths, dropout_masks)
        return (output, h_n), cache

    def _backward(self, c, grad_output=None, grad_h_n=None):
        (grad_x, (grad_h0,)), grads = self._run_backward(c, grad_output, (grad_h_n,))
        return (grad_x, grad_h0), grads

    def _direction_forward(self, x, state0, layer, d, ctx):
        x_proj = input_projection(x, self._p("weight_ih", layer, d), self._p("bias_ih", layer, d))
        cache = gru_sequence_forward(
            x_proj, state0[0], self._p("weight_hh", layer, d), self._p("bias_hh", layer, d), ctx["batch_sizes"], d == 1
        )
        return (cache["h"][:-1] if d == 1 else cache["h"][1:]), (cache["h_n"],), cache

    def _direction_backward(self, d_out, d_finals, cache, layer, d, ctx, out):
        T, B = ctx["T"], ctx["B"]
        w_ih, reverse = self._p("weight_ih", layer, d), d == 1
        res = gru_sequence_backward(
            d_out,
            d_finals[0],
            cache,
            self._p("weight_hh", layer, d),
            ctx["batch_sizes"],
            reverse,
            flush_below=self.flush_below,
            flush_every=self.flush_every,
        )
        out["hidden"][...] = res["hidden_grads"]
        wg = gru_weight_gradients(res["dgi"], res["dgh"], ctx["layer_in"], cache, reverse, self.bias)
        grads = {"weight_ih": wg["w_ih"], "weight_hh": wg["w_hh"]}
        if self.bias:
            grads["bias_ih"], grads["bias_hh"] = wg["b_ih"], wg["b_hh"]
        dx = np.dot(res["dgi"].reshape(T * B, -1), w_ih).reshape(T, B, w_ih.shape[1])
        return dx, (res["dh0"],), grads
