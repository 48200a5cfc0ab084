"""Oracles that need no torch: finite differences, metamorphic relations, saturation, and a
demonstration that the checks catch a broken backward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from reference.rnn import run_torch
from scratch_rnn import GRU, LSTM, RNN
from scratch_rnn.cells import elman
from scratch_rnn.gradcheck import NonDifferentiableError, rnn_directional_checks
from tests.helpers import FD_TOLERANCE, assert_close, examples
from tests.strategies import rnn_cases


def states(s) -> tuple:
    """A model's state (an array, or (h, c) for the LSTM) as a tuple."""
    return s if isinstance(s, tuple) else (s,)


def row(s, b):
    """Sequence b's slice of a state (batched: (L·D, B, ·) -> (L·D, ·)), in the model's own form."""
    if s is None:
        return None
    return tuple(v[:, b] for v in s) if isinstance(s, tuple) else s[:, b]


def close_states(mine, theirs, name, config):
    for i, (a, b) in enumerate(zip(states(mine), states(theirs))):
        assert_close(a, b, name=f"{name}[{'hc'[i]}]", config=config)


def zero_state(case):
    LD = case.num_layers * (2 if case.bidirectional else 1)
    lead = (LD,) if case.unbatched else (LD, case.batch)
    zeros = (np.zeros(lead + (case.out_size,)), np.zeros(lead + (case.hidden_size,)))
    return zeros if case.lstm else zeros[0]


# ------------------------------------------------------------------ finite differences
@given(rnn_cases(max_layers=2, max_steps=5, max_batch=3, dropout=True))
@settings(max_examples=examples(40, 150))
def test_bptt_matches_central_differences(case):
    model = case.model(np.float64)
    x, h0, lengths, _, _ = case.arrays(model)
    if h0 is None:
        h0 = zero_state(case)
    model.train()
    masks = None
    if model.dropout and model.num_layers > 1:  # FD needs the same masks on every forward
        model(x, h0, lengths)
        masks = model.dropout_masks
    try:
        checks = rnn_directional_checks(model, x, h0, lengths, seed=case.seed, dropout_masks=masks)
    except NonDifferentiableError:
        reject()  # e.g. relu, no bias, zero input and h0: a pre-activation is exactly 0
    for i, chk in enumerate(checks):
        bound = FD_TOLERANCE["atol"] + FD_TOLERANCE["rtol"] * max(abs(chk.analytic), 1.0)
        assert chk.abs_error <= bound, (
            f"direction {i}: finite difference {chk.numeric!r} vs BPTT {chk.analytic!r} "
            f"(|diff| {chk.abs_error:.2e} > {bound:.2e}); config={case}"
        )


