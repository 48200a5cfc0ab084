"""scratch_rnn/cells/lstm.py and gru.py (the LSTM and GRU math: the step functions and the readable stepwise
loops, one layer and one direction) against torch autograd.

Two independent oracles, both float64 torch autograd, written here and never calling scratch code:

- ``torch_module``: torch.nn.LSTM / torch.nn.GRU with one layer and the same weights (the reverse
  direction is the reverse half of a bidirectional module, the other half fed zero cotangents),
  packed lengths through pack_padded_sequence(enforce_sorted=False) / pad_packed_sequence(total_length=T).
  It gives the output, h_n, c_n, dx, dh0, dc0 and every weight gradient.
- ``torch_unrolled``: the equations of the cell modules' docstrings unrolled one sequence at a time in torch,
  with torch.autograd.grad taken w.r.t. the intermediate tensors: the total dL/dh_t (hidden_grads),
  dL/dc_t (cell_grads), dL/da_t, dL/dm_t (LSTM) and dL/dgi_t, dL/dgh_t (GRU). Its forward and its
  leaf gradients are first held to torch_module, so its equations are torch's.

The cotangents are random (dL/dout, dL/dh_n, dL/dc_n), never a plain sum. float64 is held to
rtol 1e-10 and float32 (the same inputs rounded to float32, against the float64 oracle) to the
float32 row of tests/helpers.py. Mutation checks rewrite the cell module's own source (drop the forget
term, apply the GRU's r before the product, do not carry c, skip the projection) and require the
comparisons to fail.
"""

from __future__ import annotations

import inspect
import sys
import types
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
from hypothesis import given

from scratch_rnn.cells import gru, lstm
from scratch_rnn.cells.loops import final_states, sigmoid
from tests.gated_cases import Case, cast, make_arrays
from tests.helpers import WorstErrors, assert_close
from tests.strategies import gated_cases

WORST = WorstErrors("test_gated_functional")


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    WORST.report()


def check(actual, expected, *, name, config, dtype):
    WORST.check(actual, expected, name=name, config=config, dtype=dtype)


def plain_check(actual, expected, *, name, config, dtype):
    """assert_close without recording (for mutants, which must fail)."""
    assert_close(actual, expected, name=name, config=config, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Oracle 1: torch.nn.LSTM / torch.nn.GRU
# ----------------------------------------------------------------------------------------------
def torch_module(case: Case, a: dict) -> dict:
    """One layer of torch.nn.LSTM/GRU in float64 with a's weights; returns outputs and gradients."""
    a = cast(a, np.float64)
    D, d = (2, 1) if case.reverse else (1, 0)
    sfx = "_reverse" if case.reverse else ""
    torch.manual_seed(case.seed)
    if case.kind == "lstm":
        mod = torch.nn.LSTM(
            case.input_size,
            case.hidden_size,
            num_layers=1,
            bias=case.bias,
            proj_size=case.proj_size,
            bidirectional=case.reverse,
            dtype=torch.float64,
        )
    else:
        mod = torch.nn.GRU(
            case.input_size,
            case.hidden_size,
            num_layers=1,
            bias=case.bias,
            bidirectional=case.reverse,
            dtype=torch.float64,
        )
    names = ["w_ih", "w_hh"] + (["b_ih", "b_hh"] if case.bias else []) + (["w_hr"] if a["w_hr"] is not None else [])
    torch_name = dict(
        w_ih="weight_ih_l0", w_hh="weight_hh_l0", b_ih="bias_ih_l0", b_hh="bias_hh_l0", w_hr="weight_hr_l0"
    )
    params = {n: getattr(mod, torch_name[n] + sfx) for n in names}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(torch.from_numpy(a[n]))
    x = torch.tensor(a["x"], requires_grad=True)
    g = torch.Generator().manual_seed(case.seed + 1)  # the other direction's initial states

    def initial(arr):
        full = torch.randn((D,) + arr.shape, generator=g, dtype=torch.float64)
        full[d] = torch.from_numpy(arr)
        return full.requires_grad_(True)

    h0 = initial(a["h0"])
    hx = (h0, initial(a["c0"])) if case.kind == "lstm" else h0
    if case.lengths is None:
        out, states = mod(x, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(case.lengths), enforce_sorted=False)
        out, states = mod(packed, hx)
        out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=case.steps)[0]
    n_out = case.out
    out_d = out[..., d * n_out : (d + 1) * n_out]
    outputs, cotangents = [out_d], [torch.from_numpy(np.ascontiguousarray(a["go"]))]
    if case.kind == "lstm":
        h_n, c_n = states
        outputs += [h_n[d], c_n[d]]
        cotangents += [torch.from_numpy(a["ghn"]), torch.from_numpy(a["gcn"])]
    else:
        h_n, c_n = states, None
        outputs.append(h_n[d])
        cotangents.append(torch.from_numpy(a["ghn"]))
    torch.autograd.backward(outputs, cotangents)
    res = dict(
        output=out_d.detach().numpy(),
        h_n=h_n[d].detach().numpy(),
        dx=x.grad.numpy(),
        dh0=hx[0].grad[d].numpy() if case.kind == "lstm" else h0.grad[d].numpy(),
    )
    if case.kind == "lstm":
        res.update(c_n=c_n[d].detach().numpy(), dc0=hx[1].grad[d].numpy())
    for n, p in params.items():
        res["grad_" + n] = p.grad.numpy()
    return res


