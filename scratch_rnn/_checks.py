"""Input validation shared by every layer: clear errors instead of broadcast tracebacks.

Each check names the argument, what was expected and what was received.
"""
from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype) -> np.dtype:
    """The model dtype: float32 or float64, nothing else."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected np.float32 or np.float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected np.float32 or np.float64, got {dt}")
    return dt


def as_float_array(name: str, value, dtype, *, allow_nonfinite: bool = False) -> np.ndarray:
    """``value`` as an ndarray of ``dtype``; only real floating-point input is accepted.

    Integer, boolean, complex and object arrays raise TypeError (an integer array would silently
    truncate gradients); NaN or inf raise ValueError unless ``allow_nonfinite``.
    """
    if value is None:
        raise TypeError(f"{name}: expected a floating-point array, got None")
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array (float32/float64), got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if not allow_nonfinite:
        check_finite(name, arr)
    return arr


def check_finite(name: str, arr: np.ndarray) -> None:
    """Raise ValueError naming ``name`` and the first offending index when ``arr`` has NaN/inf."""
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))
        idx = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name}: contains {len(bad)} non-finite value(s) (NaN or inf), first at index "
                         f"{idx}: {arr[idx]!r}")


def as_index_array(name: str, value) -> np.ndarray:
    """``value`` as an int64 ndarray; floats, bools and objects raise TypeError."""
    if value is None:
        raise TypeError(f"{name}: expected an integer array, got None")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_shape(name: str, arr: np.ndarray, expected: tuple, what: str = "") -> None:
    """Raise ValueError unless ``arr.shape == expected``; ``what`` spells the dimensions' meaning."""
    if tuple(arr.shape) != tuple(expected):
        meaning = f" {what}" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{meaning}, got {tuple(arr.shape)}")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)
