"""Checkpoints: model + optimizer + step + RNG state + config in ONE ``.npz`` archive, written atomically.

Layout of the archive (an uncompressed zip, ``np.load(path, allow_pickle=False)`` reads it):

- ``model/<name>``: every parameter, under the model's flat names, in its own dtype;
- ``optim/<param>/<key>``: the optimizer state (e.g. ``optim/head.weight/exp_avg``);
- ``extra/<key>``: arrays the caller adds (the trainer's history, its data order);
- ``__meta__``: UTF-8 JSON as a uint8 array: format and version, the model config, the
  optimizer's type, hyperparameters and step count, the step, RNG states (NumPy
  ``bit_generator.state`` dicts), the caller's metadata, and a SHA-256 of every array.

Writing is atomic: the archive goes to a temporary file in the same directory, is flushed and
fsync'ed, then ``os.replace``'d over the target (and the directory fsync'ed), so a crash mid-save
leaves the previous checkpoint in place, never a half-written one.

Reading verifies before it changes anything: a truncated file or one that is not an archive
raises :class:`TruncatedCheckpointError`, damaged content (zip CRC, SHA-256, unreadable JSON)
:class:`CorruptCheckpointError`, and a checkpoint of another configuration, other parameter names
or other shapes :class:`CheckpointMismatchError`; each names what it found, and the model and
optimizer are only written once every check has passed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

__all__ = [
    "CheckpointError", "TruncatedCheckpointError", "CorruptCheckpointError", "CheckpointMismatchError",
    "write_archive", "read_archive", "save", "load", "rng_state", "set_rng_state",
]

FORMAT = "scratch_rnn.checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(Exception):
    """A checkpoint could not be read or does not fit; nothing was changed."""


class TruncatedCheckpointError(CheckpointError):
    """The file ends early or is not a checkpoint archive at all."""


class CorruptCheckpointError(CheckpointError):
    """The archive is readable but its content is damaged (checksums, JSON, missing entries)."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint of something else: another config, other keys or other shapes."""


# ----------------------------------------------------------------------------------------------
# the archive: arrays + JSON metadata, atomic write, verified read
# ----------------------------------------------------------------------------------------------
def _digest(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_archive(path, arrays: Mapping[str, np.ndarray], meta: dict) -> str:
    """Write ``arrays`` and ``meta`` (JSON-serialisable) to ``path`` atomically; returns the path.

    The target is replaced only once the new file is complete and on disk.
    """
    path = os.fspath(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if k == _META or v.dtype.kind == "O":
            raise ValueError(f"arrays[{k!r}]: expected a numeric array under a name other than {_META!r}")
    meta = dict(meta, format=FORMAT, version=VERSION, digests={k: _digest(v) for k, v in arrays.items()})
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_META: blob})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


