"""The math of torch's LSTM and GRU cells, one pure function per step, in NumPy alone.

One layer and one direction at a time; the layers, directions, layouts, dropout and validation are
the caller's. Notation (torch's, not the textbook variants), x_t the layer input, B the batch, H the
hidden size, P the projection size (LSTM ``proj_size``; ``out`` = P if P > 0 else H):

LSTM, gate order i, f, g, o (the row blocks of W_ih (4H, I) and W_hh (4H, out)):

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh                           # (B, 4H)
    i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)                      # (B, H) each
    c_t = f ⊙ c_{t-1} + i ⊙ g                                                 # (B, H)
    m_t = o ⊙ tanh(c_t)                                                       # (B, H)
    h_t = m_t  (P = 0)   or   h_t = m_t W_hrᵀ,  W_hr (P, H)  (P > 0)          # (B, out)

GRU, gate order r, z, n (the row blocks of W_ih (3H, I) and W_hh (3H, H)):

    gi_t = x_t W_ihᵀ + b_ih      gh_t = h_{t-1} W_hhᵀ + b_hh                 # (B, 3H) each
    r = σ(gi_r + gh_r)   z = σ(gi_z + gh_z)   n = tanh(gi_n + r ⊙ gh_n)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}                                           # (B, H)

r multiplies gh_n = h_{t-1} W_hnᵀ + b_hn *after* the product (torch's and cuDNN's form), so b_hn
cannot be folded into the input projection: the GRU's x_proj carries b_ih only.

Backpropagation through time, with g_t = dL/dh_t and k_t = dL/dc_t *total* derivatives (what
reaches the state from the output at step t plus what flows back from step t+1):

    LSTM  g_t   = dL/dout_t + da_{t+1} W_hh               (da_T W_hh := dL/dh_n)
          dm_t  = g_t  (P = 0)   or   g_t W_hr  (P > 0)   dW_hr = Σ_t g_tᵀ m_t  (g_t, not dm_t)
          k_t   = k'_{t+1} + dm_t ⊙ o ⊙ (1 - tanh² c_t)   (k'_{t+1} = k_{t+1} ⊙ f_{t+1}, k'_T := dL/dc_n)
          da_i  = k_t ⊙ g ⊙ i(1 - i)     da_f = k_t ⊙ c_{t-1} ⊙ f(1 - f)
          da_g  = k_t ⊙ i ⊙ (1 - g²)     da_o = dm_t ⊙ tanh(c_t) ⊙ o(1 - o)
          dW_ih = Σ_t da_tᵀ x_t    dW_hh = Σ_t da_tᵀ h_{t-1}    db_ih = db_hh = Σ_t da_t    dx_t = da_t W_ih
    GRU   g_t   = dL/dout_t + g_{t+1} ⊙ z_{t+1} + dgh_{t+1} W_hh
          da_n  = g_t ⊙ (1 - z) ⊙ (1 - n²)      dgi_n = da_n       dgh_n = da_n ⊙ r
          da_r  = da_n ⊙ gh_n ⊙ r(1 - r)        dgi_r = dgh_r = da_r
          da_z  = g_t ⊙ (h_{t-1} - n) ⊙ z(1 - z)  dgi_z = dgh_z = da_z
          dW_ih = Σ_t dgi_tᵀ x_t   dW_hh = Σ_t dgh_tᵀ h_{t-1}   db_ih = Σ_t dgi_t   db_hh = Σ_t dgh_t
          dx_t  = dgi_t W_ih       (db_ih and db_hh differ in the n block)

Variable lengths follow torch's packed sequences, as in ``functional.py``: rows sorted by decreasing
length, ``batch_sizes[t]`` rows active at step t (None: every sequence has length T). State buffers
S (T + 1, B, out) (and, for the LSTM, C (T + 1, B, H)) hold the initial state where the recurrence
starts: forward S[0] = h0, S[t + 1] = h_t; reverse S[T] = h0, S[t] = h_t, and a sequence whose own last
valid step is t < T - 1 starts from its h0, copied into S[t + 1] when its rows become active. Every
other entry at a padded step is zero (so the *output* view of a reverse direction, S[:-1], still holds
those h0 copies at padded steps: the caller zeroes them, as rnn.py does).

Readability first: the sequence loops call the step functions on the active rows (fresh arrays per
step); the input projection of all steps is one GEMM before the loop (:func:`input_projection`) and the
weight gradients are one GEMM each after it (:func:`lstm_weight_gradients`, :func:`gru_weight_gradients`).
The models run :mod:`scratch_rnn.gated_loops` instead, the same loops written for speed and held to
these bit for bit (tests/test_gated_loops.py): these are the executed reference.
Every function takes float32 or float64 arrays (one dtype throughout) and returns that dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


# --------------------------------------------------------------------------------------------
# The nonlinearity
# --------------------------------------------------------------------------------------------
def sigmoid(a: np.ndarray) -> np.ndarray:
    """σ(a) = 1 / (1 + e^{-a}), elementwise, stable for any finite a (no overflow, no warning).

    With e = exp(-|a|) <= 1: σ(a) = 1 / (1 + e) for a >= 0 (torch's formula, term for term) and
    e / (1 + e) for a < 0 (torch's 1 / (1 + e^{-a}) rewritten; within an ulp or two of it).
    The limits are exact: σ(1e3) = 1 and σ(-1e3) = 0. NaN stays NaN.
    """
    e = np.exp(-np.abs(a))
    numerator = np.where(a >= 0, e.dtype.type(1), e)
    return numerator / (1 + e)


def sigmoid_derivative(s: np.ndarray) -> np.ndarray:
    """σ'(a) written from s = σ(a): s ⊙ (1 - s)."""
    return s * (1 - s)


def tanh_derivative(y: np.ndarray) -> np.ndarray:
    """tanh'(a) written from y = tanh(a): 1 - y²."""
    return 1 - y * y


def input_projection(x: np.ndarray, w_ih: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x W_ihᵀ + b for every step at once, one GEMM: (T, B, I) -> (T, B, G) with G = w_ih.shape[0].

    LSTM: b = b_ih + b_hh (G = 4H). GRU: b = b_ih alone (G = 3H; b_hh stays inside the step).
    """
    T, B, I = x.shape
    out = np.dot(x.reshape(T * B, I), w_ih.T).reshape(T, B, w_ih.shape[0])
    if b is not None:
        out += b
    return out


def padding_mask(batch_sizes: np.ndarray, B: int) -> np.ndarray:
    """(T, B) bool: True where row b is a padded step at time t (b >= batch_sizes[t])."""
    return np.arange(B)[None, :] >= np.asarray(batch_sizes)[:, None]


def lengths_from_batch_sizes(batch_sizes: np.ndarray, B: int) -> np.ndarray:
    """(B,) int: each (sorted) row's length, the number of steps at which it is active."""
    return (np.asarray(batch_sizes)[:, None] > np.arange(B)[None, :]).sum(axis=0)


def final_states(S: np.ndarray, batch_sizes: np.ndarray | None, lengths_sorted: np.ndarray | None,
                 reverse: bool) -> np.ndarray:
    """Each sequence's state at its own last valid step, from a (T + 1, B, ·) state buffer -> (B, ·).

    forward: S[len_b, b]; reverse: S[0, b]. lengths_sorted (B,) may be None (then derived from
    batch_sizes; both None: every length is T).
    """
    T1, B = S.shape[:2]
    if reverse:
        return S[0].copy()
    if batch_sizes is None and lengths_sorted is None:
        return S[T1 - 1].copy()
    if lengths_sorted is None:
        lengths_sorted = lengths_from_batch_sizes(batch_sizes, B)
    return S[np.asarray(lengths_sorted), np.arange(B)]


# --------------------------------------------------------------------------------------------
# LSTM, one time step
# --------------------------------------------------------------------------------------------
class LSTMStepCache(NamedTuple):
    """What one LSTM step keeps for its backward (and for the weight gradients)."""
    h_prev: np.ndarray   # (B, out)
    c_prev: np.ndarray   # (B, H)
    gates: np.ndarray    # (B, 4H): i, f, g, o after their nonlinearities
    tanh_c: np.ndarray   # (B, H)
    m: np.ndarray        # (B, H), o ⊙ tanh(c): h itself when there is no projection


def lstm_gates(a: np.ndarray) -> np.ndarray:
    """(B, 4H) pre-activations -> (B, 4H) activations: σ on the i, f, o blocks, tanh on the g block."""
    H = a.shape[-1] // 4
    gates = sigmoid(a)
    gates[..., 2 * H:3 * H] = np.tanh(a[..., 2 * H:3 * H])
    return gates


def lstm_step_forward(x_proj: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, w_hh: np.ndarray,
                      w_hr: np.ndarray | None = None):
    """One LSTM step.

    x_proj: (B, 4H) = x_t W_ihᵀ + b_ih + b_hh; h_prev: (B, out); c_prev: (B, H);
    w_hh: (4H, out); w_hr: (P, H) or None (no projection, out = H).
    Returns (h (B, out), c (B, H), cache: LSTMStepCache).
    """
    H = c_prev.shape[-1]
    a = x_proj + h_prev @ w_hh.T
    gates = lstm_gates(a)
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    m = o * tanh_c
    h = m if w_hr is None else m @ w_hr.T
    return h, c, LSTMStepCache(h_prev, c_prev, gates, tanh_c, m)


def _lstm_step_backward(dh, dc, cache: LSTMStepCache, w_hh, w_hr):
    """:func:`lstm_step_backward`, also returning the total dL/dc_t (the sequence's cell_grads)."""
    H = cache.c_prev.shape[-1]
    i, f, g, o = (cache.gates[:, k * H:(k + 1) * H] for k in range(4))
    dm = dh if w_hr is None else dh @ w_hr                      # (B, H)
    dc_total = dc + dm * o * tanh_derivative(cache.tanh_c)      # k_t = dL/dc_t, total
    da = np.empty_like(cache.gates)
    da[:, 0 * H:1 * H] = dc_total * g * sigmoid_derivative(i)
    da[:, 1 * H:2 * H] = dc_total * cache.c_prev * sigmoid_derivative(f)
    da[:, 2 * H:3 * H] = dc_total * i * tanh_derivative(g)
    da[:, 3 * H:4 * H] = dm * cache.tanh_c * sigmoid_derivative(o)
    dh_prev = da @ w_hh
    dc_prev = dc_total * f
    return da, dh_prev, dc_prev, dm, dc_total


def lstm_step_backward(dh: np.ndarray, dc: np.ndarray, cache: LSTMStepCache, w_hh: np.ndarray,
                       w_hr: np.ndarray | None = None):
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
# GRU, one time step
# --------------------------------------------------------------------------------------------
class GRUStepCache(NamedTuple):
    """What one GRU step keeps for its backward (and for the weight gradients)."""
    h_prev: np.ndarray   # (B, H)
    gates: np.ndarray    # (B, 3H): r, z, n after their nonlinearities
    gh_n: np.ndarray     # (B, H), h_{t-1} W_hnᵀ + b_hn (what r multiplies)


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
    gates[:, :2 * H] = sigmoid(x_proj[:, :2 * H] + gh[:, :2 * H])        # r, z
    r, z = gates[:, :H], gates[:, H:2 * H]
    gh_n = gh[:, 2 * H:]
    n = np.tanh(x_proj[:, 2 * H:] + r * gh_n)
    gates[:, 2 * H:] = n
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
    r, z, n = (cache.gates[:, k * H:(k + 1) * H] for k in range(3))
    da_n = dh * (1 - z) * tanh_derivative(n)
    da_r = da_n * cache.gh_n * sigmoid_derivative(r)
    da_z = dh * (cache.h_prev - n) * sigmoid_derivative(z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)
    dh_prev = dh * z + dgh @ w_hh
    return dgi, dgh, dh_prev


# --------------------------------------------------------------------------------------------
# One layer, one direction, over the whole sequence
# --------------------------------------------------------------------------------------------
def _order(T: int, reverse: bool):
    """The steps in the order the forward visits them."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _sizes(batch_sizes, T: int, B: int) -> np.ndarray:
    return np.full(T, B) if batch_sizes is None else np.asarray(batch_sizes)


def _prev(t: int, reverse: bool) -> int:
    """The index in a (T + 1, ...) state buffer of the state step t reads; step t writes _prev(t, not reverse)."""
    return t + 1 if reverse else t


def _start_rows(buffers, initials, t: int, n: int, prev_n: int, reverse: bool) -> None:
    """Reverse direction: rows prev_n:n have their own last valid step at t; they start from their
    initial state, written into the slot step t reads."""
    if reverse and n > prev_n:
        for buf, init in zip(buffers, initials):
            buf[t + 1, prev_n:n] = init[prev_n:n]


def _forward_steps(T: int, batch_sizes, reverse: bool, buffers: tuple, initials: tuple):
    """The forward's steps in order, as (t, n) with n the active rows. Writes each initial state into its
    (T + 1, B, ·) buffer where the recurrence starts and, for the reverse direction with lengths, into the
    slot a sequence's first processed step reads, as that sequence becomes active (:func:`_start_rows`)."""
    B = buffers[0].shape[1]
    sizes = _sizes(batch_sizes, T, B)
    for buf, init in zip(buffers, initials):
        buf[T if reverse else 0] = init
    prev_n = 0 if reverse else B
    for t in _order(T, reverse):
        n = sizes[t]
        if batch_sizes is not None:  # full batches: every row starts at the slot written above
            _start_rows(buffers, initials, t, n, prev_n, reverse)
            prev_n = n
        yield t, n


def _finals(buffers: tuple, batch_sizes, reverse: bool) -> tuple:
    """:func:`final_states` of each (T + 1, B, ·) state buffer, the lengths derived once."""
    B = buffers[0].shape[1]
    lengths = None if batch_sizes is None else lengths_from_batch_sizes(batch_sizes, B)
    return tuple(final_states(buf, batch_sizes, lengths, reverse) for buf in buffers)


def _flush(a: np.ndarray, flush_below: float, i: int, flush_every: int) -> None:
    """functional.sequence_backward's subnormal flush: zero |a| < flush_below at every flush_every-th step."""
    if flush_below > 0.0 and i % flush_every == 0:
        a[np.abs(a) < flush_below] = 0


def lstm_sequence_forward(x_proj: np.ndarray, h0: np.ndarray, c0: np.ndarray, w_hh: np.ndarray,
                          w_hr: np.ndarray | None, batch_sizes: np.ndarray | None, reverse: bool) -> dict:
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
    for t, n in _forward_steps(T, batch_sizes, reverse, (S, C), (h0, c0)):
        p, q = _prev(t, reverse), _prev(t, not reverse)
        h, c, cache = lstm_step_forward(x_proj[t, :n], S[p, :n], C[p, :n], w_hh, w_hr)
        S[q, :n], C[q, :n] = h, c
        gates[t, :n], tanh_c[t, :n] = cache.gates, cache.tanh_c
        if m is not None:
            m[t, :n] = cache.m
    if m is None:
        m = S[:-1] if reverse else S[1:]
    h_n, c_n = _finals((S, C), batch_sizes, reverse)
    return dict(h=S, c=C, gates=gates, tanh_c=tanh_c, m=m, h_n=h_n, c_n=c_n)


def _lstm_step_cache(cache: dict, t: int, n: int, reverse: bool) -> LSTMStepCache:
    """Step t's LSTMStepCache (its first n rows) from the sequence cache."""
    p = _prev(t, reverse)
    return LSTMStepCache(cache["h"][p, :n], cache["c"][p, :n], cache["gates"][t, :n],
                         cache["tanh_c"][t, :n], cache["m"][t, :n])


def lstm_sequence_backward(grad_out: np.ndarray, grad_h_last: np.ndarray | None, grad_c_last: np.ndarray | None,
                           cache: dict, w_hh: np.ndarray, w_hr: np.ndarray | None,
                           batch_sizes: np.ndarray | None, reverse: bool,
                           flush_below: float = 0.0, flush_every: int = 1) -> dict:
    """BPTT through :func:`lstm_sequence_forward`.

    grad_out: (T, B, out), dL/dh_t from above (any strides); grad_h_last: (B, out) = dL/dh_n and
    grad_c_last: (B, H) = dL/dc_n (None: zero), entering each sequence at its own last valid step.
    flush_below, flush_every: functional.sequence_backward's subnormal flush, applied to g_t (the total
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
    sizes = _sizes(batch_sizes, T, B)
    for i, t in enumerate(reversed(_order(T, reverse))):
        n = sizes[t]
        g = grad_out[t, :n] + dh_run[:n]                  # g_t = dL/dout_t + da_{t+1} W_hh
        _flush(g, flush_below, i, flush_every)
        _flush(dc_run[:n], flush_below, i, flush_every)
        da, dh_prev, dc_prev, dm, dc_total = _lstm_step_backward(
            g, dc_run[:n], _lstm_step_cache(cache, t, n, reverse), w_hh, w_hr)
        hidden[t, :n], cell[t, :n], da_all[t, :n], dm_all[t, :n] = g, dc_total, da, dm
        dh_run[:n], dc_run[:n] = dh_prev, dc_prev
    return dict(da=da_all, dh0=dh_run, dc0=dc_run, hidden_grads=hidden, cell_grads=cell, dm=dm_all)


def lstm_weight_gradients(da: np.ndarray, x: np.ndarray, cache: dict, hidden_grads: np.ndarray | None,
                          reverse: bool, bias: bool, proj: bool) -> dict:
    """The LSTM's weight gradients, one GEMM (or one sum) each over all steps.

    da: (T, B, 4H) from :func:`lstm_sequence_backward`; x: (T, B, I), the layer input; cache from the
    forward; hidden_grads: (T, B, P), the backward's "hidden_grads" (the *total* dL/dh_t, not "dm"),
    read only when proj (may be None otherwise).
    Returns dict(w_ih (4H, I) = Σ daᵀ x, w_hh (4H, out) = Σ daᵀ h_prev, b (4H,) = Σ da (the gradient of
    b_ih and of b_hh alike) or None, w_hr (P, H) = Σ hidden_gradsᵀ m or None).
    """
    T, B, G = da.shape
    S = cache["h"]
    d2 = da.reshape(T * B, G)
    h_prev = S[1:] if reverse else S[:-1]  # the state each step read
    grads = dict(w_ih=d2.T @ x.reshape(T * B, x.shape[-1]),
                 w_hh=d2.T @ h_prev.reshape(T * B, S.shape[-1]),
                 b=d2.sum(axis=0) if bias else None, w_hr=None)
    if proj:
        P, H = S.shape[-1], G // 4
        if hidden_grads is None or hidden_grads.shape != (T, B, P):
            raise ValueError(f"lstm_weight_gradients: dW_hr = Σ gᵀ m needs the total hidden grads (T, B, P) = "
                             f"{(T, B, P)}, got {None if hidden_grads is None else hidden_grads.shape} "
                             f"(dm (T, B, H) is not it)")
        grads["w_hr"] = hidden_grads.reshape(T * B, P).T @ cache["m"].reshape(T * B, H)
    return grads


def gru_sequence_forward(x_proj: np.ndarray, h0: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray | None,
                         batch_sizes: np.ndarray | None, reverse: bool) -> dict:
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
    for t, n in _forward_steps(T, batch_sizes, reverse, (S,), (h0,)):
        h, step = gru_step_forward(x_proj[t, :n], S[_prev(t, reverse), :n], w_hh, b_hh)
        S[_prev(t, not reverse), :n] = h
        gates[t, :n], gh_n[t, :n] = step.gates, step.gh_n
    return dict(h=S, gates=gates, gh_n=gh_n, h_n=_finals((S,), batch_sizes, reverse)[0])


def gru_sequence_backward(grad_out: np.ndarray, grad_h_last: np.ndarray | None, cache: dict, w_hh: np.ndarray,
                          batch_sizes: np.ndarray | None, reverse: bool,
                          flush_below: float = 0.0, flush_every: int = 1) -> dict:
    """BPTT through :func:`gru_sequence_forward`.

    grad_out: (T, B, H), dL/dh_t from above (any strides); grad_h_last: (B, H) = dL/dh_n (None: zero),
    entering each sequence at its own last valid step. flush_below, flush_every: as
    functional.sequence_backward, on g_t.
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
    sizes = _sizes(batch_sizes, T, B)
    for i, t in enumerate(reversed(_order(T, reverse))):
        n = sizes[t]
        g = grad_out[t, :n] + dh_run[:n]
        _flush(g, flush_below, i, flush_every)
        step = GRUStepCache(S[_prev(t, reverse), :n], cache["gates"][t, :n], cache["gh_n"][t, :n])
        dgi, dgh, dh_prev = gru_step_backward(g, step, w_hh)
        hidden[t, :n], dgi_all[t, :n], dgh_all[t, :n] = g, dgi, dgh
        dh_run[:n] = dh_prev
    return dict(dgi=dgi_all, dgh=dgh_all, dh0=dh_run, hidden_grads=hidden)


def gru_weight_gradients(dgi: np.ndarray, dgh: np.ndarray, x: np.ndarray, cache: dict, reverse: bool,
                         bias: bool) -> dict:
    """The GRU's weight gradients, one GEMM (or one sum) each over all steps.

    dgi, dgh: (T, B, 3H) from :func:`gru_sequence_backward`; x: (T, B, I), the layer input.
    Returns dict(w_ih (3H, I) = Σ dgiᵀ x, w_hh (3H, H) = Σ dghᵀ h_prev,
    b_ih (3H,) = Σ dgi or None, b_hh (3H,) = Σ dgh or None).
    """
    T, B, G = dgi.shape
    S = cache["h"]
    h_prev = S[1:] if reverse else S[:-1]
    gi2, gh2 = dgi.reshape(T * B, G), dgh.reshape(T * B, G)
    return dict(w_ih=gi2.T @ x.reshape(T * B, x.shape[-1]),
                w_hh=gh2.T @ h_prev.reshape(T * B, S.shape[-1]),
                b_ih=gi2.sum(axis=0) if bias else None,
                b_hh=gh2.sum(axis=0) if bias else None)
