"""The cell registry: every list of recurrent cells in the project reads it.

A *cell* is a :class:`~scratch_rnn.cells.base.RecurrentBase` subclass: the built-in ``RNN``, ``LSTM`` and ``GRU``
(each in its own module, :mod:`~scratch_rnn.cells.elman`, :mod:`~scratch_rnn.cells.lstm` and
:mod:`~scratch_rnn.cells.gru`, with its layout, options, step functions and fast loops; the loop machinery they share
is :mod:`~scratch_rnn.cells.loops`), or a :class:`~scratch_rnn.cells.generic.StepCell` that brings only its parameter
layout and its step functions (``step_forward`` / ``step_backward``) and gets the generic sequence loop.

Each registered cell has a :class:`CellSpec`: its name, where its NumPy class lives, where its torch twin
lives (``None`` for the cells torch has: ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` are their oracle), and the
choices of its own constructor options that the crosscheck and the hypothesis strategies draw from.
Classes and twins are named by ``"module:attribute"`` strings and imported only when asked for, so this
package never imports torch, and a user's cell in a user's own file is reached the same way::

    python -m reference.crosscheck --cell mypkg.cells:MyCell        # twin: MyCell.TWIN or --twin

:func:`register_cell` adds one (a user's code may call it too); :func:`cell_spec` resolves a registered name
or a ``"module:Class"`` path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .base import RecurrentBase

__all__ = ["CellSpec", "register_cell", "cell_spec", "cell_names", "cell_takes", "module_options", "resolve"]


@dataclass(frozen=True)
class CellSpec:
    """One cell: ``name``; ``model`` the NumPy class (or its ``"module:Class"`` path); ``twin`` the torch twin's
    step function (``"module:function"``, or None where a ``torch.nn`` module is the oracle); ``options``
    maps each of the cell's own constructor options to the choices drawn for it (the first is the default)."""

    name: str
    model: type[RecurrentBase] | str
    twin: Callable[..., Any] | str | None = None
    options: Mapping[str, tuple] = field(default_factory=dict)
    builtin: bool = False

    def model_class(self) -> type[RecurrentBase]:
        return resolve(self.model, "cell")

    def twin_function(self) -> Callable[..., Any]:
        """The torch step function of the twin (imports torch): the spec's, else the class's ``TWIN``."""
        twin = self.twin if self.twin is not None else getattr(self.model_class(), "TWIN", None)
        if twin is None:
            raise LookupError(
                f"cell {self.name!r}: no torch twin given (set the class's TWIN = 'module:function' or pass one)"
            )
        return resolve(twin, "twin")


_REGISTRY: dict[str, CellSpec] = {}


def resolve(target: Any, what: str = "object") -> Any:
    """``target`` itself, or the attribute named by a ``"module:attribute"`` string (imported now)."""
    if not isinstance(target, str):
        return target
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what}: expected a registered name or 'module:attribute', got {target!r}")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{what}: cannot import module {module!r} of {target!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what}: module {module!r} has no attribute {attr!r}") from None
    return obj


def register_cell(
    name: str,
    model: type[RecurrentBase] | str,
    *,
    twin: Callable[..., Any] | str | None = None,
    options: Mapping[str, tuple] | None = None,
    builtin: bool = False,
    replace: bool = False,
) -> CellSpec:
    """Add a cell to the registry under ``name`` (lower case; an existing name only with ``replace=True``)."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"name: expected a lower-case identifier, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"name: cell {name!r} is registered already (pass replace=True to replace it)")
    opts: dict[str, tuple] = {}
    for key, choices in (options or {}).items():
        choices = tuple(choices)
        if not choices:
            raise ValueError(f"options[{key!r}]: expected at least one choice, got none")
        opts[key] = choices
    spec = CellSpec(name, model, twin, opts, builtin)
    _REGISTRY[name] = spec
    return spec


def cell_names(*, builtin: bool | None = None) -> tuple[str, ...]:
    """The registered names, in registration order (``builtin``: only those, or only the others)."""
    return tuple(n for n, s in _REGISTRY.items() if builtin is None or s.builtin == builtin)


def cell_takes(cell: str | type[RecurrentBase], option: str) -> bool:
    """Whether the cell's layer class takes the constructor option ``option`` (``"nonlinearity"``,
    ``"proj_size"``, ...): what the callers ask instead of comparing cell names. A step cell inherits the stack's
    signature (``proj_size`` included, which it refuses): ask :func:`module_options` for a torch module's options."""
    import inspect

    return option in inspect.signature(cell_spec(cell).model_class()).parameters


# The options of torch.nn.RNN/LSTM/GRU beyond the shared ones, which a built-in cell's constructor may take.
MODULE_OPTIONS = ("nonlinearity", "proj_size")


def module_options(cell: str | type[RecurrentBase]) -> tuple[str, ...]:
    """The torch.nn module options (:data:`MODULE_OPTIONS`) that a built-in cell takes, as its twin module does:
    ``("nonlinearity",)`` for the Elman RNN, ``("proj_size",)`` for the LSTM. A plug-in cell has none here (its
    own options come from its ``OPTIONS``, and a step cell's inherited ``proj_size`` is refused, not taken)."""
    if not cell_spec(cell).builtin:
        return ()
    return tuple(o for o in MODULE_OPTIONS if cell_takes(cell, o))


def cell_spec(cell: str | type[RecurrentBase]) -> CellSpec:
    """The spec of a registered name, a ``"module:Class"`` path, or a class (unregistered ones get a spec
    from the class's own ``NAME``, ``TWIN`` and ``OPTIONS``)."""
    if isinstance(cell, str) and ":" not in cell:
        try:
            return _REGISTRY[cell]
        except KeyError:
            raise ValueError(
                f"cell: expected one of {', '.join(map(repr, _REGISTRY))} or 'module:Class', got {cell!r}"
            ) from None
    cls = resolve(cell, "cell")
    for spec in _REGISTRY.values():
        if not isinstance(spec.model, str) and spec.model is cls:
            return spec
    from .base import RecurrentBase

    if not (isinstance(cls, type) and issubclass(cls, RecurrentBase)):
        raise ValueError(f"cell: expected a RecurrentBase subclass, got {cls!r} from {cell!r}")
    name = cell if isinstance(cell, str) else f"{cls.__module__}:{cls.__qualname__}"
    return CellSpec(name, cls, getattr(cls, "TWIN", None), dict(getattr(cls, "OPTIONS", {})))


# The cells of this project. torch.nn.RNN / LSTM / GRU are the built-in cells' twins (reference/rnn.py).
register_cell("rnn", "scratch_rnn.cells.elman:RNN", options={"nonlinearity": ("tanh", "relu")}, builtin=True)
register_cell("lstm", "scratch_rnn.cells.lstm:LSTM", builtin=True)
register_cell("gru", "scratch_rnn.cells.gru:GRU", builtin=True)
register_cell(
    "indrnn",
    "scratch_rnn.cells.indrnn:IndRNN",
    twin="reference.indrnn:indrnn_step",
    options={"nonlinearity": ("relu", "tanh")},
)
