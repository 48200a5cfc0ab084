"""The generic sequence loop: a recurrent layer from a cell's step functions alone.

A cell that subclasses :class:`StepCell` writes its parameter layout and two pure functions of one time
step (CS231n's ``step_forward(...) -> h, cache`` / ``step_backward(...)``), for one layer and one direction::

    param_shapes(layer_input_size) -> {kind: shape}     e.g. {"weight_ih": (H, I), "weight_hh": (H,), ...}
    step_forward(x_t, states, p) -> (new_states, cache)
        x_t (n, I_layer); states a tuple of (n, size) arrays, one per name in STATES (("h",) or ("h", "c"));
        p {kind: array} the layer's and direction's parameters; new_states like states
    step_backward(d_states, cache, p) -> (dx_t, d_prev_states, d_params)
        d_states: the TOTAL dL/d(new_states) of the step, a tuple like states; dx_t (n, I_layer);
        d_prev_states like states; d_params {kind: contribution} (kinds it does not touch may be left out)

and :class:`~scratch_rnn.cells.base.RecurrentBase` gives it everything else: layers, directions, ``batch_first``,
unbatched input, packed ``lengths``, inter-layer dropout, the input checks, the lifecycle, ``h_n`` (and the
other final states), ``hidden_grads`` (dL/dh_t, total) and, for a cell state "c", ``cell_grads``.

Parameter names follow torch: ``{kind}_l{layer}`` and ``{kind}_l{layer}_reverse``, kinds in ``param_shapes``'
order, per layer and direction. Kinds whose name starts with ``bias`` are left out when ``bias=False``.

The loop (packed sequences as torch runs them): rows are sorted by decreasing length, so at step t only the
first ``batch_sizes[t]`` rows are active; the step runs on those rows, the others keep their state (a
sequence that has ended keeps its final state; in the reverse direction a sequence that has not started yet
keeps its initial state), and outputs at padded steps are zero. The step functions get copies of the
states, so a cache may keep what it is given. The subnormal flush of the built-in loops is not applied here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import RecurrentBase

__all__ = ["StepCell"]


class StepCell(RecurrentBase):
    """A recurrent layer whose cell brings only ``param_shapes``, ``step_forward`` and ``step_backward``.

    Class attributes a cell sets: ``NAME`` (for messages and reprs), ``STATES`` (("h",) default, or
    ("h", "c") for a cell state), optionally ``OPTIONS`` ({option: choices} drawn by the crosscheck and the
    strategies), ``TWIN`` ("module:function", its torch step function) and ``SMOOTH`` (False when the step
    has kinks, e.g. relu: then ``kink_pattern`` should say where they are, for finite differences).
    """

    NAME = "StepCell"
    ABSTRACT = True  # a base, not a cell (a subclass that is a cell is not abstract)
    OPTIONS: dict = {}
    TWIN: str | None = None

    # ------------------------------------------------------------------ what a cell writes
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.ABSTRACT = cls.__dict__.get("ABSTRACT", False)

    def param_shapes(self, layer_input_size: int) -> dict[str, tuple[int, ...]]:  # pragma: no cover - the cell's job
        raise NotImplementedError

    def step_forward(  # pragma: no cover - the cell's job
        self, x_t: np.ndarray, states: tuple[np.ndarray, ...], p: dict[str, np.ndarray]
    ) -> tuple[tuple[np.ndarray, ...], Any]:
        raise NotImplementedError

    def step_backward(  # pragma: no cover - the cell's job
        self, d_states: tuple[np.ndarray, ...], cache: Any, p: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...], dict[str, np.ndarray]]:
        raise NotImplementedError

    def step_kinks(self, cache: Any) -> np.ndarray | None:
        """Boolean array of which non-smooth points (e.g. relu's) each unit's step sat on which side of;
        None for a smooth cell. Finite differences use it to skip directions that cross a kink."""
        return None

    def _backward_reads(self) -> tuple:
        """Every parameter: a step backward is handed them all (``p``) and may read any of them."""
        return tuple(self._params)

    # ------------------------------------------------------------------ the layout
    def _layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size * self.num_directions

    def _param_names(self) -> list[str]:
        names = []
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = f"_l{layer}{'_reverse' if d else ''}"
                names += [kind + sfx for kind in self._kinds(layer)]
        return names

    def _kinds(self, layer: int) -> dict:
        shapes = self.param_shapes(self._layer_input_size(layer))
        return {k: tuple(v) for k, v in shapes.items() if self.bias or not k.startswith("bias")}

    def _param_shape(self, name: str) -> tuple:
        kind, _, rest = name.partition("_l")
        layer = int(rest.split("_")[0])
        return self._kinds(layer)[kind]

    def layer_params(self, layer: int, d: int) -> dict:
        """The live parameters of one layer and direction, by kind (what the step functions receive)."""
        sfx = f"_l{layer}{'_reverse' if d else ''}"
        return {kind: self._params[kind + sfx] for kind in self._kinds(layer)}

    # ------------------------------------------------------------------ the generic loop
    def _forward(self, x, h0=None, lengths=None, *, dropout_masks=None):
        """``(output, h_n)`` for a one-state cell, ``(output, (h_n, c_n, ...))`` otherwise."""
        (output, finals), cache = self._run_forward(x, _states_tuple(self, h0), lengths, dropout_masks)
        return (output, finals[0] if len(self.STATES) == 1 else finals), cache

    def _backward(self, c, grad_output=None, grad_h_n=None):
        (grad_x, grad_states), grads = self._run_backward(c, grad_output, _states_tuple(self, grad_h_n))
        return (grad_x, grad_states[0] if len(self.STATES) == 1 else grad_states), grads

    def _direction_forward(self, x, state0, layer, d, ctx):
        T, B, sizes = ctx["T"], ctx["B"], ctx["batch_sizes"]
        p = self.layer_params(layer, d)
        states = [s.copy() for s in state0]  # (B, ·) each, carried from step to step
        hs = self._buffer((layer, d, "h"), (T + 1, B, self.output_size))  # as the built-in cells keep them
        hs[T if d else 0] = states[0]
        out = np.zeros((T, B, self.output_size), dtype=self.dtype)
        steps = []  # (t, active rows, cache), in the order run
        for t in range(T - 1, -1, -1) if d else range(T):
            n = B if sizes is None else int(sizes[t])
            if n:
                new, cache = self.step_forward(x[t, :n], tuple(s[:n].copy() for s in states), p)
                for s, v in zip(states, new):
                    s[:n] = v
                out[t, :n] = new[0]
                steps.append((t, n, cache))
            hs[t if d else t + 1] = states[0]
        return out, tuple(states), steps

    def _direction_backward(self, d_out, d_finals, steps, layer, d, ctx, out):
        T, B = ctx["T"], ctx["B"]
        p = self.layer_params(layer, d)
        d_states = [np.array(g, dtype=self.dtype) for g in d_finals]  # dL/d(carried state), (B, ·)
        dx = np.zeros((T, B, self._layer_input_size(layer)), dtype=self.dtype)
        grads = {kind: np.zeros(v.shape, dtype=self.dtype) for kind, v in p.items()}
        hidden, cell = out["hidden"], out.get("cell")
        hidden[...] = 0
        if cell is not None:
            cell[...] = 0
        for t, n, cache in reversed(steps):
            total = (d_states[0][:n] + d_out[t, :n],) + tuple(s[:n].copy() for s in d_states[1:])
            hidden[t, :n] = total[0]
            if cell is not None:
                cell[t, :n] = total[1]
            dx_t, d_prev, d_params = self.step_backward(total, cache, p)
            for s, v in zip(d_states, d_prev):
                s[:n] = v
            dx[t, :n] = dx_t
            for kind, g in d_params.items():
                grads[kind] += g
        return dx, tuple(d_states), grads

    def state_jacobian(self, x_t, states, layer: int = 0, d: int = 0) -> np.ndarray:
        """∂(new states)/∂(states) of one step, from the cell's own step backward: (B, S, S), S the sizes of the
        states concatenated in STATES order (H for a one-state cell), row i = ∂new_i/∂(every previous state).

        x_t (B, I_layer); states a tuple of (B, ·) arrays (or one array for a one-state cell). One step backward
        per state unit, with that unit's cotangent set to 1: what the per-step gradient factor of any cell is
        measured with (for the Elman cell it is diag(f'(a_t)) W_hh, for IndRNN diag(u ⊙ σ'(a_t))).
        """
        states = tuple(np.asarray(s, dtype=self.dtype) for s in (states if isinstance(states, tuple) else (states,)))
        x_t = np.asarray(x_t, dtype=self.dtype)
        p = self.layer_params(layer, d)
        _, cache = self.step_forward(x_t, tuple(s.copy() for s in states), p)
        sizes = [s.shape[1] for s in states]
        B, S = x_t.shape[0], sum(sizes)
        jac = np.empty((B, S, S), dtype=self.dtype)
        i = 0
        for k, size in enumerate(sizes):
            for j in range(size):
                cot = tuple(np.zeros_like(s) for s in states)
                cot[k][:, j] = 1.0
                _, d_prev, _ = self.step_backward(cot, cache, p)
                jac[:, i] = np.concatenate(d_prev, axis=1)
                i += 1
        return jac

    def kink_pattern(self) -> tuple:
        """Where the last forward's steps sat relative to their kinks (empty for a smooth cell)."""
        c = self._cache
        if c is None:
            return ()
        pattern = []
        for _, dcaches, _ in c["layers"]:
            for steps in dcaches:
                for t, n, cache in steps:
                    k = self.step_kinks(cache)
                    if k is not None:
                        pattern.append((t, n, np.asarray(k, bool).tobytes()))
        return tuple(pattern)


def _states_tuple(cell: StepCell, given) -> tuple:
    """The user's state argument as one entry per name in STATES (an array for a one-state cell)."""
    if len(cell.STATES) == 1:
        return (given,)
    if given is None:
        return (None,) * len(cell.STATES)
    if not isinstance(given, (tuple, list)) or len(given) != len(cell.STATES):
        raise ValueError(
            f"hx: expected a tuple of {len(cell.STATES)} states ({', '.join(cell.STATES)}) or None, "
            f"got {type(given).__name__}"
        )
    return tuple(given)
