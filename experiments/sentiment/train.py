"""Train the IMDB sentiment model with the NumPy stack, its torch twin, or both from the same start.

Model: ``scratch_rnn.models.SequenceModel`` (Embedding -> RNN -> pooling over each review's valid
steps -> Linear -> cross-entropy over 2 classes); the torch backend is its twin
``reference.models.TorchSequenceModel`` loaded with the very same initial ``state_dict``.

Data: the official split (``data.load_imdb`` / ``split_frames``); a stratified ``valid_fraction`` of
the 25,000 training reviews is held out (``data.random_split``) to choose the epoch, and the
25,000 test reviews are scored once, at the end, with the chosen weights. The vocabulary is built
from the remaining training reviews only (``text.prepare``).

Both backends see the same batches in the same order (:class:`SentimentBatches`, the batch source):
epoch e's bucketed batches come from ``default_rng([seed, 1, e])`` and its token dropout (tokens
replaced by ``<unk>``, a regularizer applied to the data as a batch transform, so identically for
both) from ``default_rng([seed, 2, e])``. Both are trained by the project's one loop:
``scratch_rnn.train.Trainer`` for NumPy, its torch twin ``reference.training.TorchTrainer`` (torch.optim,
autograd) for torch: the learning-rate schedule, the evaluation on the validation split after every
epoch, the choice of the best epoch, patience, the non-finite and divergence guard are the Trainer's.
The NumPy run also leaves its final checkpoint (``checkpoint.npz``: the last epoch's weights and
optimizer state, the history, and with ``select="best"`` the chosen epoch's weights under
``extra/best/``) in the run folder.

With ``backend="both"`` each backend runs in its own process (``isolate``), one after the other,
so that each reports its own time and peak memory (``ru_maxrss``: the process's peak resident set
size, data loading included; ``peak_memory_after_data_mb`` is the same high-water mark taken
before the model is built). A child dies with its parent.

The run folder is written whole or not at all: everything goes into a temporary folder beside it,
which replaces the run folder only when the run has finished; a run that fails or stops leaves an
earlier run of the same name as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratch_rnn.cells import cell_names, cell_spec
from scratch_rnn.checks import (
    check_bool,
    check_choice,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_real_in,
)
from scratch_rnn.cli import Stopped
from scratch_rnn.fileio import atomic_write_text

from .. import runfolder
from . import glove
from .data import PROJECT_ROOT

__all__ = [
    "SentimentConfig",
    "PRESETS",
    "BACKENDS",
    "STOPWORDS",
    "prepare_data",
    "build_initial_state",
    "SentimentBatches",
    "make_trainer",
    "run_backend",
    "run_experiment",
    "token_dropout",
    "RESULTS_ROOT",
]

BACKENDS = ("numpy", "torch", "both")
STOPWORDS = ("remove", "keep-negations", "keep")
EMBEDDINGS = ("random", "glove")
SELECT = ("best", "last")
RESULTS_ROOT = PROJECT_ROOT / "results" / "sentiment"


@dataclass(frozen=True)
class SentimentConfig:
    """One run: data, text pipeline, model, training. JSON-serialisable (``to_dict``/``from_dict``)."""

    backend: str = "numpy"
    # data and text pipeline
    data: str | None = None  # IMDB source; None: data.load_imdb's default (the shared copy)
    stopwords: str = "remove"  # remove (the notebook), keep-negations (not/no/nor, n't forms), keep
    max_vocab: int | None = 20_000
    min_freq: int = 2
    max_len: int = 400
    train_size: int | None = None  # stratified subsample of the official train split (None: all)
    test_size: int | None = None  # stratified subsample of the official test split (None: all 25,000)
    valid_fraction: float = 0.1  # of the training reviews, held out to choose the epoch (0: none)
    # model
    embedding: str = "random"  # random (N(0, 1), torch's init) or glove (glove.6B 50-d)
    embedding_dim: int = 50
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    nonlinearity: str = "tanh"  # of a cell that has one (rnn, indrnn)
    cell: str = "rnn"  # rnn (Elman), lstm or gru
    pooling: str = "mean"
    dropout: float = 0.0  # between RNN layers (num_layers > 1)
    dtype: str = "float32"
    # training
    optimizer: str = "adam"
    lr: float = 2e-3
    lr_decay: float = 1.0  # the learning rate of epoch e is lr * lr_decay ** (e - 1)
    weight_decay: float = 0.0
    clip_norm: float | None = 5.0
    batch_size: int = 64
    epochs: int = 4
    token_dropout: float = 0.15  # share of a training batch's tokens replaced by <unk>
    select: str = "best"  # best: the epoch with the best validation accuracy; last
    patience: int | None = None  # stop after this many epochs without a better validation accuracy
    eval_batch_size: int = 128
    seed: int = 0
    threads: int = 1  # BLAS threads (numpy) / torch.set_num_threads
    isolate: bool = True  # backend="both": each backend in its own process

    def __post_init__(self):
        # each check returns a plain Python value and the field keeps it: np.int64 / np.bool_ given
        # here (a loop over np.arange) never reach config.json or a checkpoint
        def keep(name: str, value) -> None:
            object.__setattr__(self, name, value)

        for name, options in (
            ("backend", BACKENDS),
            ("stopwords", STOPWORDS),
            ("embedding", EMBEDDINGS),
            ("select", SELECT),
            ("cell", cell_names()),
            ("pooling", ("last", "mean", "max")),
            ("dtype", ("float32", "float64")),
            ("optimizer", ("sgd", "adam", "adamw", "adagrad", "rmsprop")),
        ):
            check_choice(name, getattr(self, name), options)
        nonlinearities = cell_spec(self.cell).options.get("nonlinearity")
        if nonlinearities is None and self.nonlinearity != "tanh":
            raise ValueError(
                f"nonlinearity: cell={self.cell!r} has none (its gates are its own), got {self.nonlinearity!r}"
            )
        check_choice("nonlinearity", self.nonlinearity, nonlinearities or ("tanh",))
        for name in ("bidirectional", "isolate"):
            keep(name, check_bool(name, getattr(self, name)))
        if self.data is not None and not isinstance(self.data, (str, os.PathLike)):
            raise TypeError(f"data: expected a path or None, got {self.data!r}")
        for name in (
            "min_freq",
            "embedding_dim",
            "hidden_size",
            "num_layers",
            "batch_size",
            "epochs",
            "eval_batch_size",
            "threads",
            "max_len",
        ):
            keep(name, check_positive_int(name, getattr(self, name)))
        # None is "off" (all reviews, no early stop, no vocabulary limit); 0 is refused, never read as "off"
        for name in ("train_size", "test_size", "patience"):
            keep(name, check_positive_int(name, getattr(self, name), allow_none=True))
        keep("seed", check_non_negative_int("seed", self.seed))
        if self.max_vocab is not None:
            try:
                keep("max_vocab", check_positive_int("max_vocab", self.max_vocab))
                ok = self.max_vocab >= 3
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"max_vocab: counts <pad> and <unk>, expected an integer >= 3 or None (every token "
                    f"seen min_freq times), got {self.max_vocab!r}"
                )
        if self.train_size is not None and self.train_size < 4:
            raise ValueError(f"train_size: expected at least 4 reviews, got {self.train_size}")
        keep("valid_fraction", check_probability("valid_fraction", self.valid_fraction, below_one=True))
        if self.select == "best" and self.valid_fraction == 0:
            raise ValueError(
                "select='best' chooses the epoch on the validation set: give valid_fraction > 0 or select='last'"
            )
        if self.patience is not None and self.valid_fraction == 0:
            raise ValueError("patience needs a validation set (valid_fraction > 0)")
        for name in ("dropout", "token_dropout"):
            keep(name, check_probability(name, getattr(self, name), below_one=True))
        keep("lr", check_positive_float("lr", self.lr))
        keep("clip_norm", check_positive_float("clip_norm", self.clip_norm, allow_none=True))
        keep("weight_decay", check_non_negative_float("weight_decay", self.weight_decay))
        keep("lr_decay", check_real_in("lr_decay", self.lr_decay, 0.0, 1.0, low_open=True))
        if self.embedding == "glove" and self.embedding_dim != glove.DIM:
            raise ValueError(
                f"embedding_dim: the GloVe vectors are {glove.DIM}-d, so embedding='glove' needs "
                f"embedding_dim={glove.DIM}, got {self.embedding_dim}"
            )

    # -- derived configurations ------------------------------------------------------------------
    def text_config(self):
        from .text import TextConfig

        return TextConfig(
            remove_stopwords=self.stopwords != "keep",
            keep_negations=self.stopwords == "keep-negations",
            max_vocab=self.max_vocab,
            min_freq=self.min_freq,
            max_len=self.max_len,
        )

    def model_config(self, vocab_size: int):
        from scratch_rnn.models import ModelConfig

        return ModelConfig(
            hidden_size=self.hidden_size,
            out_features=2,
            vocab_size=vocab_size,
            embedding_dim=self.embedding_dim,
            num_layers=self.num_layers,
            nonlinearity=self.nonlinearity,
            cell=self.cell,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            pooling=self.pooling,
            task="sequence",
            loss="cross_entropy",
            padding_idx=0,
            dtype=self.dtype,
            seed=self.seed,
        )

    def optimizer_kwargs(self) -> dict:
        kw = {"lr": self.lr}
        if self.weight_decay or self.optimizer == "adamw":  # AdamW's own default decay is 1e-2: be explicit
            kw["weight_decay"] = self.weight_decay
        return kw

    def train_config(self, *, progress: bool = False, checkpoint_dir=None, validation: bool | None = None):
        """The Trainer's configuration: optimizer, clipping, epochs, schedule, selection, patience, guard.

        ``validation``: whether a validation split is evaluated (default: valid_fraction > 0); without
        one the last epoch is kept and there is no patience.
        """
        from scratch_rnn.train import TrainConfig

        validation = self.valid_fraction > 0 if validation is None else validation
        return TrainConfig(
            optimizer=self.optimizer,
            optimizer_kwargs=self.optimizer_kwargs(),
            clip_norm=self.clip_norm,
            batch_size=self.batch_size,
            epochs=self.epochs,
            seed=self.seed,
            lr_decay=self.lr_decay,
            select=self.select if validation else "last",
            select_metric="valid_accuracy" if validation else None,
            patience=self.patience if validation else None,
            on_nonfinite="stop",
            progress=progress,
            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
        )

    def default_run_name(self) -> str:
        parts = [self.embedding, self.stopwords, self.backend, f"seed{self.seed}"]
        if self.cell != "rnn":
            parts.insert(0, self.cell)
        if self.train_size:
            parts.insert(0, f"n{self.train_size}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SentimentConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"SentimentConfig: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes) -> SentimentConfig:
        return dataclasses.replace(self, **changes)


#: Named starting points; explicit options override them. ``full``: the reported run; ``quick``:
#: the reduced real run of the CI test (3,000 training reviews, one epoch, 2,000 test reviews).
PRESETS = {
    "full": {},
    "quick": dict(
        train_size=3000,
        test_size=2000,
        valid_fraction=0.0,
        select="last",
        epochs=1,
        max_vocab=8000,
        max_len=200,
        embedding="random",
        embedding_dim=32,
        hidden_size=32,
        batch_size=32,
        lr=1e-2,
        token_dropout=0.0,
    ),
}


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def assign_splits(cfg: SentimentConfig, df) -> tuple[np.ndarray, np.ndarray]:
    """(split, keep): every row's split name after the validation hold-out, and the rows the run uses
    (the stratified ``train_size`` / ``test_size`` subsamples).

    Raises ValueError naming ``valid_fraction`` when the hold-out leaves no review to train on, or
    holds out none although ``valid_fraction > 0`` (the epoch would be chosen on nothing).
    """
    from .data import random_split, split_frames, stratified_pick

    split_frames(df)  # raises when the source has no official split
    split = df["split"].to_numpy(dtype=object).copy()
    labels = df["label"].to_numpy()
    rng = np.random.default_rng([cfg.seed, 3])
    keep = np.zeros(len(df), dtype=bool)
    for name, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        rows = np.flatnonzero(split == name)
        if size is not None and size < len(rows):
            rows = np.sort(rows[stratified_pick(labels[rows], size, rng)])
        keep[rows] = True
    if cfg.valid_fraction > 0:
        train_rows = np.flatnonzero(keep & (split == "train"))
        sub = random_split(
            df.iloc[train_rows],
            test_fraction=cfg.valid_fraction,
            seed=cfg.seed,
            split_names=("train", "valid"),
            only_missing=False,
        )
        split[train_rows] = sub["split"].to_numpy(dtype=object)
        n_train, n_valid = int(np.sum(split[train_rows] == "train")), int(np.sum(split[train_rows] == "valid"))
        if n_train == 0 or n_valid == 0:
            raise ValueError(
                f"valid_fraction: {cfg.valid_fraction:g} of the {len(train_rows)} training reviews holds out "
                f"{n_valid} for validation (stratified, rounded per label) and leaves {n_train} to train on; "
                f"both need at least one: {'lower' if n_train == 0 else 'raise'} valid_fraction or use more "
                "training reviews (train_size)"
            )
    return split, keep


def prepare_data(cfg: SentimentConfig, *, progress: bool = True, df=None):
    """(PreparedData with splits train / valid (when valid_fraction > 0) / test, info dict).

    Reviews keep the order of the source, so that the full run reuses the token cache of any other
    ``prepare(load_imdb(), ...)`` with the same tokenization settings.
    """
    import pandas as pd

    from .data import load_imdb
    from .text import prepare

    if df is None:
        df = load_imdb(cfg.data)
    split, keep = assign_splits(cfg, df)
    work = df.loc[keep, ["review", "label"]].copy()
    work["split"] = pd.Series(split[keep], index=work.index, dtype=object)
    work = work.reset_index(drop=True)
    data = prepare(work, cfg.text_config(), progress=progress)
    info = {"source": str(df.attrs.get("source", cfg.data)), **data.summary()}
    return data, info


def token_dropout(x: np.ndarray, lengths: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of the padded batch ``x`` with each valid token replaced by ``<unk>`` with probability p."""
    from .text import UNK_ID

    if p <= 0:
        return x
    drop = rng.random(x.shape) < p
    drop &= np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]
    out = x.copy()
    out[drop] = UNK_ID
    return out


