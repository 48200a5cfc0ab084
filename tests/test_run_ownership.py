"""One run per output: a run folder, a checkpoint folder or a log is owned by one run at a time.

The lock (scratch_rnn.runlock) is tried by real processes where the case is about two processes:
racing starts, a holder killed with SIGKILL, two ``python -m scratch_rnn.train`` into one folder, two
``python -m experiments.sentiment`` of one run name. Also here: a resume may write only its own
log; Ctrl-C leaves log and checkpoint agreeing; ``python -m scratch_rnn.train`` imports itself once.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from scratch_rnn.models import ModelConfig
from scratch_rnn.runlock import RunInUse, RunLock, StaleLockWarning, folder_lock_path
from scratch_rnn.train import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
PY = sys.executable
DENSE = ModelConfig(hidden_size=4, out_features=2, input_size=3, loss="mse", dtype="float64", seed=1)


def _wait_for(pred, timeout=60.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _owner(lock_path):
    try:
        return json.loads(open(lock_path).read())
    except (OSError, ValueError):
        return None


def _stop(proc, sig=signal.SIGINT, timeout=60):
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------
# the lock itself
# ------------------------------------------------------------------------------------------------
RACER = """
import json, sys, time
from scratch_rnn.runlock import RunLock, RunInUse
path, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
try:
    lock = RunLock(path, "the folder").acquire()
except RunInUse as e:
    print("lost", e.owner and e.owner.get("pid"))
    sys.exit(0)
print("won")
sys.stdout.flush()
time.sleep(2.0)
lock.release()
"""


def test_of_processes_starting_at_the_same_instant_exactly_one_gets_the_lock(tmp_path):
    start = time.time() + 1.5  # every racer is imported and spinning by then
    procs = [
        subprocess.Popen(
            [PY, "-c", RACER, str(tmp_path / "run" / ".lock"), repr(start)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = [o.strip() for o, _ in outs]
    winners = [p.pid for p, line in zip(procs, lines) if line == "won"]
    assert len(winners) == 1, lines
    assert all(line == f"lost {winners[0]}" for line in lines if line != "won"), lines  # each names the winner
    # released: the lock file is gone; the folder is gone too unless a loser made it first (the winner only
    # removes folders it made itself), and then it is empty
    run = tmp_path / "run"
    assert not run.exists() or list(run.iterdir()) == [], list(run.iterdir())


CHURNER = """
import os, sys, time
from scratch_rnn.runlock import RunLock, RunInUse
path, marker, rounds, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
while time.time() < start:
    pass
held = 0
while held < rounds:
    try:
        lock = RunLock(path).acquire()
    except RunInUse:
        continue
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # two holders at once: this fails
    except FileExistsError:
        print("two holders at once")
        sys.exit(1)
    os.close(fd)
    time.sleep(0.002)
    os.unlink(marker)
    lock.release()
    held += 1
