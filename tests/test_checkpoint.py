"""Checkpoints: bit-for-bit resumption, atomic writes (a crash mid-save keeps the last good file),
and truncated / corrupted / mismatched files failing with an error that says which, changing nothing."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from scratch_rnn import checkpoint as ckpt
from scratch_rnn import optim
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import Dataset, TrainConfig, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CFG = ModelConfig(
    hidden_size=4,
    out_features=3,
    vocab_size=7,
    embedding_dim=3,
    num_layers=2,
    dropout=0.3,
    bidirectional=True,
    pooling="mean",
    dtype="float64",
    seed=11,
)
LM_CFG = dataclasses.replace(CFG, task="per_step", bidirectional=False)


def _dataset(cfg, n=29, T=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, cfg.out_features, (n,) if cfg.task == "sequence" else (n, T))
    return Dataset(rng.integers(0, cfg.vocab_size, (n, T)), y, rng.integers(1, T + 1, n))


def _train_cfg(tmp_path, name, **kw):
    opt_kw = dict(
        sgd=dict(lr=0.1, momentum=0.9, nesterov=True),
        adam=dict(lr=1e-2, amsgrad=True),
        adamw=dict(lr=1e-2),
        adagrad=dict(lr=0.1, lr_decay=0.01),
        rmsprop=dict(lr=1e-2, centered=True, momentum=0.5),
    )[name]
    base = dict(
        optimizer=name,
        optimizer_kwargs=opt_kw,
        batch_size=8,
        epochs=3,
        seed=5,
        clip_norm=1.0,
        checkpoint_dir=str(tmp_path),
        checkpoint_every=3,
        progress=False,
        log_csv=str(tmp_path / "log.csv"),
    )
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(trainer):
    """Everything that must be identical between an uninterrupted and a resumed run."""
    opt = trainer.optimizer.state_dict()
    return dict(
        params={k: v.copy() for k, v in trainer.model.parameters().items()},
        opt_state=opt["state"],
        opt_hparams=opt["hparams"],
        step=trainer.step,
        history=[dataclasses.astuple(r) for r in trainer.history],
        epochs=trainer.epochs,
        rng=trainer.model.rng.bit_generator.state,
    )


def _assert_same(a, b):
    assert a["step"] == b["step"]
    assert a["history"] == b["history"]
    assert a["rng"] == b["rng"]
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in a["epochs"]] == [
        {k: v for k, v in r.items() if "seconds" not in k} for r in b["epochs"]
    ]
    assert a["opt_hparams"] == b["opt_hparams"]
    for k in a["params"]:
        np.testing.assert_array_equal(a["params"][k], b["params"][k], err_msg=k)
    for p, s in a["opt_state"].items():
        assert set(s) == set(b["opt_state"][p])
        for key, v in s.items():
            np.testing.assert_array_equal(v, b["opt_state"][p][key], err_msg=f"{p} {key}")


class Crash(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# resumption
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, cfg, tbptt_k",
    [
        ("sgd", CFG, None),
        ("adam", CFG, None),
        ("adamw", CFG, None),
        ("adagrad", CFG, None),
        ("rmsprop", CFG, None),
        ("adam", LM_CFG, 4),
    ],
)
def test_resuming_after_a_crash_continues_bit_for_bit(tmp_path, name, cfg, tbptt_k):
    data = _dataset(cfg)
    whole = Trainer(SequenceModel(cfg), _train_cfg(tmp_path / "whole", name, tbptt_k=tbptt_k))
    whole.fit(data)
    assert whole.step >= 12

    def crash_at_8(trainer, rec):
        if rec.step == 8:
            raise Crash

    run_dir = tmp_path / "crashed"
    tc = _train_cfg(run_dir, name, tbptt_k=tbptt_k)
    first = Trainer(SequenceModel(cfg), tc, callback=crash_at_8)
    with pytest.raises(Crash):
        first.fit(data)
    assert first.last_checkpoint_step is not None and first.last_checkpoint_step < 8  # the crash lost some steps
    resumed = Trainer(SequenceModel(cfg), tc)
    resumed.load_checkpoint()
    assert resumed.step == first.last_checkpoint_step
    resumed.fit(data)
    _assert_same(_snapshot(resumed), _snapshot(whole))
    # the CSV of the resumed run is the uninterrupted run's, line for line
    assert (run_dir / "log.csv").read_text() == (tmp_path / "whole" / "log.csv").read_text()


def test_resume_with_more_epochs_and_another_max_steps_is_allowed(tmp_path):
    data = _dataset(CFG)
    whole = Trainer(SequenceModel(CFG), _train_cfg(tmp_path / "a", "adam", epochs=4))
    whole.fit(data)
    part = Trainer(SequenceModel(CFG), _train_cfg(tmp_path / "b", "adam", epochs=2))
    part.fit(data)
    more = Trainer(SequenceModel(CFG), _train_cfg(tmp_path / "b", "adam", epochs=4, max_steps=None, log_csv=None))
    more.load_checkpoint()
    more.fit(data)
    _assert_same(_snapshot(more), _snapshot(whole))


def test_save_and_load_round_trip_every_optimizer_state(tmp_path):
    for name in optim.OPTIMIZERS:
        model = SequenceModel(CFG)
        opt = optim.make_optimizer(name, model.parameters(), lr=0.01)
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 7, (3, 4)), rng.integers(0, 3, 3)
        for _ in range(3):
            model.zero_grad()
            model.forward_backward(x, y)
            opt.step(model.grads)
        path = ckpt.save(
            tmp_path / f"{name}.npz", model, opt, step=3, meta=dict(note="hi"), arrays=dict(extra=np.arange(3))
        )
        model2 = SequenceModel(CFG)
        opt2 = optim.make_optimizer(name, model2.parameters(), lr=0.5)
        out = ckpt.load(path, model2, opt2)
        assert out["step"] == 3 and out["meta"] == dict(note="hi")
        np.testing.assert_array_equal(out["arrays"]["extra"], np.arange(3))
        _assert_same(
            dict(
                params=model.state_dict(),
                opt_state=opt.state_dict()["state"],
                step=0,
                history=[],
                rng=model.rng.bit_generator.state,
                epochs=[],
                opt_hparams=opt.hparams,
            ),
            dict(
                params=model2.state_dict(),
                opt_state=opt2.state_dict()["state"],
                step=0,
                history=[],
                rng=model2.rng.bit_generator.state,
                epochs=[],
                opt_hparams=opt2.hparams,
            ),
        )


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------
def _good_checkpoint(tmp_path):
    trainer = Trainer(SequenceModel(CFG), _train_cfg(tmp_path, "adam", epochs=1))
    trainer.fit(_dataset(CFG))
    return trainer, trainer.checkpoint_path()


def test_a_failure_mid_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer, path = _good_checkpoint(tmp_path)
    good = open(path, "rb").read()

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 partial archive")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    monkeypatch.undo()

    def fail_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(ckpt.os, "replace", fail_rename)
    with pytest.raises(OSError, match="rename failed"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert open(path, "rb").read() == good
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "log.csv"]  # no temporary file left behind
    Trainer(SequenceModel(CFG), _train_cfg(tmp_path, "adam", epochs=1)).load_checkpoint()


def test_a_process_killed_mid_save_keeps_the_last_good_checkpoint(tmp_path):
    """A real crash: the writing process dies (os._exit, no cleanup) halfway through the archive."""
    _, path = _good_checkpoint(tmp_path)
    good = open(path, "rb").read()
    script = f"""
