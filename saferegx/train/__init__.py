"""Fine-tuning with risk-adaptive safety regularization: a plain PyTorch loop and a HF Trainer."""

from .batches import Batch, DataOrder, collate, encode, load_examples
from .config import TrainConfig
from .loop import NonFiniteLossError, TrainResult, train, train_steps

__all__ = [
    "Batch",
    "DataOrder",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "collate",
    "encode",
    "load_examples",
    "train",
    "train_steps",
]