def read_archive(path) -> tuple[dict, dict]:
    """Read and verify an archive written by :func:`write_archive`: returns ``(arrays, meta)``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise TruncatedCheckpointError(
            f"checkpoint {path!r} is truncated or not a checkpoint: no complete zip archive in its {len(data)} "
            "bytes (an interrupted copy?)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted: cannot read its arrays ({exc})") from exc
    if _META not in arrays:
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted or foreign: it has no {_META!r} entry")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCheckpointError(f"checkpoint {path!r} is not a {FORMAT} archive (format "
                                     f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise CheckpointMismatchError(f"checkpoint {path!r} has format version {meta.get('version')!r}, this code "
                                      f"reads version {VERSION}")
    digests = meta.get("digests", {})
    if set(digests) != set(arrays):
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted: arrays {sorted(set(arrays) ^ set(digests))} "
                                     "are missing or not listed in its metadata")
    bad = [k for k, a in arrays.items() if _digest(a) != digests[k]]
    if bad:
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupted: the content of {bad} does not match its "
                                     "SHA-256")
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
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else None


def _jsonable(x):
    return json.loads(json.dumps(x))


def save(path, model, optimizer=None, *, step: int = 0, rngs: Mapping | None = None, meta: dict | None = None,
         arrays: Mapping | None = None) -> str:
    """Save ``model`` (its ``parameters()``, ``config`` and ``rng`` when it has them), ``optimizer``
    (its ``state_dict()``), ``step``, the named generators ``rngs`` and the caller's ``meta``
    (JSON) and ``arrays`` (stored under ``extra/``), atomically, to one archive at ``path``."""
    out = {f"model/{k}": np.asarray(v) for k, v in model.parameters().items()}
    info = dict(step=int(step), model_config=_config_dict(model), model_keys=list(model.parameters()),
                meta=_jsonable(meta or {}), rngs={})
    if getattr(model, "rng", None) is not None:
        info["rngs"]["model"] = rng_state(model.rng)
    for name, rng in (rngs or {}).items():
        info["rngs"][name] = rng_state(rng)
    if optimizer is not None:
        sd = optimizer.state_dict()
        info["optimizer"] = dict(type=sd["type"], hparams=_jsonable(sd["hparams"]), step_count=sd["step_count"],
                                 state_keys={p: sorted(s) for p, s in sd["state"].items()})
        for p, s in sd["state"].items():
            for k, v in s.items():
                out[f"optim/{p}/{k}"] = v
    for k, v in (arrays or {}).items():
        out[f"extra/{k}"] = np.asarray(v)
    return write_archive(path, out, info)


def _config_diff(saved: dict | None, current: dict | None) -> list[str]:
    saved, current = saved or {}, current or {}
    return [f"{k}: checkpoint {saved.get(k)!r}, model {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def load(path, model, optimizer=None, *, rngs: Mapping | None = None) -> dict:
    """Verify the checkpoint at ``path`` against ``model``/``optimizer``/``rngs``, then load it.

    Returns ``{"step", "meta", "arrays"}`` (the caller's metadata and ``extra/`` arrays). Raises a
    :class:`CheckpointError` subclass, changing nothing, when the archive is truncated or
    corrupted, or when its model config, parameter names or shapes, optimizer type or state
    differ from the given objects'.
    """
    arrays, info = read_archive(path)
    where = f"checkpoint {os.fspath(path)!r}"
    # -- model
    diff = _config_diff(info.get("model_config"), _config_dict(model))
    if diff:
        raise CheckpointMismatchError(f"{where} was saved for another model configuration: " + "; ".join(diff))
    params = model.parameters()
    saved = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    missing = [k for k in params if k not in saved]
    unexpected = [k for k in saved if k not in params]
    if missing or unexpected:
        raise CheckpointMismatchError(f"{where} has other parameters: missing {missing}, unexpected {unexpected}")
    shapes = [f"{k}: checkpoint {saved[k].shape}, model {p.shape}" for k, p in params.items()
              if saved[k].shape != p.shape]
    if shapes:
        raise CheckpointMismatchError(f"{where} has other parameter shapes: " + "; ".join(shapes))
    dtypes = [f"{k}: checkpoint {saved[k].dtype}, model {p.dtype}" for k, p in params.items()
              if saved[k].dtype != p.dtype]
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
            raise CheckpointMismatchError(f"{where} holds {o['type']} state, the optimizer is "
                                          f"{type(optimizer).__name__}")
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
            raise CheckpointMismatchError(f"{where}: generator {k!r} is a {saved_rngs[k].get('bit_generator')}, "
                                          f"expected {type(rng.bit_generator).__name__}")
        try:  # on a scratch generator of the same kind: a damaged state must not half-load
            type(rng.bit_generator)().state = saved_rngs[k]
        except (TypeError, ValueError, KeyError) as exc:
            raise CorruptCheckpointError(f"{where} is corrupted: the state of generator {k!r} is invalid "
                                         f"({exc})") from exc
    # -- every check passed: write
    model.load_state_dict(saved)
    if staged_opt is not None:
        optimizer.load_state_dict(staged_opt)
    for k, rng in wanted.items():
        set_rng_state(rng, saved_rngs[k])
    extra = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    return dict(step=info.get("step", 0), meta=info.get("meta", {}), arrays=extra)
