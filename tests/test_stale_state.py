"""Nothing a backward or a diagnostic reads changes unnoticed between the forward and that read (issue 19, class 1).

The one rule (docs/model.md, *What a later read sees*):

- a backward refuses (RuntimeError naming the parameter) when a parameter it reads was changed in place since its
  forward: an optimizer step, ``load_state_dict``, ``reset_parameters`` or ``W[...] = ...`` (torch's version
  counter; here a copy the forward keeps, because a write through NumPy bumps no counter);
- an RNN's per-pass results (``states``, ``last_forward``, ``dropout_masks``, ``hidden_grads``, ``cell_grads``)
  belong to one forward and, once it has run, that forward's backward: a forward drops the previous backward's,
  ``release_buffers()`` drops them all, a forward that raised midway leaves none; so ``pascanu_omega`` reads one
  consistent pair or refuses.

Each test below was seen red with its fix removed (the mutation is named in its docstring).
"""

from __future__ import annotations

import numpy as np
import pytest

from scratch_rnn import GRU, LSTM, RNN, Linear
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.optim import SGD, Adam
from scratch_rnn.regularizers import pascanu_omega

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 3, 2))  # (T, B, I)


CELLS = {
    "RNN": lambda: RNN(2, 4, dtype=np.float64, seed=1),
    "LSTM": lambda: LSTM(2, 4, proj_size=3, dtype=np.float64, seed=2),
    "GRU": lambda: GRU(2, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=3),
}


def _cotangent(out):
    return np.random.default_rng(5).standard_normal(out[0].shape)


def _fresh_grads(model, x):
    """The grads of one forward+backward with the parameters as they are now (the oracle)."""
    model.zero_grad()
    out = model(x)
    model.backward(_cotangent(out))
    grads = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict", "W[...] =", "reset_parameters"])
def test_a_parameter_changed_between_forward_and_backward_is_refused(cell, change):
    """Mutation: Module._check_unchanged a no-op -> the backward runs, mixing the old states with the new weights
    (a gradient of neither set of weights: next test)."""
    model = CELLS[cell]()
    out = model(X)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    if change == "optimizer step":
        SGD(model.parameters(), lr=0.1).step({k: np.ones_like(v) for k, v in model.parameters().items()})
    elif change == "load_state_dict":
        model.load_state_dict({k: v * 1.5 for k, v in before.items()})
    elif change == "W[...] =":
        model.weight_hh_l0[...] = 0.25
    else:
        model.reset_parameters()
    with pytest.raises(RuntimeError, match=r"\[.*'weight_hh_l0'.*\] were modified in place after the forward"):
        model.backward(_cotangent(out))
    assert not any(g.any() for g in model.grads.values())  # refused before any work
    # a forward with the new parameters is differentiated normally
    model.zero_grad()
    out = model(X)
    model.backward(_cotangent(out))
    assert all(np.isfinite(g).all() for g in model.grads.values())


def test_what_the_refusal_prevents_is_a_wrong_gradient():
    """Without the check the backward runs and returns a gradient that is neither the old nor the new one."""
    rnn = RNN(2, 4, dtype=np.float64, seed=1)
    old = _fresh_grads(rnn, X)
    out = rnn(X)
    rnn.weight_hh_l0[...] *= 2
    fresh = RNN(2, 4, dtype=np.float64)
    fresh.load_state_dict(rnn.state_dict())
    new = _fresh_grads(fresh, X)
    rnn._check_unchanged = lambda snapshot, reader: None  # the check removed, for this instance only
    rnn.zero_grad()
    rnn.backward(_cotangent(out))
    mixed = rnn.grads["weight_ih_l0"]
    assert not np.allclose(mixed, old["weight_ih_l0"]) and not np.allclose(mixed, new["weight_ih_l0"])


def test_an_unchanged_or_identically_rewritten_parameter_is_accepted():
    """load_state_dict of the very values the forward saw changes nothing the backward reads: accepted, and the
    grads are the forward's own (bit for bit)."""
    lstm = LSTM(2, 4, dtype=np.float64, seed=2)
    expected = _fresh_grads(lstm, X)
    out = lstm(X)
    lstm.load_state_dict(lstm.state_dict())
    lstm.bias_ih_l0[...] += 1.0  # a bias: backward reads the forward's gates, never the bias
    lstm.backward(_cotangent(out))
    for k, v in expected.items():
        np.testing.assert_array_equal(lstm.grads[k], v, err_msg=k)


