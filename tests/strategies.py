"""The suite's shared Hypothesis strategies, one per concept: a recurrent layer stack with its data
(:func:`rnn_cases`), one gated layer and direction (:func:`gated_cases`), a whole model's configuration
(:func:`model_configs`) and an optimizer with its options (:func:`optimizer_options`)."""

from __future__ import annotations

from hypothesis import strategies as st

from reference.cases import RNNCase
from scratch_rnn.cells import cell_names, cell_spec
from scratch_rnn.models import ModelConfig
from tests.gated_cases import Case

OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "adagrad", "rmsprop")


@st.composite
def rnn_cases(draw, max_layers=3, max_steps=7, max_batch=5, dropout=False, allow_unbatched=True, cells=None):
    """One strategy for every cell: the cell (any registered one unless ``cells`` says) is drawn with its
    options — the built-in ones' here, a plug-in cell's from its ``OPTIONS`` (the hook every cell has)."""
    cell = draw(st.sampled_from(list(cells or cell_names())))
    unbatched = draw(st.booleans()) if allow_unbatched else False
    batch = 1 if unbatched else draw(st.integers(1, max_batch))
    steps = draw(st.integers(1, max_steps))
    use_lengths = draw(st.booleans())
    lengths = None
    if use_lengths:
        lengths = tuple(draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch)))
    num_layers = draw(st.integers(1, max_layers))
    hidden = draw(st.integers(1, 6))
    proj = draw(st.integers(0, hidden - 1)) if cell == "lstm" and hidden > 1 else 0
    return RNNCase(
        cell=cell,
        proj_size=proj,
        input_size=draw(st.integers(1, 5)),
        hidden_size=hidden,
        num_layers=num_layers,
        bidirectional=draw(st.booleans()),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])) if cell == "rnn" else "tanh",
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        unbatched=unbatched,
        batch=batch,
        steps=steps,
        lengths=lengths,
        with_h0=draw(st.booleans()),
        with_grad_h_n=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.2, 0.5, 0.9])) if dropout and num_layers > 1 else 0.0,
        seed=draw(st.integers(0, 2**31 - 1)),
        options=()
        if cell_spec(cell).builtin
        else tuple((k, draw(st.sampled_from(list(v)))) for k, v in cell_spec(cell).options.items()),
    )


@st.composite
def gated_cases(draw):
    """One layer and one direction of an LSTM or GRU (tests/gated_cases.py's Case), lengths sorted decreasing."""
    kind = draw(st.sampled_from(["lstm", "gru"]))
    H = draw(st.integers(1, 5))
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    lengths = None
    if draw(st.booleans()):
        lengths = tuple(sorted(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)), reverse=True))
    return Case(
        kind,
        draw(st.integers(1, 4)),
        H,
        draw(st.integers(0, H - 1)) if kind == "lstm" else 0,
        B,
        T,
        draw(st.booleans()),
        draw(st.booleans()),
        lengths,
        draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def model_configs(draw, task=None, max_layers=2, cells=None):
    """A float64 ModelConfig over every option: the cell (any registered one), token/dense input, layers,
    directions, dropout..."""
    cell = draw(st.sampled_from(list(cells or cell_names())))
    nonlinearities = cell_spec(cell).options.get("nonlinearity", ("tanh",))
    tokens = draw(st.booleans())
    layers = draw(st.integers(1, max_layers))
    hidden = draw(st.integers(1, 5))
    kw = (
        dict(
            vocab_size=draw(st.integers(2, 8)),
            embedding_dim=draw(st.integers(1, 4)),
            padding_idx=draw(st.sampled_from([None, 0])),
        )
        if tokens
        else dict(input_size=draw(st.integers(1, 4)))
    )
    return ModelConfig(
        cell=cell,
        proj_size=draw(st.integers(0, hidden - 1)) if cell == "lstm" and hidden > 1 else 0,
        hidden_size=hidden,
        out_features=draw(st.integers(1, 4)),
        num_layers=layers,
        nonlinearity=draw(st.sampled_from(list(nonlinearities))),
        bias=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.4])) if layers > 1 else 0.0,
        pooling=draw(st.sampled_from(["last", "mean", "max"])),
        task=task or draw(st.sampled_from(["sequence", "per_step"])),
        loss=draw(st.sampled_from(["cross_entropy", "mse", "bce"])),
        dtype="float64",
        seed=draw(st.integers(0, 2**31 - 1)),
        **kw,
    )


@st.composite
def optimizer_options(draw, name=None):
    """(name, kwargs) over the optimizers and their torch-named options."""
    name = name or draw(st.sampled_from(OPTIMIZER_NAMES))
    kw = dict(lr=draw(st.sampled_from([1e-3, 1e-2, 5e-2])), maximize=draw(st.booleans()))
    if name == "sgd":
        kw["lr"] = draw(st.sampled_from([1e-2, 0.1]))
        kw["momentum"] = draw(st.sampled_from([0.0, 0.5, 0.9]))
        kw["nesterov"] = kw["momentum"] > 0 and draw(st.booleans())
        kw["dampening"] = 0.0 if kw["nesterov"] else draw(st.sampled_from([0.0, 0.3]))
        kw["weight_decay"] = draw(st.sampled_from([0.0, 1e-2]))
    elif name in ("adam", "adamw"):
        kw["betas"] = draw(st.sampled_from([(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)]))
        kw["eps"] = draw(st.sampled_from([1e-8, 1e-3]))
        kw["weight_decay"] = draw(st.sampled_from([0.0, 1e-2, 0.1]))
        kw["amsgrad"] = draw(st.booleans())
    elif name == "adagrad":
        kw["lr_decay"] = draw(st.sampled_from([0.0, 0.1]))
        kw["weight_decay"] = draw(st.sampled_from([0.0, 1e-2]))
        kw["initial_accumulator_value"] = draw(st.sampled_from([0.0, 0.1]))
        kw["eps"] = draw(st.sampled_from([1e-10, 1e-3]))
    else:
        kw["alpha"] = draw(st.sampled_from([0.99, 0.9]))
        kw["eps"] = draw(st.sampled_from([1e-8, 1e-3]))
        kw["weight_decay"] = draw(st.sampled_from([0.0, 1e-2]))
        kw["momentum"] = draw(st.sampled_from([0.0, 0.5]))
        kw["centered"] = draw(st.booleans())
    return name, kw
