"""The LSTM cell (torch's): its layout, its math one pure function per step, its sequence loops and the
``LSTM`` layer, in NumPy alone.

One layer and one direction at a time; the layers, directions, layouts, dropout and validation are the
stack's (:class:`~scratch_rnn.cells.base.RecurrentBase`). Notation (torch's, not the textbook variants), x_t
the layer input, B the batch, H the hidden size, P the projection size (``proj_size``; ``out`` = P if P > 0
else H).

Parameters (torch's names, per layer k and direction, ``_reverse`` for the second): gate order i, f, g, o,
the row blocks of ``weight_ih_l{k}`` (4H, I_k) and ``weight_hh_l{k}`` (4H, out); ``bias_ih_l{k}``,
``bias_hh_l{k}`` (4H,); with P > 0 ``weight_hr_l{k}`` (P, H). The layout and torch's default initialisation,
U(±1/√H), are the stack's (``GATES = 4``, ``STATES = ("h", "c")``). Option: ``proj_size`` (0 <= P < H).

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh                           # (B, 4H)
    i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)                      # (B, H) each
    c_t = f ⊙ c_{t-1} + i ⊙ g                                                 # (B, H)
    m_t = o ⊙ tanh(c_t)                                                       # (B, H)
    h_t = m_t  (P = 0)   or   h_t = m_t W_hrᵀ,  W_hr (P, H)  (P > 0)          # (B, out)

Backpropagation through time, with g_t = dL/dh_t and k_t = dL/dc_t *total* derivatives (what
reaches the state from the output at step t plus what flows back from step t+1):

    g_t   = dL/dout_t + da_{t+1} W_hh               (da_T W_hh := dL/dh_n)
    dm_t  = g_t  (P = 0)   or   g_t W_hr  (P > 0)   dW_hr = Σ_t g_tᵀ m_t  (g_t, not dm_t)
    k_t   = k'_{t+1} + dm_t ⊙ o ⊙ (1 - tanh² c_t)   (k'_{t+1} = k_{t+1} ⊙ f_{t+1}, k'_T := dL/dc_n)
    da_i  = k_t ⊙ g ⊙ i(1 - i)     da_f = k_t ⊙ c_{t-1} ⊙ f(1 - f)
    da_g  = k_t ⊙ i ⊙ (1 - g²)     da_o = dm_t ⊙ tanh(c_t) ⊙ o(1 - o)
    dW_ih = Σ_t da_tᵀ x_t    dW_hh = Σ_t da_tᵀ h_{t-1}    db_ih = db_hh = Σ_t da_t    dx_t = da_t W_ih

Packed lengths and the state buffers S (T + 1, B, out) and C (T + 1, B, H) follow
:mod:`~scratch_rnn.cells.loops`' conventions.

Reading order: the step functions (:func:`lstm_step_forward`, :func:`lstm_step_backward`), then the readable
sequence loops built from them (:func:`lstm_stepwise_forward`, :func:`lstm_stepwise_backward`: the step
function on the active rows of each step, fresh arrays per step; the executed reference, held to torch
autograd by tests/test_gated_functional.py) and the weight gradients, one GEMM each over all steps
(:func:`lstm_weight_gradients`), then the loops the model runs (:func:`lstm_sequence_forward`,
:func:`lstm_sequence_backward`), then the layer :class:`LSTM`.

The loops the model runs compute the stepwise loops' numbers with the same operations in the same order,
so the results are equal **bit for bit** (tests/test_gated_loops.py, float32 and float64, every option):
every result is written into a preallocated buffer (``out=``); ``ndarray.dot(b, out)`` for ``@`` (the same
BLAS call, a third of the call's cost) and 0-d arrays for the constants 0 and 1; the backward's factors
that depend on the forward alone (σ'(a) = s ⊙ (1 - s), tanh'(a) = 1 - y²) are computed for a block of
consecutive steps in one call each (:func:`~scratch_rnn.cells.loops.blocks`; elementwise operations do not
depend on how many elements a call covers); the four products da_i = (k ⊙ g) ⊙ σ'_i,
da_f = (k ⊙ c_{t-1}) ⊙ σ'_f, da_g = (k ⊙ i) ⊙ tanh'_g, da_o = (dm ⊙ tanh c) ⊙ σ'_o are three calls instead of
eight (one broadcast over a (B, 3, H) view, one for o, one ⊙ over the four blocks); σ takes five calls
(:mod:`~scratch_rnn.cells.loops`, after ``sigmoid``); and each step's views are walked in C
(:func:`~scratch_rnn.cells.loops.step_views`, docs/performance.md, "The batch-1 regime").
Only the order of *independent* operations changes, never the operands of one, so nothing is
re-associated: each product keeps the grouping of the step function's expression (``dc + dm * o * tanh'`` is
``dc + ((dm ⊙ o) ⊙ tanh')`` in both), and the GEMMs get the very operands of the step functions
(``h_prev @ w_hh.T``, ``da @ w_hh``), so BLAS makes the same call. Their signatures and returned dicts are
those of the stepwise loops (the dicts may share memory between entries where the values are equal: "dm" is
"hidden_grads" itself without a projection).
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
    "LSTM",
    "LSTMStepCache",
    "lstm_gates",
    "lstm_step_forward",
    "lstm_step_backward",
    "lstm_stepwise_forward",
    "lstm_stepwise_backward",
    "lstm_weight_gradients",
    "lstm_sequence_forward",
    "lstm_sequence_backward",
    "input_projection",
]


# --------------------------------------------------------------------------------------------
# LSTM, one time step
# --------------------------------------------------------------------------------------------
class LSTMStepCache(NamedTuple):
    """What one LSTM step keeps for its backward (and for the weight gradients)."""

    h_prev: np.ndarray  # (B, out)
    c_prev: np.ndarray  # (B, H)
    gates: np.ndarray  # (B, 4H): i, f, g, o after their nonlinearities
    tanh_c: np.ndarray  # (B, H)
    m: np.ndarray  # (B, H), o ⊙ tanh(c): h itself when there is no projection


def lstm_gates(a: np.ndarray) -> np.ndarray:
    """(B, 4H) pre-activations -> (B, 4H) activations: σ on the i, f, o blocks, tanh on the g block."""
    H = a.shape[-1] // 4
    gates = sigmoid(a)
    gates[..., 2 * H : 3 * H] = np.tanh(a[..., 2 * H : 3 * H])
    return gates


def lstm_step_forward(
    x_proj: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, w_hh: np.ndarray, w_hr: np.ndarray | None = None
):
    """One LSTM step.

    x_proj: (B, 4H) = x_t W_ihᵀ + b_ih + b_hh; h_prev: (B, out); c_prev: (B, H);
    w_hh: (4H, out); w_hr: (P, H) or None (no projection, out = H).
    Returns (h (B, out), c (B, H), cache: LSTMStepCache).
    """
    H = c_prev.shape[-1]
    a = x_proj + h_prev @ w_hh.T
    gates = lstm_gates(a)
    i, f, g, o = (gates[:, k * H : (k + 1) * H] for k in range(4))
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    m = o * tanh_c
    h = m if w_hr is None else m @ w_hr.T
    return h, c, LSTMStepCache(h_prev, c_prev, gates, tanh_c, m)


def _lstm_step_backward(dh, dc, cache: LSTMStepCache, w_hh, w_hr):
    """:func:`lstm_step_backward`, also returning the total dL/dc_t (the sequence's cell_grads)."""
    H = cache.c_prev.shape[-1]
    i, f, g, o = (cache.gates[:, k * H : (k + 1) * H] for k in range(4))
    dm = dh if w_hr is None else dh @ w_hr  # (B, H)
    dc_total = dc + dm * o * tanh_derivative(cache.tanh_c)  # k_t = dL/dc_t, total
    da = np.empty_like(cache.gates)
    da[:, 0 * H : 1 * H] = dc_total * g * sigmoid_derivative(i)
    da[:, 1 * H : 2 * H] = dc_total * cache.c_prev * sigmoid_derivative(f)
    da[:, 2 * H : 3 * H] = dc_total * i * tanh_derivative(g)
    da[:, 3 * H : 4 * H] = dm * cache.tanh_c * sigmoid_derivative(o)
    dh_prev = da @ w_hh
    dc_prev = dc_total * f
    return da, dh_prev, dc_prev, dm, dc_total


def lstm_step_backward(
    dh: np.ndarray, dc: np.ndarray, cache: LSTMStepCache, w_hh: np.ndarray, w_hr: np.ndarray | None = None
):
    """Backward of :func:`lstm_step_forward`.

    dh: (B, out), the total dL/dh_t; dc: (B, H), the dL/dc_t that comes from step t+1 (before this
    step adds the path through h_t = o ⊙ tanh(c_t)); cache from the forward; w_hh: (4H, out);
    w_hr: (P, H) or None.
    Returns (da, dh_prev, dc_prev, dm):
    da (B, 4H) = dL/da_t, the pre-activations (dW_ih, dW_hh, db and dx are built from it);
    dh_prev (B, out) = da W_hh; dc_prev (B, H) = (dc + dm ⊙ o ⊙ (1 - tanh² c)) ⊙ f;
    dm (B, H) = dL/dm_t = dh itself (no projection) or dh W_hr. (This step's dW_hr share is dhᵀ m, summed
    over all steps by the caller.)
    """
    da, dh_prev, dc_prev, dm, _ = _lstm_step_backward(dh, dc, cache, w_hh, w_hr)
    return da, dh_prev, dc_prev, dm


# --------------------------------------------------------------------------------------------
# One layer, one direction, over the whole sequence: the readable loops (the executed reference)
# --------------------------------------------------------------------------------------------
def lstm_stepwise_forward(
    x_proj: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    w_hh: np.ndarray,
    w_hr: np.ndarray | None,
    batch_sizes: np.ndarray | None,
    reverse: bool,
) -> dict:
    """The LSTM recurrence over all steps of one layer and direction.

    x_proj: (T, B, 4H), bias included (:func:`input_projection` with b_ih + b_hh); h0: (B, out);
    c0: (B, H); w_hh: (4H, out); w_hr: (P, H) or None; batch_sizes: (T,) or None; reverse: bool.
    Returns the cache, a dict:
      "h": S (T + 1, B, out) and "c": C (T + 1, B, H), the state buffers (module docstring);
      "gates": (T, B, 4H) i, f, g, o; "tanh_c": (T, B, H); "m": (T, B, H) (a view of the states when
      there is no projection) — all zero at padded steps;
      "h_n": (B, out), "c_n": (B, H), each sequence's state at its own last valid step.
    """
    T, B, G = x_proj.shape
    H, out = G // 4, h0.shape[-1]
    dtype = x_proj.dtype
    S = np.zeros((T + 1, B, out), dtype=dtype)
    C = np.zeros((T + 1, B, H), dtype=dtype)
    gates = np.zeros((T, B, G), dtype=dtype)
    tanh_c = np.zeros((T, B, H), dtype=dtype)
    m = np.zeros((T, B, H), dtype=dtype) if w_hr is not None else None
    for t, n in forward_steps(T, batch_sizes, reverse, (S, C), (h0, c0)):
        p, q = read_slot(t, reverse), read_slot(t, not reverse)
        h, c, cache = lstm_step_forward(x_proj[t, :n], S[p, :n], C[p, :n], w_hh, w_hr)
        S[q, :n], C[q, :n] = h, c
        gates[t, :n], tanh_c[t, :n] = cache.gates, cache.tanh_c
        if m is not None:
            m[t, :n] = cache.m
    if m is None:
        m = S[:-1] if reverse else S[1:]
    h_n, c_n = finals((S, C), batch_sizes, reverse)
    return dict(h=S, c=C, gates=gates, tanh_c=tanh_c, m=m, h_n=h_n, c_n=c_n)


def _lstm_step_cache(cache: dict, t: int, n: int, reverse: bool) -> LSTMStepCache:
    """Step t's LSTMStepCache (its first n rows) from the sequence cache."""
    p = read_slot(t, reverse)
    return LSTMStepCache(
        cache["h"][p, :n], cache["c"][p, :n], cache["gates"][t, :n], cache["tanh_c"][t, :n], cache["m"][t, :n]
    )


def lstm_stepwise_backward(
    grad_out: np.ndarray,
    grad_h_last: np.ndarray | None,
    grad_c_last: np.ndarray | None,
    cache: dict,
    w_hh: np.ndarray,
    w_hr: np.ndarray | None,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    flush_below: float = 0.0,
    flush_every: int = 1,
) -> dict:
    """BPTT through :func:`lstm_stepwise_forward`.

    grad_out: (T, B, out), dL/dh_t from above (any strides); grad_h_last: (B, out) = dL/dh_n and
    grad_c_last: (B, H) = dL/dc_n (None: zero), entering each sequence at its own last valid step.
    flush_below, flush_every: the subnormal flush (:func:`~scratch_rnn.cells.loops.flush`), applied to g_t (the total
    dL/dh_t) and to the dL/dc_t arriving from step t+1; 0 disables it.
    Returns a dict, every (T, ...) entry zero at padded steps:
      "da" (T, B, 4H) = dL/da_t; "dh0" (B, out); "dc0" (B, H);
      "hidden_grads" (T, B, out) = g_t, the total dL/dh_t;
      "cell_grads" (T, B, H) = k_t, the total dL/dc_t (from c_{t+1} and from h_t);
      "dm" (T, B, H) = dL/dm_t.
    """
    T, B, out = grad_out.shape
    H = cache["c"].shape[-1]
    dtype = cache["h"].dtype
    dh_run = np.zeros((B, out), dtype) if grad_h_last is None else np.array(grad_h_last, dtype=dtype)
    dc_run = np.zeros((B, H), dtype) if grad_c_last is None else np.array(grad_c_last, dtype=dtype)
    da_all = np.zeros((T, B, 4 * H), dtype)
    hidden = np.zeros((T, B, out), dtype)
    cell = np.zeros((T, B, H), dtype)
    dm_all = np.zeros((T, B, H), dtype)
    sizes = step_sizes(batch_sizes, T, B)
    for i, t in enumerate(reversed(visit_order(T, reverse))):
        n = sizes[t]
        g = grad_out[t, :n] + dh_run[:n]  # g_t = dL/dout_t + da_{t+1} W_hh
        flush(g, flush_below, i, flush_every)
        flush(dc_run[:n], flush_below, i, flush_every)
        da, dh_prev, dc_prev, dm, dc_total = _lstm_step_backward(
            g, dc_run[:n], _lstm_step_cache(cache, t, n, reverse), w_hh, w_hr
        )
        hidden[t, :n], cell[t, :n], da_all[t, :n], dm_all[t, :n] = g, dc_total, da, dm
        dh_run[:n], dc_run[:n] = dh_prev, dc_prev
    return dict(da=da_all, dh0=dh_run, dc0=dc_run, hidden_grads=hidden, cell_grads=cell, dm=dm_all)


def lstm_weight_gradients(
    da: np.ndarray, x: np.ndarray, cache: dict, hidden_grads: np.ndarray | None, reverse: bool, bias: bool, proj: bool
) -> dict:
    """The LSTM's weight gradients, one GEMM (or one sum) each over all steps.

    da: (T, B, 4H) from :func:`lstm_sequence_backward` (or :func:`lstm_stepwise_backward`); x: (T, B, I), the
    layer input; cache from the forward; hidden_grads: (T, B, P), the backward's "hidden_grads" (the *total*
    dL/dh_t, not "dm"), read only when proj (may be None otherwise).
    Returns dict(w_ih (4H, I) = Σ daᵀ x, w_hh (4H, out) = Σ daᵀ h_prev, b (4H,) = Σ da (the gradient of
    b_ih and of b_hh alike) or None, w_hr (P, H) = Σ hidden_gradsᵀ m or None).
    """
    T, B, G = da.shape
    S = cache["h"]
    d2 = da.reshape(T * B, G)
    h_prev = S[1:] if reverse else S[:-1]  # the state each step read
    grads = dict(
        w_ih=d2.T @ x.reshape(T * B, x.shape[-1]),
        w_hh=d2.T @ h_prev.reshape(T * B, S.shape[-1]),
        b=d2.sum(axis=0) if bias else None,
        w_hr=None,
    )
    if proj:
        P, H = S.shape[-1], G // 4
        if hidden_grads is None or hidden_grads.shape != (T, B, P):
            raise ValueError(
                f"lstm_weight_gradients: dW_hr = Σ gᵀ m needs the total hidden grads (T, B, P) = "
                f"{(T, B, P)}, got {None if hidden_grads is None else hidden_grads.shape} "
                f"(dm (T, B, H) is not it)"
            )
        grads["w_hr"] = hidden_grads.reshape(T * B, P).T @ cache["m"].reshape(T * B, H)
    return grads


# --------------------------------------------------------------------------------------------
# The loops the model runs: the readable loops rewritten for speed, equal bit for bit
# --------------------------------------------------------------------------------------------
def lstm_sequence_forward(
    x_proj: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    w_hh: np.ndarray,
    w_hr: np.ndarray | None,
    batch_sizes: np.ndarray | None,
    reverse: bool,
) -> dict:
    """The loop the model runs: :func:`lstm_stepwise_forward`, bit for bit (same arguments, same dict)."""
    T, B, G = x_proj.shape
    H, out = G // 4, h0.shape[-1]
    dtype, padded = x_proj.dtype, batch_sizes is not None
    S = alloc((T + 1, B, out), dtype, padded)
    C = alloc((T + 1, B, H), dtype, padded)
    gates = alloc((T, B, G), dtype, padded)
    tanh_c = alloc((T, B, H), dtype, padded)
    m = alloc((T, B, H), dtype, padded) if w_hr is not None else None
    a, E, work = np.empty((B, G), dtype), np.empty((B, 2, G), dtype), np.empty((B, H), dtype)
    minus_one, zero, one = np.full((), -1, dtype), np.zeros((), dtype), np.ones((), dtype)
    w_t = w_hh.T  # the step function's operand (ndarray.dot with out= makes @'s BLAS call, cheaper)
    w_rt = None if w_hr is None else w_hr.T
    add, multiply, divide, tanh, exp, minimum, copysign = (
        np.add,
        np.multiply,
        np.divide,
        np.tanh,
        np.exp,
        np.minimum,
        np.copysign,
    )
    S_read, S_write = (S[1:], S[:-1]) if reverse else (S[:-1], S[1:])  # [t]: the slot step t reads, writes
    C_read, C_write = (C[1:], C[:-1]) if reverse else (C[:-1], C[1:])
    i_all, f_all, g_all, o_all = (gates[..., k * H : (k + 1) * H] for k in range(4))
    m_write = S_write if m is None else m  # where m_t = o ⊙ tanh(c_t) goes: h_t itself without a projection
    per_step = (S_read, C_read, C_write, x_proj, gates, i_all, f_all, g_all, o_all, tanh_c, S_write, m_write)
    scratch = (a, a[:, 2 * H : 3 * H], E, E[:, 0], E[:, 1], work)
    steps = forward_views(T, batch_sizes, reverse, (S, C), (h0, c0), per_step, scratch)
    for h_prev, c_prev, c, xp, gt, i, f, g, o, tc, h, mt, an, a_g, ee, e, num, w in steps:
        h_prev.dot(w_t, an)  # h_{t-1} W_hhᵀ
        add(xp, an, an)  # a_t = x_t W_ihᵀ + b + h_{t-1} W_hhᵀ
        copysign(an, minus_one, e)  # σ(a_t) (loops.sigmoid, five calls): -|a|, then e = exp(-|a|) ...
        minimum(an, zero, out=num)  # ... and the numerator exp(min(a, 0)), both in one exp
        exp(ee, ee)
        add(e, one, gt)  # 1 + e
        divide(num, gt, gt)  # i, f, o = σ(a) (the g block's σ is overwritten next, as the step function does)
        tanh(a_g, g)  # g = tanh(a_g)
        multiply(f, c_prev, c)  # c_t = f ⊙ c_{t-1} + i ⊙ g
        multiply(i, g, w)
        add(c, w, c)
        tanh(c, tc)
        multiply(o, tc, mt)  # m_t = o ⊙ tanh(c_t): h_t without a projection
        if w_rt is not None:
            mt.dot(w_rt, h)  # h_t = m_t W_hrᵀ
    if m is None:
        m = S_write
    h_n, c_n = finals((S, C), batch_sizes, reverse)
    return dict(h=S, c=C, gates=gates, tanh_c=tanh_c, m=m, h_n=h_n, c_n=c_n)


def lstm_sequence_backward(
    grad_out: np.ndarray,
    grad_h_last: np.ndarray | None,
    grad_c_last: np.ndarray | None,
    cache: dict,
    w_hh: np.ndarray,
    w_hr: np.ndarray | None,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    flush_below: float = 0.0,
    flush_every: int = 1,
) -> dict:
    """The loop the model runs: :func:`lstm_stepwise_backward`, bit for bit (same arguments, same dict)."""
    T, B, out = grad_out.shape
    C, gates, tanh_c = cache["c"], cache["gates"], cache["tanh_c"]
    H = C.shape[-1]
    dtype, padded = cache["h"].dtype, batch_sizes is not None
    dh_run = np.zeros((B, out), dtype) if grad_h_last is None else np.array(grad_h_last, dtype=dtype)
    dc_run = np.zeros((B, H), dtype) if grad_c_last is None else np.array(grad_c_last, dtype=dtype)
    da_all = alloc((T, B, 4 * H), dtype, padded)
    hidden = alloc((T, B, out), dtype, padded)
    cell = alloc((T, B, H), dtype, padded)
    dm_all = alloc((T, B, H), dtype, padded) if w_hr is not None else hidden
    # The forward-only factors, a block of steps at a time (_blocks): deriv = (σ'_i, σ'_f, tanh'_g, σ'_o), with
    # σ' = s ⊙ (1 - s) and tanh'_g = 1 - g²; TD = 1 - tanh² c; and X = (g, c_{t-1}, i), the second factors of
    # da_i, da_f, da_g against deriv's blocks i, f, g.
    span = block_steps(T, B * 4 * H)
    deriv, TD, X = np.empty((span, B, 4 * H), dtype), np.empty((span, B, H), dtype), np.empty((span, B, 3, H), dtype)
    da3_all, do_all = da_all.reshape(T, B, 4, H)[:, :, :3], da_all[..., 3 * H :]
    f_all, o_all = gates[..., H : 2 * H], gates[..., 3 * H :]
    cell1 = cell[:, :, None, :]  # k_t as (B, 1, H), broadcast over X's three blocks
    C_prev = C[1:] if reverse else C[:-1]
    one = np.ones((), dtype)
    add, multiply = np.add, np.multiply
    sizes = None if batch_sizes is None else step_sizes(batch_sizes, T, B)
    flushing, i = flush_below > 0.0, 0
    for lo, steps in blocks(T, reverse, span):
        hi = lo + len(steps)
        d, td, gb, tcb = deriv[: hi - lo], TD[: hi - lo], gates[lo:hi], tanh_c[lo:hi]
        np.subtract(one, gb, out=d)
        np.multiply(gb, d, out=d)
        gg, dg = gb[..., 2 * H : 3 * H], d[..., 2 * H : 3 * H]
        np.multiply(gg, gg, out=dg)
        np.subtract(one, dg, out=dg)
        np.multiply(tcb, tcb, out=td)
        np.subtract(one, td, out=td)
        X[: hi - lo, :, 0], X[: hi - lo, :, 1], X[: hi - lo, :, 2] = gg, C_prev[lo:hi], gb[..., :H]
        per_step = tuple(a[lo:hi] for a in (grad_out, hidden, dm_all, cell, cell1, da_all, da3_all, do_all))
        per_step += tuple(a[lo:hi] for a in (f_all, o_all, tanh_c)) + (td, X[: hi - lo], d)
        descending = len(steps) > 1 and steps[0] > steps[1]
        views = step_views(per_step, (dh_run, dc_run), None if sizes is None else sizes[lo:hi], descending)
        for go, g, dm, k, k1, da, da3, do, f, o, tc, tdj, x3, dj, dh, dc in views:
            add(go, dh, g)  # g_t = dL/dout_t + da_{t+1} W_hh
            if flushing and i % flush_every == 0:
                flush_now(g, flush_below)
                flush_now(dc, flush_below)
            i += 1
            if w_hr is not None:
                g.dot(w_hr, dm)  # dm_t = g_t W_hr (without a projection dm is g itself)
            multiply(dm, o, k)  # k_t = dc + (dm ⊙ o) ⊙ (1 - tanh² c_t)
            multiply(k, tdj, k)
            add(dc, k, k)
            multiply(k1, x3, da3)  # (k ⊙ g, k ⊙ c_{t-1}, k ⊙ i) into da's blocks i, f, g ...
            multiply(dm, tc, do)  # ... and dm ⊙ tanh c_t into its block o; then da_t = those
            multiply(da, dj, da)  # ⊙ (σ'_i, σ'_f, tanh'_g, σ'_o), one call over the four blocks
            da.dot(w_hh, dh)  # da_t W_hh, into h_{t-1}
            multiply(k, f, dc)  # k_t ⊙ f, into c_{t-1}
    return dict(da=da_all, dh0=dh_run, dc0=dc_run, hidden_grads=hidden, cell_grads=cell, dm=dm_all)


def _pair(name: str, value) -> tuple:
    """``value`` as a pair (a, b), either entry may be None; None itself is (None, None)."""
    if value is None:
        return (None, None)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        length = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
        raise TypeError(
            f"{name}: expected a pair (h, c) of arrays (either may be None) or None, got {type(value).__name__}{length}"
        )
    return tuple(value)


class LSTM(RecurrentBase):
    """LSTM with the interface and semantics of ``torch.nn.LSTM`` (gate order i, f, g, o; ``proj_size``).

    i, f, o = σ(x W_i·ᵀ + b_i· + h W_h·ᵀ + b_h·), g = tanh(…), c_t = f ⊙ c_{t-1} + i ⊙ g,
    h_t = o ⊙ tanh(c_t), or with ``proj_size`` P > 0, h_t = (o ⊙ tanh(c_t)) W_hrᵀ.
    ``forward(x, hx=None, lengths=None)`` -> ``output, (h_n, c_n)`` with hx = (h0, c0) or None (``input=``
    is accepted for ``x``, as torch names it);
    ``backward(grad_output, grad_hx=None)`` -> ``grad_x, (grad_h0, grad_c0)`` with grad_hx = (grad_h_n,
    grad_c_n), either may be None. h0/h_n are (D·L, N, P or H), c0/c_n (D·L, N, H); output's last
    dimension D·(P or H). After backward, ``hidden_grads`` (D·L, T, N, P or H) = dL/dh_t and
    ``cell_grads`` (D·L, T, N, H) = dL/dc_t, time-major, zero at padded steps. The math is this module's;
    everything else is :class:`RecurrentBase`, shared with ``RNN``.
    """

    GATES, STATES, NAME = 4, ("h", "c"), "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
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
            proj_size,
            dtype=dtype,
            seed=seed,
            flush_below=flush_below,
            flush_every=flush_every,
        )
        self.cell_grads = None

    def _forward(self, x=_UNSET, hx=None, lengths=None, *, input=_UNSET, dropout_masks=None):
        """Returns ``((output, (h_n, c_n)), cache)``; ``input=`` is torch's name of ``x``; see :meth:`RNN._forward`
        for ``dropout_masks``."""
        x = torch_alias("x", x, "input", input)
        (output, (h_n, c_n)), cache = self._run_forward(x, _pair("hx", hx), lengths, dropout_masks)
        return (output, (h_n, c_n)), cache

    def _backward(self, c, grad_output=None, grad_hx=None):
        (grad_x, (grad_h0, grad_c0)), grads = self._run_backward(c, grad_output, _pair("grad_hx", grad_hx))
        return (grad_x, (grad_h0, grad_c0)), grads

    def _direction_forward(self, x, state0, layer, d, ctx):
        b = None if not self.bias else self._p("bias_ih", layer, d) + self._p("bias_hh", layer, d)
        x_proj = input_projection(x, self._p("weight_ih", layer, d), b)
        cache = lstm_sequence_forward(
            x_proj,
            state0[0],
            state0[1],
            self._p("weight_hh", layer, d),
            self._p("weight_hr", layer, d),
            ctx["batch_sizes"],
            d == 1,
        )
        return (cache["h"][:-1] if d == 1 else cache["h"][1:]), (cache["h_n"], cache["c_n"]), cache

    def _direction_backward(self, d_out, d_finals, cache, layer, d, ctx, out):
        T, B = ctx["T"], ctx["B"]
        w_ih, reverse = self._p("weight_ih", layer, d), d == 1
        res = lstm_sequence_backward(
            d_out,
            d_finals[0],
            d_finals[1],
            cache,
            self._p("weight_hh", layer, d),
            self._p("weight_hr", layer, d),
            ctx["batch_sizes"],
            reverse,
            flush_below=self.flush_below,
            flush_every=self.flush_every,
        )
        out["hidden"][...] = res["hidden_grads"]
        out["cell"][...] = res["cell_grads"]
        wg = lstm_weight_gradients(
            res["da"], ctx["layer_in"], cache, res["hidden_grads"], reverse, self.bias, self.proj_size > 0
        )
        grads = {"weight_ih": wg["w_ih"], "weight_hh": wg["w_hh"]}
        if self.bias:
            grads["bias_ih"] = grads["bias_hh"] = wg["b"]
        if self.proj_size:
            grads["weight_hr"] = wg["w_hr"]
        dx = np.dot(res["da"].reshape(T * B, -1), w_ih).reshape(T, B, w_ih.shape[1])
        return dx, (res["dh0"], res["dc0"]), grads
