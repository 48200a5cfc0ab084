"""Initializers for the recurrent weights W_hh, with control of the quantity that decides whether
gradients vanish or explode (see :mod:`scratch_rnn.diagnostics`): the largest singular value λ₁ or
the spectral radius ρ.

- ``torch_uniform``: torch.nn.RNN's default, every parameter U(-1/√H, 1/√H).
- ``gaussian``: W_ij ~ N(0, 1/H) (optionally only ``nonzero_per_row`` entries per row, as in Pascanu
  et al.'s "smart" tanh init), rescaled to a chosen λ₁ or ρ.
- ``orthogonal``: a Haar-random orthogonal matrix (QR of a Gaussian matrix with the signs of R's
  diagonal folded in), times a gain: every singular value equals the gain (Saxe et al. 2014).
- ``identity``: gain · I, with zero biases for the IRNN of Le, Jaitly & Hinton (2015).

Pure functions return new (H, H) arrays; :func:`init_rnn` writes them into every layer and direction
of a :class:`scratch_rnn.RNN` in place (optimizers hold the live arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import check_bool, check_positive_int

__all__ = [
    "SCHEMES",
    "TARGETS",
    "RecurrentInit",
    "gaussian",
    "identity",
    "init_rnn",
    "orthogonal",
    "recurrent_matrix",
    "rescale",
    "torch_uniform",
    "forget_gate_bias",
]

SCHEMES = ("torch_uniform", "gaussian", "orthogonal", "identity")
TARGETS = ("singular_value", "spectral_radius")


def _check_scale(name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def torch_uniform(shape, hidden_size: int, rng=None) -> np.ndarray:
    """U(-1/√H, 1/√H) samples of ``shape`` (torch.nn.RNN's init of every parameter)."""
    k = 1.0 / math.sqrt(check_positive_int("hidden_size", hidden_size))
    return _rng(rng).uniform(-k, k, size=shape)


def rescale(w: np.ndarray, value: float, target: str = "singular_value") -> np.ndarray:
    """``w`` scaled so that its largest singular value (or spectral radius) equals ``value``."""
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {TARGETS}, got {target!r}")
    value = _check_scale("value", value)
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"w: expected a square (H, H) matrix, got shape {w.shape}")
    current = np.linalg.norm(w, 2) if target == "singular_value" else np.max(np.abs(np.linalg.eigvals(w)))
    if current == 0:
        raise ValueError(f"w: its {target.replace('_', ' ')} is 0, it cannot be rescaled to {value}")
    return w * (value / current)


def gaussian(
    hidden_size: int,
    rng=None,
    *,
    singular_value: float | None = None,
    spectral_radius: float | None = None,
    nonzero_per_row: int | None = None,
) -> np.ndarray:
    """W_ij ~ N(0, 1/H), then rescaled to the given largest singular value or spectral radius (at
    most one; neither: left as drawn, λ₁ ≈ 2 and ρ ≈ 1 for large H). With ``nonzero_per_row``, all
    but that many random entries of each row are zeroed before rescaling."""
    H = check_positive_int("hidden_size", hidden_size)
    if singular_value is not None and spectral_radius is not None:
        raise ValueError("gaussian: expected at most one of singular_value and spectral_radius, got both")
    rng = _rng(rng)
    w = rng.standard_normal((H, H)) / math.sqrt(H)
    if nonzero_per_row is not None:
        k = check_positive_int("nonzero_per_row", nonzero_per_row)
        if k > H:
            raise ValueError(f"nonzero_per_row: expected at most hidden_size={H}, got {k}")
        for row in w:
            row[rng.permutation(H)[k:]] = 0.0
    if singular_value is not None:
        return rescale(w, singular_value, "singular_value")
    if spectral_radius is not None:
        return rescale(w, spectral_radius, "spectral_radius")
    return w


def orthogonal(hidden_size: int, rng=None, gain: float = 1.0) -> np.ndarray:
    """gain · Q with Q Haar-distributed orthogonal: Q R = G (G Gaussian), Q ← Q diag(sign(diag R))."""
    H = check_positive_int("hidden_size", hidden_size)
    gain = _check_scale("gain", gain)
    q, r = np.linalg.qr(_rng(rng).standard_normal((H, H)))
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    return gain * (q * d[None, :])


def identity(hidden_size: int, gain: float = 1.0) -> np.ndarray:
    """gain · I."""
    return _check_scale("gain", gain) * np.eye(check_positive_int("hidden_size", hidden_size))


