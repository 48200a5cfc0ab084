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

Model: ``scratch_rnn.models.SequenceModel`` with dense input: ``RNN`` (two biases, both trained, where
their code has one), the state at the last step, a ``Linear`` readout and the task's loss (MSE or
cross-entropy), float64. Training: ``scratch_rnn.train.Trainer`` with SGD and, for sgd_clip and
irnn, global-norm clipping; an "epoch" is ``check_every`` fresh batches, evaluated at its end on fresh
samples, and the trial stops once solved (``stop_when``) or after ``max_iters`` steps. The trainer's
divergence stop is off (their protocol has none: a trial that explodes shows it in its error); a
non-finite step ends the trial as diverged.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scratch_rnn import init
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import TrainConfig, Trainer, TrainingStopped

from .common import markdown_table, result_dir, save_figure, write_csv, write_json, write_report
from .sweep import run_sweep
from .tasks import TASKS, make_batch, sample_errors

METHODS = ("sgd", "sgd_clip", "irnn")  # the protocols of part one
# The methods of part two: SGD-CR (Pascanu et al.'s clipping plus the soft constraint Ω) and the gated cells,
# trained with sgd_clip's optimizer and clipping.
ALL_METHODS = ("sgd", "sgd_clip", "sgd_cr", "irnn", "lstm", "gru")
CLIPPED = ("sgd_clip", "sgd_cr", "irnn", "lstm", "gru")
CR_ALPHA = 2.0          # their default weight of Ω
CR_FALLBACK_NORM = 1e10  # above it (or NaN/inf) their step is 0.02·W_hh on W_hh and nothing elsewhere
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


def build(task: str, method: str, hidden: int, seed: int) -> SequenceModel:
    """The model of one trial: dense input -> RNN -> last state -> Linear readout -> the task's loss."""
    spec = TASKS[task]
    rng = np.random.default_rng(seed)
    nonlinearity = "relu" if method == "irnn" else "tanh"
    cell = method if method in ("lstm", "gru") else "rnn"
    model = SequenceModel(ModelConfig(hidden_size=hidden, out_features=spec.n_out, input_size=spec.n_in,
                                      nonlinearity=nonlinearity, cell=cell, pooling="last", loss=spec.loss,
                                      dtype="float64", seed=seed))
    if cell != "rnn":  # their usual init: torch's U(±1/√H), and for the LSTM a forget-gate bias of 1
        if cell == "lstm":
            model.rnn.parameters()["bias_ih_l0"][hidden:2 * hidden] = 1.0
            model.rnn.parameters()["bias_hh_l0"][hidden:2 * hidden] = 0.0
    elif method == "irnn":
        init.init_rnn(model.rnn, init.RecurrentInit("identity", zero_bias=True, input_std=1e-3), seed=rng)
    else:
        cfg = init.RecurrentInit("gaussian", scale=0.95, target="spectral_radius",
                                 nonzero_per_row=min(15, hidden), zero_bias=True, input_std=0.01)
        init.init_rnn(model.rnn, cfg, seed=rng)
    model.head.load_state_dict({"weight": rng.normal(0, 0.01, (spec.n_out, hidden)), "bias": np.zeros(spec.n_out)})
    return model


def batch_first(x: np.ndarray) -> np.ndarray:
    """The tasks' time-major (T, B, I) batches in the model's layout (B, T, I)."""
    return x.transpose(1, 0, 2)


def evaluate(task, model, rng, samples: int, length: int, chunk: int = 1000) -> float:
    """Fraction of wrong samples among ``samples`` fresh ones (eval mode)."""
    wrong = 0
    model.eval()
    try:
        for start in range(0, samples, chunk):
            n = min(chunk, samples - start)
            x, y = make_batch(task, rng, n, length)
            out, _ = model(batch_first(x))
            wrong += int(sample_errors(task, out, y).sum())
    finally:
        model.train()
    return wrong / samples


class FreshBatches:
    """The trial's batch source: every "epoch" is ``per_epoch`` fresh batches from one generator.

    It draws as it goes (a trial is never resumed midway: the sweep reruns an unfinished trial whole).
    """

    def __init__(self, task: str, length: int, batch: int, rng: np.random.Generator, per_epoch: int):
        self.task, self.length, self.batch, self.rng, self.per_epoch = task, length, batch, rng, per_epoch

    def num_batches(self, epoch: int) -> int:
        return self.per_epoch

    def batches(self, epoch: int):
        for _ in range(self.per_epoch):
            x, y = make_batch(self.task, self.rng, self.batch, self.length)
            yield batch_first(x), y, None


