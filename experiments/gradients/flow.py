"""Experiment 4, gradient flow in the sentiment model: ‖∂L/∂h_t‖ against the distance from each
review's last token, on real IMDB batches, at initialization and after a short training, for tanh
and relu and each initializer of ``scratch_rnn.init`` — and, as the control group (part two), for an LSTM and a
GRU of the same size at torch's initialisation U(±1/√H). ``factor`` is the per-step gradient factor: exp of the
fitted per-step log-rate of ‖∂L/∂h_t‖ (the total gradient w.r.t. the hidden state, every cell alike).

Model: ``scratch_rnn.models.SequenceModel`` (Embedding -> RNN -> the state at each review's last
valid step -> Linear -> BCE with logits), float64, W_hh re-initialised by ``init.init_rnn``.
Data: a random subset of the official IMDB train split (``experiments.sentiment.data.load_imdb``,
the shared CSV by default), tokenised by the project's text pipeline with the whitespace tokenizer
and no stopword removal (no NLTK data needed), the first ``max_len`` tokens kept; the probe batch
and the accuracy set come from the test split. Training: ``scratch_rnn.train.Trainer`` with Adam and
global-norm clipping at 5 (its divergence stop off: an exploding relu run is a result here, recorded
as diverged when it turns non-finite).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from scratch_rnn import diagnostics as dg
from scratch_rnn import init
from scratch_rnn.cells import cell_names, cell_spec, module_options
from scratch_rnn.checks import check_positive_float, check_positive_int
from scratch_rnn.cli import BadInput
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import TrainConfig, Trainer, TrainingStopped

from .common import markdown_table, result_dir, save_figure, write_csv, write_json, write_report
from .sweep import append_row, load_results

INITS = {  # name -> RecurrentInit: λ₁ = 1 (or gain 1) for the three rescaled ones
    "torch_uniform": init.RecurrentInit("torch_uniform"),
    "gaussian": init.RecurrentInit("gaussian", scale=1.0),
    "orthogonal": init.RecurrentInit("orthogonal", scale=1.0),
    "identity": init.RecurrentInit("identity", scale=1.0, zero_bias=True),
}


@dataclass(frozen=True)
class FlowConfig:
    n_train: int = 4000
    n_eval: int = 1000
    probe: int = 64
    max_len: int = 200
    vocab: int = 10000
    embedding: int = 32
    hidden: int = 64
    epochs: int = 2
    batch: int = 32
    lr: float = 2e-3
    clip: float = 5.0
    inits: tuple = tuple(INITS)
    nonlinearities: tuple = ("tanh", "relu")
    cells: tuple = cell_names(builtin=True)  # rnn: every init × nonlinearity; a gated cell: one model at torch's init
    seed: int = 0
    data: str | None = None

    def __post_init__(self):
        for name in ("n_train", "n_eval", "probe", "max_len", "vocab", "embedding", "hidden", "epochs", "batch"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))  # np.int64 -> int
        object.__setattr__(self, "lr", check_positive_float("lr", self.lr))
        object.__setattr__(self, "clip", check_positive_float("clip", self.clip))
        unknown = [i for i in self.inits if i not in INITS]
        if unknown:
            raise ValueError(f"inits: expected names among {sorted(INITS)}, got {unknown}")
        unknown = [c for c in self.cells if c not in cell_names()]
        if unknown:
            raise ValueError(f"cells: expected names among {list(cell_names())}, got {unknown}")

    def jobs(self) -> list[tuple[str, str, str]]:
        """(cell, init, nonlinearity) of every model; a gated cell's nonlinearity is "gated" (σ and tanh inside),
        another
        cell's is its own default (IndRNN: relu)."""
        grid = {c for c in self.cells if "nonlinearity" in module_options(c)}  # the Elman RNN
        return [(c, s, nl) for c in self.cells if c in grid for s in self.inits for nl in self.nonlinearities] + [
            (c, "torch_uniform", cell_spec(c).options.get("nonlinearity", ("gated",))[0])
            for c in self.cells
            if c not in grid
        ]


QUICK = FlowConfig(
    n_train=64,
    n_eval=32,
    probe=8,
    max_len=20,
    vocab=300,
    embedding=8,
    hidden=8,
    epochs=1,
    batch=16,
    inits=("torch_uniform", "identity"),
)


