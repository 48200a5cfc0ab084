"""Experiment 2, the pathological tasks of Pascanu, Mikolov & Bengio (2013): the adding problem and
the temporal order problem, success rate against sequence length for three methods:

- ``sgd``: tanh RNN, their "smart tanh" init (W_hh Gaussian with 15 non-zeros per row rescaled to
  spectral radius 0.95; W_ih and the readout N(0, 0.01²); zero biases), plain SGD;
- ``sgd_clip``: the same with the global gradient norm rescaled to 1 when larger (their c = 1), and their fallback
  step 0.02·W_hh when the norm is NaN, inf or above 1e10 (:class:`SGDCRTrainer` with α = 0);
- ``irnn``: Le, Jaitly & Hinton (2015): relu RNN, W_hh = I, zero biases, W_ih N(0, 0.001²), SGD with
  the same clipping.

Their protocol (github pascanur/trainingRNNs, RNN.py defaults): 50 hidden units, learning rate 0.01,
batch 20, one fresh batch per iteration, evaluation every 20 iterations on 10,000 fresh samples,
solved when none of them is wrong, at most 5·10⁶ iterations. A trial is one (task, length, method,
seed); trials run as a resumable sweep (:mod:`.sweep`). ``--protocol full`` is that grid; the
``reduced`` grid is what fits a few minutes on two cores (fewer lengths, seeds and iterations, and a
smaller evaluation set): what was run is written into every report. ``--protocol budget`` (part two) is the
paper's lengths 50-200 with all methods of :data:`ALL_METHODS`, their checks (every 20 iterations, solved = none
of 10,000 fresh samples wrong) behind a free screen (:class:`Screen`), at the iteration cap that fits 2 hours on
2 cores.

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

from .common import (markdown_table, result_dir, save_figure, separation_chance, wilson_interval, write_csv,
                     write_json, write_report)
from .sweep import run_sweep
from .tasks import TASKS, make_batch, sample_errors

METHODS = ("sgd", "sgd_clip", "irnn")  # the protocols of part one
# The methods of part two: SGD-CR (Pascanu et al.'s clipping plus the soft constraint Ω) and the gated cells,
# trained with sgd_clip's optimizer and clipping.
# sgd_cr_exact: SGD-CR with the exact gradient of Ω into every parameter (form="exact", summed over steps: at init its
# α‖∇Ω‖ is 16-68× the code form's at lengths 50-200, docs/gradients.md) in place of the code's form (= the paper's
# eq. 10 up to α). Called sgd_cr_paper in part two's tables.
ALL_METHODS = ("sgd", "sgd_clip", "sgd_cr", "sgd_cr_exact", "irnn", "lstm", "gru")
CLIPPED = ("sgd_clip", "sgd_cr", "sgd_cr_exact", "irnn", "lstm", "gru")
CR_METHODS = {"sgd_cr": "code", "sgd_cr_exact": "exact"}  # method -> the form of Ω its step adds
# Methods whose step is their code's (SGDCRTrainer): 'rescale' clipping with the fallback step past 1e10 / NaN / inf
# (pascanur/trainingRNNs RNN.py l. 224-243); sgd_clip is the same step with α = 0.
FALLBACK_METHODS = ("sgd_clip",) + tuple(CR_METHODS)
CR_ALPHA = 2.0          # their default weight of Ω
CR_FALLBACK_NORM = 1e10  # above it (or NaN/inf) their step is 0.02·W_hh on W_hh and nothing elsewhere
BASELINE_ERROR = {"adding": 0.36, "temporal_order": 0.75}  # constant prediction / chance
BUDGET_ITERS = 6000  # the budget protocol's iteration cap (measured to fit: docs/gradients.md)
MIN_LENGTH = 10  # the tasks place their markers in tenths of the length (tasks._check_length)


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
    # The budget protocol's checks (off elsewhere: each check evaluates eval_samples fresh samples). With screen, a
    # check first scores the check_every training batches just seen (each predicted before its own update: fresh
    # samples, free); only when none of them is wrong do eval_samples fresh samples decide. The error curve comes
    # from track_samples fresh samples every track_every iterations and at the end; eval_chunk samples per forward.
    screen: bool = False
    track_every: int = 0
    track_samples: int = 0
    eval_chunk: int = 1000
    only: tuple = ()  # (method, lengths) pairs: these methods run at these lengths only


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
    # Part two: the paper's lengths, all methods, their checks (every 20 iterations, solved = none of 10,000 fresh
    # samples wrong) behind the free screen; the cap is what fits 2 hours on 2 cores (docs/gradients.md).
    "budget": Protocol("budget", ("adding", "temporal_order"), (50, 100, 150, 200), ALL_METHODS, (0, 1, 2),
                       max_iters=BUDGET_ITERS, check_every=20, eval_samples=10_000, screen=True,
                       track_every=500, track_samples=1000, eval_chunk=250, only=(("sgd_cr_exact", (50,)),)),
    # its CI form: the same code and checks, two lengths, one seed, 40 iterations
    "budget-quick": Protocol("budget-quick", ("adding", "temporal_order"), (50, 100), ALL_METHODS, (0,),
                             max_iters=40, check_every=20, eval_samples=10_000, screen=True, track_every=20,
                             track_samples=200, eval_chunk=250, only=(("sgd_cr_exact", (50,)),)),
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
            self.last_y = y  # the batch the trainer is stepping on (read by Screen)
            yield batch_first(x), y, None


class Screen:
    """The budget protocol's free check: wrong samples among the training batches since the last check.

    A Trainer ``callback``: after every step it scores the step's output (computed before that step's update, on a
    batch never seen before) against the batch's targets by the task's criterion.
    """

    def __init__(self, task: str, source: FreshBatches):
        self.task, self.source = task, source
        self.wrong = self.seen = 0

    def __call__(self, trainer, record) -> None:
        if record.skipped:
            return
        y = self.source.last_y
        self.wrong += int(sample_errors(self.task, np.asarray(trainer.last_output.output), y).sum())
        self.seen += len(y)

    def take(self) -> float:
        """The error since the last call (NaN when no step was scored), and start counting again."""
        error = self.wrong / self.seen if self.seen else float("nan")
        self.wrong = self.seen = 0
        return error


class SGDCRTrainer(Trainer):
    """SGD-CR as pascanur/trainingRNNs RNN.py runs it: the one step the Trainer takes is changed in its
    gradient, nothing else (the loop, evaluation and stopping are the Trainer's). With ``alpha=0`` it is their
    clipped SGD (method ``sgd_clip``): the same clipping and fallback, no Ω.

    After backward, α times the gradient of Ω (``pascanu_omega``; the code's form reaches W_hh only, the exact
    form, method ``sgd_cr_exact``, every parameter) is added to the gradients (RNN.py l. 216-217); the norm of all
    gradients (Ω included) is recorded (l. 219-223); when it is NaN, inf or above 1e10 the step becomes 0.02·W_hh on
    W_hh and 0 elsewhere (their fallback, l. 231-243: "we can not even trust the numbers we get"), else it is
    rescaled to ``clip`` when larger (c·g/‖g‖, their 'rescale' clipping, l. 224-230, without torch's 1e-6).
    Line numbers: RNN.py of github.com/pascanur/trainingRNNs, commit 3f5df3f.
    """

    def __init__(self, model, config, *, clip: float, alpha: float = CR_ALPHA, omega_form: str = "code",
                 omega_steps: str | None = None, **hooks):
        super().__init__(model, config, **hooks)
        self.clip, self.alpha, self.omega_form, self.omega_steps = clip, alpha, omega_form, omega_steps
        self.omegas = []

    def _measure_and_clip(self) -> float:
        from scratch_rnn.optim import total_norm
        from scratch_rnn.regularizers import pascanu_omega

        grads = self.model.grads
        w_hh = self.model.parameters()["rnn.weight_hh_l0"]
        norm = None
        if self.alpha:
            try:
                omega, og = pascanu_omega(self.model.rnn, form=self.omega_form, steps=self.omega_steps)
                self.omegas.append(omega)
                for name, g in og.items():  # the code form's is zero but in W_hh; the exact form's reaches all
                    grads[f"rnn.{name}"] += self.alpha * g
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


def omega_scale(task: str, length: int, seed: int, *, hidden: int = 50, batch: int = 20) -> dict:
    """α‖∇Ω‖ of the exact form against the code form's at initialisation (α cancels in the ratios).

    The model of an sgd_cr trial (``build``), one fresh training batch, its forward and backward; then the global
    L2 norm of ∇Ω over every parameter for: the code form (its own mean over counted terms), the exact form at its
    own normalisation (sum over steps) and at the code's (steps="mean"). Also the loss gradient's norm, which
    the clipping sees beside α∇Ω.
    """
    from scratch_rnn.optim import total_norm
    from scratch_rnn.regularizers import pascanu_omega

    model = build(task, "sgd_cr", hidden, seed)
    x, y = make_batch(task, np.random.default_rng([seed, 1]), batch, length)
    model.zero_grad()
    model.forward_backward(batch_first(x), y)
    loss_norm = total_norm(model.grads, 2)
    norm = {}
    for key, form, steps in (("code", "code", None), ("exact", "exact", None), ("exact_mean", "exact", "mean")):
        norm[key] = total_norm(pascanu_omega(model.rnn, form=form, steps=steps)[1], 2)
    return dict(task=task, length=length, seed=seed, loss_grad_norm=loss_norm,
                alpha_omega_code=CR_ALPHA * norm["code"], alpha_omega_exact=CR_ALPHA * norm["exact"],
                alpha_omega_exact_mean=CR_ALPHA * norm["exact_mean"], ratio_exact_code=norm["exact"] / norm["code"],
                ratio_exact_mean_code=norm["exact_mean"] / norm["code"])


def trial_trainer(spec: dict, model: SequenceModel, eval_rng: np.random.Generator,
                  source: FreshBatches | None = None) -> Trainer:
    """The Trainer of one trial: SGD, clipping for every method but plain sgd, a check every check_every steps.

    A check evaluates ``eval_samples`` fresh samples (with ``confirm_samples``, a zero error is confirmed on that
    many more before the trial counts as solved). With ``screen`` (the budget protocol; needs ``source``) a check
    first scores the training batches since the last one (:class:`Screen`) and evaluates the ``eval_samples`` only
    when none of them was wrong; ``track_samples`` fresh samples every ``track_every`` steps and at the last check
    give the error curve. Each check's row: ``error`` (the evaluation run, if any, else None), and with screen
    ``screen_error``, ``test_error`` and ``track_error`` (None when not run).
    """
    method = spec["method"]
    clip = spec["clip"] if method in CLIPPED else None
    cfg = TrainConfig(optimizer="sgd", optimizer_kwargs={"lr": spec["lr"]},
                      clip_norm=None if method in FALLBACK_METHODS else clip,
                      epochs=-(-spec["max_iters"] // spec["check_every"]), max_steps=spec["max_iters"],
                      divergence_factor=None, progress=False)
    chunk = spec.get("eval_chunk", 1000)

    def fresh_error(samples):
        return evaluate(spec["task"], model, eval_rng, samples, spec["length"], chunk=chunk)

    def evaluate_trial(m):
        error = fresh_error(spec["eval_samples"])
        confirm = spec.get("confirm_samples")
        if error == 0.0 and confirm:  # a cheap screen passed: the real criterion on the larger sample
            error = fresh_error(confirm)
        return {"error": error}

    checks = []

    def screened_check(m):
        checks.append(None)
        step = len(checks) * spec["check_every"]
        row = {"screen_error": screen.take(), "test_error": None, "track_error": None}
        if row["screen_error"] == 0.0:
            row["test_error"] = fresh_error(spec["eval_samples"])
        if row["test_error"] is None and (step % spec["track_every"] == 0 or step >= spec["max_iters"]):
            row["track_error"] = fresh_error(spec["track_samples"])
        row["error"] = row["test_error"] if row["test_error"] is not None else row["track_error"]
        return row

    if spec.get("screen"):
        if source is None:
            raise ValueError("source: a screened trial scores its training batches: pass its FreshBatches")
        screen = Screen(spec["task"], source)
        hooks = dict(evaluate=screened_check, stop_when=lambda row: row["test_error"] == 0.0, callback=screen)
    else:
        hooks = dict(evaluate=evaluate_trial, stop_when=lambda row: row["error"] == 0.0)
    if method in CR_METHODS:
        return SGDCRTrainer(model, cfg, clip=clip, alpha=spec.get("alpha", CR_ALPHA),
                            omega_form=spec.get("omega_form", CR_METHODS[method]),
                            omega_steps=spec.get("omega_steps"), **hooks)
    if method in FALLBACK_METHODS:  # sgd_clip: their clipped step with its fallback, no Ω
        return SGDCRTrainer(model, cfg, clip=clip, alpha=0.0, **hooks)
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
    source = FreshBatches(task, length, spec["batch"], np.random.default_rng([seed, 1]), spec["check_every"])
    trainer = trial_trainer(spec, model, np.random.default_rng([seed, 2]), source)
    diverged = False
    try:
        trainer.fit(source)
    except TrainingStopped:
        diverged = True
    errors = [row["error"] for row in trainer.epochs if row["error"] is not None]
    norms = trainer.grad_norms if trainer.history else np.array([np.nan])
    losses_ = trainer.losses if trainer.history else np.array([np.nan])
    tail = losses_[-max(1, len(losses_) // 10):]
    clip = spec["clip"]
    if spec.get("screen"):
        solved = trainer.stop_reason == "stop_when"
        extra = dict(solved_at=trainer.step if solved else None,
                     tests=sum(row["test_error"] is not None for row in trainer.epochs))
    else:
        solved = bool(errors) and errors[-1] == 0.0
        extra = dict(solved_at=trainer.step if solved else None)  # the check that solved it stopped the trial
    return dict(solved=solved, diverged=diverged, iters=trainer.step,
                final_error=errors[-1] if errors else 1.0, best_error=min([1.0] + errors),
                final_train_loss=float(np.mean(tail)), grad_norm_median=float(np.median(norms)),
                grad_norm_max=float(np.max(norms)), clipped_fraction=float(np.mean(norms > clip)),
                train_seconds=float(sum(row["seconds"] for row in trainer.epochs)),
                eval_seconds=float(sum(row.get("eval_seconds", 0.0) for row in trainer.epochs)),
                **extra, seconds=time.time() - t0)


# Relative cost of one iteration per method at a given length (measured, docs/gradients.md): the screened grid
# hands out its dearest trials first, so that no long trial starts last while the other worker idles.
COST = {"sgd": 1.0, "sgd_clip": 1.0, "irnn": 1.0, "sgd_cr": 2.5, "sgd_cr_exact": 3.0, "lstm": 7.5, "gru": 6.5}


def specs_for(p: Protocol, tasks=None) -> list[dict]:
    only = dict(p.only)
    extra = dict(screen=True, track_every=p.track_every, track_samples=p.track_samples,
                 eval_chunk=p.eval_chunk) if p.screen else {}  # the older protocols' trial ids stay as they were
    specs = [dict(task=t, length=L, method=m, seed=s, hidden=p.hidden, batch=p.batch, lr=p.lr, clip=p.clip,
                  max_iters=p.max_iters, check_every=p.check_every, eval_samples=p.eval_samples, **extra)
             for t in (tasks or p.tasks) for L in p.lengths for m in p.methods if L in only.get(m, p.lengths)
             for s in p.seeds]
    if p.screen:
        specs.sort(key=lambda s: -s["length"] * COST[s["method"]])  # stable: ties keep the grid's order
    return specs


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["task", "length", "method"], sort=True)
    out = g.agg(runs=("solved", "size"), solved=("solved", "sum"),
                under_1pct=("best_error", lambda e: int((e < 0.01).sum())), diverged=("diverged", "sum"),
                median_best_error=("best_error", "median"), min_best_error=("best_error", "min"),
                max_best_error=("best_error", "max"), median_final_loss=("final_train_loss", "median"),
                median_grad_norm=("grad_norm_median", "median"), max_grad_norm=("grad_norm_max", "max"),
                clipped_fraction=("clipped_fraction", "mean"), median_iters=("iters", "median"),
                **({"trial_seconds": ("seconds", "sum")} if "seconds" in df else {})).reset_index()
    out["success_rate"] = out["solved"] / out["runs"]
    ci = [wilson_interval(int(k), int(n)) for k, n in zip(out.solved, out.runs)]
    out["success_ci_low"] = [lo for lo, _ in ci]
    out["success_ci_high"] = [hi for _, hi in ci]
    return out


def supported_orderings(summary: pd.DataFrame, df: pd.DataFrame) -> list[str]:
    """What the runs support, per (task, length), and nothing more: pairs of methods whose 95 % Wilson intervals of
    the success rate are disjoint; and, where no run of either method was solved, pairs whose best errors do not
    overlap at all (every run of one below every run of the other), each with the chance of that separation when
    the runs are exchangeable (:func:`separation_chance`; 3 runs against 3: 0.1). One line per cell."""
    lines = []
    for (task, length), cell in summary.groupby(["task", "length"], sort=True):
        rows = list(cell.itertuples())
        success = [f"{a.method} above {b.method}" for a in rows for b in rows
                   if a.success_ci_low > b.success_ci_high]
        errors = []
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                if a.solved or b.solved:
                    continue
                lo, hi = (a, b) if a.max_best_error < b.min_best_error else (b, a)
                if lo.max_best_error < hi.min_best_error:
                    errors.append(f"{lo.method} below {hi.method} (chance {separation_chance(lo.runs, hi.runs):.2g})")
        lines.append(f"- {task}, length {length}: success rates: "
                     f"{'; '.join(success) if success else 'no ordering (every pair of intervals overlaps)'}; "
                     f"best errors of unsolved methods, separated: {'; '.join(errors) if errors else 'none'}.")
    return lines


def time_table(df: pd.DataFrame) -> pd.DataFrame:
    """Where the trials' time went, per (length, method): training and evaluation seconds, per iteration too."""
    g = df.groupby(["length", "method"], sort=True)
    out = g.agg(trials=("seconds", "size"), iterations=("iters", "sum"), train_s=("train_seconds", "sum"),
                eval_s=("eval_seconds", "sum"), total_s=("seconds", "sum")).reset_index()
    out["train_ms_per_iter"] = 1e3 * out.train_s / out.iterations
    out["eval_share"] = out.eval_s / out.total_s
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


def run(p: Protocol, out, *, workers=2, scheduler=None, scheduler_timeout=None, tasks=None, progress=True) -> dict:
    t0 = time.time()
    specs = specs_for(p, tasks)
    df = run_sweep(run_trial, specs, out / "trials.jsonl", workers=workers, scheduler=scheduler,
                   **({} if scheduler_timeout is None else {"scheduler_timeout": scheduler_timeout}),
                   progress=progress, desc=f"pathological ({p.name})")
    write_csv(out / "trials.csv", df)
    summary = summarize(df)
    write_csv(out / "success.csv", summary)
    plot(summary, out / "success_vs_length.png", p)
    res = dict(config=asdict(p), seconds=time.time() - t0, trials=len(df),
               trial_cpu_seconds=float(df.seconds.sum()), summary=summary.to_dict(orient="records"))
    write_json(out / "summary.json", res)
    table = summary[["task", "length", "method", "runs", "solved", "success_rate", "success_ci_low",
                     "success_ci_high", "under_1pct", "diverged", "median_best_error", "min_best_error",
                     "max_best_error", "median_iters", "median_final_loss", "clipped_fraction"]]
    checks = (f"a check every {p.check_every} iterations: the training batches since the last check are scored "
              f"(free); when none of them was wrong, {p.eval_samples} fresh samples decide (solved = none wrong); "
              f"the error curve: {p.track_samples} fresh samples every {p.track_every} iterations and at the end"
              if p.screen else f"evaluation every {p.check_every} on {p.eval_samples} fresh samples; solved = "
              f"no wrong sample")
    sections = [
        ("What ran", f"tasks {list(tasks or p.tasks)}, lengths {list(p.lengths)}, methods {list(p.methods)}"
                     f"{' (' + ', '.join(f'{m} at lengths {list(ls)} only' for m, ls in p.only) + ')' if p.only else ''}, "
                     f"seeds {list(p.seeds)} ({len(p.seeds)} runs per cell); hidden {p.hidden}, batch {p.batch}, "
                     f"lr {p.lr}, clipping threshold {p.clip} (all but sgd); at most {p.max_iters} "
                     f"iterations; {checks}. {len(df)} trials, {df.seconds.sum():.0f} trial-seconds, "
                     f"{res['seconds']:.0f} s wall for this call (a resumed sweep counts only its own part)."),
        ("Success rate against length", markdown_table(table) + "\n\nsolved: the code's criterion (no wrong "
         "sample); under_1pct: runs whose best measured error fell below 1% (the paper's §4.1 criterion, on the "
         "samples each check drew). Baselines: constant prediction gets 36% of adding samples wrong (squared error "
         "> 0.04); chance on temporal order is 75%. success_ci_low/high: the 95% Wilson interval of the success "
         "rate. min/median/max_best_error: the spread of the runs' best fresh-sample errors."),
        ("What the intervals support", "\n".join(supported_orderings(summary, df)) + "\n\nNo other ordering "
         "of methods is supported by these runs: a difference of medians inside overlapping intervals or ranges is "
         "not one."),
        ("Plots", "success_vs_length.png"),
    ]
    if "train_seconds" in df and df.train_seconds.notna().all():
        sections.insert(2, ("Where the time went", markdown_table(time_table(df))))
    write_report(out / "report.md", f"Pathological tasks ({p.name} protocol)", sections)
    return res


def select(p: Protocol, *, lengths=None, methods=None, max_iters=None, num_seeds=None) -> Protocol:
    """The protocol with the command line's selection in place of its own (None: the protocol's). With lengths or
    methods given, its per-method length limits (``only``) are dropped: exactly the trials asked for run. num_seeds:
    seeds 0 .. N-1 (then offset by ``--seed``)."""
    changes = {}
    if lengths is not None:
        changes["lengths"] = tuple(lengths)
    if methods is not None:
        changes["methods"] = tuple(methods)
    if lengths is not None or methods is not None:
        changes["only"] = ()
    if max_iters is not None:
        changes["max_iters"] = int(max_iters)
    if num_seeds is not None:
        changes["seeds"] = tuple(range(num_seeds))
    return replace(p, **changes) if changes else p


def with_seed_offset(p: Protocol, offset: int) -> Protocol:
    """The protocol with its seeds shifted by ``offset`` (``--seed``): other trials, other ids in the table."""
    return replace(p, seeds=tuple(offset + s for s in p.seeds)) if offset else p


def main(args) -> dict:
    name = args.protocol or ("quick" if args.quick else "reduced")
    if name == "budget" and args.quick:
        name = "budget-quick"
    out = result_dir("pathological" if name in ("reduced", "quick") else f"pathological-{name}",
                     name in ("quick", "budget-quick"), args.out)
    p = select(PROTOCOLS[name], lengths=getattr(args, "lengths", None), methods=getattr(args, "methods", None),
               max_iters=getattr(args, "max_iters", None), num_seeds=getattr(args, "num_seeds", None))
    return run(with_seed_offset(p, args.seed), out, workers=args.workers, scheduler=args.scheduler,
               scheduler_timeout=getattr(args, "scheduler_timeout", None),
               tasks=args.tasks, progress=not args.no_progress)
