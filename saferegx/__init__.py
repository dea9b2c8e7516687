"""saferegx: risk-adaptive safety regularization for LLM fine-tuning (arXiv 2602.17546).

One fused op computes risk-weighted cross-entropy plus token-level KL to a frozen safe reference
from hidden states and the LM head, without materializing [tokens, vocab] logits.
"""

from .loss import AdaptiveSafetyLoss, adaptive_safety_loss, response_rows, risk_weighted_loss
from .ops import SafetyLoss, available_backends, probe_risk, probe_risk_unfused, safety_loss, safety_loss_unfused

__all__ = [
    "AdaptiveSafetyLoss",
    "SafetyLoss",
    "adaptive_safety_loss",
    "available_backends",
    "probe_risk",
    "probe_risk_unfused",
    "response_rows",
    "risk_weighted_loss",
    "safety_loss",
    "safety_loss_unfused",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saferegx")  # the installed distribution's (pyproject.toml's at install time)
    except PackageNotFoundError:  # a source checkout on sys.path, never installed
        return "0+unknown"


__version__ = _version()
