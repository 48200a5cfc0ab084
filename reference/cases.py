"""A drawn recurrent configuration (any registered cell, or a user's ``"module:Class"`` cell) and its data: shared by
the test strategies and the crosscheck command. States go in the model's own form: ``h0`` for a one-state cell,
a tuple such as ``(h0, c0)`` (LSTM) otherwise."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from scratch_rnn.cells import cell_names, cell_spec, module_options

CELL_NAMES = cell_names(builtin=True)  # the built-in cells: those with a torch.nn module
PLUGIN_CELLS = cell_names(builtin=False)  # the step-function cells, with a torch step as their twin


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
    cell: str = CELL_NAMES[0]  # the first registered built-in cell (the Elman RNN)
    proj_size: int = 0  # LSTM only
    options: tuple = ()  # a plug-in cell's own options, (name, value) pairs drawn from its OPTIONS

    @property
    def out_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def lstm(self) -> bool:
        return "c" in cell_spec(self.cell).model_class().STATES  # a cell state beside h (c0, c_n, cell_grads)

    def model(self, dtype=np.float64):
        common = dict(
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            dtype=dtype,
            seed=self.seed,
        )
        if "nonlinearity" in module_options(self.cell):
            common["nonlinearity"] = self.nonlinearity
        if "proj_size" in module_options(self.cell):
            common["proj_size"] = self.proj_size
        return cell_spec(self.cell).model_class()(self.input_size, self.hidden_size, **common, **dict(self.options))

    def arrays(self, model):
        """x, hx, lengths, the output's cotangent and the final state's, in the model's layout and form
        (hx and the final cotangent are pairs for the LSTM). The weights and biases are redrawn wider
        than torch's U(±1/√H) so that saturation and dead relu units are exercised."""
        rng = np.random.default_rng(self.seed + 1)
        for p in model.parameters().values():
            p[...] = rng.uniform(-1.2, 1.2, size=p.shape) / np.sqrt(max(1, p.shape[-1]) / 2)
        T, B, I = self.steps, self.batch, self.input_size
        LD = self.num_layers * (2 if self.bidirectional else 1)
        sizes = tuple(model.output_size if s == "h" else model.hidden_size for s in model.STATES)
        x_shape: tuple[int, ...]
        s_shapes: list[tuple[int, ...]]
        if self.unbatched:
            x_shape, s_shapes = (T, I), [(LD, n) for n in sizes]
        else:
            x_shape = (B, T, I) if self.batch_first else (T, B, I)
            s_shapes = [(LD, B, n) for n in sizes]
        x = rng.standard_normal(x_shape)
        h0: tuple[np.ndarray, ...] | np.ndarray | None
        g_fin: tuple[np.ndarray, ...] | np.ndarray | None
        h0 = tuple(rng.standard_normal(s) for s in s_shapes) if self.with_h0 else None
        lengths = None if self.lengths is None else np.array(self.lengths, dtype=np.int64)
        out_shape = x_shape[:-1] + ((2 if self.bidirectional else 1) * self.out_size,)
        g_out = rng.standard_normal(out_shape)
        g_fin = tuple(rng.standard_normal(s) for s in s_shapes) if self.with_grad_h_n else None
        if len(sizes) == 1:
            h0 = None if h0 is None else h0[0]
            g_fin = None if g_fin is None else g_fin[0]
        return x, h0, lengths, g_out, g_fin

    def dropout_masks(self):
        """Keep-masks for the inter-layer dropout, time-major (T, B, D*H), or None."""
        if self.dropout == 0 or self.num_layers == 1:
            return None
        rng = np.random.default_rng(self.seed + 2)
        shape = (self.steps, self.batch, (2 if self.bidirectional else 1) * self.out_size)
        return [rng.random(shape) >= self.dropout for _ in range(self.num_layers - 1)]

    def __str__(self) -> str:
        return str(asdict(self))


def random_case(
    rng: np.random.Generator, max_layers=3, max_steps=12, max_batch=6, max_size=8, cells=CELL_NAMES[:1]
) -> RNNCase:
    """Draw every option of the cell's torch module together, lengths, dropout and proj_size included (a plug-in
    cell's own options last, from its spec: the built-in cells' streams are those of old)."""
    cell = str(rng.choice(list(cells))) if len(cells) > 1 else cells[0]  # one cell: the stream is the RNN's of old
    unbatched = bool(rng.random() < 0.15)
    batch = 1 if unbatched else int(rng.integers(1, max_batch + 1))
    steps = int(rng.integers(1, max_steps + 1))
    lengths = tuple(int(v) for v in rng.integers(1, steps + 1, size=batch)) if rng.random() < 0.5 else None
    num_layers = int(rng.integers(1, max_layers + 1))
    input_size = int(rng.integers(1, max_size + 1))  # drawn in the order of old: the RNN stream is unchanged
    hidden = int(rng.integers(1, max_size + 1))
    proj = (
        int(rng.integers(1, hidden)) if "proj_size" in module_options(cell) and hidden > 1 and rng.random() < 0.4 else 0
    )
    case = RNNCase(
        cell=cell,
        proj_size=proj,
        input_size=input_size,
        hidden_size=hidden,
        num_layers=num_layers,
        bidirectional=bool(rng.random() < 0.5),
        nonlinearity=str(rng.choice(["tanh", "relu"])) if "nonlinearity" in module_options(cell) else "tanh",
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
    spec = cell_spec(cell)
    if not spec.builtin:
        case.options = tuple((k, choices[int(rng.integers(len(choices)))]) for k, choices in spec.options.items())
    return case
