"""scratch_rnn.regularizers.pascanu_omega against independent oracles: its torch autograd twins
(reference.regularizers, an unroll of their own with δ detached), central finite differences with δ held
fixed, and closed forms (a dead relu step, δ exactly zero, T = 1); hand-made mutations show the checks fail."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reference.regularizers import omega_twin
from scratch_rnn import LSTM, RNN
from scratch_rnn import regularizers as R
from scratch_rnn.regularizers import omega_of, pascanu_omega
from tests.helpers import FD_TOLERANCE, assert_close, numerical_grad


@dataclass(frozen=True)
class Config:
    seed: int
    T: int
    B: int
    I: int
    H: int
    nonlinearity: str
    bias: bool
    batch_first: bool
    with_h0: bool
    weight_std: float
    loss: str  # "output": dL/d(output) only; "h_n": dL/dh_n only; "both"


@st.composite
def configs(draw, min_T=1, max_T=6):
    return Config(
        seed=draw(st.integers(0, 2**31 - 1)),
        T=draw(st.integers(min_T, max_T)),
        B=draw(st.integers(1, 4)),
        I=draw(st.integers(1, 3)),
        H=draw(st.integers(1, 5)),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        with_h0=draw(st.booleans()),
        weight_std=draw(st.sampled_from([0.4, 0.8, 1.5])),
        loss=draw(st.sampled_from(["output", "h_n", "both"])),
    )


@dataclass
class Case:
    cfg: Config
    rnn: RNN
    x: np.ndarray
    h0: np.ndarray | None
    grad_output: np.ndarray | None
    grad_h_n: np.ndarray | None


def make_case(cfg: Config, dtype=np.float64, grad_output=None, grad_h_n=None, x=None, state=None) -> Case:
    """A forward and a backward of a random RNN; the cotangents drawn from ``cfg.loss`` unless given."""
    rng = np.random.default_rng(cfg.seed)
    rnn = RNN(cfg.I, cfg.H, 1, cfg.nonlinearity, cfg.bias, cfg.batch_first, dtype=dtype, seed=cfg.seed)
    if state is None:
        state = {k: rng.normal(0, cfg.weight_std, v.shape) for k, v in rnn.state_dict().items()}
    rnn.load_state_dict(state)
    shape = (cfg.B, cfg.T, cfg.I) if cfg.batch_first else (cfg.T, cfg.B, cfg.I)
    x = rng.normal(size=shape) if x is None else x
    h0 = rng.normal(size=(1, cfg.B, cfg.H)) if cfg.with_h0 else None
    out_shape = shape[:2] + (cfg.H,)
    if grad_output is None and grad_h_n is None:
        grad_output = rng.normal(size=out_shape) if cfg.loss in ("output", "both") else None
        grad_h_n = rng.normal(size=(1, cfg.B, cfg.H)) if cfg.loss in ("h_n", "both") else None
    x, h0, grad_output, grad_h_n = (
        None if a is None else np.asarray(a, dtype=dtype) for a in (x, h0, grad_output, grad_h_n)
    )
    rnn(x, h0)
    rnn.backward(grad_output, grad_h_n=grad_h_n)
    return Case(cfg, rnn, x, h0, grad_output, grad_h_n)


def twin(case: Case, form: str, **kwargs) -> dict:
    return omega_twin(case.rnn, case.x, case.h0, case.grad_output, case.grad_h_n, form=form, **kwargs)


def check_against(case: Case, form: str, ref: dict, dtype=None, steps=None) -> None:
    """pascanu_omega's Ω and gradients against ``ref`` (a twin's result); raises AssertionError."""
    value, grads = pascanu_omega(case.rnn, case.x, form=form, steps=steps)
    config = dict(asdict(case.cfg), form=form, steps=steps)
    assert isinstance(value, float)
    assert_close(np.float64(value), np.float64(ref["omega"]), name=f"Ω ({form})", config=config, dtype=dtype)
    assert list(grads) == list(case.rnn.state_dict())
    for name, p in case.rnn.parameters().items():
        assert grads[name].shape == p.shape and grads[name].dtype == p.dtype, name
        assert_close(grads[name], ref["grads"][name], name=f"dΩ/d{name} ({form})", config=config, dtype=dtype)


def check_twin(case: Case, form: str, dtype=None, steps=None) -> None:
    ref = twin(case, form, steps=steps)
    # the twin's δ (autograd, its own unroll) is the scratch backward's dL/dh_t
    assert_close(case.rnn.hidden_grads[0], ref["delta"], name="δ = dL/dh_t", config=asdict(case.cfg), dtype=dtype)
    check_against(case, form, ref, dtype, steps=steps)


# --------------------------------------------------------------------------------------------
# Both forms against their torch twins
# --------------------------------------------------------------------------------------------
@given(cfg=configs())
def test_exact_form_matches_twin(cfg):
    check_twin(make_case(cfg), "exact")


@given(cfg=configs())
def test_code_form_matches_twin(cfg):
    check_twin(make_case(cfg), "code")


@given(cfg=configs(), form=st.sampled_from(["exact", "code"]))
def test_the_other_normalisation_matches_twin(cfg, form):
    """steps: each form at the other's normalisation (exact: the mean over its terms, as the code averages; code:
    the sum over steps of the batch mean), against the twin's own sum or count of terms."""
    check_twin(make_case(cfg), form, steps="mean" if form == "exact" else "sum")


