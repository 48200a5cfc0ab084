"""The gated cells' model-level gradients against independent torch oracles, at shapes drawn on purpose.

- ``hidden_grads`` / ``cell_grads`` of LSTM and GRU (layers, directions, projection, dropout masks,
  unsorted lengths) against :func:`reference.gated_unroll.unrolled_gated_grads`, which unrolls every
  sequence alone from torch's equations: the scratch model's sort by length, its packed loops, its
  reverse indexing and the un-sorting of the results are all held to sequences that never see padding.
- The fast backward (gated_loops.py) cut into several factor blocks with T not a multiple of the block
  length, in both cells and both directions, against torch.nn.LSTM / GRU: once with the block length
  forced small, once at the default block length with a T long enough to need more than one block.
- The subnormal flush acts on loop steps 0, k, 2k, ... counted from the loop's first step, not on time
  indices that are multiples of k: T and k are chosen so that the two differ, with lengths.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given

from reference.cases import RNNCase
from reference.gated_unroll import unrolled_gated_grads
from reference.rnn import run_torch
from scratch_rnn import GRU, LSTM
from scratch_rnn.cells import elman, gru, loops, lstm
from scratch_rnn.cells import loops as GL
from tests.gated_cases import Case, make_arrays
from tests.helpers import assert_close
from tests.strategies import rnn_cases


def _check_against_unroll(case: RNNCase):
    model = case.model(np.float64)
    x, hx, lengths, go, gfin = case.arrays(model)
    masks = case.dropout_masks()
    config = asdict(case)
    model.forward(x, hx, lengths, dropout_masks=masks)
    model.backward(go, gfin)
    ref = unrolled_gated_grads(model, x, hx, lengths, go, gfin, dropout_masks=masks)
    LD, out = model.num_layers * model.num_directions, model.output_size
    assert model.hidden_grads.shape == (LD, case.steps, case.batch, out), config
    assert_close(model.hidden_grads, ref["hidden_grads"], name="hidden_grads", config=config)
    if case.lstm:
        assert model.cell_grads.shape == (LD, case.steps, case.batch, case.hidden_size), config
        assert_close(model.cell_grads, ref["cell_grads"], name="cell_grads", config=config)
    if lengths is not None:  # zero at padded steps, exactly
        pad = np.arange(case.steps)[:, None] >= np.asarray(lengths).reshape(-1)[None, :]
        assert not model.hidden_grads[:, pad].any(), config
        if case.lstm:
            assert not model.cell_grads[:, pad].any(), config
    # the oracle's own forward agrees with the model's (a sanity check of the oracle)
    out_, finals = model.forward(x, hx, lengths, dropout_masks=masks)
    h_n = finals[0] if case.lstm else finals
    assert_close(h_n if not case.unbatched else h_n[:, None], ref["h_n"], name="h_n (oracle sanity)", config=config)


@given(case=rnn_cases(dropout=True, cells=("lstm", "gru")))
def test_gated_hidden_and_cell_grads_match_torch_unroll(case):
    _check_against_unroll(case)


# Unsorted lengths on purpose (the sort and un-sort are what is checked), the longest not first, a
# length-1 sequence, two layers both ways, a projection, dropout masks, a cotangent on every state.
UNSORTED = [
    RNNCase(
        input_size=3,
        hidden_size=4,
        num_layers=2,
        bidirectional=True,
        nonlinearity="tanh",
        bias=True,
        batch_first=True,
        unbatched=False,
        batch=5,
        steps=7,
        lengths=(3, 7, 1, 5, 6),
        with_h0=True,
        with_grad_h_n=True,
        dropout=0.4,
        seed=11,
        cell="lstm",
        proj_size=3,
    ),
    RNNCase(
        input_size=2,
        hidden_size=5,
        num_layers=2,
        bidirectional=True,
        nonlinearity="tanh",
        bias=False,
        batch_first=False,
        unbatched=False,
        batch=4,
        steps=6,
        lengths=(2, 6, 4, 1),
        with_h0=True,
        with_grad_h_n=True,
        dropout=0.0,
        seed=12,
        cell="lstm",
        proj_size=0,
    ),
    RNNCase(
        input_size=3,
        hidden_size=4,
        num_layers=2,
        bidirectional=True,
        nonlinearity="tanh",
        bias=True,
        batch_first=True,
        unbatched=False,
        batch=5,
        steps=7,
        lengths=(3, 7, 1, 5, 6),
        with_h0=True,
        with_grad_h_n=True,
        dropout=0.4,
        seed=13,
        cell="gru",
    ),
    RNNCase(
        input_size=2,
        hidden_size=3,
        num_layers=1,
        bidirectional=True,
        nonlinearity="tanh",
        bias=True,
        batch_first=False,
        unbatched=False,
        batch=4,
        steps=6,
        lengths=(4, 6, 1, 2),
        with_h0=False,
        with_grad_h_n=False,
        dropout=0.0,
        seed=14,
        cell="gru",
    ),
]


@pytest.mark.parametrize("case", UNSORTED, ids=lambda c: f"{c.cell}-L{c.num_layers}-P{c.proj_size}-s{c.seed}")
def test_gated_grads_with_unsorted_lengths_match_torch_unroll(case):
    assert list(case.lengths) != sorted(case.lengths, reverse=True)  # the shape that matters, on purpose
    _check_against_unroll(case)


def test_the_gated_oracle_catches_a_time_reversed_or_unsorted_result():
    """The comparison above must fail for cell_grads reversed in time or left in sorted-row order."""
    case = UNSORTED[0]
    model = case.model(np.float64)
    x, hx, lengths, go, gfin = case.arrays(model)
    model.train(False)
    model.forward(x, hx, lengths)
    model.backward(go, gfin)
    ref = unrolled_gated_grads(model, x, hx, lengths, go, gfin)
    assert_close(model.cell_grads, ref["cell_grads"], name="cell_grads", config=asdict(case))
    perm = np.argsort(-np.asarray(lengths), kind="stable")
    for wrong in (model.cell_grads[:, ::-1], model.cell_grads[:, :, perm]):
        with pytest.raises(AssertionError, match="cell_grads"):
            assert_close(wrong, ref["cell_grads"], name="cell_grads", config=asdict(case))


# ------------------------------------------------------------------------------------------------
# The fast backward cut into several factor blocks, T not a multiple of the block length
# ------------------------------------------------------------------------------------------------
def _torch_check(model, T, B, lengths, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, model.input_size))
    lstm = model.NAME == "LSTM"
    LD = model.num_layers * model.num_directions
    hx = rng.standard_normal((LD, B, model.output_size)) * 0.5
    gfin = rng.standard_normal((LD, B, model.output_size))
    if lstm:
        hx = (hx, rng.standard_normal((LD, B, model.hidden_size)))
        gfin = (gfin, rng.standard_normal((LD, B, model.hidden_size)))
    go = rng.standard_normal((T, B, model.num_directions * model.output_size))
    model.zero_grad()
    model.forward(x, hx, lengths)
    grad_x, grad_hx = model.backward(go, gfin)
    ref = run_torch(model, x, hx, lengths, go, gfin)
    config = dict(cell=model.NAME, T=T, B=B, lengths=lengths, block_entries=GL.BLOCK_ENTRIES)
    for k in sorted(ref["grads"]):
        assert_close(model.grads[k], ref["grads"][k], name=f"grad {k}", config=config)
    assert_close(grad_x, ref["grad_x"], name="grad_x", config=config)
    assert_close(grad_hx[0] if lstm else grad_hx, ref["grad_h0"], name="grad_h0", config=config)
    if lstm:
        assert_close(grad_hx[1], ref["grad_c0"], name="grad_c0", config=config)


@pytest.mark.parametrize("cls", [LSTM, GRU], ids=["lstm", "gru"])
def test_fast_backward_in_several_blocks_with_a_remainder_matches_torch(cls, monkeypatch):
    """A block of 3 steps over T = 11: blocks 3, 3, 3, 2 in each direction, packed lengths too."""
    T, B, H = 11, 3, 4
    per_step = B * (4 if cls is LSTM else 3) * H
    monkeypatch.setattr(GL, "BLOCK_ENTRIES", 3 * per_step)
    L = GL.block_steps(T, per_step)
    assert L == 3 and T % L and T > 2 * L  # several blocks and a partial one: drawn on purpose
    model = cls(2, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=4)
    _torch_check(model, T, B, None, seed=1)
    _torch_check(model, T, B, np.array([5, 11, 8]), seed=2)  # unsorted, one length inside a block


@pytest.mark.parametrize("cls,H", [(LSTM, 12), (GRU, 16)], ids=["lstm", "gru"])
def test_fast_backward_at_the_default_block_length_over_a_long_sequence_matches_torch(cls, H):
    """No monkeypatching: the default BLOCK_ENTRIES with T = 1,000 needs two blocks (682 + 318 steps)."""
    T, B = 1000, 2
    per_step = B * (4 if cls is LSTM else 3) * H
    L = GL.block_steps(T, per_step)
    assert 1 < T / L < 3 and T % L, L  # more than one block and a remainder, by construction
    model = cls(2, H, bidirectional=True, dtype=np.float64, seed=5)
    for p in model.parameters().values():
        p *= 0.5  # keep the long recurrence well away from saturation so that every step's gradient counts
    _torch_check(model, T, B, np.array([637, 1000]), seed=3)


# ------------------------------------------------------------------------------------------------
# The subnormal flush: counted by loop step, not by time index
# ------------------------------------------------------------------------------------------------
FLUSH_T, FLUSH_K, FLUSH_LENGTHS = 10, 4, (10, 7, 3)


def _flushed_steps(reverse):
    """Time indices the flush must zero: loop steps 0, k, 2k, ... of the backward's order."""
    order = range(FLUSH_T) if reverse else range(FLUSH_T - 1, -1, -1)
    return {t for i, t in enumerate(order) if i % FLUSH_K == 0}


