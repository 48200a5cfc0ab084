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

import json
import time
import warnings
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scratch_rnn import init as rinit
from scratch_rnn.cells import cell_names
from scratch_rnn.fileio import atomic_write_text
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import CHECKPOINT_NAME, TrainConfig, Trainer, TrainingStopped

from .common import (
    markdown_table,
    result_dir,
    save_figure,
    separation_chance,
    wilson_interval,
    write_csv,
    write_json,
    write_report,
)
from .sweep import run_sweep
from .tasks import TASKS, make_batch, sample_errors

METHODS = ("sgd", "sgd_clip", "irnn")  # the protocols of part one
# The methods of part two: SGD-CR (Pascanu et al.'s clipping plus the soft constraint Ω) and the gated cells,
# trained with sgd_clip's optimizer and clipping.
# sgd_cr_exact: SGD-CR with the exact gradient of Ω into every parameter (form="exact", summed over steps: at init its
# α‖∇Ω‖ is 16-68× the code form's at lengths 50-200, docs/gradients.md) in place of the code's form (= the paper's
# eq. 10 up to α). Called sgd_cr_paper in part two's tables.
PART_TWO_METHODS = ("sgd", "sgd_clip", "sgd_cr", "sgd_cr_exact", "irnn", "lstm", "gru")
# Part three: two cells in their authors' published settings (PUBLISHED below), not in Pascanu et al.'s.
ALL_METHODS = PART_TWO_METHODS + ("lstm_rmsprop", "indrnn")
CLIPPED = ("sgd_clip", "sgd_cr", "sgd_cr_exact", "irnn", "lstm", "gru")  # by the global norm, their code's rule
CR_METHODS = {"sgd_cr": "code", "sgd_cr_exact": "exact"}  # method -> the form of Ω its step adds
# Methods whose step is their code's (SGDCRTrainer): 'rescale' clipping with the fallback step past 1e10 / NaN / inf
# (pascanur/trainingRNNs RNN.py l. 224-243); sgd_clip, irnn, lstm and gru take the same step with α = 0 (part three:
# "the clipping fallback in every clipped method"; before, irnn, lstm and gru used torch's clip_grad_norm_).
FALLBACK_METHODS = CLIPPED
TANH_METHODS = ("sgd", "sgd_clip", "sgd_cr", "sgd_cr_exact")  # their tanh RNN: the init options apply to these
INITS = ("smart_tanh", "basic_tanh")  # RNN.py's 'smart_tanh' (the default here) and 'basic_tanh' (N(0, 0.1))
CR_ALPHA = 2.0  # their default weight of Ω
CR_FALLBACK_NORM = 1e10  # above it (or NaN/inf) their step is 0.02·W_hh on W_hh and nothing elsewhere
# The published settings of the part-three methods; a trial of these methods takes them in place of the protocol's
# hidden / batch / lr / clip (and they are what its row in trials.jsonl records):
# - lstm_rmsprop: Arjovsky, Shah & Bengio (2016), github amarshah/complex_RNN adding_problem.py and models.py:
#   LSTM with 128 units, batch 20, RMSProp lr 1e-3 as their rms_prop (v <- 0.9 v + 0.1 g², v starting at 1e-3, the
#   step lr·g/√v, no ε), every gradient clipped elementwise to [-1, 1] (T.clip(g, -1, 1)); their LSTM's init:
#   initialize_matrix = U(±√(6/(n_in + n_out))) per gate matrix, one bias per gate (zero, the forget gate's 1).
#   Differences left: their LSTM has an output-gate peephole V_o c_t (torch's and ours have none) and a trained h0.
# - indrnn: Li, Li, Cook, Zhu & Gao (CVPR 2018), authors' github Sunnydreamrain/IndRNN_Theano_Lasagne
#   adding/adding.py: 2 layers of 128 relu units, W_ih N(0, 0.001²), u U(0, 2^(1/T)) in the first layer and
#   U(2^(-1/T), 2^(1/T)) in the last (MAG = 2), u clipped to ±2^(1/T) before every batch (IndRNN.init_paper /
#   constrain), one bias (lasagne's b, zero), Adam lr 2e-4 (lasagne's defaults β = (0.9, 0.999), ε = 1e-8, as
#   torch's), batch 32. Their grad_clipping=10 is lasagne's clip of the gradient flowing through the recurrence,
#   per step, elementwise; here the parameter gradients are clipped elementwise at 10 instead (clip_value), and
#   their lr decay (x0.1 after every 20,000 batches) is not applied: both matter only past 20,000 updates.
PUBLISHED = {
    "lstm_rmsprop": dict(hidden=128, batch=20, lr=1e-3, clip=1.0),
    "indrnn": dict(hidden=128, batch=32, lr=2e-4, clip=10.0),
}
# The registered cell each method trains, stated once: a method is a recipe (cell, init, optimizer, clipping) whose
# published settings belong to that cell, so the recipes below branch on the method, never on a cell's name.
# From the registry: the tanh/relu methods train its first built-in cell (the Elman RNN), a method named as a
# registered cell trains that cell, and the published LSTM control trains the LSTM method's cell.
METHOD_CELL = {
    **{m: cell_names(builtin=True)[0] for m in ("sgd", "sgd_clip", "sgd_cr", "sgd_cr_exact", "irnn")},
    **{m: m for m in ALL_METHODS if m in cell_names()},
}
METHOD_CELL["lstm_rmsprop"] = METHOD_CELL["lstm"]
INDRNN_LAYERS = 2
RMSPROP_DECAY, RMSPROP_START = 0.9, 1e-3  # Arjovsky et al.'s rms_prop (models.py)
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
    # Part three: the code's settings as options (each recorded in the trial's row when it is set).
    min_length: int | None = None  # each batch's length drawn from [min_length, length) as RNN.py draws it
    init: str = "smart_tanh"  # the tanh methods' init: RNN.py's 'smart_tanh' or 'basic_tanh' (N(0, 0.1))
    one_bias: bool = False  # one recurrent bias, as their code (torch has two: b_ih + b_hh)
    resumable: bool = False  # a trial checkpoints itself and a rerun continues from its checkpoint
    # A measurement of the screen, not a setting of theirs: every check of a screened trial also evaluates
    # eval_samples fresh samples from its own generator (full_error in the check's row); it decides nothing.
    audit_screen: bool = False
    checkpoint_seconds: float = 120.0  # a resumable trial saves at the first check this long after its last save


# Their code's checks (every 20 updates; solved = none of 10,000 fresh samples wrong) behind the free screen, with the
# error curve every 500 updates: the setting of part two's budget grid and of every part-three protocol.
THEIR_CHECKS = dict(
    check_every=20, eval_samples=10_000, screen=True, track_every=500, track_samples=1000, eval_chunk=250
)
BOTH_TASKS = ("adding", "temporal_order")
PAPER_LENGTHS = (50, 100, 150, 200)

_BUDGET = Protocol(
    "budget",
    BOTH_TASKS,
    PAPER_LENGTHS,
    PART_TWO_METHODS,
    (0, 1, 2),
    max_iters=BUDGET_ITERS,
    **THEIR_CHECKS,
    only=(("sgd_cr_exact", (50,)),),
)
_PUBLISHED = Protocol(
    "published",
    ("adding",),
    (100, 200, 1000),
    ("lstm_rmsprop", "indrnn", "sgd"),
    (0, 1, 2),
    max_iters=30_000,
    **THEIR_CHECKS,
    only=(("lstm_rmsprop", (100, 200)), ("indrnn", (1000,)), ("sgd", (1000,))),
    one_bias=True,
    resumable=True,
)
PROTOCOLS = {
    "full": Protocol(
        "full",
        BOTH_TASKS,
        PAPER_LENGTHS,
        METHODS,
        tuple(range(5)),
        max_iters=5_000_000,
        check_every=20,
        eval_samples=10_000,
    ),
    "reduced": Protocol(
        "reduced", BOTH_TASKS, (10, 25, 50), METHODS, (0, 1, 2), max_iters=3000, check_every=250, eval_samples=1000
    ),
    "long": Protocol(
        "long", BOTH_TASKS, (25, 50), METHODS, (0, 1, 2), max_iters=12000, check_every=500, eval_samples=1000
    ),
    # within the paper's length range, at a budget one 2-core machine finishes in ~20 minutes
    "extended": Protocol(
        "extended", BOTH_TASKS, (50, 100), METHODS, (0, 1, 2), max_iters=20000, check_every=1000, eval_samples=1000
    ),
    "quick": Protocol(
        "quick", BOTH_TASKS, (10,), METHODS, (0,), max_iters=20, check_every=10, eval_samples=100, hidden=8
    ),
    # Part two: the paper's lengths, all methods, their checks; the cap is what fits 2 hours on 2 cores
    # (docs/gradients.md).
    "budget": _BUDGET,
    # its CI form: the same code and checks, two lengths, one seed, 40 iterations
    "budget-quick": replace(
        _BUDGET, name="budget-quick", lengths=(50, 100), seeds=(0,), max_iters=40, track_every=20, track_samples=200
    ),
    # Part three. Each method in its published setting, at the lengths the must-show runs use (lstm_rmsprop: Arjovsky
    # et al.'s T = 100, 200; indrnn: Li et al.'s T = 1,000, beside the tanh RNN with plain SGD); their checks; one
    # bias; resumable.
    "published": _PUBLISHED,
    # its CI form: the same settings at length 20, a checkpoint at every check
    "published-quick": replace(
        _PUBLISHED,
        name="published-quick",
        lengths=(20,),
        methods=("lstm_rmsprop", "indrnn"),
        seeds=(0,),
        max_iters=20,
        check_every=10,
        eval_samples=200,
        track_every=10,
        track_samples=50,
        eval_chunk=100,
        only=(),
        checkpoint_seconds=0.0,
    ),
    # The faithful grid of Pascanu et al. for a cluster: their code's settings (one bias, the fallback, 10,000-sample
    # checks every 20 updates, up to 5·10⁶ updates, 5 runs a point), lengths 50-200, both tasks; resumable.
    "paper": Protocol(
        "paper",
        BOTH_TASKS,
        PAPER_LENGTHS,
        ("sgd", "sgd_clip", "sgd_cr"),
        tuple(range(5)),
        max_iters=5_000_000,
        **THEIR_CHECKS,
        one_bias=True,
        resumable=True,
    ),
    # The paper's 5-of-5 temporal-order result: one model per run on lengths drawn per batch from [50, 200), basic
    # tanh init (N(0, 0.1)), SGD-CR.
    "mixed": Protocol(
        "mixed",
        ("temporal_order",),
        (200,),
        ("sgd_cr",),
        tuple(range(5)),
        max_iters=5_000_000,
        **THEIR_CHECKS,
        min_length=50,
        init="basic_tanh",
        one_bias=True,
        resumable=True,
    ),
}


