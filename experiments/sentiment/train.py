"""Train the IMDB sentiment model with the NumPy stack, its torch twin, or both from the same start.

Model: ``scratch_rnn.models.SequenceModel`` (Embedding -> RNN -> pooling over each review's valid
steps -> Linear -> cross-entropy over 2 classes); the torch backend is its twin
``reference.models.TorchSequenceModel`` loaded with the very same initial ``state_dict``.

Data: the official split (``data.load_imdb`` / ``split_frames``); a stratified ``valid_fraction`` of
the 25,000 training reviews is held out (``data.random_split``) to choose the epoch, and the
25,000 test reviews are scored once, at the end, with the chosen weights. The vocabulary is built
from the remaining training reviews only (``text.prepare``).

Both backends see the same batches in the same order: epoch e's bucketed batches come from
``default_rng([seed, 1, e])`` and its token dropout (tokens replaced by ``<unk>``, a regularizer
applied to the data, so identically for both) from ``default_rng([seed, 2, e])``.
NumPy steps go through ``scratch_rnn.train.Trainer`` (loss, pre-clip gradient norm, clipping,
non-finite guard); torch steps through ``torch.optim`` (``reference.training.torch_optimizer``,
single-tensor as on CPU) and ``torch.nn.utils.clip_grad_norm_``, with the same hyperparameters.

With ``backend="both"`` each backend runs in its own process (``isolate``), one after the other,
so that each reports its own time and peak memory (``ru_maxrss``: the process's peak resident set
size, data loading included; ``peak_memory_after_data_mb`` is the same high-water mark taken
before the model is built).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import PROJECT_ROOT

__all__ = ["SentimentConfig", "PRESETS", "BACKENDS", "STOPWORDS", "prepare_data", "build_initial_state",
           "NumpyBackend", "TorchBackend", "run_backend", "run_experiment", "token_dropout", "RESULTS_ROOT"]

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
    data: str | None = None              # IMDB source; None: data.load_imdb's default (the shared copy)
    stopwords: str = "remove"            # remove (the notebook), keep-negations (not/no/nor, n't forms), keep
    max_vocab: int | None = 20_000
    min_freq: int = 2
    max_len: int = 400
    train_size: int | None = None        # stratified subsample of the official train split (None: all)
    test_size: int | None = None         # stratified subsample of the official test split (None: all 25,000)
    valid_fraction: float = 0.1          # of the training reviews, held out to choose the epoch (0: none)
    # model
    embedding: str = "random"            # random (N(0, 1), torch's init) or glove (glove.6B 50-d)
    embedding_dim: int = 50
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    nonlinearity: str = "tanh"
    pooling: str = "mean"
    dropout: float = 0.0                 # between RNN layers (num_layers > 1)
    dtype: str = "float32"
    # training
    optimizer: str = "adam"
    lr: float = 2e-3
    lr_decay: float = 1.0                # the learning rate of epoch e is lr * lr_decay ** (e - 1)
    weight_decay: float = 0.0
    clip_norm: float | None = 5.0
    batch_size: int = 64
    epochs: int = 4
    token_dropout: float = 0.15          # share of a training batch's tokens replaced by <unk>
    select: str = "best"                 # best: the epoch with the best validation accuracy; last
    patience: int | None = None          # stop after this many epochs without a better validation accuracy
    eval_batch_size: int = 128
    seed: int = 0
    threads: int = 1                     # BLAS threads (numpy) / torch.set_num_threads
    isolate: bool = True                 # backend="both": each backend in its own process

    def __post_init__(self):
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"{name}: expected one of {list(options)}, got {getattr(self, name)!r}")

        def pos_int(name, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected a positive integer{' or None' if allow_none else ''}, got {v!r}")

        choice("backend", BACKENDS)
        choice("stopwords", STOPWORDS)
        choice("embedding", EMBEDDINGS)
        choice("select", SELECT)
        choice("nonlinearity", ("tanh", "relu"))
        choice("pooling", ("last", "mean", "max"))
        choice("dtype", ("float32", "float64"))
        choice("optimizer", ("sgd", "adam", "adamw", "adagrad", "rmsprop"))
        for name in ("min_freq", "embedding_dim", "hidden_size", "num_layers", "batch_size", "epochs",
                     "eval_batch_size", "threads", "max_len"):
            pos_int(name)
        for name in ("train_size", "test_size", "patience"):
            pos_int(name, allow_none=True)
        if self.max_vocab is not None and (isinstance(self.max_vocab, bool) or not isinstance(self.max_vocab, int)
                                           or self.max_vocab < 3):
            raise ValueError(f"max_vocab: counts <pad> and <unk>, expected an integer >= 3 or None (every token "
                             f"seen min_freq times), got {self.max_vocab!r}")
        if self.train_size is not None and self.train_size < 4:
            raise ValueError(f"train_size: expected at least 4 reviews, got {self.train_size}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction: expected a number in [0, 1), got {self.valid_fraction!r}")
        if self.select == "best" and self.valid_fraction == 0:
            raise ValueError("select='best' chooses the epoch on the validation set: give valid_fraction > 0 "
                             "or select='last'")
        if self.patience is not None and self.valid_fraction == 0:
            raise ValueError("patience needs a validation set (valid_fraction > 0)")
        for name in ("dropout", "token_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay: expected a number in (0, 1], got {self.lr_decay!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm: expected a positive number or None (no clipping), got {self.clip_norm!r}")
        if self.embedding == "glove" and self.embedding_dim != 50:
            raise ValueError(f"embedding_dim: the GloVe vectors are 50-d, so embedding='glove' needs "
                             f"embedding_dim=50, got {self.embedding_dim}")

    # -- derived configurations ------------------------------------------------------------------
    def text_config(self):
        from .text import TextConfig

        return TextConfig(remove_stopwords=self.stopwords != "keep", keep_negations=self.stopwords == "keep-negations",
                          max_vocab=self.max_vocab, min_freq=self.min_freq, max_len=self.max_len)

    def model_config(self, vocab_size: int):
        from scratch_rnn.models import ModelConfig

        return ModelConfig(hidden_size=self.hidden_size, out_features=2, vocab_size=vocab_size,
                           embedding_dim=self.embedding_dim, num_layers=self.num_layers,
                           nonlinearity=self.nonlinearity, bidirectional=self.bidirectional,
                           dropout=self.dropout, pooling=self.pooling, task="sequence", loss="cross_entropy",
                           padding_idx=0, dtype=self.dtype, seed=self.seed)

    def optimizer_kwargs(self) -> dict:
        kw = {"lr": self.lr}
        if self.weight_decay or self.optimizer == "adamw":  # AdamW's own default decay is 1e-2: be explicit
            kw["weight_decay"] = self.weight_decay
        return kw

    def train_config(self):
        from scratch_rnn.train import TrainConfig

        return TrainConfig(optimizer=self.optimizer, optimizer_kwargs=self.optimizer_kwargs(),
                           clip_norm=self.clip_norm, batch_size=self.batch_size, epochs=self.epochs,
                           seed=self.seed, progress=False, on_nonfinite="stop")

    def default_run_name(self) -> str:
        parts = [self.embedding, self.stopwords, self.backend, f"seed{self.seed}"]
        if self.train_size:
            parts.insert(0, f"n{self.train_size}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SentimentConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"SentimentConfig: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes) -> "SentimentConfig":
        return dataclasses.replace(self, **changes)


#: Named starting points; explicit options override them. ``full``: the reported run; ``quick``:
#: the reduced real run of the CI test (3,000 training reviews, one epoch, 2,000 test reviews).
PRESETS = {
    "full": {},
    "quick": dict(train_size=3000, test_size=2000, valid_fraction=0.0, select="last", epochs=1, max_vocab=8000,
                  max_len=200, embedding="random", embedding_dim=32, hidden_size=32, batch_size=32, lr=1e-2,
                  token_dropout=0.0),
}


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _stratified_rows(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` row positions, half of each label (as near as possible), in their original order."""
    rows = []
    classes = np.unique(labels)
    for i, lab in enumerate(classes):
        pool = np.flatnonzero(labels == lab)
        k = n // len(classes) + (1 if i < n % len(classes) else 0)
        if k > len(pool):
            raise ValueError(f"asked for {n} reviews, but label {lab} has only {len(pool)}")
        rows.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(rows))