import os, sys
sys.path.insert(0, {REPO!r})
import numpy as np
from scratch_rnn import checkpoint as ckpt
def dying_savez(f, **arrays):
    f.write(b"PK\\x03\\x04" + os.urandom(1000))
    f.flush()
    os._exit(9)
ckpt.np.savez = dying_savez
ckpt.write_archive({path!r}, {{"a": np.zeros(3)}}, {{}})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    assert open(path, "rb").read() == good
    Trainer(SequenceModel(CFG), _train_cfg(tmp_path, "adam", epochs=1)).load_checkpoint()


# ---------------------------------------------------------------------------------------------
# bad checkpoints: an error that says which, and nothing changed
# ---------------------------------------------------------------------------------------------
def _fresh(tmp_path, **kw):
    cfg = kw.pop("cfg", CFG)
    trainer = Trainer(SequenceModel(cfg), _train_cfg(tmp_path, "adam", epochs=1, **kw))
    return trainer, _snapshot(trainer)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -22, -1])
def test_truncated_checkpoint_is_reported_as_truncated(tmp_path, keep):
    _, path = _good_checkpoint(tmp_path)
    data = open(path, "rb").read()
    n = keep if isinstance(keep, int) and keep >= 0 else (int(len(data) * keep) if keep > 0 else len(data) + keep)
    with open(path, "wb") as f:
        f.write(data[:n])
    trainer, before = _fresh(tmp_path)
    with pytest.raises(ckpt.TruncatedCheckpointError, match="is truncated or not a checkpoint"):
        trainer.load_checkpoint()
    _assert_same(_snapshot(trainer), before)


