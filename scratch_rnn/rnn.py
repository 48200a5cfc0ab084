"""The recurrent layers ``RNN`` (Elman), ``LSTM`` and ``GRU``, with torch's full surface, and the stack they share.

Each layer lives with its cell's math in its own module of :mod:`scratch_rnn.cells` (:mod:`~scratch_rnn.cells.elman`,
:mod:`~scratch_rnn.cells.lstm`, :mod:`~scratch_rnn.cells.gru`) and the stack every cell shares, :class:`RecurrentBase`,
in :mod:`scratch_rnn.cells.base`; this module gathers them under the names they have always had.
"""

from __future__ import annotations

from .cells.base import DEFAULT_FLUSH_BELOW, DEFAULT_FLUSH_EVERY, RecurrentBase, check_finite_state
from .cells.elman import RNN
from .cells.gru import GRU
from .cells.lstm import LSTM

__all__ = ["RNN", "LSTM", "GRU", "RecurrentBase", "DEFAULT_FLUSH_BELOW", "DEFAULT_FLUSH_EVERY", "check_finite_state"]
