"""Numerics at the edges of scratch_rnn.optim ("nothing silently wrong"): norms of huge and tiny
gradients, non-float gradients, non-finite hyperparameters, damaged optimizer state, aliased
parameters. Oracles: closed forms, the plain formula where it does not overflow, torch in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scratch_rnn import optim

OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "adagrad", "rmsprop")


def _plain_norm(arrays, p):
    """The textbook formula (overflows for huge entries): the oracle where it does not."""

    def one(a):
        a = np.abs(np.asarray(a, dtype=np.float64).ravel())
        if a.size == 0:
            return 0.0
        if p == math.inf:
            return float(a.max())
        if p == 1:
            return float(a.sum())
        if p == 2:
            return float(np.sqrt(np.dot(a, a)))
        return float(np.sum(a**p) ** (1.0 / p))

    return one(np.array([one(a) for a in arrays]))


def _torch_clip(arrays, max_norm, p):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    for t, a in zip(ts, arrays):
        t.grad = torch.tensor(a)
    total = float(torch.nn.utils.clip_grad_norm_(ts, max_norm, p))
    return total, [t.grad.numpy() for t in ts]


# ---------------------------------------------------------------------------------------------
# A1: norms without overflow
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 2.5, math.inf])
def test_clip_grad_norm_of_huge_gradients_matches_the_closed_form(p):
    """Entries of 1e200 (p=2: their squares overflow) give the exact finite norm and a correct clip."""
    shapes, values = [(3, 4), (5,), (2, 2, 2)], [1e200, -3e200, 2e200]
    grads = {f"g{i}": np.full(s, v) for i, (s, v) in enumerate(zip(shapes, values))}
    sizes = np.array([np.prod(s) for s in shapes], dtype=float)
    mags = np.abs(values) / 1e200
    expected = 1e200 * (mags.max() if p == math.inf else float(np.sum(sizes * mags**p)) ** (1 / p))
    with np.errstate(over="raise", invalid="raise"):  # no intermediate overflow either
        assert optim.total_norm(grads, p) == pytest.approx(expected, rel=1e-14, abs=0)
        total = optim.clip_grad_norm_(grads, 2.0, p)
    assert total == pytest.approx(expected, rel=1e-14, abs=0)
    for (k, g), v in zip(grads.items(), values):
        np.testing.assert_allclose(g, v * 2.0 / expected, rtol=1e-14, err_msg=k)
    assert optim.total_norm(grads, p) == pytest.approx(2.0, rel=1e-13, abs=0)


def test_norms_of_tiny_gradients_do_not_underflow_to_zero():
    grads = [np.full(4, 3e-200), np.full(5, -4e-200)]  # squares underflow to 0
    assert optim.total_norm(grads) == pytest.approx(math.sqrt(4 * 9 + 5 * 16) * 1e-200, rel=1e-14, abs=0)
    assert optim.total_norm(grads, 3) == pytest.approx((4 * 27 + 5 * 64) ** (1 / 3) * 1e-200, rel=1e-14, abs=0)


def test_a_norm_beyond_float64_is_inf_but_clipping_is_still_exact():
    """Two entries of 1.5e308: the norm 2.1e308 is not a float64; the clip is still to max_norm."""
    grads = {"a": np.array([1.5e308]), "b": np.array([-1.5e308, 0.0])}
    total = optim.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)  # every entry finite: no error
    assert total == math.inf
    np.testing.assert_allclose(grads["a"], [math.sqrt(0.5)], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [-math.sqrt(0.5), 0.0], rtol=1e-15)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 2.5, math.inf])
@pytest.mark.parametrize("scale", [1e-90, 1e-3, 1.0, 1e3, 1e90])
def test_clip_grad_norm_matches_torch_where_torch_does_not_overflow(p, scale):
    rng = np.random.default_rng(int(1e6 * p if p != math.inf else 7) % 2**31)
    arrays = [rng.standard_normal(s) * scale * f for s, f in (((3, 4), 1.0), ((7,), 10.0), ((2, 1, 3), 0.1))]
    torch_total, torch_clipped = _torch_clip([a.copy() for a in arrays], 1e-3 * scale, p)
    ours = [a.copy() for a in arrays]
    total = optim.clip_grad_norm_(ours, 1e-3 * scale, p)
    assert total == pytest.approx(torch_total, rel=1e-13, abs=0)
    for a, t in zip(ours, torch_clipped):
        np.testing.assert_allclose(a, t, rtol=1e-13, atol=0)


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
def test_the_scaled_norm_is_bit_identical_to_the_plain_formula_where_that_one_works(p):
    """Scaling by a power of two is exact: results (and so the trainers' trajectories) do not move."""
    rng = np.random.default_rng(3)
    for scale in (1e-100, 1e-8, 1.0, 1e5, 1e100):
        arrays = [rng.standard_normal(s) * scale * rng.choice([0.01, 1, 100]) for s in ((30, 7), (13,), (4, 4))]
        assert optim.total_norm(arrays, p) == _plain_norm(arrays, p), scale


def test_only_a_non_finite_entry_gives_a_non_finite_norm():
    assert math.isnan(optim.total_norm([np.array([1e200, np.nan]), np.array([np.inf])]))
    assert optim.total_norm([np.array([1e200, np.inf])]) == math.inf
    with pytest.raises(FloatingPointError, match="total norm"):
        optim.clip_grad_norm_([np.array([1e200, np.inf])], 1.0, error_if_nonfinite=True)
    assert optim.total_norm([np.zeros(3), np.zeros(0)]) == 0.0


def test_one_ndarray_is_clipped_in_place_as_torch_clips_one_tensor():
    g = np.array([3.0, 4.0])
    t = torch.tensor(g.copy(), requires_grad=True)
    t.grad = torch.tensor(g.copy())
    assert optim.clip_grad_norm_(g, 1.0) == float(torch.nn.utils.clip_grad_norm_(t, 1.0)) == 5.0
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-15)
    optim.clip_grad_value_(g, 0.5)
    np.testing.assert_array_equal(g, np.minimum(t.grad.numpy(), 0.5))


