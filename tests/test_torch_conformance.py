"""torch conformance of the calls into RNN / LSTM / GRU (issue 19, class 7): dtypes and keyword names.

- dtypes: a lossless conversion is made implicitly (a narrower float into a float64 model: float32 ``x``, ``h0``,
  ``c0``, cotangents), as torch's autograd converts a float32 cotangent for a float64 output and its LSTM takes a
  float32 ``c0`` beside a float64 ``h0``; a lossy one (float64 into a float32 model) raises TypeError naming the
  argument. The oracle for the accepted direction is the same call with the values cast explicitly: equal bit for
  bit, and equal to torch (which refuses a float32 ``input`` into a float64 model: there this package is the
  more lenient, losing nothing).
- keyword names: torch's ``input=`` (for ``x``) and ``hx=`` (for ``h0``; the LSTM's ``hx=(h0, c0)``) are
  accepted, giving the positional call's numbers bit for bit; both names of one argument raise TypeError.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference.rnn import run_torch, torch_twin
from scratch_rnn import GRU, LSTM, RNN, Linear
from scratch_rnn.losses import mse_loss
from tests.helpers import assert_close

CELLS = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
RNG = np.random.default_rng(7)
T, B, I, H = 5, 3, 2, 4


def _arrays(cls, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2, B, H)).astype(dtype)
    hx = (h0, rng.standard_normal((2, B, H)).astype(dtype)) if cls is LSTM else h0
    g_out = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    g_fin = (
        (rng.standard_normal((2, B, H)).astype(dtype), None)
        if cls is LSTM
        else rng.standard_normal((2, B, H)).astype(dtype)
    )
    return x, hx, g_out, g_fin


def _run(model, x, hx, g_out, g_fin, **kwargs):
    model.zero_grad()
    out, fin = model(x, hx, **kwargs) if hx is not None or not kwargs else model(x, **kwargs)
    gx, gs = model.backward(g_out, g_fin)
    return [out, *_flat(fin), gx, *_flat(gs), *(v.copy() for v in model.grads.values())]


def _flat(a):
    return [v for v in a] if isinstance(a, tuple) else [a]


def _cast(a, dtype):
    if a is None:
        return None
    return tuple(_cast(v, dtype) for v in a) if isinstance(a, tuple) else a.astype(dtype)


@pytest.mark.parametrize("name", list(CELLS))
def test_float32_arrays_into_a_float64_model_are_converted_exactly(name):
    """Every float argument in float32, the model float64: the same numbers as with the float64 copies of those
    values, bit for bit, and torch's (float64 twin, same float64 values). Mutation: refuse every other dtype in
    checks.as_float_array (the old rule) -> TypeError here."""
    cls = CELLS[name]
    model = cls(I, H, bidirectional=True, dtype=np.float64, seed=0)
    x, hx, g_out, g_fin = _arrays(cls, np.float32)
    mixed = _run(model, x, hx, g_out, g_fin)
    explicit = _run(model, *(_cast(a, np.float64) for a in (x, hx, g_out, g_fin)))
    for got, want in zip(mixed, explicit):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    ref = run_torch(model, *(_cast(a, np.float64) for a in (x, hx, None, g_out, g_fin)))
    assert_close(mixed[0], ref["output"], name="output vs torch")
    assert_close(mixed[len(_flat(hx)) + 1], ref["grad_x"], name="grad_x vs torch")


def test_lstm_float32_c0_beside_float64_h0_as_torch():
    """The issue's case: torch takes it (and computes in float64); so does the LSTM, with torch's numbers."""
    model = LSTM(I, H, dtype=np.float64, seed=3)
    rng = np.random.default_rng(2)
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((1, B, H))
    c0 = rng.standard_normal((1, B, H)).astype(np.float32)
    out, (h_n, c_n) = model(x, (h0, c0))
    twin = torch.nn.LSTM(I, H, dtype=torch.float64)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    with torch.no_grad():
        t_out, (t_h, t_c) = twin(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    assert c_n.dtype == np.float64 and t_c.dtype == torch.float64
    for got, want, q in ((out, t_out, "output"), (h_n, t_h, "h_n"), (c_n, t_c, "c_n")):
        assert_close(got, want.numpy(), name=q)


@pytest.mark.parametrize("name", list(CELLS))
def test_float64_arrays_into_a_float32_model_are_refused_by_name(name):
    """The lossy direction: refused before any work, naming the argument. Mutation: accept any float dtype
    (np.can_cast(..., "same_kind")) -> the float32 model silently rounds these and runs."""
    cls = CELLS[name]
    model = cls(I, H, bidirectional=True, dtype=np.float32, seed=0)
    x, hx, g_out, g_fin = _arrays(cls, np.float32)
    x64, g_out64 = x.astype(np.float64), g_out.astype(np.float64)
    with pytest.raises(TypeError, match="input: expected dtype float32.*got float64"):
        model(x64, hx)
    bad_hx = (hx[0], hx[1].astype(np.float64)) if cls is LSTM else hx.astype(np.float64)
    with pytest.raises(TypeError, match=f"{'c0' if cls is LSTM else 'h0'}: expected dtype float32.*got float64"):
        model(x, bad_hx)
    model(x, hx)
    with pytest.raises(TypeError, match="grad_output: expected dtype float32.*got float64"):
        model.backward(g_out64, g_fin)
    bad_fin = (g_fin[0].astype(np.float64), None) if cls is LSTM else g_fin.astype(np.float64)
    with pytest.raises(TypeError, match="grad_h_n: expected dtype float32.*got float64"):
        model.backward(g_out, bad_fin)
    model.backward(g_out, g_fin)  # the refusals left the forward usable


def test_the_rule_is_the_one_validation_layer_for_every_module():
    """Linear and the losses follow the same rule (checks.as_float_array): float32 into float64 is converted,
    float64 into float32 refused; float16 into float32 is exact too."""
    lin64, lin32 = Linear(3, 2, dtype=np.float64, seed=0), Linear(3, 2, dtype=np.float32, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(lin64(x), lin64(x.astype(np.float64)))
    np.testing.assert_array_equal(lin32(x.astype(np.float16)), lin32(x.astype(np.float16).astype(np.float32)))
    with pytest.raises(TypeError, match="input: expected dtype float32"):
        lin32(x.astype(np.float64))
    p = np.ones((4, 3))
    assert mse_loss(p, np.zeros((4, 3), np.float32)) == mse_loss(p, np.zeros((4, 3)))
    with pytest.raises(TypeError, match="target: expected dtype float32"):
        mse_loss(p.astype(np.float32), np.zeros((4, 3)))


# ---------------------------------------------------------------------------------------------------------------
# torch's keyword names
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CELLS))
def test_torch_keyword_names_give_the_positional_numbers(name):
    """``model(input=x, hx=...)`` is ``model(x, h0)`` bit for bit (forward and backward), and torch's twin takes
    the very same call. Mutation: torch_alias ignores the torch name -> zeros for hx (x missing for input)."""
    cls = CELLS[name]
    model = cls(I, H, bidirectional=True, dtype=np.float64, seed=0)
    x, hx, g_out, g_fin = _arrays(cls, np.float64)
    positional = _run(model, x, hx, g_out, g_fin)
    model.zero_grad()
    out, fin = model(input=x, hx=hx)
    gx, gs = model.backward(g_out, g_fin)
    keywords = [out, *_flat(fin), gx, *_flat(gs), *(v.copy() for v in model.grads.values())]
    for got, want in zip(keywords, positional, strict=True):
        np.testing.assert_array_equal(got, want)
    if cls is not LSTM:  # this package's name, as a keyword too
        np.testing.assert_array_equal(model(x=x, h0=hx)[0], out)
    twin = torch_twin(model)
    t_hx = tuple(torch.from_numpy(a) for a in hx) if cls is LSTM else torch.from_numpy(hx)
    with torch.no_grad():
        t_out, t_fin = twin(input=torch.from_numpy(x), hx=t_hx)  # torch's call, word for word
    assert_close(out, t_out.numpy(), name="output vs torch")
    for got, want in zip(_flat(fin), _flat(t_fin), strict=True):
        assert_close(got, want.numpy(), name="final state vs torch")


@pytest.mark.parametrize("name", list(CELLS))
def test_both_names_of_one_argument_are_refused(name):
    cls = CELLS[name]
    model = cls(I, H, dtype=np.float64, seed=0)
    x = np.zeros((T, B, I))
    h0 = np.zeros((1, B, H))
    hx = (h0, h0) if cls is LSTM else h0
    with pytest.raises(TypeError, match="input and x: the same argument"):
        model(x, input=x)
    with pytest.raises(TypeError, match="x: missing"):
        model(hx=hx)
    if cls is not LSTM:
        with pytest.raises(TypeError, match="hx and h0: the same argument"):
            model(x, h0=h0, hx=h0)
        with pytest.raises(TypeError, match="hx and h0: the same argument"):
            model(x, h0, hx=h0)  # positional h0 and the keyword
        with pytest.raises(TypeError, match="hx and h0: the same argument"):
            model(x, h0=None, hx=h0)  # even a None: which one was meant is unknown
    else:
        with pytest.raises(TypeError, match="hx"):
            model(x, hx, hx=hx)  # Python's own: multiple values for hx
    with pytest.raises(RuntimeError, match="call forward first"):
        model.backward(np.zeros((T, B, H)))  # none of these ran a forward
