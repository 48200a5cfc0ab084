"""The LSTM and GRU sequence loops the models run: gated.py's step loops, rewritten for speed.

:mod:`scratch_rnn.gated` is the readable version: its sequence loops call the step functions once per
step on fresh arrays (about 25 NumPy calls per LSTM forward step and 40 per backward step, plus the
allocations). The loops here compute the same numbers with the same operations in the same order, so
the results are equal **bit for bit** (tests/test_gated_loops.py, float32 and float64, every option):

- every result is written into a preallocated buffer (``out=``): the states, gates and gradients go
  straight into their (T, ...) arrays, never through a fresh array and a copy;
- ``ndarray.dot(b, out)`` for ``@`` (the same BLAS call, a third of the call's cost) and 0-d arrays for
  the constants 0 and 1 (a Python scalar costs a conversion in every call);
- the backward's factors that depend on the forward alone, σ'(a) = s ⊙ (1 - s), tanh'(a) = 1 - y² and for
  the GRU 1 - z and h_{t-1} - n, are computed for a block of consecutive steps in one call each
  (:data:`BLOCK_ENTRIES`). Elementwise operations do not depend on how many elements a call covers, so
  these are the numbers the step function computes one step at a time;
- the LSTM's three products da_i = (k ⊙ g) ⊙ σ'_i, da_f = (k ⊙ c_{t-1}) ⊙ σ'_f, da_g = (k ⊙ i) ⊙ tanh'_g
  are two broadcast calls over a (B, 3, H) view instead of six.

Only the order of *independent* operations changes, never the operands of one, so nothing is
re-associated: each product keeps the grouping of gated.py's expression (``dc + dm * o * tanh'`` is
``dc + ((dm ⊙ o) ⊙ tanh')`` in both). The GEMMs get the very operands of the step functions
(``h_prev @ w_hh.T``, ``da @ w_hh``), so BLAS makes the same call.

The signatures and the returned dicts are those of gated.py's ``*_sequence_forward`` /
``*_sequence_backward`` (the dicts may share memory between entries where the values are equal: the
LSTM's "dm" is "hidden_grads" itself without a projection).
"""
from __future__ import annotations

import numpy as np

from scratch_rnn.gated import _finals, _flush, _forward_steps, _order, _prev, _sizes


def _alloc(shape, dtype, padded: bool) -> np.ndarray:
    """A buffer every entry of which the loop writes (np.empty), or zeros where padded steps are skipped."""
    return np.zeros(shape, dtype) if padded else np.empty(shape, dtype)


# The backward computes the factors that depend on the forward alone (σ', tanh', ...) for a block of
# consecutive steps in one call each, sized so that the block's factors stay in the CPU's cache: for a
# batch of one over 1,000 steps the block is hundreds of steps (a few calls instead of a few per step);
# at (B, gates) = (64, 4·256) it is one step (the whole-sequence arrays would be streamed through memory).
BLOCK_ENTRIES = 1 << 16


