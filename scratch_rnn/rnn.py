"""``scratch_rnn.RNN``: torch.nn.RNN's full surface, with backpropagation through time by hand.

The per-step math lives in :mod:`scratch_rnn.functional`; this module composes it over
directions and layers and handles layouts, variable lengths, dropout and validation.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import numpy as np

from . import functional as F
from ._checks import (
    as_float_array,
    as_index_array,
    check_dtype,
    check_positive_int,
    check_probability,
    check_shape,
)

# The subnormal flush of float32 BPTT (see the README, section Performance). Every FLUSH_EVERY-th step
# of the backward loop, the entries of the total gradient dL/dh_t below FLUSH_BELOW in magnitude are
# set to zero. 2^-100 (7.9e-31) is 26 binary orders above float32's smallest normal number (2^-126),
# so a gradient that shrinks through time is zeroed before it turns subnormal (arithmetic on
# subnormals is many times slower on many x86 CPUs) as long as it shrinks by less than 2^26 in
# FLUSH_EVERY steps; checking every 4th step costs a quarter of a check at every step. What it
# drops lies 23 orders of magnitude below float32's resolution of any gradient of order one.
# float64 keeps every digit (no flush): it is the cross-validation dtype.
FLUSH_BELOW = {np.dtype(np.float32): 2.0 ** -100, np.dtype(np.float64): 0.0}
FLUSH_EVERY = 4


def rnn_param_names(num_layers: int, bidirectional: bool, bias: bool) -> list[str]:
    """Parameter names in torch's order: per layer, per direction, w_ih, w_hh, b_ih, b_hh."""
    names = []
    for layer in range(num_layers):
        for direction in range(2 if bidirectional else 1):
            sfx = "_reverse" if direction == 1 else ""
            names += [f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}"]
            if bias:
                names += [f"bias_ih_l{layer}{sfx}", f"bias_hh_l{layer}{sfx}"]
    return names