# ---------------------------------------------------------------------------------------------
# A2: non-floating gradients
# ---------------------------------------------------------------------------------------------
BAD_GRADS = [np.arange(3), np.array([True, False, True]), np.array([1.0, None, 2.0], dtype=object), np.arange(3) + 0j]


@pytest.mark.parametrize("bad", BAD_GRADS, ids=lambda a: str(a.dtype))
def test_non_float_gradients_are_a_type_error_naming_the_key(bad):
    msg = rf"grads\['w'\]: expected a floating-point array, got dtype {bad.dtype}"
    for call in (
        lambda g: optim.clip_grad_norm_(g, 1.0),
        lambda g: optim.clip_grad_value_(g, 0.1),
        lambda g: optim.total_norm(g),
    ):
        ok = np.full(3, 1e3)
        grads = {"ok": ok, "w": bad.copy()}
        with pytest.raises(TypeError, match=msg):
            call(grads)
        np.testing.assert_array_equal(ok, np.full(3, 1e3))  # checked before anything was clipped
    with pytest.raises(TypeError, match=r"grads\[1\]: expected a floating-point array"):
        optim.clip_grad_norm_([np.ones(3), bad.copy()], 1.0)
    for name in OPTIMIZER_NAMES:
        params = {"ok": np.ones(3), "w": np.ones(3)}
        with pytest.raises(TypeError, match=msg):
            optim.make_optimizer(name, params, lr=0.1).step({"ok": np.ones(3), "w": bad.copy()})
        np.testing.assert_array_equal(params["ok"], np.ones(3))


def test_read_only_gradients_are_refused_before_clipping():
    ro = np.ones(3)
    ro.flags.writeable = False
    first = np.full(2, 10.0)
    with pytest.raises(ValueError, match=r"grads\['r'\]: the array is read-only"):
        optim.clip_grad_norm_({"f": first, "r": ro}, 1.0)
    np.testing.assert_array_equal(first, np.full(2, 10.0))


# ---------------------------------------------------------------------------------------------
# A3: hyperparameters are finite; norm_type is p >= 1 or inf
# ---------------------------------------------------------------------------------------------
HPARAMS = [
    ("sgd", "lr"),
    ("sgd", "momentum"),
    ("sgd", "dampening"),
    ("sgd", "weight_decay"),
    ("adam", "lr"),
    ("adam", "eps"),
    ("adam", "weight_decay"),
    ("adamw", "lr"),
    ("adamw", "weight_decay"),
    ("adagrad", "lr_decay"),
    ("adagrad", "initial_accumulator_value"),
    ("adagrad", "eps"),
    ("rmsprop", "alpha"),
    ("rmsprop", "eps"),
    ("rmsprop", "momentum"),
    ("rmsprop", "weight_decay"),
]