print("ok")
"""


def test_a_lock_taken_and_released_in_a_tight_loop_by_several_processes_never_has_two_holders(tmp_path):
    """Release removes the lock file: one who opened it before the removal must not hold it beside a new one."""
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [PY, "-c", CHURNER, str(tmp_path / ".lock"), str(tmp_path / "marker"), "200", repr(start)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _ in outs] == ["ok"] * 3, outs


def test_a_lock_of_a_killed_run_is_taken_over_and_named(tmp_path):
    path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            (
                "import sys, time\nfrom scratch_rnn.runlock import RunLock\n"
                "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
            ),
            str(path),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=f"pid {holder.pid}"):
            RunLock(path, "the folder").acquire()
    finally:
        holder.kill()  # SIGKILL: no finally, no release; the lock file stays behind
        holder.wait()
    assert _owner(path)["pid"] == holder.pid
    with pytest.warns(StaleLockWarning, match=f"left by pid {holder.pid}.*no longer runs"):
        lock = RunLock(path, "the folder").acquire()
    assert lock.took_over["pid"] == holder.pid and _owner(path)["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_two_locks_of_one_process_conflict_and_release_gives_it_back(tmp_path):
    a = RunLock(tmp_path / "d" / ".lock").acquire()
    with pytest.raises(RunInUse, match="this process"):
        RunLock(tmp_path / "d" / ".lock").acquire()
    a.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lock released properly is not stale
        RunLock(tmp_path / "d" / ".lock").acquire().release()


# ------------------------------------------------------------------------------------------------
# python -m scratch_rnn.train
# ------------------------------------------------------------------------------------------------
def _train_files(tmp_path, n=4000, **train_kw):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((n, 5, 3)), y=rng.standard_normal((n, 2)))
    (tmp_path / "model.json").write_text(json.dumps(DENSE.to_dict()))
    train = {
        "optimizer": "sgd",
        "optimizer_kwargs": {"lr": 1e-3},
        "batch_size": 1,
        "epochs": 100,
        "shuffle": False,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "checkpoint_every": 150,
        "log_csv": str(tmp_path / "ckpt" / "log.csv"),
        "progress": False,
    }
    train.update(train_kw)
    (tmp_path / "train.json").write_text(json.dumps(train))
    return [
        "--data",
        str(tmp_path / "data.npz"),
        "--model",
        str(tmp_path / "model.json"),
        "--train",
        str(tmp_path / "train.json"),
    ]


def _log_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def _checkpoint_steps(path):
    with np.load(path) as z:
        return z["extra/history_step"].tolist()


def _start_training(tmp_path, args):
    proc = subprocess.Popen(
        [PY, "-m", "scratch_rnn.train", *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ckpt = tmp_path / "ckpt" / "checkpoint.npz"

    def going():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        return ckpt.exists() and len(_log_rows(tmp_path / "ckpt" / "log.csv")) > 200

    _wait_for(going, what="a checkpoint and steps past it")
    return proc


def test_a_second_train_run_into_a_folder_in_use_exits_2_naming_the_first(tmp_path):
    args = _train_files(tmp_path)
    first = _start_training(tmp_path, args)
    try:
        owner = _owner(folder_lock_path(tmp_path / "ckpt"))
        assert owner["pid"] == first.pid
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = subprocess.run(
                [PY, "-m", "scratch_rnn.train", *args, *extra],
                env=ENV,
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 2, (extra, second.stderr)
            assert f"in use by another run: pid {first.pid}" in second.stderr, second.stderr
            assert first.poll() is None  # the first run goes on, untouched
    finally:
        code = _stop(first)
    assert code == 130


def test_ctrl_c_leaves_the_log_at_the_checkpoints_step(tmp_path):
    args = _train_files(tmp_path)
    proc = _start_training(tmp_path, args)
    assert _stop(proc) == 130
    _, err = proc.communicate()
    assert "interrupted" in err and "RuntimeWarning" not in err, err
    steps = _checkpoint_steps(tmp_path / "ckpt" / "checkpoint.npz")
    rows = _log_rows(tmp_path / "ckpt" / "log.csv")
    assert [int(r[0]) for r in rows] == steps  # the log says what the checkpoint holds, no more
    assert not (tmp_path / "ckpt" / ".lock").exists()
    # and the resume continues both from there
    args = _train_files(tmp_path, epochs=1, n=4000)
    done = subprocess.run(
        [PY, "-m", "scratch_rnn.train", *args, "--resume"],
        env=ENV,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [int(r[0]) for r in _log_rows(tmp_path / "ckpt" / "log.csv")] == list(range(1, 4001))


def test_the_train_command_imports_itself_once(tmp_path):
    args = _train_files(tmp_path, n=8, epochs=1, checkpoint_every=0)
    proc = subprocess.run(
        [PY, "-m", "scratch_rnn.train", *args], env=ENV, check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "unpredictable" not in proc.stderr, proc.stderr


def test_a_resume_refuses_to_rewrite_another_runs_log(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    common = {"n": 24, "epochs": 1, "checkpoint_every": 0}
    args_a = _train_files(a, log_csv=str(tmp_path / "log_a.csv"), **common)
    args_b = _train_files(b, log_csv=str(tmp_path / "log_b.csv"), optimizer_kwargs={"lr": 2e-3}, **common)
    assert train_main(args_a) == 0 and train_main(args_b) == 0
    log_b = (tmp_path / "log_b.csv").read_bytes()
    # resume run a (two epochs now) with run b's log: refused, b's log untouched
    args_a = _train_files(a, log_csv=str(tmp_path / "log_b.csv"), **dict(common, epochs=2))
    capsys.readouterr()
    assert train_main(args_a + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "log_b.csv" in err and "is not the log of the run being resumed" in err, err
    assert (tmp_path / "log_b.csv").read_bytes() == log_b
    # its own log is continued
    args_a = _train_files(a, log_csv=str(tmp_path / "log_a.csv"), **dict(common, epochs=2))
    assert train_main(args_a + ["--resume"]) == 0
    assert [int(r[0]) for r in _log_rows(tmp_path / "log_a.csv")] == list(range(1, 49))


def test_a_log_outside_the_folder_is_owned_too(tmp_path):
    """Two runs into different folders but one log: the second is refused while the first runs."""
    args = _train_files(tmp_path, log_csv=str(tmp_path / "shared.csv"))
    first = subprocess.Popen(
        [PY, "-m", "scratch_rnn.train", *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(
            lambda: (_owner(tmp_path / ".shared.csv.lock") or {}).get("pid") == first.pid,
            what="the first run's log lock",
        )
        other = tmp_path / "other"
        other.mkdir()
        args2 = _train_files(other, log_csv=str(tmp_path / "shared.csv"))
        second = subprocess.run(
            [PY, "-m", "scratch_rnn.train", *args2, "--overwrite"],
            env=ENV,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
        assert not (other / "ckpt").exists()  # refused before anything was written
    finally:
        assert _stop(first) == 130


# ------------------------------------------------------------------------------------------------
# python -m experiments.sentiment
# ------------------------------------------------------------------------------------------------
def _tiny_imdb(path):
    rng = np.random.default_rng(0)
    good, bad = (
        ["good", "great", "fine", "lovely", "superb", "nice"],
        ["bad", "awful", "poor", "boring", "dull", "worst"],
    )
    rows = ["review,sentiment,split"]
    for split, n in (("train", 60), ("test", 20)):
        for i in range(n):
            words = rng.choice(good if i % 2 else bad, 8).tolist() + ["film"]
            rows.append(f"{' '.join(words)},{'positive' if i % 2 else 'negative'},{split}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _sentiment(tmp_path, epochs, *extra):
    return [
        PY,
        "-m",
        "experiments.sentiment",
        "--data",
        str(_tiny_imdb(tmp_path / "tiny.csv")),
        "--stopwords",
        "keep",
        "--min-freq",
        "1",
        "--max-vocab",
        "none",
        "--valid-fraction",
        "0",
        "--select",
        "last",
        "--epochs",
        str(epochs),
        "--hidden-size",
        "4",
        "--embedding-dim",
        "4",
        "--batch-size",
        "4",
        "--out-root",
        str(tmp_path / "out"),
        "--run-name",
        "r",
        "--no-progress",
        *extra,
    ]


def test_a_second_sentiment_run_of_one_name_is_refused_while_the_first_runs(tmp_path):
    env = dict(ENV, SCRATCH_RNN_CACHE=str(tmp_path / "cache"))
    first = subprocess.Popen(
        _sentiment(tmp_path, 100000), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lock = tmp_path / "out" / ".r.lock"
    try:
        _wait_for(
            lambda: (
                (_owner(lock) or {}).get("pid") == first.pid
                and any((tmp_path / "out").glob(".r.partial-*"))
                and first.poll() is None
            ),
            what="the first run to start training",
        )
        for extra in ([], ["--overwrite"]):
            second = subprocess.run(
                _sentiment(tmp_path, 1, *extra), env=env, check=False, capture_output=True, text=True, timeout=60
            )
            assert second.returncode == 2, (extra, second.stderr)
            assert "--run-name 'r'" in second.stderr and f"in use by another run: pid {first.pid}" in second.stderr
            assert first.poll() is None
    finally:
        code = _stop(first)
    assert code == 130, first.communicate()
    # no run, no partial folder, no lock left (and the folder made for them is gone too)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # the name is free again
    done = subprocess.run(_sentiment(tmp_path, 1), env=env, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r"]
