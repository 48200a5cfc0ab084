"""The files of a run folder beyond each backend's own: the side-by-side step table, the backend
comparison and the plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

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
        axes[0].plot(s["step"], _smooth(s["loss"].to_numpy(), window), color=c, ls=ls, lw=1.6,
                     label=f"{b} ({_window_label(window)})")
        axes[1].plot(e["epoch"], e["train_loss"], color=c, ls=ls, marker="o", label=f"{b} train")
        axes[2].plot(e["epoch"], e["train_accuracy"], color=c, ls=ls, marker="o", label=f"{b} train")
        if "valid_loss" in e:
            axes[1].plot(e["epoch"], e["valid_loss"], color=c, ls=ls, marker="s", mfc="white",
                         label=f"{b} validation")
            axes[2].plot(e["epoch"], e["valid_accuracy"], color=c, ls=ls, marker="s", mfc="white",
                         label=f"{b} validation")
        if b in results:
            r = results[b]
            axes[2].plot([r["selected_epoch"]], [r["test_accuracy"]], color=c, marker="*", ms=14, ls="none",
                         label=f"{b} test {100 * r['test_accuracy']:.2f}% (epoch {r['selected_epoch']})")
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
        ax.plot(s["step"], _smooth(s["grad_norm"].to_numpy(), w), color=COLORS.get(b), ls=STYLES.get(b, "-"),
                lw=1.6, label=f"{b} ({_window_label(w)})")
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
        ax2.set(title=f"{a} vs {b}: relative difference per step (same start, same batches)",
                xlabel="optimizer step", ylabel=f"|{a} - {b}| / |{b}|  (1e-9: equal)")
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
    ("run", "run"), ("backend", "backend"), ("embedding", "embedding"), ("stopwords", "stopwords"),
    ("valid", "valid acc. (chosen epoch)"), ("test", "test accuracy"), ("epoch", "epoch chosen / run"),
    ("minutes", "time (min)"), ("cpu_minutes", "CPU (min)"), ("memory", "peak memory (MB)"),
]


def summary_rows(run_dirs) -> list[dict]:
    """One row per backend of each run folder, for :func:`markdown_table`."""
    import json

    rows = []
    for d in map(Path, run_dirs):
        metrics = json.loads((d / "metrics.json").read_text())
        cfg = json.loads((d / "config.json").read_text())["sentiment"]
        for r in metrics["results"]:
            rows.append({
                "run": d.name, "backend": r["backend"], "embedding": cfg["embedding"], "stopwords": cfg["stopwords"],
                "valid": "-" if r.get("valid_accuracy") is None else f"{100 * r['valid_accuracy']:.2f} %",
                "test": f"**{100 * r['test_accuracy']:.2f} %** of {r['test_size']:,}",
                "epoch": f"{r['selected_epoch']} / {r['epochs']}",
                "minutes": f"{r['seconds'] / 60:.1f}", "cpu_minutes": f"{r['cpu_seconds'] / 60:.1f}",
                "memory": f"{r['peak_memory_mb']:.0f}",
            })
    return rows


def main(argv=None) -> int:
    """``python -m experiments.sentiment.report RUN_DIR...``: a Markdown table of the runs' results."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.sentiment.report",
                                description="Print a Markdown table of sentiment run folders' results.")
    p.add_argument("runs", nargs="+", help="run folders (results/sentiment/<run-name>)")
    p.add_argument("--by-setting", action="store_true",
                   help="one row per (embedding, stopwords, backend): mean, min and max over the runs (seeds)")
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "metrics.json").is_file()]
    if missing:
        p.error(f"no metrics.json in {missing}")
    if args.by_setting:
        rows, cols = setting_rows(args.runs)
        print(markdown_table(rows, cols))
    else:
        print(markdown_table(summary_rows(args.runs), SUMMARY_COLUMNS))
    return 0


def setting_rows(run_dirs):
    """Mean / min / max test accuracy per (embedding, stopwords, backend) over the given runs."""
    import json

    import pandas as pd

    recs = []
    for d in map(Path, run_dirs):
        cfg = json.loads((d / "config.json").read_text())["sentiment"]
        for r in json.loads((d / "metrics.json").read_text())["results"]:
            recs.append({"embedding": cfg["embedding"], "stopwords": cfg["stopwords"], "backend": r["backend"],
                         "seed": cfg["seed"], "test": 100 * r["test_accuracy"],
                         "valid": 100 * r["valid_accuracy"] if r.get("valid_accuracy") is not None else float("nan"),
                         "minutes": r["seconds"] / 60})
    df = pd.DataFrame(recs)
    rows = []
    for key, g in df.groupby(["embedding", "stopwords", "backend"], sort=False):
        rows.append({"embedding": key[0], "stopwords": key[1], "backend": key[2],
                     "seeds": ", ".join(str(s) for s in sorted(g["seed"])),
                     "test": f"{g['test'].mean():.2f} %", "range": f"{g['test'].min():.2f} - {g['test'].max():.2f}",
                     "valid": f"{g['valid'].mean():.2f} %", "minutes": f"{g['minutes'].mean():.1f}"})
    cols = [("embedding", "embedding"), ("stopwords", "stopwords"), ("backend", "backend"), ("seeds", "seeds"),
            ("test", "test accuracy (mean)"), ("range", "min - max"), ("valid", "valid acc. (mean)"),
            ("minutes", "time (min, mean)")]
    return rows, cols


if __name__ == "__main__":
    import sys

    sys.exit(main())
