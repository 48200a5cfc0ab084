"""Bad input gets a clear error naming the argument, the expected and the received value."""

from __future__ import annotations

import numpy as np
import pytest

from scratch_rnn import RNN


@pytest.fixture
def model():
    return RNN(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)


X = np.zeros((5, 2, 3))


@pytest.mark.parametrize(
    "x, exc, words",
    [
        (np.zeros((5, 2, 3, 1)), ValueError, ["input", "4-D", "(5, 2, 3, 1)"]),
        (np.zeros(5), ValueError, ["input", "1-D"]),
        (np.zeros((5, 2, 7)), ValueError, ["input", "input_size=3", "(5, 2, 7)"]),
        (np.zeros((0, 2, 3)), ValueError, ["input", "at least one time step"]),
        (np.zeros((5, 2, 3), dtype=np.int64), TypeError, ["input", "int64"]),
        (np.zeros((5, 2, 3), dtype=object), TypeError, ["input", "object"]),
        (np.zeros((5, 2, 3), dtype=bool), TypeError, ["input", "bool"]),
        (np.full((5, 2, 3), np.nan), ValueError, ["input", "non-finite"]),
        (np.full((5, 2, 3), np.inf), ValueError, ["input", "non-finite"]),
    ],
)
def test_bad_input(model, x, exc, words):
    with pytest.raises(exc) as err:
        model(x)
    for w in words:
        assert w in str(err.value), f"{w!r} missing from: {err.value}"


@pytest.mark.parametrize(
    "h0, words",
    [
        (np.zeros((4, 3, 4)), ["h0", "(4, 2, 4)", "(4, 3, 4)"]),  # batch mismatch
        (np.zeros((2, 2, 4)), ["h0", "(4, 2, 4)", "(2, 2, 4)"]),  # layers*directions mismatch
        (np.zeros((4, 2, 5)), ["h0", "(4, 2, 4)", "(4, 2, 5)"]),  # hidden size
        (np.zeros((4, 4)), ["h0", "(4, 2, 4)", "(4, 4)"]),  # unbatched h0 with batched input
        (np.zeros((1, 2, 4)), ["h0", "(4, 2, 4)"]),  # would broadcast: must not
    ],
)
def test_mismatched_h0(model, h0, words):
    with pytest.raises(ValueError) as err:
        model(X, h0)
    for w in words:
        assert w in str(err.value), f"{w!r} missing from: {err.value}"


def test_h0_of_wrong_dtype_and_nan(model):
    with pytest.raises(TypeError, match="h0.*int"):
        model(X, np.zeros((4, 2, 4), dtype=np.int32))
    h0 = np.zeros((4, 2, 4))
    h0[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match=r"h0.*non-finite.*\(1, 0, 2\)"):
        model(X, h0)


def test_unbatched_h0_shape(model):
    with pytest.raises(ValueError, match=r"h0.*\(4, 4\).*unbatched.*\(4, 1, 4\)"):
        model(np.zeros((5, 3)), np.zeros((4, 1, 4)))


@pytest.mark.parametrize(
    "lengths, exc, words",
    [
        ([5, 6], ValueError, ["lengths", "1..5", "[6]"]),
        ([0, 3], ValueError, ["lengths", "1..5", "[0]"]),
        ([-1, 3], ValueError, ["lengths", "[-1]"]),
        ([5, 3, 2], ValueError, ["lengths", "(2,)", "(3,)"]),
        ([5], ValueError, ["lengths", "(2,)", "(1,)"]),
        ([5.0, 3.0], TypeError, ["lengths", "float64"]),
        ([[5, 3]], ValueError, ["lengths", "(2,)", "(1, 2)"]),
    ],
)
def test_bad_lengths(model, lengths, exc, words):
    with pytest.raises(exc) as err:
        model(X, lengths=lengths)
    for w in words:
        assert w in str(err.value), f"{w!r} missing from: {err.value}"


def test_bad_cotangents(model):
    model(X)
    with pytest.raises(ValueError, match=r"grad_output.*\(5, 2, 8\).*\(5, 2, 4\)"):
        model.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match=r"grad_h_n.*\(4, 2, 4\).*\(1, 2, 4\)"):
        model.backward(np.zeros((5, 2, 8)), np.zeros((1, 2, 4)))
    with pytest.raises(TypeError, match="grad_output.*int"):
        model.backward(np.zeros((5, 2, 8), dtype=int))
    g = np.zeros((5, 2, 8))
    g[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="grad_output.*non-finite"):
        model.backward(g)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="forward first"):
        RNN(2, 3).backward(np.zeros((1, 1, 3)))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(input_size=0), ["input_size", "positive integer", "0"]),
        (dict(hidden_size=2.5), ["hidden_size", "2.5"]),
        (dict(num_layers=0), ["num_layers"]),
        (dict(nonlinearity="sigmoid"), ["nonlinearity", "'tanh', 'relu'", "sigmoid"]),
        (dict(dropout=1.5), ["dropout", "[0, 1]", "1.5"]),
        (dict(dtype=np.int32), ["dtype", "float32", "int32"]),
        (dict(dtype=np.float16), ["dtype", "float16"]),
    ],
)
def test_bad_constructor_arguments(kwargs, words):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as err:
        RNN(**args)
    for w in words:
        assert w in str(err.value), f"{w!r} missing from: {err.value}"


def test_load_state_dict_errors_name_the_key_and_write_nothing(model):
    before = model.state_dict()
    sd = model.state_dict()
    sd["weight_hh_l1_reverse"] = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"weight_hh_l1_reverse.*\(4, 4\).*\(4, 5\)"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["weight_ih_l0"] = np.ones((4, 3))
    del sd["bias_hh_l1"]
    with pytest.raises(KeyError, match="bias_hh_l1"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["bogus"] = np.zeros(3)
    with pytest.raises(KeyError, match="bogus"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["weight_ih_l0"] = np.ones((4, 3))  # valid, but another entry is bad: nothing may be written
    sd["bias_ih_l0"] = np.full(4, np.nan)
    with pytest.raises(ValueError, match="bias_ih_l0.*non-finite"):
        model.load_state_dict(sd)
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=f"{k} was changed by a failed load")


def test_injected_dropout_masks_are_checked():
    m = RNN(3, 4, num_layers=3, dropout=0.5, dtype=np.float64)
    with pytest.raises(ValueError, match="dropout_masks.*2 masks.*got 1"):
        m(X, dropout_masks=[np.ones((5, 2, 4))])
    with pytest.raises(ValueError, match=r"dropout_masks\[1\].*\(5, 2, 4\).*\(5, 2, 8\)"):
        m(X, dropout_masks=[np.ones((5, 2, 4)), np.ones((5, 2, 8))])
