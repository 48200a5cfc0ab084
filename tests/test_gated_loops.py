"""The LSTM/GRU loops the models run (``*_sequence_forward/backward`` of scratch_rnn/cells/lstm.py and gru.py)
equal the same modules' stepwise loops (``*_stepwise_forward/backward``) bit for bit.

The stepwise loops, which call the step functions once per step, are the reference; they are
held to torch autograd in tests/test_gated_functional.py. The fast loops must give *equal* arrays, not
close ones: every entry of the forward cache and of the backward's dict, float32 and float64, every
option (projection, bias, direction, packed lengths, the subnormal flush), with the backward's factor
blocks cut at every size from one step to the whole sequence. Then the models (LSTM, GRU) are run once
with the fast loops and once with the reference loops swapped in, and their outputs and gradients
must be equal too: that holds the wiring of the LSTM and GRU classes, and it is why the documented LSTM/GRU IMDB numbers
did not move when the fast loops came in.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratch_rnn import GRU, LSTM
from scratch_rnn.cells import gru, loops, lstm
from tests.gated_cases import Case, cast, make_arrays
from tests.strategies import gated_cases


def loop_functions(kind: str, which: str):
    """(forward, backward) of a cell module: "stepwise" (the reference) or "sequence" (the loops the model runs)."""
    mod = lstm if kind == "lstm" else gru
    return getattr(mod, f"{kind}_{which}_forward"), getattr(mod, f"{kind}_{which}_backward")


def run_loops(which: str, case: Case, dtype, flush_below: float = 0.0, flush_every: int = 1):
    """One layer and direction through the cell's ``which`` loops: (forward cache, backward dict)."""
    a = cast(make_arrays(case), dtype)
    bs = case.batch_sizes()
    forward, backward = loop_functions(case.kind, which)
    if case.kind == "lstm":
        b = a["b_ih"] + a["b_hh"] if case.bias else None
        xp = loops.input_projection(a["x"], a["w_ih"], b)
        cache = forward(xp, a["h0"], a["c0"], a["w_hh"], a["w_hr"], bs, case.reverse)
        back = backward(
            a["go"],
            a["ghn"],
            a["gcn"],
            cache,
            a["w_hh"],
            a["w_hr"],
            bs,
            case.reverse,
            flush_below=flush_below,
            flush_every=flush_every,
        )
    else:
        xp = loops.input_projection(a["x"], a["w_ih"], a["b_ih"])
        cache = forward(xp, a["h0"], a["w_hh"], a["b_hh"], bs, case.reverse)
        back = backward(
            a["go"], a["ghn"], cache, a["w_hh"], bs, case.reverse, flush_below=flush_below, flush_every=flush_every
        )
    return cache, back


def assert_bit_equal(case: Case, dtype, **flush):
    ref = run_loops("stepwise", case, dtype, **flush)
    fast = run_loops("sequence", case, dtype, **flush)
    for part, r, f in (("forward", ref[0], fast[0]), ("backward", ref[1], fast[1])):
        assert r.keys() == f.keys(), (part, r.keys(), f.keys())
        for k in r:
            assert f[k].dtype == r[k].dtype and f[k].shape == r[k].shape, (part, k, case)
            if not np.array_equal(f[k], r[k]):
                worst = np.max(np.abs(f[k].astype(np.float64) - r[k]))
                pytest.fail(
                    f"{part} {k!r} differs from the stepwise loop (largest difference {worst:.3g}); "
                    f"{np.dtype(dtype).name}, flush {flush}, block {loops.BLOCK_ENTRIES}, {case}"
                )


@given(
    case=gated_cases(),
    dtype=st.sampled_from([np.float32, np.float64]),
    block=st.sampled_from([1, 40, 1 << 16]),
    flush=st.sampled_from([0.0, 0.3]),
)
def test_random_cases_bit_equal(case, dtype, block, flush):
    saved, loops.BLOCK_ENTRIES = loops.BLOCK_ENTRIES, block  # (hypothesis and function-scoped monkeypatch do not mix)
    try:
        assert_bit_equal(case, dtype, flush_below=flush, flush_every=2)
    finally:
        loops.BLOCK_ENTRIES = saved


