"""``python -m experiments.sentiment.report``: each run counted once, failed runs listed and left out,
broken files named (no traceback), exit codes from scratch_rnn.cli."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.sentiment import report


def make_run(root: Path, name: str, *, seed: int = 0, backends=("numpy",), finished: bool = True,
             metrics_text: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"sentiment": {"embedding": "glove", "stopwords": "keep",
                                                             "seed": seed}}))
    if metrics_text is not None:
        (d / "metrics.json").write_text(metrics_text)
    elif finished:
        results = [dict(backend=b, valid_accuracy=0.8, test_accuracy=0.8 + 0.01 * seed, test_size=2000,
                        selected_epoch=1, epochs=2, seconds=60.0, cpu_seconds=90.0, peak_memory_mb=300.0)
                   for b in backends]
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


@pytest.mark.parametrize("metrics, field", [
    ({"run": "x"}, "'results'"),
    ({"run": "x", "results": [{"backend": "numpy"}]}, "'test_accuracy'"),
    ([1, 2], "expected a JSON object"),
])
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
