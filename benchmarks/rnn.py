"""scratch_rnn.RNN against torch.nn.RNN: forward+backward time, GFLOP/s, share of GEMM peak, memory.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m benchmarks.rnn

(``env -u`` matters only where those variables are set: they pin an older OpenBLAS kernel; the
report names the kernel that actually ran.) Options: ``--threads 1 2``, ``--dtypes float32 float64``,
``--rounds``/``--reps`` (timing blocks), ``--cases NAME...`` (a part of the grid), ``--quick`` (a smoke
run), ``--no-memory``, ``--json PATH`` (default: a new ``results/bench_rnn-<date>-<time>.json`` each run,
never an earlier one; ``results/`` is git-ignored; an existing ``--json PATH`` is refused unless
``--overwrite``), ``--markdown JSON`` (reprint an earlier run's tables), ``--spread JSON...`` (the
run-to-run spread of several runs).

Exit codes (scratch_rnn.cli): 0 done, 2 bad input (every option, the case names and the ``--json``
path are checked before anything is timed; the message names the option), 3 crashed, 130 interrupted.

What is measured, for each (B, T, I, H) of the grid, dtype and thread count:
- the median wall time of one forward+backward (single layer, tanh, h0 = 0, the input's gradient
  computed by both), of this project and of ``torch.nn.RNN`` with the same weights, in the same
  process. The libraries are timed in *blocks* (a discarded warm-up call, then ``--reps`` timed
  calls), alternating which goes first from round to round, with a 0.3 s pause between blocks:
  BLAS worker threads spin for a while after a call and would steal a core from the other
  library if the calls were interleaved one by one.
- GFLOP/s from the GEMM work of one forward+backward, 6·T·B·H·(I + H) floating-point operations
  (forward x W_ihᵀ and h W_hhᵀ; backward δ W_hh, δᵀ h, δᵀ x and δ W_ih), and that rate as a share of
  the machine's GEMM peak (a 2048² matrix product, same dtype and threads; numpy's peak for this
  project, torch's for torch), timed in blocks among the case's own: this virtual machine's speed
  drifts by 20% over seconds, so a peak taken minutes earlier would not be the same machine.
- the loss: ``all`` gives every output step a cotangent; ``last`` (the vanishing regime) only the
  last step, so that dL/dh_t shrinks geometrically going back in time and reaches the subnormal
  range in float32 (the report gives the number of steps whose float64 gradient is below float32's
  smallest normal number). For float32 that case is also timed with the subnormal flush disabled,
  in the same blocks.
- where the time goes (loss ``all``): the same case's matrix products alone (:func:`gemm_work`: the input
  projection, the T per-step products each way, the weight gradients and dx, at the implementation's
  shapes), in numpy and in torch, timed in the same blocks. ``gemm_floor_ratio`` = scratch's products
  / torch's whole forward+backward is the ratio no amount of elementwise work can go below at that
  size; total − products is the rest (elementwise passes, copies, Python and dispatch overhead).
- peak memory of one forward+backward, each library in a fresh process: the rise of the resident
  set's high-water mark (VmHWM, reset through /proc/self/clear_refs) over the resident set just
  before the call, after a small warm-up call and with inputs and weights already allocated.
  numpy's own count through tracemalloc (numpy reports its buffers to it) is given beside it.

The machine is shared: each row records the CPU that *other* processes used while it was timed
(in cores, from /proc/stat less this process's own CPU time). On 2 cores, one busy core is enough
to make 2-thread BLAS calls many times slower (a worker thread waits for a time slice), so
compare only rows measured with the other processes near 0.

Nothing here is a test: the unit suite checks correctness only.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scratch_rnn.cells import cell_names
from scratch_rnn.checks import check_positive_int
from scratch_rnn.cli import BadInput, as_bad_input, input_file, new_output_file, output_file, run_main
from scratch_rnn.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
PROG = "python -m benchmarks.rnn"


@dataclass(frozen=True)
class Case:
    name: str
    B: int
    T: int
    I: int  # noqa: E741 - torch's name
    H: int
    loss: str = "all"  # "all": a cotangent on every output step; "last": on the last step only
    cell: str = "rnn"  # any registered cell: rnn/lstm/gru against torch.nn.RNN/LSTM/GRU, a plug-in against its twin

    @property
    def gates(self) -> int:
        """Weight rows per hidden unit (1, 4, 3; a plug-in cell's GATES, 1 unless it says): the FLOP count below is
        the stacked-gate layout's, nominal for a cell with another layout (IndRNN's recurrence is elementwise)."""
        from scratch_rnn.cells import cell_spec

        return cell_spec(self.cell).model_class().GATES

    @property
    def builtin(self) -> bool:
        from scratch_rnn.cells import cell_spec

        return cell_spec(self.cell).builtin

    @property
    def flops(self) -> float:
        """The GEMM work of one forward+backward: 6·T·B·G·H·(I + H), G the gate count (1, 4, 3)."""
        return 6.0 * self.T * self.B * self.gates * self.H * (self.I + self.H)

    @property
    def shape(self) -> str:
        return f"({self.B}, {self.T}, {self.I}, {self.H})"


GRID = (
    Case("small", 32, 100, 64, 128),
    Case("batch-1", 1, 1000, 32, 32),
    Case("large", 256, 50, 128, 512),
    Case("medium", 64, 200, 300, 256),
    Case("vanishing", 64, 200, 300, 256, loss="last"),
)
QUICK_GRID = (
    Case("small", 8, 20, 16, 32),
    Case("vanishing", 8, 60, 16, 32, loss="last"),
)
PEAK_N = 2048
PAUSE_S = 0.3  # between timing blocks (see the module docstring)
# --quick is a smoke run of the whole pipeline, not a measurement: a smaller peak product, short pauses.
QUICK_PEAK_N, QUICK_PAUSE_S = 256, 0.01


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------
def make_inputs(case: Case, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.T, case.B, case.I), dtype=dtype)  # no float64 temporary
    g = rng.standard_normal((case.T, case.B, case.H), dtype=dtype)
    if case.loss == "last":
        g[:-1] = 0
    return x, g


def make_scratch(case: Case, dtype):
    from scratch_rnn.cells import cell_spec

    return cell_spec(case.cell).model_class()(case.I, case.H, dtype=dtype, seed=0)


def make_torch(model, dtype):
    """The baseline: torch's own module where torch has one (nn.RNN/LSTM/GRU), else the cell's twin
    (reference.cells.TorchStepRNN: its torch step, unrolled in Python like ours)."""
    import torch

    from reference.rnn import TORCH_CLASSES, torch_twin

    tdtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
    if model.NAME not in TORCH_CLASSES:
        from reference.cells import TorchStepRNN

        return TorchStepRNN(model, dtype=tdtype)
    return torch_twin(model, tdtype)


def scratch_step(model, x, g):
    def run():
        model.forward(x)
        model.backward(g)

    return run


def with_cell(grid, cells) -> tuple:
    """The grid once per cell (``--cells``), in that order."""
    from dataclasses import replace

    return tuple(replace(c, cell=cell) for cell in cells for c in grid)


def torch_step(twin, x, g):
    import torch

    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(g)

    def run():
        out, _ = twin(xt)
        out.backward(gt)

    return run


def gemm_work(case: Case, dtype) -> dict:
    """The matrix products of one forward+backward alone, in numpy and in torch: {"numpy_gemms", "torch_gemms"}.

    With G gates (1, 4, 3): the input projection (T·B, I)·(I, G·H); T forward steps (B, H)·(H, G·H); T backward
    steps (B, G·H)·(G·H, H); dW_ih (G·H, T·B)·(T·B, I); dW_hh (G·H, T·B)·(T·B, H); dx (T·B, G·H)·(G·H, I).
    6·T·B·G·H·(I + H) flops, the ``flops`` of the case, each product into a preallocated output. A library's
    time for these is the floor of its forward+backward at this size and thread count: what is left
    (elementwise passes, copies, Python and dispatch overhead) is the rest. (scratch's float32 weight
    gradients add up chunks of rows in two levels, for accuracy: a few percent more than the one product
    timed here.)
    """
    import torch

    rng = np.random.default_rng(2)
    T, B, I, H, GH = case.T, case.B, case.I, case.H, case.gates * case.H
    a = {
        k: rng.standard_normal(shape).astype(dtype)
        for k, shape in dict(
            x=(T * B, I),
            w_ih=(I, GH),
            h=(B, H),
            w_t=(H, GH),
            d=(B, GH),
            w_hh=(GH, H),
            dT=(GH, T * B),
            hs=(T * B, H),
            da=(T * B, GH),
            w_ihT=(GH, I),
        ).items()
    }
    out = {
        k: np.empty(shape, dtype)
        for k, shape in dict(
            proj=(T * B, GH), step=(B, GH), back=(B, H), dw_ih=(GH, I), dw_hh=(GH, H), dx=(T * B, I)
        ).items()
    }
    ta = {k: torch.from_numpy(v) for k, v in a.items()}
    tout = {k: torch.from_numpy(v.copy()) for k, v in out.items()}

    def numpy_gemms():
        a["x"].dot(a["w_ih"], out["proj"])
        for _ in range(T):
            a["h"].dot(a["w_t"], out["step"])
        for _ in range(T):
            a["d"].dot(a["w_hh"], out["back"])
        a["dT"].dot(a["x"], out["dw_ih"])
        a["dT"].dot(a["hs"], out["dw_hh"])
        a["da"].dot(a["w_ihT"], out["dx"])

    def torch_gemms():
        torch.mm(ta["x"], ta["w_ih"], out=tout["proj"])
        for _ in range(T):
            torch.mm(ta["h"], ta["w_t"], out=tout["step"])
        for _ in range(T):
            torch.mm(ta["d"], ta["w_hh"], out=tout["back"])
        torch.mm(ta["dT"], ta["x"], out=tout["dw_ih"])
        torch.mm(ta["dT"], ta["hs"], out=tout["dw_hh"])
        torch.mm(ta["da"], ta["w_ihT"], out=tout["dx"])

    return {"numpy_gemms": numpy_gemms, "torch_gemms": torch_gemms}


def flush_off(fn, model):
    """``fn`` with ``model``'s subnormal flush disabled during the call (``model.flush_below = 0.0``)."""

    def run():
        saved = model.flush_below
        model.flush_below = 0.0
        try:
            fn()
        finally:
            model.flush_below = saved

    return run


