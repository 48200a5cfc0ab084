"""``pathological --report DIR ...``: one table and one figure of the trials in several run folders, each trial once
(a resumed trial at its furthest row; a trial with no row, or further on than its rows, from its checkpoint), with
the rows the runs wrote themselves as the oracle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.gradients import __main__ as cli
from experiments.gradients import pathological as P
from experiments.gradients.sweep import trial_id
from scratch_rnn.checkpoint import read_archive, write_archive
from scratch_rnn.cli import BadInput

RUN = ["pathological", "--protocol", "published", "--tasks", "adding", "--lengths", "30", "--methods", "lstm_rmsprop"]
RUN += ["--workers", "1", "--no-progress"]
# the fields trial_row computes from what a trainer holds: a row read back from a checkpoint must have the same
COMPUTED = (
    "solved", "solved_at", "iters", "final_error", "best_error", "final_train_loss", "grad_norm_median",
    "grad_norm_max", "clipped_fraction", "train_seconds", "eval_seconds", "tests", "curve", "optimizer", "layers",
)  # fmt: skip


def _run(out, *extra) -> None:
    assert cli.main([*RUN, "--out", str(out), *extra]) == 0


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "trials.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: seeds 0 and 1 to 20 updates. B: seed 1 carried from A's checkpoint to 40 (a resumed trial in another
    folder). D: seed 0 carried to 40, its row then lost (a trial that has a checkpoint and no row)."""
    root = tmp_path_factory.mktemp("runs")
    a, b, d = root / "A", root / "B", root / "D"
    _run(a, "--max-iters", "20", "--num-seeds", "2")
    for target, seed in ((b, "1"), (d, "0")):
        shutil.copytree(a / "checkpoints", target / "checkpoints")
        _run(target, "--max-iters", "40", "--seed", seed, "--num-seeds", "1")
    (d_row,) = _rows(d)
    (d / "trials.jsonl").unlink()
    return dict(a=a, b=b, d=d, root=root, d_row=d_row)


def _report(runs, name, *dirs) -> tuple[Path, pd.DataFrame]:
    out = runs["root"] / name
    assert cli.main(["pathological", "--report", *map(str, dirs), "--out", str(out)]) == 0
    return out, pd.read_csv(out / "trials.csv")


def test_each_trial_once_at_its_furthest_row(runs):
    """Seed 0 from A (its only row), seed 1 from B (cap 40, where A's row has 20), whatever the folders' order."""
    for order in ((runs["a"], runs["b"]), (runs["b"], runs["a"])):
        out, df = _report(runs, f"r{len(order)}-{order[0].name}", *order)
        assert list(df.seed) == [0, 1]
        (a0,) = [r for r in _rows(runs["a"]) if r["seed"] == 0]
        (b1,) = _rows(runs["b"])
        for (_, got), want, run in zip(df.iterrows(), (a0, b1), (runs["a"], runs["b"])):
            assert got.iters == want["iters"] and got.max_iters == want["max_iters"] and got.run == str(run)
            assert got.best_error == want["best_error"] and bool(got.solved) == want["solved"]
            assert got.train_seconds + got.eval_seconds == pytest.approx(want["train_seconds"] + want["eval_seconds"])
            assert not got.unfinished
        success = pd.read_csv(out / "success.csv", keep_default_na=False)
        assert success.runs.tolist() == [2] and success.unfinished.tolist() == [0] and success.setting.tolist() == [""]
        assert success.unsolved_caps.tolist() == ["20, 40"]  # the caps beside the rate that pools them
        (b1,) = _rows(runs["b"])  # B's row: its own wall seconds are the resumed run's only; the trial's are more
        want = a0["train_seconds"] + a0["eval_seconds"] + b1["train_seconds"] + b1["eval_seconds"]
        assert success.trial_seconds.tolist() == [pytest.approx(want)]
        (a1,) = [r for r in _rows(runs["a"]) if r["seed"] == 1]  # B's seconds carry A's 20 updates of seed 1
        assert b1["train_seconds"] > a1["train_seconds"]
        assert (out / "learning_curves.png").stat().st_size > 0
        assert json.loads((out / "report.json").read_text())["kind"] == P.REPORT_KIND


