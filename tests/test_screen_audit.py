"""The screen's audit (``--audit-screen``, issue 21 item 5): every check of a screened trial also evaluates the full
fresh-sample test from its own generator. It observes and decides nothing: the trial's trajectory is the unaudited
one, bit for bit; its full_error is the test of the model at that check; the trial row counts the checks where the
full test found no sample wrong but the screen was not clean (the screen's misses)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.gradients import __main__ as cli
from experiments.gradients import pathological as P
from experiments.gradients import sweep, tasks

# temporal order at length 10: clipped SGD solves it within a few hundred updates, so the trial runs screens that
# fail and pass, fresh-sample tests, tracking samples and a solve
SPEC = dict(
    task="temporal_order",
    length=10,
    method="sgd_clip",
    seed=0,
    hidden=50,
    batch=20,
    lr=0.01,
    clip=1.0,
    max_iters=400,
    check_every=20,
    eval_samples=2000,
    screen=True,
    track_every=40,
    track_samples=100,
    eval_chunk=250,
)
# the IRNN at 5 updates a check: 4 clean screens whose test fails (tracking after them), then the solve at 1,115
IRNN_SPEC = {**SPEC, "method": "irnn", "check_every": 5, "track_every": 10, "max_iters": 1500, "eval_samples": 500}


def _fit(spec):
    """The trial's trainer after its run (a running check generator: a draw the audit took from it would shift
    every later test and tracking sample)."""
    _, source, trainer = P._trial_parts(spec)
    trainer.fit(source)
    return trainer


DECISION = ("step", "screen_error", "test_error", "track_error", "error")


def test_the_audit_leaves_the_trial_as_it_was():
    """With and without the audit: the same losses, norms, check rows, stop and final parameters, bit for bit."""
    plain, audited = _fit(IRNN_SPEC), _fit({**IRNN_SPEC, "audit_screen": True})
    assert plain.stop_reason == "stop_when" == audited.stop_reason and plain.step == audited.step
    np.testing.assert_array_equal(plain.losses, audited.losses)
    np.testing.assert_array_equal(plain.grad_norms, audited.grad_norms)
    assert [{k: r[k] for k in DECISION} for r in plain.epochs] == [{k: r[k] for k in DECISION} for r in audited.epochs]
    for name, value in plain.model.state_dict().items():
        np.testing.assert_array_equal(value, audited.model.state_dict()[name], err_msg=name)
    assert all("full_error" not in r for r in plain.epochs) and all("full_error" in r for r in audited.epochs)
    # the comparison is not vacuous: tests ran (a failed one among them), tracking ran after them, and it solved
    tests_run = [r["test_error"] for r in plain.epochs if r["test_error"] is not None]
    assert len(tests_run) >= 2 and tests_run[-1] == 0.0 and any(t > 0 for t in tests_run) and plain.step == 1115
    first_test = next(i for i, r in enumerate(plain.epochs) if r["test_error"] is not None)
    assert any(r["track_error"] is not None for r in plain.epochs[first_test:])


def test_full_error_is_the_test_of_the_model_at_that_check():
    """Each audited check's full_error equals eval_samples fresh samples from default_rng([seed, 3, step]) scored on
    the model rebuilt by an unaudited run stopped at that step."""
    trainer = _fit({**SPEC, "audit_screen": True})
    rows = {r["step"]: r for r in trainer.epochs}
    picks = [20, 120, trainer.step]  # early, middle and the solving check
    for step in picks:
        shadow = _fit({**SPEC, "max_iters": step})
        assert shadow.step == step
        rng = np.random.default_rng([SPEC["seed"], 3, step])
        wrong = 0
        for _ in range(SPEC["eval_samples"] // SPEC["eval_chunk"]):  # scored by hand, chunk by chunk
            x, y = tasks.make_batch(SPEC["task"], rng, SPEC["eval_chunk"], SPEC["length"])
            shadow.model.eval()
            out, _ = shadow.model(P.batch_first(x))
            wrong += int(tasks.sample_errors(SPEC["task"], out, y).sum())
        assert rows[step]["full_error"] == wrong / SPEC["eval_samples"], step
    assert len({rows[s]["full_error"] for s in picks}) == len(picks)  # the checks differ: not one constant


def _scripted(monkeypatch, screens, tests, audits, **kw):
    """A trial whose screen, tests and audits return the scripted errors in turn (tracking: 0.3)."""
    screens, tests, audits = iter(screens), iter(tests), iter(audits)
    audit_stream = object()

    def fake_evaluate(task, model, rng, samples, length, chunk=1000, min_length=None):
        if rng is audit_stream:
            return next(audits)
        return next(tests) if samples == 10_000 else 0.3

    monkeypatch.setattr(P.Screen, "take", lambda self: next(screens))
    monkeypatch.setattr(P, "evaluate", fake_evaluate)
    monkeypatch.setattr(P, "_audit_rng", lambda seed, step: audit_stream)
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
        audit_screen=True,
    )
    return P._run_trial({**spec, **kw})


def test_a_full_solve_behind_a_dirty_screen_is_a_miss(monkeypatch):
    """Steps 2, 4, 6, 8: the full check finds none wrong from step 4 on; at 4 the screen had a wrong sample (a miss),
    at 6 it was clean but its own test found one wrong (a test miss), at 8 screen and test pass: solved there."""
    res = _scripted(monkeypatch, [0.05, 0.05, 0.0, 0.0], [0.001, 0.0], [0.3, 0.0, 0.0, 0.0])
    assert res["solved_at"] == 8 and res["iters"] == 8 and res["tests"] == 2
    assert (res["audit_checks"], res["audit_full_zero"], res["audit_full_solved_at"]) == (4, 3, 4)
    assert (res["audit_misses"], res["audit_test_misses"], res["audit_solve_delay"]) == (1, 1, 4)


def test_the_audit_decides_nothing(monkeypatch):
    """A full check with no wrong sample never stops a trial whose screen stays dirty (every one a miss, no solve),
    and a full check with wrong samples never keeps a trial from stopping where its screen and test pass."""
    res = _scripted(monkeypatch, [0.05] * 5, [], [0.0] * 5, max_iters=10)
    assert not res["solved"] and res["iters"] == 10 and res["solved_at"] is None
    assert (res["audit_checks"], res["audit_misses"], res["audit_full_solved_at"]) == (5, 5, 2)
    assert res["audit_solve_delay"] is None and res["audit_test_misses"] == 0
    res = _scripted(monkeypatch, [0.0], [0.0], [0.5])
    assert res["solved_at"] == 2 and res["audit_full_solved_at"] is None and res["audit_solve_delay"] is None
    assert (res["audit_checks"], res["audit_full_zero"], res["audit_misses"]) == (1, 0, 0)


def test_the_option_is_recorded_only_when_set_and_needs_a_screen():
    p = P.PROTOCOLS["budget-quick"]
    assert "audit_screen" not in P.specs_for(p)[0]  # the part-two tables stay resumable: their ids are unchanged
    specs = P.specs_for(P.select(p, audit_screen=True))
    assert all(s["audit_screen"] for s in specs)
    assert {sweep.trial_id(s) for s in specs}.isdisjoint(sweep.trial_id(s) for s in P.specs_for(p))
    with pytest.raises(ValueError, match="audit_screen: audits the checks of a screened protocol"):
        P.specs_for(P.select(P.PROTOCOLS["reduced"], audit_screen=True))
    with pytest.raises(ValueError, match="audit_screen: audits the checks of a screened trial"):
        P._trial_parts({**SPEC, "screen": False, "audit_screen": True})


def test_the_estimate_counts_the_audit():
    """Each check of an audited trial adds eval_samples evaluated samples to the estimate."""
    spec = {**SPEC, "max_iters": 100}
    rates = {P._rate_key(spec): (1e-3, 1e-5)}
    plain = P.estimate_cost([spec], rates, 1)["per_trial"][0]["seconds"]
    audited = P.estimate_cost([{**spec, "audit_screen": True}], rates, 1)["per_trial"][0]["seconds"]
    assert audited - plain == pytest.approx(5 * 2000 * 1e-5)


def test_audit_cli(tmp_path, capsys):
    """--audit-screen on a screened protocol writes the audit into every row and the report; on an unscreened one it
    exits 2 before any work."""
    out = tmp_path / "a"
    argv = ["pathological", "--protocol", "budget", "--quick", "--no-progress", "--tasks", "adding"]
    argv += ["--lengths", "50", "--methods", "sgd", "--audit-screen", "--out", str(out)]
    assert cli.main(argv) == 0
    df = pd.read_csv(out / "trials.csv")
    checks = P.PROTOCOLS["budget-quick"].max_iters // P.PROTOCOLS["budget-quick"].check_every
    assert len(df) == 1 and (df.audit_checks == checks).all() and df.audit_screen.all()
    assert "The screen's audit" in (out / "report.md").read_text()
    bad = tmp_path / "b"
    assert cli.main(["pathological", "--quick", "--no-progress", "--audit-screen", "--out", str(bad)]) == 2
    assert "--audit-screen: audits the screen of a screened protocol" in capsys.readouterr().err
    assert not (bad / "trials.jsonl").exists()


def test_audit_table_miss_rate():
    """The report's line: misses over the checks whose full test found none wrong, with the Wilson interval."""
    df = pd.DataFrame(
        [
            dict(task="t", length=10, method="m", seed=0, audit_checks=9, audit_full_zero=4, audit_full_solved_at=60,
                 solved_at=140, audit_solve_delay=80, audit_misses=3, audit_test_misses=0),
            dict(task="t", length=10, method="m", seed=1, audit_checks=5, audit_full_zero=1, audit_full_solved_at=100,
                 solved_at=100, audit_solve_delay=0, audit_misses=0, audit_test_misses=0),
        ]
    )  # fmt: skip
    table, line = P.audit_table(df)
    low, high = P.wilson_interval(3, 5)
    assert len(table) == 2 and "missed 3 of the 5 checks" in line and f"[{low:.1%}, {high:.1%}]" in line