def vanishing_profile(case: Case) -> dict:
    """How far the float64 gradient falls: steps whose max |dL/dh_t| is below float32's smallest normal."""
    model = make_scratch(case, np.float64)
    x, g = make_inputs(case, np.float64)
    model.forward(x)
    model.backward(g)
    m = np.abs(model.hidden_grads[0]).max(axis=(1, 2))  # (T,)
    tiny = float(np.finfo(np.float32).tiny)
    return dict(
        max_grad_last_step=float(m[-1]),
        max_grad_first_step=float(m[0]),
        steps_below_float32_tiny=int((m < tiny).sum()),
        steps=case.T,
    )


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def time_blocks(fns: dict, rounds: int, reps, pause: float = PAUSE_S) -> dict:
    """Median seconds per call of each function, timed in blocks (see the module docstring).

    reps: timed calls per block, an int or a dict name -> int.
    """
    names = list(fns)
    samples = {k: [] for k in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = fns[name]
            fn()  # warm-up, discarded
            for _ in range(reps[name] if isinstance(reps, dict) else reps):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
            time.sleep(pause)
    return {k: dict(median_s=statistics.median(v), min_s=min(v), samples=len(v)) for k, v in samples.items()}


def peak_fns(dtype, n: int = PEAK_N) -> dict:
    """An n² matrix product in numpy and in torch: the machine's GEMM peak for this dtype."""
    import torch

    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty_like(a)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tout = torch.empty(n, n, dtype=ta.dtype)
    return {"numpy_gemm": lambda: np.dot(a, b, out=out), "torch_gemm": lambda: torch.mm(ta, tb, out=tout)}


def gemm_peaks(dtype, rounds: int, n: int = PEAK_N, pause: float = PAUSE_S) -> dict:
    """GFLOP/s of an n² matrix product, numpy and torch, timed in blocks."""
    res = time_blocks(peak_fns(dtype, n), rounds=rounds, reps=3, pause=pause)
    return {k.split("_")[0]: 2.0 * n**3 / v["median_s"] / 1e9 for k, v in res.items()}


# --------------------------------------------------------------------------------------------
# Memory (in child processes)
# --------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc), so that a later allocation shows in the RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def memory_child(lib: str, dtype: str, case: Case, threads: int) -> dict:
    """Runs in a fresh process: peak memory of one forward+backward of ``lib``."""
    dtype = np.dtype(dtype)
    x, g = make_inputs(case, dtype)
    model = make_scratch(case, dtype)
    small = Case("warm-up", 2, 3, case.I, case.H)
    xs, gs = make_inputs(small, dtype)
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)
        twin = make_torch(model, dtype)
        del model
        torch_step(twin, xs, gs)()  # library state (thread pool, allocator) set up before measuring
        run = torch_step(twin, x, g)
    else:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
        scratch_step(model, xs, gs)()
        run = scratch_step(model, x, g)
    gc.collect()
    _trim_heap()
    rss0 = _status_kb("VmRSS")
    exact = _reset_hwm()
    run()
    peak = _status_kb("VmHWM")  # without the reset, the process's peak so far (an upper bound)
    res = dict(lib=lib, rss_before_kb=rss0, hwm_kb=peak, peak_rise_mb=(peak - rss0) / 1024, hwm_reset=exact)
    if lib == "numpy":
        import tracemalloc

        model.release_buffers()  # drop the first call's cached forward and work buffers
        gc.collect()
        tracemalloc.start()  # counts numpy's buffers as numpy allocates them
        run()
        res["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return res


def measure_memory(lib: str, dtype: str, case: Case, threads: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.rnn", "--memory-child", lib, dtype, json.dumps(asdict(case)), str(threads)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------
def machine_info() -> dict:
    import torch
    from threadpoolctl import threadpool_info

    cpu, cpuid = "unknown", {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and cpu == "unknown":
                    cpu = value.strip()
                elif key in ("cpu family", "model", "stepping", "cpu MHz") and key not in cpuid:
                    cpuid[key] = value.strip()
                elif not line.strip():
                    break  # the first processor is enough
    except OSError:
        pass
    cfg = torch.__config__.show()
    torch_blas = next(
        (part.split("=", 1)[1] for part in cfg.replace(",", " ").split() if part.startswith("BLAS_INFO=")), "unknown"
    )
    mkl = next((line.strip(" -") for line in cfg.splitlines() if "Math Kernel Library" in line), None)
    blas = [
        dict(
            internal_api=i.get("internal_api"),
            prefix=i.get("prefix"),
            version=i.get("version"),
            architecture=i.get("architecture"),
            threading_layer=i.get("threading_layer"),
            num_threads=i.get("num_threads"),
            filepath=i.get("filepath"),
        )
        for i in threadpool_info()
    ]
    return dict(
        cpu=cpu,
        cpuid=cpuid,
        cores=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        torch=torch.__version__,
        torch_blas=torch_blas,
        torch_mkl=mkl,
        threadpools=blas,
        openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"),
        openblas_l2_size=os.environ.get("OPENBLAS_L2_SIZE"),
        platform=platform.platform(),
    )


def load() -> list:
    return [round(v, 2) for v in os.getloadavg()]


class OtherLoad:
    """CPU used by *other* processes while a block of work runs, in cores: the machine's busy time
    (/proc/stat) minus this process's own CPU time (all its threads), over the wall time."""

    def __enter__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        self.cores = max(0.0, (self._busy() - self.busy0) - (self._own() - self.own0)) / wall if wall > 0 else 0.0
        return False

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return 0.0
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def run(args) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    grid = with_cell(select_grid(args.quick, args.cases), args.cells)
    peak_n, pause = (QUICK_PEAK_N, QUICK_PAUSE_S) if args.quick else (PEAK_N, PAUSE_S)
    info = machine_info()
    report = dict(
        machine=info,
        command=" ".join([Path(sys.executable).name, "-m", "benchmarks.rnn"] + sys.argv[1:]),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        load_at_start=load(),
        flops_formula="6*T*B*H*(I+H)",
        gemm_peak_n=peak_n,
        quick=bool(args.quick),
        peaks={},
        rows=[],
        vanishing={},
    )
    kernels = ", ".join(
        f"{b['internal_api']} {b['version']} {b['architecture']}"
        for b in info["threadpools"]
        if b["internal_api"] == "openblas"
    )
    print(
        f"CPU {info['cpu']}, {info['cores']} cores; numpy {info['numpy']} ({kernels}); "
        f"torch {info['torch']} (BLAS {info['torch_blas']}); OPENBLAS_CORETYPE={info['openblas_coretype']}; "
        f"load {report['load_at_start']}",
        flush=True,
    )
    for case in grid:
        if case.loss == "last":
            report["vanishing"][case.name] = vanishing_profile(case)
    for threads in args.threads:
        torch.set_num_threads(threads)
        with threadpool_limits(threads, user_api="blas"):
            for dtype in args.dtypes:
                peaks = gemm_peaks(np.dtype(dtype), rounds=2, n=peak_n, pause=pause)
                report["peaks"][f"{dtype}/{threads}"] = peaks
                print(
                    f"\n{dtype}, {threads} thread(s): GEMM peak ({peak_n}²) numpy {peaks['numpy']:.1f} GFLOP/s, "
                    f"torch {peaks['torch']:.1f} GFLOP/s",
                    flush=True,
                )
                peak = peak_fns(np.dtype(dtype), peak_n)
                for case in grid:
                    x, g = make_inputs(case, dtype)
                    model = make_scratch(case, dtype)
                    twin = make_torch(model, dtype)
                    fns = {"scratch": scratch_step(model, x, g), "torch": torch_step(twin, x, g)}
                    if case.loss == "last" and dtype == "float32":
                        fns["scratch_flush_off"] = flush_off(fns["scratch"], model)
                    if case.loss == "all" and case.builtin:
                        fns.update(gemm_work(case, dtype))  # where the time goes: the products alone
                    fns.update(peak)  # the peak, timed among the case's own blocks: the machine drifts
                    reps = {k: (1 if k.endswith("gemm") else args.reps) for k in fns}
                    load0 = load()
                    with OtherLoad() as other:
                        res = time_blocks(fns, rounds=args.rounds, reps=reps, pause=pause)
                    local_peak = {k.split("_")[0]: 2.0 * peak_n**3 / res[k]["median_s"] / 1e9 for k in peak}
                    flush_off_res = res.get("scratch_flush_off")
                    ours, theirs = res["scratch"]["median_s"], res["torch"]["median_s"]
                    row = dict(
                        case=case.name,
                        cell=case.cell,
                        B=case.B,
                        T=case.T,
                        I=case.I,
                        H=case.H,
                        loss=case.loss,
                        dtype=dtype,
                        threads=threads,
                        scratch_ms=ours * 1e3,
                        torch_ms=theirs * 1e3,
                        ratio=ours / theirs,
                        scratch_min_ms=res["scratch"]["min_s"] * 1e3,
                        torch_min_ms=res["torch"]["min_s"] * 1e3,
                        samples=res["scratch"]["samples"],
                        scratch_gflops=case.flops / ours / 1e9,
                        torch_gflops=case.flops / theirs / 1e9,
                        numpy_peak_gflops=local_peak["numpy"],
                        torch_peak_gflops=local_peak["torch"],
                        scratch_peak_frac=case.flops / ours / 1e9 / local_peak["numpy"],
                        torch_peak_frac=case.flops / theirs / 1e9 / local_peak["torch"],
                        load_before=load0,
                        load_after=load(),
                        other_processes_cores=other.cores,
                    )
                    if flush_off_res is not None:
                        row["scratch_flush_off_ms"] = flush_off_res["median_s"] * 1e3
                    if "numpy_gemms" in res:
                        ng, tg = res["numpy_gemms"]["median_s"], res["torch_gemms"]["median_s"]
                        row.update(
                            scratch_gemms_ms=ng * 1e3,
                            torch_gemms_ms=tg * 1e3,
                            gemm_floor_ratio=ng / theirs,
                            scratch_rest_ms=(ours - ng) * 1e3,
                            torch_rest_ms=(theirs - tg) * 1e3,
                        )
                    report["rows"].append(row)
                    extra = f"  (flush off: {row['scratch_flush_off_ms']:.2f} ms)" if flush_off_res else ""
                    if "gemm_floor_ratio" in row:
                        extra += (
                            f"  products alone: scratch {row['scratch_gemms_ms']:.2f} ms, torch "
                            f"{row['torch_gemms_ms']:.2f} ms (floor {row['gemm_floor_ratio']:.3f})"
                        )
                    print(
                        f"  {case.cell:4s} {case.name:13s} {case.shape:20s} {case.loss:4s}: "
                        f"scratch {ours * 1e3:9.2f} ms  "
                        f"torch {theirs * 1e3:9.2f} ms  ratio {ours / theirs:5.3f}  "
                        f"{row['scratch_gflops']:6.1f} GFLOP/s = {100 * row['scratch_peak_frac']:4.1f}% of peak "
                        f"(torch {100 * row['torch_peak_frac']:4.1f}%)  others {other.cores:.2f} cores{extra}",
                        flush=True,
                    )
                    del model, twin, fns
                    gc.collect()
    if args.memory:
        report["memory"] = []
        for dtype in args.dtypes:
            for case in grid:
                mem = {lib: measure_memory(lib, dtype, case, max(args.threads)) for lib in ("numpy", "torch")}
                entry = dict(
                    case=case.name,
                    cell=case.cell,
                    dtype=dtype,
                    scratch_mb=mem["numpy"]["peak_rise_mb"],
                    torch_mb=mem["torch"]["peak_rise_mb"],
                    scratch_tracemalloc_mb=mem["numpy"].get("tracemalloc_peak_mb"),
                    hwm_reset=mem["numpy"]["hwm_reset"] and mem["torch"]["hwm_reset"],
                )
                report["memory"].append(entry)
                print(
                    f"  memory {dtype} {case.cell:4s} {case.name:13s}: scratch {entry['scratch_mb']:8.1f} MB "
                    f"(tracemalloc {entry['scratch_tracemalloc_mb']:.1f})  torch {entry['torch_mb']:8.1f} MB",
                    flush=True,
                )
    report["load_at_end"] = load()
    report["summary"] = summarize(report, grid)
    return report


def summarize(report: dict, grid) -> dict:
    out = {}
    largest = max(grid, key=lambda c: (c.loss == "all", c.flops))
    for key in sorted({(r["dtype"], r["threads"], r.get("cell", "rnn")) for r in report["rows"]}):
        rows = [r for r in report["rows"] if (r["dtype"], r["threads"], r.get("cell", "rnn")) == key]
        ratios = [r["ratio"] for r in rows]
        big = next(r for r in rows if r["case"] == largest.name)
        s = dict(
            geomean_ratio=math.exp(sum(map(math.log, ratios)) / len(ratios)),
            max_ratio=max(ratios),
            largest_case=largest.name,
            largest_peak_frac=big["scratch_peak_frac"],
            largest_torch_peak_frac=big["torch_peak_frac"],
        )
        for van in (r for r in rows if r["loss"] == "last"):
            normal = next(
                (
                    r
                    for r in rows
                    if r["loss"] == "all"
                    and (r["B"], r["T"], r["I"], r["H"]) == (van["B"], van["T"], van["I"], van["H"])
                ),
                None,
            )
            if normal is not None:
                s["vanishing_over_normal"] = van["scratch_ms"] / normal["scratch_ms"]
                s["torch_vanishing_over_normal"] = van["torch_ms"] / normal["torch_ms"]
                if "scratch_flush_off_ms" in van:
                    s["vanishing_flush_off_over_normal"] = van["scratch_flush_off_ms"] / normal["scratch_ms"]
        out[f"{key[0]}/{key[1]}" + ("" if key[2] == "rnn" else f"/{key[2]}")] = s
    if "memory" in report:
        out["memory_scratch_over_torch"] = {
            f"{m['dtype']}/{m.get('cell', 'rnn')}/{m['case']}": m["scratch_mb"] / m["torch_mb"]
            for m in report["memory"]
        }
    return out


def markdown(report: dict) -> str:
    """The tables of the README, section Performance, from a report (``--markdown FILE.json`` reprints them)."""
    lines = [
        "| cell | dtype | threads | case | (B, T, I, H) | loss | scratch ms | torch ms | ratio | scratch GFLOP/s | "
        "% of numpy peak | torch % of torch peak | numpy / torch peak GFLOP/s | other processes (cores) |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["rows"]:
        flush = f" (flush off: {r['scratch_flush_off_ms']:.2f})" if "scratch_flush_off_ms" in r else ""
        lines.append(
            f"| {r.get('cell', 'rnn')} | {r['dtype']} | {r['threads']} | {r['case']} | "
            f"({r['B']}, {r['T']}, {r['I']}, {r['H']}) | "
            f"{r['loss']} | {r['scratch_ms']:.2f}{flush} | {r['torch_ms']:.2f} | {r['ratio']:.3f} | "
            f"{r['scratch_gflops']:.1f} | {100 * r['scratch_peak_frac']:.0f}% | "
            f"{100 * r['torch_peak_frac']:.0f}% | {r['numpy_peak_gflops']:.0f} / {r['torch_peak_gflops']:.0f} | "
            f"{r.get('other_processes_cores', float('nan')):.2f} |"
        )
    parts = [r for r in report["rows"] if "gemm_floor_ratio" in r]
    if parts:
        lines += [
            "",
            "Where the time goes: the products of one forward+backward alone (`gemm_work`), and the rest "
            "(elementwise passes, copies, overhead) = total − products.",
            "",
            "| cell | dtype | threads | case | scratch: products + rest ms | torch: products + rest ms | "
            "products, scratch / torch | floor: scratch products / torch total | ratio |",
            "|---|---|---:|---|---|---|---:|---:|---:|",
        ]
        for r in parts:
            lines.append(
                f"| {r.get('cell', 'rnn')} | {r['dtype']} | {r['threads']} | {r['case']} | "
                f"{r['scratch_gemms_ms']:.2f} + {r['scratch_rest_ms']:.2f} | "
                f"{r['torch_gemms_ms']:.2f} + {r['torch_rest_ms']:.2f} | "
                f"{r['scratch_gemms_ms'] / r['torch_gemms_ms']:.3f} | {r['gemm_floor_ratio']:.3f} | "
                f"{r['ratio']:.3f} |"
            )
    lines += [
        "",
        "| dtype / threads | GEMM peak numpy (start) | GEMM peak torch (start) | geomean ratio | max ratio | "
        "% of peak, largest | vanishing / normal (scratch) | vanishing / normal (torch) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in report["summary"].items():
        if key.startswith("memory"):
            continue
        pk = report["peaks"]["/".join(key.split("/")[:2])]
        lines.append(
            f"| {key} | {pk['numpy']:.1f} | {pk['torch']:.1f} | {s['geomean_ratio']:.3f} | "
            f"{s['max_ratio']:.3f} | {100 * s['largest_peak_frac']:.0f}% | "
            f"{s.get('vanishing_over_normal', float('nan')):.2f} | "
            f"{s.get('torch_vanishing_over_normal', float('nan')):.2f} |"
        )
    if report.get("memory"):
        lines += [
            "",
            "| cell | dtype | case | scratch MB (RSS rise) | scratch MB (tracemalloc) | torch MB (RSS rise) | "
            "scratch / torch |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for m in report["memory"]:
            lines.append(
                f"| {m.get('cell', 'rnn')} | {m['dtype']} | {m['case']} | {m['scratch_mb']:.1f} | "
                f"{m['scratch_tracemalloc_mb']:.1f} | "
                f"{m['torch_mb']:.1f} | {m['scratch_mb'] / m['torch_mb']:.2f} |"
            )
    return "\n".join(lines)


def spread_markdown(reports: list) -> str:
    """Run-to-run spread (``--spread A.json B.json ...``): each case's ratio in every run, its range, and the
    geometric mean and largest ratio of each run, per cell, dtype and thread count."""
    keys, ratios, floors = [], {}, {}
    for i, rep in enumerate(reports):
        for r in rep["rows"]:
            key = (r.get("cell", "rnn"), r["dtype"], r["threads"], r["case"])
            if key not in ratios:
                keys.append(key)
                ratios[key], floors[key] = [None] * len(reports), [None] * len(reports)
            ratios[key][i] = r["ratio"]
            floors[key][i] = r.get("gemm_floor_ratio")
    n = len(reports)
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "| cell | dtype | threads | case | "
        + " | ".join(f"run {i + 1}" for i in range(n))
        + " | min – max | products floor (min – max) |",
        "|---|---|---:|---|" + "---:|" * n + "---|---|",
    ]
    for key in keys:
        got = [v for v in ratios[key] if v is not None]
        fl = [v for v in floors[key] if v is not None]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | "
            + " | ".join(fmt(v) for v in ratios[key])
            + f" | {min(got):.3f} – {max(got):.3f} | "
            + (f"{min(fl):.3f} – {max(fl):.3f}" if fl else "—")
            + " |"
        )
    lines += [
        "",
        "| cell | dtype | threads | " + " | ".join(f"run {i + 1}: geomean / max" for i in range(n)) + " |",
        "|---|---|---:|" + "---|" * n,
    ]
    for group in dict.fromkeys(k[:3] for k in keys):
        cells = []
        for i in range(n):
            vals = [ratios[k][i] for k in keys if k[:3] == group and ratios[k][i] is not None]
            cells.append(f"{math.exp(sum(map(math.log, vals)) / len(vals)):.3f} / {max(vals):.3f}" if vals else "—")
        lines.append(f"| {group[0]} | {group[1]} | {group[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def select_grid(quick: bool, names=None) -> tuple:
    """The grid (``--quick``'s or the full one), restricted to ``names`` in the grid's order."""
    grid = QUICK_GRID if quick else GRID
    if not names:
        return grid
    known = [c.name for c in grid]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadInput(f"--cases: expected names among {known}{' (the --quick grid)' if quick else ''}, got {unknown}")
    return tuple(c for c in grid if c.name in names)


def default_json_path(results: Path = RESULTS, now: float | None = None) -> Path:
    """``results/bench_rnn-<date>-<time>.json`` that does not exist yet (``-2``, ``-3``... if taken)."""
    stem = "bench_rnn-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    path, k = Path(results) / f"{stem}.json", 1
    while path.exists():
        k += 1
        path = Path(results) / f"{stem}-{k}.json"
    return path


def check_args(args) -> Path:
    """Every option, before anything is timed; returns the path the report will be written to."""
    with as_bad_input():
        for t in args.threads:
            check_positive_int("--threads", t)
        check_positive_int("--rounds", args.rounds)
        check_positive_int("--reps", args.reps)
    select_grid(args.quick, args.cases)
    if args.json is None:
        path = default_json_path()
        output_file(f"--json (default {path})", path)
        return path
    return new_output_file("--json", args.json, args.overwrite, ", or omit --json for a new time-stamped file")


_NUM = (int, float)
# what --spread reads of every row, and what --markdown reads besides (optional fields are checked when present)
_ROW_SPREAD = {"dtype": str, "threads": int, "case": str, "ratio": _NUM}
_ROW_MARKDOWN = {
    **_ROW_SPREAD,
    "B": int,
    "T": int,
    "I": int,
    "H": int,
    "loss": str,
    "scratch_ms": _NUM,
    "torch_ms": _NUM,
    "scratch_gflops": _NUM,
    "scratch_peak_frac": _NUM,
    "torch_peak_frac": _NUM,
    "numpy_peak_gflops": _NUM,
    "torch_peak_gflops": _NUM,
}
_ROW_OPTIONAL = {
    "cell": str,
    "scratch_flush_off_ms": _NUM,
    "other_processes_cores": _NUM,
    "gemm_floor_ratio": _NUM,
    "scratch_gemms_ms": _NUM,
    "scratch_rest_ms": _NUM,
    "torch_gemms_ms": _NUM,
    "torch_rest_ms": _NUM,
}
_SUMMARY = {"geomean_ratio": _NUM, "max_ratio": _NUM, "largest_peak_frac": _NUM}


def _type_problem(where: str, value, kind) -> str | None:
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        return f"{where}: expected {names}, got {json.dumps(value)[:60]}"
    return None


def report_problem(report, spread: bool = False) -> str | None:
    """What is wrong with an earlier run's report for ``--markdown`` (or ``--spread``), or None."""
    if not isinstance(report, dict):
        return f"expected a JSON object, got {type(report).__name__}"
    if not isinstance(report.get("rows"), list):
        return "no 'rows' list"
    fields = _ROW_SPREAD if spread else _ROW_MARKDOWN
    for i, r in enumerate(report["rows"]):
        if not isinstance(r, dict):
            return f"rows[{i}]: expected an object, got {json.dumps(r)[:60]}"
        missing = [k for k in fields if k not in r]
        if missing:
            return f"rows[{i}] lacks {missing}"
        for k, kind in {**fields, **_ROW_OPTIONAL}.items():
            if k in r and (problem := _type_problem(f"rows[{i}].{k}", r[k], kind)):
                return problem
        if spread and r["ratio"] <= 0:
            return f"rows[{i}].ratio: expected a positive number, got {r['ratio']}"
    if spread:
        return None
    if not isinstance(report.get("summary"), dict):
        return "no 'summary' object"
    peaks = report.get("peaks")
    for key, sm in report["summary"].items():
        if key.startswith("memory"):
            continue
        if not isinstance(sm, dict):
            return f"summary[{key!r}]: expected an object"
        for k, kind in _SUMMARY.items():
            if k not in sm:
                return f"summary[{key!r}] lacks {k!r}"
            if problem := _type_problem(f"summary[{key!r}].{k}", sm[k], kind):
                return problem
        pk = peaks.get("/".join(key.split("/")[:2])) if isinstance(peaks, dict) else None
        if not isinstance(pk, dict) or any(_type_problem("", pk.get(k), _NUM) for k in ("numpy", "torch")):
            return f"peaks: no numbers 'numpy' and 'torch' for {'/'.join(key.split('/')[:2])!r}"
    memory = report.get("memory", [])
    if not isinstance(memory, list) or not all(isinstance(m, dict) for m in memory):
        return "memory: expected a list of objects"
    for i, m in enumerate(memory):
        for k, kind in dict(dtype=str, case=str, scratch_mb=_NUM, scratch_tracemalloc_mb=_NUM, torch_mb=_NUM).items():
            if k not in m:
                return f"memory[{i}] lacks {k!r}"
            if problem := _type_problem(f"memory[{i}].{k}", m[k], kind):
                return problem
        if m["torch_mb"] <= 0:
            return f"memory[{i}].torch_mb: expected a positive number, got {m['torch_mb']}"
    return None


def read_report(path, option: str = "--markdown") -> dict:
    """An earlier run's JSON (for ``--markdown``, ``--spread``): BadInput naming the file and what is wrong
    (not JSON, or a field missing or of the wrong type) when it is not one."""
    path = input_file(option, path)
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadInput(
            f"{option}: expected the JSON file of an earlier benchmark run, got {str(path)!r} (not JSON: {exc})"
        ) from exc
    problem = report_problem(report, spread=option == "--spread")
    if problem:
        raise BadInput(f"{option}: expected the JSON file of an earlier benchmark run, got {str(path)!r} ({problem})")
    return report


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument(
        "--cells",
        nargs="+",
        default=["rnn"],
        choices=cell_names(),
        help="any registered cell: rnn/lstm/gru against torch.nn.RNN/LSTM/GRU, a plug-in cell (indrnn) "
        "against its torch twin (default: rnn)",
    )
    p.add_argument("--rounds", type=int, default=6, help="timing blocks per library and case")
    p.add_argument("--reps", type=int, default=2, help="timed calls per block (after a discarded warm-up)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small grid, 256² peak product, short pauses (not a measurement)",
    )
    p.add_argument(
        "--cases",
        nargs="+",
        help=f"only these cases of the grid, by name ({[c.name for c in GRID]}; "
        f"--quick: {[c.name for c in QUICK_GRID]})",
    )
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write the report (default: a new results/bench_rnn-<date>-<time>.json)",
    )
    p.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
    p.add_argument("--markdown", metavar="JSON", help="print the tables of an earlier run's JSON and exit")
    p.add_argument(
        "--spread",
        nargs="+",
        metavar="JSON",
        help="print the run-to-run spread of several earlier runs' JSON files and exit",
    )
    p.add_argument("--memory-child", nargs=4, metavar=("LIB", "DTYPE", "CASE", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        lib, dtype, case, threads = args.memory_child
        print(json.dumps(memory_child(lib, dtype, Case(**json.loads(case)), int(threads))))
        return 0
    if args.markdown:
        print(markdown(read_report(args.markdown)))
        return 0
    if args.spread:
        print(spread_markdown([read_report(p, "--spread") for p in args.spread]))
        return 0
    path = check_args(args)
    print(f"the report will be written to {path}", flush=True)
    report = run(args)
    print("\n" + markdown(report))
    print("\nsummary:", json.dumps(report["summary"], indent=1))
    if args.json is None and path.exists():  # another run took the time-stamped name meanwhile
        path = default_json_path()
    atomic_write_text(path, json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())
