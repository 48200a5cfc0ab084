"""Experiment 2, the pathological tasks of Pascanu, Mikolov & Bengio (2013): the adding problem and
the temporal order problem, success rate against sequence length for three methods:

- ``sgd``: tanh RNN, their "smart tanh" init (W_hh Gaussian with 15 non-zeros per row rescaled to
  spectral radius 0.95; W_ih and the readout N(0, 0.01²); zero biases), plain SGD;
- ``sgd_clip``: the same with the global gradient norm rescaled to 1 when larger (their c = 1);
- ``irnn``: Le, Jaitly & Hinton (2015): relu RNN, W_hh = I, zero biases, W_ih N(0, 0.001²), SGD with
  the same clipping.

Their protocol (github pascanur/trainingRNNs, RNN.py defaults): 50 hidden units, learning rate 0.01,
batch 20, one fresh batch per iteration, evaluation every 20 iterations on 10,000 fresh samples,
solved when none of them is wrong, at most 5·10⁶ iterations. A trial is one (task, length, method,
seed); trials run as a resumable sweep (:mod:`.sweep`). ``--protocol full`` is that grid; the
``reduced`` grid is what fits a few minutes on two cores (fewer lengths, seeds and iterations, and a
smaller evaluation set): what was run is written into every report.

Model: ``scratch_rnn.RNN`` (two biases, both trained, where their code has one) + ``layers.Linear``
readout of the last state; losses from ``scratch_rnn.losses``; ``optim.SGD`` and
``optim.clip_grad_norm_``. float64.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scratch_rnn import RNN, init, losses, optim
from scratch_rnn.layers import Linear

from .common import markdown_table, result_dir, save_figure, write_csv, write_json, write_report
from .sweep import run_sweep
from .tasks import TASKS, make_batch, sample_errors

METHODS = ("sgd", "sgd_clip", "irnn")
BASELINE_ERROR = {"adding": 0.36, "temporal_order": 0.75}  # constant prediction / chance


@dataclass(frozen=True)
class Protocol:
    name: str
    tasks: tuple
    lengths: tuple
    methods: tuple
    seeds: tuple
    max_iters: int
    check_every: int
    eval_samples: int
    hidden: int = 50
    batch: int = 20
    lr: float = 0.01
    clip: float = 1.0


PROTOCOLS = {
    "full": Protocol("full", ("adding", "temporal_order"), (50, 100, 150, 200), METHODS, tuple(range(5)),
                     max_iters=5_000_000, check_every=20, eval_samples=10_000),
    "reduced": Protocol("reduced", ("adding", "temporal_order"), (10, 25, 50), METHODS, (0, 1, 2),
                        max_iters=3000, check_every=250, eval_samples=1000),
    "long": Protocol("long", ("adding", "temporal_order"), (25, 50), METHODS, (0, 1, 2),
                     max_iters=12000, check_every=500, eval_samples=1000),
    # within the paper's length range, at a budget one 2-core machine finishes in ~20 minutes
    "extended": Protocol("extended", ("adding", "temporal_order"), (50, 100), METHODS, (0, 1, 2),
                         max_iters=20000, check_every=1000, eval_samples=1000),
    "quick": Protocol("quick", ("adding", "temporal_order"), (10,), METHODS, (0,),
                      max_iters=20, check_every=10, eval_samples=100, hidden=8),
}


def build(task: str, method: str, hidden: int, seed: int):
    """The model of one trial: (rnn, readout)."""
    spec = TASKS[task]
    rng = np.random.default_rng(seed)
    nonlinearity = "relu" if method == "irnn" else "tanh"
    rnn = RNN(spec.n_in, hidden, nonlinearity=nonlinearity, dtype=np.float64, seed=seed)
    if method == "irnn":
        init.init_rnn(rnn, init.RecurrentInit("identity", zero_bias=True, input_std=1e-3), seed=rng)
    else:
        cfg = init.RecurrentInit("gaussian", scale=0.95, target="spectral_radius",
                                 nonzero_per_row=min(15, hidden), zero_bias=True, input_std=0.01)
        init.init_rnn(rnn, cfg, seed=rng)
    head = Linear(hidden, spec.n_out, dtype=np.float64, seed=seed)
    head.load_state_dict({"weight": rng.normal(0, 0.01, (spec.n_out, hidden)), "bias": np.zeros(spec.n_out)})
    return rnn, head


def predict(rnn, head, x):
    _, h_n = rnn(x)
    return head(h_n[0])  # (B, n_out)


def evaluate(task, rnn, head, rng, samples: int, length: int, chunk: int = 1000) -> float:
    """Fraction of wrong samples among ``samples`` fresh ones."""
    wrong = 0
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        x, y = make_batch(task, rng, n, length)
        wrong += int(sample_errors(task, predict(rnn, head, x), y).sum())
    return wrong / samples


def train_step(task, rnn, head, opt, x, y, clip):
    """One SGD step; returns (loss, pre-clip gradient norm)."""
    spec = TASKS[task]
    rnn.zero_grad()
    head.zero_grad()
    out = predict(rnn, head, x)
    if spec.loss == "mse":
        loss, dout = losses.mse_loss(out, y), losses.mse_loss_backward(1.0, out, y)
    else:
        loss, dout = losses.cross_entropy(out, y), losses.cross_entropy_backward(1.0, out, y)
    dh = head.backward(dout)
    rnn.backward(None, dh[None])
    grads = {**{f"rnn.{k}": v for k, v in rnn.grads.items()}, **{f"head.{k}": v for k, v in head.grads.items()}}
    norm = optim.clip_grad_norm_(grads, clip) if clip is not None else optim.total_norm(grads)
    if not math.isfinite(norm):
        raise FloatingPointError(f"gradient norm {norm}")
    opt.step(grads)
    return float(loss), float(norm)


def run_trial(spec: dict) -> dict:
    """One (task, length, method, seed) training run; a module-level function for the workers."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one BLAS thread per worker: trials run side by side
        return _run_trial(spec)


