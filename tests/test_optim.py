"""scratch_rnn.optim against torch.optim (float64, every step), closed forms, state round trips, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_rnn import optim
from tests.helpers import TOLERANCES, assert_close, rel_error
from tests.strategies import OPTIMIZER_NAMES, optimizer_options

# torch's name of each state entry is ours; this maps nothing but documents the comparison.
F64 = TOLERANCES[np.dtype(np.float64)]


def _random_params(rng, dtype=np.float64):
    shapes = [(3, 4), (4,), (2, 3, 2)]
    return {f"p{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}


def _grad_sequence(rng, params, n, scales):
    """n gradient dicts: noise at a per-array scale (1e-4..1e2, to exercise eps) plus a pull toward 0."""
    return [
        {k: (rng.standard_normal(p.shape) * s + 0.1 * p) for (k, p), s in zip(params.items(), scales)} for _ in range(n)
    ]


@settings(max_examples=40 if settings.default.max_examples <= 25 else 200)
@given(opts=optimizer_options(), seed=st.integers(0, 2**31 - 1), n_steps=st.integers(20, 30))
def test_matches_torch_optim_every_step(opts, seed, n_steps):
    """Parameters and every state entry equal torch's after each of >= 20 steps (float64)."""
    name, kw = opts
    rng = np.random.default_rng(seed)
    params = _random_params(rng)
    scales = rng.choice([1e-4, 1e-2, 1.0, 1e2], size=len(params))
    grads = _grad_sequence(rng, params, n_steps, scales)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ours = optim.make_optimizer(name, params, **kw)
    theirs = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
    }[name](list(tparams.values()), foreach=False, **kw)
    config = dict(optimizer=name, seed=seed, n_steps=n_steps, scales=scales.tolist(), **kw)
    for t, g in enumerate(grads):
        ours.step({k: v.copy() for k, v in g.items()})
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        theirs.step()
        for k, p in tparams.items():
            assert_close(params[k], p.detach().numpy(), name=f"{k} after step {t + 1}", config=config)
            for key, value in theirs.state[p].items():
                if key == "step":
                    assert float(ours.state[k]["step"]) == float(value), (k, config)
                else:
                    assert_close(
                        ours.state[k][key], value.numpy(), name=f"state[{k}][{key}] step {t + 1}", config=config
                    )
            assert set(ours.state[k]) == set(theirs.state[p]), (k, sorted(ours.state[k]), config)


# ---------------------------------------------------------------------------------------------
# closed forms (no torch)
# ---------------------------------------------------------------------------------------------
def test_sgd_closed_forms():
    rng = np.random.default_rng(1)
    p0, g = rng.standard_normal(5), rng.standard_normal(5)
    p = {"w": p0.copy()}
    optim.SGD(p, lr=0.3).step({"w": g})
    np.testing.assert_array_equal(p["w"], p0 - 0.3 * g)
    # momentum 0.9, dampening 0.25, constant gradient: buf1 = g, buf2 = 0.9 g + 0.75 g
    p = {"w": p0.copy()}
    o = optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.25)
    o.step({"w": g})
    o.step({"w": g})
    np.testing.assert_allclose(p["w"], p0 - 0.1 * g - 0.1 * (0.9 + 0.75) * g, rtol=1e-14, atol=1e-15)
    # nesterov first step: g + mu * buf = (1 + mu) g
    p = {"w": p0.copy()}
    optim.SGD(p, lr=0.1, momentum=0.5, nesterov=True).step({"w": g})
    np.testing.assert_allclose(p["w"], p0 - 0.1 * 1.5 * g, rtol=1e-14, atol=1e-15)


