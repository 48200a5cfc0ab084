"""Hypothesis strategies that draw a recurrent configuration (the cell too) and its data together."""

from __future__ import annotations

from hypothesis import strategies as st

from reference.cases import RNNCase
from scratch_rnn.cells import cell_names, cell_spec


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