# ----------------------------------------------------------------------------------------------
# Oracle 2: the equations unrolled in torch, one sequence at a time, autograd w.r.t. intermediates
# ----------------------------------------------------------------------------------------------
def torch_unrolled(case: Case, a: dict) -> dict:
    """The total gradients w.r.t. every intermediate, plus the forward and the leaf gradients."""
    a = cast(a, np.float64)
    T, B, H, n_out = case.steps, case.batch, case.hidden_size, case.out
    lstm = case.kind == "lstm"
    leaf = {
        k: torch.tensor(v, requires_grad=True) for k, v in a.items() if v is not None and k not in ("go", "ghn", "gcn")
    }
    w_ih, w_hh = leaf["w_ih"], leaf["w_hh"]
    b_ih, b_hh, w_hr = leaf.get("b_ih"), leaf.get("b_hh"), leaf.get("w_hr")
    go, ghn = torch.from_numpy(np.ascontiguousarray(a["go"])), torch.from_numpy(a["ghn"])
    gcn = torch.from_numpy(a["gcn"]) if lstm else None
    lengths = case.lengths or (T,) * B
    rec = {}  # (t, b) -> dict of named (1, ·) tensors
    outputs, cotangents, finals = [], [], {}
    for b in range(B):
        L = lengths[b]
        h = leaf["h0"][b : b + 1]
        c = leaf["c0"][b : b + 1] if lstm else None
        steps = list(range(L - 1, -1, -1)) if case.reverse else list(range(L))
        for k, t in enumerate(steps):
            x_t = leaf["x"][t, b : b + 1]
            if lstm:
                a_t = x_t @ w_ih.T + h @ w_hh.T
                if b_ih is not None:
                    a_t = a_t + b_ih + b_hh
                i, f, gg, o = a_t.chunk(4, dim=1)
                i, f, gg, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(gg), torch.sigmoid(o)
                c = f * c + i * gg
                m = o * torch.tanh(c)
                h = m @ w_hr.T if w_hr is not None else m
                rec[t, b] = dict(a=a_t, c=c, m=m, h=h)
            else:
                gi = x_t @ w_ih.T + (b_ih if b_ih is not None else 0)
                gh = h @ w_hh.T + (b_hh if b_hh is not None else 0)
                r = torch.sigmoid(gi[:, :H] + gh[:, :H])
                z = torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
                n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
                h = (1 - z) * n + z * h
                rec[t, b] = dict(gi=gi, gh=gh, h=h)
            last = k == len(steps) - 1
            outputs.append(h)
            cotangents.append(go[t, b : b + 1] + (ghn[b : b + 1] if last else 0))
            if last and lstm:
                outputs.append(c)
                cotangents.append(gcn[b : b + 1])
        finals[b] = (h, c)
    keys = sorted(rec)
    names = ["a", "c", "m", "h"] if lstm else ["gi", "gh", "h"]
    inter = [rec[key][nm] for key in keys for nm in names]
    leaves = list(leaf.values())
    grads = torch.autograd.grad(outputs, inter + leaves, cotangents)
    G = case.gates * H
    res = dict(
        hidden_grads=np.zeros((T, B, n_out)),
        output=np.zeros((T, B, n_out)),
        h_n=np.stack([finals[b][0][0].detach().numpy() for b in range(B)]),
    )
    shapes = dict(a=G, c=H, m=H, gi=G, gh=G)
    out_name = dict(a="da", c="cell_grads", m="dm", gi="dgi", gh="dgh")
    for nm in names[:-1]:
        res[out_name[nm]] = np.zeros((T, B, shapes[nm]))
    it = iter(grads[: len(inter)])
    for key in keys:
        for nm in names:
            gr = next(it)[0].numpy()
            res["hidden_grads" if nm == "h" else out_name[nm]][key] = gr
        res["output"][key] = rec[key]["h"][0].detach().numpy()
    for (k, _), gr in zip(leaf.items(), grads[len(inter) :]):
        res[{"x": "dx", "h0": "dh0", "c0": "dc0"}.get(k, "grad_" + k)] = gr.numpy()
    if lstm:
        res["c_n"] = np.stack([finals[b][1][0].detach().numpy() for b in range(B)])
    return res


