"""MSE, cross-entropy and BCE-with-logits against torch.nn.functional and finite differences.

Hypothesis draws one configuration at a time (shape or layout, classes, ignored fraction,
reduction, logit scale up to 1e4) plus a seed from which the arrays are built, so a failure's
``config`` rebuilds it. Loss cotangents are random: a scalar for mean/sum, an array of the
unreduced shape for "none".
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import scratch_rnn.losses as L
from reference.layers import run_loss
from tests.helpers import FD_TOLERANCE, WorstErrors, assert_close, numerical_grad

REDUCTIONS = ("mean", "sum", "none")
DTYPES = (np.float64, np.float32)

WORST = WorstErrors("test_losses")
check = WORST.check


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    WORST.report()


def random_grad_loss(rng, reduction, loss_shape, dtype):
    """A random cotangent: a scalar for mean/sum, an array of the unreduced shape for none."""
    if reduction == "none":
        return rng.standard_normal(loss_shape).astype(dtype)
    return dtype(rng.standard_normal())


def compare_loss(name, x, t, grad_loss, *, config, dtype, **kwargs):
    """The scratch loss and its backward against torch.nn.functional.<name>, same cotangent."""
    ref = run_loss(name, x, t, grad_loss, **kwargs)
    loss = getattr(L, name)(x, t, **kwargs)
    if kwargs.get("reduction", "mean") != "none":
        assert isinstance(loss, np.floating) and loss.dtype == np.dtype(dtype), (type(loss), config)
    check(loss, ref["loss"], name=f"{name} loss", config=config, dtype=dtype)
    grad = getattr(L, f"{name}_backward")(grad_loss, x, t, **kwargs)
    assert grad.dtype == np.dtype(dtype) and grad.shape == np.shape(x)
    check(grad, ref["grad_input"], name=f"{name} grad_input", config=config, dtype=dtype)
    return loss, grad


# ----------------------------------------------------------------------------------------------
# strategies and example builders
# ----------------------------------------------------------------------------------------------


@st.composite
def elementwise_configs(draw, max_size: int = 5):
    """For MSE/BCE: any shape (incl. () and 0-sized), reduction, logit scale, hard or soft targets."""
    return dict(
        shape=tuple(draw(st.lists(st.integers(0, max_size), max_size=3))),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        scale=draw(st.sampled_from([1.0, 10.0, 50.0])),
        hard_targets=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def elementwise_example(name, cfg, dtype):
    """input (*), target (*) and a random loss cotangent for mse_loss / BCE-with-logits."""
    rng = np.random.default_rng(cfg["seed"])
    x = np.asarray(cfg["scale"] * rng.standard_normal(cfg["shape"]), dtype=dtype)  # 0-d stays an array
    if name == "mse_loss":
        t = cfg["scale"] * rng.standard_normal(cfg["shape"])
    elif cfg["hard_targets"]:
        t = rng.integers(0, 2, cfg["shape"])
    else:
        t = rng.uniform(0, 1, cfg["shape"])
    return x, np.asarray(t, dtype=dtype), random_grad_loss(rng, cfg["reduction"], cfg["shape"], dtype)


@st.composite
def ce_configs(draw, scales=(1.0, 50.0, 1e4)):
    """Cross-entropy: layout (C,) | (N, C) | (N, C, d1[, d2]), classes, ignore_index, reduction."""
    layout = draw(st.sampled_from(["unbatched", "batched", "spatial"]))
    n_classes = draw(st.integers(1, 6))
    return dict(
        layout=layout,
        n_classes=n_classes,
        batch=draw(st.integers(0, 5)) if layout != "unbatched" else None,
        extra=tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))) if layout == "spatial" else (),
        ignore_index=draw(st.just(-100) | st.integers(0, n_classes - 1)),
        ignored_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        scale=draw(st.sampled_from(scales)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def ce_example(cfg, dtype):
    """logits, int64 targets (some set to ignore_index) and a random loss cotangent."""
    rng = np.random.default_rng(cfg["seed"])
    c = cfg["n_classes"]
    if cfg["layout"] == "unbatched":
        logits_shape, target_shape = (c,), ()
    else:
        logits_shape = (cfg["batch"], c) + cfg["extra"]
        target_shape = (cfg["batch"],) + cfg["extra"]
    x = (cfg["scale"] * rng.standard_normal(logits_shape)).astype(dtype)
    t = np.asarray(rng.integers(0, c, target_shape), dtype=np.int64)
    t[rng.uniform(size=target_shape) < cfg["ignored_fraction"]] = cfg["ignore_index"]
    return x, t, random_grad_loss(rng, cfg["reduction"], target_shape, dtype)


# ----------------------------------------------------------------------------------------------
# against torch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mse_loss", "binary_cross_entropy_with_logits"])
@given(cfg=elementwise_configs(), dtype=st.sampled_from(DTYPES))
def test_elementwise_losses_match_torch(name, cfg, dtype):
    x, t, g = elementwise_example(name, cfg, dtype)
    compare_loss(name, x, t, g, config={**cfg, "dtype": np.dtype(dtype).name}, dtype=dtype, reduction=cfg["reduction"])


@given(cfg=ce_configs(), dtype=st.sampled_from(DTYPES))
def test_cross_entropy_matches_torch(cfg, dtype):
    x, t, g = ce_example(cfg, dtype)
    compare_loss(
        "cross_entropy",
        x,
        t,
        g,
        config={**cfg, "dtype": np.dtype(dtype).name},
        dtype=dtype,
        reduction=cfg["reduction"],
        ignore_index=cfg["ignore_index"],
    )


@st.composite
def partly_ignored_configs(draw):
    """(N, C) logits with 1..N-1 targets ignored: the "mean" denominator matters every time."""
    n_classes = draw(st.integers(2, 6))
    batch = draw(st.integers(2, 6))
    return dict(
        n_classes=n_classes,
        batch=batch,
        n_ignored=draw(st.integers(1, batch - 1)),
        ignore_index=draw(st.just(-100) | st.integers(0, n_classes - 1)),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(cfg=partly_ignored_configs())
def test_cross_entropy_ignore_index_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    n, c, ignore = cfg["batch"], cfg["n_classes"], cfg["ignore_index"]
    x = rng.standard_normal((n, c))
    kept = [k for k in range(c) if k != ignore]
    t = rng.choice(kept, size=n).astype(np.int64)
    t[rng.permutation(n)[: cfg["n_ignored"]]] = ignore
    g = random_grad_loss(rng, cfg["reduction"], (n,), np.float64)
    compare_loss(
        "cross_entropy", x, t, g, config=cfg, dtype=np.float64, reduction=cfg["reduction"], ignore_index=ignore
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("magnitude", [50.0, 1e4])
def test_large_logits_are_finite_and_match_torch(magnitude, dtype):
    """+-50 and +-1e4 logits, ties included: log-sum-exp and the stable BCE keep everything finite."""
    rng = np.random.default_rng(int(magnitude))
    x = (magnitude * rng.choice([-1.0, 1.0], size=(6, 4)) + rng.choice([0.0, 0.5], size=(6, 4))).astype(dtype)
    t = rng.integers(0, 4, 6)
    config = dict(magnitude=magnitude, dtype=np.dtype(dtype).name)
    for reduction in REDUCTIONS:
        g = random_grad_loss(rng, reduction, (6,), dtype)
        loss, grad = compare_loss(
            "cross_entropy", x, t, g, config={**config, "reduction": reduction}, dtype=dtype, reduction=reduction
        )
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        for y in (rng.integers(0, 2, x.shape).astype(dtype), rng.uniform(0, 1, x.shape).astype(dtype)):
            g = random_grad_loss(rng, reduction, x.shape, dtype)
            loss, grad = compare_loss(
                "binary_cross_entropy_with_logits",
                x,
                y,
                g,
                dtype=dtype,
                config={**config, "reduction": reduction},
                reduction=reduction,
            )
            assert np.isfinite(loss).all() and np.isfinite(grad).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_all_ignored_is_nan_for_mean_like_torch(reduction):
    """Every target ignored: mean is 0/0 = nan (torch too), sum is 0, and the gradient is all zeros."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    t = np.full(3, -100)
    g = np.ones(3) if reduction == "none" else 1.0
    loss, grad = compare_loss("cross_entropy", x, t, g, config=reduction, dtype=np.float64, reduction=reduction)
    assert np.isnan(loss) if reduction == "mean" else not np.any(loss)
    assert not grad.any()