def test_corrupted_bytes_are_reported_as_corrupted(tmp_path):
    _, path = _good_checkpoint(tmp_path)
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("model/rnn.weight_hh_l0.npy")
    pos = info.header_offset + 30 + len(info.filename) + info.extra.__len__() + 200  # inside the array's bytes
    data[pos] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    trainer, before = _fresh(tmp_path)
    with pytest.raises(ckpt.CorruptCheckpointError, match="is corrupted"):
        trainer.load_checkpoint()
    _assert_same(_snapshot(trainer), before)


def _rewrite(path, edit_arrays=None, edit_meta=None, keep_digests=False):
    """Rewrite an archive with edited arrays/metadata; recompute its digests unless keep_digests."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    if keep_digests:
        blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays, __meta__=blob)
    else:
        for k in ("format", "version", "digests"):
            meta.pop(k)
        ckpt.write_archive(path, arrays, meta)


def test_content_that_does_not_match_its_digest_is_corrupted(tmp_path):
    _, path = _good_checkpoint(tmp_path)

    def nudge(arrays):
        arrays["model/head.bias"] = arrays["model/head.bias"] + 1e-12

    _rewrite(path, nudge, keep_digests=True)  # a sound zip whose content was changed
    trainer, before = _fresh(tmp_path)
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"the content of \['model/head.bias'\] does not match"):
        trainer.load_checkpoint()
    _assert_same(_snapshot(trainer), before)


def test_a_checkpoint_of_another_model_config_is_a_mismatch(tmp_path):
    _good_checkpoint(tmp_path)
    trainer, before = _fresh(tmp_path, cfg=dataclasses.replace(CFG, hidden_size=5))
    with pytest.raises(
        ckpt.CheckpointMismatchError, match="another model configuration: hidden_size: checkpoint 4, model 5"
    ):
        trainer.load_checkpoint()
    _assert_same(_snapshot(trainer), before)


def test_a_checkpoint_of_another_training_config_is_a_mismatch(tmp_path):
    _good_checkpoint(tmp_path)
    trainer, before = _fresh(tmp_path, clip_norm=2.0)
    with pytest.raises(
        ckpt.CheckpointMismatchError, match="another training configuration: clip_norm: checkpoint 1.0, trainer 2.0"
    ):
        trainer.load_checkpoint()
    _assert_same(_snapshot(trainer), before)


def test_other_keys_shapes_or_optimizer_are_mismatches(tmp_path):
    _, path = _good_checkpoint(tmp_path)
    good = open(path, "rb").read()

    def rename(arrays):
        arrays["model/head.weights"] = arrays.pop("model/head.weight")

    def reshape(arrays):
        arrays["model/head.bias"] = np.zeros(4)

    def retype(meta):
        meta["optimizer"]["type"] = "SGD"

    def drop_param(arrays):
        del arrays["model/rnn.bias_hh_l1"]

    cases = [
        (rename, None, r"other parameters: missing \['head.weight'\], unexpected \['head.weights'\]"),
        (reshape, None, r"other parameter shapes: head.bias: checkpoint \(4,\), model \(3,\)"),
        (None, retype, "holds SGD state, the optimizer is Adam"),
        (drop_param, None, r"missing \['rnn.bias_hh_l1'\]"),
    ]
    for edit_arrays, edit_meta, match in cases:
        with open(path, "wb") as f:
            f.write(good)
        _rewrite(path, edit_arrays, edit_meta)
        trainer, before = _fresh(tmp_path)
        with pytest.raises(ckpt.CheckpointMismatchError, match=match):
            trainer.load_checkpoint()
        _assert_same(_snapshot(trainer), before)


def test_bad_optimizer_state_fails_before_the_model_is_written(tmp_path):
    _, path = _good_checkpoint(tmp_path)

    def bad_moment(arrays):
        arrays["optim/head.bias/exp_avg"] = np.zeros(7)

    _rewrite(path, bad_moment)
    trainer, before = _fresh(tmp_path)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"exp_avg'\] expected shape \(3,\), got \(7,\)"):
        trainer.load_checkpoint()
    _assert_same(_snapshot(trainer), before)


def test_missing_and_foreign_files(tmp_path):
    trainer, _ = _fresh(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        trainer.load_checkpoint(tmp_path / "nope.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(2))
    with pytest.raises(ckpt.CorruptCheckpointError, match="corrupted or foreign: it has no '__meta__' entry"):
        trainer.load_checkpoint(tmp_path / "foreign.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ckpt.TruncatedCheckpointError):
        trainer.load_checkpoint(tmp_path / "text.npz")
