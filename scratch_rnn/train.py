"""The training loop: optimizer steps with clipping, truncated BPTT, checkpoints and a non-finite guard.

One *step* is one optimizer update: one batch, or with truncated BPTT one chunk of a batch.
At every step the trainer records the loss and the global L2 norm of the gradient BEFORE any
clipping (``history``, and a CSV when ``log_csv`` is set).

Truncated BPTT (``tbptt_k = k``), Williams & Peng's TBPTT(k, k): each batch of long sequences is
cut into chunks of k steps; every chunk is a forward, a backward through that chunk only and an
optimizer step, and the final hidden state is carried into the next chunk as its h0 without
carrying gradient (torch's ``h.detach()``). Sequences that have ended drop out of later chunks;
each chunk's loss is the mean over its own valid steps. The state starts at zero for every batch.
Needs ``task="per_step"`` (a loss at every step). With k >= T it is exactly full BPTT.

Non-finite guard: a NaN/inf loss, model output or gradient (and the ``FloatingPointError`` the
RNN raises when its recurrence or its backward overflows) is caught before the optimizer runs.
``on_nonfinite="stop"`` raises :class:`NonFiniteError` naming the step, the last finite gradient
norm and the last good checkpoint, which is kept as it is (the CLI turns this into exit status 1);
``"skip"`` drops the step (no update, optimizer state untouched), records it as skipped and counts
it in ``skipped_steps``. With truncated BPTT a skipped chunk also ends its batch (the carried state
is unusable). Parameters that become non-finite after an update (a finite gradient, but an
absurd learning rate) always stop training: the update cannot be undone.

Checkpoints (``checkpoint_dir``): ``checkpoint.npz`` is rewritten atomically every
``checkpoint_every`` steps and at the end, at batch boundaries. It holds the model, the optimizer,
the step, epoch and position in the epoch, the epoch's data order, both generators (data order and
dropout masks) and the history, so that :meth:`Trainer.load_checkpoint` then :meth:`Trainer.fit`
continues bit for bit like the uninterrupted run.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint as ckpt
from .optim import OPTIMIZERS, clip_grad_norm_, clip_grad_value_, make_optimizer, total_norm

__all__ = ["TrainConfig", "Trainer", "Dataset", "StepRecord", "NonFiniteError", "tbptt_chunks", "main"]

CHECKPOINT_NAME = "checkpoint.npz"
# TrainConfig fields a resumed run must share with the checkpoint (the others may change: more
# epochs, another max_steps, another log file...).
RESUME_FIELDS = ("optimizer", "optimizer_kwargs", "clip_norm", "clip_norm_type", "clip_value", "tbptt_k",
                 "batch_size", "shuffle", "seed", "on_nonfinite")


class NonFiniteError(RuntimeError):
    """Training met a NaN/inf loss or gradient and was configured to stop."""

    def __init__(self, step: int, reason: str, last_finite_grad_norm: float | None, last_finite_step: int | None,
                 checkpoint: str | None, checkpoint_step: int | None):
        self.step = step
        self.reason = reason
        self.last_finite_grad_norm = last_finite_grad_norm
        self.last_finite_step = last_finite_step
        self.checkpoint = checkpoint
        norm = ("none (no step had finished)" if last_finite_grad_norm is None
                else f"{last_finite_grad_norm:.6g} (step {last_finite_step})")
        kept = (f"the last good checkpoint {checkpoint!r} (step {checkpoint_step}) was kept" if checkpoint
                else "no checkpoint had been written")
        super().__init__(f"training stopped at step {step}: non-finite values: {reason}. Last finite gradient "
                         f"norm: {norm}; {kept}. Lower the learning rate, clip gradients (clip_norm) or set "
                         f"on_nonfinite='skip'.")


@dataclass
class TrainConfig:
    """How to train. ``optimizer_kwargs`` are the optimizer's torch-named hyperparameters (lr, ...)."""

    optimizer: str = "adam"
    optimizer_kwargs: dict = field(default_factory=lambda: {"lr": 1e-3})
    clip_norm: float | None = None       # clip_grad_norm_(max_norm=clip_norm, norm_type=clip_norm_type)
    clip_norm_type: float = 2.0
    clip_value: float | None = None      # clip_grad_value_ (applied before clip_norm when both are set)
    tbptt_k: int | None = None           # truncated BPTT chunk length; None: full BPTT
    epochs: int = 1
    batch_size: int = 32
    shuffle: bool = True
    seed: int = 0                        # seeds the data order
    max_steps: int | None = None         # stop after this many steps (checked at batch boundaries)
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0            # steps between checkpoints; 0: only at the end
    on_nonfinite: str = "stop"           # "stop" or "skip"
    log_csv: str | None = None
    progress: bool = True                # a tqdm progress bar, when tqdm is installed

    def __post_init__(self):
        if str(self.optimizer).lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        self.optimizer = str(self.optimizer).lower()
        if not isinstance(self.optimizer_kwargs, dict):
            raise TypeError(f"optimizer_kwargs: expected a dict, got {type(self.optimizer_kwargs).__name__}")
        self.optimizer_kwargs = json.loads(json.dumps(self.optimizer_kwargs))  # betas tuple -> list, as in JSON
        for name in ("clip_norm", "clip_value"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"{name}: expected a number > 0 or None, got {v!r}")
        for name in ("epochs", "batch_size"):
            _positive_int(name, getattr(self, name))
        for name in ("tbptt_k", "max_steps"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: expected an integer >= 0, got {self.checkpoint_every!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite: expected 'stop' or 'skip', got {self.on_nonfinite!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        return cls(**d)


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")


@dataclass
class StepRecord:
    step: int            # 1-based optimizer step
    epoch: int
    loss: float          # NaN when skipped
    grad_norm: float     # global L2 norm of the gradient before clipping; NaN when skipped
    skipped: bool = False


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
        return self.x[idx], self.y[idx], None if self.lengths is None else self.lengths[idx]


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


class Trainer:
    """Trains a model (``parameters()``, ``grads``, ``zero_grad()``, ``forward_backward``) with ``config``.

    ``train_batch(x, y, lengths)`` runs the step(s) of one batch; ``run(batches)`` an explicit
    sequence of batches; ``fit(dataset)`` epochs over a :class:`Dataset` in a seeded order, with
    checkpoints and resumption. ``callback(trainer, record)`` is called after every step.
    """

    def __init__(self, model, config: TrainConfig | None = None, *, callback=None):
        self.model = model
        self.config = config = config if config is not None else TrainConfig()
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        if config.tbptt_k is not None and getattr(getattr(model, "config", None), "task", "per_step") != "per_step":
            raise ValueError(f"tbptt_k: truncated BPTT needs a loss at every step (task='per_step'), the model has "
                             f"task={model.config.task!r}")
        self.optimizer = make_optimizer(config.optimizer, model.parameters(), **config.optimizer_kwargs)
        self.callback = callback
        self.data_rng = np.random.default_rng(config.seed)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped_steps = 0
        self.history: list[StepRecord] = []
        self.last_finite_grad_norm: float | None = None
        self.last_finite_step: int | None = None
        self.last_checkpoint: str | None = None
        self.last_checkpoint_step: int | None = None
        self._order: np.ndarray | None = None
        self._csv_ready = False
        self._bar = None

    # -- one step -------------------------------------------------------------------------------
    def _attempt(self, x, y, lengths, h0):
        """Forward + backward + checks; returns (loss, grad_norm, h_n) or raises FloatingPointError."""
        self.model.zero_grad()
        loss, h_n = self.model.forward_backward(x, y, lengths, h0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss}")
        norm = total_norm(self.model.grads, 2)
        if not math.isfinite(norm):
            bad = [k for k, g in self.model.grads.items() if not np.isfinite(g).all()]
            raise FloatingPointError(f"the gradient norm is {norm} (non-finite gradients of {bad})")
        return loss, norm, h_n

    def _optimizer_step(self, x, y, lengths=None, h0=None):
        """One optimizer step; returns (record, h_n), h_n None when the step was skipped."""
        index = self.step + 1
        try:
            loss, norm, h_n = self._attempt(x, y, lengths, h0)
        except FloatingPointError as exc:
            return self._nonfinite(index, str(exc)), None
        grads = self.model.grads
        cfg = self.config
        if cfg.clip_value is not None:
            clip_grad_value_(grads, cfg.clip_value)
        if cfg.clip_norm is not None:
            clip_grad_norm_(grads, cfg.clip_norm, cfg.clip_norm_type)
        self.optimizer.step(grads)
        bad = [k for k, p in self.model.parameters().items() if not np.isfinite(p).all()]
        if bad:
            self._write_csv(StepRecord(index, self.epoch, loss, norm, True))
            raise NonFiniteError(index, f"the update made the parameters {bad} non-finite (loss {loss:.6g}, "
                                 f"gradient norm {norm:.6g}); the step cannot be skipped once applied",
                                 self.last_finite_grad_norm, self.last_finite_step, self.last_checkpoint,
                                 self.last_checkpoint_step)
        self.step = index
        self.last_finite_grad_norm, self.last_finite_step = norm, index
        return self._record(StepRecord(index, self.epoch, loss, norm)), h_n

    def _nonfinite(self, index: int, reason: str) -> StepRecord:
        self.model.zero_grad()
        rec = StepRecord(index, self.epoch, math.nan, math.nan, True)
        if self.config.on_nonfinite == "stop":
            self._write_csv(rec)
            raise NonFiniteError(index, reason, self.last_finite_grad_norm, self.last_finite_step,
                                 self.last_checkpoint, self.last_checkpoint_step)
        self.step = index
        self.skipped_steps += 1
        return self._record(rec)

    def _record(self, rec: StepRecord) -> StepRecord:
        self.history.append(rec)
        self._write_csv(rec)
        if self.callback is not None:
            self.callback(self, rec)
        return rec

    # -- batches --------------------------------------------------------------------------------
    def train_batch(self, x, y, lengths=None) -> list[StepRecord]:
        """The step(s) of one batch: one step, or one per chunk with truncated BPTT."""
        k = self.config.tbptt_k
        if k is None:
            rec, _ = self._optimizer_step(x, y, lengths)
            return [rec]
        x, y = np.asarray(x), np.asarray(y)
        B, T = x.shape[:2]
        lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths)
        c = self.model.config
        h = np.zeros((c.num_layers * c.num_directions, B, c.hidden_size), dtype=np.dtype(c.dtype))
        records = []
        for start, stop, rows, chunk_len in tbptt_chunks(T, lengths, k):
            rec, h_n = self._optimizer_step(x[rows, start:stop], y[rows, start:stop], chunk_len, h[:, rows])
            records.append(rec)
            if h_n is None:  # skipped: the carried state is unusable, end this batch
                break
            h[:, rows] = h_n  # carried on, without gradient: the next backward stops at this chunk
        return records

    def run(self, batches) -> list[StepRecord]:
        """Train on an explicit iterable of (x, y, lengths) batches, in order; returns the history."""
        for batch in batches:
            self.train_batch(*batch)
        return self.history

    def fit(self, dataset: Dataset) -> list[StepRecord]:
        """``epochs`` passes over ``dataset`` in a seeded order; resumable from a checkpoint."""
        cfg = self.config
        n = len(dataset)
        n_batches = -(-n // cfg.batch_size)
        self._open_bar(n_batches)
        try:
            while self.epoch < cfg.epochs and not self._done():
                if self._order is None:
                    self._order = self.data_rng.permutation(n) if cfg.shuffle else np.arange(n)
                    self.batch_in_epoch = 0
                while self.batch_in_epoch < n_batches and not self._done():
                    b = self.batch_in_epoch
                    recs = self.train_batch(*dataset.batch(self._order[b * cfg.batch_size:(b + 1) * cfg.batch_size]))
                    self.batch_in_epoch += 1
                    self._update_bar(recs)
                    if cfg.checkpoint_dir and cfg.checkpoint_every and \
                            self.step - (self.last_checkpoint_step or 0) >= cfg.checkpoint_every:
                        self.save_checkpoint()
                if self.batch_in_epoch >= n_batches:
                    self.epoch += 1
                    self._order = None
            if cfg.checkpoint_dir and self.last_checkpoint_step != self.step:
                self.save_checkpoint()
        finally:
            self._close_bar()
        return self.history

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    # -- progress and CSV -----------------------------------------------------------------------
    def _open_bar(self, n_batches):
        if not self.config.progress:
            return
        try:
            from tqdm import tqdm  # optional: only for the progress bar
        except ImportError:  # pragma: no cover
            return
        done = self.epoch * n_batches + (self.batch_in_epoch if self._order is not None else 0)
        self._bar = tqdm(total=self.config.epochs * n_batches, initial=done, unit="batch", leave=False)

    def _update_bar(self, recs):
        if self._bar is not None:
            last = recs[-1]
            self._bar.update(1)
            self._bar.set_postfix(step=last.step, loss=f"{last.loss:.4g}", skipped=self.skipped_steps)

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
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self._CSV_FIELDS)
                for r in self.history[:-1] if self.history and self.history[-1] is rec else self.history:
                    w.writerow([getattr(r, k) for k in self._CSV_FIELDS])
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
        return os.path.join(self.config.checkpoint_dir, CHECKPOINT_NAME)

    def save_checkpoint(self, path=None) -> str:
        """Write everything needed to resume, atomically (default: checkpoint_dir/checkpoint.npz)."""
        path = os.fspath(path) if path is not None else self.checkpoint_path()
        h = self.history
        arrays = dict(
            history_step=np.array([r.step for r in h], dtype=np.int64),
            history_epoch=np.array([r.epoch for r in h], dtype=np.int64),
            history_loss=np.array([r.loss for r in h], dtype=np.float64),
            history_grad_norm=np.array([r.grad_norm for r in h], dtype=np.float64),
            history_skipped=np.array([r.skipped for r in h], dtype=bool),
        )
        if self._order is not None:
            arrays["order"] = self._order
        meta = dict(train_config=self.config.to_dict(), epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                    skipped_steps=self.skipped_steps, last_finite_grad_norm=self.last_finite_grad_norm,
                    last_finite_step=self.last_finite_step)
        ckpt.save(path, self.model, self.optimizer, step=self.step, rngs={"data": self.data_rng}, meta=meta,
                  arrays=arrays)
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        return path

    def load_checkpoint(self, path=None) -> None:
        """Restore model, optimizer, generators, position and history; nothing changes on error.

        The checkpoint's TrainConfig must agree on :data:`RESUME_FIELDS` (else
        :class:`~scratch_rnn.checkpoint.CheckpointMismatchError` naming the fields).
        """
        path = os.fspath(path) if path is not None else self.checkpoint_path()
        arrays, info = ckpt.read_archive(path)  # verify integrity before comparing configs
        saved_cfg = info.get("meta", {}).get("train_config", {})
        mine = self.config.to_dict()
        diff = [f"{k}: checkpoint {saved_cfg.get(k)!r}, trainer {mine[k]!r}" for k in RESUME_FIELDS
                if saved_cfg.get(k) != mine[k]]
        if diff:
            raise ckpt.CheckpointMismatchError(f"checkpoint {path!r} was saved with another training configuration: "
                                               + "; ".join(diff))
        for key in ("history_step", "history_epoch", "history_loss", "history_grad_norm", "history_skipped"):
            if f"extra/{key}" not in arrays:
                raise ckpt.CorruptCheckpointError(f"checkpoint {path!r} has no trainer history ({key!r}): it was not "
                                                  "written by Trainer.save_checkpoint")
        order = arrays.get("extra/order")
        if order is not None and sorted(order.tolist()) != list(range(len(order))):
            raise ckpt.CorruptCheckpointError(f"checkpoint {path!r}: the saved data order is not a permutation")
        loaded = ckpt.load(path, self.model, self.optimizer, rngs={"data": self.data_rng})
        meta, a = loaded["meta"], loaded["arrays"]
        self.step = int(loaded["step"])
        self.epoch = int(meta["epoch"])
        self.batch_in_epoch = int(meta["batch_in_epoch"])
        self.skipped_steps = int(meta["skipped_steps"])
        self.last_finite_grad_norm = meta["last_finite_grad_norm"]
        self.last_finite_step = meta["last_finite_step"]
        self._order = a.get("order")
        self.history = [StepRecord(int(s), int(e), float(lo), float(g), bool(k)) for s, e, lo, g, k in zip(
            a["history_step"], a["history_epoch"], a["history_loss"], a["history_grad_norm"], a["history_skipped"])]
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        self._csv_ready = False


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """``python -m scratch_rnn.train --data D.npz --model M.json --train T.json [--resume]``.

    D.npz holds ``x``, ``y`` and optionally ``lengths``; M.json a ModelConfig, T.json a
    TrainConfig (as dicts). Exit status 0 when training finishes, 1 when it stopped on non-finite
    values (the message names the step, the last finite gradient norm and the checkpoint kept),
    2 on bad arguments or files.
    """
    from .models import ModelConfig, SequenceModel

    parser = argparse.ArgumentParser(
        prog="python -m scratch_rnn.train",
        description="Train a SequenceModel. Exit status: 0 done, 1 stopped on NaN/inf (see on_nonfinite), 2 bad input.")
    parser.add_argument("--data", required=True, help=".npz with x, y and optionally lengths")
    parser.add_argument("--model", required=True, help="JSON file with a ModelConfig")
    parser.add_argument("--train", required=True, help="JSON file with a TrainConfig")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint_dir's checkpoint if present")
    args = parser.parse_args(argv)
    try:
        with open(args.model) as f:
            model_cfg = ModelConfig.from_dict(json.load(f))
        with open(args.train) as f:
            train_cfg = TrainConfig.from_dict(json.load(f))
        with np.load(args.data, allow_pickle=False) as d:
            data = Dataset(d["x"], d["y"], d["lengths"] if "lengths" in d.files else None)
        trainer = Trainer(SequenceModel(model_cfg), train_cfg)
        if args.resume and train_cfg.checkpoint_dir and os.path.exists(trainer.checkpoint_path()):
            trainer.load_checkpoint()
    except (OSError, ValueError, TypeError, KeyError, ckpt.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        trainer.fit(data)
    except NonFiniteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    last = trainer.history[-1] if trainer.history else None
    print(f"done: {trainer.step} steps ({trainer.skipped_steps} skipped)"
          + (f", last loss {last.loss:.6g}" if last else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
