"""Whole training trajectories run both ways (the scratch Trainer and the torch loop, from the same weights
over the same batches) and compared at every step, within :data:`TRAJECTORY_TOLERANCES`.

Shared by tests/test_trajectories.py and tests/test_tbptt.py; the tolerance table, the worst errors
measured and why the adaptive optimizers get 10x more are in tests/test_trajectories.py's docstring.
"""

from __future__ import annotations

import numpy as np

from reference.training import train_torch
from scratch_rnn.models import SequenceModel
from scratch_rnn.train import TrainConfig, Trainer
from tests.helpers import assert_close, randomize_biases

TRAJECTORY_TOLERANCES = {
    "loss": dict(rtol=1e-9, atol=1e-12),
    "grad_norm": dict(rtol=1e-9, atol=1e-12),
    "params": dict(rtol=1e-9, atol=1e-12),
    "params_adaptive": dict(rtol=1e-8, atol=1e-12),  # Adam, AdamW, RMSprop: see tests/test_trajectories.py
}


def run_both(cfg, opt_name, opt_kw, clip_kw, batches, *, tbptt_k=None, seed=0):
    """The scratch Trainer and the torch loop from the same weights over the same batches.

    Returns (scratch dict, torch dict), each with losses, grad_norms and params after every step.
    """
    model = SequenceModel(cfg)
    randomize_biases(model, np.random.default_rng(seed))
    tc = TrainConfig(optimizer=opt_name, optimizer_kwargs=opt_kw, tbptt_k=tbptt_k, progress=False, **clip_kw)
    init, rng_state = model.state_dict(), model.rng.bit_generator.state
    params = []
    trainer = Trainer(model, tc, callback=lambda t, r: params.append(t.model.state_dict()))
    trainer.run(batches)
    ours = dict(
        losses=trainer.losses,
        grad_norms=trainer.grad_norms,
        params=params,
        skipped=[r.skipped for r in trainer.history],
    )
    theirs = train_torch(cfg, init, batches, tc, dropout_rng_state=rng_state)
    return ours, theirs


def assert_trajectories_close(ours, theirs, opt_name, config):
    """Every step: loss, pre-clip gradient norm and every parameter, within the table."""
    assert not any(ours["skipped"]), config
    n = len(theirs["losses"])
    assert len(ours["losses"]) == len(ours["params"]) == n, (len(ours["losses"]), n, config)
    ptol = TRAJECTORY_TOLERANCES["params_adaptive" if opt_name in ("adam", "adamw", "rmsprop") else "params"]
    for t in range(n):
        cfg_t = dict(config, step=t + 1)
        assert_close(
            ours["losses"][t],
            theirs["losses"][t],
            name=f"loss at step {t + 1}",
            config=cfg_t,
            **TRAJECTORY_TOLERANCES["loss"],
        )
        assert_close(
            ours["grad_norms"][t],
            theirs["grad_norms"][t],
            name=f"pre-clip grad norm at step {t + 1}",
            config=cfg_t,
            **TRAJECTORY_TOLERANCES["grad_norm"],
        )
        for k, v in theirs["params"][t].items():
            assert_close(ours["params"][t][k], v, name=f"{k} after step {t + 1}", config=cfg_t, **ptol)
