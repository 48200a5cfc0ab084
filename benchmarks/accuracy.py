"""Float32 accuracy of scratch_rnn.RNN and torch.nn.RNN against a float64 truth: the table beside the speed table.

    .venv/bin/python -m benchmarks.accuracy [--configs 60] [--seed 0] [--json PATH [--overwrite]] [--markdown]

For each of ``--configs`` random configurations (T ≤ 200, B ≤ 32, I ≤ 128, H ≤ 256 by default, each drawn
uniformly from 1 to its bound; ``--max-shape T B I H`` changes the bounds): one layer, tanh, torch's
initialisation U(-1/√H, 1/√H) for the weights *and* the biases, x ~ N(0, 1), a random h0 ~ U(-1, 1), and
random cotangents ~ N(0, 1) on every output step and on h_n (never ``.sum()``, whose all-ones cotangent
hides errors that cancel). Every value is drawn in float64 and rounded to float32 once; then

- the truth: ``scratch_rnn.RNN`` in float64 on those same float32-rounded values. As a sanity check it must
  agree with ``torch.nn.RNN`` in float64 to 1e-10 in every quantity (it does to ~1e-15); a larger
  difference stops the run (exit 1): the truth would not be one;
- scratch float32: ``scratch_rnn.RNN`` in float32, defaults as a user gets them (the subnormal flush on);
- torch float32: ``torch.nn.RNN`` in float32 on the CPU, same weights (``reference.rnn.run_torch``).

The error of a quantity is ``scratch_rnn.gradcheck.rel_error``: max |a - truth| / max |truth|, over the
whole array. Reported per quantity (output, h_n, grad_x, grad_h0 and the gradients of W_ih, W_hh, b_ih,
b_hh): its median and max over the configurations, for scratch and for torch. One BLAS thread each
(numpy and torch), so that a run is reproducible.

``--diagnose N`` adds, for the N configurations with the largest scratch grad W_hh error, that gradient
recomputed from scratch's own float32 δ_t and h_{t-1} in several ways (docs/performance.md, "Float32
accuracy": where the error comes from).

Exit codes (scratch_rnn.cli): 0 done, 1 the float64 sanity check failed, 2 bad input (every option is
checked before any work; the message names it), 3 crashed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from scratch_rnn.checks import check_non_negative_int, check_positive_int
from scratch_rnn.cli import BadInput, Stopped, as_bad_input, new_output_file, run_main
from scratch_rnn.fileio import atomic_write_text
from scratch_rnn.gradcheck import rel_error

PROG = "python -m benchmarks.accuracy"
MAX_SHAPE = (200, 32, 128, 256)  # T, B, I, H
QUANTITIES = ("output", "h_n", "grad_x", "grad_h0", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")
PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
SANITY_TOL = 1e-10  # scratch float64 against torch float64
METRIC = "rel_error = max|a - truth| / max|truth| (scratch_rnn.gradcheck.rel_error), per quantity and configuration"


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------
def draw_configs(n: int, seed: int, max_shape=MAX_SHAPE) -> list:
    """n configurations (T, B, I, H), each size uniform on 1..its bound."""
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(1, m + 1)) for m in max_shape) for _ in range(n)]


def make_problem(shape, seed: int, index: int) -> dict:
    """Weights, biases, x, h0 and the cotangents of one configuration, all float32 (rounded once from float64)."""
    T, B, I, H = shape
    rng = np.random.default_rng((seed, index))
    k = 1.0 / np.sqrt(H)
    f32 = lambda a: np.asarray(a).astype(np.float32)  # noqa: E731
    weights = {
        "weight_ih_l0": f32(rng.uniform(-k, k, (H, I))),
        "weight_hh_l0": f32(rng.uniform(-k, k, (H, H))),
        "bias_ih_l0": f32(rng.uniform(-k, k, H)),
        "bias_hh_l0": f32(rng.uniform(-k, k, H)),
    }
    return dict(
        weights=weights,
        x=f32(rng.standard_normal((T, B, I))),
        h0=f32(rng.uniform(-1, 1, (1, B, H))),
        grad_output=f32(rng.standard_normal((T, B, H))),
        grad_h_n=f32(rng.standard_normal((1, B, H))),
    )


def run_scratch(problem: dict, dtype, **options) -> tuple:
    """(results keyed like QUANTITIES, the model) of scratch_rnn.RNN in ``dtype`` on the problem's values."""
    from scratch_rnn import RNN

    w = problem["weights"]
    H, I = w["weight_ih_l0"].shape
    model = RNN(I, H, dtype=dtype, **options)
    model.load_state_dict({k: v.astype(dtype) for k, v in w.items()})
    cast = lambda a: problem[a].astype(dtype)  # noqa: E731
    output, h_n = model(cast("x"), cast("h0"))
    grad_x, grad_h0 = model.backward(cast("grad_output"), cast("grad_h_n"))
    res = dict(output=output, h_n=h_n, grad_x=grad_x, grad_h0=grad_h0)
    res.update({"grad_" + p[:-3]: model.grads[p].copy() for p in PARAMS})
    return res, model


