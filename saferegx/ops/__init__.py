"""The fused safety loss op: public entry, torch.library registration, backends."""
from .adaptive import AdaptiveSafetyLoss, adaptive_safety_loss
from .api import SafetyLoss, available_backends, safety_loss
from .probe import probe_risk
from .reference import safety_loss_reference

__all__ = ["AdaptiveSafetyLoss", "SafetyLoss", "adaptive_safety_loss", "available_backends",
           "probe_risk", "safety_loss", "safety_loss_reference"]
