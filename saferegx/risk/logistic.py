"""L2-regularized, class-balanced logistic regression in torch (shared by the probe and critic).

Hidden states of LLMs have a few huge outlier dimensions, so features are standardized before the
LBFGS fit and the scaling is folded back into ``(w, b)``: callers get a plain ``sigmoid(x @ w + b)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``P(y=1|x) = sigmoid(x @ w + b)``; returns ``(w [D], b [])`` in fp64."""
    x, y = x.detach().double(), y.detach().double().flatten()
    n_pos = y.sum()
    if n_pos == 0 or n_pos == len(y):
        raise ValueError("logistic regression needs both classes")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    # class-balanced: each class carries half the total weight
    sample_w = torch.where(y > 0, 0.5 / n_pos, 0.5 / (len(y) - n_pos))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        bce = F.binary_cross_entropy_with_logits(z @ w + b, y, reduction="none")
        loss = (sample_w * bce).sum() + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach() / std, b.detach() - (w.detach() / std) @ mean
    return w, b


def platt(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Platt scaling: ``(a, c)`` such that ``sigmoid(a * logit + c)`` is calibrated on ``y``.

    Class-balanced like the fit, so the risk is calibrated for equal priors: it does not move
    with the harmful/benign mix of whatever data the probe happened to be fitted on.
    """
    a, c = fit_logistic(logits.detach().double()[:, None], y, l2=0.0, max_iter=100)
    # fit_logistic standardizes and folds back, so a[0] is the raw slope
    return float(a[0]), float(c)