def load_data(cfg: FlowConfig):
    """Encoded (ids, lengths, labels) for train, probe and eval; a dict of three triples + vocab size."""
    from experiments.sentiment import data as sdata  # the IMDB pipeline (experiments/sentiment)
    from experiments.sentiment import text as stext

    try:
        frames = sdata.split_frames(sdata.load_imdb(cfg.data))
    except (ValueError, OSError) as exc:  # a malformed or unreadable source: bad input, before any training
        raise BadInput(f"--data: {exc}") from exc
    need = {"train": cfg.n_train, "test": cfg.probe + cfg.n_eval}
    short = {k: (n, len(frames.get(k, ()))) for k, n in need.items() if n > len(frames.get(k, ()))}
    if short:
        raise BadInput(
            "--data: the flow experiment needs "
            + ", ".join(f"{n} {k} reviews (the source has {have})" for k, (n, have) in short.items())
        )
    rng = np.random.default_rng(cfg.seed)
    train = frames["train"].iloc[rng.choice(len(frames["train"]), cfg.n_train, replace=False)]
    test_rows = rng.choice(len(frames["test"]), cfg.probe + cfg.n_eval, replace=False)
    test = frames["test"].iloc[test_rows]
    texts = list(train["review"]) + list(test["review"])
    tcfg = stext.TextConfig(
        tokenizer="split", remove_stopwords=False, max_vocab=cfg.vocab, min_freq=2, max_len=cfg.max_len
    )
    corpus = stext.preprocess(texts, tcfg, cache_dir=None, progress=False)
    vocab = stext.build_vocab(corpus, np.arange(cfg.n_train), max_size=cfg.vocab, min_freq=2)
    ids, lengths = stext.encode_corpus(corpus, vocab, cfg.max_len)
    labels = np.concatenate([train["label"].to_numpy(), test["label"].to_numpy()])
    parts = {
        "train": slice(0, cfg.n_train),
        "probe": slice(cfg.n_train, cfg.n_train + cfg.probe),
        "eval": slice(cfg.n_train + cfg.probe, None),
    }
    out = {k: (ids[s], lengths[s], labels[s]) for k, s in parts.items()}
    return out, len(vocab), stext


def build(
    cfg: FlowConfig, vocab_size: int, scheme: str, nonlinearity: str, seed: int, cell: str = "rnn"
) -> SequenceModel:
    """The model of one job; a gated cell keeps the constructor's torch initialisation (``scheme`` torch_uniform)."""
    model = SequenceModel(
        ModelConfig(
            hidden_size=cfg.hidden,
            out_features=1,
            vocab_size=vocab_size,
            embedding_dim=cfg.embedding,
            cell=cell,
            nonlinearity="tanh" if nonlinearity == "gated" else nonlinearity,
            loss="bce",
            padding_idx=0,
            dtype="float64",
            seed=seed,
        )
    )
    if cell == "rnn":
        init.init_rnn(model.rnn, INITS[scheme], seed=seed)
    return model


def probe_norms(model: SequenceModel, batch, stext):
    """Per-distance gradient norms on the probe batch: (T, B) with NaN beyond each length."""
    ids, lengths, labels = batch
    x = stext.pad_batch(ids)
    model.zero_grad()
    model.forward_backward(x, labels[:, None].astype(np.float64), lengths=lengths)
    norms = dg.grad_norms_by_distance(model.rnn.hidden_grads[0], lengths)
    model.zero_grad()
    return norms


def accuracy(model, batch, stext, chunk=250) -> float:
    ids, lengths, labels = batch
    correct = 0
    model.eval()
    for s in range(0, len(ids), chunk):
        out, _ = model(stext.pad_batch(ids[s : s + chunk]), lengths=lengths[s : s + chunk])
        correct += int(((out[:, 0] > 0).astype(int) == labels[s : s + chunk]).sum())
    model.train()
    return correct / len(ids)


class ReviewBatches:
    """The training reviews as a batch source: length-bucketed batches from one generator, BCE targets (B, 1)."""

    def __init__(self, batch, cfg: FlowConfig, stext, seed: int):
        self.ids, self.lengths, self.labels = batch
        self.cfg, self.stext, self.rng = cfg, stext, np.random.default_rng(seed)

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.ids) // self.cfg.batch)

    def batches(self, epoch: int):
        for x, y, ln in self.stext.iterate_batches(self.ids, self.lengths, self.labels, self.cfg.batch, self.rng):
            yield x, y[:, None].astype(np.float64), ln


