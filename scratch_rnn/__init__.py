"""scratch_rnn: an Elman RNN and its backpropagation through time in NumPy alone.

Nothing here imports torch: the torch twins live in the separate ``reference`` package.
"""
from .functional import step_backward, step_forward
from .rnn import RNN

__all__ = ["RNN", "step_forward", "step_backward"]
__version__ = "0.1.0"
