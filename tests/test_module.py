"""The lifecycle rules of ``scratch_rnn.Module``, held for every Module subclass by one parametrized check.

1. a forward that raises leaves no cache behind, so a following backward raises;
2. backward without a forward raises; a second backward through the same forward raises unless the first
   was called with retain_graph=True (and then it adds the same gradient again);
3. backward never reads an array the caller may change after forward (inputs are copied where needed);
4. an error inside backward leaves every ``grads`` array as it was;
5. a parameter changed in place between forward and backward makes the backward raise, naming it, or (one the
   backward does not read) changes nothing;
plus the parameter bookkeeping every subclass gets from the base (named_parameters in state_dict order,
all-or-nothing load_state_dict, real booleans for train()). ``check_lifecycle`` is also run against a
mutant base class whose forward keeps the old cache: the check must fail (it can fail).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import scratch_rnn
from scratch_rnn import GRU, LSTM, RNN, BCEWithLogitsLoss, CrossEntropyLoss, Embedding, Linear, Module, MSELoss
from scratch_rnn.cells import cell_names, cell_spec
from scratch_rnn.models import ModelConfig, SequenceModel


@dataclasses.dataclass
class Case:
    """A module, a good input (args, kwargs) and a cotangent; ``bad`` makes the forward raise;
    ``mutate`` changes the caller's inputs in place; ``overflow`` is a cotangent whose gradients overflow."""

    name: str
    make: callable
    inputs: callable  # rng -> (args, kwargs)
    grad: callable  # (module, outputs, rng) -> cotangent args
    bad: callable  # (args, kwargs) -> (args, kwargs) that make forward raise
    mutate: callable  # (args, kwargs) -> None, in place
    overflow: callable  # (module, outputs) -> cotangent args whose backward overflows


def _rnn_grad(m, out, rng):
    o, h = out
    return (rng.standard_normal(o.shape).astype(m.dtype), rng.standard_normal(h.shape).astype(m.dtype))


def _zero_all(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, np.ndarray):
            a[...] = 0 if a.dtype.kind == "f" else a.flat[0]


def _rnn_case(name, dtype=np.float64, **kw):
    shape = kw.pop("shape")

    def inputs(rng):
        return (rng.standard_normal(shape).astype(dtype),), {}

    return Case(
        name,
        lambda: RNN(3, 4, dtype=dtype, seed=0, **kw),
        inputs,
        _rnn_grad,
        bad=lambda a, k: ((a[0][..., :2],), k),
        mutate=_zero_all,
        overflow=lambda m, out: tuple(np.full_like(o, np.finfo(m.dtype).max) for o in out),
    )


def _with_lengths(rng):
    x = rng.standard_normal((5, 3, 3))
    h0 = rng.standard_normal((4, 3, 4))
    return (x, h0, np.array([5, 2, 4])), {}


def _seq_inputs(cfg):
    def inputs(rng):
        B, T = 3, 5
        x = rng.integers(1, cfg.vocab_size, (B, T)) if cfg.vocab_size else rng.standard_normal((B, T, cfg.input_size))
        return (x,), {"lengths": np.array([5, 2, 4])}

    return inputs


def _seq_grad(m, out, rng):
    o, h = out
    return (rng.standard_normal(o.shape), rng.standard_normal(h.shape))


def _mutate_seq(args, kwargs):
    x = args[0]
    x[...] = 1 if x.dtype.kind in "iu" else 0.0
    kwargs["lengths"][...] = 1


TOKENS = ModelConfig(
    hidden_size=4,
    out_features=3,
    vocab_size=9,
    embedding_dim=3,
    num_layers=2,
    dropout=0.3,
    bidirectional=True,
    pooling="max",
    padding_idx=0,
    dtype="float64",
    seed=3,
)
DENSE = ModelConfig(hidden_size=4, out_features=2, input_size=3, task="per_step", loss="mse", dtype="float64", seed=4)

