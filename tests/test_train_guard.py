"""The non-finite guard: NaN/inf in the forward, the loss or the gradient stops training with a message
naming the step and the last finite gradient norm, keeps the last good checkpoint and exits non-zero;
or, when asked, skips the step (no update, optimizer untouched) and counts it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import Dataset, NonFiniteError, TrainConfig, Trainer, main

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings are the point

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSE = ModelConfig(
    hidden_size=4, out_features=2, input_size=3, nonlinearity="relu", loss="mse", dtype="float64", seed=1
)
BATCH = 4
POISONED_BATCH = 2  # 0-based: the third batch, i.e. step 3


def _data(poison: str, n_batches=6, T=5, seed=0):
    """Dense sequences; with ``poison`` the POISONED_BATCH-th batch gives a non-finite loss: huge inputs
    ("input": finite relu states ~1e300, so outputs ~1e300 and an inf squared error) or huge targets
    ("loss")."""
    rng = np.random.default_rng(seed)
    n = n_batches * BATCH
    x = rng.standard_normal((n, T, 3))
    y = rng.standard_normal((n, 2))
    rows = slice(POISONED_BATCH * BATCH, POISONED_BATCH * BATCH + 1)
    if poison == "input":
        x[rows] = 1e300
    elif poison == "loss":
        y[rows] = 1e200  # (out - 1e200)^2 overflows: the loss is inf
    return Dataset(x, y)


def _cfg(tmp_path, **kw):
    base = dict(
        optimizer="adam",
        optimizer_kwargs=dict(lr=1e-2),
        batch_size=BATCH,
        shuffle=False,
        epochs=1,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every=1,
        progress=False,
        log_csv=str(tmp_path / "log.csv"),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("poison", ["input", "loss"])
def test_stop_names_the_step_and_last_norm_and_keeps_the_last_good_checkpoint(tmp_path, poison):
    trainer = Trainer(SequenceModel(DENSE), _cfg(tmp_path))
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(_data(poison))
    err = info.value
    good_norm = trainer.history[-1].grad_norm
    assert err.step == 3 and err.last_finite_grad_norm == good_norm and err.last_finite_step == 2
    msg = str(err)
    assert "training stopped at step 3" in msg
    assert f"Last finite gradient norm: {good_norm:.6g} (step 2)" in msg
    assert "checkpoint.npz' (step 2) was kept" in msg
    assert "the loss is not finite (inf)" in msg
    assert trainer.step == 2 and len(trainer.history) == 2
    # the checkpoint on disk is the state before the failing step, and it loads
    path = trainer.checkpoint_path()
    before = open(path, "rb").read()
    resumed = Trainer(SequenceModel(DENSE), _cfg(tmp_path))
    resumed.load_checkpoint()
    assert resumed.step == 2
    for k, v in trainer.model.parameters().items():
        np.testing.assert_array_equal(resumed.model.parameters()[k], v)
    assert open(path, "rb").read() == before
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss,grad_norm,skipped" and rows[-1] == "3,1,nan,nan,True"


def _exploding_model(cfg=None):
    """relu, W_hh = 1e100·I, a 1e-300 bias: h_t = 1e100^(t-1)·1e-300 for t = 1, 2, ... is finite up to
    h_7 = 1e300 and inf at h_8 (0-based time step 7); over 5 steps (h_5 = 1e100) the forward is
    finite, and backwards dL/dh grows by 1e100 per step and overflows after 4."""
    model = SequenceModel(cfg or dataclasses.replace(DENSE, loss="cross_entropy", hidden_size=2))
    state = model.state_dict()
    state["rnn.weight_hh_l0"] = np.eye(2) * 1e100
    state["rnn.weight_ih_l0"] = np.zeros((2, 3))
    state["rnn.bias_ih_l0"] = np.full(2, 1e-300)
    state["rnn.bias_hh_l0"] = np.zeros(2)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize(
    "where, T, match",
    [
        ("forward", 10, r"hidden state of layer 0 became non-finite at time step 7.*recurrence overflowed"),
        ("backward", 5, r"gradient of \['rnn.weight_ih_l0'.* is not finite.*backward pass overflowed"),
    ],
)
def test_rnn_overflow_in_forward_or_backward_is_caught(tmp_path, where, T, match):
    model = _exploding_model()
    before = model.state_dict()
    trainer = Trainer(model, _cfg(tmp_path, checkpoint_dir=None, log_csv=None))
    x = np.zeros((1, T, 3))
    if where == "backward":
        out, _ = model.forward(x)
        y = np.array([int(np.argmin(out[0]))])  # the losing class: a finite loss ~1e100, gradient of size 1
        assert np.isfinite(model.loss(out, y))
    else:
        y = np.array([0])
    with pytest.raises(
        NonFiniteError,
        match=r"training stopped at step 1: non-finite values: .*"
        + match
        + r".*Last finite gradient norm: none \(no step had finished\); no checkpoint",
    ):
        trainer.train_batch(x, y)
    for k, v in before.items():  # nothing was updated
        np.testing.assert_array_equal(model.parameters()[k], v)
    assert trainer.optimizer.step_count == 0 and trainer.step == 0


@pytest.mark.parametrize("poison", ["input", "loss"])
def test_skip_drops_the_step_counts_it_and_continues_as_if_the_batch_was_absent(tmp_path, poison):
    data = _data(poison)
    snapshots = []
    trainer = Trainer(
        SequenceModel(DENSE),
        _cfg(tmp_path, on_nonfinite="skip", checkpoint_dir=None, max_skipped_fraction=0.5),
        callback=lambda t, r: snapshots.append((t.model.state_dict(), t.optimizer.state_dict())),
    )
    trainer.fit(data)
    assert trainer.skipped_steps == 1 and trainer.step == 6
    rec = trainer.history[POISONED_BATCH]
    assert rec.skipped and np.isnan(rec.loss) and np.isnan(rec.grad_norm) and rec.step == 3
    params_2, opt_2 = snapshots[1]
    params_3, opt_3 = snapshots[2]  # after the skipped step: nothing moved
    for k in params_2:
        np.testing.assert_array_equal(params_3[k], params_2[k])
    assert opt_3["step_count"] == opt_2["step_count"] == 2
    # the same run without the poisoned batch ends in exactly the same place
    keep = np.r_[0 : POISONED_BATCH * BATCH, (POISONED_BATCH + 1) * BATCH : len(data)]
    clean = Trainer(SequenceModel(DENSE), _cfg(tmp_path, checkpoint_dir=None, log_csv=None))
    clean.fit(Dataset(data.x[keep], data.y[keep]))
    for k, v in clean.model.parameters().items():
        np.testing.assert_array_equal(trainer.model.parameters()[k], v, err_msg=k)
    np.testing.assert_array_equal(trainer.losses[~np.isnan(trainer.losses)], clean.losses)


def test_skip_inside_truncated_bptt_ends_the_batch(tmp_path):
    cfg = dataclasses.replace(DENSE, task="per_step")
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 9, 3)), rng.standard_normal((2, 9, 2))
    y[0, 4] = 1e200  # in the second chunk of 3 steps: an inf squared error
    trainer = Trainer(
        SequenceModel(cfg), _cfg(tmp_path, on_nonfinite="skip", tbptt_k=3, checkpoint_dir=None, log_csv=None)
    )
    records = trainer.train_batch(x, y)
    assert [r.skipped for r in records] == [False, True] and trainer.skipped_steps == 1 and trainer.step == 2
    records = trainer.train_batch(x[1:], y[1:])  # the next batch trains normally
    assert [r.skipped for r in records] == [False, False, False]


def test_an_update_that_makes_parameters_nonfinite_always_stops(tmp_path):
    trainer = Trainer(
        SequenceModel(DENSE),
        _cfg(
            tmp_path,
            optimizer="sgd",
            optimizer_kwargs=dict(lr=1e308),
            on_nonfinite="skip",
            checkpoint_dir=None,
            log_csv=None,
        ),
    )
    with pytest.raises(
        NonFiniteError, match="step 1: .*the update made the parameters .* non-finite.*cannot be skipped"
    ):
        data = _data("none")
        trainer.fit(Dataset(data.x, data.y + 1e3))  # finite gradients of size ~1e3; 1e308 * 1e3 = inf


def test_bad_guard_option():
    with pytest.raises(ValueError, match=r"on_nonfinite: expected one of \['stop', 'skip'\], got 'ignore'"):
        TrainConfig(on_nonfinite="ignore")


# ---------------------------------------------------------------------------------------------
# the command line: exit status 1 on a non-finite stop
# ---------------------------------------------------------------------------------------------
def _cli_files(tmp_path, poison, **train_kw):
    data = _data(poison)
    np.savez(tmp_path / "data.npz", x=data.x, y=data.y)
    (tmp_path / "model.json").write_text(json.dumps(DENSE.to_dict()))
    (tmp_path / "train.json").write_text(json.dumps(dict(_cfg(tmp_path, **train_kw).to_dict())))
    return [
        "--data",
        str(tmp_path / "data.npz"),
        "--model",
        str(tmp_path / "model.json"),
        "--train",
        str(tmp_path / "train.json"),
    ]


def test_cli_exit_status(tmp_path, capsys):
    assert main(_cli_files(tmp_path, "none")) == 0
    assert "done: 6 steps (0 skipped)" in capsys.readouterr().out
    assert main(_cli_files(tmp_path, "none")) == 2  # the finished run is not replaced unasked
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(_cli_files(tmp_path, "input", on_nonfinite="skip", max_skipped_fraction=0.5) + ["--overwrite"]) == 0
    assert "done: 6 steps (1 skipped)" in capsys.readouterr().out
    assert main(_cli_files(tmp_path, "loss") + ["--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "training stopped at step 3" in err and "(step 2) was kept" in err
    (tmp_path / "bad.json").write_text(json.dumps(dict(hidden_size=3)))
    args = _cli_files(tmp_path, "none")
    args[3] = str(tmp_path / "bad.json")
    assert main(args) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_process_exits_non_zero(tmp_path):
    args = _cli_files(tmp_path, "input")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "scratch_rnn.train", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "training stopped at step 3" in proc.stderr and "Last finite gradient norm" in proc.stderr
    # and --resume from the kept checkpoint is accepted (it stops again at the same poisoned step)
    proc = subprocess.run(
        [sys.executable, "-m", "scratch_rnn.train", *args, "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1 and "training stopped at step 3" in proc.stderr, proc.stderr
