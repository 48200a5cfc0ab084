"""Optimizers and gradient clipping in NumPy, with torch.optim's semantics and hyperparameter names.

The contract, so that anything can drive them from outside::

    opt = scratch_rnn.optim.Adam(params, lr=1e-3)   # params: dict name -> ndarray, updated IN PLACE
    opt.step(grads)                                 # grads: dict with exactly the same keys/shapes

Each update follows the arithmetic of torch's single-tensor implementation (the one torch uses
for CPU tensors), in the same order, so that float64 trajectories agree with torch to a few ulps
per step:

- ``SGD``: g += wd·p; buf = g (first step) else buf = μ·buf + (1-τ)·g; g = g + μ·buf (nesterov)
  or buf; p -= lr·g.
- ``Adam``: t += 1; g += wd·p; m = lerp(m, g, 1-β1); v = β2·v + (1-β2)·g²;
  [amsgrad: v̂max = max(v̂max, v)]; p -= (lr / (1-β1ᵗ)) · m / (sqrt(v) / sqrt(1-β2ᵗ) + eps).
  eps is added AFTER dividing sqrt(v) by the bias correction, as torch does.
- ``AdamW``: Adam with decoupled decay p *= 1 - lr·wd instead of g += wd·p (default wd 1e-2).
- ``Adagrad``: t += 1; g += wd·p; clr = lr / (1 + (t-1)·lr_decay); s += g²;
  p -= clr · g / (sqrt(s) + eps); s starts at ``initial_accumulator_value``.
- ``RMSprop``: g += wd·p; v = α·v + (1-α)·g²; centered: ḡ = lerp(ḡ, g, 1-α), d = sqrt(v - ḡ²)
  else d = sqrt(v); d += eps; momentum: b = μ·b + g/d, p -= lr·b; else p -= lr·g/d.

``maximize=True`` negates the gradient first, as in torch. Optimizer state is per parameter name
and is created lazily on the first ``step`` (Adagrad's sum at construction), as in torch;
``state_dict()``/``load_state_dict()`` save and restore it exactly.

Edges, checked before anything is updated: every hyperparameter is a finite number (``lr=inf``
or NaN is a ValueError naming it); a gradient must be a floating-point array (an integer, bool or
object gradient is a TypeError naming its key, never a silent cast); one array given under two
names, or two views that overlap in memory, is refused at construction (each name would update
it once more); a state dict with non-finite entries, negative running sums of squares
(``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``, ``sum``) or a ``step`` that is not a finite
integer >= 0 is refused by :meth:`Optimizer.load_state_dict`, naming the parameter and the key.

Norms (:func:`total_norm`, :func:`clip_grad_norm_`) are computed without overflow or underflow:
each array is scaled by the power of two nearest its largest magnitude before the powers are
summed (exact, so the result is bit-identical to the plain formula wherever that one does not
overflow), and so are the per-array norms before they are combined. Gradients of 1e200 give the
right finite norm and clip correctly; only a NaN or infinite entry gives a non-finite norm.
``norm_type`` is p >= 1 or inf: torch also accepts 0 (a count of non-zeros), -inf (the smallest
magnitude) and 0 < p < 1, none of which bounds the gradient's size, so they are refused here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .checks import check_bool, check_non_negative_float, check_norm_type, check_probability

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "Adagrad",
    "RMSprop",
    "OPTIMIZERS",
    "make_optimizer",
    "clip_grad_norm_",
    "clip_grad_value_",
    "total_norm",
]


# ----------------------------------------------------------------------------------------------
# elementwise helpers with torch's arithmetic
# ----------------------------------------------------------------------------------------------
def lerp_(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """a <- a + w (b - a) in place, as torch.lerp_ (which uses b - (b - a)(1 - w) for w >= 0.5)."""
    if w < 0.5:
        a += w * (b - a)
    else:
        a[...] = b - (b - a) * (1.0 - w)
    return a


try:  # NumPy >= 2
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # pragma: no cover - NumPy 1.x
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined]  # NumPy 1.x only: NumPy 2's stubs lack it
_TooHardError = getattr(np, "exceptions", np).TooHardError  # np.exceptions: NumPy >= 1.25


def _check_no_shared_memory(params: Mapping) -> None:
    """Refuse two names whose arrays share memory (the same array twice, or overlapping views):
    the optimizer would update the shared entries once per name.

    A sweep over the arrays' byte ranges (sorted by start) compares only arrays whose ranges
    overlap; for those ``np.shares_memory`` decides exactly (interleaved views such as
    ``a[::2]`` and ``a[1::2]`` do not overlap and are accepted), and an overlap too hard to
    decide counts as one.
    """
    spans = sorted(
        ((*_byte_bounds(p), i, name, p) for i, (name, p) in enumerate(params.items()) if p.size),
        key=lambda t: (t[0], t[2]),
    )
    open_spans: list = []
    for lo, hi, i, name, p in spans:
        open_spans = [s for s in open_spans if s[1] > lo]
        for _, _, j, other, q in open_spans:
            try:
                # NumPy documents any int for max_work; its stubs allow only the constants -1 and 0
                shared = np.shares_memory(p, q, max_work=10**6)  # type: ignore[arg-type]
            except _TooHardError:  # pragma: no cover - pathological strides
                shared = True
            if shared:
                first, second = (other, name) if j < i else (name, other)
                raise ValueError(
                    f"params: {first!r} and {second!r} share memory (the same array, or views that "
                    "overlap); the optimizer would update the shared entries once per name. Pass "
                    "each array once"
                )
        open_spans.append((lo, hi, i, name, p))


def _check_float_array(what: str, value) -> np.ndarray:
    """``value`` as an array, which must be of a floating-point dtype (no silent cast from int/bool/object)."""
    try:
        a = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{what}: expected a floating-point array, got {type(value).__name__} ({exc})") from None
    if a.dtype.kind != "f":
        raise TypeError(f"{what}: expected a floating-point array, got dtype {a.dtype}")
    return a


# state entries that accumulate squares: negative values are impossible (and make sqrt NaN)
_NONNEGATIVE_STATE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"})


# ----------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------
class Optimizer:
    """Base: holds the live ``params`` dict, the hyperparameters and per-parameter state.

    Subclasses set ``defaults`` (torch's names and default values), validate in
    ``_check_hparams`` and implement ``_update(p, g, state)`` for one parameter.
    """

    defaults: dict = {}

    def __init__(self, params: Mapping[str, np.ndarray], **hparams: Any) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(
                f"params: expected a dict of name -> ndarray (updated in place), got {type(params).__name__}"
            )
        if not params:
            raise ValueError("params: expected at least one parameter, got an empty dict")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(
                    f"params[{name!r}]: expected a floating-point ndarray, got "
                    f"{type(p).__name__}{'' if not hasattr(p, 'dtype') else ' of ' + str(p.dtype)}"
                )
            if not p.flags.writeable:
                raise ValueError(f"params[{name!r}]: the array is read-only; the optimizer updates in place")
        _check_no_shared_memory(params)
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown hyperparameter(s) {unknown}; expected some of {sorted(self.defaults)}"
            )
        self.params = params
        self.hparams = self._check_hparams({**self.defaults, **hparams})
        self.state: dict[str, dict] = {name: {} for name in params}
        self.step_count = 0  # completed step() calls

    # -- hyperparameters ------------------------------------------------------------------------
    def _check_hparams(self, h: dict) -> dict:
        h["lr"] = check_non_negative_float("lr", h["lr"])
        return h

    @property
    def lr(self) -> float:
        return self.hparams["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.hparams["lr"] = check_non_negative_float("lr", value)

    # -- stepping -------------------------------------------------------------------------------
    def _check_grads(self, grads) -> None:
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict of name -> ndarray, got {type(grads).__name__}")
        missing = [k for k in self.params if k not in grads]
        unexpected = [k for k in grads if k not in self.params]
        if missing or unexpected:
            raise KeyError(f"grads: expected the keys of params; missing {missing}, unexpected {unexpected}")
        for name, p in self.params.items():
            g = _check_float_array(f"grads[{name!r}]", grads[name])
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}]: expected shape {p.shape} (the parameter's), got {g.shape}")

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One update of every parameter, in place, from ``grads`` (same keys and shapes)."""
        self._check_grads(grads)
        for name, p in self.params.items():
            g = np.asarray(grads[name], dtype=p.dtype)
            if self.hparams.get("maximize", False):
                g = -g
            self._update(p, g, self.state[name])
        self.step_count += 1

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict) -> None:  # pragma: no cover
        raise NotImplementedError

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"hparams": {...}, "state": {name: {key: ndarray}}, "step_count": int}`` (copies)."""
        return dict(
            type=type(self).__name__,
            hparams=dict(self.hparams),
            state={name: {k: np.array(v, copy=True) for k, v in s.items()} for name, s in self.state.items()},
            step_count=int(self.step_count),
        )

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; everything is checked before anything is written.

        The optimizer type, the hyperparameter names, the parameter names, the state keys and
        every array's shape must match (KeyError/ValueError/TypeError naming what differs).
        """
        hparams, state, step_count = self.validate_state_dict(sd)
        self.hparams, self.state, self.step_count = hparams, state, step_count

    def validate_state_dict(self, sd: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
        """Check ``sd`` against this optimizer without changing it; returns the staged
        ``(hparams, state, step_count)`` that :meth:`load_state_dict` installs."""
        if not isinstance(sd, Mapping):
            raise TypeError(f"load_state_dict: expected a dict, got {type(sd).__name__}")
        kind = sd.get("type", type(self).__name__)
        if kind != type(self).__name__:
            raise TypeError(f"load_state_dict: the state is of a {kind} optimizer, this is {type(self).__name__}")
        for key in ("hparams", "state"):
            if key not in sd:
                raise KeyError(f"load_state_dict: missing entry {key!r}")
        if not isinstance(sd["hparams"], Mapping):
            raise TypeError(f"load_state_dict: 'hparams' expected a dict, got {type(sd['hparams']).__name__}")
        hparams = dict(sd["hparams"])
        if set(hparams) != set(self.defaults):
            raise KeyError(
                f"load_state_dict: hyperparameters {sorted(hparams)} differ from {type(self).__name__}'s "
                f"{sorted(self.defaults)}"
            )
        hparams = self._check_hparams({**self.defaults, **hparams})
        state = sd["state"]
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: 'state' expected a dict name -> dict, got {type(state).__name__}")
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        if missing or unexpected:
            raise KeyError(f"load_state_dict: state for missing parameters {missing}, unexpected {unexpected}")
        expected_keys = self._state_keys(hparams)
        new_state = {}
        for name, p in self.params.items():
            if not isinstance(state[name], Mapping):
                raise TypeError(
                    f"load_state_dict: state[{name!r}] expected a dict key -> array, got {type(state[name]).__name__}"
                )
            s = {}
            for k, v in state[name].items():
                where = f"load_state_dict: state[{name!r}][{k!r}]"
                v = np.array(v, copy=True)
                if k == "step":
                    if v.shape != ():
                        raise ValueError(f"{where} expected a scalar, got shape {v.shape}")
                    if v.dtype.kind not in "fiu":
                        raise TypeError(f"{where} expected a number, got dtype {v.dtype}")
                    step = float(v)
                    if not (math.isfinite(step) and step >= 0 and step == math.floor(step)):
                        raise ValueError(
                            f"{where} expected a finite integer >= 0 (the number of steps taken), got {v.item()!r}"
                        )
                    v = v.astype(np.float64)
                elif v.shape != p.shape:
                    raise ValueError(f"{where} expected shape {p.shape}, got {v.shape}")
                else:
                    if v.dtype.kind != "f":
                        raise TypeError(f"{where} expected a floating-point array, got dtype {v.dtype}")
                    with np.errstate(over="ignore"):  # an overflow to inf is reported just below
                        v = v.astype(p.dtype, copy=False)  # as torch: floating state takes the parameter's dtype
                    finite = np.isfinite(v)
                    if not finite.all():
                        raise ValueError(
                            f"{where} expected finite entries, got {v.size - int(finite.sum())} "
                            f"non-finite of {v.size} (as {v.dtype})"
                        )
                    if k in _NONNEGATIVE_STATE and (v < 0).any():
                        raise ValueError(
                            f"{where} expected entries >= 0 (a running sum or average of squares), "
                            f"got {int((v < 0).sum())} negative, the smallest {float(v.min())!r}"
                        )
                s[k] = v
            if s and set(s) != expected_keys:  # an empty state: not stepped yet (lazy init)
                raise KeyError(
                    f"load_state_dict: state[{name!r}] has keys {sorted(s)}, expected "
                    f"{sorted(expected_keys)} for {type(self).__name__} with these hyperparameters"
                )
            new_state[name] = s
        step_count = sd.get("step_count", 0)
        if isinstance(step_count, bool) or not isinstance(step_count, (int, np.integer)) or step_count < 0:
            raise ValueError(f"load_state_dict: step_count expected a non-negative integer, got {step_count!r}")
        return hparams, new_state, int(step_count)

    def _state_keys(self, h: dict) -> set:  # pragma: no cover
        """The state entries one stepped parameter has under hyperparameters ``h``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({len(self.params)} params, {opts})"


# ----------------------------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------------------------
class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, nesterov, weight_decay (L2 added to the gradient)."""

    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)

    def _check_hparams(self, h):
        h = super()._check_hparams(h)
        for k in ("momentum", "dampening", "weight_decay"):
            h[k] = check_non_negative_float(k, h[k])
        h["nesterov"] = check_bool("nesterov", h["nesterov"])
        h["maximize"] = check_bool("maximize", h["maximize"])
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(
                f"nesterov: Nesterov momentum requires momentum > 0 and dampening = 0, got "
                f"momentum={h['momentum']}, dampening={h['dampening']}"
            )
        return h

    def _state_keys(self, h):
        return {"momentum_buffer"} if h["momentum"] != 0 else set()

    def _update(self, p, g, state):
        h = self.hparams
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        if h["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= h["momentum"]
                buf += (1.0 - h["dampening"]) * g
            g = g + h["momentum"] * buf if h["nesterov"] else buf
        p -= h["lr"] * g


# ----------------------------------------------------------------------------------------------
# Adam / AdamW
# ----------------------------------------------------------------------------------------------
class Adam(Optimizer):
    """torch.optim.Adam: betas, eps, weight_decay (L2, coupled), amsgrad."""

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False)
    decoupled_weight_decay = False

    def _check_hparams(self, h):
        h = super()._check_hparams(h)
        betas = h["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        h["betas"] = (
            check_probability("betas[0]", betas[0], below_one=True),
            check_probability("betas[1]", betas[1], below_one=True),
        )
        h["eps"] = check_non_negative_float("eps", h["eps"])
        h["weight_decay"] = check_non_negative_float("weight_decay", h["weight_decay"])
        h["amsgrad"] = check_bool("amsgrad", h["amsgrad"])
        h["maximize"] = check_bool("maximize", h["maximize"])
        return h

    def _state_keys(self, h):
        keys = {"step", "exp_avg", "exp_avg_sq"}
        return keys | {"max_exp_avg_sq"} if h["amsgrad"] else keys

    def _update(self, p, g, state):
        h = self.hparams
        lr, (beta1, beta2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
        if not state:
            state["step"] = np.array(0.0)
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
            if h["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p)
        state["step"] = np.array(float(state["step"]) + 1.0)
        step = float(state["step"])
        if wd != 0:
            if self.decoupled_weight_decay:
                p *= 1.0 - lr * wd
            else:
                g = g + wd * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        lerp_(m, g, 1.0 - beta1)
        v *= beta2
        v += (1.0 - beta2) * g * g
        bias_correction1 = 1.0 - beta1**step
        bias_correction2 = 1.0 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        if h["amsgrad"]:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            denom = np.sqrt(state["max_exp_avg_sq"]) / bias_correction2_sqrt + eps
        else:
            denom = np.sqrt(v) / bias_correction2_sqrt + eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay p *= 1 - lr·wd (default wd 1e-2)."""

    defaults = dict(Adam.defaults, weight_decay=1e-2)
    decoupled_weight_decay = True


# ----------------------------------------------------------------------------------------------
# Adagrad
# ----------------------------------------------------------------------------------------------
class Adagrad(Optimizer):
    """torch.optim.Adagrad: lr_decay, weight_decay, initial_accumulator_value, eps."""

    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False)

    def __init__(self, params: Mapping[str, np.ndarray], **hparams: Any) -> None:
        super().__init__(params, **hparams)
        # torch creates the state at construction
        for name, p in self.params.items():
            self.state[name] = dict(step=np.array(0.0), sum=np.full_like(p, self.hparams["initial_accumulator_value"]))

    def _check_hparams(self, h):
        h = super()._check_hparams(h)
        for k in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            h[k] = check_non_negative_float(k, h[k])
        h["maximize"] = check_bool("maximize", h["maximize"])
        return h

    def _state_keys(self, h):
        return {"step", "sum"}

    def _update(self, p, g, state):
        h = self.hparams
        state["step"] = np.array(float(state["step"]) + 1.0)
        step = float(state["step"])
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
        s = state["sum"]
        s += g * g
        std = np.sqrt(s) + h["eps"]
        p -= clr * (g / std)


# ----------------------------------------------------------------------------------------------
# RMSprop
# ----------------------------------------------------------------------------------------------
class RMSprop(Optimizer):
    """torch.optim.RMSprop: alpha, eps, weight_decay, momentum, centered."""

    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False)

    def _check_hparams(self, h):
        h = super()._check_hparams(h)
        for k in ("alpha", "eps", "weight_decay", "momentum"):
            h[k] = check_non_negative_float(k, h[k])
        h["centered"] = check_bool("centered", h["centered"])
        h["maximize"] = check_bool("maximize", h["maximize"])
        return h

    def _state_keys(self, h):
        keys = {"step", "square_avg"}
        if h["momentum"] > 0:
            keys.add("momentum_buffer")
        if h["centered"]:
            keys.add("grad_avg")
        return keys

    def _update(self, p, g, state):
        h = self.hparams
        alpha = h["alpha"]
        if not state:
            state["step"] = np.array(0.0)
            state["square_avg"] = np.zeros_like(p)
            if h["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(p)
            if h["centered"]:
                state["grad_avg"] = np.zeros_like(p)
        state["step"] = np.array(float(state["step"]) + 1.0)
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        sq = state["square_avg"]
        sq *= alpha
        sq += (1.0 - alpha) * g * g
        if h["centered"]:
            ga = lerp_(state["grad_avg"], g, 1.0 - alpha)
            avg = np.sqrt(sq - ga * ga)
        else:
            avg = np.sqrt(sq)
        avg += h["eps"]
        if h["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= h["momentum"]
            buf += g / avg
            p -= h["lr"] * buf
        else:
            p -= h["lr"] * (g / avg)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "adagrad": Adagrad, "rmsprop": RMSprop}


def make_optimizer(name: str, params: Mapping[str, np.ndarray], **hparams: Any) -> Optimizer:
    """The optimizer called ``name`` (case-insensitive: sgd, adam, adamw, adagrad, rmsprop)."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[key](params, **hparams)


# ----------------------------------------------------------------------------------------------
# clipping
# ----------------------------------------------------------------------------------------------
def _items(grads) -> list:
    """``[(key, array)]`` of a dict, a list/tuple, or one ndarray (as torch accepts one tensor)."""
    if isinstance(grads, Mapping):
        return list(grads.items())
    if isinstance(grads, np.ndarray):
        return [(0, grads)]
    try:
        return list(enumerate(grads))
    except TypeError:
        raise TypeError(
            f"grads: expected a dict name -> ndarray, a list of ndarrays or one ndarray, got {type(grads).__name__}"
        ) from None


def _checked_arrays(grads, *, in_place: bool) -> list:
    """The gradient arrays, each checked to be floating-point (and a writable ndarray when
    ``in_place``), all before any is used."""
    out = []
    for key, g in _items(grads):
        what = f"grads[{key!r}]"
        if in_place and not isinstance(g, np.ndarray):
            raise TypeError(f"{what}: expected a floating-point ndarray (clipped in place), got {type(g).__name__}")
        g = _check_float_array(what, g)
        if in_place and not g.flags.writeable:
            raise ValueError(f"{what}: the array is read-only; clipping modifies it in place")
        out.append(g)
    return out


_SAFE_LOW, _SAFE_HIGH = 2.0**-300, 2.0**300  # squares of up to 2**100 such entries stay normal and finite


def _scaled_norm(a, p: float) -> tuple[float, int]:
    """``(r, e)`` with torch.linalg.vector_norm(a, p) == r * 2**e, computed without overflow.

    ``a`` is scaled by 2**-e, e the binary exponent of its largest magnitude, before powering and
    summing; scaling by a power of two is exact, so ``r * 2**e`` equals the plain formula bit for
    bit wherever that one neither overflows nor underflows. A NaN entry gives ``(nan, 0)``, an
    infinite one ``(inf, 0)``; an empty or all-zero ``a`` gives ``(0.0, 0)``.
    """
    a = np.array(a, dtype=np.float64).ravel()  # always a fresh array: made absolute and scaled in place below
    if a.size == 0:
        return 0.0, 0
    top = max(float(a.max()), -float(a.min()))  # NaN when any entry is NaN
    if not math.isfinite(top) or top == 0.0:
        return float(np.abs(top)), 0
    if p == 2 and _SAFE_LOW < top < _SAFE_HIGH:
        # nothing can overflow or underflow: scaling by 2**-e would change no bit of the result
        return float(np.sqrt(np.dot(a, a))), 0
    np.abs(a, out=a)
    if p == math.inf:
        return top, 0
    e = math.frexp(top)[1]
    np.ldexp(a, -e, out=a)
    if p == 1:
        return float(a.sum()), e
    if p == 2:
        return float(np.sqrt(np.dot(a, a))), e
    return float(np.sum(a**p) ** (1.0 / p)), e


def _scaled_total(arrays, p: float) -> tuple[float, int]:
    """``(r, e)``: the norm of the per-array norms (as torch), each kept as ``(r_i, e_i)`` so that
    neither they nor the total overflow."""
    parts = [_scaled_norm(g, p) for g in arrays]
    if any(math.isnan(r) for r, _ in parts):
        return math.nan, 0
    if any(math.isinf(r) for r, _ in parts):
        return math.inf, 0
    exps = [e for r, e in parts if r > 0]
    if not exps:
        return 0.0, 0
    top = max(exps)
    r, e = _scaled_norm(np.array([math.ldexp(r, e - top) for r, e in parts]), p)
    return r, e + top


def _as_float(r: float, e: int) -> float:
    try:
        return math.ldexp(r, e)
    except OverflowError:  # beyond float64's range (only for gradients near 1e308 themselves)
        return math.inf


def total_norm(grads: Mapping[str, np.ndarray] | Iterable[np.ndarray], norm_type: float = 2.0) -> float:
    """The norm of all gradients together, as one vector (the norm of the per-array norms, as torch).

    ``norm_type``: p >= 1 or inf (see :func:`scratch_rnn.checks.check_norm_type`). Computed without overflow (see
    the module docstring): finite gradients give a finite norm unless the norm itself exceeds
    float64's range (~1.8e308); a NaN entry gives NaN, an infinite one inf.
    """
    p = check_norm_type("norm_type", norm_type)
    return _as_float(*_scaled_total(_checked_arrays(grads, in_place=False), p))


def clip_grad_norm_(
    grads: Mapping[str, np.ndarray] | Iterable[np.ndarray],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale all gradients in place by min(1, max_norm / (total + 1e-6)); return the pre-clip total.

    ``grads``: a dict name -> ndarray, a list of ndarrays or one ndarray, floating-point and
    writable (checked before any is changed), modified in place. ``max_norm``: a finite number
    >= 0; ``norm_type``: p >= 1 or inf. As ``torch.nn.utils.clip_grad_norm_``: a non-finite total
    norm (a NaN or infinite gradient entry) raises with ``error_if_nonfinite``, and otherwise
    propagates (the coefficient is NaN or 0). The norm is computed without overflow, so huge
    finite gradients (1e200) are scaled correctly, never zeroed; should the norm exceed
    float64's range (gradients near 1e308) it is returned as inf, the clipping is still exact
    and ``error_if_nonfinite`` does not raise (every entry is finite).
    """
    max_norm = check_non_negative_float("max_norm", max_norm)
    p = check_norm_type("norm_type", norm_type)
    error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
    arrays = _checked_arrays(grads, in_place=True)
    r, e = _scaled_total(arrays, p)
    total = _as_float(r, e)
    if error_if_nonfinite and not math.isfinite(r):
        raise FloatingPointError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
            f"{total}, so they cannot be clipped"
        )
    if math.isfinite(r) and math.isinf(total):  # finite gradients, a norm beyond float64: scale in two exact-ish steps
        for g in arrays:
            np.ldexp(g, -e, out=g)
            g *= max_norm / r
        return total
    coef = max_norm / (total + 1e-6)
    coef = coef if math.isnan(coef) else min(coef, 1.0)
    if coef != 1.0:
        for g in arrays:
            g *= coef
    return total


def clip_grad_value_(grads: Mapping[str, np.ndarray] | Iterable[np.ndarray], clip_value: float) -> None:
    """Clamp every gradient entry to [-clip_value, clip_value], in place (``clip_value``: finite, >= 0)."""
    clip_value = check_non_negative_float("clip_value", clip_value)
    for g in _checked_arrays(grads, in_place=True):
        np.clip(g, -clip_value, clip_value, out=g)
