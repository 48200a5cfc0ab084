"""IndRNN, the first plug-in cell: the whole battery (its torch twin, finite differences, every option, the
metamorphic relations, the model twin), the per-unit independence the paper builds on, its initialisation
and recurrent-weight range as the authors' code states them, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from reference.battery import check_cell
from scratch_rnn.cells.indrnn import IndRNN, paper_recurrent_range
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.optim import Adam


def test_the_battery_passes_on_indrnn():
    summary = check_cell("indrnn", cases=60, seed=3)
    assert summary["crosscheck"]["grad weight_hh"]["vs_twin"] <= 1e-8
    assert set(summary["options"]["nonlinearity"]) == {"relu", "tanh"}


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_units_are_independent_through_time(nonlinearity):
    """One layer: h0[:, i] reaches only unit i (u ⊙ h is diagonal), and dL/dh0 of unit i is
    Σ_t g_t[i] Π_{s ≤ t} u_i σ'(a_s[i]) — here checked through the Jacobian's sparsity and the product form."""
    rng = np.random.default_rng(0)
    m = IndRNN(3, 5, nonlinearity=nonlinearity, dtype=np.float64, seed=1)
    x, h0 = rng.standard_normal((7, 2, 3)), rng.uniform(0.1, 1, (1, 2, 5))
    out, _ = m(x, h0)
    bumped = h0.copy()
    bumped[0, :, 2] += 1e-3
    out2, _ = m(x, bumped)
    changed = np.abs(out2 - out).max(axis=(0, 1)) > 0
    assert changed.tolist() == [False, False, True, False, False] or not changed.any()
    # closed form of dh_T/dh_0 for a cotangent on h_T alone: Π_t u σ'(a_t), per unit
    m.zero_grad()
    g = np.zeros_like(out)
    g[-1] = rng.standard_normal(g[-1].shape)
    m(x, h0)
    _, grad_h0 = m.backward(g)
    h = np.concatenate([h0, out])  # (T+1, B, H)
    deriv = (h[1:] > 0) if nonlinearity == "relu" else 1 - h[1:] ** 2
    u = m.weight_hh_l0
    expected = g[-1] * np.prod(u * deriv, axis=0)
    np.testing.assert_allclose(grad_h0[0], expected, rtol=1e-12, atol=1e-300)


def test_paper_recurrent_range_is_the_authors():
    low, high = paper_recurrent_range(100)
    assert (low, high) == (0.0, 2 ** (1 / 100))
    assert paper_recurrent_range(100, last_layer=True) == (2 ** (-1 / 100), 2 ** (1 / 100))
    t_low, t_high = paper_recurrent_range(100, nonlinearity="tanh")
    assert t_high == pytest.approx((2 / 0.9**10) ** (1 / 100), rel=1e-15) and t_low == -t_high


def test_init_paper_and_constrain():
    m = IndRNN(2, 64, num_layers=2, dtype=np.float64, seed=0)
    m.init_paper(1000)
    lo, hi = paper_recurrent_range(1000, last_layer=True)
    assert m.recurrent_max == hi
    assert 0 <= m.weight_hh_l0.min() and m.weight_hh_l0.max() <= hi
    assert lo <= m.weight_hh_l1.min() and m.weight_hh_l1.max() <= hi
    assert abs(m.weight_ih_l0.std() - 1e-3) < 3e-4 and not m.bias_ih_l0.any()
    m.weight_hh_l0[:3] = [5.0, -5.0, 0.5]
    m.constrain()
    assert m.weight_hh_l0[:3].tolist() == [hi, -hi, 0.5]


def test_default_init_draws_u_from_recurrent_init():
    m = IndRNN(2, 400, recurrent_init=(0.5, 0.75), dtype=np.float64, seed=0)
    assert 0.5 <= m.weight_hh_l0.min() and m.weight_hh_l0.max() <= 0.75
    assert np.abs(m.weight_ih_l0).max() <= 1 / np.sqrt(400)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(nonlinearity="sigmoid"), "nonlinearity"),
        (dict(recurrent_init=(1.0, 0.0)), "recurrent_init"),
        (dict(recurrent_init=3), "recurrent_init"),
        (dict(recurrent_max=-1.0), "recurrent_max"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IndRNN(2, 3, **kwargs)


def test_a_sequence_model_with_indrnn_learns():
    """A few Adam steps on a fixed batch reduce the loss (and the parameter names are torch-style)."""
    cfg = ModelConfig(
        cell="indrnn",
        nonlinearity="relu",
        input_size=2,
        hidden_size=8,
        out_features=1,
        loss="mse",
        dtype="float64",
        seed=0,
    )
    model = SequenceModel(cfg)
    assert model.grads["rnn.weight_hh_l0"].shape == (8,)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 10, 2)), rng.standard_normal((16, 1))
    opt = Adam(model.parameters(), lr=0.02)
    first = None
    for _ in range(60):
        model.zero_grad()
        loss = model.forward_backward(x, y).loss
        first = loss if first is None else first
        opt.step(model.grads)
    assert loss < 0.5 * first


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize(
    "layers, bidirectional, bias, lengths",
    [
        (1, False, True, None),
        (2, False, True, None),
        (3, False, False, None),
        (2, True, True, None),
        (2, False, True, [7, 3, 5]),
    ],
)
def test_fast_loop_is_the_generic_loop(nonlinearity, layers, bidirectional, bias, lengths):
    """fast_loop (whole-sequence products, the elementwise recurrence per step) against the generic step loop: the
    output, h_n, hidden_grads and every gradient (input, h0, parameters) agree to 1e-12 relative; with lengths or
    in the reverse direction the generic loop runs (the same numbers, trivially)."""
    rng = np.random.default_rng(layers + 10 * bidirectional)
    D = 2 if bidirectional else 1
    kw = dict(
        num_layers=layers,
        nonlinearity=nonlinearity,
        bidirectional=bidirectional,
        bias=bias,
        dtype=np.float64,
        seed=4,
        recurrent_init=(-1.2, 1.2),
    )
    ref, fast = IndRNN(3, 6, **kw), IndRNN(3, 6, **kw)
    fast.fast_loop = True
    for p in ref.parameters().values():  # random biases too: nothing hidden by zeros
        p += rng.normal(0, 0.2, p.shape)
    fast.load_state_dict(ref.state_dict())
    x, h0 = rng.standard_normal((7, 3, 3)), rng.standard_normal((layers * D, 3, 6))
    g_out = rng.standard_normal((7, 3, D * 6))
    g_hn = rng.standard_normal((layers * D, 3, 6))
    results = []
    for m in (ref, fast):
        m.zero_grad()
        out, h_n = m(x, h0, lengths=None if lengths is None else np.array(lengths))
        gx, gh0 = m.backward(g_out, g_hn)
        results.append(
            dict(
                out=out,
                h_n=h_n,
                gx=gx,
                gh0=gh0,
                hidden=m.hidden_grads,
                **{f"grad {k}": v.copy() for k, v in m.grads.items()},
            )
        )
    for k, want in results[0].items():
        got = results[1][k]
        err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)
        assert err <= 1e-12, (k, err, nonlinearity, layers, bidirectional, bias, lengths)
    if lengths is None and not bidirectional:
        assert fast.kink_pattern() == ref.kink_pattern()