class RNN:
    """Elman RNN with the interface and semantics of ``torch.nn.RNN``.

    h_t = f(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh), f = tanh or relu, stacked ``num_layers`` deep,
    optionally bidirectional. Shapes (L = seq length, N = batch, D = 2 if bidirectional else 1):
    input (L, N, I) or (N, L, I) with ``batch_first`` or unbatched (L, I); h0 and h_n
    (D*num_layers, N, H) or (D*num_layers, H) unbatched; output (L, N, D*H) / (N, L, D*H) / (L, D*H).

    ``forward(x, h0=None, lengths=None)`` returns ``(output, h_n)``; ``lengths`` gives
    packed-sequence semantics (``pack_padded_sequence(enforce_sorted=False)`` then
    ``pad_packed_sequence(total_length=L)``). ``backward(grad_output, grad_h_n=None)`` runs BPTT
    through the last forward, returns ``(grad_x, grad_h0)`` and accumulates into ``grads``.
    After backward, ``hidden_grads`` is the total dL/dh_t of every layer and direction:
    (num_layers * D, L, N, H), time-major whatever the layout, zero at padded steps.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None):
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if nonlinearity not in F.NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_probability("dropout", dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} acts between layers only, and num_layers=1: it has "
                          "no effect (as in torch.nn.RNN)", UserWarning, stacklevel=2)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.dtype = check_dtype(dtype)
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._params: OrderedDict[str, np.ndarray] = OrderedDict()
        for name in rnn_param_names(self.num_layers, self.bidirectional, self.bias):
            self._params[name] = np.empty(self._param_shape(name), dtype=self.dtype)
        self.reset_parameters()
        self.grads = OrderedDict((k, np.zeros_like(v)) for k, v in self._params.items())
        self.hidden_grads = None
        self.dropout_masks = None
        self._cache = None
        self._delta = None  # backward's scratch buffer

    # ---------------------------------------------------------------- parameters
    def _param_shape(self, name: str) -> tuple:
        H = self.hidden_size
        layer = int(name.split("_l")[1].split("_")[0])
        if name.startswith("weight_ih"):
            return (H, self.input_size if layer == 0 else H * self.num_directions)
        if name.startswith("weight_hh"):
            return (H, H)
        return (H,)

    def reset_parameters(self) -> None:
        """torch's init: every parameter U(-1/sqrt(H), 1/sqrt(H)), in parameter order."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self._params.items():
            p[...] = self._rng.uniform(-k, k, size=p.shape)

    def parameters(self) -> OrderedDict:
        """The live parameter arrays, name -> ndarray (optimizers update them in place)."""
        return self._params

    def state_dict(self) -> OrderedDict:
        """Copies of the parameters under torch's names and shapes."""
        return OrderedDict((k, v.copy()) for k, v in self._params.items())

    def load_state_dict(self, state) -> None:
        """Copy ``state`` into the parameters; keys and shapes must match exactly.

        Accepts ndarrays (or anything with ``.detach().cpu().numpy()``, e.g. torch tensors).
        Everything is checked before anything is written.
        """
        state = {k: _to_numpy(v) for k, v in dict(state).items()}
        missing = [k for k in self._params if k not in state]
        unexpected = [k for k in state if k not in self._params]
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for k, p in self._params.items():
            v = as_float_array(f"state_dict[{k!r}]", state[k], self.dtype)
            if v.shape != p.shape:
                raise ValueError(f"load_state_dict: {k!r} expected shape {p.shape}, got {v.shape}")
            new[k] = v
        for k, v in new.items():
            self._params[k][...] = v

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode: bool = True) -> "RNN":
        self.training = bool(mode)
        return self

    def eval(self) -> "RNN":
        return self.train(False)

    def __repr__(self) -> str:
        opts = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            opts.append(f"num_layers={self.num_layers}")
        if self.nonlinearity != "tanh":
            opts.append(f"nonlinearity={self.nonlinearity!r}")
        for flag, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, flag) != default:
                opts.append(f"{flag}={getattr(self, flag)}")
        if self.dropout:
            opts.append(f"dropout={self.dropout}")
        return f"RNN({', '.join(opts)}, dtype={self.dtype.name})"

    def _p(self, kind: str, layer: int, direction: int):
        name = f"{kind}_l{layer}{'_reverse' if direction else ''}"
        return self._params.get(name)

    # ---------------------------------------------------------------- validation
    def _check_input(self, x, h0, lengths):
        x = as_float_array("input", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"input: expected a 3-D (batched) or 2-D (unbatched) array, got {x.ndim}-D "
                             f"with shape {x.shape}")
        batched = x.ndim == 3
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected input_size={self.input_size} as the last dimension, got "
                             f"shape {x.shape}")
        if not batched:
            x = x[:, None, :]  # (T, 1, I)
        elif self.batch_first:
            x = x.transpose(1, 0, 2)  # (B, T, I) -> (T, B, I)
        x = np.ascontiguousarray(x)
        T, B, _ = x.shape
        if T == 0:
            raise ValueError(f"input: expected at least one time step, got shape {x.shape}")
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        if h0 is None:
            h0 = np.zeros((LD, B, H), dtype=self.dtype)
        else:
            h0 = as_float_array("h0", h0, self.dtype)
            if batched:
                check_shape("h0", h0, (LD, B, H), "(num_layers * num_directions, batch, hidden_size)")
            else:
                check_shape("h0", h0, (LD, H), "(num_layers * num_directions, hidden_size) for unbatched input")
                h0 = h0[:, None, :]
        if lengths is not None:
            lengths = as_index_array("lengths", lengths)
            if lengths.ndim == 0 and not batched:
                lengths = lengths.reshape(1)
            check_shape("lengths", lengths, (B,), "(one length per batch element)")
            if lengths.min() < 1 or lengths.max() > T:
                bad = lengths[(lengths < 1) | (lengths > T)]
                raise ValueError(f"lengths: expected every length in 1..{T} (the sequence length), got "
                                 f"{bad.tolist()}")
        return x, h0, lengths, batched

    # ---------------------------------------------------------------- forward
    def __call__(self, x, h0=None, lengths=None, *, dropout_masks=None):
        return self.forward(x, h0, lengths, dropout_masks=dropout_masks)

    def forward(self, x, h0=None, lengths=None, *, dropout_masks=None):
        """Run the stack. Returns ``(output, h_n)`` in the caller's layout.

        dropout_masks: optional list of ``num_layers - 1`` keep-masks (bool or 0/1), each of shape
        (T, B, D*H) time-major, applied to the outputs of layers 0..L-2 in train mode (scaled by
        1/(1-p)); without it they are drawn from the model's seeded generator. The masks used are
        left in ``self.dropout_masks``.
        """
        x, h0, lengths, batched = self._check_input(x, h0, lengths)
        T, B, _ = x.shape
        H, D, L = self.hidden_size, self.num_directions, self.num_layers

        # Packed-sequence bookkeeping: sort by decreasing length (stable), so that at step t the
        # active sequences are the first batch_sizes[t] rows.
        if lengths is None or np.all(lengths == T):
            perm, batch_sizes, lengths_sorted = None, None, None
        else:
            perm = np.argsort(-lengths, kind="stable")
            lengths_sorted = lengths[perm]
            batch_sizes = (lengths_sorted[None, :] > np.arange(T)[:, None]).sum(axis=1)  # (T,)
            x = x[:, perm]
            h0 = h0[:, perm]

        use_dropout = self.training and self.dropout > 0 and L > 1
        masks = self._dropout_masks(dropout_masks, T, B) if use_dropout else None
        self.dropout_masks = masks

        # Every argument is valid: drop the last forward's cache, keeping its state buffers to overwrite.
        spare = self._release_cache((T + 1, B, H))
        layer_in = x
        h_n = np.empty((L * D, B, H), dtype=self.dtype)
        cache_layers = []
        for layer in range(L):
            hs_dirs = []
            for d in range(D):
                reverse = d == 1
                # The projection goes straight into the slots of the states it will become.
                hs = spare.pop() if spare else np.empty((T + 1, B, H), self.dtype)
                proj = F.input_projection(layer_in, self._p("weight_ih", layer, d), self._p("bias_ih", layer, d),
                                          self._p("bias_hh", layer, d), out=hs[:-1] if reverse else hs[1:])
                with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
                    F.sequence_forward(proj, h0[layer * D + d], self._p("weight_hh", layer, d),
                                       self.nonlinearity, batch_sizes, reverse, hs=hs)
                if reverse:
                    h_n[layer * D + d] = hs[0]
                elif batch_sizes is None:
                    h_n[layer * D + d] = hs[T]
                else:  # each sequence's state at its own last valid step
                    h_n[layer * D + d] = hs[lengths_sorted, np.arange(B)]
                hs_dirs.append(hs)
            if D == 1:
                out = hs_dirs[0][1:]  # the states themselves (a view): padded steps are already zero
            else:
                out = np.empty((T, B, D * H), dtype=self.dtype)
                out[:, :, :H] = hs_dirs[0][1:]
                out[:, :, H:] = hs_dirs[1][:-1]
                if batch_sizes is not None:  # padded steps output zero (the h0 copies were inputs only)
                    out[:, :, H:][F.padding_mask(batch_sizes, B)] = 0
            check_finite_state(out, layer)
            keep = None
            if masks is not None and layer < L - 1:
                keep = masks[layer] if perm is None else masks[layer][:, perm]
                next_in = np.multiply(out, keep, dtype=self.dtype)
                next_in *= self._dropout_scale()
            else:
                next_in = out
            cache_layers.append((layer_in, hs_dirs, keep))
            layer_in = next_in

        output = out
        if perm is not None:
            inv = np.argsort(perm)
            output = output[:, inv]
            h_n = h_n[:, inv]
        self._cache = dict(layers=cache_layers, perm=perm, batch_sizes=batch_sizes, T=T, B=B,
                           batched=batched, lengths=lengths)
        # A unidirectional layer's output is a view of the states backward reads (and the next
        # forward overwrites): the caller gets a copy, which it may write into.
        return (self._to_layout(output, batched, copy=D == 1 and perm is None),
                (h_n if batched else h_n[:, 0]))

    def _release_cache(self, shape: tuple) -> list:
        """Drop the last forward's cache; return its state buffers of ``shape`` to overwrite.

        Backward only ever runs through the last forward, and nothing handed to the caller is a view
        of these buffers (the output is a copy). Reusing them spares the page faults of fresh memory
        (about a quarter of a forward+backward at (32, 100, 64, 128)). Buffers of another shape are
        let go here, before the new ones are allocated, so the old and the new cache never coexist.
        The cache is cleared before any step runs, so a forward that raises leaves none behind.
        Returned in reverse order of use (``pop()`` takes the next).
        """
        old, self._cache = self._cache, None
        if old is None:
            return []
        return [hs for _, hs_dirs, _ in old["layers"] for hs in hs_dirs if hs.shape == shape][::-1]

    def _dropout_scale(self) -> float:
        return 0.0 if self.dropout >= 1.0 else 1.0 / (1.0 - self.dropout)

    def _dropout_masks(self, given, T, B):
        shape = (T, B, self.num_directions * self.hidden_size)
        if given is None:
            return [self._rng.random(shape) >= self.dropout for _ in range(self.num_layers - 1)]
        if len(given) != self.num_layers - 1:
            raise ValueError(f"dropout_masks: expected {self.num_layers - 1} masks (one per layer but the "
                             f"last), got {len(given)}")
        masks = []
        for i, m in enumerate(given):
            m = np.asarray(m)
            check_shape(f"dropout_masks[{i}]", m, shape, "(T, B, num_directions * hidden_size), time-major")
            masks.append(m.astype(self.dtype))
        return masks

    def _to_layout(self, a, batched, copy=False):
        """Time-major (T, B, F) to the caller's layout, C-contiguous; ``copy``: never a view of ``a``."""
        if batched and self.batch_first:
            a = a.transpose(1, 0, 2)
        elif not batched:
            a = a[:, 0]
        return a.copy() if copy else np.ascontiguousarray(a)

    # ---------------------------------------------------------------- backward
    def backward(self, grad_output=None, grad_h_n=None):
        """BPTT through the last forward. Returns ``(grad_x, grad_h0)`` in the caller's layout.

        grad_output: dL/d(output), the output's shape (None: zero); grad_h_n: dL/d(h_n), h_n's shape
        (None: zero). Parameter gradients are added to ``self.grads``; ``self.hidden_grads`` is set.
        """
        if self._cache is None:
            raise RuntimeError("backward: call forward first (backward runs through the last forward)")
        c = self._cache
        T, B, perm, batch_sizes, batched = c["T"], c["B"], c["perm"], c["batch_sizes"], c["batched"]
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        out_shape = (T, B, D * H)
        user_out_shape = (out_shape if not self.batch_first else (B, T, D * H)) if batched else (T, D * H)
        hn_shape = (L * D, B, H) if batched else (L * D, H)

        if grad_output is None:
            d_out = np.zeros(out_shape, dtype=self.dtype)
        else:
            d_out = as_float_array("grad_output", grad_output, self.dtype)
            check_shape("grad_output", d_out, user_out_shape, "(the shape of forward's output)")
            d_out = d_out[:, None] if not batched else (d_out.transpose(1, 0, 2) if self.batch_first else d_out)
        if grad_h_n is None:
            d_hn = np.zeros((L * D, B, H), dtype=self.dtype)
        else:
            d_hn = as_float_array("grad_h_n", grad_h_n, self.dtype)
            check_shape("grad_h_n", d_hn, hn_shape, "(the shape of forward's h_n)")
            if not batched:
                d_hn = d_hn[:, None]
        if perm is not None:
            d_out, d_hn = d_out[:, perm], d_hn[:, perm]

        flush = FLUSH_BELOW[self.dtype]
        new_grads = {}
        grad_h0 = np.empty((L * D, B, H), dtype=self.dtype)
        hidden = np.empty((L * D, T, B, H), dtype=self.dtype)
        # dL/da_t, reused by every layer and direction and, while the sizes stay, by the next backward
        # (it is scratch: nothing returned is a view of it).
        delta = self._delta
        if delta is None or delta.shape != (T, B, H):
            delta = self._delta = np.empty((T, B, H), dtype=self.dtype)
        d_layer_out = d_out  # dL/d(output of the current layer), (T, B, D*H), any strides
        for layer in range(L - 1, -1, -1):
            layer_in, hs_dirs, _ = c["layers"][layer]
            d_in = None
            for d in range(D):
                reverse = d == 1
                w_ih = self._p("weight_ih", layer, d)
                _, dh0, _ = F.sequence_backward(
                    d_layer_out[:, :, d * H:(d + 1) * H], d_hn[layer * D + d], hs_dirs[d],
                    self._p("weight_hh", layer, d), self.nonlinearity, batch_sizes, reverse, flush,
                    flush_every=FLUSH_EVERY, hidden=hidden[layer * D + d], delta=delta)
                dw_ih, dw_hh, db = F.weight_gradients(delta, layer_in, hs_dirs[d], reverse, self.bias)
                sfx = f"_l{layer}{'_reverse' if reverse else ''}"
                new_grads["weight_ih" + sfx], new_grads["weight_hh" + sfx] = dw_ih, dw_hh
                if self.bias:
                    new_grads["bias_ih" + sfx] = db
                    new_grads["bias_hh" + sfx] = db
                grad_h0[layer * D + d] = dh0
                dx = np.dot(delta.reshape(T * B, H), w_ih).reshape(T, B, w_ih.shape[1])  # δ W_ih
                if d_in is None:
                    d_in = dx
                else:
                    d_in += dx
            if layer > 0:
                keep = c["layers"][layer - 1][2]
                if keep is not None:  # in place: d_in is this backward's own array
                    np.multiply(d_in, keep, out=d_in)
                    d_in *= self._dropout_scale()
            d_layer_out = d_in

        for name, g in new_grads.items():
            if not np.all(np.isfinite(g)):
                raise FloatingPointError(
                    f"backward: the gradient of {name} is not finite (NaN or inf): the backward pass "
                    "overflowed (exploding gradients); nothing was accumulated into grads")
        for name, g in new_grads.items():
            self.grads[name] += g

        grad_x = d_layer_out
        if perm is not None:
            inv = np.argsort(perm)
            grad_x, grad_h0, hidden = grad_x[:, inv], grad_h0[:, inv], hidden[:, :, inv]
        self.hidden_grads = hidden
        return self._to_layout(grad_x, batched), (grad_h0 if batched else grad_h0[:, 0])


def check_finite_state(out: np.ndarray, layer: int) -> None:
    """Report an overflowed recurrence (finite inputs, non-finite states) instead of passing it on."""
    if not np.isfinite(out).all():
        t = int(np.argwhere(~np.isfinite(out))[0][0])
        raise FloatingPointError(
            f"forward: the hidden state of layer {layer} became non-finite at time step {t} although the "
            "inputs were finite: the recurrence overflowed (relu with large recurrent weights); lower the "
            "weights' scale, use float64, or use tanh")


def _to_numpy(v):
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return v
