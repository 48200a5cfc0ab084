"""A drawn RNN configuration and its data: shared by the test strategies and the crosscheck command."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from scratch_rnn import RNN


@dataclass
class RNNCase:
    """One configuration plus everything random about its inputs (all derived from ``seed``)."""

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
        """x, h0, lengths, cotangents in the model's layout. The weights and biases are redrawn
        wider than torch's U(±1/√H) so that saturation and dead relu units are exercised."""
        rng = np.random.default_rng(self.seed + 1)
        for p in model.parameters().values():
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
        out_shape = x_shape[:-1] + ((2 if self.bidirectional else 1) * self.hidden_size,)
        g_out = rng.standard_normal(out_shape)
        g_hn = rng.standard_normal(h_shape) if self.with_grad_h_n else None
        return x, h0, lengths, g_out, g_hn

    def dropout_masks(self):
        """Keep-masks for the inter-layer dropout, time-major (T, B, D*H), or None."""
        if self.dropout == 0 or self.num_layers == 1:
            return None
        rng = np.random.default_rng(self.seed + 2)
        shape = (self.steps, self.batch, (2 if self.bidirectional else 1) * self.hidden_size)
        return [rng.random(shape) >= self.dropout for _ in range(self.num_layers - 1)]

    def __str__(self) -> str:
        return str(asdict(self))


def random_case(rng: np.random.Generator, max_layers=3, max_steps=12, max_batch=6, max_size=8) -> RNNCase:
    """Draw every option of torch.nn.RNN together, lengths and dropout included."""
    unbatched = bool(rng.random() < 0.15)
    batch = 1 if unbatched else int(rng.integers(1, max_batch + 1))
    steps = int(rng.integers(1, max_steps + 1))
    lengths = tuple(int(v) for v in rng.integers(1, steps + 1, size=batch)) if rng.random() < 0.5 else None
    num_layers = int(rng.integers(1, max_layers + 1))
    return RNNCase(
        input_size=int(rng.integers(1, max_size + 1)),
        hidden_size=int(rng.integers(1, max_size + 1)),
        num_layers=num_layers,
        bidirectional=bool(rng.random() < 0.5),
        nonlinearity=str(rng.choice(["tanh", "relu"])),
        bias=bool(rng.random() < 0.8),
        batch_first=bool(rng.random() < 0.5),
        unbatched=unbatched,
        batch=batch,
        steps=steps,
        lengths=lengths,
        with_h0=bool(rng.random() < 0.8),
        with_grad_h_n=bool(rng.random() < 0.8),
        dropout=float(rng.choice([0.0, 0.3, 0.6])) if num_layers > 1 else 0.0,
        seed=int(rng.integers(0, 2**31 - 1)),
    )
