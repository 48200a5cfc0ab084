"""Cells as plug-ins: the registry, the generic loop held to the built-in Elman loops, and a cell in a file
outside the repository verified with no edit to it (docs/examples/mgu.py, as docs/cells.md tells a user),
including the proof that the battery catches a term dropped from that cell's backward."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference.battery import check_cell
from scratch_rnn import RNN
from scratch_rnn.cells import MODULE_OPTIONS, cell_names, cell_spec, cell_takes, module_options, register_cell, resolve
from scratch_rnn.cells.generic import StepCell

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "mgu.py"
DROPPED = ("        dh_prev += d_fh * f\n", "        pass  # planted: the term through f ⊙ h_prev dropped\n")


class ElmanSteps(StepCell):
    """The Elman cell again, from step functions only: the generic loop must give the fast loops' numbers."""

    NAME = "ElmanSteps"
    OPTIONS = {"nonlinearity": ("tanh", "relu")}

    def __init__(self, *args, nonlinearity="tanh", **kwargs):
        self.nonlinearity = nonlinearity
        super().__init__(*args, **kwargs)

    def param_shapes(self, n_in):
        H = self.hidden_size
        return {"weight_ih": (H, n_in), "weight_hh": (H, H), "bias_ih": (H,), "bias_hh": (H,)}

    def step_forward(self, x_t, states, p):
        a = x_t @ p["weight_ih"].T + states[0] @ p["weight_hh"].T
        if self.bias:
            a = a + p["bias_ih"] + p["bias_hh"]
        h = np.tanh(a) if self.nonlinearity == "tanh" else np.maximum(a, 0)
        return (h,), (x_t, states[0], h)

    def step_backward(self, d_states, cache, p):
        x_t, h_prev, h = cache
        delta = d_states[0] * (1 - h * h if self.nonlinearity == "tanh" else h > 0)
        grads = {"weight_ih": delta.T @ x_t, "weight_hh": delta.T @ h_prev}
        if self.bias:
            grads["bias_ih"] = grads["bias_hh"] = delta.sum(axis=0)
        return delta @ p["weight_ih"], (delta @ p["weight_hh"],), grads


@pytest.mark.parametrize("seed", range(6))
def test_the_generic_loop_gives_the_elman_fast_loops_numbers(seed):
    rng = np.random.default_rng(seed)
    T, B, I, H = int(rng.integers(1, 9)), int(rng.integers(1, 6)), 3, 4
    opts = dict(
        num_layers=int(rng.integers(1, 4)),
        bidirectional=bool(seed % 2),
        batch_first=bool(seed % 3 == 0),
        bias=seed != 4,
        nonlinearity=("tanh", "relu")[seed % 2 == 0 and seed > 2],
        dtype=np.float64,
        seed=seed,
    )
    fast, generic = RNN(I, H, **opts), ElmanSteps(I, H, **opts)
    generic.load_state_dict(fast.state_dict())
    for m in (fast, generic):
        for p in m.parameters().values():
            p[...] = np.random.default_rng(seed + 1).uniform(-0.9, 0.9, p.shape)
    x = rng.standard_normal((B, T, I) if opts["batch_first"] else (T, B, I))
    h0 = rng.standard_normal((opts["num_layers"] * (1 + opts["bidirectional"]), B, H))
    lengths = rng.integers(1, T + 1, B)
    results = []
    for m in (fast, generic):
        out, h_n = m(x, h0, lengths)
        g = np.random.default_rng(seed + 2)
        gx, gh = m.backward(g.standard_normal(out.shape), g.standard_normal(h_n.shape))
        results.append((out, h_n, gx, gh, m.hidden_grads.copy(), {k: v.copy() for k, v in m.grads.items()}))
    for name, a, b in zip(("output", "h_n", "grad_x", "grad_h0", "hidden_grads"), results[0], results[1]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13, err_msg=f"{name} {opts}")
    for k in results[0][5]:
        np.testing.assert_allclose(results[1][5][k], results[0][5][k], rtol=1e-12, atol=1e-13, err_msg=f"{k} {opts}")