def test_a_checkpoint_without_a_row_is_its_run_s_row(runs):
    """D's seed 0 lost its row: read back from its checkpoint (named by trial.json), every computed field equals
    the row the run wrote; it replaces A's row of 20 updates, marked unfinished and not counted in the rate."""
    assert (next((runs["d"] / "checkpoints").glob("*/trial.json"))).exists()
    got = P.collect_runs([runs["a"], runs["d"]])[0]
    row = got[got.seed == 0].iloc[0].to_dict()
    want = runs["d_row"]
    wrong = {k: (row[k], want[k]) for k in COMPUTED if k in want and not _same(row[k], want[k])}
    assert wrong == {}
    assert row["unfinished"] and row["run"] == str(runs["d"]) and pd.isna(row["max_iters"])
    out, _ = _report(runs, "with-d", runs["a"], runs["d"])
    success = pd.read_csv(out / "success.csv")
    assert success.runs.tolist() == [1] and success.unfinished.tolist() == [1]


def _same(a, b) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return a == b or (pd.isna(a) and pd.isna(b))
    if isinstance(b, list):
        return [list(x) for x in a] == b
    return a == b


def test_a_checkpoint_no_row_or_file_names_is_left_out_and_said(runs, tmp_path):
    """Without trial.json and without a row of its trial, a checkpoint cannot be named: left out, with a note."""
    e = tmp_path / "E"
    shutil.copytree(runs["d"] / "checkpoints", e / "checkpoints")
    for f in (e / "checkpoints").glob("*/trial.json"):
        f.unlink()
    df, notes = P.collect_runs([e])
    assert len(df) == 0 and len(notes) == 2 and all("no trial.json beside it" in n for n in notes)
    assert cli.main(["pathological", "--report", str(e), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()
    df, notes = P.collect_runs([runs["a"], e])  # a row of its trial names it; seed 1's holds no more than its row
    assert notes == [] and df.iters.tolist() == [40, 20] and df.unfinished.tolist() == [True, False]


def test_bad_report_arguments_exit_2_before_anything_is_written(runs, tmp_path, capsys):
    a = str(runs["a"])
    (tmp_path / "holder").mkdir()
    shutil.copytree(runs["a"], tmp_path / "holder" / "A")
    before = {p: p.read_bytes() for p in (runs["b"] / "trials.jsonl", tmp_path / "holder" / "A" / "trials.jsonl")}
    cases = [
        (["--report", a, "--out", str(tmp_path / "x"), "--methods", "sgd"], "--report: reads finished runs"),
        (["--report", a], "--report: expected --out"),
        (["--report", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")], "which is not a folder"),
        (["--report", str(tmp_path), "--out", str(tmp_path / "x")], "a trials.jsonl or checkpoints/"),
        (["--report", a, "--out", a], "holds none of the runs it reports"),
        (["--report", str(tmp_path / "holder" / "A"), "--out", str(tmp_path / "holder")], "holds none of the runs"),
        (["--report", a, "--out", str(runs["b"])], "holds something else"),
        (["--report", a, "--out", str(runs["b"] / "trials.jsonl")], "which is a file"),
    ]
    for extra, message in cases:
        assert cli.main(["pathological", *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "x").exists()
    assert {p: p.read_bytes() for p in before} == before
    with pytest.raises(BadInput, match="holds none of the runs"):  # the same check after the lock, for the Python API
        P.report([tmp_path / "holder" / "A"], tmp_path / "holder")
    assert {p: p.read_bytes() for p in before} == before


def test_an_earlier_report_is_replaced_whole_unless_it_holds_other_files(runs, capsys):
    out, _ = _report(runs, "again", runs["a"], runs["b"])
    out, df = _report(runs, "again", runs["a"])
    assert sorted(df.seed) == [0, 1] and set(df.iters) == {20}
    (out / "notes.txt").write_text("the user's")
    assert cli.main(["pathological", "--report", str(runs["a"]), "--out", str(out)]) == 2
    assert "also holds ['notes.txt']" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "the user's"


def _rewrite(path: Path, **changes) -> None:
    """A checkpoint whose trainer metadata says ``changes`` (e.g. that a check solved it), digests and all."""
    arrays, meta = read_archive(path)
    meta["meta"].update(changes)
    write_archive(path, arrays, meta)


def _solved_copy(run: Path, dst: Path) -> Path:
    """A copy of ``run`` whose seed-0 checkpoint says a check solved it (a trial killed before its row)."""
    shutil.copytree(run, dst)
    (ck,) = [
        p
        for p in (dst / "checkpoints").glob("*/checkpoint.npz")
        if json.loads((p.parent / "trial.json").read_text())["seed"] == 0
    ]
    _rewrite(ck, stop_reason="stop_when")
    return dst


def test_a_solved_checkpoint_without_a_row_is_solved_and_finished(runs, tmp_path):
    """A trial killed between its solving check's save and its row: the checkpoint says stop_when; read back, the
    trial is solved at the checkpoint's step and finished (counted in the rate)."""
    g = _solved_copy(runs["d"], tmp_path / "G")
    df, notes = P.collect_runs([g])
    (row,) = df.query("seed == 0").to_dict(orient="records")
    assert notes == [] and row["solved"] and row["solved_at"] == row["iters"] == 40 and not row["unfinished"]
    (unsolved,) = P.collect_runs([runs["d"]])[0].query("seed == 0").to_dict(orient="records")
    assert not unsolved["solved"] and pd.isna(unsolved["solved_at"]) and unsolved["unfinished"]


def _retag(src: Path, dst: Path, **changes) -> None:
    """A copy of a run's table whose rows say ``changes`` (their trial ids remade to match)."""
    dst.mkdir()
    rows = [dict(r, **changes) for r in _rows(src)]
    for r in rows:
        r["trial_id"] = trial_id({k: r[k] for k in (part.split("=", 1)[0] for part in r["trial_id"].split("|"))})
    (dst / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_trials_of_different_settings_are_never_one_rate(runs, tmp_path):
    """A's trials and the same seeds at another hidden size: two settings, two rates of 2 runs each (not one of 4)."""
    _retag(runs["a"], tmp_path / "H", hidden=64)
    out = tmp_path / "r"
    assert cli.main(["pathological", "--report", str(runs["a"]), str(tmp_path / "H"), "--out", str(out)]) == 0
    success = pd.read_csv(out / "success.csv")
    assert success.setting.tolist() == ["hidden=128", "hidden=64"] and success.runs.tolist() == [2, 2]
    assert len(pd.read_csv(out / "trials.csv")) == 4


def test_two_rows_of_a_trial_at_one_cap_that_disagree_are_said(runs, tmp_path):
    _retag(runs["a"], tmp_path / "S", iters=15, solved=True, solved_at=15)
    df, notes = P.collect_runs([runs["a"], tmp_path / "S"])
    assert len(df) == 2 and set(df.iters) == {20} and not df.solved.any()
    assert len(notes) == 2 and all("another result" in n for n in notes)


def test_rescore_scores_the_saved_state_on_a_stream_of_its_own(tmp_path):
    """The state a checkpoint holds, loaded into a fresh model, is the trained model: rescore counts what
    count_wrong counts for the live trainer's model on default_rng([seed, 4]), every sample scored."""
    spec = dict(
        task="adding", length=12, method="lstm_rmsprop", seed=3, hidden=5, batch=4, lr=1e-2, clip=1.0, max_iters=30,
        check_every=10, eval_samples=50, screen=True, track_every=10, track_samples=20, eval_chunk=25, resumable=True,
    )  # fmt: skip
    ckdir = tmp_path / "ck"
    _, source, trainer = P._trial_parts(spec, ckdir)
    trainer.fit(source)
    trainer.save_checkpoint()
    live = P.count_wrong("adding", trainer.model, np.random.default_rng([3, 4]), 400, 12, 25)
    assert P.rescore(spec, ckdir / "checkpoint.npz", 400) == live and live[1] == 400
    fresh = P.count_wrong("adding", P._trial_model(spec), np.random.default_rng([3, 4]), 400, 12, 25)
    assert fresh != live  # the load is what makes it the trained state (fails if rescore scored the init)


def test_report_rescores_only_solved_states(runs, tmp_path):
    g = _solved_copy(runs["d"], tmp_path / "G")
    out = tmp_path / "r"
    assert cli.main(["pathological", "--report", str(g), "--out", str(out), "--rescore", "50", "--no-progress"]) == 0
    df = pd.read_csv(out / "trials.csv")
    solved, other = df[df.seed == 0].iloc[0], df[df.seed == 1].iloc[0]
    assert solved.rescore_samples == 50 and 0 <= solved.rescore_wrong <= 50 and pd.isna(other.rescore_samples)
    assert solved.rescore_error == solved.rescore_wrong / 50 and solved.rescore_ci_low <= solved.rescore_error
    assert "re-scores reported trials" in _exit_2_message(["--rescore", "5"], tmp_path)
    assert "--rescore" in _exit_2_message(
        ["--report", str(g), "--out", str(tmp_path / "x"), "--rescore", "0"], tmp_path
    )


def _exit_2_message(extra, tmp_path) -> str:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["pathological", *extra]) == 2
    return err.getvalue()
