"""``rnn.hidden_grads`` (the total dL/dh_t of every layer and direction) against a torch unroll.

The oracle (reference.diagnostics.unrolled_hidden_grads) unrolls each sequence alone, one step at a
time in float64 autograd, and reads each h_t's retained ``.grad``; it never calls nn.RNN or the
scratch code. Configurations are drawn at random: layers, directions, layouts, unbatched input,
lengths, biases, h0, cotangents on the output and on h_n, dropout masks.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.cases import RNNCase
from reference.diagnostics import unrolled_hidden_grads
from scratch_rnn import RNN
from tests.helpers import assert_close
from tests.strategies import rnn_cases


def scratch_hidden_grads(model, x, h0, lengths, go, ghn, masks):
    model.forward(x, h0, lengths, dropout_masks=masks)
    model.backward(go, ghn)
    return model.hidden_grads


def case_arrays(case: RNNCase, with_grad_output: bool = True):
    """The shared drawn case (reference/cases.py), float64; the output cotangent optionally dropped
    (then h_n carries the whole loss)."""
    model = case.model(np.float64)
    x, h0, lengths, go, ghn = case.arrays(model)
    if not with_grad_output:
        go = None
        if ghn is None:
            ghn = np.random.default_rng(case.seed + 3).standard_normal(
                (model.num_layers * model.num_directions,)
                + (() if case.unbatched else (case.batch,))
                + (case.hidden_size,)
            )
    return model, x, h0, lengths, go, ghn, case.dropout_masks()


@given(case=rnn_cases(dropout=True, cells=("rnn",)), with_grad_output=st.booleans())  # the Elman unroll oracle
def test_hidden_grads_match_torch_unroll(case, with_grad_output):
    model, x, h0, lengths, go, ghn, masks = case_arrays(case, with_grad_output)
    got = scratch_hidden_grads(model, x, h0, lengths, go, ghn, masks)
    ref = unrolled_hidden_grads(model, x, h0, lengths, go, ghn, dropout_masks=masks)
    config = dict(asdict(case), with_grad_output=with_grad_output)
    assert got.shape == (model.num_layers * model.num_directions, case.steps, case.batch, case.hidden_size), config
    out, h_n = model.forward(x, h0, lengths, dropout_masks=masks)  # the oracle's forward, checked too
    h_n = h_n if not case.unbatched else h_n[:, None]
    assert_close(h_n, ref["h_n"], name="h_n (oracle sanity)", config=config)
    assert_close(got, ref["hidden_grads"], name="hidden_grads", config=config)
    if lengths is not None:  # zero at padded steps, exactly
        pad = np.arange(case.steps)[:, None] >= np.asarray(lengths).reshape(-1)[None, :]
        assert np.all(got[:, pad] == 0), config


def test_hidden_grads_check_fails_on_a_wrong_gradient():
    """The comparison above must catch a single wrong entry (and a time-reversed layout)."""
    case = RNNCase(
        input_size=2,
        hidden_size=3,
        num_layers=2,
        bidirectional=True,
        nonlinearity="tanh",
        bias=True,
        batch_first=True,
        unbatched=False,
        batch=3,
        steps=5,
        lengths=(5, 2, 4),
        with_h0=True,
        with_grad_h_n=True,
        dropout=0.0,
        seed=3,
    )
    model, x, h0, lengths, go, ghn, masks = case_arrays(case)
    got = scratch_hidden_grads(model, x, h0, lengths, go, ghn, masks).copy()
    ref = unrolled_hidden_grads(model, x, h0, lengths, go, ghn)["hidden_grads"]
    assert_close(got, ref, name="hidden_grads", config=asdict(case))
    wrong = got.copy()
    wrong[1, 0, 0, 0] *= 1 + 1e-7
    with pytest.raises(AssertionError, match="hidden_grads"):
        assert_close(wrong, ref, name="hidden_grads", config=asdict(case))
    with pytest.raises(AssertionError):
        assert_close(got[:, ::-1], ref, name="hidden_grads reversed in time", config=asdict(case))


def test_oracle_takes_no_h0_with_unbatched_lengths():
    """The oracle once added a batch axis to the zero h0 it made itself (unbatched input, h0=None)."""
    case = RNNCase(
        input_size=3,
        hidden_size=4,
        num_layers=1,
        bidirectional=True,
        nonlinearity="relu",
        bias=False,
        batch_first=True,
        unbatched=True,
        batch=1,
        steps=6,
        lengths=(2,),
        with_h0=False,
        with_grad_h_n=True,
        dropout=0.0,
        seed=1,
    )
    model, x, h0, lengths, go, ghn, masks = case_arrays(case)
    assert h0 is None and x.ndim == 2
    got = scratch_hidden_grads(model, x, h0, lengths, go, ghn, masks)
    ref = unrolled_hidden_grads(model, x, h0, lengths, go, ghn)
    assert_close(got, ref["hidden_grads"], name="hidden_grads", config=asdict(case))


def test_hidden_grads_loss_on_last_step_decays_as_dh_end_dh_k():
    """A closed-form case: one layer, loss only on h_n, linear-regime tanh (tiny inputs and weights):
    dL/dh_{T-1-n} = (W_hhᵀ)ⁿ g to first order, so the norms shrink by at most λ₁ per step."""
    rng = np.random.default_rng(0)
    H, T = 4, 6
    model = RNN(1, H, dtype=np.float64, seed=0)
    w = rng.normal(size=(H, H))
    w *= 0.5 / np.linalg.norm(w, 2)
    model.load_state_dict(
        {"weight_ih_l0": np.zeros((H, 1)), "weight_hh_l0": w, "bias_ih_l0": np.zeros(H), "bias_hh_l0": np.zeros(H)}
    )
    g = rng.normal(size=(1, 1, H))
    model.forward(np.zeros((T, 1, 1)))  # h ≡ 0: tanh'(0) = 1, the map is exactly linear
    model.backward(None, g)
    expected = np.stack([np.linalg.matrix_power(w.T, T - 1 - t) @ g[0, 0] for t in range(T)])
    assert_close(model.hidden_grads[0, :, 0], expected, name="hidden_grads (closed form)", config={})
