"""The training loop: the one NumPy loop every experiment composes (its torch twin: ``reference.training``).

One *step* is one optimizer update: one batch, or with truncated BPTT one chunk of a batch. At every
step the trainer records the loss and the global L2 norm of the gradient BEFORE any clipping
(``history``, and a CSV when ``log_csv`` is set). An *epoch* is one pass over the batch source; at
its end the trainer records the epoch's mean training loss (and accuracy, for a classifier), runs
the ``evaluate`` hook, keeps the best weights (``select="best"``), counts epochs without
improvement (``patience``) and asks ``stop_when``; ``lr_decay`` sets epoch e's learning rate to
``lr * lr_decay ** (e - 1)``.

Batches: ``fit(data)`` takes a :class:`Dataset` (arrays, cut into ``batch_size`` batches in an
order drawn per epoch from ``default_rng([seed, epoch])``) or any *batch source*: an object with
``batches(epoch)`` yielding ``(x, y, lengths)`` tuples, the same ones every time it is asked for the
same epoch (that is what makes a resume exact), and optionally ``num_batches(epoch)`` (the progress
bar) and ``fingerprint()`` (a resume refuses other data). A transform such as token dropout belongs
in the source. ``run(batches)`` trains on an explicit sequence of batches.

Truncated BPTT (``tbptt_k = k``), Williams & Peng's TBPTT(k, k): each batch of long sequences is
cut into chunks of k steps; every chunk is a forward, a backward through that chunk only and an
optimizer step, and the final hidden state is carried into the next chunk as its h0 without
carrying gradient (torch's ``h.detach()``). Sequences that have ended drop out of later chunks;
each chunk's loss is the mean over its own valid steps. The state starts at zero for every batch.
Needs ``task="per_step"``. With k >= T it is exactly full BPTT.

The guard. A NaN/inf loss, model output or gradient (and the ``FloatingPointError`` the RNN raises
when its recurrence or its backward overflows) is caught before the optimizer runs:
``on_nonfinite="stop"`` raises :class:`NonFiniteError`; ``"skip"`` drops the step (no update,
optimizer state untouched) and counts it, and a run that skipped more than
``max_skipped_fraction`` of its steps stops with :class:`TooManySkippedError` (checked at the end of
every epoch and of ``fit``/``run``). Divergence: a step whose finite loss exceeds
``divergence_factor × max(the run's first loss, 1)`` stops with :class:`DivergenceError` before its
update. Parameters that become non-finite after an update always stop training. Every stop names
the step, the last finite gradient norm and the last good checkpoint, which is kept as it is; all
are :class:`TrainingStopped` (exit status 1 in every command line). So is a checkpoint the
environment refuses to hold (a full disk, a file-size limit: :class:`CheckpointNotWritten`): the
previous checkpoint stays whole and a resume continues from it.

Checkpoints (``checkpoint_dir``): ``checkpoint.npz`` is rewritten atomically every
``checkpoint_every`` steps and at the end, at batch boundaries. It holds the model, the optimizer,
the position (epoch, batch), the model's dropout generator, the history, the epoch rows, the best
weights so far and the data's fingerprint, so that :meth:`Trainer.load_checkpoint` then
:meth:`Trainer.fit` continues bit for bit like the uninterrupted run. A trainer that did not load
the checkpoint in its folder refuses to start over it (or over an existing ``log_csv``) unless
``overwrite=True``: a finished run is never replaced by accident. While it writes them, a trainer owns its
checkpoint folder and its log (:mod:`scratch_rnn.runlock`: another run, overwrite or not, is refused with
``RunInUse`` naming the owner); a resume writes an existing log only when its rows are the checkpoint's
history; an interrupted ``fit``/``run`` (Ctrl-C) cuts the log back to the checkpoint's step.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import errno
import hashlib
import io
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import checkpoint as ckpt
from .checks import (
    check_bool,
    check_choice,
    check_lengths,
    check_non_negative_int,
    check_norm_type,
    check_positive_float,
    check_positive_int,
    check_real_in,
    plain_json,
    plain_scalar,
)
from .cli import BadInput, Stopped, as_bad_input, input_file, output_dir, output_file, run_main
from .fileio import atomic_write_text, remove_stale_temporaries
from .optim import OPTIMIZERS, clip_grad_norm_, clip_grad_value_, make_optimizer, total_norm
from .runlock import RunLock, beside_lock_path, folder_lock_path

__all__ = [
    "TrainConfig",
    "Trainer",
    "Dataset",
    "ArrayBatches",
    "StepRecord",
    "TrainingStopped",
    "NonFiniteError",
    "DivergenceError",
    "TooManySkippedError",
    "CheckpointNotWritten",
    "tbptt_chunks",
    "main",
]

CHECKPOINT_NAME = "checkpoint.npz"
TRAINER_STATE_VERSION = 2
# TrainConfig fields a resumed run must share with the checkpoint (the others may change: more
# epochs, another max_steps, another log file...).
RESUME_FIELDS = (
    "optimizer",
    "optimizer_kwargs",
    "clip_norm",
    "clip_norm_type",
    "clip_value",
    "tbptt_k",
    "batch_size",
    "shuffle",
    "seed",
    "on_nonfinite",
    "lr_decay",
    "select",
    "select_metric",
    "select_mode",
    "patience",
    "divergence_factor",
)


# ----------------------------------------------------------------------------------------------
# stops
# ----------------------------------------------------------------------------------------------
class TrainingStopped(Stopped):
    """Training stopped short; the message names the step, the last finite gradient norm and the checkpoint kept."""

    what = "stopped"
    advice = "Lower the learning rate or clip gradients (clip_norm)."

    def __init__(
        self,
        step: int,
        reason: str,
        last_finite_grad_norm: float | None,
        last_finite_step: int | None,
        checkpoint: str | None,
        checkpoint_step: int | None,
    ):
        self.step = step
        self.reason = reason
        self.last_finite_grad_norm = last_finite_grad_norm
        self.last_finite_step = last_finite_step
        self.checkpoint = checkpoint
        norm = (
            "none (no step had finished)"
            if last_finite_grad_norm is None
            else f"{last_finite_grad_norm:.6g} (step {last_finite_step})"
        )
        kept = (
            f"the last good checkpoint {checkpoint!r} (step {checkpoint_step}) was kept"
            if checkpoint
            else "no checkpoint had been written"
        )
        super().__init__(
            f"training stopped at step {step}: {self.what}: {reason}. Last finite gradient norm: "
            f"{norm}; {kept}. {self.advice}"
        )


class NonFiniteError(TrainingStopped):
    """A NaN/inf loss, output or gradient, with ``on_nonfinite="stop"``."""

    what = "non-finite values"
    advice = "Lower the learning rate, clip gradients (clip_norm) or set on_nonfinite='skip'."


class DivergenceError(TrainingStopped):
    """A finite loss past ``divergence_factor`` times the run's start."""

    what = "divergence"