def test_the_registry_is_what_every_list_reads():
    assert cell_names()[:3] == ("rnn", "lstm", "gru") and "indrnn" in cell_names()
    assert cell_names(builtin=True) == ("rnn", "lstm", "gru")
    assert cell_spec("rnn").model_class() is RNN
    with pytest.raises(ValueError, match="'rnn', 'lstm', 'gru'.*got 'nope'"):
        cell_spec("nope")
    with pytest.raises(ValueError, match="already"):
        register_cell("rnn", RNN)
    with pytest.raises(ValueError, match="lower-case identifier"):
        register_cell("My-Cell", RNN)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        resolve("no_such_module:X", "cell")
    with pytest.raises(ValueError, match="RecurrentBase subclass"):
        cell_spec("os.path:join")
    spec = cell_spec(ElmanSteps)  # an unregistered class: a spec from its own attributes
    assert spec.options == {"nonlinearity": ("tanh", "relu")} and not spec.builtin


def test_module_options_are_the_ones_the_torch_twin_accepts():
    """The oracle is torch: a built-in cell's module options are those its torch.nn module's constructor accepts
    (torch refuses nonlinearity for LSTM/GRU and proj_size for RNN/GRU). A step cell has none, although ElmanSteps
    takes nonlinearity (its own OPTIONS) and StepCell's signature has proj_size (which it refuses)."""
    torch = pytest.importorskip("torch")

    def torch_accepts(cell, option):
        value = {"nonlinearity": "relu", "proj_size": 1}[option]
        try:
            getattr(torch.nn, cell_spec(cell).model_class().NAME)(2, 3, **{option: value})
        except (TypeError, ValueError):
            return False
        return True

    for cell in cell_names(builtin=True):
        assert module_options(cell) == tuple(o for o in MODULE_OPTIONS if torch_accepts(cell, o)), cell
    assert module_options("lstm") == ("proj_size",) and module_options("rnn") == ("nonlinearity",)
    assert cell_takes(StepCell, "proj_size") and cell_takes(ElmanSteps, "nonlinearity")
    assert module_options(StepCell) == module_options(ElmanSteps) == ()
    assert all(module_options(c) == () for c in cell_names(builtin=False))