def run_torch_rnn(problem: dict, model, torch_dtype) -> dict:
    """torch.nn.RNN (CPU) with ``model``'s weights, in ``torch_dtype``: results keyed like QUANTITIES."""
    from reference.rnn import run_torch

    ref = run_torch(
        model,
        problem["x"],
        problem["h0"],
        grad_output=problem["grad_output"],
        grad_final=problem["grad_h_n"],
        dtype=torch_dtype,
    )
    res = {k: ref[k] for k in ("output", "h_n", "grad_x", "grad_h0")}
    res.update({"grad_" + p[:-3]: ref["grads"][p] for p in PARAMS})
    return res


def measure(shape, seed: int, index: int) -> dict:
    """The errors of scratch and torch float32 against the float64 truth for one configuration."""
    import torch

    problem = make_problem(shape, seed, index)
    truth, model64 = run_scratch(problem, np.float64)
    torch64 = run_torch_rnn(problem, model64, torch.float64)
    sanity = {q: rel_error(torch64[q], truth[q]) for q in QUANTITIES}
    worst = max(sanity, key=sanity.get)
    if not sanity[worst] <= SANITY_TOL:
        raise Stopped(
            f"configuration {index} (T, B, I, H) = {shape}: scratch float64 and torch float64 differ by "
            f"{sanity[worst]:.3g} in {worst} (more than {SANITY_TOL:g}): the float64 truth is not one"
        )
    scratch32, model32 = run_scratch(problem, np.float32)
    torch32 = run_torch_rnn(problem, model32, torch.float32)
    return dict(
        index=index,
        T=shape[0],
        B=shape[1],
        I=shape[2],
        H=shape[3],
        float64_scratch_vs_torch=sanity[worst],
        scratch={q: rel_error(scratch32[q], truth[q]) for q in QUANTITIES},
        torch={q: rel_error(torch32[q], truth[q]) for q in QUANTITIES},
    )


