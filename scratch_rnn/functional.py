"""The math of the Elman RNN, one pure function per step, in NumPy alone.

Notation (torch's): for one layer and one direction, with x_t the layer input,

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh          (pre-activation)   # (B, H)
    h_t = f(a_t),  f in {tanh, relu}                                           # (B, H)

Backpropagation through time, with g_t = dL/dh_t the *total* derivative (what reaches h_t from
the output at step t plus what flows back from h_{t+1}):

    g_t     = dL/dout_t + δ_{t+1} W_hh        (δ_{T} W_hh := dL/dh_n)
    δ_t     = g_t ⊙ f'(a_t)                   f'(a) = 1 - h² (tanh), [h > 0] (relu)
    dW_ih   = Σ_t δ_tᵀ x_t      dW_hh = Σ_t δ_tᵀ h_{t-1}      db_ih = db_hh = Σ_t δ_t
    dx_t    = δ_t W_ih

The input projection ``x_t W_ihᵀ + b`` of every step is one GEMM before the time loop and the
weight gradients are one GEMM each after it, so that only ``h_{t-1} W_hhᵀ`` (forward) and
``δ_t W_hh`` (backward) stay inside the loop.

Variable lengths follow torch's packed sequences: the batch is sorted by decreasing length, so
at step t only the first ``batch_sizes[t]`` rows are active; the others are left untouched.
"""
from __future__ import annotations

import numpy as np

NONLINEARITIES = ("tanh", "relu")


# --------------------------------------------------------------------------------------------
# One time step
# --------------------------------------------------------------------------------------------
def activation_forward(a: np.ndarray, nonlinearity: str, out: np.ndarray | None = None) -> np.ndarray:
    """h = f(a), elementwise; ``out`` may be ``a`` itself (in place)."""
    if nonlinearity == "tanh":
        return np.tanh(a, out=out)  # stable for any |a|: saturates at ±1, never overflows
    return np.maximum(a, 0, out=out)


def activation_backward(g: np.ndarray, h: np.ndarray, nonlinearity: str,
                        out: np.ndarray | None = None) -> np.ndarray:
    """δ = g ⊙ f'(a), with f'(a) written from the output h = f(a): 1 - h² or [h > 0]."""
    if out is None:
        out = np.empty_like(g)
    if nonlinearity == "tanh":
        np.multiply(h, h, out=out)
        np.subtract(1, out, out=out)
        np.multiply(out, g, out=out)
    else:
        np.multiply(g, h > 0, out=out)
    return out


def step_forward(x_proj: np.ndarray, h_prev: np.ndarray, w_hh_t: np.ndarray, nonlinearity: str,
                 out: np.ndarray | None = None):
    """One step: h = f(x_proj + h_prev W_hhᵀ).

    x_proj: (B, H), the step's input projection x_t W_ihᵀ + b_ih + b_hh;
    h_prev: (B, H); w_hh_t: (H, H), W_hhᵀ (a C-contiguous copy makes the GEMM faster);
    out: (B, H) C-contiguous buffer for h, or None.
    Returns (h, cache) with cache = (h_prev, h): f'(a) is recovered from h.
    """
    if out is None:
        out = np.empty_like(h_prev)
    np.dot(h_prev, w_hh_t, out=out)
    out += x_proj
    activation_forward(out, nonlinearity, out=out)
    return out, (h_prev, out)


def step_backward(g: np.ndarray, cache, w_hh: np.ndarray, nonlinearity: str,
                  delta_out: np.ndarray | None = None, dh_prev_out: np.ndarray | None = None):
    """Backward of :func:`step_forward`.

    g: (B, H), the total derivative dL/dh_t; w_hh: (H, H).
    Returns (delta, dh_prev): delta = dL/da_t (B, H), the quantity that the weight and input
    gradients are built from, and dh_prev = delta W_hh (B, H), what flows into h_{t-1}.
    (dW_hh's share of this step, deltaᵀ h_prev, is summed over all steps by the caller in one GEMM.)
    """
    _, h = cache
    delta = activation_backward(g, h, nonlinearity, out=delta_out)
    if dh_prev_out is None:
        dh_prev_out = np.empty_like(g)
    np.dot(delta, w_hh, out=dh_prev_out)
    return delta, dh_prev_out


# --------------------------------------------------------------------------------------------
# One layer, one direction, over the whole sequence
# --------------------------------------------------------------------------------------------
def input_projection(x: np.ndarray, w_ih: np.ndarray, b_ih, b_hh) -> np.ndarray:
    """x W_ihᵀ + b_ih + b_hh for every step at once: (T, B, I) -> (T, B, H), one GEMM."""
    T, B, I = x.shape
    proj = np.dot(x.reshape(T * B, I), w_ih.T).reshape(T, B, w_ih.shape[0])
    if b_ih is not None:
        proj += b_ih + b_hh
    return proj


