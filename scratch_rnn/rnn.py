"""``scratch_rnn.RNN``: torch.nn.RNN's full surface, with backpropagation through time by hand.

The per-step math lives in :mod:`scratch_rnn.functional`; this module composes it over
directions and layers and handles layouts, variable lengths, dropout and validation.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from . import functional as F
from .checks import (
    as_float_array,
    check_bool,
    check_choice,
    check_lengths,
    check_positive_int,
    check_probability,
    check_shape,
)
from .module import Module

# The default subnormal flush of float32 BPTT (docs/performance.md): every ``flush_every``-th step of
# the backward loop, the entries of the total gradient dL/dh_t below ``flush_below`` in magnitude
# are set to zero. 2^-100 (7.9e-31) is 26 binary orders above float32's smallest normal number
# (2^-126), so a gradient that shrinks through time is zeroed before it turns subnormal (arithmetic
# on subnormals is many times slower on many x86 CPUs) as long as it shrinks by less than 2^26 in
# ``flush_every`` steps; checking every 4th step costs a quarter of a check at every step. What it
# drops lies 23 orders of magnitude below float32's resolution of any gradient of order one.
# float64 keeps every digit (no flush): it is the cross-validation dtype.
DEFAULT_FLUSH_BELOW = {np.dtype(np.float32): 2.0 ** -100, np.dtype(np.float64): 0.0}
DEFAULT_FLUSH_EVERY = 4


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


class RNN(Module):
    """Elman RNN with the interface and semantics of ``torch.nn.RNN``.

    h_t = f(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh), f = tanh or relu, stacked ``num_layers`` deep,
    optionally bidirectional. Shapes (L = seq length, N = batch, D = 2 if bidirectional else 1):
    input (L, N, I) or (N, L, I) with ``batch_first`` or unbatched (L, I); h0 and h_n
    (D*num_layers, N, H) or (D*num_layers, H) unbatched; output (L, N, D*H) / (N, L, D*H) / (L, D*H).

    ``forward(x, h0=None, lengths=None)`` returns ``(output, h_n)``; ``lengths`` gives
    packed-sequence semantics (``pack_padded_sequence(enforce_sorted=False)`` then
    ``pad_packed_sequence(total_length=L)``). ``backward(grad_output, grad_h_n=None)`` runs BPTT
    through that forward, returns ``(grad_x, grad_h0)`` and accumulates into ``grads`` (the
    lifecycle rules of :class:`~scratch_rnn.Module`). After backward, ``hidden_grads`` is the total
    dL/dh_t of every layer and direction: (num_layers * D, L, N, H), time-major whatever the
    layout, zero at padded steps.

    Keyword-only options beyond torch's: ``dtype`` (float32 or float64), ``seed`` (the generator of
    the initial weights and the dropout masks), ``flush_below`` / ``flush_every`` (the subnormal
    flush of backward, see :data:`DEFAULT_FLUSH_BELOW`; None: the dtype's default; 0.0: off). Both
    are attributes that may be changed between calls.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None,
                 flush_below=None, flush_every=DEFAULT_FLUSH_EVERY):
        super().__init__(dtype=dtype)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, F.NONLINEARITIES)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = check_probability("dropout", dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} acts between layers only, and num_layers=1: it has "
                          "no effect (as in torch.nn.RNN)", UserWarning, stacklevel=2)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.flush_below = DEFAULT_FLUSH_BELOW[self.dtype] if flush_below is None else flush_below
        self.flush_every = check_positive_int("flush_every", flush_every)
        self._rng = np.random.default_rng(seed)
        for name in rnn_param_names(self.num_layers, self.bidirectional, self.bias):
            self.register_parameter(name, np.zeros(self._param_shape(name)))
        self.reset_parameters()
        self.hidden_grads = None
        self.dropout_masks = None
        self._states = []       # the state buffers of the last forward, reused by the next one
        self._x_copy = None     # the last forward's private copy of a caller's time-major input
        self._delta = None      # backward's scratch buffer dL/da_t
        self._generation = 0    # counts forwards; a cache of an older one is refused by backward

    @property
    def flush_below(self) -> float:
        return self._flush_below

    @flush_below.setter
    def flush_below(self, value) -> None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"flush_below: expected a finite number >= 0 (0 disables the flush), got {value!r}")
        self._flush_below = float(value)

    @property
    def states(self) -> list:
        """The last forward's state buffers, one (T + 1, B, H) array per layer and direction, time-major,
        rows sorted by decreasing length (read-only views; the next forward overwrites them)."""
        views = []
        for hs in self._states:
            v = hs.view()
            v.flags.writeable = False
            views.append(v)
        return views

    def release_buffers(self) -> None:
        """Drop the cached forward, the reusable work buffers and ``hidden_grads`` (frees their memory)."""
        self._cache = None
        self._states, self._x_copy, self._delta, self.hidden_grads = [], None, None, None
        self._generation += 1

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
        """Everything the forward reads, checked before any work: (x (T, B, I), h0, lengths, batched)."""
        x_given = x
        x = as_float_array("input", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"input: expected a 3-D (batched) or 2-D (unbatched) array, got {x.ndim}-D "
                             f"with shape {x.shape}")
        batched = x.ndim == 3
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected input_size={self.input_size} as the last dimension, got "
                             f"shape {x.shape}")
        if batched and x.shape[0 if self.batch_first else 1] == 0:
            raise ValueError(f"input: expected at least one sequence (batch size >= 1), got shape {x.shape}")
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
            if not batched and np.ndim(lengths) == 0:
                lengths = np.reshape(lengths, 1)
            lengths = check_lengths("lengths", lengths, B, T)
        # backward reads the layer input: it must be the model's own, not the caller's array
        owned = not (isinstance(x_given, np.ndarray) and np.may_share_memory(x, x_given))
        return x, h0, lengths, batched, owned

    # ---------------------------------------------------------------- forward
    def _forward(self, x, h0=None, lengths=None, *, dropout_masks=None):
        """Run the stack. Returns ``((output, h_n), cache)``, output and h_n in the caller's layout.

        dropout_masks: optional list of ``num_layers - 1`` keep-masks (bool or 0/1), each of shape
        (T, B, D*H) time-major, applied to the outputs of layers 0..L-2 in train mode (scaled by
        1/(1-p)); without it they are drawn from the model's seeded generator. The masks used are
        left in ``self.dropout_masks``.
        """
        x, h0, lengths, batched, owned = self._check_input(x, h0, lengths)
        T, B, _ = x.shape
        H, D, L = self.hidden_size, self.num_directions, self.num_layers

        use_dropout = self.training and self.dropout > 0 and L > 1
        masks = self._dropout_masks(dropout_masks, T, B) if use_dropout else None
        self.dropout_masks = masks

        # Packed-sequence bookkeeping: sort by decreasing length (stable), so that at step t the
        # active sequences are the first batch_sizes[t] rows.
        if lengths is None or np.all(lengths == T):
            perm, batch_sizes, lengths_sorted = None, None, None
        else:
            perm = np.argsort(-lengths, kind="stable")
            lengths_sorted = lengths[perm]
            batch_sizes = (lengths_sorted[None, :] > np.arange(T)[:, None]).sum(axis=1)  # (T,)
            x = x[:, perm]  # a copy: the model's own
            h0 = h0[:, perm]
            owned = True

        # Every argument is valid: take the last forward's buffers to overwrite (that forward can no
        # longer be differentiated: its generation is gone).
        spare = self._take_state_buffers((T + 1, B, H))
        self._generation += 1
        if not owned:
            if self._x_copy is None or self._x_copy.shape != x.shape:
                self._x_copy = None
                self._x_copy = np.empty_like(x)
            np.copyto(self._x_copy, x)
            x = self._x_copy
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
                self._states.append(hs)
            if D == 1:
                out = hs_dirs[0][1:]  # the states themselves (a view): padded steps are already zero
            else:
                out = np.empty((T, B, D * H), dtype=self.dtype)
                out[:, :, :H] = hs_dirs[0][1:]
                out[:, :, H:] = hs_dirs[1][:-1]
                if batch_sizes is not None:  # padded steps output zero (the h0 copies were inputs only)
                    out[:, :, H:][F.padding_mask(batch_sizes, B)] = 0
            check_finite_state(out, layer, self.dtype)
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
        cache = dict(layers=cache_layers, perm=perm, batch_sizes=batch_sizes, T=T, B=B, batched=batched,
                     generation=self._generation)
        # A unidirectional layer's output is a view of the states backward reads (and the next
        # forward overwrites): the caller gets a copy, which it may write into.
        return ((self._to_layout(output, batched, copy=D == 1 and perm is None),
                 (h_n if batched else h_n[:, 0])), cache)

    def _take_state_buffers(self, shape: tuple) -> list:
        """The last forward's state buffers of ``shape``, to overwrite; the others are let go first.

        Nothing handed to the caller is a view of these buffers (the output is a copy). Reusing them
        spares the page faults of fresh memory (about a quarter of a forward+backward at (32, 100,
        64, 128)). Buffers of another shape are dropped here, before the new ones are allocated, so
        the old and the new states never coexist. Returned in reverse order of use (``pop()``).
        """
        old, self._states = self._states, []
        return [hs for hs in old if hs.shape == shape][::-1]

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
            if m.dtype != bool:
                if m.dtype.kind not in "iuf" or not np.isin(m, (0, 1)).all():
                    bad = m if m.dtype.kind not in "iuf" else m[~np.isin(m, (0, 1))].ravel()[:3]
                    raise ValueError(f"dropout_masks[{i}]: expected a keep-mask of booleans or 0/1, got values "
                                     f"such as {bad.tolist() if hasattr(bad, 'tolist') else bad!r} (dtype {m.dtype})")
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
    def _backward(self, c, grad_output=None, grad_h_n=None):
        """BPTT through the forward of cache ``c``. Returns ``((grad_x, grad_h0), param_grads)``.

        grad_output: dL/d(output), the output's shape (None: zero); grad_h_n: dL/d(h_n), h_n's shape
        (None: zero), both in the caller's layout. ``self.hidden_grads`` is set.
        """
        if c["generation"] != self._generation:
            raise RuntimeError("RNN.backward: this RNN ran another forward since the one being differentiated, "
                               "and that forward reused its buffers; run the forward again")
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
                    self._p("weight_hh", layer, d), self.nonlinearity, batch_sizes, reverse, self.flush_below,
                    flush_every=self.flush_every, hidden=hidden[layer * D + d], delta=delta)
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

        grad_x = d_layer_out
        if perm is not None:
            inv = np.argsort(perm)
            grad_x, grad_h0, hidden = grad_x[:, inv], grad_h0[:, inv], hidden[:, :, inv]
        self.hidden_grads = hidden
        return (self._to_layout(grad_x, batched), (grad_h0 if batched else grad_h0[:, 0])), new_grads


def check_finite_state(out: np.ndarray, layer: int, dtype) -> None:
    """Report an overflowed recurrence (finite inputs, non-finite states) instead of passing it on."""
    if not np.isfinite(out).all():
        t = int(np.argwhere(~np.isfinite(out))[0][0])
        advice = ("lower the weights' scale, use float64, or use tanh" if np.dtype(dtype) == np.float32
                  else "lower the weights' scale or use tanh")
        raise FloatingPointError(
            f"forward: the hidden state of layer {layer} became non-finite at time step {t} although the "
            f"inputs were finite: the recurrence overflowed {np.dtype(dtype).name} (relu with large recurrent "
            f"weights); {advice}")