class SentimentBatches:
    """The training reviews as the Trainer's batch source: epoch e (0-based) is the experiment's epoch e + 1.

    Batches (x, y, lengths): length-bucketed from ``default_rng([seed, 1, e + 1])``, token dropout
    from ``default_rng([seed, 2, e + 1])``; the same for both backends and every time they are asked for.
    """

    def __init__(self, split, cfg: SentimentConfig):
        self.split, self.cfg = split, cfg

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.split) // self.cfg.batch_size)

    def batches(self, epoch: int):
        cfg = self.cfg
        order_rng = np.random.default_rng([cfg.seed, 1, epoch + 1])
        drop_rng = np.random.default_rng([cfg.seed, 2, epoch + 1])
        for x, y, lengths in self.split.batches(cfg.batch_size, order_rng):
            yield token_dropout(x, lengths, cfg.token_dropout, drop_rng), y, lengths

    def fingerprint(self) -> str:
        from scratch_rnn.train import array_fingerprint

        s = self.split
        return array_fingerprint(np.concatenate(s.ids) if len(s.ids) else np.zeros(0, np.int64), s.lengths, s.labels)


def build_initial_state(cfg: SentimentConfig, vocab) -> tuple[dict, dict]:
    """The initial weights (state_dict of ``SequenceModel(model_config)``, GloVe rows when asked) and info."""
    from scratch_rnn.models import SequenceModel

    model = SequenceModel(cfg.model_config(len(vocab)))
    info = {"embedding": cfg.embedding}
    if cfg.embedding == "glove":
        from .glove import embedding_matrix, load_glove

        words, vectors = load_glove()
        matrix, stats = embedding_matrix(vocab.itos, words, vectors, seed=[cfg.seed, 4])
        model.parameters()["embedding.weight"][...] = matrix
        info.update({f"glove_{k}": v for k, v in stats.items()})
    state = model.state_dict()
    info["init_checksum"] = state_checksum(state)
    info["parameters"] = int(sum(v.size for v in state.values()))
    return state, info


