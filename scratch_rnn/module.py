"""``Module``: the one base of every layer and model (micrograd's ``Module``, torch's ``nn.Module``).

It owns what no subclass re-implements:

- **parameters**: ``parameters()`` is the live flat dict name -> ndarray (own parameters first, then
  each child's under ``"<child>.<name>"``, torch's ``state_dict()`` order and names);
  ``named_parameters()`` yields its items; ``grads`` is the live dict of accumulated gradients
  with the same keys; ``state_dict()`` copies, ``load_state_dict()`` checks every key, shape and
  value before it writes any (all or nothing); ``zero_grad()``; ``train(mode)`` / ``eval()``
  (children follow).
- **the forward/backward lifecycle**. A subclass writes two methods,

  ``_forward(*inputs) -> (outputs, cache)`` and
  ``_backward(cache, *grad_outputs) -> (grad_inputs, param_grads)``,

  where ``param_grads`` maps the module's own parameter names (and ``"<child>.<name>"``) to this
  backward's contribution. ``forward`` / ``backward`` / ``__call__`` are this class's, and enforce:

  1. a forward that raises leaves no cache behind: the last cache is dropped before ``_forward``
     runs, so a following ``backward`` raises;
  2. ``backward`` without a successful forward raises; a second ``backward`` through the same forward
     raises (torch: "Trying to backward through the graph a second time") unless the first was
     called with ``retain_graph=True``;
  3. ``_forward`` keeps in its cache only arrays that are the module's own (copies of the caller's
     inputs where backward needs them), so changing an input after ``forward`` changes nothing;
  4. the contributions are checked before any is added: a non-finite one raises
     ``FloatingPointError`` naming the parameter, and an error anywhere inside ``backward`` leaves
     every ``grads`` array as it was;
  5. the parameters the backward reads are the ones the forward saw (torch's version counter): the
     forward keeps a copy of each (own and children's: ``_backward_reads()``), and a backward finds
     one changed in place since (an optimizer step, ``load_state_dict``, ``W[...] = ...``) raises
     RuntimeError naming it before any work. A copy, not a counter, because a write through NumPy
     bumps no counter; it costs a copy and a comparison of those parameters per forward+backward.

A composite module calls its children's ``_forward`` / ``_backward`` directly and keeps their
caches inside its own, so the rules hold for the whole model at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .checks import as_float_array, check_bool, check_dtype

__all__ = ["Module", "RowGrad", "SeedLike"]

_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # a float parameter's bits, compared exactly
_M = TypeVar("_M", bound="Module")
# what ``np.random.default_rng`` takes: the layers' and models' ``seed`` argument
SeedLike: TypeAlias = int | np.random.SeedSequence | np.random.BitGenerator | np.random.Generator | None


@dataclass(frozen=True)
class RowGrad:
    """A sparse gradient contribution: ``values[i]`` is added to row ``rows[i]`` (repeats add up).

    What an embedding's backward produces: a few rows of a large table.
    """

    rows: np.ndarray  # (M,) int
    values: np.ndarray  # (M, *row_shape)

    def summed_into(self, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows touched, their new values): ``grad``'s rows plus the contributions, formed aside."""
        rows, inverse = np.unique(self.rows, return_inverse=True)
        sums = np.zeros((len(rows),) + grad.shape[1:], dtype=grad.dtype)
        np.add.at(sums, inverse.reshape(-1), self.values)  # repeats add up, in their order
        return rows, grad[rows] + sums


