"""The fast paths of scratch_rnn equal the simple ones, and the float32 subnormal flush keeps parity.

Correctness only: nothing here is timed (``python -m benchmarks.rnn`` measures speed). The fast paths
are the in-place forward (projection written into the state buffer and overwritten step by step),
preallocated and reused backward buffers, the full-batch iteration path, strided cotangents, the
in-place dropout and the one-reduction finiteness check.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference.rnn import run_torch
from scratch_rnn import RNN
from scratch_rnn.cells import elman
from scratch_rnn.cells.base import check_finite_state
from scratch_rnn.cells.loops import padding_mask
from tests.helpers import assert_close

TINY32 = float(np.finfo(np.float32).tiny)


def _layer(rng, B=3, T=6, I=4, H=5, dtype=np.float64, scale=0.6):
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = (rng.uniform(-1, 1, (H, I)) * scale).astype(dtype)
    w_hh = (rng.uniform(-1, 1, (H, H)) * scale).astype(dtype)
    b_ih, b_hh = rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    return x, w_ih, w_hh, b_ih, b_hh, h0


def _batch_sizes(lengths, T):
    lengths = np.sort(np.asarray(lengths))[::-1]
    return (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)


# ------------------------------------------------------------------ one step
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_forward_in_place_equals_out_of_place(nonlinearity, dtype):
    rng = np.random.default_rng(0)
    x_proj, h_prev = rng.standard_normal((2, 3, 5)).astype(dtype)
    w_t = rng.standard_normal((5, 5)).astype(dtype)
    h, (hp, h_again) = elman.step_forward(x_proj, h_prev, w_t, nonlinearity)
    buf = x_proj.copy()
    h2, _ = elman.step_forward(buf, h_prev, w_t, nonlinearity, out=buf, work=np.empty_like(buf))
    assert h2 is buf and hp is h_prev and h_again is h
    np.testing.assert_array_equal(h2, h)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths", [None, (6, 2, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequence_loops_equal_the_step_functions(reverse, nonlinearity, lengths, dtype):
    """sequence_forward/backward write the step functions out inline: the numbers must not change."""
    rng = np.random.default_rng(10)
    x, w_ih, w_hh, b_ih, b_hh, h0 = _layer(rng, dtype=dtype)
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    proj = elman.input_projection(x, w_ih, b_ih + b_hh)
    g_out = rng.standard_normal((T, B, H)).astype(dtype)
    g_last = rng.standard_normal((B, H)).astype(dtype)
    bs = None if lengths is None else _batch_sizes(lengths, T)  # rows taken as sorted by length
    ref = elman.stepwise_layer(proj, h0, w_hh, nonlinearity, g_out, g_last, bs, reverse)
    hs = elman.sequence_forward(proj.copy(), h0, w_hh, nonlinearity, bs, reverse)
    delta, dh0, hidden = elman.sequence_backward(g_out, g_last, hs, w_hh, nonlinearity, bs, reverse)
    states = (hs[:-1] if reverse else hs[1:]).copy()
    if bs is not None:
        states[padding_mask(bs, B)] = 0  # the reverse direction parks h0 copies there
    for name, mine, theirs in zip(("states", "hidden_grads", "delta", "grad_h0"), (states, hidden, delta, dh0), ref):
        np.testing.assert_array_equal(
            mine,
            theirs,
            err_msg=f"{name}: reverse={reverse}, {nonlinearity}, lengths={lengths}, {np.dtype(dtype).name}",
        )


# ------------------------------------------------------------------ one layer
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_layer_equals_textbook_bptt(reverse, nonlinearity):
    rng = np.random.default_rng(1)
    x, w_ih, w_hh, b_ih, b_hh, h0 = _layer(rng)
    g_out = rng.standard_normal((x.shape[0],) + h0.shape)
    g_last = rng.standard_normal(h0.shape)
    proj = elman.input_projection(x, w_ih, b_ih + b_hh)
    hs = elman.sequence_forward(proj, h0, w_hh, nonlinearity, None, reverse)
    delta, gh0, hidden = elman.sequence_backward(g_out, g_last, hs, w_hh, nonlinearity, None, reverse)
    dw_ih, dw_hh, db = elman.weight_gradients(delta, x, hs, reverse, True)
    dx = np.einsum("tbh,hi->tbi", delta, w_ih)
    ref = elman.textbook_layer(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, g_out, g_last, reverse)
    states = hs[:-1] if reverse else hs[1:]
    for name, mine, theirs in zip(
        ("states", "hidden_grads", "grad_h0", "dW_ih", "dW_hh", "db", "dx"),
        (states, hidden, gh0, dw_ih, dw_hh, db, dx),
        ref,
    ):
        assert_close(mine, theirs, name=name, config=(reverse, nonlinearity), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, (6, 6, 2), (5, 1, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_into_the_state_buffer_equals_separate_projection(reverse, lengths, dtype):
    rng = np.random.default_rng(2)
    x, w_ih, w_hh, b_ih, b_hh, h0 = _layer(rng, dtype=dtype)
    T, B, _ = x.shape
    bs = None if lengths is None else _batch_sizes(lengths, T)
    separate = elman.sequence_forward(elman.input_projection(x, w_ih, b_ih + b_hh), h0, w_hh, "tanh", bs, reverse)
    hs = np.full((T + 1, B, w_ih.shape[0]), np.nan, dtype=dtype)  # garbage must all be overwritten
    proj = elman.input_projection(x, w_ih, b_ih + b_hh, out=hs[:-1] if reverse else hs[1:])
    assert np.shares_memory(proj, hs)
    out = elman.sequence_forward(proj, h0, w_hh, "tanh", bs, reverse, hs=hs)
    assert out is hs
    np.testing.assert_array_equal(hs, separate)
    if bs is not None:  # padded steps are zero (the reverse direction's h0 slots aside)
        states = hs[:-1] if reverse else hs[1:]
        pad = padding_mask(bs, B)
        if not reverse:
            assert not states[pad].any()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_full_batch_path_equals_packed_path_with_full_lengths(reverse, nonlinearity):
    """batch_sizes=None takes the iterator path; all-T batch_sizes the indexed one: same numbers."""
    rng = np.random.default_rng(3)
    x, w_ih, w_hh, b_ih, b_hh, h0 = _layer(rng, dtype=np.float32)
    T, B, _ = x.shape
    full = np.full(T, B)
    g_out = rng.standard_normal((T,) + h0.shape).astype(np.float32)
    g_last = rng.standard_normal(h0.shape).astype(np.float32)
    res = []
    for bs in (None, full):
        hs = elman.sequence_forward(elman.input_projection(x, w_ih, b_ih + b_hh), h0, w_hh, nonlinearity, bs, reverse)
        res.append((hs,) + elman.sequence_backward(g_out, g_last, hs, w_hh, nonlinearity, bs, reverse, TINY32))
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, (6, 2, 4)])
def test_backward_into_dirty_reused_buffers_equals_fresh(reverse, lengths):
    rng = np.random.default_rng(4)
    x, w_ih, w_hh, b_ih, b_hh, h0 = _layer(rng)
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    bs = None if lengths is None else _batch_sizes(lengths, T)
    hs = elman.sequence_forward(elman.input_projection(x, w_ih, b_ih + b_hh), h0, w_hh, "tanh", bs, reverse)
    g_full = rng.standard_normal((T, B, 3 * H))
    g_out = g_full[:, :, H : 2 * H]  # strided, as a bidirectional layer's slice or batch_first gives
    g_last = rng.standard_normal((B, H))
    fresh = elman.sequence_backward(np.ascontiguousarray(g_out), g_last, hs, w_hh, "tanh", bs, reverse)
    hidden = np.full((T, B, H), np.nan)
    delta = np.full((T, B, H), np.nan)
    reused = elman.sequence_backward(g_out, g_last, hs, w_hh, "tanh", bs, reverse, hidden=hidden, delta=delta)
    assert reused[0] is delta and reused[2] is hidden
    for a, b in zip(fresh, reused):
        np.testing.assert_array_equal(a, b)
    if bs is not None:
        pad = padding_mask(bs, B)
        assert not hidden[pad].any() and not delta[pad].any()


# ------------------------------------------------------------------ the model
def _model_case(dtype, T=6, B=3, unbatched=False, **kw):
    model = RNN(3, 4, dtype=dtype, seed=0, **kw)
    rng = np.random.default_rng(5)
    shape = (T, 3) if unbatched else (B, T, 3) if kw.get("batch_first") else (T, B, 3)
    return model, rng.standard_normal(shape).astype(dtype), rng


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(num_layers=2),
        dict(bidirectional=True),
        dict(batch_first=True),
        dict(batch_first=True, B=1),
        dict(batch_first=True, T=1),
        dict(B=1),
        dict(unbatched=True),
        dict(unbatched=True, batch_first=True),
    ],
)
def test_writing_into_the_output_does_not_change_the_gradients(kw):
    """The output is the caller's: in-place edits of it must not reach the states backward reads.

    (batch_first with one sequence or one step once returned a view: the transposed states were
    already C-contiguous, so making them contiguous copied nothing.)
    """
    model, x, rng = _model_case(np.float64, **kw)
    out, _ = model(x)
    g = rng.standard_normal(out.shape)
    gx, gh0 = model.backward(g)
    expected = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    out, _ = model(x)
    out *= 100.0
    out[...] = np.nan
    gx2, gh02 = model.backward(g)
    np.testing.assert_array_equal(gx2, gx)
    np.testing.assert_array_equal(gh02, gh0)
    for k in expected:
        np.testing.assert_array_equal(model.grads[k], expected[k])


def test_batch_first_strided_cotangent_equals_time_major_contiguous():
    a, x, rng = _model_case(np.float32)
    b = RNN(3, 4, dtype=np.float32, seed=0, batch_first=True)
    g = rng.standard_normal((6, 3, 4)).astype(np.float32)
    a(x)
    gxa, gha = a.backward(g)
    b(x.transpose(1, 0, 2))
    gxb, ghb = b.backward(np.ascontiguousarray(g.transpose(1, 0, 2)))
    np.testing.assert_array_equal(gxb.transpose(1, 0, 2), gxa)
    np.testing.assert_array_equal(ghb, gha)
    np.testing.assert_array_equal(b.hidden_grads, a.hidden_grads)
    for k in a.grads:
        np.testing.assert_array_equal(b.grads[k], a.grads[k])


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True)])
def test_reused_buffers_leak_nothing_between_calls(kw):
    """forward reuses the last forward's state buffers, backward its δ buffer: results stay as a fresh
    model's, and nothing handed out earlier (outputs, h_n, hidden_grads, input grads) changes."""
    rng = np.random.default_rng(6)
    model = RNN(3, 4, dtype=np.float64, seed=0, **kw)
    handed_out = []
    for T in (6, 6, 4, 6):  # same sizes (buffers reused), then new ones, then the first again
        x = rng.standard_normal((3, T, 3) if kw.get("batch_first") else (T, 3, 3))
        out, h_n = model(x)
        g = rng.standard_normal(out.shape)
        model.zero_grad()
        gx, gh0 = model.backward(g)
        fresh = RNN(3, 4, dtype=np.float64, seed=0, **kw)
        fresh_out, fresh_hn = fresh(x)
        fresh_gx, fresh_gh0 = fresh.backward(g)
        for name, a, b in [
            ("output", out, fresh_out),
            ("h_n", h_n, fresh_hn),
            ("grad_x", gx, fresh_gx),
            ("grad_h0", gh0, fresh_gh0),
            ("hidden_grads", model.hidden_grads, fresh.hidden_grads),
        ] + [(k, model.grads[k], fresh.grads[k]) for k in fresh.grads]:
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, T={T}, {kw}")
        handed_out.append([(a, a.copy()) for a in (out, h_n, gx, gh0, model.hidden_grads)])
    for i, arrays in enumerate(handed_out):
        for a, saved in arrays:
            np.testing.assert_array_equal(a, saved, err_msg=f"call {i}: a later call wrote into its result")


