"""Risk signals (activation probe, safety critics) and the risk -> (alpha, beta) schedule."""

from .critic import EmbeddingCritic, EndpointJudge, LMJudge, SafetyCritic, default_critic
from .metrics import accuracy, auroc, tpr_at_fpr
from .probe import Probe, fit_probe, prompt_activations
from .schedule import RiskSchedule, expand_to_tokens

__all__ = [
    "EmbeddingCritic",
    "EndpointJudge",
    "LMJudge",
    "Probe",
    "RiskSchedule",
    "SafetyCritic",
    "accuracy",
    "auroc",
    "default_critic",
    "expand_to_tokens",
    "fit_probe",
    "prompt_activations",
    "tpr_at_fpr",
]
