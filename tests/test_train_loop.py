"""The one training loop: epochs, evaluation, selection, patience, schedule, stop hooks, divergence, skipped
steps, data fingerprints and run-folder safety; its torch twin takes the same decisions from the same numbers."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from reference.training import TorchTrainer, twin_from_state
from scratch_rnn import checkpoint as ckpt
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import (
    Dataset,
    DivergenceError,
    NonFiniteError,
    TooManySkippedError,
    TrainConfig,
    Trainer,
    TrainingStopped,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CFG = ModelConfig(
    hidden_size=5, out_features=2, vocab_size=11, embedding_dim=3, pooling="mean", dtype="float64", seed=2
)
DENSE = ModelConfig(hidden_size=4, out_features=2, input_size=3, loss="mse", dtype="float64", seed=1)


def _data(n=40, T=6, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(1, CFG.vocab_size, (n, T)), rng.integers(0, 2, n), rng.integers(1, T + 1, n))


def _tc(**kw):
    base = dict(optimizer="adam", optimizer_kwargs={"lr": 0.05}, batch_size=8, epochs=4, progress=False)
    base.update(kw)
    return TrainConfig(**base)


class Scores:
    """An evaluate hook returning a scripted metric per call (and counting the calls)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, model):
        v = self.values[self.calls]
        self.calls += 1
        return {"valid_accuracy": v}


def test_epochs_rows_evaluation_and_best_selection():
    model = SequenceModel(CFG)
    states = []
    scores = Scores([0.5, 0.8, 0.7, 0.8])  # the best is epoch 2; a tie later is not an improvement
    trainer = Trainer(
        model, _tc(select="best", select_metric="valid_accuracy"), evaluate=scores, callback=lambda t, r: None
    )
    orig = trainer.model_state
    trainer.model_state = lambda: states.append(orig()) or states[-1]
    trainer.fit(_data())
    assert [r["epoch"] for r in trainer.epochs] == [1, 2, 3, 4] and scores.calls == 4
    assert all({"train_loss", "train_accuracy", "valid_accuracy", "seconds"} <= set(r) for r in trainer.epochs)
    assert trainer.selected_epoch == 2
    for k, v in states[1].items():  # the weights of epoch 2, loaded at the end
        np.testing.assert_array_equal(model.parameters()[k], v)
    # the epoch's training loss is the sample-weighted mean of its steps
    per_epoch = 5
    losses = trainer.losses[:per_epoch]
    sizes = [8] * 5
    assert trainer.epochs[0]["train_loss"] == pytest.approx(np.dot(losses, sizes) / 40, rel=1e-12)


def test_patience_and_stop_when_end_fit_early():
    trainer = Trainer(
        SequenceModel(CFG),
        _tc(epochs=10, patience=2, select_metric="valid_accuracy"),
        evaluate=Scores([0.5, 0.6, 0.6, 0.55] + [0.9] * 6),
    )
    trainer.fit(_data())
    assert len(trainer.epochs) == 4 and "patience" in trainer.stop_reason
    trainer = Trainer(
        SequenceModel(CFG),
        _tc(epochs=10),
        evaluate=Scores([0.1, 0.2, 1.0] + [0.0] * 7),
        stop_when=lambda row: row["valid_accuracy"] == 1.0,
    )
    trainer.fit(_data())
    assert len(trainer.epochs) == 3 and trainer.stop_reason == "stop_when"


def test_lr_decay_sets_each_epochs_rate():
    seen = []
    trainer = Trainer(
        SequenceModel(CFG),
        _tc(optimizer="sgd", optimizer_kwargs={"lr": 0.2}, lr_decay=0.5, epochs=3),
        callback=lambda t, r: seen.append((r.epoch, t.optimizer.lr)),
    )
    trainer.fit(_data())
    assert sorted(set(seen)) == [(1, 0.2), (2, 0.1), (3, 0.05)]


def test_a_partial_last_epoch_is_evaluated_when_max_steps_stops_it():
    scores = Scores([0.1] * 10)
    trainer = Trainer(SequenceModel(CFG), _tc(epochs=5, max_steps=7), evaluate=scores)
    trainer.fit(_data())
    assert trainer.step == 7 and [r["epoch"] for r in trainer.epochs] == [1, 2]
    assert trainer.epochs[-1]["partial"] and scores.calls == 2


