"""NumPy scalars (np.int64, np.float32, np.bool_: what loops over np.arange produce) in the
configurations and in an ``evaluate`` hook's metrics: accepted once, at the validation layer, stored
as Python numbers, so that a run saves and resumes its checkpoints (issue 19, class 3)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from scratch_rnn import checkpoint as ckpt
from scratch_rnn.checks import plain_json, plain_scalar
from scratch_rnn.init import RecurrentInit
from scratch_rnn.models import ModelConfig, SequenceModel
from scratch_rnn.train import Dataset, TrainConfig, Trainer

MODEL = dict(
    hidden_size=4,
    out_features=2,
    vocab_size=9,
    embedding_dim=3,
    num_layers=2,
    dropout=0.25,
    bidirectional=True,
    padding_idx=0,
    dtype="float64",
    seed=3,
    proj_size=0,
)
TRAIN = dict(
    optimizer="adam",
    optimizer_kwargs={"lr": 0.01, "betas": (0.8, 0.9)},
    epochs=3,
    batch_size=4,
    clip_norm=1.5,
    clip_value=2.0,
    seed=2,
    shuffle=True,
    lr_decay=0.5,
    select="best",
    select_metric="score",
    patience=5,
    max_skipped_fraction=0.25,
    checkpoint_every=1,
    progress=False,
)


def _numpy(d: dict) -> dict:
    """The same settings as NumPy scalars (bools as np.bool_, ints as np.int64, floats as np.float64)."""

    def conv(v):
        if isinstance(v, bool):
            return np.bool_(v)
        if isinstance(v, int):
            return np.int64(v)
        if isinstance(v, float):
            return np.float64(v)
        if isinstance(v, tuple):
            return tuple(conv(x) for x in v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in d.items()}


def _assert_plain(obj, where):
    """No NumPy type anywhere in a config's fields (nested containers included)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert not isinstance(obj, np.generic), f"{where} is still a NumPy scalar: {type(obj).__name__}"
        assert type(obj) in (bool, int, float, str, type(None)), f"{where}: {type(obj).__name__}"


def _data():
    rng = np.random.default_rng(0)
    return Dataset(rng.integers(0, 9, (12, 5)), rng.integers(0, 2, 12), rng.integers(1, 6, 12))


def numpy_metrics(model):
    """An evaluate hook whose metrics are NumPy scalars of three kinds, and a 0-d array."""
    w = model.parameters()["head.weight"]
    return {
        "score": np.float32(np.abs(w).sum()),
        "count": np.int64((w > 0).sum()),
        "ok": np.bool_(True),
        "mean": np.asarray(w.mean()),
    }


def test_configs_store_python_values():
    m = ModelConfig(**_numpy(MODEL))
    t = TrainConfig(**_numpy(TRAIN))
    _assert_plain(dataclasses.asdict(m), "ModelConfig")
    _assert_plain(dataclasses.asdict(t), "TrainConfig")
    assert m == ModelConfig(**MODEL) and t.to_dict() == TrainConfig(**TRAIN).to_dict()
    json.dumps(m.to_dict()), json.dumps(t.to_dict())  # what a checkpoint stores
    r = RecurrentInit("gaussian", scale=np.float32(0.5), nonzero_per_row=np.int64(2), zero_bias=np.bool_(True))
    _assert_plain(dataclasses.asdict(r), "RecurrentInit")


def test_sentiment_and_flow_configs_store_python_values():
    from experiments.gradients.flow import FlowConfig
    from experiments.sentiment.train import SentimentConfig

    s = SentimentConfig(
        **_numpy(
            dict(
                max_vocab=100,
                min_freq=1,
                max_len=20,
                train_size=40,
                test_size=20,
                valid_fraction=0.25,
                hidden_size=8,
                bidirectional=False,
                lr=0.01,
                lr_decay=0.9,
                clip_norm=2.0,
                patience=2,
                seed=4,
                dropout=0.0,
            )
        )
    )
    _assert_plain(dataclasses.asdict(s), "SentimentConfig")
    _assert_plain(s.train_config().to_dict(), "SentimentConfig.train_config()")
    _assert_plain(dataclasses.asdict(FlowConfig(n_train=np.int64(8), lr=np.float32(0.5))), "FlowConfig")


@pytest.mark.parametrize("bad", ["False", "True", 0, 1, None, np.int64(1)])
def test_flags_stay_real_booleans(bad):
    assert TrainConfig(shuffle=np.bool_(False)).shuffle is False
    assert ModelConfig(**{**MODEL, "bias": np.bool_(True)}).bias is True
    with pytest.raises(TypeError, match="shuffle: expected True or False"):
        TrainConfig(shuffle=bad)
    with pytest.raises(TypeError, match="bias: expected True or False"):
        ModelConfig(**{**MODEL, "bias": bad})


