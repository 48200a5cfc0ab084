"""Every command line under the one exit-code table (scratch_rnn.cli): bad input exits 2 before any
work, with a message naming the option; a good quick run exits 0.

To add a command or a case, add a row to CASES:
    row(id, "package.module:main", argv, expected exit code, substring(s) of the output)
argv may use the placeholders {tmp} (an empty folder), {file} (an existing file), {closed}
(tcp://127.0.0.1:PORT with nothing listening) and {imdb} (a 40-review CSV with the official split); an
argument "{report:TEXT}" becomes the path of a file report.json holding TEXT.
Each main runs in-process through ``main(argv)``.
"""

from __future__ import annotations

import importlib
import socket
import time

import pytest

BENCH, CROSSCHECK, GRADIENTS = "benchmarks.rnn:main", "reference.crosscheck:main", "experiments.gradients.__main__:main"
REPORT = "experiments.sentiment.report:main"
SENTIMENT = "experiments.sentiment.__main__:main"


def row(id_, target, argv, code, expected):
    return pytest.param(target, argv, code, (expected,) if isinstance(expected, str) else tuple(expected), id=id_)


CASES = [
    # benchmarks.rnn
    row("bench --rounds 0", BENCH, ["--rounds", "0"], 2, ["--rounds", "positive integer", "got 0"]),
    row("bench --threads 0", BENCH, ["--threads", "1", "0"], 2, ["--threads", "got 0"]),
    row("bench --reps 0", BENCH, ["--reps", "0"], 2, "--reps"),
    row("bench --cases bogus", BENCH, ["--cases", "small", "bogus"], 2, ["--cases", "bogus", "small"]),
    row("bench --quick --cases not in the quick grid", BENCH, ["--quick", "--cases", "large"], 2, ["--cases", "large"]),
    row("bench --dtypes float16", BENCH, ["--dtypes", "float16"], 2, "--dtypes"),
    row("bench --json folder", BENCH, ["--json", "{tmp}"], 2, ["--json", "folder"]),
    row("bench --json under a file", BENCH, ["--json", "{file}/sub/out.json"], 2, "--json"),
    row("bench --json existing", BENCH, ["--json", "{file}"], 2, ["--json", "exists", "--overwrite"]),
    row("bench --markdown missing", BENCH, ["--markdown", "{tmp}/nope.json"], 2, ["--markdown", "nope.json"]),
    row("bench --markdown not a report", BENCH, ["--markdown", "{file}"], 2, ["--markdown", "earlier benchmark run"]),
    # malformed reports: named by file and by what is wrong, never a traceback
    *[
        row(f"bench {opt} {why}", BENCH, [opt, "{report:" + json_text + "}"], 2, [opt, "report.json", *expect])
        for opt in ("--markdown", "--spread")
        for why, json_text, expect in (
            ("bad JSON", '{"rows": [', ["not JSON"]),
            ("a list", "[1, 2]", ["expected a JSON object"]),
            ("row not an object", '{"rows": [3], "summary": {}}', ["rows[0]: expected an object"]),
            (
                "row lacks ratio",
                '{"rows": [{"dtype": "float32", "threads": 1, "case": "small"}], "summary": {}}',
                ["rows[0] lacks", "ratio"],
            ),
            (
                "ratio a string",
                '{"rows": [{"dtype": "float32", "threads": 1, "case": "s", "ratio": "fast", "B": 1, '
                '"T": 1, "I": 1, "H": 1, "loss": "all", "scratch_ms": 1, "torch_ms": 1, "scratch_gflops": 1, '
                '"scratch_peak_frac": 1, "torch_peak_frac": 1, "numpy_peak_gflops": 1, "torch_peak_gflops": 1}], '
                '"summary": {}}',
                ["rows[0].ratio", "expected int or float", '"fast"'],
            ),
            (
                "threads a float",
                '{"rows": [{"dtype": "float32", "threads": 1.5, "case": "s", "ratio": 1.0}], "summary": {}}',
                ["rows[0]"],
            ),  # --spread: its threads; --markdown: its missing fields
        )
    ],
    row(
        "bench --markdown summary without its peaks",
        BENCH,
        [
            "--markdown",
            '{report:{"rows": [], "summary": {"float32/1": {"geomean_ratio": 1, "max_ratio": 1, '
            '"largest_peak_frac": 0.5}}}}',
        ],
        2,
        ["--markdown", "report.json", "peaks", "float32/1"],
    ),
    row(
        "bench --markdown summary entry lacks max_ratio",
        BENCH,
        ["--markdown", '{report:{"rows": [], "summary": {"float32/1": {"geomean_ratio": 1}}, "peaks": {}}}'],
        2,
        ["summary['float32/1'] lacks 'max_ratio'"],
    ),
    row(
        "bench --markdown memory torch_mb 0",
        BENCH,
        [
            "--markdown",
            '{report:{"rows": [], "summary": {}, "memory": [{"dtype": "float32", "case": "s", '
            '"scratch_mb": 1, "scratch_tracemalloc_mb": 1, "torch_mb": 0}]}}',
        ],
        2,
        ["memory[0].torch_mb"],
    ),
    # reference.crosscheck
    row("crosscheck --seed -1", CROSSCHECK, ["--seed", "-1"], 2, ["--seed", "got -1"]),
    row("crosscheck --max-steps 0", CROSSCHECK, ["--max-steps", "0"], 2, ["--max-steps", "got 0"]),
    row("crosscheck --cases 0", CROSSCHECK, ["--cases", "0"], 2, ["--cases", "got 0"]),
    row("crosscheck --json folder", CROSSCHECK, ["--cases", "2", "--json", "{tmp}"], 2, ["--json", "folder"]),
    row("crosscheck --json under a file", CROSSCHECK, ["--cases", "2", "--json", "{file}/x.json"], 2, "--json"),
    row("crosscheck --cases 2", CROSSCHECK, ["--cases", "2", "--json", "{tmp}/cc.json"], 0, "agree with both"),
    row("crosscheck --cell all --cases 2", CROSSCHECK, ["--cell", "all", "--cases", "2"], 0, ["LSTM:", "GRU:", "c_n"]),
    row("crosscheck --cell bogus", CROSSCHECK, ["--cell", "bogus"], 2, ["--cell", "bogus", "'rnn'", "module:Class"]),
    # experiments.gradients
    row("gradients unknown experiment", GRADIENTS, ["nope"], 2, "invalid choice"),
    row("pathological --workers 0", GRADIENTS, ["pathological", "--workers", "0"], 2, ["--workers", "got 0"]),
    row(
        "pathological --tasks bogus",
        GRADIENTS,
        ["pathological", "--tasks", "adding", "bogus"],
        2,
        ["--tasks", "bogus", "temporal_order"],
    ),
    row("pathological --out file", GRADIENTS, ["pathological", "--quick", "--out", "{file}"], 2, ["--out", "a file"]),
    row("pathological --seed -5", GRADIENTS, ["pathological", "--quick", "--seed", "-5"], 2, ["--seed", "got -5"]),
    row(
        "pathological --scheduler closed",
        GRADIENTS,
        ["pathological", "--scheduler", "{closed}"],
        2,
        ["--scheduler", "{closed}"],
    ),
    row("pathological --scheduler no port", GRADIENTS, ["pathological", "--scheduler", "tcp://[::1"], 2, "--scheduler"),
    *[
        row(
            f"pathological --scheduler {scheme}",
            GRADIENTS,
            ["pathological", "--scheduler", f"{scheme}://h:8786"],
            2,
            ["--scheduler", "expected a tcp:// address", f"scheme '{scheme}'"],
        )
        for scheme in ("inproc", "ucx", "ws", "tls")
    ],
    row(
        "pathological --scheduler no scheme",
        GRADIENTS,
        ["pathological", "--scheduler", "127.0.0.1:8786"],
        2,
        ["--scheduler", "no scheme"],
    ),
    row(
        "pathological --scheduler port 0",
        GRADIENTS,
        ["pathological", "--scheduler", "tcp://h:0"],
        2,
        ["--scheduler", "1..65535"],
    ),
    row(
        "pathological --scheduler-timeout 0",
        GRADIENTS,
        ["pathological", "--scheduler-timeout", "0"],
        2,
        ["--scheduler-timeout", "got 0"],
    ),
    row("spectrum --out file", GRADIENTS, ["spectrum", "--out", "{file}"], 2, "--out"),
    row("cliff --seed -1", GRADIENTS, ["cliff", "--seed", "-1"], 2, "--seed"),
    row("flow --data missing", GRADIENTS, ["flow", "--quick", "--data", "{tmp}/nope.csv"], 2, ["--data", "nope.csv"]),
    row("cliff --quick", GRADIENTS, ["cliff", "--quick", "--no-progress", "--out", "{tmp}/cliff"], 0, "grad_norm_max"),
    # experiments.sentiment
    row("sentiment --out-root file", SENTIMENT, ["--out-root", "{file}"], 2, ["--out-root", "a file"]),
    row(
        "sentiment --data missing",
        SENTIMENT,
        ["--data", "{tmp}/nope.csv", "--out-root", "{tmp}"],
        2,
        ["--data", "nope.csv"],
    ),
    row("sentiment --epochs 0", SENTIMENT, ["--epochs", "0", "--out-root", "{tmp}"], 2, ["epochs", "got 0"]),
    # zero is never a silent "off": refused, naming the option and the word that does turn it off
    *[
        row(
            f"sentiment {opt} 0",
            SENTIMENT,
            [opt, zero, "--data", "{imdb}", "--out-root", "{tmp}"],
            2,
            [opt, f"got '{zero}'", "'none'"],
        )
        for opt, zero in (
            ("--patience", "0"),
            ("--clip-norm", "0"),
            ("--clip-norm", "0.0"),
            ("--train-size", "0"),
            ("--test-size", "0"),
            ("--max-vocab", "0"),
        )
    ],
    row("sentiment --patience -1", SENTIMENT, ["--patience", "-1", "--out-root", "{tmp}"], 2, ["patience", "got -1"]),
    row(
        "sentiment --valid-fraction leaves no training review",
        SENTIMENT,
        ["--data", "{imdb}", "--train-size", "4", "--valid-fraction", "0.9", "--out-root", "{tmp}"],
        2,
        ["--valid-fraction", "leaves 0 to train on"],
    ),
    row(
        "sentiment --valid-fraction holds out no review",
        SENTIMENT,
        ["--data", "{imdb}", "--train-size", "4", "--valid-fraction", "0.01", "--out-root", "{tmp}"],
        2,
        ["--valid-fraction", "holds out 0 for validation"],
    ),
    # experiments.sentiment.report
    row("report missing folder", REPORT, ["{tmp}/nope"], 2, ["runs", "nope"]),
    row("report no finished run", REPORT, ["{tmp}"], 2, ["no metrics.json"]),
]