# --------------------------------------------------------------------------------------------
# Where the grad W_hh error comes from (--diagnose)
# --------------------------------------------------------------------------------------------
def diagnose(shape, seed: int, index: int) -> dict:
    """grad W_hh = Σ_t δ_tᵀ h_{t-1} of one configuration, recomputed in several ways, each against the truth.

    - ``scratch``: what scratch_rnn float32 returns; ``torch``: torch float32;
    - ``one_gemm_f32``: one float32 GEMM over all T·B rows of scratch's own float32 δ and h_{t-1};
    - ``one_gemm_f64``: the same GEMM in float64 (from the same float32 δ and h): the error that δ and h bring;
    - ``truth_inputs_one_gemm_f32``: one float32 GEMM of the truth's δ and h rounded to float32: the GEMM's own error;
    - ``per_step_f32``: T GEMMs of B rows, summed step by step in float32 (how torch's autograd sums it);
    - ``flush_off``: scratch float32 with the subnormal flush disabled;
    - ``delta`` / ``states``: the error of scratch's float32 δ and h against the truth's;
    - ``tanh_derivative``: 1 - h² in float32 against 1 - h² in float64, from the same float32 h.
    """
    import torch

    problem = make_problem(shape, seed, index)
    T, B, I, H = shape
    truth, m64 = run_scratch(problem, np.float64)
    scratch, m32 = run_scratch(problem, np.float32)
    off, _ = run_scratch(problem, np.float32, flush_below=0.0)
    torch32 = run_torch_rnn(problem, m32, torch.float32)
    from scratch_rnn.cells.elman import activation_derivative

    hs32, hs64 = (m.states[0] for m in (m32, m64))  # (T + 1, B, H)
    # δ_t = dL/dh_t ⊙ f'(a_t), the same two elementwise operations as the backward's
    d32, d64 = (
        (m.hidden_grads[0] * activation_derivative(hs[1:], "tanh")).reshape(T * B, H)
        for m, hs in ((m32, hs32), (m64, hs64))
    )
    hp32, hp64 = hs32[:-1].reshape(T * B, H), hs64[:-1].reshape(T * B, H)
    want = truth["grad_weight_hh"]
    per_step = np.zeros((H, H), np.float32)
    for t in range(T):
        rows = slice(t * B, (t + 1) * B)
        per_step += np.dot(d32[rows].T, hp32[rows])
    h32 = hs32[1:]
    return dict(
        index=index,
        T=T,
        B=B,
        I=I,
        H=H,
        scratch=rel_error(scratch["grad_weight_hh"], want),
        torch=rel_error(torch32["grad_weight_hh"], want),
        one_gemm_f32=rel_error(np.dot(d32.T, hp32), want),
        one_gemm_f64=rel_error(np.dot(d32.T.astype(np.float64), hp32.astype(np.float64)), want),
        truth_inputs_one_gemm_f32=rel_error(np.dot(d64.astype(np.float32).T, hp64.astype(np.float32)), want),
        per_step_f32=rel_error(per_step, want),
        flush_off=rel_error(off["grad_weight_hh"], want),
        delta=rel_error(d32, d64),
        states=rel_error(hs32, hs64),
        tanh_derivative=rel_error(1 - h32 * h32, 1 - h32.astype(np.float64) ** 2),
    )


# --------------------------------------------------------------------------------------------
# The run and its tables
# --------------------------------------------------------------------------------------------
def summarize(rows: list) -> dict:
    """Per quantity: median and max over the configurations, for scratch and for torch."""
    out = {}
    for q in QUANTITIES:
        out[q] = {
            lib: dict(median=statistics.median(r[lib][q] for r in rows), max=max(r[lib][q] for r in rows))
            for lib in ("scratch", "torch")
        }
    return out


def run(args) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from benchmarks.rnn import machine_info

    torch.set_num_threads(1)
    shapes = draw_configs(args.configs, args.seed, tuple(args.max_shape))
    report = dict(
        machine=machine_info(),
        command=" ".join([Path(sys.executable).name, "-m", "benchmarks.accuracy"] + sys.argv[1:]),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        configs=args.configs,
        seed=args.seed,
        max_shape=dict(zip("TBIH", args.max_shape)),
        metric=METRIC,
        threads=1,
        truth="scratch_rnn.RNN float64 on the float32-rounded values",
        sanity_tolerance=SANITY_TOL,
        rows=[],
    )
    print(
        f"CPU {report['machine']['cpu']}; numpy {report['machine']['numpy']}, torch {report['machine']['torch']}; "
        f"{args.configs} configurations, seed {args.seed}, (T, B, I, H) up to {tuple(args.max_shape)}",
        flush=True,
    )
    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        for i, shape in enumerate(shapes):
            row = measure(shape, args.seed, i)
            report["rows"].append(row)
            if args.verbose:
                print(
                    f"  {i:3d} (T, B, I, H) = {shape}: grad W_hh scratch {row['scratch']['grad_weight_hh']:.2e} "
                    f"torch {row['torch']['grad_weight_hh']:.2e}",
                    flush=True,
                )
        report["float64_scratch_vs_torch_max"] = max(r["float64_scratch_vs_torch"] for r in report["rows"])
        report["summary"] = summarize(report["rows"])
        if args.diagnose:
            worst = sorted(report["rows"], key=lambda r: -r["scratch"]["grad_weight_hh"])[: args.diagnose]
            report["diagnosis"] = [diagnose((r["T"], r["B"], r["I"], r["H"]), args.seed, r["index"]) for r in worst]
    report["seconds"] = time.perf_counter() - t0
    return report


