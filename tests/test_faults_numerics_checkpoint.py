"""Checkpoints at the edges ("nothing lost, nothing silently wrong"): NaN parameters refused at save,
damaged bytes at every position give only the CheckpointError family (or, where the damage is in bytes
zip ignores, the identical content), the file mode open() gives, stale temporaries cleaned up, files
that are not checkpoints named as such.

A small stand-in model (``parameters()``, ``load_state_dict``, ``rng``) keeps these tests independent
of scratch_rnn.models; checkpoint.save/load need nothing more.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from scratch_rnn import checkpoint as ckpt
from scratch_rnn import fileio, optim


class TinyModel:
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self._params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2).astype(np.float32)}
        self.rng = np.random.default_rng(seed + 100)

    def parameters(self):
        return self._params

    def load_state_dict(self, sd):
        for k, v in sd.items():
            self._params[k][...] = v


def _trained(seed=0, name="adam", **kw):
    model = TinyModel(seed)
    opt = optim.make_optimizer(name, model.parameters(), lr=0.1, **(kw or dict(amsgrad=True)))
    for _ in range(2):
        opt.step({k: np.ones_like(v) for k, v in model.parameters().items()})
    model.rng.standard_normal(3)  # move the generator off its seed
    return model, opt


def _save(path, model, opt, data_rng=None):
    return ckpt.save(
        path,
        model,
        opt,
        step=7,
        rngs={"data": data_rng or np.random.default_rng(5)},
        meta=dict(note="hi", nested=[1, 2.5]),
        arrays=dict(history=np.arange(4.0), order=np.arange(3)),
    )


def _content(model, opt, rngs, out):
    """Everything a load restores, for exact comparison."""
    return dict(
        params={k: (v.dtype.str, v.tobytes()) for k, v in model.parameters().items()},
        opt=json.dumps(opt.state_dict(), default=lambda a: (a.dtype.str, a.shape, a.tobytes().hex())),
        rngs={k: r.bit_generator.state for k, r in rngs.items()},
        step=out["step"],
        meta=out["meta"],
        arrays={k: (v.dtype.str, v.shape, v.tobytes()) for k, v in out["arrays"].items()},
    )


def _load_fresh(path, name="adam", **kw):
    model = TinyModel(seed=9)
    opt = optim.make_optimizer(name, model.parameters(), lr=0.5, **(kw or dict(amsgrad=True)))
    rngs = {"data": np.random.default_rng(99)}
    out = ckpt.load(path, model, opt, rngs=rngs)
    return _content(model, opt, {**rngs, "model": model.rng}, out)


def _temporaries(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------
# B1: what could not be loaded back is not saved
# ---------------------------------------------------------------------------------------------
def test_nan_parameters_are_refused_at_save_before_anything_is_written(tmp_path):
    model, opt = _trained()
    path = _save(tmp_path / "c.npz", model, opt)
    good = open(path, "rb").read()
    model.parameters()["w"][1, 0] = np.nan
    model.parameters()["b"][0] = np.inf
    with pytest.raises(
        ckpt.UnsavableCheckpointError,
        match=r"c.npz' not written: the parameters \['w', 'b'\] "
        "hold NaN or inf",
    ) as info:
        _save(path, model, opt)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ckpt.CheckpointError)
    assert open(path, "rb").read() == good and _temporaries(tmp_path) == []
    with pytest.raises(ckpt.UnsavableCheckpointError):
        _save(tmp_path / "new.npz", model, opt)
    assert not (tmp_path / "new.npz").exists()


def test_non_finite_optimizer_state_is_refused_at_save(tmp_path):
    model, opt = _trained()
    opt.state["b"]["exp_avg_sq"][0] = np.nan
    with pytest.raises(
        ckpt.UnsavableCheckpointError,
        match=r"optimizer's state could not be loaded back: .*"
        r"state\['b'\]\['exp_avg_sq'\] expected finite",
    ):
        _save(tmp_path / "c.npz", model, opt)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="step: expected an integer >= 0, got -1"):
        ckpt.save(tmp_path / "c.npz", TinyModel(), step=-1)


# ---------------------------------------------------------------------------------------------
# B2: damaged bytes: only the family, or (bytes zip ignores) the identical content
# ---------------------------------------------------------------------------------------------
def _fuzz(path, damaged_versions, expected, **opt):
    """Load every damaged version; count the errors by class (anything outside the family fails)."""
    seen = {}
    for data in damaged_versions:
        with open(path, "wb") as f:
            f.write(data)
        try:
            got = _load_fresh(path, **opt)
        except (ckpt.TruncatedCheckpointError, ckpt.CorruptCheckpointError) as exc:
            assert repr(os.fspath(path)) in str(exc), str(exc)
            seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1
        else:  # any other exception fails the test
            assert got == expected, "a damaged checkpoint loaded with other content"
            seen["identical"] = seen.get("identical", 0) + 1
    return seen


def test_a_byte_flipped_at_every_position_gives_the_family_or_the_identical_content(tmp_path):
    """Every byte of a small checkpoint (SGD with momentum: 4 entries, ~2 KB), XOR-ed with a seeded
    random non-zero mask: local and central zip headers, npy headers, data, metadata, end record."""
    opt_kw = dict(name="sgd", momentum=0.9)
    model, opt = _trained(**opt_kw)
    path = ckpt.save(
        tmp_path / "c.npz",
        model,
        opt,
        step=3,
        rngs={"data": np.random.default_rng(1)},
        meta=dict(a=1),
        arrays=dict(h=np.arange(2.0)),
    )
    good = open(path, "rb").read()
    expected = _load_fresh(path, **opt_kw)
    masks = np.random.default_rng(20240601).integers(1, 256, len(good))

    def flipped():
        for pos, mask in enumerate(masks):
            data = bytearray(good)
            data[pos] ^= int(mask)
            yield bytes(data)

    seen = _fuzz(path, flipped(), expected, **opt_kw)
    assert sum(seen.values()) == len(good) > 1500
    assert seen["CorruptCheckpointError"] > 0.5 * len(good)  # the flips are detected, not shrugged off


def test_random_flips_and_damage_give_the_family_or_the_identical_content(tmp_path):
    """A larger checkpoint (Adam with amsgrad: 13 entries): 1000 single-byte flips at random
    positions, then 1000 of: several random bytes, an overwritten run, a cut, an insertion, a
    16/32-bit field set to an extreme (sizes, offsets, counts)."""
    model, opt = _trained(seed=1)
    path = _save(tmp_path / "c.npz", model, opt)
    good = open(path, "rb").read()
    expected = _load_fresh(path)
    rng = np.random.default_rng(7)

    def damaged():
        for pos in rng.integers(0, len(good), 1000):
            data = bytearray(good)
            data[pos] ^= int(rng.integers(1, 256))
            yield bytes(data)
        for i in range(1000):
            data = bytearray(good)
            kind = i % 5
            if kind == 0:  # a few random bytes anywhere
                for pos in rng.integers(0, len(data), rng.integers(2, 9)):
                    data[pos] = int(rng.integers(0, 256))
            elif kind == 1:  # a run of bytes overwritten
                start = int(rng.integers(0, len(data)))
                data[start : start + int(rng.integers(1, 64))] = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
            elif kind == 2:  # cut and spliced: bytes removed from the middle
                start = int(rng.integers(0, len(data)))
                del data[start : start + int(rng.integers(1, 200))]
            elif kind == 3:  # bytes inserted
                start = int(rng.integers(0, len(data)))
                data[start:start] = bytes(rng.integers(0, 256, int(rng.integers(1, 50)), dtype=np.uint8))
            else:  # a 32-bit field set to an extreme
                pos = int(rng.integers(0, len(data) - 4))
                data[pos : pos + 4] = rng.choice(
                    [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\x00\x00", b"\x00\x00\x00\x80"]
                )
            yield bytes(data)

    seen = _fuzz(path, damaged(), expected)
    assert sum(seen.values()) == 2000


# ---------------------------------------------------------------------------------------------
# B3: the shared atomic writer: mode, stale temporaries, interrupted saves
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_checkpoints_get_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = _save(tmp_path / "c.npz", *_trained())
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporaries_are_removed_by_the_next_save_not_by_a_plain_load(tmp_path):
    model, opt = _trained()
    path = tmp_path / "c.npz"
    stale = tmp_path / ".c.npz.k1lled99.tmp"
    unrelated = [tmp_path / ".other.npz.abc.tmp", tmp_path / "c.npz.bak", tmp_path / ".c.npz.keep"]
    for f in [stale, *unrelated]:
        f.write_bytes(b"PK\x03\x04 half an archive")
    _save(path, model, opt)
    assert not stale.exists() and all(f.exists() for f in unrelated)
    stale.write_bytes(b"PK\x03\x04 a writer's file, or one left by kill -9")
    _load_fresh(path)  # a reader may run beside a writer: it deletes nothing (a resume does: test_checkpoint)
    assert stale.exists() and all(f.exists() for f in unrelated)
    assert fileio.temp_pattern(path).endswith(".c.npz.*.tmp")


def test_an_interrupted_save_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    model, opt = _trained()
    path = _save(tmp_path / "c.npz", model, opt)
    good, expected = open(path, "rb").read(), _load_fresh(path)
    real_savez = np.savez

    def savez_then_fail(f, **arrays):
        real_savez(f, **dict(list(arrays.items())[:2]))  # half the archive on disk
        f.flush()
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", savez_then_fail)
    opt.step({k: np.ones_like(v) for k, v in model.parameters().items()})
    with pytest.raises(OSError, match="disk full"):
        _save(path, model, opt)
    monkeypatch.undo()
    assert open(path, "rb").read() == good and _temporaries(tmp_path) == []
    assert _load_fresh(path) == expected


# ---------------------------------------------------------------------------------------------
# B4: files that are not checkpoints
# ---------------------------------------------------------------------------------------------
def _zip_bytes(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


NOT_CHECKPOINTS = {
    "text": (b"hello, I am a text file\n", ckpt.TruncatedCheckpointError, "not a checkpoint archive"),
    "text ending in a zip end record": (
        b"hello\n" + b"PK\x05\x06" + bytes(18),
        ckpt.TruncatedCheckpointError,
        "not a checkpoint archive",
    ),
    "an .npy file": (_npy(np.arange(3.0)), ckpt.TruncatedCheckpointError, "not a checkpoint archive"),
    "a pickle": (pickle.dumps({"w": [1.0]}), ckpt.TruncatedCheckpointError, "not a checkpoint archive"),
    "a zip of text": (
        _zip_bytes({"notes.txt": b"hi"}),
        ckpt.CorruptCheckpointError,
        r"not a checkpoint archive: entry 'notes.txt' is not an array",
    ),
    "an npz with an object array": (
        _zip_bytes({"__meta__.npy": _npy(np.array([{"a": 1}], dtype=object))}),
        ckpt.CorruptCheckpointError,
        "holds Python objects",
    ),
    "an npz entry that is not npy": (
        _zip_bytes({"__meta__.npy": b"{not npy}"}),
        ckpt.CorruptCheckpointError,
        "is corrupted",
    ),
    "a deflated npz": (None, ckpt.CorruptCheckpointError, "compression method 8, a checkpoint is stored uncompressed"),
}


@pytest.mark.parametrize("case", list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, case):
    data, error, match = NOT_CHECKPOINTS[case]
    path = tmp_path / "c.npz"
    if data is None:
        np.savez_compressed(path, a=np.zeros(3))
    else:
        path.write_bytes(data)
    model, opt = TinyModel(3), None
    before = {k: v.copy() for k, v in model.parameters().items()}
    with pytest.raises(error, match=match) as info:
        ckpt.load(path, model, opt)
    message = str(info.value)
    assert repr(str(path)) in message
    assert "pickle" not in message.replace("Python objects (pickled data)", "") and "allow_pickle" not in message
    for k, v in before.items():
        np.testing.assert_array_equal(model.parameters()[k], v)