def test_the_torch_twin_takes_the_same_decisions():
    """Same batches, same scripted metrics: the same epochs, the same selected epoch, the same weights."""
    model = SequenceModel(CFG)
    init = model.state_dict()
    cfg = _tc(select="best", select_metric="valid_accuracy", patience=2, epochs=6, lr_decay=0.7)
    ours = Trainer(model, cfg, evaluate=Scores([0.5, 0.7, 0.6, 0.65, 0.9, 0.9]))
    ours.fit(_data())
    theirs = TorchTrainer(
        twin_from_state(CFG, init),
        cfg,
        dropout_rng_state=SequenceModel(CFG).rng.bit_generator.state,
        evaluate=Scores([0.5, 0.7, 0.6, 0.65, 0.9, 0.9]),
    )
    theirs.fit(_data())
    assert ours.selected_epoch == theirs.selected_epoch == 2 and len(ours.epochs) == len(theirs.epochs) == 4
    np.testing.assert_allclose(ours.losses, theirs.losses, rtol=1e-9)
    for k, v in ours.model_state().items():
        np.testing.assert_allclose(v, theirs.model_state()[k], rtol=1e-8, atol=1e-12, err_msg=k)


# ---------------------------------------------------------------------------------------------
# class 4 of the faults: divergence and skipped steps do not end as success
# ---------------------------------------------------------------------------------------------
def _dense(n=24, T=5, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return Dataset(rng.standard_normal((n, T, 3)), scale * rng.standard_normal((n, 2)))


@pytest.mark.parametrize("lr", [1e3, 1e30, 1e300])
def test_sgd_with_an_absurd_learning_rate_stops_as_diverged_and_keeps_the_checkpoint(tmp_path, lr):
    cfg = dataclasses.replace(DENSE, nonlinearity="tanh")
    trainer = Trainer(
        SequenceModel(cfg),
        _tc(
            optimizer="sgd",
            optimizer_kwargs={"lr": lr},
            batch_size=4,
            epochs=3,
            checkpoint_dir=str(tmp_path),
            checkpoint_every=1,
        ),
    )
    with pytest.raises((DivergenceError, NonFiniteError)) as info:
        trainer.fit(_dense())
    assert isinstance(info.value, TrainingStopped) and info.value.step >= 2
    kept = ckpt.read_archive(tmp_path / "checkpoint.npz")[1]
    assert kept["step"] < info.value.step  # the last good one, not the diverged weights
    if isinstance(info.value, DivergenceError):
        assert "exceeds divergence_factor" in str(info.value)


def test_divergence_is_relative_to_the_first_loss_and_can_be_switched_off():
    data = _dense(scale=1.0)
    trainer = Trainer(
        SequenceModel(DENSE),
        _tc(optimizer="sgd", optimizer_kwargs={"lr": 0.0}, batch_size=4, shuffle=False, divergence_factor=2.0),
    )
    big = Dataset(data.x, data.y * np.r_[np.ones(4), 1e3 * np.ones(20)][:, None])  # loss x1e6 from batch 2
    with pytest.raises(DivergenceError, match=r"step 2: divergence: the loss .* exceeds divergence_factor 2"):
        trainer.fit(big)
    trainer = Trainer(
        SequenceModel(DENSE),
        _tc(
            optimizer="sgd", optimizer_kwargs={"lr": 0.0}, batch_size=4, shuffle=False, divergence_factor=None, epochs=1
        ),
    )
    trainer.fit(big)
    assert trainer.step == 6


def test_a_run_that_skipped_most_steps_does_not_report_success():
    data = _dense()
    poisoned = Dataset(data.x, np.where(np.arange(24)[:, None] % 4 == 0, 1e200, data.y))  # every batch of 4
    trainer = Trainer(SequenceModel(DENSE), _tc(batch_size=4, on_nonfinite="skip", epochs=1, shuffle=False))
    with pytest.raises(TooManySkippedError, match="6 of 6 steps were skipped"):
        trainer.fit(poisoned)


def test_the_torch_twins_stop_names_the_last_finite_step():
    """The torch backend used to say 'no step had finished' when it stopped at step 2."""
    model = SequenceModel(DENSE)
    data = _dense()
    y = data.y.copy()
    y[4:8] = 1e200  # the second batch: an inf loss
    trainer = TorchTrainer(twin_from_state(DENSE, model.state_dict()), _tc(batch_size=4, shuffle=False))
    with pytest.raises(NonFiniteError, match=r"step 2: .*Last finite gradient norm: [0-9.e+-]+ \(step 1\)"):
        trainer.fit(Dataset(data.x, y))


# ---------------------------------------------------------------------------------------------
# class 3: nothing lost, nothing mismatched
# ---------------------------------------------------------------------------------------------
def test_a_finished_run_is_not_replaced_and_a_resume_refuses_other_data(tmp_path):
    cfg = _tc(epochs=2, checkpoint_dir=str(tmp_path), log_csv=str(tmp_path / "log.csv"))
    Trainer(SequenceModel(CFG), cfg).fit(_data())
    finished = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        Trainer(SequenceModel(CFG), cfg).fit(_data())
    assert (tmp_path / "checkpoint.npz").read_bytes() == finished
    more = Trainer(SequenceModel(CFG), dataclasses.replace(cfg, epochs=3))
    more.load_checkpoint()
    with pytest.raises(ckpt.CheckpointMismatchError, match="trained on other data"):
        more.fit(_data(seed=1))
    assert (tmp_path / "checkpoint.npz").read_bytes() == finished
    again = Trainer(SequenceModel(CFG), dataclasses.replace(cfg, overwrite=True))
    again.fit(_data(seed=1))  # asked for: a new run replaces the old one


def test_a_resume_removes_temporaries_a_killed_writer_left(tmp_path):
    cfg = _tc(epochs=1, checkpoint_dir=str(tmp_path))
    Trainer(SequenceModel(CFG), cfg).fit(_data())
    stale = tmp_path / ".checkpoint.npz.k1lled.tmp"
    stale.write_bytes(b"PK\x03\x04 left by kill -9")
    Trainer(SequenceModel(CFG), cfg).load_checkpoint()
    assert not stale.exists() and (tmp_path / "checkpoint.npz").exists()


def test_outputs_of_the_wrong_kind_are_refused_before_the_first_step(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    model = SequenceModel(CFG)
    before = model.state_dict()
    with pytest.raises(ValueError, match="checkpoint_dir: expected a folder"):
        Trainer(model, _tc(checkpoint_dir=str(a_file))).fit(_data())
    with pytest.raises(ValueError, match="log_csv: expected a file path"):
        Trainer(model, _tc(log_csv=str(tmp_path))).fit(_data())
    for k, v in before.items():
        np.testing.assert_array_equal(model.parameters()[k], v)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("shuffle", "false", "shuffle: expected True or False"),
        ("clip_norm_type", "abc", "clip_norm_type: expected a number >= 1 or .inf."),
        ("clip_norm_type", -1, "p >= 1"),
        ("lr_decay", 0, "lr_decay"),
        ("select", "best", "select_metric"),
        ("max_skipped_fraction", 2, "max_skipped_fraction"),
    ],
)
def test_train_config_fields_are_checked(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(**{field: value})


def test_checkpoint_files_get_the_normal_mode(tmp_path):
    Trainer(SequenceModel(CFG), _tc(epochs=1, checkpoint_dir=str(tmp_path))).fit(_data())
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(tmp_path / "checkpoint.npz").st_mode & 0o777) == 0o666 & ~mask