class CheckpointNotWritten(TrainingStopped):
    """The environment refused the checkpoint (a full disk, a file-size or disk quota, a read-only
    folder: ``ENOSPC``, ``EFBIG``, ``EDQUOT``, ...). The previous checkpoint is kept as it was."""

    what = "the checkpoint could not be written"
    advice = "Free disk space or raise the file-size limit, then resume (--resume / load_checkpoint)."


class TooManySkippedError(TrainingStopped):
    """``on_nonfinite="skip"`` skipped more than ``max_skipped_fraction`` of the steps."""

    what = "too many skipped steps"
    advice = "The data or the learning rate make most steps non-finite: the result would not mean anything."


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """How to train. ``optimizer_kwargs`` are the optimizer's torch-named hyperparameters (lr, ...)."""

    optimizer: str = "adam"
    optimizer_kwargs: dict = field(default_factory=lambda: {"lr": 1e-3})
    clip_norm: float | None = None  # clip_grad_norm_(max_norm=clip_norm, norm_type=clip_norm_type)
    clip_norm_type: float = 2.0
    clip_value: float | None = None  # clip_grad_value_ (applied before clip_norm when both are set)
    tbptt_k: int | None = None  # truncated BPTT chunk length; None: full BPTT
    epochs: int = 1
    batch_size: int = 32  # for a Dataset; a batch source makes its own batches
    shuffle: bool = True
    seed: int = 0  # seeds the data order of a Dataset (per epoch: [seed, epoch])
    max_steps: int | None = None  # stop after this many steps (checked at batch boundaries)
    lr_decay: float = 1.0  # epoch e (1-based) trains at lr * lr_decay ** (e - 1)
    select: str = "last"  # "last", or "best": end with the weights of the best evaluated epoch
    select_metric: str | None = None  # the evaluate() key that "best" and patience watch
    select_mode: str = "max"  # "max" or "min" (strict improvement counts)
    patience: int | None = None  # stop after this many evaluated epochs without improvement
    divergence_factor: float | None = 1e4  # stop when a loss exceeds this × max(first loss, 1); None: off
    max_skipped_fraction: float = 0.1  # with on_nonfinite="skip": stop when more steps were skipped
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end
    on_nonfinite: str = "stop"  # "stop" or "skip"
    overwrite: bool = False  # start over an existing checkpoint / log of another run
    log_csv: str | None = None
    progress: bool = True  # a tqdm progress bar

    def __post_init__(self):
        # every check returns a plain Python value and the field keeps it: a NumPy scalar given here
        # (np.int64 from a loop over np.arange) never reaches the JSON of a checkpoint
        if str(self.optimizer).lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        self.optimizer = str(self.optimizer).lower()
        if not isinstance(self.optimizer_kwargs, dict):
            raise TypeError(f"optimizer_kwargs: expected a dict, got {type(self.optimizer_kwargs).__name__}")
        self.optimizer_kwargs = plain_json("optimizer_kwargs", self.optimizer_kwargs)  # betas tuple -> list, as JSON
        for name in ("clip_norm", "clip_value", "divergence_factor"):
            setattr(self, name, check_positive_float(name, getattr(self, name), allow_none=True))
        self.clip_norm_type = check_norm_type("clip_norm_type", self.clip_norm_type)
        for name in ("epochs", "batch_size"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        for name in ("tbptt_k", "max_steps", "patience"):
            setattr(self, name, check_positive_int(name, getattr(self, name), allow_none=True))
        for name in ("checkpoint_every", "seed"):
            setattr(self, name, check_non_negative_int(name, getattr(self, name)))
        for name in ("shuffle", "progress", "overwrite"):
            setattr(self, name, check_bool(name, getattr(self, name)))
        check_choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        check_choice("select", self.select, ("last", "best"))
        check_choice("select_mode", self.select_mode, ("max", "min"))
        if (self.select == "best" or self.patience is not None) and not isinstance(self.select_metric, str):
            raise ValueError(
                f"select_metric: select='best' and patience watch an evaluate() metric: name it, got "
                f"{self.select_metric!r}"
            )
        self.lr_decay = check_real_in("lr_decay", self.lr_decay, 0.0, 1.0, low_open=True)
        self.max_skipped_fraction = check_real_in("max_skipped_fraction", self.max_skipped_fraction, 0.0, 1.0)
        for name in ("checkpoint_dir", "log_csv"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise TypeError(f"{name}: expected a path or None, got {v!r}")
            if v is not None:
                setattr(self, name, os.fspath(v))  # a pathlib.Path is kept as its text: JSON holds that

    @property
    def lr(self) -> float:
        return float(self.optimizer_kwargs.get("lr", OPTIMIZERS[self.optimizer].defaults["lr"]))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["clip_norm_type"] = "inf" if d["clip_norm_type"] == math.inf else d["clip_norm_type"]  # JSON has no inf
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict):
            raise TypeError(f"TrainConfig: expected a JSON object (dict) of fields, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        return cls(**d)


@dataclass
class StepRecord:
    step: int  # 1-based optimizer step
    epoch: int  # 1-based
    loss: float  # NaN when skipped
    grad_norm: float  # global L2 norm of the gradient before clipping; NaN when skipped
    skipped: bool = False


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Arrays with one row per sequence: x (N, T) int | (N, T, I) float, y (N, ...), lengths (N,) or None."""

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None

    def __post_init__(self):
        self.x, self.y = np.asarray(self.x), np.asarray(self.y)
        n = self.x.shape[0] if self.x.ndim else 0
        if n == 0:
            raise ValueError(f"x: expected at least one sequence, got shape {self.x.shape}")
        if self.y.shape[:1] != (n,):
            raise ValueError(f"y: expected {n} rows (as x), got shape {self.y.shape}")
        if self.lengths is not None:
            self.lengths = np.asarray(self.lengths)
            if self.lengths.shape != (n,):
                raise ValueError(f"lengths: expected shape ({n},), got {self.lengths.shape}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: np.ndarray):
        """(x, y, lengths) of the rows ``idx``: the project's one batch order."""
        return self.x[idx], self.y[idx], None if self.lengths is None else self.lengths[idx]

    def fingerprint(self) -> str:
        return array_fingerprint(self.x, self.y, self.lengths)


def _same_float(a: float, b: float) -> bool:
    """Equal as logged (a float32 loss may be written with fewer digits); NaN equals NaN."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)


def array_fingerprint(*arrays) -> str:
    """SHA-256 (first 16 hex digits) of the arrays' dtypes, shapes and bytes: what a resume checks."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class ArrayBatches:
    """A :class:`Dataset` cut into batches, in an order drawn per epoch from ``default_rng([seed, epoch])``."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def batches(self, epoch: int):
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        for b in range(0, n, self.batch_size):
            yield self.dataset.batch(order[b : b + self.batch_size])

    def fingerprint(self) -> str:
        return self.dataset.fingerprint()


def tbptt_chunks(T: int, lengths: np.ndarray, k: int):
    """Yield (start, stop, rows, chunk_lengths) for chunks [start, stop) of k steps.

    rows: the sequences still running at ``start`` (lengths > start); chunk_lengths (len(rows),)
    their valid steps inside the chunk, each in 1..stop-start.
    """
    for start in range(0, T, k):
        stop = min(start + k, T)
        cl = np.clip(lengths - start, 0, stop - start)  # (B,)
        rows = np.flatnonzero(cl > 0)
        if rows.size == 0:
            return
        yield start, stop, rows, cl[rows]


def _metrics(returned) -> dict:
    """What an ``evaluate`` hook returned, as ``{name: Python number or None}`` (None: not measured):
    NumPy scalars unwrapped here, once; any other value that is not one real number is refused at the hook (a
    TypeError naming it), not later when a checkpoint's JSON cannot hold it."""
    if not isinstance(returned, Mapping):
        raise TypeError(f"evaluate: expected a dict of metrics (name -> number), got {type(returned).__name__}")
    bad = [k for k in returned if not isinstance(k, str)]
    if bad:
        raise TypeError(f"evaluate: expected metric names as strings, got {bad[0]!r}")
    return {k: None if v is None else plain_scalar(f"evaluate()[{k!r}]", v) for k, v in returned.items()}


class _EpochSums:
    """Running sums of one epoch: the sample-weighted training loss and, for a classifier, accuracy."""

    def __init__(self, loss=0.0, samples=0, correct=0, scored=0, seconds=0.0):
        self.loss, self.samples, self.correct, self.scored, self.seconds = loss, samples, correct, scored, seconds

    def add(self, loss: float, n: int, correct: int | None):
        n = int(n)
        self.loss += float(loss) * n  # a model's NumPy-scalar loss must not make the sums NumPy scalars
        self.samples += n
        if correct is not None:
            self.correct += int(correct)
            self.scored += n

    def row(self) -> dict:
        row = {"train_loss": self.loss / self.samples if self.samples else math.nan}
        if self.scored:
            row["train_accuracy"] = self.correct / self.scored
        return row

    def to_dict(self) -> dict:
        return dict(
            loss=self.loss, samples=self.samples, correct=self.correct, scored=self.scored, seconds=self.seconds
        )


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
class Trainer:
    """Trains a model (``parameters()``, ``grads``, ``zero_grad()``, ``forward_backward(x, y, h0, lengths)``).

    ``train_batch(x, y, lengths)`` runs the step(s) of one batch; ``run(batches)`` an explicit
    sequence of batches; ``fit(data)`` epochs over a :class:`Dataset` or a batch source, with
    evaluation, selection, patience, checkpoints and resumption. Hooks: ``evaluate(model) -> dict``
    of metrics at each epoch's end; ``stop_when(row) -> bool`` ends fit early (``row``: the epoch's
    record, metrics included); ``callback(trainer, record)`` after every step (``trainer.last_output``
    holds the step's :class:`~scratch_rnn.models.StepOutput`).

    The methods under "the backend" are all that touch the model and the optimizer: the torch twin
    (``reference.training.TorchTrainer``) overrides exactly those.
    """

    def __init__(
        self,
        model: Any,  # duck-typed: a SequenceModel, or the torch twin under reference.training.TorchTrainer
        config: TrainConfig | None = None,
        *,
        evaluate: Callable[[Any], Mapping[str, Any]] | None = None,
        stop_when: Callable[[dict[str, Any]], bool] | None = None,
        callback: Callable[[Trainer, StepRecord], object] | None = None,
    ) -> None:
        self.model = model
        self.config = config = config if config is not None else TrainConfig()
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        if config.tbptt_k is not None and getattr(getattr(model, "config", None), "task", "per_step") != "per_step":
            raise ValueError(
                f"tbptt_k: truncated BPTT needs a loss at every step (task='per_step'), the model has "
                f"task={model.config.task!r}"
            )
        if (config.select == "best" or config.patience is not None) and evaluate is None:
            raise ValueError(f"evaluate: select={config.select!r} / patience={config.patience!r} need an evaluate hook")
        self.evaluate, self.stop_when, self.callback = evaluate, stop_when, callback
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.epoch = 0  # epochs completed; the current one is epoch + 1
        self.batch_in_epoch = 0
        self.skipped_steps = 0
        self.history: list[StepRecord] = []
        self.epochs: list[dict] = []  # one row per finished (or final partial) epoch
        self.first_loss: float | None = None
        self.best: dict | None = None  # {"value", "epoch", "state"} of the best evaluated epoch
        self.stale_epochs = 0
        self.selected_epoch: int | None = None
        self.stop_reason: str | None = None
        self.data_fingerprint: str | None = None
        self.last_output = None
        self.last_finite_grad_norm: float | None = None
        self.last_finite_step: int | None = None
        self.last_checkpoint: str | None = None
        self.last_checkpoint_step: int | None = None
        self._sums = _EpochSums()
        self._resumed_from: str | None = None  # the checkpoint this trainer resumed, if any
        self._outputs_checked = False
        self._locks: dict[str, RunLock] = {}  # the outputs this trainer owns while it writes them
        self._csv_ready = False
        self._bar = None

    # -- the backend ------------------------------------------------------------------------------
    def _make_optimizer(self):
        return make_optimizer(self.config.optimizer, self.model.parameters(), **self.config.optimizer_kwargs)

    def _forward_backward(self, x, y, h0, lengths):
        """Zeroed gradients, then forward + loss + backward; the model's StepOutput (numpy arrays)."""
        self.model.zero_grad()
        return self.model.forward_backward(x, y, h0=h0, lengths=lengths)

    def _measure_and_clip(self) -> float:
        """The global L2 norm of the gradients before clipping (FloatingPointError if not finite), then clip.

        With L2 clipping alone, clip_grad_norm_'s own pre-clip total is that norm: one pass, not two.
        """
        grads, cfg = self.model.grads, self.config
        if cfg.clip_value is None and cfg.clip_norm is not None and cfg.clip_norm_type == 2.0:
            norm = clip_grad_norm_(grads, cfg.clip_norm, 2.0)
        else:
            norm = total_norm(grads, 2)
        if not math.isfinite(norm):
            bad = [k for k, g in grads.items() if not np.isfinite(g).all()]
            raise FloatingPointError(
                f"the gradient norm is {norm} (non-finite gradients of {bad})"
                if bad
                else f"the gradient norm overflows ({norm}) although every gradient is finite"
            )
        if cfg.clip_value is not None:
            clip_grad_value_(grads, cfg.clip_value)
            if cfg.clip_norm is not None:
                clip_grad_norm_(grads, cfg.clip_norm, cfg.clip_norm_type)
        elif cfg.clip_norm is not None and cfg.clip_norm_type != 2.0:
            clip_grad_norm_(grads, cfg.clip_norm, cfg.clip_norm_type)
        return norm

    def _update(self) -> None:
        self.optimizer.step(self.model.grads)

    def _nonfinite_parameters(self) -> list[str]:
        return [k for k, p in self.model.parameters().items() if not np.isfinite(p).all()]

    def _zero_grad(self) -> None:
        self.model.zero_grad()

    def model_state(self) -> dict:
        return self.model.state_dict()

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr

    # -- one step -------------------------------------------------------------------------------
    def _stop(self, cls, index: int, reason: str):
        return cls(
            index,
            reason,
            self.last_finite_grad_norm,
            self.last_finite_step,
            self.last_checkpoint,
            self.last_checkpoint_step,
        )

    def _optimizer_step(self, x, y, lengths=None, h0=None):
        """One optimizer step; returns (record, h_n), h_n None when the step was skipped."""
        index = self.step + 1
        try:
            out = self._forward_backward(x, y, h0, lengths)
            if not math.isfinite(out.loss):
                raise FloatingPointError(f"the loss is {out.loss}")
            norm = self._measure_and_clip()
        except FloatingPointError as exc:
            return self._nonfinite(index, str(exc)), None
        cfg = self.config
        if cfg.divergence_factor is not None:
            start = self.first_loss if self.first_loss is not None else out.loss
            bound = cfg.divergence_factor * max(start, 1.0)
            if out.loss > bound:
                self._zero_grad()
                self._write_csv(StepRecord(index, self.epoch + 1, out.loss, norm, True))
                raise self._stop(
                    DivergenceError,
                    index,
                    f"the loss {out.loss:.6g} exceeds divergence_factor "
                    f"{cfg.divergence_factor:g} × max(first loss {start:.6g}, 1) = {bound:.6g}",
                )
        self._update()
        bad = self._nonfinite_parameters()
        if bad:
            self._write_csv(StepRecord(index, self.epoch + 1, out.loss, norm, True))
            raise self._stop(
                NonFiniteError,
                index,
                f"the update made the parameters {bad} non-finite (loss "
                f"{out.loss:.6g}, gradient norm {norm:.6g}); the step cannot be skipped once applied",
            )
        if self.first_loss is None:
            self.first_loss = float(out.loss)
        self.step = index
        self.last_finite_grad_norm, self.last_finite_step = float(norm), index
        self.last_output = out
        self._sums.add(out.loss, len(y), self._correct(out.output, y))
        return self._record(StepRecord(index, self.epoch + 1, out.loss, norm)), out.h_n

    def _correct(self, output, y) -> int | None:
        """Correct predictions of a sequence classifier (cross-entropy, one label per sequence), else None."""
        c = getattr(self.model, "config", None)
        if getattr(c, "loss", None) != "cross_entropy" or getattr(c, "task", None) != "sequence":
            return None
        return int((np.argmax(np.asarray(output), axis=1) == np.asarray(y)).sum())

    def _nonfinite(self, index: int, reason: str) -> StepRecord:
        self._zero_grad()
        rec = StepRecord(index, self.epoch + 1, math.nan, math.nan, True)
        if self.config.on_nonfinite == "stop":
            self._write_csv(rec)
            raise self._stop(NonFiniteError, index, reason)
        self.step = index
        self.skipped_steps += 1
        return self._record(rec)

    def _record(self, rec: StepRecord) -> StepRecord:
        self.history.append(rec)
        self._write_csv(rec)
        if self.callback is not None:
            self.callback(self, rec)
        return rec

    def _check_skipped(self) -> None:
        frac = self.config.max_skipped_fraction
        if self.skipped_steps and self.skipped_steps > frac * self.step:
            raise self._stop(
                TooManySkippedError,
                self.step,
                f"{self.skipped_steps} of {self.step} steps were skipped "
                f"(non-finite), more than max_skipped_fraction={frac:g}",
            )

    # -- batches --------------------------------------------------------------------------------
    def train_batch(self, x: Any, y: Any, lengths: Any = None) -> list[StepRecord]:
        """The step(s) of one batch: one step, or one per chunk with truncated BPTT."""
        self._check_outputs()
        k = self.config.tbptt_k
        if k is None:
            rec, _ = self._optimizer_step(x, y, lengths)
            return [rec]
        x, y = np.asarray(x), np.asarray(y)
        B, T = x.shape[:2]
        lengths = np.full(B, T, dtype=np.int64) if lengths is None else check_lengths("lengths", lengths, B, T)
        state = self._zero_state(B)  # a tuple: (h,) or (h, c), (L·D, B, ·)
        records = []
        for start, stop, rows, chunk_len in tbptt_chunks(T, lengths, k):
            h0 = tuple(s[:, rows] for s in state)
            rec, finals = self._optimizer_step(
                x[rows, start:stop], y[rows, start:stop], chunk_len, h0 if len(h0) > 1 else h0[0]
            )
            records.append(rec)
            if finals is None:  # skipped: the carried state is unusable, end this batch
                break
            for s, f in zip(state, finals if isinstance(finals, tuple) else (finals,)):
                s[:, rows] = f  # carried on, without gradient: the next backward stops at this chunk
        return records

    def _zero_state(self, B: int) -> tuple:
        """The state TBPTT carries from chunk to chunk, zero: one array per name in the cell's STATES ((h,), or
        (h, c) for an LSTM), in the model's dtype."""
        from .cells import cell_spec

        c, dtype = self.model.config, self._state_dtype()
        LD = c.num_layers * c.num_directions
        shapes = [
            (LD, B, (c.proj_size or c.hidden_size) if s == "h" else c.hidden_size)
            for s in cell_spec(c.cell).model_class().STATES
        ]
        return tuple(np.zeros(shape, dtype=dtype) for shape in shapes)

    def _state_dtype(self):
        return np.dtype(self.model.config.dtype)

    def run(self, batches: Iterable[tuple]) -> list[StepRecord]:
        """Train on an explicit iterable of (x, y, lengths) batches, in order; returns the history."""
        try:
            for batch in batches:
                self.train_batch(*batch)
            self._check_skipped()
        except KeyboardInterrupt:
            self._trim_log_to_checkpoint()
            raise
        finally:
            self.release_outputs()
        return self.history

    def fit(self, data: Any) -> list[StepRecord]:
        """``epochs`` passes over ``data`` (a Dataset or a batch source); resumable from a checkpoint."""
        cfg = self.config
        source = (
            data
            if hasattr(data, "batches") and not isinstance(data, Dataset)
            else ArrayBatches(data, cfg.batch_size, cfg.shuffle, cfg.seed)
        )
        try:
            self._check_data(source)
            self._check_outputs()
            self._open_bar(source)
            while self.epoch < cfg.epochs and self.stop_reason is None and not self._done():
                self.set_lr(cfg.lr * cfg.lr_decay**self.epoch)
                t0 = time.perf_counter()
                finished = True
                for batch in itertools.islice(source.batches(self.epoch), self.batch_in_epoch, None):
                    if self._done():
                        finished = False
                        break
                    recs = self.train_batch(*batch)
                    self.batch_in_epoch += 1
                    self._update_bar(recs)
                    if (
                        cfg.checkpoint_dir
                        and cfg.checkpoint_every
                        and self.step - (self.last_checkpoint_step or 0) >= cfg.checkpoint_every
                    ):
                        self._sums.seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        self._save_or_stop()
                self._sums.seconds += time.perf_counter() - t0
                if finished or self._done():
                    self._end_epoch(partial=not finished)
            self._check_skipped()
            if cfg.checkpoint_dir and self.last_checkpoint_step != self.step:
                self._save_or_stop()  # the last state (a resume continues from it); the best is inside too
            if cfg.select == "best" and self.best is not None:
                self.load_model_state(self.best["state"])
                self.selected_epoch = self.best["epoch"]
            elif self.epochs:
                self.selected_epoch = self.epochs[-1]["epoch"]
        except KeyboardInterrupt:
            self._trim_log_to_checkpoint()
            raise
        finally:
            self._close_bar()
            self.release_outputs()
        return self.history

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def _end_epoch(self, partial: bool) -> None:
        """The epoch's row: training sums, evaluation, best weights, patience, stop_when."""
        cfg = self.config
        number = self.epoch + 1
        row = {"epoch": number, "step": self.step, **self._sums.row(), "seconds": self._sums.seconds}
        if partial:
            row["partial"] = True
        if self.evaluate is not None:
            t0 = time.perf_counter()
            metrics = _metrics(self.evaluate(self.model))
            row.update(metrics)
            row["eval_seconds"] = time.perf_counter() - t0
            if cfg.select_metric is not None:
                if cfg.select_metric not in metrics:
                    raise KeyError(f"select_metric: evaluate() returned {sorted(metrics)}, not {cfg.select_metric!r}")
                value = float(metrics[cfg.select_metric])
                if not math.isfinite(value):
                    raise self._stop(
                        NonFiniteError,
                        self.step,
                        f"evaluate() returned {cfg.select_metric}={value} after epoch {number}",
                    )
                better = self.best is None or (
                    value > self.best["value"] if cfg.select_mode == "max" else value < self.best["value"]
                )
                if partial:
                    pass  # a part of an epoch neither sets the best nor counts toward patience
                elif better:
                    self.best = {
                        "value": value,
                        "epoch": number,
                        "state": self.model_state() if cfg.select == "best" else None,
                    }
                    self.stale_epochs = 0
                else:
                    self.stale_epochs += 1
        # a resumed epoch replaces the row of its earlier, partial part
        self.epochs = [r for r in self.epochs if not (r["epoch"] == number and r.get("partial"))]
        self.epochs.append(row)
        if self._bar is not None:
            self._bar.write(self._epoch_line(row))
        if not partial:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._sums = _EpochSums()
        self._check_skipped()
        if partial:
            return
        if cfg.patience is not None and self.stale_epochs >= cfg.patience:
            self.stop_reason = f"no better {cfg.select_metric} for {self.stale_epochs} epoch(s) (patience)"
        elif self.stop_when is not None and self.stop_when(row):
            self.stop_reason = "stop_when"

    @staticmethod
    def _epoch_line(row: dict) -> str:
        parts = [
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in row.items()
            if k not in ("epoch", "seconds", "eval_seconds")
        ]
        return f"epoch {row['epoch']}: " + ", ".join(parts) + f" ({row['seconds']:.0f} s)"

    # -- outputs: owned while written, checked before the first step ----------------------------
    def _owned_paths(self) -> dict[str, tuple]:
        """{key: (lock path, what)} of the outputs this trainer writes: the checkpoint folder (its lock
        inside it) and the log (its lock beside it, unless it lies inside the checkpoint folder)."""
        cfg, out = self.config, {}
        if cfg.checkpoint_dir is not None:
            d = os.fspath(cfg.checkpoint_dir)
            out["checkpoint_dir"] = (folder_lock_path(d), f"checkpoint_dir {d!r}")
        if cfg.log_csv is not None:
            log = os.fspath(cfg.log_csv)
            inside = cfg.checkpoint_dir is not None and os.path.commonpath(
                [os.path.realpath(log), os.path.realpath(cfg.checkpoint_dir)]
            ) == os.path.realpath(cfg.checkpoint_dir)
            if not inside:
                out["log_csv"] = (beside_lock_path(log), f"log_csv {log!r}")
        return out

    def _claim_outputs(self, keys=None) -> list[str]:
        """Take the lock of each output not held yet (:class:`~scratch_rnn.runlock.RunInUse` when another
        run holds one, naming it); returns the keys taken by this call. All or none are taken."""
        taken = []
        try:
            for key, (path, what) in self._owned_paths().items():
                if (keys is not None and key not in keys) or (key in self._locks and self._locks[key].held):
                    continue
                self._locks[key] = RunLock(path, what).acquire()
                taken.append(key)
        except BaseException:
            self.release_outputs(taken)
            raise
        return taken

    def release_outputs(self, keys: Iterable[str] | None = None) -> None:
        """Give up ownership of the checkpoint folder and the log (done at the end of ``fit`` and ``run``;
        the next write takes it again)."""
        for key in list(self._locks if keys is None else keys):
            lock = self._locks.pop(key, None)
            if lock is not None:
                lock.release()

    def _check_outputs(self) -> None:
        """Own the outputs, then refuse, before any step, to write over another run's checkpoint or log,
        or into a wrong kind of path.

        Writing over them is allowed only for the run this trainer resumed (its own checkpoint, and a
        log whose rows are that checkpoint's history) or with ``overwrite=True``; a run in progress
        (one that holds the lock) is never written over.
        """
        if self._outputs_checked:
            self._claim_outputs()  # a later fit / run: own the outputs again
            return
        cfg = self.config
        if cfg.checkpoint_dir is not None:
            output_dir("checkpoint_dir", cfg.checkpoint_dir)
        if cfg.log_csv is not None:
            output_file("log_csv", cfg.log_csv)
        taken = self._claim_outputs()
        try:
            own = (
                self._resumed_from is not None
                and cfg.checkpoint_dir is not None
                and self._resumed_from == os.path.abspath(self.checkpoint_path())
            )
            if cfg.checkpoint_dir is not None:
                path = self.checkpoint_path()
                if os.path.exists(path) and not own and not cfg.overwrite:
                    raise FileExistsError(
                        f"checkpoint_dir: {os.fspath(cfg.checkpoint_dir)!r} already holds a "
                        f"checkpoint of another run ({path}); resume it (load_checkpoint / --resume) "
                        "or pass overwrite=True (--overwrite) to replace it"
                    )
            if cfg.log_csv is not None:
                p = os.fspath(cfg.log_csv)
                if os.path.exists(p) and not cfg.overwrite:
                    if not own:
                        raise FileExistsError(
                            f"log_csv: {p!r} already exists (another run's log); resume that run or "
                            "pass overwrite=True (--overwrite) to replace it"
                        )
                    why = self._log_mismatch(p)
                    if why:
                        raise FileExistsError(
                            f"log_csv: {p!r} is not the log of the run being resumed "
                            f"({self._resumed_from}): {why}. Point log_csv at that run's log or "
                            "at a new file, or pass overwrite=True (--overwrite) to replace it"
                        )
        except BaseException:
            self.release_outputs(taken)  # (a folder made for the lock goes with it: a refused run leaves nothing)
            raise
        self._outputs_checked = True

    def _log_mismatch(self, path) -> str | None:
        """Why the CSV at ``path`` is not this run's log (None when it is): its first rows must be the
        resumed checkpoint's history (rows after it are steps a killed run logged past its checkpoint)."""
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return f"it cannot be read as a CSV ({exc})"
        if not rows or tuple(rows[0]) != self._CSV_FIELDS:
            return f"its header is {rows[0] if rows else 'missing'}, not {list(self._CSV_FIELDS)}"
        body = rows[1:]
        if not self.history and body:
            return f"it has {len(body)} step row(s), the checkpoint none"
        if len(body) < len(self.history):
            return f"it has {len(body)} step row(s), fewer than the checkpoint's {len(self.history)}"
        for rec, row in zip(self.history, body):
            try:
                same = (
                    len(row) == len(self._CSV_FIELDS)
                    and int(row[0]) == rec.step
                    and int(row[1]) == rec.epoch
                    and _same_float(float(row[2]), rec.loss)
                    and _same_float(float(row[3]), rec.grad_norm)
                    and row[4] == str(rec.skipped)
                )
            except ValueError:
                same = False
            if not same:
                return (
                    f"its row {row} differs from the checkpoint's step {rec.step} "
                    f"(loss {rec.loss!r}, grad_norm {rec.grad_norm!r})"
                )
        return None

    def _trim_log_to_checkpoint(self) -> None:
        """After an interruption: cut the log back to the last checkpoint's step, so that log and checkpoint
        agree (a resume continues both from there). Without a checkpoint the log is left as it is."""
        if not self.config.log_csv or self.last_checkpoint_step is None or not self._csv_ready:
            return
        keep = [r for r in self.history if r.step <= self.last_checkpoint_step]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self._CSV_FIELDS)
        for r in keep:
            w.writerow([getattr(r, k) for k in self._CSV_FIELDS])
        atomic_write_text(self.config.log_csv, buf.getvalue())
        self._csv_ready = False  # a later write starts again from the history

    def _check_data(self, source) -> None:
        fp = source.fingerprint() if hasattr(source, "fingerprint") else None
        if self.data_fingerprint is not None and fp is not None and fp != self.data_fingerprint:
            raise ckpt.CheckpointMismatchError(
                f"the checkpoint {self.last_checkpoint!r} was trained on other data (fingerprint "
                f"{self.data_fingerprint}, this data {fp}); resume with the same data or start a new run"
            )
        self.data_fingerprint = fp

    # -- progress and CSV -----------------------------------------------------------------------
    def _open_bar(self, source):
        if not self.config.progress:
            return
        from tqdm.auto import tqdm

        per_epoch = source.num_batches(self.epoch) if hasattr(source, "num_batches") else None
        total = None if per_epoch is None else self.config.epochs * per_epoch
        done = None if per_epoch is None else self.epoch * per_epoch + self.batch_in_epoch
        self._bar = tqdm(total=total, initial=done or 0, unit="batch", leave=False, mininterval=0.5, file=sys.stderr)

    def _update_bar(self, recs):
        if self._bar is not None:
            last = recs[-1]
            self._bar.update(1)
            self._bar.set_postfix(epoch=last.epoch, loss=f"{last.loss:.4g}", skipped=self.skipped_steps, refresh=False)

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    _CSV_FIELDS = ("step", "epoch", "loss", "grad_norm", "skipped")

    def _write_csv(self, rec: StepRecord) -> None:
        path = self.config.log_csv
        if not path:
            return
        if not self._csv_ready:  # (re)write from the history: a resumed run continues the file consistently
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(self._CSV_FIELDS)
            for r in self.history[:-1] if self.history and self.history[-1] is rec else self.history:
                w.writerow([getattr(r, k) for k in self._CSV_FIELDS])
            atomic_write_text(path, buf.getvalue())
            self._csv_ready = True
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([getattr(rec, k) for k in self._CSV_FIELDS])

    @property
    def losses(self) -> np.ndarray:
        return np.array([r.loss for r in self.history])

    @property
    def grad_norms(self) -> np.ndarray:
        return np.array([r.grad_norm for r in self.history])

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self) -> str:
        if not self.config.checkpoint_dir:
            raise ValueError("checkpoint_dir: not set in the TrainConfig")
        return os.path.join(os.fspath(self.config.checkpoint_dir), CHECKPOINT_NAME)

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write everything needed to resume, atomically (default: checkpoint_dir/checkpoint.npz)."""
        own_path = (
            path is None or os.path.abspath(path) == os.path.abspath(self.checkpoint_path())
            if self.config.checkpoint_dir
            else False
        )
        path = os.fspath(path) if path is not None else self.checkpoint_path()
        taken = self._claim_outputs(("checkpoint_dir",)) if own_path else []
        try:
            return self._save_checkpoint(path)
        finally:
            self.release_outputs(taken)  # taken for this call only (fit holds it for the whole run)

    def _save_checkpoint(self, path: str) -> str:
        h = self.history
        arrays = dict(
            history_step=np.array([r.step for r in h], dtype=np.int64),
            history_epoch=np.array([r.epoch for r in h], dtype=np.int64),
            history_loss=np.array([r.loss for r in h], dtype=np.float64),
            history_grad_norm=np.array([r.grad_norm for r in h], dtype=np.float64),
            history_skipped=np.array([r.skipped for r in h], dtype=bool),
        )
        if self.best is not None and self.best["state"] is not None:
            arrays.update({f"best/{k}": v for k, v in self.best["state"].items()})
        best = None if self.best is None else {k: self.best[k] for k in ("value", "epoch")}
        meta = dict(
            trainer_version=TRAINER_STATE_VERSION,
            train_config=self.config.to_dict(),
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            skipped_steps=self.skipped_steps,
            last_finite_grad_norm=self.last_finite_grad_norm,
            last_finite_step=self.last_finite_step,
            first_loss=self.first_loss,
            epochs=self.epochs,
            sums=self._sums.to_dict(),
            best=best,
            stale_epochs=self.stale_epochs,
            data_fingerprint=self.data_fingerprint,
            stop_reason=self.stop_reason,
        )
        ckpt.save(path, self.model, self.optimizer, step=self.step, meta=meta, arrays=arrays)
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        return path

    def _save_or_stop(self) -> None:
        """``fit``'s checkpoint: an OSError of the environment (ENOSPC, EFBIG, EDQUOT, ...) stops the run as
        :class:`CheckpointNotWritten`, naming the last good checkpoint (the write is atomic: it is whole)."""
        try:
            self.save_checkpoint()
        except OSError as exc:
            code = errno.errorcode.get(exc.errno, "?") if exc.errno else type(exc).__name__
            raise self._stop(
                CheckpointNotWritten, self.step, f"{self.checkpoint_path()!r}: {exc.strerror or exc} ({code})"
            ) from exc

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> None:
        """Restore model, optimizer, generator, position, history and selection; nothing changes on error.

        The checkpoint's TrainConfig must agree on :data:`RESUME_FIELDS` (else
        :class:`~scratch_rnn.checkpoint.CheckpointMismatchError` naming the fields); ``fit`` then
        refuses data with another fingerprint.
        """
        path = os.fspath(path) if path is not None else self.checkpoint_path()
        own_path = bool(self.config.checkpoint_dir) and os.path.abspath(path) == os.path.abspath(self.checkpoint_path())
        # resuming this trainer's own folder: own it from now on (refused while another run writes it)
        taken = self._claim_outputs(("checkpoint_dir",)) if own_path else []
        try:
            self._load_checkpoint(path, own_path)
        except BaseException:
            self.release_outputs(taken)
            raise

    def _load_checkpoint(self, path: str, own_path: bool) -> None:
        if own_path:
            remove_stale_temporaries(path)  # what a killed writer of this folder left; we are its writer now
        arrays, info = ckpt.read_archive(path)  # verify integrity before comparing configs
        meta = info.get("meta", {})
        if meta.get("trainer_version") != TRAINER_STATE_VERSION:
            raise ckpt.CheckpointMismatchError(
                f"checkpoint {path!r} was written by another version of the trainer "
                f"({meta.get('trainer_version')!r}, this one reads "
                f"{TRAINER_STATE_VERSION}): start a new run"
            )
        saved_cfg = meta.get("train_config", {})
        mine = self.config.to_dict()
        diff = [
            f"{k}: checkpoint {saved_cfg.get(k)!r}, trainer {mine[k]!r}"
            for k in RESUME_FIELDS
            if saved_cfg.get(k) != mine[k]
        ]
        if diff:
            raise ckpt.CheckpointMismatchError(
                f"checkpoint {path!r} was saved with another training configuration: " + "; ".join(diff)
            )
        for key in ("history_step", "history_epoch", "history_loss", "history_grad_norm", "history_skipped"):
            if f"extra/{key}" not in arrays:
                raise ckpt.CorruptCheckpointError(
                    f"checkpoint {path!r} has no trainer history ({key!r}): it was not "
                    "written by Trainer.save_checkpoint"
                )
        loaded = ckpt.load(path, self.model, self.optimizer)
        meta, a = loaded["meta"], loaded["arrays"]
        self.step = int(loaded["step"])
        self.epoch = int(meta["epoch"])
        self.batch_in_epoch = int(meta["batch_in_epoch"])
        self.skipped_steps = int(meta["skipped_steps"])
        self.last_finite_grad_norm = meta["last_finite_grad_norm"]
        self.last_finite_step = meta["last_finite_step"]
        self.first_loss = meta["first_loss"]
        self.epochs = list(meta["epochs"])
        self._sums = _EpochSums(**meta["sums"])
        self.stale_epochs = int(meta["stale_epochs"])
        self.data_fingerprint = meta["data_fingerprint"]
        self.stop_reason = meta["stop_reason"]
        best = meta["best"]
        if best is not None:
            state = {k[len("best/") :]: v for k, v in a.items() if k.startswith("best/")} or None
            self.best = dict(best, state=state)
        self.history = [
            StepRecord(int(s), int(e), float(lo), float(g), bool(k))
            for s, e, lo, g, k in zip(
                a["history_step"], a["history_epoch"], a["history_loss"], a["history_grad_norm"], a["history_skipped"]
            )
        ]
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        self._csv_ready = False
        self._resumed_from = os.path.abspath(path)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def load_npz(option: str, path, required=("x", "y"), optional=("lengths",)) -> dict:
    """The arrays of an .npz file, checked: a clear error naming the option for anything else."""
    import zipfile

    input_file(option, path)
    if not zipfile.is_zipfile(path):
        raise BadInput(
            f"{option}: expected an .npz archive (numpy.savez) with {list(required)}, got {str(path)!r}, "
            "which is not a zip archive"
        )
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in required if k not in d.files]
            if missing:
                raise BadInput(f"{option}: {str(path)!r} has no array(s) {missing}; it holds {d.files}")
            return {k: d[k] for k in (*required, *optional) if k in d.files}
    except BadInput:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInput(f"{option}: cannot read the arrays of {str(path)!r} ({exc})") from exc


def _read_json(option: str, path) -> dict:
    input_file(option, path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{option}: {str(path)!r} is not valid JSON ({exc})") from exc


def _main(argv) -> None:
    from .models import ModelConfig, SequenceModel

    parser = argparse.ArgumentParser(
        prog="python -m scratch_rnn.train",
        description="Train a SequenceModel. Exit status: 0 done, 1 stopped (non-finite values, divergence, too "
        "many skipped steps), 2 bad input (found before training starts), 3 crashed.",
    )
    parser.add_argument("--data", required=True, help=".npz with x, y and optionally lengths")
    parser.add_argument("--model", required=True, help="JSON file with a ModelConfig")
    parser.add_argument("--train", required=True, help="JSON file with a TrainConfig")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from checkpoint_dir's checkpoint if present")
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start over, replacing checkpoint_dir's checkpoint and log_csv of an earlier run",
    )
    args = parser.parse_args(argv)
    with as_bad_input():
        model_cfg = ModelConfig.from_dict(_read_json("--model", args.model))
    with as_bad_input():
        train_d = _read_json("--train", args.train)
        if args.overwrite and isinstance(train_d, dict):
            train_d = dict(train_d, overwrite=True)
        train_cfg = TrainConfig.from_dict(train_d)
    arrays = load_npz("--data", args.data)
    with as_bad_input():
        data = Dataset(arrays["x"], arrays["y"], arrays.get("lengths"))
        model = SequenceModel(model_cfg)
        model.check_batch(data.x, data.y, data.lengths)
        trainer = Trainer(model, train_cfg)
    resume = args.resume and train_cfg.checkpoint_dir and os.path.exists(trainer.checkpoint_path())
    try:
        if resume:
            trainer.load_checkpoint()
        trainer._check_outputs()
        trainer._check_data(ArrayBatches(data, train_cfg.batch_size, train_cfg.shuffle, train_cfg.seed))
    except (ValueError, OSError, ckpt.CheckpointError) as exc:  # OSError: FileExistsError, RunInUse, a lock...
        trainer.release_outputs()
        raise BadInput(str(exc)) from exc
    trainer.fit(data)
    last = trainer.history[-1] if trainer.history else None
    print(
        f"done: {trainer.step} steps ({trainer.skipped_steps} skipped)"
        + (f", last loss {last.loss:.6g}" if last else "")
    )


def main(argv=None) -> int:
    """``python -m scratch_rnn.train --data D.npz --model M.json --train T.json [--resume | --overwrite]``.

    D.npz holds ``x``, ``y`` and optionally ``lengths``; M.json a ModelConfig, T.json a TrainConfig
    (as dicts). Everything is checked before the first step (the model config, the training config,
    every token id, label, length and value of the data against the model, the output paths). Exit
    status: the table of :mod:`scratch_rnn.cli`.
    """
    return run_main(_main, argv, prog="python -m scratch_rnn.train")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