# ----------------------------------------------------------------------------------------------
# finite differences, the second oracle
# ----------------------------------------------------------------------------------------------


def _fd_check(name, x, t, g, config, **kwargs):
    def f():
        return float(np.sum(g * getattr(L, name)(x, t, **kwargs)))

    analytic = getattr(L, f"{name}_backward")(g, x, t, **kwargs)
    assert_close(analytic, numerical_grad(f, x), name=f"{name} FD grad_input", config=config, **FD_TOLERANCE)


@pytest.mark.parametrize("name", ["mse_loss", "binary_cross_entropy_with_logits"])
@given(cfg=elementwise_configs(max_size=4))
def test_elementwise_losses_finite_differences(name, cfg):
    cfg = {**cfg, "scale": 1.0}
    x, t, g = elementwise_example(name, cfg, np.float64)
    _fd_check(name, x, t, g, cfg, reduction=cfg["reduction"])


@given(cfg=ce_configs(scales=(1.0,)))
def test_cross_entropy_finite_differences(cfg):
    x, t, g = ce_example(cfg, np.float64)
    if cfg["reduction"] == "mean" and np.all(t == cfg["ignore_index"]):
        # every target ignored: the loss is nan (no finite difference) and the gradient is zero
        grad = L.cross_entropy_backward(g, x, t, reduction="mean", ignore_index=cfg["ignore_index"])
        assert not grad.any(), f"config={cfg}"
        return
    _fd_check("cross_entropy", x, t, g, cfg, reduction=cfg["reduction"], ignore_index=cfg["ignore_index"])


