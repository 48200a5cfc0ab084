"""Hypothesis strategies that draw an RNN configuration and its data together."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from hypothesis import strategies as st

from scratch_rnn import RNN


@dataclass
class RNNCase:
    """One drawn configuration plus everything random about its inputs (all seeded)."""

    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    nonlinearity: str
    bias: bool
    batch_first: bool
    unbatched: bool
    batch: int
    steps: int
    lengths: tuple | None
    with_h0: bool
    with_grad_h_n: bool
    dropout: float
    seed: int

    def model(self, dtype=np.float64) -> RNN:
        return RNN(self.input_size, self.hidden_size, self.num_layers, self.nonlinearity, self.bias,
                   self.batch_first, self.dropout, self.bidirectional, dtype=dtype, seed=self.seed)

    def arrays(self, model: RNN):
        """x, h0, lengths, cotangents, in the model's layout; biases randomised (not torch's tiny init)."""
        rng = np.random.default_rng(self.seed + 1)
        for name, p in model.parameters().items():  # wider than U(±1/√H): exercise saturation and relu
            p[...] = rng.uniform(-1.2, 1.2, size=p.shape) / np.sqrt(max(1, p.shape[-1]) / 2)
        T, B, I = self.steps, self.batch, self.input_size
        LD = self.num_layers * (2 if self.bidirectional else 1)
        if self.unbatched:
            x_shape, h_shape = (T, I), (LD, self.hidden_size)
        else:
            x_shape = (B, T, I) if self.batch_first else (T, B, I)
            h_shape = (LD, B, self.hidden_size)
        x = rng.standard_normal(x_shape)
        h0 = rng.standard_normal(h_shape) if self.with_h0 else None
        lengths = None if self.lengths is None else np.array(self.lengths, dtype=np.int64)
        out_dim = (2 if self.bidirectional else 1) * self.hidden_size
        out_shape = x_shape[:-1] + (out_dim,)
        g_out = rng.standard_normal(out_shape)
        g_hn = rng.standard_normal(h_shape) if self.with_grad_h_n else None
        return x, h0, lengths, g_out, g_hn

    def __str__(self) -> str:
        return str(asdict(self))


@st.composite
def rnn_cases(draw, max_layers=3, max_steps=7, max_batch=5, dropout=False, allow_unbatched=True):
    unbatched = draw(st.booleans()) if allow_unbatched else False
    batch = 1 if unbatched else draw(st.integers(1, max_batch))
    steps = draw(st.integers(1, max_steps))
    use_lengths = draw(st.booleans())
    lengths = None
    if use_lengths:
        lengths = tuple(draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch)))
    num_layers = draw(st.integers(1, max_layers))
    return RNNCase(
        input_size=draw(st.integers(1, 5)),
        hidden_size=draw(st.integers(1, 6)),
        num_layers=num_layers,
        bidirectional=draw(st.booleans()),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
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
    )
