"""The files of a run folder beyond each backend's own: the side-by-side step table, the backend
comparison and the plots (matplotlib, Agg backend: no display needed).

``python -m experiments.sentiment.report RUN_DIR...`` prints a Markdown table of finished runs. Each
folder counts once however often (and however spelled) it is given; a folder without a finished run
(no metrics.json, or a broken metrics.json/config.json) is listed on stderr with the reason and left
out. Exit codes (scratch_rnn.cli): 0 at least one run reported; 2 a path that is not a folder, or no
finished run at all; 3 crashed.

``--by-setting`` pools runs that differ in nothing but the seed: the group of a result is its backend
and every setting of its run's config.json except ``seed``. The table names the settings that
differ between groups (one column each), and stderr says which they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLORS = {"numpy": "tab:blue", "torch": "tab:orange"}
STYLES = {"numpy": "-", "torch": "--"}


def _steps(out_dir: Path, backend: str):
    import pandas as pd

    return pd.read_csv(out_dir / f"steps_{backend}.csv")


def _epochs(out_dir: Path, backend: str):
    import pandas as pd

    return pd.read_csv(out_dir / f"epochs_{backend}.csv")


def write_steps_table(out_dir, backends) -> Path:
    """``steps.csv``: step, epoch, then loss_<backend> and grad_norm_<backend> for each backend."""
    import pandas as pd

    out_dir = Path(out_dir)
    table = None
    for b in backends:
        s = _steps(out_dir, b).rename(columns={"loss": f"loss_{b}", "grad_norm": f"grad_norm_{b}"})
        table = s if table is None else pd.merge(table, s, on=["step", "epoch"], how="outer")
    path = out_dir / "steps.csv"
    table.to_csv(path, index=False)
    return path


def compare(out_dir, entries) -> dict:
    """How far apart the two backends ended up: accuracy, per-step losses, test predictions."""
    out_dir = Path(out_dir)
    a, b = entries
    sa, sb = _steps(out_dir, a["backend"]), _steps(out_dir, b["backend"])
    n = min(len(sa), len(sb))
    la, lb = sa["loss"].to_numpy()[:n], sb["loss"].to_numpy()[:n]
    ga, gb = sa["grad_norm"].to_numpy()[:n], sb["grad_norm"].to_numpy()[:n]
    rel = np.abs(la - lb) / np.maximum(np.abs(lb), 1e-12)
    out = {
        "test_accuracy_difference_points": 100.0 * (a["test_accuracy"] - b["test_accuracy"]),
        "same_initial_weights": a.get("init_checksum") == b.get("init_checksum"),
        "steps_compared": int(n),
        "first_step_loss_relative_difference": float(rel[0]) if n else None,
        "first_step_grad_norm_relative_difference": float(abs(ga[0] - gb[0]) / max(abs(gb[0]), 1e-12)) if n else None,
        "max_loss_relative_difference_first_10_steps": float(rel[:10].max()) if n else None,
        "first_step_loss_differs_by_1e-3": (int(np.argmax(rel > 1e-3)) + 1) if np.any(rel > 1e-3) else None,
        "mean_abs_loss_difference_last_epoch": None,
    }
    last = sa["epoch"].to_numpy()[:n] == sa["epoch"].to_numpy()[:n].max() if n else None
    if n:
        out["mean_abs_loss_difference_last_epoch"] = float(np.mean(np.abs(la - lb)[last]))
    pa, pb = out_dir / f"predictions_{a['backend']}.npy", out_dir / f"predictions_{b['backend']}.npy"
    if pa.is_file() and pb.is_file():
        out["test_prediction_agreement"] = float(np.mean(np.load(pa) == np.load(pb)))
    return out


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(np.asarray(y, dtype=np.float64), 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _window_label(window: int) -> str:
    return "per step" if window <= 1 else f"moving mean over {window} steps"


def _figure(*args, **kw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kw)


def plot_curves(out_dir, backends) -> Path:
    """``curves.png``: training loss per step (raw, faint, and smoothed), loss per epoch (train and
    validation) and accuracy per epoch (train, validation, test at the selected epoch), every backend."""
    import json

    out_dir = Path(out_dir)
    plt, (fig, axes) = _figure(1, 3, figsize=(16, 4.6))
    results = {}
    metrics_path = out_dir / "metrics.json"
    if metrics_path.is_file():
        results = {e["backend"]: e for e in json.loads(metrics_path.read_text())["results"]}
    for b in backends:
        s, e = _steps(out_dir, b), _epochs(out_dir, b)
        c, ls = COLORS.get(b), STYLES.get(b, "-")
        window = max(1, len(s) // 60)
        axes[0].plot(s["step"], s["loss"], color=c, alpha=0.15, lw=0.6)
        axes[0].plot(
            s["step"],
            _smooth(s["loss"].to_numpy(), window),
            color=c,
            ls=ls,
            lw=1.6,
            label=f"{b} ({_window_label(window)})",
        )
        axes[1].plot(e["epoch"], e["train_loss"], color=c, ls=ls, marker="o", label=f"{b} train")
        axes[2].plot(e["epoch"], e["train_accuracy"], color=c, ls=ls, marker="o", label=f"{b} train")
        if "valid_loss" in e:
            axes[1].plot(e["epoch"], e["valid_loss"], color=c, ls=ls, marker="s", mfc="white", label=f"{b} validation")
            axes[2].plot(
                e["epoch"], e["valid_accuracy"], color=c, ls=ls, marker="s", mfc="white", label=f"{b} validation"
            )
        if b in results:
            r = results[b]
            axes[2].plot(
                [r["selected_epoch"]],
                [r["test_accuracy"]],
                color=c,
                marker="*",
                ms=14,
                ls="none",
                label=f"{b} test {100 * r['test_accuracy']:.2f}% (epoch {r['selected_epoch']})",
            )
    axes[0].set(title="training loss per step", xlabel="optimizer step", ylabel="cross-entropy")
    axes[1].set(title="loss per epoch", xlabel="epoch", ylabel="cross-entropy")
    axes[2].set(title="accuracy per epoch", xlabel="epoch", ylabel="accuracy")
    for ax in axes[1:]:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.ticklabel_format(axis="y", useOffset=False)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"IMDB sentiment: {out_dir.name}")
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grad_norms(out_dir, backends, clip_norm=None) -> Path:
    """``grad_norm.png``: the pre-clip global gradient norm per step (log scale), every backend,
    and, when two backends ran, the relative difference of their per-step losses."""
    out_dir = Path(out_dir)
    two = len(backends) == 2
    plt, (fig, axes) = _figure(1, 2 if two else 1, figsize=(14 if two else 8, 4.6), squeeze=False)
    ax = axes[0, 0]
    steps = {b: _steps(out_dir, b) for b in backends}
    for b, s in steps.items():
        ax.plot(s["step"], s["grad_norm"], color=COLORS.get(b), alpha=0.25, lw=0.6)
        w = max(1, len(s) // 60)
        ax.plot(
            s["step"],
            _smooth(s["grad_norm"].to_numpy(), w),
            color=COLORS.get(b),
            ls=STYLES.get(b, "-"),
            lw=1.6,
            label=f"{b} ({_window_label(w)})",
        )
    if clip_norm is not None:
        ax.axhline(clip_norm, color="gray", ls=":", label=f"clip_norm = {clip_norm:g}")
    ax.set_yscale("log")
    ax.set(title="global gradient norm before clipping", xlabel="optimizer step", ylabel="L2 norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if two:
        a, b = backends
        n = min(len(steps[a]), len(steps[b]))
        la, lb = steps[a]["loss"].to_numpy()[:n], steps[b]["loss"].to_numpy()[:n]
        ga, gb = steps[a]["grad_norm"].to_numpy()[:n], steps[b]["grad_norm"].to_numpy()[:n]
        x = steps[a]["step"].to_numpy()[:n]
        floor = 1e-9  # identical values would be 0 on a log axis
        ax2 = axes[0, 1]
        ax2.plot(x, np.maximum(np.abs(la - lb) / np.abs(lb), floor), lw=0.7, label="loss")
        ax2.plot(x, np.maximum(np.abs(ga - gb) / np.abs(gb), floor), lw=0.7, alpha=0.7, label="gradient norm")
        ax2.set_yscale("log")
        ax2.set(
            title=f"{a} vs {b}: relative difference per step (same start, same batches)",
            xlabel="optimizer step",
            ylabel=f"|{a} - {b}| / |{b}|  (1e-9: equal)",
        )
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "grad_norm.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) ``columns``."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


SUMMARY_COLUMNS = [
    ("run", "run"),
    ("backend", "backend"),
    ("embedding", "embedding"),
    ("stopwords", "stopwords"),
    ("valid", "valid acc. (chosen epoch)"),
    ("test", "test accuracy"),
    ("epoch", "epoch chosen / run"),
    ("minutes", "time (min)"),
    ("cpu_minutes", "CPU (min)"),
    ("memory", "peak memory (MB)"),
]
#: The statistics of a --by-setting row, after the settings that differ between groups and the backend.
SETTING_STAT_COLUMNS = [
    ("backend", "backend"),
    ("seeds", "seeds"),
    ("test", "test accuracy (mean)"),
    ("range", "min - max"),
    ("valid", "valid acc. (mean)"),
    ("minutes", "time (min, mean)"),
]
#: The settings a --by-setting group does not hold fixed: the seed is what its runs repeat over; the
#: backend of a result is its own column (a "both" run's numpy result pools with a "numpy" run's).
NOT_A_GROUP_SETTING = ("seed", "backend")
NOT_RECORDED = "(not recorded)"


class IncompleteRun(ValueError):
    """A run folder without a finished, readable result (the message says which file and why)."""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise IncompleteRun(
            f"no {path.name}"
            + (" (the run did not finish, or is still running)" if path.name == "metrics.json" else "")
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IncompleteRun(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): cut short or edited"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise IncompleteRun(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(data, dict):
        raise IncompleteRun(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _fields(path: Path, fn):
    """``fn()``, a missing or malformed field becoming :class:`IncompleteRun` naming ``path``."""
    try:
        return fn()
    except KeyError as exc:
        raise IncompleteRun(f"{path}: no field {exc}") from exc
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise IncompleteRun(f"{path}: a malformed field ({exc})") from exc


def load_run(run_dir) -> dict:
    """One finished run folder: its summary rows and per-seed records; :class:`IncompleteRun` otherwise."""
    d = Path(run_dir)
    metrics = _read_json(d / "metrics.json")
    config = _read_json(d / "config.json")
    cfg = _fields(d / "config.json", lambda: {k: config["sentiment"][k] for k in ("embedding", "stopwords", "seed")})
    settings = _fields(
        d / "config.json", lambda: {k: v for k, v in config["sentiment"].items() if k not in NOT_A_GROUP_SETTING}
    )
    results = _fields(d / "metrics.json", lambda: list(metrics["results"]))
    if not results:
        raise IncompleteRun(f"{d / 'metrics.json'}: no results")
    rows, records = [], []
    for r in results:

        def row(r=r):
            return {
                "run": d.name,
                "backend": r["backend"],
                "embedding": cfg["embedding"],
                "stopwords": cfg["stopwords"],
                "valid": "-" if r.get("valid_accuracy") is None else f"{100 * r['valid_accuracy']:.2f} %",
                "test": f"**{100 * r['test_accuracy']:.2f} %** of {r['test_size']:,}",
                "epoch": f"{r['selected_epoch']} / {r['epochs']}",
                "minutes": f"{r['seconds'] / 60:.1f}",
                "cpu_minutes": f"{r['cpu_seconds'] / 60:.1f}",
                "memory": f"{r['peak_memory_mb']:.0f}",
            }

        def record(r=r):
            return {
                "settings": settings,
                "backend": r["backend"],
                "run": d.name,
                "seed": cfg["seed"],
                "test": 100 * float(r["test_accuracy"]),
                "valid": 100 * float(r["valid_accuracy"]) if r.get("valid_accuracy") is not None else float("nan"),
                "minutes": float(r["seconds"]) / 60,
            }

        rows.append(_fields(d / "metrics.json", row))
        records.append(_fields(d / "metrics.json", record))
    return {"dir": d, "rows": rows, "records": records}


def unique_dirs(run_dirs) -> list[Path]:
    """The run folders, each once (by resolved path), in the order given."""
    seen = {}
    for d in map(Path, run_dirs):
        seen.setdefault(d.resolve(), d)
    return list(seen.values())


def collect(run_dirs) -> tuple[list[dict], list[tuple[Path, str]]]:
    """(finished runs, [(folder, why incomplete)]) of the given folders, each folder once."""
    good, incomplete = [], []
    for d in unique_dirs(run_dirs):
        try:
            good.append(load_run(d))
        except IncompleteRun as exc:
            incomplete.append((d, str(exc)))
    return good, incomplete


def summary_rows(run_dirs) -> list[dict]:
    """One row per backend of each run folder (each folder once), for :func:`markdown_table`."""
    return [row for run in map(load_run, unique_dirs(run_dirs)) for row in run["rows"]]


def _show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def setting_table(records) -> tuple[list[dict], list[tuple[str, str]], list[str]]:
    """(rows, columns, differing settings): one row per group of results that share the backend and
    every setting but the seed, with the mean, min and max test accuracy over the group's seeds.

    The columns name the settings that differ between groups, so that no two rows look alike.
    """
    keys = sorted(set().union(*(r["settings"] for r in records)))

    def value(r, k):
        return _show(r["settings"].get(k, NOT_RECORDED))

    differ = [k for k in keys if len({value(r, k) for r in records}) > 1]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["backend"], tuple(value(r, k) for k in keys)), []).append(r)
    rows = []
    for (backend, _), g in groups.items():
        tests = [r["test"] for r in g]
        rows.append(
            {
                **{k: value(g[0], k) for k in differ},
                "backend": backend,
                "seeds": ", ".join(str(s) for s in sorted(r["seed"] for r in g)),
                "test": f"{np.mean(tests):.2f} %",
                "range": f"{min(tests):.2f} - {max(tests):.2f}",
                "valid": f"{np.mean([r['valid'] for r in g]):.2f} %",
                "minutes": f"{np.mean([r['minutes'] for r in g]):.1f}",
            }
        )
    return rows, [(k, k) for k in differ] + SETTING_STAT_COLUMNS, differ


def _repeated_seeds(records) -> list[str]:
    """Notes on groups in which a seed occurs more than once (repeats of one run, not more seeds)."""
    seen: dict[tuple, list[str]] = {}
    for r in records:
        key = (r["backend"], json.dumps(r["settings"], sort_keys=True, default=str), r["seed"])
        seen.setdefault(key, []).append(r["run"])
    return [
        f"seed {k[2]} ({k[0]}) occurs in {len(v)} runs of one setting: {', '.join(v)}"
        for k, v in seen.items()
        if len(v) > 1
    ]


PROG = "python -m experiments.sentiment.report"


def _main(argv=None) -> int:
    import argparse
    import sys

    from scratch_rnn.cli import BadInput

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Print a Markdown table of sentiment run folders' results.",
        epilog="A folder given twice (however spelled) counts once. Folders without a finished run (no or a "
        "broken metrics.json or config.json: a failed, killed or running run) are listed on stderr with "
        "the reason and left out. Exit 0 when at least one run is reported; 2 when a path is not a "
        "folder or no folder holds a finished run.",
    )
    p.add_argument("runs", nargs="+", help="run folders (results/sentiment/<run-name>)")
    p.add_argument(
        "--by-setting",
        action="store_true",
        help="one row per backend and setting (every option of config.json but the seed): mean, min "
        "and max over the runs (seeds); the settings that differ between rows are named",
    )
    args = p.parse_args(argv)
    not_dirs = [r for r in args.runs if not Path(r).is_dir()]
    if not_dirs:
        raise BadInput(
            f"runs: expected run folders, got {not_dirs} "
            f"({'no such folder' if not Path(not_dirs[0]).exists() else 'not a folder'})"
        )
    dirs = unique_dirs(args.runs)
    if len(dirs) < len(args.runs):
        print(
            f"note: {len(args.runs) - len(dirs)} run folder(s) given more than once; each is counted once",
            file=sys.stderr,
        )
    good, incomplete = collect(dirs)
    listing = "\n".join(f"  {d}: {why}" for d, why in incomplete)
    if not good:
        raise BadInput(f"runs: expected at least one folder with a finished run, got none:\n{listing}")
    if args.by_setting:
        records = [rec for run in good for rec in run["records"]]
        rows, cols, differ = setting_table(records)
        print(
            "settings that differ between rows: "
            + (", ".join(differ) if differ else "none (only the backend)")
            + "; every other setting is the same in all runs, and the runs of a row differ only in seed",
            file=sys.stderr,
        )
        for note in _repeated_seeds(records):
            print(f"note: {note}", file=sys.stderr)
    else:
        rows, cols = [row for run in good for row in run["rows"]], SUMMARY_COLUMNS
    print(markdown_table(rows, cols))
    if incomplete:
        print(f"left out {len(incomplete)} folder(s) without a finished run:\n{listing}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """``python -m experiments.sentiment.report RUN_DIR...``: a Markdown table of the runs' results."""
    from scratch_rnn.cli import run_main

    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    import sys

    sys.exit(main())