# ----------------------------------------------------------------------------------------------
# the check can fail
# ----------------------------------------------------------------------------------------------


def _scaled(fn, factor):
    return lambda *args, **kwargs: fn(*args, **kwargs) * factor


@pytest.mark.parametrize("name", ["mse_loss", "cross_entropy", "binary_cross_entropy_with_logits"])
def test_broken_backward_is_caught(monkeypatch, name):
    """Scaling a loss gradient by 1.0001 turns the comparison red."""
    monkeypatch.setattr(L, f"{name}_backward", _scaled(getattr(L, f"{name}_backward"), 1.0001))
    monkeypatch.setattr(sys.modules[__name__], "WORST", {})  # keep mutants out of the error report
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    t = rng.integers(0, 3, 4) if name == "cross_entropy" else rng.uniform(0, 1, (4, 3))
    with pytest.raises(AssertionError, match=f"{name} grad_input"):
        compare_loss(name, x, t, 0.7, config="mutant", dtype=np.float64)


def test_wrong_mean_denominator_is_caught(monkeypatch):
    original = L.cross_entropy_backward

    def mutant(grad_loss, logits, target, reduction="mean", ignore_index=-100):
        return original(grad_loss, logits, target, "sum", ignore_index) / np.asarray(target).size

    monkeypatch.setattr(L, "cross_entropy_backward", mutant)
    monkeypatch.setattr(sys.modules[__name__], "WORST", {})
    x = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, -100, 2, 1])
    with pytest.raises(AssertionError, match="cross_entropy grad_input"):
        compare_loss("cross_entropy", x, t, 1.0, config="mutant", dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# classes and errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, name, kwargs",
    [
        (L.MSELoss, "mse_loss", {}),
        (L.CrossEntropyLoss, "cross_entropy", {"ignore_index": 1}),
        (L.BCEWithLogitsLoss, "binary_cross_entropy_with_logits", {}),
    ],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_classes_match_functional(cls, name, kwargs, reduction):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    t = rng.integers(0, 3, 5) if name == "cross_entropy" else rng.uniform(0, 1, (5, 3))
    module = cls(reduction=reduction, **kwargs)
    with pytest.raises(RuntimeError, match="call forward first"):
        module.backward()
    loss = module(x, t)
    assert_close(loss, getattr(L, name)(x, t, reduction=reduction, **kwargs), name=f"{cls.__name__} loss")
    if reduction == "none":
        with pytest.raises(ValueError, match="grad_loss: .*reduction='none'"):
            module.backward()
        g = rng.standard_normal(np.shape(loss))
    else:
        assert_close(
            module.backward(retain_graph=True),
            getattr(L, f"{name}_backward")(1.0, x, t, reduction=reduction, **kwargs),
            name=f"{cls.__name__} default backward",
        )
        g = 0.3
    expected = getattr(L, f"{name}_backward")(g, x.copy(), t, reduction=reduction, **kwargs)
    x[...] = 0.0  # the module cached its own copy of the inputs: mutating x changes nothing
    assert_close(module.backward(g), expected, name=f"{cls.__name__} backward")
    assert reduction in repr(module)


def test_loss_errors_name_the_argument():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"target: expected shape \(2, 3\).*got \(3, 2\)"):
        L.mse_loss(x, np.zeros((3, 2)))
    with pytest.raises(TypeError, match="input: .*int64"):
        L.mse_loss(np.zeros((2, 3), np.int64), x)
    with pytest.raises(ValueError, match=r"target: .*\[0, 3\).*got 3"):
        L.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"target: .*\[0, 3\).*got -1"):
        L.cross_entropy(x, np.array([-1, 0]))
    with pytest.raises(TypeError, match="target: .*float"):
        L.cross_entropy(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"target: expected shape \(2,\).*got \(3,\)"):
        L.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"logits: .*non-finite"):
        L.cross_entropy(np.array([[0.0, np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="logits: .*scalar"):
        L.cross_entropy(np.float64(1.0), np.array(0))
    with pytest.raises(ValueError, match="reduction: .*'avg'"):
        L.binary_cross_entropy_with_logits(x, x, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        L.CrossEntropyLoss(reduction="max")
    with pytest.raises(ValueError, match=r"grad_loss: expected shape \(2, 3\)"):
        L.mse_loss_backward(np.ones(3), x, x, reduction="none")
    with pytest.raises(ValueError, match=r"grad_loss: expected shape \(\)"):
        L.cross_entropy_backward(np.ones(2), x, np.array([0, 1]))
    with pytest.raises(TypeError, match="ignore_index"):
        L.cross_entropy(x, np.array([0, 1]), ignore_index=1.5)