def test_a_resized_forward_lets_the_old_states_go_before_it_allocates(monkeypatch):
    """Buffers of another shape are released before the new states exist: the caches never coexist."""
    import weakref

    model = RNN(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    model(np.ones((6, 2, 3)))
    old = [weakref.ref(hs.base) for hs in model.states]
    alive_at_first_projection = []
    orig = elman.input_projection

    def watching(*args, **kwargs):
        if not alive_at_first_projection:
            alive_at_first_projection.append(sum(r() is not None for r in old))
        return orig(*args, **kwargs)

    monkeypatch.setattr(elman, "input_projection", watching)
    model(np.ones((7, 2, 3)))  # T changes: no old buffer fits
    assert alive_at_first_projection == [0]


def test_a_forward_that_raises_leaves_no_cache_behind():
    """backward after a failed forward must not run through the forward before it."""
    model = RNN(2, 3, nonlinearity="relu", dtype=np.float32, seed=0)
    x = np.ones((5, 1, 2), np.float32)
    model(x)  # a good forward first: its cache must not survive the next one's failure
    model.load_state_dict({k: np.full_like(v, 1e30) for k, v in model.state_dict().items()})
    with pytest.raises(FloatingPointError):
        model(x)
    with pytest.raises(RuntimeError, match="call forward first"):
        model.backward(np.ones((5, 1, 3), np.float32))


def test_in_place_dropout_equals_the_formula():
    """Layer 1 reads out_0 * keep / (1 - p): the stack equals two one-layer RNNs with the mask applied by hand."""
    model = RNN(3, 4, num_layers=2, dropout=0.4, dtype=np.float64, seed=0)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 2, 3))
    keep = rng.random((5, 2, 4)) >= 0.4
    out, _ = model(x, dropout_masks=[keep])
    sd = model.state_dict()
    first, second = RNN(3, 4, dtype=np.float64), RNN(4, 4, dtype=np.float64)
    first.load_state_dict({k: sd[k] for k in first.state_dict()})
    second.load_state_dict({k: sd[k.replace("_l0", "_l1")] for k in second.state_dict()})
    layer0_out, _ = first(x)
    expected, _ = second(layer0_out * keep * (1 / 0.6))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_finiteness_check_sees_every_non_finite_value(bad):
    out = np.zeros((4, 2, 3))
    check_finite_state(out, 0, np.float64)
    out[2, 1, 0] = bad
    with pytest.raises(FloatingPointError, match="time step 2") as err:
        check_finite_state(out, 0, np.float64)
    assert "use float64" not in str(err.value)  # it is float64 already


