"""scratch_rnn.init: exact targets checked with torch.linalg (singular values, eigenvalues), the
distributions checked against their closed-form moments with seeded draws and 6-sigma bands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scratch_rnn import RNN, init
from tests.helpers import assert_close


def torch_sv(w):
    return torch.linalg.svdvals(torch.tensor(w)).numpy()


def torch_rho(w):
    return float(torch.linalg.eigvals(torch.tensor(w)).abs().max())


def within_sigmas(samples, mean, var, name, k=6.0):
    """The sample mean of i.i.d. draws lies within k standard errors of its true mean."""
    err = abs(float(np.mean(samples)) - mean)
    se = math.sqrt(var / samples.size)
    assert err <= k * se, f"{name}: sample mean off by {err:.3e} > {k} x standard error {se:.3e}"


@given(
    H=st.integers(1, 40),
    value=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**31 - 1),
    target=st.sampled_from(init.TARGETS),
)
def test_gaussian_hits_its_target_exactly(H, value, seed, target):
    key = "singular_value" if target == "singular_value" else "spectral_radius"
    w = init.gaussian(H, seed, **{key: value})
    got = torch_sv(w)[0] if target == "singular_value" else torch_rho(w)
    assert_close(got, value, name=target, config=dict(H=H, value=value, seed=seed), rtol=1e-12)


@given(H=st.integers(1, 40), gain=st.floats(0.0, 3.0), seed=st.integers(0, 2**31 - 1))
def test_orthogonal_every_singular_value_is_the_gain(H, gain, seed):
    w = init.orthogonal(H, seed, gain)
    config = dict(H=H, gain=gain, seed=seed)
    assert_close(torch_sv(w), np.full(H, gain), name="singular values", config=config, rtol=1e-13)
    assert_close(w.T @ w, gain**2 * np.eye(H), name="WᵀW", config=config, rtol=1e-13)


def test_orthogonal_is_haar_distributed():
    """Haar: E[Q_ij] = 0, E[Q_ij²] = 1/H, E[tr Q] = 0. A QR without the sign fix skews the diagonal."""
    H, n = 4, 4000
    rng = np.random.default_rng(0)
    qs = np.stack([init.orthogonal(H, rng) for _ in range(n)])
    within_sigmas(qs[:, 0, 0], 0.0, 1.0 / H, "Q_00")
    within_sigmas(np.trace(qs, axis1=1, axis2=2), 0.0, 1.0, "tr Q")  # Var tr Q = 1 under Haar
    within_sigmas(qs[:, 1, 2] ** 2, 1.0 / H, 2.0 / (H * (H + 2)), "Q_12²")


def test_torch_uniform_matches_the_uniform_moments():
    H = 16
    k = 1 / math.sqrt(H)
    w = init.torch_uniform((200, 200), H, 1).ravel()
    assert np.all(np.abs(w) <= k)
    within_sigmas(w, 0.0, k * k / 3, "mean")
    within_sigmas(w**2, k * k / 3, k**4 / 5 - k**4 / 9, "second moment")
    ref = torch.nn.RNN(3, H)  # torch's own default stays inside the same band
    assert all(float(p.detach().abs().max()) <= k for p in ref.parameters())


def test_gaussian_scale_and_sparsity():
    H = 300
    w = init.gaussian(H, 0)
    within_sigmas(w.ravel() ** 2, 1 / H, 2 / H**2, "E w²")
    w = init.gaussian(50, 1, spectral_radius=0.95, nonzero_per_row=15)  # Pascanu's smart tanh
    assert np.all((w != 0).sum(axis=1) == 15)
    assert abs(torch_rho(w) - 0.95) < 1e-12


def test_identity_is_exact():
    np.testing.assert_array_equal(init.identity(3, 0.5), 0.5 * np.eye(3))


def test_init_rnn_sets_every_layer_and_direction():
    model = RNN(3, 5, num_layers=2, bidirectional=True, nonlinearity="relu", dtype=np.float64, seed=0)
    before = model.state_dict()
    init.init_rnn(model, init.RecurrentInit("identity", zero_bias=True, input_std=1e-3), seed=0)
    for name, p in model.parameters().items():
        if name.startswith("weight_hh"):
            np.testing.assert_array_equal(p, np.eye(5), err_msg=name)
        elif name.startswith("bias"):
            assert np.all(p == 0), name
        else:
            assert np.std(p) < 0.01 and not np.array_equal(p, before[name]), name
    init.init_rnn(model, init.RecurrentInit("orthogonal", scale=1.3), seed=1)
    ws = [model.parameters()[n] for n in model.parameters() if n.startswith("weight_hh")]
    assert not np.allclose(ws[0], ws[1])  # each direction draws its own matrix
    for w in ws:
        assert_close(torch_sv(w), np.full(5, 1.3), name="singular values", config={}, rtol=1e-12)
    a = init.init_rnn(RNN(3, 5, dtype=np.float64), init.RecurrentInit("gaussian", scale=0.7), seed=3)
    b = init.init_rnn(RNN(3, 5, dtype=np.float64), init.RecurrentInit("gaussian", scale=0.7), seed=3)
    np.testing.assert_array_equal(a.parameters()["weight_hh_l0"], b.parameters()["weight_hh_l0"])


def test_torch_uniform_rescaled_to_a_spectral_radius():
    model = RNN(2, 8, dtype=np.float64)
    init.init_rnn(model, init.RecurrentInit("torch_uniform", scale=1.2, target="spectral_radius"), seed=0)
    assert abs(torch_rho(model.parameters()["weight_hh_l0"]) - 1.2) < 1e-12


def test_clear_errors():
    with pytest.raises(ValueError, match="scheme: expected one of"):
        init.RecurrentInit("xavier")
    with pytest.raises(ValueError, match="scale: expected a finite number >= 0, got -1"):
        init.RecurrentInit("gaussian", scale=-1)
    with pytest.raises(ValueError, match="nonzero_per_row: only for scheme 'gaussian'"):
        init.RecurrentInit("orthogonal", nonzero_per_row=3)
    with pytest.raises(ValueError, match="at most one of singular_value and spectral_radius"):
        init.gaussian(3, 0, singular_value=1, spectral_radius=1)
    with pytest.raises(ValueError, match="nonzero_per_row: expected at most hidden_size=3, got 4"):
        init.gaussian(3, 0, nonzero_per_row=4)
    with pytest.raises(ValueError, match="its singular value is 0"):
        init.rescale(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match=r"w: expected a square \(H, H\) matrix, got shape \(2, 3\)"):
        init.rescale(np.ones((2, 3)), 1.0)
    with pytest.raises(TypeError, match="config: expected a RecurrentInit, got dict"):
        init.init_rnn(RNN(1, 2), {"scheme": "identity"})


# --------------------------------------------------------------------------------------------
# a call that fails changes nothing (issue 19, class 5)
# --------------------------------------------------------------------------------------------
def _init_failure_cases():
    from scratch_rnn.rnn import GRU, LSTM, RNN

    return [
        pytest.param(
            lambda: LSTM(3, 4, num_layers=2, dtype=np.float64),
            init.RecurrentInit("orthogonal", input_std=0.1, zero_bias=True),
            "weight_hh_l0.*(16, 4)",
            id="lstm",
        ),
        pytest.param(
            lambda: LSTM(3, 4, proj_size=2, bidirectional=True, dtype=np.float32),
            init.RecurrentInit("identity", zero_bias=True, input_std=0.5),
            "weight_hh_l0.*(16, 2)",
            id="lstm-proj",
        ),
        pytest.param(
            lambda: GRU(3, 4, bidirectional=True, dtype=np.float64),
            init.RecurrentInit("torch_uniform", scale=0.9, input_std=0.1),
            "weight_hh_l0.*(12, 4)",
            id="gru",
        ),
        # an Elman RNN whose W_hh cannot be drawn (more non-zeros per row than units) after W_ih was
        pytest.param(
            lambda: RNN(3, 4, num_layers=2, dtype=np.float64),
            init.RecurrentInit("gaussian", scale=1.0, nonzero_per_row=9, input_std=0.1, zero_bias=True),
            "nonzero_per_row",
            id="rnn-undrawable",
        ),
    ]


@pytest.mark.parametrize("make,config,message", _init_failure_cases())
def test_init_rnn_that_fails_leaves_every_parameter_bit_for_bit(make, config, message):
    model = make()
    before = {k: v.copy() for k, v in model.parameters().items()}
    with pytest.raises(ValueError, match=message):
        init.init_rnn(model, config, seed=0)
    after = model.parameters()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].tobytes() == v.tobytes(), f"{k} changed by a failed init_rnn"


def test_forget_gate_bias_sets_the_f_block_of_every_layer_and_direction():
    from scratch_rnn import GRU, LSTM
    from scratch_rnn.init import forget_gate_bias

    lstm = LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    before = lstm.state_dict()
    forget_gate_bias(lstm, 1.0)
    for name, p in lstm.state_dict().items():
        if name.startswith("bias_"):
            expected = before[name].copy()
            expected[4:8] = 1.0 if name.startswith("bias_ih") else 0.0
            np.testing.assert_array_equal(p, expected, err_msg=name)
        else:
            np.testing.assert_array_equal(p, before[name], err_msg=name)
    assert np.all(lstm.bias_ih_l1_reverse[4:8] + lstm.bias_hh_l1_reverse[4:8] == 1.0)
    for bad, err in ((GRU(3, 4), TypeError), (LSTM(3, 4, bias=False), ValueError)):
        with pytest.raises(err):
            forget_gate_bias(bad)
    with pytest.raises(ValueError, match="value"):
        forget_gate_bias(lstm, float("nan"))
