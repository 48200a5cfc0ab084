"""Cross-validation report: every registered cell (RNN / LSTM / GRU / IndRNN / ...) against its torch twin and
against finite differences.

    python -m reference.crosscheck --cases 200 --seed 0 --cell all
    python -m reference.crosscheck --cell mypkg.cells:MyCell [--twin mypkg.twin:my_step]

The built-in cells' twins are torch.nn.RNN / LSTM / GRU; a step-function cell's twin is its torch step
(the class's ``TWIN``, or ``--twin``) unrolled by reference.cells and differentiated by autograd. A cell
in a user's own file is named ``module:Class`` (the module importable, e.g. from the working directory).

Draws random configurations (every option of the cell's torch module, lengths, dropout and the LSTM's
proj_size included),
runs the scratch model and its torch twin on the same weights, inputs and random cotangents in
float64, checks each gradient along a random direction by central differences, and prints per
quantity the number of cases and the worst relative error against each oracle.

Exit codes (scratch_rnn.cli): 0 all agree, 1 a mismatch (an error above its threshold), 2 bad input
(``--cases``/``--max-steps`` not positive, ``--seed`` negative, a ``--json`` path that cannot be
written: all checked before the first case), 3 crashed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from reference.cases import random_case
from reference.rnn import TORCH_CLASSES, run_torch
from scratch_rnn.cells import cell_names, cell_spec, resolve
from scratch_rnn.checks import check_positive_int
from scratch_rnn.cli import BadInput, Stopped, as_bad_input, output_file, run_main
from scratch_rnn.fileio import atomic_write_text
from scratch_rnn.gradcheck import NonDifferentiableError, rel_error, rnn_directional_checks

PROG = "python -m reference.crosscheck"

TORCH_THRESHOLD = 1e-8  # relative, float64
FD_THRESHOLD = 1e-5  # relative, central differences with eps = 1e-6
# A step-function cell's directional derivatives below this are not scored against finite differences: the
# central difference's rounding noise is about 1e-16·|L| / 1e-6 = 1e-10·|L|, so at 1e-6 it alone is 1e-4
# relative (a dead relu layer gives such derivatives). The built-in cells' tables never needed it and are
# computed without it, as they always were.
FD_FLOOR = 1e-6


def param_kind(name: str) -> str:
    """weight_hh_l2_reverse -> 'grad weight_hh': the table groups gradients by kind."""
    return "grad " + name.split("_l")[0]


def _pair(a):
    return a if isinstance(a, tuple) else (a, None)


def check_case(case, twin=None) -> tuple[dict, dict]:
    """Errors of one case: {quantity: worst rel error} against torch and against finite differences
    (``twin``: a torch step for a step-function cell, instead of its own; such a cell's directional
    derivatives below FD_FLOOR are not scored)."""
    model = case.model(np.float64)
    x, hx, lengths, g_out, g_fin = case.arrays(model)
    masks = case.dropout_masks()
    out, finals = model.forward(x, hx, lengths, dropout_masks=masks)
    model.zero_grad()
    grad_x, grad_s = model.backward(g_out, g_fin)
    ref = run_torch(model, x, hx, lengths, g_out, g_fin, dropout_masks=masks, twin=twin)
    (h_n, c_n), (grad_h0, grad_c0) = _pair(finals), _pair(grad_s)
    vs_torch = {
        "output": rel_error(out, ref["output"]),
        "h_n": rel_error(h_n, ref["h_n"]),
        "grad_x": rel_error(grad_x, ref["grad_x"]),
        "grad_h0": rel_error(grad_h0, ref["grad_h0"]),
    }
    if c_n is not None:
        vs_torch.update(c_n=rel_error(c_n, ref["c_n"]), grad_c0=rel_error(grad_c0, ref["grad_c0"]))
    if ref.get("hidden_grads") is not None:  # a step-function cell's twin also gives dL/dh_t of every step
        vs_torch["hidden_grads"] = rel_error(model.hidden_grads, ref["hidden_grads"])
    for name, g in model.grads.items():
        kind = param_kind(name)
        vs_torch[kind] = max(vs_torch.get(kind, 0.0), rel_error(g, ref["grads"][name]))

    floor = 0.0 if model.NAME in TORCH_CLASSES else FD_FLOOR
    if hx is None:  # finite differences perturb the initial state too: a zero one
        zeros = (np.zeros(ref["h_n"].shape),) + ((np.zeros(ref["c_n"].shape),) if c_n is not None else ())
        hx = zeros if c_n is not None else zeros[0]
    vs_fd: dict[str, float] = {}
    states = [("grad_h0", "h0")] + ([("grad_c0", "c0")] if c_n is not None else [])
    targets = [("grad_x", "input")] + states + [(param_kind(n), n) for n in model.grads]
    for i, (quantity, name) in enumerate(targets):
        try:
            checks = rnn_directional_checks(
                model, x, hx, lengths, n_directions=1, seed=case.seed + i, dropout_masks=masks, restrict_to=[name]
            )
        except NonDifferentiableError:  # a relu pre-activation sits exactly at its kink
            continue
        if floor:
            checks = [c for c in checks if max(abs(c.numeric), abs(c.analytic)) >= floor]
            if not checks:
                continue
        vs_fd[quantity] = max(vs_fd.get(quantity, 0.0), max(c.rel_error for c in checks))
    return vs_torch, vs_fd


def crosscheck_cell(cell: str, cases: int, seed: int, max_steps: int, progress: bool = True, twin=None):
    """(rows, failures) of ``cases`` random configurations of ``cell`` (a registered name or 'module:Class')."""
    rng = np.random.default_rng(seed)
    worst_torch: defaultdict[str, float] = defaultdict(float)
    worst_fd: defaultdict[str, float] = defaultdict(float)
    counts: defaultdict[str, int] = defaultdict(int)
    failures = []
    for _ in tqdm(range(cases), desc=f"cross-checking {cell}", unit="case", disable=not progress):
        case = random_case(rng, max_steps=max_steps, cells=(cell,))
        vs_torch, vs_fd = check_case(case, twin)
        for q, e in vs_torch.items():
            counts[q] += 1
            worst_torch[q] = max(worst_torch[q], e)
            if not e <= TORCH_THRESHOLD:
                failures.append(dict(cell=cell, quantity=q, oracle="torch", rel_error=e, case=str(case)))
        for q, e in vs_fd.items():
            worst_fd[q] = max(worst_fd[q], e)
            if not e <= FD_THRESHOLD:
                failures.append(dict(cell=cell, quantity=q, oracle="finite differences", rel_error=e, case=str(case)))
    rows = [[q, counts[q], f"{worst_torch[q]:.2e}", f"{worst_fd[q]:.2e}" if q in worst_fd else "-"] for q in counts]
    return rows, failures


def main(argv=None) -> int:
    return run_main(_main, argv, prog=PROG)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=200, help="random configurations to draw (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the configuration stream (default 0)")
    parser.add_argument("--max-steps", type=int, default=12, help="longest sequence drawn (default 12)")
    parser.add_argument(
        "--cell",
        default="rnn",
        help=f"a registered cell ({', '.join(cell_names())}), 'all' (one table per registered "
        "cell) or a cell of your own as 'module:Class' (default rnn)",
    )
    parser.add_argument(
        "--twin",
        metavar="MODULE:FUNCTION",
        default=None,
        help="the torch step of a step-function cell (default: the cell's own TWIN)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the tables and failures as JSON")
    args = parser.parse_args(argv)
    with as_bad_input():
        check_positive_int("--cases", args.cases)
        check_positive_int("--max-steps", args.max_steps)
    if args.seed < 0:
        raise BadInput(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.json:
        output_file("--json", args.json)
    cells = list(cell_names()) if args.cell == "all" else [args.cell]
    twin = None
    with as_bad_input():
        for cell in cells:
            try:
                spec = cell_spec(cell)
            except ValueError as e:
                raise ValueError(f"--{e}") from None
            if not spec.builtin:
                twin = spec.twin_function() if args.twin is None else resolve(args.twin, "--twin")
            elif args.twin is not None:
                raise ValueError(
                    f"--twin: {cell!r} is checked against its torch.nn module; --twin is for step-function cells"
                )

    tables, failures = {}, []
    for cell in cells:
        rows, fails = crosscheck_cell(
            cell,
            args.cases,
            args.seed,
            args.max_steps,
            twin=None if cell_spec(cell).builtin or args.twin is None else twin,
        )
        tables[cell] = rows
        failures += fails
        print(
            f"\n{cell.upper() if ':' not in cell else cell}: {args.cases} random configurations, float64, "
            f"seed {args.seed}"
        )
        print(
            tabulate(
                rows,
                headers=["quantity", "cases", "worst rel. error vs torch", "worst rel. error vs finite differences"],
            )
        )
    print(f"thresholds: torch {TORCH_THRESHOLD:g}, finite differences {FD_THRESHOLD:g}")
    if args.json:
        atomic_write_text(
            args.json,
            json.dumps(
                dict(cases=args.cases, seed=args.seed, tables=tables, rows=tables[cells[0]], failures=failures),
                indent=2,
            ),
        )
    if failures:
        print(f"\n{len(failures)} MISMATCH(ES); first ones:", file=sys.stderr)
        for f in failures[:5]:
            print(
                f"  {f['cell']} {f['quantity']} vs {f['oracle']}: {f['rel_error']:.3e} for {f['case']}", file=sys.stderr
            )
        raise Stopped(f"{len(failures)} mismatch(es) above the thresholds")
    print("all quantities agree with both oracles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
