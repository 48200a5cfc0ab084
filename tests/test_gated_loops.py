"""The LSTM/GRU loops the models run (``*_sequence_forward/backward`` of scratch_rnn/cells/lstm.py and gru.py)
equal the same modules' stepwise loops (``*_stepwise_forward/backward``) bit for bit.

The stepwise loops, which call the step functions once per step, are the reference; they are
held to torch autograd in tests/test_gated_functional.py. The fast loops must give *equal* arrays, not
close ones: every entry of the forward cache and of the backward's dict, float32 and float64, every
option (projection, bias, direction, packed lengths, the subnormal flush), with the backward's factor
blocks cut at every size from one step to the whole sequence. Then the models (LSTM, GRU) are run once
with the fast loops and once with the reference loops swapped in, and their outputs and gradients
must be equal too: that holds the wiring of the LSTM and GRU classes, and it is why the documented LSTM/GRU IMDB numbers
did not move when the fast loops came in. Last, the batch split (``threads=``): the loops with their rows split over
threads equal the stepwise loops too, and the split's machinery (chunks, BLAS threads, errors, errstate, fork) is held.
"""

from __future__ import annotations

import warnings

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


def run_loops(which: str, case: Case, dtype, flush_below: float = 0.0, flush_every: int = 1, **threads):
    """One layer and direction through the cell's ``which`` loops: (forward cache, backward dict). ``threads=k``:
    the sequence loops with their rows split over k threads."""
    a = cast(make_arrays(case), dtype)
    bs = case.batch_sizes()
    forward, backward = loop_functions(case.kind, which)
    if case.kind == "lstm":
        b = a["b_ih"] + a["b_hh"] if case.bias else None
        xp = loops.input_projection(a["x"], a["w_ih"], b)
        cache = forward(xp, a["h0"], a["c0"], a["w_hh"], a["w_hr"], bs, case.reverse, **threads)
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
            **threads,
        )
    else:
        xp = loops.input_projection(a["x"], a["w_ih"], a["b_ih"])
        cache = forward(xp, a["h0"], a["w_hh"], a["b_hh"], bs, case.reverse, **threads)
        back = backward(
            a["go"],
            a["ghn"],
            cache,
            a["w_hh"],
            bs,
            case.reverse,
            flush_below=flush_below,
            flush_every=flush_every,
            **threads,
        )
    return cache, back