@pytest.mark.parametrize("form", ["exact", "code"])
def test_steps_closed_form_relation(form):
    """Ω(sum) · B = Ω(mean) · n, n the number of terms: T-1 per sequence for the exact form (δ ≠ 0 here), T for the
    code form (every ‖δ‖² ≥ 1e-20 here); the form's own normalisation is its default."""
    cfg = Config(9, 7, 3, 2, 4, "tanh", True, False, True, 1.0, "both")
    case = make_case(cfg)
    assert (np.sum(case.rnn.hidden_grads[0] ** 2, axis=-1) >= 1e-20).all()
    n = cfg.B * (cfg.T - 1 if form == "exact" else cfg.T)
    own = pascanu_omega(case.rnn, case.x, form=form)
    total = pascanu_omega(case.rnn, case.x, form=form, steps="sum")
    mean = pascanu_omega(case.rnn, case.x, form=form, steps="mean")
    assert own[0] == (total if form == "exact" else mean)[0]
    assert_close(np.float64(total[0] * cfg.B), np.float64(mean[0] * n), name="Ω sum·B vs mean·n")
    for k in total[1]:
        assert_close(total[1][k] * cfg.B, mean[1][k] * n, name=f"dΩ/d{k} sum·B vs mean·n")


@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("form", ["exact", "code"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_short_sequences_match_twin(T, form, nonlinearity):
    for seed in range(4):  # every flag, both values
        cfg = Config(
            seed=seed,
            T=T,
            B=3,
            I=2,
            H=3,
            nonlinearity=nonlinearity,
            bias=seed % 2 == 0,
            batch_first=seed // 2 == 1,
            with_h0=seed in (1, 2),
            weight_std=1.0,
            loss="both",
        )
        check_twin(make_case(cfg), form)


def test_one_step_exact_form_is_zero_code_form_is_not():
    """T = 1: no transition between computed states (the exact form), the one out of h0 (the code form)."""
    case = make_case(Config(3, 1, 2, 2, 3, "tanh", True, False, True, 1.0, "both"))
    value, grads = pascanu_omega(case.rnn, case.x)
    assert value == 0.0 and all(not g.any() for g in grads.values())
    value, grads = pascanu_omega(case.rnn, form="code")  # x is optional for the code form
    assert value > 0 and grads["weight_hh_l0"].any()
    assert not any(grads[k].any() for k in grads if k != "weight_hh_l0")


@pytest.mark.parametrize("form", ["exact", "code"])
def test_float32_against_the_float64_twin(form):
    for seed, nl in ((0, "tanh"), (1, "relu"), (2, "tanh")):
        cfg = Config(seed, 5, 3, 2, 4, nl, seed != 1, seed == 2, seed == 0, 0.8, "both")
        case = make_case(cfg, dtype=np.float32)
        value, grads = pascanu_omega(case.rnn, case.x, form=form)
        assert all(g.dtype == np.float32 for g in grads.values())
        check_twin(case, form, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Finite differences, δ held fixed
# --------------------------------------------------------------------------------------------
def pre_activations(case: Case) -> np.ndarray:
    """a_t = x_t W_ihᵀ + b + h_{t-1} W_hhᵀ of the last forward, (T, B, H), from its states."""
    p, hs = case.rnn.parameters(), case.rnn.states[0]
    x = case.x.transpose(1, 0, 2) if case.cfg.batch_first else case.x
    a = x @ p["weight_ih_l0"].T + hs[:-1] @ p["weight_hh_l0"].T
    return a + p["bias_ih_l0"] + p["bias_hh_l0"] if case.cfg.bias else a


def omega_at_current_parameters(case: Case, delta: np.ndarray):
    """Ω with the parameters as they are now and δ held at ``delta``: a forward refreshes the states, no backward
    runs (pascanu_omega itself refuses to pair a forward with an older backward's δ: omega_of takes them as given)."""
    case.rnn(case.x, case.h0)
    x = case.x.transpose(1, 0, 2) if case.cfg.batch_first else case.x
    return omega_of(case.rnn, x, case.rnn.states[0], delta)[0]


@given(cfg=configs(min_T=2, max_T=5))
def test_exact_form_matches_finite_differences(cfg):
    case = make_case(cfg)
    value, grads = pascanu_omega(case.rnn, case.x)
    if cfg.nonlinearity == "relu":  # a kink within reach of ε: no oracle there
        assume(np.abs(pre_activations(case)).min() > 1e-4)
    delta = case.rnn.hidden_grads[0].copy()
    for name, p in case.rnn.parameters().items():
        num = numerical_grad(lambda: omega_at_current_parameters(case, delta), p)
        assert_close(grads[name], num, name=f"dΩ/d{name} vs finite differences", config=asdict(cfg), **FD_TOLERANCE)
    assert omega_at_current_parameters(case, delta) == value  # parameters restored


# --------------------------------------------------------------------------------------------
# Closed forms: a dead relu step, δ exactly zero
# --------------------------------------------------------------------------------------------
def dead_relu_case(T, B, dead_step, seed=0, grad_output=None) -> Case:
    """relu with every unit off at ``dead_step`` (W_ih > 0, x = -20 there): δJ = 0 at that step."""
    cfg = Config(seed, T, B, 2, 3, "relu", True, False, False, 1.0, "output")
    rng = np.random.default_rng(seed)
    rnn = RNN(2, 3, nonlinearity="relu", dtype=np.float64)
    state = {k: rng.normal(0, 0.5, v.shape) for k, v in rnn.state_dict().items()}
    state["weight_ih_l0"] = np.abs(state["weight_ih_l0"]) + 0.5
    x = rng.normal(size=(T, B, 2))
    x[dead_step] = -20.0
    case = make_case(cfg, x=x, state=state, grad_output=grad_output)
    assert not case.rnn.states[0][dead_step + 1].any()  # h at the dead step: all units off
    assert (np.linalg.norm(case.rnn.hidden_grads[0, dead_step], axis=-1) > 0).all()  # δ there is not 0
    return case


def test_dead_relu_step_term_is_one_with_zero_gradient():
    case = dead_relu_case(T=2, B=1, dead_step=1)
    value, grads = pascanu_omega(case.rnn, case.x)  # the one term: (‖0‖/‖δ‖ - 1)² = 1
    assert value == 1.0
    assert all(np.isfinite(g).all() and not g.any() for g in grads.values())
    check_twin(case, "exact")
    check_twin(case, "code")  # (q_0 - 1)² and 1, averaged; the second's gradient is 0


@pytest.mark.parametrize("form", ["exact", "code"])
def test_dead_relu_step_in_a_longer_sequence_matches_twin(form):
    case = dead_relu_case(T=6, B=3, dead_step=3, seed=5)
    value, grads = pascanu_omega(case.rnn, case.x, form=form)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads.values())
    check_twin(case, form)


def test_delta_exactly_zero_for_a_whole_sequence():
    """A sequence with zero cotangent has δ = 0 everywhere: its terms are skipped, it still counts in B
    (exact), and it is not counted at all (code: the mean over counted terms)."""
    cfg = Config(11, 5, 3, 2, 4, "tanh", True, True, True, 1.0, "output")
    rng = np.random.default_rng(0)
    grad_output = np.zeros((3, 5, 4))
    grad_output[[0, 2], -1] = rng.normal(size=(2, 4))  # a loss on the last step only, none for sequence 1
    case = make_case(cfg, grad_output=grad_output)
    assert not case.rnn.hidden_grads[0, :, 1].any()
    for form in ("exact", "code"):
        check_twin(case, form)
    # the same model on sequences 0 and 2 alone
    keep = [0, 2]
    sub = Case(
        replace(cfg, B=2),
        RNN(2, 4, dtype=np.float64, batch_first=True),
        case.x[keep],
        case.h0[:, keep],
        grad_output[keep],
        None,
    )
    sub.rnn.load_state_dict(case.rnn.state_dict())
    sub.rnn(sub.x, sub.h0)
    sub.rnn.backward(sub.grad_output)
    exact, exact_sub = pascanu_omega(case.rnn, case.x)[0], pascanu_omega(sub.rnn, sub.x)[0]
    assert exact > 0
    assert_close(np.float64(3 * exact), np.float64(2 * exact_sub), name="B counts the all-skipped sequence")
    code, code_sub = pascanu_omega(case.rnn, form="code")[0], pascanu_omega(sub.rnn, form="code")[0]
    assert_close(np.float64(code), np.float64(code_sub), name="the code form's mean over counted terms")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_delta_exactly_zero_from_some_step_on(nonlinearity):
    cfg = Config(4, 6, 3, 2, 4, nonlinearity, True, False, False, 1.0, "output")
    grad_output = np.random.default_rng(1).normal(size=(6, 3, 4))
    grad_output[3:] = 0  # no loss from step 3 on, none on h_n: δ_t = 0 for t >= 3
    case = make_case(cfg, grad_output=grad_output)
    assert not case.rnn.hidden_grads[0, 3:].any() and case.rnn.hidden_grads[0, 1:3].any()
    for form in ("exact", "code"):
        check_twin(case, form)


def test_delta_zero_everywhere_gives_zero():
    cfg = Config(2, 4, 2, 2, 3, "tanh", True, False, False, 1.0, "output")
    case = make_case(cfg, grad_output=np.zeros((4, 2, 3)))
    for form in ("exact", "code"):  # code: no term counts, Ω = 0 (where the authors' code divides 0 by 0)
        value, grads = pascanu_omega(case.rnn, case.x, form=form)
        assert value == 0.0 and all(not g.any() for g in grads.values())
        check_twin(case, form)


def test_code_form_bound_counts_squared_norms_from_1e_minus_20():
    """‖δ‖² ≥ 1e-20 counts (the code's TT.ge), below does not; the threshold is on δ, not on δ̂."""
    cfg = Config(6, 4, 2, 2, 3, "tanh", True, False, False, 1.0, "output")
    go = np.random.default_rng(3).normal(size=(4, 2, 3))
    go[:, 1] *= 1e-12  # sequence 1: ‖δ‖² ~ 1e-24: never counts
    case = make_case(cfg, grad_output=go)
    assert (np.sum(case.rnn.hidden_grads[0, :, 1] ** 2, axis=-1) < 1e-20).all()
    check_twin(case, "code")
    go_big = go.copy()
    go_big[:, 1] *= 1e6  # ~1e-12: counts; the exact form, scale-free, is unchanged by the factor
    big = make_case(cfg, grad_output=go_big)
    check_twin(big, "code")
    assert pascanu_omega(case.rnn, form="code")[0] != pascanu_omega(big.rnn, form="code")[0]
    assert_close(
        np.float64(pascanu_omega(case.rnn, case.x)[0]),
        np.float64(pascanu_omega(big.rnn, big.x)[0]),
        name="exact Ω is invariant to the scale of δ",
    )


# --------------------------------------------------------------------------------------------
# The RNN is left as it was
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_is_unchanged(nonlinearity):
    cfg = Config(8, 5, 3, 2, 4, nonlinearity, True, True, True, 1.0, "both")
    case = make_case(cfg)
    rnn = case.rnn
    params = {k: v.copy() for k, v in rnn.parameters().items()}
    accumulated = {k: v.copy() for k, v in rnn.grads.items()}
    hidden, hidden_id = rnn.hidden_grads.copy(), id(rnn.hidden_grads)
    states = rnn.states[0].copy()
    x = case.x.copy()
    for form in ("exact", "code"):
        _, grads = pascanu_omega(rnn, case.x, form=form)
        for g in grads.values():  # the result is the caller's: writing into it changes nothing in the RNN
            g[...] = 7.0
    assert all(np.array_equal(rnn.parameters()[k], v) for k, v in params.items())
    assert all(np.array_equal(rnn.grads[k], v) for k, v in accumulated.items())
    assert id(rnn.hidden_grads) == hidden_id and np.array_equal(rnn.hidden_grads, hidden)
    assert np.array_equal(rnn.states[0], states) and np.array_equal(case.x, x)


# --------------------------------------------------------------------------------------------
# Mutations: each must make a check fail
# --------------------------------------------------------------------------------------------
MUTANT_CFG = Config(21, 6, 3, 2, 4, "tanh", True, False, True, 1.0, "both")


def test_mutation_without_the_f_second_path_fails(monkeypatch):
    case = make_case(MUTANT_CFG)
    ref = twin(case, "exact")
    check_against(case, "exact", ref)
    monkeypatch.setattr(R, "_slope_derivative", lambda h, nonlinearity: np.zeros_like(h))
    with pytest.raises(AssertionError):
        check_against(case, "exact", ref)
    with pytest.raises(AssertionError):  # finite differences see it too
        grads, delta = pascanu_omega(case.rnn, case.x)[1], case.rnn.hidden_grads[0].copy()
        num = numerical_grad(lambda: omega_at_current_parameters(case, delta), case.rnn.parameters()["weight_ih_l0"])
        assert_close(grads["weight_ih_l0"], num, name="dΩ/dweight_ih without f''", **FD_TOLERANCE)


@pytest.mark.parametrize("form, wrong_first", [("exact", 0), ("code", 1)])
def test_mutation_of_the_first_transition_fails(monkeypatch, form, wrong_first):
    case = make_case(MUTANT_CFG)
    ref = twin(case, form)
    check_against(case, form, ref)
    monkeypatch.setitem(R.FIRST_TRANSITION, form, wrong_first)
    with pytest.raises(AssertionError):
        check_against(case, form, ref)


@pytest.mark.parametrize("form", ["exact", "code"])
def test_delta_carrying_gradient_is_not_what_is_computed(form):
    case = make_case(MUTANT_CFG)
    check_against(case, form, twin(case, form))
    with pytest.raises(AssertionError):
        check_against(case, form, twin(case, form, detach_delta=False))


def test_code_form_gradient_through_the_states_is_not_what_is_computed():
    case = make_case(MUTANT_CFG)
    check_against(case, "code", twin(case, "code"))
    with pytest.raises(AssertionError):
        check_against(case, "code", twin(case, "code", detach_states=False))


def test_the_two_forms_differ():
    case = make_case(MUTANT_CFG)
    with pytest.raises(AssertionError):
        check_against(case, "exact", twin(case, "code"))


# --------------------------------------------------------------------------------------------
# What is not supported
# --------------------------------------------------------------------------------------------
def run(rnn, x, **kwargs):
    out, h_n = rnn(x, **kwargs)
    rnn.backward(np.ones_like(out))
    return rnn


X = np.random.default_rng(0).normal(size=(4, 3, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_layers=2), "rnn: .*num_layers=2"),
        (dict(bidirectional=True), "rnn: .*bidirectional=True"),
    ],
)
def test_unsupported_models_raise(kwargs, match):
    rnn = run(RNN(2, 3, dtype=np.float64, **kwargs), X)
    with pytest.raises(ValueError, match=match):
        pascanu_omega(rnn, X)


