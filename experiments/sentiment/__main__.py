"""``python -m experiments.sentiment [--backend numpy|torch|both] [--preset full|quick] [options]``.

Trains the IMDB sentiment RNN and writes ``results/sentiment/<run-name>/``: config.json, metrics.json,
steps.csv, steps_/epochs_/result_<backend> files, predictions_<backend>.npy, checkpoint.npz (numpy),
curves.png, grad_norm.png. The folder appears whole when the run has finished (an earlier run of the
same name is replaced only with --overwrite, and only then). A run name belongs to one run at a time:
while a run of that name is in progress, another is refused (exit 2, naming the running one's pid), with
or without --overwrite. Exit status (scratch_rnn.cli): 0 done,
1 stopped (non-finite values, divergence, a backend's process failed), 2 bad arguments or data (checked
before training starts), 3 crashed.
"""

from __future__ import annotations

import argparse
import json
import sys

from scratch_rnn.cells import cell_names, cell_spec
from scratch_rnn.cli import BadInput, as_bad_input, output_dir, run_main

from . import glove
from .train import BACKENDS, EMBEDDINGS, PRESETS, RESULTS_ROOT, SELECT, STOPWORDS, SentimentConfig


def _none_or(kind, off: str):
    """``none``/``off`` turn the option off (None); 0 is refused (exit 2, naming the option), never read
    as a silent "off"; other numbers go on to the configuration's checks."""

    def parse(s: str):
        if s.lower() in ("none", "off"):
            return None
        value = kind(s)
        if value == 0:
            raise argparse.ArgumentTypeError(
                f"got {s!r}: 0 does not mean 'off' here; pass 'none' for {off}, or a number the option accepts"
            )
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value"
    return parse