# ----------------------------------------------------------------------------------------------
# The code under test, driven the way the LSTM/GRU classes will drive it
# ----------------------------------------------------------------------------------------------
def scratch(case: Case, a: dict, dtype=np.float64, mod=None, dw_hr_from: str = "hidden_grads") -> dict:
    """The cell module's stepwise loops (``mod``: the module, or a mutant of it; None: lstm.py or gru.py)."""
    mod = mod if mod is not None else (lstm if case.kind == "lstm" else gru)
    a = cast(a, dtype)  # astype keeps the layout: go stays a transposed (strided) view
    bs = case.batch_sizes()
    pad = case.pad()
    res = {}
    if case.kind == "lstm":
        b = a["b_ih"] + a["b_hh"] if case.bias else None
        xp = mod.input_projection(a["x"], a["w_ih"], b)
        cache = mod.lstm_stepwise_forward(xp, a["h0"], a["c0"], a["w_hh"], a["w_hr"], bs, case.reverse)
        back = mod.lstm_stepwise_backward(a["go"], a["ghn"], a["gcn"], cache, a["w_hh"], a["w_hr"], bs, case.reverse)
        wg = mod.lstm_weight_gradients(
            back["da"],
            a["x"],
            cache,
            back[dw_hr_from] if case.proj_size else None,
            case.reverse,
            case.bias,
            case.proj_size > 0,
        )
        res.update(
            c_n=cache["c_n"],
            dc0=back["dc0"],
            cell_grads=back["cell_grads"],
            da=back["da"],
            dm=back["dm"],
            dx=back["da"] @ a["w_ih"],
            grad_w_ih=wg["w_ih"],
            grad_w_hh=wg["w_hh"],
        )
        if case.bias:
            res.update(grad_b_ih=wg["b"], grad_b_hh=wg["b"])
        else:
            assert wg["b"] is None
        if case.proj_size:
            res["grad_w_hr"] = wg["w_hr"]
        else:
            assert wg["w_hr"] is None
    else:
        xp = mod.input_projection(a["x"], a["w_ih"], a["b_ih"])
        cache = mod.gru_stepwise_forward(xp, a["h0"], a["w_hh"], a["b_hh"], bs, case.reverse)
        back = mod.gru_stepwise_backward(a["go"], a["ghn"], cache, a["w_hh"], bs, case.reverse)
        wg = mod.gru_weight_gradients(back["dgi"], back["dgh"], a["x"], cache, case.reverse, case.bias)
        res.update(
            dgi=back["dgi"], dgh=back["dgh"], dx=back["dgi"] @ a["w_ih"], grad_w_ih=wg["w_ih"], grad_w_hh=wg["w_hh"]
        )
        if case.bias:
            res.update(grad_b_ih=wg["b_ih"], grad_b_hh=wg["b_hh"])
        else:
            assert wg["b_ih"] is None and wg["b_hh"] is None
    S = cache["h"]
    output = (S[:-1] if case.reverse else S[1:]).copy()
    output[pad] = 0  # the reverse direction's h0 copies sit at padded steps: inputs only
    res.update(output=output, h_n=cache["h_n"], dh0=back["dh0"], hidden_grads=back["hidden_grads"], cache=cache)
    return res