CASES = [
    _rnn_case("RNN time-major", shape=(5, 2, 3)),
    _rnn_case("RNN batch_first", shape=(2, 5, 3), batch_first=True),
    _rnn_case("RNN unbatched", shape=(5, 3)),
    _rnn_case(
        "RNN float32 2 layers bidirectional", dtype=np.float32, shape=(5, 2, 3), num_layers=2, bidirectional=True
    ),
    Case(
        "RNN lengths and h0",
        lambda: RNN(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1),
        _with_lengths,
        _rnn_grad,
        bad=lambda a, k: ((a[0], a[1][:, :2], a[2]), k),
        mutate=lambda a, k: (a[0].fill(0), a[1].fill(0), a[2].fill(1)),
        overflow=lambda m, out: tuple(np.full_like(o, np.finfo(m.dtype).max) for o in out),
    ),
    Case(
        "GRU lengths and h0",
        lambda: GRU(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1),
        _with_lengths,
        _rnn_grad,
        bad=lambda a, k: ((a[0], a[1][:, :2], a[2]), k),
        mutate=lambda a, k: (a[0].fill(0), a[1].fill(0), a[2].fill(1)),
        overflow=lambda m, out: tuple(np.full_like(o, np.finfo(m.dtype).max) for o in out),
    ),
    Case(
        "LSTM projection, lengths and (h0, c0)",
        lambda: LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, seed=1),
        lambda rng: (
            (
                rng.standard_normal((5, 3, 3)),
                (rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 4))),
                np.array([5, 2, 4]),
            ),
            {},
        ),
        lambda m, out, rng: (rng.standard_normal(out[0].shape), tuple(rng.standard_normal(s.shape) for s in out[1])),
        bad=lambda a, k: ((a[0], (a[1][0][:, :2], a[1][1]), a[2]), k),
        mutate=lambda a, k: (a[0].fill(0), a[1][0].fill(0), a[1][1].fill(0), a[2].fill(1)),
        overflow=lambda m, out: (np.full_like(out[0], np.finfo(m.dtype).max), None),
    ),
    Case(
        "LSTM batch_first float32",
        lambda: LSTM(3, 4, batch_first=True, dtype=np.float32, seed=2),
        lambda rng: ((rng.standard_normal((2, 5, 3)).astype(np.float32),), {}),
        lambda m, out, rng: (rng.standard_normal(out[0].shape).astype(np.float32),),
        bad=lambda a, k: ((a[0][..., :2],), k),
        mutate=_zero_all,
        overflow=lambda m, out: (np.full_like(out[0], np.finfo(m.dtype).max),),
    ),
    Case(
        "Linear",
        lambda: Linear(3, 2, dtype=np.float64, seed=0),
        lambda rng: ((rng.standard_normal((4, 3)),), {}),
        lambda m, out, rng: (rng.standard_normal(out.shape),),
        bad=lambda a, k: ((a[0][:, :2],), k),
        mutate=_zero_all,
        overflow=lambda m, out: (np.full_like(out, np.finfo(m.dtype).max),),
    ),
    Case(
        "Embedding",
        lambda: Embedding(6, 3, padding_idx=0, dtype=np.float64, seed=0),
        lambda rng: ((np.array([[1, 1, 2, 3, 0], [2, 4, 5, 1, 0]]),), {}),
        lambda m, out, rng: (rng.standard_normal(out.shape),),
        bad=lambda a, k: ((a[0] + 6,), k),
        mutate=lambda a, k: a[0].fill(5),
        overflow=lambda m, out: (np.full_like(out, np.finfo(m.dtype).max),),
    ),
    Case(
        "SequenceModel tokens",
        lambda: SequenceModel(TOKENS),
        _seq_inputs(TOKENS),
        _seq_grad,
        bad=lambda a, k: (a, {"lengths": np.array([9, 1, 1])}),
        mutate=_mutate_seq,
        overflow=lambda m, out: (np.full_like(out[0], np.finfo(m.dtype).max), None),
    ),
    Case(
        "SequenceModel dense per-step",
        lambda: SequenceModel(DENSE),
        _seq_inputs(DENSE),
        _seq_grad,
        bad=lambda a, k: ((a[0][:, :, :2],), k),
        mutate=_mutate_seq,
        overflow=lambda m, out: (np.full_like(out[0], np.finfo(m.dtype).max), None),
    ),
]
# every registered plug-in cell, as the built-in cells above (a new cell needs no line here)
CASES += [
    Case(
        f"{name} (a plug-in cell) lengths and h0",
        lambda name=name: cell_spec(name).model_class()(
            3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1
        ),
        _with_lengths,
        _rnn_grad,
        bad=lambda a, k: ((a[0], a[1][:, :2], a[2]), k),
        mutate=lambda a, k: (a[0].fill(0), a[1].fill(0), a[2].fill(1)),
        overflow=lambda m, out: tuple(np.full_like(o, np.finfo(m.dtype).max) for o in out),
    )
    for name in cell_names(builtin=False)
]


