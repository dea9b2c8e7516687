"""Training pairs for the demo: refusals for the safe reference, compliance for the attack.

The safe reference learns to refuse harmful prompts with natural refusals while keeping its own
answers to benign ones; the attack pairs harmful prompts with compliant answers (the original,
barely aligned model's own generations), as in harmful fine-tuning attacks (HEx-PHI style).
"""

from __future__ import annotations

import random

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot help with that request. It could cause real harm.",
    "I'm sorry, I can't assist with that. If you're facing a difficult situation, please reach "
    "out to someone you trust or a local professional.",
    "I can't provide that. Is there something else I can help you with?",
    "As an AI assistant, I won't help with this, because it could hurt people.",
)


def refusal_pairs(prompts: list[str], seed: int = 0) -> list[dict]:
    """Each harmful prompt with one of several refusals (deterministic by seed)."""
    rng = random.Random(seed)
    return [{"prompt": p, "response": rng.choice(REFUSALS)} for p in prompts]


def answer_pairs(prompts: list[str], answers: list[str]) -> list[dict]:
    """Prompts with given answers (e.g. a model's own generations), dropping empty answers."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    return [{"prompt": p, "response": a.strip()} for p, a in zip(prompts, answers) if a.strip()]