def _glorot(rng, n_in: int, n_out: int) -> np.ndarray:
    """Arjovsky et al.'s initialize_matrix(n_in, n_out): U(±√(6/(n_in + n_out))), shape (n_in, n_out)."""
    bound = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-bound, bound, size=(n_in, n_out))


def build(
    task: str,
    method: str,
    hidden: int,
    seed: int,
    *,
    length: int | None = None,
    init: str = "smart_tanh",
    one_bias: bool = False,
) -> SequenceModel:
    """The model of one trial: dense input -> RNN -> last state -> Linear readout -> the task's loss.

    ``length``: the trial's (longest) sequence length, which IndRNN's init reads (u within 2^(±1/T)). ``init``:
    for the tanh methods, RNN.py's 'smart_tanh' (sparse Gaussian W_hh at spectral radius 0.95, W_ih and the readout
    N(0, 0.01²)) or 'basic_tanh' (W_ih, W_hh and the readout N(0, 0.1²)); zero biases either way. ``one_bias``: the
    second bias (``bias_hh``) starts at zero (the trainer then keeps it there: :class:`TrialTrainer`).
    """
    spec = TASKS[task]
    rng = np.random.default_rng(seed)
    if init not in INITS:
        raise ValueError(f"init: expected one of {list(INITS)}, got {init!r}")
    if method == "indrnn":
        if length is None:
            raise ValueError("length: IndRNN's init bounds u by 2^(1/T): give the trial's length")
        model = SequenceModel(
            ModelConfig(
                hidden_size=hidden,
                out_features=spec.n_out,
                input_size=spec.n_in,
                nonlinearity="relu",
                cell=METHOD_CELL[method],
                num_layers=INDRNN_LAYERS,
                pooling="last",
                loss=spec.loss,
                dtype="float64",
                seed=seed,
            )
        )
        model.rnn.init_paper(length)  # adding/adding.py: MAG 2, W_ih N(0, 0.001²), zero bias
        model.rnn.fast_loop = True  # whole-sequence products (held to the generic loop: tests/test_indrnn.py)
        # lasagne's DenseLayer: W GlorotUniform (its gain 1: U(±√(6/(n_in + n_out)))), b = 0
        model.head.load_state_dict({"weight": _glorot(rng, hidden, spec.n_out).T, "bias": np.zeros(spec.n_out)})
        return model
    nonlinearity = "relu" if method == "irnn" else "tanh"
    cell = METHOD_CELL[method]
    model = SequenceModel(
        ModelConfig(
            hidden_size=hidden,
            out_features=spec.n_out,
            input_size=spec.n_in,
            nonlinearity=nonlinearity,
            cell=cell,
            pooling="last",
            loss=spec.loss,
            dtype="float64",
            seed=seed,
        )
    )
    params = model.rnn.parameters()
    if method == "lstm_rmsprop":  # models.py LSTM(): W_* (I, H) and U_* (H, H) per gate, b_f = 1, other biases 0
        H, n_in = hidden, spec.n_in
        params["weight_ih_l0"][...] = np.concatenate([_glorot(rng, n_in, H).T for _ in range(4)])
        params["weight_hh_l0"][...] = np.concatenate([_glorot(rng, H, H).T for _ in range(4)])
        params["bias_ih_l0"][...] = params["bias_hh_l0"][...] = 0.0  # their one bias per gate ...
        rinit.forget_gate_bias(model.rnn, 1.0)  # ... the forget gate's 1 (in b_ih; b_hh's block stays 0)
        model.head.load_state_dict({"weight": _glorot(rng, H, spec.n_out).T, "bias": np.zeros(spec.n_out)})
        return model
    if method in ("lstm", "gru"):  # their usual init: torch's U(±1/√H), and for the LSTM a forget-gate bias of 1
        if method == "lstm":
            rinit.forget_gate_bias(model.rnn, 1.0)
        if one_bias:
            params["bias_hh_l0"][...] = 0.0
    elif method == "irnn":
        rinit.init_rnn(model.rnn, rinit.RecurrentInit("identity", zero_bias=True, input_std=1e-3), seed=rng)
    elif init == "basic_tanh":  # RNN.py 'basic_tanh': W_uh, W_hh, W_hy N(0, 0.1²), zero biases
        params["weight_ih_l0"][...] = rng.normal(0, 0.1, params["weight_ih_l0"].shape)
        params["weight_hh_l0"][...] = rng.normal(0, 0.1, params["weight_hh_l0"].shape)
        params["bias_ih_l0"][...] = params["bias_hh_l0"][...] = 0.0
        model.head.load_state_dict({"weight": rng.normal(0, 0.1, (spec.n_out, hidden)), "bias": np.zeros(spec.n_out)})
        return model
    else:
        cfg = rinit.RecurrentInit(
            "gaussian",
            scale=0.95,
            target="spectral_radius",
            nonzero_per_row=min(15, hidden),
            zero_bias=True,
            input_std=0.01,
        )
        rinit.init_rnn(model.rnn, cfg, seed=rng)
    model.head.load_state_dict({"weight": rng.normal(0, 0.01, (spec.n_out, hidden)), "bias": np.zeros(spec.n_out)})
    return model


def batch_first(x: np.ndarray) -> np.ndarray:
    """The tasks' time-major (T, B, I) batches in the model's layout (B, T, I)."""
    return x.transpose(1, 0, 2)


def draw_length(rng: np.random.Generator, length: int, min_length: int | None) -> int:
    """One batch's length: ``length``, or with ``min_length`` < ``length`` one drawn from [min_length, length), as
    RNN.py draws it (``min_length + rng.randint(max_length - min_length)``, once per batch)."""
    if min_length is None or min_length >= length:
        return length
    return int(min_length + rng.integers(length - min_length))


def evaluate(task, model, rng, samples: int, length: int, chunk: int = 1000, min_length: int | None = None) -> float:
    """Fraction of wrong samples among ``samples`` fresh ones (eval mode); with ``min_length``, each chunk's length
    is drawn from [min_length, length) (RNN.py draws one per evaluation batch)."""
    wrong, _ = count_wrong(task, model, rng, samples, length, chunk, min_length)
    return wrong / samples


def count_wrong(
    task,
    model,
    rng,
    samples: int,
    length: int,
    chunk: int = 1000,
    min_length: int | None = None,
    *,
    stop_at_wrong: bool = False,
) -> tuple[int, int]:
    """(wrong, scored): the wrong samples among fresh ones drawn ``chunk`` at a time, and how many were scored.
    With ``stop_at_wrong``, the first chunk with a wrong sample ends it (``scored`` < ``samples`` then): what a
    pass/fail test needs, since its verdict is already known. A passing test scores all ``samples`` with the same
    draws either way."""
    wrong = scored = 0
    model.eval()
    try:
        for start in range(0, samples, chunk):
            n = min(chunk, samples - start)
            x, y = make_batch(task, rng, n, draw_length(rng, length, min_length))
            out, _ = model(batch_first(x))
            wrong += int(sample_errors(task, out, y).sum())
            scored += n
            if stop_at_wrong and wrong:
                break
    finally:
        model.train()
    return wrong, scored


class FreshBatches:
    """The trial's batch source: every "epoch" is ``per_epoch`` fresh batches.

    Two streams. Given ``rng``, batches are drawn from it as the trial goes (the older protocols' stream; such a trial
    is never resumed midway). Given ``seed`` instead, epoch e's batches come from ``default_rng([seed, 1, e])``: the
    same batches whenever epoch e is asked for, which is what a resume from a checkpoint needs. ``min_length``: each
    batch's length is drawn from [min_length, length) (:func:`draw_length`).
    """

    def __init__(
        self,
        task: str,
        length: int,
        batch: int,
        rng: np.random.Generator | None,
        per_epoch: int,
        *,
        seed: int | None = None,
        min_length: int | None = None,
    ):
        if (rng is None) == (seed is None):
            raise ValueError(
                f"rng/seed: give exactly one (a running stream, or per-epoch streams), got rng={rng!r}, seed={seed!r}"
            )
        self.task, self.length, self.batch, self.rng, self.per_epoch = task, length, batch, rng, per_epoch
        self.seed, self.min_length = seed, min_length

    def num_batches(self, epoch: int) -> int:
        return self.per_epoch

    def batches(self, epoch: int):
        rng = self.rng if self.seed is None else np.random.default_rng([self.seed, 1, epoch])
        for _ in range(self.per_epoch):
            x, y = make_batch(self.task, rng, self.batch, draw_length(rng, self.length, self.min_length))
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