def state_checksum(state) -> str:
    """A checksum of a state dict's arrays (the two backends record it: the same initial weights)."""
    from scratch_rnn.train import array_fingerprint

    return array_fingerprint(*state.values())


# ------------------------------------------------------------------------------------------------
# the two backends: one loop (scratch_rnn.train.Trainer and its torch twin)
# ------------------------------------------------------------------------------------------------
def make_model(name: str, model_config, state: dict):
    """The NumPy SequenceModel or its torch twin, holding ``state``."""
    if name == "numpy":
        from scratch_rnn.models import SequenceModel

        model = SequenceModel(model_config)
        model.load_state_dict(state)
        return model
    import torch

    from reference.training import twin_from_state

    dtype = torch.float32 if model_config.dtype == "float32" else torch.float64
    return twin_from_state(model_config, state, dtype)


def logits_fn(name: str, model):
    """(x, lengths) -> logits (B, 2) as NumPy, in eval mode (the caller sets it)."""
    if name == "numpy":
        return lambda x, lengths: model(x, lengths=lengths)[0]
    import torch

    def torch_logits(x, lengths):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x)), lengths=lengths)[0].numpy()

    return torch_logits


def make_trainer(
    name: str, cfg: SentimentConfig, model_config, state: dict, *, valid=None, progress=False, checkpoint_dir=None
):
    """The Trainer (numpy) or TorchTrainer (torch) of one backend, from the same initial ``state``.

    With a validation split, ``evaluate`` scores it after every epoch (valid_loss, valid_accuracy).
    The torch twin draws its dropout masks from a generator in the scratch model's initial state.
    """
    from scratch_rnn.models import SequenceModel

    model = make_model(name, model_config, state)
    logits = logits_fn(name, model)

    def evaluate_valid(m):
        ev = evaluate(m, logits, valid, cfg.eval_batch_size)
        return {"valid_loss": ev["loss"], "valid_accuracy": ev["accuracy"]}

    hooks = dict(evaluate=evaluate_valid if valid is not None else None)
    if name == "numpy":
        from scratch_rnn.train import Trainer

        return Trainer(
            model,
            cfg.train_config(progress=progress, checkpoint_dir=checkpoint_dir, validation=valid is not None),
            **hooks,
        )
    from reference.training import TorchTrainer

    rng_state = SequenceModel(model_config).rng.bit_generator.state  # the scratch model's dropout generator
    return TorchTrainer(
        model, cfg.train_config(progress=progress, validation=valid is not None), dropout_rng_state=rng_state, **hooks
    )