def prepare_data(cfg: SentimentConfig, *, progress: bool = True, df=None):
    """(PreparedData with splits train / valid (when valid_fraction > 0) / test, info dict).

    Reviews keep the order of the source, so that the full run reuses the token cache of any other
    ``prepare(load_imdb(), ...)`` with the same tokenization settings.
    """
    import pandas as pd

    from .data import load_imdb, random_split, split_frames
    from .text import prepare

    if df is None:
        df = load_imdb(cfg.data)
    split_frames(df)  # raises when the source has no official split
    split = df["split"].to_numpy(dtype=object).copy()
    labels = df["label"].to_numpy()
    rng = np.random.default_rng([cfg.seed, 3])
    keep = np.zeros(len(df), dtype=bool)
    for name, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        rows = np.flatnonzero(split == name)
        if size is not None and size < len(rows):
            rows = rows[_stratified_rows(labels[rows], size, rng)]
        keep[rows] = True
    if cfg.valid_fraction > 0:
        train_rows = np.flatnonzero(keep & (split == "train"))
        sub = random_split(df.iloc[train_rows], test_fraction=cfg.valid_fraction, seed=cfg.seed,
                           split_names=("train", "valid"), only_missing=False)
        split[train_rows] = sub["split"].to_numpy(dtype=object)
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


