"""``python -m experiments.gradients <experiment> [--quick] [--out DIR] [--seed N]``.

Exit codes (scratch_rnn.cli): 0 done, 1 stopped (a worker process died), 2 bad input (every option
is checked before an experiment starts: the message names it), 3 crashed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from scratch_rnn.checks import check_positive_float, check_positive_int
from scratch_rnn.cli import BadInput, Stopped, as_bad_input, input_file, output_dir, run_main

PROG = "python -m experiments.gradients"
SCHEDULER_CONNECT_TIMEOUT_S = 5.0  # default of --scheduler-timeout: connecting, handshake and reply

EXPERIMENTS = {
    "spectrum": "gradient norm vs distance for lambda_1 in [0.5, 1.5] x initializer x nonlinearity",
    "cliff": "the single-unit loss wall and gradient descent with and without clipping",
    "pathological": (
        "adding / temporal order: success rate vs length for SGD, clipping, SGD-CR, IRNN, LSTM, GRU, IndRNN "
        "(resumable sweep)"
    ),
    "flow": "per-step gradient norms in the IMDB sentiment model, at init and after training",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="The exploding/vanishing gradient study (issue #5).")
    sub = p.add_subparsers(dest="experiment", required=True)
    for name, help_ in EXPERIMENTS.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--quick", action="store_true", help="the seconds-long CI version")
        s.add_argument("--out", default=None, help="result folder (default results/gradients/[quick/]<experiment>)")
        s.add_argument(
            "--seed",
            type=int,
            default=0,
            help="base seed, >= 0 (pathological: added to the protocol's seeds 0, 1, 2, ...: other trials)",
        )
        s.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "pathological":
            s.add_argument(
                "--protocol",
                choices=["quick", "reduced", "long", "extended", "budget", "full", "published", "paper", "mixed"],
                default=None,
                help="trial grid (default: quick with --quick, else reduced; budget and published with "
                "--quick: their CI forms; paper: Pascanu et al.'s faithful grid, for a cluster; "
                "mixed: their mixed-length temporal-order regime)",
            )
            s.add_argument("--workers", type=int, default=2, help="local worker processes")
            s.add_argument(
                "--scheduler",
                default=None,
                help="a Dask scheduler address (tcp://host:port): run trials on that cluster",
            )
            s.add_argument(
                "--scheduler-timeout",
                type=float,
                default=SCHEDULER_CONNECT_TIMEOUT_S,
                metavar="S",
                help="seconds to reach the scheduler and hear it answer as one (default %(default)s)",
            )
            s.add_argument("--tasks", nargs="+", default=None, help="subset of tasks")
            s.add_argument(
                "--lengths",
                nargs="+",
                type=int,
                default=None,
                help="sequence lengths (>= 10) in place of the protocol's",
            )
            s.add_argument(
                "--methods",
                nargs="+",
                default=None,
                help="methods in place of the protocol's (any of the study's; the protocol's "
                "per-method length limits are then off: exactly these trials run)",
            )
            s.add_argument("--max-iters", type=int, default=None, help="iteration cap in place of the protocol's")
            s.add_argument(
                "--min-length",
                type=int,
                default=None,
                help="draw each batch's length from [MIN, L) as their code does (L: each --lengths value)",
            )
            s.add_argument(
                "--init",
                choices=["smart_tanh", "basic_tanh"],
                default=None,
                help="the tanh methods' init (their code's names; default: the protocol's)",
            )
            s.add_argument(
                "--one-bias",
                action="store_true",
                help="one recurrent bias as their code (torch has two); recorded in the trial table",
            )
            s.add_argument(
                "--resumable",
                action="store_true",
                help="trials checkpoint themselves under OUT/checkpoints and a rerun (a larger "
                "--max-iters included) continues from there (on in published, paper, mixed)",
            )
            s.add_argument(
                "--audit-screen",
                action="store_true",
                help="screened protocols: every check also evaluates the full fresh-sample test (its own "
                "samples; it decides nothing) and the trial table records where the screen missed a solve",
            )
            s.add_argument(
                "--checkpoint-seconds",
                type=float,
                default=None,
                help="a resumable trial saves at the first check this many seconds after its last save "
                "(default: the protocol's, 120)",
            )
            s.add_argument(
                "--estimate-only",
                action="store_true",
                help="measure per-iteration rates, print the grid's core-hours and wall time, and stop",
            )
            s.add_argument(
                "--num-seeds",
                type=int,
                default=None,
                help="run seeds SEED .. SEED+N-1 (SEED from --seed) in place of the protocol's seeds offset by --seed",
            )
            s.add_argument(
                "--report",
                nargs="+",
                default=None,
                metavar="DIR",
                help="train nothing: one report (tables, learning curves) of the trials in these run folders, "
                "each trial once (a resumed trial at its furthest; a running one from its checkpoint), into --out",
            )
            s.add_argument(
                "--rescore",
                type=int,
                default=None,
                metavar="N",
                help="with --report: score each solved trial's saved state on N fresh samples of its own "
                "(how often the state a passing test saw is wrong)",
            )
        if name == "flow":
            s.add_argument("--data", default=None, help="IMDB source (folder/CSV); default: the shared copy")
        if name in ("flow", "spectrum"):
            from scratch_rnn.cells import cell_names

            extra = " (and lstm_fb1: the LSTM with forget-gate bias 1)" if name == "spectrum" else ""
            s.add_argument(
                "--cells",
                nargs="+",
                default=None,
                help=f"the cells compared, any registered: {', '.join(cell_names())}{extra}",
            )
    return p


def check_scheduler(address: str, timeout: float = SCHEDULER_CONNECT_TIMEOUT_S) -> None:
    """BadInput unless ``address`` is ``tcp://HOST:PORT`` and a Dask scheduler answers there within ``timeout``
    seconds (connection, handshake and its identity reply: :func:`experiments.gradients.sweep.probe_scheduler`)."""
    from .sweep import SchedulerUnavailable, probe_scheduler

    try:
        probe_scheduler(address, timeout)
    except SchedulerUnavailable as exc:
        raise BadInput(f"--scheduler: {exc}") from exc


def check_data(data) -> None:
    """The IMDB source of ``flow`` exists (the given path, else $SCRATCH_RNN_IMDB or the shared copy)."""
    if data is not None and not Path(data).expanduser().exists():
        raise BadInput(f"--data: expected an existing IMDB CSV file or folder, got {data!r} (no such file or folder)")
    from experiments.sentiment import data as sdata

    try:
        source = sdata.resolve_source(data)
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(f"--data: {'not given and ' if data is None else ''}{exc}") from exc
    if source.is_file():
        input_file("--data", source)


# --report reads finished runs: an option that shapes a run would be silently ignored, so it is refused
_RUN_OPTIONS = (
    "quick", "protocol", "scheduler", "tasks", "lengths", "methods", "max_iters", "min_length", "init", "one_bias",
    "resumable", "audit_screen", "checkpoint_seconds", "estimate_only", "num_seeds",
)  # fmt: skip


def check_report_args(args) -> None:
    """``pathological --report DIR ...``: folders that hold runs, and an --out that is not one of them and holds
    no run of its own (empty, absent, or an earlier report, which it replaces)."""
    from .pathological import report_out_problem

    given = [f"--{k.replace('_', '-')}" for k in _RUN_OPTIONS if getattr(args, k, None) not in (None, False)]
    if given or args.seed != 0:
        given += ["--seed"] if args.seed != 0 else []
        raise BadInput(f"--report: reads finished runs and takes only --out; got {', '.join(given)} too")
    if args.out is None:
        raise BadInput("--report: expected --out DIR, the folder the report goes to; got none")
    if args.rescore is not None:
        with as_bad_input():
            check_positive_int("--rescore", args.rescore)
    for d in args.report:
        p = Path(d)
        if not p.is_dir():
            raise BadInput(f"--report: expected run folders, got {d!r}, which is not a folder")
        if not (p / "trials.jsonl").exists() and not (p / "checkpoints").is_dir():
            raise BadInput(f"--report: expected run folders (a trials.jsonl or checkpoints/ in each), got {d!r}")
    problem = report_out_problem(args.out, args.report)
    if problem:
        raise BadInput(problem)


def check_args(args) -> None:
    """Every check that needs no work, before the experiment starts (raises BadInput naming the option)."""
    from .common import RESULTS_ROOT

    if args.seed < 0:
        raise BadInput(f"--seed: expected a non-negative integer, got {args.seed}")
    output_dir(
        "--out" if args.out is not None else f"--out (default under {RESULTS_ROOT})",
        args.out if args.out is not None else RESULTS_ROOT,
    )
    if args.experiment == "pathological" and args.report:
        check_report_args(args)
        return
    if getattr(args, "rescore", None) is not None:
        raise BadInput(f"--rescore: only with --report (it re-scores reported trials), got --rescore {args.rescore}")
    if args.experiment == "pathological":
        from .tasks import TASKS

        with as_bad_input():
            check_positive_int("--workers", args.workers)
        if args.tasks is not None:
            bad = [t for t in args.tasks if t not in TASKS]
            if bad:
                raise BadInput(f"--tasks: expected names among {sorted(TASKS)}, got {bad}")
            args.tasks = list(dict.fromkeys(args.tasks))  # a task named twice runs once
        from .pathological import ALL_METHODS, MIN_LENGTH

        if args.methods is not None:
            bad = [m for m in args.methods if m not in ALL_METHODS]
            if bad:
                hint = (
                    ' ("sgd_cr_paper" is now "sgd_cr_exact": the exact gradient of Ω, not the paper\'s form)'
                    if "sgd_cr_paper" in bad
                    else ""
                )
                raise BadInput(f"--methods: expected names among {list(ALL_METHODS)}, got {bad}{hint}")
            args.methods = list(dict.fromkeys(args.methods))
        if args.lengths is not None:
            bad = [n for n in args.lengths if n < MIN_LENGTH]
            if bad:
                raise BadInput(
                    f"--lengths: expected integers >= {MIN_LENGTH} (the tasks place their markers in "
                    f"tenths of the length), got {bad}"
                )
            args.lengths = list(dict.fromkeys(args.lengths))
        if args.min_length is not None and args.min_length < MIN_LENGTH:
            raise BadInput(
                f"--min-length: expected an integer >= {MIN_LENGTH} (the tasks place their markers in "
                f"tenths of the length), got {args.min_length}"
            )
        if args.audit_screen:
            from .pathological import PROTOCOLS, protocol_name

            name = protocol_name(args)
            if not PROTOCOLS[name].screen:
                screened = [k for k, v in PROTOCOLS.items() if v.screen]
                raise BadInput(
                    f"--audit-screen: audits the screen of a screened protocol ({', '.join(screened)}), "
                    f"got --protocol {name}"
                )
        cs = args.checkpoint_seconds
        if cs is not None and not (cs >= 0 and cs != float("inf")):
            raise BadInput(f"--checkpoint-seconds: expected a finite number >= 0, got {cs}")
        for option, value in (("--max-iters", args.max_iters), ("--num-seeds", args.num_seeds)):
            if value is not None:
                with as_bad_input():
                    check_positive_int(option, value)
        with as_bad_input():
            check_positive_float("--scheduler-timeout", args.scheduler_timeout)
        if args.scheduler is not None:
            check_scheduler(args.scheduler, args.scheduler_timeout)
    if args.experiment == "flow":
        check_data(args.data)
    if getattr(args, "cells", None):
        from scratch_rnn.cells import cell_names

        known = cell_names() + (("lstm_fb1",) if args.experiment == "spectrum" else ())
        bad = [c for c in args.cells if c not in known]
        if bad:
            raise BadInput(f"--cells: expected names among {list(known)}, got {bad}")
        args.cells = list(dict.fromkeys(args.cells))


def _main(argv=None) -> int:
    args = parser().parse_args(argv)
    check_args(args)
    module = importlib.import_module(f"experiments.gradients.{args.experiment}")
    from concurrent.futures.process import BrokenProcessPool

    from .sweep import SchedulerUnavailable

    try:
        summary = module.main(args)
    except BrokenProcessPool as exc:  # a worker was killed (OOM killer, kill -9): a child failed
        raise Stopped(f"a worker process died abruptly ({exc}); finished trials are saved, rerun to resume") from exc
    except SchedulerUnavailable as exc:  # it answered the up-front check, then went away
        raise Stopped(f"--scheduler: {exc}; finished trials are saved, rerun to resume") from exc
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1, default=str)[:4000])
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