MODULE_KEYS = (
    "output",
    "h_n",
    "c_n",
    "dx",
    "dh0",
    "dc0",
    "grad_w_ih",
    "grad_w_hh",
    "grad_b_ih",
    "grad_b_hh",
    "grad_w_hr",
)
UNROLLED_KEYS = ("hidden_grads", "cell_grads", "da", "dm", "dgi", "dgh")


def compare(case: Case, dtype=np.float64, mod=None, chk=check, dw_hr_from="hidden_grads", oracles=None) -> dict:
    """Every quantity of the scratch run against the two torch oracles (float64, from the same
    dtype-rounded inputs). Returns the scratch results."""
    a = cast(make_arrays(case), dtype)
    ref, unrolled = oracles if oracles is not None else (torch_module(case, a), torch_unrolled(case, a))
    got = scratch(case, a, dtype, mod=mod, dw_hr_from=dw_hr_from)
    config = dict(asdict(case), dtype=np.dtype(dtype).name)
    for k in MODULE_KEYS:
        if k in ref:
            assert got[k].dtype == dtype, (k, got[k].dtype)
            chk(got[k], ref[k], name=k, config=config, dtype=dtype)
    for k in UNROLLED_KEYS:
        if k in unrolled:
            assert got[k].dtype == dtype, (k, got[k].dtype)
            chk(got[k], unrolled[k], name=k, config=config, dtype=dtype)
    return got


def unrolled_matches_module(case: Case):
    """The unrolled oracle's equations are torch's: its forward and leaf gradients equal nn.LSTM/GRU's."""
    a = make_arrays(case)
    ref, unrolled = torch_module(case, a), torch_unrolled(case, a)
    for k in MODULE_KEYS:
        if k in ref:
            assert_close(unrolled[k], ref[k], name=f"oracle agreement {k}", config=asdict(case))
    return ref, unrolled