def epoch_batches(split, cfg: SentimentConfig, epoch: int):
    """Epoch ``epoch``'s training batches (x, lengths, y), token dropout applied: the same for both backends."""
    order_rng = np.random.default_rng([cfg.seed, 1, epoch])
    drop_rng = np.random.default_rng([cfg.seed, 2, epoch])
    for x, lengths, y in split.batches(cfg.batch_size, order_rng):
        yield token_dropout(x, lengths, cfg.token_dropout, drop_rng), lengths, y


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
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# the two backends: one interface
# ------------------------------------------------------------------------------------------------
class NumpyBackend:
    """The scratch model trained by ``scratch_rnn.train.Trainer`` one batch at a time."""

    name = "numpy"

    def __init__(self, cfg: SentimentConfig, model_config, state: dict):
        from scratch_rnn.models import SequenceModel
        from scratch_rnn.train import Trainer

        class _Model(SequenceModel):  # keeps the logits of the last forward, for the training accuracy
            last_out = None

            def forward(self, x, lengths=None, h0=None):
                out, h_n = super().forward(x, lengths, h0)
                self.last_out = out
                return out, h_n

        self.model = _Model(model_config)
        self.model.load_state_dict(state)
        self.trainer = Trainer(self.model, cfg.train_config())

    def train_batch(self, x, y, lengths):
        rec = self.trainer.train_batch(x, y, lengths)[0]
        return rec.loss, rec.grad_norm, self.model.last_out

    def logits(self, x, lengths) -> np.ndarray:
        return self.model(x, lengths)[0]

    def set_lr(self, lr: float) -> None:
        self.trainer.optimizer.lr = lr

    def train(self, mode=True):
        self.model.train(mode)

    def state(self) -> dict:
        return self.model.state_dict()

    def load(self, state) -> None:
        self.model.load_state_dict(state)


class TorchBackend:
    """The torch twin with torch.optim; the same hyperparameters, clipping and dropout masks."""

    name = "torch"

    def __init__(self, cfg: SentimentConfig, model_config, state: dict, dropout_rng_state=None):
        import torch

        from reference.models import TorchSequenceModel
        from reference.training import torch_optimizer

        self.torch = torch
        self.cfg, self.mc = cfg, model_config
        self.dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
        self.model = TorchSequenceModel(model_config, self.dtype)
        self.load(state)
        self.params = list(self.model.parameters())
        self.opt = torch_optimizer(cfg.optimizer, self.params, **cfg.optimizer_kwargs())
        self.rng = np.random.default_rng()
        if dropout_rng_state is not None:  # the scratch model's generator: the same dropout masks
            self.rng.bit_generator.state = dropout_rng_state
        self.step = 0

    def train_batch(self, x, y, lengths):
        from reference.models import draw_dropout_masks
        from reference.training import total_norm
        from scratch_rnn.train import NonFiniteError

        torch = self.torch
        self.opt.zero_grad()
        masks = draw_dropout_masks(self.rng, self.mc, x.shape[1], x.shape[0], self.model.training)
        out, _ = self.model(torch.from_numpy(np.ascontiguousarray(x)), lengths, None, masks)
        loss = self.model.loss(out, torch.from_numpy(np.asarray(y, dtype=np.int64)))
        loss.backward()
        if self.cfg.clip_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm))
        else:
            norm = total_norm(self.params)
        self.step += 1
        if not (math.isfinite(loss.item()) and math.isfinite(norm)):
            raise NonFiniteError(self.step, f"torch: loss {loss.item()}, gradient norm {norm}", None, None, None, None)
        self.opt.step()
        return loss.item(), norm, out.detach().numpy()

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def logits(self, x, lengths) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(np.ascontiguousarray(x)), lengths)[0].numpy()

    def train(self, mode=True):
        self.model.train(mode)

    def state(self) -> dict:
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

    def load(self, state) -> None:
        torch = self.torch
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)).to(self.dtype) for k, v in state.items()})


