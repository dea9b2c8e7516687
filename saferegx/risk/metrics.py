"""Detector metrics (AUROC, accuracy, TPR at a fixed FPR), in torch, for probes and critics."""

from __future__ import annotations

import torch


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); labels 1 = positive."""
    scores, labels = scores.detach().double().flatten(), labels.flatten().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction correct when predicting positive for ``score >= threshold``."""
    return float(((scores.detach().flatten() >= threshold) == labels.flatten().bool()).double().mean())


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, fpr: float = 0.05) -> float:
    """True positive rate at the threshold that flags at most ``fpr`` of the negatives."""
    scores, labels = scores.detach().double().flatten(), labels.flatten().bool()
    neg = scores[~labels].sort(descending=True).values
    k = int(fpr * len(neg))  # negatives allowed above the threshold
    threshold = neg[k] if k < len(neg) else neg[-1] - 1
    return float((scores[labels] > threshold).double().mean())


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank."""
    order = x.argsort()
    sorted_x = x[order]
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(x)
    ranks[order] = avg[inverse]
    return ranks
