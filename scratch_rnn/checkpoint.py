"""Checkpoints: model + optimizer + step + RNG state + config in ONE ``.npz`` archive, written atomically.

Layout of the archive (an uncompressed zip, ``np.load(path, allow_pickle=False)`` reads it):

- ``model/<name>``: every parameter, under the model's flat names, in its own dtype;
- ``optim/<param>/<key>``: the optimizer state (e.g. ``optim/head.weight/exp_avg``);
- ``extra/<key>``: arrays the caller adds (the trainer's history, the best weights so far);
- ``__meta__``: UTF-8 JSON as a uint8 array: format and version, the model config, the
  optimizer's type, hyperparameters and step count, the step, RNG states (NumPy
  ``bit_generator.state`` dicts), the caller's metadata, and a SHA-256 of every array.

Writing is atomic, through the project's one helper :func:`scratch_rnn.fileio.atomic_write`: the
archive goes to a temporary file in the same directory (``.<name>.<random>.tmp``), is flushed and
fsync'ed, given the mode ``open()`` would give (0666 & ~umask), then ``os.replace``'d over the
target (and the directory fsync'ed), so a crash mid-save leaves the previous checkpoint in place,
never a half-written one. Temporary files a killed writer left are removed before each save and
by a trainer's resume (``Trainer.load_checkpoint``); a plain :func:`load` deletes nothing, since a
writer may be saving beside it.

Saving refuses, before anything is written, what loading would refuse: non-finite parameters or
optimizer state, and metadata JSON cannot hold (naming where it is), raise
:class:`UnsavableCheckpointError` (a ``CheckpointError`` and a ``ValueError``).

Reading verifies before it changes anything: a truncated file or one that is not a zip archive
raises :class:`TruncatedCheckpointError`, damaged content (zip structure or CRC, npy headers,
SHA-256, unreadable JSON) :class:`CorruptCheckpointError`, and a checkpoint of another
configuration, other parameter names or other shapes :class:`CheckpointMismatchError`; each names
the file and what it found, and the model and optimizer are only written once every check has
passed. Every failure to decode the file's bytes is one of these (the archive is parsed with
:mod:`zipfile` and NumPy's npy header reader, never by unpickling), so damaged bytes can never
surface as another exception.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .checks import plain_json
from .fileio import atomic_write, remove_stale_temporaries

__all__ = [
    "CheckpointError",
    "TruncatedCheckpointError",
    "CorruptCheckpointError",
    "CheckpointMismatchError",
    "UnsavableCheckpointError",
    "write_archive",
    "read_archive",
    "save",
    "load",
    "rng_state",
    "set_rng_state",
]

FORMAT = "scratch_rnn.checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(Exception):
    """A checkpoint could not be read, does not fit, or could not be written; nothing was changed."""


class TruncatedCheckpointError(CheckpointError):
    """The file ends early or is not a checkpoint archive at all."""


class CorruptCheckpointError(CheckpointError):
    """The archive is readable but its content is damaged (checksums, JSON, missing entries)."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint of something else: another config, other keys or other shapes."""


class UnsavableCheckpointError(CheckpointError, ValueError):
    """:func:`save` refused, before writing anything, a model or optimizer whose checkpoint could
    not be loaded back (non-finite parameters or optimizer state); the previous file is intact."""


class _Damaged(Exception):
    """Internal: the bytes do not decode; reported as CorruptCheckpointError with the file's name."""


