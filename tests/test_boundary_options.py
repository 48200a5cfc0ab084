"""Options at the edge of their range, against torch: ``dropout=1.0`` and what ``last_forward`` records.

- torch accepts ``dropout=1.0`` (every activation between layers dropped, no 1/(1-p) blow-up): the scratch
  models in training mode must give torch's output and gradients in training mode, where the inter-layer
  input is exactly zero, and a ``SequenceModel`` must accept it.
- ``last_forward.lengths`` is what Pascanu's Ω guards on when it reads the RNN's own input (x=None):
  recorded in the caller's order for unequal lengths, None when every sequence is full-length (then Ω is
  the Ω of the same forward without lengths).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference.rnn import torch_twin
from scratch_rnn import GRU, LSTM, RNN
from scratch_rnn.cells import cell_names, cell_spec
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.regularizers import pascanu_omega
from tests.helpers import assert_close


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU], ids=["rnn", "lstm", "gru"])
def test_dropout_one_matches_torch_in_training_mode(cls):
    T, B, I, H = 5, 3, 2, 4
    model = cls(I, H, num_layers=3, dropout=1.0, bidirectional=True, dtype=np.float64, seed=1)
    model.train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    go = rng.standard_normal((T, B, 2 * H))
    out, _ = model(x)
    grad_x, _ = model.backward(go)
    twin = torch_twin(model)
    twin.train()  # torch's own dropout at p = 1: deterministic zeros, no 1/(1 - p)
    xt = torch.tensor(x, requires_grad=True)
    tout, _ = twin(xt)
    (tout * torch.from_numpy(go)).sum().backward()
    assert_close(out, tout.detach().numpy(), name="output", config=dict(cell=cls.__name__))
    assert_close(grad_x, np.zeros_like(x), name="grad_x", config=dict(cell=cls.__name__))  # nothing reaches x
    assert np.all(np.isfinite(out))
    for name, p in twin.named_parameters():
        ref = p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape))
        assert_close(model.grads[name], ref, name=f"grad {name}", config=dict(cell=cls.__name__))
    assert not model.grads["weight_ih_l0"].any() and model.grads["weight_ih_l2"].shape  # layer 0 gets nothing


def test_dropout_one_with_given_keep_masks_still_drops_everything():
    """Keep-masks of ones at p = 1 (the twin's scale 0): the next layer's input is zero, as in torch."""
    T, B, H = 4, 2, 3
    model = GRU(2, H, num_layers=2, dropout=1.0, dtype=np.float64, seed=2)
    model.train()
    x = np.random.default_rng(1).standard_normal((T, B, 2))
    ones = [np.ones((T, B, H), dtype=bool)]
    out, _ = model(x, dropout_masks=ones)
    model.eval()
    top = GRU(H, H, dtype=np.float64)
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in model.state_dict().items() if k.endswith("_l1")})
    expected, _ = top(np.zeros((T, B, H)))  # the top layer on an all-zero input
    assert_close(out, expected, name="output of the top layer")


def test_a_sequence_model_accepts_dropout_one():
    cfg = ModelConfig(
        hidden_size=3, out_features=2, vocab_size=5, embedding_dim=2, num_layers=2, dropout=1.0, dtype="float64"
    )
    model = SequenceModel(cfg)
    out = model.forward_backward(np.array([[1, 2, 3], [4, 1, 2]]), np.array([0, 1]))
    assert np.isfinite(out.loss)


def test_last_forward_lengths_is_what_the_omega_guard_reads():
    X = np.random.default_rng(3).standard_normal((4, 3, 2))
    rnn = RNN(2, 3, dtype=np.float64, seed=0)
    rnn(X, lengths=[2, 4, 3])
    assert rnn.last_forward.lengths.tolist() == [2, 4, 3]  # the caller's order
    rnn.backward(np.ones((4, 3, 3)))
    with pytest.raises(ValueError, match="lengths: pascanu_omega supports full-length batches only"):
        pascanu_omega(rnn)  # x=None: the guard reads last_forward.lengths
    with pytest.raises(ValueError, match="lengths: pascanu_omega supports full-length batches only"):
        pascanu_omega(rnn, X)
    full = RNN(2, 3, dtype=np.float64, seed=0)
    full(X, lengths=[4, 4, 4])  # every sequence full-length: no lengths recorded, Ω defined
    assert full.last_forward.lengths is None
    full.backward(np.ones((4, 3, 3)))
    plain = RNN(2, 3, dtype=np.float64, seed=0)
    plain(X)
    plain.backward(np.ones((4, 3, 3)))
    value, grads = pascanu_omega(full)
    ref_value, ref_grads = pascanu_omega(plain)
    assert value == ref_value and all(np.array_equal(grads[k], ref_grads[k]) for k in grads)


# ------------------------------------------------------------------------------------------------
# Cotangents at padded steps: ignored, as torch ignores them (pad_packed_sequence discards them)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", cell_names())
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_cotangents_at_padded_steps_change_no_gradient(cell, bidirectional):
    """A backward with random cotangents at the padded steps gives the gradients of one with zeros there, bit for
    bit, for every registered cell: what a padded step's output receives cannot leak into the sequence (torch's
    packed sequences discard it too). SequenceModel relies on it for per-step tasks, so this is the oracle that
    masking there is not needed; the unmasked torch twin in test_rnn_torch agrees on valid steps."""
    T, B, I, H = 6, 4, 3, 5
    lengths = np.array([6, 2, 4, 1])  # unsorted, one full-length
    rng = np.random.default_rng(11)
    model = cell_spec(cell).model_class()(I, H, num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=3)
    x = rng.standard_normal((T, B, I))
    g = rng.standard_normal((T, B, (2 if bidirectional else 1) * model.output_size))
    padded = np.arange(T)[:, None] >= lengths[None, :]
    assert padded.any() and not padded.all()
    g_zero = g.copy()
    g_zero[padded] = 0.0
    results = []
    for cot in (g, g_zero):
        model.zero_grad()
        model.forward(x, None, lengths)
        grad_x, _ = model.backward(cot)
        results.append(({k: v.copy() for k, v in model.grads.items()}, grad_x))
    (grads_a, gx_a), (grads_b, gx_b) = results
    assert np.abs(g[padded]).min() > 0  # the cotangents there really differ
    for k in grads_a:
        np.testing.assert_array_equal(grads_a[k], grads_b[k], err_msg=f"{cell}: grad {k}")
    np.testing.assert_array_equal(gx_a, gx_b, err_msg=f"{cell}: grad_x")
    assert np.all(gx_a[padded] == 0)  # and nothing flows back to the padded inputs
