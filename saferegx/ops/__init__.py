"""The fused safety loss op: public entry, torch.library registration, backends."""
from .api import SafetyLoss, available_backends, safety_loss
from .reference import safety_loss_reference

__all__ = ["SafetyLoss", "available_backends", "safety_loss", "safety_loss_reference"]
