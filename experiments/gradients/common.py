"""Shared plumbing of the gradient experiments: result folders, tables, reports, plotting setup.

Every result file is written atomically (:mod:`scratch_rnn.fileio`): a run that fails or is killed
while writing leaves the previous file (or none), never half of one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from scratch_rnn.fileio import atomic_write, atomic_write_text  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULTS_ROOT = PROJECT_ROOT / "results" / "gradients"


def result_dir(experiment: str, quick: bool, out: str | os.PathLike | None = None) -> Path:
    """results/gradients/<experiment> (or results/gradients/quick/<experiment>), created."""
    path = Path(out) if out is not None else (RESULTS_ROOT / "quick" / experiment if quick
                                              else RESULTS_ROOT / experiment)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj):
    if is_dataclass(obj):
        return asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable, allow_nan=True) + "\n")


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    return atomic_write_text(path, df.to_csv(index=False))  # rendered whole before the file is touched


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table (pandas' to_markdown, through tabulate)."""
    return df.to_markdown(index=False, floatfmt=floatfmt)


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    return atomic_write_text(path, "\n".join(lines))


def save_figure(fig, path: Path, *, tight: bool = True) -> Path:
    """Save ``fig`` (format from the suffix) atomically and close it; ``tight``: tight_layout first
    (pass False for a figure made with ``layout="constrained"``)."""
    path = Path(path)
    try:
        if tight:
            fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, dpi=120, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path
