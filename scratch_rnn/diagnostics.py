"""Exploding and vanishing gradients, measured: per-step Jacobians, their products, the bounds of
Pascanu, Mikolov & Bengio (2013) and fitted decay/growth rates. NumPy only.

Notation, for one layer and one direction of an Elman RNN, h_t = f(a_t), a_t = ... + h_{t-1} W_hhᵀ:

    J_t = ∂h_t/∂h_{t-1} = diag(f'(a_t)) W_hh                          # (H, H), one per step and sample
    P(n) = ∂h_end/∂h_{end-n} = J_end J_{end-1} ... J_{end-n+1}          # P(0) = I

"end" is the step a direction finishes on: a forward sequence's own last valid step, and step 0 for the
reverse direction. h_{end-n} with n = length is the initial state h0. Everything below works on the
*slopes* f'(a_t), shape (T, B, H), re-indexed by distance n from the end (:func:`align_to_end`), so that
variable lengths and the reverse direction need no special case afterwards.

The bound (Pascanu et al. 2013, section 2.1): with γ ≥ sup |f'| (1 for tanh and relu, 1/4 for sigmoid)
and λ₁ the largest singular value of W_hh, ‖J_t‖ ≤ γλ₁, hence

    ‖P(n)‖₂ ≤ (γλ₁)ⁿ          and, for a loss on h_end only,   ‖∂L/∂h_{end-n}‖ ≤ (γλ₁)ⁿ ‖∂L/∂h_end‖.

λ₁ < 1/γ is sufficient for vanishing gradients; λ₁ > 1/γ is necessary for exploding ones.

Costs: :func:`jacobian_products` and :func:`product_singular_values` form the (H, H) running product,
O(T·B·H³) time for every distance at once (O(B·H²) memory per distance kept). For long sequences or
wide layers, :func:`product_spectral_norms` never forms a product: power iteration on P(n)ᵀP(n) with
chained matrix-vector products, O(iters·n·B·H²) per distance, for the distances asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import as_index_array, check_shape

__all__ = [
    "lstm_state_jacobian",
    "gru_state_jacobian",
    "GAMMA",
    "RateFit",
    "Regime",
    "activation_slope",
    "align_to_end",
    "bound_log_rate",
    "fit_rate",
    "grad_norms_by_distance",
    "jacobian_products",
    "largest_singular_value",
    "layer_states",
    "model_slopes",
    "pascanu_bound",
    "product_singular_values",
    "product_spectral_norms",
    "regime",
    "spectral_radius",
    "step_jacobians",
]

# γ = sup |f'(a)|: the constant of the bound. "linear" is the identity (a linear RNN).
GAMMA = {"tanh": 1.0, "relu": 1.0, "linear": 1.0, "sigmoid": 0.25}


def _check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in GAMMA:
        raise ValueError(f"nonlinearity: expected one of {sorted(GAMMA)}, got {nonlinearity!r}")
    return nonlinearity


def _check_square(name: str, w) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"{name}: expected a square (H, H) matrix, got shape {w.shape}")
    if w.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point matrix, got dtype {w.dtype}")
    return w


# --------------------------------------------------------------------------------------------
# Slopes and per-step Jacobians
# --------------------------------------------------------------------------------------------
def activation_slope(h: np.ndarray, nonlinearity: str) -> np.ndarray:
    """f'(a) written from the output h = f(a): 1 - h² (tanh), [h > 0] (relu), h(1 - h) (sigmoid),
    1 (linear). Same shape as h."""
    _check_nonlinearity(nonlinearity)
    h = np.asarray(h)
    if nonlinearity == "tanh":
        return 1.0 - h * h
    if nonlinearity == "relu":
        return (h > 0).astype(h.dtype)
    if nonlinearity == "sigmoid":
        return h * (1.0 - h)
    return np.ones_like(h)


def step_jacobians(slopes: np.ndarray, w_hh: np.ndarray) -> np.ndarray:
    """Dense J_t = diag(slopes_t) W_hh for every step and sample: (T, B, H) -> (T, B, H, H).

    For inspection and tests on small H; the products below never need these.
    """
    w_hh = _check_square("w_hh", w_hh)
    slopes = np.asarray(slopes)
    if slopes.ndim != 3 or slopes.shape[-1] != w_hh.shape[0]:
        raise ValueError(f"slopes: expected shape (T, B, H={w_hh.shape[0]}), got {slopes.shape}")
    return slopes[..., :, None] * w_hh  # row i of W_hh scaled by f'(a_t)_i


def lstm_state_jacobian(
    x_proj: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, w_hh: np.ndarray, w_hr: np.ndarray | None = None
) -> np.ndarray:
    """The per-step Jacobian of the LSTM's joint state map (h_{t-1}, c_{t-1}) -> (h_t, c_t), per sample.

    x_proj: (B, 4H) = x_t W_ihᵀ + b_ih + b_hh; h_prev: (B, out); c_prev: (B, H); w_hh: (4H, out);
    w_hr: (P, H) or None. Returns (B, out + H, out + H), the blocks [[∂h/∂h, ∂h/∂c], [∂c/∂h, ∂c/∂c]]:
        ∂a/∂h = W_hh; ∂i/∂h = diag(i(1-i)) W_hi, likewise f and o; ∂g/∂h = diag(1-g²) W_hg;
        ∂c/∂h = diag(g) ∂i/∂h + diag(c_prev) ∂f/∂h + diag(i) ∂g/∂h;  ∂c/∂c_prev = diag(f);
        ∂m/∂· = diag(tanh c) ∂o/∂· + diag(o (1 - tanh² c)) ∂c/∂·;  ∂h/∂· = W_hr ∂m/∂· (or ∂m/∂·).
    """
    from .cells.lstm import lstm_step_forward

    _, _, cache = lstm_step_forward(x_proj, h_prev, c_prev, w_hh, w_hr)
    H = c_prev.shape[-1]
    i, f, g, o = (cache.gates[:, k * H : (k + 1) * H] for k in range(4))
    w = [w_hh[k * H : (k + 1) * H] for k in range(4)]  # (H, out) each
    di, df, do = (s * (1 - s) for s in (i, f, o))
    dg = 1 - g * g
    dc_dh = (g * di)[:, :, None] * w[0] + (c_prev * df)[:, :, None] * w[1] + (i * dg)[:, :, None] * w[2]  # (B, H, out)
    dc_dc = f[:, :, None] * np.eye(H)  # (B, H, H)
    dtanh = o * (1 - cache.tanh_c**2)
    dm_dh = (cache.tanh_c * do)[:, :, None] * w[3] + dtanh[:, :, None] * dc_dh
    dm_dc = dtanh[:, :, None] * dc_dc
    if w_hr is not None:
        dm_dh, dm_dc = w_hr @ dm_dh, w_hr @ dm_dc  # (B, P, ·)
    top = np.concatenate([dm_dh, dm_dc], axis=2)
    bottom = np.concatenate([dc_dh, dc_dc], axis=2)
    return np.concatenate([top, bottom], axis=1)  # (B, out + H, out + H)


def gru_state_jacobian(x_proj: np.ndarray, h_prev: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray | None) -> np.ndarray:
    """The per-step Jacobian ∂h_t/∂h_{t-1} of the GRU (torch's equations), per sample: (B, H, H).

    x_proj: (B, 3H) = x_t W_ihᵀ + b_ih; h_prev: (B, H); w_hh: (3H, H); b_hh: (3H,) or None.
        ∂r/∂h = diag(r(1-r)) W_hr, ∂z/∂h = diag(z(1-z)) W_hz,
        ∂n/∂h = diag(1-n²) (diag(r) W_hn + diag(gh_n) ∂r/∂h),
        ∂h_t/∂h = diag(z) + diag(h_prev - n) ∂z/∂h + diag(1-z) ∂n/∂h.
    """
    from .cells.gru import gru_step_forward

    _, cache = gru_step_forward(x_proj, h_prev, w_hh, b_hh)
    H = h_prev.shape[-1]
    r, z, n = (cache.gates[:, k * H : (k + 1) * H] for k in range(3))
    w_r, w_z, w_n = (w_hh[k * H : (k + 1) * H] for k in range(3))
    dr = (r * (1 - r))[:, :, None] * w_r
    dz = (z * (1 - z))[:, :, None] * w_z
    dn = (1 - n * n)[:, :, None] * (r[:, :, None] * w_n + cache.gh_n[:, :, None] * dr)
    return z[:, :, None] * np.eye(H) + (h_prev - n)[:, :, None] * dz + (1 - z)[:, :, None] * dn


def _time_major(model, x, h0, lengths):
    """The model's input in time-major batched form: x (T, B, I), h0 (LD, B, H) or None, lengths or None."""
    x = np.asarray(x)
    if x.ndim == 2:  # unbatched (T, I)
        x = x[:, None, :]
        h0 = None if h0 is None else np.asarray(h0)[:, None, :]
        lengths = None if lengths is None else np.asarray(lengths).reshape(1)
    elif x.ndim == 3 and model.batch_first:
        x = x.transpose(1, 0, 2)  # (B, T, I) -> (T, B, I)
    return x, h0, lengths


def layer_states(model, x, h0=None, lengths=None) -> np.ndarray:
    """Every hidden state of every layer and direction of ``model`` (a :class:`scratch_rnn.RNN`):
    (num_layers * D, T, B, H), time-major, zero at padded steps, index ``layer * D + direction``.

    Runs the model one layer at a time through its public forward (single-layer copies of its
    weights), in eval semantics: no dropout. ``x``, ``h0``, ``lengths`` as for ``model.forward``.
    """
    from .rnn import RNN  # local: rnn imports nothing from here

    x, h0, lengths = _time_major(model, x, h0, lengths)
    if x.ndim != 3:
        raise ValueError(f"input: expected a 3-D (batched) or 2-D (unbatched) array, got shape {x.shape}")
    T, B, _ = x.shape
    D, H = model.num_directions, model.hidden_size
    states = np.zeros((model.num_layers * D, T, B, H), dtype=model.dtype)
    params = model.state_dict()
    layer_in = x
    for layer in range(model.num_layers):
        sub = RNN(
            layer_in.shape[-1], H, 1, model.nonlinearity, model.bias, False, 0.0, model.bidirectional, dtype=model.dtype
        )
        sub.load_state_dict(
            {
                k.replace(f"_l{layer}", "_l0"): v
                for k, v in params.items()
                if k.split("_l")[1].split("_")[0] == str(layer)
            }
        )
        sub.eval()
        out, _ = sub(layer_in, None if h0 is None else h0[layer * D : (layer + 1) * D], lengths)
        for d in range(D):
            states[layer * D + d] = out[:, :, d * H : (d + 1) * H]
        layer_in = out
    return states


def model_slopes(model, x, h0=None, lengths=None) -> np.ndarray:
    """f'(a_t) of every layer and direction: (num_layers * D, T, B, H), zero at padded steps.

    J_t = diag(slopes[l*D+d, t, b]) W_hh of that layer and direction (eval semantics, no dropout).
    """
    slopes = activation_slope(layer_states(model, x, h0, lengths), model.nonlinearity)
    if lengths is not None:
        slopes *= _valid_mask(slopes.shape[1], np.asarray(lengths).reshape(-1))[None, :, :, None]
    return slopes


def _valid_mask(T: int, lengths: np.ndarray) -> np.ndarray:
    """(T, B) boolean: step t is a valid step of sequence b."""
    return np.arange(T)[:, None] < lengths[None, :]


def _check_lengths(lengths, T: int, B: int) -> np.ndarray:
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    lengths = as_index_array("lengths", lengths).reshape(-1)
    check_shape("lengths", lengths, (B,), "(one length per batch element)")
    if lengths.min() < 1 or lengths.max() > T:
        raise ValueError(f"lengths: expected every length in 1..{T}, got {lengths.tolist()}")
    return lengths


def align_to_end(a: np.ndarray, lengths=None, reverse: bool = False) -> np.ndarray:
    """Re-index a time-major (T, B, ...) array by distance from each sequence's end.

    out[n, b] = a[t, b] with t = lengths[b] - 1 - n (forward direction: a sequence ends at its own
    last valid step) or t = n (reverse direction: it ends at step 0); zero for n >= lengths[b].
    """
    a = np.asarray(a)
    T, B = a.shape[:2]
    lengths = _check_lengths(lengths, T, B)
    n = np.arange(T)[:, None]  # (T, 1)
    t = n if reverse else lengths[None, :] - 1 - n  # (T, B)
    valid = n < lengths[None, :]
    out = a[np.clip(t, 0, T - 1), np.arange(B)[None, :]]
    out[~valid] = 0
    return out


# --------------------------------------------------------------------------------------------
# Products of Jacobians
# --------------------------------------------------------------------------------------------
def _check_slopes(slopes_end, w_hh):
    w_hh = _check_square("w_hh", w_hh)
    s = np.asarray(slopes_end)
    if s.ndim != 3 or s.shape[-1] != w_hh.shape[0]:
        raise ValueError(
            f"slopes_end: expected shape (T, B, H={w_hh.shape[0]}) (aligned by distance, "
            f"see align_to_end), got {s.shape}"
        )
    return s, w_hh


def jacobian_products(slopes_end: np.ndarray, w_hh: np.ndarray, lengths=None) -> np.ndarray:
    """Dense P(n) = ∂h_end/∂h_{end-n} for n = 0..T: (T + 1, B, H, H), NaN where n > lengths[b].

    slopes_end: (T, B, H), f'(a) by distance from the end (:func:`align_to_end`); P(n+1) = P(n) J,
    J = diag(slopes_end[n]) W_hh. O(T·B·H³).
    """
    s, w = _check_slopes(slopes_end, w_hh)
    T, B, H = s.shape
    lengths = _check_lengths(lengths, T, B)
    out = np.empty((T + 1, B, H, H), dtype=np.result_type(s, w))
    out[0] = np.eye(H)
    for n in range(T):
        # P(n) diag(s) W: scale P's columns by s, then one batched GEMM
        np.matmul(out[n] * s[n][:, None, :], w, out=out[n + 1])
    out[np.arange(T + 1)[:, None] > lengths[None, :]] = np.nan
    return out


def product_singular_values(slopes_end: np.ndarray, w_hh: np.ndarray, lengths=None) -> np.ndarray:
    """Singular values (descending) of P(n) = ∂h_end/∂h_{end-n}, n = 0..T: (T + 1, B, H), NaN where
    n > lengths[b]. The spectral norm is ``[..., 0]``. Running dense product, O(T·B·H³)."""
    s, w = _check_slopes(slopes_end, w_hh)
    T, B, H = s.shape
    lengths = _check_lengths(lengths, T, B)
    out = np.full((T + 1, B, H), np.nan)
    p = np.broadcast_to(np.eye(H), (B, H, H)).astype(np.result_type(s, w))
    for n in range(T + 1):
        out[n] = np.linalg.svd(p, compute_uv=False)
        if n < T:
            p = np.matmul(p * s[n][:, None, :], w)
    out[np.arange(T + 1)[:, None] > lengths[None, :]] = np.nan
    return out


def product_spectral_norms(
    slopes_end: np.ndarray,
    w_hh: np.ndarray,
    distances,
    lengths=None,
    *,
    iters: int = 200,
    tol: float = 1e-12,
    seed: int = 0,
) -> np.ndarray:
    """‖P(n)‖₂ for the given distances without forming P: power iteration on P(n)ᵀP(n), with
    P v and Pᵀ u as chains of n matrix-vector products (O(iters·n·B·H²) per distance).

    Returns (len(distances), B); NaN where n > lengths[b]. The estimate ‖P v‖ (‖v‖ = 1) approaches
    σ₁ from below; iteration stops when every sample's estimate changes by less than ``tol``
    relatively, or after ``iters`` rounds (slow when σ₁ ≈ σ₂).
    """
    s, w = _check_slopes(slopes_end, w_hh)
    T, B, H = s.shape
    lengths = _check_lengths(lengths, T, B)
    distances = as_index_array("distances", distances).reshape(-1)
    if distances.size and (distances.min() < 0 or distances.max() > T):
        raise ValueError(f"distances: expected integers in 0..{T}, got {distances.tolist()}")
    rng = np.random.default_rng(seed)
    out = np.full((distances.size, B), np.nan)
    for i, n in enumerate(distances):
        n = int(n)
        v = rng.standard_normal((B, H))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        est = np.zeros(B)
        for _ in range(iters):
            u = v
            for m in range(n - 1, -1, -1):  # P v = M_0 (M_1 (... M_{n-1} v)), M_m = diag(s_m) W
                u = s[m] * (u @ w.T)
            new = np.linalg.norm(u, axis=1)
            for m in range(n):  # Pᵀ u = M_{n-1}ᵀ (... M_0ᵀ u), M_mᵀ u = Wᵀ (s_m ⊙ u)
                u = (s[m] * u) @ w
            norm = np.linalg.norm(u, axis=1, keepdims=True)
            v = np.where(norm > 0, u / np.where(norm > 0, norm, 1), v)
            done = np.all(np.abs(new - est) <= tol * np.maximum(new, np.finfo(float).tiny))
            est = new
            if done:
                break
        out[i] = est
    out[distances[:, None] > lengths[None, :]] = np.nan
    return out


def grad_norms_by_distance(grads: np.ndarray, lengths=None, reverse: bool = False) -> np.ndarray:
    """‖∂L/∂h_{end-n}‖ per distance and sample: (T, B, H) -> (T, B), NaN beyond each length.

    grads: one layer and direction of ``rnn.hidden_grads`` (time-major, zero at padded steps).
    """
    g = np.asarray(grads)
    if g.ndim != 3:
        raise ValueError(f"grads: expected one (T, B, H) slice of hidden_grads, got shape {g.shape}")
    T, B, _ = g.shape
    lengths = _check_lengths(lengths, T, B)
    norms = np.linalg.norm(align_to_end(g, lengths, reverse), axis=-1)
    norms[np.arange(T)[:, None] >= lengths[None, :]] = np.nan
    return norms


# --------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------
def largest_singular_value(w: np.ndarray) -> float:
    """λ₁ = ‖W‖₂, the largest singular value."""
    return float(np.linalg.norm(_check_square("w", w), 2))


def spectral_radius(w: np.ndarray) -> float:
    """ρ(W) = max |eigenvalue|  (ρ ≤ λ₁, with equality for normal matrices)."""
    return float(np.max(np.abs(np.linalg.eigvals(_check_square("w", w)))))


def pascanu_bound(lambda1: float, nonlinearity: str, distances) -> np.ndarray:
    """(γλ₁)ⁿ for each distance n: the bound on ‖∂h_end/∂h_{end-n}‖₂."""
    gamma = GAMMA[_check_nonlinearity(nonlinearity)]
    if not lambda1 >= 0:
        raise ValueError(f"lambda1: expected a singular value (>= 0), got {lambda1!r}")
    return (gamma * float(lambda1)) ** np.asarray(distances, dtype=np.float64)


def bound_log_rate(lambda1: float, nonlinearity: str) -> float:
    """log(γλ₁): the largest possible per-step log growth rate of ‖∂L/∂h_{end-n}‖."""
    return math.log(GAMMA[_check_nonlinearity(nonlinearity)] * lambda1) if lambda1 > 0 else -math.inf


@dataclass(frozen=True)
class Regime:
    """Where W_hh sits relative to the conditions of Pascanu et al. (2013)."""

    gamma: float
    lambda1: float  # largest singular value of W_hh
    spectral_radius: float
    gamma_lambda1: float
    vanishing_guaranteed: bool  # γλ₁ < 1: sufficient for vanishing
    exploding_possible: bool  # γλ₁ > 1: necessary (not sufficient) for exploding


def regime(w_hh: np.ndarray, nonlinearity: str) -> Regime:
    gamma = GAMMA[_check_nonlinearity(nonlinearity)]
    lam1 = largest_singular_value(w_hh)
    return Regime(gamma, lam1, spectral_radius(w_hh), gamma * lam1, gamma * lam1 < 1, gamma * lam1 > 1)


# --------------------------------------------------------------------------------------------
# Rate fits
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RateFit:
    """log ‖g_n‖ ≈ intercept + log_rate · n, a least-squares fit over every finite positive point."""

    log_rate: float  # per-step log growth (< 0: vanishing); compare with bound_log_rate
    factor: float  # exp(log_rate): the per-step multiplicative factor
    intercept: float
    r2: float  # coefficient of determination of the log-linear fit
    n_points: int


def fit_rate(distances, norms, *, min_norm: float = 1e-290) -> RateFit:
    """Fit an exponential rate to norms against distance.

    distances: (N,); norms: (N,) or (N, B) (every column shares the distances, all points pooled).
    Points that are NaN, infinite or below ``min_norm`` (underflowed, or a dead relu path) are left
    out; at least two distinct distances must remain.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    g = np.asarray(norms, dtype=np.float64)
    if g.shape[0] != d.size:
        raise ValueError(f"norms: expected {d.size} rows (one per distance), got shape {g.shape}")
    g = g.reshape(d.size, -1)
    dd = np.broadcast_to(d[:, None], g.shape)
    keep = np.isfinite(g) & (g > min_norm)
    x, y = dd[keep], np.log(g[keep])
    if np.unique(x).size < 2:
        raise ValueError(
            f"fit_rate: expected finite norms above {min_norm:g} at two or more distances, got {np.unique(x).size}"
        )
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    return RateFit(float(slope), float(math.exp(slope)), float(intercept), r2, int(x.size))