def test_retain_graph_is_checked_at_every_backward():
    """retain_graph keeps the forward; an Adam step between two backwards through it is refused (as torch)."""
    gru = GRU(2, 4, dtype=np.float64, seed=3)
    once = _fresh_grads(gru, X)
    out = gru(X)
    gru.backward(_cotangent(out), retain_graph=True)
    opt = Adam(gru.parameters(), lr=1e-3)
    kept = gru.state_dict()
    opt.step(gru.grads)
    with pytest.raises(RuntimeError, match="weight_ih_l0.*modified in place"):
        gru.backward(_cotangent(out))
    gru.load_state_dict(kept)  # back to what the forward saw: the retained forward is usable again
    gru.backward(_cotangent(out))
    for k, v in once.items():
        np.testing.assert_allclose(gru.grads[k], 2 * v, rtol=1e-12, atol=0, err_msg=k)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_sequence_model_checks_its_children(cell):
    """The composite's forward keeps what its children's backwards read; a child's forward in between (which
    copies the changed weight afresh for itself) does not hide the change from the parent's backward.
    Mutation: snapshot only the module's own parameters (no children) -> the head's change passes."""
    cfg = ModelConfig(hidden_size=4, out_features=2, vocab_size=9, embedding_dim=3, cell=cell, dtype="float64", seed=3)
    model = SequenceModel(cfg).eval()
    x = np.array([[1, 2, 3], [4, 5, 6]])
    out, _ = model(x)
    model.head.weight[0, 0] += 1.0
    model.head(np.zeros((2, 4)))
    with pytest.raises(RuntimeError, match=r"SequenceModel.backward.*\['head.weight'\]"):
        model.backward(np.ones_like(out))
    model.zero_grad()
    out, _ = model(x)
    model.embedding.weight[...] += 1.0  # the embedding's backward never reads its table
    model.backward(np.ones_like(out))
    # the child can be asked too (a diagnostic on model.rnn after model.forward_backward)
    model.forward_backward(x, np.array([0, 1]))
    model.rnn.check_parameters_unchanged()
    model.rnn.weight_hh_l0[0, 0] += 1e-9
    with pytest.raises(RuntimeError, match=r"diag: the parameter\(s\) \['weight_hh_l0'\]"):
        model.rnn.check_parameters_unchanged("diag")


def test_linear_weight_but_not_its_bias():
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    y = lin(np.ones((4, 3)))
    lin.bias[...] = 7.0
    lin.backward(np.ones_like(y), retain_graph=True)
    lin.weight[1, 2] = 0.0
    with pytest.raises(RuntimeError, match=r"Linear.backward: the parameter\(s\) \['weight'\]"):
        lin.backward(np.ones_like(y))


# ---------------------------------------------------------------------------------------------------------------
# The RNN's per-pass results, and pascanu_omega
# ---------------------------------------------------------------------------------------------------------------
def test_omega_after_another_forward_of_the_same_shape_is_refused():
    """The issue's case: a second forward of the same shape overwrote the states, Ω paired them with the first
    backward's δ and returned a number. Mutation: _drop_pass keeps hidden_grads -> Ω returns that mixed value
    (it differs from Ω of either consistent pair, checked below)."""
    rnn = RNN(2, 4, dtype=np.float64, seed=1)
    x2 = X + 0.5
    g = np.random.default_rng(2).standard_normal((6, 3, 4))
    rnn(x2)
    rnn.backward(g)
    second = pascanu_omega(rnn, form="code")[0]
    rnn(X)
    rnn.backward(g)
    first = pascanu_omega(rnn, form="code")[0]
    rnn(x2)  # no backward: the states are x2's, hidden_grads would still be X's
    for args in ((rnn,), (rnn, x2)):
        with pytest.raises(RuntimeError, match="the last forward has not been differentiated"):
            pascanu_omega(*args, form="code")
    assert rnn.hidden_grads is None
    rnn.backward(g)
    assert pascanu_omega(rnn, form="code")[0] == second != first


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_a_forward_drops_the_previous_backward_and_release_buffers_drops_everything(cls):
    """Mutation: release_buffers without cell_grads (the issue's finding) -> the LSTM's cell_grads survives."""
    m = cls(2, 4, num_layers=2, dropout=0.5, dtype=np.float64, seed=4)
    out = m(X)
    m.backward(_cotangent(out))
    held = m.hidden_grads  # an array handed out stays as it was (a backward makes a new one)
    kept = held.copy()
    assert m.last_forward is not None and m.dropout_masks is not None
    m(X + 1)
    assert m.hidden_grads is None and getattr(m, "cell_grads", None) is None
    np.testing.assert_array_equal(held, kept)
    out = m(X)
    m.backward(_cotangent(out))
    assert m.hidden_grads is not None and (cls is not LSTM or m.cell_grads is not None)
    m.release_buffers()
    assert (m.hidden_grads, getattr(m, "cell_grads", None), m.last_forward, m.dropout_masks, m.states) == (
        None,
        None,
        None,
        None,
        [],
    )
    with pytest.raises(RuntimeError, match="call forward first"):
        m.backward(_cotangent(out))


def test_a_forward_that_overflows_midway_leaves_no_states():
    """The states buffers were partly overwritten by the failed forward: nothing may still describe them as the last
    forward's. Mutation: set last_forward before the layer loop -> states and Ω read the half-written buffers."""
    rnn = RNN(2, 3, nonlinearity="relu", dtype=np.float32, seed=0)
    out = rnn(X.astype(np.float32))
    rnn.backward(np.ones_like(out[0]))
    assert len(rnn.states) == 1
    rnn.weight_hh_l0[...] = 1e30
    with pytest.raises(FloatingPointError, match="overflowed"):
        rnn(np.full((6, 3, 2), 10.0, np.float32))
    assert rnn.states == [] and rnn.last_forward is None and rnn.hidden_grads is None
    with pytest.raises(RuntimeError, match="no forward"):
        pascanu_omega(rnn)
