"""The Elman cell: its math, one pure function per step, its fast sequence loops and the ``RNN`` layer, in NumPy alone.

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
weight gradients are one GEMM each after it (in float32, GEMMs over chunks of the T·B rows, for
accuracy: :func:`weight_gradients`, with :mod:`~scratch_rnn.cells.loops`' sums), so that only
``h_{t-1} W_hhᵀ`` (forward) and ``δ_t W_hh`` (backward) stay inside the loop.

Variable lengths follow torch's packed sequences: the batch is sorted by decreasing length, so
at step t only the first ``batch_sizes[t]`` rows are active; the others are left untouched.

Parameters (torch's layout and names, per layer k and direction): ``weight_ih_l{k}`` (H, I_k),
``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (H,) (``_reverse`` for the second direction;
the layout and torch's default initialisation, U(±1/√H), are the stack's: :class:`~scratch_rnn.cells.base.RecurrentBase`
with ``GATES = 1``). Option: ``nonlinearity`` in :data:`NONLINEARITIES`.

Reading order: the step functions (:func:`step_forward`, :func:`step_backward`), then the two
references built from them and from the equations (:func:`stepwise_layer`, :func:`textbook_layer`),
then the fast sequence loops the model runs, which the tests hold to the references, and last the
layer :class:`RNN`.

Memory and speed (docs/performance.md): the projection of step t is written straight
into the slot of the state buffer ``hs`` that h_t will occupy, and each step overwrites it in place,
so the forward holds one (T + 1, B, H) array per layer and direction; inside the loops every
result goes into a preallocated buffer (``out=``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

from ..checks import check_choice
from ..module import SeedLike
from .base import _UNSET, DEFAULT_FLUSH_EVERY, RecurrentBase, torch_alias
from .loops import column_sum, final_states, input_projection, padding_mask, sum_of_products

__all__ = [
    "NONLINEARITIES",
    "RNN",
    "activation_forward",
    "activation_derivative",
    "activation_backward",
    "step_forward",
    "step_backward",
    "stepwise_layer",
    "textbook_layer",
    "sequence_forward",
    "sequence_backward",
    "weight_gradients",
    "input_projection",
]

NONLINEARITIES = ("tanh", "relu")


# --------------------------------------------------------------------------------------------
# One time step
# --------------------------------------------------------------------------------------------
def activation_forward(a: np.ndarray, nonlinearity: str, out: np.ndarray | None = None) -> np.ndarray:
    """h = f(a), elementwise; ``out`` may be ``a`` itself (in place)."""
    return _ACTIVATIONS[nonlinearity](a, out)


def _relu(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(a, 0, out=out)


# f(a, out): tanh is stable for any |a| (it saturates at ±1 and never overflows).
_ACTIVATIONS: dict[str, Callable[..., np.ndarray]] = {"tanh": np.tanh, "relu": _relu}


def activation_derivative(h: np.ndarray, nonlinearity: str, out: np.ndarray | None = None) -> np.ndarray:
    """f'(a) written from the output h = f(a), elementwise, any shape: 1 - h² (tanh), [h > 0] (relu).

    ``out`` may be ``h`` itself. The sequence backward calls this once for all steps (T, B, H).
    """
    if nonlinearity == "tanh":
        out = np.multiply(h, h, out=out)
        return np.subtract(1, out, out=out)
    # relu outputs are >= 0, so sign(h) = [h > 0], in h's dtype and without a mask (a NaN state would
    # give NaN rather than 0; RNN.forward raises on non-finite states before backward can see one)
    return np.sign(h, out=out)


def activation_backward(g: np.ndarray, h: np.ndarray, nonlinearity: str, out: np.ndarray | None = None) -> np.ndarray:
    """δ = g ⊙ f'(a), with f'(a) written from the output h = f(a): 1 - h² or [h > 0]."""
    out = activation_derivative(h, nonlinearity, out=out)
    return np.multiply(out, g, out=out)


def step_forward(
    x_proj: np.ndarray,
    h_prev: np.ndarray,
    w_hh_t: np.ndarray,
    nonlinearity: str,
    out: np.ndarray | None = None,
    work: np.ndarray | None = None,
):
    """One step: h = f(x_proj + h_prev W_hhᵀ).

    x_proj: (B, H), the step's input projection x_t W_ihᵀ + b_ih + b_hh;
    h_prev: (B, H); w_hh_t: (H, H), W_hhᵀ (a C-contiguous copy makes the GEMM faster);
    out: (B, H) C-contiguous buffer for h, or None; it may be ``x_proj`` itself (the projection is
    then overwritten by h) provided ``work``, a (B, H) C-contiguous scratch buffer, is given.
    Returns (h, cache) with cache = (h_prev, h): f'(a) is recovered from h.
    """
    if out is None:
        out = np.empty_like(h_prev)
    if work is None:
        np.dot(h_prev, w_hh_t, out=out)
        out += x_proj
    else:
        np.dot(h_prev, w_hh_t, out=work)
        np.add(x_proj, work, out=out)
    activation_forward(out, nonlinearity, out=out)
    return out, (h_prev, out)


def step_backward(
    g: np.ndarray,
    cache,
    w_hh: np.ndarray,
    nonlinearity: str,
    delta_out: np.ndarray | None = None,
    dh_prev_out: np.ndarray | None = None,
):
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
# The references the fast loops are held to (executed by the tests, never on the hot path)
# --------------------------------------------------------------------------------------------
def stepwise_layer(proj, h0, w_hh, nonlinearity, grad_out, grad_h_last, batch_sizes, reverse):
    """:func:`sequence_forward` then :func:`sequence_backward`, "equivalent to the following": one call of
    :func:`step_forward` / :func:`step_backward` per step, fresh arrays each step.

    proj: (T, B, H) input projections; h0: (B, H); grad_out: (T, B, H); grad_h_last: (B, H);
    batch_sizes: (T,) or None. Rows are sorted by decreasing length and step t acts on the first
    batch_sizes[t] rows (as the packed path does, so that every GEMM has the same shape and the
    results can be bit-equal); a row's running state stays frozen where it is inactive.
    Returns (states, hidden_grads, delta, dh0), zero at padded steps. The fast loops must equal it
    bit for bit (tests/test_perf_paths.py), with the flush off.
    """
    T, B, H = proj.shape
    sizes = np.full(T, B) if batch_sizes is None else batch_sizes
    states, hidden, delta = (np.zeros((T, B, H), proj.dtype) for _ in range(3))
    w_t = np.ascontiguousarray(w_hh.T)
    order = list(range(T))[::-1] if reverse else list(range(T))
    h_run, caches = h0.copy(), {}
    for t in order:
        n = sizes[t]
        h, caches[t] = step_forward(proj[t, :n], h_run[:n], w_t, nonlinearity)
        h_run[:n] = states[t, :n] = h
    dh_run = grad_h_last.copy()
    for t in order[::-1]:
        n = sizes[t]
        g = grad_out[t, :n] + dh_run[:n]
        d, dh_run[:n] = step_backward(g, caches[t], w_hh, nonlinearity)
        hidden[t, :n], delta[t, :n] = g, d
    return states, hidden, delta, dh_run


def textbook_layer(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, grad_out, grad_h_last, reverse):
    """The equations of the module docstring as written, for one full-length layer: a fresh array per
    step, the weight gradients summed step by step, no buffers, no GEMM over all steps.

    x: (T, B, I); h0: (B, H); grad_out: (T, B, H) = dL/dout_t; grad_h_last: (B, H) = dL/dh_n.
    Returns (states (T, B, H), hidden_grads (T, B, H), dh0 (B, H), dW_ih, dW_hh, db, dx (T, B, I)).
    The oracle of the fast path's arithmetic reorganisation (tests/test_perf_paths.py: equal to
    ~1e-12 relative, the order of the sums differs).
    """
    f = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))
    T = x.shape[0]
    order = list(range(T))[::-1] if reverse else list(range(T))
    h, hs = h0, {}
    prev = {}
    for t in order:
        prev[t] = h
        h = f(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        hs[t] = h
    dW_ih, dW_hh, db = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(b_ih)
    dx, gs = np.zeros_like(x), np.zeros((T,) + h0.shape)
    dh = grad_h_last
    for t in order[::-1]:
        g = grad_out[t] + dh
        gs[t] = g
        d = g * (1 - hs[t] ** 2) if nonlinearity == "tanh" else g * (hs[t] > 0)
        dW_ih += d.T @ x[t]
        dW_hh += d.T @ prev[t]
        db += d.sum(axis=0)
        dx[t] = d @ w_ih
        dh = d @ w_hh
    return np.stack([hs[t] for t in range(T)]), gs, dh, dW_ih, dW_hh, db, dx


# --------------------------------------------------------------------------------------------
# One layer, one direction, over the whole sequence
# --------------------------------------------------------------------------------------------
def sequence_forward(
    x_proj: np.ndarray,
    h0: np.ndarray,
    w_hh: np.ndarray,
    nonlinearity: str,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    hs: np.ndarray | None = None,
) -> np.ndarray:
    """Run the recurrence over all steps.

    x_proj: (T, B, H) input projections; h0: (B, H); batch_sizes: (T,) active rows per step
    (rows sorted by decreasing length) or None when every sequence has length T.
    hs: optional C-contiguous (T + 1, B, H) buffer for the result. ``x_proj`` may be its slice
    ``hs[1:]`` (forward) or ``hs[:-1]`` (reverse), where h_t will go (what :func:`input_projection`
    writes with ``out=``): each step then overwrites its own projection, and no second
    (T, B, H) array is needed.
    Returns hs: (T + 1, B, H), the states with the initial one at the recurrence's start:
    forward: hs[0] = h0 and hs[t + 1] = h_t; reverse: hs[T] = h0 and hs[t] = h_t.
    Entries of hs at padded steps are zero, except that for the reverse direction the state
    feeding a sequence's first processed step (its own last valid step) is its h0.
    """
    T, B, H = x_proj.shape
    if hs is None:
        hs = np.empty((T + 1, B, H), dtype=x_proj.dtype)
    states = hs[:-1] if reverse else hs[1:]  # states[t] = h_t
    if not _same_view(states, x_proj):
        states[...] = x_proj
    if batch_sizes is not None:  # padded steps hold projections: zero them
        states[padding_mask(batch_sizes, B)] = 0
    w_hh_t = np.ascontiguousarray(w_hh.T)
    work = np.empty((B, H), dtype=hs.dtype)  # h_{t-1} W_hhᵀ, before it is added to the projection
    f = _ACTIVATIONS[nonlinearity]
    add = np.add
    # Each loop body is step_forward(h, h_prev, w_hh_t, nonlinearity, out=h, work=work) written out:
    # at a few hundred nanoseconds per NumPy call, a Python call per step is a measurable share of a
    # small step (tests/test_perf_paths.py checks that the loops equal step_forward step by step).
    # The method a.dot(b, out) is np.dot without its __array_function__ dispatch (half the call's cost).
    if not reverse:
        hs[0] = h0
        if batch_sizes is None:
            for h_prev, h in zip(hs[:-1], states):  # the (B, H) views, made in C
                h_prev.dot(w_hh_t, work)  # h_{t-1} W_hhᵀ
                add(h, work, h)  # a_t = (x_t W_ihᵀ + b) + h_{t-1} W_hhᵀ
                f(h, h)  # h_t = f(a_t)
        else:
            for t in range(T):
                n = batch_sizes[t]
                h, w = states[t, :n], work[:n]
                hs[t, :n].dot(w_hh_t, w)
                add(h, w, h)
                f(h, h)
    else:
        hs[T] = h0
        if batch_sizes is None:
            for h, h_prev in zip(states[::-1], hs[:0:-1]):  # t = T-1 .. 0: h_t, h_{t+1}
                h_prev.dot(w_hh_t, work)
                add(h, work, h)
                f(h, h)
        else:
            prev_n = 0
            for t in range(T - 1, -1, -1):
                n = batch_sizes[t]
                if n > prev_n:  # sequences whose own last valid step is t start from their h0
                    hs[t + 1, prev_n:n] = h0[prev_n:n]
                prev_n = n
                h, w = hs[t, :n], work[:n]
                hs[t + 1, :n].dot(w_hh_t, w)
                add(h, w, h)
                f(h, h)
    return hs


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b are the same elements of memory (same start, shape and strides)."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def sequence_backward(
    grad_out: np.ndarray,
    grad_h_last: np.ndarray,
    hs: np.ndarray,
    w_hh: np.ndarray,
    nonlinearity: str,
    batch_sizes: np.ndarray | None,
    reverse: bool,
    flush_below: float = 0.0,
    *,
    flush_every: int = 1,
    hidden: np.ndarray | None = None,
    delta: np.ndarray | None = None,
):
    """BPTT through :func:`sequence_forward`.

    grad_out: (T, B, H), dL/dh_t from above (the layer output; any strides); grad_h_last: (B, H),
    dL/d(final state), the state each sequence reached last (h_n). hs: (T + 1, B, H) from the forward.
    flush_below, flush_every: when flush_below > 0, the entries of g_t with |g_t| < flush_below are
    set to 0 at every ``flush_every``-th step of the loop, counted from its first step. This keeps
    subnormal floats, whose arithmetic is many times slower on some CPUs, out of the loop in the
    vanishing regime: with the threshold far enough above the subnormal range, a gradient that
    shrinks through time is zeroed before it gets there. 0 disables it.
    hidden, delta: optional C-contiguous (T, B, H) buffers for the results (their padded
    entries are set to zero here; the others are all overwritten).
    Returns (delta, grad_h0, hidden_grads):
    delta (T, B, H) = dL/da_t (zero at padded steps); grad_h0 (B, H);
    hidden_grads (T, B, H) = g_t, the total dL/dh_t (zero at padded steps).
    """
    T, B, H = grad_out.shape
    dtype = hs.dtype
    if delta is None:
        delta = np.empty((T, B, H), dtype=dtype)
    if hidden is None:
        hidden = np.empty((T, B, H), dtype=dtype)
    dh = np.array(grad_h_last, dtype=dtype, copy=True)  # (B, H) running dL/dh
    states = hs[:-1] if reverse else hs[1:]  # h_t
    activation_derivative(states, nonlinearity, out=delta)  # f'(a_t) for every step in one pass
    if batch_sizes is not None:
        pad = padding_mask(batch_sizes, B)
        delta[pad] = 0
        hidden[pad] = 0
    flush = flush_below > 0.0
    add, mul = np.add, np.multiply
    # Each loop body is g_t = dL/dout_t + dh, the flush, then step_backward(g_t, (h_{t-1}, h_t), W_hh)
    # written out, with f'(a_t) already in delta[t] (tests/test_perf_paths.py checks that the loops
    # equal step_backward step by step).
    if batch_sizes is None:
        rev = slice(None) if reverse else slice(None, None, -1)  # the loop's order
        for i, (g, g_out, d) in enumerate(zip(hidden[rev], grad_out[rev], delta[rev])):
            add(dh, g_out, g)  # g_t = dL/dout_t + δ_{t+1} W_hh
            if flush and i % flush_every == 0:
                g[np.abs(g) < flush_below] = 0
            mul(d, g, d)  # δ_t = g_t ⊙ f'(a_t)
            d.dot(w_hh, dh)  # δ_t W_hh, what flows into h_{t-1}
    else:
        order = range(T) if reverse else range(T - 1, -1, -1)
        for i, t in enumerate(order):
            n = batch_sizes[t]
            g, d, dh_n = hidden[t, :n], delta[t, :n], dh[:n]
            add(dh_n, grad_out[t, :n], g)
            if flush and i % flush_every == 0:
                g[np.abs(g) < flush_below] = 0
            mul(d, g, d)
            d.dot(w_hh, dh_n)
    return delta, dh, hidden


def weight_gradients(delta: np.ndarray, x: np.ndarray, hs: np.ndarray, reverse: bool, bias: bool):
    """dW_ih = Σ_t δ_tᵀ x_t, dW_hh = Σ_t δ_tᵀ h_{t-1}, db = Σ_t δ_t, each a reduction over all steps.

    delta: (T, B, H); x: (T, B, I); hs: (T + 1, B, H). Returns (dW_ih (H, I), dW_hh (H, H), db (H,) or None).
    float64: one GEMM (or column sum) each over the T·B rows. float32: in two levels, over chunks of rows
    and then over the chunks (:func:`sum_of_products`, :func:`column_sum`): the same sums with float32
    rounding error at torch's level.
    """
    T, B, H = delta.shape
    d2 = delta.reshape(T * B, H)
    h_prev = hs[1:] if reverse else hs[:-1]  # the state each step read
    x2, h2 = x.reshape(T * B, x.shape[2]), h_prev.reshape(T * B, H)
    if delta.dtype != np.float32:
        dw_ih = np.dot(d2.T, x2)
        dw_hh = np.dot(d2.T, h2)
        db = d2.sum(axis=0) if bias else None
        return dw_ih, dw_hh, db
    dw_ih = sum_of_products(d2, x2)
    dw_hh = sum_of_products(d2, h2)
    db = column_sum(d2) if bias else None
    return dw_ih, dw_hh, db


class RNN(RecurrentBase):
    """Elman RNN with the interface and semantics of ``torch.nn.RNN``.

    h_t = f(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh), f = tanh or relu, stacked ``num_layers`` deep,
    optionally bidirectional. Shapes (L = seq length, N = batch, D = 2 if bidirectional else 1):
    input (L, N, I) or (N, L, I) with ``batch_first`` or unbatched (L, I); h0 and h_n
    (D*num_layers, N, H) or (D*num_layers, H) unbatched; output (L, N, D*H) / (N, L, D*H) / (L, D*H).

    ``forward(x, h0=None, lengths=None)`` returns ``(output, h_n)`` (torch's keyword names ``input=``
    and ``hx=`` are accepted for ``x`` and ``h0``; passing both names of one argument raises); ``lengths`` gives
    packed-sequence semantics (``pack_padded_sequence(enforce_sorted=False)`` then
    ``pad_packed_sequence(total_length=L)``). ``backward(grad_output, grad_h_n=None)`` runs BPTT
    through that forward, returns ``(grad_x, grad_h0)`` and accumulates into ``grads`` (the
    lifecycle rules of :class:`~scratch_rnn.Module`). After backward, ``hidden_grads`` is the total
    dL/dh_t of every layer and direction: (num_layers * D, L, N, H), time-major whatever the
    layout, zero at padded steps.

    Keyword-only options beyond torch's: ``dtype`` (float32 or float64), ``seed`` (the generator of
    the initial weights and the dropout masks), ``flush_below`` / ``flush_every`` (the subnormal
    flush of backward, see :data:`DEFAULT_FLUSH_BELOW`; None: the dtype's default; 0.0: off). Both
    are attributes that may be changed between calls.
    """

    NAME = "RNN"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
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
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
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

    def _extra_repr(self) -> list:
        return [f"nonlinearity={self.nonlinearity!r}"] if self.nonlinearity != "tanh" else []

    def _forward(self, x=_UNSET, h0=_UNSET, lengths=None, *, input=_UNSET, hx=_UNSET, dropout_masks=None):
        """Run the stack. Returns ``((output, h_n), cache)``, output and h_n in the caller's layout.

        ``input=`` and ``hx=`` are torch's names of ``x`` and ``h0`` (either name, not both).
        dropout_masks: optional list of ``num_layers - 1`` keep-masks (bool or 0/1), each of shape
        (T, B, D*H) time-major, applied to the outputs of layers 0..L-2 in train mode (scaled by
        1/(1-p)); without it they are drawn from the model's seeded generator. The masks used are
        left in ``self.dropout_masks``.
        """
        x, h0 = torch_alias("x", x, "input", input), torch_alias("h0", h0, "hx", hx, None)
        (output, (h_n,)), cache = self._run_forward(x, (h0,), lengths, dropout_masks)
        return (output, h_n), cache

    def _backward(self, c, grad_output=None, grad_h_n=None):
        """BPTT through the forward of cache ``c``. Returns ``((grad_x, grad_h0), param_grads)``.

        grad_output: dL/d(output), the output's shape (None: zero); grad_h_n: dL/d(h_n), h_n's shape
        (None: zero), both in the caller's layout. ``self.hidden_grads`` is set.
        """
        (grad_x, (grad_h0,)), grads = self._run_backward(c, grad_output, (grad_h_n,))
        return (grad_x, grad_h0), grads

    def _direction_forward(self, x, state0, layer, d, ctx):
        """The Elman layer: the projection goes straight into the slots of the states it will become."""
        T, B, H = ctx["T"], ctx["B"], self.hidden_size
        batch_sizes, reverse = ctx["batch_sizes"], d == 1
        hs = self._buffer((layer, d, "h"), (T + 1, B, H))
        b_ih, b_hh = self._p("bias_ih", layer, d), self._p("bias_hh", layer, d)
        proj = input_projection(
            x, self._p("weight_ih", layer, d), None if b_ih is None else b_ih + b_hh, out=hs[:-1] if reverse else hs[1:]
        )
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by the stack
            sequence_forward(
                proj, state0[0], self._p("weight_hh", layer, d), self.nonlinearity, batch_sizes, reverse, hs=hs
            )
        h_n = final_states(hs, batch_sizes, ctx["lengths_sorted"], reverse)  # each sequence's own last step
        return (hs[:-1] if reverse else hs[1:]), (h_n,), hs

    def _direction_backward(self, d_out, d_finals, hs, layer, d, ctx, out):
        T, B, H = ctx["T"], ctx["B"], self.hidden_size
        reverse = d == 1
        w_ih = self._p("weight_ih", layer, d)
        # dL/da_t: scratch reused by every layer and direction and, while the sizes stay, by the next backward
        delta = self._buffer(("delta",), (T, B, H))
        _, dh0, _ = sequence_backward(
            d_out,
            d_finals[0],
            hs,
            self._p("weight_hh", layer, d),
            self.nonlinearity,
            ctx["batch_sizes"],
            reverse,
            self.flush_below,
            flush_every=self.flush_every,
            hidden=out["hidden"],
            delta=delta,
        )
        dw_ih, dw_hh, db = weight_gradients(delta, ctx["layer_in"], hs, reverse, self.bias)
        grads = {"weight_ih": dw_ih, "weight_hh": dw_hh}
        if self.bias:
            grads["bias_ih"] = grads["bias_hh"] = db
        dx = np.dot(delta.reshape(T * B, H), w_ih).reshape(T, B, w_ih.shape[1])  # δ W_ih
        return dx, (dh0,), grads

    def kink_pattern(self) -> tuple:
        """Which relu units were active in the last forward, per layer and direction (empty for tanh).

        Finite differences are only an oracle where the function is smooth along the segment: a relu
        pre-activation that changes sign between θ - εv and θ + εv puts a kink inside it
        (:func:`scratch_rnn.gradcheck.activation_pattern` compares this pattern at both ends).
        """
        cache = self._cache
        if self.nonlinearity != "relu" or cache is None:
            return ()
        T, B, sizes = cache["T"], cache["B"], cache["batch_sizes"]
        valid = np.ones((T, B, 1), bool) if sizes is None else (np.arange(B)[None, :] < sizes[:, None])[..., None]
        pattern = []
        for _, hs_dirs, _ in cache["layers"]:
            for d, hs in enumerate(hs_dirs):  # the states each valid step produced (not h0)
                states = hs[:-1] if d == 1 else hs[1:]
                pattern.append(((states > 0) & valid).tobytes())
        return tuple(pattern)
