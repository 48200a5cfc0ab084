"""SequenceModel against its torch twin (float64 autograd, random cotangents), finite differences,
metamorphic relations of pooling and padding, and bad input."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.models import TorchSequenceModel, draw_dropout_masks, torch_twin
from scratch_rnn.models import ModelConfig, SequenceModel, pool_backward, pool_forward
from tests.helpers import FD_TOLERANCE, assert_close, numerical_grad, random_batch, randomize_biases
from tests.strategies import model_configs

THOROUGH = settings.default.max_examples > 25


def random_state(rng, cfg: ModelConfig, B: int):
    """A random initial state in the model's form: an array, or (h0, c0) for an LSTM."""
    LD = cfg.num_layers * cfg.num_directions
    h = rng.standard_normal((LD, B, cfg.output_size))
    return (h, rng.standard_normal((LD, B, cfg.hidden_size))) if cfg.cell == "lstm" else h


def as_tuple(s):
    return s if isinstance(s, tuple) else (s,)


def _masks_for(model, T, B):
    """The masks the model's next forward will draw, without consuming its generator."""
    rng = np.random.default_rng()
    rng.bit_generator.state = model.rng.bit_generator.state
    return draw_dropout_masks(rng, model.config, T, B, model.training)


def _torch_run(model, x, lengths, h0, masks, grad_out=None, grad_h_n=None, y=None):
    """The twin's forward and backward; h0, grad_h_n and the returned h_n / grad_h0 in the model's form."""
    twin = torch_twin(model)
    xt = torch.tensor(x) if np.asarray(x).dtype.kind in "iu" else torch.tensor(x, requires_grad=True)
    h0t = tuple(torch.tensor(s, requires_grad=True) for s in as_tuple(h0))
    out, h_n = twin(xt, h0t if len(h0t) > 1 else h0t[0], lengths, masks)
    if y is not None:
        loss = twin.loss(out, y, lengths)
        loss.backward()
    else:
        loss = None
        total = (out * torch.tensor(grad_out)).sum()
        for f, g in zip(as_tuple(h_n), as_tuple(grad_h_n)):
            total = total + (f * torch.tensor(g)).sum()
        total.backward()
    form = (lambda t: t) if len(h0t) > 1 else (lambda t: t[0])
    return dict(
        out=out.detach().numpy(),
        h_n=form(tuple(f.detach().numpy() for f in as_tuple(h_n))),
        loss=None if loss is None else loss.item(),
        grad_x=None if xt.grad is None else xt.grad.numpy(),
        grad_h0=form(tuple(t.grad.numpy() for t in h0t)),
        grads={
            k: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape))) for k, p in twin.named_parameters()
        },
    )


def assert_states_close(mine, theirs, name, config):
    for i, (a, b) in enumerate(zip(as_tuple(mine), as_tuple(theirs))):
        assert_close(a, b, name=f"{name}[{'hc'[i]}]", config=config)


# ---------------------------------------------------------------------------------------------
# torch parity
# ---------------------------------------------------------------------------------------------
@settings(max_examples=25 if not THOROUGH else 150)
@given(
    cfg=model_configs(max_layers=3 if THOROUGH else 2),
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 4),
    T=st.integers(1, 6),
    variable=st.booleans(),
    train=st.booleans(),
)
def test_forward_backward_match_torch_with_random_cotangents(cfg, seed, B, T, variable, train):
    rng = np.random.default_rng(seed)
    model = SequenceModel(cfg).train(train)
    randomize_biases(model, rng)
    x, _, lengths = random_batch(rng, cfg, B, T, variable)
    h0 = random_state(rng, cfg, B)
    masks = _masks_for(model, T, B)
    out, h_n = model.forward(x, h0, lengths)
    grad_out = rng.standard_normal(out.shape)  # random cotangents, never .sum()
    grad_h_n = tuple(rng.standard_normal(f.shape) for f in as_tuple(h_n))
    grad_h_n = grad_h_n if len(grad_h_n) > 1 else grad_h_n[0]
    model.zero_grad()
    grad_x, grad_h0 = model.backward(grad_out, grad_h_n)
    ref = _torch_run(model, x, lengths, h0, masks, grad_out, grad_h_n)
    config = dict(cfg=cfg, seed=seed, B=B, T=T, lengths=lengths, train=train)
    assert_close(out, ref["out"], name="out", config=config)
    assert_states_close(h_n, ref["h_n"], "h_n", config)
    assert_states_close(grad_h0, ref["grad_h0"], "grad_h0", config)
    if cfg.vocab_size is None:
        assert_close(grad_x, ref["grad_x"], name="grad_x", config=config)
    else:
        assert grad_x is None
    assert list(model.grads) == list(ref["grads"])
    for k, g in model.grads.items():
        assert_close(g, ref["grads"][k], name=f"grad {k}", config=config)