def set_threads(backend: str, n: int):
    """Limit BLAS (numpy) / torch intra-op threads to ``n``; returns the threadpoolctl limiter (keep it)."""
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass
    if backend == "torch":
        import torch

        torch.set_num_threads(n)
    return limiter


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def _ce_and_correct(logits: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum()), int((z.argmax(axis=1) == y).sum())


def evaluate(model, logits, split, batch_size: int, *, return_predictions: bool = False):
    """Mean cross-entropy and accuracy on ``split`` in eval mode (``logits(x, lengths)``), optionally predictions."""
    model.train(False)
    total_loss, correct = 0.0, 0
    preds = np.empty(len(split), dtype=np.int8) if return_predictions else None
    # bucketed for little padding; the order does not matter, predictions go back by position
    s = split
    packed = np.stack([s.labels, np.arange(len(s))], axis=1)
    from .text import iterate_batches

    try:
        for x, packed_b, lengths in iterate_batches(s.ids, s.lengths, packed, batch_size, np.random.default_rng(0)):
            y, pos = packed_b[:, 0], packed_b[:, 1]
            z = logits(x, lengths)
            loss, ok = _ce_and_correct(z, y)
            total_loss += loss
            correct += ok
            if preds is not None:
                preds[pos] = np.argmax(z, axis=1)
    finally:
        model.train(True)
    n = len(split)
    return {"loss": total_loss / n, "accuracy": correct / n, "predictions": preds}


