"""The fused safety loss op: public entry, torch.library registration, backends."""

from .api import SafetyLoss, available_backends, safety_loss
from .probe import probe_risk
from .unfused import probe_risk_unfused, safety_loss_unfused

__all__ = ["SafetyLoss", "available_backends", "probe_risk", "probe_risk_unfused", "safety_loss", "safety_loss_unfused"]
