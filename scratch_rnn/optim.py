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
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "OPTIMIZERS", "make_optimizer",
    "clip_grad_norm_", "clip_grad_value_", "total_norm",
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


def _check_nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0.0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return float(value)


def _check_beta(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


# ----------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------
class Optimizer:
    """Base: holds the live ``params`` dict, the hyperparameters and per-parameter state.

    Subclasses set ``defaults`` (torch's names and default values), validate in
    ``_check_hparams`` and implement ``_update(p, g, state)`` for one parameter.
    """

    defaults: dict = {}

    def __init__(self, params: Mapping, **hparams):
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict of name -> ndarray (updated in place), got "
                            f"{type(params).__name__}")
        if not params:
            raise ValueError("params: expected at least one parameter, got an empty dict")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}]: expected a floating-point ndarray, got "
                                f"{type(p).__name__}{'' if not hasattr(p, 'dtype') else ' of ' + str(p.dtype)}")
            if not p.flags.writeable:
                raise ValueError(f"params[{name!r}]: the array is read-only; the optimizer updates in place")
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameter(s) {unknown}; expected some of "
                            f"{sorted(self.defaults)}")
        self.params = params
        self.hparams = self._check_hparams({**self.defaults, **hparams})
        self.state: dict[str, dict] = {name: {} for name in params}
        self.step_count = 0  # completed step() calls

    # -- hyperparameters ------------------------------------------------------------------------
    def _check_hparams(self, h: dict) -> dict:
        h["lr"] = _check_nonneg("lr", h["lr"])
        return h

    @property
    def lr(self) -> float:
        return self.hparams["lr"]

    @lr.setter
    def lr(self, value) -> None:
        self.hparams["lr"] = _check_nonneg("lr", value)

    # -- stepping -------------------------------------------------------------------------------
    def _check_grads(self, grads) -> None:
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict of name -> ndarray, got {type(grads).__name__}")
        missing = [k for k in self.params if k not in grads]
        unexpected = [k for k in grads if k not in self.params]
        if missing or unexpected:
            raise KeyError(f"grads: expected the keys of params; missing {missing}, unexpected {unexpected}")
        for name, p in self.params.items():
            g = grads[name]
            if np.shape(g) != p.shape:
                raise ValueError(f"grads[{name!r}]: expected shape {p.shape} (the parameter's), got "
                                 f"{np.shape(g)}")

    def step(self, grads: Mapping) -> None:
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
    def state_dict(self) -> dict:
        """``{"hparams": {...}, "state": {name: {key: ndarray}}, "step_count": int}`` (copies)."""
        return dict(
            type=type(self).__name__,
            hparams=dict(self.hparams),
            state={name: {k: np.array(v, copy=True) for k, v in s.items()} for name, s in self.state.items()},
            step_count=int(self.step_count),
        )

    def load_state_dict(self, sd: Mapping) -> None:
        """Restore a ``state_dict()``; everything is checked before anything is written.

        The optimizer type, the hyperparameter names, the parameter names, the state keys and
        every array's shape must match (KeyError/ValueError/TypeError naming what differs).
        """
        hparams, state, step_count = self.validate_state_dict(sd)
        self.hparams, self.state, self.step_count = hparams, state, step_count

    def validate_state_dict(self, sd: Mapping):
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
        hparams = dict(sd["hparams"])
        if set(hparams) != set(self.defaults):
            raise KeyError(f"load_state_dict: hyperparameters {sorted(hparams)} differ from {type(self).__name__}'s "
                           f"{sorted(self.defaults)}")
        hparams = self._check_hparams({**self.defaults, **hparams})
        state = sd["state"]
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        if missing or unexpected:
            raise KeyError(f"load_state_dict: state for missing parameters {missing}, unexpected {unexpected}")
        expected_keys = self._state_keys(hparams)
        new_state = {}
        for name, p in self.params.items():
            s = {}
            for k, v in state[name].items():
                v = np.array(v, copy=True)
                if k == "step":
                    if v.shape != ():
                        raise ValueError(f"load_state_dict: state[{name!r}]['step'] expected a scalar, got "
                                         f"shape {v.shape}")
                    v = v.astype(np.float64)
                elif v.shape != p.shape:
                    raise ValueError(f"load_state_dict: state[{name!r}][{k!r}] expected shape {p.shape}, got "
                                     f"{v.shape}")
                else:
                    v = v.astype(p.dtype, copy=False)
                s[k] = v
            if s and set(s) != expected_keys:  # an empty state: not stepped yet (lazy init)
                raise KeyError(f"load_state_dict: state[{name!r}] has keys {sorted(s)}, expected "
                               f"{sorted(expected_keys)} for {type(self).__name__} with these hyperparameters")
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
            h[k] = _check_nonneg(k, h[k])
        h["nesterov"] = _check_bool("nesterov", h["nesterov"])
        h["maximize"] = _check_bool("maximize", h["maximize"])
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"nesterov: Nesterov momentum requires momentum > 0 and dampening = 0, got "
                             f"momentum={h['momentum']}, dampening={h['dampening']}")
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
        h["betas"] = (_check_beta("betas[0]", betas[0]), _check_beta("betas[1]", betas[1]))
        h["eps"] = _check_nonneg("eps", h["eps"])
        h["weight_decay"] = _check_nonneg("weight_decay", h["weight_decay"])
        h["amsgrad"] = _check_bool("amsgrad", h["amsgrad"])
        h["maximize"] = _check_bool("maximize", h["maximize"])
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
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2 = 1.0 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
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

    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                    maximize=False)

    def __init__(self, params, **hparams):
        super().__init__(params, **hparams)
        # torch creates the state at construction
        for name, p in self.params.items():
            self.state[name] = dict(step=np.array(0.0),
                                    sum=np.full_like(p, self.hparams["initial_accumulator_value"]))

    def _check_hparams(self, h):
        h = super()._check_hparams(h)
        for k in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            h[k] = _check_nonneg(k, h[k])
        h["maximize"] = _check_bool("maximize", h["maximize"])
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

    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                    maximize=False)

    def _check_hparams(self, h):
        h = super()._check_hparams(h)
        for k in ("alpha", "eps", "weight_decay", "momentum"):
            h[k] = _check_nonneg(k, h[k])
        h["centered"] = _check_bool("centered", h["centered"])
        h["maximize"] = _check_bool("maximize", h["maximize"])
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