# ------------------------------------------------------------------ the checks can fail
def _one_case():
    model = RNN(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x, h0 = rng.standard_normal((5, 2, 3)), rng.standard_normal((4, 2, 4))
    g_out, g_hn = rng.standard_normal((5, 2, 8)), rng.standard_normal((4, 2, 4))
    return model, x, h0, g_out, g_hn


def _scaled(fn, factor):
    def broken(*args, **kwargs):
        res = fn(*args, **kwargs)
        return tuple(r * factor if isinstance(r, np.ndarray) else r for r in res)

    return broken


@pytest.mark.parametrize("mutation", ["scale_weight_grads", "drop_recurrent_term", "wrong_derivative"])
def test_a_broken_backward_is_caught_by_both_oracles(monkeypatch, mutation):
    """Mutate BPTT by hand: torch comparison and finite differences must both go red."""
    if mutation == "scale_weight_grads":
        monkeypatch.setattr(elman, "weight_gradients", _scaled(elman.weight_gradients, 1.0001))
    elif mutation == "drop_recurrent_term":  # forget δ W_hh: truncated BPTT of length 1
        orig = elman.sequence_backward

        def no_recurrence(grad_out, grad_h_last, hs, w_hh, *args, **kwargs):
            return orig(grad_out, grad_h_last, hs, np.zeros_like(w_hh), *args, **kwargs)

        monkeypatch.setattr(elman, "sequence_backward", no_recurrence)
    else:  # tanh'(a) written as 1 - h instead of 1 - h²

        def wrong(h, nonlinearity, out=None):
            return np.subtract(1, h, out=out)

        monkeypatch.setattr(elman, "activation_derivative", wrong)

    model, x, h0, g_out, g_hn = _one_case()
    model(x, h0)
    model.zero_grad()
    gx, gh0 = model.backward(g_out, g_hn)
    ref = run_torch(model, x, h0, None, g_out, g_hn)
    failures = 0
    for name, mine, theirs in [("grad_x", gx, ref["grad_x"]), ("grad_h0", gh0, ref["grad_h0"])] + [
        (k, model.grads[k], ref["grads"][k]) for k in ref["grads"]
    ]:
        try:
            assert_close(mine, theirs, name=name)
        except AssertionError:
            failures += 1
    assert failures > 0, f"{mutation}: the torch comparison did not notice"
    checks = rnn_directional_checks(model, x, h0)
    assert any(c.rel_error > 1e-5 for c in checks), f"{mutation}: finite differences did not notice"


# ------------------------------------------------------------------ metamorphic relations
@given(rnn_cases(allow_unbatched=False), st.data())
def test_two_chunks_with_carried_state_equal_one_run(case, data):
    if case.steps < 2:
        case.steps = 2
    case.lengths = None
    model = case.model(np.float64).eval()
    x, h0, _, _, _ = case.arrays(model)
    if model.bidirectional:  # a carried state only makes sense one way
        model = dataclasses.replace(case, bidirectional=False).model(np.float64)
        h0 = None
    k = data.draw(st.integers(1, case.steps - 1), label="split")
    ax = 1 if case.batch_first else 0
    whole, hn = model(x, h0)
    first, h_mid = model(np.take(x, range(k), axis=ax), h0)
    second, hn2 = model(np.take(x, range(k, case.steps), axis=ax), h_mid)
    assert_close(np.concatenate([first, second], axis=ax), whole, name="output (chunked)", config=case)
    close_states(hn2, hn, "h_n (chunked)", case)


@given(rnn_cases(allow_unbatched=False))
def test_each_sequence_alone_equals_its_row_of_the_padded_batch(case):
    model = case.model(np.float64).eval()
    x, h0, lengths, g_out, g_hn = case.arrays(model)
    if lengths is None:
        lengths = np.full(case.batch, case.steps)
    out, h_n = model(x, h0, lengths)
    model.zero_grad()
    gx, gh0 = model.backward(g_out, g_hn)
    bf = case.batch_first
    for b in range(case.batch):
        n = int(lengths[b])
        xb = x[b, :n] if bf else x[:n, b]
        ob, hb = model(xb, row(h0, b))  # unbatched, exactly its valid steps
        out_b = out[b] if bf else out[:, b]
        assert_close(out_b[:n], ob, name=f"output of sequence {b} alone", config=case)
        assert not out_b[n:].any(), f"padded outputs of sequence {b} are not zero; config={case}"
        close_states(row(h_n, b), hb, f"h_n of sequence {b} alone", case)
        gb = g_out[b, :n] if bf else g_out[:n, b]
        gxb, gh0b = model.backward(gb, row(g_hn, b))
        grow = gx[b] if bf else gx[:, b]
        assert_close(grow[:n], gxb, name=f"grad_x of sequence {b} alone", config=case)
        assert not grow[n:].any(), f"padded steps of sequence {b} got gradient; config={case}"
        close_states(row(gh0, b), gh0b, f"grad_h0 of sequence {b} alone", case)


@given(rnn_cases(max_layers=1, allow_unbatched=False))
def test_reverse_direction_equals_forward_over_flipped_sequence(case):
    case.bidirectional = True
    case.lengths = None
    bi = case.model(np.float64).eval()
    x, _, _, _, _ = case.arrays(bi)
    uni = dataclasses.replace(case, bidirectional=False).model(np.float64)
    uni.load_state_dict({k.replace("_reverse", ""): v for k, v in bi.state_dict().items() if "reverse" in k})
    ax = 1 if case.batch_first else 0
    out_bi, hn_bi = bi(x)
    out_rev, hn_rev = uni(np.flip(x, axis=ax))
    H = case.out_size
    assert_close(out_bi[..., H:], np.flip(out_rev, axis=ax), name="reverse output vs flipped forward", config=case)
    close_states(tuple(s[1:2] for s in states(hn_bi)), states(hn_rev), "reverse h_n vs flipped forward", case)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_batch_first_equals_time_major(cls):
    rng = np.random.default_rng(5)
    a = cls(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    b = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((6, 3, 3))
    lengths = np.array([6, 2, 4])
    oa, ha = a(x, lengths=lengths)
    ob, hb = b(x.transpose(1, 0, 2), lengths=lengths)
    assert_close(ob.transpose(1, 0, 2), oa, name="batch_first output")
    close_states(hb, ha, "batch_first h_n", cls.__name__)


# ------------------------------------------------------------------ saturation edges
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("scale", [50.0, 1e3, 1e6])
def test_saturated_preactivations_stay_finite_and_match_torch(nonlinearity, scale):
    model = RNN(3, 4, num_layers=2, nonlinearity=nonlinearity, bidirectional=True, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    if nonlinearity == "tanh":  # |a| >= scale everywhere: deep in saturation
        for p in model.parameters().values():
            p[...] = np.sign(rng.standard_normal(p.shape)) * scale
    else:  # relu: large inputs, contracting recurrence, so values are large but finite
        for name, p in model.parameters().items():
            p[...] = rng.uniform(-0.3, 0.3, p.shape) / (1 if "ih" in name else 4)
    x = rng.standard_normal((6, 2, 3)) * (1 if nonlinearity == "tanh" else scale)
    g_out = rng.standard_normal((6, 2, 8))
    out, h_n = model(x)
    model.zero_grad()
    gx, gh0 = model.backward(g_out)
    for name, a in [("output", out), ("h_n", h_n), ("grad_x", gx), ("grad_h0", gh0)] + list(model.grads.items()):
        assert np.all(np.isfinite(a)), f"{name} not finite at scale {scale}"
    ref = run_torch(model, x, None, None, g_out, None)
    assert_close(out, ref["output"], name="saturated output", config=(nonlinearity, scale))
    assert_close(gx, ref["grad_x"], name="saturated grad_x", config=(nonlinearity, scale))
    for k in ref["grads"]:
        assert_close(model.grads[k], ref["grads"][k], name=f"saturated grad {k}", config=(nonlinearity, scale))


def test_overflowing_relu_recurrence_is_reported_not_propagated():
    model = RNN(2, 3, nonlinearity="relu", dtype=np.float32, seed=0)
    for p in model.parameters().values():
        p[...] = 1e4
    with pytest.raises(FloatingPointError, match="time step"):
        model(np.ones((20, 1, 2), dtype=np.float32))


def test_finite_differences_skip_directions_that_cross_a_relu_kink():
    """Place a relu pre-activation exactly at 0: every segment through it has a kink, so all
    directions that move it must be rejected rather than reported as a BPTT error."""
    from scratch_rnn.gradcheck import activation_pattern

    model = RNN(1, 1, nonlinearity="relu", bias=False, dtype=np.float64)
    model.load_state_dict({"weight_ih_l0": np.array([[1.0]]), "weight_hh_l0": np.array([[0.5]])})
    x, h0 = np.array([[[1.0]], [[-0.5]]]), np.zeros((1, 1, 1))  # a_1 = 1 - 0.5 * 1 ... = 0 at step 2
    x[1, 0, 0] = -0.5
    model(x, h0)
    assert activation_pattern(model) != ()
    with pytest.raises(NonDifferentiableError, match="relu kink"):
        rnn_directional_checks(model, x, h0, restrict_to=["input"])
