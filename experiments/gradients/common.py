"""Shared plumbing of the gradient experiments: result folders, tables, reports, plotting setup."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

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
    path.write_text(json.dumps(data, indent=2, default=_jsonable, allow_nan=True) + "\n")
    return path


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table (pandas' to_markdown, through tabulate)."""
    return df.to_markdown(index=False, floatfmt=floatfmt)


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    path.write_text("\n".join(lines))
    return path


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