def make_optimizer(name: str, params: Mapping, **hparams) -> Optimizer:
    """The optimizer called ``name`` (case-insensitive: sgd, adam, adamw, adagrad, rmsprop)."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[key](params, **hparams)


# ----------------------------------------------------------------------------------------------
# clipping
# ----------------------------------------------------------------------------------------------
def _arrays(grads) -> list:
    return list(grads.values()) if isinstance(grads, Mapping) else list(grads)


def _check_norm_type(norm_type) -> float:
    if isinstance(norm_type, str):
        if norm_type.lower() != "inf":
            raise ValueError(f"norm_type: expected a number or 'inf', got {norm_type!r}")
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or math.isnan(norm_type):
        raise ValueError(f"norm_type: expected a number or 'inf', got {norm_type!r}")
    return float(norm_type)


def _vector_norm(a: np.ndarray, p: float) -> float:
    """torch.linalg.vector_norm of the flattened ``a``."""
    a = np.abs(np.asarray(a, dtype=np.float64).ravel())
    if a.size == 0:
        return 0.0
    if p == math.inf:
        return float(a.max())
    if p == -math.inf:
        return float(a.min())
    if p == 0:
        return float(np.count_nonzero(a))
    if p == 1:
        return float(a.sum())
    if p == 2:
        return float(np.sqrt(np.dot(a, a)))
    return float(np.sum(a ** p) ** (1.0 / p))


def total_norm(grads, norm_type=2.0) -> float:
    """The norm of all gradients together, as one vector (the norm of the per-array norms, as torch)."""
    p = _check_norm_type(norm_type)
    arrays = _arrays(grads)
    if not arrays:
        return 0.0
    return _vector_norm(np.array([_vector_norm(g, p) for g in arrays]), p)


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place by min(1, max_norm / (total + 1e-6)); return the pre-clip total.

    ``grads``: a dict name -> ndarray (or a list of ndarrays), modified in place. As
    ``torch.nn.utils.clip_grad_norm_``: a non-finite total norm raises with
    ``error_if_nonfinite``, and otherwise propagates (the coefficient is NaN or 0).
    """
    max_norm = _check_nonneg("max_norm", max_norm)
    total = total_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise FloatingPointError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                                 f"{total}, so they cannot be clipped")
    coef = max_norm / (total + 1e-6)
    coef = coef if math.isnan(coef) else min(coef, 1.0)
    if coef != 1.0:
        for g in _arrays(grads):
            g *= coef
    return total


def clip_grad_value_(grads, clip_value) -> None:
    """Clamp every gradient entry to [-clip_value, clip_value], in place."""
    clip_value = _check_nonneg("clip_value", clip_value)
    for g in _arrays(grads):
        np.clip(g, -clip_value, clip_value, out=g)
