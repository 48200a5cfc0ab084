"""Pascanu, Mikolov & Bengio (2013)'s vanishing-gradient regularizer Ω and its gradient, by hand. NumPy only.

Notation (:mod:`scratch_rnn.cells.elman`'s, steps 0-based): for one layer and one direction,

    a_t = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh,   h_t = f(a_t),   h_{-1} = h0,   s_t = f'(a_t)
    δ_t = dL/dh_t                      the total gradient w.r.t. the state: ``rnn.hidden_grads[0, t]``
    J_t = ∂h_t/∂h_{t-1} = diag(s_t) W_hh,   so the row vector δ_t J_t = (δ_t ⊙ s_t) W_hh =: v_t

with W_hh = ``weight_hh_l0`` as stored (torch's orientation). δ is held constant throughout: Ω is a function
of the parameters through W_hh and through s_t = f'(a_t) only, and no gradient flows through δ.

**form="exact"** (the default): Ω as the paper's section 3.3 defines it, a ratio of norms, over the transitions
between computed states, t = 1 … T-1 (J_0, the step out of h0, is not a term, whether or not h0 was given), and
the exact gradient of that Ω into every parameter (through W_hh and, via f'', through every weight and bias). That
gradient is neither the paper's nor the code's: the paper's eq. 10 keeps only the direct derivative through W_rec,
with squared norms, which is **form="code"** up to the weight α. (This form was called "paper" until part three
of the gradient study; ``form="paper"`` now raises ValueError, pointing to both.)

    r_{b,t} = ‖v_{b,t}‖₂ / ‖δ_{b,t}‖₂
    Ω = (1/B) Σ_b Σ_{t=1}^{T-1} (r_{b,t} - 1)²                      steps="sum" (this form's own)
    Ω = Σ_b Σ_{t=1}^{T-1} (r_{b,t} - 1)² / n                        steps="mean": n = the number of terms

A term is skipped iff δ_{b,t} = 0 exactly (its sequence still counts in B; with steps="sum" there is no division by
T-1, and n counts the terms not skipped).
If δ_{b,t} ≠ 0 but v_{b,t} = 0 (relu with every unit off at step t), the term is (0 - 1)² = 1 and its
gradient is 0. Its gradient, through every path (shapes (T, B, H) unless stated):

    ∂Ω/∂v_t  = (2/B)(r_t - 1) v_t / (‖v_t‖ ‖δ_t‖)      0 where the term is skipped or v_t = 0 (steps="mean": 2/n)
    dW_hh    = Σ_t (δ_t ⊙ s_t)ᵀ ∂Ω/∂v_t                the direct factor W_hh of J_t      (H, H)
    ∂Ω/∂s_t  = δ_t ⊙ (∂Ω/∂v_t W_hhᵀ)
    e_t      = ∂Ω/∂s_t ⊙ f''(a_t)                       what Ω puts on a_t: f'' = -2h(1-h²) (tanh), 0 (relu)
    ε_t      = e_t + (ε_{t+1} W_hh) ⊙ s_t,  ε_T = 0     the total dΩ/da_t: BPTT with e_t injected at a_t
    dW_ih    = Σ_t ε_tᵀ x_t,  dW_hh += Σ_t ε_tᵀ h_{t-1},  db_ih = db_hh = Σ_t ε_t

(the last line is :func:`scratch_rnn.cells.elman.weight_gradients`, with ε in the place of δ).
Every ratio is scale-invariant in δ_{b,t}, so each δ_{b,t} is divided by its largest magnitude first: the
norms then neither underflow nor overflow, and "δ = 0 exactly" is decided on δ itself, never on a rounded norm.

**form="code"**: what the authors' Theano code computes. Read from github.com/pascanur/trainingRNNs, file
RNN.py, function ``jobman`` (lines of commit 3f5df3f):

- l. 67: ``state['bound'] = 1e-20`` (the default threshold, :data:`CODE_BOUND`); l. 155: h0 = 0;
  l. 157-159: ``h_t = activ(h_tm1 · W_hh + u_t · W_uh + b_hh)`` (their W_hh is our W_hhᵀ, one bias);
- l. 166-170, 184-186: ``gH = TT.grad(cost, init_h)``, the gradient w.r.t. scan's (T+1)-long state buffer,
  which their comment (l. 192) reads as the total dC/dh at positions 0 … T; ``ht`` is replaced by the T
  computed states (l. 215), so ``d_ht[1:]`` pairs δ_t with h_t for every t = 0 … T-1 (0-based);
- l. 194-199: s_t = 1 - h² when 'tanh' is in the init's name, h(1-h) for 'sigmoid', 1 otherwise (linear);
- l. 203-206: ``tmp_x = ‖(δ_t ⊙ s_t) W_hh‖²`` (``TT.dot(tmp_x, W_hh.T)``), ``tmp_y = ‖δ_t‖²``: squared norms;
- l. 207: ``(switch(tmp_y >= bound, tmp_x/tmp_y, 1) - 1)²``;  l. 208: ``n_elems = mean_b(tmp_y >= bound)``;
- l. 209: ``Ω = Σ_t mean_b(term) / Σ_t n_elems``, i.e. the mean over the counted terms;
- l. 210-215: ``tmp_gWhh = TT.grad(tmp_reg, W_hh)`` is taken while ``d_ht`` and ``ht`` are free symbolic
  inputs (l. 189-191) and only then are gH and h substituted (``theano.clone``): the gradient reaches W_hh
  only, through the factor W_hh of δ_t J_t, with the states and δ held constant; l. 216-217 add it (× alpha)
  to W_hh's gradient and no other parameter gets any.

So, with q_{b,t} = ‖v_{b,t}‖² / ‖δ_{b,t}‖² and c_{b,t} = [‖δ_{b,t}‖² ≥ 1e-20]:

    term_{b,t} = (q_{b,t} - 1)² where c_{b,t}, else 0       t = 0 … T-1, the first transition (out of h0) included
    Ω = Σ_t mean_b(term_{·,t}) / Σ_t mean_b(c_{·,t})
    dΩ/dW_hh = Σ_{b,t} (δ_{b,t} ⊙ s_{b,t})ᵀ ∂Ω/∂v_{b,t},  ∂Ω/∂v = 4 (q - 1) v / (‖δ‖² Σ_{b,t} c);  0 for the rest

This is steps="mean" (the code's own: the mean over the counted terms, whatever T); steps="sum" gives
Σ_{b,t} term_{b,t} / B instead, the exact form's normalisation, so that the two forms can be compared at one scale.

Where this differs from the code, deliberately: relu (which the code does not have) takes s_t = [h_t > 0], as
the exact form does; when no term counts (Σ c = 0) Ω is 0 with zero gradients, where the code divides 0 by 0;
the ratio of a term that does not count is never formed (the code forms tmp_x/tmp_y also where ``switch``
discards it: 0/0 when δ = 0, which may put NaN into Theano's gradient); the threshold is compared in float64
(the code: floatX); h0 may be given (the code's is always zero; its first term counts either way).

API: ``value, grads = pascanu_omega(rnn, x, form="code")`` right after ``rnn(x, h0)`` and
``rnn.backward(...)`` (before any parameter update), for a single-layer, unidirectional :class:`RNN`, tanh or
relu, with or without bias, time-major or ``batch_first``, float32 or float64, h0 given or not. ``x`` is that
forward's input, in the RNN's layout; the exact form needs it (the gradient reaches W_ih through x_t), the code
form does not (it is then checked if given). The states and δ are read from ``rnn.states`` and
``rnn.hidden_grads``; nothing in the RNN is changed. They are one forward+backward pair by construction (a forward
drops the previous backward's ``hidden_grads``: Ω after another forward raises, it does not pair the new states with
the old δ), and a weight changed in place since that forward (an optimizer step, ``load_state_dict``,
``W[...] = ...``) raises RuntimeError naming it (``Module.check_parameters_unchanged``). Given x, the states are
first checked to be those of x under the current parameters (recomputed in one pass from the stored h_{t-1}, to a
rounding bound), which catches a wrong x or layout, a changed bias, and a forward run with ``lengths``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .cells.elman import activation_derivative, activation_forward, weight_gradients
from .cells.loops import input_projection
from .checks import as_float_array, check_choice, check_shape

__all__ = ["pascanu_omega", "omega_of", "FORMS", "STEPS", "CODE_BOUND", "FIRST_TRANSITION"]

FORMS = ("exact", "code")
# How each form combines its terms over the steps, unless ``steps`` says otherwise.
OWN_STEPS = {"exact": "sum", "code": "mean"}
STEPS = ("sum", "mean")
# The authors' threshold on ‖δ‖² below which a term does not count (RNN.py l. 67, state['bound']).
CODE_BOUND = 1e-20
# The first transition t (J_t = ∂h_t/∂h_{t-1}, 0-based, h_{-1} = h0) each form counts.
FIRST_TRANSITION = {"exact": 1, "code": 0}
# The exact form's name until part three of the gradient study: refused (the paper's eq. 10 is the code form).
AMBIGUOUS_FORM = (
    "form: \"paper\" is ambiguous: the paper's eq. 10 (Pascanu et al. 2013) is form=\"code\" up to the "
    "weight α (the direct derivative through W_hh, squared norms, as in their code); the exact gradient "
    "of Ω into every parameter, formerly called \"paper\", is form=\"exact\""
)


def pascanu_omega(rnn, x=None, *, form: str = "exact", steps: str | None = None) -> tuple[float, OrderedDict]:
    """Ω of the last forward and backward of ``rnn`` and dΩ/dθ with δ = ``rnn.hidden_grads`` held constant.

    rnn: a single-layer, unidirectional :class:`~scratch_rnn.RNN` after ``forward`` and ``backward`` (no
    ``lengths``, batched input); x: optional, that forward's input in the caller's layout, (T, B, I) or
    (B, T, I) with ``batch_first`` (default: the input the RNN kept, ``rnn.last_forward.input``; given, it is
    checked to be the one the states were computed from); form: "exact" or "code" (module docstring; "paper",
    the exact form's old name, raises ValueError); steps: "sum" (the sum over steps of the batch mean) or "mean"
    (the mean over the counted terms), default the form's own (exact: "sum", code: "mean").
    Returns (Ω as a float, grads): grads has exactly the keys of ``rnn.state_dict()``, each array shaped
    like its parameter, in the RNN's dtype. Changes nothing in ``rnn``.
    Raises ValueError naming the argument for what is not supported (num_layers > 1, bidirectional,
    unbatched x, a forward with lengths, a wrong x), RuntimeError without a backward, TypeError for a cell
    other than the Elman RNN, FloatingPointError if Ω or its gradient is not finite.
    """
    if form == "paper":
        raise ValueError(AMBIGUOUS_FORM)
    form = check_choice("form", form, FORMS)
    steps = OWN_STEPS[form] if steps is None else check_choice("steps", steps, STEPS)
    hs, delta = _last_pass(rnn)  # (T+1, B, H), (T, B, H)
    params = rnn.parameters()
    record = rnn.last_forward
    if record is not None and record.lengths is not None:
        raise ValueError(
            "lengths: pascanu_omega supports full-length batches only; the last forward was given "
            f"lengths {record.lengths.tolist()}"
        )
    if record is not None and not record.batched:
        raise ValueError("x: unbatched (2-D) input is not supported; run the RNN on a batch of one")
    if x is None:  # the forward's own input, as the RNN kept it (time-major)
        x = record.input if record is not None else None
        if x is not None:
            _check_states(rnn, x, hs, params)
    else:
        x = _layer_input(rnn, x, hs, params)
    return omega_of(rnn, x, hs, delta, form, steps)


def omega_of(
    rnn, x, hs: np.ndarray, delta: np.ndarray, form: str = "exact", steps: str | None = None
) -> tuple[float, OrderedDict]:
    """Ω and dΩ/dθ for given states and δ, unchecked: what :func:`pascanu_omega` computes once it has read and
    checked them from the RNN's last forward and backward.

    x: (T, B, I) time-major or None (code form); hs: (T+1, B, H) states, hs[0] = h0; delta: (T, B, H). For
    finite differences with δ held fixed (a forward with changed parameters gives new states, not a new δ).
    form and steps as for :func:`pascanu_omega`.
    """
    if form == "paper":
        raise ValueError(AMBIGUOUS_FORM)
    form = check_choice("form", form, FORMS)
    steps = OWN_STEPS[form] if steps is None else check_choice("steps", steps, STEPS)
    params = rnn.parameters()
    T, B, H = delta.shape
    w_hh = params["weight_hh_l0"]
    slopes = activation_derivative(hs[1:], rnn.nonlinearity)  # s_t = f'(a_t), a new (T, B, H) array
    d_hat = _unit_scale(delta)  # δ_t / max|δ_t|, 0 where δ_t = 0
    u = d_hat * slopes  # δ_t ⊙ s_t
    v = (u.reshape(T * B, H) @ w_hh).reshape(T, B, H)  # δ_t J_t
    first = FIRST_TRANSITION[form]
    with np.errstate(over="ignore", invalid="ignore"):  # reported below as non-finite
        if form == "exact":
            value, dv, n_terms = _exact_terms(d_hat, v, first, B)
        else:
            value, dv, n_terms = _code_terms(delta, d_hat, v, first)
        if steps != OWN_STEPS[form] and n_terms:  # the other normalisation: Ω and dΩ scale alike
            factor = B / n_terms if steps == "mean" else n_terms / B
            value, dv = value * factor, dv * factor

        grads = OrderedDict((name, np.zeros_like(p)) for name, p in params.items())
        grads["weight_hh_l0"] += u.reshape(T * B, H).T @ dv.reshape(T * B, H)  # the direct factor W_hh
        if form == "exact":
            d_slopes = d_hat * (dv.reshape(T * B, H) @ w_hh.T).reshape(T, B, H)  # ∂Ω/∂s_t
            e = d_slopes * _slope_derivative(hs[1:], rnn.nonlinearity)  # ∂Ω/∂a_t, direct
            eps = _through_recurrence(e, slopes, w_hh)  # total dΩ/da_t
            dw_ih, dw_hh, db = weight_gradients(eps, x, hs, reverse=False, bias=rnn.bias)
            grads["weight_ih_l0"] += dw_ih
            grads["weight_hh_l0"] += dw_hh
            if rnn.bias:
                grads["bias_ih_l0"] += db
                grads["bias_hh_l0"] += db
    bad = [name for name, g in grads.items() if not np.isfinite(g).all()]
    if not np.isfinite(value) or bad:
        raise FloatingPointError(
            f"pascanu_omega: Ω = {value!r} or the gradient of {bad} is not finite: the "
            f"ratios overflowed {np.dtype(rnn.dtype).name} (use float64 or smaller weights)"
        )
    return float(value), grads


# --------------------------------------------------------------------------------------------
# The terms of each form: Ω and ∂Ω/∂v_t
# --------------------------------------------------------------------------------------------
def _exact_terms(d_hat: np.ndarray, v: np.ndarray, first: int, B: int):
    """The exact form's Ω (steps="sum") from δ̂ (T, B, H) and v = δ̂ J (T, B, H), terms from step ``first`` on.

    Returns (Ω, ∂Ω/∂v (T, B, H), the number of terms).
    """
    nd = np.linalg.norm(d_hat, axis=-1)  # ‖δ̂_t‖ (T, B): 0 iff δ_t = 0, else in [1, √H]
    nv = np.linalg.norm(v, axis=-1)  # ‖δ̂_t J_t‖ (T, B)
    active = nd > 0
    active[:first] = False
    r = nv / np.where(active, nd, 1)  # r_t (T, B); where inactive: unused
    value = np.sum(np.where(active, (r - 1) ** 2, 0)) / B
    # d(r-1)²/dv = 2(r-1) v/(‖v‖‖δ‖); ‖v‖ = 0 (relu, every unit off): the term is 1 and its gradient 0
    live = active & (nv > 0)
    coef = np.where(live, 2 * (r - 1) / (B * np.where(live, nv * nd, 1)), 0)
    return value, coef[..., None] * v, int(active.sum())


def _code_terms(delta: np.ndarray, d_hat: np.ndarray, v: np.ndarray, first: int):
    """The authors' Ω (RNN.py l. 203-209) from δ (T, B, H), δ̂ and v = δ̂ J, terms from step ``first`` on.

    Returns (Ω, ∂Ω/∂v (T, B, H), the number of counted terms).
    """
    scale = np.abs(delta).max(axis=-1).astype(np.float64)  # max|δ_t| (T, B)
    den = np.sum(d_hat * d_hat, axis=-1)  # ‖δ̂_t‖² (T, B)
    num = np.sum(v * v, axis=-1)  # ‖δ̂_t J_t‖² (T, B)
    counted = scale**2 * den >= CODE_BOUND  # ‖δ_t‖² ≥ bound (l. 207-208)
    counted[:first] = False
    n_counted = int(counted.sum())
    if n_counted == 0:  # the code's 0/0: Ω = 0 here
        return 0.0, np.zeros_like(v), 0
    q = num / np.where(counted, den, 1)  # ‖δJ‖²/‖δ‖², the code's tmp_x/tmp_y
    term = np.where(counted, (q - 1) ** 2, 0)  # a term that does not count: (1 - 1)² = 0
    T, B = counted.shape
    value = term.mean(axis=1).sum() / float(counted.mean(axis=1).sum())  # l. 209
    # dΩ/dterm = 1 / Σc (the B of mean_b cancels); dq/dv = 2v/‖δ‖²
    coef = np.where(counted, 4 * (q - 1) / (n_counted * np.where(counted, den, 1)), 0)
    return value, coef[..., None] * v, n_counted


# --------------------------------------------------------------------------------------------
# The paths through f'(a_t)
# --------------------------------------------------------------------------------------------
def _slope_derivative(h: np.ndarray, nonlinearity: str) -> np.ndarray:
    """f''(a) written from h = f(a), elementwise, a new array: d(1 - tanh²a)/da = -2h(1 - h²); relu: 0.

    (relu's f' = [a > 0] is piecewise constant: its derivative is 0 wherever it exists.)
    """
    if nonlinearity == "tanh":
        return -2 * h * (1 - h * h)
    return np.zeros_like(h)


def _through_recurrence(e: np.ndarray, slopes: np.ndarray, w_hh: np.ndarray) -> np.ndarray:
    """The total dΩ/da_t from the direct e_t = ∂Ω/∂a_t, backwards through a_{t+1} = … + h_t W_hhᵀ:

        ε_t = e_t + (ε_{t+1} W_hh) ⊙ f'(a_t),   ε_T = 0.

    e, slopes: (T, B, H); w_hh: (H, H). Returns ε (T, B, H).
    """
    eps = np.empty_like(e)
    carry = np.zeros_like(e[0])  # ε_{t+1} W_hh = dΩ/dh_t through a_{t+1}, (B, H)
    for t in range(e.shape[0] - 1, -1, -1):
        eps[t] = e[t] + carry * slopes[t]
        carry = eps[t] @ w_hh
    return eps


def _unit_scale(delta: np.ndarray) -> np.ndarray:
    """δ_{b,t} / max|δ_{b,t}| for each step and sequence: (T, B, H) -> (T, B, H), zero rows stay zero."""
    scale = np.abs(delta).max(axis=-1, keepdims=True)
    return delta / np.where(scale > 0, scale, 1)


# --------------------------------------------------------------------------------------------
# What is read from the RNN, checked
# --------------------------------------------------------------------------------------------
def _last_pass(rnn):
    """The states (T+1, B, H) (hs[0] = h0, hs[t+1] = h_t) and δ = dL/dh_t (T, B, H) of the last pass."""
    from .rnn import RNN  # here: rnn.py is the model, this module only reads it

    if not isinstance(rnn, RNN):
        raise TypeError(f"rnn: expected a scratch_rnn.RNN (the Elman RNN), got {type(rnn).__name__}")
    if rnn.num_layers != 1:
        raise ValueError(f"rnn: expected a single-layer RNN (num_layers=1), got num_layers={rnn.num_layers}")
    if rnn.bidirectional:
        raise ValueError("rnn: expected a unidirectional RNN, got bidirectional=True")
    grads = rnn.hidden_grads
    if grads is None:  # a forward drops the previous backward's hidden_grads (docs/model.md)
        last = (
            "the last forward has not been differentiated (another forward ran after the backward: its "
            "states are not those δ came from)"
            if rnn.last_forward is not None
            else "there is no forward"
        )
        raise RuntimeError(
            f"rnn: no backward to read δ from: {last}; call pascanu_omega right after rnn(x, h0) and rnn.backward(...)"
        )
    rnn.check_parameters_unchanged("pascanu_omega")
    states = rnn.states
    if len(states) != 1 or states[0].shape != (grads.shape[1] + 1,) + grads.shape[2:]:  # pragma: no cover
        raise RuntimeError(
            "rnn: its states and hidden_grads are not of the same forward: run forward and backward again"
        )
    return states[0], grads[0]


def _layer_input(rnn, x, hs: np.ndarray, params) -> np.ndarray:
    """x in the caller's layout -> time-major (T, B, I), checked to be the input of the states ``hs``."""
    x = as_float_array("x", x, rnn.dtype)
    if x.ndim == 2:
        raise ValueError(
            f"x: unbatched (2-D) input is not supported, got shape {x.shape}; run the RNN on a "
            "batch of one, x[:, None] (or x[None] with batch_first)"
        )
    T, B = hs.shape[0] - 1, hs.shape[1]
    I = rnn.input_size
    expected, what = (
        ((B, T, I), "(batch, time, input_size), batch_first")
        if rnn.batch_first
        else ((T, B, I), "(time, batch, input_size)")
    )
    check_shape("x", x, expected, f"{what}: the last forward's")
    x = np.ascontiguousarray(x.transpose(1, 0, 2) if rnn.batch_first else x)
    _check_states(rnn, x, hs, params)
    return x


def _check_states(rnn, x: np.ndarray, hs: np.ndarray, params) -> None:
    """Raise ValueError unless h_t = f(x_t W_ihᵀ + b + h_{t-1} W_hhᵀ) for the stored h_{t-1} and h_t.

    One pass over all steps at once (no recurrence: h_{t-1} is read from ``hs``), compared to a bound on the
    rounding of both computations: 4 (I + H + 4) ε Σ|terms of a_t| + 8 ε.
    """
    T, B, H = x.shape[0], x.shape[1], hs.shape[2]
    w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    b_ih, b_hh = params.get("bias_ih_l0"), params.get("bias_hh_l0")
    prev = hs[:-1].reshape(T * B, H)
    a = input_projection(x, w_ih, None if b_ih is None else b_ih + b_hh).reshape(T * B, H) + prev @ w_hh.T
    size = np.abs(x.reshape(T * B, -1)) @ np.abs(w_ih).T + np.abs(prev) @ np.abs(w_hh).T
    if b_ih is not None:
        size += np.abs(b_ih) + np.abs(b_hh)
    eps = float(np.finfo(rnn.dtype).eps)
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.abs(activation_forward(a, rnn.nonlinearity) - hs[1:].reshape(T * B, H))
        bad = ~(err <= 4 * (x.shape[2] + H + 4) * eps * size + 8 * eps)
    if bad.any():
        t, b = divmod(int(np.argwhere(bad)[0][0]), B)
        raise ValueError(
            f"x: the RNN's last forward did not compute its states from this x with the current parameters (first "
            f"mismatch at step {t}, sequence {b}): pass that forward's own input in the RNN's layout, and call "
            "pascanu_omega before any parameter update; a forward run with lengths (packed sequences) is not "
            "supported"
        )