def make_backend(name: str, cfg: SentimentConfig, model_config, state: dict):
    if name == "numpy":
        return NumpyBackend(cfg, model_config, state)
    from scratch_rnn.models import SequenceModel

    rng_state = SequenceModel(model_config).rng.bit_generator.state  # the scratch model's dropout generator
    return TorchBackend(cfg, model_config, state, rng_state)


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
# training and evaluation
# ------------------------------------------------------------------------------------------------
def _ce_and_correct(logits: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum()), int((z.argmax(axis=1) == y).sum())


def evaluate(backend, split, batch_size: int, *, return_predictions: bool = False):
    """Mean cross-entropy and accuracy of ``backend`` on ``split`` (eval mode), optionally predictions."""
    backend.train(False)
    total_loss, correct = 0.0, 0
    preds = np.empty(len(split), dtype=np.int8) if return_predictions else None
    # bucketed for little padding; the order does not matter, predictions go back by position
    idx_split = _IndexedSplit(split)
    for x, lengths, packed in idx_split.batches(batch_size):
        y, pos = packed[:, 0], packed[:, 1]
        logits = backend.logits(x, lengths)
        loss, ok = _ce_and_correct(logits, y)
        total_loss += loss
        correct += ok
        if preds is not None:
            preds[pos] = np.argmax(logits, axis=1)
    backend.train(True)
    n = len(split)
    return {"loss": total_loss / n, "accuracy": correct / n, "predictions": preds}


class _IndexedSplit:
    """Batches of a split carrying each review's label and position (for predictions)."""

    def __init__(self, split):
        self.split = split

    def batches(self, batch_size):
        from .text import iterate_batches

        s = self.split
        packed = np.stack([s.labels, np.arange(len(s))], axis=1)
        return iterate_batches(s.ids, s.lengths, packed, batch_size, np.random.default_rng(0))