class TrialTrainer(Trainer):
    """The Trainer with the published settings that change a step (the loop, evaluation and stopping stay the
    Trainer's): ``one_bias`` keeps every ``bias_hh`` at its value (zero) by zeroing its gradient before the norm is
    measured, so the model has their code's one bias (torch's second bias doubles the bias's step under SGD);
    ``constrain`` is called before every step's forward (IndRNN: u clipped to ±2^(1/T) before every batch, as
    adding/adding.py does); ``square_avg_start`` starts RMSprop's running average of g² there (Arjovsky et al.'s
    rms_prop starts it at 1e-3, torch's at 0)."""

    def __init__(self, model, config, *, one_bias: bool = False, constrain=None, square_avg_start=None, **hooks):
        super().__init__(model, config, **hooks)
        self.one_bias, self.constrain = bool(one_bias), constrain
        self._second_biases = [k for k in model.parameters() if k.startswith("rnn.bias_hh")] if one_bias else []
        if square_avg_start is not None:  # a checkpoint's state, when one is loaded, replaces this
            for name, p in model.parameters().items():
                self.optimizer.state[name].update(step=np.array(0.0), square_avg=np.full_like(p, square_avg_start))

    def _forward_backward(self, x, y, h0, lengths):
        if self.constrain is not None:
            self.constrain()
        return super()._forward_backward(x, y, h0, lengths)

    def _drop_second_bias(self) -> None:
        grads = self.model.grads
        for k in self._second_biases:
            grads[k].fill(0.0)

    def _measure_and_clip(self) -> float:
        self._drop_second_bias()
        return super()._measure_and_clip()


class SGDCRTrainer(TrialTrainer):
    """SGD-CR as pascanur/trainingRNNs RNN.py runs it: the one step the Trainer takes is changed in its
    gradient, nothing else (the loop, evaluation and stopping are the Trainer's). With ``alpha=0`` it is their
    clipped SGD (methods ``sgd_clip``, ``irnn``, ``lstm``, ``gru``): the same clipping and fallback, no Ω.

    After backward, α times the gradient of Ω (``pascanu_omega``; the code's form reaches W_hh only, the exact
    form, method ``sgd_cr_exact``, every parameter) is added to the gradients (RNN.py l. 216-217); the norm of all
    gradients (Ω included) is recorded (l. 219-223); when it is NaN, inf or above 1e10 the step becomes 0.02·W_hh on
    W_hh and 0 elsewhere (their fallback, l. 231-243: "we can not even trust the numbers we get"), else it is
    rescaled to ``clip`` when larger (c·g/‖g‖, their 'rescale' clipping, l. 224-230, without torch's 1e-6).
    Line numbers: RNN.py of github.com/pascanur/trainingRNNs, commit 3f5df3f.
    """

    def __init__(
        self,
        model,
        config,
        *,
        clip: float,
        alpha: float = CR_ALPHA,
        omega_form: str = "code",
        omega_steps: str | None = None,
        **options,
    ):
        super().__init__(model, config, **options)
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
        self._drop_second_bias()  # their code has no second bias: neither its gradient nor its norm
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
    return dict(
        task=task,
        length=length,
        seed=seed,
        loss_grad_norm=loss_norm,
        alpha_omega_code=CR_ALPHA * norm["code"],
        alpha_omega_exact=CR_ALPHA * norm["exact"],
        alpha_omega_exact_mean=CR_ALPHA * norm["exact_mean"],
        ratio_exact_code=norm["exact"] / norm["code"],
        ratio_exact_mean_code=norm["exact_mean"] / norm["code"],
    )


def optimizer_settings(spec: dict) -> dict:
    """How a trial's method steps: the TrainConfig's optimizer fields and the step options (for the trial table).

    Pascanu et al.'s methods: SGD at ``lr``; every clipped one (:data:`CLIPPED`) with their 'rescale' clipping at
    ``clip`` and the fallback (:class:`SGDCRTrainer`). lstm_rmsprop and indrnn: their authors' (:data:`PUBLISHED`).
    """
    method = spec["method"]
    if method == "lstm_rmsprop":
        return dict(
            optimizer="rmsprop",
            optimizer_kwargs={"lr": spec["lr"], "alpha": RMSPROP_DECAY, "eps": 0.0},
            clip_value=spec["clip"],
            clip_norm=None,
            clip_style="elementwise",
            square_avg_start=RMSPROP_START,
        )
    if method == "indrnn":
        return dict(
            optimizer="adam",
            optimizer_kwargs={"lr": spec["lr"]},
            clip_value=spec["clip"],
            clip_norm=None,
            clip_style="elementwise",
            square_avg_start=None,
        )
    return dict(
        optimizer="sgd",
        optimizer_kwargs={"lr": spec["lr"]},
        clip_value=None,
        clip_norm=None,
        clip_style="norm+fallback" if method in CLIPPED else "none",
        square_avg_start=None,
    )


