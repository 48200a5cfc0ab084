"""Nothing left behind, nothing silently wrong: worker processes die with a killed parent
(experiments.process), a result table's stray lines do not block a resume (sweep), and result files
are written whole or not at all (common)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from experiments.gradients import common, sweep
from experiments.process import pid_alive
from tests.sweep_trials import square_trial

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# helpers: process probes (the trials the workers run are in tests/sweep_trials.py)
# --------------------------------------------------------------------------------------------
def _wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _reap_leftovers(pids) -> None:
    for pid in pids:  # only the processes this test started, by pid
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --------------------------------------------------------------------------------------------
# workers die with their parent
# --------------------------------------------------------------------------------------------
def test_sweep_workers_die_when_the_parent_is_killed(tmp_path):
    parent = _python(
        """
        import sys
        from experiments.gradients import sweep
        from tests.sweep_trials import sleepy_trial
        d = sys.argv[1]
        sweep.run_sweep(sleepy_trial, [dict(k=k, dir=d) for k in range(2)], d + "/trials.jsonl", workers=2,
                        progress=False)
    """,
        str(tmp_path),
    )
    pid_files = [tmp_path / f"worker-{k}.pid" for k in range(2)]
    workers = []
    try:
        assert _wait_for(lambda: all(p.exists() and p.read_text() for p in pid_files), 60), (
            f"the workers did not start: {parent.poll()} {parent.stderr.read() if parent.poll() is not None else ''}"
        )
        workers = [int(p.read_text()) for p in pid_files]
        assert all(pid_alive(pid) for pid in workers)
        parent.kill()  # SIGKILL: no finally, no atexit
        parent.wait(10)
        assert _wait_for(lambda: not any(pid_alive(pid) for pid in workers), 5), (
            f"workers {[pid for pid in workers if pid_alive(pid)]} outlived their killed parent"
        )
    finally:
        parent.kill()
        _reap_leftovers(workers)  # first: survivors hold the parent's output pipes open
        parent.communicate(timeout=30)


CHILD = """
    import os, sys, time
    from pathlib import Path
    from experiments import process
    parent, mechanism, ready = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if mechanism == "poll":
        process._prctl_pdeathsig = lambda sig: False  # as on a platform without prctl
    if sys.argv[4] == "wait-orphaned":  # the race: the parent dies before die_with_parent runs
        while os.getppid() == parent:
            time.sleep(0.01)
    Path(str(ready) + ".calling").write_text("")  # got this far (imports done)
    got = process.die_with_parent(parent, poll_interval=0.1)
    Path(str(ready) + ".tmp").write_text(got)
    os.replace(str(ready) + ".tmp", ready)  # whole: a reader that sees the file sees its text
    time.sleep(120)