def _run_trial(spec: dict) -> dict:
    t0 = time.time()
    task, method, length, seed = spec["task"], spec["method"], spec["length"], spec["seed"]
    rnn, head = build(task, method, spec["hidden"], seed)
    params = {**{f"rnn.{k}": v for k, v in rnn.parameters().items()},
              **{f"head.{k}": v for k, v in head.parameters().items()}}
    opt = optim.SGD(params, lr=spec["lr"])
    clip = spec["clip"] if method in ("sgd_clip", "irnn") else None
    data_rng = np.random.default_rng([seed, 1])
    eval_rng = np.random.default_rng([seed, 2])
    best, error, it, solved, diverged = 1.0, 1.0, 0, False, False
    norms, losses_ = [], []
    try:
        for it in range(1, spec["max_iters"] + 1):
            x, y = make_batch(task, data_rng, spec["batch"], length)
            loss, norm = train_step(task, rnn, head, opt, x, y, clip)
            norms.append(norm)
            losses_.append(loss)
            if it % spec["check_every"] == 0 or it == spec["max_iters"]:
                error = evaluate(task, rnn, head, eval_rng, spec["eval_samples"], length)
                best = min(best, error)
                if error == 0.0:
                    solved = True
                    break
    except FloatingPointError:
        diverged = True
    norms = np.asarray(norms) if norms else np.array([np.nan])
    tail = losses_[-max(1, len(losses_) // 10):] if losses_ else [np.nan]
    return dict(solved=solved, diverged=diverged, iters=it, final_error=error, best_error=best,
                final_train_loss=float(np.mean(tail)), grad_norm_median=float(np.median(norms)),
                grad_norm_max=float(np.max(norms)), clipped_fraction=float(np.mean(norms > spec["clip"])),
                seconds=time.time() - t0)


def specs_for(p: Protocol, tasks=None) -> list[dict]:
    return [dict(task=t, length=L, method=m, seed=s, hidden=p.hidden, batch=p.batch, lr=p.lr, clip=p.clip,
                 max_iters=p.max_iters, check_every=p.check_every, eval_samples=p.eval_samples)
            for t in (tasks or p.tasks) for L in p.lengths for m in p.methods for s in p.seeds]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["task", "length", "method"], sort=True)
    out = g.agg(runs=("solved", "size"), solved=("solved", "sum"), diverged=("diverged", "sum"),
                median_best_error=("best_error", "median"), median_final_loss=("final_train_loss", "median"),
                median_grad_norm=("grad_norm_median", "median"), max_grad_norm=("grad_norm_max", "max"),
                clipped_fraction=("clipped_fraction", "mean")).reset_index()
    out["success_rate"] = out["solved"] / out["runs"]
    return out


def plot(summary: pd.DataFrame, path, p: Protocol):
    tasks = list(summary.task.unique())
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7.5), squeeze=False)
    for j, task in enumerate(tasks):
        for m in METHODS:
            s = summary[(summary.task == task) & (summary.method == m)]
            if s.empty:
                continue
            axes[0, j].plot(s.length, 100 * s.success_rate, "o-", label=m)
            axes[1, j].plot(s.length, 100 * s.median_best_error, "o-", label=m)
        axes[1, j].axhline(100 * BASELINE_ERROR[task], color="gray", ls="--", lw=1, label="constant / chance")
        axes[0, j].set_ylim(-5, 105)
        axes[0, j].set_ylabel(f"success rate (%) over {len(p.seeds)} seeds")
        axes[1, j].set_ylabel("median best error on fresh samples (%)")
        axes[0, j].set_title(f"{task}: solved within {p.max_iters} iterations")
        axes[1, j].set_title(f"{task}: best fresh-sample error")
        for ax in axes[:, j]:
            ax.set_xlabel("sequence length T")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    save_figure(fig, path)


