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
        assert samples != 10_000, "the test goes through count_wrong"
        return 0.3

    def fake_count(task, model, rng, samples, length, chunk=1000, min_length=None, *, stop_at_wrong=False):
        assert samples == 10_000 and not stop_at_wrong  # one running generator: every test is scored whole
        return round(next(tests) * samples), samples

    monkeypatch.setattr(P.Screen, "take", lambda self: next(screens))
    monkeypatch.setattr(P, "evaluate", fake_evaluate)
    monkeypatch.setattr(P, "count_wrong", fake_count)
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


# ---------------------------------------------------------------------------------------------------------------
# A failing test stops at its first wrong chunk (per-check generators only)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_count_wrong_stops_at_the_first_wrong_chunk(seed):
    """count_wrong against chunks scored by hand from the same generator: whole, the sum over all chunks; with
    stop_at_wrong, the chunks up to and including the first with a wrong sample."""
    task, length, chunk, samples = "temporal_order", 10, 1, 30
    model = P.build(task, "sgd_clip", 6, seed, length=length)
    model.eval()
    rng = np.random.default_rng([seed, 9])
    per_chunk = []
    for _ in range(samples // chunk):
        x, y = tasks.make_batch(task, rng, chunk, length)
        out, _ = model(P.batch_first(x))
        per_chunk.append(int(tasks.sample_errors(task, out, y).sum()))
    model.train()
    first = next((i for i, w in enumerate(per_chunk) if w), len(per_chunk) - 1)
    whole = P.count_wrong(task, model, np.random.default_rng([seed, 9]), samples, length, chunk)
    early = P.count_wrong(task, model, np.random.default_rng([seed, 9]), samples, length, chunk, stop_at_wrong=True)
    assert whole == (sum(per_chunk), samples), per_chunk
    assert early == (sum(per_chunk[: first + 1]), chunk * (first + 1)), per_chunk
    assert P.evaluate(task, model, np.random.default_rng([seed, 9]), samples, length, chunk) == sum(per_chunk) / samples


def test_some_model_has_its_first_wrong_sample_past_the_first_chunk():
    """The test above is not vacuous: for some seed the early stop skips chunks and keeps more than one."""
    stops = set()
    for seed in range(8):
        model = P.build("temporal_order", "sgd_clip", 6, seed, length=10)
        rng = np.random.default_rng([seed, 9])
        stops.add(P.count_wrong("temporal_order", model, rng, 30, 10, 1, stop_at_wrong=True)[1])
    assert any(1 < s < 30 for s in stops), stops


RESUMABLE = {**IRNN_SPEC, "resumable": True, "seed": 1}  # a test fails at 640 (a tracking step), solved at 1,070


def test_early_stopped_tests_give_the_whole_tests_verdicts(monkeypatch):
    """A resumable screened trial (each check its own generator) with its failing tests stopped early, against the
    same trial with every test scored whole: the same verdict at every check, the same solve, losses, norms and
    final parameters, bit for bit. Not vacuous: tests failed early, and where one failed at a tracking step the
    tracking ran and is the row's error."""
    early = _fit(RESUMABLE)
    real = P.count_wrong

    def whole(*args, stop_at_wrong=False, **kw):
        return real(*args, **kw)

    monkeypatch.setattr(P, "count_wrong", whole)
    full = _fit(RESUMABLE)
    assert early.stop_reason == "stop_when" == full.stop_reason and early.step == full.step
    np.testing.assert_array_equal(early.losses, full.losses)
    np.testing.assert_array_equal(early.grad_norms, full.grad_norms)
    for name, value in early.model.state_dict().items():
        np.testing.assert_array_equal(value, full.model.state_dict()[name], err_msg=name)
    verdict = [
        (r["step"], r["screen_error"], r["test_error"] == 0.0 if r["test_error"] is not None else None)
        for r in early.epochs
    ]
    assert verdict == [
        (r["step"], r["screen_error"], r["test_error"] == 0.0 if r["test_error"] is not None else None)
        for r in full.epochs
    ]
    failed = [r for r in early.epochs if r["test_error"] not in (None, 0.0)]
    assert failed and any(r["test_samples"] < RESUMABLE["eval_samples"] for r in failed), failed
    assert all(r["test_samples"] == RESUMABLE["eval_samples"] for r in full.epochs if r["test_error"] is not None)
    at_track = [
        r for r in failed if r["step"] % RESUMABLE["track_every"] == 0 and r["test_samples"] < RESUMABLE["eval_samples"]
    ]
    assert at_track and all(r["error"] == r["track_error"] is not None for r in at_track), at_track
    assert early.epochs[-1]["test_error"] == 0.0 == early.epochs[-1]["error"]  # the solve: a whole test
    assert early.epochs[-1]["test_samples"] == RESUMABLE["eval_samples"]


def test_a_cap_at_an_early_stopped_test_resumes_as_one_run(tmp_path):
    """A cap at a check whose test failed early, off the tracking steps (640 with track_every 15): the cap's tracking
    sample is dropped on resume, and no stopped test's fraction takes its place, so the continued trial's row is
    the uninterrupted one's, curve included."""
    spec = {**RESUMABLE, "track_every": 15}
    first = P._run_trial({**spec, "max_iters": 640}, checkpoint_root=tmp_path / "a", checkpoint_seconds=0.0)
    assert first["tests"] == 1 and not first["solved"]  # the failing, early-stopped test at 640
    resumed = P._run_trial(spec, checkpoint_root=tmp_path / "a", checkpoint_seconds=0.0)
    whole = P._run_trial(spec, checkpoint_root=tmp_path / "b", checkpoint_seconds=0.0)
    assert resumed["resumed_from"] == 640 and whole["solved_at"] == 1070
    times = ("seconds", "train_seconds", "eval_seconds", "resumed_from", "trial_id")
    assert [k for k in set(resumed) | set(whole) if k not in times and resumed.get(k) != whole.get(k)] == []
    assert 640 not in [step for step, _ in whole["curve"]]