def sequence_forward(x_proj: np.ndarray, h0: np.ndarray, w_hh: np.ndarray, nonlinearity: str,
                     batch_sizes: np.ndarray | None, reverse: bool) -> np.ndarray:
    """Run the recurrence over all steps.

    x_proj: (T, B, H) input projections; h0: (B, H); batch_sizes: (T,) active rows per step
    (rows sorted by decreasing length) or None when every sequence has length T.
    Returns hs: (T + 1, B, H), the states with the initial one at the recurrence's start:
    forward: hs[0] = h0 and hs[t + 1] = h_t; reverse: hs[T] = h0 and hs[t] = h_t.
    Entries of hs at padded steps are zero, except that for the reverse direction the state
    feeding a sequence's first processed step (its own last valid step) is its h0.
    """
    T, B, H = x_proj.shape
    hs = np.zeros((T + 1, B, H), dtype=x_proj.dtype)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    if not reverse:
        hs[0] = h0
        for t in range(T):
            n = B if batch_sizes is None else batch_sizes[t]
            step_forward(x_proj[t, :n], hs[t, :n], w_hh_t, nonlinearity, out=hs[t + 1, :n])
    else:
        hs[T] = h0
        prev_n = 0 if batch_sizes is not None else B
        for t in range(T - 1, -1, -1):
            n = B if batch_sizes is None else batch_sizes[t]
            if n > prev_n:  # sequences whose own last valid step is t start from their h0
                hs[t + 1, prev_n:n] = h0[prev_n:n]
            prev_n = n
            step_forward(x_proj[t, :n], hs[t + 1, :n], w_hh_t, nonlinearity, out=hs[t, :n])
    return hs


def sequence_backward(grad_out: np.ndarray, grad_h_last: np.ndarray, hs: np.ndarray,
                      w_hh: np.ndarray, nonlinearity: str, batch_sizes: np.ndarray | None,
                      reverse: bool, flush_below: float = 0.0):
    """BPTT through :func:`sequence_forward`.

    grad_out: (T, B, H), dL/dh_t from above (the layer output); grad_h_last: (B, H), dL/d(final
    state), the state each sequence reached last (h_n). hs: (T + 1, B, H) from the forward.
    flush_below: when > 0, |g_t| entries below it are set to 0 (keeps subnormal floats, which are
    many times slower, out of the loop in the vanishing regime; 0 disables it).
    Returns (delta, grad_h0, hidden_grads):
    delta (T, B, H) = dL/da_t (zero at padded steps); grad_h0 (B, H);
    hidden_grads (T, B, H) = g_t, the total dL/dh_t (zero at padded steps).
    """
    T, B, H = grad_out.shape
    delta = np.zeros_like(grad_out)
    hidden = np.zeros_like(grad_out)
    dh = np.array(grad_h_last, dtype=grad_out.dtype, copy=True)  # (B, H) running dL/dh
    order = range(T) if reverse else range(T - 1, -1, -1)
    for t in order:
        n = B if batch_sizes is None else batch_sizes[t]
        g = hidden[t, :n]
        np.add(dh[:n], grad_out[t, :n], out=g)
        if flush_below > 0.0:
            g[np.abs(g) < flush_below] = 0
        h_t = hs[t, :n] if reverse else hs[t + 1, :n]
        step_backward(g, (None, h_t), w_hh, nonlinearity, delta_out=delta[t, :n], dh_prev_out=dh[:n])
    return delta, dh, hidden


def weight_gradients(delta: np.ndarray, x: np.ndarray, hs: np.ndarray, reverse: bool, bias: bool):
    """dW_ih = Σ_t δ_tᵀ x_t, dW_hh = Σ_t δ_tᵀ h_{t-1}, db = Σ_t δ_t, each one reduction over all steps.

    delta: (T, B, H); x: (T, B, I); hs: (T + 1, B, H). Returns (dW_ih (H, I), dW_hh (H, H), db (H,) or None).
    """
    T, B, H = delta.shape
    d2 = delta.reshape(T * B, H)
    h_prev = hs[1:] if reverse else hs[:-1]  # the state each step read
    dw_ih = np.dot(d2.T, x.reshape(T * B, x.shape[2]))
    dw_hh = np.dot(d2.T, h_prev.reshape(T * B, H))
    db = d2.sum(axis=0) if bias else None
    return dw_ih, dw_hh, db
