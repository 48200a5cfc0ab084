"""Experiment 3, the cliff: the single-unit recurrence of Pascanu et al. (2013, section 3),

    x_t = w σ(x_{t-1}) + b,   σ the logistic sigmoid,   loss E(w, b) = (x_T - target)²,

with the error at the end of the sequence only. Where w σ'(x) > 1 along the trajectory (w > 4 is
necessary, as σ' ≤ 1/4) the map has two stable fixed points, and a small change of (w, b) switches
which one x_T lands on: the loss surface has a steep wall. Plain gradient descent that reaches the
wall receives a huge gradient and is thrown far away; rescaling the gradient to norm c when it is
larger (Pascanu et al.'s clipping) keeps the step bounded.

The forward and the hand-written backward are vectorised over a whole grid of (w, b); a test checks
the gradient against torch autograd. Constants (x_0 = 0.5, T = 50, target 0.7, the grid, starts,
learning rate) are this project's choices, stated in the report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from .common import markdown_table, result_dir, save_figure, write_csv, write_json, write_report


@dataclass(frozen=True)
class CliffConfig:
    steps: int = 50
    x0: float = 0.5
    target: float = 0.7
    w_range: tuple = (3.0, 8.0)
    b_range: tuple = (-6.0, 0.0)
    grid: int = 401
    starts: tuple = ((4.5, -3.5), (5.0, -4.0), (5.5, -4.0), (6.0, -4.5), (6.5, -5.0))
    lr: float = 0.02
    iters: int = 400
    clip: float = 1.0
    seed: int = 0  # unused: the experiment is deterministic; kept for a uniform CLI


QUICK = CliffConfig(grid=61, iters=60, starts=((5.0, -4.0), (6.5, -5.0)))


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def loss_and_grad(w, b, steps: int, x0: float, target: float):
    """E = (x_T - target)² and (∂E/∂w, ∂E/∂b) by backpropagation through time; arrays broadcast."""
    w, b = np.broadcast_arrays(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
    xs = np.empty((steps + 1,) + w.shape)
    xs[0] = x0
    for t in range(steps):
        xs[t + 1] = w * sigmoid(xs[t]) + b
    err = xs[-1] - target
    g = 2.0 * err  # dE/dx_T
    dw = np.zeros_like(w)
    db = np.zeros_like(w)
    for t in range(steps, 0, -1):  # x_t = w σ(x_{t-1}) + b
        s = sigmoid(xs[t - 1])
        dw += g * s
        db += g
        g = g * w * s * (1.0 - s)
    return err**2, dw, db


def descend(cfg: CliffConfig, start, clip: float | None):
    """Gradient descent from ``start``; with ``clip``, g <- clip·g/‖g‖ whenever ‖g‖ > clip."""
    w, b = map(float, start)
    rows = []
    for it in range(cfg.iters + 1):
        loss, dw, db = (float(v) for v in loss_and_grad(w, b, cfg.steps, cfg.x0, cfg.target))
        norm = float(np.hypot(dw, db))
        rows.append(dict(iter=it, w=w, b=b, loss=loss, grad_norm=norm))
        if it == cfg.iters or not np.isfinite(norm):
            break
        scale = clip / norm if clip is not None and norm > clip else 1.0
        w, b = w - cfg.lr * scale * dw, b - cfg.lr * scale * db
    return pd.DataFrame(rows)


def run(cfg: CliffConfig, out, progress: bool = True) -> dict:
    t0 = time.time()
    ws = np.linspace(*cfg.w_range, cfg.grid)
    bs = np.linspace(*cfg.b_range, cfg.grid)
    W, B = np.meshgrid(ws, bs)  # (grid_b, grid_w)
    E, dW, dB = loss_and_grad(W, B, cfg.steps, cfg.x0, cfg.target)
    G = np.hypot(dW, dB)
    surface = pd.DataFrame(dict(w=W.ravel(), b=B.ravel(), loss=E.ravel(), grad_norm=G.ravel()))
    write_csv(out / "surface.csv", surface)

    paths, summary_rows = [], []
    for k, start in enumerate(cfg.starts):
        for method, clip in (("plain", None), ("clipped", cfg.clip)):
            p = descend(cfg, start, clip).assign(start=k, method=method)
            paths.append(p)
            jumps = np.hypot(np.diff(p.w), np.diff(p.b))
            summary_rows.append(
                dict(
                    start=k,
                    w0=start[0],
                    b0=start[1],
                    method=method,
                    final_loss=p.loss.iloc[-1],
                    min_loss=p.loss.min(),
                    max_grad_norm=p.grad_norm.max(),
                    max_step=float(jumps.max(initial=0)),
                    final_w=p.w.iloc[-1],
                    final_b=p.b.iloc[-1],
                )
            )
    paths = pd.concat(paths, ignore_index=True)
    summ = pd.DataFrame(summary_rows)
    write_csv(out / "paths.csv", paths)
    write_csv(out / "descent_summary.csv", summ)

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, (qty, label) in zip(axes, ((E, "loss (x_T − target)²"), (G, "gradient norm ‖∇E‖"))):
        im = ax.pcolormesh(W, B, np.clip(qty, 1e-8, None), norm=LogNorm(), cmap="viridis", shading="auto")
        fig.colorbar(im, ax=ax, label=f"{label} (log scale)")
        ax.set_xlabel("w (recurrent weight)")
        ax.set_ylabel("b (bias)")
        ax.set_title(f"{label}, x_t = w σ(x_(t−1)) + b, T = {cfg.steps}")
    ax = axes[0]
    for k in range(len(cfg.starts)):
        for method, style in (("plain", "r.-"), ("clipped", "w.-")):
            p = paths[(paths.start == k) & (paths.method == method)]
            ax.plot(p.w, p.b, style, ms=2.5, lw=0.9, label=f"{method} GD" if k == 0 else None)
        ax.plot(*cfg.starts[k], "ko", ms=5)
    ax.set_xlim(cfg.w_range)
    ax.set_ylim(cfg.b_range)
    ax.legend(loc="lower left", fontsize=8)
    save_figure(fig, out / "cliff.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, ls in (("plain", "-"), ("clipped", "--")):
        for k in range(len(cfg.starts)):
            p = paths[(paths.start == k) & (paths.method == method)]
            axes[0].plot(p.iter, p.loss, ls, color=f"C{k}", label=f"start {k}, {method}")
            axes[1].plot(p.iter, p.grad_norm, ls, color=f"C{k}")
    for ax, lab in zip(axes, ("loss (log)", "‖∇E‖ before clipping (log)")):
        ax.set_yscale("log")
        ax.set_xlabel("gradient-descent iteration")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, ncol=2)
    save_figure(fig, out / "descent.png")

    wall = float(np.quantile(G, 0.999))
    summary = dict(
        config=asdict(cfg),
        seconds=time.time() - t0,
        grad_norm_max_on_grid=float(G.max()),
        grad_norm_median_on_grid=float(np.median(G)),
        grad_norm_q999_on_grid=wall,
        descent=summ.to_dict(orient="records"),
    )
    write_json(out / "summary.json", summary)
    write_report(
        out / "report.md",
        "The cliff: a single recurrent unit",
        [
            (
                "Setup",
                f"x_t = w σ(x_(t−1)) + b, x_0 = {cfg.x0}, T = {cfg.steps}, E = (x_T − {cfg.target})²; grid "
                f"{cfg.grid}×{cfg.grid} over w ∈ {cfg.w_range}, b ∈ {cfg.b_range}; gradient descent with "
                f"learning rate {cfg.lr} for {cfg.iters} iterations from {len(cfg.starts)} starts, plain and "
                f"with the gradient rescaled to norm {cfg.clip} when larger.",
            ),
            (
                "The wall",
                f"‖∇E‖ on the grid: median {np.median(G):.3g}, 99.9th percentile {wall:.3g}, max "
                f"{G.max():.3g}: the gradient spans {np.log10(G.max() / max(np.median(G), 1e-300)):.0f} "
                f"decades, concentrated on a thin curve (cliff.png, right).",
            ),
            ("Descent", markdown_table(summ)),
            (
                "Plots",
                "cliff.png (loss and gradient surfaces with the descent paths: red plain, white clipped), "
                "descent.png (loss and gradient norm per iteration).",
            ),
        ],
    )
    return summary


def main(args) -> dict:
    cfg = QUICK if args.quick else CliffConfig()
    return run(replace(cfg, seed=args.seed), result_dir("cliff", args.quick, args.out), not args.no_progress)
