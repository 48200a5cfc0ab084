"""The float32 accuracy table (``python -m benchmarks.accuracy``) runs end to end and writes what it says.

Two tiny configurations only (a few seconds): nothing here is the measurement. The one real check is
against oracles: the run's own truth (scratch float64) must equal torch float64, and an error the run
reports must equal one recomputed here from torch's float64 autograd.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import accuracy as acc
from reference.rnn import run_torch
from scratch_rnn import RNN
from scratch_rnn.gradcheck import rel_error

TINY = ["--configs", "2", "--max-shape", "7", "3", "5", "6", "--seed", "3"]


def test_tiny_run_writes_the_table_and_a_report(tmp_path, capsys):
    out = tmp_path / "accuracy.json"
    assert acc.main(TINY + ["--json", str(out), "--markdown", "--diagnose", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| quantity | scratch median | scratch max | torch median | torch max |" in printed
    assert "| grad_weight_hh |" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["configs"] == 2 and report["seed"] == 3 and report["max_shape"] == dict(T=7, B=3, I=5, H=6)
    for key in ("cpu", "numpy", "torch", "threadpools"):
        assert report["machine"][key], key
    assert len(report["rows"]) == 2 and len(report["diagnosis"]) == 1
    for row in report["rows"]:
        assert 1 <= row["T"] <= 7 and 1 <= row["B"] <= 3 and 1 <= row["I"] <= 5 and 1 <= row["H"] <= 6
        # the oracle of the truth: scratch float64 is torch float64 (to rounding of float64)
        assert row["float64_scratch_vs_torch"] <= 1e-10
        for lib in ("scratch", "torch"):
            assert set(row[lib]) == set(acc.QUANTITIES)
    assert report["float64_scratch_vs_torch_max"] <= 1e-10
    for q in acc.QUANTITIES:
        for lib in ("scratch", "torch"):
            s = report["summary"][q][lib]
            values = [r[lib][q] for r in report["rows"]]
            assert s["max"] == max(values) and math.isclose(s["median"], sum(values) / 2, rel_tol=1e-12)
            # float32 against a float64 truth: rounding errors, neither zero nor anything like a bug
            assert 0 < s["max"] < 1e-3, (q, lib, s)
    d = report["diagnosis"][0]
    assert d["scratch"] == max(r["scratch"]["grad_weight_hh"] for r in report["rows"])
    assert 0 < d["one_gemm_f64"] < 1e-3 and 0 < d["per_step_f32"] < 1e-3


def test_a_reported_error_equals_one_recomputed_against_torch_float64():
    shape = acc.draw_configs(1, 5, (9, 4, 6, 7))[0]
    row = acc.measure(shape, 5, 0)
    problem = acc.make_problem(shape, 5, 0)
    T, B, I, H = shape
    model = RNN(I, H, dtype=np.float32)
    model.load_state_dict(problem["weights"])
    out, h_n = model(problem["x"], problem["h0"])
    grad_x, _ = model.backward(problem["grad_output"], problem["grad_h_n"])
    ref = run_torch(
        model,
        problem["x"],
        problem["h0"],
        grad_output=problem["grad_output"],
        grad_final=problem["grad_h_n"],
        dtype=torch.float64,
    )
    # the truth is scratch float64; torch float64 agrees with it to ~1e-15, far below these errors
    for name, mine, truth in (
        ("output", out, ref["output"]),
        ("grad_x", grad_x, ref["grad_x"]),
        ("grad_weight_hh", model.grads["weight_hh_l0"], ref["grads"]["weight_hh_l0"]),
    ):
        assert math.isclose(row["scratch"][name], rel_error(mine, truth), rel_tol=1e-6), name


def test_configurations_are_seeded_and_within_bounds():
    a = acc.draw_configs(50, 0)
    assert a == acc.draw_configs(50, 0) and a != acc.draw_configs(50, 1)
    for shape in a:
        assert all(1 <= v <= m for v, m in zip(shape, acc.MAX_SHAPE))
    p = acc.make_problem(a[0], 0, 0)
    assert all(v.dtype == np.float32 for v in p["weights"].values()) and p["x"].dtype == np.float32
    assert np.abs(p["grad_output"]).std() > 0.5  # a random cotangent, not the all-ones of .sum()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--configs", "0"], ["--configs", "got 0"]),
        (["--seed", "-1"], ["--seed", "got -1"]),
        (["--max-shape", "5", "0", "2", "2"], ["--max-shape (B)", "got 0"]),
        (["--configs", "2", "--diagnose", "3"], ["--diagnose", "at most"]),
        (["--overwrite"], ["--overwrite", "--json"]),
        (["--json", "{tmp}"], ["--json", "folder"]),
        (["--json", "{file}"], ["--json", "exists", "--overwrite"]),
        (["--configs", "x"], ["--configs"]),
    ],
)
def test_bad_options_exit_2_before_any_work_naming_the_option(argv, words, tmp_path, capsys, monkeypatch):
    existing = tmp_path / "earlier.json"
    existing.write_text("{}")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(existing)) for a in argv]
    monkeypatch.setattr(acc, "run", lambda args: pytest.fail("work started despite bad input"))
    assert acc.main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert existing.read_text() == "{}"


def test_overwrite_replaces_an_earlier_report(tmp_path, capsys):
    out = tmp_path / "a.json"
    out.write_text("{}")
    assert acc.main(["--configs", "1", "--max-shape", "3", "2", "2", "2", "--json", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["configs"] == 1


def test_a_failed_float64_sanity_check_stops_the_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(acc, "SANITY_TOL", -1.0)  # nothing passes
    out = tmp_path / "never.json"
    assert acc.main(TINY + ["--json", str(out)]) == 1
    assert "float64 truth is not one" in capsys.readouterr().err and not out.exists()
