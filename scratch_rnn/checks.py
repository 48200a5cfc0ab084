"""The one validation layer: every check of the package names the argument, the expected and the received.

Policies, the same everywhere:

- **dtypes: only lossless conversions are implicit**. A floating-point array of a narrower dtype
  than the model's (float16 or float32 into a float64 model) is converted: every value is kept
  exactly, as torch's autograd converts a float32 cotangent for a float64 output and its LSTM takes a
  float32 ``c0`` beside a float64 ``h0``. A wider one (float64 into a float32 model) raises
  ``TypeError`` naming the argument: that conversion rounds, so the caller makes it explicitly.
  Python numbers and lists, which have no dtype of their own, are converted, and a value that does
  not fit the model's dtype (1e300 into float32) is named as an overflow. ``load_state_dict`` casts
  either way, as torch's ``copy_`` does (a state dict is data, not an input).
- **flags are real booleans**: ``"False"``, ``0`` or ``None`` for ``bias`` / ``batch_first`` /
  ``bidirectional`` / ``shuffle`` raise ``TypeError`` (a non-empty string is truthy).
- **indices are integers in range**, printed as given (a huge uint64 is not shown as its int64
  wrap-around).
- **non-finite inputs are refused**, naming the first offending index.
- **numbers come back as Python numbers**: every ``check_*`` of a scalar returns a plain ``int``,
  ``float`` or ``bool`` (``np.int64(3)`` -> ``3``, ``np.bool_(True)`` -> ``True``), and the
  configurations store what it returns. NumPy scalars (what loops over ``np.arange`` produce) are
  accepted once, here, and nothing downstream (JSON, checkpoints) ever sees one.
  :func:`plain_scalar` and :func:`plain_json` do the same for values that are not options
  (an ``evaluate`` hook's metrics, optimizer keyword arguments).
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, overload

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT64_MAX = np.iinfo(np.int64).max


def check_dtype(dtype) -> np.dtype:
    """The model dtype: float32 or float64, nothing else."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected np.float32 or np.float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected np.float32 or np.float64, got {dt}")
    return dt


def _to_numpy(value):
    """torch tensors (anything with ``.detach()``) as ndarrays; everything else unchanged."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value


def as_float_array(name: str, value, dtype, *, allow_nonfinite: bool = False, cast: bool = False) -> np.ndarray:
    """``value`` as an ndarray of ``dtype``; only real floating-point input is accepted.

    Integer, boolean, complex and object arrays raise TypeError (an integer array would silently
    truncate gradients). A floating-point array of another dtype is converted when that is lossless
    (a narrower float: float32 into float64) and raises TypeError otherwise (float64 into float32),
    unless ``cast`` (``load_state_dict`` casts). NaN or inf raise ValueError unless ``allow_nonfinite``;
    a finite value that overflows the dtype is named as such.
    """
    dtype = np.dtype(dtype)
    if value is None:
        raise TypeError(f"{name}: expected a floating-point array, got None")
    value = _to_numpy(value)
    has_dtype = isinstance(value, (np.ndarray, np.generic))
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise TypeError(
            f"{name}: expected a floating-point array, got {type(value).__name__} that is not one ({exc})"
        ) from exc
    if arr.dtype.kind != "f":
        if has_dtype or arr.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected a floating-point array ({dtype}), got dtype {arr.dtype}")
        arr = arr.astype(np.float64)  # a Python list of ints: numbers without a dtype of their own
        has_dtype = False
    if arr.dtype != dtype:
        if has_dtype and not cast and not np.can_cast(arr.dtype, dtype, casting="safe"):
            raise TypeError(
                f"{name}: expected dtype {dtype} (the model's, or a narrower float, which converts "
                f"exactly), got {arr.dtype}; convert it explicitly (e.g. x.astype(np.{dtype.name})): "
                "a conversion that rounds is not made silently"
            )
        src = arr
        with np.errstate(over="ignore"):
            arr = arr.astype(dtype)
        if not allow_nonfinite and arr.size and np.isfinite(src).all() and not np.isfinite(arr).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise ValueError(
                f"{name}: the value {src[idx]!r} at index {idx} overflows {dtype} (largest {np.finfo(dtype).max:.3g})"
            )
    if not allow_nonfinite:
        check_finite(name, arr)
    return arr


def shares_memory(arr: np.ndarray, given) -> bool:
    """Whether ``arr`` may share memory with what the caller passed (an ndarray, a torch tensor, a
    memoryview...): then a module must copy it before keeping it for backward. Lists never do."""
    if isinstance(given, (list, tuple)) or given is None:
        return False
    try:
        return bool(np.may_share_memory(arr, np.asarray(_to_numpy(given))))
    except (TypeError, ValueError):  # pragma: no cover - something np.asarray cannot view: assume shared
        return True


def check_finite(name: str, arr: np.ndarray) -> None:
    """Raise ValueError naming ``name`` and the first offending index when ``arr`` has NaN/inf."""
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))
        idx = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{name}: contains {len(bad)} non-finite value(s) (NaN or inf), first at index {idx}: {arr[idx]!r}"
        )


def as_index_array(name: str, value) -> np.ndarray:
    """``value`` as an int64 ndarray; floats, bools and objects raise TypeError.

    Unsigned values beyond int64 are refused as they are (not printed as their wrap-around).
    """
    if value is None:
        raise TypeError(f"{name}: expected an integer array, got None")
    arr = np.asarray(_to_numpy(value))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and arr.size and int(arr.max()) > _INT64_MAX:
        idx = tuple(int(i) for i in np.argwhere(arr > _INT64_MAX)[0])
        raise ValueError(f"{name}: expected integers below 2**63, got {int(arr[idx])} at index {idx}")
    return arr.astype(np.int64, copy=False)


def check_index_range(name: str, idx: np.ndarray, low: int, high: int, what: str = "") -> None:
    """ValueError unless every entry lies in [low, high); names the first offender and how many."""
    if idx.size == 0:
        return
    bad = (idx < low) | (idx >= high)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        meaning = f" ({what})" if what else ""
        raise ValueError(
            f"{name}: expected values in [{low}, {high}){meaning}, got {int(idx[where])} at index "
            f"{where} ({int(bad.sum())} out of range)"
        )


def check_lengths(name: str, lengths, B: int, T: int) -> np.ndarray:
    """(B,) int64 lengths, each in 1..T (the number of steps)."""
    lengths = as_index_array(name, lengths)
    check_shape(name, lengths, (B,), "(one length per sequence)")
    if B and (lengths.min() < 1 or lengths.max() > T):
        bad = lengths[(lengths < 1) | (lengths > T)]
        raise ValueError(f"{name}: expected every length in 1..{T} (the number of steps), got {bad.tolist()}")
    return lengths


def check_shape(name: str, arr: np.ndarray, expected: tuple, what: str = "") -> None:
    """Raise ValueError unless ``arr.shape == expected``; ``what`` spells the dimensions' meaning."""
    if tuple(arr.shape) != tuple(expected):
        meaning = f" {what}" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{meaning}, got {tuple(arr.shape)}")