@pytest.mark.parametrize("value", [math.inf, math.nan, np.float64(np.inf)], ids=["inf", "nan", "np.inf"])
@pytest.mark.parametrize("name, key", HPARAMS)
def test_non_finite_hyperparameters_are_refused(name, key, value):
    with pytest.raises(ValueError, match=rf"^{key}: expected a (finite )?number >= 0, got"):
        optim.make_optimizer(name, {"w": np.zeros(3)}, **{key: value})


def test_non_finite_lr_setter_max_norm_clip_value_and_betas_are_refused():
    o = optim.SGD({"w": np.zeros(3)}, lr=0.1)
    with pytest.raises(ValueError, match="lr: expected a finite number >= 0, got inf"):
        o.lr = math.inf
    assert o.lr == 0.1
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="max_norm"):
            optim.clip_grad_norm_([np.ones(2)], bad)
        with pytest.raises(ValueError, match="clip_value"):
            optim.clip_grad_value_([np.ones(2)], bad)
        with pytest.raises(ValueError, match=r"betas\[0\]"):
            optim.Adam({"w": np.zeros(3)}, betas=(bad, 0.9))
    sd = optim.SGD({"w": np.zeros(3)}).state_dict()
    sd["hparams"]["lr"] = math.inf
    with pytest.raises(ValueError, match="lr: expected a finite number"):
        optim.SGD({"w": np.zeros(3)}).load_state_dict(sd)


@pytest.mark.parametrize("p", [-1, -1.0, 0, 0.5, -math.inf, math.nan, "-inf", True])
def test_norm_type_below_one_is_refused_with_the_reason(p):
    for call in (lambda: optim.total_norm([np.ones(2)], p), lambda: optim.clip_grad_norm_([np.ones(2)], 1.0, p)):
        with pytest.raises(ValueError, match=r"norm_type: expected a number >= 1 or .?inf"):
            call()
    with pytest.raises(ValueError, match="a p-norm needs p >= 1"):
        optim.total_norm([np.ones(2)], -1)


# ---------------------------------------------------------------------------------------------
# A4: damaged optimizer state is refused, naming parameter and key
# ---------------------------------------------------------------------------------------------
def _stepped(name, **kw):
    o = optim.make_optimizer(name, {"w": np.ones(3), "v": np.ones(2)}, lr=0.1, **kw)
    o.step({"w": np.full(3, 0.5), "v": np.full(2, -0.5)})
    return o


DAMAGE = [  # (optimizer, kwargs, key, value, message)
    ("adam", {}, "exp_avg_sq", np.array([0.1, np.nan, 0.1]), "expected finite entries, got 1 non-finite"),
    ("adam", {}, "exp_avg_sq", np.array([0.1, -0.2, 0.1]), r"expected entries >= 0 .* the smallest -0.2"),
    ("adam", {}, "exp_avg", np.array([0.1, np.inf, 0.1]), "expected finite entries"),
    ("adam", dict(amsgrad=True), "max_exp_avg_sq", np.array([-1.0, 0.1, 0.1]), "expected entries >= 0"),
    ("adam", {}, "exp_avg", np.array([1, 2, 3]), "expected a floating-point array, got dtype int64"),
    ("adamw", {}, "exp_avg_sq", np.array([1e300, 0.1, 0.1], dtype=np.float64), None),  # fine in float64
    ("rmsprop", {}, "square_avg", np.array([0.1, 0.1, -1e-9]), "expected entries >= 0"),
    ("rmsprop", dict(centered=True), "grad_avg", np.array([np.nan, 0.0, 0.0]), "expected finite entries"),
    ("adagrad", {}, "sum", np.array([-0.5, 0.1, 0.1]), "expected entries >= 0"),
    ("sgd", dict(momentum=0.9), "momentum_buffer", np.array([np.nan, 0.0, 0.0]), "expected finite entries"),
    ("adam", {}, "step", np.array(-5.0), r"'step'\] expected a finite integer >= 0.*got -5.0"),
    ("adam", {}, "step", np.array(2.5), r"'step'\] expected a finite integer >= 0.*got 2.5"),
    ("adam", {}, "step", np.array(np.inf), r"'step'\] expected a finite integer >= 0"),
    ("rmsprop", {}, "step", np.array(np.nan), r"'step'\] expected a finite integer >= 0"),
    ("adagrad", {}, "step", np.array(-1), r"'step'\] expected a finite integer >= 0.*got -1"),
    ("adam", {}, "step", np.array(True), r"'step'\] expected a number, got dtype bool"),
    ("adam", {}, "step", np.array(7), None),  # an integer step is a step
]