class Module:
    """Base of every layer and model: parameters, gradients, state dicts, modes, lifecycle."""

    # None: no parameters of its own (a loss); a layer with parameters narrows it to np.dtype
    dtype: np.dtype | None
    _params: OrderedDict[str, np.ndarray]
    _grads: OrderedDict[str, np.ndarray]
    _children: OrderedDict[str, Module]

    def __init__(self, *, dtype: DTypeLike | None = np.float32) -> None:
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_grads", OrderedDict())
        object.__setattr__(self, "_children", OrderedDict())
        self.dtype = None if dtype is None else check_dtype(dtype)  # None: no parameters of its own (a loss)
        self.training = True
        self._cache: Any = None
        # (parameters, grads) flat dicts, built on first use
        self._flat: tuple[OrderedDict[str, np.ndarray], OrderedDict[str, np.ndarray]] | None = None
        self._reads: list[tuple[str, np.ndarray]] | None = None  # [(flat name, live array)] the backward reads
        # [(flat name, live array, the copy the forward saw)]: shared with the descendants, whose
        # ``_seen_at_forward`` points at the snapshot of the last forward that involved them
        self._snapshot: list[tuple[str, np.ndarray, np.ndarray]] | None = None
        self._seen_at_forward: list[tuple[str, np.ndarray, np.ndarray]] | None = None

    # -- registration ---------------------------------------------------------------------------
    def register_parameter(self, name: str, value: ArrayLike) -> np.ndarray:
        """Add a parameter (a C-contiguous copy in the module's dtype) and its zero gradient."""
        arr = np.array(value, dtype=self.dtype, order="C", copy=True)
        self._params[name] = arr
        self._grads[name] = np.zeros_like(arr)
        self._flat = self._reads = self._snapshot = None
        return arr

    def register_module(self, name: str, module: Module | None) -> None:
        """Add a child whose parameters appear as ``"<name>.<param>"`` (None: no child of that name)."""
        if module is not None:
            if not isinstance(module, Module):
                raise TypeError(f"{name}: expected a Module, got {type(module).__name__}")
            self._children[name] = module
        object.__setattr__(self, name, module)
        self._flat = self._reads = self._snapshot = None

    def __getattr__(self, name: str) -> Any:
        # ``layer.weight`` reads the live parameter array, as in torch
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("_params", {}):
            raise AttributeError(
                f"{name}: parameters are not rebound (optimizers hold the arrays); assign in "
                f"place ({type(self).__name__.lower()}.{name}[...] = value) or use load_state_dict"
            )
        if name in self.__dict__.get("_children", {}):
            raise AttributeError(f"{name}: a child module is not replaced; build a new {type(self).__name__}")
        object.__setattr__(self, name, value)

    def children(self) -> Iterator[tuple[str, Module]]:
        return iter(self._children.items())

    def _build_flat(self) -> tuple[OrderedDict[str, np.ndarray], OrderedDict[str, np.ndarray]]:
        if self._flat is None:
            params, grads = OrderedDict(self._params), OrderedDict(self._grads)
            for prefix, child in self._children.items():
                for k, v in child.parameters().items():
                    params[f"{prefix}.{k}"] = v
                for k, v in child.grads.items():
                    grads[f"{prefix}.{k}"] = v
            self._flat = (params, grads)
        return self._flat

    # -- parameters -----------------------------------------------------------------------------
    def parameters(self) -> OrderedDict[str, np.ndarray]:
        """The LIVE flat dict name -> ndarray: optimizers update these arrays in place."""
        return self._build_flat()[0]

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` in ``state_dict()`` order, as torch."""
        return iter(self.parameters().items())

    @property
    def grads(self) -> OrderedDict[str, np.ndarray]:
        """The LIVE flat dict of accumulated gradients (same keys), added to by backward until zero_grad()."""
        return self._build_flat()[1]

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """A copy of every parameter under torch's names."""
        return OrderedDict((k, v.copy()) for k, v in self.parameters().items())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``state`` (ndarrays or torch tensors) into the parameters, in place; all or nothing.

        Keys must match exactly; each value must be a finite floating-point array of the parameter's
        shape (cast to the module's dtype, as torch's ``copy_``). Nothing is written unless every
        entry passes.
        """
        if not hasattr(state, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state).__name__}")
        params = self.parameters()
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if missing or unexpected:
            raise KeyError(
                f"state_dict: missing keys {missing}, unexpected keys {unexpected}; "
                f"{type(self).__name__} expects {list(params)}"
            )
        staged = {}
        for name, p in params.items():
            value = as_float_array(f"state_dict[{name!r}]", state[name], self.dtype, cast=True)
            if value.shape != p.shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {p.shape} (the parameter's), got {value.shape}")
            staged[name] = value
        for name, value in staged.items():
            params[name][...] = value

    def zero_grad(self) -> None:
        """Reset every accumulated gradient to zero (in place)."""
        for g in self.grads.values():
            g.fill(0)

    def train(self: _M, mode: bool = True) -> _M:
        """Training mode (dropout active) or, with ``mode=False``, evaluation mode; children follow."""
        mode = check_bool("mode", mode)
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self: _M) -> _M:
        return self.train(False)

    # -- the lifecycle --------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``_forward`` and keep its cache for one ``backward`` (see the class docstring)."""
        self._cache = None  # a forward that raises leaves none behind
        self._set_seen(None)
        outputs, cache = self._forward(*args, **kwargs)
        self._take_snapshot()
        self._cache = cache
        return outputs

    def backward(self, *grad_outputs: Any, retain_graph: bool = False, **kwargs: Any) -> Any:
        """Backpropagate through the last forward; add the parameter gradients to ``grads``.

        Returns the gradients with respect to the inputs. The forward's cache is consumed unless
        ``retain_graph=True``. Nothing is added to ``grads`` unless the whole backward succeeds.
        """
        retain_graph = check_bool("retain_graph", retain_graph)
        cache = self._cache
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward: there is no forward to differentiate through: call "
                "forward first (a forward that raised leaves none, and a backward consumes its "
                "forward unless called with retain_graph=True, as in torch)"
            )
        self._check_unchanged(self._snapshot, f"{type(self).__name__}.backward")
        grad_inputs, param_grads = self._backward(cache, *grad_outputs, **kwargs)
        self.accumulate(param_grads)
        if not retain_graph:
            self._cache = None
        return grad_inputs

    # -- what the forward saw (rule 5) ------------------------------------------------------------
    def _backward_reads(self) -> tuple[str, ...]:
        """The names of this module's OWN parameters that ``_backward`` reads (default: all of them).

        A subclass narrows it where its backward provably reads fewer (an embedding's backward reads
        none of its table); the children's are added by the base.
        """
        return tuple(self._params)

    def _read_parameters(self) -> list[tuple[str, np.ndarray]]:
        """[(flat name, live array)] of every parameter a backward through this module reads."""
        if self._reads is None:
            reads = [(name, self._params[name]) for name in self._backward_reads()]
            for prefix, child in self._children.items():
                reads += [(f"{prefix}.{name}", p) for name, p in child._read_parameters()]
            self._reads = reads
        return self._reads

    def _set_seen(self, snapshot) -> None:
        self._seen_at_forward = snapshot
        for child in self._children.values():
            child._set_seen(snapshot)

    def _take_snapshot(self) -> None:
        """Copy what the backward will read (into buffers reused from forward to forward)."""
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = [(name, p, np.empty_like(p)) for name, p in self._read_parameters()]
        for _, p, seen in snap:
            np.copyto(seen, p)
        self._set_seen(snap)

    def _check_unchanged(self, snapshot, reader: str) -> None:
        if not snapshot:
            return
        # compared as bits: NaN equals itself, -0.0 differs from 0.0
        changed = [
            name
            for name, p, seen in snapshot
            if not np.array_equal(p.view(_BITS[p.itemsize]), seen.view(_BITS[p.itemsize]))
        ]
        if changed:
            raise RuntimeError(
                f"{reader}: the parameter(s) {changed} were modified in place after the forward this reads (an "
                "optimizer step, load_state_dict, reset_parameters or a write such as W[...] = ...); the forward's "
                "states belong to the old values (torch: 'one of the variables needed for gradient computation has "
                "been modified by an inplace operation'). Run the forward again after changing parameters, and "
                "update parameters only after the backward"
            )

    def check_parameters_unchanged(self, reader: str = "check_parameters_unchanged") -> None:
        """Raise RuntimeError if a parameter this module's backward reads changed since the last forward
        that involved it (its own or a parent's); for diagnostics that read a forward's results later."""
        snapshot = self._seen_at_forward
        if snapshot is None:
            raise RuntimeError(f"{reader}: {type(self).__name__} has no forward to compare with: run the forward first")
        mine = {id(p): name for name, p in self._read_parameters()}  # named as this module names them
        self._check_unchanged([(mine[id(p)], p, seen) for _, p, seen in snapshot if id(p) in mine], reader)

    def accumulate(self, param_grads: Mapping[str, np.ndarray | RowGrad]) -> None:
        """Add ``param_grads`` (flat names -> ndarray or :class:`RowGrad`) to ``grads``, all or nothing.

        Every sum is formed aside and checked first: a contribution that is not finite, or a sum that
        overflows, raises FloatingPointError naming the parameters, and no ``grads`` array changes.
        """
        grads = self.grads
        unknown = [k for k in param_grads if k not in grads]
        if unknown:
            raise KeyError(f"accumulate: no parameters named {unknown} in {type(self).__name__}")
        for name, g in param_grads.items():  # a wrong shape would broadcast silently
            shape = g.values.shape[1:] if isinstance(g, RowGrad) else np.shape(g)
            expected = grads[name].shape[1:] if isinstance(g, RowGrad) else grads[name].shape
            if shape != expected:
                raise ValueError(
                    f"accumulate: the gradient of {name!r} has shape {shape}, the parameter's is {expected}"
                )
        staged, bad = {}, []
        with np.errstate(over="ignore", invalid="ignore"):
            for name, g in param_grads.items():
                staged[name] = new = g.summed_into(grads[name]) if isinstance(g, RowGrad) else grads[name] + g
                if not np.isfinite(new[1] if isinstance(g, RowGrad) else new).all():
                    bad.append(name)
        if bad:
            raise FloatingPointError(
                f"backward: the gradient of {bad} is not finite (NaN or inf): the backward pass overflowed "
                "(exploding gradients); nothing was accumulated into grads"
            )
        for name, new in staged.items():
            if isinstance(param_grads[name], RowGrad):
                rows, values = new
                grads[name][rows] = values
            else:
                grads[name][...] = new

    def _forward(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:  # pragma: no cover - the subclass's job
        raise NotImplementedError

    def _backward(
        self, cache: Any, *grad_outputs: Any, **kwargs: Any
    ) -> tuple[Any, dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def prefixed(prefix: str, param_grads: Mapping[str, Any]) -> dict[str, Any]:
        """A child's contributions under the parent's names."""
        return {f"{prefix}.{k}": v for k, v in param_grads.items()}
