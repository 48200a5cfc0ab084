"""The gradient study, part three: the pathological report's statistics (Wilson intervals against their closed
form, known values and an independent inversion of the score test; what orderings the report claims), the trial
selection of the command line (in a subprocess, as a user runs it) and the scale of the exact Ω against the code's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments.gradients import __main__ as cli
from experiments.gradients import pathological
from experiments.gradients.common import separation_chance, wilson_interval

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Wilson intervals
# --------------------------------------------------------------------------------------------
def score_test_bounds(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The oracle: the ends of {p : (k/n - p)² <= z² p (1 - p) / n}, the p a score test does not reject, found by
    bisection on each side of k/n (no formula of the interval is used)."""
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    phat = k / n

    def rejected(p):
        return (phat - p) ** 2 > z * z * p * (1 - p) / n

    def edge(inside, outside):
        for _ in range(200):
            mid = (inside + outside) / 2
            if rejected(mid):
                outside = mid
            else:
                inside = mid
        return inside

    low = 0.0 if not rejected(0.0) else edge(phat, 0.0)
    high = 1.0 if not rejected(1.0) else edge(phat, 1.0)
    return low, high


def test_wilson_known_values():
    """Published values (statsmodels' proportion_confint(method="wilson"), 95 %) and the closed ends at 0 and n:
    upper = z²/(n + z²) for 0 successes, lower = n/(n + z²) for n."""
    z2 = NormalDist().inv_cdf(0.975) ** 2
    cases = {
        (0, 3): (0.0, 3.8415 / 6.8415),
        (3, 3): (3 / 6.8415, 1.0),
        (1, 3): (0.0615, 0.7923),
        (2, 3): (0.2077, 0.9385),
        (1, 10): (0.0179, 0.4042),
        (5, 5): (0.5655, 1.0),
    }
    for (k, n), (lo, hi) in cases.items():
        got = wilson_interval(k, n)
        assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4), (k, n, got)
    assert wilson_interval(0, 3)[1] == pytest.approx(z2 / (3 + z2), rel=1e-14)
    assert wilson_interval(3, 3)[0] == pytest.approx(3 / (3 + z2), rel=1e-14)
    assert wilson_interval(np.int64(2), np.int64(4)) == wilson_interval(2, 4)


@given(n=st.integers(1, 400), frac=st.floats(0, 1), confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_inverts_the_score_test(n, frac, confidence):
    k = round(frac * n)
    lo, hi = wilson_interval(k, n, confidence)
    ref_lo, ref_hi = score_test_bounds(k, n, confidence)
    assert 0 <= lo <= k / n <= hi <= 1
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12), (k, n, confidence)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((4, 3), ValueError, "successes=4, trials=3"),
        ((-1, 3), ValueError, "successes=-1"),
        ((0, 0), ValueError, "trials=0"),
        ((1.0, 3), TypeError, "successes: expected an integer"),
        ((True, 3), TypeError, "successes"),
        ((1, 3, 1.0), ValueError, "confidence: expected a number in \\(0, 1\\)"),
    ],
)
def test_wilson_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        wilson_interval(*args)


def test_separation_chance_closed_form():
    """2/C(n1+n2, n1), checked by enumerating every assignment of ranks."""
    from itertools import combinations

    for n1, n2 in ((1, 1), (3, 3), (2, 5), (5, 5)):
        ranks = range(n1 + n2)
        sep = sum(set(c) in (set(range(n1)), set(range(n2, n1 + n2))) for c in combinations(ranks, n1))
        assert separation_chance(n1, n2) == pytest.approx(sep / math.comb(n1 + n2, n1), rel=1e-15)
    assert separation_chance(3, 3) == pytest.approx(0.1)


def test_report_claims_only_supported_orderings():
    """The summary carries each cell's interval and best-error spread; an ordering is claimed only for disjoint
    intervals (5 of 5 against 0 of 5) or, among unsolved methods, for best errors that do not overlap."""
    rows = []
    for method, solved, errors in (
        ("a", [1] * 5, [0.0] * 5),
        ("b", [0] * 5, [0.30, 0.31, 0.32, 0.33, 0.34]),
        ("c", [0] * 5, [0.10, 0.12, 0.2, 0.305, 0.11]),
        ("d", [0] * 5, [0.5, 0.6, 0.7, 0.8, 0.9]),
        ("e", [1, 0, 0, 0, 0], [0.0, 0.4, 0.4, 0.4, 0.4]),
    ):
        rows += [
            dict(
                task="adding",
                length=50,
                method=method,
                solved=bool(s),
                best_error=e,
                diverged=False,
                final_train_loss=0.1,
                grad_norm_median=1.0,
                grad_norm_max=1.0,
                clipped_fraction=0.5,
                iters=10,
            )
            for s, e in zip(solved, errors)
        ]
    df = pd.DataFrame(rows)
    summary = pathological.summarize(df)
    a = summary[summary.method == "a"].iloc[0]
    assert (a.success_ci_low, a.success_ci_high) == wilson_interval(5, 5)
    b = summary[summary.method == "b"].iloc[0]
    assert (b.min_best_error, b.median_best_error, b.max_best_error) == (0.30, 0.32, 0.34)
    (line,) = pathological.supported_orderings(summary, df)
    assert "a above b" in line and "a above d" in line and "b above" not in line  # 0/5 vs 0/5 overlap
    # b and c overlap (0.305 > 0.30); b, c below d: separated, each with 2/C(10, 5)
    assert "b below d (chance 0.0079)" in line and "c below d" in line and "c below b" not in line
    assert "b below c" not in line
    # 1 of 5 is a higher rate than 0 of 5 and a lower one than 5 of 5, but the intervals overlap: no claim
    assert wilson_interval(1, 5)[1] > wilson_interval(5, 5)[0]
    assert "e above" not in line and "a above e" not in line and " e below" not in line  # e solved once