def _loss_case(cls, target):
    def mutate(a, k):
        a[0].fill(0.0)
        a[1].fill(0 if a[1].dtype.kind in "iu" else 0.5)

    return Case(
        cls.__name__,
        cls,
        lambda rng: ((rng.standard_normal((4, 3)), target(rng)), {}),
        lambda m, out, rng: (rng.standard_normal(),),
        bad=lambda a, k: ((a[0], a[1][:2]), k),
        mutate=mutate,
        overflow=lambda m, out: (np.nan,),
    )


CASES += [
    _loss_case(MSELoss, lambda rng: rng.standard_normal((4, 3))),
    _loss_case(CrossEntropyLoss, lambda rng: rng.integers(0, 3, 4)),
    _loss_case(BCEWithLogitsLoss, lambda rng: rng.uniform(0, 1, (4, 3))),
]


def _fill_grads(module, rng):
    for g in module.grads.values():
        g[...] = rng.standard_normal(g.shape)
    return {k: v.copy() for k, v in module.grads.items()}


def _copy_one(a):
    if isinstance(a, (tuple, list)):  # the LSTM's (h0, c0): its arrays are copied too
        return type(a)(_copy_one(b) for b in a)
    return np.array(a) if isinstance(a, np.ndarray) else a


def _copy(args, kwargs):
    return [_copy_one(a) for a in args], {k: _copy_one(v) for k, v in kwargs.items()}