"""


@pytest.mark.parametrize("mechanism", ["prctl", "poll"])
@pytest.mark.parametrize("when", ["later", "before-the-call"])
def test_die_with_parent(tmp_path, mechanism, when):
    if mechanism == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("prctl is Linux only")
    ready = tmp_path / "ready"
    parent = _python(
        """
        import os, subprocess, sys, textwrap, time
        child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), *sys.argv[2:]])
        print(child.pid, flush=True)
        if sys.argv[-1] == "wait-orphaned":
            sys.exit(0)  # dies at once: the child calls die_with_parent after this
        time.sleep(120)
    """,
        textwrap.dedent(CHILD),
        mechanism,
        str(ready),
        "wait-orphaned" if when == "before-the-call" else "-",
    )
    child = None
    try:
        child = int(parent.stdout.readline())
        if when == "later":
            assert _wait_for(ready.exists, 30), "the child did not start"
            assert ready.read_text() == mechanism
            parent.kill()
            parent.wait(10)
        else:
            parent.wait(30)
        assert _wait_for(lambda: not pid_alive(child), 5), f"the child outlived its parent ({mechanism}, {when})"
        assert Path(str(ready) + ".calling").exists(), "the child died before it called die_with_parent"
        if when == "before-the-call":
            assert not ready.exists(), "die_with_parent returned although the parent had already died"
    finally:
        parent.kill()
        if child is not None:
            _reap_leftovers([child])  # first: a survivor holds the parent's output pipes open
        parent.communicate(timeout=30)


# --------------------------------------------------------------------------------------------
# trials.jsonl: lines that are JSON but not trials
# --------------------------------------------------------------------------------------------
def test_sweep_skips_lines_that_are_not_trials_and_reruns_them(tmp_path):
    log = str(tmp_path / "calls.log")
    specs = [dict(k=k, log=log) for k in range(4)]
    table = tmp_path / "trials.jsonl"
    good = {"trial_id": sweep.trial_id(specs[0]), **specs[0], "square": 0}
    wrong_fields = {"trial_id": sweep.trial_id(specs[1]), **specs[1], "k": 7, "square": 49}
    lines = [
        "42",
        '{"oops": 1}',
        "[1, 2]",
        "null",
        '"text"',
        '{"trial_id": 5, "k": 2}',
        json.dumps(wrong_fields),
        json.dumps(good),
        '{"trial_id": "cut mid-wri',
    ]
    table.write_text("\n".join(lines) + "\n")
    with pytest.warns(sweep.SkippedLineWarning) as record:
        df = sweep.run_sweep(square_trial, specs, table, workers=1, progress=False)
    messages = [str(w.message) for w in record if issubclass(w.category, sweep.SkippedLineWarning)]
    for lineno in (1, 2, 3, 4, 5, 6, 7):  # every bad line, by number; not the good one, not the cut one
        assert any(m.startswith(f"{table}:{lineno}: skipped") for m in messages), (lineno, messages)
    assert not any(m.startswith(f"{table}:8:") or m.startswith(f"{table}:9:") for m in messages), messages
    assert sorted(df.k) == [0, 1, 2, 3] and list(df.sort_values("k").square) == [0, 1, 4, 9]
    calls = sorted(int(v) for v in Path(log).read_text().split())
    assert calls == [1, 2, 3], "the good row counts as done; the mismatched one does not"
    with pytest.warns(sweep.SkippedLineWarning):  # the stray lines stay; each resume says so again
        again = sweep.run_sweep(square_trial, specs, table, workers=1, progress=False)  # all done now
    assert len(again) == 4 and sorted(int(v) for v in Path(log).read_text().split()) == [1, 2, 3]


def test_load_results_keeps_objects_only(tmp_path):
    table = tmp_path / "jobs.jsonl"
    table.write_text('{"a": 1}\n42\n{"a": 2}\n{"a": \n')
    with pytest.warns(sweep.SkippedLineWarning, match=r"jobs\.jsonl:2: skipped"):
        rows = sweep.load_results(table)
    assert rows == [{"a": 1}, {"a": 2}]


# --------------------------------------------------------------------------------------------
# result files: whole or not at all
# --------------------------------------------------------------------------------------------
class Boom:
    def __str__(self):
        raise RuntimeError("cannot format this cell")

    __repr__ = __str__


def test_write_csv_that_fails_leaves_the_previous_file(tmp_path):
    path = tmp_path / "table.csv"
    common.write_csv(path, pd.DataFrame(dict(a=[1, 2])))
    before = path.read_text()
    with pytest.raises(RuntimeError, match="cannot format"):
        common.write_csv(path, pd.DataFrame(dict(a=[1, 2, 3], b=["x", "y", Boom()])))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"], "a temporary file was left behind"


@pytest.mark.parametrize("writer", ["json", "csv", "report", "figure"])
def test_result_files_are_replaced_not_rewritten_in_place(tmp_path, writer):
    """A reader holding the previous file still reads all of it: the new file is renamed over it."""

    def write(version: int) -> Path:
        if writer == "json":
            return common.write_json(tmp_path / "s.json", {"version": version, "pad": "x" * 1000 * version})
        if writer == "csv":
            return common.write_csv(tmp_path / "t.csv", pd.DataFrame(dict(v=[version] * (10 * version))))
        if writer == "report":
            return common.write_report(tmp_path / "r.md", f"v{version}", [("s", "y" * 100 * version)])
        fig, ax = plt.subplots()
        ax.plot(range(version + 2))
        return common.save_figure(fig, tmp_path / "f.png")

    path = write(1)
    with open(path, "rb") as old:
        first = path.read_bytes()
        write(2)
        assert old.read() == first, "the file was rewritten in place"
    assert path.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# --------------------------------------------------------------------------------------------
# Ctrl-C to the sweep's process alone: exit 130 at once, every finished trial kept (issue 19, class 4)
# --------------------------------------------------------------------------------------------
def test_sigint_to_the_parent_alone_exits_130_promptly_keeping_finished_trials(tmp_path):
    table = tmp_path / "trials.jsonl"
    parent = _python(
        """
        import sys
        from experiments.gradients import sweep
        from scratch_rnn.cli import run_main
        from tests.sweep_trials import quick_or_slow_trial
        d = sys.argv[1]
        specs = [dict(k=k, dir=d) for k in range(4)]
        sys.exit(run_main(lambda argv: sweep.run_sweep(quick_or_slow_trial, specs, d + "/trials.jsonl", workers=4,
                                                       progress=False) and None, prog="sweep"))
    """,
        str(tmp_path),
    )
    pid_files = [tmp_path / f"worker-{k}.pid" for k in (2, 3)]
    workers = []
    try:

        def ready():
            return (
                all(p.exists() and p.read_text() for p in pid_files)
                and table.exists()
                and len(table.read_text().splitlines()) == 2
            )

        assert _wait_for(ready, 60), f"the sweep did not get going: {parent.poll()}"
        workers = [int(p.read_text()) for p in pid_files]
        os.kill(parent.pid, signal.SIGINT)  # the parent alone, not its process group
        t0 = time.monotonic()
        rc = parent.wait(30)
        elapsed = time.monotonic() - t0
        assert rc == 130, (rc, parent.stderr.read())
        assert elapsed < 15, f"the sweep took {elapsed:.0f} s to stop (it waited for running trials)"
        rows = [json.loads(line) for line in table.read_text().splitlines()]
        assert sorted((r["k"], r["square"]) for r in rows) == [(0, 0), (1, 1)], rows
        assert _wait_for(lambda: not any(pid_alive(pid) for pid in workers), 10), "running trials' workers survived"
    finally:
        parent.kill()
        _reap_leftovers(workers)
        parent.communicate(timeout=30)


def test_ctrl_c_right_after_a_row_is_written_does_not_write_it_twice(tmp_path, monkeypatch):
    """The window the SIGINT test above hit under load: the interrupt lands after a finished trial's row is
    appended and before the sweep notes it as saved. The handler then keeps the trials that finished meanwhile,
    and must not append that row again."""
    real = sweep.append_row
    calls = []

    def append_then_interrupt(path, row):
        real(path, row)
        calls.append(row["k"])
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "append_row", append_then_interrupt)
    specs = [dict(k=k, log=str(tmp_path / "log.txt")) for k in range(3)]
    table = tmp_path / "trials.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(square_trial, specs, table, workers=1, progress=False)
    ids = [json.loads(line)["trial_id"] for line in table.read_text().splitlines()]
    assert len(ids) == len(set(ids)) >= 1, ids  # each finished trial once