# --------------------------------------------------------------------------------------------
# Trials selected from the command line
# --------------------------------------------------------------------------------------------
def trial_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines() if line.strip()]


def test_command_line_runs_exactly_the_selected_trials(tmp_path):
    """The issue's command, in a subprocess: --tasks/--lengths/--methods/--seed/--max-iters select the trials (the
    protocol's seeds offset by --seed), even a method the protocol limits to other lengths (sgd_cr_exact: length 50
    only in the budget protocol); the table keeps task, length, method, solved and solved_at."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.gradients",
        "pathological",
        "--protocol",
        "budget",
        "--tasks",
        "adding",
        "--lengths",
        "100",
        "--methods",
        "sgd_cr_exact",
        "--seed",
        "4",
        "--max-iters",
        "3",
        "--workers",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = trial_rows(tmp_path)
    assert sorted((r["task"], r["length"], r["method"], r["seed"], r["max_iters"]) for r in rows) == [
        ("adding", 100, "sgd_cr_exact", s, 3) for s in (4, 5, 6)
    ]
    for r in rows:
        assert {"task", "length", "method", "solved", "solved_at"} <= set(r)
        assert r["solved"] is False and r["solved_at"] is None and r["iters"] == 3
    assert "What the intervals support" in (tmp_path / "report.md").read_text()


def test_command_line_seed_count_and_bad_selections(tmp_path, capsys):
    assert (
        cli.main(
            [
                "pathological",
                "--tasks",
                "temporal_order",
                "--lengths",
                "10",
                "--methods",
                "sgd_clip",
                "sgd",
                "--seed",
                "2",
                "--num-seeds",
                "1",
                "--max-iters",
                "2",
                "--workers",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = trial_rows(tmp_path)
    assert sorted((r["method"], r["seed"], r["length"]) for r in rows) == [("sgd", 2, 10), ("sgd_clip", 2, 10)]
    for argv, match in (
        (["--methods", "sgd_cr_paper"], '--methods: .*"sgd_cr_paper" is now "sgd_cr_exact"'),
        (["--methods", "nope"], "--methods: expected names among"),
        (["--lengths", "9"], r"--lengths: expected integers >= 10 .*got \[9\]"),
        (["--max-iters", "0"], "--max-iters: expected a positive integer, got 0"),
        (["--num-seeds", "0"], "--num-seeds: expected a positive integer, got 0"),
    ):
        capsys.readouterr()
        assert cli.main(["pathological", "--out", str(tmp_path / "bad"), *argv]) == 2
        assert __import__("re").search(match, capsys.readouterr().err), argv
        assert not (tmp_path / "bad" / "trials.jsonl").exists()


def test_unscreened_trial_records_where_it_was_solved(monkeypatch):
    """solved_at in every protocol: the step of the check that found no wrong sample (here the second)."""
    errors = iter([0.2, 0.0])
    monkeypatch.setattr(pathological, "evaluate", lambda *a, **k: next(errors))
    spec = dict(
        task="adding",
        length=10,
        method="sgd_clip",
        seed=0,
        hidden=4,
        batch=3,
        lr=0.01,
        clip=1.0,
        max_iters=100,
        check_every=5,
        eval_samples=10,
    )
    res = pathological._run_trial(spec)
    assert res["solved"] and res["solved_at"] == 10 and res["iters"] == 10


# --------------------------------------------------------------------------------------------
# The scale of the exact Ω against the code form's
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["adding", "temporal_order"])
def test_omega_scale_normalisations(task):
    """The exact form summed over steps is (T - 1) times its mean over the T - 1 terms per sequence (δ ≠ 0
    everywhere here); the ratio to the code form grows with T at its own normalisation, not at the matched one."""
    length = 10 if task == "temporal_order" else 20  # adding draws l in [L, 1.1 L): 10 gives l = 10
    r = pathological.omega_scale(task, length, seed=1, hidden=8, batch=4)
    T = length if task == "temporal_order" else None
    if T is not None:
        assert r["alpha_omega_exact"] == pytest.approx((T - 1) * r["alpha_omega_exact_mean"], rel=1e-12)
    assert r["ratio_exact_code"] > 3 * r["ratio_exact_mean_code"]
    assert r["alpha_omega_code"] > 0 and np.isfinite(r["loss_grad_norm"])