# ---------------------------------------------------------------------------------------------
# what an independent review found (each red before its fix)
# ---------------------------------------------------------------------------------------------
def test_the_final_checkpoint_of_a_best_run_holds_the_last_state_and_resumes_exactly(tmp_path):
    scores = [0.9, 0.5, 0.6, 0.7]
    whole = Trainer(
        SequenceModel(CFG), _tc(epochs=4, select="best", select_metric="valid_accuracy"), evaluate=Scores(scores)
    )
    whole.fit(_data())
    part = Trainer(
        SequenceModel(CFG),
        _tc(epochs=2, select="best", select_metric="valid_accuracy", checkpoint_dir=str(tmp_path)),
        evaluate=Scores(scores),
    )
    part.fit(_data())
    more = Trainer(
        SequenceModel(CFG),
        _tc(epochs=4, select="best", select_metric="valid_accuracy", checkpoint_dir=str(tmp_path)),
        evaluate=Scores(scores[2:]),
    )
    more.load_checkpoint()
    more.fit(_data())
    np.testing.assert_array_equal(more.losses, whole.losses)  # not continued from the best epoch's weights
    assert more.selected_epoch == whole.selected_epoch == 1
    for k, v in whole.model.state_dict().items():
        np.testing.assert_array_equal(more.model.state_dict()[k], v)


