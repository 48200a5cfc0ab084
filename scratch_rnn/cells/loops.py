"""The sequence-loop machinery every built-in cell shares, defined once: NumPy alone.

One layer and one direction at a time (the layers, directions, layouts, dropout and validation are the
stack's, :mod:`scratch_rnn.cells.base`). What lives here:

- the input projection of all steps in one GEMM (:func:`input_projection`);
- packed lengths (:func:`padding_mask`, :func:`lengths_from_batch_sizes`, :func:`step_sizes`) and the state
  buffers' conventions: the visit order (:func:`visit_order`), the slot a step reads (:func:`read_slot`), where
  each sequence starts (:func:`forward_steps`, :func:`start_rows`; the fast loops' per-step views,
  :func:`forward_views`, :func:`step_views`) and ends (:func:`final_states`, :func:`finals`);
- the subnormal flush of the backward (:func:`flush`);
- the float32 sums over the T·B rows of a batch (:func:`sum_of_products`, :func:`column_sum`);
- σ and the derivatives written from an activation (:func:`sigmoid`, its five-call form in the fast loops,
  :func:`sigmoid_derivative`, :func:`tanh_derivative`);
- the fast backward's blocks of steps (:data:`BLOCK_ENTRIES`, :func:`block_steps`, :func:`blocks`) and its
  buffers (:func:`alloc`).

Variable lengths follow torch's packed sequences: rows sorted by decreasing length, ``batch_sizes[t]`` rows
active at step t (None: every sequence has length T). State buffers S (T + 1, B, ·) hold the initial state
where the recurrence starts: forward S[0] = h0, S[t + 1] = h_t; reverse S[T] = h0, S[t] = h_t, and a sequence
whose own last valid step is t < T - 1 starts from its h0, copied into S[t + 1] when its rows become active.
Every other entry at a padded step is zero (so the *output* view of a reverse direction, S[:-1], still holds
those h0 copies at padded steps: the stack zeroes them).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "input_projection",
    "padding_mask",
    "lengths_from_batch_sizes",
    "final_states",
    "visit_order",
    "step_sizes",
    "read_slot",
    "start_rows",
    "forward_steps",
    "step_views",
    "forward_views",
    "finals",
    "flush",
    "flush_now",
    "sigmoid",
    "sigmoid_derivative",
    "tanh_derivative",
    "alloc",
    "BLOCK_ENTRIES",
    "block_steps",
    "blocks",
    "GEMM_CHUNK_MIN",
    "GEMM_CHUNKS_MAX",
    "STACK_MAX",
    "sum_of_products",
    "column_sum",
]


# --------------------------------------------------------------------------------------------
# The input projection
# --------------------------------------------------------------------------------------------
def input_projection(
    x: np.ndarray, w_ih: np.ndarray, b: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """x W_ihᵀ + b for every step at once, one GEMM: (T, B, I) -> (T, B, G) with G = w_ih.shape[0].

    b: the bias folded into the projection, or None. Elman and LSTM: b = b_ih + b_hh. GRU: b = b_ih alone
    (b_hh stays inside the step). out: optional C-contiguous (T, B, G) array to write into (e.g. the slice of
    the Elman state buffer the states will overwrite).
    """
    T, B, n_in = x.shape
    G = w_ih.shape[0]
    if out is None:
        out = np.empty((T, B, G), dtype=np.result_type(x, w_ih))
    np.dot(x.reshape(T * B, n_in), w_ih.T, out=out.reshape(T * B, G))
    if b is not None:
        out += b
    return out


# --------------------------------------------------------------------------------------------
# Packed lengths, the visit order, where each sequence starts and ends
# --------------------------------------------------------------------------------------------
def padding_mask(batch_sizes: np.ndarray, B: int) -> np.ndarray:
    """(T, B) bool: True where row b is a padded step at time t (b >= batch_sizes[t])."""
    return np.arange(B)[None, :] >= np.asarray(batch_sizes)[:, None]


def lengths_from_batch_sizes(batch_sizes: np.ndarray, B: int) -> np.ndarray:
    """(B,) int: each (sorted) row's length, the number of steps at which it is active."""
    return (np.asarray(batch_sizes)[:, None] > np.arange(B)[None, :]).sum(axis=0)


def final_states(
    S: np.ndarray, batch_sizes: np.ndarray | None, lengths_sorted: np.ndarray | None, reverse: bool
) -> np.ndarray:
    """Each sequence's state at its own last valid step, from a (T + 1, B, ·) state buffer -> (B, ·).

    forward: S[len_b, b]; reverse: S[0, b]. lengths_sorted (B,) may be None (then derived from
    batch_sizes; both None: every length is T).
    """
    T1, B = S.shape[:2]
    if reverse:
        return S[0].copy()
    if lengths_sorted is None:
        if batch_sizes is None:
            return S[T1 - 1].copy()
        lengths_sorted = lengths_from_batch_sizes(batch_sizes, B)
    return S[np.asarray(lengths_sorted), np.arange(B)]


