"""The stack every recurrent cell shares, with torch's full surface: :class:`RecurrentBase`.

:class:`RecurrentBase` is the stack: layers and directions, the layouts (time-major, ``batch_first``,
unbatched), packed ``lengths``, inter-layer dropout, the input checks, ``h_n`` (and ``c_n``), the
reusable work buffers and the backward through all of it. A cell class (``RNN``, ``LSTM``, ``GRU``)
adds only its parameters' shapes and two methods for one layer and one direction:

- ``_direction_forward(x, state0, layer, d, ctx) -> (out, finals, dcache)``: x (T, B, I_layer)
  time-major, rows sorted by decreasing length; state0 a tuple of (B, ·) initial states; out
  (T, B, out_size) the direction's outputs (zero at padded steps; for the reverse direction the
  stack zeroes them); finals a tuple of (B, ·) states at each sequence's own last step;
- ``_direction_backward(d_out, d_finals, dcache, layer, d, ctx, grads_out) -> (dx, d_state0, grads)``:
  d_out (T, B, out_size) any strides; d_finals a tuple like finals; grads_out a dict of preallocated
  (T, B, ·) arrays to fill (``hidden`` = dL/dh_t, and ``cell`` = dL/dc_t for the LSTM); returns dx
  (T, B, I_layer), a tuple of (B, ·) state gradients and {kind: gradient} (kind = "weight_ih", ...).

Each cell lives in its own module of :mod:`scratch_rnn.cells`: the built-in ones, with their step functions and
fast loops, in :mod:`~scratch_rnn.cells.elman`, :mod:`~scratch_rnn.cells.lstm` and :mod:`~scratch_rnn.cells.gru`
(the loop machinery they share in :mod:`~scratch_rnn.cells.loops`); a cell that brings only step functions gets the
generic loop of :mod:`~scratch_rnn.cells.generic`. ``scratch_rnn.rnn`` re-exports the layers.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from ..checks import (
    as_float_array,
    check_bool,
    check_lengths,
    check_non_negative_int,
    check_positive_int,
    check_probability,
    check_shape,
    shares_memory,
)
from ..module import Module, SeedLike
from .loops import padding_mask

# The default subnormal flush of float32 BPTT (docs/performance.md): every ``flush_every``-th step of
# the backward loop, the entries of the total gradient dL/dh_t below ``flush_below`` in magnitude
# are set to zero. 2^-100 (7.9e-31) is 26 binary orders above float32's smallest normal number
# (2^-126), so a gradient that shrinks through time is zeroed before it turns subnormal (arithmetic
# on subnormals is many times slower on many x86 CPUs) as long as it shrinks by less than 2^26 in
# ``flush_every`` steps; checking every 4th step costs a quarter of a check at every step. What it
# drops lies 23 orders of magnitude below float32's resolution of any gradient of order one.
# float64 keeps every digit (no flush): it is the cross-validation dtype.
DEFAULT_FLUSH_BELOW = {np.dtype(np.float32): 2.0**-100, np.dtype(np.float64): 0.0}
DEFAULT_FLUSH_EVERY = 4


def rnn_param_names(num_layers: int, bidirectional: bool, bias: bool, proj: bool = False) -> list[str]:
    """Parameter names in torch's order: per layer, per direction, w_ih, w_hh, b_ih, b_hh (, w_hr)."""
    names = []
    for layer in range(num_layers):
        for direction in range(2 if bidirectional else 1):
            sfx = f"_l{layer}{'_reverse' if direction == 1 else ''}"
            names += [f"weight_ih{sfx}", f"weight_hh{sfx}"]
            if bias:
                names += [f"bias_ih{sfx}", f"bias_hh{sfx}"]
            if proj:
                names.append(f"weight_hr{sfx}")
    return names


_UNSET = object()  # an argument not passed (None is a value: "zeros" for a state)