def run(p: Protocol, out, *, workers=2, scheduler=None, tasks=None, progress=True) -> dict:
    t0 = time.time()
    specs = specs_for(p, tasks)
    df = run_sweep(run_trial, specs, out / "trials.jsonl", workers=workers, scheduler=scheduler,
                   progress=progress, desc=f"pathological ({p.name})")
    write_csv(out / "trials.csv", df)
    summary = summarize(df)
    write_csv(out / "success.csv", summary)
    plot(summary, out / "success_vs_length.png", p)
    res = dict(config=asdict(p), seconds=time.time() - t0, trials=len(df),
               trial_cpu_seconds=float(df.seconds.sum()), summary=summary.to_dict(orient="records"))
    write_json(out / "summary.json", res)
    table = summary[["task", "length", "method", "runs", "solved", "success_rate", "diverged",
                     "median_best_error", "median_final_loss", "clipped_fraction"]]
    write_report(out / "report.md", f"Pathological tasks ({p.name} protocol)", [
        ("What ran", f"tasks {list(tasks or p.tasks)}, lengths {list(p.lengths)}, methods {list(p.methods)}, "
                     f"seeds {list(p.seeds)} ({len(p.seeds)} runs per cell); hidden {p.hidden}, batch {p.batch}, "
                     f"lr {p.lr}, clipping threshold {p.clip} (sgd_clip, irnn); at most {p.max_iters} "
                     f"iterations, evaluation every {p.check_every} on {p.eval_samples} fresh samples; solved = "
                     f"no wrong sample. {len(df)} trials, {df.seconds.sum():.0f} trial-seconds."),
        ("Success rate against length", markdown_table(table) + "\n\nBaselines: constant prediction gets "
         "36% of adding samples wrong (squared error > 0.04); chance on temporal order is 75%."),
        ("Plots", "success_vs_length.png"),
    ])
    return res


def main(args) -> dict:
    name = args.protocol or ("quick" if args.quick else "reduced")
    out = result_dir("pathological" if name in ("reduced", "quick") else f"pathological-{name}", name == "quick",
                     args.out)
    return run(PROTOCOLS[name], out, workers=args.workers, scheduler=args.scheduler, tasks=args.tasks,
               progress=not args.no_progress)
