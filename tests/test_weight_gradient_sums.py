"""The float32 weight-gradient sums of ``scratch_rnn.cells.elman.weight_gradients`` and of ``cells.loops``
(docs/performance.md, "Float32 accuracy").

float64 keeps one GEMM and one column sum, bit for bit. float32 sums in two levels, so that no run of
float32 additions is long: the probes below put 2^24 first and then ones, which a single float32 run
absorbs one by one (2^24 + 1 rounds back to 2^24), while a sum over chunks keeps every one outside the
first chunk. Whatever the BLAS does inside a chunk, the sum of a chunk of ones is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy import make_problem, run_scratch
from scratch_rnn.cells import elman, loops
from scratch_rnn.gradcheck import rel_error

BIG = np.float32(2.0**24)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (60, 40, 7, 9), (50, 30, 64, 96)])
def test_float64_is_one_gemm_and_one_column_sum_bit_for_bit(shape, bias, reverse):
    T, B, I, H = shape
    rng = np.random.default_rng(0)
    delta, x = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, I))
    hs = np.tanh(rng.standard_normal((T + 1, B, H)))
    dw_ih, dw_hh, db = elman.weight_gradients(delta, x, hs, reverse, bias)
    d2 = delta.reshape(T * B, H)
    h_prev = (hs[1:] if reverse else hs[:-1]).reshape(T * B, H)
    np.testing.assert_array_equal(dw_ih, np.dot(d2.T, x.reshape(T * B, I)))
    np.testing.assert_array_equal(dw_hh, np.dot(d2.T, h_prev))
    if bias:
        np.testing.assert_array_equal(db, d2.sum(axis=0))
    else:
        assert db is None


@pytest.mark.parametrize(
    "K, M, N, first_chunk",
    [
        (48 * 48, 2, 2, 48),  # small result: ⌊√K⌋ = 48 rows per chunk, one stacked matmul
        (48 * 48 + 10, 3, 2, 48),  # the same with 10 rows left over
        (2048, 64, 64, 128),  # larger result: 16 chunks of 128 rows, one GEMM each
        (4096, 40, 50, 256),  # 16 chunks of 256 rows
    ],
)
def test_float32_sum_of_products_keeps_the_ones_outside_the_first_chunk(K, M, N, first_chunk):
    a, b = np.ones((K, M), np.float32), np.ones((K, N), np.float32)
    a[0] = BIG
    got = loops.sum_of_products(a, b).astype(np.float64)
    exact = float(BIG) + K - 1
    # at most the first chunk's ones are lost (a single float32 run loses all K - 1 of them)
    assert got.shape == (M, N) and (got >= exact - (first_chunk - 1) - 1).all() and (got <= exact + 1).all(), got


@pytest.mark.parametrize("K", [48 * 48, 48 * 48 + 10, 7])
def test_float32_column_sum_keeps_the_ones_outside_the_first_chunk(K):
    a = np.ones((K, 3), np.float32)
    a[0] = BIG
    got = loops.column_sum(a).astype(np.float64)
    c = int(np.sqrt(K))
    assert (got >= float(BIG) + K - 1 - (c - 1) - 1).all() and (got <= float(BIG) + K).all(), got


@pytest.mark.parametrize("K, M, N", [(1, 3, 4), (5, 2, 2), (300, 7, 1), (3000, 64, 70), (130, 200, 300)])
def test_float32_sums_equal_the_float64_sums_of_the_same_values(K, M, N):
    rng = np.random.default_rng(K)
    a = rng.standard_normal((K, M)).astype(np.float32)
    b = (rng.standard_normal((K, N)) + 0.5).astype(np.float32)
    got = loops.sum_of_products(a, b)
    assert got.dtype == np.float32 and got.shape == (M, N)
    assert rel_error(got, a.T.astype(np.float64) @ b.astype(np.float64)) < 1e-6
    s = loops.column_sum(b)
    assert s.dtype == np.float32 and rel_error(s, b.astype(np.float64).sum(axis=0)) < 1e-6


def test_float32_rnn_grad_w_hh_is_at_torchs_level_where_one_gemm_was_not():
    """The issue's worst kind of configuration: small H, T·B = 2212 rows. On these four draws one float32 GEMM
    gave grad W_hh errors of 1.1e-6 to 1.8e-6 against the float64 truth and the column sum gave db 1.2e-6 to
    1.7e-6 (torch float32: 3.6e-7 to 4.5e-7 and 2.2e-7 to 5.3e-7); the two-level sums give 2.3e-7 to 4.9e-7
    and 2.6e-7 to 7.2e-7."""
    for draw in range(4):
        problem = make_problem((79, 28, 71, 9), 0, draw)
        truth, _ = run_scratch(problem, np.float64)
        got, _ = run_scratch(problem, np.float32)
        for q, bound in (("grad_weight_hh", 7e-7), ("grad_weight_ih", 7e-7), ("grad_bias_ih", 1e-6)):
            assert rel_error(got[q], truth[q]) < bound, (draw, q)