def test_flush_steps_differ_from_time_multiples_here():
    assert _flushed_steps(False) != {t for t in range(FLUSH_T) if t % FLUSH_K == 0}  # the case that matters


def _run_backward(kind, loop, reverse):
    bs = (np.asarray(FLUSH_LENGTHS)[None, :] > np.arange(FLUSH_T)[:, None]).sum(axis=1)
    if kind == "rnn":
        rng = np.random.default_rng(3)
        B, H = len(FLUSH_LENGTHS), 3
        hs = np.tanh(rng.standard_normal((FLUSH_T + 1, B, H)))
        go = rng.standard_normal((FLUSH_T, B, H))
        _, _, hidden = elman.sequence_backward(
            go,
            rng.standard_normal((B, H)),
            hs,
            rng.standard_normal((H, H)),
            "tanh",
            bs,
            reverse,
            1e30,
            flush_every=FLUSH_K,
        )
        return hidden
    case = Case(kind, 2, 3, 0, len(FLUSH_LENGTHS), FLUSH_T, True, reverse, FLUSH_LENGTHS, seed=9)
    a = make_arrays(case)
    kw = dict(flush_below=1e30, flush_every=FLUSH_K)
    if kind == "lstm":
        xp = loops.input_projection(a["x"], a["w_ih"], a["b_ih"] + a["b_hh"])
        cache = getattr(lstm, f"lstm_{loop}_forward")(xp, a["h0"], a["c0"], a["w_hh"], None, bs, reverse)
        return getattr(lstm, f"lstm_{loop}_backward")(
            a["go"], a["ghn"], a["gcn"], cache, a["w_hh"], None, bs, reverse, **kw
        )["hidden_grads"]
    xp = loops.input_projection(a["x"], a["w_ih"], a["b_ih"])
    cache = getattr(gru, f"gru_{loop}_forward")(xp, a["h0"], a["w_hh"], a["b_hh"], bs, reverse)
    return getattr(gru, f"gru_{loop}_backward")(a["go"], a["ghn"], cache, a["w_hh"], bs, reverse, **kw)["hidden_grads"]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    "kind,loop",
    [("rnn", "sequence"), ("lstm", "stepwise"), ("lstm", "sequence"), ("gru", "stepwise"), ("gru", "sequence")],
    ids=["rnn", "lstm-ref", "lstm-fast", "gru-ref", "gru-fast"],
)
def test_flush_acts_on_every_kth_loop_step_under_lengths(kind, loop, reverse):
    """A threshold above every value zeroes g_t entirely at the flushed steps and nowhere else."""
    hidden = _run_backward(kind, loop, reverse)
    flushed = _flushed_steps(reverse)
    for t in range(FLUSH_T):
        n = int(sum(length > t for length in FLUSH_LENGTHS))
        if t in flushed:
            assert not hidden[t, :n].any(), f"step {t} should be flushed"
        else:
            assert np.all(hidden[t, :n] != 0), f"step {t} should not be flushed"