def visit_order(T: int, reverse: bool):
    """The steps in the order the forward visits them (the backward visits them reversed)."""
    return range(T - 1, -1, -1) if reverse else range(T)


def step_sizes(batch_sizes, T: int, B: int) -> np.ndarray:
    """(T,) the active rows of each step: ``batch_sizes``, or B at every step when it is None."""
    return np.full(T, B) if batch_sizes is None else np.asarray(batch_sizes)


def read_slot(t: int, reverse: bool) -> int:
    """The index in a (T + 1, ...) state buffer of the state step t reads; step t writes read_slot(t, not reverse)."""
    return t + 1 if reverse else t


def start_rows(buffers, initials, t: int, n: int, prev_n: int, reverse: bool) -> None:
    """Reverse direction: rows prev_n:n have their own last valid step at t; they start from their
    initial state, written into the slot step t reads."""
    if reverse and n > prev_n:
        for buf, init in zip(buffers, initials):
            buf[t + 1, prev_n:n] = init[prev_n:n]


def forward_steps(T: int, batch_sizes, reverse: bool, buffers: tuple, initials: tuple):
    """The forward's steps in order, as (t, n) with n the active rows. Writes each initial state into its
    (T + 1, B, ·) buffer where the recurrence starts and, for the reverse direction with lengths, into the
    slot a sequence's first processed step reads, as that sequence becomes active (:func:`start_rows`)."""
    B = buffers[0].shape[1]
    sizes = step_sizes(batch_sizes, T, B)
    for buf, init in zip(buffers, initials):
        buf[T if reverse else 0] = init
    prev_n = 0 if reverse else B
    for t in visit_order(T, reverse):
        n = sizes[t]
        if batch_sizes is not None:  # full batches: every row starts at the slot written above
            start_rows(buffers, initials, t, n, prev_n, reverse)
            prev_n = n
        yield t, n


def step_views(per_step: tuple, scratch: tuple, sizes, descending: bool):
    """The views each step of a fast loop works on, in the order it visits the steps: for step j of m
    (j = 0 .. m - 1, visited from m - 1 down when descending) the tuple ``a[j, :n]`` for each ``a`` in per_step,
    then ``s[:n]`` for each ``s`` in scratch, n = sizes[j] the step's active rows.

    sizes None: every step has all rows; the per-step arrays are then walked along their first axis (a view
    per array and step, made in C: no Python indexing in the loop) and the scratch views are the scratch arrays
    themselves. At a batch of one a step's NumPy calls take a few tenths of a microsecond each, and a view
    made by Python indexing (``a[t, :n]``, ``g[:, :H]``) 0.1-0.15 µs more: docs/performance.md.
    """
    if sizes is None:
        walk = [a[::-1] for a in per_step] if descending else list(per_step)
        return zip(*walk, *(itertools.repeat(s) for s in scratch))
    order = range(len(sizes) - 1, -1, -1) if descending else range(len(sizes))
    return (tuple(a[j, :n] for a in per_step) + tuple(s[:n] for s in scratch) for j in order for n in (sizes[j],))


def forward_views(T: int, batch_sizes, reverse: bool, buffers: tuple, initials: tuple, per_step: tuple, scratch: tuple):
    """:func:`forward_steps` as :func:`step_views`: the forward's steps in order, each as the views it works on
    (per_step arrays indexed by t). Writes the initial states as :func:`forward_steps` does, before the first step."""
    if batch_sizes is None:
        for buf, init in zip(buffers, initials):
            buf[T if reverse else 0] = init
        return step_views(per_step, scratch, None, reverse)
    return (
        tuple(a[t, :n] for a in per_step) + tuple(s[:n] for s in scratch)
        for t, n in forward_steps(T, batch_sizes, reverse, buffers, initials)
    )


def finals(buffers: tuple, batch_sizes, reverse: bool) -> tuple:
    """:func:`final_states` of each (T + 1, B, ·) state buffer, the lengths derived once."""
    B = buffers[0].shape[1]
    lengths = None if batch_sizes is None else lengths_from_batch_sizes(batch_sizes, B)
    return tuple(final_states(buf, batch_sizes, lengths, reverse) for buf in buffers)


# --------------------------------------------------------------------------------------------
# The subnormal flush of the backward
# --------------------------------------------------------------------------------------------
def flush(a: np.ndarray, flush_below: float, i: int, flush_every: int) -> None:
    """The backward's subnormal flush: zero |a| < flush_below at every flush_every-th step of the loop
    (i counts the loop's steps from 0); 0 disables it. The Elman loop (:mod:`scratch_rnn.cells.elman`)
    writes the same rule inline, a Python call per step being a measurable share of its small step."""
    if flush_below > 0.0 and i % flush_every == 0:
        flush_now(a, flush_below)


def flush_now(a: np.ndarray, flush_below: float) -> None:
    """Zero |a| < flush_below: the step of :func:`flush` that does the work (the fast loops test when inline)."""
    a[np.abs(a) < flush_below] = 0


# --------------------------------------------------------------------------------------------
# σ, and the derivatives written from an activation
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


