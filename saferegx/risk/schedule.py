"""Risk -> (alpha, beta) schedule: how strongly each example is pinned to the safe reference.

``beta = beta_min + (beta_max - beta_min) * s`` weighs the KL to the reference, ``alpha`` the
task cross-entropy. Defaults follow the paper's public code (0.1 / 0.9, alpha = clamp(1 - beta,
0.1, 0.9)) so results compare. All tensor ops, no host syncs: safe under torch.compile and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("batch", "sequence")
ALPHAS = ("clamp", "complement", "one")


@dataclass
class RiskSchedule:
    """Maps risk ``[B]`` in [0, 1] to per-sequence ``(alpha, beta)``, each ``[B]`` fp32.

    ``mode="batch"`` (the paper): one beta for the batch, from the mean risk smoothed by an EMA
    ``s_t = m * s_{t-1} + (1 - m) * s_batch`` (the first batch initializes it).
    ``mode="sequence"``: each sequence its own beta from its own risk, so one harmful example in a
    benign batch is pinned without slowing the benign ones; no EMA (sequences are independent).
    ``alpha``: ``"clamp"`` = clamp(1 - beta, alpha_min, alpha_max), ``"complement"`` = 1 - beta,
    ``"one"`` = 1.
    """

    beta_min: float = 0.1
    beta_max: float = 0.9
    mode: str = "batch"
    momentum: float = 0.0
    alpha: str = "clamp"
    alpha_min: float = 0.1
    alpha_max: float = 0.9

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.alpha not in ALPHAS:
            raise ValueError(f"alpha must be one of {ALPHAS}, got {self.alpha!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")
        self.ema: torch.Tensor | None = None  # smoothed batch risk, a 0-dim tensor

    def __call__(self, risk: torch.Tensor, mean=torch.mean) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean``: the batch mode's average of ``risk``; a batch split over processes passes the
        mean over all of them (``saferegx.train.distributed.mean``)."""
        risk = risk.detach().float().clamp(0.0, 1.0)  # the model must not learn to fool its monitor
        if self.mode == "batch":
            s = self.update(mean(risk)).expand_as(risk)
        else:
            s = risk
        beta = self.beta_min + (self.beta_max - self.beta_min) * s
        return self.alpha_of(beta), beta

    def update(self, s_batch: torch.Tensor) -> torch.Tensor:
        """Fold one batch-level risk into the EMA and return the smoothed value."""
        s_batch = s_batch.detach().float()
        self.ema = s_batch if self.ema is None else torch.lerp(s_batch, self.ema, self.momentum)
        return self.ema

    def alpha_of(self, beta: torch.Tensor) -> torch.Tensor:
        if self.alpha == "one":
            return torch.ones_like(beta)
        if self.alpha == "complement":
            return 1.0 - beta
        return (1.0 - beta).clamp(self.alpha_min, self.alpha_max)

    def state_dict(self) -> dict:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"]


def expand_to_tokens(values: torch.Tensor, index_or_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence ``values [B]`` -> per-token weights for the flattened loss rows.

    Given a mask ``[B, T]`` returns ``[B*T]`` (zero where the mask is zero); given a 1-D int64
    ``token -> sequence`` index ``[N]`` (packed sequences) returns ``values[index]``, ``[N]``.
    """
    if index_or_mask.dim() == 1:
        if index_or_mask.is_floating_point() or index_or_mask.dtype == torch.bool:
            raise TypeError("a 1-D token_seq_index must be an integer tensor")
        return values[index_or_mask]
    if index_or_mask.dim() != 2 or index_or_mask.shape[0] != values.shape[0]:
        raise ValueError(f"mask must be [B, T] with B = {values.shape[0]}, got {tuple(index_or_mask.shape)}")
    return (values[:, None] * index_or_mask.to(values.dtype)).reshape(-1)
