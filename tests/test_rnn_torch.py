"""scratch_rnn.RNN / LSTM / GRU against torch.nn.RNN / LSTM / GRU, in float64, over randomly drawn configurations.

The strategy draws the cell with its options (one strategy, not three copies of the tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.rnn import load_torch_state, run_torch, torch_twin
from scratch_rnn import GRU, LSTM, RNN
from tests.helpers import assert_close, examples
from tests.strategies import rnn_cases

QUANTITIES = ("output", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0")


def _pair(a):
    return a if isinstance(a, tuple) else (a, None)


def run_scratch(model, x, hx, lengths, g_out, g_fin, dropout_masks=None):
    """Forward and backward; results keyed as reference.rnn.run_torch keys them (c_n/grad_c0: LSTM only)."""
    out, fin = model.forward(x, hx, lengths, dropout_masks=dropout_masks)
    model.zero_grad()
    grad_x, grad_s = model.backward(g_out, g_fin)
    (h_n, c_n), (grad_h0, grad_c0) = _pair(fin), _pair(grad_s)
    res = dict(output=out, h_n=h_n, grad_x=grad_x, grad_h0=grad_h0, grads={k: v.copy() for k, v in model.grads.items()})
    if c_n is not None:
        res.update(c_n=c_n, grad_c0=grad_c0)
    return res


def _cast(a, dtype):
    if a is None:
        return None
    return tuple(None if v is None else v.astype(dtype) for v in a) if isinstance(a, tuple) else a.astype(dtype)


def compare(mine, ref, config, dtype=np.float64):
    for q in QUANTITIES:
        if q in ref:
            assert_close(mine[q], ref[q], name=q, config=config, dtype=dtype)
    assert set(mine["grads"]) == set(ref["grads"]), config
    for k in ref["grads"]:
        assert_close(mine["grads"][k], ref["grads"][k], name=f"grad of {k}", config=config, dtype=dtype)


@given(rnn_cases())
def test_matches_torch_float64(case):
    model = case.model(np.float64)
    x, h0, lengths, g_out, g_hn = case.arrays(model)
    mine = run_scratch(model, x, h0, lengths, g_out, g_hn)
    ref = run_torch(model, x, h0, lengths, g_out, g_hn)
    compare(mine, ref, case)


@given(rnn_cases())
def test_matches_torch_float32(case):
    """The float32 path against the same float64 oracle, with the float32 row of the table."""
    model = case.model(np.float32)
    x, h0, lengths, g_out, g_hn = (_cast(a, np.float32) if i != 2 else a for i, a in enumerate(case.arrays(model)))
    mine = run_scratch(model, x, h0, lengths, g_out, g_hn)
    for k, v in mine.items():
        if k != "grads":
            assert v.dtype == np.float32, f"{k} is {v.dtype}, expected float32; config={case}"
    ref = run_torch(model, x, h0, lengths, g_out, g_hn)
    compare(mine, ref, case, dtype=np.float32)


@given(rnn_cases(dropout=True, allow_unbatched=False), st.booleans())
def test_dropout_with_shared_masks_matches_torch(case, inject):
    """Inter-layer dropout: the scratch model's masks (drawn or injected) applied in torch too."""
    model = case.model(np.float64).train()
    x, h0, lengths, g_out, g_hn = case.arrays(model)
    masks = case.dropout_masks() if inject else None
    mine = run_scratch(model, x, h0, lengths, g_out, g_hn, dropout_masks=masks)
    used = model.dropout_masks
    if case.num_layers > 1 and case.dropout > 0:
        assert used is not None and len(used) == case.num_layers - 1
        if masks is not None:
            for a, b in zip(used, masks):
                np.testing.assert_array_equal(a != 0, b)
    ref = run_torch(model, x, h0, lengths, g_out, g_hn, dropout_masks=used)
    compare(mine, ref, case)


