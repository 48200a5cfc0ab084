"""The benchmark command runs end to end and writes what the README says it writes.

A smoke run only (``--quick``: a small grid, a 256² peak product, short pauses): nothing here
asserts a speed. ``python -m benchmarks.rnn`` without ``--quick`` is the measurement.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks import rnn as bench

ROOT = Path(__file__).resolve().parents[1]


def test_time_blocks_rotates_which_library_goes_first():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    res = bench.time_blocks(fns, rounds=3, reps=2, pause=0.0)
    # each block: one discarded warm-up call, then 2 timed calls; the first block of round r is name r
    firsts = [calls[i] for i in range(0, len(calls), 3)]
    assert firsts == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(r["samples"] == 6 and r["median_s"] >= 0 for r in res.values())


def test_quick_run_writes_rows_summary_and_memory(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("{}")  # an earlier run: replaced only because of --overwrite
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.rnn",
        "--quick",
        "--threads",
        "1",
        "--dtypes",
        "float32",
        "--rounds",
        "1",
        "--reps",
        "1",
        "--json",
        str(out),
        "--overwrite",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["gemm_peak_n"] == bench.QUICK_PEAK_N
    assert {r["case"] for r in report["rows"]} == {c.name for c in bench.QUICK_GRID}
    for row in report["rows"]:
        for key in ("scratch_ms", "torch_ms", "ratio", "scratch_gflops", "numpy_peak_gflops", "torch_peak_gflops"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert math.isclose(row["ratio"], row["scratch_ms"] / row["torch_ms"], rel_tol=1e-12)
    for row in (r for r in report["rows"] if r["loss"] == "all"):  # where the time goes
        assert row["scratch_gemms_ms"] > 0 and row["torch_gemms_ms"] > 0, row
        assert math.isclose(row["gemm_floor_ratio"], row["scratch_gemms_ms"] / row["torch_ms"], rel_tol=1e-12)
        assert math.isclose(row["scratch_rest_ms"], row["scratch_ms"] - row["scratch_gemms_ms"], rel_tol=1e-9)
    vanishing = [r for r in report["rows"] if r["loss"] == "last"]
    assert vanishing and all(r["scratch_flush_off_ms"] > 0 for r in vanishing)
    summary = report["summary"]["float32/1"]
    ratios = [r["ratio"] for r in report["rows"]]
    assert math.isclose(summary["geomean_ratio"], math.prod(ratios) ** (1 / len(ratios)), rel_tol=1e-12)
    assert summary["max_ratio"] == max(ratios)
    assert len(report["memory"]) == len(bench.QUICK_GRID)
    assert all(m["scratch_mb"] >= 0 and m["torch_mb"] > 0 for m in report["memory"])
    # the tables can be printed again from the file
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.rnn", "--markdown", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "| float32 | 1 | small |" in again.stdout
    assert "Where the time goes" in again.stdout
    # run-to-run spread over several runs' files (the same file twice: every range is one value)
    spread = subprocess.run(
        [sys.executable, "-m", "benchmarks.rnn", "--spread", str(out), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert spread.returncode == 0, spread.stderr[-2000:]
    small = next(r for r in report["rows"] if r["case"] == "small")
    assert (
        f"| rnn | float32 | 1 | small | {small['ratio']:.3f} | {small['ratio']:.3f} | "
        f"{small['ratio']:.3f} – {small['ratio']:.3f} |" in spread.stdout
    )
    assert f"| rnn | float32 | 1 | {summary['geomean_ratio']:.3f} / {summary['max_ratio']:.3f} |" in spread.stdout


def test_flush_off_switches_the_models_public_flush_and_restores_it():
    class Model:
        flush_below = 2.0**-100
        seen = None

    model = Model()

    def step():
        model.seen = model.flush_below

    bench.flush_off(step, model)()
    assert model.seen == 0.0 and model.flush_below == 2.0**-100


def test_default_json_path_never_names_an_earlier_run(tmp_path):
    now = 1_700_000_000.0
    first = bench.default_json_path(tmp_path, now)
    assert first.parent == tmp_path and first.name.startswith("bench_rnn-") and first.suffix == ".json"
    first.write_text("{}")
    second = bench.default_json_path(tmp_path, now)  # same second: another name
    assert second != first and not second.exists()
    second.write_text("{}")
    assert bench.default_json_path(tmp_path, now) not in (first, second)


def test_an_existing_json_is_refused_before_the_run_unless_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    out.write_text('{"earlier": "run"}')

    def no_run(args):
        raise AssertionError("ran")

    monkeypatch.setattr(bench, "run", no_run)
    assert bench.main(["--quick", "--json", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == '{"earlier": "run"}'
    monkeypatch.setattr(bench, "run", lambda args: dict(rows=[], summary={}, peaks={}))
    monkeypatch.setattr(bench, "markdown", lambda report: "")
    assert bench.main(["--quick", "--json", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text()) == dict(rows=[], summary={}, peaks={})
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_plug_in_cell_is_benchmarked_against_its_twin(tmp_path):
    """--cells <a plug-in>: rows against the cell's torch twin (torch has no module for it); no products-alone floor."""
    from scratch_rnn.cells import cell_names

    plug_in = cell_names(builtin=False)[0]
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.rnn",
        "--quick",
        "--cells",
        plug_in,
        "--threads",
        "1",
        "--dtypes",
        "float32",
        "--rounds",
        "1",
        "--reps",
        "1",
        "--no-memory",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows and {r["cell"] for r in rows} == {plug_in}
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 and "gemm_floor_ratio" not in r for r in rows)