# ------------------------------------------------------------------ the subnormal flush
def _vanishing_case(T=220, B=3, I=2, H=8):
    """float32, loss on the last step only, W_hh = 0.5 · orthogonal: |dL/dh_t| halves every step
    going back, so it crosses float32's smallest normal (2^-126) about 126 steps before the end."""
    model = RNN(I, H, dtype=np.float32, seed=0)
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    model.parameters()["weight_hh_l0"][...] = 0.5 * q
    model.parameters()["weight_ih_l0"][...] *= 0.1  # small inputs: tanh stays near linear
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    g = np.zeros((T, B, H), dtype=np.float32)
    g[-1] = rng.standard_normal((B, H))
    return model, x, g


def _run(model, x, g):
    model(x)
    model.zero_grad()
    gx, gh0 = model.backward(g)
    return dict(
        grad_x=gx, grad_h0=gh0, hidden=model.hidden_grads.copy(), grads={k: v.copy() for k, v in model.grads.items()}
    )


def _subnormal(a):
    a = np.abs(np.asarray(a))
    return (a > 0) & (a < TINY32)


def test_flush_keeps_subnormals_out_and_changes_only_tiny_values():
    model, x, g = _vanishing_case()
    flushed = _run(model, x, g)
    model.flush_below = 0.0  # the option, switched off between calls
    exact = _run(model, x, g)
    assert _subnormal(exact["hidden"]).any(), "the case must reach the subnormal range, or it tests nothing"
    assert not _subnormal(flushed["hidden"]).any()
    # Everything the flush drops is below 2^-100, and the recurrence contracts: every difference stays
    # tiny, and every gradient is the same to float32's resolution.
    assert np.max(np.abs(flushed["hidden"].astype(np.float64) - exact["hidden"])) < 2.0**-95
    big = np.abs(exact["hidden"]) >= 2.0**-60
    np.testing.assert_array_equal(flushed["hidden"][big], exact["hidden"][big])
    for k in exact["grads"]:
        assert_close(flushed["grads"][k], exact["grads"][k], name=k, rtol=1e-6, atol=1e-30)
    assert_close(flushed["grad_x"], exact["grad_x"], name="grad_x", rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, (9, 9, 5)])