def parser() -> argparse.ArgumentParser:
    d = SentimentConfig()
    p = argparse.ArgumentParser(
        prog="python -m experiments.sentiment",
        description="Train the IMDB sentiment RNN (Embedding -> RNN -> pooling -> Linear) with the NumPy stack, "
        "its torch twin, or both from the same initial weights and the same batches. Options left out "
        "take the preset's value, else the default shown. Exit status: 0 done, 1 stopped (non-finite "
        "values, divergence, a backend's process failed), 2 bad arguments or data, 3 crashed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--backend", choices=BACKENDS, help=f"which implementation trains (default {d.backend})")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="full",
        help="full: the reported run; quick: the reduced CI run (3,000 reviews, one epoch, 2,000 test)",
    )
    p.add_argument("--run-name", default=None, help="result folder name (default: derived from the options)")
    p.add_argument("--out-root", default=str(RESULTS_ROOT), help="where run folders go")
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=False,
        help="replace an existing run folder (only once the new run has finished)",
    )
    p.add_argument("--no-progress", action="store_true", default=False, help="no progress bars or epoch lines")

    g = p.add_argument_group("data and text pipeline")
    g.add_argument(
        "--data", help="IMDB source: aclImdb/ folder or CSV (default: the shared copy, see datasets/README.md)"
    )
    g.add_argument(
        "--stopwords",
        choices=STOPWORDS,
        help=f"remove NLTK's stopwords (as the notebook), remove them but keep not/no/nor and the n't "
        f"forms, or keep every token (default {d.stopwords})",
    )
    g.add_argument(
        "--max-vocab",
        type=_none_or(int, "no limit"),
        help=f"vocabulary size, <pad> and <unk> included; 'none': no limit (default {d.max_vocab})",
    )
    g.add_argument("--min-freq", type=int, help=f"minimum count in training (default {d.min_freq})")
    g.add_argument("--max-len", type=int, help=f"keep a review's first N tokens (default {d.max_len})")
    g.add_argument(
        "--train-size",
        type=_none_or(int, "all of them"),
        help="stratified subsample of the 25,000 training reviews, >= 4; 'none': all (default: all)",
    )
    g.add_argument(
        "--test-size",
        type=_none_or(int, "all of them"),
        help="stratified subsample of the 25,000 test reviews, >= 1; 'none': all (default: all)",
    )
    g.add_argument(
        "--valid-fraction",
        type=float,
        help=f"share of the training reviews held out to choose the epoch (default {d.valid_fraction})",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--embedding",
        choices=EMBEDDINGS,
        help=f"random N(0, 1) or GloVe 6B 50-d initialization (default {d.embedding})",
    )
    g.add_argument("--embedding-dim", type=int, help=f"(default {d.embedding_dim}; GloVe needs {glove.DIM})")
    g.add_argument("--hidden-size", type=int, help=f"(default {d.hidden_size})")
    g.add_argument("--num-layers", type=int, help=f"(default {d.num_layers})")
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, help=f"(default {d.bidirectional})")
    g.add_argument(
        "--cell",
        choices=cell_names(),
        help=f"the recurrent cell, any registered: {', '.join(cell_names())} (default {d.cell})",
    )
    g.add_argument(
        "--nonlinearity",
        choices=("tanh", "relu"),
        help=f"of a cell that has one: "
        f"{', '.join(c for c in cell_names() if 'nonlinearity' in cell_spec(c).options)} "
        f"(default {d.nonlinearity})",
    )
    g.add_argument("--pooling", choices=("last", "mean", "max"), help=f"(default {d.pooling})")
    g.add_argument("--dropout", type=float, help=f"between RNN layers (default {d.dropout})")
    g.add_argument("--dtype", choices=("float32", "float64"), help=f"(default {d.dtype})")

    g = p.add_argument_group("training")
    g.add_argument(
        "--optimizer", choices=("sgd", "adam", "adamw", "adagrad", "rmsprop"), help=f"(default {d.optimizer})"
    )
    g.add_argument("--lr", type=float, help=f"(default {d.lr})")
    g.add_argument("--lr-decay", type=float, help=f"epoch e trains at lr * lr_decay ** (e - 1) (default {d.lr_decay})")
    g.add_argument("--weight-decay", type=float, help=f"(default {d.weight_decay})")
    g.add_argument(
        "--clip-norm",
        type=_none_or(float, "no clipping"),
        help=f"global L2 clipping, > 0; 'none' disables (default {d.clip_norm})",
    )
    g.add_argument("--batch-size", type=int, help=f"(default {d.batch_size})")
    g.add_argument("--epochs", type=int, help=f"(default {d.epochs})")
    g.add_argument(
        "--token-dropout",
        type=float,
        help=f"share of training tokens replaced by <unk>, the same for both backends (default {d.token_dropout})",
    )
    g.add_argument(
        "--select",
        choices=SELECT,
        help=f"test the weights of the best validation epoch, or of the last (default {d.select})",
    )
    g.add_argument(
        "--patience",
        type=_none_or(int, "no early stop"),
        help="stop after N >= 1 epochs without a better validation accuracy; 'none': never (default)",
    )
    g.add_argument("--eval-batch-size", type=int, help=f"(default {d.eval_batch_size})")
    g.add_argument("--seed", type=int, help=f"initial weights, data order, validation split (default {d.seed})")
    g.add_argument("--threads", type=int, help=f"BLAS / torch threads per process (default {d.threads})")
    g.add_argument(
        "--in-process",
        action="store_true",
        default=False,
        help="with --backend both, run both backends in this process (default: one process each, "
        "so that each reports its own peak memory)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SentimentConfig:
    """The preset's values, overridden by every option given on the command line."""
    fields = {f for f in SentimentConfig.__dataclass_fields__}
    values = dict(PRESETS[args.preset])
    values.update({k: v for k, v in vars(args).items() if k in fields})
    if args.in_process:
        values["isolate"] = False
    return SentimentConfig(**values)


def check_data(cfg: SentimentConfig):
    """The source exists and holds the official train and test splits (read once, before any work)."""
    from .data import load_imdb, split_frames

    try:
        df = load_imdb(cfg.data)
        frames = split_frames(df)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise BadInput(f"--data: {e}") from e
    missing = [s for s in ("train", "test") if s not in frames]
    if missing:
        raise BadInput(
            f"--data: expected the official train and test splits in {df.attrs.get('source', cfg.data)!r}, "
            f"got only {sorted(frames)} (missing {missing})"
        )
    for name, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        if size is not None and size > len(frames[name]):
            raise BadInput(
                f"--{name}-size: expected at most the {len(frames[name])} {name} reviews of the source, got {size}"
            )
    from .train import assign_splits

    try:  # the validation hold-out, as the run will draw it: neither side may be empty
        assign_splits(cfg, df)
    except ValueError as e:
        raise BadInput(f"--{e}".replace("valid_fraction", "valid-fraction", 1)) from e


def _main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    with as_bad_input():
        cfg = config_from_args(args)
    run_name = args.run_name or (("quick-" if args.preset == "quick" else "") + cfg.default_run_name())
    if "/" in run_name or run_name in ("", ".", "..") or run_name.startswith("."):
        raise BadInput(f"--run-name: expected a plain folder name (not starting with '.'), got {run_name!r}")
    out_root = output_dir("--out-root", args.out_root)
    out_dir = out_root / run_name
    from scratch_rnn.runlock import RunInUse

    from .. import runfolder

    try:  # the run name is this run's until it ends: a run of that name in progress is never replaced
        lock = runfolder.claim(out_dir, f"--run-name {run_name!r} ({out_dir})")
    except RunInUse as e:
        raise BadInput(str(e)) from e
    try:
        runfolder.recover(out_dir)  # an old run moved aside by a killed swap is back before we look
        if out_dir.exists() and not args.overwrite:
            raise BadInput(
                f"--run-name: {out_dir} already holds a run; pass --overwrite (the old run is replaced "
                "only when the new one finishes) or another --run-name"
            )
        if cfg.embedding == "glove":
            from .glove import GloveUnavailable, load_glove

            try:
                load_glove()
            except GloveUnavailable as e:
                raise BadInput(f"--embedding glove: {e}") from e
        check_data(cfg)

        from .train import run_experiment

        argv_used = list(sys.argv[1:] if argv is None else argv)
        metrics = run_experiment(
            cfg, out_dir, progress=not args.no_progress, argv=argv_used, overwrite=args.overwrite, owned=lock
        )
    finally:
        lock.release()
    rows = [
        {
            k: r[k]
            for k in (
                "backend",
                "test_accuracy",
                "test_size",
                "train_size",
                "epochs",
                "selected_epoch",
                "seconds",
                "peak_memory_mb",
            )
        }
        for r in metrics["results"]
    ]
    print(json.dumps({"run": str(out_dir), "results": rows, "comparison": metrics.get("comparison")}, indent=1))
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog="python -m experiments.sentiment")


if __name__ == "__main__":
    sys.exit(main())