@pytest.mark.parametrize("name, kw, key, value, match", DAMAGE)
def test_damaged_optimizer_state_is_refused_naming_parameter_and_key(name, kw, key, value, match):
    sd = _stepped(name, **kw).state_dict()
    sd["state"]["w"][key] = value
    fresh = optim.make_optimizer(name, {"w": np.ones(3), "v": np.ones(2)}, lr=0.5, **kw)
    before = fresh.state_dict()
    if match is None:
        fresh.load_state_dict(sd)
        return
    with pytest.raises((ValueError, TypeError), match=rf"state\['w'\]\['{key}'\]"):
        fresh.validate_state_dict(sd)
    with pytest.raises((ValueError, TypeError), match=match):
        fresh.load_state_dict(sd)
    after = fresh.state_dict()
    assert after["hparams"] == before["hparams"] and after["step_count"] == before["step_count"]
    assert {k: sorted(s) for k, s in after["state"].items()} == {k: sorted(s) for k, s in before["state"].items()}


def test_state_that_overflows_the_parameters_dtype_is_refused():
    o = optim.make_optimizer("adam", {"w": np.ones(3, np.float32)}, lr=0.1)
    o.step({"w": np.ones(3, np.float32)})
    sd = o.state_dict()
    sd["state"]["w"]["exp_avg_sq"] = np.array([1e300, 0.0, 0.0])  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"state\['w'\]\['exp_avg_sq'\] expected finite entries.*float32"):
        optim.make_optimizer("adam", {"w": np.ones(3, np.float32)}).load_state_dict(sd)


def test_state_dict_of_the_wrong_structure_is_a_clear_error():
    o = optim.SGD({"w": np.ones(3), "v": np.ones(2)}, momentum=0.9)
    sd = _stepped("sgd", momentum=0.9).state_dict()
    with pytest.raises(TypeError, match=r"state\['w'\] expected a dict"):
        o.load_state_dict(dict(sd, state={"w": [1, 2], "v": {}}))
    with pytest.raises(TypeError, match="'state' expected a dict"):
        o.load_state_dict(dict(sd, state=[1, 2]))
    with pytest.raises(TypeError, match="'hparams' expected a dict"):
        o.load_state_dict(dict(sd, hparams=3))


# ---------------------------------------------------------------------------------------------
# A5: one array under two names
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_an_array_under_two_names_is_refused_naming_both(name):
    w = np.zeros(10)
    cases = [
        dict(a=w, b=np.ones(2), c=w),  # the same array twice
        dict(a=w[:6], b=w[4:]),  # overlapping views
        dict(a=w.reshape(2, 5), b=w[3:4]),  # a view inside a reshape
        dict(b=w[4:], a=w[:6]),
    ]  # named in the order given
    expected = [("a", "c"), ("a", "b"), ("a", "b"), ("b", "a")]
    for params, (x, y) in zip(cases, expected):
        with pytest.raises(ValueError, match=rf"params: '{x}' and '{y}' share memory"):
            optim.make_optimizer(name, params, lr=0.1)


def test_disjoint_views_of_one_buffer_are_fine_and_update_like_separate_arrays():
    buf = np.arange(12.0)
    params = dict(a=buf[:5], b=buf[5:], c=buf.reshape(3, 4)[:, :0], d=np.zeros(0))
    optim.SGD(params, lr=0.1, momentum=0.9).step({k: np.ones(v.shape) for k, v in params.items()})
    np.testing.assert_allclose(buf, np.arange(12.0) - 0.1)
    inter = np.arange(8.0)
    params = dict(even=inter[::2], odd=inter[1::2])  # interleaved: bounds overlap, memory does not
    optim.Adam(params, lr=0.1).step({"even": np.ones(4), "odd": -np.ones(4)})
    np.testing.assert_allclose(inter, np.arange(8.0) + np.tile([-0.1, 0.1], 4))