def _rss_mb() -> float:
    """ru_maxrss: the peak resident set size of this process so far (KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_backend(
    cfg: SentimentConfig,
    backend_name: str,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    data=None,
    data_info=None,
) -> dict:
    """Train one backend, choose the epoch, score the test split once; write its files; return its entry.

    Files in ``out_dir``: ``steps_<backend>.csv`` (step, epoch, loss, grad_norm: the pre-clip global
    L2 norm), ``epochs_<backend>.csv``, ``predictions_<backend>.npy`` (test predictions, in the
    order of the test split), ``result_<backend>.json`` (the metrics entry) and, for numpy,
    ``checkpoint.npz`` (the last epoch's weights and optimizer state, the history, and the chosen
    epoch's weights under ``extra/best/``: the trainer's checkpoint, from which a resume continues).
    """
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    limiter = set_threads(backend_name, cfg.threads)  # noqa: F841 (kept alive for the whole run)
    if backend_name == "torch" and cfg.dtype == "float32":
        import torch

        torch.set_flush_denormal(True)  # scratch_rnn flushes tiny float32 gradients too (RNN.flush_below)
    if data is None:
        data, data_info = prepare_data(cfg, progress=progress)
    t_data = time.perf_counter() - t_start
    rss_data = _rss_mb()
    state, init_info = build_initial_state(cfg, data.vocab)
    mc = cfg.model_config(len(data.vocab))
    train, valid, test = data["train"], data.splits.get("valid"), data["test"]
    trainer = make_trainer(
        backend_name,
        cfg,
        mc,
        state,
        valid=valid,
        progress=progress,
        checkpoint_dir=out_dir if backend_name == "numpy" else None,
    )
    if progress:
        print(f"[{backend_name}] training: {len(train)} reviews, {cfg.epochs} epoch(s)", file=sys.stderr)
    trainer.fit(SentimentBatches(train, cfg))
    epochs = trainer.epochs
    selected = trainer.selected_epoch
    t0 = time.perf_counter()
    ev = evaluate(
        trainer.model, logits_fn(backend_name, trainer.model), test, cfg.eval_batch_size, return_predictions=True
    )
    t_test = time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    sel_row = epochs[selected - 1]

    steps = [(r.step, r.epoch, r.loss, r.grad_norm) for r in trainer.history]
    pd.DataFrame(steps, columns=["step", "epoch", "loss", "grad_norm"]).to_csv(
        out_dir / f"steps_{backend_name}.csv", index=False
    )
    pd.DataFrame(epochs).to_csv(out_dir / f"epochs_{backend_name}.csv", index=False)
    np.save(out_dir / f"predictions_{backend_name}.npy", ev["predictions"])
    entry = {
        "backend": backend_name,
        "test_accuracy": ev["accuracy"],
        "test_loss": ev["loss"],
        "test_size": len(test),
        "train_size": len(train),
        "valid_size": 0 if valid is None else len(valid),
        "valid_accuracy": sel_row.get("valid_accuracy"),
        "epochs": len(epochs),
        "selected_epoch": selected,
        "stopped_early": trainer.stop_reason,
        "steps": trainer.step,
        "seconds": seconds,
        "seconds_data": t_data,
        "seconds_train": sum(r["seconds"] for r in epochs),
        "seconds_eval": sum(r.get("eval_seconds", 0.0) for r in epochs) + t_test,
        "cpu_seconds": _cpu_seconds() - cpu_start,
        "peak_memory_mb": _rss_mb(),
        "peak_memory_after_data_mb": rss_data,
        "peak_memory_measure": "ru_maxrss of the process (peak resident set size, data loading included)",
        "threads": cfg.threads,
        "dtype": cfg.dtype,
        "versions": _versions(backend_name),
        **init_info,
        "data": data_info,
    }
    atomic_write_text(out_dir / f"result_{backend_name}.json", json.dumps(entry, indent=1, default=_json_default))
    return entry


def _versions(backend_name: str) -> dict:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    if backend_name == "torch":
        import torch

        v["torch"] = torch.__version__
    return v


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _child(cfg_dict: dict, backend_name: str, out_dir: str, progress: bool) -> None:
    """Entry point of a backend's own process (spawned): results go to out_dir's files; dies with its parent."""
    from experiments.process import die_with_parent

    die_with_parent()
    run_backend(SentimentConfig.from_dict(cfg_dict), backend_name, out_dir, progress=progress)


class BackendFailed(Stopped):
    """A backend's own process failed (exit 1)."""