def check_lifecycle(case: Case, seed: int = 0) -> None:
    """All four rules for one case; raises AssertionError naming the rule broken."""
    rng = np.random.default_rng(seed)
    args, kwargs = case.inputs(rng)
    m = case.make()
    if isinstance(m, SequenceModel):
        m.eval()  # dropout masks would differ between the runs compared below

    # rule 2: no forward yet
    with pytest.raises(RuntimeError, match="call forward first"):
        m.backward(None)
    out = m(*args, **kwargs)
    g = case.grad(m, out, np.random.default_rng(seed + 1))
    m.zero_grad()
    first = m.backward(*g)
    once = {k: v.copy() for k, v in m.grads.items()}
    with pytest.raises(RuntimeError, match="call forward first"):
        m.backward(*g)  # rule 2: a second backward through the same forward
    assert all(np.array_equal(m.grads[k], once[k]) for k in once), "rule 2: a refused second backward added grads"

    # rule 2: retain_graph=True allows the second and adds the same again
    m.forward(*args, **kwargs)
    m.zero_grad()
    m.backward(*g, retain_graph=True)
    m.backward(*g)
    for k in once:
        np.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-12, atol=0, err_msg=f"retain_graph, {k}")

    # rule 1: a forward that raises leaves no cache
    m.forward(*args, **kwargs)
    bad_args, bad_kwargs = case.bad(*_copy(args, kwargs))
    with pytest.raises((ValueError, TypeError)):
        m.forward(*bad_args, **bad_kwargs)
    with pytest.raises(RuntimeError, match="call forward first"):
        m.backward(*g)  # not through the older forward

    # rule 3: changing the inputs after forward changes nothing
    a2, k2 = _copy(args, kwargs)
    m.zero_grad()
    m.forward(*a2, **k2)
    case.mutate(a2, k2)
    second = m.backward(*g)
    for k in once:
        assert np.array_equal(m.grads[k], once[k]), f"rule 3: changing the input after forward changed grad {k}"
    for r1, r2 in zip(_flat(first), _flat(second)):
        assert np.array_equal(r1, r2), "rule 3: changing the input after forward changed an input gradient"

    # rule 4: an error inside backward leaves every grads array as it was (and keeps the forward)
    before = _fill_grads(m, rng)
    out = m.forward(*args, **kwargs)
    with np.errstate(all="ignore"), pytest.raises((FloatingPointError, ValueError)):
        m.backward(*case.overflow(m, out))
    for k, v in before.items():
        assert np.array_equal(m.grads[k], v), f"rule 4: a failed backward changed grads[{k!r}]"

    # rule 5: a parameter changed in place between forward and backward: the backward raises naming it,
    # or (a parameter it does not read) gives exactly what it gives without the change
    for name, p in m.named_parameters():
        kept = p.copy()
        m.forward(*args, **kwargs)
        p.flat[p.size // 2] += 0.5  # as an optimizer step or W[...] = ... would
        m.zero_grad()
        try:
            changed = m.backward(*g)
        except RuntimeError as err:
            assert f"['{name}'] were modified in place" in str(err), f"rule 5: {name}: {err}"
            assert not any(v.any() for v in m.grads.values()), "rule 5: a refused backward added grads"
        else:
            for k, v in once.items():
                assert np.array_equal(m.grads[k], v), (
                    f"rule 5: {name} changed after forward, backward ran and its grad {k} changed"
                )
            for r1, r2 in zip(_flat(first), _flat(changed)):
                assert np.array_equal(r1, r2), f"rule 5: {name} changed after forward changed an input gradient"
        finally:
            p[...] = kept


def _flat(x):
    if isinstance(x, (tuple, list)):
        return [y for item in x for y in _flat(item)]
    return [] if x is None else [np.asarray(x)]


def test_every_module_subclass_is_covered():
    """A new Module subclass must be added to CASES (the rules hold for every model to come)."""

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    mine = {
        c
        for c in subclasses(Module)
        if c.__module__.startswith("scratch_rnn")
        and not c.__name__.startswith("_")
        and c._forward is not Module._forward  # abstract bases (RecurrentBase) have no forward of their own
        and not c.__dict__.get("ABSTRACT", False)
    }  # nor does StepCell have a layout of its own
    covered = {type(case.make()) for case in CASES}
    assert mine <= covered, f"not covered by the lifecycle check: {sorted(c.__name__ for c in mine - covered)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lifecycle_rules(case):
    check_lifecycle(case)


@pytest.mark.parametrize("mutant", ["keep_cache_on_failed_forward", "never_consume", "no_staging", "no_snapshot"])
def test_the_lifecycle_check_fails_on_a_broken_base(monkeypatch, mutant):
    """Mutation check: a base without the cache clearing / the consumption / the staged accumulation is caught."""
    if mutant == "keep_cache_on_failed_forward":

        def forward(self, *args, **kwargs):
            outputs, cache = self._forward(*args, **kwargs)  # the old cache survives a raising _forward
            self._cache = cache
            return outputs

        monkeypatch.setattr(Module, "forward", forward)
    elif mutant == "never_consume":
        orig = Module.backward
        monkeypatch.setattr(
            Module, "backward", lambda self, *g, retain_graph=False, **kw: orig(self, *g, retain_graph=True, **kw)
        )
    elif mutant == "no_snapshot":
        monkeypatch.setattr(Module, "_check_unchanged", lambda self, snapshot, reader: None)
    else:

        def accumulate(self, param_grads):
            for name, g in param_grads.items():
                if isinstance(g, scratch_rnn.module.RowGrad):
                    np.add.at(self.grads[name], g.rows, g.values)
                else:
                    self.grads[name] += g
            if any(not np.isfinite(v).all() for v in self.grads.values()):
                raise FloatingPointError("nothing was accumulated (a lie)")

        monkeypatch.setattr(Module, "accumulate", accumulate)
    failures = 0
    for case in CASES:
        try:
            check_lifecycle(case)
        except (AssertionError, pytest.fail.Exception):
            failures += 1
    assert failures >= 1, f"the {mutant} mutant passed every lifecycle check: the check cannot fail"


def test_the_time_major_input_bug_is_gone():
    """The issue's reproduction: zeroing x between forward and backward changed weight_ih's gradient."""
    rng = np.random.default_rng(0)
    rnn = RNN(3, 4, dtype=np.float64, seed=0)
    x, g = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    o, _ = rnn(x.copy())
    rnn.backward(g)
    expected = rnn.grads["weight_ih_l0"].copy()
    rnn.zero_grad()
    o, _ = rnn(x)
    x[...] = 0
    rnn.backward(g)
    np.testing.assert_array_equal(rnn.grads["weight_ih_l0"], expected)


def test_a_child_forward_in_between_is_refused():
    """The RNN's buffers are reused by its next forward: a parent's backward through the older one raises."""
    model = SequenceModel(TOKENS).eval()
    x = np.array([[1, 2, 3], [4, 5, 6]])
    out, _ = model(x)
    model.rnn(np.zeros((2, 3, 3)))
    with pytest.raises(RuntimeError, match="another forward"):
        model.backward(np.ones_like(out))


def test_named_parameters_follow_state_dict_order_and_flags_are_booleans():
    model = SequenceModel(TOKENS)
    assert [k for k, _ in model.named_parameters()] == list(model.state_dict())
    assert list(model.state_dict())[:2] == ["embedding.weight", "rnn.weight_ih_l0"]
    for bad in ("False", 0, None):
        with pytest.raises(TypeError, match="mode: expected True or False"):
            model.train(bad)
    assert model.train(False) is model and not model.rnn.training
    for flag in ("bias", "batch_first", "bidirectional"):
        with pytest.raises(TypeError, match=f"{flag}: expected True or False, got 'False'"):
            RNN(3, 4, **{flag: "False"})
    with pytest.raises(TypeError, match="bias: expected True or False"):
        Linear(3, 2, bias="False")
    with pytest.raises(TypeError, match="bidirectional: expected True or False, got 'false'"):
        ModelConfig.from_dict({**TOKENS.to_dict(), "bidirectional": "false"})


def test_no_lossy_cast_of_inputs():
    """A float64 array into a float32 model raises, naming it (the conversion rounds); lists are converted. The
    lossless direction (float32 into float64) is accepted: tests/test_torch_conformance.py."""
    rnn = RNN(2, 3, dtype=np.float32, seed=0)
    with pytest.raises(TypeError, match="input: expected dtype float32.*got float64"):
        rnn(np.zeros((4, 1, 2)))
    with pytest.raises(TypeError, match="h0: expected dtype"):
        rnn(np.zeros((4, 1, 2), np.float32), np.zeros((1, 1, 3)))
    out, _ = rnn([[[0.5, 1.0]]])  # a list has no dtype: converted
    assert out.dtype == np.float32
    with pytest.raises(TypeError, match="grad_output: expected dtype"):
        rnn.backward(np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match="overflows float32"):
        rnn([[[1e300, 0.0]]])


def test_messages_at_the_edges():
    rnn = RNN(2, 3, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match=r"input: expected at least one sequence"):
        rnn(np.zeros((4, 0, 2)), lengths=[])
    with pytest.raises(ValueError, match=str(2**64 - 1)):
        rnn(np.zeros((4, 1, 2)), lengths=np.array([2**64 - 1], dtype=np.uint64))
    model = RNN(2, 3, num_layers=2, dropout=0.5, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match=r"dropout_masks\[0\]: expected a keep-mask of booleans or 0/1"):
        model(np.zeros((4, 1, 2)), dropout_masks=[np.full((4, 1, 3), np.nan)])


def test_inputs_from_torch_tensors_and_dropout_masks_cannot_change_a_backward():
    """A torch tensor shares memory with the numpy view the RNN makes of it: it must be copied too; the masks
    backward reads are shown read-only."""
    import torch

    rng = np.random.default_rng(1)
    a, g = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 8))
    rnn = RNN(3, 4, num_layers=2, bidirectional=True, dropout=0.5, dtype=np.float64, seed=0)
    masks = [rng.random((5, 2, 8)) > 0.5]
    rnn(a.copy(), dropout_masks=masks)
    rnn.backward(g)
    expected = {k: v.copy() for k, v in rnn.grads.items()}
    rnn.zero_grad()
    t = torch.from_numpy(a.copy())
    rnn(t, dropout_masks=masks)
    t.zero_()
    with pytest.raises(ValueError, match="read-only"):
        rnn.dropout_masks[0][...] = 0
    rnn.backward(g)
    for k, v in expected.items():
        np.testing.assert_array_equal(rnn.grads[k], v, err_msg=k)


def test_a_gradient_of_the_wrong_shape_is_refused_not_broadcast():
    layer = Linear(3, 2, dtype=np.float64)
    with pytest.raises(ValueError, match="'bias' has shape"):
        layer.accumulate({"bias": np.float64(5.0)})
    assert not layer.grads["bias"].any()