def trial_trainer(
    spec: dict, model: SequenceModel, eval_rng, source: FreshBatches | None = None, *, checkpoint_dir=None
) -> Trainer:
    """The Trainer of one trial: its method's optimizer and clipping (:func:`optimizer_settings`), a check every
    check_every steps.

    A check evaluates ``eval_samples`` fresh samples (with ``confirm_samples``, a zero error is confirmed on that
    many more before the trial counts as solved). With ``screen`` (the budget protocol; needs ``source``) a check
    first scores the training batches since the last one (:class:`Screen`) and evaluates the ``eval_samples`` only
    when none of them was wrong; ``track_samples`` fresh samples every ``track_every`` steps and at the last check
    give the error curve. Each check's row: ``error`` (the evaluation run, if any, else None), and with screen
    ``screen_error``, ``test_error`` and ``test_samples`` (how many the test scored) and ``track_error`` (None when
    not run). A screened test is a verdict. Where each check has its own generator (``eval_rng`` callable: the
    resumable trials), a failing test stops at the chunk of its first wrong sample, so its ``test_error`` (the
    fraction among those scored) is no error estimate and stays out of ``error``, which is then the tracking's, run
    at tracking steps and at the cap as when no test ran. A passing test scores all ``eval_samples`` with the same
    draws, so the verdicts, ``solved_at`` and the training are what a whole test gives. With one running generator
    (the older protocols), every test is scored whole, as their tables were made: a shorter one would shift every
    later check's draws.
    With ``audit_screen`` (screened trials only) every check also evaluates ``eval_samples`` fresh samples from
    ``default_rng([seed, 3, step])``, after the check's own draws and in no decision (``full_error`` and
    ``audit_seconds`` in its row; :func:`screen_audit`).

    ``eval_rng``: a generator the checks draw from in turn, or a callable ``eval_rng(step)`` giving each check's own
    generator (a resumable trial: a check's samples depend on its step only). ``checkpoint_dir``: the Trainer saves
    its last state there at the end of ``fit`` (the trial's checks save the others: :func:`_run_trial`).
    """
    method = spec["method"]
    opt = optimizer_settings(spec)
    cfg = TrainConfig(
        optimizer=opt["optimizer"],
        optimizer_kwargs=opt["optimizer_kwargs"],
        clip_norm=opt["clip_norm"],
        clip_value=opt["clip_value"],
        epochs=-(-spec["max_iters"] // spec["check_every"]),
        max_steps=spec["max_iters"],
        divergence_factor=None,
        progress=False,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
    )
    chunk = spec.get("eval_chunk", 1000)
    per_check = callable(eval_rng)
    current = {}

    def check_rng():
        if per_check:
            step = trainer.step
            if current.get("step") != step:  # one generator per check, shared by that check's evaluations
                current.update(step=step, rng=eval_rng(step))
            return current["rng"]
        return eval_rng

    def fresh_error(samples):
        return evaluate(
            spec["task"], model, check_rng(), samples, spec["length"], chunk=chunk, min_length=spec.get("min_length")
        )

    def evaluate_trial(m):
        error = fresh_error(spec["eval_samples"])
        confirm = spec.get("confirm_samples")
        if error == 0.0 and confirm:  # a cheap screen passed: the real criterion on the larger sample
            error = fresh_error(confirm)
        return {"error": error}

    def screened_check(m):
        step = trainer.step
        row = {"screen_error": screen.take(), "test_error": None, "track_error": None}
        if row["screen_error"] == 0.0:  # the test (a verdict: with per-check generators it stops at a wrong chunk)
            wrong, scored = count_wrong(
                spec["task"],
                model,
                check_rng(),
                spec["eval_samples"],
                spec["length"],
                chunk,
                spec.get("min_length"),
                stop_at_wrong=per_check,
            )
            row["test_error"], row["test_samples"] = wrong / scored, scored
        whole_test = row["test_error"] is not None and row["test_samples"] == spec["eval_samples"]
        if not whole_test and (step % spec["track_every"] == 0 or step >= spec["max_iters"]):
            row["track_error"] = fresh_error(spec["track_samples"])
        row["error"] = row["test_error"] if whole_test else row["track_error"]
        if audit:  # observes only: its own generator, read after the decision's draws, in no decision
            t0 = time.perf_counter()
            row["full_error"] = evaluate(
                spec["task"],
                model,
                _audit_rng(spec["seed"], step),
                spec["eval_samples"],
                spec["length"],
                chunk=chunk,
                min_length=spec.get("min_length"),
            )
            row["audit_seconds"] = time.perf_counter() - t0
        return row

    audit = bool(spec.get("audit_screen"))
    if audit and not spec.get("screen"):
        raise ValueError(
            "audit_screen: audits the checks of a screened trial (screen=True); this trial has no screen "
            f"(screen={spec.get('screen')!r})"
        )
    if spec.get("screen"):
        if source is None:
            raise ValueError("source: a screened trial scores its training batches: pass its FreshBatches")
        screen = Screen(spec["task"], source)
        hooks = dict(evaluate=screened_check, stop_when=lambda row: row["test_error"] == 0.0, callback=screen)
    else:
        hooks = dict(evaluate=evaluate_trial, stop_when=lambda row: row["error"] == 0.0)
    options = dict(
        one_bias=bool(spec.get("one_bias")) or method in PUBLISHED,
        square_avg_start=opt["square_avg_start"],
        constrain=getattr(model.rnn, "constrain", None),  # a cell that constrains its weights (IndRNN's u)
    )
    if method in CR_METHODS:
        trainer = SGDCRTrainer(
            model,
            cfg,
            clip=spec["clip"],
            alpha=spec.get("alpha", CR_ALPHA),
            omega_form=spec.get("omega_form", CR_METHODS[method]),
            omega_steps=spec.get("omega_steps"),
            **options,
            **hooks,
        )
    elif method in FALLBACK_METHODS:  # their clipped step with its fallback, no Ω
        trainer = SGDCRTrainer(model, cfg, clip=spec["clip"], alpha=0.0, **options, **hooks)
    else:
        trainer = TrialTrainer(model, cfg, **options, **hooks)
    return trainer


TRIAL_FILE = "trial.json"  # beside a resumable trial's checkpoint: its spec without the cap (collect_runs reads it)


def _without_cap(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "max_iters"}


def checkpoint_key(spec: dict) -> str:
    """The folder name of a trial's checkpoint: its id without the iteration cap (a rerun with a larger
    ``max_iters`` continues the same trial), hashed to a short name."""
    import hashlib

    from .sweep import trial_id

    return hashlib.sha256(trial_id(_without_cap(spec)).encode()).hexdigest()[:16]


def run_trial(spec: dict, checkpoint_root=None, checkpoint_seconds: float | None = None) -> dict:
    """One (task, length, method, seed) training run; a module-level function for the workers.

    A resumable trial (``spec["resumable"]``) with a ``checkpoint_root`` checkpoints itself under
    ``checkpoint_root/<checkpoint_key>`` and continues from what it finds there."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one BLAS thread per worker: trials run side by side
        return _run_trial(spec, checkpoint_root=checkpoint_root, checkpoint_seconds=checkpoint_seconds)


def _check_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of a resumable trial's check at ``step``: its samples depend on the seed and the step only."""
    return np.random.default_rng([seed, 2, step])


def _audit_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of the screen audit's full check at ``step`` (``audit_screen``): its own stream, so the
    trial's batches and checks draw what they draw without the audit."""
    return np.random.default_rng([seed, 3, step])


def screen_audit(rows: list[dict], solved_at: int | None) -> dict:
    """What the audit of a screened trial's checks found (``rows``: the checks' rows, each with ``full_error``,
    the error of ``eval_samples`` fresh samples at that check; ``solved_at``: where the screened trial stopped
    solved, or None).

    ``audit_checks``: checks audited; ``audit_full_zero``: of them, those where the full check found no sample
    wrong; ``audit_full_solved_at``: the first of those; ``audit_misses``: checks where the full check found none
    wrong but the screen was not clean (>= 1 wrong among its training samples, or none scored), so the trial
    went on; ``audit_test_misses``: checks where the full check found none wrong and the screen was clean but the
    screened trial's own test (other fresh samples) found one; ``audit_solve_delay``: ``solved_at`` minus
    ``audit_full_solved_at`` when both exist, else None."""
    audited = [r for r in rows if r.get("full_error") is not None]
    zero = [r for r in audited if r["full_error"] == 0.0]
    first = zero[0]["step"] if zero else None
    return dict(
        audit_checks=len(audited),
        audit_full_zero=len(zero),
        audit_full_solved_at=first,
        audit_misses=sum(not r["screen_error"] == 0.0 for r in zero),
        audit_test_misses=sum(r["screen_error"] == 0.0 and r["test_error"] != 0.0 for r in zero),
        audit_solve_delay=None if solved_at is None or first is None else solved_at - first,
        audit_seconds=float(sum(r.get("audit_seconds", 0.0) for r in audited)),
    )


def _trial_model(spec: dict):
    """A trial's model as its seed initialises it."""
    return build(
        spec["task"],
        spec["method"],
        spec["hidden"],
        spec["seed"],
        length=spec["length"],
        init=spec.get("init", "smart_tanh"),
        one_bias=bool(spec.get("one_bias")),
    )


def _rescore_rng(seed: int) -> np.random.Generator:
    """The samples a report re-scores a trial's saved state on (:func:`rescore`): a stream of its own, which no
    check of the trial draws from."""
    return np.random.default_rng([seed, 4])


def rescore(spec: dict, checkpoint, samples: int) -> tuple[int, int]:
    """(wrong, scored): the trial's state saved in ``checkpoint`` (verified against the trial's model) scored on
    ``samples`` fresh samples of :func:`_rescore_rng`, every one of them scored. For a solved trial this is the state
    its passing test saw: how often it is wrong, measured on more samples than that one test."""
    from scratch_rnn import checkpoint as ckpt

    model = _trial_model(spec)
    ckpt.load(checkpoint, model)
    return count_wrong(
        spec["task"],
        model,
        _rescore_rng(spec["seed"]),
        samples,
        spec["length"],
        spec.get("eval_chunk", 1000),
        spec.get("min_length"),
    )


def _trial_parts(spec: dict, checkpoint_dir=None):
    """(model, source, trainer) of a trial, fresh."""
    task, length, seed = spec["task"], spec["length"], spec["seed"]
    model = _trial_model(spec)
    if spec.get("resumable"):
        source = FreshBatches(
            task, length, spec["batch"], None, spec["check_every"], seed=seed, min_length=spec.get("min_length")
        )
        eval_rng = partial(_check_rng, seed)
    else:
        source = FreshBatches(
            task,
            length,
            spec["batch"],
            np.random.default_rng([seed, 1]),
            spec["check_every"],
            min_length=spec.get("min_length"),
        )
        eval_rng = np.random.default_rng([seed, 2])
    return model, source, trial_trainer(spec, model, eval_rng, source, checkpoint_dir=checkpoint_dir)


def _forget_cap_track(trainer: Trainer, spec: dict) -> None:
    """A screened trial tracks its error at its cap whatever the cap (the end of a run's curve); a rerun with a
    larger cap continues past it, and an uninterrupted run would not have sampled there: that one sample is dropped
    from the resumed curve (the training it does not touch: each check has its own generator), so the resumed
    trial's row is the uninterrupted run's."""
    if not spec.get("screen") or not trainer.epochs:
        return
    row = trainer.epochs[-1]
    if row.get("track_error") is not None and row["step"] == trainer.step and row["step"] % spec["track_every"]:
        whole_test = (
            row.get("test_error") is not None and row.get("test_samples", spec["eval_samples"]) == spec["eval_samples"]
        )
        trainer.epochs[-1] = {**row, "track_error": None, "error": row["test_error"] if whole_test else None}


def _run_trial(spec: dict, checkpoint_root=None, checkpoint_seconds: float | None = None) -> dict:
    t0 = time.time()
    ckdir = None
    if spec.get("resumable") and checkpoint_root is not None:
        ckdir = Path(checkpoint_root) / checkpoint_key(spec)
        ckdir.mkdir(parents=True, exist_ok=True)
        if not (ckdir / TRIAL_FILE).exists():  # which trial this is, for a report read while it runs
            atomic_write_text(ckdir / TRIAL_FILE, json.dumps(_without_cap(spec), sort_keys=True) + "\n")
    _, source, trainer = _trial_parts(spec, ckdir)
    resumed_from = 0
    if ckdir is not None and (ckdir / CHECKPOINT_NAME).exists():
        trainer.load_checkpoint()
        resumed_from = trainer.step
        _forget_cap_track(trainer, spec)
        if trainer.step > spec["max_iters"]:  # a checkpoint past this cap: this run starts afresh, saving nothing
            _, source, trainer = _trial_parts(spec, None)
            ckdir, resumed_from = None, 0
    if ckdir is not None:
        every = spec.get("checkpoint_seconds", 120.0) if checkpoint_seconds is None else checkpoint_seconds
        decide, last = trainer.stop_when, [time.monotonic()]

        def stop_and_save(row):  # at a check: the state between two epochs (no screen count, no partial epoch)
            stop = bool(decide(row))
            if stop or time.monotonic() - last[0] >= every:
                if stop:
                    trainer.stop_reason = "stop_when"  # saved: a rerun of a solved trial does nothing more
                trainer.save_checkpoint()
                last[0] = time.monotonic()
            return stop

        trainer.stop_when = stop_and_save
    diverged = False
    try:
        trainer.fit(source)
    except TrainingStopped:
        diverged = True
    solved = trainer.stop_reason == "stop_when" if spec.get("screen") else None
    row = trial_row(
        spec,
        trainer.epochs,
        trainer.losses if trainer.history else None,
        trainer.grad_norms if trainer.history else None,
        step=trainer.step,
        solved=solved,
        diverged=diverged,
        resumed_from=resumed_from,
    )
    return dict(row, seconds=time.time() - t0)


def trial_row(
    spec: dict,
    epochs: list[dict],
    losses: np.ndarray | None,
    norms: np.ndarray | None,
    *,
    step: int,
    solved: bool | None,
    diverged: bool,
    resumed_from: int,
) -> dict:
    """A trial's row of the trial table (without ``seconds``, its wall time) from what its trainer holds: its check
    rows (``epochs``), per-update losses and gradient norms (None: no update yet), the update count ``step``, and
    ``solved`` (a screened trial: whether a check stopped it; None: read from the last error, as an unscreened
    trial is solved when its last check found no sample wrong). One function for a finished trial
    (:func:`_run_trial`) and a checkpoint read back (:func:`collect_runs`)."""
    errors = [row["error"] for row in epochs if row["error"] is not None]
    norms = np.array([np.nan]) if norms is None or not len(norms) else norms
    losses_ = np.array([np.nan]) if losses is None or not len(losses) else losses
    tail = losses_[-max(1, len(losses_) // 10) :]
    clip = spec["clip"]
    if solved is None:
        solved = bool(errors) and errors[-1] == 0.0
    extra: dict = dict(solved_at=step if solved else None)  # the check that solved it stopped the trial
    if spec.get("screen"):
        extra["tests"] = sum(row.get("test_error") is not None for row in epochs)
    if spec.get("audit_screen"):
        extra.update(screen_audit(epochs, extra["solved_at"]))
    if spec.get("resumable"):  # part three's rows: the settings that ran, the error curve, where it resumed
        opt = optimizer_settings(spec)
        extra.update(
            optimizer=opt["optimizer"],
            clip_style=opt["clip_style"],
            layers=INDRNN_LAYERS if spec["method"] == "indrnn" else 1,
            one_bias_effective=bool(spec.get("one_bias")) or spec["method"] in PUBLISHED,  # as trial_trainer
            length_range=[spec.get("min_length") or spec["length"], spec["length"]],
            init_effective=spec.get("init", "smart_tanh") if spec["method"] in TANH_METHODS else "method's",
            curve=[[row["step"], row["error"]] for row in epochs if row["error"] is not None],
            resumed_from=resumed_from,
        )
    return dict(
        solved=solved,
        diverged=diverged,
        iters=step,
        final_error=errors[-1] if errors else 1.0,
        best_error=min([1.0] + errors),
        final_train_loss=float(np.mean(tail)),
        grad_norm_median=float(np.median(norms)),
        grad_norm_max=float(np.max(norms)),
        clipped_fraction=float(np.mean(norms > clip)),
        train_seconds=float(sum(row["seconds"] for row in epochs)),
        eval_seconds=float(sum(row.get("eval_seconds", 0.0) for row in epochs)),
        **extra,
    )


# Relative cost of one iteration per method at a given length (measured, docs/gradients.md): the screened grid
# hands out its dearest trials first, so that no long trial starts last while the other worker idles.
COST = {
    "sgd": 1.0,
    "sgd_clip": 1.0,
    "irnn": 1.0,
    "sgd_cr": 2.5,
    "sgd_cr_exact": 3.0,
    "lstm": 7.5,
    "gru": 6.5,
    "lstm_rmsprop": 30.0,
    "indrnn": 12.0,
}


def specs_for(p: Protocol, tasks=None) -> list[dict]:
    """The protocol's trials. A field of part three is in a spec only when it is set (min_length, init other than
    smart_tanh, one_bias, resumable), so the older protocols' trial ids stay as they were; the methods of
    :data:`PUBLISHED` take their authors' hidden size, batch, learning rate and clipping threshold. ``audit_screen``
    needs a screened protocol (ValueError otherwise)."""
    if p.audit_screen and not p.screen:
        raise ValueError(
            f"audit_screen: audits the checks of a screened protocol (budget, published, paper, mixed); "
            f"{p.name!r} has no screen"
        )
    only = dict(p.only)
    extra = (
        dict(screen=True, track_every=p.track_every, track_samples=p.track_samples, eval_chunk=p.eval_chunk)
        if p.screen
        else {}
    )  # the older protocols' trial ids stay as they were
    if p.one_bias:
        extra["one_bias"] = True
    if p.resumable:
        extra["resumable"] = True
    if p.audit_screen:
        extra["audit_screen"] = True
    specs = []
    for t in tasks or p.tasks:
        for L in p.lengths:
            for m in p.methods:
                if L not in only.get(m, p.lengths):
                    continue
                for s in p.seeds:
                    spec = dict(
                        task=t,
                        length=L,
                        method=m,
                        seed=s,
                        hidden=p.hidden,
                        batch=p.batch,
                        lr=p.lr,
                        clip=p.clip,
                        max_iters=p.max_iters,
                        check_every=p.check_every,
                        eval_samples=p.eval_samples,
                        **extra,
                    )
                    spec.update(PUBLISHED.get(m, {}))
                    if p.min_length is not None and p.min_length < L:
                        spec["min_length"] = p.min_length
                    if p.init != "smart_tanh" and m in TANH_METHODS:
                        spec["init"] = p.init
                    specs.append(spec)
    if p.screen:
        specs.sort(key=lambda s: -s["length"] * COST[s["method"]])  # stable: ties keep the grid's order
    return specs


def summarize(df: pd.DataFrame, by: tuple[str, ...] = ("task", "length", "method")) -> pd.DataFrame:
    g = df.groupby(list(by), sort=True)
    out = g.agg(
        runs=("solved", "size"),
        solved=("solved", "sum"),
        under_1pct=("best_error", lambda e: int((e < 0.01).sum())),
        diverged=("diverged", "sum"),
        median_best_error=("best_error", "median"),
        min_best_error=("best_error", "min"),
        max_best_error=("best_error", "max"),
        median_final_loss=("final_train_loss", "median"),
        median_grad_norm=("grad_norm_median", "median"),
        max_grad_norm=("grad_norm_max", "max"),
        clipped_fraction=("clipped_fraction", "mean"),
        median_iters=("iters", "median"),
        **({"trial_seconds": ("seconds", "sum")} if "seconds" in df else {}),
    ).reset_index()
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
        success = [f"{a.method} above {b.method}" for a in rows for b in rows if a.success_ci_low > b.success_ci_high]
        errors = []
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                if a.solved or b.solved:
                    continue
                lo, hi = (a, b) if a.max_best_error < b.min_best_error else (b, a)
                if lo.max_best_error < hi.min_best_error:
                    errors.append(f"{lo.method} below {hi.method} (chance {separation_chance(lo.runs, hi.runs):.2g})")
        lines.append(
            f"- {task}, length {length}: success rates: "
            f"{'; '.join(success) if success else 'no ordering (every pair of intervals overlaps)'}; "
            f"best errors of unsolved methods, separated: {'; '.join(errors) if errors else 'none'}."
        )
    return lines


AUDIT_COLUMNS = (
    "audit_checks",
    "audit_full_zero",
    "audit_full_solved_at",
    "solved_at",
    "audit_solve_delay",
    "audit_misses",
    "audit_test_misses",
)


def audit_table(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The audited trials (``audit_screen``), one row each, and a line on the screen's miss rate over all of them:
    misses / checks whose full check found no sample wrong, with its 95 % Wilson interval."""
    rows = df[df["audit_checks"].notna()] if "audit_checks" in df else df.iloc[:0]
    table = rows[["task", "length", "method", "seed", *AUDIT_COLUMNS]].sort_values(["task", "length", "method", "seed"])
    zero, misses = int(rows["audit_full_zero"].sum()), int(rows["audit_misses"].sum())
    if zero:
        low, high = wilson_interval(misses, zero)
        line = (
            f"the screen missed {misses} of the {zero} checks whose full check found no sample wrong "
            f"({misses / zero:.1%}; 95 % Wilson interval [{low:.1%}, {high:.1%}]), over {len(rows)} trial(s) and "
            f"{int(rows['audit_checks'].sum())} audited checks"
        )
    else:
        line = f"no audited check found all of its full check's samples right ({len(rows)} trial(s))"
    return table.reset_index(drop=True), line


def time_table(df: pd.DataFrame) -> pd.DataFrame:
    """Where the trials' time went, per (length, method): training and evaluation seconds, per iteration too."""
    g = df.groupby(["length", "method"], sort=True)
    out = g.agg(
        trials=("seconds", "size"),
        iterations=("iters", "sum"),
        train_s=("train_seconds", "sum"),
        eval_s=("eval_seconds", "sum"),
        total_s=("seconds", "sum"),
    ).reset_index()
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


def _rate_key(s: dict) -> tuple:
    return (
        s["task"],
        s["method"],
        s["length"],
        s.get("min_length"),
        s["hidden"],
        s["batch"],
        s.get("init"),
        bool(s.get("one_bias")),
    )


def measure_rates(specs, *, iters: int = 2) -> dict:
    """Measured cost of each distinct trial setting among ``specs``: {key: (s per training iteration, s per
    evaluated sample)}. One BLAS thread (as a worker runs), one warm-up iteration, then ``iters`` timed ones on
    fresh batches, of which the fastest counts; then one forward over an evaluation chunk. Timed in the process's
    CPU time (``time.process_time``): core-seconds, which other work sharing the cores does not inflate (wall-clock
    timings on a busy machine lose whole scheduler slices at random)."""
    from threadpoolctl import threadpool_limits

    rates = {}
    with threadpool_limits(1):
        for s in specs:
            key = _rate_key(s)
            if key in rates:
                continue
            probe = {k: v for k, v in s.items() if k not in ("resumable", "screen", "audit_screen")}
            probe.update(check_every=iters + 1, max_iters=iters + 1)
            _, source, trainer = _trial_parts(probe)
            model = trainer.model
            batches = list(source.batches(0))
            trainer.train_batch(*batches[0])
            times = []
            for b in batches[1:]:
                t0 = time.process_time()
                trainer.train_batch(*b)
                times.append(time.process_time() - t0)
            per_iter = min(times)
            n = min(s.get("eval_chunk", 1000), 250)
            t0 = time.process_time()
            evaluate(
                s["task"], model, np.random.default_rng(0), n, s["length"], chunk=n, min_length=s.get("min_length")
            )
            rates[key] = (per_iter, (time.process_time() - t0) / n)
    return rates


def checkpointed_steps(spec: dict, checkpoint_root) -> int:
    """The updates a resumable trial's checkpoint already holds, which a rerun does not repeat: its step, or the
    whole cap where the checkpoint says the trial stopped (solved); 0 without a usable checkpoint (none, not
    resumable, past this cap, or unreadable: that run will say why when it loads it)."""
    from scratch_rnn.checkpoint import CheckpointError, read_archive

    if not spec.get("resumable") or checkpoint_root is None:
        return 0
    path = Path(checkpoint_root) / checkpoint_key(spec) / CHECKPOINT_NAME
    if not path.exists():
        return 0
    try:
        _, meta = read_archive(path)
    except CheckpointError:
        return 0
    step = int(meta.get("step", 0))
    if step > spec["max_iters"]:
        return 0
    return spec["max_iters"] if meta.get("meta", {}).get("stop_reason") == "stop_when" else step


def estimate_cost(specs, rates: dict, workers: int, done: dict | None = None) -> dict:
    """Each trial's cost at its cap (training plus its fresh-sample checks: the tracking samples of a screened
    trial, every check's samples of an unscreened one; with ``audit_screen``, every check's ``eval_samples`` are
    added), summed: core-hours, and the wall time on ``workers`` single-core workers, which is at least
    max(total / workers, the longest trial). A screened trial's ``eval_samples`` tests run only behind a clean
    screen, which no estimate made before the run can count (none while a model is at the baseline, up to one per
    check once it is nearly right): they are not in the sum, and each row's ``test_seconds`` is the cost of one
    (``max_test_seconds`` the largest), which :func:`cost_line` states beside the sum. ``done``: trial id -> the
    updates its checkpoint already holds (:func:`checkpointed_steps`); a resumed trial costs the rest."""
    from .sweep import trial_id

    rows = []
    for s in specs:
        per_iter, per_sample = rates[_rate_key(s)]
        resumed_from = (done or {}).get(trial_id(s), 0)
        n = s["max_iters"] - resumed_from
        samples = (
            (n // s["track_every"]) * s["track_samples"]
            if s.get("screen")
            else (n // s["check_every"]) * s["eval_samples"]
        )
        if s.get("audit_screen"):
            samples += (n // s["check_every"]) * s["eval_samples"]
        rows.append(
            dict(
                task=s["task"],
                length=s["length"],
                method=s["method"],
                seed=s["seed"],
                max_iters=s["max_iters"],
                resumed_from=resumed_from,
                ms_per_iter=1e3 * per_iter,
                seconds=n * per_iter + samples * per_sample,
                test_seconds=s["eval_samples"] * per_sample if s.get("screen") else 0.0,
            )
        )
    total = sum(r["seconds"] for r in rows)
    longest = max((r["seconds"] for r in rows), default=0.0)
    return dict(
        trials=len(rows),
        core_hours=total / 3600,
        longest_trial_hours=longest / 3600,
        workers=workers,
        wall_hours=max(total / max(workers, 1), longest) / 3600,
        max_test_seconds=max((r["test_seconds"] for r in rows), default=0.0),
        per_trial=rows,
    )


def cost_line(cost: dict) -> str:
    """The estimate in one line. With screened trials, the sum is their updates and tracking checks, and the line
    says what each full test behind a clean screen adds (not in the sum: how many run depends on the training)."""
    test = cost.get("max_test_seconds", 0.0)
    tests = (
        f", plus up to {_hours(test / 3600)} for each full test, which runs only behind a clean screen (none at the "
        f"baseline, up to one per check once a model is nearly right; in a resumable trial a failing test stops at "
        f"its first wrong chunk)"
        if test
        else ""
    )
    return (
        f"cost before compute: {cost['trials']} trial(s) to run, {cost['core_hours']:.3g} core-hours at their caps "
        f"(measured per-iteration rates{_resumed_note(cost)}){tests}; on {cost['workers']} worker(s) at least "
        f"{_hours(cost['wall_hours'])} wall (the longest trial alone: {_hours(cost['longest_trial_hours'])})"
    )


def _resumed_note(cost: dict) -> str:
    resumed = [r for r in cost["per_trial"] if r.get("resumed_from")]
    if not resumed:
        return ""
    return f"; {len(resumed)} continue from their checkpoints, {sum(r['resumed_from'] for r in resumed):,} updates done"


def _hours(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.0f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:.1f} days"


def cost_table(cost: dict) -> pd.DataFrame:
    """Per (task, length, method): trials, the cap, the updates their checkpoints already hold, ms per iteration,
    the core-hours still to run up to the cap, and the seconds of one full test behind a clean screen (not in the
    core-hours: :func:`estimate_cost`)."""
    df = pd.DataFrame(cost["per_trial"])
    if "resumed_from" not in df:
        df["resumed_from"] = 0
    if "test_seconds" not in df:
        df["test_seconds"] = 0.0
    g = df.groupby(["task", "length", "method"], sort=True)
    out = g.agg(
        trials=("seed", "size"),
        max_iters=("max_iters", "max"),
        updates_done=("resumed_from", "sum"),
        ms_per_iter=("ms_per_iter", "mean"),
        core_hours=("seconds", "sum"),
        s_per_test=("test_seconds", "max"),
    ).reset_index()
    out["core_hours"] /= 3600
    return out


# Published points for the learning curves (docs/gradients.md cites each):
# Arjovsky, Shah & Bengio (2016), their adding-problem figures (amarshah/complex_RNN paper/uRNN/figures/adding_*.jpeg,
# read off the plots; their task and metric differ: markers in each half, target the sum, test MSE): the LSTM
# (H = 128, RMSProp 1e-3, clip 1) leaves the baseline at about 1k updates and reaches MSE ≈ 0 by about 5k at T = 100,
# about 20k at T = 200 and about 15k at T = 400.
ARJOVSKY_LSTM = {
    100: ((1_000, "leaves the baseline"), (5_000, "MSE ≈ 0")),
    200: ((20_000, "MSE ≈ 0"),),
    400: ((15_000, "MSE ≈ 0"),),
}
# Pascanu et al.'s own SGD-CR temporal-order log (pascanur/trainingRNNs test_output.txt: valid error % every 2,000
# updates, solved at 336,000; the run's lengths are not recorded, the code's default draws them from [50, 200)); a
# subset of its lines:
PASCANU_SGDCR_LOG = (
    (2_000, 75.04),
    (8_000, 67.83),
    (10_000, 54.17),
    (18_000, 53.80),
    (26_000, 50.51),
    (30_000, 74.86),
    (50_000, 74.94),
    (88_000, 53.63),
    (100_000, 74.93),
    (106_000, 38.54),
    (120_000, 75.23),
    (150_000, 76.05),
    (200_000, 74.83),
    (242_000, 50.29),
    (252_000, 48.32),
    (262_000, 25.10),
    (268_000, 75.72),
    (274_000, 11.74),
    (280_000, 0.50),
    (282_000, 22.66),
    (286_000, 78.46),
    (296_000, 0.44),
    (298_000, 52.31),
    (310_000, 5.56),
    (320_000, 18.47),
    (326_000, 0.69),
    (334_000, 72.48),
    (336_000, 0.0),
)


def plot_curves(df: pd.DataFrame, path) -> None:
    """Error (%) against updates (log scale), one panel per (task, length), one line per trial coloured by method,
    with the published points: Arjovsky et al.'s LSTM on adding (vertical marks), Pascanu et al.'s SGD-CR log on
    temporal order. A solved trial ends with a 0 % point, drawn at the bottom of the panel."""
    rows = df[df["curve"].notna()] if "curve" in df else df.iloc[:0]
    cells = sorted({(r.task, int(r.length)) for r in rows.itertuples()})
    if not cells:
        return
    fig, axes = plt.subplots(1, len(cells), figsize=(5.5 * len(cells), 4.2), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(ALL_METHODS)}
    floor = 0.005  # % : where a 0 % error is drawn on the log axis
    for ax, (task, length) in zip(axes[0], cells):
        seen = set()
        for r in rows[(rows.task == task) & (rows.length == length)].itertuples():
            pts = [(st, max(100 * e, floor)) for st, e in r.curve if st > 0]
            if not pts:
                continue
            x, y = zip(*pts)
            unfinished = getattr(r, "unfinished", False)  # a report's trial still running or stopped before its cap
            ls = "--" if isinstance(unfinished, (bool, np.bool_)) and unfinished else "-"
            ax.plot(x, y, color=colours[r.method], ls=ls, lw=1, alpha=0.8, label=None if r.method in seen else r.method)
            seen.add(r.method)
            if r.solved:
                ax.plot([x[-1]], [floor], "v", color=colours[r.method], ms=7)
        ax.axhline(100 * BASELINE_ERROR[task], color="gray", ls="--", lw=1, label="constant / chance")
        if task == "adding":
            for st, what in ARJOVSKY_LSTM.get(length, ()):
                ax.axvline(st, color="k", ls=":", lw=1)
                ax.text(st, 0.015, f" Arjovsky et al. LSTM: {what}", rotation=90, fontsize=7, va="bottom")
        else:
            x, y = zip(*PASCANU_SGDCR_LOG)
            ax.plot(x, [max(v, floor) for v in y], "k.", ms=4, label="Pascanu et al.'s SGD-CR log (solved 336k)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, 100)
        ax.set_xlabel("updates")
        ax.set_ylabel("error on fresh samples (%)")
        ax.set_title(f"{task}, T = {length}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    save_figure(fig, path)


REPORT_KIND = "pathological-report"  # report.json's "kind": a folder --report may replace


def _row_spec(row: dict) -> dict | None:
    """The spec of a trial table's row: the fields its ``trial_id`` names, with the row's values (None: a field
    missing from the row)."""
    keys = [part.split("=", 1)[0] for part in row["trial_id"].split("|")]
    return {k: row[k] for k in keys} if all(k in row for k in keys) else None


def _checkpoint_row(path: Path, spec: dict) -> dict:
    """A trial's row from its checkpoint (:func:`trial_row`), without a finished run's: ``unfinished`` unless
    the checkpoint says a check solved it, ``max_iters`` None (the cap of the run that wrote it is not saved),
    ``seconds`` its training and evaluation seconds."""
    from scratch_rnn.checkpoint import read_archive

    from .sweep import trial_id

    arrays, meta = read_archive(path)
    m = meta["meta"]
    stopped = m.get("stop_reason") == "stop_when"
    row = trial_row(
        spec,
        list(m["epochs"]),
        arrays.get("extra/history_loss"),
        arrays.get("extra/history_grad_norm"),
        step=int(meta["step"]),
        solved=stopped if spec.get("screen") else None,
        diverged=False,
        resumed_from=None,
    )
    row = dict(spec, max_iters=None, **row)
    row.update(trial_id=trial_id(_without_cap(spec)), seconds=row["train_seconds"] + row["eval_seconds"])
    row["unfinished"] = not (stopped or bool(row["solved"]))
    return row


def _verdict(row: dict) -> str:
    return f"solved at {row['solved_at']}" if row.get("solved") else f"unsolved at {row['iters']}"


def _settings(specs: list[dict]) -> list[str]:
    """Each spec's setting within its (task, length, method): the fields other than the seed in which the trials
    of that cell differ (``k=v, ...``; "" where they all agree), so that a report never pools trials of different
    settings into one rate."""
    cell = lambda sp: (sp.get("task"), sp.get("length"), sp.get("method"))  # noqa: E731
    groups: dict[tuple, list[dict]] = {}
    for sp in specs:
        groups.setdefault(cell(sp), []).append(sp)
    varying = {
        c: sorted(k for k in {k for sp in g for k in sp} - {"seed"} if len({json.dumps(sp.get(k)) for sp in g}) > 1)
        for c, g in groups.items()
    }
    return [", ".join(f"{k}={sp.get(k)}" for k in varying[cell(sp)]) for sp in specs]


def collect_runs(dirs) -> tuple[pd.DataFrame, list[str]]:
    """The trials of several run folders as one table, each trial once: the rows of each folder's
    ``trials.jsonl``, and the checkpoints of resumable trials that are further on (a trial still running, or
    carried past the cap of its last row), read back through :func:`trial_row` with ``unfinished`` set.

    One trial is a spec without its cap (:func:`checkpoint_key`): of its rows, the one with the largest cap counts
    (a rerun with a larger ``--max-iters`` holds the whole trial); its checkpoint replaces that row when it holds
    more updates. A checkpoint names its trial in ``trial.json`` beside it, or through a row of the same trial.
    ``seconds`` is the trial's training and evaluation seconds (summed over its resumed runs: what its checkpoint
    carries), where a row's own is the wall time of the run that wrote it.
    ``setting`` names the fields in which trials of one (task, length, method) differ besides the seed (""
    where they agree): trials of different settings are never one rate. Returns ``(trials, notes)``: ``notes`` says
    what was left out and why (rows of no trial, unreadable or unnamed checkpoints) and where two rows of a trial at
    one cap disagree."""
    from scratch_rnn.checkpoint import CheckpointError

    from .sweep import _json_lines

    best: dict[str, dict] = {}
    specs: dict[str, dict] = {}
    notes: list[str] = []
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        table = d / "trials.jsonl"
        if not table.exists():
            continue
        for lineno, row in _json_lines(table):
            spec = _row_spec(row) if isinstance(row, dict) and isinstance(row.get("trial_id"), str) else None
            if spec is None or not isinstance(spec.get("max_iters"), int):
                notes.append(f"{table}:{lineno}: left out (not a trial row: no trial_id, or fields it names missing)")
                continue
            key = checkpoint_key(spec)
            specs[key] = _without_cap(spec)
            row = dict(row, run=str(d), unfinished=False)
            prev = best.get(key)
            if prev is not None and prev["max_iters"] == row["max_iters"] and _verdict(prev) != _verdict(row):
                notes.append(
                    f"{table}:{lineno}: trial {row['trial_id']!r} has another row at the same cap with another "
                    f"result ({prev['run']}: {_verdict(prev)}; here: {_verdict(row)}); the one with more updates "
                    "is kept"
                )
            if prev is None or (row["max_iters"], row["iters"]) >= (prev["max_iters"], prev["iters"]):
                best[key] = row
    for d in dirs:
        for path in sorted((d / "checkpoints").glob(f"*/{CHECKPOINT_NAME}")):
            key, named = path.parent.name, path.parent / TRIAL_FILE
            try:
                spec = json.loads(named.read_text()) if named.exists() else specs.get(key)
            except (OSError, ValueError) as exc:
                notes.append(f"{named}: left out (unreadable: {exc})")
                continue
            if not isinstance(spec, dict) or checkpoint_key(spec) != key:
                why = "no trial.json beside it, and no row of its trial" if spec is None else "trial.json names another"
                notes.append(f"{path}: left out ({why})")
                continue
            try:
                row = _checkpoint_row(path, spec)
            except (CheckpointError, OSError, KeyError, ValueError) as exc:
                notes.append(f"{path}: left out (unreadable: {exc})")
                continue
            prev = best.get(key)
            if prev is None or row["iters"] > prev["iters"]:
                best[key] = dict(row, run=str(d))
    df = pd.DataFrame(list(best.values()))
    if len(df):
        df["setting"] = _settings([_without_cap(_row_spec(r) or {}) for r in best.values()])
        df = df.sort_values(["task", "length", "method", "setting", "seed"], kind="stable").reset_index(drop=True)
        for c in ("solved_at", "max_iters"):  # counts, None where there is none (not floats)
            df[c] = df[c].astype("Int64")
        if "train_seconds" in df:  # a row's own ``seconds`` is the wall time of the run that wrote it, not the trial's
            df["seconds"] = df["train_seconds"] + df["eval_seconds"]
    return df, notes


TRIAL_COLUMNS = (
    "task", "length", "method", "setting", "seed", "solved", "solved_at", "iters", "max_iters", "unfinished",
    "best_error", "final_error", "train_seconds", "eval_seconds", "run",
)  # fmt: skip


REPORT_FILES = frozenset({"trials.csv", "success.csv", "learning_curves.png", "report.md", "report.json"})


def report_out_problem(out, dirs=()) -> str | None:
    """Why ``out`` cannot take a report of ``dirs`` (None: it can). It may be new, empty, or an earlier report that
    holds nothing but what a report writes (replaced whole); never a file, one of ``dirs``, or a folder with one of
    them inside (replacing it would take that run with it)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"--out: expected a folder, got {str(out)!r}, which is a file"
    for d in dirs:
        if Path(d).resolve().is_relative_to(out.resolve()):
            return (
                f"--out: expected a folder that holds none of the runs it reports, got {str(out)!r}, which holds "
                f"{str(d)!r}"
            )
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        kind = json.loads((out / "report.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != REPORT_KIND:
        return (
            f"--out: expected a new or empty folder, or an earlier report (which is replaced), got {str(out)!r}, "
            "which holds something else (a run?)"
        )
    other = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES)
    if other:
        return (
            f"--out: an earlier report is replaced whole, and {str(out)!r} also holds {other}, which a report does "
            "not write: move them, or pick another --out"
        )
    return None


def _rescore_rows(df: pd.DataFrame, samples: int, notes: list[str], progress: bool) -> pd.DataFrame:
    """Each solved trial's saved state (its checkpoint at ``solved_at``) scored on ``samples`` fresh samples:
    ``rescore_wrong``, ``rescore_samples``, ``rescore_error`` and its 95 % Wilson interval; empty for other trials and
    for a solved trial whose checkpoint is not the solved state (a note says so)."""
    from tqdm.auto import tqdm

    from scratch_rnn.checkpoint import read_archive

    cols = {c: [None] * len(df) for c in ("rescore_wrong", "rescore_samples", "rescore_error")}
    cols.update(rescore_ci_low=[None] * len(df), rescore_ci_high=[None] * len(df))
    solved = [i for i, r in enumerate(df.itertuples()) if bool(r.solved)]
    for i in tqdm(solved, desc="re-scoring solved trials", disable=not progress):
        row = df.iloc[i].to_dict()
        spec = _row_spec(row) or {}
        path = Path(row["run"]) / "checkpoints" / checkpoint_key(spec) / CHECKPOINT_NAME
        try:
            step = int(read_archive(path)[1]["step"]) if path.exists() else None
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: said, not scored
            notes.append(f"{path}: not re-scored (unreadable: {exc})")
            continue
        if step != row["solved_at"]:
            notes.append(f"{path}: not re-scored (it holds update {step}, not the solved state at {row['solved_at']})")
            continue
        wrong, scored = rescore(spec, path, samples)
        low, high = wilson_interval(wrong, scored)
        for c, v in zip(cols, (wrong, scored, wrong / scored, low, high)):
            cols[c][i] = v
    return df.assign(**cols)


def report(dirs, out, rescore_samples: int = 0, progress: bool = True) -> dict:
    """One report of several run folders' trials (:func:`collect_runs`), written as a folder that appears whole:
    ``trials.csv``, ``success.csv`` (finished trials only, each cell's ``unfinished`` count beside them),
    ``learning_curves.png`` (every trial; unfinished ones dashed), ``report.md`` and ``report.json``. With
    ``rescore_samples``, each solved trial's saved state is scored on that many fresh samples (:func:`rescore`)."""
    from experiments.runfolder import claim, make_partial_dir, recover, replace_dir
    from scratch_rnn.cli import BadInput
    from scratch_rnn.runlock import RunInUse

    df, notes = collect_runs(dirs)
    if not len(df):
        raise BadInput(
            f"--report: expected run folders holding trials, got {[str(d) for d in dirs]}, where none could be read: "
            + "; ".join(notes or ["no trials.jsonl row, no checkpoint"])
        )
    out = Path(out)
    try:
        lock = claim(out, f"the report folder {str(out)!r}")
    except RunInUse as exc:
        raise BadInput(str(exc)) from exc
    try:
        recover(out)
        problem = report_out_problem(out, dirs)  # again, now that it is ours (recover may have put an old one back)
        if problem:
            raise BadInput(problem)
        work = make_partial_dir(out)
        if rescore_samples:
            df = _rescore_rows(df, rescore_samples, notes, progress)
        by = ("task", "length", "method", "setting")
        finished = df[~df.unfinished.astype(bool)]
        summary = summarize(finished, by) if len(finished) else pd.DataFrame(columns=list(by))
        counts = df.groupby(list(by)).unfinished.sum().astype(int).reset_index()
        caps: dict[tuple, set] = {}  # the caps the finished unsolved trials of each cell stopped at
        for r in finished[~finished.solved.astype(bool)].to_dict(orient="records"):
            caps.setdefault(tuple(r[k] for k in by), set()).add(int(r["max_iters"]))
        summary = counts.merge(summary, on=list(by), how="left")
        summary["unsolved_caps"] = [
            ", ".join(str(c) for c in sorted(caps.get(tuple(r[k] for k in by), ())))
            for r in summary.to_dict(orient="records")
        ]
        cols = [c for c in TRIAL_COLUMNS if c in df] + [c for c in df if c.startswith("rescore_")]
        write_csv(work / "trials.csv", df[cols])
        write_csv(work / "success.csv", summary)
        if "curve" in df:
            plot_curves(df, work / "learning_curves.png")
        res = dict(kind=REPORT_KIND, runs=[str(d) for d in dirs], trials=len(df), unfinished=int(df.unfinished.sum()))
        res.update(notes=notes, summary=summary.to_dict(orient="records"))
        write_json(work / "report.json", res)
        sections = [
            (
                "What it reads",
                f"{len(df)} trials from {', '.join(str(d) for d in dirs)}: each trial once (its row with the largest "
                "cap, or its checkpoint where that holds more updates: unfinished = still running or stopped "
                "before its cap).",
            ),
            (
                "Trials",
                markdown_table(df[cols])
                + (
                    f"\n\nrescore_*: each solved trial's saved state (the one its passing test saw) scored on "
                    f"{rescore_samples} fresh samples of its own stream: wrong, scored, error and its 95 % Wilson "
                    "interval. A solve is one test of 10,000 that found none wrong; this says how often that state "
                    "is wrong."
                    if rescore_samples
                    else ""
                ),
            ),
            (
                "Success rate (finished trials)",
                markdown_table(summary) + "\n\nsuccess_ci_low/high: the 95 % Wilson interval; unfinished trials "
                "are counted beside, not in, the rate; unsolved_caps: the caps at which the finished unsolved trials "
                "stopped (a trial unsolved at a smaller cap than another's counts as unsolved); setting: the fields "
                "in which trials of one task, length and method differ, each setting its own rate.",
            ),
        ]
        if len(finished) and (finished.setting == "").all():  # orderings between methods of one setting each
            sections.append(("What the intervals support", "\n".join(supported_orderings(summarize(finished), df))))
        if notes:
            sections.append(("Left out", "\n".join(f"- {n}" for n in notes)))
        write_report(work / "report.md", "Pathological tasks: a report of several runs", sections)
        replace_dir(work, out)
    finally:
        lock.release()
    for n in notes:
        warnings.warn(n, stacklevel=2)
    return res


def run(
    p: Protocol,
    out,
    *,
    workers=2,
    scheduler=None,
    scheduler_timeout=None,
    tasks=None,
    progress=True,
    estimate_only=False,
    checkpoint_seconds=None,
) -> dict:
    from .sweep import load_trials, trial_id

    t0 = time.time()
    specs = specs_for(p, tasks)
    done = load_trials(out / "trials.jsonl", specs, warn=False)
    todo = [s for s in specs if trial_id(s) not in done]
    cost = None
    if todo:
        resumed = {trial_id(s): checkpointed_steps(s, out / "checkpoints") for s in todo}
        cost = estimate_cost(todo, measure_rates(todo, iters=1 if p.max_iters <= 100 else 3), workers, resumed)
        write_json(out / "cost.json", cost)
        atomic_write_text(out / "cost.md", f"{cost_line(cost)}\n\n{markdown_table(cost_table(cost))}\n")
        print(cost_line(cost), flush=True)
    if estimate_only:
        return dict(estimate_only=True, **(cost or dict(trials=0, core_hours=0.0)))
    fn = partial(run_trial, checkpoint_root=str(out / "checkpoints"), checkpoint_seconds=checkpoint_seconds)
    df = run_sweep(
        fn,
        specs,
        out / "trials.jsonl",
        workers=workers,
        scheduler=scheduler,
        **({} if scheduler_timeout is None else {"scheduler_timeout": scheduler_timeout}),
        progress=progress,
        desc=f"pathological ({p.name})",
    )
    write_csv(out / "trials.csv", df)
    summary = summarize(df)
    write_csv(out / "success.csv", summary)
    plot(summary, out / "success_vs_length.png", p)
    if "curve" in df:
        plot_curves(df, out / "learning_curves.png")
    res = dict(
        config=asdict(p),
        seconds=time.time() - t0,
        trials=len(df),
        # each trial's own wall time (time.time in its process; cores shared with other work stretch it), summed:
        # not CPU time, which only the cost estimate measures (measure_rates)
        trial_seconds=float(df.seconds.sum()),
        summary=summary.to_dict(orient="records"),
    )
    write_json(out / "summary.json", res)
    table = summary[
        [
            "task",
            "length",
            "method",
            "runs",
            "solved",
            "success_rate",
            "success_ci_low",
            "success_ci_high",
            "under_1pct",
            "diverged",
            "median_best_error",
            "min_best_error",
            "max_best_error",
            "median_iters",
            "median_final_loss",
            "clipped_fraction",
        ]
    ]
    checks = (
        f"a check every {p.check_every} iterations: the training batches since the last check are scored "
        f"(free); when none of them was wrong, {p.eval_samples} fresh samples decide (solved = none wrong); "
        f"the error curve: {p.track_samples} fresh samples every {p.track_every} iterations and at the end"
        if p.screen
        else f"evaluation every {p.check_every} on {p.eval_samples} fresh samples; solved = no wrong sample"
    )
    sections = [
        (
            "What ran",
            f"tasks {list(tasks or p.tasks)}, lengths {list(p.lengths)}, methods {list(p.methods)}"
            f"{' (' + ', '.join(f'{m} at lengths {list(ls)} only' for m, ls in p.only) + ')' if p.only else ''}, "
            f"seeds {list(p.seeds)} ({len(p.seeds)} runs per cell); hidden {p.hidden}, batch {p.batch}, "
            f"lr {p.lr}, clipping threshold {p.clip} (all but sgd); at most {p.max_iters} "
            f"iterations; {checks}. {len(df)} trials, {df.seconds.sum():.0f} trial-seconds, "
            f"{res['seconds']:.0f} s wall for this call (a resumed sweep counts only its own part).",
        ),
        (
            "Success rate against length",
            markdown_table(table) + "\n\nsolved: the code's criterion (no wrong "
            "sample); under_1pct: runs whose best measured error fell below 1% (the paper's §4.1 criterion, on the "
            "samples each check drew). Baselines: constant prediction gets 36% of adding samples wrong (squared error "
            "> 0.04); chance on temporal order is 75%. success_ci_low/high: the 95% Wilson interval of the success "
            "rate. min/median/max_best_error: the spread of the runs' best fresh-sample errors.",
        ),
        (
            "What the intervals support",
            "\n".join(supported_orderings(summary, df)) + "\n\nNo other ordering "
            "of methods is supported by these runs: a difference of medians inside overlapping intervals or ranges is "
            "not one.",
        ),
        (
            "Plots",
            "success_vs_length.png; learning_curves.png (error against updates, with the published points)"
            if "curve" in df
            else "success_vs_length.png",
        ),
    ]
    if cost is not None:
        sections.insert(1, ("Cost before compute", cost_line(cost) + "\n\n" + markdown_table(cost_table(cost))))
    if "audit_checks" in df:
        table, line = audit_table(df)
        sections.append(
            (
                "The screen's audit",
                f"{line}.\n\n{markdown_table(table)}\n\nEvery check also evaluated {p.eval_samples} fresh samples "
                "of its own (full check; it decides nothing). audit_full_zero: checks where it found none wrong; "
                "audit_full_solved_at: the first; audit_misses: of those, checks whose screen was not clean (the "
                "trial went on); audit_test_misses: a clean screen whose own test found one wrong; "
                "audit_solve_delay: solved_at - audit_full_solved_at.",
            )
        )
    if "train_seconds" in df and df.train_seconds.notna().all():
        sections.insert(2, ("Where the time went", markdown_table(time_table(df))))
    write_report(out / "report.md", f"Pathological tasks ({p.name} protocol)", sections)
    return res


def select(
    p: Protocol,
    *,
    lengths=None,
    methods=None,
    max_iters=None,
    num_seeds=None,
    min_length=None,
    init=None,
    one_bias=None,
    resumable=None,
    audit_screen=None,
) -> Protocol:
    """The protocol with the command line's selection in place of its own (None: the protocol's). With lengths or
    methods given, its per-method length limits (``only``) are dropped: exactly the trials asked for run. num_seeds:
    seeds 0 .. N-1 (then offset by ``--seed``). min_length, init, one_bias, resumable: the code's settings;
    audit_screen: the screen's audit (:class:`Protocol`)."""
    options = dict(min_length=min_length, init=init, one_bias=one_bias, resumable=resumable, audit_screen=audit_screen)
    changes = {k: v for k, v in options.items() if v is not None}
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


def protocol_name(args) -> str:
    """The protocol the command line asks for (``--protocol``, with ``--quick`` its CI form)."""
    name = args.protocol or ("quick" if args.quick else "reduced")
    return f"{name}-quick" if name in ("budget", "published") and args.quick else name


def main(args) -> dict:
    if getattr(args, "report", None):
        return report(args.report, args.out, args.rescore or 0, progress=not args.no_progress)
    name = protocol_name(args)
    out = result_dir(
        "pathological" if name in ("reduced", "quick") else f"pathological-{name}",
        name in ("quick", "budget-quick", "published-quick"),
        args.out,
    )
    p = select(
        PROTOCOLS[name],
        lengths=getattr(args, "lengths", None),
        methods=getattr(args, "methods", None),
        max_iters=getattr(args, "max_iters", None),
        num_seeds=getattr(args, "num_seeds", None),
        min_length=getattr(args, "min_length", None),
        init=getattr(args, "init", None),
        one_bias=True if getattr(args, "one_bias", False) else None,
        resumable=True if getattr(args, "resumable", False) else None,
        audit_screen=True if getattr(args, "audit_screen", False) else None,
    )
    return run(
        with_seed_offset(p, args.seed),
        out,
        workers=args.workers,
        scheduler=args.scheduler,
        scheduler_timeout=getattr(args, "scheduler_timeout", None),
        tasks=args.tasks,
        progress=not args.no_progress,
        estimate_only=getattr(args, "estimate_only", False),
        checkpoint_seconds=getattr(args, "checkpoint_seconds", None),
    )
