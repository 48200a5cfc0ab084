"""``rnn.hidden_grads`` (the total dL/dh_t of every layer and direction) against a torch unroll.

The oracle (reference.diagnostics.unrolled_hidden_grads) unrolls each sequence alone, one step at a
time in float64 autograd, and reads each h_t's retained ``.grad``; it never calls nn.RNN or the
scratch code. Configurations are drawn at random: layers, directions, layouts, unbatched input,
lengths, biases, h0, cotangents on the output and on h_n, dropout masks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.diagnostics import unrolled_hidden_grads
from scratch_rnn import RNN
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
    grad_output: bool
    grad_h_n: bool
    dropout: float


@st.composite
def configs(draw):
    unbatched = draw(st.booleans())
    num_layers = draw(st.integers(1, 3))
    grad_output = draw(st.booleans())
    return Config(
        seed=draw(st.integers(0, 2**31 - 1)),
        T=draw(st.integers(1, 7)),
        B=1 if unbatched else draw(st.integers(1, 4)),
        I=draw(st.integers(1, 4)),
        H=draw(st.integers(1, 5)),
        num_layers=num_layers,
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        unbatched=unbatched,
        variable_lengths=draw(st.booleans()),
        grad_output=grad_output,
        grad_h_n=draw(st.booleans()) if grad_output else True,
        dropout=draw(st.sampled_from([0.0, 0.0, 0.4])) if num_layers > 1 else 0.0,
    )


def make_case(cfg: Config):
    """Model (float64, randomised weights and biases), inputs and cotangents in the caller's layout."""
    rng = np.random.default_rng(cfg.seed)
    model = RNN(cfg.I, cfg.H, cfg.num_layers, cfg.nonlinearity, cfg.bias, cfg.batch_first, cfg.dropout,
                cfg.bidirectional, dtype=np.float64, seed=cfg.seed)
    # larger weights than torch's init, so that relu units switch and tanh saturates in places
    model.load_state_dict({k: rng.normal(0, 0.8, v.shape) for k, v in model.state_dict().items()})
    D = 2 if cfg.bidirectional else 1
    LD = cfg.num_layers * D
    if cfg.unbatched:
        x = rng.normal(size=(cfg.T, cfg.I))
        h0 = rng.normal(size=(LD, cfg.H))
        out_shape, hn_shape = (cfg.T, D * cfg.H), (LD, cfg.H)
    else:
        x = rng.normal(size=(cfg.B, cfg.T, cfg.I) if cfg.batch_first else (cfg.T, cfg.B, cfg.I))
        h0 = rng.normal(size=(LD, cfg.B, cfg.H))
        out_shape = (cfg.B, cfg.T, D * cfg.H) if cfg.batch_first else (cfg.T, cfg.B, D * cfg.H)
        hn_shape = (LD, cfg.B, cfg.H)
    lengths = rng.integers(1, cfg.T + 1, size=cfg.B) if cfg.variable_lengths else None
    if lengths is not None and cfg.unbatched:
        lengths = lengths[:1]
    go = rng.normal(size=out_shape) if cfg.grad_output else None
    ghn = rng.normal(size=hn_shape) if cfg.grad_h_n else None
    masks = None
    if cfg.dropout > 0:
        masks = [rng.random((cfg.T, cfg.B, D * cfg.H)) >= cfg.dropout for _ in range(cfg.num_layers - 1)]
    return model, x, h0, lengths, go, ghn, masks


def scratch_hidden_grads(model, x, h0, lengths, go, ghn, masks):
    model.forward(x, h0, lengths, dropout_masks=masks)
    model.backward(go, ghn)
    return model.hidden_grads


@given(cfg=configs())
def test_hidden_grads_match_torch_unroll(cfg):
    model, x, h0, lengths, go, ghn, masks = make_case(cfg)
    got = scratch_hidden_grads(model, x, h0, lengths, go, ghn, masks)
    ref = unrolled_hidden_grads(model, x, h0, lengths, go, ghn, dropout_masks=masks)
    D = 2 if cfg.bidirectional else 1
    assert got.shape == (cfg.num_layers * D, cfg.T, cfg.B, cfg.H), asdict(cfg)
    out, h_n = model.forward(x, h0, lengths, dropout_masks=masks)  # the oracle's forward, checked too
    h_n = h_n if not cfg.unbatched else h_n[:, None]
    assert_close(h_n, ref["h_n"], name="h_n (oracle sanity)", config=asdict(cfg))
    assert_close(got, ref["hidden_grads"], name="hidden_grads", config=asdict(cfg))
    if lengths is not None:  # zero at padded steps, exactly
        pad = np.arange(cfg.T)[:, None] >= np.asarray(lengths)[None, :]
        assert np.all(got[:, pad] == 0), asdict(cfg)


def test_hidden_grads_check_fails_on_a_wrong_gradient():
    """The comparison above must catch a single wrong entry (and a time-reversed layout)."""
    cfg = Config(seed=3, T=5, B=3, I=2, H=3, num_layers=2, nonlinearity="tanh", bias=True,
                 batch_first=True, bidirectional=True, unbatched=False, variable_lengths=True,
                 grad_output=True, grad_h_n=True, dropout=0.0)
    model, x, h0, lengths, go, ghn, masks = make_case(cfg)
    got = scratch_hidden_grads(model, x, h0, lengths, go, ghn, masks).copy()
    ref = unrolled_hidden_grads(model, x, h0, lengths, go, ghn)["hidden_grads"]
    assert_close(got, ref, name="hidden_grads", config=asdict(cfg))
    wrong = got.copy()
    wrong[1, 0, 0, 0] *= 1 + 1e-7
    with pytest.raises(AssertionError, match="hidden_grads"):
        assert_close(wrong, ref, name="hidden_grads", config=asdict(cfg))
    with pytest.raises(AssertionError):
        assert_close(got[:, ::-1], ref, name="hidden_grads reversed in time", config=asdict(cfg))


def test_hidden_grads_loss_on_last_step_decays_as_dh_end_dh_k():
    """A closed-form case: one layer, loss only on h_n, linear-regime tanh (tiny inputs and weights):
    dL/dh_{T-1-n} = (W_hhᵀ)ⁿ g to first order, so the norms shrink by at most λ₁ per step."""
    rng = np.random.default_rng(0)
    H, T = 4, 6
    model = RNN(1, H, dtype=np.float64, seed=0)
    w = rng.normal(size=(H, H))
    w *= 0.5 / np.linalg.norm(w, 2)
    model.load_state_dict({"weight_ih_l0": np.zeros((H, 1)), "weight_hh_l0": w,
                           "bias_ih_l0": np.zeros(H), "bias_hh_l0": np.zeros(H)})
    g = rng.normal(size=(1, 1, H))
    model.forward(np.zeros((T, 1, 1)))  # h ≡ 0: tanh'(0) = 1, the map is exactly linear
    model.backward(None, g)
    expected = np.stack([np.linalg.matrix_power(w.T, T - 1 - t) @ g[0, 0] for t in range(T)])
    assert_close(model.hidden_grads[0, :, 0], expected, name="hidden_grads (closed form)", config={})
