"""scratch_rnn.diagnostics against independent oracles: torch.autograd.functional.jacobian of an
unrolled twin (reference.diagnostics), torch.linalg for singular values, and closed forms (the
Pascanu bound, orthogonal linear RNNs, exact exponentials)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.diagnostics import jacobian_product, linear_product_singular_values
from scratch_rnn import RNN, init
from scratch_rnn import diagnostics as dg
from tests.helpers import assert_close


@dataclass(frozen=True)
class Config:
    seed: int
    T: int
    B: int
    I: int
    H: int
    num_layers: int
    nonlinearity: str
    bias: bool
    batch_first: bool
    bidirectional: bool
    unbatched: bool
    variable_lengths: bool
    weight_std: float


@st.composite
def configs(draw, max_T=8):
    unbatched = draw(st.booleans())
    return Config(
        seed=draw(st.integers(0, 2**31 - 1)),
        T=draw(st.integers(1, max_T)),
        B=1 if unbatched else draw(st.integers(1, 3)),
        I=draw(st.integers(1, 3)),
        H=draw(st.integers(1, 5)),
        num_layers=draw(st.integers(1, 3)),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        unbatched=unbatched,
        variable_lengths=draw(st.booleans()),
        weight_std=draw(st.sampled_from([0.3, 0.8, 1.5])),
    )


def make_case(cfg: Config):
    rng = np.random.default_rng(cfg.seed)
    model = RNN(
        cfg.I,
        cfg.H,
        cfg.num_layers,
        cfg.nonlinearity,
        cfg.bias,
        cfg.batch_first,
        bidirectional=cfg.bidirectional,
        dtype=np.float64,
        seed=cfg.seed,
    )
    model.load_state_dict({k: rng.normal(0, cfg.weight_std, v.shape) for k, v in model.state_dict().items()})
    D = 2 if cfg.bidirectional else 1
    if cfg.unbatched:
        x, h0 = rng.normal(size=(cfg.T, cfg.I)), rng.normal(size=(cfg.num_layers * D, cfg.H))
    else:
        x = rng.normal(size=(cfg.B, cfg.T, cfg.I) if cfg.batch_first else (cfg.T, cfg.B, cfg.I))
        h0 = rng.normal(size=(cfg.num_layers * D, cfg.B, cfg.H))
    lengths = rng.integers(1, cfg.T + 1, size=cfg.B) if cfg.variable_lengths else None
    return model, x, h0, lengths, rng


def scratch_products(model, x, h0, lengths, index):
    """Dense P(n) of one layer/direction and the aligned slopes, through the public diagnostics."""
    D = model.num_directions
    slopes = dg.model_slopes(model, x, h0, lengths)[index]  # (T, B, H)
    s_end = dg.align_to_end(slopes, lengths, reverse=index % D == 1)
    w = model.parameters()[f"weight_hh_l{index // D}{'_reverse' if index % D else ''}"]
    return dg.jacobian_products(s_end, w, lengths), s_end, w


def saturation_rtol(s_end, sample, n, base=1e-10):
    """The tolerance a product of n Jacobians can be held to when tanh saturates.

    Both sides write tanh'(a) = 1 - h² from their own h = tanh(a); one ulp of difference in h
    (numpy's and torch's tanh may round differently) changes 1 - h² by up to ~2ε relative to ITSELF
    divided by 1 - h², i.e. a relative error ε/s in a slope s. A product inherits the sum of its
    factors' relative errors: rtol = base + 8ε Σ 1/s over the slopes in the product (relu's 0/1
    slopes are exact and add nothing). A wrong step, order or index still errs by O(1).
    """
    s = np.asarray(s_end)[:n, sample]
    s = s[(s > 0) & (s < 1)]
    return base + 8 * np.finfo(np.float64).eps * float(np.sum(1.0 / s)) if s.size else base


# --------------------------------------------------------------------------------------------
# Jacobian products against torch.autograd.functional.jacobian
# --------------------------------------------------------------------------------------------
@given(cfg=configs(), pick=st.integers(0, 10**6))
def test_jacobian_products_match_torch_jacobian(cfg, pick):
    model, x, h0, lengths, _ = make_case(cfg)
    D = 2 if cfg.bidirectional else 1
    index, sample = pick % (cfg.num_layers * D), (pick // 7) % cfg.B
    n_b = cfg.T if lengths is None else int(lengths[sample])
    products, s_end, _ = scratch_products(model, x, h0, lengths, index)
    assert products.shape == (cfg.T + 1, cfg.B, cfg.H, cfg.H)
    config = dict(asdict(cfg), index=index, sample=sample)
    for distance in sorted({0, 1, n_b // 2, n_b}):  # ends included: h_end itself and h0
        ref = jacobian_product(model, x, h0, lengths, index=index, sample=sample, distance=distance)
        assert_close(
            products[distance, sample],
            ref,
            name=f"dh_end/dh_(end-{distance})",
            config=dict(config, distance=distance),
            rtol=saturation_rtol(s_end, sample, distance),
        )
    assert np.all(np.isnan(products[n_b + 1 :, sample]))  # past the sequence's start: no state


def test_step_jacobian_is_the_one_step_product():
    cfg = Config(
        seed=1,
        T=5,
        B=2,
        I=2,
        H=4,
        num_layers=1,
        nonlinearity="tanh",
        bias=True,
        batch_first=False,
        bidirectional=False,
        unbatched=False,
        variable_lengths=False,
        weight_std=0.8,
    )
    model, x, h0, lengths, _ = make_case(cfg)
    slopes = dg.model_slopes(model, x, h0)[0]
    J = dg.step_jacobians(slopes, model.parameters()["weight_hh_l0"])  # (T, B, H, H)
    ref = jacobian_product(model, x, h0, index=0, sample=1, distance=1)  # dh_{T-1}/dh_{T-2}
    assert_close(J[-1, 1], ref, name="J_(T-1)", config=asdict(cfg))
    with pytest.raises(AssertionError):  # the wrong step must not pass
        assert_close(J[-2, 1], ref, name="J_(T-2) vs J_(T-1)", config=asdict(cfg))


@settings(max_examples=30)
@given(cfg=configs(max_T=6), pick=st.integers(0, 10**6))
def test_product_singular_values_match_torch_svdvals(cfg, pick):
    model, x, h0, lengths, _ = make_case(cfg)
    D = 2 if cfg.bidirectional else 1
    index, sample = pick % (cfg.num_layers * D), (pick // 7) % cfg.B
    _, s_end, w = scratch_products(model, x, h0, lengths, index)
    sv = dg.product_singular_values(s_end, w, lengths)  # (T+1, B, H)
    n_b = cfg.T if lengths is None else int(lengths[sample])
    distance = n_b  # the whole sequence: dh_end/dh0
    ref = torch.linalg.svdvals(
        torch.tensor(jacobian_product(model, x, h0, lengths, index=index, sample=sample, distance=distance))
    ).numpy()
    assert_close(
        sv[distance, sample],
        ref,
        name="singular values of dh_end/dh0",
        config=dict(asdict(cfg), index=index, sample=sample),
        rtol=saturation_rtol(s_end, sample, distance),
    )


@settings(max_examples=20)
@given(cfg=configs(max_T=6), pick=st.integers(0, 10**6))
def test_power_iteration_spectral_norm_matches_torch(cfg, pick):
    """Matrix-free ‖P(n)‖₂ against torch's matrix 2-norm of the autograd Jacobian. The iteration
    stops at a relative change of 1e-14, so the check is 1e-8 relative (a slow iteration when
    σ₁ ≈ σ₂ costs accuracy, not correctness), and the estimate must never exceed σ₁."""
    model, x, h0, lengths, _ = make_case(cfg)
    D = 2 if cfg.bidirectional else 1
    index, sample = pick % (cfg.num_layers * D), (pick // 7) % cfg.B
    _, s_end, w = scratch_products(model, x, h0, lengths, index)
    n_b = cfg.T if lengths is None else int(lengths[sample])
    distances = np.array(sorted({1, n_b}))
    est = dg.product_spectral_norms(s_end, w, distances, lengths, iters=5000, tol=1e-14, seed=cfg.seed)
    config = dict(asdict(cfg), index=index, sample=sample)
    for i, n in enumerate(distances):
        jac = jacobian_product(model, x, h0, lengths, index=index, sample=sample, distance=int(n))
        sigma = float(torch.linalg.matrix_norm(torch.tensor(jac), ord=2))
        assert est[i, sample] <= sigma * (1 + saturation_rtol(s_end, sample, int(n), 1e-12)) + 1e-300, config
        assert_close(
            est[i, sample],
            sigma,
            name=f"‖dh_end/dh_(end-{n})‖ (power)",
            config=config,
            rtol=saturation_rtol(s_end, sample, int(n), base=1e-8),
            atol=1e-12,
        )


# --------------------------------------------------------------------------------------------
# The bound of Pascanu et al. (2013), as a property
# --------------------------------------------------------------------------------------------
@given(
    seed=st.integers(0, 2**31 - 1),
    T=st.integers(1, 40),
    H=st.integers(1, 8),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    scale=st.sampled_from([0.5, 0.9, 1.0, 1.2, 2.0]),
    variable=st.booleans(),
)
def test_measured_norms_never_exceed_the_bound(seed, T, H, nonlinearity, scale, variable):
    config = dict(seed=seed, T=T, H=H, nonlinearity=nonlinearity, scale=scale, variable=variable)
    rng = np.random.default_rng(seed)
    B = 3
    model = RNN(2, H, nonlinearity=nonlinearity, dtype=np.float64, seed=seed)
    init.init_rnn(model, init.RecurrentInit("gaussian", scale=scale), seed=seed)
    model.parameters()["bias_hh_l0"][...] = rng.normal(size=H)
    x = rng.normal(size=(T, B, 2))
    h0 = rng.normal(size=(1, B, H))
    lengths = rng.integers(1, T + 1, size=B) if variable else None
    w = model.parameters()["weight_hh_l0"]
    lam1 = dg.largest_singular_value(w)
    # (1) ‖∂h_end/∂h_{end-n}‖₂ ≤ (γλ₁)ⁿ
    s_end = dg.align_to_end(dg.model_slopes(model, x, h0, lengths)[0], lengths)
    sv = dg.product_singular_values(s_end, w, lengths)[..., 0]  # (T+1, B)
    bound = dg.pascanu_bound(lam1, nonlinearity, np.arange(T + 1))[:, None]
    ok = np.isnan(sv) | (sv <= bound * (1 + 1e-9))
    assert ok.all(), dict(config, worst_ratio=float(np.nanmax(sv / bound)))
    # (2) a loss on h_n only: ‖∂L/∂h_{end-n}‖ ≤ (γλ₁)ⁿ ‖∂L/∂h_end‖, on the model's own hidden_grads
    model.forward(x, h0, lengths)
    model.backward(None, rng.normal(size=(1, B, H)))
    norms = dg.grad_norms_by_distance(model.hidden_grads[0], lengths)  # (T, B)
    limit = bound[:T] * norms[0][None, :]
    ok = np.isnan(norms) | (norms <= limit * (1 + 1e-9) + 1e-300)
    assert ok.all(), dict(config, worst_ratio=float(np.nanmax(norms / np.maximum(limit, 1e-300))))


def test_bound_is_tight_for_a_scaled_orthogonal_linear_map():
    """Equality case: slopes ≡ 1 and W = c·Q give ‖P(n)‖ = cⁿ exactly, so a bound that were off by
    one step (c^(n-1)) or used ρ in place of λ₁ would fail here."""
    H, T, c = 6, 30, 1.07
    w = init.orthogonal(H, 0, gain=c)
    sv = dg.product_singular_values(np.ones((T, 1, H)), w)[:, 0, 0]
    assert_close(
        sv,
        dg.pascanu_bound(dg.largest_singular_value(w), "linear", np.arange(T + 1)),
        name="‖P(n)‖ vs (γλ₁)ⁿ",
        config=dict(H=H, T=T, c=c),
        rtol=1e-12,
    )


@pytest.mark.parametrize("T", [1, 10, 200])
def test_orthogonal_linear_rnn_has_unit_singular_values(T):
    """Saxe et al.: for h_t = Q h_{t-1} + u_t every singular value of ∂h_T/∂h_0 is 1, for any T."""
    H = 7
    q = init.orthogonal(H, T)
    ref = linear_product_singular_values(q, T)  # torch autograd Jacobian of the unrolled map
    assert_close(ref, np.ones(H), name="torch svdvals", config=dict(T=T, H=H), rtol=1e-12)
    sv = dg.product_singular_values(np.ones((T, 1, H)), q)  # (T+1, 1, H), every distance
    assert_close(sv, np.ones_like(sv), name="scratch svdvals", config=dict(T=T, H=H), rtol=1e-11)
    g = init.gaussian(H, T, singular_value=1.0)  # same λ₁ but not orthogonal: spectrum spreads
    assert dg.product_singular_values(np.ones((T, 1, H)), g)[T, 0, -1] < 0.99


# --------------------------------------------------------------------------------------------
# Bookkeeping, fits and closed forms
# --------------------------------------------------------------------------------------------
def test_align_to_end_forward_and_reverse():
    a = np.arange(4 * 2, dtype=float).reshape(4, 2, 1) + 1  # a[t, b] = 2t + b + 1
    lengths = np.array([4, 2])
    fwd = dg.align_to_end(a, lengths)[..., 0]
    np.testing.assert_array_equal(fwd, [[7, 4], [5, 2], [3, 0], [1, 0]])
    rev = dg.align_to_end(a, lengths, reverse=True)[..., 0]
    np.testing.assert_array_equal(rev, [[1, 2], [3, 4], [5, 0], [7, 0]])


def test_layer_states_top_layer_is_the_model_output():
    cfg = Config(
        seed=5,
        T=6,
        B=3,
        I=2,
        H=3,
        num_layers=3,
        nonlinearity="relu",
        bias=True,
        batch_first=True,
        bidirectional=True,
        unbatched=False,
        variable_lengths=True,
        weight_std=0.8,
    )
    model, x, h0, lengths, _ = make_case(cfg)
    states = dg.layer_states(model, x, h0, lengths)
    out, h_n = model.eval()(x, h0, lengths)
    top = np.concatenate([states[-2], states[-1]], axis=-1).transpose(1, 0, 2)  # batch-first
    assert_close(top, out, name="top layer states", config=asdict(cfg))


def test_fit_rate_recovers_an_exact_exponential():
    n = np.arange(50)
    fit = dg.fit_rate(n, 3.0 * 0.9**n)
    assert abs(fit.factor - 0.9) < 1e-12 and abs(fit.intercept - np.log(3.0)) < 1e-10
    assert fit.r2 > 1 - 1e-12 and fit.n_points == 50
    norms = np.stack([2.0 * 1.1**n, 5.0 * 1.1**n], axis=1)  # pooled columns share the rate
    norms[10:, 1] = np.nan  # dropped points are ignored
    norms[3, 0] = 0.0
    assert abs(dg.fit_rate(n, norms).log_rate - np.log(1.1)) < 0.05
    with pytest.raises(ValueError, match="two or more distances"):
        dg.fit_rate([0, 1], [1.0, 0.0])


def test_regime_and_bound_closed_forms():
    w = np.array([[0.0, 2.0], [0.0, 0.0]])  # nilpotent: ρ = 0, λ₁ = 2
    r = dg.regime(w, "tanh")
    assert r.spectral_radius == 0.0 and abs(r.lambda1 - 2.0) < 1e-15 and r.exploding_possible
    r = dg.regime(np.diag([3.0, 1.0]), "sigmoid")  # γ = 1/4: 0.75 < 1
    assert r.vanishing_guaranteed and not r.exploding_possible and r.gamma_lambda1 == 0.75
    np.testing.assert_allclose(dg.pascanu_bound(0.5, "relu", [0, 1, 3]), [1.0, 0.5, 0.125])
    assert dg.bound_log_rate(2.0, "sigmoid") == np.log(0.5)


def test_clear_errors():
    with pytest.raises(ValueError, match="nonlinearity: expected one of"):
        dg.activation_slope(np.zeros(3), "gelu")
    with pytest.raises(ValueError, match=r"w_hh: expected a square \(H, H\) matrix, got shape \(2, 3\)"):
        dg.jacobian_products(np.ones((4, 1, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"slopes_end: expected shape \(T, B, H=2\)"):
        dg.product_singular_values(np.ones((4, 1, 3)), np.eye(2))
    with pytest.raises(ValueError, match="lengths: expected every length in 1..4"):
        dg.align_to_end(np.ones((4, 2, 1)), [5, 1])
    with pytest.raises(ValueError, match="distances: expected integers in 0..4"):
        dg.product_spectral_norms(np.ones((4, 1, 2)), np.eye(2), [5])
    with pytest.raises(ValueError, match="lambda1: expected a singular value"):
        dg.pascanu_bound(-1.0, "tanh", [1])


# ------------------------------------------------------------------ the gated cells' state Jacobians
@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_state_jacobian_matches_torch_autograd(proj, bias):
    import torch

    from scratch_rnn import diagnostics as dg

    rng = np.random.default_rng(3 + proj)
    B, I, H = 3, 2, 4
    out = proj or H
    w_ih, w_hh = rng.uniform(-1, 1, (4 * H, I)), rng.uniform(-1, 1, (4 * H, out))
    b = rng.uniform(-1, 1, 4 * H) if bias else np.zeros(4 * H)
    w_hr = rng.uniform(-1, 1, (proj, H)) if proj else None
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, out)), rng.standard_normal((B, H))
    mine = dg.lstm_state_jacobian(x @ w_ih.T + b, h, c, w_hh, w_hr)

    def step(state):  # one sample's (h, c) -> (h', c'): torch's fused cell, or its equations with a projection
        hp, cp = state[None, :out], state[None, out:]
        if w_hr is None:
            h2, c2 = torch.lstm_cell(
                torch.tensor(xb)[None], (hp, cp), torch.tensor(w_ih), torch.tensor(w_hh), torch.tensor(b), None
            )
        else:
            a = torch.tensor(xb)[None] @ torch.tensor(w_ih).T + torch.tensor(b) + hp @ torch.tensor(w_hh).T
            i_, f_, g_, o_ = a.chunk(4, dim=1)
            c2 = torch.sigmoid(f_) * cp + torch.sigmoid(i_) * torch.tanh(g_)
            h2 = (torch.sigmoid(o_) * torch.tanh(c2)) @ torch.tensor(w_hr).T
        return torch.cat([h2[0], c2[0]])

    for k in range(B):
        xb = x[k]
        ref = torch.autograd.functional.jacobian(step, torch.tensor(np.concatenate([h[k], c[k]])))
        assert_close(
            mine[k], ref.numpy(), name=f"LSTM d(h, c)_t / d(h, c)_(t-1), sample {k}", config=dict(proj=proj, bias=bias)
        )


@pytest.mark.parametrize("bias", [True, False])
def test_gru_state_jacobian_matches_torch_autograd(bias):
    import torch

    from scratch_rnn import diagnostics as dg

    rng = np.random.default_rng(5)
    B, I, H = 3, 2, 4
    w_ih, w_hh = rng.uniform(-1, 1, (3 * H, I)), rng.uniform(-1, 1, (3 * H, H))
    b_ih, b_hh = (rng.uniform(-1, 1, 3 * H), rng.uniform(-1, 1, 3 * H)) if bias else (np.zeros(3 * H), None)
    x, h = rng.standard_normal((B, I)), rng.standard_normal((B, H))
    mine = dg.gru_state_jacobian(x @ w_ih.T + b_ih, h, w_hh, b_hh)
    for k in range(B):

        def step(state, xb=x[k]):
            return torch.gru_cell(
                torch.tensor(xb)[None],
                state[None],
                torch.tensor(w_ih),
                torch.tensor(w_hh),
                torch.tensor(b_ih),
                None if b_hh is None else torch.tensor(b_hh),
            )[0]

        ref = torch.autograd.functional.jacobian(step, torch.tensor(h[k]))
        assert_close(mine[k], ref.numpy(), name=f"GRU dh_t/dh_(t-1), sample {k}", config=dict(bias=bias))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_grad_norms_by_distance_reads_each_sequence_from_its_own_end(reverse):
    """Closed form, with unequal lengths: distance n of sequence b is step lengths[b] - 1 - n (step n in the
    reverse direction), its norm ‖g_t‖; every distance n >= lengths[b] is NaN, and no valid one is."""
    T, B, H = 6, 4, 3
    lengths = np.array([6, 2, 4, 1])
    rng = np.random.default_rng(5)
    g = rng.standard_normal((T, B, H))
    g[np.arange(T)[:, None] >= lengths[None, :]] = 0.0  # hidden_grads are zero at padded steps
    got = dg.grad_norms_by_distance(g, lengths, reverse=reverse)
    for b in range(B):
        for n in range(T):
            if n >= lengths[b]:
                assert np.isnan(got[n, b]), (b, n)
            else:
                t = n if reverse else lengths[b] - 1 - n
                assert got[n, b] == pytest.approx(np.linalg.norm(g[t, b]), rel=1e-14), (b, n)
