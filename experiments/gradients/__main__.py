"""``python -m experiments.gradients <experiment> [--quick] [--out DIR] [--seed N]``."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

EXPERIMENTS = {
    "spectrum": "gradient norm vs distance for lambda_1 in [0.5, 1.5] x initializer x nonlinearity",
    "cliff": "the single-unit loss wall and gradient descent with and without clipping",
    "pathological": "adding / temporal order: success rate vs length for SGD, clipping, IRNN (resumable sweep)",
    "flow": "per-step gradient norms in the IMDB sentiment model, at init and after training",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.gradients",
                                description="The exploding/vanishing gradient study (issue #5).")
    sub = p.add_subparsers(dest="experiment", required=True)
    for name, help_ in EXPERIMENTS.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--quick", action="store_true", help="the seconds-long CI version")
        s.add_argument("--out", default=None, help="result folder (default results/gradients/[quick/]<experiment>)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "pathological":
            s.add_argument("--protocol", choices=["quick", "reduced", "long", "extended", "full"], default=None,
                           help="trial grid (default: quick with --quick, else reduced)")
            s.add_argument("--workers", type=int, default=2, help="local worker processes")
            s.add_argument("--scheduler", default=None,
                           help="a Dask scheduler address (tcp://host:port): run trials on that cluster")
            s.add_argument("--tasks", nargs="+", default=None, help="subset of tasks")
        if name == "flow":
            s.add_argument("--data", default=None, help="IMDB source (folder/CSV); default: the shared copy")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    module = importlib.import_module(f"experiments.gradients.{args.experiment}")
    summary = module.main(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