def _closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"  # closed again: connecting is refused


def _resolve(target: str):
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)


@pytest.mark.parametrize("target,argv,code,expected", CASES)
def test_exit_code_and_message(target, argv, code, expected, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    existing = tmp_path / "existing.txt"
    existing.write_text("not a report\n")
    imdb = tmp_path / "imdb.csv"  # 10 reviews per label and split, the official split named
    imdb.write_text(
        "review,sentiment,split\n"
        + "".join(
            f"{w} film {i},{lab},{split}\n"
            for split in ("train", "test")
            for lab, w in (("positive", "good"), ("negative", "bad"))
            for i in range(10)
        )
    )
    fill = dict(tmp=str(folder), file=str(existing), closed=_closed_address(), imdb=str(imdb))

    def fill_in(a: str) -> str:
        if a.startswith("{report:"):  # {report:JSON TEXT}: that text, as the file report.json
            report = tmp_path / "report.json"
            report.write_text(a[len("{report:") : -1])
            return str(report)
        return a.format(**fill)

    argv = [fill_in(a) for a in argv]
    t0 = time.perf_counter()
    rc = _resolve(target)(argv)
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr()
    text = out.out + out.err
    assert rc == code, f"exit {rc}, expected {code}; output:\n{text[-3000:]}"
    for s in expected:
        assert s.format(**fill) in text, f"{s!r} not in the output:\n{text[-3000:]}"
    if code == 2:
        assert "Traceback" not in text
        assert elapsed < 10, f"bad input took {elapsed:.1f} s to be found (should be found before any work)"


def test_bad_bench_json_is_found_before_the_run(tmp_path, monkeypatch, capsys):
    from benchmarks import rnn as bench

    def no_run(args):
        raise AssertionError("the benchmark ran before its --json path was checked")

    monkeypatch.setattr(bench, "run", no_run)
    assert bench.main(["--quick", "--json", str(tmp_path)]) == 2
    assert "--json" in capsys.readouterr().err


def test_bad_crosscheck_json_is_found_before_the_cases(tmp_path, monkeypatch, capsys):
    from reference import crosscheck

    def no_case(case):
        raise AssertionError("a case ran before --json was checked")

    monkeypatch.setattr(crosscheck, "check_case", no_case)
    assert crosscheck.main(["--cases", "3", "--json", str(tmp_path)]) == 2
    assert "--json" in capsys.readouterr().err


def test_unreachable_scheduler_fails_fast_naming_the_address(capsys):
    from experiments.gradients import __main__ as cli

    address = _closed_address()
    t0 = time.perf_counter()
    assert cli.main(["pathological", "--quick", "--no-progress", "--scheduler", address]) == 2
    assert time.perf_counter() - t0 < cli.SCHEDULER_CONNECT_TIMEOUT_S + 3
    err = capsys.readouterr().err
    assert "--scheduler" in err and address in err


def test_crosscheck_mismatch_stays_exit_1(monkeypatch, capsys):
    from reference import crosscheck

    monkeypatch.setattr(crosscheck, "check_case", lambda case, twin=None: ({"output": 1.0}, {}))
    assert crosscheck.main(["--cases", "1"]) == 1
    assert "MISMATCH" in capsys.readouterr().err


def test_scheduler_that_does_not_answer_is_bad_input(monkeypatch):
    from experiments.gradients import __main__ as cli
    from scratch_rnn.cli import BadInput

    def silent(address, timeout):
        assert timeout == cli.SCHEDULER_CONNECT_TIMEOUT_S
        raise TimeoutError("timed out")

    from experiments.gradients import sweep

    monkeypatch.setattr(sweep.socket, "create_connection", silent)
    with pytest.raises(BadInput, match=r"--scheduler: .*'tcp://10\.1\.2\.3:8786'.*no answer"):
        cli.check_scheduler("tcp://10.1.2.3:8786")


def test_a_dead_worker_stops_the_sweep_with_exit_1(tmp_path, monkeypatch, capsys):
    from experiments.gradients import __main__ as cli
    from experiments.gradients import pathological
    from tests.sweep_trials import killed_trial

    monkeypatch.setattr(pathological, "run_trial", killed_trial)
    assert cli.main(["pathological", "--quick", "--no-progress", "--workers", "1", "--out", str(tmp_path)]) == 1
    assert "worker process died" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# python -m scratch_rnn.train: the data, both JSON files and the output paths are checked up front
# ---------------------------------------------------------------------------------------------
TOKENS = dict(hidden_size=3, out_features=2, vocab_size=5, embedding_dim=2, dtype="float64", seed=0)
DENSE = dict(hidden_size=3, out_features=2, input_size=2, dtype="float64", seed=0)


def _train_files(tmp_path, model=TOKENS, train=None, x=None, y=None, lengths=None, data_bytes=None):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    dense = "input_size" in model
    x = (rng.standard_normal((8, 4, 2)) if dense else rng.integers(0, 5, (8, 4))) if x is None else x
    y = rng.integers(0, 2, 8) if y is None else y
    arrays = dict(x=x, y=y) if lengths is None else dict(x=x, y=y, lengths=lengths)
    data = tmp_path / "data.npz"
    if data_bytes is None:
        np.savez(data, **arrays)
    else:
        data.write_bytes(data_bytes)
    (tmp_path / "model.json").write_text(json.dumps(model))
    base = dict(
        optimizer="sgd",
        optimizer_kwargs={"lr": 0.1},
        batch_size=4,
        progress=False,
        checkpoint_dir=str(tmp_path / "run"),
    )
    (tmp_path / "train.json").write_text(json.dumps({**base, **(train or {})}))
    return ["--data", str(data), "--model", str(tmp_path / "model.json"), "--train", str(tmp_path / "train.json")]


TRAIN_CASES = [
    ("token id >= vocab_size", dict(x=[[1, 2, 7, 0]] * 8), ["x", "[0, 5)", "got 7"]),
    ("label >= out_features", dict(y=[0, 1, 2, 0, 1, 0, 1, 0]), ["y", "[0, 2)", "got 2"]),
    ("length > T", dict(lengths=[4, 4, 5, 1, 1, 2, 3, 4]), ["lengths", "1..4", "5"]),
    ("NaN in dense x", dict(model=DENSE, x=[[[0.0, float("nan")]] * 4] * 8), ["x", "non-finite"]),
    ("clip_norm_type abc", dict(train={"clip_norm_type": "abc"}), ["clip_norm_type", "abc"]),
    ("shuffle 'false'", dict(train={"shuffle": "false"}), ["shuffle", "True or False", "'false'"]),
    ("bidirectional 'false'", dict(model={**TOKENS, "bidirectional": "false"}), ["bidirectional", "'false'"]),
    ("a text file as .npz", dict(data_bytes=b"x,y\n1,2\n"), ["--data", "not a zip archive"]),
    ("unknown model field", dict(model={**TOKENS, "hiden_size": 3}), ["unknown field", "hiden_size"]),
    # zero is not "off" (null is): refused, not read as no early stop / no clipping
    ("patience 0", dict(train={"patience": 0, "select_metric": "acc"}), ["patience", "or None", "got 0"]),
    ("clip_norm 0", dict(train={"clip_norm": 0}), ["clip_norm", "or None", "got 0"]),
    ("clip_value 0", dict(train={"clip_value": 0.0}), ["clip_value", "or None", "got 0.0"]),
    ("max_steps 0", dict(train={"max_steps": 0}), ["max_steps", "or None", "got 0"]),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_cli_bad_input_exits_2_before_training(case, tmp_path, capsys):
    from scratch_rnn.train import main

    _, kw, expected = case
    rc = main(_train_files(tmp_path, **kw))
    text = capsys.readouterr().err
    assert rc == 2, text
    for s in expected:
        assert s in text, f"{s!r} not in {text!r}"
    assert "Traceback" not in text and not (tmp_path / "run").exists()  # found before anything was written


def test_train_cli_output_paths_and_finished_runs(tmp_path, capsys):
    from scratch_rnn.train import main

    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert main(_train_files(tmp_path, train={"checkpoint_dir": str(a_file)})) == 2
    assert "checkpoint_dir" in capsys.readouterr().err
    assert main(_train_files(tmp_path, train={"log_csv": str(tmp_path)})) == 2
    assert "log_csv" in capsys.readouterr().err
    args = _train_files(tmp_path)
    assert main(args) == 0
    finished = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    assert main(args) == 2  # the finished run is not restarted over its own checkpoint
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == finished
    assert main(args + ["--resume"]) == 0  # nothing left to do: done
    other = _train_files(tmp_path, y=[1, 1, 1, 1, 0, 0, 0, 0])
    assert main(other + ["--resume"]) == 2  # another data file: refused, not continued silently
    assert "other data" in capsys.readouterr().err


def test_train_cli_divergence_exits_1(tmp_path, capsys):
    from scratch_rnn.train import main

    rc = main(_train_files(tmp_path, model=DENSE, train={"optimizer_kwargs": {"lr": 1e300}, "epochs": 3}, y=[1, 0] * 4))
    assert rc == 1, capsys.readouterr().err
    assert "training stopped at step" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --scheduler at a port where something that is not Dask listens (an HTTP server): a real deadline
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("server", ["http", "silent", "garbage"])
def test_scheduler_port_that_is_not_dask_exits_2_within_the_deadline(server, tmp_path):
    """A real subprocess against a local server: an HTTP server (waits for a request), one that accepts and
    never speaks, one that answers garbage. dask's own timeouts do not bound the handshake (minutes)."""
    import http.server
    import subprocess
    import sys
    import threading
    from pathlib import Path

    if server == "http":
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        port, serve, stop = srv.server_address[1], srv.serve_forever, srv.shutdown
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        port, done, held = listener.getsockname()[1], threading.Event(), []

        def serve():
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                held.append(conn)
                if server == "garbage":
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + bytes(range(256)) * 64)

        def stop():
            done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.gradients",
                "pathological",
                "--quick",
                "--no-progress",
                "--out",
                str(tmp_path / "out"),
                "--scheduler",
                f"tcp://127.0.0.1:{port}",
                "--scheduler-timeout",
                "2",
            ],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.perf_counter() - t0
    finally:
        stop()
        thread.join(5)
        if server != "http":
            listener.close()
            for conn in held:
                conn.close()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "--scheduler" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 2 + 15, f"took {elapsed:.1f} s with a 2 s deadline"  # the interpreter's start-up, imports
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# a checkpoint the environment refuses (EFBIG here; ENOSPC alike): exit 1, one line, the previous kept
# ---------------------------------------------------------------------------------------------
def test_train_cli_under_a_file_size_limit_exits_1_keeping_the_previous_checkpoint(tmp_path):
    import json
    import resource
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from scratch_rnn import checkpoint as ckpt

    args = _train_files(tmp_path, train={"epochs": 1, "checkpoint_every": 1, "log_csv": str(tmp_path / "log.csv")})
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "scratch_rnn.train", *args]
    first = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    path = tmp_path / "run" / "checkpoint.npz"
    size, before = path.stat().st_size, path.read_bytes()
    (tmp_path / "train.json").write_text(json.dumps({**json.loads((tmp_path / "train.json").read_text()), "epochs": 6}))

    def limit():  # in the child: files may not grow past the first run's checkpoint (+ a little)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64, size + 64))

    second = subprocess.run([*cmd, "--resume"], cwd=root, capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert second.returncode == 1, (second.returncode, second.stderr[-3000:])
    err = [line for line in second.stderr.splitlines() if line.strip() and "<frozen runpy>" not in line]  # (B's)
    assert len(err) == 1 and "Traceback" not in second.stderr, second.stderr
    assert "checkpoint could not be written" in err[0] and "EFBIG" in err[0] and "kept" in err[0], err[0]
    arrays, meta = ckpt.read_archive(path)  # whole and readable
    assert meta["step"] >= 2 and path.stat().st_size <= size + 64
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.npz"], "a temporary file was left"
    if meta["step"] == 2:
        assert path.read_bytes() == before
    third = subprocess.run([*cmd, "--resume"], cwd=root, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr  # the kept checkpoint resumes once the limit is gone


def test_a_full_disk_while_checkpointing_stops_naming_enospc(tmp_path, monkeypatch):
    import errno

    import numpy as np

    from scratch_rnn import checkpoint as ckpt
    from scratch_rnn.models import ModelConfig, SequenceModel
    from scratch_rnn.train import CheckpointNotWritten, Dataset, TrainConfig, Trainer, TrainingStopped

    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 5, (8, 4)), rng.integers(0, 2, 8))
    t = Trainer(
        SequenceModel(ModelConfig(**TOKENS)),
        TrainConfig(batch_size=4, epochs=2, checkpoint_every=1, checkpoint_dir=str(tmp_path), progress=False),
    )
    real, calls = ckpt.save, []

    def full_after_two(*a, **kw):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(ckpt, "save", full_after_two)
    with pytest.raises(CheckpointNotWritten, match=r"No space left on device \(ENOSPC\).*\(step 2\) was kept") as e:
        t.fit(data)
    assert isinstance(e.value, TrainingStopped) and t.last_checkpoint_step == 2
    assert ckpt.read_archive(tmp_path / "checkpoint.npz")[1]["step"] == 2