def _outside(tmp_path: Path, planted: bool = False) -> Path:
    """The example cell copied to a folder outside the repository (optionally with the planted bug)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    text = EXAMPLE.read_text()
    if planted:
        assert DROPPED[0] in text
        text = text.replace(*DROPPED)
    (folder / "mycells.py").write_text(text)
    return folder


def _crosscheck(folder: Path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", "reference.crosscheck", "--cell", "mycells:MGU", "--cases", "25", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_cell_outside_the_repository_passes_the_crosscheck(tmp_path):
    r = _crosscheck(_outside(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "hidden_grads" in r.stdout and "all quantities agree with both oracles" in r.stdout


def test_the_same_cell_with_a_term_dropped_fails_naming_the_gradient(tmp_path):
    r = _crosscheck(_outside(tmp_path, planted=True))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "MISMATCH" in r.stderr and "grad_h0 vs torch" in r.stderr


def test_the_crosscheck_refuses_unknown_cells_and_misplaced_twins(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, match in (
        (["--cell", "nope"], "nope"),
        (["--cell", "rnn", "--twin", "reference.indrnn:indrnn_step"], "--twin"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "reference.crosscheck", "--cases", "1", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and match in r.stderr, r.stderr


def test_the_battery_from_a_users_pytest(tmp_path, monkeypatch):
    folder = _outside(tmp_path)
    monkeypatch.syspath_prepend(str(folder))
    summary = check_cell("mycells:MGU", cases=30)
    assert summary["crosscheck"]["hidden_grads"]["vs_twin"] <= 1e-8
    sys.modules.pop("mycells", None)


def test_the_battery_catches_the_planted_bug(tmp_path, monkeypatch):
    folder = _outside(tmp_path, planted=True)
    (folder / "mycells.py").rename(folder / "mycells_planted.py")
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(AssertionError, match=r"grad_h0 vs torch|grad_x vs torch|hidden_grads vs torch"):
        check_cell("mycells_planted:MGU", cases=10)
    sys.modules.pop("mycells_planted", None)


def test_docs_cells_md_trains_the_example_as_it_says(tmp_path, monkeypatch):
    """The training snippet of docs/cells.md, run on the example cell: a SequenceModel of it learns."""
    from scratch_rnn.models import ModelConfig, SequenceModel
    from scratch_rnn.optim import Adam

    doc = (ROOT / "docs" / "cells.md").read_text()
    assert 'ModelConfig(cell="mycells:MGU"' in doc and "examples/mgu.py" in doc
    monkeypatch.syspath_prepend(str(_outside(tmp_path)))
    model = SequenceModel(
        ModelConfig(
            cell="mycells:MGU", input_size=2, hidden_size=16, out_features=1, loss="mse", dtype="float64", seed=0
        )
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 8, 2)), rng.standard_normal((16, 1))
    opt, losses = Adam(model.parameters(), lr=0.02), []
    for _ in range(40):
        model.zero_grad()
        losses.append(model.forward_backward(x, y).loss)
        opt.step(model.grads)
    assert losses[-1] < 0.5 * losses[0]
    sys.modules.pop("mycells", None)


@pytest.mark.parametrize("cell", ["indrnn", "mgu"])
def test_state_jacobian_from_the_step_backward_is_torchs(cell, tmp_path, monkeypatch):
    """Per-step state Jacobians for any step-function cell, from its own step backward, against
    torch.autograd.functional.jacobian of its twin step (and, for IndRNN, the closed form diag(u ⊙ σ'(a)))."""
    import torch

    if cell == "mgu":
        monkeypatch.syspath_prepend(str(_outside(tmp_path)))
        cls = resolve("mycells:MGU")
    else:
        cls = cell_spec(cell).model_class()
    rng = np.random.default_rng(7)
    model = cls(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    step = cell_spec(cls).twin_function()
    x_t, h = rng.standard_normal((4, 10)), rng.standard_normal((4, 5))  # layer 1 reads 2·5 inputs
    jac = model.state_jacobian(x_t, h, layer=1, d=1)
    p = {k: torch.tensor(v) for k, v in model.layer_params(1, 1).items()}
    for b in range(4):
        ref = torch.autograd.functional.jacobian(
            lambda hb, b=b: step(model, torch.tensor(x_t[b : b + 1]), (hb[None],), p)[0][0], torch.tensor(h[b])
        )
        np.testing.assert_allclose(jac[b], ref.numpy(), rtol=1e-12, atol=1e-14)
    if cell == "indrnn":
        a = (
            x_t @ model.weight_ih_l1_reverse.T
            + model.weight_hh_l1_reverse * h
            + model.bias_ih_l1_reverse
            + model.bias_hh_l1_reverse
        )
        np.testing.assert_allclose(
            jac, np.stack([np.diag(r) for r in model.weight_hh_l1_reverse * (a > 0)]), rtol=1e-15
        )
    sys.modules.pop("mycells", None)


def test_a_step_cell_refuses_a_backward_after_any_parameter_changed():
    """A step backward is handed every parameter, so every one is held to the forward's (biases too)."""
    model = cell_spec("indrnn").model_class()(2, 3, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    for name in model.state_dict():
        out, _ = model(x)
        model.parameters()[name][...] += 0.5
        with pytest.raises(RuntimeError, match=name):
            model.backward(np.ones_like(out))