def test_flush_acts_every_kth_step_below_the_threshold(reverse, lengths):
    """W_hh = 0 makes g_t = dL/dout_t exactly, so the flush's own effect is visible entry by entry."""
    T, B, H, k, thr = 9, 3, 4, 4, 2.0**-100
    rng = np.random.default_rng(8)
    g_out = rng.standard_normal((T, B, H)).astype(np.float32)
    g_out[:, :, :2] *= 2.0**-110  # below the threshold (and subnormal-free: 2^-110 > 2^-126)
    hs = np.tanh(rng.standard_normal((T + 1, B, H))).astype(np.float32)
    bs = None if lengths is None else _batch_sizes(lengths, T)
    delta, gh0, hidden = elman.sequence_backward(
        g_out, np.zeros((B, H), np.float32), hs, np.zeros((H, H), np.float32), "tanh", bs, reverse, thr, flush_every=k
    )
    order = range(T) if reverse else range(T - 1, -1, -1)
    for i, t in enumerate(order):
        n = B if bs is None else bs[t]
        expected = g_out[t, :n].copy()
        if i % k == 0:
            expected[np.abs(expected) < thr] = 0
        np.testing.assert_array_equal(hidden[t, :n], expected, err_msg=f"step {t} (loop step {i})")


def test_the_flush_settings_are_what_the_docs_say():
    assert RNN(2, 3, dtype=np.float32).flush_below == 2.0**-100
    assert RNN(2, 3, dtype=np.float64).flush_below == 0.0
    assert RNN(2, 3).flush_every == 4
    assert RNN(2, 3, flush_below=0.0, flush_every=8).flush_below == 0.0
    for bad in (-1.0, float("nan"), "0", True):
        with pytest.raises(ValueError, match="flush_below"):
            RNN(2, 3, flush_below=bad)


def test_flushed_float32_vanishing_regime_matches_torch_float64():
    model, x, g = _vanishing_case()
    mine = _run(model, x, g)
    ref = run_torch(model, x, None, None, g, None)  # the float64 oracle
    assert_close(mine["grad_x"], ref["grad_x"], name="grad_x", dtype=np.float32)
    assert_close(mine["grad_h0"], ref["grad_h0"], name="grad_h0", dtype=np.float32)
    for k in ref["grads"]:
        assert_close(mine["grads"][k], ref["grads"][k], name=f"grad of {k}", dtype=np.float32)


def test_float64_is_never_flushed():
    model = RNN(2, 3, dtype=np.float64, seed=0)
    assert model.flush_below == 0.0
    x = np.ones((3, 1, 2))
    model(x)
    g = np.zeros((3, 1, 3))
    g[-1] = 1e-310  # a float64 subnormal survives
    model.backward(g)
    assert model.hidden_grads[0, -1, 0, 0] == 1e-310