@settings(max_examples=20 if not THOROUGH else 100)
@given(
    cfg=model_configs(),
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 4),
    T=st.integers(1, 6),
    variable=st.booleans(),
)
def test_loss_and_its_gradient_match_torch(cfg, seed, B, T, variable):
    rng = np.random.default_rng(seed)
    model = SequenceModel(cfg)
    randomize_biases(model, rng)
    x, y, lengths = random_batch(rng, cfg, B, T, variable)
    h0 = random_state(rng, cfg, B)
    masks = _masks_for(model, T, B)
    model.zero_grad()
    loss, _, _ = model.forward_backward(x, y, h0, lengths)
    ref = _torch_run(model, x, lengths, h0, masks, y=y)
    config = dict(cfg=cfg, seed=seed, B=B, T=T, lengths=lengths)
    assert_close(loss, ref["loss"], name="loss", config=config)
    for k, g in model.grads.items():
        assert_close(g, ref["grads"][k], name=f"grad {k}", config=config)


HEADS = [("sequence", p, lo) for p in ("last", "mean", "max") for lo in ("cross_entropy", "mse", "bce")] + [
    ("per_step", "last", lo) for lo in ("cross_entropy", "mse", "bce")
]


@pytest.mark.parametrize("task, pooling, loss", HEADS)
@pytest.mark.parametrize("tokens", [True, False])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_head_matches_torch_with_variable_lengths(task, pooling, loss, tokens, cell):
    """Deterministic coverage of each cell/task/pooling/loss with lengths 1..T (the property above samples them)."""
    rng = np.random.default_rng(zlib.crc32(f"{task}{pooling}{loss}{tokens}{cell}".encode()))
    kw = dict(vocab_size=7, embedding_dim=3, padding_idx=0) if tokens else dict(input_size=3)
    cfg = ModelConfig(
        hidden_size=4,
        out_features=3,
        num_layers=2,
        bidirectional=True,
        dropout=0.3,
        task=task,
        pooling=pooling,
        loss=loss,
        cell=cell,
        proj_size=2 if cell == "lstm" else 0,
        dtype="float64",
        seed=7,
        **kw,
    )
    model = SequenceModel(cfg)
    randomize_biases(model, rng)
    x, y, _ = random_batch(rng, cfg, 4, 5, False)
    lengths = np.array([5, 1, 3, 2])
    h0 = random_state(rng, cfg, 4)
    masks = _masks_for(model, 5, 4)
    model.zero_grad()
    loss_value, _, h_n = model.forward_backward(x, y, h0, lengths)
    ref = _torch_run(model, x, lengths, h0, masks, y=y)
    config = dict(task=task, pooling=pooling, loss=loss, tokens=tokens, cell=cell)
    assert_close(loss_value, ref["loss"], name="loss", config=config)
    assert_states_close(h_n, ref["h_n"], "h_n", config)
    for k, g in model.grads.items():
        assert_close(g, ref["grads"][k], name=f"grad {k}", config=config)


def test_parameter_names_are_the_torch_twins_state_dict():
    for cfg in (
        ModelConfig(
            hidden_size=3,
            out_features=2,
            vocab_size=5,
            embedding_dim=2,
            num_layers=2,
            bidirectional=True,
            dtype="float64",
        ),
        ModelConfig(hidden_size=3, out_features=2, input_size=4, bias=False, dtype="float64"),
    ):
        model = SequenceModel(cfg)
        twin = TorchSequenceModel(cfg)
        assert list(model.parameters()) == list(twin.state_dict())
        for k, v in twin.state_dict().items():
            assert model.parameters()[k].shape == tuple(v.shape), k
        # one load_state_dict each way
        model.load_state_dict(twin.state_dict())
        for k, v in twin.state_dict().items():
            np.testing.assert_array_equal(model.parameters()[k], v.numpy())
        back = torch_twin(model)
        for k, v in back.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), model.parameters()[k])


def test_parameters_and_grads_are_live_views_of_the_layers():
    cfg = ModelConfig(hidden_size=3, out_features=2, vocab_size=5, embedding_dim=2, dtype="float64")
    model = SequenceModel(cfg)
    assert model.parameters()["rnn.weight_hh_l0"] is model.rnn.parameters()["weight_hh_l0"]
    assert model.parameters()["head.bias"] is model.head.parameters()["bias"]
    model.parameters()["head.bias"][...] = 3.0
    np.testing.assert_array_equal(model.head.bias, 3.0)
    model.forward_backward(np.array([[1, 2, 3]]), np.array([1]))
    assert model.grads["embedding.weight"] is model.embedding.grads["weight"]
    assert np.abs(model.grads["rnn.weight_ih_l0"]).sum() > 0
    model.zero_grad()
    assert all(not g.any() for g in model.grads.values())