class SGDCRTrainer(Trainer):
    """SGD-CR as pascanur/trainingRNNs RNN.py runs it: the one step the Trainer takes is changed in its
    gradient, nothing else (the loop, evaluation and stopping are the Trainer's).

    After backward, α times the gradient of Ω (``pascanu_omega``, the code's form: into W_hh only) is added to
    W_hh's gradient; the norm of all gradients (Ω included) is recorded; when it is NaN, inf or above 1e10 the
    step becomes 0.02·W_hh on W_hh and 0 elsewhere (their fallback), else it is rescaled to ``clip`` when larger
    (c·g/‖g‖, their 'rescale' clipping, without torch's 1e-6).
    """

    def __init__(self, model, config, *, clip: float, alpha: float = CR_ALPHA, omega_form: str = "code", **hooks):
        super().__init__(model, config, **hooks)
        self.clip, self.alpha, self.omega_form = clip, alpha, omega_form
        self.omegas = []

    def _measure_and_clip(self) -> float:
        from scratch_rnn.optim import total_norm
        from scratch_rnn.regularizers import pascanu_omega

        grads = self.model.grads
        w_hh = self.model.parameters()["rnn.weight_hh_l0"]
        norm = None
        if self.alpha:
            try:
                omega, og = pascanu_omega(self.model.rnn, form=self.omega_form)
                self.omegas.append(omega)
                grads["rnn.weight_hh_l0"] += self.alpha * og["weight_hh_l0"]
            except FloatingPointError:  # Ω overflowed: their code's norm would be NaN, so the fallback
                norm = float("inf")
        norm = total_norm(grads, 2) if norm is None else norm
        if not np.isfinite(norm) or norm > CR_FALLBACK_NORM:
            for g in grads.values():
                g.fill(0.0)
            grads["rnn.weight_hh_l0"][...] = 0.02 * w_hh
        elif norm > self.clip:
            for g in grads.values():
                g *= self.clip / norm
        return norm


def trial_trainer(spec: dict, model: SequenceModel, eval_rng: np.random.Generator) -> Trainer:
    """The Trainer of one trial: SGD, clipping for every method but plain sgd, an evaluation every check_every
    steps (on ``eval_samples`` fresh samples; with ``confirm_samples``, a zero error is confirmed on that many
    more before the trial counts as solved)."""
    clip = spec["clip"] if spec["method"] in CLIPPED else None
    cfg = TrainConfig(optimizer="sgd", optimizer_kwargs={"lr": spec["lr"]},
                      clip_norm=None if spec["method"] == "sgd_cr" else clip,
                      epochs=-(-spec["max_iters"] // spec["check_every"]), max_steps=spec["max_iters"],
                      divergence_factor=None, progress=False)

    def evaluate_trial(m):
        error = evaluate(spec["task"], m, eval_rng, spec["eval_samples"], spec["length"])
        confirm = spec.get("confirm_samples")
        if error == 0.0 and confirm:  # a cheap screen passed: the real criterion on the larger sample
            error = evaluate(spec["task"], m, eval_rng, confirm, spec["length"])
        return {"error": error}

    hooks = dict(evaluate=evaluate_trial, stop_when=lambda row: row["error"] == 0.0)
    if spec["method"] == "sgd_cr":
        return SGDCRTrainer(model, cfg, clip=clip, alpha=spec.get("alpha", CR_ALPHA),
                            omega_form=spec.get("omega_form", "code"), **hooks)
    return Trainer(model, cfg, **hooks)


def run_trial(spec: dict) -> dict:
    """One (task, length, method, seed) training run; a module-level function for the workers."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one BLAS thread per worker: trials run side by side
        return _run_trial(spec)


def _run_trial(spec: dict) -> dict:
    t0 = time.time()
    task, length, seed = spec["task"], spec["length"], spec["seed"]
    model = build(task, spec["method"], spec["hidden"], seed)
    trainer = trial_trainer(spec, model, np.random.default_rng([seed, 2]))
    source = FreshBatches(task, length, spec["batch"], np.random.default_rng([seed, 1]), spec["check_every"])
    diverged = False
    try:
        trainer.fit(source)
    except TrainingStopped:
        diverged = True
    errors = [row["error"] for row in trainer.epochs]
    norms = trainer.grad_norms if trainer.history else np.array([np.nan])
    losses_ = trainer.losses if trainer.history else np.array([np.nan])
    tail = losses_[-max(1, len(losses_) // 10):]
    clip = spec["clip"]
    return dict(solved=bool(errors) and errors[-1] == 0.0, diverged=diverged, iters=trainer.step,
                final_error=errors[-1] if errors else 1.0, best_error=min([1.0] + errors),
                final_train_loss=float(np.mean(tail)), grad_norm_median=float(np.median(norms)),
                grad_norm_max=float(np.max(norms)), clipped_fraction=float(np.mean(norms > clip)),
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
        for m in ALL_METHODS:
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


def with_seed_offset(p: Protocol, offset: int) -> Protocol:
    """The protocol with its seeds shifted by ``offset`` (``--seed``): other trials, other ids in the table."""
    return replace(p, seeds=tuple(offset + s for s in p.seeds)) if offset else p


def main(args) -> dict:
    name = args.protocol or ("quick" if args.quick else "reduced")
    out = result_dir("pathological" if name in ("reduced", "quick") else f"pathological-{name}", name == "quick",
                     args.out)
    return run(with_seed_offset(PROTOCOLS[name], args.seed), out, workers=args.workers, scheduler=args.scheduler,
               tasks=args.tasks, progress=not args.no_progress)