def test_adam_adamw_adagrad_rmsprop_first_step_closed_forms():
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(6)
    g = rng.standard_normal(6) * np.logspace(-3, 2, 6)
    lr, eps = 0.01, 1e-3
    # Adam step 1: m̂ = g, v̂ = g², so p1 = p0 - lr g / (|g| + eps)
    p = {"w": p0.copy()}
    optim.Adam(p, lr=lr, eps=eps).step({"w": g})
    np.testing.assert_allclose(p["w"], p0 - lr * g / (np.abs(g) + eps), rtol=1e-13, atol=1e-16)
    # AdamW with zero gradient: only the decoupled decay acts, p1 = p0 (1 - lr wd)
    p = {"w": p0.copy()}
    optim.AdamW(p, lr=lr, weight_decay=0.5).step({"w": np.zeros(6)})
    np.testing.assert_allclose(p["w"], p0 * (1 - lr * 0.5), rtol=1e-15)
    # Adam with the same setting: the decay is a gradient, normalised: p1 = p0 - lr sign(p0) |wd p0|/(|wd p0|+eps)
    p = {"w": p0.copy()}
    optim.Adam(p, lr=lr, weight_decay=0.5, eps=eps).step({"w": np.zeros(6)})
    gd = 0.5 * p0
    np.testing.assert_allclose(p["w"], p0 - lr * gd / (np.abs(gd) + eps), rtol=1e-13)
    # Adagrad step 1: s = a + g², p1 = p0 - lr g / (sqrt(s) + eps); step 2 uses lr / (1 + lr_decay)
    p = {"w": p0.copy()}
    o = optim.Adagrad(p, lr=lr, initial_accumulator_value=0.2, eps=eps, lr_decay=0.5)
    o.step({"w": g})
    p1 = p0 - lr * g / (np.sqrt(0.2 + g * g) + eps)
    np.testing.assert_allclose(p["w"], p1, rtol=1e-13)
    o.step({"w": g})
    np.testing.assert_allclose(p["w"], p1 - lr / 1.5 * g / (np.sqrt(0.2 + 2 * g * g) + eps), rtol=1e-13)
    # RMSprop step 1: v = (1-α) g², p1 = p0 - lr g / (sqrt(v) + eps); centered: v - ((1-α) g)²
    for centered in (False, True):
        p = {"w": p0.copy()}
        optim.RMSprop(p, lr=lr, alpha=0.9, eps=eps, centered=centered).step({"w": g})
        v = 0.1 * g * g - (0.1 * g) ** 2 * centered
        np.testing.assert_allclose(p["w"], p0 - lr * g / (np.sqrt(v) + eps), rtol=1e-13)


def test_maximize_is_descent_on_the_negated_gradient():
    rng = np.random.default_rng(3)
    for name in OPTIMIZER_NAMES:
        p0, g = rng.standard_normal(4), rng.standard_normal(4)
        a, b = {"w": p0.copy()}, {"w": p0.copy()}
        optim.make_optimizer(name, a, lr=0.1, maximize=True).step({"w": g})
        optim.make_optimizer(name, b, lr=0.1).step({"w": -g})
        np.testing.assert_array_equal(a["w"], b["w"], err_msg=name)


# ---------------------------------------------------------------------------------------------
# the in-place contract and state round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_updates_in_place_and_state_dict_round_trip_is_exact(name):
    rng = np.random.default_rng(4)
    params = _random_params(rng)
    alias = params["p0"]
    kw = dict(lr=0.05, weight_decay=0.01)
    kw.update(
        dict(sgd=dict(momentum=0.9), rmsprop=dict(momentum=0.3, centered=True), adam=dict(amsgrad=True)).get(name, {})
    )
    grads = _grad_sequence(rng, params, 10, [1.0, 0.1, 10.0])
    o = optim.make_optimizer(name, params, **kw)
    for g in grads[:5]:
        o.step(g)
    assert params["p0"] is alias and not np.array_equal(alias, _random_params(np.random.default_rng(4))["p0"])
    sd = o.state_dict()
    copy = {k: v.copy() for k, v in params.items()}
    o2 = optim.make_optimizer(name, copy, lr=123.0)  # hyperparameters come from the state dict
    o2.load_state_dict(sd)
    for state in sd["state"].values():  # the state dict is a copy: scribbling on it changes nothing
        for v in state.values():
            v[...] = 7.0
    for g in grads[5:]:
        o.step(g)
        o2.step(g)
    for k in params:
        np.testing.assert_array_equal(params[k], copy[k], err_msg=f"{name} {k}")
    assert o2.step_count == o.step_count == 10 and o2.lr == o.lr == 0.05