# ----------------------------------------------------------------------------------------------
# The grid: proj 0/>0, bias on/off, forward/reverse, full/packed lengths, float64/float32
# ----------------------------------------------------------------------------------------------
LENGTHS = {"full": None, "packed": (5, 5, 3, 1)}
DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("proj_size", [0, 2], ids=["noproj", "proj"])
def test_lstm_matches_torch(proj_size, bias, reverse, lengths, dtype):
    case = Case("lstm", 3, 4, proj_size, 4, 5, bias, reverse, LENGTHS[lengths], seed=11 + proj_size + 2 * bias)
    compare(case, dtype, oracles=unrolled_matches_module(case) if dtype == np.float64 else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_matches_torch(bias, reverse, lengths, dtype):
    case = Case("gru", 3, 4, 0, 4, 5, bias, reverse, LENGTHS[lengths], seed=21 + bias)
    compare(case, dtype, oracles=unrolled_matches_module(case) if dtype == np.float64 else None)


EDGE_CASES = {
    "B1": dict(batch=1, steps=4, lengths=None),
    "B1-packed": dict(batch=1, steps=5, lengths=(3,)),
    "T1": dict(batch=3, steps=1, lengths=None),
    "T1-packed": dict(batch=3, steps=1, lengths=(1, 1, 1)),
    "all-shorter-than-T": dict(batch=3, steps=6, lengths=(4, 2, 2)),  # trailing steps with no active row
    "ties": dict(batch=5, steps=4, lengths=(4, 3, 3, 1, 1)),
    "H1": dict(batch=2, steps=3, lengths=(3, 2), hidden_size=1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("edge", list(EDGE_CASES))
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_edge_cases_match_torch(kind, edge, reverse, dtype):
    e = dict(EDGE_CASES[edge])
    H = e.pop("hidden_size", 4)
    P = 0 if (kind == "gru" or H == 1) else 3
    case = Case(kind, 2, H, P, e["batch"], e["steps"], True, reverse, e["lengths"], seed=31)
    compare(case, dtype, oracles=unrolled_matches_module(case) if dtype == np.float64 else None)


@given(case=gated_cases())
def test_random_cases_match_torch(case):
    compare(case, np.float64)


# ----------------------------------------------------------------------------------------------
# Structure: padded steps, h0 copies, final states, dtypes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_padded_steps_are_zero_but_the_h0_copies(kind, reverse):
    case = Case(kind, 2, 3, 2 if kind == "lstm" else 0, 4, 5, True, reverse, (5, 3, 3, 1), seed=5)
    a = make_arrays(case)
    got = scratch(case, a)
    cache, pad, T = got["cache"], case.pad(), case.steps
    for k in ("gates", "tanh_c", "gh_n"):
        if k in cache:
            assert np.all(cache[k][pad] == 0), k
    if kind == "lstm" and case.proj_size:
        assert np.all(cache["m"][pad] == 0)
    for k in ("hidden_grads", "cell_grads", "da", "dm", "dgi", "dgh"):
        if k in got:
            assert np.all(got[k][pad] == 0), k
    bufs = [("h", a["h0"])] + ([("c", a["c0"])] if kind == "lstm" else [])
    for name, init in bufs:
        S = cache[name]
        states = S[:-1] if reverse else S[1:]
        expect_zero = pad.copy()
        if reverse:  # S[len_b, b] = h0[b] where len_b < T (an input of step len_b - 1)
            for b, L in enumerate(case.lengths):
                if L < T:
                    np.testing.assert_array_equal(S[L, b], init[b])
                    expect_zero[L, b] = False
            np.testing.assert_array_equal(S[T], init)
        else:
            np.testing.assert_array_equal(S[0], init)
        assert np.all(states[expect_zero] == 0), name
    # final_states agrees with the cache's h_n/c_n, with or without lengths given
    lengths = np.asarray(case.lengths)
    np.testing.assert_array_equal(final_states(cache["h"], case.batch_sizes(), lengths, reverse), got["h_n"])
    np.testing.assert_array_equal(final_states(cache["h"], case.batch_sizes(), None, reverse), got["h_n"])
    if kind == "lstm":
        np.testing.assert_array_equal(final_states(cache["c"], case.batch_sizes(), lengths, reverse), got["c_n"])


def test_gru_bias_grads_differ_in_the_n_block_only():
    case = Case("gru", 3, 4, 0, 3, 4, True, False, None, seed=2)
    got = scratch(case, make_arrays(case))
    H = case.hidden_size
    np.testing.assert_array_equal(got["grad_b_ih"][: 2 * H], got["grad_b_hh"][: 2 * H])
    assert np.all(got["grad_b_ih"][2 * H :] != got["grad_b_hh"][2 * H :])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_in_float32_out(kind):
    case = Case(kind, 2, 3, 2 if kind == "lstm" else 0, 2, 3, True, True, (3, 2), seed=4)
    got = scratch(case, make_arrays(case), np.float32)
    for k, v in got.items():
        if isinstance(v, np.ndarray):
            assert v.dtype == np.float32, k
    for k, v in got["cache"].items():
        assert v.dtype == np.float32, k


# ----------------------------------------------------------------------------------------------
# One step against torch's own fused cells (torch.lstm_cell / torch.gru_cell) and autograd
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("proj_size", [0, 2], ids=["noproj", "proj"])
def test_lstm_step_matches_torch_lstm_cell(proj_size, dtype):
    rng = np.random.default_rng(7 + proj_size)
    B, H = 3, 4
    out = proj_size or H
    x_proj, w_hh = rng.standard_normal((B, 4 * H)), rng.uniform(-1, 1, (4 * H, out))
    h_prev, c_prev = rng.standard_normal((B, out)), rng.standard_normal((B, H))
    w_hr = rng.uniform(-1, 1, (proj_size, H)) if proj_size else None
    dh, dc = rng.standard_normal((B, out)), rng.standard_normal((B, H))
    arrs = [np.asarray(v, dtype) if v is not None else None for v in (x_proj, w_hh, h_prev, c_prev, w_hr, dh, dc)]
    x_proj, w_hh, h_prev, c_prev, w_hr, dh, dc = arrs
    h, c, cache = lstm.lstm_step_forward(x_proj, h_prev, c_prev, w_hh, w_hr)
    da, dh_prev, dc_prev, dm = lstm.lstm_step_backward(dh, dc, cache, w_hh, w_hr)
    # torch: a = x_proj I + h_prev W_hhᵀ through the fused cell; h = m W_hrᵀ
    t = {
        k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
        for k, v in dict(x=x_proj, h=h_prev, c=c_prev, w_hh=w_hh).items()
    }
    eye = torch.eye(4 * H, dtype=torch.float64)
    if proj_size:  # the fused cell's hx must be (B, H): h_prev W_hhᵀ goes in through the input instead
        zeros = torch.zeros((B, H), dtype=torch.float64)
        m_t, c_t = torch.lstm_cell(
            t["x"] + t["h"] @ t["w_hh"].T, (zeros, t["c"]), eye, torch.zeros((4 * H, H), dtype=torch.float64)
        )
    else:
        m_t, c_t = torch.lstm_cell(t["x"], (t["h"], t["c"]), eye, t["w_hh"])
    m_t.retain_grad()
    h_t = m_t @ torch.from_numpy(np.asarray(w_hr, np.float64)).T if proj_size else m_t
    torch.autograd.backward(
        [h_t, c_t], [torch.from_numpy(np.asarray(dh, np.float64)), torch.from_numpy(np.asarray(dc, np.float64))]
    )
    config = dict(proj_size=proj_size, dtype=np.dtype(dtype).name)
    for name, got, ref in [
        ("step h", h, h_t),
        ("step c", c, c_t),
        ("step da", da, t["x"].grad),
        ("step dh_prev", dh_prev, t["h"].grad),
        ("step dc_prev", dc_prev, t["c"].grad),
        ("step dm", dm, m_t.grad),
    ]:
        assert got.dtype == dtype, name
        check(got, ref.detach().numpy(), name=name, config=config, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_step_matches_torch_gru_cell(bias, dtype):
    rng = np.random.default_rng(3 + bias)
    B, H = 3, 4
    vals = dict(x=rng.standard_normal((B, 3 * H)), h=rng.standard_normal((B, H)), w_hh=rng.uniform(-1, 1, (3 * H, H)))
    b_hh = rng.standard_normal(3 * H) if bias else None
    dh = rng.standard_normal((B, H))
    x_proj, h_prev, w_hh = (np.asarray(vals[k], dtype) for k in ("x", "h", "w_hh"))
    b_hh_d = None if b_hh is None else np.asarray(b_hh, dtype)
    h, cache = gru.gru_step_forward(x_proj, h_prev, w_hh, b_hh_d)
    dgi, dgh, dh_prev = gru.gru_step_backward(np.asarray(dh, dtype), cache, w_hh)
    # torch.gru_cell with W_ih = I and b_ih = 0, so that gi = x_proj: its autograd gives dgi, dh_prev and
    # the step's dW_hh and db_hh shares; dgh per row (which the fused cell hides) comes from the
    # equations in torch, autograd w.r.t. gh itself.
    t = {
        k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
        for k, v in dict(x=x_proj, h=h_prev, w_hh=w_hh).items()
    }
    bt = torch.tensor(np.asarray(b_hh_d, np.float64), requires_grad=True) if bias else None
    eye = torch.eye(3 * H, dtype=torch.float64)
    h_t = torch.gru_cell(t["x"], t["h"], eye, t["w_hh"], torch.zeros(3 * H, dtype=torch.float64) if bias else None, bt)
    dh64 = torch.from_numpy(np.asarray(np.asarray(dh, dtype), np.float64))
    torch.autograd.backward([h_t], [dh64])
    # dgh from the equations in torch (autograd w.r.t. gh itself)
    gh = t["h"].detach() @ t["w_hh"].detach().T + (bt.detach() if bias else 0)
    gh.requires_grad_(True)
    gi = t["x"].detach()
    r = torch.sigmoid(gi[:, :H] + gh[:, :H])
    z = torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
    n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
    (dgh_ref,) = torch.autograd.grad([(1 - z) * n + z * t["h"].detach()], [gh], [dh64])
    config = dict(bias=bias, dtype=np.dtype(dtype).name)
    refs = [
        ("step h", h, h_t),
        ("step dgi", dgi, t["x"].grad),
        ("step dh_prev", dh_prev, t["h"].grad),
        ("step dgh", dgh, dgh_ref),
        ("step dW_hh share", dgh.T @ h_prev, t["w_hh"].grad),
    ]
    if bias:
        refs.append(("step db_hh share", dgh.sum(axis=0), bt.grad))
    for name, got, ref in refs:
        assert got.dtype == dtype, name
        check(got, ref.detach().numpy(), name=name, config=config, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# The sigmoid
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_sigmoid_is_stable_with_exact_limits(dtype):
    a = np.array([-1e3, -800.0, -1e2, -30.0, 0.0, 30.0, 1e2, 800.0, 1e3], dtype=dtype)
    # underflow of exp(-|a|) to 0 is the exact limit, not an error (and numpy's default ignores it)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        s = sigmoid(a)
        gates = lstm.lstm_gates(np.tile(a, (2, 4)))
    assert s.dtype == dtype and gates.dtype == dtype
    assert s[0] == 0 and s[-1] == 1 and s[4] == 0.5
    assert np.all(np.isfinite(gates))
    assert np.all(np.diff(s) >= 0)
    assert np.isnan(sigmoid(np.array([np.nan], dtype)))[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_sigmoid_matches_torch_to_rounding(dtype):
    rng = np.random.default_rng(0)
    a = np.concatenate([np.linspace(-120, 120, 4001), rng.standard_normal(4000) * 8]).astype(dtype)
    got = sigmoid(a)
    ref = torch.sigmoid(torch.from_numpy(a)).numpy()
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    normal = ref >= tiny  # where torch's e^{-a} overflows it returns 0, this one a subnormal (or 0)
    assert normal.sum() > 7000
    rel = np.abs(got[normal].astype(np.float64) - ref[normal]) / ref[normal].astype(np.float64)
    assert rel.max() <= 4 * eps, rel.max()
    assert np.all(got[~normal] < tiny)
    # beyond exp's range torch's 1 / (1 + e^{-a}) is exactly 0 and this one a (sub)normal below it
    far = np.array([-745.0, -720.0, 709.0, 720.0])
    np.testing.assert_allclose(sigmoid(far), torch.sigmoid(torch.from_numpy(far)).numpy(), rtol=0, atol=1e-300)


# ----------------------------------------------------------------------------------------------
# The subnormal flush (the optional flush_below / flush_every arguments)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_flush_rule(kind):
    case = Case(kind, 2, 3, 0, 3, 6, True, False, (6, 4, 2), seed=9)
    a = make_arrays(case)
    got = scratch(case, a)
    cache, bs = got["cache"], case.batch_sizes()
    if kind == "lstm":

        def run(**kw):
            return lstm.lstm_stepwise_backward(a["go"], a["ghn"], a["gcn"], cache, a["w_hh"], None, bs, False, **kw)
    else:

        def run(**kw):
            return gru.gru_stepwise_backward(a["go"], a["ghn"], cache, a["w_hh"], bs, False, **kw)

    base = run()
    tiny = run(flush_below=1e-300, flush_every=1)  # nothing that small: bit-equal
    for k in base:
        np.testing.assert_array_equal(tiny[k], base[k], err_msg=k)
    huge = run(flush_below=1e30, flush_every=2)  # the loop runs t = 5..0: i = 0, 2, 4 are t = 5, 3, 1
    g = huge["hidden_grads"]
    assert np.all(g[[5, 3, 1]] == 0) and np.any(g[[4, 2, 0]] != 0)


# ----------------------------------------------------------------------------------------------
# Mutation checks: each plausible mistake, made in the cell module's own source, must fail a comparison
# ----------------------------------------------------------------------------------------------
def mutant(kind: str, old: str, new: str) -> types.ModuleType:
    """scratch_rnn/cells/{kind}.py with one line rewritten, as a fresh module (its relative imports resolved)."""
    src = inspect.getsource(lstm if kind == "lstm" else gru)
    assert src.count(old) == 1, f"mutation target not found exactly once: {old!r}"
    mod = types.ModuleType(f"scratch_rnn.cells.{kind}_mutant")
    mod.__package__ = "scratch_rnn.cells"
    exec(compile(src.replace(old, new), f"<{kind} mutant>", "exec"), mod.__dict__)
    return mod


MUTANTS = {
    "lstm: forget term dropped (c = i g)": ("lstm", "c = f * c_prev + i * g", "c = i * g"),
    "lstm: c not carried (every step reads c0)": (
        "lstm",
        "lstm_step_forward(x_proj[t, :n], S[p, :n], C[p, :n], w_hh, w_hr)",
        "lstm_step_forward(x_proj[t, :n], S[p, :n], c0[:n], w_hh, w_hr)",
    ),
    "lstm: projection skipped (h = m, truncated to P)": (
        "lstm",
        "h = m if w_hr is None else m @ w_hr.T",
        "h = m if w_hr is None else m[:, :w_hr.shape[0]]",
    ),
    "lstm: backward ignores the projection (dm = dh, padded)": (
        "lstm",
        "dm = dh if w_hr is None else dh @ w_hr",
        "dm = dh if w_hr is None else np.pad(dh, ((0, 0), (0, w_hr.shape[1] - w_hr.shape[0])))",
    ),
    "lstm: forget gate's derivative without c_prev": (
        "lstm",
        "da[:, 1 * H:2 * H] = dc_total * cache.c_prev * sigmoid_derivative(f)",
        "da[:, 1 * H:2 * H] = dc_total * sigmoid_derivative(f)",
    ),
    "gru: r applied to h before the product (textbook GRU)": (
        "gru",
        "n = np.tanh(x_proj[:, 2 * H:] + r * gh_n)",
        "n = np.tanh(x_proj[:, 2 * H:] + (r * h_prev) @ w_hh[2 * H:].T + (0 if b_hh is None else b_hh[2 * H:]))",
    ),
    "gru: dgh_n without the factor r": (
        "gru",
        "dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)",
        "dgh = np.concatenate([da_r, da_z, da_n], axis=1)",
    ),
    "gru: h = z n + (1 - z) h_prev (gates swapped)": (
        "gru",
        "h = n + z * (h_prev - n)",
        "h = h_prev + z * (n - h_prev)",
    ),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutants_fail_the_comparison(name):
    kind, old, new = MUTANTS[name]
    case = Case(kind, 3, 4, 2 if kind == "lstm" else 0, 4, 5, True, True, (5, 4, 2, 1), seed=13)
    a = make_arrays(case)
    oracles = (torch_module(case, a), torch_unrolled(case, a))
    compare(case, np.float64, chk=plain_check, oracles=oracles)  # the original passes
    with pytest.raises(AssertionError):
        compare(case, np.float64, mod=mutant(kind, old, new), chk=plain_check, oracles=oracles)


def test_dw_hr_needs_the_total_hidden_grads():
    """dW_hr = Σ g_tᵀ m_t with g_t the total dL/dh_t: the output cotangent alone (no recurrent share)
    fails the comparison, and dm (T, B, H) in its place is refused."""
    case = Case("lstm", 3, 4, 2, 3, 5, True, False, None, seed=17)
    a = make_arrays(case)
    ref = torch_module(case, a)
    got = scratch(case, a)
    right = lstm.lstm_weight_gradients(got["da"], a["x"], got["cache"], got["hidden_grads"], False, True, True)
    plain_check(right["w_hr"], ref["grad_w_hr"], name="grad_w_hr", config=asdict(case), dtype=np.float64)
    output_only = np.ascontiguousarray(a["go"])  # dL/dout_t without what flows back from h_{t+1}
    wrong = lstm.lstm_weight_gradients(got["da"], a["x"], got["cache"], output_only, False, True, True)
    with pytest.raises(AssertionError, match="grad_w_hr"):
        plain_check(wrong["w_hr"], ref["grad_w_hr"], name="grad_w_hr", config=asdict(case), dtype=np.float64)
    with pytest.raises(ValueError, match="hidden grads"):
        scratch(case, a, dw_hr_from="dm")


def test_mutants_do_not_touch_the_real_module():
    mutant("lstm", "c = f * c_prev + i * g", "c = i * g")
    assert sys.modules["scratch_rnn.cells.lstm"] is lstm
    assert "c = f * c_prev + i * g" in inspect.getsource(lstm.lstm_step_forward)