def test_a_run_stopped_by_patience_stays_stopped_after_a_resume(tmp_path):
    cfg = _tc(epochs=6, patience=1, select_metric="valid_accuracy", checkpoint_dir=str(tmp_path))
    first = Trainer(SequenceModel(CFG), cfg, evaluate=Scores([0.5, 0.4] + [0.9] * 4))
    first.fit(_data())
    assert len(first.epochs) == 2 and first.stop_reason
    again = Trainer(SequenceModel(CFG), cfg, evaluate=Scores([0.9] * 6))
    again.load_checkpoint()
    again.fit(_data())
    assert again.step == first.step and len(again.epochs) == 2


def test_a_partial_epoch_neither_sets_the_best_nor_counts_for_patience(tmp_path):
    kw = dict(epochs=3, patience=1, select_metric="valid_accuracy")
    whole = Trainer(SequenceModel(CFG), _tc(**kw), evaluate=Scores([0.5, 0.6, 0.7]))
    whole.fit(_data())
    cut = Trainer(
        SequenceModel(CFG), _tc(max_steps=4, checkpoint_dir=str(tmp_path), **kw), evaluate=Scores([0.5, 0.6, 0.7, 0.8])
    )
    cut.fit(_data())  # stops inside epoch 1: a partial row
    more = Trainer(SequenceModel(CFG), _tc(checkpoint_dir=str(tmp_path), **kw), evaluate=Scores([0.6, 0.7, 0.8]))
    more.load_checkpoint()
    more.fit(_data())
    assert more.step == whole.step == 15 and [r["epoch"] for r in more.epochs] == [1, 2, 3]
    assert not any(r.get("partial") for r in more.epochs)


def test_a_non_finite_metric_stops_instead_of_winning():
    trainer = Trainer(
        SequenceModel(CFG),
        _tc(select="best", select_metric="valid_accuracy"),
        evaluate=Scores([float("nan"), 0.8, 0.9, 0.95]),
    )
    with pytest.raises(NonFiniteError, match="valid_accuracy=nan"):
        trainer.fit(_data())


def test_tbptt_checks_lengths():
    cfg = dataclasses.replace(DENSE, task="per_step", loss="mse")
    trainer = Trainer(SequenceModel(cfg), _tc(tbptt_k=2))
    x, y = np.zeros((2, 6, 3)), np.zeros((2, 6, 2))
    for bad in ([99, 3], [0, 3], [-5, 3]):
        with pytest.raises(ValueError, match="lengths"):
            trainer.train_batch(x, y, np.array(bad))
    assert trainer.step == 0


def test_loading_one_runs_checkpoint_does_not_license_overwriting_another(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(SequenceModel(CFG), _tc(epochs=1, checkpoint_dir=str(a))).fit(_data())
    Trainer(SequenceModel(CFG), _tc(epochs=1, checkpoint_dir=str(b))).fit(_data())
    before = (b / "checkpoint.npz").read_bytes()
    t = Trainer(SequenceModel(CFG), _tc(epochs=2, checkpoint_dir=str(b)))
    t.load_checkpoint(a / "checkpoint.npz")
    with pytest.raises(FileExistsError, match="another run"):
        t.fit(_data())
    assert (b / "checkpoint.npz").read_bytes() == before
