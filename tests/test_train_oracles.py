"""The training loop's numbers against a hand-written torch loop, and the checkpoint's trainer fields.

``Trainer`` (NumPy) and ``TorchTrainer`` (its torch backend) share the loop logic: comparing the two
with each other cannot see a bug in that logic. Here both are held to :func:`hand_loop`, a plain
torch training loop written out in this file (torch.optim, ``loss.backward()``, no ``scratch_rnn.train``
code): per-step losses, each epoch's sample-weighted mean loss and the VALUE of ``train_accuracy``,
the learning-rate schedule, ``select_mode="min"`` with patience, truncated BPTT with its carried state,
and the weights at the end. Batches differ in size (a short last batch) so that a plain mean of step
losses differs from the sample-weighted one. Then a checkpoint round trip whose every trainer field
(``step``, the optimizer's ``step_count``, ``history``, ``epochs``, the position, the selection) has a
different value on the two sides before the load.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from reference.models import draw_dropout_masks, to_tensor
from reference.training import TorchTrainer, twin_from_state
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import TrainConfig, Trainer

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CLS = ModelConfig(
    hidden_size=5,
    out_features=3,
    vocab_size=11,
    embedding_dim=3,
    num_layers=2,
    dropout=0.3,
    cell="gru",
    pooling="mean",
    dtype="float64",
    seed=2,
)
LM = ModelConfig(
    hidden_size=4,
    out_features=5,
    vocab_size=5,
    embedding_dim=3,
    num_layers=2,
    cell="lstm",
    task="per_step",
    dtype="float64",
    seed=3,
)


class Batches:
    """A batch source with other batches in every epoch, sizes 8, 8, 8, 5 (a short last batch)."""

    def __init__(self, cfg, T=6, seed=0, sizes=(8, 8, 8, 5)):
        self.cfg, self.T, self.seed, self.sizes = cfg, T, seed, sizes

    def batches(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        for B in self.sizes:
            x = rng.integers(1, self.cfg.vocab_size, (B, self.T))
            lengths = rng.integers(1, self.T + 1, B)
            lengths[0] = self.T
            y = rng.integers(0, self.cfg.out_features, B if self.cfg.task == "sequence" else (B, self.T))
            yield x, y, lengths

    def num_batches(self, epoch):
        return len(self.sizes)


def _metric_of(weights_sum_list):
    """An evaluate hook whose metric depends on the trained weights (so a wrong loop changes it) and goes
    down, then up: with select_mode="min" the selection and patience have work to do."""
    schedule = [3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.8, 1.9]

    def evaluate(model_state):
        e = len(weights_sum_list)
        weights_sum_list.append(model_state)
        return {"valid_loss": schedule[e] + 1e-9 * model_state}

    return evaluate


def hand_loop(cfg, init, source, *, epochs, lr, lr_decay, patience, tbptt_k=None, clip_norm=None):
    """The oracle: plain torch, written out. Returns per-step losses, epoch rows, the selected epoch, weights."""
    model = twin_from_state(cfg, init)
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=False)
    rng = SequenceModel(cfg).rng  # the scratch model's dropout generator, in its starting state
    losses, rows, seen = [], [], []
    best_value, best_epoch, best_state, stale = None, None, None, 0
    evaluate = _metric_of(seen)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * lr_decay**epoch
        loss_sum, count, correct = 0.0, 0, 0
        for x, y, lengths in source.batches(epoch):
            B, T = x.shape
            k = tbptt_k or T
            state = None
            for start in range(0, T, k):  # TBPTT(k, k): the ended sequences drop out; state carried, detached
                live = np.array([b for b in range(B) if lengths[b] > start])
                if live.size == 0:
                    break
                n = np.minimum(lengths[live] - start, k)
                xc, yc = x[live, start : start + k], (y[live, start : start + k] if cfg.task == "per_step" else y[live])
                h0 = None
                if state is not None:
                    h0 = tuple(torch.from_numpy(s[:, live]) for s in state)
                    h0 = h0 if cfg.cell == "lstm" else h0[0]
                opt.zero_grad()
                masks = draw_dropout_masks(rng, cfg, xc.shape[1], xc.shape[0], True)
                out, h_n = model(to_tensor(xc), h0, n, masks)
                loss = model.loss(out, yc, n)
                loss.backward()
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                opt.step()
                losses.append(loss.item())
                loss_sum += loss.item() * len(live)
                count += len(live)
                if cfg.task == "sequence":
                    correct += int((out.argmax(dim=1).numpy() == yc).sum())
                finals = h_n if isinstance(h_n, tuple) else (h_n,)
                if state is None:
                    LD = finals[0].shape[0]
                    state = [np.zeros((LD, B, f.shape[-1])) for f in finals]
                for s, f in zip(state, finals):
                    s[:, live] = f.detach().numpy()
        row = {"train_loss": loss_sum / count}
        if cfg.task == "sequence":
            row["train_accuracy"] = correct / count
        value = evaluate(float(sum(p.detach().sum() for p in model.parameters())))["valid_loss"]
        row["valid_loss"] = value
        rows.append(row)
        if best_value is None or value < best_value:
            best_value, best_epoch, stale = value, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    return dict(
        losses=losses,
        rows=rows,
        selected=best_epoch,
        weights={k: v.detach().numpy() for k, v in model.state_dict().items()},
    )


def _run_trainer(kind, cfg, init, source, train_cfg):
    seen = []
    evaluate = _metric_of(seen)
    if kind == "numpy":
        model = SequenceModel(cfg)
        model.load_state_dict(init)
        trainer = Trainer(
            model, train_cfg, evaluate=lambda m: evaluate(float(sum(p.sum() for p in m.parameters().values())))
        )
    else:
        trainer = TorchTrainer(
            twin_from_state(cfg, init),
            train_cfg,
            dropout_rng_state=SequenceModel(cfg).rng.bit_generator.state,
            evaluate=lambda m: evaluate(float(sum(p.detach().sum() for p in m.parameters()))),
        )
    trainer.fit(source)
    return trainer


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("cfg,tbptt_k", [(CLS, None), (LM, 4)], ids=["gru-classifier", "lstm-lm-tbptt4"])
def test_the_loop_equals_a_hand_written_torch_loop(kind, cfg, tbptt_k):
    init = SequenceModel(cfg).state_dict()
    source = Batches(cfg, T=6 if tbptt_k is None else 10)  # T = 10, k = 4: chunks 4, 4, 2
    lr, decay, patience, epochs = 0.03, 0.6, 2, 8
    expected = hand_loop(
        cfg, init, source, epochs=epochs, lr=lr, lr_decay=decay, patience=patience, tbptt_k=tbptt_k, clip_norm=0.5
    )
    tc = TrainConfig(
        optimizer="adam",
        optimizer_kwargs={"lr": lr},
        lr_decay=decay,
        epochs=epochs,
        progress=False,
        select="best",
        select_metric="valid_loss",
        select_mode="min",
        patience=patience,
        tbptt_k=tbptt_k,
        clip_norm=0.5,
    )
    trainer = _run_trainer(kind, cfg, init, source, tc)
    # 4 epochs: 3.0, 2.0, 2.5, 1.5 improve at 1, 2, 4; 1.6, 1.7 are stale; patience 2 stops after epoch 6
    assert expected["selected"] == 4 and len(expected["rows"]) == 6
    assert trainer.selected_epoch == expected["selected"]
    assert len(trainer.epochs) == len(expected["rows"])
    np.testing.assert_allclose(trainer.losses, expected["losses"], rtol=1e-9, err_msg="per-step losses")
    for got, want in zip(trainer.epochs, expected["rows"]):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9), (key, got, want)
        assert set(want) <= set(got)
    for k, v in expected["weights"].items():
        np.testing.assert_allclose(trainer.model_state()[k], v, rtol=1e-7, atol=1e-10, err_msg=k)


def test_train_accuracy_is_the_fraction_of_correct_samples_of_the_epoch():
    """The value, from the step outputs themselves: Σ correct / Σ batch sizes over the epoch's steps."""
    cfg = dataclasses.replace(CLS, num_layers=1, dropout=0.0)
    counts = []

    def record(trainer, rec):
        out, y = trainer.last_output.output, trainer._batch_y
        counts.append((rec.epoch, int((np.argmax(out, axis=1) == y).sum()), len(y)))

    model = SequenceModel(cfg)
    trainer = Trainer(
        model, TrainConfig(optimizer="sgd", optimizer_kwargs={"lr": 0.5}, epochs=3, progress=False), callback=record
    )
    source = Batches(cfg)
    orig = trainer.train_batch

    def train_batch(x, y, lengths=None):
        trainer._batch_y = np.asarray(y)
        return orig(x, y, lengths)

    trainer.train_batch = train_batch
    trainer.fit(source)
    for row in trainer.epochs:
        mine = [(c, n) for e, c, n in counts if e == row["epoch"]]
        assert row["train_accuracy"] == sum(c for c, _ in mine) / sum(n for _, n in mine)
    assert len({r["train_accuracy"] for r in trainer.epochs}) > 1  # the values move: a constant would not pass


