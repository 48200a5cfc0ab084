"""scratch_rnn: recurrent networks (Elman RNN, LSTM, GRU, and any cell registered in :mod:`scratch_rnn.cells`,
IndRNN among them) and their backpropagation through time in NumPy alone.

Nothing here imports torch: the torch twins live in the separate ``reference`` package.

The training names (``Trainer``, ``TrainConfig``, ...) are loaded from :mod:`scratch_rnn.train` on
first use, not when the package is imported: ``python -m scratch_rnn.train`` then runs that module
once, as ``__main__``, instead of importing it a second time (runpy's "found in sys.modules ...
unpredictable behaviour" warning).
"""

from typing import TYPE_CHECKING, Any

from . import checkpoint, diagnostics, init, optim
from .cells.elman import step_backward, step_forward
from .init import RecurrentInit, init_rnn
from .layers import Embedding, Linear
from .losses import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    MSELoss,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    cross_entropy,
    cross_entropy_backward,
    mse_loss,
    mse_loss_backward,
)
from .models import ModelConfig, SequenceModel, StepOutput
from .module import Module
from .rnn import GRU, LSTM, RNN

__all__ = [
    "Module",
    "RNN",
    "LSTM",
    "GRU",
    "Linear",
    "Embedding",
    "step_forward",
    "step_backward",
    "mse_loss",
    "mse_loss_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
    "MSELoss",
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
    "ModelConfig",
    "SequenceModel",
    "StepOutput",
    "Dataset",
    "NonFiniteError",
    "StepRecord",
    "TrainConfig",
    "Trainer",
    "RecurrentInit",
    "init_rnn",
    "checkpoint",
    "diagnostics",
    "init",
    "optim",
]
__version__ = "0.1.0"

_TRAIN_NAMES = ("Dataset", "NonFiniteError", "StepRecord", "TrainConfig", "Trainer")
if TYPE_CHECKING:  # pragma: no cover
    from .train import Dataset, NonFiniteError, StepRecord, TrainConfig, Trainer


def __getattr__(name: str) -> Any:
    if name in _TRAIN_NAMES:
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