# ---------------------------------------------------------------------------------------------
# an oracle without torch: central finite differences of the loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task, pooling, loss",
    [
        ("sequence", "last", "cross_entropy"),
        ("sequence", "mean", "mse"),
        ("sequence", "max", "bce"),
        ("per_step", "last", "cross_entropy"),
    ],
)
def test_loss_gradient_matches_finite_differences(task, pooling, loss):
    rng = np.random.default_rng(11)
    cfg = ModelConfig(
        hidden_size=3,
        out_features=3,
        input_size=2,
        num_layers=2,
        bidirectional=True,
        task=task,
        pooling=pooling,
        loss=loss,
        dtype="float64",
        seed=5,
    )
    model = SequenceModel(cfg)
    randomize_biases(model, rng)
    x, y, lengths = random_batch(rng, cfg, 3, 5, True)
    h0 = rng.standard_normal((4, 3, 3))
    model.zero_grad()
    model.forward_backward(x, y, h0, lengths)
    eps = 1e-6

    def f():
        out, _ = model.forward(x, h0, lengths)
        return model.loss(out, y, lengths)

    for name, p in model.parameters().items():
        fd = numerical_grad(f, p, eps)
        assert_close(
            model.grads[name],
            fd,
            name=f"grad {name} vs finite differences",
            config=dict(task=task, pooling=pooling, loss=loss),
            **FD_TOLERANCE,
        )


# ---------------------------------------------------------------------------------------------
# pooling and padding: closed forms and metamorphic relations
# ---------------------------------------------------------------------------------------------
def test_pooling_closed_forms_and_adjoint():
    rng = np.random.default_rng(12)
    B, T, F = 4, 6, 3
    out = rng.standard_normal((B, T, F))
    lengths = np.array([6, 1, 3, 4])
    for b, n in enumerate(lengths):
        out[b, n:] = 0.0  # as the RNN leaves padded steps
    last, _ = pool_forward(out, lengths, "last")
    mean, _ = pool_forward(out, lengths, "mean")
    mx, idx = pool_forward(out, lengths, "max")
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(last[b], out[b, n - 1])
        np.testing.assert_allclose(mean[b], out[b, :n].mean(axis=0), rtol=1e-15)
        np.testing.assert_array_equal(mx[b], out[b, :n].max(axis=0))  # padded zeros never win
    for mode in ("last", "mean", "max"):  # <pool(out), g> == <out, pool_backward(g)>: a linear map's adjoint
        pooled, cache = pool_forward(out, lengths, mode)
        g = rng.standard_normal(pooled.shape)
        d_out = pool_backward(g, lengths, T, mode, cache)
        np.testing.assert_allclose(np.sum(pooled * g), np.sum(out * d_out), rtol=1e-13)
        assert not d_out[1, 1:].any(), mode  # nothing flows to padded steps


@pytest.mark.parametrize("task", ["sequence", "per_step"])
def test_padded_steps_change_nothing(task):
    """Whatever sits in the padded steps of x and y: same loss, same gradients."""
    rng = np.random.default_rng(13)
    for pooling in ("last", "mean", "max"):
        cfg = ModelConfig(
            hidden_size=4,
            out_features=3,
            vocab_size=6,
            embedding_dim=3,
            bidirectional=True,
            num_layers=2,
            task=task,
            pooling=pooling,
            dtype="float64",
            seed=2,
        )
        x, y, _ = random_batch(rng, cfg, 3, 5, False)
        lengths = np.array([5, 2, 3])
        results = []
        for trial in range(2):
            xp, yp = x.copy(), y.copy()
            if trial:
                for b, n in enumerate(lengths):
                    xp[b, n:] = rng.integers(0, 6, 5 - n)
                    if task == "per_step":
                        yp[b, n:] = rng.integers(0, 3, 5 - n)
            model = SequenceModel(cfg)
            loss = model.forward_backward(xp, yp, lengths=lengths).loss
            results.append((loss, {k: g.copy() for k, g in model.grads.items()}))
        assert results[0][0] == results[1][0]
        for k in results[0][1]:
            np.testing.assert_array_equal(results[0][1][k], results[1][1][k], err_msg=f"{task} {pooling} {k}")


