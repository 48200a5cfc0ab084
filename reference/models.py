"""The torch twin of ``scratch_rnn.models.SequenceModel``: nn.Embedding -> nn.RNN / LSTM / GRU -> pooling -> nn.Linear.

Built from the same ``ModelConfig``; its ``state_dict()`` keys are the scratch model's flat
parameter names (submodules ``embedding``, ``rnn``, ``head``), so one ``load_state_dict`` moves
the weights either way. Variable lengths go through ``pack_padded_sequence`` /
``pad_packed_sequence`` (torch's own packed semantics); the pooling, the per-step masking and the
losses are written here with plain torch ops, independently of the scratch code.

Dropout: torch's nn.RNN draws its own masks, which the scratch model cannot reproduce. With
``dropout_masks`` (time-major keep-masks (T, B, D·H), one per layer but the last) the stack is
unrolled one nn.RNN layer at a time, sharing this module's parameters, and the given masks are
applied between layers scaled by 1/(1-p), exactly where nn.RNN applies its dropout.
:func:`draw_dropout_masks` draws them from a NumPy generator in the scratch model's order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from reference.cells import TorchStepRNN
from scratch_rnn.cells import cell_spec, module_options

__all__ = ["TorchSequenceModel", "torch_twin", "draw_dropout_masks", "to_tensor"]


def to_tensor(a, dtype=torch.float64) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return torch.from_numpy(a.astype(np.int64))
    return torch.from_numpy(np.array(a, dtype=np.float64)).to(dtype)


def draw_dropout_masks(rng: np.random.Generator, config, T: int, B: int, training: bool = True):
    """The keep-masks the scratch model draws for one forward, from a generator in the same state."""
    if not (training and config.dropout > 0 and config.num_layers > 1):
        return None
    D = 2 if config.bidirectional else 1
    return [rng.random((T, B, D * config.output_size)) >= config.dropout for _ in range(config.num_layers - 1)]


class TorchSequenceModel(torch.nn.Module):
    """The twin; ``forward(x, h0=None, lengths=None, dropout_masks=None)`` -> (out, h_n),
    ``loss(out, target, lengths)``."""

    def __init__(self, config, dtype=torch.float64):
        super().__init__()
        self.config = c = config
        self.tdtype = dtype
        self.embedding: torch.nn.Embedding | None
        if c.vocab_size is not None:
            self.embedding = torch.nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=c.padding_idx, dtype=dtype)
        else:
            self.embedding = None
        in_size = c.embedding_dim if c.vocab_size is not None else c.input_size
        self.rnn = self._recurrent(in_size, num_layers=c.num_layers, dropout=c.dropout)
        D = 2 if c.bidirectional else 1
        self.head = torch.nn.Linear(D * c.output_size, c.out_features, dtype=dtype)

    def _recurrent(self, in_size, num_layers, dropout=0.0) -> torch.nn.Module:
        """nn.RNN / nn.LSTM / nn.GRU of the config's cell; a step-function cell's TorchStepRNN twin."""
        c = self.config
        if not cell_spec(c.cell).builtin:
            cell = cell_spec(c.cell).model_class()(
                in_size,
                c.hidden_size,
                num_layers=num_layers,
                bias=c.bias,
                batch_first=True,
                dropout=dropout,
                bidirectional=c.bidirectional,
                dtype=np.float64,
                **c.cell_options(),
            )
            return TorchStepRNN(cell, dtype=self.tdtype)
        opts = dict(
            num_layers=num_layers,
            bias=c.bias,
            batch_first=True,
            dropout=dropout,
            bidirectional=c.bidirectional,
            dtype=self.tdtype,
        )
        module = getattr(torch.nn, cell_spec(c.cell).model_class().NAME)  # a built-in cell is named as its twin
        options = {k: getattr(c, k) for k in module_options(c.cell)}
        return module(in_size, c.hidden_size, **options, **opts)

    # -- the RNN, whole or unrolled per layer --------------------------------------------------
    def _rnn(self, module, x, h0, lengths):
        T = x.shape[1]
        if lengths is None:
            return module(x, h0)
        packed = pack_padded_sequence(
            x, torch.as_tensor(np.asarray(lengths), dtype=torch.int64), batch_first=True, enforce_sorted=False
        )
        out, h_n = module(packed, h0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        return out, h_n

    def _rnn_layerwise(self, x, h0, lengths, masks):
        c = self.config
        D = 2 if c.bidirectional else 1
        scale = 0.0 if c.dropout >= 1 else 1.0 / (1.0 - c.dropout)
        layer_in, finals = x, []
        for layer in range(c.num_layers):
            single = self._recurrent(layer_in.shape[-1], num_layers=1)
            for name, _ in list(single.named_parameters()):
                setattr(single, name, getattr(self.rnn, name.replace("_l0", f"_l{layer}")))  # shared leaves
            hx = (
                None
                if h0 is None
                else (
                    tuple(s[layer * D : (layer + 1) * D] for s in h0)
                    if isinstance(h0, tuple)
                    else h0[layer * D : (layer + 1) * D]
                )
            )
            out, h_n = self._rnn(single, layer_in, hx, lengths)
            finals.append(h_n if isinstance(h_n, tuple) else (h_n,))
            if layer < c.num_layers - 1:
                keep = torch.as_tensor(np.array(masks[layer], dtype=np.float64), dtype=x.dtype)  # (T, B, D·H), a copy
                out = out * keep.transpose(0, 1) * scale
            layer_in = out
        cat = tuple(torch.cat(parts, dim=0) for parts in zip(*finals))
        return layer_in, cat if len(cat) > 1 else cat[0]

    def forward(self, x, h0=None, lengths=None, dropout_masks=None):
        c = self.config
        x = to_tensor(x, self.tdtype) if not torch.is_tensor(x) else x
        emb = self.embedding(x) if self.embedding is not None else x  # (B, T, E)
        B, T = emb.shape[:2]
        if h0 is not None:  # an array, or (h0, c0) for an LSTM
            h0 = (
                tuple(s if torch.is_tensor(s) else to_tensor(s, self.tdtype) for s in h0)
                if isinstance(h0, (tuple, list))
                else (h0 if torch.is_tensor(h0) else to_tensor(h0, self.tdtype))
            )
        if self.training and c.dropout > 0 and c.num_layers > 1 and dropout_masks is None:
            raise ValueError("dropout_masks: the twin needs the scratch model's masks in training mode")
        if isinstance(self.rnn, TorchStepRNN):  # unrolled here, masks and all
            out, h_n = self.rnn(emb, h0, lengths, dropout_masks)
        elif self.training and c.dropout > 0 and c.num_layers > 1:
            out, h_n = self._rnn_layerwise(emb, h0, lengths, dropout_masks)
        else:
            out, h_n = self._rnn(self.rnn, emb, h0, lengths)  # (B, T, D·H)
        lens = (
            torch.full((B,), T, dtype=torch.int64)
            if lengths is None
            else torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
        )
        if c.task == "per_step":
            return self.head(out), h_n
        valid = torch.arange(T)[None, :] < lens[:, None]  # (B, T)
        if c.pooling == "last":
            feats = out[torch.arange(B), lens - 1]
        elif c.pooling == "mean":
            feats = (out * valid[:, :, None]).sum(dim=1) / lens[:, None].to(out.dtype)
        else:
            feats = out.masked_fill(~valid[:, :, None], float("-inf")).max(dim=1).values
        return self.head(feats), h_n

    def loss(self, out, target, lengths=None):
        c = self.config
        t = to_tensor(target, self.tdtype) if not torch.is_tensor(target) else target
        if c.task == "per_step":
            B, T = out.shape[:2]
            lens = torch.full((B,), T) if lengths is None else torch.as_tensor(np.asarray(lengths))
            valid = torch.arange(T)[None, :] < lens[:, None]
            out, t = out[valid], t[valid]
        if c.loss == "cross_entropy":
            return F.cross_entropy(out, t)
        if c.loss == "mse":
            return F.mse_loss(out, t)
        return F.binary_cross_entropy_with_logits(out, t)


def torch_twin(model, dtype=torch.float64) -> TorchSequenceModel:
    """A TorchSequenceModel with ``model``'s config, weights and train/eval mode."""
    twin = TorchSequenceModel(model.config, dtype)
    twin.load_state_dict(
        {k: torch.from_numpy(np.array(v, dtype=np.float64)).to(dtype) for k, v in model.state_dict().items()}
    )
    twin.train(model.training)
    return twin