# ----------------------------------------------------------------------------------------------
# the archive: arrays + JSON metadata, atomic write, verified read
# ----------------------------------------------------------------------------------------------
def _digest(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def write_archive(path, arrays: Mapping[str, np.ndarray], meta: dict) -> str:
    """Write ``arrays`` and ``meta`` (JSON-serialisable) to ``path`` atomically; returns the path.

    The target is replaced only once the new file is complete and on disk
    (:func:`scratch_rnn.fileio.atomic_write`); temporary files of earlier, killed writers of
    ``path`` are removed first.
    """
    path = os.fspath(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if k == _META or v.dtype.hasobject:
            raise ValueError(f"arrays[{k!r}]: expected a numeric array under a name other than {_META!r}")
    meta = dict(meta, format=FORMAT, version=VERSION, digests={k: _digest(v) for k, v in arrays.items()})
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    remove_stale_temporaries(path)
    # (mypy matches the **-unpacked arrays against savez's allow_pickle: bool; none of their names is that)
    atomic_write(path, lambda f: np.savez(f, **arrays, **{_META: blob}))  # type: ignore[arg-type]
    return path


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(raw: bytes, name: str) -> np.ndarray:
    """One ``.npy`` entry, parsed from its bytes: the header must announce exactly the bytes that
    follow it (so no damaged header can make us allocate more than the file holds), no objects."""
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    if version not in _NPY_HEADER_READERS:
        raise _Damaged(f"entry {name!r} has .npy format version {version}, expected 1.0 or 2.0")
    shape, fortran, dtype = _NPY_HEADER_READERS[version](fp)
    if dtype.hasobject:
        raise _Damaged(f"entry {name!r} holds Python objects (pickled data), which a checkpoint never does")
    offset = fp.tell()
    count = math.prod(shape)
    if count * dtype.itemsize != len(raw) - offset:
        raise _Damaged(
            f"entry {name!r}: its header announces shape {shape} of {dtype} ({count * dtype.itemsize} "
            f"bytes), the entry holds {len(raw) - offset}"
        )
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


def _read_members(data: bytes) -> dict:
    """Every entry of the (uncompressed) zip in ``data`` as an array; raises on any damage."""
    arrays = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            name = info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                raise _Damaged(
                    f"entry {name!r} has compression method {info.compress_type}, a checkpoint is stored uncompressed"
                )
            if info.flag_bits & 0x61:  # encrypted (bit 0), compressed patched data (5), strong encryption (6)
                raise _Damaged(f"entry {name!r} has zip flags {info.flag_bits:#x} (encryption or patch data)")
            if not name.endswith(".npy"):
                raise _Damaged(f"entry {name!r} is not an array (.npy)")
            key = name[: -len(".npy")]
            if key in arrays:
                raise _Damaged(f"entry {name!r} appears twice")
            arrays[key] = _read_npy(z.read(info), name)  # zipfile checks the entry's CRC-32
    return arrays


def read_archive(path) -> tuple[dict, dict]:
    """Read and verify an archive written by :func:`write_archive`: returns ``(arrays, meta)``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"PK\x03\x04") or not zipfile.is_zipfile(io.BytesIO(data)):
        raise TruncatedCheckpointError(
            f"checkpoint {path!r} is truncated or not a checkpoint archive: no complete zip archive in its "
            f"{len(data)} bytes (an interrupted copy, or another kind of file?)"
        )
    try:
        arrays = _read_members(data)
    except _Damaged as exc:
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted or not a checkpoint archive: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to decode these bytes means they are damaged
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is corrupted: cannot read its arrays ({type(exc).__name__}: {exc})"
        ) from exc
    if _META not in arrays:
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted or foreign: it has no {_META!r} entry")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is not a {FORMAT} archive (format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    if meta.get("version") != VERSION:
        raise CheckpointMismatchError(
            f"checkpoint {path!r} has format version {meta.get('version')!r}, this code reads version {VERSION}"
        )
    digests = meta.get("digests", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is corrupted: its metadata's digests are not a dict of SHA-256 strings"
        )
    if set(digests) != set(arrays):
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is corrupted: arrays {sorted(set(arrays) ^ set(digests))} "
            "are missing or not listed in its metadata"
        )
    bad = [k for k, a in arrays.items() if _digest(a) != digests[k]]
    if bad:
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is corrupted: the content of {bad} does not match its SHA-256"
        )
    return arrays, meta


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------
def rng_state(rng: np.random.Generator) -> dict:
    """A JSON-serialisable copy of a generator's state."""
    return json.loads(json.dumps(rng.bit_generator.state))


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


# ----------------------------------------------------------------------------------------------
# model + optimizer
# ----------------------------------------------------------------------------------------------
def _config_dict(model) -> dict | None:
    cfg: Any = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else None


def _jsonable(x):
    return json.loads(json.dumps(x))


def save(
    path,
    model,
    optimizer=None,
    *,
    step: int = 0,
    rngs: Mapping | None = None,
    meta: dict | None = None,
    arrays: Mapping | None = None,
) -> str:
    """Save ``model`` (its ``parameters()``, ``config`` and ``rng`` when it has them), ``optimizer``
    (its ``state_dict()``), ``step``, the named generators ``rngs`` and the caller's ``meta``
    (JSON) and ``arrays`` (stored under ``extra/``), atomically, to one archive at ``path``.

    Raises :class:`UnsavableCheckpointError` (a :class:`CheckpointError` and a ``ValueError``),
    before anything is written and leaving any previous checkpoint at ``path`` as it was, when
    the checkpoint could not be loaded back: parameters holding NaN or inf (naming them), or an
    optimizer state that its own ``validate_state_dict`` refuses (non-finite entries, ...).
    """
    where = f"checkpoint {os.fspath(path)!r}"
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    params = {k: np.asarray(v) for k, v in model.parameters().items()}
    nonfinite = [k for k, v in params.items() if v.dtype.kind in "fc" and not np.isfinite(v).all()]
    if nonfinite:
        raise UnsavableCheckpointError(
            f"{where} not written: the parameters {nonfinite} hold NaN or inf, and a "
            "checkpoint of them could not be loaded back (the previous file, if any, is "
            "kept)"
        )
    sd = optimizer.state_dict() if optimizer is not None else None
    if sd is not None:
        try:
            optimizer.validate_state_dict(sd)
        except (KeyError, ValueError, TypeError) as exc:
            raise UnsavableCheckpointError(
                f"{where} not written: the optimizer's state could not be loaded back: {exc}"
            ) from exc
    try:  # what JSON cannot hold is named now, before anything is written, not as json's TypeError
        meta = plain_json("meta", dict(meta or {}))
    except TypeError as exc:
        raise UnsavableCheckpointError(f"{where} not written: {exc} (the previous file, if any, is kept)") from exc
    out = {f"model/{k}": v for k, v in params.items()}
    info: dict[str, Any] = dict(
        step=int(step), model_config=_config_dict(model), model_keys=list(model.parameters()), meta=meta, rngs={}
    )
    if getattr(model, "rng", None) is not None:
        info["rngs"]["model"] = rng_state(model.rng)
    for name, rng in (rngs or {}).items():
        info["rngs"][name] = rng_state(rng)
    if sd is not None:
        info["optimizer"] = dict(
            type=sd["type"],
            hparams=_jsonable(sd["hparams"]),
            step_count=sd["step_count"],
            state_keys={p: sorted(s) for p, s in sd["state"].items()},
        )
        for p, s in sd["state"].items():
            for k, v in s.items():
                out[f"optim/{p}/{k}"] = v
    for k, v in (arrays or {}).items():
        out[f"extra/{k}"] = np.asarray(v)
    return write_archive(path, out, info)


def _config_diff(saved: dict | None, current: dict | None) -> list[str]:
    saved, current = saved or {}, current or {}
    return [
        f"{k}: checkpoint {saved.get(k)!r}, model {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]


def _check_info(info: dict, where: str) -> None:
    """The metadata :func:`save` writes has the structure :func:`load` reads (CorruptCheckpointError if not)."""

    def need(ok: bool, field: str, what: str, value) -> None:
        if not ok:
            raise CorruptCheckpointError(
                f"{where} is corrupted: its metadata field {field!r} expected {what}, got {value!r:.100}"
            )

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    need(is_int(info.get("step", 0)), "step", "an integer >= 0", info.get("step"))
    need(
        isinstance(info.get("model_config"), (dict, type(None))),
        "model_config",
        "a dict or null",
        info.get("model_config"),
    )
    need(isinstance(info.get("meta", {}), dict), "meta", "a dict", info.get("meta"))
    rngs = info.get("rngs", {})
    need(
        isinstance(rngs, dict) and all(isinstance(v, dict) for v in rngs.values()),
        "rngs",
        "a dict name -> generator state",
        rngs,
    )
    o = info.get("optimizer")
    if o is not None:
        need(
            isinstance(o, dict)
            and isinstance(o.get("type"), str)
            and isinstance(o.get("hparams"), dict)
            and is_int(o.get("step_count"))
            and isinstance(o.get("state_keys"), dict),
            "optimizer",
            "a dict with type, hparams, step_count and state_keys",
            o,
        )
        need(
            all(isinstance(v, list) and all(isinstance(k, str) for k in v) for v in o["state_keys"].values()),
            "optimizer.state_keys",
            "a dict parameter -> list of names",
            o["state_keys"],
        )


def load(path, model, optimizer=None, *, rngs: Mapping | None = None) -> dict:
    """Verify the checkpoint at ``path`` against ``model``/``optimizer``/``rngs``, then load it.

    Returns ``{"step", "meta", "arrays"}`` (the caller's metadata and ``extra/`` arrays). Raises a
    :class:`CheckpointError` subclass, changing nothing, when the archive is truncated or
    corrupted, or when its model config, parameter names or shapes, optimizer type or state
    differ from the given objects'. Reading deletes nothing: a writer may be saving beside it
    (the temporaries a killed writer left are removed by the next save and by a trainer's resume).
    """
    arrays, info = read_archive(path)
    where = f"checkpoint {os.fspath(path)!r}"
    _check_info(info, where)
    # -- model
    diff = _config_diff(info.get("model_config"), _config_dict(model))
    if diff:
        raise CheckpointMismatchError(f"{where} was saved for another model configuration: " + "; ".join(diff))
    params = model.parameters()
    saved = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
    missing = [k for k in params if k not in saved]
    unexpected = [k for k in saved if k not in params]
    if missing or unexpected:
        raise CheckpointMismatchError(f"{where} has other parameters: missing {missing}, unexpected {unexpected}")
    shapes = [
        f"{k}: checkpoint {saved[k].shape}, model {p.shape}" for k, p in params.items() if saved[k].shape != p.shape
    ]
    if shapes:
        raise CheckpointMismatchError(f"{where} has other parameter shapes: " + "; ".join(shapes))
    dtypes = [
        f"{k}: checkpoint {saved[k].dtype}, model {p.dtype}" for k, p in params.items() if saved[k].dtype != p.dtype
    ]
    if dtypes:
        raise CheckpointMismatchError(f"{where} has other parameter dtypes: " + "; ".join(dtypes))
    nonfinite = [k for k, v in saved.items() if not np.isfinite(v).all()]
    if nonfinite:
        raise CorruptCheckpointError(f"{where} holds non-finite parameters {nonfinite}")
    # -- optimizer
    staged_opt = None
    if optimizer is not None:
        o = info.get("optimizer")
        if o is None:
            raise CheckpointMismatchError(f"{where} has no optimizer state, but an optimizer was given")
        state = {p: {k: arrays.get(f"optim/{p}/{k}") for k in keys} for p, keys in o["state_keys"].items()}
        absent = [f"optim/{p}/{k}" for p, s in state.items() for k, v in s.items() if v is None]
        if absent:
            raise CorruptCheckpointError(f"{where} is corrupted: optimizer arrays {absent} are missing")
        if o["type"] != type(optimizer).__name__:
            raise CheckpointMismatchError(
                f"{where} holds {o['type']} state, the optimizer is {type(optimizer).__name__}"
            )
        staged_opt = dict(type=o["type"], hparams=o["hparams"], state=state, step_count=o["step_count"])
        try:
            optimizer.validate_state_dict(staged_opt)
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointMismatchError(f"{where}: the optimizer state does not fit: {exc}") from exc
    # -- generators
    saved_rngs = info.get("rngs", {})
    wanted = dict(rngs or {})
    if getattr(model, "rng", None) is not None:
        wanted["model"] = model.rng
    lacking = [k for k in wanted if k not in saved_rngs]
    if lacking:
        raise CheckpointMismatchError(f"{where} has no state for the generator(s) {lacking}")
    for k, rng in wanted.items():
        if saved_rngs[k].get("bit_generator") != type(rng.bit_generator).__name__:
            raise CheckpointMismatchError(
                f"{where}: generator {k!r} is a {saved_rngs[k].get('bit_generator')}, "
                f"expected {type(rng.bit_generator).__name__}"
            )
        try:  # on a scratch generator of the same kind: a damaged state must not half-load
            type(rng.bit_generator)().state = saved_rngs[k]
        except (TypeError, ValueError, KeyError) as exc:
            raise CorruptCheckpointError(
                f"{where} is corrupted: the state of generator {k!r} is invalid ({exc})"
            ) from exc
    # -- every check passed: write
    model.load_state_dict(saved)
    if staged_opt is not None:
        optimizer.load_state_dict(staged_opt)
    for k, rng in wanted.items():
        set_rng_state(rng, saved_rngs[k])
    extra = {k[len("extra/") :]: v for k, v in arrays.items() if k.startswith("extra/")}
    return dict(step=info.get("step", 0), meta=info.get("meta", {}), arrays=extra)