def assert_bit_equal(case: Case, dtype, threads: int = 1, **flush):
    ref = run_loops("stepwise", case, dtype, **flush)
    fast = run_loops("sequence", case, dtype, **flush, **({"threads": threads} if threads > 1 else {}))
    for part, r, f in (("forward", ref[0], fast[0]), ("backward", ref[1], fast[1])):
        assert r.keys() == f.keys(), (part, r.keys(), f.keys())
        for k in r:
            assert f[k].dtype == r[k].dtype and f[k].shape == r[k].shape, (part, k, case)
            if not np.array_equal(f[k], r[k]):
                worst = np.max(np.abs(f[k].astype(np.float64) - r[k]))
                pytest.fail(
                    f"{part} {k!r} differs from the stepwise loop (largest difference {worst:.3g}); "
                    f"{np.dtype(dtype).name}, flush {flush}, block {loops.BLOCK_ENTRIES}, threads {threads}, {case}"
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
        # ... and swapping the stepwise ones in (they have no threads: the model's one thread) changes no bit
        monkeypatch.setattr(mod, f"{kind}_sequence_{which}", lambda *a, threads=1, _fn=fn, **k: _fn(*a, **k))
    ref = _model_run(cls, dict(kw, dtype=dtype), seed=3)
    assert len(fast) == len(ref)
    for i, (f, r) in enumerate(zip(fast, ref)):
        assert np.array_equal(f, r), f"{cls.__name__} {kw} {np.dtype(dtype).name}: result {i} differs"


# --------------------------------------------------------------------------------------------
# The batch split (LSTM and GRU ``threads=``): the rows run as chunks on several threads, the numbers unchanged
# --------------------------------------------------------------------------------------------
@st.composite
def split_cases(draw):
    """An LSTM or GRU layer and direction with a full batch large enough to be split (2 x MIN_SPLIT_ROWS rows and
    up; with packed lengths the loops do not split)."""
    kind = draw(st.sampled_from(["lstm", "gru"]))
    H = draw(st.integers(1, 6))
    B, T = draw(st.integers(2 * loops.MIN_SPLIT_ROWS, 5 * loops.MIN_SPLIT_ROWS)), draw(st.integers(1, 7))
    proj = draw(st.integers(0, H - 1)) if kind == "lstm" else 0
    bias, reverse = draw(st.booleans()), draw(st.booleans())
    return Case(kind, draw(st.integers(1, 4)), H, proj, B, T, bias, reverse, None, draw(st.integers(0, 2**31 - 1)))


@given(
    case=split_cases(),
    dtype=st.sampled_from([np.float32, np.float64]),
    threads=st.integers(2, 5),
    flush=st.sampled_from([0.0, 0.3]),
)
def test_split_loops_equal_the_stepwise_loops(case, dtype, threads, flush):
    assert len(loops.row_chunks(case.batch, threads)) > 1  # the split happens: the check is not vacuous
    assert_bit_equal(case, dtype, threads=threads, flush_below=flush, flush_every=2)


SPLIT_SIZED = [
    Case("lstm", 50, 64, 0, 64, 12, True, True, None, seed=1),  # the IMDB run's B and H, full batches
    Case("lstm", 64, 128, 0, 40, 9, True, False, None, seed=2),  # chunks of 16 and 24 rows
    Case("lstm", 7, 33, 5, 100, 6, False, False, None, seed=3),  # a projection; 3 chunks with 3 threads
    Case("lstm", 3, 9, 0, 81, 8, True, True, None, seed=4),  # 81 = 5 x 16 + 1
    Case("gru", 50, 64, 0, 64, 12, True, False, None, seed=5),
    Case("gru", 64, 128, 0, 40, 9, False, True, None, seed=6),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", SPLIT_SIZED, ids=lambda c: f"{c.kind}-B{c.batch}-H{c.hidden_size}-P{c.proj_size}")
def test_split_loops_at_real_sizes(case, dtype, threads):
    """Real GEMMs: the products of a chunk's rows round as in the whole batch."""
    assert len(loops.row_chunks(case.batch, threads)) > 1
    assert_bit_equal(case, dtype, threads=threads)
    assert_bit_equal(case, dtype, threads=threads, flush_below=0.5, flush_every=3)


def test_packed_lengths_run_unsplit():
    """With packed lengths a chunk of short sequences reaches steps with one active row, a product BLAS computes
    another way (gemv): the loops do not split them (and give the stepwise loop's numbers)."""
    calls = []
    loops.run_rows(4, 64, np.array([64, 40, 3]), lambda lo, hi, sizes: calls.append((lo, hi, list(sizes))))
    assert calls == [(0, 64, [64, 40, 3])]
    assert_bit_equal(SIZED[0], np.float32, threads=2)


def test_row_chunks_cover_the_batch():
    for B in range(1, 130):
        for threads in range(1, 6):
            chunks = loops.row_chunks(B, threads)
            assert chunks[0][0] == 0 and chunks[-1][1] == B and 1 <= len(chunks) <= threads, (B, threads, chunks)
            assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:])), (B, threads, chunks)
            if len(chunks) > 1:
                assert min(hi - lo for lo, hi in chunks) >= loops.MIN_SPLIT_ROWS, (B, threads, chunks)
                assert all(lo % loops.MIN_SPLIT_ROWS == 0 for lo, _ in chunks), (B, threads, chunks)
                assert len(chunks) == min(threads, B // loops.MIN_SPLIT_ROWS), (B, threads, chunks)
            else:
                assert threads == 1 or B < 2 * loops.MIN_SPLIT_ROWS, (B, threads)


def test_the_split_runs_on_several_threads_and_gives_blas_its_threads_back(monkeypatch):
    import threading

    from threadpoolctl import threadpool_info

    seen: list[tuple[int, list]] = []
    forward_rows = lstm._lstm_forward_rows
    together = threading.Barrier(2, timeout=30)  # passes only if both chunks are in flight at once

    def spy(*args):
        seen.append((threading.get_ident(), [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]))
        together.wait()
        return forward_rows(*args)

    monkeypatch.setattr(lstm, "_lstm_forward_rows", spy)
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    m = LSTM(3, 4, dtype=np.float64, seed=0, threads=2)
    m(np.random.default_rng(0).standard_normal((5, 40, 3)))  # full batches: the split runs
    assert len(seen) == 2 and len({t for t, _ in seen}) == 2 and threading.get_ident() not in {t for t, _ in seen}
    assert all(blas == [1] * len(before) for _, blas in seen), seen  # BLAS at one thread inside the split
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


def test_a_failing_chunk_raises_after_every_chunk_has_finished():
    import time

    finished = []

    def rows(lo, hi, sizes):
        if lo == 0:
            raise RuntimeError("chunk 0 failed")
        time.sleep(0.2)
        finished.append(lo)

    with pytest.raises(RuntimeError, match="chunk 0 failed"):
        loops.run_rows(2, 64, None, rows)
    assert finished == [32]  # the other chunk was waited for: nothing writes after the call returns


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls", [LSTM, GRU], ids=["lstm", "gru"])
def test_the_layer_with_threads_equals_one_thread(cls, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 48, 5)).astype(dtype)
    lstm_kw = dict(proj_size=3) if cls is LSTM else {}
    hx = tuple(rng.standard_normal((4, 48, k)).astype(dtype) for k in (3, 6))
    state0 = hx if cls is LSTM else hx[1]
    results = []
    for threads in (1, 2, 3):
        m = cls(5, 6, num_layers=2, bidirectional=True, dropout=0.3, dtype=dtype, seed=2, threads=threads, **lstm_kw)
        m.train()
        out, h_n = m(x, state0)
        grad_x, _ = m.backward(np.random.default_rng(5).standard_normal(out.shape).astype(dtype))
        extra = [m.cell_grads] if cls is LSTM else []
        finals = h_n if isinstance(h_n, tuple) else (h_n,)
        results.append([out, *finals, grad_x, m.hidden_grads, *extra, *(m.grads[k] for k in sorted(m.grads))])
    for threads, r in zip((2, 3), results[1:]):
        for i, (a, b) in enumerate(zip(results[0], r)):
            assert np.array_equal(a, b), f"threads={threads}: result {i} differs ({np.dtype(dtype).name})"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