def run_experiment(
    cfg: SentimentConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    argv: list[str] | None = None,
    overwrite: bool = False,
    owned=None,
) -> dict:
    """Run ``cfg.backend`` (one or both, in order numpy then torch), then write config.json,
    metrics.json, steps.csv (both backends side by side) and the plots. Returns the metrics.

    The run owns ``out_dir`` from start to end (``runfolder.claim``: a run of the same name in
    progress refuses this one with :class:`~scratch_rnn.runlock.RunInUse`, overwrite or not);
    ``owned`` is that lock when the caller has already taken it. Everything is written into a
    temporary folder beside ``out_dir`` that replaces ``out_dir`` only once the run has finished
    (an existing ``out_dir`` needs ``overwrite``); a run that fails removes its temporary folder and
    leaves ``out_dir`` as it was.
    """
    out_dir = Path(out_dir)
    lock = owned if owned is not None and owned.held else runfolder.claim(out_dir)
    try:
        runfolder.recover(out_dir)  # what a killed earlier run of this name may have left
        if out_dir.exists() and not overwrite:
            raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) or another run name")
        work = runfolder.make_partial_dir(out_dir)
        try:
            metrics = _run_into(cfg, work, progress=progress, argv=argv, run_name=out_dir.name)
            runfolder.replace_dir(work, out_dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    finally:
        if lock is not owned:
            lock.release()
    return metrics


def _run_into(cfg: SentimentConfig, out_dir: Path, *, progress: bool, argv, run_name: str) -> dict:
    from . import report

    backends = ["numpy", "torch"] if cfg.backend == "both" else [cfg.backend]
    config = {
        "sentiment": cfg.to_dict(),
        "text": dataclasses.asdict(cfg.text_config()),
        "train": cfg.train_config().to_dict(),
        "command": argv,
        "backends": backends,
        "isolated_processes": cfg.backend == "both" and cfg.isolate,
    }
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=1, default=_json_default))
    entries = []
    if len(backends) > 1 and cfg.isolate:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        for b in backends:
            p = ctx.Process(target=_child, args=(cfg.to_dict(), b, str(out_dir), progress), name=f"sentiment-{b}")
            p.start()
            try:
                p.join()
            finally:
                if p.is_alive():  # interrupted while waiting: the child goes too
                    p.kill()
                    p.join()
            if p.exitcode != 0:
                raise BackendFailed(
                    f"the {b} backend's process exited with status {p.exitcode} (see its messages above)"
                )
            entries.append(json.loads((out_dir / f"result_{b}.json").read_text()))
    else:
        data, info = prepare_data(cfg, progress=progress)
        for b in backends:
            entry = run_backend(cfg, b, out_dir, progress=progress, data=data, data_info=info)
            if len(backends) > 1:
                entry["peak_memory_measure"] += " (one process for both backends: the high-water mark so far)"
            entries.append(entry)
    metrics = {"run": run_name, "results": entries}
    if len(entries) == 2:
        metrics["comparison"] = report.compare(out_dir, entries)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=_json_default))
    report.write_steps_table(out_dir, backends)
    report.plot_curves(out_dir, backends)
    report.plot_grad_norms(out_dir, backends, cfg.clip_norm)
    return metrics