def test_a_run_with_numpy_scalars_saves_and_resumes_like_a_plain_run(tmp_path):
    """The oracle: the same run with plain Python settings, uninterrupted. The NumPy-scalar run is
    stopped after 4 steps (checkpoint saved), resumed by a fresh trainer, and must match it bit for bit."""
    ref = Trainer(
        SequenceModel(ModelConfig(**MODEL)),
        TrainConfig(**{**TRAIN, "checkpoint_dir": str(tmp_path / "a")}),
        evaluate=numpy_metrics,
    )
    ref.fit(_data())

    folder = tmp_path / "b"
    first = Trainer(
        SequenceModel(ModelConfig(**_numpy(MODEL))),
        TrainConfig(**_numpy({**TRAIN, "checkpoint_dir": str(folder), "max_steps": 4})),
        evaluate=numpy_metrics,
    )
    first.fit(_data())
    assert first.last_checkpoint_step == 4
    metrics = [r for r in first.epochs if "score" in r]
    assert metrics and all(
        type(r["score"]) is float and type(r["count"]) is int and r["ok"] is True and type(r["mean"]) is float
        for r in metrics
    )

    again = Trainer(
        SequenceModel(ModelConfig(**_numpy(MODEL))),
        TrainConfig(**_numpy({**TRAIN, "checkpoint_dir": str(folder)})),
        evaluate=numpy_metrics,
    )
    again.load_checkpoint()
    again.fit(_data())
    assert again.step == ref.step and again.selected_epoch == ref.selected_epoch
    for k, v in ref.model.parameters().items():
        np.testing.assert_array_equal(again.model.parameters()[k], v, err_msg=k)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in ref.epochs]
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in again.epochs] == strip


@pytest.mark.parametrize(
    "metric,what",
    [
        ("high", "str"),
        ([0.5, 0.6], "list"),
        (np.array([0.5, 0.6]), "shape (2,)"),
        ({"a": 1}, "dict"),
        (1 + 2j, "complex"),
    ],
)
def test_a_metric_that_is_not_one_number_is_refused_at_the_hook(tmp_path, metric, what):
    cfg = TrainConfig(
        **{
            **TRAIN,
            "checkpoint_dir": str(tmp_path),
            "select": "last",
            "select_metric": None,
            "patience": None,
            "checkpoint_every": 1,
        }
    )
    t = Trainer(SequenceModel(ModelConfig(**MODEL)), cfg, evaluate=lambda m: {"acc": 0.5, "none": None, "bad": metric})
    with pytest.raises(TypeError, match=rf"evaluate\(\)\['bad'\]: expected one real number.*{re.escape(what)}"):
        t.fit(_data())
    assert t.last_checkpoint_step == 3  # the checkpoints of the epoch's steps were written; no save failed
    ckpt.read_archive(t.last_checkpoint)


def test_an_evaluate_hook_that_returns_no_dict_is_named():
    t = Trainer(SequenceModel(ModelConfig(**MODEL)), TrainConfig(progress=False), evaluate=lambda m: [0.5])
    with pytest.raises(TypeError, match="evaluate: expected a dict of metrics"):
        t.fit(_data())


def test_saving_metadata_json_cannot_hold_is_refused_before_writing(tmp_path):
    model = SequenceModel(ModelConfig(**MODEL))
    path = tmp_path / "c.npz"
    ckpt.save(path, model, meta={"n": np.int64(2), "x": np.float32(0.5)})  # NumPy scalars: made plain
    assert ckpt.read_archive(path)[1]["meta"] == {"n": 2, "x": 0.5}
    before = path.read_bytes()
    with pytest.raises(ckpt.UnsavableCheckpointError, match=r"meta\['a'\]\['b'\].*object"):
        ckpt.save(path, model, meta={"a": {"b": object()}})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_plain_scalar_and_plain_json():
    assert [
        type(plain_scalar("v", v))
        for v in (np.int8(1), np.uint64(2), np.float16(1), np.bool_(0), np.array(3.0), 4, 5.0, True)
    ] == [int, int, float, bool, float, int, float, bool]
    assert plain_json("k", {"betas": (np.float32(0.5), 0.9), "n": [np.int64(1)]}) == {"betas": [0.5, 0.9], "n": [1]}
    with pytest.raises(TypeError, match=r"k\[1\]: expected a number"):
        plain_json("k", [1, {2}])
    with pytest.raises(TypeError, match="expected string keys"):
        plain_json("k", {1: 2})