def _block_steps(T: int, per_step: int) -> int:
    """Steps per block: as many as keep a block's factors to about BLOCK_ENTRIES entries (at least 1)."""
    return max(1, min(T, BLOCK_ENTRIES // max(1, per_step)))


def _blocks(T: int, reverse: bool, size: int):
    """The backward's order of steps (gated._order reversed) cut into runs of ``size``: yields
    (lo, steps), the steps in visiting order, covering lo .. lo + len(steps) - 1."""
    order = list(reversed(_order(T, reverse)))
    for s in range(0, T, size):
        steps = order[s:s + size]
        yield min(steps), steps


def _sigmoid_into(a: np.ndarray, e: np.ndarray, out: np.ndarray, zero: np.ndarray, one: np.ndarray) -> None:
    """out = gated.sigmoid(a) = where(a >= 0, 1, e) / (1 + e) with e = exp(-|a|), the same numbers.

    The numerator is computed as exp(min(a, 0)): exp(0) = 1 where a >= 0, and where a < 0 it is
    exp(a) = exp(-|a|) = e, the same argument bit for bit (NaN stays NaN). e: scratch of a's shape;
    out must not overlap a or e; zero, one: 0-d arrays of a's dtype (a Python scalar costs a
    conversion per call).
    """
    np.abs(a, out=e)
    np.negative(e, out=e)
    np.exp(e, out=e)
    np.add(e, one, out=out)                 # 1 + e
    np.minimum(a, zero, out=e)
    np.exp(e, out=e)                        # the numerator
    np.divide(e, out, out=out)


# --------------------------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------------------------
def lstm_sequence_forward(x_proj: np.ndarray, h0: np.ndarray, c0: np.ndarray, w_hh: np.ndarray,
                          w_hr: np.ndarray | None, batch_sizes: np.ndarray | None, reverse: bool) -> dict:
    """gated.lstm_sequence_forward, bit for bit (same arguments, same dict)."""
    T, B, G = x_proj.shape
    H, out = G // 4, h0.shape[-1]
    dtype, padded = x_proj.dtype, batch_sizes is not None
    S = _alloc((T + 1, B, out), dtype, padded)
    C = _alloc((T + 1, B, H), dtype, padded)
    gates = _alloc((T, B, G), dtype, padded)
    tanh_c = _alloc((T, B, H), dtype, padded)
    m = _alloc((T, B, H), dtype, padded) if w_hr is not None else None
    a, e, work = np.empty((B, G), dtype), np.empty((B, G), dtype), np.empty((B, H), dtype)
    zero, one = np.zeros((), dtype), np.ones((), dtype)
    w_t = w_hh.T        # the step function's operand (ndarray.dot with out= makes @'s BLAS call, cheaper)
    w_rt = None if w_hr is None else w_hr.T
    for t, n in _forward_steps(T, batch_sizes, reverse, (S, C), (h0, c0)):
        p, q = _prev(t, reverse), _prev(t, not reverse)
        an, gt, c_prev, c = a[:n], gates[t, :n], C[p, :n], C[q, :n]
        S[p, :n].dot(w_t, an)                 # h_{t-1} W_hhᵀ
        np.add(x_proj[t, :n], an, out=an)     # a_t
        _sigmoid_into(an, e[:n], gt, zero, one)
        np.tanh(an[:, 2 * H:3 * H], out=gt[:, 2 * H:3 * H])
        i, f, g, o = gt[:, :H], gt[:, H:2 * H], gt[:, 2 * H:3 * H], gt[:, 3 * H:]
        np.multiply(f, c_prev, out=c)         # c_t = f ⊙ c_{t-1} + i ⊙ g
        np.multiply(i, g, out=work[:n])
        np.add(c, work[:n], out=c)
        tc = tanh_c[t, :n]
        np.tanh(c, out=tc)
        if w_hr is None:
            np.multiply(o, tc, out=S[q, :n])  # h_t = m_t = o ⊙ tanh(c_t)
        else:
            np.multiply(o, tc, out=m[t, :n])
            m[t, :n].dot(w_rt, S[q, :n])
    if m is None:
        m = S[:-1] if reverse else S[1:]
    h_n, c_n = _finals((S, C), batch_sizes, reverse)
    return dict(h=S, c=C, gates=gates, tanh_c=tanh_c, m=m, h_n=h_n, c_n=c_n)


def lstm_sequence_backward(grad_out: np.ndarray, grad_h_last: np.ndarray | None, grad_c_last: np.ndarray | None,
                           cache: dict, w_hh: np.ndarray, w_hr: np.ndarray | None,
                           batch_sizes: np.ndarray | None, reverse: bool,
                           flush_below: float = 0.0, flush_every: int = 1) -> dict:
    """gated.lstm_sequence_backward, bit for bit (same arguments, same dict)."""
    T, B, out = grad_out.shape
    C, gates, tanh_c = cache["c"], cache["gates"], cache["tanh_c"]
    H = C.shape[-1]
    dtype, padded = cache["h"].dtype, batch_sizes is not None
    dh_run = np.zeros((B, out), dtype) if grad_h_last is None else np.array(grad_h_last, dtype=dtype)
    dc_run = np.zeros((B, H), dtype) if grad_c_last is None else np.array(grad_c_last, dtype=dtype)
    da_all = _alloc((T, B, 4 * H), dtype, padded)
    hidden = _alloc((T, B, out), dtype, padded)
    cell = _alloc((T, B, H), dtype, padded)
    dm_all = _alloc((T, B, H), dtype, padded) if w_hr is not None else hidden
    # The forward-only factors, a block of steps at a time (_blocks): σ' = s ⊙ (1 - s) on i, f, o; 1 - g² on g;
    # 1 - tanh² c; and X = (g, c_{t-1}, i), the second factors of da_i, da_f, da_g against D's blocks i, f, g.
    L = _block_steps(T, B * 4 * H)
    D, TD, X = np.empty((L, B, 4 * H), dtype), np.empty((L, B, H), dtype), np.empty((L, B, 3, H), dtype)
    D3 = D.reshape(L, B, 4, H)[:, :, :3]
    da3_all = da_all.reshape(T, B, 4, H)[:, :, :3]
    C_prev = C[1:] if reverse else C[:-1]
    one = np.ones((), dtype)
    sizes = _sizes(batch_sizes, T, B)
    i = 0
    for lo, steps in _blocks(T, reverse, L):
        hi = lo + len(steps)
        d, td, gb, tcb = D[:hi - lo], TD[:hi - lo], gates[lo:hi], tanh_c[lo:hi]
        np.subtract(one, gb, out=d)
        np.multiply(gb, d, out=d)
        gg, dg = gb[..., 2 * H:3 * H], d[..., 2 * H:3 * H]
        np.multiply(gg, gg, out=dg)
        np.subtract(one, dg, out=dg)
        np.multiply(tcb, tcb, out=td)
        np.subtract(one, td, out=td)
        X[:hi - lo, :, 0], X[:hi - lo, :, 1], X[:hi - lo, :, 2] = gg, C_prev[lo:hi], gb[..., :H]
        for t in steps:
            n, j = sizes[t], t - lo
            g, k, da, dc = hidden[t, :n], cell[t, :n], da_all[t, :n], dc_run[:n]
            np.add(grad_out[t, :n], dh_run[:n], out=g)   # g_t = dL/dout_t + da_{t+1} W_hh
            _flush(g, flush_below, i, flush_every)
            _flush(dc, flush_below, i, flush_every)
            i += 1
            if w_hr is None:
                dm = g
            else:
                dm = dm_all[t, :n]
                g.dot(w_hr, dm)                           # dm_t = g_t W_hr
            gt = gates[t, :n]
            np.multiply(dm, gt[:, 3 * H:], out=k)        # k_t = dc + (dm ⊙ o) ⊙ (1 - tanh² c_t)
            np.multiply(k, TD[j, :n], out=k)
            np.add(dc, k, out=k)
            da3 = da3_all[t, :n]
            np.multiply(k[:, None, :], X[j, :n], out=da3)  # (k ⊙ g, k ⊙ c_{t-1}, k ⊙ i) ...
            np.multiply(da3, D3[j, :n], out=da3)           # ... ⊙ (σ'_i, σ'_f, tanh'_g)
            do = da[:, 3 * H:]
            np.multiply(dm, tanh_c[t, :n], out=do)         # da_o = (dm ⊙ tanh c_t) ⊙ σ'_o
            np.multiply(do, D[j, :n, 3 * H:], out=do)
            da.dot(w_hh, dh_run[:n])                       # da_t W_hh, into h_{t-1}
            np.multiply(k, gt[:, H:2 * H], out=dc)         # k_t ⊙ f, into c_{t-1}
    return dict(da=da_all, dh0=dh_run, dc0=dc_run, hidden_grads=hidden, cell_grads=cell, dm=dm_all)


# --------------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------------
def gru_sequence_forward(x_proj: np.ndarray, h0: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray | None,
                         batch_sizes: np.ndarray | None, reverse: bool) -> dict:
    """gated.gru_sequence_forward, bit for bit (same arguments, same dict; "gh_n" is a view of the
    (T, B, 3H) buffer that holds every step's h_{t-1} W_hhᵀ + b_hh)."""
    T, B, G = x_proj.shape
    H = G // 3
    dtype, padded = x_proj.dtype, batch_sizes is not None
    S = _alloc((T + 1, B, H), dtype, padded)
    gates = _alloc((T, B, G), dtype, padded)
    GH = _alloc((T, B, G), dtype, padded)
    rz, e = np.empty((B, 2 * H), dtype), np.empty((B, 2 * H), dtype)
    work, zero, one = np.empty((B, H), dtype), np.zeros((), dtype), np.ones((), dtype)
    w_t = w_hh.T
    for t, n in _forward_steps(T, batch_sizes, reverse, (S,), (h0,)):
        h_prev, h = S[_prev(t, reverse), :n], S[_prev(t, not reverse), :n]
        gh, gt, xp = GH[t, :n], gates[t, :n], x_proj[t, :n]
        h_prev.dot(w_t, gh)                            # gh_t = h_{t-1} W_hhᵀ + b_hh
        if b_hh is not None:
            np.add(gh, b_hh, out=gh)
        np.add(xp[:, :2 * H], gh[:, :2 * H], out=rz[:n])
        _sigmoid_into(rz[:n], e[:n], gt[:, :2 * H], zero, one)  # r, z
        nn = work[:n]
        np.multiply(gt[:, :H], gh[:, 2 * H:], out=nn)  # n = tanh(gi_n + r ⊙ gh_n)
        np.add(xp[:, 2 * H:], nn, out=nn)
        np.tanh(nn, out=nn)
        gt[:, 2 * H:] = nn
        np.subtract(h_prev, nn, out=h)                 # h_t = n + z ⊙ (h_{t-1} - n)
        np.multiply(gt[:, H:2 * H], h, out=h)
        np.add(nn, h, out=h)
    return dict(h=S, gates=gates, gh_n=GH[..., 2 * H:], h_n=_finals((S,), batch_sizes, reverse)[0])


def gru_sequence_backward(grad_out: np.ndarray, grad_h_last: np.ndarray | None, cache: dict, w_hh: np.ndarray,
                          batch_sizes: np.ndarray | None, reverse: bool,
                          flush_below: float = 0.0, flush_every: int = 1) -> dict:
    """gated.gru_sequence_backward, bit for bit (same arguments, same dict)."""
    T, B, H = grad_out.shape
    S, gates, gh_n = cache["h"], cache["gates"], cache["gh_n"]
    dtype, padded = S.dtype, batch_sizes is not None
    dh_run = np.zeros((B, H), dtype) if grad_h_last is None else np.array(grad_h_last, dtype=dtype)
    dgi_all = _alloc((T, B, 3 * H), dtype, padded)
    dgh_all = _alloc((T, B, 3 * H), dtype, padded)
    hidden = _alloc((T, B, H), dtype, padded)
    # The forward-only factors, a block of steps at a time (_blocks): 1 - z, 1 - n², σ' = s ⊙ (1 - s) on r and z,
    # h_{t-1} - n.
    r_all, z_all, n_all = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:]
    S_prev = S[1:] if reverse else S[:-1]
    L = _block_steps(T, B * 3 * H)
    OMZ, TDN, HMN = (np.empty((L, B, H), dtype) for _ in range(3))
    SD = np.empty((L, B, 2 * H), dtype)
    mm, one = np.empty((B, H), dtype), np.ones((), dtype)
    sizes = _sizes(batch_sizes, T, B)
    i = 0
    for lo, steps in _blocks(T, reverse, L):
        hi, m = lo + len(steps), len(steps)
        np.subtract(one, z_all[lo:hi], out=OMZ[:m])
        np.multiply(n_all[lo:hi], n_all[lo:hi], out=TDN[:m])
        np.subtract(one, TDN[:m], out=TDN[:m])
        np.subtract(one, gates[lo:hi, :, :2 * H], out=SD[:m])
        np.multiply(gates[lo:hi, :, :2 * H], SD[:m], out=SD[:m])
        np.subtract(S_prev[lo:hi], n_all[lo:hi], out=HMN[:m])
        for t in steps:
            n, j = sizes[t], t - lo
            g, dgi, dgh, dh = hidden[t, :n], dgi_all[t, :n], dgh_all[t, :n], dh_run[:n]
            np.add(grad_out[t, :n], dh, out=g)            # g_t
            _flush(g, flush_below, i, flush_every)
            i += 1
            da_r, da_z, da_n = dgi[:, :H], dgi[:, H:2 * H], dgi[:, 2 * H:]
            np.multiply(g, OMZ[j, :n], out=da_n)           # da_n = (g ⊙ (1 - z)) ⊙ (1 - n²)
            np.multiply(da_n, TDN[j, :n], out=da_n)
            np.multiply(da_n, gh_n[t, :n], out=da_r)       # da_r = (da_n ⊙ gh_n) ⊙ σ'_r
            np.multiply(da_r, SD[j, :n, :H], out=da_r)
            np.multiply(g, HMN[j, :n], out=da_z)           # da_z = (g ⊙ (h_{t-1} - n)) ⊙ σ'_z
            np.multiply(da_z, SD[j, :n, H:], out=da_z)
            dgh[:, :2 * H] = dgi[:, :2 * H]
            np.multiply(da_n, r_all[t, :n], out=dgh[:, 2 * H:])  # dgh_n = da_n ⊙ r
            dgh.dot(w_hh, mm[:n])                          # dh_{t-1} = g ⊙ z + dgh W_hh
            np.multiply(g, z_all[t, :n], out=dh)
            np.add(dh, mm[:n], out=dh)
    return dict(dgi=dgi_all, dgh=dgh_all, dh0=dh_run, hidden_grads=hidden)