# The fast loops compute :func:`sigmoid` in five calls, the same numbers bit for bit:
#   e = exp(-|a|) with -|a| = copysign(a, -1) (exact: the sign bit set), and the numerator where(a >= 0, 1, e)
#   as exp(min(a, 0)): exp(0) = 1 where a >= 0, and where a < 0 it is exp(a) = exp(-|a|) = e, the same argument
#   bit for bit (NaN stays NaN); the two exponentials in one call, over a (B, 2, ·) scratch holding both
#   arguments (elementwise operations do not depend on how many elements a call covers); then 1 + e and the
#   division.


# --------------------------------------------------------------------------------------------
# The fast loops' buffers and blocks of steps
# --------------------------------------------------------------------------------------------
def alloc(shape, dtype, padded: bool) -> np.ndarray:
    """A buffer every entry of which the loop writes (np.empty), or zeros where padded steps are skipped."""
    return np.zeros(shape, dtype) if padded else np.empty(shape, dtype)


# The fast backward computes the factors that depend on the forward alone (σ', tanh', ...) for a block of
# consecutive steps in one call each, sized so that the block's factors stay in the CPU's cache: for a
# batch of one over 1,000 steps the block is hundreds of steps (a few calls instead of a few per step);
# at (B, gates) = (64, 4·256) it is one step (the whole-sequence arrays would be streamed through memory).
BLOCK_ENTRIES = 1 << 16


def block_steps(T: int, per_step: int) -> int:
    """Steps per block: as many as keep a block's factors to about BLOCK_ENTRIES entries (at least 1)."""
    return max(1, min(T, BLOCK_ENTRIES // max(1, per_step)))


def blocks(T: int, reverse: bool, size: int):
    """The backward's order of steps (:func:`visit_order` reversed) cut into runs of ``size``: yields
    (lo, steps), the steps in visiting order, covering lo .. lo + len(steps) - 1."""
    order = list(reversed(visit_order(T, reverse)))
    for s in range(0, T, size):
        steps = order[s : s + size]
        yield min(steps), steps


# --------------------------------------------------------------------------------------------
# Float32 sums over the T·B rows of a batch
# --------------------------------------------------------------------------------------------
# (docs/performance.md, "Float32 accuracy"). A BLAS GEMM adds
# the K = T·B products of each entry one after another in float32 (OpenBLAS 0.3.31: all K of them in its
# kernel for small matrices, runs of up to 448 in its blocked kernel), and numpy's column sum adds the
# rows one after another; the rounding error grows with the length of such a run. One float32 GEMM over
# all rows put scratch's grad W_hh at 2.7x torch's largest error and the column sum db at 6.5x. In
# float32 each sum is therefore taken in two levels, sums over chunks of rows and then the sum of those:
# - small results (the stack of partial products holds at most STACK_MAX entries): ⌊√K⌋ rows per chunk,
#   one stacked matmul and one sum, so that no run is longer than about √K;
# - larger ones: chunks of at least GEMM_CHUNK_MIN rows, GEMM_CHUNKS_MAX of them at most, one GEMM and one
#   (M, N) addition each (1-4% of the weight-gradient GEMMs at the largest benchmark sizes); there the
#   blocked kernel already keeps runs short.
# float64 keeps one GEMM and one column sum (its results do not change). The Elman cell's weight gradients
# use these (:func:`scratch_rnn.cells.elman.weight_gradients`); the LSTM's and GRU's are one GEMM each.
GEMM_CHUNK_MIN = 128
GEMM_CHUNKS_MAX = 16
STACK_MAX = 1 << 16


def sum_of_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """aᵀb = Σ_k a_kᵀ b_k for a (K, M) and b (K, N), summed in two levels (see STACK_MAX).

    Every float32 run of additions is at most about √K long (small results) or at most
    max(GEMM_CHUNK_MIN, K / GEMM_CHUNKS_MAX) plus GEMM_CHUNKS_MAX long (larger ones).
    """
    (K, M), N = a.shape, b.shape[1]
    c = max(1, math.isqrt(K))
    n = K // c
    if n * M * N <= STACK_MAX:
        out = np.matmul(a[: n * c].reshape(n, c, M).transpose(0, 2, 1), b[: n * c].reshape(n, c, N)).sum(axis=0)
        if n * c < K:
            out += np.dot(a[n * c :].T, b[n * c :])
        return out
    chunk = max(GEMM_CHUNK_MIN, -(-K // GEMM_CHUNKS_MAX))
    out = np.dot(a[:chunk].T, b[:chunk])
    if K > chunk:
        work = np.empty_like(out)
        for s in range(chunk, K, chunk):
            a[s : s + chunk].T.dot(b[s : s + chunk], work)
            out += work
    return out


def column_sum(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=0) for a C-contiguous (K, N) array, as ⌊√K⌋-row chunk sums added up: runs of about √K."""
    K, N = a.shape
    c = max(1, math.isqrt(K))
    n = K // c
    out = a[: n * c].reshape(n, c, N).sum(axis=1).sum(axis=0)
    if n * c < K:
        out += a[n * c :].sum(axis=0)
    return out