def test_dropout_masks_keep_rate_and_eval_mode():
    cfg = ModelConfig(hidden_size=50, out_features=2, input_size=2, num_layers=3, dropout=0.3, dtype="float64", seed=0)
    model = SequenceModel(cfg)
    masks = model.draw_dropout_masks(20, 10)
    assert len(masks) == 2 and masks[0].shape == (20, 10, 50)
    keep = np.mean([m.mean() for m in masks])
    assert abs(keep - 0.7) < 0.03, keep  # 20000 Bernoulli draws: sd 0.003
    model.eval()
    state = model.rng.bit_generator.state
    assert model.draw_dropout_masks(20, 10) is None
    out1, _ = model.forward(np.ones((2, 3, 2)))
    out2, _ = model.forward(np.ones((2, 3, 2)))
    np.testing.assert_array_equal(out1, out2)
    assert model.rng.bit_generator.state == state  # eval mode consumes no randomness


def test_float32_model_runs_in_float32():
    cfg = ModelConfig(hidden_size=4, out_features=3, vocab_size=6, embedding_dim=3, seed=1)  # dtype float32
    model = SequenceModel(cfg)
    assert all(p.dtype == np.float32 for p in model.parameters().values())
    loss, _, h_n = model.forward_backward(np.array([[1, 2], [3, 4]]), np.array([0, 2]))
    assert h_n.dtype == np.float32 and all(g.dtype == np.float32 for g in model.grads.values())
    twin = torch_twin(model)
    out, _ = twin(np.array([[1, 2], [3, 4]]))
    assert_close(loss, twin.loss(out, np.array([0, 2])).item(), name="float32 loss", dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=5, embedding_dim=2, input_size=3), "give exactly one"),
        (dict(), "give exactly one"),
        (dict(vocab_size=5), "embedding_dim: expected a positive integer with vocab_size"),
        (dict(input_size=3, padding_idx=0), "only meaningful with vocab_size"),
        (dict(input_size=3, pooling="sum"), r"pooling: expected one of \['last', 'mean', 'max'\], got 'sum'"),
        (dict(input_size=3, task="seq2seq"), "task: expected one of"),
        (dict(input_size=3, loss="nll"), "loss: expected one of"),
        (dict(input_size=3, nonlinearity="gelu"), "nonlinearity"),
        (dict(input_size=3, dropout=1.5), "dropout"),
        (dict(input_size=3, dtype="float16"), "dtype"),
        (dict(input_size=0), "input_size: expected a positive integer, got 0"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ModelConfig(hidden_size=3, out_features=2, **kwargs)


def test_bad_batches_are_clear_errors():
    tok = SequenceModel(ModelConfig(hidden_size=3, out_features=2, vocab_size=5, embedding_dim=2, dtype="float64"))
    dense = SequenceModel(ModelConfig(hidden_size=3, out_features=2, input_size=4, task="per_step", dtype="float64"))
    with pytest.raises(ValueError, match=r"x: expected token ids of shape \(batch, time\), got shape \(3,\)"):
        tok.forward(np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="x: expected an integer array"):
        tok.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"x: expected values in \[0, 5\).*got 7"):
        tok.forward(np.array([[1, 7]]))
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, time, 4\)"):
        dense.forward(np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"lengths: expected every length in 1..3 .*got \[0\]"):
        dense.forward(np.ones((2, 3, 4)), lengths=np.array([3, 0]))
    with pytest.raises(ValueError, match=r"lengths: expected shape \(2,\)"):
        dense.forward(np.ones((2, 3, 4)), lengths=np.array([3, 1, 1]))
    with pytest.raises(ValueError, match=r"target: expected shape \(2,\) \(class ids per sequence\)"):
        tok.forward_backward(np.array([[1, 2], [3, 4]]), np.array([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match=r"target: expected shape \(2, 3\) \(class ids per step\)"):
        dense.forward_backward(np.ones((2, 3, 4)), np.array([0, 1]))
    with pytest.raises(RuntimeError, match="call forward first"):
        SequenceModel(ModelConfig(hidden_size=3, out_features=2, input_size=4)).backward(np.zeros((1, 2)))


def test_load_state_dict_checks_everything_before_writing():
    model = SequenceModel(ModelConfig(hidden_size=3, out_features=2, vocab_size=5, embedding_dim=2, dtype="float64"))
    before = model.state_dict()
    bad = {k: np.zeros_like(v) for k, v in before.items()}
    bad["head.bias"] = np.zeros(3)  # the last entry is wrong: nothing before it may be written
    with pytest.raises(ValueError, match=r"state_dict\['head.bias'\]: expected shape \(2,\).*got \(3,\)"):
        model.load_state_dict(bad)
    bad = dict(before, extra=np.zeros(1))
    del bad["rnn.weight_hh_l0"]
    with pytest.raises(KeyError, match=r"missing keys \['rnn.weight_hh_l0'\], unexpected keys \['extra'\]"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
