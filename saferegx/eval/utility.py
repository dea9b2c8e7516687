"""Utility: exact-match accuracy on the held-out split of the benign task.

The attack fine-tune must not cost the model what it is otherwise being taught; a regularizer
that keeps a model safe by keeping it from learning anything would show here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..data.tasks import exact_match
from .generate import generate


def utility_accuracy(examples: Sequence[dict], predictions: Sequence[str]) -> dict:
    """Score ``predictions`` against ``examples`` (``{"prompt", "response"[, "family"]}``).

    Returns ``{"n", "correct", "accuracy", "by_family": {family: accuracy}, "records"}``.
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    records = [
        {
            "prompt": ex["prompt"],
            "answer": ex["response"],
            "prediction": pred,
            "family": ex.get("family"),
            "correct": exact_match(pred, ex["response"]),
        }
        for ex, pred in zip(examples, predictions)
    ]
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        if r["family"] is not None:
            groups[r["family"]].append(r["correct"])
    correct = sum(r["correct"] for r in records)
    return {
        "n": len(records),
        "correct": correct,
        "accuracy": correct / len(records) if records else float("nan"),
        "by_family": {f: sum(v) / len(v) for f, v in sorted(groups.items())},
        "records": records,
    }


def evaluate_utility(
    model, tokenizer, examples: Sequence[dict], *, max_new_tokens: int = 64, batch_size: int = 8, progress: bool = True
) -> dict:
    """Greedy answers of ``model`` to ``examples``, scored by :func:`utility_accuracy`."""
    predictions = generate(
        model,
        tokenizer,
        [ex["prompt"] for ex in examples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc="utility",
    )
    return utility_accuracy(examples, predictions)
