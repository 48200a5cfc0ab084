"""The gradient study, part three: the published settings as options (one bias, per-batch lengths, basic tanh init,
lstm_rmsprop, indrnn), trials that checkpoint themselves and resume (a SIGKILL mid-trial, then a rerun, gives the
uninterrupted run's row), the cost estimate before a grid, and the learning curves."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.gradients import __main__ as cli
from experiments.gradients import pathological as P
from experiments.gradients import tasks
from experiments.gradients.sweep import trial_id
from tests.helpers import assert_close

ROOT = Path(__file__).resolve().parents[1]
TIMES = ("seconds", "train_seconds", "eval_seconds", "resumed_from", "trial_id")


def _spec(**kw):
    spec = dict(
        task="adding",
        length=12,
        method="sgd_clip",
        seed=1,
        hidden=6,
        batch=5,
        lr=0.1,
        clip=1.0,
        max_iters=1,
        check_every=1,
        eval_samples=10,
    )
    spec.update(kw)
    return spec


def _torch_pair(model, nonlinearity="tanh", cell="rnn"):
    kind = torch.nn.LSTM if cell == "lstm" else torch.nn.RNN
    kw = {} if cell == "lstm" else dict(nonlinearity=nonlinearity)
    rnn = kind(model.rnn.input_size, model.rnn.hidden_size, dtype=torch.float64, **kw)
    lin = torch.nn.Linear(model.rnn.hidden_size, model.head.weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            module, name = (rnn, k[4:]) if k.startswith("rnn.") else (lin, k[5:])
            getattr(module, name).copy_(torch.tensor(v))
    return rnn, lin


def _torch_grads(rnn, lin, x, y, task):
    out, _ = rnn(torch.tensor(x))
    pred = lin(out[-1])
    loss = (
        torch.nn.functional.mse_loss(pred, torch.tensor(y))
        if task == "adding"
        else torch.nn.functional.cross_entropy(pred, torch.tensor(y))
    )
    loss.backward()
    return {
        **{f"rnn.{k}": v.grad.numpy().copy() for k, v in rnn.named_parameters()},
        **{f"head.{k}": v.grad.numpy().copy() for k, v in lin.named_parameters()},
    }


# ---------------------------------------------------------------------------------------------------------------
# One bias, as their code
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sgd", "sgd_clip"])
def test_one_bias_is_their_code_s_single_bias(method):
    """With one_bias, bias_hh stays 0 and every other parameter takes the step of a model with the single bias b
    (torch autograd: the gradient of b is that of bias_ih); the clipping norm leaves bias_hh's gradient out, as
    their code's norm has no second bias. Without the option bias_hh moves (torch's two biases)."""
    seed, task = 2, "adding"
    spec = _spec(method=method, one_bias=True, clip=0.05)
    model = P.build(task, method, 6, seed, one_bias=True)
    rng = np.random.default_rng(seed)
    for k, p in model.parameters().items():
        if k != "rnn.bias_hh_l0":
            p += rng.normal(0, 0.2, p.shape)
    before = model.state_dict()
    x, y = tasks.make_batch(task, np.random.default_rng(9), 5, 12)
    g = _torch_grads(*_torch_pair(model), x, y, task)
    del g["rnn.bias_hh_l0"]  # their code has one bias: its gradient is bias_ih's
    trainer = P.trial_trainer(spec, model, np.random.default_rng(0))
    (rec,) = trainer.train_batch(P.batch_first(x), y)
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
    scale = spec["clip"] / norm if method == "sgd_clip" and norm > spec["clip"] else 1.0
    assert_close(rec.grad_norm, norm, name="recorded norm (one bias)")
    assert (model.parameters()["rnn.bias_hh_l0"] == 0).all()
    for k, v in g.items():
        assert_close(model.parameters()[k], before[k] - 0.1 * scale * v, name=f"{k} after one step")
    two = P.build(task, method, 6, seed)
    P.trial_trainer(_spec(method=method, clip=0.05), two, np.random.default_rng(0)).train_batch(P.batch_first(x), y)
    assert np.abs(two.parameters()["rnn.bias_hh_l0"]).max() > 0


# ---------------------------------------------------------------------------------------------------------------
# Per-batch lengths and the basic tanh init
# ---------------------------------------------------------------------------------------------------------------
def test_per_batch_lengths_are_drawn_from_min_to_max_exclusive():
    """RNN.py: length = min_length + randint(max_length - min_length), once per batch: every value of [min, max)
    occurs, max never, about uniformly (chi-square over 6,000 draws); min = max is a fixed length."""
    source = P.FreshBatches("temporal_order", 16, 2, None, 6000, seed=3, min_length=10)
    lengths = np.array([x.shape[1] for x, _, _ in source.batches(0)])
    counts = np.bincount(lengths, minlength=17)[10:]
    assert counts[-1] == 0 and (counts[:-1] > 0).all() and lengths.min() == 10
    expected = len(lengths) / 6
    assert ((counts[:-1] - expected) ** 2 / expected).sum() < 25  # df 5: p < 1e-4 for a wrong distribution
    fixed = P.FreshBatches("temporal_order", 16, 2, None, 20, seed=3, min_length=16)
    assert {x.shape[1] for x, _, _ in fixed.batches(0)} == {16}
    again = [x for x, _, _ in P.FreshBatches("temporal_order", 16, 2, None, 50, seed=3, min_length=10).batches(4)]
    other = P.FreshBatches("temporal_order", 16, 2, None, 50, seed=3, min_length=10)
    assert all(np.array_equal(a, b) for a, (b, _, _) in zip(again, other.batches(4)))  # epoch e: the same batches


def test_basic_tanh_init_is_their_code_s():
    """'basic_tanh' (RNN.py): W_uh, W_hh, W_hy N(0, 0.1²), zero biases; 'smart_tanh' stays the default."""
    m = P.build("temporal_order", "sgd_cr", 200, 0, init="basic_tanh")
    p = m.parameters()
    for k in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"):
        assert abs(p[k].std() - 0.1) < 0.005 and abs(p[k].mean()) < 0.005, k
    assert not p["rnn.bias_ih_l0"].any() and not p["rnn.bias_hh_l0"].any() and not p["head.bias"].any()
    smart = P.build("temporal_order", "sgd_cr", 200, 0).parameters()["rnn.weight_hh_l0"]
    assert (np.count_nonzero(smart, axis=1) == 15).all()
    with pytest.raises(ValueError, match="init: expected one of"):
        P.build("adding", "sgd", 5, 0, init="sigmoid")


# ---------------------------------------------------------------------------------------------------------------
# lstm_rmsprop and indrnn: their authors' settings
# ---------------------------------------------------------------------------------------------------------------
def test_lstm_rmsprop_step_is_arjovsky_et_al_s():
    """Two steps of lstm_rmsprop against torch autograd (nn.LSTM + Linear on the last output) and their rms_prop
    written out: g clipped to [-1, 1] elementwise, v <- 0.9 v + 0.1 g² from v = 1e-3, p <- p - lr g/√v; one bias
    per gate (bias_hh stays 0); their init (Glorot per gate matrix, forget bias 1)."""
    task, H = "adding", 7
    spec = _spec(method="lstm_rmsprop", hidden=H, lr=1e-3, clip=1.0)
    model = P.build(task, "lstm_rmsprop", H, 5)
    p = model.parameters()
    b_w, b_u = math.sqrt(6 / (2 + H)), math.sqrt(6 / (2 * H))
    assert np.abs(p["rnn.weight_ih_l0"]).max() <= b_w and np.abs(p["rnn.weight_hh_l0"]).max() <= b_u
    assert np.abs(p["rnn.weight_hh_l0"]).max() > 0.8 * b_u
    assert (p["rnn.bias_ih_l0"][H : 2 * H] == 1).all() and p["rnn.bias_ih_l0"].sum() == H
    assert not p["rnn.bias_hh_l0"].any()
    trainer = P.trial_trainer(spec, model, np.random.default_rng(0))
    assert trainer.one_bias  # published: their one bias per gate, whatever the protocol says
    v = {k: np.full_like(a, 1e-3) for k, a in p.items()}
    for step in range(2):
        x, y = tasks.make_batch(task, np.random.default_rng(step), 4, 10)
        y = y * (40.0 if step else 1.0)  # large errors: the elementwise clip binds on the second step
        before = model.state_dict()
        g = _torch_grads(*_torch_pair(model, cell="lstm"), x, y, task)
        del g["rnn.bias_hh_l0"]
        trainer.train_batch(P.batch_first(x), y)
        for k, gk in g.items():
            gk = np.clip(gk, -1, 1)
            v[k] = 0.9 * v[k] + 0.1 * gk**2
            assert_close(model.parameters()[k], before[k] - 1e-3 * gk / np.sqrt(v[k]), name=f"{k} step {step}")
        assert not model.parameters()["rnn.bias_hh_l0"].any()
    assert any(np.abs(gk).max() > 1 for gk in g.values())  # the clip was exercised


def test_indrnn_trial_is_li_et_al_s_setting():
    """indrnn: 2 relu layers, u within their bounds for T, W_ih N(0, 0.001²), Adam at 2e-4, elementwise clip 10,
    one bias; u is clipped to ±2^(1/T) before every step (a u pushed outside is back inside when the step's
    forward runs: with lr 0 nothing else moves it)."""
    T = 20
    spec = _spec(method="indrnn", length=T, **P.PUBLISHED["indrnn"], one_bias=True)
    model = P.build("adding", "indrnn", 128, 0, length=T)
    p = model.parameters()
    assert model.rnn.num_layers == 2 and model.rnn.nonlinearity == "relu" and model.rnn.fast_loop
    hi, lo = 2 ** (1 / T), 2 ** (-1 / T)
    assert p["rnn.weight_hh_l0"].min() >= 0 and p["rnn.weight_hh_l0"].max() <= hi
    assert p["rnn.weight_hh_l1"].min() >= lo and p["rnn.weight_hh_l1"].max() <= hi
    assert abs(p["rnn.weight_ih_l1"].std() - 1e-3) < 1e-4
    opt = P.optimizer_settings(spec)
    assert opt["optimizer"] == "adam" and opt["optimizer_kwargs"] == {"lr": 2e-4} and opt["clip_value"] == 10.0
    trainer = P.trial_trainer({**spec, "lr": 0.0}, model, np.random.default_rng(0))
    p["rnn.weight_hh_l0"][:3] = 5.0
    p["rnn.weight_hh_l1"][:3] = -5.0
    x, y = tasks.make_batch("adding", np.random.default_rng(1), 4, T)
    trainer.train_batch(P.batch_first(x), y)
    assert np.allclose(p["rnn.weight_hh_l0"][:3], hi) and np.allclose(p["rnn.weight_hh_l1"][:3], -hi)


# ---------------------------------------------------------------------------------------------------------------
# Trials that survive
# ---------------------------------------------------------------------------------------------------------------
def _same_rows(a: dict, b: dict) -> list:
    return [k for k in set(a) | set(b) if k not in TIMES and a.get(k) != b.get(k)]


@pytest.mark.parametrize("method, extra", [("sgd_cr", dict(min_length=10, init="basic_tanh")), ("lstm_rmsprop", {})])
def test_a_larger_cap_continues_from_the_checkpoint(tmp_path, method, extra):
    """A resumable trial run to 30 updates, then rerun with max_iters 60, gives the row of one 60-update run, bit
    for bit (the curve, every error, the losses and norms); the rerun starts at 30; a checkpoint past a smaller cap
    is left alone and that run starts afresh."""
    spec = dict(
        task="temporal_order",
        length=14,
        method=method,
        seed=2,
        hidden=8,
        batch=4,
        lr=0.05,
        clip=1.0,
        max_iters=30,
        check_every=10,
        eval_samples=50,
        screen=True,
        track_every=10,
        track_samples=40,
        eval_chunk=20,
        one_bias=True,
        resumable=True,
        **extra,
    )
    spec.update({k: v for k, v in P.PUBLISHED.get(method, {}).items() if k != "hidden"})
    P._run_trial(spec, checkpoint_root=tmp_path / "a", checkpoint_seconds=0.0)
    resumed = P._run_trial({**spec, "max_iters": 60}, checkpoint_root=tmp_path / "a", checkpoint_seconds=0.0)
    whole = P._run_trial({**spec, "max_iters": 60}, checkpoint_root=tmp_path / "b", checkpoint_seconds=0.0)
    assert resumed["resumed_from"] == 30 and whole["resumed_from"] == 0 and whole["iters"] == 60
    assert len(whole["curve"]) == 6 and _same_rows(resumed, whole) == []
    short = P._run_trial({**spec, "max_iters": 20}, checkpoint_root=tmp_path / "a", checkpoint_seconds=0.0)
    fresh = P._run_trial({**spec, "max_iters": 20})
    assert short["resumed_from"] == 0 and _same_rows(short, fresh) == []


def _rows(out) -> list:
    return [json.loads(line) for line in (Path(out) / "trials.jsonl").read_text().splitlines()]


def _cli(out, *extra):
    return [
        sys.executable,
        "-m",
        "experiments.gradients",
        "pathological",
        "--protocol",
        "published",
        "--tasks",
        "adding",
        "--lengths",
        "30",
        "--methods",
        "lstm_rmsprop",
        "--num-seeds",
        "1",
        "--no-progress",
        "--workers",
        "1",
        "--checkpoint-seconds",
        "0",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume_is_the_uninterrupted_run(tmp_path):
    """The issue's survival test: a sweep killed with SIGKILL in the middle of a trial (after some checkpoints),
    then rerun with the same command, writes the row an uninterrupted run writes (times aside), bit for bit; the
    rerun continued from a checkpoint (resumed_from > 0) and lost at most one checkpoint interval."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ("--max-iters", "400")
    proc = subprocess.Popen(
        _cli(tmp_path / "killed", *args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        ckpts = tmp_path / "killed" / "checkpoints"
        deadline = time.time() + 300
        step = 0
        while time.time() < deadline and step < 60:
            time.sleep(0.2)
            files = list(ckpts.glob("*/checkpoint.npz"))
            if files:
                try:
                    with np.load(files[0]) as z:
                        step = json.loads(bytes(z["__meta__"]).decode())["step"]
                except (OSError, ValueError, KeyError):  # being replaced just now: read it at the next poll
                    step = 0
        assert proc.poll() is None, "the trial ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (tmp_path / "killed" / "trials.jsonl").exists()
    for out in ("killed", "whole"):
        assert (
            subprocess.run(_cli(tmp_path / out, *args), cwd=ROOT, env=env, capture_output=True, check=False).returncode
            == 0
        )
    (a,), (b,) = (_rows(tmp_path / out) for out in ("killed", "whole"))
    assert a["resumed_from"] >= 60 and b["resumed_from"] == 0 and a["iters"] == 400
    assert _same_rows(a, b) == []


def test_quick_resume_in_a_subprocess(tmp_path):
    """The CI form of the survival test: the command run to 20 updates, then rerun with --max-iters 40, writes the
    row of one 40-update run (times aside)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for out, caps in (("resumed", ("20", "40")), ("whole", ("40",))):
        for cap in caps:
            r = subprocess.run(
                _cli(tmp_path / out, "--max-iters", cap), cwd=ROOT, env=env, capture_output=True, text=True, check=False
            )
            assert r.returncode == 0, r.stderr[-2000:]
            assert "cost before compute: 1 trial(s)" in r.stdout
            cost = json.loads((tmp_path / out / "cost.json").read_text())["per_trial"][0]
            assert cost["resumed_from"] == (20 if cap == "40" and out == "resumed" else 0), (out, cap, cost)
    rows = {out: _rows(tmp_path / out) for out in ("resumed", "whole")}
    assert [r["max_iters"] for r in rows["resumed"]] == [20, 40] and rows["resumed"][1]["resumed_from"] == 20
    assert _same_rows(rows["resumed"][1], rows["whole"][0]) == []
    assert (tmp_path / "whole" / "learning_curves.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------------
# Cost before compute
# ---------------------------------------------------------------------------------------------------------------
def test_estimate_cost_closed_form():
    """Core-hours: Σ (cap × s/iteration + checked samples × s/sample); wall on W workers: at least max(total / W,
    the longest trial)."""
    specs = [
        dict(
            task="adding",
            length=50,
            method="sgd",
            seed=s,
            hidden=50,
            batch=20,
            max_iters=1000,
            check_every=20,
            eval_samples=100,
            screen=True,
            track_every=500,
            track_samples=1000,
        )
        for s in range(3)
    ]
    specs.append(dict(specs[0], method="lstm", max_iters=10_000))
    rates = {P._rate_key(s): ((0.002 if s["method"] == "sgd" else 0.05), 1e-4) for s in specs}
    cost = P.estimate_cost(specs, rates, workers=2)
    per = [1000 * 0.002 + 2 * 1000 * 1e-4] * 3 + [10_000 * 0.05 + 20 * 1000 * 1e-4]
    assert math.isclose(cost["core_hours"], sum(per) / 3600)
    assert math.isclose(cost["longest_trial_hours"], per[-1] / 3600)
    assert math.isclose(cost["wall_hours"], max(sum(per) / 2, per[-1]) / 3600)
    assert math.isclose(P.estimate_cost(specs, rates, workers=64)["wall_hours"], per[-1] / 3600)
    # a full test behind a clean screen is not in the sum (how many run is not known before): its cost is stated
    assert [r["test_seconds"] for r in cost["per_trial"]] == [100 * 1e-4] * 4
    big = dict(specs[0], eval_samples=10_000)  # 10,000 samples at 5 ms each: 50 s a test
    line = P.cost_line(P.estimate_cost([big], {P._rate_key(big): (0.002, 5e-3)}, workers=1))
    assert "plus up to 50 s for each full test, which runs only behind a clean screen" in line, line
    assert "at most" not in line, line
    unscreened = dict(specs[0], screen=False)
    one = P.estimate_cost([unscreened], rates, workers=1)
    assert math.isclose(one["core_hours"], (1000 * 0.002 + 50 * 100 * 1e-4) / 3600)
    assert one["max_test_seconds"] == 0.0 and "full test" not in P.cost_line(one)
    table = P.cost_table(cost)
    assert list(table.trials) == [1, 3] and math.isclose(table.core_hours.sum(), cost["core_hours"])
    assert list(table.s_per_test) == [100 * 1e-4] * 2
    # a trial whose checkpoint holds 400 of its 1,000 updates costs the other 600
    done = {trial_id(specs[0]): 400}
    resumed = P.estimate_cost(specs[:1], rates, workers=1, done=done)
    assert math.isclose(resumed["core_hours"], (600 * 0.002 + 1 * 1000 * 1e-4) / 3600)
    assert resumed["per_trial"][0]["resumed_from"] == 400 and resumed["per_trial"][0]["max_iters"] == 1000
    assert "1 continue from their checkpoints, 400 updates done" in P.cost_line(resumed)


def test_estimate_only_prints_the_cost_and_runs_nothing(tmp_path, capsys):
    assert (
        cli.main(
            [
                "pathological",
                "--protocol",
                "paper",
                "--estimate-only",
                "--no-progress",
                "--tasks",
                "adding",
                "--lengths",
                "50",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "cost before compute: 15 trial(s) to run" in out and "core-hours" in out
    assert not (tmp_path / "trials.jsonl").exists()
    cost = json.loads((tmp_path / "cost.json").read_text())
    assert cost["trials"] == 15 and {r["max_iters"] for r in cost["per_trial"]} == {5_000_000}
    assert cost["core_hours"] > 0 and "| adding |" in (tmp_path / "cost.md").read_text()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--min-length", "5"], "--min-length: expected an integer >= 10"),
        (["--checkpoint-seconds", "-1"], "--checkpoint-seconds: expected"),
        (["--init", "sigmoid"], "invalid choice"),
    ],
)
def test_bad_part_three_options_exit_2(tmp_path, capsys, argv, match):
    assert cli.main(["pathological", "--quick", "--no-progress", "--out", str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "trials.jsonl").exists()


def test_specs_record_the_settings_and_keep_older_ids():
    """A part-three option is in a spec only when set; the published methods take their authors' sizes."""
    p = P.select(
        P.PROTOCOLS["reduced"],
        min_length=10,
        init="basic_tanh",
        one_bias=True,
        resumable=True,
        lengths=[25],
        methods=["sgd", "irnn", "lstm_rmsprop"],
    )
    specs = P.specs_for(p)
    by = {s["method"]: s for s in specs if s["seed"] == 0 and s["task"] == "adding"}
    assert by["sgd"]["init"] == "basic_tanh" and "init" not in by["irnn"] and by["sgd"]["min_length"] == 10
    assert all(s["one_bias"] and s["resumable"] for s in specs)
    assert (by["lstm_rmsprop"]["hidden"], by["lstm_rmsprop"]["lr"], by["lstm_rmsprop"]["batch"]) == (128, 1e-3, 20)
    old = P.specs_for(P.PROTOCOLS["reduced"])[0]
    assert not {"min_length", "init", "one_bias", "resumable"} & set(old)


def test_learning_curves_plot_marks_the_published_points(tmp_path, monkeypatch):
    """One panel per (task, length); Arjovsky et al.'s LSTM marks on adding at their lengths, Pascanu et al.'s log
    on temporal order."""
    marks = []
    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda self, x, *a, **k: marks.append(("v", x)))
    df = pd.DataFrame(
        [
            dict(task="adding", length=100, method="lstm_rmsprop", solved=True, curve=[[500, 0.3], [1000, 0.0]]),
            dict(task="temporal_order", length=100, method="sgd_cr", solved=False, curve=[[500, 0.7], [1000, 0.5]]),
        ]
    )
    P.plot_curves(df, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    assert sorted(marks) == [("v", 1000), ("v", 5000)]
    assert P.PASCANU_SGDCR_LOG[-1] == (336_000, 0.0)