def test_float32_params_stay_float32_and_track_torch():
    rng = np.random.default_rng(5)
    params = _random_params(rng, np.float32)
    grads = _grad_sequence(rng, params, 20, [1.0, 0.1, 10.0])
    tp = [torch.tensor(v, requires_grad=True) for v in params.values()]
    ours, theirs = optim.Adam(params, lr=0.01), torch.optim.Adam(tp, lr=0.01, foreach=False)
    for g in grads:
        ours.step({k: v.astype(np.float32) for k, v in g.items()})
        for p, k in zip(tp, params):
            p.grad = torch.tensor(g[k].astype(np.float32))
        theirs.step()
    for p, k in zip(tp, params):
        assert params[k].dtype == np.float32
        assert_close(params[k], p.detach().numpy(), name=k)


# ---------------------------------------------------------------------------------------------
# clipping
# ---------------------------------------------------------------------------------------------
@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**31 - 1),
    max_norm=st.sampled_from([1e-3, 0.5, 1.0, 5.0, 1e3]),
    norm_type=st.sampled_from([2.0, 1.0, 3.0, math.inf, "inf"]),
)
def test_clip_grad_norm_matches_torch_and_the_closed_form(seed, max_norm, norm_type):
    rng = np.random.default_rng(seed)
    grads = {
        k: rng.standard_normal(s) * rng.choice([0.1, 1, 3]) for k, s in (("a", (3, 4)), ("b", (5,)), ("c", (2, 2, 2)))
    }
    before = {k: v.copy() for k, v in grads.items()}
    flat = np.concatenate([v.ravel() for v in before.values()])
    p = math.inf if norm_type == "inf" else norm_type
    expected_total = np.abs(flat).max() if p == math.inf else np.sum(np.abs(flat) ** p) ** (1 / p)
    tg = [torch.tensor(v, requires_grad=True) for v in before.values()]
    for t, v in zip(tg, before.values()):
        t.grad = torch.tensor(v)
    torch_total = float(torch.nn.utils.clip_grad_norm_(tg, max_norm, norm_type))
    total = optim.clip_grad_norm_(grads, max_norm, norm_type)
    config = dict(seed=seed, max_norm=max_norm, norm_type=norm_type)
    assert_close(total, expected_total, name="total norm (closed form)", config=config)
    assert_close(total, torch_total, name="total norm (torch)", config=config)
    coef = min(1.0, max_norm / (expected_total + 1e-6))
    for (k, g), t in zip(grads.items(), tg):
        assert_close(g, before[k] * coef, name=f"clipped {k} (closed form)", config=config)
        assert_close(g, t.grad.numpy(), name=f"clipped {k} (torch)", config=config)
    if coef < 1:
        assert_close(
            optim.total_norm(grads, norm_type),
            max_norm * expected_total / (expected_total + 1e-6),
            name="norm after clipping",
            config=config,
        )
    else:
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k])


def test_clip_grad_value_and_list_input():
    rng = np.random.default_rng(6)
    grads = [rng.standard_normal((4, 3)) * 3, rng.standard_normal(7)]
    before = [g.copy() for g in grads]
    optim.clip_grad_value_(grads, 0.7)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, np.clip(b, -0.7, 0.7))
    assert optim.clip_grad_norm_([], 1.0) == 0.0


