"""Shared plumbing of the gradient experiments: result folders, tables, reports, plotting setup.

Every result file is written atomically (:mod:`scratch_rnn.fileio`): a run that fails or is killed
while writing leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from statistics import NormalDist

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from scratch_rnn.fileio import atomic_write, atomic_write_text  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULTS_ROOT = PROJECT_ROOT / "results" / "gradients"


def result_dir(experiment: str, quick: bool, out: str | os.PathLike | None = None) -> Path:
    """results/gradients/<experiment> (or results/gradients/quick/<experiment>), created."""
    path = (
        Path(out) if out is not None else (RESULTS_ROOT / "quick" / experiment if quick else RESULTS_ROOT / experiment)
    )
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


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: the p whose score test at level 1 - confidence does
    not reject ``successes`` of ``trials`` (Wilson 1927; statsmodels' ``proportion_confint(method="wilson")``):

        (p̂ + z²/2n ± z √(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n),   z = Φ⁻¹((1 + confidence)/2).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes (0 of 3: [0, 0.56]).
    """
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy's integers included
            raise TypeError(f"{name}: expected an integer, got {value!r} ({type(value).__name__})")
    successes, trials = int(successes), int(trials)
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(
            f"successes, trials: expected 0 <= successes <= trials and trials >= 1, got "
            f"successes={successes}, trials={trials}"
        )
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    n, phat = trials, successes / trials
    centre = phat + z * z / (2 * n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    low = 0.0 if successes == 0 else (centre - half) / scale  # exact 0 and 1 at the ends, not a rounding of them
    high = 1.0 if successes == trials else (centre + half) / scale
    return low, high


def separation_chance(n1: int, n2: int) -> float:
    """The chance that every one of n1 values lies below every one of n2 others, or above, when all n1 + n2 are
    exchangeable and distinct: 2 / C(n1 + n2, n1) (the two-sided exact p of a Mann-Whitney U of 0). 3 vs 3: 0.1."""
    return min(1.0, 2 / math.comb(n1 + n2, n1))
