"""``python -m experiments.sentiment.report``: each run counted once, failed runs listed and left out,
broken files named (no traceback), exit codes from scratch_rnn.cli."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.sentiment import report


def make_run(
    root: Path,
    name: str,
    *,
    seed: int = 0,
    backends=("numpy",),
    finished: bool = True,
    metrics_text: str | None = None,
    accuracy: float = 0.8,
    **settings,
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps({"sentiment": {"embedding": "glove", "stopwords": "keep", "seed": seed, **settings}})
    )
    if metrics_text is not None:
        (d / "metrics.json").write_text(metrics_text)
    elif finished:
        results = [
            dict(
                backend=b,
                valid_accuracy=0.8,
                test_accuracy=accuracy + 0.01 * seed,
                test_size=2000,
                selected_epoch=1,
                epochs=2,
                seconds=60.0,
                cpu_seconds=90.0,
                peak_memory_mb=300.0,
            )
            for b in backends
        ]
        (d / "metrics.json").write_text(json.dumps({"run": name, "results": results}))
    return d


def table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_a_folder_given_twice_counts_once(tmp_path, capsys):
    d = make_run(tmp_path, "a", backends=("numpy", "torch"))
    assert report.main([str(d), str(d) + "/", str(tmp_path / "a" / ".." / "a")]) == 0
    out = capsys.readouterr()
    assert len(table_rows(out.out)) == 2, out.out  # one row per backend, once
    assert "counted once" in out.err


def test_by_setting_counts_a_seed_once(tmp_path, capsys):
    a, b = make_run(tmp_path, "s0", seed=0), make_run(tmp_path, "s1", seed=1)
    assert report.main(["--by-setting", str(a), str(b), str(a)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 1 and "| 0, 1 |" in rows[0], rows


def test_by_setting_pools_only_runs_that_differ_in_nothing_but_the_seed(tmp_path, capsys):
    """Runs of other cells (or any other setting) are separate rows, and the differing settings are named."""
    runs = [
        make_run(
            tmp_path,
            f"{cell}-h{h}-s{seed}",
            seed=seed,
            cell=cell,
            hidden_size=h,
            accuracy=acc,
            threads=1,
            backend="numpy",
        )
        for cell, h, acc in (("rnn", 64, 0.80), ("lstm", 64, 0.86), ("lstm", 32, 0.84))
        for seed in (0, 1)
    ]
    # a "both" run's numpy result with the same settings pools with the "numpy" runs
    runs.append(
        make_run(
            tmp_path,
            "rnn-h64-s2-both",
            seed=2,
            cell="rnn",
            hidden_size=64,
            accuracy=0.80,
            threads=1,
            backend="both",
            backends=("numpy", "torch"),
        )
    )
    assert report.main(["--by-setting", *map(str, runs)]) == 0
    out = capsys.readouterr()
    header = [c.strip() for c in out.out.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["cell", "hidden_size", "backend"], header
    rows = {tuple(c.strip() for c in r.strip("|").split("|")[:5]) for r in table_rows(out.out)}
    assert rows == {
        ("rnn", "64", "numpy", "0, 1, 2", "81.00 %"),
        ("lstm", "64", "numpy", "0, 1", "86.50 %"),
        ("lstm", "32", "numpy", "0, 1", "84.50 %"),
        ("rnn", "64", "torch", "2", "82.00 %"),
    }, out.out
    assert "settings that differ between rows: cell, hidden_size" in out.err


def test_by_setting_keeps_runs_apart_on_any_setting_and_flags_repeated_seeds(tmp_path, capsys):
    a = make_run(tmp_path, "a", seed=0, lr=0.01)
    b = make_run(tmp_path, "b", seed=0, lr=0.002)
    c = make_run(tmp_path, "c", seed=0, lr=0.002)  # the same seed and setting again: a repeat, not a seed
    assert report.main(["--by-setting", str(a), str(b), str(c)]) == 0
    out = capsys.readouterr()
    assert len(table_rows(out.out)) == 2 and "settings that differ between rows: lr" in out.err
    assert "seed 0 (numpy) occurs in 2 runs of one setting: b, c" in out.err


def test_a_failed_run_is_listed_and_the_others_reported(tmp_path, capsys):
    good = make_run(tmp_path, "good")
    failed = make_run(tmp_path, "failed", finished=False)  # only config.json: the run died
    assert report.main([str(good), str(failed)]) == 0
    out = capsys.readouterr()
    assert [r.split("|")[1].strip() for r in table_rows(out.out)] == ["good"]
    assert str(failed) in out.err and "no metrics.json" in out.err


def test_a_truncated_metrics_file_is_named_not_a_traceback(tmp_path, capsys):
    good = make_run(tmp_path, "good")
    cut = make_run(tmp_path, "cut", metrics_text='{"run": "cut", "results": [{"backend": "nu')
    assert report.main([str(good), str(cut)]) == 0
    err = capsys.readouterr().err
    assert str(cut / "metrics.json") in err and "not valid JSON" in err and "Traceback" not in err
    assert report.main([str(cut)]) == 2  # nothing to report
    err = capsys.readouterr().err
    assert str(cut / "metrics.json") in err and "Traceback" not in err


@pytest.mark.parametrize(
    "metrics, field",
    [
        ({"run": "x"}, "'results'"),
        ({"run": "x", "results": [{"backend": "numpy"}]}, "'test_accuracy'"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_a_malformed_metrics_file_names_the_file_and_field(tmp_path, capsys, metrics, field):
    good = make_run(tmp_path, "good")
    bad = make_run(tmp_path, "bad", metrics_text=json.dumps(metrics))
    assert report.main([str(good), str(bad)]) == 0
    err = capsys.readouterr().err
    assert str(bad / "metrics.json") in err and field in err


def test_no_finished_run_or_no_folder_is_bad_input(tmp_path, capsys):
    failed = make_run(tmp_path, "failed", finished=False)
    assert report.main([str(failed)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    assert report.main([str(make_run(tmp_path, "ok")), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