@given(rnn_cases(allow_unbatched=False))
@settings(max_examples=examples(15, 60))
def test_layerwise_oracle_equals_whole_nn_rnn(case):
    """The unrolled twin used for dropout is itself checked against nn.RNN run whole (all-ones masks)."""
    model = case.model(np.float64).eval()
    x, h0, lengths, g_out, g_hn = case.arrays(model)
    D = 2 if case.bidirectional else 1
    ones = [np.ones((case.steps, case.batch, D * case.out_size))] * (case.num_layers - 1)
    model.train()
    model.dropout = 0.0  # scale 1: the layerwise unroll with ones must equal the whole module
    whole = run_torch(model.eval(), x, h0, lengths, g_out, g_hn)
    layerwise = run_torch(model.train(), x, h0, lengths, g_out, g_hn, dropout_masks=ones)
    compare(layerwise, whole, case)


def test_eval_mode_disables_dropout():
    model = RNN(3, 4, num_layers=3, dropout=0.5, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    model.eval()
    out_eval, _ = model(x)
    assert model.dropout_masks is None
    no_drop = RNN(3, 4, num_layers=3, dtype=np.float64, seed=0)
    assert_close(out_eval, no_drop(x)[0], name="eval output")
    model.train()
    out_train, _ = model(x)
    assert not np.allclose(out_train, out_eval), "train mode should apply dropout"


def test_dropout_on_single_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers=1"):
        RNN(2, 3, dropout=0.3)


@pytest.mark.parametrize("cls, torch_cls", [(RNN, torch.nn.RNN), (LSTM, torch.nn.LSTM), (GRU, torch.nn.GRU)])
def test_state_dict_names_and_shapes_equal_torch(cls, torch_cls):
    options = [dict(), dict(num_layers=3, bidirectional=True), dict(bias=False, num_layers=2)]
    if cls is LSTM:
        options += [dict(proj_size=3, num_layers=2, bidirectional=True), dict(proj_size=1, bias=False)]
    for kw in options:
        model = cls(5, 7, **kw, dtype=np.float64, seed=0)
        twin = torch_cls(5, 7, **kw)
        mine = model.state_dict()
        theirs = twin.state_dict()
        assert list(mine) == list(theirs), kw
        for k in theirs:
            assert mine[k].shape == tuple(theirs[k].shape), (k, kw)


def test_torch_state_loads_into_scratch_model():
    torch.manual_seed(0)
    twin = torch.nn.RNN(4, 6, num_layers=2, bidirectional=True, dtype=torch.float64)
    model = RNN(4, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    load_torch_state(model, twin)
    x = np.random.default_rng(1).standard_normal((5, 3, 4))
    out, h_n = model(x)
    t_out, t_hn = twin(torch.from_numpy(x))
    assert_close(out, t_out.detach().numpy(), name="output after loading a torch state_dict")
    assert_close(h_n, t_hn.detach().numpy(), name="h_n after loading a torch state_dict")


def test_twin_copies_weights_exactly():
    model = RNN(3, 4, num_layers=2, dtype=np.float64, seed=3)
    twin = torch_twin(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(getattr(twin, k).detach().numpy(), v)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_initialization_matches_torch_distribution_and_is_seeded(cls):
    H = 64
    a = cls(8, H, num_layers=2, seed=42).state_dict()
    b = cls(8, H, num_layers=2, seed=42).state_dict()
    c = cls(8, H, num_layers=2, seed=43).state_dict()
    bound = 1 / np.sqrt(H)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k]), k
        assert np.all(np.abs(a[k]) <= bound), k
        assert a[k].dtype == np.float32
    w = a["weight_hh_l0"].astype(np.float64).ravel()  # U(-k, k): mean 0, variance k²/3
    assert abs(w.mean()) < 4 * bound / np.sqrt(3 * w.size)
    assert abs(w.var() / (bound**2 / 3) - 1) < 0.05


def test_grads_accumulate_across_backward_calls_like_torch():
    model = RNN(3, 4, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x, g1, g2 = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4)), rng.standard_normal((5, 2, 4))
    model(x)
    model.backward(g1)
    first = {k: v.copy() for k, v in model.grads.items()}
    model(x)
    model.backward(g2)
    model2 = RNN(3, 4, dtype=np.float64, seed=0)
    model2(x)
    model2.backward(g1 + g2)
    for k in first:
        assert_close(model.grads[k], model2.grads[k], name=f"accumulated grad {k}")
    model.zero_grad()
    assert all(not v.any() for v in model.grads.values())