def table(report: dict, markdown: bool) -> str:
    head = ("quantity", "scratch median", "scratch max", "torch median", "torch max", "max: scratch / torch")
    rows = []
    for q, s in report["summary"].items():
        a, b = s["scratch"], s["torch"]
        ratio = a["max"] / b["max"] if b["max"] > 0 else float("inf")
        rows.append(
            (q, f"{a['median']:.2e}", f"{a['max']:.2e}", f"{b['median']:.2e}", f"{b['max']:.2e}", f"{ratio:.2f}")
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(x[j])) for x in [head] + rows) for j in range(len(head))]
        lines = [
            "  ".join(str(x[j]).rjust(widths[j]) if j else str(x[j]).ljust(widths[j]) for j in range(len(head)))
            for x in [head] + rows
        ]
    if report.get("diagnosis"):
        keys = (
            "scratch",
            "torch",
            "one_gemm_f32",
            "one_gemm_f64",
            "truth_inputs_one_gemm_f32",
            "per_step_f32",
            "flush_off",
            "delta",
            "states",
            "tanh_derivative",
        )
        lines += ["", "grad W_hh of the worst configurations, recomputed (see diagnose()):", ""]
        lines += ["| (T, B, I, H) | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for d in report["diagnosis"]:
            lines.append(
                f"| ({d['T']}, {d['B']}, {d['I']}, {d['H']}) | " + " | ".join(f"{d[k]:.2e}" for k in keys) + " |"
            )
    return "\n".join(lines)


def check_args(args) -> Path | None:
    """Every option, before any work; returns the path of the JSON report (None: none is written)."""
    with as_bad_input():
        check_positive_int("--configs", args.configs)
        check_non_negative_int("--seed", args.seed)
        check_non_negative_int("--diagnose", args.diagnose)
        for name, v in zip("TBIH", args.max_shape):
            check_positive_int(f"--max-shape ({name})", v)
    if args.diagnose > args.configs:
        raise BadInput(f"--diagnose: expected at most --configs={args.configs} configurations, got {args.diagnose}")
    if args.json is None:
        if args.overwrite:
            raise BadInput("--overwrite: expected together with --json PATH, got no --json")
        return None
    return new_output_file("--json", args.json, args.overwrite)


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--configs", type=int, default=60, help="random configurations (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of the configurations and their values (default 0)")
    p.add_argument(
        "--max-shape",
        type=int,
        nargs=4,
        default=list(MAX_SHAPE),
        metavar=("T", "B", "I", "H"),
        help=f"the largest (T, B, I, H) drawn (default {' '.join(map(str, MAX_SHAPE))})",
    )
    p.add_argument(
        "--diagnose",
        type=int,
        default=0,
        metavar="N",
        help="recompute grad W_hh several ways for the N configurations where scratch's error is largest",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the report there (atomically)")
    p.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--verbose", action="store_true", help="one line per configuration")
    args = p.parse_args(argv)
    path = check_args(args)
    report = run(args)
    print(
        f"\nfloat32 error against the float64 truth ({METRIC}); {args.configs} configurations, "
        f"{report['seconds']:.1f} s; scratch float64 vs torch float64: at most "
        f"{report['float64_scratch_vs_torch_max']:.1e}\n"
    )
    print(table(report, args.markdown))
    if path is not None:
        atomic_write_text(path, json.dumps(report, indent=1))
        print(f"\nwrote {path}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())
