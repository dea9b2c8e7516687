"""Risk per sequence and the (alpha, beta) weights it sets, for each risk source.

``probe`` reads the reference's probe layer, ``critic`` scores the prompts, ``fixed`` is a constant
beta (constrained SFT), ``none`` is plain SFT. ``score_prompts`` is the pre-pass over a whole
dataset (saferegx's trainer, ``saferegx audit``); ``risk`` reads a batch's risk from the taps of a
reference pass that runs anyway (the HF trainers). An example's own ``risk`` field, where given,
overrides the probe or critic for that example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..risk.critic import SafetyCritic
from ..risk.probe import Probe, read_probe
from ..risk.schedule import RiskSchedule
from ..risk.table import critic_risks, probe_risks
from .batches import Batch


class RiskSource:
    def __init__(
        self, kind: str, *, probe: Probe | None = None, critic: SafetyCritic | None = None, fixed_beta: float = 0.5
    ):
        if kind == "probe" and probe is None:
            raise ValueError("risk source 'probe' needs a probe")
        if kind == "critic" and critic is None:
            raise ValueError("risk source 'critic' needs a critic")
        self.kind, self.probe, self.critic, self.fixed_beta = kind, probe, critic, fixed_beta

    @property
    def needs_reference(self) -> bool:
        """Plain SFT skips the reference forward altogether."""
        return self.kind != "none"

    @property
    def layers(self) -> tuple[int, ...]:
        """Decoder layers the reference pass must tap."""
        return tuple(self.probe.layers) if self.kind == "probe" else ()

    def score_prompts(
        self,
        model,
        prompts: Sequence[str],
        prompt_ids: Sequence[Sequence[int]],
        *,
        pad_id: int = 0,
        bf16: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """Risk ``[n]`` (CPU fp32) of each prompt, text and token ids as in training: the probe
        on ``model`` as the reference, stopped at its layer, or the critic on the text."""
        if self.kind == "probe":
            return probe_risks(self.probe, model, prompt_ids, pad_id=pad_id, bf16=bf16, progress=progress)
        if self.kind == "critic":
            return critic_risks(self.critic, prompts, progress=progress)
        raise ValueError(f"risk source {self.kind!r} has no per-prompt risk")

    def risk(self, batch: Batch, taps: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """Risk ``[B]`` fp32 in [0, 1] (detached), or None for ``fixed`` / ``none``."""
        if self.kind in ("fixed", "none"):
            return None
        if self.kind == "probe":
            risk = read_probe(self.probe, taps, batch.prompt_pos)
        else:
            risk = self.critic.score(batch.prompts).to(batch.risk.device, torch.float32)
        return torch.where(torch.isnan(batch.risk), risk, batch.risk).detach()

    def weights(
        self, risk: torch.Tensor | None, n_seqs: int, schedule: RiskSchedule, device, mean=torch.mean
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-sequence ``(alpha, beta)`` ``[B]``; ``(None, None)`` for plain SFT. ``mean``: the
        batch-mode average (see :class:`RiskSchedule`)."""
        if self.kind == "none":
            return None, None
        if self.kind == "fixed":
            beta = torch.full((n_seqs,), self.fixed_beta, dtype=torch.float32, device=device)
            return schedule.alpha_of(beta), beta
        return schedule(risk, mean)