@pytest.mark.parametrize(
    "mode,scores,selected",
    [("min", [0.9, 0.4, 0.6, 0.4], 2), ("max", [0.4, 0.9, 0.6, 0.9], 2), ("min", [0.5, 0.6, 0.7, 0.8], 1)],
)
def test_select_mode_picks_the_strictly_best_epoch(mode, scores, selected):
    it = iter(scores)
    states = []
    trainer = Trainer(
        SequenceModel(dataclasses.replace(CLS, num_layers=1, dropout=0.0)),
        TrainConfig(
            optimizer="sgd",
            optimizer_kwargs={"lr": 0.5},
            epochs=4,
            progress=False,
            select="best",
            select_metric="m",
            select_mode=mode,
        ),
        evaluate=lambda m: states.append(m.state_dict()) or {"m": next(it)},
    )
    trainer.fit(Batches(CLS))
    assert trainer.selected_epoch == selected
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(v, states[selected - 1][k], err_msg=k)


# ------------------------------------------------------------------------------------------------
# checkpoint round trip: every trainer field differs on the two sides before the load
# ------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_restores_every_trainer_field(tmp_path):
    cfg = dataclasses.replace(CLS, num_layers=1, dropout=0.0)
    scores = iter([0.2, 0.3, 0.25, 0.1, 0.9])  # epoch 2 is stale: a patience count of 1 to carry over
    tc = TrainConfig(
        optimizer="adam",
        optimizer_kwargs={"lr": 0.01},
        epochs=4,
        progress=False,
        max_steps=10,
        select="best",
        select_metric="v",
        select_mode="min",
        checkpoint_dir=str(tmp_path / "a"),
    )
    saved = Trainer(SequenceModel(cfg), tc, evaluate=lambda m: {"v": next(scores)})
    saved.fit(Batches(cfg))  # 2 full epochs (8 steps) and 2 steps of the third: stopped by max_steps
    path = saved.save_checkpoint()
    # the other side: a trainer that has run other steps on other data, so that nothing matches by accident
    other_tc = dataclasses.replace(tc, checkpoint_dir=str(tmp_path / "b"), max_steps=3)
    loaded = Trainer(SequenceModel(cfg), other_tc, evaluate=lambda m: {"v": 5.0})
    loaded.fit(Batches(cfg, seed=7, sizes=(3, 3, 3)))
    fields = ("step", "epoch", "batch_in_epoch", "first_loss", "stale_epochs", "last_finite_step")
    before = {f: getattr(loaded, f) for f in fields}
    assert all(
        before[f] != getattr(saved, f) for f in ("step", "epoch", "batch_in_epoch", "first_loss", "stale_epochs")
    )
    assert loaded.optimizer.step_count != saved.optimizer.step_count
    assert loaded.history != saved.history and loaded.epochs != saved.epochs
    loaded.config = tc  # the resume fields must agree; only the position differs
    loaded.load_checkpoint(path)
    for f in fields:
        assert getattr(loaded, f) == getattr(saved, f), f
    assert saved.step == 10 and saved.optimizer.step_count == 10
    assert loaded.optimizer.step_count == saved.optimizer.step_count
    assert loaded.history == saved.history
    assert loaded.epochs == saved.epochs
    assert saved.stale_epochs == 1
    assert loaded.best["value"] == saved.best["value"] and loaded.best["epoch"] == saved.best["epoch"] == 1
    for k, v in saved.best["state"].items():
        np.testing.assert_array_equal(loaded.best["state"][k], v, err_msg=k)
    assert loaded._sums.to_dict() == saved._sums.to_dict()
    for k, v in saved.model.state_dict().items():
        np.testing.assert_array_equal(loaded.model.state_dict()[k], v, err_msg=k)
    so, lo = saved.optimizer.state_dict(), loaded.optimizer.state_dict()
    for p, s in so["state"].items():
        for key, v in s.items():
            np.testing.assert_array_equal(lo["state"][p][key], v, err_msg=f"{p} {key}")
