"""The verification battery for one cell, callable from a user's own pytest suite::

    from reference.battery import check_cell

    def test_my_cell():
        check_cell("mypkg.cells:MyCell")          # or a registered name, or the class itself

It raises ``AssertionError`` naming the quantity (e.g. ``grad weight_hh``), the oracle and the configuration
of the first failures, and otherwise returns a summary. What it runs, in float64:

1. **twin parity and finite differences** over ``cases`` random configurations (every torch.nn option:
   layers, directions, ``batch_first``, unbatched input, lengths, initial states, inter-layer dropout with given
   masks, bias, and each of the cell's own ``OPTIONS``): output, final states, the gradients of the input,
   the initial states and every parameter against the cell's torch twin (relative error ≤ 1e-8) and against
   central differences along a random direction (≤ 1e-5): :func:`reference.crosscheck.crosscheck_cell`;
2. **options**: every choice of every option in the cell's ``OPTIONS`` was drawn at least once;
3. **metamorphic relations** (no oracle but the cell itself): a packed batch equals each sequence run alone
   up to its own length (outputs, final states, gradients); ``batch_first`` is a transpose; unbatched input
   equals a batch of one;
4. **the model**: ``SequenceModel(cell=...)`` against its torch twin (``reference.models``) on one batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference.cases import random_case
from reference.crosscheck import TORCH_THRESHOLD, crosscheck_cell
from scratch_rnn.cells import cell_spec, resolve
from scratch_rnn.gradcheck import rel_error

__all__ = ["check_cell"]

META_THRESHOLD = 1e-12  # relative, float64: the same arithmetic in another order or layout


def _name(cell) -> str:
    if isinstance(cell, str):
        return cell
    return f"{cell.__module__}:{cell.__qualname__}"


def check_cell(cell, *, twin=None, cases: int = 40, seed: int = 0, max_steps: int = 8) -> dict:
    """Run the battery on ``cell`` (see the module docstring). ``twin``: a torch step (or 'module:function')
    for a step-function cell, instead of its own TWIN. Returns {part: what was checked}."""
    name = _name(cell)
    spec = cell_spec(name)
    step = None if twin is None else resolve(twin, "twin")
    rows, failures = crosscheck_cell(name, cases, seed, max_steps, progress=False, twin=step)
    if failures:
        lines = [
            f"{f['quantity']} vs {f['oracle']}: relative error {f['rel_error']:.3e} for {f['case']}"
            for f in failures[:5]
        ]
        raise AssertionError(
            f"{name}: {len(failures)} mismatch(es) (thresholds: twin {TORCH_THRESHOLD:g}, finite "
            "differences {FD_THRESHOLD:g}); first ones:\n  " + "\n  ".join(lines)
        )
    summary: dict[str, Any] = {
        "crosscheck": {
            r[0]: dict(cases=r[1], vs_twin=float(r[2]), vs_fd=None if r[3] == "-" else float(r[3])) for r in rows
        }
    }

    rng = np.random.default_rng(seed)
    drawn = [random_case(rng, max_steps=max_steps, cells=(name,)) for _ in range(cases)]
    if not spec.builtin:
        for option, choices in spec.options.items():
            seen = {dict(c.options).get(option) for c in drawn}
            missing = [c for c in choices if c not in seen]
            if missing:
                raise AssertionError(f"{name}: option {option}={missing} never drawn in {cases} cases; raise cases")
    summary["options"] = dict(spec.options)

    for i, case in enumerate(drawn[: max(4, cases // 4)]):
        _metamorphic(case, f"{name} case {i}")
    summary["metamorphic"] = max(4, cases // 4)
    _model_twin(name, spec, seed, step)
    summary["model"] = "SequenceModel vs its torch twin"
    return summary


def _assert_close(a, b, what, where):
    err = rel_error(a, b)
    if not err <= META_THRESHOLD:
        raise AssertionError(f"{where}: {what} differs by {err:.3e} (relative) under a metamorphic relation")


def _run(model, x, h0, lengths, g_out, g_fin):
    out, fin = model.forward(x, h0, lengths)
    model.zero_grad()
    gx, gs = model.backward(g_out, g_fin)
    return out, fin, gx, gs, {k: v.copy() for k, v in model.grads.items()}


def _metamorphic(case, where):
    case.unbatched, case.dropout = False, 0.0
    model = case.model(np.float64)
    x, h0, _, g_out, g_fin = case.arrays(model)
    tm = (lambda a: a.transpose(1, 0, 2)) if model.batch_first else (lambda a: a)
    x_tm, g_tm = tm(x), tm(g_out)
    T, B = x_tm.shape[:2]
    lengths = np.random.default_rng(case.seed).integers(1, T + 1, size=B)
    states = h0 if isinstance(h0, tuple) else ((h0,) if h0 is not None else None)
    finals_g = g_fin if isinstance(g_fin, tuple) else ((g_fin,) if g_fin is not None else None)
    one = len(model.STATES) == 1

    def pick(seq, b):
        if seq is None:
            return None
        picked = tuple(s[:, b : b + 1] for s in seq)
        return picked[0] if one else picked

    out, fin, gx, gs, grads = _run(model, x, h0, lengths, g_out, g_fin)
    g_out_masked = g_tm * (np.arange(T)[:, None] < lengths[None, :])[..., None]
    total = {k: np.zeros_like(v) for k, v in grads.items()}
    for b in range(B):  # each sequence alone, up to its own length
        n_b = int(lengths[b])
        xb, gb = x_tm[:n_b, b : b + 1], g_out_masked[:n_b, b : b + 1]
        if model.batch_first:
            xb, gb = xb.transpose(1, 0, 2), gb.transpose(1, 0, 2)
        o_b, f_b, gx_b, gs_b, grads_b = _run(model, xb, pick(states, b), None, gb, pick(finals_g, b))
        o_tm = o_b.transpose(1, 0, 2) if model.batch_first else o_b
        _assert_close(tm(out)[:n_b, b : b + 1], o_tm, "output of a sequence alone", where)
        for s, s_b in zip(fin if not one else (fin,), f_b if not one else (f_b,)):
            _assert_close(s[:, b : b + 1], s_b, "final state of a sequence alone", where)
        gx_tm = gx_b.transpose(1, 0, 2) if model.batch_first else gx_b
        _assert_close(tm(gx)[:n_b, b : b + 1], gx_tm, "grad_x of a sequence alone", where)
        for k in total:
            total[k] += grads_b[k]
    for k in total:
        _assert_close(grads[k], total[k], f"grad {k} summed over sequences alone", where)

    model.batch_first = not model.batch_first  # the same numbers in the other layout
    swap = lambda a: a.transpose(1, 0, 2)  # noqa: E731
    out2, fin2, gx2, _, grads2 = _run(model, swap(x), h0, lengths, swap(g_out), g_fin)
    _assert_close(swap(out2), out, "output under batch_first", where)
    _assert_close(swap(gx2), gx, "grad_x under batch_first", where)
    model.batch_first = not model.batch_first
    x1 = x_tm[:, :1]  # unbatched input = a batch of one
    s_u = None if states is None else tuple(s[:, 0] for s in states)
    o_u, _ = model.forward(x1[:, 0], None if s_u is None else (s_u[0] if one else s_u))
    o_1, _ = model.forward(x1 if not model.batch_first else x1.transpose(1, 0, 2), pick(states, 0))
    _assert_close(o_u, o_1[:, 0] if not model.batch_first else o_1[0], "unbatched output", where)


def _model_twin(name, spec, seed, step):
    """SequenceModel(cell=name) against its torch twin on one batch: output, loss and every parameter's gradient."""
    import torch

    from reference.models import torch_twin
    from scratch_rnn.models import ModelConfig, SequenceModel

    nonlinearity = spec.options.get("nonlinearity", ("tanh",))[-1]
    cfg = ModelConfig(
        cell=name,
        input_size=3,
        hidden_size=4,
        out_features=2,
        num_layers=2,
        bidirectional=True,
        nonlinearity=nonlinearity,
        loss="mse",
        dtype="float64",
        seed=seed,
    )
    model = SequenceModel(cfg).eval()
    rng = np.random.default_rng(seed)
    x, y, lengths = rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 2)), np.array([5, 2, 4])
    twin = torch_twin(model)
    if step is not None and hasattr(twin.rnn, "step"):
        twin.rnn.step = step
    model.zero_grad()
    res = model.forward_backward(x, y, None, lengths)
    out_t, _ = twin(torch.tensor(x), None, lengths)
    loss_t = twin.loss(out_t, torch.tensor(y), lengths)
    loss_t.backward()
    checks = [
        ("SequenceModel output", res.output, out_t.detach().numpy()),
        ("SequenceModel loss", np.array(res.loss), np.array(loss_t.item())),
    ]
    theirs = dict(twin.named_parameters())
    for k, g in model.grads.items():
        grad_t = theirs[k].grad
        assert grad_t is not None, f"SequenceModel grad {k}: the twin's backward left none"
        checks.append((f"SequenceModel grad {k}", g, grad_t.numpy()))
    for what, mine, ref in checks:
        err = rel_error(mine, ref)
        if not err <= TORCH_THRESHOLD:
            raise AssertionError(f"{name}: {what} vs its torch twin: relative error {err:.3e}")
