"""One layer and one direction of an LSTM or GRU as a test case (:class:`Case`), and its random arrays.

Shared by tests/test_gated_functional.py (against torch autograd), tests/test_gated_loops.py (the fast
loops against the stepwise ones) and tests/test_gated_unroll.py; the strategy that draws a Case is
``gated_cases`` in tests/strategies.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    kind: str  # "lstm" or "gru"
    input_size: int
    hidden_size: int
    proj_size: int  # LSTM only; 0 = no projection
    batch: int
    steps: int
    bias: bool
    reverse: bool
    lengths: tuple | None  # sorted by decreasing length (the functions' contract), or None (all T)
    seed: int

    @property
    def out(self):
        return self.proj_size if self.proj_size else self.hidden_size

    @property
    def gates(self):
        return 4 if self.kind == "lstm" else 3

    def batch_sizes(self):
        if self.lengths is None:
            return None
        return (np.asarray(self.lengths)[None, :] > np.arange(self.steps)[:, None]).sum(axis=1)

    def pad(self):
        """(T, B) bool, True at padded steps."""
        lengths = np.full(self.batch, self.steps) if self.lengths is None else np.asarray(self.lengths)
        return np.arange(self.steps)[:, None] >= lengths[None, :]


def make_arrays(case: Case) -> dict:
    """Random float64 weights, biases, inputs, initial states and cotangents of one case."""
    rng = np.random.default_rng(case.seed)
    I, H, P, B, T, G = case.input_size, case.hidden_size, case.proj_size, case.batch, case.steps, case.gates
    out = case.out
    a = dict(
        w_ih=rng.uniform(-1, 1, (G * H, I)) * 0.8,
        w_hh=rng.uniform(-1, 1, (G * H, out)) * 0.8,
        b_ih=rng.standard_normal(G * H) * 0.5 if case.bias else None,
        b_hh=rng.standard_normal(G * H) * 0.5 if case.bias else None,
        w_hr=rng.uniform(-1, 1, (P, H)) if (case.kind == "lstm" and P) else None,
        x=rng.standard_normal((T, B, I)),
        h0=rng.standard_normal((B, out)) * 0.5,
        c0=rng.standard_normal((B, H)) if case.kind == "lstm" else None,
        # dL/dout with non-trivial strides: a transposed (B, T, out) array
        go=rng.standard_normal((B, T, out)).transpose(1, 0, 2),
        ghn=rng.standard_normal((B, out)),
        gcn=rng.standard_normal((B, H)) if case.kind == "lstm" else None,
    )
    return a


def cast(arrays: dict, dtype) -> dict:
    return {k: (None if v is None else np.asarray(v).astype(dtype)) for k, v in arrays.items()}