def _rss_mb() -> float:
    """ru_maxrss: the peak resident set size of this process so far (KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_backend(cfg: SentimentConfig, backend_name: str, out_dir: str | os.PathLike, *, progress: bool = True,
                data=None, data_info=None) -> dict:
    """Train one backend, choose the epoch, score the test split once; write its files; return its entry.

    Files in ``out_dir``: ``steps_<backend>.csv`` (step, epoch, loss, grad_norm: the pre-clip global
    L2 norm), ``epochs_<backend>.csv``, ``predictions_<backend>.npy`` (test predictions, in the
    order of the test split) and ``result_<backend>.json`` (the metrics entry).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    limiter = set_threads(backend_name, cfg.threads)  # noqa: F841 (kept alive for the whole run)
    if backend_name == "torch" and cfg.dtype == "float32":
        import torch

        torch.set_flush_denormal(True)  # scratch_rnn flushes tiny float32 gradients too (rnn.FLUSH_BELOW)
    if data is None:
        data, data_info = prepare_data(cfg, progress=progress)
    t_data = time.perf_counter() - t_start
    rss_data = _rss_mb()
    state, init_info = build_initial_state(cfg, data.vocab)
    mc = cfg.model_config(len(data.vocab))
    backend = make_backend(backend_name, cfg, mc, state)
    train, valid, test = data["train"], data.splits.get("valid"), data["test"]
    n_batches = -(-len(train) // cfg.batch_size)

    steps, epochs = [], []
    best = (-1.0, 0, None)  # (valid accuracy, epoch, state)
    t_train = t_eval = 0.0
    step = 0
    stale = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        backend.set_lr(cfg.lr * cfg.lr_decay ** (epoch - 1))
        loss_sum, correct, seen = 0.0, 0, 0
        with tqdm(total=n_batches, desc=f"{backend_name} epoch {epoch}/{cfg.epochs}", unit="batch",
                  disable=not progress, leave=False, file=sys.stderr, mininterval=0.5) as bar:
            for x, lengths, y in epoch_batches(train, cfg, epoch):
                loss, norm, logits = backend.train_batch(x, y, lengths)
                step += 1
                steps.append((step, epoch, loss, norm))
                loss_sum += loss * len(y)
                correct += int((np.argmax(logits, axis=1) == y).sum())
                seen += len(y)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        t_train += time.perf_counter() - t0
        row = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               "seconds": time.perf_counter() - t0}
        if valid is not None:
            t0 = time.perf_counter()
            ev = evaluate(backend, valid, cfg.eval_batch_size)
            t_eval += time.perf_counter() - t0
            row.update(valid_loss=ev["loss"], valid_accuracy=ev["accuracy"])
            if ev["accuracy"] > best[0]:
                best, stale = (ev["accuracy"], epoch, backend.state() if cfg.select == "best" else None), 0
            else:
                stale += 1
        epochs.append(row)
        msg = (f"[{backend_name}] epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
               + (f", valid loss {row['valid_loss']:.4f} acc {row['valid_accuracy']:.4f}" if valid is not None else "")
               + f" ({row['seconds']:.0f} s)")
        if progress:
            tqdm.write(msg, file=sys.stderr)
        if cfg.patience is not None and stale >= cfg.patience:
            if progress:
                tqdm.write(f"[{backend_name}] no better validation accuracy for {stale} epochs: stopping",
                           file=sys.stderr)
            break

    selected = epochs[-1]["epoch"]
    if cfg.select == "best":
        selected = best[1]
        backend.load(best[2])
    t0 = time.perf_counter()
    ev = evaluate(backend, test, cfg.eval_batch_size, return_predictions=True)
    t_eval += time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    sel_row = epochs[selected - 1]

    pd.DataFrame(steps, columns=["step", "epoch", "loss", "grad_norm"]).to_csv(
        out_dir / f"steps_{backend_name}.csv", index=False)
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
        "steps": step,
        "seconds": seconds,
        "seconds_data": t_data,
        "seconds_train": t_train,
        "seconds_eval": t_eval,
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
    (out_dir / f"result_{backend_name}.json").write_text(json.dumps(entry, indent=1, default=_json_default))
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
    """Entry point of a backend's own process (spawned): results go to out_dir's files."""
    run_backend(SentimentConfig.from_dict(cfg_dict), backend_name, out_dir, progress=progress)


class BackendFailed(RuntimeError):
    pass


def run_experiment(cfg: SentimentConfig, out_dir: str | os.PathLike, *, progress: bool = True,
                   argv: list[str] | None = None) -> dict:
    """Run ``cfg.backend`` (one or both, in order numpy then torch), then write config.json,
    metrics.json, steps.csv (both backends side by side) and the plots. Returns the metrics."""
    from . import report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backends = ["numpy", "torch"] if cfg.backend == "both" else [cfg.backend]
    config = {"sentiment": cfg.to_dict(), "text": dataclasses.asdict(cfg.text_config()),
              "train": cfg.train_config().to_dict(), "command": argv,
              "backends": backends, "isolated_processes": cfg.backend == "both" and cfg.isolate}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1, default=_json_default))
    entries = []
    if len(backends) > 1 and cfg.isolate:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        for b in backends:
            p = ctx.Process(target=_child, args=(cfg.to_dict(), b, str(out_dir), progress), name=f"sentiment-{b}")
            p.start()
            p.join()
            if p.exitcode != 0:
                raise BackendFailed(f"the {b} backend's process exited with status {p.exitcode} (see its messages "
                                    "above)")
            entries.append(json.loads((out_dir / f"result_{b}.json").read_text()))
    else:
        data, info = prepare_data(cfg, progress=progress)
        for b in backends:
            entry = run_backend(cfg, b, out_dir, progress=progress, data=data, data_info=info)
            if len(backends) > 1:
                entry["peak_memory_measure"] += " (one process for both backends: the high-water mark so far)"
            entries.append(entry)
    metrics = {"run": out_dir.name, "results": entries}
    if len(entries) == 2:
        metrics["comparison"] = report.compare(out_dir, entries)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default))
    report.write_steps_table(out_dir, backends)
    report.plot_curves(out_dir, backends)
    report.plot_grad_norms(out_dir, backends, cfg.clip_norm)
    return metrics