def torch_alias(name: str, value: Any, torch_name: str, torch_value: Any, default: Any = _UNSET) -> Any:
    """One argument that has two names, this package's (``x``, ``h0``) and torch's (``input``, ``hx``).

    Returns the one passed (or ``default``); both passed raise TypeError, neither without a default too.
    """
    if value is not _UNSET and torch_value is not _UNSET:
        raise TypeError(
            f"{torch_name} and {name}: the same argument under torch's name and this package's; pass "
            "one of them, not both"
        )
    if torch_value is not _UNSET:
        return torch_value
    if value is not _UNSET:
        return value
    if default is _UNSET:
        raise TypeError(f"{name}: missing, the input sequence (torch's name: {torch_name}=)")
    return default


class ForwardRecord(NamedTuple):
    """What the last forward ran on, kept until the next one (read-only): diagnostics such as Pascanu's Ω read it.

    input: the layer-0 input, time-major (T, B, I), rows sorted by decreasing length when ``lengths`` were
    given; lengths: (B,) in the caller's order, or None when every sequence had length T; batched: False
    for a 2-D (unbatched) input.
    """

    input: np.ndarray
    lengths: np.ndarray | None
    batched: bool


class RecurrentBase(Module):
    """The stack shared by ``RNN``, ``LSTM`` and ``GRU``: see the module docstring.

    Subclasses set ``GATES`` (weight rows per hidden unit: 1, 4, 3), ``STATES`` (the state names:
    ("h",) or ("h", "c")), ``NAME`` (for messages) and write ``_direction_forward`` /
    ``_direction_backward``.
    """

    GATES = 1
    STATES: tuple[str, ...] = ("h",)
    NAME = "RNN"
    dtype: np.dtype  # always set: a recurrent layer has parameters
    _flush_below: float
    cell_grads: np.ndarray | None  # set only by a cell with a cell state ("c" in STATES)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        dtype: DTypeLike = np.float32,
        seed: SeedLike = None,
        flush_below: float | None = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
    ) -> None:
        super().__init__(dtype=dtype)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = check_probability("dropout", dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"dropout={self.dropout} acts between layers only, and num_layers=1: it has "
                f"no effect (as in torch.nn.{self.NAME})",
                UserWarning,
                stacklevel=3,
            )
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.proj_size = check_non_negative_int("proj_size", proj_size)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: expected a number below hidden_size={self.hidden_size}, got {self.proj_size}")
        self.flush_below = DEFAULT_FLUSH_BELOW[self.dtype] if flush_below is None else flush_below
        self.flush_every = check_positive_int("flush_every", flush_every)
        self._rng = np.random.default_rng(seed)
        for name in self._param_names():
            self.register_parameter(name, np.zeros(self._param_shape(name)))
        self.reset_parameters()
        self.hidden_grads: np.ndarray | None = None
        self.dropout_masks: list[np.ndarray] | None = None
        # ForwardRecord of the last successful forward (what diagnostics read)
        self.last_forward: ForwardRecord | None = None
        self._workspace: dict[tuple, np.ndarray] = {}  # reusable buffers of the last forward/backward, by purpose
        self._workspace_size: tuple[int, int] | None = None  # the (T, B) they were made for
        self._generation = 0  # counts forwards; a cache of an older one is refused by backward

    @property
    def output_size(self) -> int:
        """The size of h (and of each direction's output): proj_size when projecting, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def flush_below(self) -> float:
        return self._flush_below

    @flush_below.setter
    def flush_below(self, value: float) -> None:
        if (
            isinstance(value, (bool, np.bool_))
            or not isinstance(value, numbers.Real)
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ValueError(f"flush_below: expected a finite number >= 0 (0 disables the flush), got {value!r}")
        self._flush_below = float(value)

    @property
    def states(self) -> list[np.ndarray]:
        """The last forward's hidden-state buffers, one (T + 1, B, out) array per layer and direction,
        time-major, rows sorted by decreasing length (read-only views; the next forward overwrites them);
        empty when there is no successful forward to show."""
        views: list[np.ndarray] = []
        if self.last_forward is None:  # no forward, released, or the last one raised midway
            return views
        for key, buf in self._workspace.items():
            if key[-1] == "h":
                v = buf.view()
                v.flags.writeable = False
                views.append(v)
        return views

    def release_buffers(self) -> None:
        """Drop the cached forward, the reusable work buffers and every result of the last pass
        (``states``, ``last_forward``, ``dropout_masks``, ``hidden_grads``, ``cell_grads``): frees their memory."""
        self._cache = None
        self._workspace, self._workspace_size = {}, None
        self._drop_pass()

    def _drop_pass(self) -> None:
        """Forget the last pass: its forward can no longer be differentiated (its generation is gone), and what
        described it (``last_forward``, ``states``, ``dropout_masks``) and its backward (``hidden_grads``,
        ``cell_grads``) is dropped. The one rule (docs/model.md): these always belong to one forward and, once it
        has run, that forward's backward; a forward that raises after its checks leaves none of them."""
        self._generation += 1
        self.last_forward = self.dropout_masks = self.hidden_grads = None
        if "c" in self.STATES:
            self.cell_grads = None

    def _buffer(self, key: tuple, shape: tuple) -> np.ndarray:
        """The workspace array for ``key`` (uninitialised when new): reused from call to call at the same (T, B).

        Reusing them spares the page faults of fresh memory (about a quarter of a forward+backward at
        (32, 100, 64, 128)). Nothing handed to the caller is a view of them.
        """
        buf = self._workspace.get(key)
        if buf is None or buf.shape != shape:
            self._workspace.pop(key, None)  # let the old one go before the new one exists
            buf = self._workspace[key] = np.empty(shape, dtype=self.dtype)
        return buf

    # ---------------------------------------------------------------- parameters
    def _param_names(self) -> list[str]:
        """The parameters in torch's order (a cell with another layout overrides this and ``_param_shape``)."""
        return rnn_param_names(self.num_layers, self.bidirectional, self.bias, self.proj_size > 0)

    def _param_shape(self, name: str) -> tuple:
        H, G, out = self.hidden_size, self.GATES, self.output_size
        layer = int(name.split("_l")[1].split("_")[0])
        if name.startswith("weight_ih"):
            return (G * H, self.input_size if layer == 0 else out * self.num_directions)
        if name.startswith("weight_hh"):
            return (G * H, out)
        if name.startswith("weight_hr"):
            return (self.proj_size, H)
        return (G * H,)

    def reset_parameters(self) -> None:
        """torch's init: every parameter U(-1/sqrt(H), 1/sqrt(H)), in parameter order."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self._params.values():
            p[...] = self._rng.uniform(-k, k, size=p.shape)

    def _backward_reads(self) -> tuple[str, ...]:
        """The weights: BPTT reads W_hh (and W_hr), dx reads W_ih; the biases are not read."""
        return tuple(name for name in self._params if name.startswith("weight_"))

    def _p(self, kind: str, layer: int, direction: int):  # an array, or None (a bias of bias=False)
        return self._params.get(f"{kind}_l{layer}{'_reverse' if direction else ''}")

    def _state_size(self, state: str) -> int:
        return self.output_size if state == "h" else self.hidden_size

    def __repr__(self) -> str:
        opts = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            opts.append(f"num_layers={self.num_layers}")
        opts += self._extra_repr()
        for flag, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, flag) != default:
                opts.append(f"{flag}={getattr(self, flag)}")
        if self.dropout:
            opts.append(f"dropout={self.dropout}")
        if self.proj_size:
            opts.append(f"proj_size={self.proj_size}")
        return f"{self.NAME}({', '.join(opts)}, dtype={self.dtype.name})"

    def _extra_repr(self) -> list[str]:
        return []

    # ---------------------------------------------------------------- validation
    def _check_input(self, x, states0, lengths):
        """Everything the forward reads, checked before any work.

        states0: a tuple with one array or None per name in STATES. Returns (x (T, B, I), states0 as a
        tuple of (L·D, B, ·) arrays, lengths, batched, owned).
        """
        x_given = x
        x = as_float_array("input", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(
                f"input: expected a 3-D (batched) or 2-D (unbatched) array, got {x.ndim}-D with shape {x.shape}"
            )
        batched = x.ndim == 3
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected input_size={self.input_size} as the last dimension, got shape {x.shape}")
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
        LD = self.num_layers * self.num_directions
        checked = []
        for state, given in zip(self.STATES, states0):
            name, size = f"{state}0", self._state_size(state)
            if given is None:
                checked.append(np.zeros((LD, B, size), dtype=self.dtype))
                continue
            s = as_float_array(name, given, self.dtype)
            if batched:
                check_shape(name, s, (LD, B, size), f"(num_layers * num_directions, batch, {size})")
            else:
                check_shape(name, s, (LD, size), f"(num_layers * num_directions, {size}) for unbatched input")
                s = s[:, None, :]
            checked.append(s)
        if lengths is not None:
            if not batched and np.ndim(lengths) == 0:
                lengths = np.reshape(lengths, 1)
            lengths = check_lengths("lengths", lengths, B, T)
        # backward reads the layer input: it must be the model's own, not the caller's array
        owned = not shares_memory(x, x_given)
        return x, tuple(checked), lengths, batched, owned

    # ---------------------------------------------------------------- forward
    def _run_forward(self, x, states0, lengths, dropout_masks):
        """The stack over layers and directions. Returns ((output, finals), cache), finals a tuple (h_n, [c_n])
        in the caller's layout."""
        x, states0, lengths, batched, owned = self._check_input(x, states0, lengths)
        T, B, _ = x.shape
        n_dirs, n_layers, out_size = self.num_directions, self.num_layers, self.output_size

        use_dropout = self.training and self.dropout > 0 and n_layers > 1
        masks = self._dropout_masks(dropout_masks, T, B) if use_dropout else None
        if masks is not None:  # what backward reads: shown to the caller, not writable by it
            for m in masks:
                m.flags.writeable = False

        # Packed-sequence bookkeeping: sort by decreasing length (stable), so that at step t the
        # active sequences are the first batch_sizes[t] rows.
        if lengths is None or np.all(lengths == T):
            perm, batch_sizes, lengths_sorted = None, None, None
        else:
            perm = np.argsort(-lengths, kind="stable")
            lengths_sorted = lengths[perm]
            batch_sizes = (lengths_sorted[None, :] > np.arange(T)[:, None]).sum(axis=1)  # (T,)
            x = x[:, perm]  # a copy: the model's own
            states0 = tuple(s[:, perm] for s in states0)
            owned = True

        # Every argument is valid: the last forward's buffers may now be overwritten (that forward can
        # no longer be differentiated: its generation is gone). Buffers of another (T, B) are let go first.
        if self._workspace_size != (T, B):
            self._workspace, self._workspace_size = {}, (T, B)
        self._drop_pass()
        self.dropout_masks = masks
        if not owned:
            buf = self._buffer(("x",), x.shape)
            np.copyto(buf, x)
            x = buf
        ctx = dict(T=T, B=B, batch_sizes=batch_sizes, lengths_sorted=lengths_sorted)
        layer_in = x
        finals = tuple(np.empty((n_layers * n_dirs, B, self._state_size(s)), dtype=self.dtype) for s in self.STATES)
        cache_layers = []
        for layer in range(n_layers):
            outs, dcaches = [], []
            for d in range(n_dirs):
                ld = layer * n_dirs + d
                out_d, finals_d, dcache = self._direction_forward(
                    layer_in, tuple(s[ld] for s in states0), layer, d, ctx
                )
                for f, f_d in zip(finals, finals_d):
                    f[ld] = f_d
                outs.append(out_d)
                dcaches.append(dcache)
            if n_dirs == 1:
                out = outs[0]  # may be a view of the direction's buffers: padded steps are already zero
            else:
                out = np.empty((T, B, n_dirs * out_size), dtype=self.dtype)
                out[:, :, :out_size] = outs[0]
                out[:, :, out_size:] = outs[1]
                if batch_sizes is not None:  # padded steps output zero (the reverse's h0 copies were inputs only)
                    out[:, :, out_size:][padding_mask(batch_sizes, B)] = 0
            check_finite_state(out, layer, self.dtype)
            keep = None
            if masks is not None and layer < n_layers - 1:
                keep = masks[layer] if perm is None else masks[layer][:, perm]
                next_in = np.multiply(out, keep, dtype=self.dtype)
                next_in *= self._dropout_scale()
            else:
                next_in = out
            cache_layers.append((layer_in, dcaches, keep))
            layer_in = next_in

        output = out
        if perm is not None:
            inv = np.argsort(perm)
            output = output[:, inv]
            finals = tuple(f[:, inv] for f in finals)
        cache = dict(
            layers=cache_layers,
            perm=perm,
            batch_sizes=batch_sizes,
            lengths_sorted=lengths_sorted,
            T=T,
            B=B,
            batched=batched,
            generation=self._generation,
        )
        x_view = x.view()
        x_view.flags.writeable = False
        # set last, so that a forward that raised midway (an overflow) leaves no record: no states either
        self.last_forward = ForwardRecord(x_view, None if perm is None else lengths.copy(), batched)
        # A unidirectional layer's output may be a view of the states backward reads (and the next
        # forward overwrites): the caller gets a copy, which it may write into.
        output = self._to_layout(output, batched, copy=n_dirs == 1 and perm is None)
        return (output, tuple(f if batched else f[:, 0] for f in finals)), cache

    def _dropout_scale(self) -> float:
        return 0.0 if self.dropout >= 1.0 else 1.0 / (1.0 - self.dropout)

    def _dropout_masks(self, given, T, B):
        shape = (T, B, self.num_directions * self.output_size)
        if given is None:
            return [self._rng.random(shape) >= self.dropout for _ in range(self.num_layers - 1)]
        if len(given) != self.num_layers - 1:
            raise ValueError(
                f"dropout_masks: expected {self.num_layers - 1} masks (one per layer but the last), got {len(given)}"
            )
        masks = []
        for i, m in enumerate(given):
            m = np.asarray(m)
            check_shape(f"dropout_masks[{i}]", m, shape, "(T, B, num_directions * output size), time-major")
            if m.dtype != bool:
                if m.dtype.kind not in "iuf" or not np.isin(m, (0, 1)).all():
                    bad = m if m.dtype.kind not in "iuf" else m[~np.isin(m, (0, 1))].ravel()[:3]
                    raise ValueError(
                        f"dropout_masks[{i}]: expected a keep-mask of booleans or 0/1, got values "
                        f"such as {bad.tolist() if hasattr(bad, 'tolist') else bad!r} (dtype {m.dtype})"
                    )
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
    def _run_backward(self, c, grad_output, grad_finals):
        """BPTT through the forward of cache ``c``. Returns ((grad_x, grad_states0 tuple), param_grads).

        grad_output: dL/d(output), the output's shape (None: zero); grad_finals: one entry per state
        (None: zero), each the shape of the matching final state, in the caller's layout. Sets
        ``hidden_grads`` (and, for a cell state, ``cell_grads``).
        """
        if c["generation"] != self._generation:
            raise RuntimeError(
                f"{self.NAME}.backward: this {self.NAME} ran another forward since the one being "
                "differentiated, and that forward reused its buffers; run the forward again"
            )
        T, B, perm, batched = c["T"], c["B"], c["perm"], c["batched"]
        n_dirs, n_layers, out_size = self.num_directions, self.num_layers, self.output_size
        out_shape = (T, B, n_dirs * out_size)
        user_out_shape = (
            (out_shape if not self.batch_first else (B, T, n_dirs * out_size)) if batched else (T, n_dirs * out_size)
        )

        if grad_output is None:
            d_out = np.zeros(out_shape, dtype=self.dtype)
        else:
            d_out = as_float_array("grad_output", grad_output, self.dtype)
            check_shape("grad_output", d_out, user_out_shape, "(the shape of forward's output)")
            d_out = d_out[:, None] if not batched else (d_out.transpose(1, 0, 2) if self.batch_first else d_out)
        d_finals = []
        for state, g in zip(self.STATES, grad_finals):
            size = self._state_size(state)
            if g is None:
                d_finals.append(np.zeros((n_layers * n_dirs, B, size), dtype=self.dtype))
                continue
            name = f"grad_{state}_n"
            g = as_float_array(name, g, self.dtype)
            check_shape(
                name,
                g,
                (n_layers * n_dirs, B, size) if batched else (n_layers * n_dirs, size),
                f"(the shape of forward's {state}_n)",
            )
            d_finals.append(g if batched else g[:, None])
        if perm is not None:
            d_out = d_out[:, perm]
            d_finals = [g[:, perm] for g in d_finals]

        new_grads = {}
        d_states0 = tuple(np.empty((n_layers * n_dirs, B, self._state_size(s)), dtype=self.dtype) for s in self.STATES)
        # dL/dh_t (and dL/dc_t) of every layer and direction: handed to the caller, so new on every call
        buffers = {"hidden": np.empty((n_layers * n_dirs, T, B, out_size), dtype=self.dtype)}
        if "c" in self.STATES:
            buffers["cell"] = np.empty((n_layers * n_dirs, T, B, self.hidden_size), dtype=self.dtype)
        d_layer_out = d_out  # dL/d(output of the current layer), (T, B, n_dirs*out), any strides
        for layer in range(n_layers - 1, -1, -1):
            layer_in, dcaches, _ = c["layers"][layer]
            d_in = None
            for d in range(n_dirs):
                ld = layer * n_dirs + d
                dx, ds0, grads = self._direction_backward(
                    d_layer_out[:, :, d * out_size : (d + 1) * out_size],
                    tuple(g[ld] for g in d_finals),
                    dcaches[d],
                    layer,
                    d,
                    dict(c, layer_in=layer_in),
                    {k: v[ld] for k, v in buffers.items()},
                )
                sfx = f"_l{layer}{'_reverse' if d else ''}"
                new_grads.update({kind + sfx: g for kind, g in grads.items()})
                for target, value in zip(d_states0, ds0):
                    target[ld] = value
                if d_in is None:
                    d_in = dx
                else:
                    d_in += dx
            assert d_in is not None  # the loop above ran over n_dirs >= 1 directions
            if layer > 0:
                keep = c["layers"][layer - 1][2]
                if keep is not None:  # in place: d_in is this backward's own array
                    np.multiply(d_in, keep, out=d_in)
                    d_in *= self._dropout_scale()
            d_layer_out = d_in

        grad_x = d_layer_out
        if perm is not None:
            inv = np.argsort(perm)
            grad_x = grad_x[:, inv]
            d_states0 = tuple(g[:, inv] for g in d_states0)
            buffers = {k: v[:, :, inv] for k, v in buffers.items()}
        self.hidden_grads = buffers["hidden"]
        if "cell" in buffers:
            self.cell_grads = buffers["cell"]
        return ((self._to_layout(grad_x, batched), tuple(g if batched else g[:, 0] for g in d_states0)), new_grads)

    # ---------------------------------------------------------------- one layer, one direction
    def _direction_forward(self, x, state0, layer, d, ctx):  # pragma: no cover - the cell's job
        raise NotImplementedError

    def _direction_backward(self, d_out, d_finals, dcache, layer, d, ctx, out):  # pragma: no cover
        raise NotImplementedError


def check_finite_state(out: np.ndarray, layer: int, dtype: DTypeLike) -> None:
    """Report an overflowed recurrence (finite inputs, non-finite states) instead of passing it on."""
    if not np.isfinite(out).all():
        t = int(np.argwhere(~np.isfinite(out))[0][0])
        advice = (
            "lower the weights' scale, use float64, or use tanh"
            if np.dtype(dtype) == np.float32
            else "lower the weights' scale or use tanh"
        )
        raise FloatingPointError(
            f"forward: the hidden state of layer {layer} became non-finite at time step {t} although the "
            f"inputs were finite: the recurrence overflowed {np.dtype(dtype).name} (relu with large recurrent "
            f"weights); {advice}"
        )
