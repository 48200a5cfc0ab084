"""The gradient experiments: their math against torch (the cliff's BPTT, one training step of the
pathological trials), the task generators against their definitions, the sweep engine's resume
and Dask paths, and every experiment's --quick run end to end (the CI version)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from experiments.gradients import __main__ as cli
from experiments.gradients import cliff, pathological, spectrum, sweep, tasks
from scratch_rnn.cells import cell_names
from tests.helpers import assert_close
from tests.sweep_trials import logged_trial


# --------------------------------------------------------------------------------------------
# The cliff: hand-written BPTT of x_t = w σ(x_{t-1}) + b against autograd
# --------------------------------------------------------------------------------------------
@given(w=st.floats(-8, 12), b=st.floats(-8, 4), steps=st.integers(1, 60), x0=st.floats(-1, 1), target=st.floats(-1, 1))
def test_cliff_gradient_matches_autograd(w, b, steps, x0, target):
    loss, dw, db = cliff.loss_and_grad(w, b, steps, x0, target)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    x = torch.tensor(x0, dtype=torch.float64)
    for _ in range(steps):
        x = wt * torch.sigmoid(x) + bt
    ref = (x - target) ** 2
    ref.backward()
    config = dict(w=w, b=b, steps=steps, x0=x0, target=target)
    assert_close(loss, ref.item(), name="cliff loss", config=config)
    assert_close(np.array([dw, db]), np.array([wt.grad.item(), bt.grad.item()]), name="cliff gradient", config=config)


def test_cliff_wall_is_steep_and_clipping_bounds_the_step():
    cfg = cliff.CliffConfig(iters=150, starts=((6.5, -5.0),))
    plain = cliff.descend(cfg, cfg.starts[0], None)
    clipped = cliff.descend(cfg, cfg.starts[0], cfg.clip)
    step = lambda p: np.hypot(np.diff(p.w), np.diff(p.b))  # noqa: E731
    assert step(clipped).max() <= cfg.lr * cfg.clip * (1 + 1e-12)
    assert plain.grad_norm.max() > 100 * np.median(plain.grad_norm)  # it hits the wall
    assert step(plain).max() > 100 * cfg.lr * cfg.clip  # and is thrown


# --------------------------------------------------------------------------------------------
# Task generators (Pascanu et al.'s definitions)
# --------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(10, 120), batch=st.integers(1, 8))
def test_adding_batch_follows_the_definition(seed, length, batch):
    x, y = tasks.adding_batch(np.random.default_rng(seed), batch, length)
    steps = x.shape[0]
    assert length <= steps < length + max(1, int(0.1 * length)) and x.shape[1:] == (batch, 2)
    for b in range(batch):
        marks = np.flatnonzero(x[:, b, 0])
        assert marks.size == 2, (seed, length, b)
        p0, p1 = marks
        assert p0 < int(0.1 * steps) and int(0.1 * steps) <= p1 < int(0.5 * steps)
        assert y[b, 0] == pytest.approx((x[p0, b, 1] + x[p1, b, 1]) / 2, abs=1e-15)
    assert np.all((x[:, :, 1] >= 0) & (x[:, :, 1] < 1))


@given(seed=st.integers(0, 2**31 - 1), length=st.integers(10, 120), batch=st.integers(1, 8))
def test_temporal_order_batch_follows_the_definition(seed, length, batch):
    x, y = tasks.temporal_order_batch(np.random.default_rng(seed), batch, length)
    assert x.shape == (length, batch, 6) and np.all(x.sum(axis=2) == 1)
    sym = x.argmax(axis=2)  # (T, B)
    for b in range(batch):
        rel = np.flatnonzero(sym[:, b] < 2)  # the two relevant symbols A/B
        assert rel.size == 2
        p0, p1 = rel
        assert int(0.1 * length) <= p0 < 2 * int(0.1 * length)
        assert int(0.5 * length) <= p1 < int(0.5 * length) + int(0.1 * length)
        assert y[b] == sym[p0, b] + 2 * sym[p1, b]


def test_task_errors_and_bad_arguments():
    pred = np.array([[0.5], [0.7]])
    target = np.array([[0.5 + 0.19], [0.7 + 0.21]])  # squared errors 0.0361 and 0.0441
    np.testing.assert_array_equal(tasks.sample_errors("adding", pred, target), [False, True])
    np.testing.assert_array_equal(
        tasks.sample_errors("temporal_order", np.eye(4)[[0, 3]], np.array([0, 2])), [False, True]
    )
    with pytest.raises(ValueError, match="length: expected an integer >= 10"):
        tasks.adding_batch(np.random.default_rng(0), 2, 9)
    with pytest.raises(ValueError, match="task: expected one of"):
        tasks.make_batch("copy", np.random.default_rng(0), 2, 20)


# --------------------------------------------------------------------------------------------
# One training step of a pathological trial against torch (nn.RNN + nn.Linear + loss + clip + SGD)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,method", [("adding", "sgd"), ("adding", "irnn"), ("temporal_order", "irnn")])
def test_train_step_matches_torch(task, method):
    """One step of a trial's Trainer (SGD; for irnn their code's 'rescale' clipping c·g/‖g‖, part three) against
    nn.RNN + nn.Linear on h_n (the fallback regime is held to torch below with SGD-CR's)."""
    seed, hidden, length, clip = 3, 6, 12, 0.05
    model = pathological.build(task, method, hidden, seed)
    # randomise what the init zeroes, so that every gradient is exercised
    rng = np.random.default_rng(seed)
    for p in model.parameters().values():
        p += rng.normal(0, 0.1, p.shape)
    rnn = model.rnn
    twin = torch.nn.RNN(rnn.input_size, hidden, nonlinearity=rnn.nonlinearity, dtype=torch.float64)
    lin = torch.nn.Linear(hidden, model.head.weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            module, name = (twin, k[4:]) if k.startswith("rnn.") else (lin, k[5:])
            getattr(module, name).copy_(torch.tensor(v))
    x, y = tasks.make_batch(task, np.random.default_rng(seed + 1), 5, length)
    spec = dict(task=task, method=method, length=length, clip=clip, lr=0.1, max_iters=1, check_every=1, eval_samples=10)
    trainer = pathological.trial_trainer(spec, model, np.random.default_rng(0))
    (rec,) = trainer.train_batch(pathological.batch_first(x), y)

    _, h_n = twin(torch.tensor(x))
    out = lin(h_n[0])
    ref_loss = (
        torch.nn.functional.mse_loss(out, torch.tensor(y))
        if task == "adding"
        else torch.nn.functional.cross_entropy(out, torch.tensor(y))
    )
    ref_loss.backward()
    tparams = {
        **{f"rnn.{k}": v for k, v in twin.named_parameters()},
        **{f"head.{k}": v for k, v in lin.named_parameters()},
    }
    clipped = method != "sgd"
    ref_norm = torch.nn.utils.clip_grad_norm_(list(tparams.values()), float("inf"))  # the norm alone
    if clipped and ref_norm > clip:  # RNN.py's rescale: c·g/‖g‖ (torch's clip_grad_norm_ adds 1e-6 to ‖g‖)
        for v in tparams.values():
            v.grad.mul_(clip / ref_norm)
    torch.optim.SGD(list(tparams.values()), lr=0.1).step()
    config = dict(task=task, method=method, seed=seed, clip=clip if clipped else None)
    assert_close(rec.loss, ref_loss.item(), name="loss", config=config)
    assert_close(rec.grad_norm, ref_norm.item(), name="pre-clip gradient norm", config=config)
    assert (rec.grad_norm > clip) == clipped or not clipped  # the clipping path is exercised
    for k, v in tparams.items():
        assert_close(model.parameters()[k], v.detach().numpy(), name=f"{k} after one step", config=config)


# --------------------------------------------------------------------------------------------
# The sweep engine
# --------------------------------------------------------------------------------------------
def test_sweep_resumes_and_never_reruns_a_finished_trial(tmp_path):
    log = str(tmp_path / "calls.log")
    Path(log + ".fail").touch()
    specs = [dict(k=k, log=log, fail_at=3) for k in range(6)]
    table = tmp_path / "trials.jsonl"
    with pytest.raises(RuntimeError, match="trial 3 interrupted"):
        sweep.run_sweep(logged_trial, specs, table, workers=1, progress=False)
    first = {r["k"] for r in sweep.load_results(table)}
    assert 3 not in first and {0, 1, 2} <= first  # in order with one worker; the failure stopped it
    Path(log + ".fail").unlink()
    with open(table, "a") as f:
        f.write('{"trial_id": "cut mid-wri')  # a line cut by a crash: ignored, not fatal
    df = sweep.run_sweep(logged_trial, specs, table, workers=2, progress=False)
    assert sorted(df.k) == list(range(6)) and list(df.sort_values("k").square) == [k * k for k in range(6)]
    calls = pd.Series([int(v) for v in Path(log).read_text().split()]).value_counts()
    for k in first:
        assert calls[k] == 1, f"finished trial {k} ran {calls[k]} times"
    again = sweep.run_sweep(logged_trial, specs, table, workers=2, progress=False)  # nothing left to run
    assert len(again) == 6 and pd.Series([int(v) for v in Path(log).read_text().split()]).size == calls.sum()


def test_sweep_runs_on_a_dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    specs = [dict(k=k, log=str(tmp_path / "calls.log")) for k in range(4)]
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        df = sweep.run_sweep(logged_trial, specs, tmp_path / "dask.jsonl", scheduler=client, progress=False)
        by_address = sweep.run_sweep(
            logged_trial,
            specs + [dict(k=9, log=specs[0]["log"])],
            tmp_path / "dask.jsonl",
            scheduler=cluster.scheduler_address,
            progress=False,
        )
    assert sorted(df.k) == [0, 1, 2, 3] and sorted(by_address.k) == [0, 1, 2, 3, 9]
    assert sorted(int(v) for v in Path(specs[0]["log"]).read_text().split()) == [0, 1, 2, 3, 9]


# --------------------------------------------------------------------------------------------
# Every experiment's --quick run, end to end
# --------------------------------------------------------------------------------------------
def _files(path: Path) -> set:
    return {p.name for p in path.iterdir()}


def test_spectrum_quick(tmp_path):
    assert cli.main(["spectrum", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    assert {
        "spectrum.csv",
        "curves.csv",
        "transition.csv",
        "summary.json",
        "report.md",
        "grad_norm_vs_distance.png",
        "rate_vs_lambda.png",
    } <= _files(tmp_path)
    df = pd.read_csv(tmp_path / "spectrum.csv")
    assert (df.max_product_over_bound <= 1 + 1e-9).all() and (df.max_grad_over_bound <= 1 + 1e-9).all()
    assert (df.fit_log_rate <= df.bound_log_rate + 1e-9).all()  # measured rates never beat the bound
    assert not json.loads((tmp_path / "summary.json").read_text())["bound_ever_exceeded"]


def test_cliff_quick(tmp_path):
    assert cli.main(["cliff", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    assert {
        "surface.csv",
        "paths.csv",
        "descent_summary.csv",
        "cliff.png",
        "descent.png",
        "report.md",
        "summary.json",
    } <= _files(tmp_path)
    s = pd.read_csv(tmp_path / "descent_summary.csv")
    assert (s[s.method == "clipped"].max_step <= cliff.QUICK.lr * cliff.QUICK.clip * (1 + 1e-12)).all()


def test_pathological_quick_and_resume(tmp_path):
    assert cli.main(["pathological", "--quick", "--no-progress", "--workers", "2", "--out", str(tmp_path)]) == 0
    assert {
        "trials.jsonl",
        "trials.csv",
        "success.csv",
        "success_vs_length.png",
        "report.md",
        "summary.json",
    } <= _files(tmp_path)
    p = pathological.PROTOCOLS["quick"]
    df = pd.read_csv(tmp_path / "trials.csv")
    assert len(df) == len(p.tasks) * len(p.lengths) * len(p.methods) * len(p.seeds)
    before = (tmp_path / "trials.jsonl").read_text()
    assert cli.main(["pathological", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0  # all done: no new trial
    assert (tmp_path / "trials.jsonl").read_text() == before


def test_flow_quick(tmp_path):
    pytest.importorskip("experiments.sentiment.text")
    from experiments.sentiment import data as sdata

    try:
        sdata.resolve_source(None)
    except (FileNotFoundError, ValueError) as exc:  # no IMDB copy on this machine
        pytest.skip(f"IMDB data not found: {exc}")
    assert cli.main(["flow", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    assert {"flow.csv", "curves.csv", "flow.png", "report.md", "summary.json", "jobs.jsonl"} <= _files(tmp_path)
    df = pd.read_csv(tmp_path / "flow.csv")
    assert len(df) == 4 + 2 and df.init_factor.between(0, 10).all()  # 2 inits × 2 nonlinearities, LSTM, GRU
    assert sorted(df.cell.unique()) == ["gru", "lstm", "rnn"] and df[df.cell != "rnn"].lambda1_init.isna().all()
    jobs = (tmp_path / "jobs.jsonl").read_text()
    assert cli.main(["flow", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0  # resumes: no model retrained
    assert (tmp_path / "jobs.jsonl").read_text() == jobs
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "flow.csv"), df)


def test_cli_lists_every_experiment():
    assert cli.main(["nope"]) == 2  # argparse's error, under the exit-code table
    assert set(cli.EXPERIMENTS) == {"spectrum", "cliff", "pathological", "flow"}


@pytest.mark.parametrize("method", ["sgd_cr", "sgd_clip", "irnn"])
@pytest.mark.parametrize("task", ["adding", "temporal_order"])
@pytest.mark.parametrize("scale, regime", [(0.1, "rescale"), (1e-4, "no clip"), (1e12, "fallback")])
def test_sgd_cr_step_is_the_authors_update(task, scale, regime, method):
    """One SGD-CR step: the loss gradient from torch autograd (nn.RNN + nn.Linear on h_n), α·∂Ω/∂W_hh of the
    code form from its torch twin, then their 'rescale' clipping at c (c·g/‖g‖) or, past 1e10, their fallback
    (pascanur/trainingRNNs RNN.py l. 224-243). sgd_clip and irnn: the same step without Ω (their alpha = 0; part
    three puts the fallback in every clipped method)."""
    from reference.regularizers import omega_twin

    seed, hidden, length = 4, 5, 12
    c = 1e4 if regime == "no clip" else (1.0 if method == "sgd_cr" else 0.1)  # without Ω the norm is smaller
    model = pathological.build(task, method, hidden, seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters().values():
        p += rng.normal(0, 0.3, p.shape)
    x, y = tasks.make_batch(task, np.random.default_rng(seed + 1), 6, length)
    spec = dict(task=task, method=method, length=length, clip=c, lr=0.1, max_iters=1, check_every=1, eval_samples=10)
    trainer = pathological.trial_trainer(spec, model, np.random.default_rng(0))
    model.parameters()["head.weight"][...] *= scale  # small, moderate or huge gradients: each regime
    before = model.state_dict()
    (rec,) = trainer.train_batch(pathological.batch_first(x), y)

    rnn = torch.nn.RNN(
        2 if task == "adding" else 6, hidden, dtype=torch.float64, nonlinearity="relu" if method == "irnn" else "tanh"
    )
    lin = torch.nn.Linear(hidden, model.head.weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for k, v in before.items():
            module, name = (rnn, k[4:]) if k.startswith("rnn.") else (lin, k[5:])
            getattr(module, name).copy_(torch.tensor(v))
    _, h_n = rnn(torch.tensor(x))
    h_n.retain_grad()
    pred = lin(h_n[0])
    loss = (
        torch.nn.functional.mse_loss(pred, torch.tensor(y))
        if task == "adding"
        else torch.nn.functional.cross_entropy(pred, torch.tensor(y))
    )
    loss.backward()
    g = {
        **{f"rnn.{k}": v.grad.numpy().copy() for k, v in rnn.named_parameters()},
        **{f"head.{k}": v.grad.numpy().copy() for k, v in lin.named_parameters()},
    }
    shadow = pathological.build(task, "sgd_cr", hidden, seed)
    shadow.rnn.load_state_dict({k[4:]: v for k, v in before.items() if k.startswith("rnn.")})
    omega = omega_twin(shadow.rnn, pathological.batch_first(x), None, None, h_n.grad.numpy(), form="code")
    alpha = pathological.CR_ALPHA if method == "sgd_cr" else 0.0
    g["rnn.weight_hh_l0"] = g["rnn.weight_hh_l0"] + alpha * omega["grads"]["weight_hh_l0"]
    norm = np.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
    if not np.isfinite(norm) or norm > pathological.CR_FALLBACK_NORM:
        step = {k: np.zeros_like(v) for k, v in g.items()}
        step["rnn.weight_hh_l0"] = 0.02 * before["rnn.weight_hh_l0"]
        assert regime == "fallback"
    else:
        step = {k: v * (c / norm if norm > c else 1.0) for k, v in g.items()}
        assert (norm > c) == (regime == "rescale")
    config = dict(task=task, method=method, regime=regime, norm=norm)
    assert_close(rec.grad_norm, norm, name="recorded norm (Ω included)", config=config)
    for k, v in before.items():
        assert_close(model.parameters()[k], v - 0.1 * step[k], name=f"{k} after one SGD-CR step", config=config)


@pytest.mark.parametrize("method", pathological.ALL_METHODS)
def test_each_method_builds_the_cell_it_names(method):
    """The model a trial builds is the cell its method's paper trains (the oracle: the papers' recipes, restated
    here; METHOD_CELL is where the code states them once)."""
    from scratch_rnn.cells import cell_spec

    papers = {"lstm": "lstm", "lstm_rmsprop": "lstm", "gru": "gru", "indrnn": "indrnn"}  # the rest: the tanh/relu RNN
    model = pathological.build("adding", method, hidden=4, seed=0, length=20)
    expected = cell_spec(papers.get(method, "rnn")).model_class()
    assert type(model.rnn) is expected, (method, expected, type(model.rnn))


@pytest.mark.parametrize("method", ["sgd_cr", "lstm", "gru"])
def test_part_two_methods_run_a_trial(method):
    spec = dict(
        task="adding",
        length=10,
        method=method,
        seed=0,
        hidden=8,
        batch=5,
        lr=0.01,
        clip=1.0,
        max_iters=20,
        check_every=10,
        eval_samples=50,
    )
    res = pathological._run_trial(spec)
    assert res["iters"] == 20 and not res["diverged"] and 0 <= res["best_error"] <= 1


# --------------------------------------------------------------------------------------------
# The budget protocol's checks: the free screen, then the real test on 10,000 fresh samples
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["adding", "temporal_order"])
def test_screen_scores_each_training_batch_before_its_update(task):
    """Screen's count against a recomputation: each step's prediction is the model *before* that step's update
    on the batch it was trained on (a replay of the same steps on a copy gives the oracle)."""
    spec = dict(
        task=task,
        length=10,
        method="sgd_clip",
        seed=1,
        hidden=6,
        batch=7,
        lr=0.5,
        clip=1.0,
        max_iters=6,
        check_every=3,
        eval_samples=10,
        screen=True,
        track_every=3,
        track_samples=10,
        eval_chunk=5,
    )
    model = pathological.build(task, "sgd_clip", 6, 1)
    shadow = pathological.build(task, "sgd_clip", 6, 1)
    source = pathological.FreshBatches(task, 10, 7, np.random.default_rng(5), 3)
    trainer = pathological.trial_trainer(spec, model, np.random.default_rng(0), source)
    screens = []
    trainer.evaluate = lambda m, take=trainer.callback.take: screens.append(take()) or {"error": None}
    trainer.stop_when = None
    trainer.fit(source)
    replay = pathological.trial_trainer({**spec, "screen": False}, shadow, np.random.default_rng(0))
    wrong, expected = 0, []
    for i, (x, y, _) in enumerate(pathological.FreshBatches(task, 10, 7, np.random.default_rng(5), 6).batches(0)):
        shadow.eval()
        out, _ = shadow(x)
        shadow.train()
        wrong += int(tasks.sample_errors(task, out, y).sum())
        replay.train_batch(x, y)
        if (i + 1) % 3 == 0:
            expected.append(wrong / 21)
            wrong = 0
    assert screens == expected and len(screens) == 2
    assert not np.isclose(model.head.weight, pathological.build(task, "sgd_clip", 6, 1).head.weight).all()


def test_screened_trial_tests_only_a_clean_screen_and_solves_only_on_the_full_test(monkeypatch):
    """The fresh-sample test runs exactly when the screen saw no wrong sample; the trial stops (solved) only when
    that test, on eval_samples fresh samples, finds none wrong; tracking runs every track_every steps otherwise."""
    screens = iter([0.05, 0.0, 0.0, 0.1, 0.0])  # 0.05: one wrong sample in 20 is not clean
    tests = iter([0.001, 0.0])  # the first clean screen fails the full test, the second passes it
    calls = []

    def fake_evaluate(task, model, rng, samples, length, chunk=1000, min_length=None):
        calls.append(samples)
        return 0.3

    def fake_count(task, model, rng, samples, length, chunk=1000, min_length=None, *, stop_at_wrong=False):
        calls.append(samples)
        assert not stop_at_wrong  # one running generator: every test is scored whole
        return round(next(tests) * samples), samples

    monkeypatch.setattr(pathological.Screen, "take", lambda self: next(screens))
    monkeypatch.setattr(pathological, "evaluate", fake_evaluate)
    monkeypatch.setattr(pathological, "count_wrong", fake_count)
    spec = dict(
        task="adding",
        length=10,
        method="irnn",
        seed=0,
        hidden=4,
        batch=3,
        lr=0.01,
        clip=1.0,
        max_iters=200,
        check_every=2,
        eval_samples=10_000,
        screen=True,
        track_every=8,
        track_samples=50,
        eval_chunk=250,
    )
    res = pathological._run_trial(spec)
    # checks at steps 2 (dirty), 4 (clean: test 0.001), 6 (clean: test 0), stop
    assert calls == [10_000, 10_000] and res["solved"] and res["solved_at"] == 6 and res["tests"] == 2
    assert res["iters"] == 6 and res["best_error"] == 0.0 and res["final_error"] == 0.0

    screens = iter([0.05] * 100)
    calls.clear()
    res = pathological._run_trial({**spec, "max_iters": 20})
    # never clean: no test; tracking at steps 8, 16 and at the end (20)
    assert calls == [50, 50, 50] and not res["solved"] and res["solved_at"] is None and res["tests"] == 0
    assert res["iters"] == 20 and res["best_error"] == 0.3


def test_budget_protocol_grid():
    """The budget grid: every method at every length but the paper-form SGD-CR row (one length), dearest first."""
    p = pathological.PROTOCOLS["budget"]
    specs = pathological.specs_for(p)
    per_cell = len(p.tasks) * len(p.seeds)
    assert len(specs) == per_cell * (len(p.lengths) * (len(p.methods) - 1) + 1)
    assert set(p.methods) == set(pathological.PART_TWO_METHODS)
    assert {s["length"] for s in specs if s["method"] == "sgd_cr_exact"} == {50}
    assert specs[0]["length"] == 200 and specs[0]["method"] == "lstm" and specs[-1]["length"] == 50
    assert all(s["eval_samples"] == 10_000 and s["check_every"] == 20 and s["screen"] for s in specs)
    assert len({sweep.trial_id(s) for s in specs}) == len(specs)
    # the older protocols' trial ids do not change (their tables stay resumable)
    assert "screen" not in pathological.specs_for(pathological.PROTOCOLS["reduced"])[0]


def test_pathological_budget_quick_cli(tmp_path):
    assert (
        cli.main(
            [
                "pathological",
                "--protocol",
                "budget",
                "--quick",
                "--no-progress",
                "--tasks",
                "adding",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    df = pd.read_csv(tmp_path / "trials.csv")
    p = pathological.PROTOCOLS["budget-quick"]
    assert len(df) == len(p.seeds) * (len(p.lengths) * (len(p.methods) - 1) + 1)
    assert (df.iters == p.max_iters).all() and (df.train_seconds > 0).all() and (df.eval_seconds > 0).all()
    assert "Where the time went" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("cell", list(cell_names()) + list(spectrum.VARIANTS))
def test_cell_jacobian_products_are_bptt(cell):
    """The spectrum's products of per-step state Jacobians, applied to the cotangent on h_T, are what BPTT gives:
    dL/dh_(T-n) from the model's own backward at every distance n; for the LSTM, whose state is (h, c), the c part
    is ∂L/∂c_(T-n) with h_(T-n) held: BPTT's cell gradient of the next step times its forget gate (0 at n = 0)."""
    from scratch_rnn.cells.loops import input_projection
    from scratch_rnn.cells.lstm import lstm_step_forward

    cfg = replace(spectrum.QUICK, hidden=5, input_size=3, steps=9, batch=4)
    _, row, prods, model, x, g = spectrum.cell_products(cfg, cell, seed=7)
    H, T = cfg.hidden, cfg.steps
    lstm = "lstm" in cell
    cot = np.concatenate([g, np.zeros_like(g)], axis=1) if lstm else g
    if lstm:  # the forget gates along the trajectory
        p = model.parameters()
        xp = input_projection(x, p["weight_ih_l0"], p["bias_ih_l0"] + p["bias_hh_l0"])
        h, c, forget = np.zeros((cfg.batch, H)), np.zeros((cfg.batch, H)), []
        for t in range(T):
            h, c, step = lstm_step_forward(xp[t], h, c, p["weight_hh_l0"])
            forget.append(step.gates[:, H : 2 * H])
    for n in range(T):
        through = np.einsum("bs,bst->bt", cot, prods[n])  # cot · ∂s_T/∂s_(T-n)
        config = dict(cell=cell, distance=n)
        assert_close(through[:, :H], model.hidden_grads[0, T - 1 - n], name="dL/dh_(T-n)", config=config)
        if lstm:
            expected = np.zeros_like(g) if n == 0 else model.cell_grads[0, T - n] * forget[T - n]
            assert_close(through[:, H:], expected, name="∂L/∂c_(T-n), h held", config=config)
    assert row["state_size"] == (2 * H if "lstm" in cell else H)
    if cell == "lstm_fb1":
        assert (model.parameters()["bias_ih_l0"][H : 2 * H] == 1).all()