def test_unbatched_input_raises():
    x = X[:, 0]
    rnn = run(RNN(2, 3, dtype=np.float64), x)
    with pytest.raises(ValueError, match="x: unbatched"):
        pascanu_omega(rnn, x)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_a_forward_with_lengths_raises(nonlinearity):
    rnn = run(RNN(2, 3, nonlinearity=nonlinearity, dtype=np.float64), X, lengths=[2, 4, 3])
    with pytest.raises(ValueError, match="lengths"):
        pascanu_omega(rnn, X)


def test_bad_arguments_raise():
    rnn = run(RNN(2, 3, dtype=np.float64), X)
    with pytest.raises(ValueError, match="form: "):
        pascanu_omega(rnn, X, form="Paper")
    with pytest.raises(ValueError, match='form: "paper" is ambiguous.*form="code".*form="exact"'):
        pascanu_omega(rnn, X, form="paper")  # the exact form's old name: refused, pointing to both
    with pytest.raises(ValueError, match="steps: expected one of \\['sum', 'mean'\\], got 'avg'"):
        pascanu_omega(rnn, X, form="code", steps="avg")
    value, grads = pascanu_omega(rnn)  # the call: x is the input the RNN kept
    value_x, grads_x = pascanu_omega(rnn, X)
    assert value == value_x and all(np.array_equal(grads[k], grads_x[k]) for k in grads)
    with pytest.raises(ValueError, match=r"x: expected shape \(4, 3, 2\)"):
        pascanu_omega(rnn, X.transpose(1, 0, 2))  # batch-first data for a time-major RNN
    with pytest.raises(ValueError, match="x: the RNN's last forward"):
        pascanu_omega(rnn, X + 0.1)  # not the forward's input
    with pytest.raises(ValueError, match="x: the RNN's last forward"):
        pascanu_omega(rnn, X.astype(np.float32))  # converted exactly, but not the forward's input: rounded
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        pascanu_omega(run(RNN(2, 3), X.astype(np.float32)), X)  # float64 into float32 would round
    with pytest.raises(TypeError, match="rnn: "):
        pascanu_omega(run(LSTM(2, 3, dtype=np.float64), X), X)
    with pytest.raises(RuntimeError, match="backward"):
        pascanu_omega(RNN(2, 3, dtype=np.float64), X)
    fresh = RNN(2, 3, dtype=np.float64)
    fresh(X)
    with pytest.raises(RuntimeError, match="backward"):  # a forward without its backward
        pascanu_omega(fresh, X)
    w, b = rnn.parameters()["weight_hh_l0"], rnn.parameters()["bias_hh_l0"]
    w_seen = w.copy()
    w[0, 0] += 1e-3  # an update after the backward: refused exactly, by the forward's copy of the weights
    for args in ((rnn, X), (rnn,)):
        with pytest.raises(RuntimeError, match=r"pascanu_omega: the parameter\(s\) \['weight_hh_l0'\] were modified"):
            pascanu_omega(*args)
    w[...] = w_seen  # bit for bit what the forward saw: accepted again
    pascanu_omega(rnn)
    b[0] += 1e-3  # a bias the backward does not read: caught by the states' check
    with pytest.raises(ValueError, match="parameter update"):
        pascanu_omega(rnn, X)
    with pytest.raises(ValueError, match="parameter update"):
        pascanu_omega(rnn)
    packed = RNN(2, 3, dtype=np.float64)
    packed(X, lengths=[4, 2, 3])
    packed.backward(np.ones((4, 3, 3)))
    with pytest.raises(ValueError, match="lengths"):
        pascanu_omega(packed)
    single = RNN(2, 3, dtype=np.float64)
    single(X[:, 0])
    single.backward(np.ones((4, 3)))
    with pytest.raises(ValueError, match="unbatched"):
        pascanu_omega(single)
