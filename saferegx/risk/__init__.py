"""Risk signals (activation probe, safety critics) and the risk -> (alpha, beta) schedule."""
from .critic import EmbeddingCritic, EndpointJudge, LMJudge, SafetyCritic, default_critic
from .metrics import accuracy, auroc, tpr_at_fpr
from .probe import Probe, decoder_layers, fit_probe, probe_risk_reference, prompt_activations
from .schedule import RiskSchedule, expand_to_tokens

__all__ = ["EmbeddingCritic", "EndpointJudge", "LMJudge", "Probe", "RiskSchedule", "SafetyCritic",
           "accuracy", "auroc", "decoder_layers", "default_critic", "expand_to_tokens", "fit_probe",
           "probe_risk_reference", "prompt_activations", "tpr_at_fpr"]