@overload
def check_positive_int(name: str, value, *, allow_none: Literal[False] = ...) -> int: ...
@overload
def check_positive_int(name: str, value, *, allow_none: bool) -> int | None: ...


def check_positive_int(name: str, value, *, allow_none: bool = False) -> int | None:
    """The project's one positive-integer check (numpy integers count; bools and floats do not)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


@overload
def check_non_negative_int(name: str, value, *, allow_none: Literal[False] = ...) -> int: ...
@overload
def check_non_negative_int(name: str, value, *, allow_none: bool) -> int | None: ...


def check_non_negative_int(name: str, value, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_probability(name: str, value, *, below_one: bool = False) -> float:
    """A number in [0, 1] (or [0, 1) with ``below_one``)."""
    ok = (
        not isinstance(value, (bool, np.bool_))
        and isinstance(value, numbers.Real)
        and 0.0 <= float(value)
        and (float(value) < 1.0 if below_one else float(value) <= 1.0)
    )
    if not ok:
        raise ValueError(f"{name}: expected a number in [0, 1{')' if below_one else ']'}, got {value!r}")
    return float(value)


def check_real_in(
    name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """A real number in the interval from ``low`` to ``high`` (each end closed unless ``*_open``); NaN is refused."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
    if ok:
        v = float(value)
        ok = (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return v


@overload
def check_positive_float(name: str, value, *, allow_none: Literal[False] = ...) -> float: ...
@overload
def check_positive_float(name: str, value, *, allow_none: bool) -> float | None: ...


def check_positive_float(name: str, value, *, allow_none: bool = False) -> float | None:
    """A finite number > 0."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and not value <= 0)  # (numbers.Real declares < and <= only)
    ):
        raise ValueError(f"{name}: expected a finite number > 0{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def check_non_negative_float(name: str, value) -> float:
    """A finite real number >= 0 (inf and NaN are refused: an lr of inf turns every parameter into NaN)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not float(value) >= 0.0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def check_norm_type(name: str, value) -> float:
    """A p-norm's order: a number >= 1, or inf (also the string "inf").

    Below 1 the "norm" breaks the triangle inequality, 0 counts non-zero entries and -inf is the
    smallest magnitude: none of them bounds a gradient's size, so they are refused (torch accepts them).
    """
    if isinstance(value, str):
        if value.lower() != "inf":
            raise ValueError(f"{name}: expected a number >= 1 or 'inf', got {value!r}")
        return math.inf
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not float(value) >= 1.0:
        raise ValueError(
            f"{name}: expected a number >= 1 or inf (a p-norm needs p >= 1; 0, -inf and p < 1 "
            f"do not measure the gradient's size), got {value!r}"
        )
    return float(value)


def check_bool(name: str, value) -> bool:
    """A real boolean (``True``/``False`` or numpy's); the string "False" is not False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_choice(name: str, value, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")
    return value


def plain_scalar(name: str, value) -> bool | int | float:
    """``value`` as a Python ``bool``, ``int`` or ``float`` (NumPy scalars and 0-d arrays unwrapped).

    Anything else (a string, a list, an array of several values, a complex number, None) raises
    TypeError naming ``name``: a metric or a setting that is not one real number.
    """
    value = _to_numpy(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    shape = f" of shape {value.shape}" if isinstance(value, np.ndarray) else ""
    raise TypeError(
        f"{name}: expected one real number (int, float or bool, NumPy's included), got "
        f"{type(value).__name__}{shape}: {value!r:.80}"
    )


def plain_json(name: str, value):
    """``value`` with every NumPy scalar made a Python number and tuples made lists, as JSON holds it.

    Dicts need string keys; anything JSON cannot hold raises TypeError naming where it is
    (``name['betas'][1]``).
    """
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:  # np.float64 is a float too
        return value.item() if isinstance(value, np.str_) else plain_scalar(name, value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{name}: expected string keys, got {bad[0]!r}")
        return {k: plain_json(f"{name}[{k!r}]", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(f"{name}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(
        f"{name}: expected a number, string, bool, None, list or dict (what JSON holds), got "
        f"{type(value).__name__}: {value!r:.80}"
    )