@dataclass(frozen=True)
class RecurrentInit:
    """How to initialise an RNN's recurrent weights (and, optionally, the rest).

    scheme: one of SCHEMES. scale: for ``gaussian`` and ``torch_uniform``, the value the ``target``
    (λ₁ or ρ) is rescaled to (None: as drawn); for ``orthogonal`` and ``identity``, the gain (every
    singular value and |eigenvalue| equals it; None means 1). zero_bias: set every bias to 0 (IRNN).
    input_std: if set, W_ih ~ N(0, input_std²) (Le et al. use 0.001); else W_ih keeps torch's init.
    """

    scheme: str = "torch_uniform"
    scale: float | None = None
    target: str = "singular_value"
    nonzero_per_row: int | None = None
    zero_bias: bool = False
    input_std: float | None = None

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: expected one of {SCHEMES}, got {self.scheme!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target: expected one of {TARGETS}, got {self.target!r}")
        for name in ("scale", "input_std"):  # stored as Python floats (np.float32 -> float)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _check_scale(name, getattr(self, name)))
        object.__setattr__(self, "zero_bias", check_bool("zero_bias", self.zero_bias))
        if self.nonzero_per_row is not None:
            object.__setattr__(self, "nonzero_per_row", check_positive_int("nonzero_per_row", self.nonzero_per_row))
        if self.nonzero_per_row is not None and self.scheme != "gaussian":
            raise ValueError(f"nonzero_per_row: only for scheme 'gaussian', got scheme {self.scheme!r}")


def recurrent_matrix(config: RecurrentInit, hidden_size: int, rng=None) -> np.ndarray:
    """One (H, H) W_hh drawn according to ``config``."""
    rng = _rng(rng)
    if config.scheme == "torch_uniform":
        w = torch_uniform((hidden_size, hidden_size), hidden_size, rng)
        return w if config.scale is None else rescale(w, config.scale, config.target)
    if config.scheme == "gaussian":
        key = "singular_value" if config.target == "singular_value" else "spectral_radius"
        return gaussian(hidden_size, rng, nonzero_per_row=config.nonzero_per_row, **{key: config.scale})
    gain = 1.0 if config.scale is None else config.scale
    if config.scheme == "orthogonal":
        return orthogonal(hidden_size, rng, gain)
    return identity(hidden_size, gain)


def init_rnn(model, config: RecurrentInit, seed=None):
    """Initialise ``model`` (a :class:`scratch_rnn.RNN`) in place according to ``config``: every
    ``weight_hh_l*`` from :func:`recurrent_matrix`, then biases and input weights if asked.
    Returns the model.

    Only the Elman cell has the square (H, H) ``W_hh`` these schemes are defined for: an LSTM or GRU
    (W_hh (4H, ·) / (3H, H), one block per gate) raises ValueError naming the parameter. Every new
    value is drawn before the first is written, so a call that fails changes no parameter.
    """
    if not isinstance(config, RecurrentInit):
        raise TypeError(f"config: expected a RecurrentInit, got {type(config).__name__}")
    params = model.parameters()
    for name, p in params.items():
        if name.startswith("weight_hh") and (p.ndim != 2 or p.shape[0] != p.shape[1]):
            raise ValueError(
                f"model: init_rnn sets the Elman cell's square recurrent matrix W_hh (H, H); "
                f"{name} has shape {tuple(p.shape)} ({type(model).__name__}: a gated cell stacks "
                "one block per gate). Use scratch_rnn.RNN, or keep the gated cell's own init"
            )
    rng = _rng(seed)
    staged = {}  # everything is drawn first: an error while drawing leaves the model as it was
    for name, p in params.items():
        if name.startswith("weight_hh"):
            staged[name] = recurrent_matrix(config, p.shape[0], rng)
        elif name.startswith("weight_ih") and config.input_std is not None:
            staged[name] = rng.normal(0.0, config.input_std, size=p.shape)
        elif name.startswith("bias") and config.zero_bias:
            staged[name] = np.zeros(p.shape)
    for name, value in staged.items():
        params[name][...] = value
    return model


def forget_gate_bias(lstm, value: float = 1.0) -> None:
    """Set the LSTM's forget-gate bias to ``value`` in every layer and direction, in place: b_ih's forget block
    (torch's gate order i, f, g, o: rows H..2H) to ``value`` and b_hh's to 0, so that b_ih + b_hh = value
    (Gers, Schmidhuber & Cummins 2000; Jozefowicz, Zaremba & Sutskever 2015 recommend 1).

    Refuses a model that is not an LSTM, or one without biases, before changing anything."""
    from .rnn import LSTM

    if not isinstance(lstm, LSTM):
        raise TypeError(f"lstm: expected a scratch_rnn.LSTM, got {type(lstm).__name__}")
    if not lstm.bias:
        raise ValueError("lstm: the LSTM has no biases (bias=False): there is no forget-gate bias to set")
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not math.isfinite(value)
    ):
        raise ValueError(f"value: expected a finite number, got {value!r}")
    value = float(value)
    H = lstm.hidden_size
    for name, p in lstm.parameters().items():
        if name.startswith("bias_ih"):
            p[H : 2 * H] = value
        elif name.startswith("bias_hh"):
            p[H : 2 * H] = 0.0
