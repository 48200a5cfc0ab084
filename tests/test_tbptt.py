"""Truncated BPTT: k >= T is full BPTT; k < T equals a torch twin truncated the same way (h.detach());
the state crosses chunk boundaries and the gradient does not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.models import torch_twin
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import TrainConfig, Trainer, tbptt_chunks
from tests.helpers import assert_close, random_batch
from tests.strategies import model_configs, optimizer_options
from tests.trajectories import assert_trajectories_close, run_both

THOROUGH = settings.default.max_examples > 25


@settings(max_examples=50)
@given(T=st.integers(1, 12), k=st.integers(1, 14), lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5))
def test_chunks_cover_every_valid_step_exactly_once(T, k, lengths):
    lengths = np.minimum(np.array(lengths), T)
    seen = {b: [] for b in range(len(lengths))}
    for start, stop, rows, cl in tbptt_chunks(T, lengths, k):
        assert 0 < stop - start <= k and ((cl >= 1) & (cl <= stop - start)).all()
        assert (start + cl <= lengths[rows]).all()
        for b, n in zip(rows, cl):
            seen[b] += list(range(start, start + n))
    for b, n in enumerate(lengths):
        assert seen[b] == list(range(n)), (b, n, seen[b])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_k_at_least_T_is_exactly_full_bptt(opt):
    cfg = ModelConfig(
        hidden_size=5,
        out_features=4,
        vocab_size=8,
        embedding_dim=3,
        num_layers=2,
        dropout=0.2,
        task="per_step",
        dtype="float64",
        seed=1,
    )
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, cfg, 3, 6, True) for _ in range(20)]
    kw = dict(lr=0.05, momentum=0.9) if opt == "sgd" else dict(lr=1e-2)
    runs = {}
    for k in (None, 6, 50):
        model = SequenceModel(cfg)
        trainer = Trainer(model, TrainConfig(optimizer=opt, optimizer_kwargs=kw, tbptt_k=k, progress=False))
        trainer.run(batches)
        runs[k] = (trainer.losses, trainer.grad_norms, model.state_dict())
    for k in (6, 50):  # bit for bit: one chunk is the same computation
        np.testing.assert_array_equal(runs[k][0], runs[None][0])
        np.testing.assert_array_equal(runs[k][1], runs[None][1])
        for name, v in runs[None][2].items():
            np.testing.assert_array_equal(runs[k][2][name], v, err_msg=f"k={k} {name}")
    ours, theirs = run_both(cfg, opt, kw, {}, batches, tbptt_k=50, seed=0)  # and full BPTT in torch
    assert len(theirs["losses"]) == 20
    assert_trajectories_close(ours, theirs, opt, dict(k=50))


@settings(max_examples=12 if not THOROUGH else 50)
@given(
    cfg=model_configs(task="per_step"),
    opts=optimizer_options(),
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 4),
    T=st.integers(2, 9),
    data=st.data(),
)
def test_truncated_bptt_matches_torch_truncated_the_same_way(cfg, opts, seed, B, T, data):
    name, kw = opts
    kw = dict(kw, maximize=False)
    k = data.draw(st.integers(1, T - 1), label="k")
    variable = data.draw(st.booleans(), label="variable")
    clip = data.draw(st.sampled_from([{}, dict(clip_norm=0.5)]), label="clip")
    rng = np.random.default_rng(seed)
    batches, n_steps = [], 0
    while n_steps < 20:  # N >= 20 optimizer steps (chunks) in all
        batches.append(random_batch(rng, cfg, B, T, variable))
        lengths = batches[-1][2] if variable else np.full(B, T)
        n_steps += len(list(tbptt_chunks(T, lengths, k)))
    ours, theirs = run_both(cfg, name, kw, clip, batches, tbptt_k=k, seed=seed)
    assert len(theirs["losses"]) == n_steps
    assert_trajectories_close(
        ours, theirs, name, dict(cfg=cfg, optimizer=name, kw=kw, k=k, seed=seed, B=B, T=T, variable=variable, clip=clip)
    )


def test_state_crosses_the_boundary_and_gradient_does_not():
    """lr = 0 (the weights never move): each chunk's loss is the full forward's loss on those steps
    (the state was carried), and its gradient is torch's with h.detach() at the boundary, which
    differs from the gradient that flows back through the boundary."""
    cfg = ModelConfig(
        hidden_size=4, out_features=3, input_size=2, num_layers=2, task="per_step", loss="mse", dtype="float64", seed=3
    )
    rng = np.random.default_rng(4)
    x, y, _ = random_batch(rng, cfg, 2, 6, False)
    model = SequenceModel(cfg)
    grads = []
    trainer = Trainer(
        model,
        TrainConfig(optimizer="sgd", optimizer_kwargs=dict(lr=0.0), tbptt_k=3, progress=False),
        callback=lambda t, r: grads.append({k: g.copy() for k, g in t.model.grads.items()}),
    )
    trainer.train_batch(x, y)
    assert len(trainer.history) == 2
    twin = torch_twin(model)
    out, _ = twin(x)
    for c, (s, e) in enumerate([(0, 3), (3, 6)]):  # the carried state: same outputs as one long forward
        ref = twin.loss(out[:, s:e], y[:, s:e]).item()
        assert_close(trainer.history[c].loss, ref, name=f"chunk {c} loss vs the full forward")
    # the second chunk's gradient, in torch, with and without the detach
    results = {}
    for detach in (True, False):
        twin.zero_grad()
        _, h = twin(x[:, :3])
        h = h.detach() if detach else h
        o2, _ = twin(x[:, 3:], h)
        twin.loss(o2, y[:, 3:]).backward()
        results[detach] = {k: p.grad.numpy().copy() for k, p in twin.named_parameters()}
    for k, g in grads[1].items():
        assert_close(g, results[True][k], name=f"chunk 2 grad {k} (detached)")
    w = "rnn.weight_hh_l0"
    with pytest.raises(AssertionError, match="mismatch"):  # the untruncated gradient is a different one
        assert_close(grads[1][w], results[False][w], name=f"chunk 2 grad {w} vs untruncated")


def test_tbptt_needs_a_per_step_task():
    model = SequenceModel(ModelConfig(hidden_size=3, out_features=2, input_size=2, task="sequence"))
    with pytest.raises(ValueError, match="tbptt_k: truncated BPTT needs a loss at every step"):
        Trainer(model, TrainConfig(tbptt_k=4, progress=False))
    with pytest.raises(ValueError, match="tbptt_k: expected a positive integer or None, got 0"):
        TrainConfig(tbptt_k=0)
