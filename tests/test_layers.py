"""Linear and Embedding against their torch twins (float64 and float32) and finite differences.

Hypothesis draws the related sizes of one configuration together (layer sizes, batch shape,
index range, padding row, value scale) and a seed; the arrays themselves come from that seed, so
every failure prints a ``config`` that rebuilds the exact example. Cotangents are random (never
``.sum()``), so a gradient that is wrong by a permutation or a transpose cannot hide.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference.layers import embedding_twin, linear_twin, load_torch_state, run_embedding, run_linear
from scratch_rnn.layers import Embedding, Linear
from tests.helpers import FD_TOLERANCE, WorstErrors, assert_close, numerical_grad

WORST = WorstErrors("test_layers")
check = WORST.check


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    WORST.report()


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------


@st.composite
def linear_configs(draw, max_features: int = 7, max_batch: int = 4):
    """Sizes of one Linear example: features, a batch shape (possibly empty or ()), bias, scale."""
    return dict(
        in_features=draw(st.integers(1, max_features)),
        out_features=draw(st.integers(1, max_features)),
        batch_shape=tuple(draw(st.lists(st.integers(0, max_batch), max_size=3))),  # () and 0-sized too
        bias=draw(st.booleans()),
        scale=draw(st.sampled_from([1.0, 1e-3, 1e3])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def linear_example(cfg, dtype):
    """The layer, input x (*, in) and cotangent g (*, out) of a drawn configuration."""
    rng = np.random.default_rng(cfg["seed"])
    layer = Linear(cfg["in_features"], cfg["out_features"], bias=cfg["bias"], dtype=dtype, seed=rng)
    x = (cfg["scale"] * rng.standard_normal(cfg["batch_shape"] + (cfg["in_features"],))).astype(dtype)
    g = rng.standard_normal(cfg["batch_shape"] + (cfg["out_features"],)).astype(dtype)
    return layer, x, g


@st.composite
def embedding_configs(draw, max_num: int = 9, max_dim: int = 5):
    """Sizes of one Embedding example; indices come from a few distinct values so rows repeat."""
    num = draw(st.integers(1, max_num))
    return dict(
        num_embeddings=num,
        embedding_dim=draw(st.integers(1, max_dim)),
        padding_idx=draw(st.none() | st.integers(-num, num - 1)),
        index_shape=tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))),
        distinct=draw(st.integers(1, 3)),  # how many distinct rows the indices hit: forces repeats
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def embedding_example(cfg, dtype):
    """The layer, indices (*) with repeats (and the padding row when there is one), cotangent."""
    rng = np.random.default_rng(cfg["seed"])
    layer = Embedding(cfg["num_embeddings"], cfg["embedding_dim"], cfg["padding_idx"], dtype=dtype, seed=rng)
    pool = rng.choice(cfg["num_embeddings"], size=min(cfg["distinct"], cfg["num_embeddings"]), replace=False)
    idx = np.asarray(rng.choice(pool, size=cfg["index_shape"]), dtype=np.int64)
    if layer.padding_idx is not None and idx.size:
        idx.flat[rng.integers(idx.size)] = layer.padding_idx
    g = rng.standard_normal(cfg["index_shape"] + (cfg["embedding_dim"],)).astype(dtype)
    return layer, idx, g


# ----------------------------------------------------------------------------------------------
# comparisons shared by the properties and the mutation tests
# ----------------------------------------------------------------------------------------------


def compare_linear(layer, x, g, config):
    ref = run_linear(layer, x, g)
    check(layer(x), ref["output"], name="linear output", config=config, dtype=layer.dtype)
    check(layer.backward(g), ref["grad_input"], name="linear grad_input", config=config, dtype=layer.dtype)
    assert set(layer.grads) == set(ref["grads"]) == set(layer.state_dict())
    for key, expected in ref["grads"].items():
        check(layer.grads[key], expected, name=f"linear grads[{key}]", config=config, dtype=layer.dtype)


def compare_embedding(layer, idx, g, config):
    ref = run_embedding(layer, idx, g)
    check(layer(idx), ref["output"], name="embedding output", config=config, dtype=layer.dtype)
    assert layer.backward(g) is None and ref["grad_input"] is None
    check(
        layer.grads["weight"], ref["grads"]["weight"], name="embedding grads[weight]", config=config, dtype=layer.dtype
    )


# ----------------------------------------------------------------------------------------------
# Linear
# ----------------------------------------------------------------------------------------------


@given(cfg=linear_configs(), dtype=st.sampled_from([np.float64, np.float32]))
def test_linear_matches_torch(cfg, dtype):
    layer, x, g = linear_example(cfg, dtype)
    compare_linear(layer, x, g, config={**cfg, "dtype": np.dtype(dtype).name})


@given(cfg=linear_configs(max_features=4, max_batch=3))
def test_linear_finite_differences(cfg):
    """Second oracle: central differences of <g, layer(x)> w.r.t. x, weight and bias."""
    cfg = {**cfg, "scale": 1.0}
    layer, x, g = linear_example(cfg, np.float64)
    layer(x)
    grad_x = layer.backward(g)

    def f():
        return float(np.sum(g * layer(x)))

    assert_close(grad_x, numerical_grad(f, x), name="linear FD grad_input", config=cfg, **FD_TOLERANCE)
    for key, param in layer.parameters().items():
        assert_close(
            layer.grads[key], numerical_grad(f, param), name=f"linear FD grads[{key}]", config=cfg, **FD_TOLERANCE
        )


def test_linear_gradients_accumulate_until_zero_grad():
    layer = Linear(3, 2, dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    g1, g2 = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))
    layer(x1), layer.backward(g1)
    layer(x2), layer.backward(g2)
    both = Linear(3, 2, dtype=np.float64, seed=0)
    both(np.concatenate([x1, x2]))
    both.backward(np.concatenate([g1, g2]))
    for key in layer.grads:
        assert_close(layer.grads[key], both.grads[key], name=f"accumulated grads[{key}]")
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


def test_linear_init_matches_torch_bounds_and_seed():
    layer = Linear(400, 300, seed=0)
    bound = 1 / np.sqrt(400)
    assert layer.weight.shape == (300, 400) and layer.bias.shape == (300,)
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.bias).max() <= bound
    assert abs(layer.weight.std() - bound / np.sqrt(3)) < 0.01 * bound  # U(-b, b) has std b/sqrt(3)
    torch_w = torch.nn.Linear(400, 300).weight.detach().numpy()
    assert abs(layer.weight.std() - torch_w.std()) < 0.01 * bound
    same = Linear(400, 300, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(layer.state_dict().values(), same.state_dict().values()))
    assert "bias" not in Linear(3, 2, bias=False).state_dict()


def test_linear_state_dict_round_trip_with_torch():
    module = torch.nn.Linear(5, 3, dtype=torch.float64)
    layer = Linear(5, 3, dtype=np.float64, seed=0)
    load_torch_state(layer, module)
    x = np.random.default_rng(0).standard_normal((2, 5))
    assert_close(layer(x), module(torch.from_numpy(x)).detach().numpy(), name="output after load_torch_state")
    layer.load_state_dict(module.state_dict())  # torch tensors are accepted directly too
    twin = linear_twin(layer)
    for key, value in layer.state_dict().items():
        assert np.array_equal(value, getattr(twin, key).detach().numpy())


def test_linear_parameters_are_live_and_state_dict_copies():
    layer = Linear(2, 2, dtype=np.float64, seed=0)
    state = layer.state_dict()
    state["weight"][...] = 7.0
    assert not np.any(layer.weight == 7.0)  # state_dict is a copy
    w0 = layer.weight.copy()
    layer.parameters()["weight"] -= 1.0  # an optimizer step, in place
    assert np.array_equal(layer.weight, w0 - 1.0)
    before = layer.parameters()["weight"]
    layer.load_state_dict({"weight": np.eye(2, dtype=np.float32), "bias": np.zeros(2)})
    assert layer.parameters()["weight"] is before  # loaded in place: optimizers keep their arrays
    assert layer.weight.dtype == np.float64 and np.array_equal(layer.weight, np.eye(2))
    with pytest.raises(AttributeError, match="weight"):
        layer.weight = np.zeros((2, 2))


def test_linear_load_state_dict_errors_name_the_key():
    layer = Linear(3, 2, seed=0)
    good = layer.state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['weight'\].*\(2, 3\).*\(3, 2\)"):
        layer.load_state_dict({**good, "weight": np.zeros((3, 2))})
    with pytest.raises(KeyError, match="bias"):
        layer.load_state_dict({"weight": good["weight"]})
    with pytest.raises(KeyError, match="extra"):
        layer.load_state_dict({**good, "extra": np.zeros(1)})
    with pytest.raises(TypeError, match=r"state_dict\['bias'\]"):
        layer.load_state_dict({**good, "bias": np.zeros(2, dtype=np.int64)})
    with pytest.raises(ValueError, match=r"state_dict\['bias'\].*non-finite"):
        layer.load_state_dict({**good, "bias": np.array([0.0, np.nan])})
    assert np.array_equal(layer.bias, good["bias"])  # nothing written by a rejected load


def test_linear_bad_inputs():
    layer = Linear(3, 2, seed=0)
    with pytest.raises(RuntimeError, match="call forward first"):
        layer.backward(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"input: expected shape \(4, 3\).*got \(4, 5\)"):
        layer(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"input: expected shape \(3,\)"):
        layer(np.float32(1.0))
    with pytest.raises(TypeError, match="input: .*int64"):
        layer(np.zeros((4, 3), np.int64))
    with pytest.raises(TypeError, match="input: expected dtype float32.*got float64"):
        layer(np.zeros((4, 3)))  # torch's rule: no silent cast
    with pytest.raises(ValueError, match="input: .*non-finite"):
        layer(np.array([[0.0, np.inf, 0.0]], np.float32))
    layer(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(4, 2\).*got \(4, 3\)"):
        layer.backward(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="dtype"):
        Linear(2, 2, dtype=np.int32)


def _scaled_backward(original, factor):
    def backward(self, grad_y):
        grad_x = original(self, grad_y)
        for g in self.grads.values():
            g *= factor
        return grad_x * factor

    return backward


def _transposed_backward(self, grad_y):
    """A classic bug: grad_x = grad_y @ W.T and grads['weight'] = x.T @ g (square layers only)."""
    x = self._cache.reshape(-1, self.in_features)
    g = grad_y.reshape(-1, self.out_features)
    self.grads["weight"] += x.T @ g
    if self.has_bias:
        self.grads["bias"] += g.sum(axis=0)
    return grad_y @ self.weight.T


@pytest.mark.parametrize("mutant", ["scaled", "transposed"])
def test_linear_broken_backward_is_caught(monkeypatch, mutant):
    """The comparison can fail: a gradient off by 1e-4 relative, or a swapped transpose, goes red."""
    replacement = _scaled_backward(Linear.backward, 1.0001) if mutant == "scaled" else _transposed_backward
    monkeypatch.setattr(Linear, "backward", replacement)
    monkeypatch.setattr(sys.modules[__name__], "WORST", {})  # keep mutants out of the error report
    cfg = dict(in_features=4, out_features=4, batch_shape=(3,), bias=True, scale=1.0, seed=5)
    layer, x, g = linear_example(cfg, np.float64)
    with pytest.raises(AssertionError, match="linear grad"):
        compare_linear(layer, x, g, config=cfg)


# ----------------------------------------------------------------------------------------------
# Embedding
# ----------------------------------------------------------------------------------------------


@given(cfg=embedding_configs(), dtype=st.sampled_from([np.float64, np.float32]))
def test_embedding_matches_torch(cfg, dtype):
    layer, idx, g = embedding_example(cfg, dtype)
    compare_embedding(layer, idx, g, config={**cfg, "dtype": np.dtype(dtype).name})


@given(cfg=embedding_configs(max_num=5, max_dim=3))
def test_embedding_finite_differences(cfg):
    """Second oracle on every row but the padding one, which by design gets no gradient."""
    layer, idx, g = embedding_example(cfg, np.float64)
    layer(idx)
    layer.backward(g)
    weight = layer.parameters()["weight"]
    numeric = numerical_grad(lambda: float(np.sum(g * layer(idx))), weight)
    if layer.padding_idx is not None:
        assert not layer.grads["weight"][layer.padding_idx].any(), f"padding row got gradient; config={cfg}"
        numeric[layer.padding_idx] = 0.0
    assert_close(layer.grads["weight"], numeric, name="embedding FD grads[weight]", config=cfg, **FD_TOLERANCE)


def test_embedding_init_and_padding():
    layer = Embedding(500, 40, padding_idx=-1, seed=0)
    assert layer.padding_idx == 499 and not layer.weight[499].any()
    w = layer.weight[:499]
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1.0) < 0.02  # N(0, 1) as torch
    assert embedding_twin(layer).padding_idx == 499
    module = torch.nn.Embedding(6, 3, padding_idx=2, dtype=torch.float64)
    loaded = Embedding(6, 3, padding_idx=2, dtype=np.float64, seed=0)
    load_torch_state(loaded, module)
    assert np.array_equal(loaded.weight, module.weight.detach().numpy())


def _overwriting_backward(self, grad_y):
    """A classic bug: fancy-index += drops repeated indices instead of adding them up."""
    idx = self._cache.reshape(-1)
    self.grads["weight"][idx] += grad_y.reshape(-1, self.embedding_dim)


def _padding_leaking_backward(self, grad_y):
    """A subtler bug: the padding row receives gradient."""
    np.add.at(self.grads["weight"], self._cache.reshape(-1), grad_y.reshape(-1, self.embedding_dim))


@pytest.mark.parametrize("mutant", [_overwriting_backward, _padding_leaking_backward])
def test_embedding_broken_backward_is_caught(monkeypatch, mutant):
    monkeypatch.setattr(Embedding, "backward", mutant)
    monkeypatch.setattr(sys.modules[__name__], "WORST", {})
    layer = Embedding(5, 3, padding_idx=0, dtype=np.float64, seed=0)
    idx = np.array([[1, 1, 0], [3, 1, 0]])
    g = np.random.default_rng(0).standard_normal((2, 3, 3))
    with pytest.raises(AssertionError, match="embedding grads"):
        compare_embedding(layer, idx, g, config="mutant")


def test_embedding_bad_inputs():
    layer = Embedding(4, 2, seed=0)
    with pytest.raises(RuntimeError, match="call forward first"):
        layer.backward(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"indices: .*\[0, 4\).*got 4"):
        layer(np.array([[0, 4], [1, 2]]))
    with pytest.raises(ValueError, match=r"indices: .*\[0, 4\).*got -1"):
        layer(np.array([-1]))
    with pytest.raises(TypeError, match="indices: .*float"):
        layer(np.array([0.0, 1.0]))
    layer(np.array([[0, 1, 1]]))
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(1, 3, 2\)"):
        layer.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"padding_idx: .*\[-4, 4\).*got 4"):
        Embedding(4, 2, padding_idx=4)
    with pytest.raises(TypeError, match="padding_idx"):
        Embedding(4, 2, padding_idx=1.0)