# Sizes where NumPy's SIMD loops run full vectors and tails, and the BLAS calls are real GEMMs; the IMDB
# run's shape (B 64, H 64, packed lengths) among them.
SIZED = [
    Case(
        "lstm",
        50,
        64,
        0,
        64,
        30,
        True,
        True,
        tuple(sorted(np.random.default_rng(1).integers(1, 31, 64), reverse=True)),
        seed=1,
    ),
    Case(
        "gru",
        50,
        64,
        0,
        64,
        30,
        True,
        False,
        tuple(sorted(np.random.default_rng(2).integers(1, 31, 64), reverse=True)),
        seed=2,
    ),
    Case("lstm", 7, 37, 5, 9, 12, True, False, None, seed=3),
    Case("lstm", 3, 32, 0, 1, 40, False, True, None, seed=4),
    Case("gru", 3, 37, 0, 1, 40, True, True, None, seed=5),
    # batch 1, forward direction: the backward visits each block's steps downwards, and at block 3000 the
    # last block is partial (the fast loops walk a block's arrays reversed: they must be cut to the block)
    Case("lstm", 3, 32, 0, 1, 40, True, False, None, seed=7),
    Case("gru", 3, 37, 0, 1, 40, True, False, None, seed=8),
    Case("gru", 16, 40, 0, 13, 11, False, False, (11, 11, 9, 9, 9, 8, 5, 5, 4, 3, 2, 1, 1), seed=6),
]


@pytest.mark.parametrize("block", [1, 3000, 1 << 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", SIZED, ids=lambda c: f"{c.kind}-B{c.batch}-H{c.hidden_size}-P{c.proj_size}")
def test_sized_cases_bit_equal(case, dtype, block, monkeypatch):
    monkeypatch.setattr(loops, "BLOCK_ENTRIES", block)
    assert_bit_equal(case, dtype)
    assert_bit_equal(case, dtype, flush_below=0.5, flush_every=3)


def test_blocks_cover_the_backward_order_once():
    for T in (1, 2, 7, 10):
        for reverse in (False, True):
            for size in (1, 3, 10, 50):
                seen = []
                for lo, steps in loops.blocks(T, reverse, size):
                    assert len(steps) <= size and sorted(steps) == list(range(lo, lo + len(steps)))
                    seen += steps
                assert seen == list(reversed(loops.visit_order(T, reverse)))


def _model_run(cls, kw, seed):
    rng = np.random.default_rng(seed)
    m = cls(5, 6, seed=seed, **kw)
    m.train()
    T, B = 7, 4
    x = rng.standard_normal((T, B, 5)).astype(m.dtype)
    lengths = np.array([7, 3, 5, 1])
    out, _ = m(x, lengths=lengths)
    grad_x, _ = m.backward(rng.standard_normal(out.shape).astype(m.dtype))
    extra = [m.cell_grads] if cls is LSTM else []
    return [out, grad_x, m.hidden_grads, *extra, *(m.grads[k] for k in sorted(m.grads))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "cls,kw",
    [
        (LSTM, dict(num_layers=2, bidirectional=True, proj_size=3, dropout=0.3)),
        (LSTM, dict(bidirectional=True)),
        (GRU, dict(num_layers=2, bidirectional=True)),
    ],
    ids=["lstm-proj", "lstm", "gru"],
)
def test_models_run_the_fast_loops_and_equal_the_reference(cls, kw, dtype, monkeypatch):
    kind = cls.__name__.lower()
    mod = lstm if cls is LSTM else gru
    calls = []
    for which in ("forward", "backward"):  # the models' loops are the fast ones ...
        fast_fn = getattr(mod, f"{kind}_sequence_{which}")
        monkeypatch.setattr(
            mod, f"{kind}_sequence_{which}", lambda *a, _fn=fast_fn, _w=which, **k: calls.append(_w) or _fn(*a, **k)
        )
    fast = _model_run(cls, dict(kw, dtype=dtype), seed=3)
    assert {"forward", "backward"} <= set(calls)
    for which, fn in zip(("forward", "backward"), loop_functions(kind, "stepwise")):
        monkeypatch.setattr(mod, f"{kind}_sequence_{which}", fn)  # ... and swapping the stepwise ones in changes no bit
    ref = _model_run(cls, dict(kw, dtype=dtype), seed=3)
    assert len(fast) == len(ref)
    for i, (f, r) in enumerate(zip(fast, ref)):
        assert np.array_equal(f, r), f"{cls.__name__} {kw} {np.dtype(dtype).name}: result {i} differs"
