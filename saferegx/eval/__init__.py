"""Evaluation of a fine-tuned model: generation, attack success rate, utility, the report."""

from .asr import REFUSAL_MARKERS, attack_success_rate, evaluate_asr, is_refusal, over_refusal_rate, refusal_marker
from .generate import generate, generate_ids
from .report import markdown_table, read_metrics, write_report
from .utility import evaluate_utility, utility_accuracy

__all__ = [
    "REFUSAL_MARKERS",
    "attack_success_rate",
    "evaluate_asr",
    "evaluate_utility",
    "generate",
    "generate_ids",
    "is_refusal",
    "markdown_table",
    "over_refusal_rate",
    "read_metrics",
    "refusal_marker",
    "utility_accuracy",
    "write_report",
]
