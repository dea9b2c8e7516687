"""saferegx: risk-adaptive safety regularization for LLM fine-tuning (arXiv 2602.17546).

One fused op computes risk-weighted cross-entropy plus token-level KL to a frozen safe reference
from hidden states and the LM head, without materializing [tokens, vocab] logits.
"""
from .ops import (AdaptiveSafetyLoss, SafetyLoss, adaptive_safety_loss, available_backends,
                  probe_risk, safety_loss, safety_loss_reference)

__all__ = ["AdaptiveSafetyLoss", "SafetyLoss", "adaptive_safety_loss", "available_backends",
           "probe_risk", "safety_loss", "safety_loss_reference"]
__version__ = "0.1.0"