@pytest.mark.parametrize("cls", [LSTM, GRU], ids=["lstm", "gru"])
def test_threads_is_checked(cls, bad):
    with pytest.raises((TypeError, ValueError), match="threads"):
        cls(3, 4, threads=bad)


def test_a_forked_child_splits_with_its_own_threads():
    """A process forked after the parent split a batch (a sweep's worker) runs its own split to the end: the
    parent's pool threads do not exist in the child, so reusing their executor would hang."""
    import multiprocessing

    x = np.random.default_rng(0).standard_normal((4, 40, 3))
    LSTM(3, 4, dtype=np.float64, seed=0, threads=2)(x)  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_split_in_child, (x,))
        out = result.get(timeout=60)  # a hang fails here
    expected, _ = LSTM(3, 4, dtype=np.float64, seed=0)(x)
    assert np.array_equal(out, expected)


def _split_in_child(x):
    out, _ = LSTM(3, 4, dtype=np.float64, seed=0, threads=2)(x)
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_the_chunks_keep_the_callers_floating_point_error_handling(threads):
    """np.errstate is per thread: the split's threads take the caller's, so an overflow raises (or is ignored)
    whether the rows run split or not."""

    def rows(lo, hi, sizes):
        np.array([1e308]) * 10.0

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        loops.run_rows(threads, 64, None, rows)
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        loops.run_rows(threads, 64, None, rows)