def test_clip_grad_norm_nonfinite():
    g = {"a": np.array([1.0, np.inf])}
    with pytest.raises(FloatingPointError, match="total norm"):
        optim.clip_grad_norm_({"a": g["a"].copy()}, 1.0, error_if_nonfinite=True)
    with np.errstate(invalid="ignore"):
        assert math.isinf(optim.clip_grad_norm_(g, 1.0))  # as torch: returned, and the gradient is ruined
    assert np.isnan(g["a"][1])


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("sgd", dict(lr=-1.0), "lr: expected a number >= 0, got -1.0"),
        ("sgd", dict(nesterov=True), "nesterov: Nesterov momentum requires momentum > 0"),
        ("sgd", dict(momentum=0.9, dampening=0.1, nesterov=True), "dampening=0.1"),
        ("adam", dict(betas=(0.9, 1.0)), r"betas\[1\]: expected a number in \[0, 1\), got 1.0"),
        ("adam", dict(betas=0.9), r"betas: expected a pair"),
        ("adamw", dict(eps=-1e-8), "eps: expected a number >= 0"),
        ("adagrad", dict(lr_decay=-0.1), "lr_decay"),
        ("rmsprop", dict(alpha=float("nan")), "alpha"),
    ],
)
def test_bad_hyperparameters_name_the_argument(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(name, {"w": np.zeros(3)}, **kwargs)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="unknown hyperparameter.*'momentum'"):
        optim.Adam({"w": np.zeros(3)}, momentum=0.9)
    with pytest.raises(TypeError, match="params: expected a dict"):
        optim.SGD([np.zeros(3)])
    with pytest.raises(TypeError, match=r"params\['w'\]: expected a floating-point ndarray"):
        optim.SGD({"w": np.zeros(3, dtype=int)})
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        optim.make_optimizer("lbfgs", {"w": np.zeros(3)})
    with pytest.raises(TypeError, match="amsgrad: expected True or False"):
        optim.Adam({"w": np.zeros(3)}, amsgrad="yes")
    o = optim.SGD({"w": np.zeros(3), "b": np.zeros(2)}, lr=0.1)
    with pytest.raises(KeyError, match=r"missing \['b'\], unexpected \['x'\]"):
        o.step({"w": np.zeros(3), "x": np.zeros(2)})
    with pytest.raises(ValueError, match=r"grads\['b'\]: expected shape \(2,\) .*got \(3,\)"):
        o.step({"w": np.zeros(3), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="clip_value"):
        optim.clip_grad_value_([np.zeros(2)], -1)
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_grad_norm_([np.zeros(2)], 1.0, norm_type="fro")


def test_load_state_dict_checks_before_writing():
    params = {"w": np.ones(3)}
    o = optim.Adam(params, lr=0.1)
    o.step({"w": np.ones(3)})
    good = o.state_dict()
    other = optim.Adam({"w": np.ones(3)}, lr=0.5)
    before = other.state_dict()
    bad_shape = dict(good, state={"w": dict(good["state"]["w"], exp_avg=np.zeros(4))})
    with pytest.raises(ValueError, match=r"state\['w'\]\['exp_avg'\] expected shape \(3,\), got \(4,\)"):
        other.load_state_dict(bad_shape)
    bad_keys = dict(good, state={"v": good["state"]["w"]})
    with pytest.raises(KeyError, match=r"missing parameters \['w'\], unexpected \['v'\]"):
        other.load_state_dict(bad_keys)
    with pytest.raises(TypeError, match="the state is of a Adam optimizer, this is SGD"):
        optim.SGD({"w": np.ones(3)}).load_state_dict(good)
    ams = dict(good, hparams=dict(good["hparams"], amsgrad=True))  # the state lacks max_exp_avg_sq
    with pytest.raises(KeyError, match="max_exp_avg_sq"):
        other.load_state_dict(ams)
    after = other.state_dict()
    assert after["hparams"] == before["hparams"] and after["state"] == before["state"] == {"w": {}}


def test_the_torch_comparison_can_fail():
    """Mutation check of this file's oracle: a 1-ulp-level change is invisible, a wrong eps placement is not."""
    rng = np.random.default_rng(7)
    params = {"w": rng.standard_normal(8)}
    g = rng.standard_normal(8) * 1e-3
    tp = torch.tensor(params["w"], requires_grad=True)
    tp.grad = torch.tensor(g)
    torch.optim.Adam([tp], lr=0.1, eps=1e-3, foreach=False).step()
    ours = params["w"] - 0.1 * g / (np.sqrt(0.001 * g * g) / np.sqrt(0.001) + 1e-3)
    wrong = params["w"] - 0.1 * g / np.sqrt(0.001 * g * g + 1e-3) * np.sqrt(0.001)  # eps inside the sqrt
    assert rel_error(ours, tp.detach().numpy()) < F64["rtol"]
    with pytest.raises(AssertionError, match="mismatch"):
        assert_close(wrong, tp.detach().numpy(), name="eps placement")