def train(model, cfg: FlowConfig, batch, stext, seed: int) -> dict:
    trainer = Trainer(
        model,
        TrainConfig(
            optimizer="adam",
            optimizer_kwargs={"lr": cfg.lr},
            clip_norm=cfg.clip,
            epochs=cfg.epochs,
            divergence_factor=None,
            progress=False,
        ),
    )
    trainer.fit(ReviewBatches(batch, cfg, stext, seed))
    losses, norms = trainer.losses, trainer.grad_norms
    tail = losses[-max(1, len(losses) // 5) :]
    return dict(
        train_loss_last20pct=float(np.mean(tail)),
        steps=len(losses),
        grad_norm_median=float(np.median(norms)),
        clipped_fraction=float(np.mean(norms > cfg.clip)),
    )


def _fit(norms: np.ndarray) -> dict:
    try:
        f = dg.fit_rate(np.arange(norms.shape[0]), norms)
        return dict(log_rate=f.log_rate, factor=f.factor, r2=f.r2)
    except ValueError:
        return dict(log_rate=np.nan, factor=np.nan, r2=np.nan)


def _regime(w: np.ndarray, cell: str, nl: str):
    """λ₁ and ρ of W_hh for the Elman RNN; NaN for a gated cell (its W_hh is a stack of gate blocks, no bound)."""
    nan = float("nan")
    return dg.regime(w, nl) if cell == "rnn" else dg.Regime(nan, nan, nan, nan, False, False)


def _run_job(cfg: FlowConfig, data, vocab_size, stext, scheme: str, nl: str, seed: int, cell: str = "rnn"):
    """One model: probe norms at init, training, probe norms after; (row dict, curves frame)."""
    model = build(cfg, vocab_size, scheme, nl, seed, cell)
    w = model.rnn.parameters()["weight_hh_l0"]
    reg0 = _regime(w, cell, nl)
    row = dict(
        cell=cell,
        init=scheme,
        nonlinearity=nl,
        seed=seed,
        lambda1_init=reg0.lambda1,
        rho_init=reg0.spectral_radius,
        accuracy_init=accuracy(model, data["eval"], stext),
    )
    stages = [("init", probe_norms(model, data["probe"], stext))]
    try:
        row.update(train(model, cfg, data["train"], stext, seed))
        row["diverged"] = False
        stages.append(("trained", probe_norms(model, data["probe"], stext)))
        row["accuracy_trained"] = accuracy(model, data["eval"], stext)
    except (TrainingStopped, FloatingPointError) as exc:  # an overflowing relu recurrence: recorded, not hidden
        row.update(diverged=True, error=str(exc)[:200], accuracy_trained=float("nan"))
    reg1 = _regime(w, cell, nl)
    row.update(lambda1_trained=reg1.lambda1, rho_trained=reg1.spectral_radius)
    curves = []
    for stage, norms in stages:
        row.update({f"{stage}_{k_}": v for k_, v in _fit(norms).items()})
        valid = np.sum(np.isfinite(norms), axis=1)
        with np.errstate(all="ignore"):
            med = np.nanmedian(np.where(norms > 0, norms, np.nan), axis=1)
        curves.append(
            pd.DataFrame(
                dict(
                    cell=cell,
                    init=scheme,
                    nonlinearity=nl,
                    stage=stage,
                    distance=np.arange(norms.shape[0]),
                    grad_norm_median=med,
                    samples=valid,
                )
            )
        )
    return row, pd.concat(curves, ignore_index=True)


def run(cfg: FlowConfig, out, progress: bool = True) -> dict:
    t0 = time.time()
    data, vocab_size, stext = load_data(cfg)
    jobs = cfg.jobs()
    # each finished model is appended to jobs.jsonl at once: a rerun with the same config resumes
    done_path = out / "jobs.jsonl"
    key = json.dumps(asdict(cfg), sort_keys=True, default=str)
    done = {
        (r["cell"], r["init"], r["nonlinearity"]): r
        for r in load_results(done_path)
        if r.get("config_key") == key and {"cell", "init", "nonlinearity", "curves"} <= set(r)
    }  # whole rows only
    rows, curves = [], []
    for k, job in enumerate(tqdm(jobs, desc="flow", disable=not progress)):
        cell, scheme, nl = job
        if job not in done:
            row, job_curves = _run_job(cfg, data, vocab_size, stext, scheme, nl, cfg.seed + k, cell)
            done[job] = dict(row, config_key=key, curves=job_curves.to_dict(orient="list"))
            append_row(done_path, done[job])
        rec = dict(done[job])
        curves.append(pd.DataFrame(rec.pop("curves")))
        rec.pop("config_key")
        rows.append(rec)
    df, curves = pd.DataFrame(rows), pd.concat(curves, ignore_index=True)
    write_csv(out / "flow.csv", df)
    write_csv(out / "curves.csv", curves)

    fig, axes = plt.subplots(len(cfg.nonlinearities), 2, figsize=(11, 3.6 * len(cfg.nonlinearities)), squeeze=False)
    for i, nl in enumerate(cfg.nonlinearities):
        for j, stage in enumerate(("init", "trained")):
            ax = axes[i, j]
            for cell, scheme, job_nl in jobs:  # the gated cells drawn beside the tanh RNNs
                if job_nl != nl and not (job_nl == "gated" and nl == cfg.nonlinearities[0]):
                    continue
                c = curves[
                    (curves.cell == cell)
                    & (curves.init == scheme)
                    & (curves.nonlinearity == job_nl)
                    & (curves.stage == stage)
                ]
                c = c[c.samples >= max(1, cfg.probe // 4)]  # distances most of the probe reaches
                ax.plot(
                    c.distance,
                    c.grad_norm_median,
                    "--" if cell != "rnn" else "-",
                    label=scheme if cell == "rnn" else f"{cell.upper()} (torch init)",
                )
            ax.set_yscale("log")
            ax.set_xlabel("distance from the review's last token (steps)")
            ax.set_ylabel("median ‖∂L/∂h_t‖ (log)")
            gated_here = nl == cfg.nonlinearities[0] and any(c != "rnn" for c in cfg.cells)
            ax.set_title(
                f"{nl}{' (and the gated cells)' if gated_here else ''}, "
                f"{'at initialization' if stage == 'init' else 'after training'}"
            )
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    save_figure(fig, out / "flow.png")

    summary = dict(
        config=asdict(cfg), seconds=time.time() - t0, vocab_size=vocab_size, results=df.to_dict(orient="records")
    )
    write_json(out / "summary.json", summary)
    cols = [
        c
        for c in [
            "cell",
            "init",
            "nonlinearity",
            "lambda1_init",
            "rho_init",
            "init_factor",
            "accuracy_init",
            "trained_factor",
            "accuracy_trained",
            "lambda1_trained",
            "rho_trained",
            "diverged",
        ]
        if c in df
    ]
    write_report(
        out / "report.md",
        "Gradient flow in the IMDB sentiment model",
        [
            (
                "Setup",
                f"SequenceModel: Embedding({vocab_size}, {cfg.embedding}) -> RNN, LSTM or GRU (H={cfg.hidden}) "
                "-> last valid "
                f"state -> Linear -> BCE, float64. {cfg.n_train} random training reviews, first {cfg.max_len} "
                f"tokens (whitespace tokens, no stopword removal), {cfg.epochs} epoch(s) of Adam (lr {cfg.lr}, "
                f"batch {cfg.batch}, clip {cfg.clip}); probe batch: {cfg.probe} test reviews; accuracy on "
                f"{cfg.n_eval} other test reviews. Seeds {cfg.seed}..{cfg.seed + len(jobs) - 1}, one per model.",
            ),
            (
                "Rates",
                "factor = exp(fitted per-step log-rate) of ‖∂L/∂h_(end-n)‖ against n, pooled over the probe "
                "batch (< 1: vanishing).\n\n" + markdown_table(df[cols]),
            ),
            ("Plots", "flow.png: median gradient norm against distance, at initialization and after training."),
        ],
    )
    return summary


def main(args) -> dict:
    cfg = QUICK if args.quick else FlowConfig()
    cfg = replace(cfg, seed=args.seed, data=args.data, **({"cells": tuple(args.cells)} if args.cells else {}))
    return run(cfg, result_dir("flow", args.quick, args.out), progress=not args.no_progress)
